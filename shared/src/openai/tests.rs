use serde_json::json;

use super::*;
use crate::fakes::FakePlatform;

fn platform() -> FakePlatform {
    FakePlatform::with_vars(&[
        ("openai_api_key", "sk-test-key"),
        ("openai_base_url", "http://openai.test/"),
        ("openai_retry_base_ms", "10"),
    ])
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "gpt-test".into(),
        messages: vec![ChatMessage::system("be brief"), ChatMessage::user("my secret worry")],
        max_tokens: 100,
        temperature: 0.7,
        json_schema: None,
    }
}

fn completion(content: &str) -> Vec<u8> {
    json!({
        "model": "gpt-test-2025",
        "choices": [{ "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "extra": "x" }
    })
    .to_string()
    .into_bytes()
}

#[test]
fn no_key_means_no_client() {
    let platform = FakePlatform::with_vars(&[("openai_base_url", "http://openai.test")]);
    assert!(OpenAi::from_platform(&platform).unwrap().is_none());
}

#[test]
fn url_with_or_without_v1() {
    let client = OpenAi::from_platform(&platform()).unwrap().unwrap();
    assert_eq!(client.chat_url(), "http://openai.test/v1/chat/completions");
    let p = FakePlatform::with_vars(&[("openai_api_key", "k"), ("openai_base_url", "https://gw.test/v1")]);
    assert_eq!(OpenAi::from_platform(&p).unwrap().unwrap().chat_url(), "https://gw.test/v1/chat/completions");
}

#[test]
fn chat_sends_key_model_and_messages_and_reads_the_answer() {
    let platform = platform();
    platform.push_upstream(200, &[], &completion("Breathe."));
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    let answer = client.chat(&client.retrier(&platform), &request()).unwrap();
    assert_eq!(answer.content, "Breathe.");
    assert_eq!(answer.model, "gpt-test-2025");
    assert_eq!(answer.usage, json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}));
    let sent = platform.sent.borrow();
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "my secret worry"}));
    assert!(body.get("stream").is_none());
    assert!(sent[0].headers.contains(&("authorization".into(), "Bearer sk-test-key".into())));
    // Neither the key nor the user's words reach the log.
    assert!(platform.logs.borrow().iter().all(|l| !l.contains("sk-test") && !l.contains("worry")));
}

#[test]
fn structured_outputs_are_requested_strictly() {
    let mut chat = request();
    chat.json_schema = Some(("thing", json!({"type": "object"})));
    let body = chat.body(false);
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(body["response_format"]["json_schema"]["name"], "thing");
}

#[test]
fn retries_then_succeeds_and_errors_carry_no_body() {
    let platform = platform();
    platform.push_upstream(503, &[], b"upstream says sk-leaked");
    platform.push_upstream(200, &[], &completion("ok"));
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    assert_eq!(client.chat(&client.retrier(&platform), &request()).unwrap().content, "ok");

    let platform = self::platform();
    platform.push_upstream(400, &[], b"bad request containing sk-leaked");
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    let error = client.chat(&client.retrier(&platform), &request()).unwrap_err();
    assert_eq!(error, OpenAiError::Upstream(UpstreamError::Rejected { status: 400 }));
    assert!(!format!("{error:?}{}", error.summary()).contains("sk-leaked"));
}

#[test]
fn unusable_answers_are_invalid_responses() {
    for body in [&b"not json"[..], br#"{"choices":[]}"#, br#"{"choices":[{"message":{"content":null}}]}"#] {
        let platform = platform();
        platform.push_upstream(200, &[], body);
        let client = OpenAi::from_platform(&platform).unwrap().unwrap();
        let error = client.chat(&client.retrier(&platform), &request()).unwrap_err();
        assert!(matches!(error, OpenAiError::InvalidResponse(_)), "{error:?}");
    }
    let platform = platform();
    platform.push_upstream(200, &[], br#"{"choices":[{"message":{"content":null,"refusal":"no"}}]}"#);
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    assert_eq!(client.chat(&client.retrier(&platform), &request()).unwrap_err(), OpenAiError::Refused);
}

#[test]
fn stream_yields_deltas_usage_and_done() {
    let platform = platform();
    let sse = concat!(
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n",
        ": keep-alive comment\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    );
    platform.push_upstream(200, &[("content-type", "text/event-stream")], sse.as_bytes());
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    let mut stream = client.chat_stream(&client.retrier(&platform), &request()).unwrap();
    let events = stream.next_events().unwrap().unwrap();
    assert_eq!(
        events,
        vec![
            StreamEvent::Delta("Hel".into()),
            StreamEvent::Delta("lo".into()),
            StreamEvent::Usage(json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})),
            StreamEvent::Done,
        ]
    );
    assert_eq!(stream.next_events().unwrap(), None);
    let body: Value = serde_json::from_slice(&platform.sent.borrow()[0].body).unwrap();
    assert_eq!(body["stream"], true);
}

#[test]
fn a_cut_off_stream_is_an_error() {
    let platform = platform();
    platform.push_upstream(200, &[], b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    let mut stream = client.chat_stream(&client.retrier(&platform), &request()).unwrap();
    assert_eq!(stream.next_events().unwrap().unwrap(), vec![StreamEvent::Delta("Hi".into())]);
    assert!(matches!(stream.next_events(), Err(OpenAiError::InvalidResponse(_))));
    assert_eq!(stream.next_events().unwrap(), None);
}

#[test]
fn sse_parser_reassembles_split_events() {
    let mut parser = SseParser::default();
    assert!(parser.push(b"data: {\"a\"").unwrap().is_empty());
    assert_eq!(parser.push(b":1}\n").unwrap(), Vec::<String>::new());
    assert_eq!(parser.push(b"\ndata: x\ndata: y\n\n").unwrap(), vec!["{\"a\":1}".to_string(), "x\ny".to_string()]);
    let mut parser = SseParser::default();
    assert!(parser.push(&vec![b'a'; 300 * 1024]).is_err());
}

#[test]
fn relay_forwards_deltas_and_ends_cleanly() {
    use crate::http::ChunkStream;
    let platform = platform();
    let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"A\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
    platform.push_upstream(200, &[], sse.as_bytes());
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    let stream = client.chat_stream(&client.retrier(&platform), &request()).unwrap();
    let mut relay = SseRelay::new(stream, "m".into());
    let out = String::from_utf8(relay.next_chunk().unwrap().unwrap()).unwrap();
    assert!(out.starts_with("data: {\"delta\":\"A\"}\n\n"), "{out}");
    assert!(out.contains("\"done\":true") && out.contains("\"total_tokens\":3") && out.ends_with("data: [DONE]\n\n"));
    assert!(relay.next_chunk().is_none());

    let platform = self::platform();
    platform.push_upstream(200, &[], b"data: {\"choices\":[{\"delta\":{\"content\":\"A\"}}]}\n\n");
    let client = OpenAi::from_platform(&platform).unwrap().unwrap();
    let stream = client.chat_stream(&client.retrier(&platform), &request()).unwrap();
    let mut relay = SseRelay::new(stream, "m".into());
    assert!(relay.next_chunk().unwrap().is_ok());
    let end = String::from_utf8(relay.next_chunk().unwrap().unwrap()).unwrap();
    assert!(end.contains("ai_interrupted") && end.ends_with("data: [DONE]\n\n"));
    assert!(relay.next_chunk().is_none());

    let mut canned = SseRelay::canned("hi".into(), "fallback".into());
    let out = String::from_utf8(canned.next_chunk().unwrap().unwrap()).unwrap();
    assert!(out.starts_with("data: {\"delta\":\"hi\"}") && out.ends_with("data: [DONE]\n\n"));
    assert!(canned.next_chunk().is_none());
}

use serde_json::json;

use super::*;
use crate::validate::EgoState;

fn words(n: usize) -> String {
    vec!["calm"; n].join(" ")
}

fn model_answer(phases: &[&str], words_each: usize) -> String {
    json!({
        "title": "Calm Waters",
        "segments": phases.iter().map(|p| json!({"phase": p, "text": words(words_each)})).collect::<Vec<_>>(),
    })
    .to_string()
}

const ALL: [&str; 5] = ["induction", "deepening", "suggestion", "integration", "emergence"];

#[test]
fn a_good_answer_validates() {
    let script = parse_and_validate(&model_answer(&ALL, 30), "guardian", 3).unwrap();
    assert_eq!(script.segments.len(), 5);
    assert_eq!(script.ego_state, "guardian");
    assert_eq!(script.duration_minutes, 3);
    // Repeated phases are fine as long as they never go back.
    let repeated = ["induction", "deepening", "suggestion", "suggestion", "integration", "emergence"];
    assert!(parse_and_validate(&model_answer(&repeated, 30), "guardian", 3).is_ok());
}

#[test]
fn bad_answers_are_refused_with_the_rule() {
    assert_eq!(parse_and_validate("not json", "g", 3).unwrap_err(), "not the script JSON shape");
    assert_eq!(parse_and_validate(r#"{"title":"x"}"#, "g", 3).unwrap_err(), "not the script JSON shape");
    let bad_phase = model_answer(&["induction", "trance", "suggestion", "integration", "emergence"], 30);
    assert_eq!(parse_and_validate(&bad_phase, "g", 3).unwrap_err(), "not the script JSON shape");
    let backwards = model_answer(&["induction", "suggestion", "deepening", "integration", "emergence"], 30);
    assert_eq!(parse_and_validate(&backwards, "g", 3).unwrap_err(), "phases out of order");
    let missing = model_answer(&["induction", "deepening", "suggestion", "emergence"], 40);
    assert_eq!(parse_and_validate(&missing, "g", 3).unwrap_err(), "a phase is missing");
    assert_eq!(parse_and_validate(&model_answer(&ALL, 2), "g", 3).unwrap_err(), "too short for the duration");
    assert_eq!(parse_and_validate(&model_answer(&ALL, 200), "g", 3).unwrap_err(), "too long for the duration");
    let untitled = model_answer(&ALL, 30).replace("Calm Waters", "  ");
    assert_eq!(parse_and_validate(&untitled, "g", 3).unwrap_err(), "title empty or too long");
}

#[test]
fn fallback_is_valid_and_deterministic_for_every_duration() {
    for ego in ["guardian", "mystic", "someone-new"] {
        for minutes in MIN_DURATION_MINUTES..=MAX_DURATION_MINUTES {
            let script = fallback_script(ego, minutes);
            assert_eq!(validate(&script), Ok(()), "{ego} {minutes} min: {} words", script.word_count());
            assert_eq!(script, fallback_script(ego, minutes));
            assert!(script.segments.iter().all(|s| !s.text.contains('{')));
        }
    }
    assert_ne!(fallback_script("guardian", 10), fallback_script("healer", 10));
    assert!(fallback_script("guardian", 30).word_count() > fallback_script("guardian", 5).word_count());
}

#[test]
fn schema_and_prompts() {
    let schema = json_schema();
    assert_eq!(schema["properties"]["segments"]["items"]["properties"]["phase"]["enum"], json!(ALL));
    assert!(system_prompt(10).contains("500 words"));
    assert!(user_prompt("sage", "sleep better", Some("gentle"), Some("my protocol")).contains("my protocol"));
    assert!(max_tokens(60) <= 16_000 && max_tokens(1) >= 400);
}

mod generation {
    use super::*;
    use crate::fakes::FakePlatform;
    use crate::openai::OpenAi;

    fn platform() -> FakePlatform {
        FakePlatform::with_vars(&[("openai_api_key", "sk-x"), ("openai_base_url", "http://openai.test")])
    }

    fn request() -> ScriptRequest {
        ScriptRequest {
            ego_state: EgoState::parse("sage").unwrap(),
            intent: "focus".into(),
            duration_minutes: 3,
            style: None,
            protocol: None,
        }
    }

    fn answer(platform: &FakePlatform, content: &str) {
        let body = json!({ "model": "m-1", "choices": [{ "message": { "content": content } }] });
        platform.push_upstream(200, &[], body.to_string().as_bytes());
    }

    #[test]
    fn no_client_is_the_fallback() {
        let platform = FakePlatform::with_vars(&[]);
        let (script, source, used) = generate(&platform, None, "m", &request());
        assert_eq!((source, used), (Source::Fallback { reason: "not_configured" }, 0));
        assert_eq!(script, fallback_script("sage", 3));
    }

    #[test]
    fn an_invalid_answer_is_asked_again_once() {
        let platform = platform();
        answer(&platform, "{}");
        answer(&platform, &model_answer(&ALL, 30));
        let client = OpenAi::from_platform(&platform).unwrap();
        let (script, source, _) = generate(&platform, client.as_ref(), "m", &request());
        assert_eq!(source, Source::OpenAi { model: "m-1".into() });
        assert_eq!(script.title, "Calm Waters");

        let platform = self::platform();
        answer(&platform, "{}");
        answer(&platform, "still not a script");
        answer(&platform, &model_answer(&ALL, 30));
        let client = OpenAi::from_platform(&platform).unwrap();
        let (_, source, _) = generate(&platform, client.as_ref(), "m", &request());
        assert_eq!(source, Source::Fallback { reason: "invalid_output" });
        assert_eq!(platform.sent.borrow().len(), 2);
    }

    #[test]
    fn every_answer_counts_by_its_usage_or_else_its_bound() {
        let platform = platform();
        let with_usage = |content: &str, total: u64| {
            let body = json!({ "model": "m-1", "choices": [{ "message": { "content": content } }],
                               "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": total } });
            platform.push_upstream(200, &[], body.to_string().as_bytes());
        };
        with_usage("{}", 1000);
        with_usage(&model_answer(&ALL, 30), 2500);
        let client = OpenAi::from_platform(&platform).unwrap();
        let (_, source, used) = generate(&platform, client.as_ref(), "m", &request());
        assert_eq!((source, used), (Source::OpenAi { model: "m-1".into() }, 3500));

        // No usage in the answers: each counts as its request's bound.
        let platform = self::platform();
        answer(&platform, "{}");
        answer(&platform, "{}");
        let client = OpenAi::from_platform(&platform).unwrap();
        let (_, _, used) = generate(&platform, client.as_ref(), "m", &request());
        assert!(used > 2 * i64::from(max_tokens(3)), "{used}");
    }

    #[test]
    fn an_unavailable_upstream_is_not_asked_again() {
        let platform = platform();
        for _ in 0..3 {
            platform.push_upstream(502, &[], b"");
        }
        let client = OpenAi::from_platform(&platform).unwrap();
        let (_, source, _) = generate(&platform, client.as_ref(), "m", &request());
        assert_eq!(source, Source::Fallback { reason: "upstream_unavailable" });
        assert_eq!(platform.sent.borrow().len(), 3);
    }
}

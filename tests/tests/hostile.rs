//! Hostile input corpus (issue 8): for every endpoint, bodies that are empty, not JSON,
//! of the wrong type, with unknown fields, huge, deeply nested or full of odd Unicode;
//! wrong methods and content types; missing, expired, tampered, `alg: none` and
//! otherwise bad tokens; another user's ids; headers far too long. Each must answer a
//! 4xx JSON error (never 500, never a trap) and write nothing.
//!
//! The upstreams are closed ports with keys set: a request that got past validation
//! would fail loudly (5xx or a fallback), so a 4xx proves it was refused first.
//!
//! Bodies over an endpoint's limit are answered 413 JSON in every case, and checked the
//! way a client can see it: with a `Content-Length` over the limit, the answer comes
//! before the body is read (the client sends `Expect: 100-continue` and waits, so it
//! never sends the body: a `100 Continue` would fail the case); chunked with no length,
//! the endpoint reads until it passes the limit (the client sends one byte more than
//! the limit, then waits). A client that pushes a whole oversized body without reading
//! may instead see the connection reset before it reads the 413: the server stops
//! reading and closes, and TCP then drops what it had not yet delivered.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libero_tests::testing::{sign_hs256, TestApp};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::stripe_support::{checkout_session, event, now, signature, PRICES, SECRET_KEY, WEBHOOK_SECRET};

const TABLES: [&str; 13] = [
    "auth.users",
    "public.user_profiles",
    "public.sessions",
    "public.token_ledger",
    "public.user_achievements",
    "public.custom_protocols",
    "public.stripe_customers",
    "public.stripe_events",
    "public.stripe_orders",
    "public.stripe_subscriptions",
    "public.ai_usage",
    "public.tts_cache",
    "public.token_prices",
];

/// Every JSON endpoint with a body it would accept.
fn endpoints() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/functions/v1/session-complete",
            json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 600 }),
        ),
        ("/functions/v1/stripe-checkout", json!({ "product": "tokens-small" })),
        ("/functions/v1/stripe-checkout/portal", json!({ "return_url": "http://localhost:5173/" })),
        ("/functions/v1/generate-script", json!({ "ego_state": "guardian", "intent": "sleep", "duration_minutes": 2 })),
        (
            "/functions/v1/chatgpt-chat",
            json!({ "messages": [{ "role": "user", "content": "hi" }], "ego_state": "sage" }),
        ),
        ("/functions/v1/ai-hypnosis", json!({ "ego_state": "healer", "phase": "deepening", "history": ["Relax"] })),
        ("/functions/v1/tts", json!({ "text": "hello there", "voice": "alloy" })),
        ("/functions/v1/elevenlabs-tts-proxy", json!({ "text": "hello there", "voice_id": "Voice01" })),
    ]
}

struct Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// How the body goes out (see the module docs).
    send: Sending,
    /// The status and error code it must be refused with.
    expect: (u16, &'static str),
}

#[derive(Clone, Copy, PartialEq)]
enum Sending {
    /// reqwest, the body in full.
    Whole,
    /// `Content-Length: <body length>` and `Expect: 100-continue`; the body is never sent.
    DeclaredOnly,
    /// Chunked, no length: this many bytes, then the answer is read.
    ChunkedUpTo(usize),
}

/// An endpoint's body limit (`body_limit` of its `Endpoint`).
fn body_limit(path: &str) -> usize {
    if path.ends_with("/stripe-webhook") {
        256 * 1024
    } else {
        64 * 1024
    }
}

impl Case {
    fn new(
        name: impl Into<String>,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Case {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("authorization".to_string(), format!("Bearer {t}")));
        }
        if let Some(ct) = content_type {
            headers.push(("content-type".to_string(), ct.to_string()));
        }
        Case {
            name: name.into(),
            method: "POST",
            path: path.to_string(),
            headers,
            body: body.into(),
            send: Sending::Whole,
            expect: (0, "no expectation set"),
        }
    }
    fn expecting(mut self, status: u16, code: &'static str) -> Case {
        self.expect = (status, code);
        self
    }
    fn json(name: impl Into<String>, path: &str, token: &str, body: &Value) -> Case {
        Case::new(name, path, Some(token), Some("application/json"), serde_json::to_vec(body).unwrap())
    }
}

/// Every way to mistype a JSON value.
fn wrong_types(value: &Value) -> Vec<Value> {
    let all =
        [json!(12345), json!(-1.5e300), json!("a string"), json!(true), json!([]), json!({}), json!([["nested"]])];
    all.into_iter().filter(|v| std::mem::discriminant(v) != std::mem::discriminant(value)).collect()
}

/// Strings no field should take (each field of the endpoints has a format or a limit).
fn odd_strings() -> Vec<String> {
    vec![
        "\u{0000}".into(),
        "gua\u{0000}rdian".into(),
        "\u{202E}naidraug".into(), // right-to-left override
        "guard\u{200B}ian".into(), // zero-width space
        "ｇｕａｒｄｉａｎ".into(), // fullwidth
        "🧘‍♀️".repeat(3),
        "x".repeat(70_000), // over every string limit (and the body limit)
        " ".into(),
        "../../etc/passwd".into(),
        "'; DROP TABLE public.sessions; --".into(),
        "<script>alert(1)</script>".into(),
        "\u{FEFF}".into(),
        "e\u{0301}".repeat(600), // combining marks past the length limits
    ]
}

fn token_parts(token: &str) -> (String, String, String) {
    let mut parts = token.split('.').map(str::to_string);
    (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
}

/// Tokens that must all be refused with 401, each with its error code: a token whose
/// payload was swapped must fail on its signature, never get as far as looking the
/// (random) user up.
fn bad_tokens(app: &TestApp, user: Uuid) -> Vec<(&'static str, &'static str, String)> {
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, aud: &str, role: &str, sub: &str| json!({ "sub": sub, "aud": aud, "role": role, "iat": now - 10, "exp": exp });
    let good = app.token_for(user);
    let (header, payload, sig) = token_parts(&good);
    let other_payload = URL_SAFE_NO_PAD
        .encode(claims(now + 3600, "authenticated", "authenticated", &Uuid::new_v4().to_string()).to_string());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none_payload =
        URL_SAFE_NO_PAD.encode(claims(now + 3600, "authenticated", "authenticated", &user.to_string()).to_string());
    let mut flipped = sig.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    vec![
        (
            "expired",
            "token_expired",
            app.token_with_claims(claims(now - 120, "authenticated", "authenticated", &user.to_string())),
        ),
        (
            "wrong audience",
            "wrong_audience",
            app.token_with_claims(claims(now + 3600, "somebody-else", "authenticated", &user.to_string())),
        ),
        (
            "anon role",
            "wrong_role",
            app.token_with_claims(claims(now + 3600, "authenticated", "anon", &user.to_string())),
        ),
        (
            "service role",
            "wrong_role",
            app.token_with_claims(claims(now + 3600, "authenticated", "service_role", &user.to_string())),
        ),
        (
            "sub not a uuid",
            "invalid_subject",
            app.token_with_claims(claims(now + 3600, "authenticated", "authenticated", "admin")),
        ),
        (
            "no exp",
            "malformed_token",
            app.token_with_claims(json!({ "sub": user.to_string(), "aud": "authenticated", "role": "authenticated" })),
        ),
        (
            "wrong secret",
            "invalid_signature",
            sign_hs256(
                "not-the-project-secret",
                &claims(now + 3600, "authenticated", "authenticated", &user.to_string()),
            ),
        ),
        ("tampered payload", "invalid_signature", format!("{header}.{other_payload}.{sig}")),
        (
            "tampered signature",
            "invalid_signature",
            format!("{header}.{payload}.{}", String::from_utf8(flipped).unwrap()),
        ),
        ("alg none", "unsupported_algorithm", format!("{none_header}.{none_payload}.")),
        ("alg none, signature kept", "unsupported_algorithm", format!("{none_header}.{none_payload}.{sig}")),
        ("two parts", "malformed_token", format!("{header}.{payload}")),
        ("garbage", "malformed_token", "definitely.not.ajwt".to_string()),
        ("huge", "malformed_token", format!("{header}.{}.{sig}", "A".repeat(16 * 1024))),
        ("empty", "missing_token", String::new()),
    ]
}

async fn counts(app: &TestApp) -> BTreeMap<&'static str, i64> {
    let client = app.db_client().await;
    let mut out = BTreeMap::new();
    for table in TABLES {
        let n: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
        out.insert(table, n);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_hostile_input_with_a_4xx_and_writes_nothing() {
    let app = TestApp::spawn_with(|vars| {
        vars.insert("stripe_secret_key".into(), SECRET_KEY.into());
        vars.insert("stripe_webhook_secrets".into(), WEBHOOK_SECRET.into());
        for (name, price) in PRICES {
            vars.insert(name.into(), price.into());
        }
        vars.insert("openai_api_key".into(), "sk-hostile-openai-key-123".into());
        vars.insert("elevenlabs_api_key".into(), "xi-hostile-eleven-key-456".into());
        // The voice the valid body asks for is on offer, so that each case is refused for
        // what it breaks, not for the voice.
        vars.insert("elevenlabs_voice_ids".into(), "Voice01".into());
        for prefix in ["openai", "elevenlabs"] {
            vars.insert(format!("{prefix}_max_attempts"), "1".into());
            vars.insert(format!("{prefix}_timeout_ms"), "500".into());
        }
    })
    .await;
    let user = app.create_user().await;
    let other = app.create_user().await;
    app.grant_tokens(user, 100).await;
    let token = app.token_for(user);
    let ghost = app.token_for(Uuid::new_v4()); // valid token, no such user
                                               // Another user's protocol.
    let foreign_protocol = Uuid::new_v4();
    app.db_client()
        .await
        .execute(
            "INSERT INTO public.custom_protocols (id, user_id, name) VALUES ($1, $2, 'Not yours')",
            &[&foreign_protocol, &other],
        )
        .await
        .unwrap();
    let before = counts(&app).await;
    let balance = app.tokens_of(user).await;

    let mut cases: Vec<Case> = Vec::new();
    for (path, valid) in endpoints() {
        let short = path.trim_start_matches("/functions/v1/");
        // Bodies that are not the JSON object asked for.
        for (name, body) in [
            ("empty body", &b""[..]),
            ("not json", b"hello, world"),
            ("json null", b"null"),
            ("json array", b"[1,2,3]"),
            ("json string", b"\"text\""),
            ("json number", b"42"),
            ("truncated json", b"{\"text\": \"hel"),
            ("trailing garbage", b"{} trailing"),
            ("invalid utf-8", b"{\"text\": \"\xff\xfe\xfd\"}"),
            ("lone surrogate", b"{\"text\": \"\\ud800\"}"),
            ("duplicate keys", b"{\"text\": \"a\", \"text\": {}}"),
        ] {
            // The portal's body is optional (an empty one asks for the default return
            // URL): it gets as far as the user, who has no Stripe customer.
            let expect = match name {
                "empty body" if short == "stripe-checkout/portal" => (404, "no_customer"),
                "empty body" => (400, "empty_body"),
                _ => (400, "invalid_body"),
            };
            cases.push(
                Case::new(format!("{short}: {name}"), path, Some(&token), Some("application/json"), body)
                    .expecting(expect.0, expect.1),
            );
        }
        // Deep nesting within the size limit, and a body over it.
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        cases.push(
            Case::new(format!("{short}: deep nesting"), path, Some(&token), Some("application/json"), deep)
                .expecting(400, "invalid_body"),
        );
        let deep_obj = format!("{}1{}", "{\"a\":".repeat(3_000), "}".repeat(3_000));
        cases.push(
            Case::new(format!("{short}: deep objects"), path, Some(&token), Some("application/json"), deep_obj)
                .expecting(400, "invalid_body"),
        );
        let huge = serde_json::to_vec(&json!({ "text": "x".repeat(4 * 1024 * 1024) })).unwrap();
        let mut declared = Case::new(
            format!("{short}: 4 MiB body, length declared"),
            path,
            Some(&token),
            Some("application/json"),
            huge,
        )
        .expecting(413, "payload_too_large");
        declared.send = Sending::DeclaredOnly;
        cases.push(declared);
        let mut chunked = Case::new(
            format!("{short}: body over the limit, chunked"),
            path,
            Some(&token),
            Some("application/json"),
            Vec::new(),
        )
        .expecting(413, "payload_too_large");
        chunked.send = Sending::ChunkedUpTo(body_limit(path) + 1);
        cases.push(chunked);
        // Each field: the wrong type, null (for required ones), odd strings.
        let object = valid.as_object().unwrap();
        for (field, value) in object {
            for wrong in wrong_types(value) {
                let mut body = valid.clone();
                body[field] = wrong.clone();
                cases.push(
                    Case::json(format!("{short}: {field} = {wrong}"), path, &token, &body)
                        .expecting(400, "invalid_body"),
                );
            }
            if value.is_string() {
                for odd in odd_strings() {
                    // Free text may legitimately hold odd characters; only over-long is wrong.
                    let free_text = matches!(field.as_str(), "text" | "intent");
                    if free_text && odd.chars().count() < 5_000 {
                        continue;
                    }
                    let mut body = valid.clone();
                    body[field] = json!(odd);
                    let label: String = odd.chars().take(12).collect();
                    // Over the body limit before any field is looked at; else each field's
                    // own refusal.
                    let expect = match field.as_str() {
                        _ if odd.len() > body_limit(path) => (413, "payload_too_large"),
                        "product" => (400, "unknown_product"),
                        "return_url" => (400, "invalid_redirect"),
                        _ => (400, "invalid_field"),
                    };
                    cases.push(
                        Case::json(format!("{short}: {field} = {label:?}…"), path, &token, &body)
                            .expecting(expect.0, expect.1),
                    );
                }
            }
        }
        let mut unknown = valid.clone();
        unknown["is_admin"] = json!(true);
        cases
            .push(Case::json(format!("{short}: unknown field"), path, &token, &unknown).expecting(400, "invalid_body"));
        let mut tokens_field = valid.clone();
        tokens_field["tokens"] = json!(1_000_000);
        cases.push(
            Case::json(format!("{short}: client-chosen tokens"), path, &token, &tokens_field)
                .expecting(400, "invalid_body"),
        );
        // Content types.
        let valid_bytes = serde_json::to_vec(&valid).unwrap();
        for ct in
            ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"]
        {
            cases.push(
                Case::new(format!("{short}: content-type {ct}"), path, Some(&token), Some(ct), valid_bytes.clone())
                    .expecting(415, "unsupported_media_type"),
            );
        }
        // Methods.
        for method in ["GET", "PUT", "DELETE", "PATCH"] {
            let mut case =
                Case::json(format!("{short}: {method}"), path, &token, &valid).expecting(405, "method_not_allowed");
            case.method = method;
            cases.push(case);
        }
        // Tokens.
        cases.push(
            Case::new(format!("{short}: no token"), path, None, Some("application/json"), valid_bytes.clone())
                .expecting(401, "missing_token"),
        );
        for (name, code, bad) in bad_tokens(&app, user) {
            cases.push(Case::json(format!("{short}: token {name}"), path, &bad, &valid).expecting(401, code));
        }
        let mut basic =
            Case::new(format!("{short}: basic auth"), path, None, Some("application/json"), valid_bytes.clone())
                .expecting(401, "malformed_token");
        basic.headers.push(("authorization".into(), "Basic dXNlcjpwYXNz".into()));
        cases.push(basic);
        let mut long_header = Case::new(
            format!("{short}: 32 KiB authorization header"),
            path,
            None,
            Some("application/json"),
            valid_bytes.clone(),
        )
        .expecting(401, "malformed_token");
        long_header.headers.push(("authorization".into(), format!("Bearer {}", "y".repeat(32 * 1024))));
        cases.push(long_header);
        // A valid token whose user does not exist. tts reads no per-user state before it
        // needs an upstream (a cache hit or "no provider" answers anyone signed in).
        if short != "tts" {
            cases.push(
                Case::json(format!("{short}: user without a profile"), path, &ghost, &valid)
                    .expecting(404, "user_not_found"),
            );
        }
    }
    // Another user's ids.
    let session = json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 60, "protocol_id": foreign_protocol.to_string() });
    cases.push(
        Case::json("session-complete: another user's protocol", "/functions/v1/session-complete", &token, &session)
            .expecting(403, "protocol_forbidden"),
    );
    let script = json!({ "ego_state": "guardian", "intent": "sleep", "duration_minutes": 2, "protocol_id": foreign_protocol.to_string() });
    cases.push(
        Case::json("generate-script: another user's protocol", "/functions/v1/generate-script", &token, &script)
            .expecting(403, "protocol_forbidden"),
    );
    cases.push(Case::json("generate-script: a protocol that does not exist", "/functions/v1/generate-script", &token, &json!({ "ego_state": "guardian", "intent": "sleep", "duration_minutes": 2, "protocol_id": Uuid::new_v4().to_string() })).expecting(404, "protocol_not_found"));
    // The products list takes no body, only GET.
    for method in ["POST", "PUT", "DELETE"] {
        let mut case =
            Case::json(format!("products: {method}"), "/functions/v1/stripe-checkout/products", &token, &json!({}))
                .expecting(405, "method_not_allowed");
        case.method = method;
        cases.push(case);
    }
    cases.push(
        Case::json("stripe-checkout: unknown route", "/functions/v1/stripe-checkout/admin", &token, &json!({}))
            .expecting(404, "route_not_found"),
    );

    // The webhook: signatures instead of tokens.
    let hook = "/functions/v1/stripe-webhook";
    let paid = event("checkout.session.completed", checkout_session(user, "tokens-large", "payment", "paid"));
    let paid_bytes = serde_json::to_vec(&paid).unwrap();
    let signed = |body: &[u8], secret: &str, t: i64| signature(body, secret, t);
    let webhook_cases: Vec<(&str, &str, Vec<u8>, Option<String>)> = vec![
        ("no signature", "missing_signature", paid_bytes.clone(), None),
        ("empty signature", "missing_signature", paid_bytes.clone(), Some(String::new())),
        ("garbage signature", "malformed_signature", paid_bytes.clone(), Some("nonsense".into())),
        ("wrong secret", "signature_mismatch", paid_bytes.clone(), Some(signed(&paid_bytes, "whsec_attacker", now()))),
        (
            "stale timestamp",
            "signature_expired",
            paid_bytes.clone(),
            Some(signed(&paid_bytes, WEBHOOK_SECRET, now() - 600)),
        ),
        (
            "future timestamp",
            "signature_expired",
            paid_bytes.clone(),
            Some(signed(&paid_bytes, WEBHOOK_SECRET, now() + 600)),
        ),
        (
            "signature of another body",
            "signature_mismatch",
            paid_bytes.clone(),
            Some(signed(b"{}", WEBHOOK_SECRET, now())),
        ),
        (
            "v0 only",
            "malformed_signature",
            paid_bytes.clone(),
            Some(signed(&paid_bytes, WEBHOOK_SECRET, now()).replace("v1=", "v0=")),
        ),
        (
            "huge header",
            "malformed_signature",
            paid_bytes.clone(),
            Some(format!("t={},{}", now(), "v1=00,".repeat(4000))),
        ),
        (
            "signed non-json",
            "invalid_event",
            b"not json at all".to_vec(),
            Some(signed(b"not json at all", WEBHOOK_SECRET, now())),
        ),
        ("signed empty", "invalid_event", Vec::new(), Some(signed(b"", WEBHOOK_SECRET, now()))),
        ("signed array", "invalid_event", b"[]".to_vec(), Some(signed(b"[]", WEBHOOK_SECRET, now()))),
        (
            "signed event without id",
            "invalid_event",
            br#"{"type":"checkout.session.completed","data":{"object":{}}}"#.to_vec(),
            Some(signed(br#"{"type":"checkout.session.completed","data":{"object":{}}}"#, WEBHOOK_SECRET, now())),
        ),
        (
            "signed deep nesting",
            "invalid_event",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            None,
        ),
    ];
    for (name, code, body, sig) in webhook_cases {
        let sig = if name == "signed deep nesting" { Some(signed(&body, WEBHOOK_SECRET, now())) } else { sig };
        let mut case = Case::new(format!("stripe-webhook: {name}"), hook, None, Some("application/json"), body)
            .expecting(400, code);
        if let Some(s) = sig {
            case.headers.push(("stripe-signature".into(), s));
        }
        cases.push(case);
    }
    let mut big = Case::new(
        "stripe-webhook: 4 MiB body, length declared",
        hook,
        None,
        Some("application/json"),
        vec![b' '; 4 * 1024 * 1024],
    )
    .expecting(413, "payload_too_large");
    big.headers.push(("stripe-signature".into(), format!("t={},v1=00", now())));
    big.send = Sending::DeclaredOnly;
    cases.push(big);
    let mut chunked =
        Case::new("stripe-webhook: body over the limit, chunked", hook, None, Some("application/json"), Vec::new())
            .expecting(413, "payload_too_large");
    chunked.headers.push(("stripe-signature".into(), format!("t={},v1=00", now())));
    chunked.send = Sending::ChunkedUpTo(body_limit(hook) + 1);
    cases.push(chunked);
    for method in ["GET", "PUT", "DELETE"] {
        let mut case =
            Case::new(format!("stripe-webhook: {method}"), hook, None, Some("application/json"), paid_bytes.clone())
                .expecting(405, "method_not_allowed");
        case.method = method;
        cases.push(case);
    }

    // Send them all (a few at a time) and judge each answer.
    let total = cases.len();
    let mut failures = Vec::new();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for chunk in cases.chunks(8) {
        let sends = chunk.iter().map(|case| async {
            if case.send != Sending::Whole {
                return send_raw(&app, case).await;
            }
            let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
            let mut request = app.client.request(method, app.url(&case.path)).body(case.body.clone());
            for (k, v) in &case.headers {
                request = request.header(k, v);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let ct =
                        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let body = response.bytes().await.unwrap_or_default();
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    (status, ct, json, String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
                }
                Err(e) => (0, String::new(), Value::Null, format!("transport error: {e}")),
            }
        });
        for (case, (status, ct, json, text)) in chunk.iter().zip(futures_util::future::join_all(sends).await) {
            *by_status.entry(status).or_default() += 1;
            let ok = ct.starts_with("application/json")
                && (status, json["error"]["code"].as_str()) == (case.expect.0, Some(case.expect.1));
            if !ok {
                failures.push(format!(
                    "{}: expected {} {}, got {status} {ct} {text}",
                    case.name, case.expect.0, case.expect.1
                ));
            }
        }
    }
    println!("hostile corpus: {total} requests; answers by status: {by_status:?}");
    assert!(
        failures.is_empty(),
        "{} of {total} hostile requests were not refused with their status and error code:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    // The figures the README gives.
    let expected: BTreeMap<u16, usize> =
        [(400, 351), (401, 144), (403, 2), (404, 10), (405, 38), (413, 31), (415, 32)].into_iter().collect();
    assert_eq!((total, &by_status), (608, &expected), "the corpus or its answers changed: update the README too");

    // Nothing written, nothing spent, nothing trapped.
    assert_eq!(counts(&app).await, before, "hostile requests changed the database");
    assert_eq!(app.tokens_of(user).await, balance);
    app.assert_ledger_consistent().await;
    let traps: Vec<String> = app
        .logs()
        .into_iter()
        .filter(|l| l.contains("trap") || l.contains("panicked") || l.contains("error:"))
        .collect();
    assert!(traps.is_empty(), "components trapped:\n{}", traps.join("\n"));
}

/// Sends `case` on a connection of its own, as [`Sending`] says, and reads the answer to the
/// end (the request asks the server to close after it): status, content type, JSON body
/// and the body's start. A `100 Continue` is returned as status 100 (the server wanted
/// the oversized body).
async fn send_raw(app: &TestApp, case: &Case) -> (u16, String, Value, String) {
    let url = app.url("");
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(authority).await.expect("connecting to the app");
    let mut head = format!("{} {} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n", case.method, case.path);
    for (k, v) in &case.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match case.send {
        Sending::DeclaredOnly => {
            head.push_str(&format!("content-length: {}\r\nexpect: 100-continue\r\n\r\n", case.body.len()))
        }
        Sending::ChunkedUpTo(_) => head.push_str("transfer-encoding: chunked\r\n\r\n"),
        Sending::Whole => unreachable!("sent with reqwest"),
    }
    stream.write_all(head.as_bytes()).await.expect("sending the head");
    if let Sending::ChunkedUpTo(total) = case.send {
        let mut left = total;
        while left > 0 {
            let n = left.min(16 * 1024);
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend(std::iter::repeat_n(b' ', n));
            chunk.extend_from_slice(b"\r\n");
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
            left -= n;
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    if answer.is_empty() {
        return (0, String::new(), Value::Null, format!("no answer ({read:?})"));
    }
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::new(), Value::Null, format!("no answer head: {}", String::from_utf8_lossy(&answer)));
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = answer[end + 4..].to_vec();
    if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    let ct = header("content-type").unwrap_or_default();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, ct, json, String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

/// The data of a chunked body (as much as arrived).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
        raw = &raw[line_end + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// A header block far over any sane size is refused by the server itself (431, or the
/// connection closed), never reaching a component and never taking the server down.
#[tokio::test]
async fn headers_far_too_long_are_refused_and_the_server_keeps_serving() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let result = app
        .client
        .post(app.url("/functions/v1/session-complete"))
        .bearer_auth(app.token_for(user))
        .header("x-client-info", "z".repeat(2 * 1024 * 1024))
        .json(&json!({}))
        .send()
        .await;
    match result {
        Ok(response) => assert!((400..500).contains(&response.status().as_u16()), "{}", response.status()),
        Err(e) => println!("2 MiB header: connection refused ({e})"),
    }
    let response = app
        .client
        .post(app.url("/functions/v1/session-complete"))
        .bearer_auth(app.token_for(user))
        .json(&json!({ "session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 60 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.assert_ledger_consistent().await;
}

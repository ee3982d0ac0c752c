use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::fakes::FakePlatform;

fn ok_handler(_: &ApiRequest, _: &dyn Platform) -> Result<ApiResponse, ApiError> {
    Ok(ApiResponse::json(200, &serde_json::json!({"ok": true})))
}

fn failing_handler(_: &ApiRequest, _: &dyn Platform) -> Result<ApiResponse, ApiError> {
    Err(ApiError::conflict("already_done", "It was already done."))
}

const ENDPOINT: Endpoint = Endpoint {
    name: "demo",
    routes: &[
        Route { method: "POST", path: "/", handler: ok_handler },
        Route { method: "GET", path: "/products", handler: ok_handler },
        Route { method: "POST", path: "/fail", handler: failing_handler },
        Route { method: "GET", path: "/item/{id}", handler: ok_handler },
    ],
    body_limit: 1024,
};

fn request(method: &str, path: &str) -> ApiRequest {
    ApiRequest { method: method.into(), path: path.into(), request_id: "req-1".into(), ..ApiRequest::default() }
}

fn body_json(response: &ApiResponse) -> Value {
    serde_json::from_slice(response.body_bytes().expect("in-memory body")).expect("json body")
}

#[test]
fn routes_by_path_and_method() {
    let platform = FakePlatform::with_vars(&[]);
    let response = dispatch(&ENDPOINT, &request("GET", "/products/"), &platform);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-request-id"), Some("req-1"));
}

#[test]
fn a_named_segment_matches_one_non_empty_segment() {
    let platform = FakePlatform::with_vars(&[]);
    let status = |method: &str, path: &str| dispatch(&ENDPOINT, &request(method, path), &platform).status;
    assert_eq!(status("GET", "/item/cs_1"), 200);
    assert_eq!(status("GET", "/item/cs_1/"), 200);
    assert_eq!(status("POST", "/item/cs_1"), 405);
    for missing in ["/item", "/item/", "/item//", "/item/a/b", "/items/a"] {
        assert_eq!(status("GET", missing), 404, "{missing}");
    }
    assert_eq!(request("GET", "/item/cs_1/").path_segment(1), Some("cs_1"));
    assert_eq!(request("GET", "/item").path_segment(1), None);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let platform = FakePlatform::with_vars(&[]);
    let response = dispatch(&ENDPOINT, &request("DELETE", "/"), &platform);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST, OPTIONS"));
    assert_eq!(body_json(&response)["error"]["code"], "method_not_allowed");
}

#[test]
fn unknown_path_is_404_envelope() {
    let platform = FakePlatform::with_vars(&[]);
    let response = dispatch(&ENDPOINT, &request("POST", "/nope"), &platform);
    assert_eq!(response.status, 404);
    assert_eq!(body_json(&response)["error"]["code"], "route_not_found");
}

#[test]
fn handler_errors_become_the_envelope() {
    let platform = FakePlatform::with_vars(&[]);
    let response = dispatch(&ENDPOINT, &request("POST", "/fail"), &platform);
    assert_eq!(response.status, 409);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = body_json(&response);
    assert_eq!(body["error"]["code"], "already_done");
    assert_eq!(body["error"]["message"], "It was already done.");
}

#[test]
fn preflight_lists_every_method_and_the_supabase_headers() {
    let platform = FakePlatform::with_vars(&[("allowed_origins", "*")]);
    let mut preflight = request("OPTIONS", "/");
    preflight.headers.push(("origin".into(), "https://app.example".into()));
    let response = dispatch(&ENDPOINT, &preflight, &platform);
    assert_eq!(response.status, 204);
    assert_eq!(response.header("access-control-allow-methods"), Some("POST, GET, OPTIONS"));
    let allowed = response.header("access-control-allow-headers").unwrap();
    for header in ["authorization", "x-client-info", "apikey", "content-type"] {
        assert!(allowed.contains(header), "{header} missing from {allowed}");
    }
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn configured_origins_are_echoed_and_others_refused() {
    let platform = FakePlatform::with_vars(&[("allowed_origins", "https://a.example, https://b.example/")]);
    let mut from_b = request("POST", "/");
    from_b.headers.push(("origin".into(), "https://b.example".into()));
    let response = dispatch(&ENDPOINT, &from_b, &platform);
    assert_eq!(response.header("access-control-allow-origin"), Some("https://b.example"));
    assert_eq!(response.header("vary"), Some("Origin"));

    let mut from_evil = request("OPTIONS", "/");
    from_evil.headers.push(("origin".into(), "https://evil.example".into()));
    let response = dispatch(&ENDPOINT, &from_evil, &platform);
    assert_eq!(response.status, 403);
    assert_eq!(response.header("access-control-allow-origin"), None);
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Demo {
    name: String,
    minutes: u32,
}

fn with_body(body: &str) -> ApiRequest {
    let mut r = request("POST", "/");
    r.headers.push(("content-type".into(), "application/json; charset=utf-8".into()));
    r.body = body.as_bytes().to_vec();
    r
}

#[test]
fn json_errors_name_the_field() {
    let error = with_body(r#"{"name":"x","minutes":"ten"}"#).json::<Demo>().unwrap_err();
    assert_eq!(error.status, 400);
    assert_eq!(error.code, "invalid_body");
    assert!(error.message.contains("minutes"), "{}", error.message);

    let error = with_body(r#"{"name":"x"}"#).json::<Demo>().unwrap_err();
    assert!(error.message.contains("minutes"), "{}", error.message);

    let error = with_body(r#"{"name":"x","minutes":1,"admin":true}"#).json::<Demo>().unwrap_err();
    assert!(error.message.contains("admin"), "{}", error.message);
}

#[test]
fn json_rejects_empty_trailing_and_wrong_content_type() {
    assert_eq!(with_body("  ").json::<Demo>().unwrap_err().code, "empty_body");
    assert_eq!(with_body(r#"{"name":"x","minutes":1} x"#).json::<Demo>().unwrap_err().code, "invalid_body");
    let mut form = with_body("name=x");
    form.headers = vec![("content-type".into(), "application/x-www-form-urlencoded".into())];
    assert_eq!(form.json::<Demo>().unwrap_err().status, 415);
}

#[test]
fn deep_nesting_is_a_400_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(with_body(&deep).json::<Value>().unwrap_err().status, 400);
}

#[test]
fn config_missing_names_the_variable_not_a_value() {
    let platform = FakePlatform::with_vars(&[("openai_api_key", "")]);
    let error = crate::settings::OPENAI_API_KEY.require(&platform).unwrap_err();
    assert_eq!(error.status, 500);
    assert_eq!(error.code, "config_missing");
    assert!(error.message.contains("openai_api_key"));
}

#[test]
fn invalid_numeric_setting_is_config_invalid() {
    let platform = FakePlatform::with_vars(&[("ai_quota_free_per_hour", "lots")]);
    let error = crate::settings::AI_QUOTA_FREE_PER_HOUR.parse::<u32>(&platform).unwrap_err();
    assert_eq!(error.code, "config_invalid");
    let platform = FakePlatform::with_vars(&[("ai_quota_free_per_hour", " 12 ")]);
    assert_eq!(crate::settings::AI_QUOTA_FREE_PER_HOUR.parse::<u32>(&platform).unwrap(), 12);
}

#[test]
fn request_ids_are_echoed_only_when_safe() {
    assert_eq!(ApiRequest::choose_request_id(Some("abc-123"), &[1, 2]), "abc-123");
    assert_eq!(ApiRequest::choose_request_id(Some("<script>"), &[1, 255]), "01ff");
    assert_eq!(ApiRequest::choose_request_id(Some(&"a".repeat(65)), &[16]), "10");
    assert_eq!(ApiRequest::choose_request_id(None, &[]), "");
}

#[test]
fn error_envelope_carries_extra_fields_and_headers() {
    let error = ApiError::service_unavailable("tts_unavailable", "No voice provider answered.")
        .with_field("fallback", "browser");
    let response = ApiResponse::from(error);
    let body = body_json(&response);
    assert_eq!(body["fallback"], "browser");
    assert_eq!(body["error"]["code"], "tts_unavailable");

    let limited = ApiResponse::from(ApiError::too_many_requests(42, "Slow down."));
    assert_eq!(limited.header("retry-after"), Some("42"));
}

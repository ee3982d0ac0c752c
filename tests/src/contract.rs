//! Checks recorded responses against `openapi.yaml` (status, content type, JSON body
//! against the schema) and against the app's secret variables (no value in any body,
//! header or log line). [`crate::testing::TestApp`] runs both when a test ends, so every
//! end-to-end test is a contract test and a leak test too.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use crate::host::record::RecordedResponse;

/// The prefix supabase-js puts before a function's name; the spec lists paths without it.
const SUPABASE_PREFIX: &str = "/functions/v1";

/// `openapi.yaml`, parsed once, with every `$ref` inlined.
pub struct Spec {
    /// path → method → operation (refs resolved).
    paths: HashMap<String, HashMap<String, Value>>,
}

impl Spec {
    /// Parses a spec document and inlines its local `$ref`s.
    pub fn parse(yaml: &str) -> anyhow::Result<Spec> {
        let doc: Value = serde_yaml_ng::from_str(yaml)?;
        let resolved = inline_refs(&doc, &doc, 0)?;
        let mut paths = HashMap::new();
        for (path, item) in resolved["paths"].as_object().cloned().unwrap_or_default() {
            let mut methods = HashMap::new();
            for (method, op) in item.as_object().cloned().unwrap_or_default() {
                methods.insert(method.to_ascii_lowercase(), op);
            }
            paths.insert(path, methods);
        }
        Ok(Spec { paths })
    }

    /// The repository's `openapi.yaml` (loaded once per process).
    pub fn repo() -> &'static Spec {
        static SPEC: OnceLock<Spec> = OnceLock::new();
        SPEC.get_or_init(|| {
            let path = crate::repo_root().join("openapi.yaml");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            Spec::parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        })
    }

    /// Every way `response` breaks the contract (empty when it conforms). On a path the
    /// spec does not list only a 404 conforms.
    pub fn violations(&self, response: &RecordedResponse) -> Vec<String> {
        let path = response.path.strip_prefix(SUPABASE_PREFIX).filter(|p| p.starts_with('/')).unwrap_or(&response.path);
        let item = self.paths.get(path).or_else(|| {
            // A templated path (`/stripe-checkout/session/{id}`): each `{name}` segment
            // stands for one non-empty segment.
            self.paths
                .iter()
                .find(|(template, _)| template.contains('{') && matches_template(template, path))
                .map(|(_, item)| item)
        });
        let Some(item) = item else {
            // A path the document does not list may only be refused as not found (the
            // runtime's own 404, or a component's for a sub-path it does not serve): any
            // other answer there is an endpoint missing from `openapi.yaml`.
            if response.status == 404 {
                return Vec::new();
            }
            return vec![format!(
                "{} {} → {}: path not in openapi.yaml",
                response.method, response.path, response.status
            )];
        };
        let method = response.method.to_ascii_lowercase();
        let status = response.status.to_string();
        let what = format!("{} {} → {}", response.method, response.path, response.status);
        let mut problems = Vec::new();

        // An undocumented method must be answered 405 as some operation of the path says.
        let documented = match item.get(&method) {
            Some(op) => op["responses"]
                .get(&status)
                .or_else(|| op["responses"].get(format!("{}XX", &status[..1])))
                .or_else(|| op["responses"].get("default"))
                .cloned(),
            None => {
                if response.status != 405 {
                    problems.push(format!("{what}: method not documented and the answer is not 405"));
                    return problems;
                }
                item.values().find_map(|op| op["responses"].get("405").cloned())
            }
        };
        let Some(documented) = documented else {
            problems.push(format!("{what}: status not documented for this operation"));
            return problems;
        };

        if response.status == 405 && response.header("allow").is_none() {
            problems.push(format!("{what}: 405 without Allow"));
        }
        if response.status == 429 && response.header("retry-after").is_none() {
            problems.push(format!("{what}: 429 without Retry-After"));
        }

        let content = documented.get("content").and_then(Value::as_object);
        let content_type =
            response.header("content-type").map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        match (content, content_type) {
            (None, None) => {}
            (None, Some(_)) if response.body.is_empty() => {}
            (None, Some(ct)) => problems.push(format!("{what}: documented without a body but answered {ct}")),
            (Some(_), None) if response.body.is_empty() && response.status == 204 => {}
            (Some(media), None) => {
                problems.push(format!("{what}: no content-type; documented: {:?}", media.keys().collect::<Vec<_>>()))
            }
            (Some(media), Some(ct)) => match media.get(&ct) {
                None => problems
                    .push(format!("{what}: content-type {ct} not documented ({:?})", media.keys().collect::<Vec<_>>())),
                Some(entry) => {
                    if ct == "text/event-stream" {
                        if let Some(item) = entry.get("itemSchema") {
                            let cut = response.truncated || response.incomplete;
                            problems.extend(
                                event_errors(item, &response.body, cut).into_iter().map(|e| format!("{what}: {e}")),
                            );
                        }
                    } else if ct == "application/json" || ct.ends_with("+json") {
                        if response.truncated || response.incomplete {
                            return problems;
                        }
                        match serde_json::from_slice::<Value>(&response.body) {
                            Err(e) => {
                                problems.push(format!("{what}: body is not JSON ({e}): {}", preview(&response.body)))
                            }
                            Ok(body) => {
                                if let Some(schema) = entry.get("schema") {
                                    problems.extend(
                                        schema_errors(schema, &body)
                                            .into_iter()
                                            .map(|e| format!("{what}: {e}; body {}", preview(&response.body))),
                                    );
                                }
                            }
                        }
                    }
                }
            },
        }
        problems
    }
}

/// Whether `path` is an instance of the spec's `template`.
fn matches_template(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| if t.starts_with('{') && t.ends_with('}') { !p.is_empty() } else { t == p })
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.chars().count() > 400 {
        format!("{}…", text.chars().take(400).collect::<String>())
    } else {
        text.into_owned()
    }
}

fn schema_errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = match jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
    {
        Ok(v) => v,
        Err(e) => return vec![format!("the spec's schema does not compile: {e}")],
    };
    validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

/// Every way the events of a `text/event-stream` body break `item` (the media type's
/// `itemSchema`, OpenAPI 3.2): each event as an object (`data`, its `data:` lines joined
/// by newlines; `event` and `id` when sent), its JSON payload checked by [`content_errors`].
/// A body cut short loses its last, unfinished event.
fn event_errors(item: &Value, body: &[u8], cut: bool) -> Vec<String> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    // What follows the last blank line is an unfinished event (or nothing).
    let unfinished = blocks.pop().unwrap_or_default();
    if !cut && !unfinished.trim().is_empty() {
        return vec![format!("the stream ends inside an event: {}", preview(unfinished.as_bytes()))];
    }
    let mut problems = Vec::new();
    for block in blocks {
        let mut data = Vec::new();
        let mut event = serde_json::Map::new();
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => data.push(value),
                "event" | "id" => {
                    event.insert(field.to_string(), Value::from(value));
                }
                _ => {}
            }
        }
        if data.is_empty() {
            continue;
        }
        event.insert("data".into(), Value::from(data.join("\n")));
        let event = Value::Object(event);
        let mut errors = schema_errors(item, &event);
        if errors.is_empty() {
            if let Some(schema) = item.pointer("/properties/data") {
                errors = content_errors(schema, &event["data"]);
            }
        }
        problems.extend(errors.into_iter().map(|e| format!("event {}: {e}", preview(block.as_bytes()))));
    }
    problems
}

/// The `contentMediaType: application/json` + `contentSchema` rules of `schema` (and of
/// its `anyOf`/`oneOf` branches, one of which must hold), which JSON Schema validators
/// treat as annotations only.
fn content_errors(schema: &Value, value: &Value) -> Vec<String> {
    for keyword in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(keyword).and_then(Value::as_array) {
            let mut all = Vec::new();
            for branch in branches {
                let mut errors = schema_errors(branch, value);
                if errors.is_empty() {
                    errors = content_errors(branch, value);
                }
                if errors.is_empty() {
                    return Vec::new();
                }
                all.extend(errors);
            }
            return vec![format!("matches no branch of {keyword}: {}", all.join("; "))];
        }
    }
    let (Some("application/json"), Some(text)) =
        (schema.get("contentMediaType").and_then(Value::as_str), value.as_str())
    else {
        return Vec::new();
    };
    match serde_json::from_str::<Value>(text) {
        Err(e) => vec![format!("not JSON ({e})")],
        Ok(parsed) => schema.get("contentSchema").map(|s| schema_errors(s, &parsed)).unwrap_or_default(),
    }
}

/// `doc` with every `{"$ref": "#/..."}` replaced by what it points at.
fn inline_refs(value: &Value, root: &Value, depth: usize) -> anyhow::Result<Value> {
    anyhow::ensure!(depth < 64, "$ref nesting too deep (a cycle?)");
    Ok(match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                let pointer =
                    reference.strip_prefix('#').ok_or_else(|| anyhow::anyhow!("only local $refs: {reference}"))?;
                let target = root.pointer(pointer).ok_or_else(|| anyhow::anyhow!("dangling $ref {reference}"))?;
                return inline_refs(target, root, depth + 1);
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), inline_refs(v, root, depth)?)))
                    .collect::<anyhow::Result<_>>()?,
            )
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| inline_refs(v, root, depth)).collect::<anyhow::Result<_>>()?)
        }
        other => other.clone(),
    })
}

/// The names of the variables `spin.toml` marks `secret = true`.
pub fn secret_variable_names(manifest: &Path) -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string(manifest) else { return BTreeSet::new() };
    let Ok(doc) = text.parse::<toml::Table>() else { return BTreeSet::new() };
    doc.get("variables")
        .and_then(|v| v.as_table())
        .map(|vars| {
            vars.iter()
                .filter(|(_, def)| def.get("secret").and_then(|s| s.as_bool()) == Some(true))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Values shorter than this are not searched for (they would match by chance).
pub const MIN_SECRET_LEN: usize = 8;

/// The secret strings to look for: each secret variable's value, and for comma-separated
/// lists (webhook secrets during a rotation) each item; the password of a Postgres URL.
pub fn secret_values(names: &BTreeSet<String>, variables: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in names {
        let Some(value) = variables.get(name) else { continue };
        let mut candidates = vec![value.trim().to_string()];
        if value.contains(',') {
            candidates.extend(value.split(',').map(|s| s.trim().to_string()));
        }
        if let Ok(config) = value.parse::<tokio_postgres::Config>() {
            if let Some(password) = config.get_password() {
                candidates.push(String::from_utf8_lossy(password).into_owned());
            }
            // The address itself (user@host:port/db) is not a secret; only its password.
            candidates.remove(0);
        }
        for c in candidates {
            if c.len() >= MIN_SECRET_LEN {
                out.push((name.clone(), c));
            }
        }
    }
    out
}

/// Every place a secret value shows up in the recorded responses or the log.
pub fn leaks(secrets: &[(String, String)], responses: &[RecordedResponse], logs: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, value) in secrets {
        let needle = value.as_bytes();
        for r in responses {
            let what = format!("{} {} → {}", r.method, r.path, r.status);
            if contains(&r.body, needle) {
                found.push(format!("{name} in the body of {what}"));
            }
            for (header, v) in &r.headers {
                if v.contains(value.as_str()) {
                    found.push(format!("{name} in header {header} of {what}"));
                }
            }
        }
        for line in logs {
            if line.contains(value.as_str()) {
                found.push(format!("{name} in log line {line:?}"));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(method: &str, path: &str, status: u16, ct: Option<&str>, body: &str) -> RecordedResponse {
        RecordedResponse {
            method: method.into(),
            path: path.into(),
            status,
            headers: ct.map(|c| vec![("content-type".to_string(), c.to_string())]).unwrap_or_default(),
            body: body.as_bytes().to_vec(),
            truncated: false,
            incomplete: false,
        }
    }

    #[test]
    fn the_spec_parses_and_catches_mismatches() {
        let spec = Spec::repo();
        let ok = record(
            "POST",
            "/functions/v1/session-complete",
            401,
            Some("application/json"),
            r#"{"error":{"code":"unauthorized","message":"m"}}"#,
        );
        assert!(spec.violations(&ok).is_empty(), "{:?}", spec.violations(&ok));
        let bad_body = record("POST", "/session-complete", 401, Some("application/json"), r#"{"message":"m"}"#);
        assert!(!spec.violations(&bad_body).is_empty());
        let bad_status = record("POST", "/session-complete", 418, Some("application/json"), "{}");
        assert!(!spec.violations(&bad_status).is_empty());
        let bad_type = record("POST", "/session-complete", 401, Some("text/plain"), "no");
        assert!(!spec.violations(&bad_type).is_empty());
        let other_path = record("GET", "/nowhere", 404, Some("text/plain"), "Not Found");
        assert!(spec.violations(&other_path).is_empty());
        let undocumented = record("GET", "/functions/v1/stripe-checkout/secret-admin", 200, None, "");
        assert!(!spec.violations(&undocumented).is_empty(), "a path missing from openapi.yaml must fail");
        let undocumented_error = record("POST", "/nowhere", 500, Some("application/json"), "{}");
        assert!(!spec.violations(&undocumented_error).is_empty());
        // A templated path is checked too.
        let templated = "/functions/v1/stripe-checkout/session/cs_test_1";
        let bad = record("GET", templated, 200, Some("application/json"), r#"{"status":"weird"}"#);
        assert!(!spec.violations(&bad).is_empty());
        let not_found = r#"{"error":{"code":"checkout_session_not_found","message":"m"}}"#;
        assert!(spec.violations(&record("GET", templated, 404, Some("application/json"), not_found)).is_empty());
        assert!(!matches_template("/stripe-checkout/session/{id}", "/stripe-checkout/session/"));
        assert!(!matches_template("/stripe-checkout/session/{id}", "/stripe-checkout/session/a/b"));
    }

    #[test]
    fn each_server_sent_event_is_checked() {
        let spec = Spec::repo();
        let stream = |body: &str| record("POST", "/chatgpt-chat", 200, Some("text/event-stream"), body);
        let whole = "data: {\"delta\":\"Hel\"}\n\ndata: {\"delta\":\"lo\"}\n\n\
                     data: {\"done\":true,\"model\":\"gpt-4o-mini\",\"usage\":null}\n\ndata: [DONE]\n\n";
        assert!(spec.violations(&stream(whole)).is_empty(), "{:?}", spec.violations(&stream(whole)));
        let broken = "data: {\"delta\":\"Hel\"}\n\n\
                      data: {\"error\":{\"code\":\"ai_interrupted\",\"message\":\"m\"},\"retryable\":true}\n\ndata: [DONE]\n\n";
        assert!(spec.violations(&stream(broken)).is_empty(), "{:?}", spec.violations(&stream(broken)));
        for bad in [
            "data: {\"delta\":3}\n\n",
            "data: {\"delta\":\"x\",\"extra\":1}\n\n",
            "data: not json\n\n",
            "data: {\"done\":true}\n\n",
            "data: {\"delta\":\"x\"}",
        ] {
            assert!(!spec.violations(&stream(bad)).is_empty(), "{bad:?} passed");
        }
    }

    #[test]
    fn secrets_are_found_in_bodies_headers_and_logs() {
        let names: BTreeSet<String> = ["k".to_string(), "db".to_string(), "hooks".to_string()].into();
        let vars: HashMap<String, String> = [
            ("k".to_string(), "sk_live_fake-test-value".to_string()),
            ("db".to_string(), "postgres://u:hunter2hunter2@h:5432/d".to_string()),
            ("hooks".to_string(), "whsec_aaaaaaaa,whsec_bbbbbbbb".to_string()),
        ]
        .into();
        let secrets = secret_values(&names, &vars);
        let r = record("POST", "/x", 200, None, "oops sk_live_fake-test-value");
        let logs = vec!["connect failed for hunter2hunter2".to_string(), "whsec_bbbbbbbb".to_string()];
        assert_eq!(leaks(&secrets, &[r], &logs).len(), 3);
    }
}

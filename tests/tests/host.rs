//! The host runs components the way Spin does. Uses the fixture component
//! (`tests/fixture`, built by `scripts/build-wasm.sh`) under manifests written per test.
//!
//! Each claim that the host behaves like Spin is asserted against the runtime
//! `LIBERO_RUNTIME` names: under `spin` the same manifest is served by real `spin up`, so
//! the claim is checked against Spin itself and not only against the host. What only the
//! host has (its zero-row counter, its JSON answer to a trap, its log lines) is asserted
//! on the host alone; where Spin differs on purpose the test says so.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libero_tests::db::{self, TestDb};
use libero_tests::host::{self, AppOptions, RunningApp};
use libero_tests::spin::{RuntimeKind, SpinApp};
use libero_tests::testing::db_host;
use serde_json::{json, Value};

/// A manifest serving the fixture as `fixture` (database and `{{ upstream }}` allowed)
/// and as `denied` (nothing allowed), plus `extra` TOML appended.
fn manifest(extra: &str) -> String {
    format!(
        r#"spin_manifest_version = 2
[application]
name = "fixture"

[variables]
database_url = {{ required = true, secret = true }}
db_host = {{ default = "127.0.0.1:5432" }}
greeting = {{ default = "hello" }}
upstream = {{ default = "http://127.0.0.1:9" }}

[[trigger.http]]
route = "/fixture/..."
component = "fixture"

[[trigger.http]]
route = "/exact"
component = "fixture"

[[trigger.http]]
route = "/fixture/headers"
component = "denied"

[[trigger.http]]
route = "/denied/..."
component = "denied"

[component.fixture]
source = "{wasm}"
allowed_outbound_hosts = ["postgres://{{{{ db_host }}}}", "{{{{ upstream }}}}"]
[component.fixture.variables]
database_url = "{{{{ database_url }}}}"
greeting = "{{{{ greeting }}}}"
templated = "pre-{{{{ greeting }}}}-post"
literal = "just text"

[component.denied]
source = "{wasm}"
[component.denied.variables]
database_url = "{{{{ database_url }}}}"
{extra}"#,
        wasm = libero_tests::fixture_wasm().display()
    )
}

/// The runtime serving a fixture manifest: the bundled host, or real Spin.
enum Served {
    Host(RunningApp),
    Spin(SpinApp),
}

impl Served {
    async fn start(manifest: &Path, variables: HashMap<String, String>) -> anyhow::Result<Served> {
        Ok(match RuntimeKind::from_env() {
            RuntimeKind::Host => {
                let mut options = AppOptions::new(manifest);
                options.variables = variables;
                Served::Host(host::start(options).await?)
            }
            RuntimeKind::Spin => Served::Spin(SpinApp::start(manifest, &variables, false).await?),
        })
    }
}

struct Fixture {
    served: Served,
    client: reqwest::Client,
    db: Option<TestDb>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(vars: &[(&str, &str)], extra: &str, with_db: bool) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("spin.toml");
        std::fs::write(&path, manifest(extra))?;
        let mut variables: HashMap<String, String> = HashMap::new();
        let test_db = if with_db { Some(db::fresh_database().await?) } else { None };
        match &test_db {
            Some(d) => {
                variables.insert("database_url".into(), d.url.clone());
                variables.insert("db_host".into(), db_host(&d.url));
            }
            None => {
                variables.insert("database_url".into(), "postgres://nobody@127.0.0.1:1/none".into());
            }
        }
        for (k, v) in vars {
            variables.insert(k.to_string(), v.to_string());
        }
        let served = Served::start(&path, variables).await?;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Fixture { served, client, db: test_db, _dir: dir })
    }

    /// The bundled host, when it is the runtime (for what only it can tell).
    fn host(&self) -> Option<&RunningApp> {
        match &self.served {
            Served::Host(app) => Some(app),
            Served::Spin(_) => None,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match &self.served {
            Served::Host(app) => app.addr,
            Served::Spin(app) => app.addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// GET a fixture route that answers `{"ok": ...}`, returning the `ok` value.
    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body.get("ok").cloned().unwrap_or_else(|| panic!("{path}: expected ok, got {body}"))
    }

    async fn err(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body.get("error").cloned().unwrap_or_else(|| panic!("{path}: expected error, got {body}"))
    }
}

fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

// ---- variables ----------------------------------------------------------------------

#[tokio::test]
async fn variables_resolve_like_spin() {
    let f = Fixture::start(&[], "", false).await.unwrap();
    assert_eq!(f.ok("/fixture/var?name=greeting").await, "hello", "default");
    assert_eq!(f.ok("/fixture/var?name=templated").await, "pre-hello-post", "template");
    assert_eq!(f.ok("/fixture/var?name=literal").await, "just text", "literal");
    assert_eq!(f.err("/fixture/var?name=upstream").await, "undefined", "app variable not declared by the component");
    assert_eq!(f.err("/fixture/var?name=nope").await, "undefined");
    assert_eq!(f.err("/fixture/var?name=Bad-Name").await, "invalid-name");

    let f = Fixture::start(&[("greeting", "hi")], "", false).await.unwrap();
    assert_eq!(f.ok("/fixture/var?name=greeting").await, "hi", "override");
    assert_eq!(f.ok("/fixture/var?name=templated").await, "pre-hi-post");
}

#[tokio::test]
async fn a_required_variable_without_a_value_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spin.toml");
    std::fs::write(
        &path,
        manifest("").replace(
            "greeting = { default = \"hello\" }",
            "greeting = { default = \"hello\" }\napi_secret = { required = true }",
        ),
    )
    .unwrap();
    let mut variables = HashMap::from([("database_url".to_string(), "postgres://x@127.0.0.1:1/x".to_string())]);
    let err = Served::start(&path, variables.clone()).await.err().expect("start must fail");
    assert!(format!("{err:#}").contains("api_secret"), "{err:#}");

    variables.insert("api_secret".into(), "s".into());
    Served::start(&path, variables).await.expect("starts once the variable has a value");
}

// ---- postgres -----------------------------------------------------------------------

/// Spin keeps a connection pool for each component (64 per database address), not one
/// for the app: a component whose requests hold every connection of its pool leaves
/// another component's free.
#[tokio::test]
async fn each_component_has_its_own_connection_pool() {
    let second = format!(
        r#"
[[trigger.http]]
route = "/second/..."
component = "second"

[component.second]
source = "{}"
allowed_outbound_hosts = ["postgres://{{{{ db_host }}}}"]
[component.second.variables]
database_url = "{{{{ database_url }}}}"
"#,
        libero_tests::fixture_wasm().display()
    );
    let f = &Fixture::start(&[], &second, true).await.unwrap();
    let db = f.db.as_ref().unwrap().client().await;
    let sleep = format!("/fixture/pg/query?sql={}", encode("SELECT 1 AS n FROM (SELECT pg_sleep(4)) s"));
    let holders = futures_util::future::join_all((0..64).map(|_| f.get(&sleep)));
    let rest = async {
        // Every connection of the fixture's pool asleep.
        let started = Instant::now();
        loop {
            let sleeping: i64 = db
                .query_one("select count(*) from pg_stat_activity where wait_event = 'PgSleep'", &[])
                .await
                .unwrap()
                .get(0);
            if sleeping == 64 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "only {sleeping} of 64 requests asleep");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let asleep = Instant::now();
        let timed = |path: &'static str| async move {
            let answer = f.get(path).await;
            (answer, asleep.elapsed())
        };
        tokio::join!(timed("/second/pg/select1"), timed("/fixture/pg/select1"))
    };
    let (answers, ((second, second_took), (same, same_took))) = tokio::join!(holders, rest);
    assert!(answers.iter().all(|(status, body)| *status == 200 && body.get("ok").is_some()), "{answers:?}");
    assert_eq!((second.0, same.0), (200, 200), "{second:?} {same:?}");
    assert!(
        second_took < Duration::from_secs(2),
        "the second component waited {second_took:?} for a connection while the first held all of its own"
    );
    assert!(
        same_took > Duration::from_secs(1),
        "the first component got a connection at once ({same_took:?}): its pool was not full, the test shows nothing"
    );
}

#[tokio::test]
async fn every_postgres_type_round_trips() {
    let f = Fixture::start(&[], "", true).await.unwrap();
    let result = f.ok("/fixture/pg/roundtrip").await;
    let columns: Vec<(String, String)> = result["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["type"].as_str().unwrap().to_string()))
        .collect();
    let row = result["rows"][0].as_array().unwrap().clone();
    let by_name: HashMap<&str, (&str, &Value)> =
        columns.iter().zip(&row).map(|((n, t), v)| (n.as_str(), (t.as_str(), v))).collect();
    let expect = |name: &str, ty: &str, value: Value| {
        let (t, v) = by_name[name];
        assert_eq!(t, ty, "type of {name}");
        assert_eq!(v, &value, "value of {name}");
    };
    expect("boolean", "Boolean", json!({"boolean": true}));
    expect("int16", "Int16", json!({"int16": -12}));
    expect("int32", "Int32", json!({"int32": 123456}));
    expect("int64", "Int64", json!({"int64": 9007199254740993i64}));
    expect("floating32", "Floating32", json!({"floating32": 1.5}));
    expect("floating64", "Floating64", json!({"floating64": -2.25}));
    expect("str", "Str", json!({"str": "héllo"}));
    expect("binary", "Binary", json!({"binary": [0, 1, 254, 255]}));
    expect("date", "Date", json!({"date": [2024, 2, 29]}));
    expect("time", "Time", json!({"time": [13, 14, 15, 500000000]}));
    expect("datetime", "Datetime", json!({"datetime": [2024, 2, 29, 13, 14, 15, 0]}));
    // 1_700_000_000 = 2023-11-14T22:13:20Z
    expect("timestamp_utc", "Datetime", json!({"datetime": [2023, 11, 14, 22, 13, 20, 0]}));
    expect("uuid", "Uuid", json!({"uuid": "6f1c1e8e-3b8a-4c1e-9a55-2f0f4d8e9b10"}));
    expect("jsonb", "Jsonb", json!({"jsonb": r#"{"a":[1,2,{"b":null}]}"#}));
    expect("decimal", "Decimal", json!({"decimal": "12345.678900"}));
    expect("array_int32", "ArrayInt32", json!({"array-int32": [1, null, 3]}));
    expect("array_int64", "ArrayInt64", json!({"array-int64": [4000000000i64, null]}));
    expect("array_str", "ArrayStr", json!({"array-str": ["x", null, "z"]}));
    expect("interval", "Interval", json!({"interval": [1500000, 2, 3]}));
    expect("null_text", "Str", json!("db-null"));
    expect("char8", "Other(\"char\")", json!({"unsupported": [65]}));
    expect("varchar", "Str", json!({"str": "v"}));
    expect("bpchar", "Str", json!({"str": "abc "}));
}

#[tokio::test]
async fn postgres_conversions_fail_where_spin_fails() {
    let f = Fixture::start(&[], "", true).await.unwrap();
    // Spin binds `str` as text: it does not convert to uuid.
    let e = f.err("/fixture/pg/str-for-uuid").await;
    assert_eq!(e["kind"], "query-failed", "{e}");
    // Spin reads timestamptz through a timestamp decoder, which fails...
    let e = f.err(&format!("/fixture/pg/query?sql={}", encode("SELECT now() AS t"))).await;
    assert_eq!(e["kind"], "query-failed", "{e}");
    // ...so components select it in UTC, without time zone.
    let ok = f.ok(&format!("/fixture/pg/query?sql={}", encode("SELECT now() AT TIME ZONE 'UTC' AS t"))).await;
    assert_eq!(ok["columns"][0]["type"], "Datetime");
    // json (not jsonb) and name come back unsupported.
    let ok = f.ok(&format!("/fixture/pg/query?sql={}", encode("SELECT '{}'::json AS j"))).await;
    assert_eq!(ok["columns"][0]["type"], "Other(\"json\")");
}

#[tokio::test]
async fn a_query_with_zero_rows_traps_where_spin_4_0_hangs() {
    let f = Fixture::start(&[], "", true).await.unwrap();
    let zero_rows = format!("/fixture/pg/query?sql={}", encode("SELECT 1 WHERE false"));
    match f.host() {
        Some(app) => {
            let (status, _) = f.get(&zero_rows).await;
            assert_eq!(status, 500, "the instance traps instead of answering");
            assert_eq!(app.zero_row_queries(), 1);
            let logs = app.logs().join("\n");
            assert!(logs.contains("Spin 4.0.0-4.0.2 never return") && logs.contains("SELECT 1 WHERE false"), "{logs}");
        }
        None => {
            // What the host's trap stands for: Spin 4.0 never answers such a request.
            let answer = f.client.get(f.url(&zero_rows)).timeout(Duration::from_secs(5)).send().await;
            let error = answer.expect_err("Spin 4.0 answered a query that returned zero rows");
            assert!(error.is_timeout(), "{error}");
        }
    }
    // `execute` has no rows to hang on, and a one-row query still answers.
    assert_eq!(f.ok(&format!("/fixture/pg/execute?sql={}", encode("SELECT 1 WHERE false"))).await, 0);
    let ok = f.ok(&format!("/fixture/pg/query?sql={}", encode("SELECT (SELECT 1 WHERE false) AS n"))).await;
    assert_eq!(ok["rows"], json!([["db-null"]]));
    if let Some(app) = f.host() {
        assert_eq!(app.zero_row_queries(), 1);
    }
}

#[tokio::test]
async fn postgres_errors_carry_sqlstate_and_details() {
    let f = Fixture::start(&[], "", true).await.unwrap();
    let e = f.err(&format!("/fixture/pg/query?sql={}", encode("SELECT * FROM no_such_table"))).await;
    assert_eq!((e["kind"].as_str(), e["code"].as_str()), (Some("db-error"), Some("42P01")), "{e}");
    assert_eq!(e["severity"], "ERROR");

    let n = f
        .ok(&format!("/fixture/pg/execute?sql={}", encode("CREATE TABLE t (id int CONSTRAINT t_pk PRIMARY KEY)")))
        .await;
    assert_eq!(n, 0);
    assert_eq!(f.ok(&format!("/fixture/pg/execute?sql={}", encode("INSERT INTO t VALUES (1)"))).await, 1);
    let e = f.err(&format!("/fixture/pg/execute?sql={}", encode("INSERT INTO t VALUES (1)"))).await;
    assert_eq!(e["code"], "23505", "{e}");
    assert!(e["detail"].as_str().unwrap().contains("(id)=(1)"), "{e}");
    assert!(e["extras"].as_array().unwrap().contains(&json!(["constraint", "t_pk"])), "{e}");

    let f = Fixture::start(&[], "", false).await.unwrap();
    let e = f.err("/fixture/pg/select1").await;
    assert_eq!(e["kind"], "connection-failed", "{e}");
}

#[tokio::test]
async fn an_open_transaction_survives_in_the_pool_as_under_spin() {
    let f = Fixture::start(&[], "", true).await.unwrap();
    let execute = |sql: &str| format!("/fixture/pg/execute?sql={}", encode(sql));
    let committed = || async {
        let client = f.db.as_ref().unwrap().client().await;
        client.query_one("SELECT count(*) FROM tx_probe", &[]).await.unwrap().get::<_, i64>(0)
    };
    f.ok(&execute("CREATE TABLE tx_probe (n int)")).await;
    // One request begins a transaction and returns without ending it...
    f.ok(&execute("BEGIN")).await;
    // ...so the next request on that pooled connection writes inside it,
    f.ok(&execute("INSERT INTO tx_probe VALUES (1)")).await;
    assert_eq!(committed().await, 0, "the insert ran in the open transaction");
    // and whoever gets the connection next can commit it.
    f.ok(&execute("COMMIT")).await;
    assert_eq!(committed().await, 1);
}

#[tokio::test]
async fn postgres_hosts_must_be_allowed() {
    let f = Fixture::start(&[], "", true).await.unwrap();
    let e = f.err("/denied/pg/select1").await;
    assert_eq!(e["kind"], "connection-failed", "{e}");
    assert!(e["message"].as_str().unwrap().contains("not permitted"), "{e}");
    assert_eq!(f.ok("/fixture/pg/select1").await["rows"][0][0], json!({"int32": 1}));
}

// ---- outbound HTTP --------------------------------------------------------------------

#[tokio::test]
async fn outbound_http_is_allowed_only_to_listed_hosts() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/ping"))
        .respond_with(ResponseTemplate::new(201).set_body_string("pong"))
        .mount(&upstream)
        .await;
    let f = Fixture::start(&[("upstream", &upstream.uri())], "", false).await.unwrap();
    let target = encode(&format!("{}/ping", upstream.uri()));

    let (_, body) = f.get(&format!("/fixture/http?url={target}")).await;
    assert_eq!(body, json!({"status": 201, "body": "pong"}));

    let (_, body) = f.get(&format!("/denied/http?url={target}")).await;
    assert!(body["error"].as_str().unwrap().contains("HttpRequestDenied"), "{body}");
    if let Some(app) = f.host() {
        assert!(app.logs().iter().any(|l| l.contains("denied")), "{:?}", app.logs());
    }

    // Another port on the same host is a different destination.
    let (_, body) = f.get(&format!("/fixture/http?url={}", encode("http://127.0.0.1:9/x"))).await;
    assert!(body["error"].as_str().unwrap().contains("HttpRequestDenied"), "{body}");
    assert_eq!(upstream.received_requests().await.unwrap().len(), 1);
}

// ---- routing and errors -----------------------------------------------------------------

#[tokio::test]
async fn routes_match_like_spin() {
    let f = Fixture::start(&[], "", false).await.unwrap();
    let (status, h) = f.get("/fixture/deep/er/headers?x=1").await;
    assert_eq!(status, 200);
    assert_eq!(h["spin-path-info"], "/deep/er/headers");
    assert_eq!(h["spin-matched-route"], "/fixture/...");
    assert_eq!(h["spin-component-route"], "/fixture");
    assert_eq!(h["spin-raw-component-route"], "/fixture/...");
    assert_eq!(h["spin-base-path"], "/");
    assert_eq!(h["spin-full-url"], format!("http://{}/fixture/deep/er/headers?x=1", f.addr()));
    assert!(h["spin-client-addr"].as_str().unwrap().starts_with("127.0.0.1:"));

    // The exact route beats the wildcard that also matches.
    let (_, h) = f.get("/fixture/headers").await;
    assert_eq!(h["spin-matched-route"], "/fixture/headers");
    assert_eq!(h["spin-path-info"], "");

    // An exact route and a wildcard route can serve one component.
    assert_eq!(f.get("/fixture/noop").await, (200, json!("ok")));
    let (status, _) = f.get("/exact").await;
    assert_eq!(status, 404, "the fixture has no handler for /exact itself");
    let (status, _) = f.get("/exact/more").await;
    assert_eq!(status, 404, "exact routes do not match longer paths");
    let (status, _) = f.get("/nowhere").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_trap_answers_500_json_and_is_logged() {
    let f = Fixture::start(&[], "", false).await.unwrap();
    let (status, body) = f.get("/fixture/panic").await;
    assert_eq!(status, 500);
    // The JSON body is the host's own (Spin answers a trap with a bare 500).
    if let Some(app) = f.host() {
        assert_eq!(body["error"]["code"], "internal_error", "{body}");
        assert!(app.logs().iter().any(|l| l.contains("trap")), "{:?}", app.logs());
    }
    // The next request gets a fresh instance and works.
    assert_eq!(f.get("/fixture/noop").await, (200, json!("ok")));
}

#[tokio::test]
async fn streamed_responses_are_not_buffered() {
    let f = Fixture::start(&[], "", false).await.unwrap();
    let started = Instant::now();
    let response = f.client.get(f.url("/fixture/stream?n=3&delay_ms=600")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("chunk 0"));
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let total = started.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("chunk 2"));
    assert!(total >= Duration::from_millis(1200), "total {total:?}");
    assert!(first_at + Duration::from_millis(600) < total, "first chunk at {first_at:?}, total {total:?}");
}

//! Helpers for end-to-end tests: the real `spin.toml` served by [`crate::host`] against a
//! fresh database, with upstream base URLs pointed at a closed loopback port unless a
//! test points them at its own fake (so no test can reach the internet by accident).
//!
//! ```no_run
//! # async fn demo() {
//! use libero_tests::testing::TestApp;
//! let app = TestApp::spawn_with(|vars| {
//!     vars.insert("openai_api_key".into(), "sk-test".into());
//! })
//! .await;
//! let user = app.create_user().await;
//! let response = app
//!     .client
//!     .post(app.url("/functions/v1/session-complete"))
//!     .bearer_auth(app.token_for(user))
//!     .send()
//!     .await
//!     .unwrap();
//! app.assert_ledger_consistent().await;
//! # }
//! ```

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use crate::db::{self, TestDb};
use crate::host::{self, record::RecordedResponse, AppOptions, RunningApp};
use crate::spin::{RuntimeKind, SpinApp};

/// A closed port on loopback: the default for every upstream base URL in tests, so a
/// request a test did not plan for fails fast instead of leaving the machine.
pub const CLOSED_UPSTREAM: &str = "http://127.0.0.1:9";

/// The runtime serving the app: the bundled host, or real Spin (`LIBERO_RUNTIME=spin`).
pub enum Runtime {
    Host(RunningApp),
    Spin(SpinApp),
}

impl Runtime {
    /// The project's `spin.toml` with these variables, on the runtime `LIBERO_RUNTIME`
    /// names (the bundled host unless it says `spin`).
    pub async fn start(variables: &HashMap<String, String>) -> Runtime {
        let manifest = crate::repo_root().join("spin.toml");
        let echo_logs = std::env::var_os("LIBERO_ECHO_LOGS").is_some();
        match RuntimeKind::from_env() {
            RuntimeKind::Host => {
                let mut options = AppOptions::new(manifest);
                options.variables = variables.clone();
                options.echo_logs = echo_logs;
                options.record_responses = true;
                Runtime::Host(host::start(options).await.expect("starting the app (did scripts/build-wasm.sh run?)"))
            }
            RuntimeKind::Spin => Runtime::Spin(
                SpinApp::start(&manifest, variables, echo_logs)
                    .await
                    .expect("starting spin up (did scripts/build-wasm.sh run?)"),
            ),
        }
    }

    /// `http://<app>/<path>`.
    pub fn url(&self, path: &str) -> String {
        match self {
            Runtime::Host(app) => app.url(path),
            Runtime::Spin(app) => format!("http://{}{path}", app.addr),
        }
    }

    /// What the components (and the runtime, about them) printed so far.
    pub fn logs(&self) -> Vec<String> {
        match self {
            Runtime::Host(app) => app.logs(),
            Runtime::Spin(app) => app.logs(),
        }
    }

    /// Every response so far: only the bundled host records them.
    pub fn recorded(&self) -> Vec<RecordedResponse> {
        match self {
            Runtime::Host(app) => app.recorded(),
            Runtime::Spin(_) => Vec::new(),
        }
    }

    /// Queries that returned zero rows (the bundled host traps on them; Spin 4.0.x hangs,
    /// which a test sees as a timeout).
    pub fn zero_row_queries(&self) -> u64 {
        match self {
            Runtime::Host(app) => app.zero_row_queries(),
            Runtime::Spin(_) => 0,
        }
    }

    pub fn is_spin(&self) -> bool {
        matches!(self, Runtime::Spin(_))
    }
}

/// Short retry budgets for OpenAI and ElevenLabs, so a test of a slow or failing upstream
/// takes seconds: two attempts, each bounded by `timeout_ms`, waiting 10 to
/// `retry_max_ms` between them, the whole call by `deadline_ms`.
pub fn upstream_retries(vars: &mut HashMap<String, String>, retry_max_ms: u64, timeout_ms: u64, deadline_ms: u64) {
    for prefix in ["openai", "elevenlabs"] {
        for (name, value) in [
            ("max_attempts", 2),
            ("retry_base_ms", 10),
            ("retry_max_ms", retry_max_ms),
            ("timeout_ms", timeout_ms),
            ("deadline_ms", deadline_ms),
        ] {
            vars.insert(format!("{prefix}_{name}"), value.to_string());
        }
    }
}

/// For a test that needs what only the bundled host offers (fault injection, response
/// recording, a Postgres cluster of its own): true under real Spin, where the test is
/// skipped through [`skip`] (a failure unless skips are allowed, and always in CI).
pub fn host_only(why: &str) -> bool {
    let skip_it = RuntimeKind::from_env() == RuntimeKind::Spin;
    if skip_it {
        skip(&format!("bundled host only, not run under real Spin: {why}"));
    }
    skip_it
}

/// Set to `1` to let tests skip outside CI (a missing tool, a host-only test under Spin);
/// without it a skip fails the test, so that it never reads as a pass.
pub const ALLOW_SKIPS: &str = "LIBERO_ALLOW_SKIPS";

/// Set by `scripts/test.sh` to a file each skip appends a line to, so that the counts it
/// prints are of tests that ran.
pub const SKIP_LOG: &str = "LIBERO_SKIP_LOG";

/// A test that cannot run here says why and returns (the caller returns at once after
/// it). With `CI` set this is a failure, always: a skip must not pass CI. Outside CI it is
/// a failure too unless `LIBERO_ALLOW_SKIPS=1`; then it prints `SKIPPED: <why>` and
/// appends the test's name to the file `LIBERO_SKIP_LOG` names.
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_string();
    if std::env::var_os("CI").is_some() {
        panic!("{test}: would be skipped ({why}), and CI is set: in CI every test runs");
    }
    if std::env::var_os(ALLOW_SKIPS).is_none_or(|v| v != "1") {
        panic!("{test}: cannot run here ({why}); set {ALLOW_SKIPS}=1 to skip it (outside CI only)");
    }
    eprintln!("SKIPPED: {test}: {why}");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{test}: {why}");
        }
    }
}

/// A request to a hung instance must fail the test, not stall the run: Spin 4.0.x never
/// answers a request whose statement returned zero rows.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The app under test, its database and a client.
pub struct TestApp {
    pub app: Runtime,
    pub db: TestDb,
    pub client: reqwest::Client,
    /// The HS256 secret the app verifies tokens with (`supabase_jwt_secret`).
    pub jwt_secret: String,
    /// The variables the app was started with.
    pub variables: HashMap<String, String>,
}

impl TestApp {
    /// The app with default test variables.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// The app with default test variables, adjusted by `configure` (variable name →
    /// value; e.g. point `openai_base_url` at a `wiremock` server's `uri()`).
    pub async fn spawn_with(configure: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
        let db = db::fresh_database().await.expect("creating the test database");
        Self::spawn_on(db, configure).await
    }

    /// Like [`TestApp::spawn_with`], on a database the test made (e.g. with
    /// [`db::fresh_database_on`] on a cluster of its own).
    pub async fn spawn_on(db: TestDb, configure: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
        let jwt_secret = random_secret();
        let mut variables = HashMap::new();
        for (k, v) in [
            ("database_url", db.url.as_str()),
            ("supabase_jwt_secret", jwt_secret.as_str()),
            ("allowed_origins", "*"),
            ("app_origins", "http://localhost:5173"),
            ("stripe_api_base", CLOSED_UPSTREAM),
            ("openai_base_url", CLOSED_UPSTREAM),
            ("elevenlabs_base_url", CLOSED_UPSTREAM),
            ("supabase_jwks_host", CLOSED_UPSTREAM),
        ] {
            variables.insert(k.to_string(), v.to_string());
        }
        variables.insert("db_host".into(), db_host(&db.url));
        configure(&mut variables);

        let app = Runtime::start(&variables).await;
        let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build().expect("a reqwest client");
        TestApp { app, db, client, jwt_secret, variables }
    }

    /// `http://<app>/<path>`.
    pub fn url(&self, path: &str) -> String {
        self.app.url(path)
    }

    /// A connection to the test database (as its owner: bypasses RLS).
    pub async fn db_client(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    /// Guest output so far (see [`RunningApp::logs`]).
    pub fn logs(&self) -> Vec<String> {
        self.app.logs()
    }

    /// A Supabase-shaped access token for `user_id`, valid for an hour.
    pub fn token_for(&self, user_id: Uuid) -> String {
        let now = chrono::Utc::now().timestamp();
        self.token_with_claims(json!({
            "sub": user_id.to_string(),
            "aud": "authenticated",
            "role": "authenticated",
            "email": format!("{user_id}@test.local"),
            "iat": now,
            "exp": now + 3600,
            "iss": "http://127.0.0.1:54321/auth/v1",
        }))
    }

    /// An HS256 token with exactly these claims, signed with the app's secret (for tests
    /// of expired tokens, wrong audiences, ...).
    pub fn token_with_claims(&self, claims: serde_json::Value) -> String {
        sign_hs256(&self.jwt_secret, &claims)
    }

    /// A user who signed up [`crate::sql::ACCOUNT_AGE`] ago (auth.users row; the sign-up
    /// trigger creates the profile).
    pub async fn create_user(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.create_user_with_id(id, &format!("{id}@test.local")).await;
        id
    }

    /// A user with this id and email, signed up [`crate::sql::ACCOUNT_AGE`] ago.
    pub async fn create_user_with_id(&self, id: Uuid, email: &str) {
        let client = self.db_client().await;
        client
            .execute(
                "INSERT INTO auth.users (id, email, created_at) VALUES ($1, $2, now() - $3::text::interval)",
                &[&id, &email, &crate::sql::ACCOUNT_AGE],
            )
            .await
            .expect("inserting auth.users");
        // The trigger should have made the profile; this keeps the helper working if not.
        client
            .execute(
                "INSERT INTO public.user_profiles (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&id, &email],
            )
            .await
            .expect("inserting user_profiles");
    }

    /// Gives `user` `amount` tokens the way a purchase does: a ledger row and the
    /// balance, in one statement. (The casts: a parameter written straight into a column
    /// takes the column's type, here a domain, and tokio-postgres binds only base types.)
    pub async fn grant_tokens(&self, user: Uuid, amount: i32) {
        let reference = format!("test-grant-{}", Uuid::new_v4());
        self.db_client()
            .await
            .execute(
                "WITH p AS (
                     UPDATE public.user_profiles SET tokens = tokens + $2 WHERE id = $1 RETURNING tokens
                 )
                 INSERT INTO public.token_ledger (user_id, delta, reason, reference, balance_after)
                 SELECT $1, $2::integer, 'purchase', $3::text, p.tokens FROM p",
                &[&user, &amount, &reference],
            )
            .await
            .expect("granting tokens");
    }

    /// A user's token balance.
    pub async fn tokens_of(&self, user: Uuid) -> i32 {
        self.db_client()
            .await
            .query_one("SELECT tokens FROM public.user_profiles WHERE id = $1", &[&user])
            .await
            .expect("reading tokens")
            .get(0)
    }

    /// Every profile's balance equals the sum of its ledger and none is negative.
    pub async fn assert_ledger_consistent(&self) {
        let rows = self
            .db_client()
            .await
            .query(
                "SELECT p.id, p.tokens, coalesce(sum(l.delta), 0)::int8
                   FROM public.user_profiles p
                   LEFT JOIN public.token_ledger l ON l.user_id = p.id
                  GROUP BY p.id, p.tokens
                 HAVING p.tokens <> coalesce(sum(l.delta), 0) OR p.tokens < 0",
                &[],
            )
            .await
            .expect("checking the ledger");
        let bad: Vec<String> = rows
            .iter()
            .map(|r| format!("{}: tokens {} ledger {}", r.get::<_, Uuid>(0), r.get::<_, i32>(1), r.get::<_, i64>(2)))
            .collect();
        assert!(bad.is_empty(), "balances do not match the ledger: {bad:?}");
    }
}

impl TestApp {
    /// Every recorded response that breaks `openapi.yaml`, and every place a secret
    /// variable's value shows up in a response or the log (see [`crate::contract`]).
    pub fn contract_and_leak_problems(&self) -> Vec<String> {
        contract_and_leak_problems(&self.app, &self.variables)
    }
}

/// What [`TestApp::contract_and_leak_problems`] checks, for any running instance.
pub fn contract_and_leak_problems(app: &Runtime, variables: &HashMap<String, String>) -> Vec<String> {
    let responses = app.recorded();
    let spec = crate::contract::Spec::repo();
    let mut problems: Vec<String> = responses.iter().flat_map(|r| spec.violations(r)).collect();
    if app.zero_row_queries() > 0 {
        problems.push(format!(
            "{} quer(y/ies) returned zero rows: {}",
            app.zero_row_queries(),
            crate::host::postgres::ZERO_ROWS_HANG
        ));
    }
    let names = crate::contract::secret_variable_names(&crate::repo_root().join("spin.toml"));
    let secrets = crate::contract::secret_values(&names, variables);
    problems.extend(crate::contract::leaks(&secrets, &responses, &app.logs()));
    problems.dedup();
    problems
}

/// The check every app instance gets when it is dropped (see the `Drop` of [`TestApp`]).
fn check_on_drop(app: &Runtime, variables: &HashMap<String, String>) {
    if std::thread::panicking() || std::env::var_os("LIBERO_SKIP_CONTRACT").is_some() {
        return;
    }
    let problems = contract_and_leak_problems(app, variables);
    // `LIBERO_CONTRACT_TALLY=<file>`: append how many responses and log lines were checked.
    if let Some(path) = std::env::var_os("LIBERO_CONTRACT_TALLY") {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{} {}", app.recorded().len(), app.logs().len());
        }
    }
    if !problems.is_empty() {
        panic!(
            "{} contract or secret-leak problem(s) in this test's responses:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
}

/// When a test ends (and has not failed already), every response it got must conform
/// to `openapi.yaml` and no secret may appear in a response or the log. Set
/// `LIBERO_SKIP_CONTRACT=1` to turn this off while debugging.
impl Drop for TestApp {
    fn drop(&mut self) {
        check_on_drop(&self.app, &self.variables);
    }
}

/// Another instance of the app beside a test's [`TestApp`] (a replica, a restart): a
/// [`Runtime`] (through `Deref`) that gets the same contract and leak check when dropped.
pub struct Instance {
    pub app: Runtime,
    pub variables: HashMap<String, String>,
}

impl Instance {
    /// The project's `spin.toml` with these variables, on the runtime `LIBERO_RUNTIME` names.
    pub async fn start(variables: &HashMap<String, String>) -> Instance {
        Instance { app: Runtime::start(variables).await, variables: variables.clone() }
    }
}

impl std::ops::Deref for Instance {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.app
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        check_on_drop(&self.app, &self.variables);
    }
}

/// `host:port` of a Postgres URL (for the `db_host` variable).
/// How much further back to move a run of sessions reaching `span` into the past so that
/// all of them fall on one UTC day, the day whose caps a user without a time zone has:
/// nothing, unless it is less than `span` past midnight UTC; then enough that the run
/// ends a minute before midnight.
pub fn one_utc_day_shift(span: chrono::Duration) -> chrono::Duration {
    let now = chrono::Utc::now();
    let since_midnight = now - now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    if since_midnight <= span {
        since_midnight + chrono::Duration::minutes(1)
    } else {
        chrono::Duration::zero()
    }
}

pub fn db_host(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("a valid Postgres URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// A compact HS256 JWT.
pub fn sign_hs256(secret: &str, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

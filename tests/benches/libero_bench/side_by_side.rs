//! Real Spin, the bundled host and a Deno peer, measured in turn in one run with the same
//! load generator, on the same database, plus the differential rows that say
//! where a request's time goes under Spin; at c=32, the CPU time each request costs the
//! runtime and Postgres, and what the statement costs Postgres sent as Spin sends it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::cpu::{self, PerRequest, Probes, Procs};
use super::runtimes::{self, Completions, DenoPeer};
use super::{
    fixed, load, load_cpu, median_by, ms, start_app, with_user, MakeReq, Settings, Stats, BUDGET_PASSES, JWT_SECRET,
};

/// Which server answered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Runtime {
    Spin,
    /// The same Spin with every setting in a `static` variables provider (`libero
    /// runtime-config`), so no read reaches its environment provider.
    SpinStatic,
    Host,
    Deno,
}

impl Runtime {
    fn label(self) -> &'static str {
        match self {
            Runtime::Spin => "Spin",
            Runtime::SpinStatic => "Spin, settings in a runtime config",
            Runtime::Host => "bundled host",
            Runtime::Deno => "Deno peer",
        }
    }
}

/// What a row measures.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum What {
    Noop,
    LogLine,
    LogLineOnce,
    VariableRead,
    VariableReads,
    Select1,
    /// The fixture sending session-complete's own statement with its parameters, and
    /// nothing else: Spin's floor for that statement.
    SessionStatement,
    /// The fixture making the host calls of the 400 below (headers, body, 3 variable
    /// reads, the log line, a 400 answer) with almost no guest code.
    RequestShape,
    /// session-complete, signed in, refused before the database (JWT check, body, log line).
    Rejected400,
    SessionComplete,
    Webhook,
    TtsCacheHit,
    Insights,
}

impl What {
    fn label(self) -> &'static str {
        match self {
            What::Noop => "floor: a component that does nothing",
            What::LogLine => "floor + one log line (`eprintln!`, two writes)",
            What::LogLineOnce => "floor + one log line (one write)",
            What::VariableRead => "floor + one variable read",
            What::VariableReads => "floor + 4 variable reads (as many as session-complete makes)",
            What::Select1 => "floor: one `SELECT 1`",
            What::SessionStatement => {
                "floor: session-complete's statement alone (its text and parameters, the answer passed on)"
            }
            What::RequestShape => {
                "floor: a 400's host calls (headers, body, 3 variable reads, the log line, the answer)"
            }
            What::Rejected400 => "session-complete, refused with 400 (no database)",
            What::SessionComplete => "session-complete (rewarded)",
            What::Webhook => "stripe-webhook (verified delivery)",
            What::TtsCacheHit => "tts (cache hit)",
            What::Insights => "insights",
        }
    }
}

struct Target {
    runtime: Runtime,
    what: What,
    addr: SocketAddr,
    make: MakeReq,
    expect: u16,
    /// Measured at c=32 as well (the differential rows are c=1 only).
    c32: bool,
    /// Whose CPU time the c=32 windows read.
    probes: Probes,
}

pub struct SideRow {
    pub runtime: Runtime,
    pub what: What,
    pub c1: Stats,
    pub c32: Option<Stats>,
    /// CPU per request at c=32 (each figure the median of the passes').
    pub cpu: Option<PerRequest>,
}

/// The statement alone (no runtime): `complete_session` over one tokio-postgres
/// connection, with the server's durability and with `synchronous_commit = off` for this
/// session only (the difference is the commit's wait for the WAL flush).
pub struct Statement {
    pub durable: Stats,
    /// Requests/s of the statement alone from 32 connections at once: the database's
    /// ceiling for completions on this machine, with no runtime and no HTTP.
    pub durable_c32_rps: f64,
    pub async_commit: Stats,
    pub select1: Stats,
    /// Postgres CPU per request from 32 connections, no runtime: each way of sending a
    /// statement, with its requests/s.
    pub sql: Vec<(Sql, f64, Option<f64>)>,
}

impl Statement {
    pub fn sql(&self, which: Sql) -> Option<f64> {
        self.sql.iter().find(|r| r.0 == which).and_then(|r| r.2)
    }
}

/// How a statement is sent in the rows without a runtime.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sql {
    Select1Prepared,
    Select1Prepare,
    Select1ResetPrepare,
    CompletePrepared,
    CompleteResetPrepare,
    /// Prepared once, from as many connections as the Deno peer's postgres-js opens.
    CompletePreparedPeerPool,
}

/// postgres-js's default pool size (`max: 10`), which the Deno peer keeps.
const PEER_POOL: usize = 10;

impl Sql {
    /// How many connections send it at once: 32, one per request in flight as under Spin
    /// at c=32, or the Deno peer's pool.
    fn connections(self) -> usize {
        if self == Sql::CompletePreparedPeerPool {
            PEER_POOL
        } else {
            32
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sql::Select1Prepared => "`SELECT 1`, prepared once per connection",
            Sql::Select1Prepare => "`SELECT 1`, prepared and closed on every request (as Spin does)",
            Sql::Select1ResetPrepare => {
                "the pool's 7-statement reset, then `SELECT 1` prepared and closed (Spin's wire traffic per request)"
            }
            Sql::CompletePrepared | Sql::CompletePreparedPeerPool => "`complete_session`, prepared once per connection",
            Sql::CompleteResetPrepare => {
                "the reset, then `complete_session` prepared and closed (Spin's wire traffic per request)"
            }
        }
    }
}

/// Per request under Spin at c=1, from `pg_stat_statements` (server-side execution only).
pub struct ServerSide {
    pub requests: u64,
    pub complete_session_ms: f64,
    /// The pool's reset batch (deadpool `Clean`): statements and their total time per request.
    pub reset_statements: f64,
    pub reset_ms: f64,
    pub other: Vec<(String, f64, f64)>,
}

pub struct SideBySide {
    pub rows: Vec<SideRow>,
    pub spin_version: Option<String>,
    pub deno_version: Option<String>,
    pub missing: Vec<String>,
    pub statement: Statement,
    pub server_side: Option<ServerSide>,
    pub cold: Option<ColdStart>,
    /// Whether the Postgres CPU figures are of a cluster the benchmark shares with others
    /// (`--pg-from-env`).
    pub pg_shared: bool,
}

/// The app's start under real Spin: how long `spin up` took to serve (its components
/// compiled or loaded from Spin's cache), then each endpoint's first request (a new
/// instance of a component no request has used, the first Postgres connection of the
/// pool) and its second.
pub struct ColdStart {
    pub ready: Duration,
    pub endpoints: Vec<ColdEndpoint>,
}

pub struct ColdEndpoint {
    pub name: &'static str,
    pub first: Duration,
    pub second: Duration,
}

impl SideBySide {
    pub fn get(&self, runtime: Runtime, what: What) -> Option<&SideRow> {
        self.rows.iter().find(|r| r.runtime == runtime && r.what == what)
    }
}

fn spin_fixture_manifest() -> Result<std::path::PathBuf> {
    super::fixture_manifest()
}

/// Measures every target in turn, `BUDGET_PASSES` times; each figure is the median pass.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    s: &Settings,
    db_url: &str,
    vars: &HashMap<String, String>,
    host_app: SocketAddr,
    completions: &Arc<Completions>,
    tokens: &Arc<Vec<String>>,
    webhook: &MakeReq,
    tts: &MakeReq,
    insights: &MakeReq,
    statement_users: Arc<Completions>,
    has_pg_stat_statements: bool,
) -> Result<SideBySide> {
    let say = |line: &str| eprintln!("bench: {line}");
    let mut missing = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    // The cluster's processes, when it runs on this machine.
    let pg = match Procs::postgres(db_url).await {
        Ok(pg) => Some(pg),
        Err(e) => {
            missing.push(format!("Postgres CPU time ({e:#})"));
            None
        }
    };
    let probes = |runtime: Option<Procs>| Probes { runtime, postgres: pg.clone() };

    let noop = fixed("GET", "/fixture/noop", vec![], Value::Null);
    let log = fixed("GET", "/fixture/log", vec![], Value::Null);
    let log_once = fixed("GET", "/fixture/log-once", vec![], Value::Null);
    let variable_read = fixed("GET", "/fixture/var?name=bench_setting", vec![], Value::Null);
    let variable_reads = fixed("GET", "/fixture/var?name=bench_setting&times=4", vec![], Value::Null);
    // Reads `database_url` (one variable read), then sends the statement.
    let select1 = fixed("GET", "/fixture/pg/select1", vec![], Value::Null);
    // Reads `database_url`, then sends session-complete's statement for the next completion.
    let statement = completions.make_statement("/fixture/pg/complete-session");
    let rejected = with_user(
        "/functions/v1/session-complete",
        tokens.clone(),
        json!({"ego_state": "guardian", "duration_seconds": 60}),
    );
    // The same request to the fixture, which makes the same host calls with almost no code.
    let request_shape =
        with_user("/fixture/request-shape", tokens.clone(), json!({"ego_state": "guardian", "duration_seconds": 60}));
    let complete = completions.make("/functions/v1/session-complete");

    // Real Spin: the fixture for its floors, the app for the endpoints.
    let spin = runtimes::find_spin();
    let (mut spin_fixture, mut spin_app, mut spin_version, mut cold) = (None, None, None, None);
    let mut spin_static = None;
    match &spin {
        Some(path) => {
            say(&format!("real Spin: {} (the first start compiles every component)", path.display()));
            spin_version = Some(runtimes::spin_version(path));
            let f = runtimes::start_spin(&spin_fixture_manifest()?, vars).await?;
            let starting = Instant::now();
            let a = runtimes::start_spin(&libero_tests::repo_root().join("spin.toml"), vars).await?;
            let ready = starting.elapsed();
            // Before any other request reaches the app: each endpoint's first request.
            let mut endpoints = Vec::new();
            for (name, make) in [
                ("session-complete", &complete),
                ("insights", insights),
                ("tts (cache hit)", tts),
                ("stripe-webhook", webhook),
            ] {
                let first = one_request(a.addr, make, 200).await.with_context(|| format!("{name}, first request"))?;
                let second = one_request(a.addr, make, 200).await.with_context(|| format!("{name}, second request"))?;
                endpoints.push(ColdEndpoint { name, first, second });
            }
            cold = Some(ColdStart { ready, endpoints });
            let (f_procs, a_procs) = (Procs::spin_listening_on(f.addr), Procs::spin_listening_on(a.addr));
            if f_procs.is_none() || a_procs.is_none() {
                missing.push("Spin's CPU time (no `spin up --listen <addr>` process found in /proc)".into());
            }
            for (what, make) in [
                (What::Noop, &noop),
                (What::LogLine, &log),
                (What::LogLineOnce, &log_once),
                (What::VariableRead, &variable_read),
                (What::VariableReads, &variable_reads),
                (What::Select1, &select1),
                (What::SessionStatement, &statement),
                (What::RequestShape, &request_shape),
            ] {
                let c32 = what != What::LogLine;
                targets.push(Target {
                    runtime: Runtime::Spin,
                    what,
                    addr: f.addr,
                    make: make.clone(),
                    expect: if what == What::RequestShape { 400 } else { 200 },
                    c32,
                    probes: probes(f_procs.clone()),
                });
            }
            targets.push(Target {
                runtime: Runtime::Spin,
                what: What::Rejected400,
                addr: a.addr,
                make: rejected.clone(),
                expect: 400,
                c32: true,
                probes: probes(a_procs.clone()),
            });
            targets.push(Target {
                runtime: Runtime::Spin,
                what: What::SessionComplete,
                addr: a.addr,
                make: complete.clone(),
                expect: 200,
                c32: true,
                probes: probes(a_procs.clone()),
            });
            for (what, make) in [(What::Webhook, webhook), (What::TtsCacheHit, tts), (What::Insights, insights)] {
                targets.push(Target {
                    runtime: Runtime::Spin,
                    what,
                    addr: a.addr,
                    make: make.clone(),
                    expect: 200,
                    c32: true,
                    probes: probes(a_procs.clone()),
                });
            }
            // The same apps with every setting in a static provider, none in the environment.
            let (f_static, a_static) = start_spin_static(vars).await?;
            let (fs_procs, as_procs) =
                (Procs::spin_listening_on(f_static.addr), Procs::spin_listening_on(a_static.addr));
            for (what, app, make, procs, expect) in [
                (What::VariableRead, &f_static, &variable_read, &fs_procs, 200),
                (What::Select1, &f_static, &select1, &fs_procs, 200),
                (What::SessionStatement, &f_static, &statement, &fs_procs, 200),
                (What::RequestShape, &f_static, &request_shape, &fs_procs, 400),
                (What::Rejected400, &a_static, &rejected, &as_procs, 400),
                (What::SessionComplete, &a_static, &complete, &as_procs, 200),
            ] {
                targets.push(Target {
                    runtime: Runtime::SpinStatic,
                    what,
                    addr: app.addr,
                    make: make.clone(),
                    expect,
                    c32: true,
                    probes: probes(procs.clone()),
                });
            }
            spin_static = Some((f_static, a_static));
            spin_fixture = Some(f);
            spin_app = Some(a);
        }
        None => missing.push("real Spin (not in `SPIN`, on `PATH` or at `../shared/bin/spin`)".into()),
    }

    // The bundled host: its floors (a fixture app of its own) and the endpoints.
    let host_fixture = start_app(spin_fixture_manifest()?, vars).await?;
    for what in [What::Noop, What::Select1] {
        let make = if what == What::Noop { &noop } else { &select1 };
        targets.push(Target {
            runtime: Runtime::Host,
            what,
            addr: host_fixture.addr,
            make: make.clone(),
            expect: 200,
            c32: true,
            probes: probes(None),
        });
    }
    targets.push(Target {
        runtime: Runtime::Host,
        what: What::SessionComplete,
        addr: host_app,
        make: complete.clone(),
        expect: 200,
        c32: true,
        probes: probes(None),
    });
    targets.push(Target {
        runtime: Runtime::Host,
        what: What::Webhook,
        addr: host_app,
        make: webhook.clone(),
        expect: 200,
        c32: true,
        probes: probes(None),
    });

    // The Deno peer.
    let mut deno_version = None;
    let deno = match DenoPeer::start(db_url, JWT_SECRET, &vars["openai_base_url"]).await {
        Ok(peer) => {
            deno_version = Some(peer.version.clone());
            targets.push(Target {
                runtime: Runtime::Deno,
                what: What::SessionComplete,
                addr: peer.addr,
                make: complete.clone(),
                expect: 200,
                c32: true,
                probes: probes(Some(Procs::Tree(peer.pid()))),
            });
            Some(peer)
        }
        Err(e) => {
            missing.push(format!("the Deno peer ({e:#})"));
            None
        }
    };

    if let Some(only) = &s.only {
        // The floors always (as the host's `--only` rows), and the rows that match.
        targets.retain(|t| {
            t.what.label().starts_with("floor")
                || t.what.label().contains(only.as_str())
                || t.runtime.label().contains(only.as_str())
        });
    }

    // Per target, each pass's statistics and, when measured, its c=32 figures.
    type Passes = Vec<(Stats, Option<(Stats, PerRequest)>)>;
    let mut passes: HashMap<(Runtime, What), Passes> = HashMap::new();
    for pass in 1..=BUDGET_PASSES {
        for t in &targets {
            say(&format!("side by side: {}, {}, pass {pass}", t.runtime.label(), t.what.label()));
            let name = format!("{} {}", t.runtime.label(), t.what.label());
            let c1 = load(t.addr, &t.make, t.expect, 1, s).await.with_context(|| name.clone())?;
            let c32 = if t.c32 {
                Some(load_cpu(t.addr, &t.make, t.expect, 32, s, &t.probes).await.with_context(|| name.clone())?)
            } else {
                None
            };
            passes.entry((t.runtime, t.what)).or_default().push((c1, c32));
        }
    }
    let mut rows = Vec::new();
    for t in &targets {
        let Some(measured) = passes.remove(&(t.runtime, t.what)) else { continue };
        let c1 = median_by(measured.iter().map(|m| m.0).collect(), |st| st.p50);
        let c32s: Vec<Stats> = measured.iter().filter_map(|m| m.1.map(|c| c.0)).collect();
        let c32 = (!c32s.is_empty()).then(|| median_by(c32s, |st| (st.rps * 1000.0) as u64));
        let cpus: Vec<PerRequest> = measured.iter().filter_map(|m| m.1.map(|c| c.1)).collect();
        let cpu = (!cpus.is_empty()).then(|| PerRequest::median_of(&cpus));
        rows.push(SideRow { runtime: t.runtime, what: t.what, c1, c32, cpu });
    }

    // Where the time goes under Spin, server side: one more c=1 window of session
    // completions with pg_stat_statements reset just before.
    let server_side = match (&spin_app, has_pg_stat_statements) {
        (Some(app), true) if s.only.as_deref().is_none_or(|o| "session-complete".contains(o)) => {
            say("where the time goes under Spin: pg_stat_statements over a c=1 window");
            Some(server_side(app.addr, &complete, db_url, s).await?)
        }
        _ => None,
    };

    drop(spin_app);
    drop(spin_fixture);
    drop(spin_static);
    drop(deno);
    drop(host_fixture);

    say(&format!("session completions so far: {} of {} rewarded slots", completions.used(), completions.capacity()));
    say("the statement alone, durable and with synchronous_commit off");
    let statement = statement_alone(db_url, statement_users, s, &pg).await?;

    Ok(SideBySide { rows, spin_version, deno_version, missing, statement, server_side, cold, pg_shared: s.pg_from_env })
}

/// The fixture and the app under `spin` with every setting in a static variables
/// provider (`libero runtime-config`'s file) and none in the environment.
async fn start_spin_static(
    vars: &HashMap<String, String>,
) -> Result<(libero_tests::spin::SpinApp, libero_tests::spin::SpinApp)> {
    use libero_cli::runtime_config;
    let dir = libero_tests::repo_root().join("target/bench");
    let fixture_config = dir.join("fixture-runtime-config.toml");
    let fixture_values: Vec<(&str, String)> = ["database_url", "db_host", "bench_setting"]
        .into_iter()
        .map(|name| (name, vars.get(name).cloned().unwrap_or_default()))
        .collect();
    std::fs::write(&fixture_config, runtime_config::static_provider(&fixture_values))?;
    let app_config = dir.join("app-runtime-config.toml");
    std::fs::write(&app_config, runtime_config::render(&|name| vars.get(name).cloned())?)?;
    let fixture = start_spin_with_config(&spin_fixture_manifest()?, &fixture_config).await?;
    let app = start_spin_with_config(&libero_tests::repo_root().join("spin.toml"), &app_config).await?;
    Ok((fixture, app))
}

/// `spin up manifest --runtime-config-file config`, no variable in the environment.
async fn start_spin_with_config(
    manifest: &std::path::Path,
    config: &std::path::Path,
) -> Result<libero_tests::spin::SpinApp> {
    libero_tests::spin::SpinApp::start_with_runtime_config(manifest, &HashMap::new(), config)
        .await
        .with_context(|| format!("spin up {} --runtime-config-file {}", manifest.display(), config.display()))
}

/// One request on a new connection, timed from sending to the whole answer.
async fn one_request(addr: SocketAddr, make: &MakeReq, expect: u16) -> Result<Duration> {
    let mut sender = super::connect(addr).await?;
    let request = make(0);
    let started = Instant::now();
    let (status, body) = super::send(&mut sender, addr, &request).await?;
    let took = started.elapsed();
    anyhow::ensure!(status == expect, "{status} {}", String::from_utf8_lossy(&body));
    Ok(took)
}

async fn server_side(addr: SocketAddr, complete: &MakeReq, db_url: &str, s: &Settings) -> Result<ServerSide> {
    let client = libero_tests::db::connect(db_url).await?;
    client.batch_execute("SELECT pg_stat_statements_reset()").await?;
    let window = Settings {
        warmup: Duration::ZERO,
        measure: s.measure,
        big: s.big,
        out: None,
        only: None,
        pg_from_env: s.pg_from_env,
    };
    let st = load(addr, complete, 200, 1, &window).await?;
    let requests = st.n.max(1) as u64;
    let rows = client
        .query(
            "SELECT query, calls, total_exec_time + total_plan_time FROM pg_stat_statements s
               JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database() ORDER BY 3 DESC",
            &[],
        )
        .await?;
    let (mut complete_ms, mut reset_n, mut reset_ms, mut other) = (0.0, 0.0, 0.0, Vec::new());
    for row in rows {
        let (query, calls, total): (String, i64, f64) = (row.get(0), row.get(1), row.get(2));
        let per = |x: f64| x / requests as f64;
        let q = query.trim().to_string();
        if q.contains("complete_session") {
            complete_ms += per(total);
        } else if [
            "CLOSE ALL",
            "SET SESSION AUTHORIZATION DEFAULT",
            "RESET ALL",
            "UNLISTEN *",
            "pg_advisory_unlock_all",
            "DISCARD TEMP",
            "DISCARD SEQUENCES",
        ]
        .iter()
        .any(|r| q.contains(r))
        {
            reset_n += per(calls as f64);
            reset_ms += per(total);
        } else if !q.contains("pg_stat_statements") {
            other.push((q.chars().take(60).collect(), per(calls as f64), per(total)));
        }
    }
    Ok(ServerSide { requests, complete_session_ms: complete_ms, reset_statements: reset_n, reset_ms, other })
}

/// `complete_session` as the endpoint calls it, for the benchmark's own users.
const COMPLETE_ALONE: &str =
    "select public.complete_session($1, gen_random_uuid(), 'guardian', 'calm', 300, null, $2, to_timestamp($3::int8 / 1000.0))";

/// `complete_session` called back to back over one connection, as the endpoint calls it
/// (for users of its own, so it takes no slot from the endpoints' completions).
async fn statement_alone(db_url: &str, own: Arc<Completions>, s: &Settings, pg: &Option<Procs>) -> Result<Statement> {
    let client = libero_tests::db::connect(db_url).await?;
    let complete = client.prepare(COMPLETE_ALONE).await?;
    let select1 = client.prepare("SELECT 1").await?;
    let durable = statement_window(&client, Some(&complete), &select1, &own, s).await?;
    client.batch_execute("SET synchronous_commit = off").await?;
    let async_commit = statement_window(&client, Some(&complete), &select1, &own, s).await?;
    client.batch_execute("RESET synchronous_commit").await?;
    let select1 = statement_window(&client, None, &select1, &own, s).await?;
    let mut sql = Vec::new();
    for which in [
        Sql::Select1Prepared,
        Sql::Select1Prepare,
        Sql::Select1ResetPrepare,
        Sql::CompletePrepared,
        Sql::CompleteResetPrepare,
        Sql::CompletePreparedPeerPool,
    ] {
        eprintln!("bench: no runtime, {} connections: {}", which.connections(), which.label());
        let (rps, pg_ms) = sql_c32(db_url, &own, s, which, pg).await?;
        sql.push((which, rps, pg_ms));
    }
    let durable_c32_rps = sql.iter().find(|r| r.0 == Sql::CompletePrepared).map_or(0.0, |r| r.1);
    Ok(Statement { durable, durable_c32_rps, async_commit, select1, sql })
}

/// The batch deadpool's `RecyclingMethod::Clean` sends on every checkout (Spin's pool).
const POOL_RESET: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
                          SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;";

/// One statement sent `which` way from [`Sql::connections`] connections at once, each back to back, no
/// runtime: total requests/s and Postgres CPU per request over the measuring window.
async fn sql_c32(
    db_url: &str,
    own: &Completions,
    s: &Settings,
    which: Sql,
    pg: &Option<Procs>,
) -> Result<(f64, Option<f64>)> {
    let clients =
        futures_util::future::try_join_all((0..which.connections()).map(|_| libero_tests::db::connect(db_url))).await?;
    let start = Instant::now();
    let (from, until) = (start + s.warmup, start + s.warmup + s.measure);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probes = Probes { runtime: None, postgres: pg.clone() };
    let sampler = {
        let (probes, done) = (probes.clone(), done.clone());
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            tokio::time::sleep_until(from.into()).await;
            let (before, n0) = (probes.read(&cpu::Snapshot::take()), done.load(Relaxed));
            tokio::time::sleep_until(until.into()).await;
            let (after, n1) = (probes.read(&cpu::Snapshot::take()), done.load(Relaxed));
            (Probes::per_request(before, after, n1 - n0), n1 - n0)
        })
    };
    let windows = clients.iter().map(|client| {
        let done = done.clone();
        async move {
            let prepared = match which {
                Sql::Select1Prepared => Some(client.prepare("SELECT 1").await?),
                Sql::CompletePrepared | Sql::CompletePreparedPeerPool => Some(client.prepare(COMPLETE_ALONE).await?),
                _ => None,
            };
            while Instant::now() < until {
                if matches!(which, Sql::Select1ResetPrepare | Sql::CompleteResetPrepare) {
                    client.batch_execute(POOL_RESET).await?;
                }
                match which {
                    Sql::Select1Prepared | Sql::Select1Prepare | Sql::Select1ResetPrepare => {
                        match &prepared {
                            Some(st) => client.query_one(st, &[]).await?,
                            None => client.query_one("SELECT 1", &[]).await?,
                        };
                    }
                    Sql::CompletePrepared | Sql::CompleteResetPrepare | Sql::CompletePreparedPeerPool => {
                        let (user, started_ms, fingerprint) = own.next_sql_args();
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                            [&user, &fingerprint, &started_ms];
                        let row = match &prepared {
                            Some(st) => client.query_one(st, &params).await?,
                            None => client.query_one(COMPLETE_ALONE, &params).await?,
                        };
                        let doc: Value = row.get(0);
                        if doc["rewarded"] != json!(true) {
                            anyhow::bail!("complete_session alone: not rewarded: {doc}");
                        }
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });
    futures_util::future::try_join_all(windows).await?;
    let (per, n) = sampler.await?;
    Ok((n as f64 / s.measure.as_secs_f64(), per.postgres))
}

/// One warm-up and measuring window of `complete` (or `SELECT 1` when None), back to back.
async fn statement_window(
    client: &tokio_postgres::Client,
    complete: Option<&tokio_postgres::Statement>,
    select1: &tokio_postgres::Statement,
    own: &Completions,
    s: &Settings,
) -> Result<Stats> {
    let start = Instant::now();
    let (from, until) = (start + s.warmup, start + s.warmup + s.measure);
    let mut all = Vec::new();
    loop {
        let t0 = Instant::now();
        if t0 >= until {
            break;
        }
        match complete {
            None => {
                client.query_one(select1, &[]).await?;
            }
            Some(complete) => {
                let (user, started_ms, fingerprint) = own.next_sql_args();
                let doc: Value = client.query_one(complete, &[&user, &fingerprint, &started_ms]).await?.get(0);
                if doc["rewarded"] != json!(true) {
                    anyhow::bail!("complete_session alone: not rewarded: {doc}");
                }
            }
        }
        if t0 >= from {
            all.push(t0.elapsed());
        }
    }
    Ok(super::stats(all, s.measure))
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn msf(x: f64) -> String {
    format!("{x:.3}")
}

/// The budgets judged on real Spin, the side-by-side table and the breakdown.
pub fn write_report(report: &mut String, side: &SideBySide, durability: &str, completions: (i64, i64)) -> Result<()> {
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let get = |r: Runtime, w: What| side.get(r, w);
    let (spin_floor, spin_q, spin_sc, spin_wh, spin_400) = (
        get(Runtime::Spin, What::Noop),
        get(Runtime::Spin, What::Select1),
        get(Runtime::Spin, What::SessionComplete),
        get(Runtime::Spin, What::Webhook),
        get(Runtime::Spin, What::Rejected400),
    );
    let deno = get(Runtime::Deno, What::SessionComplete);
    let st = &side.statement;
    let commit = st.durable.p50.saturating_sub(st.async_commit.p50);

    writeln!(report, "\n## Real Spin, side by side\n")?;
    writeln!(
        report,
        "One run, one load generator (this process: keep-alive HTTP/1.1 on loopback), one Postgres ({durability}); \
         every target measured in turn, {BUDGET_PASSES} passes, each figure the median pass. Runtimes: {}; the \
         bundled host (`host/`, in this process); {}. Session completions: every request a new session id for the \
         next of the benchmark's users in turn, with a `started_at` in the past that overlaps none of that user's \
         sessions and at most 12 a user (the daily cap), so each one is **rewarded**: of the {} completions this \
         run recorded, {} were rewarded.\n",
        side.spin_version.as_deref().unwrap_or("Spin not found"),
        side.deno_version
            .as_deref()
            .map(|v| format!("the Deno peer ({v}; `tests/benches/deno-peer`: `Deno.serve`, postgres-js with its defaults, the same `complete_session` call, the same HS256 check)"))
            .unwrap_or_else(|| "no Deno peer".into()),
        completions.0,
        completions.1
    )?;
    for m in &side.missing {
        writeln!(report, "- not measured: {m}")?;
    }

    // Budgets, each with what stands in its way when it is not met, from this run's rows.
    writeln!(report, "### Budgets on real Spin\n")?;
    writeln!(report, "| figure | budget | measured | | what stands in the way (this run) |")?;
    writeln!(report, "|---|---|---|---|---|")?;
    // Spin's one-query floor with `complete_session` in place of `SELECT 1`: what any
    // session completion under Spin costs before a line of our guest code runs.
    let statement_floor = spin_q.map(|q| q.c1.p50.saturating_sub(st.select1.p50) + st.durable.p50);
    let c1_reason = |budget: Duration| {
        match statement_floor {
        Some(f) if f > budget => format!(
            "unreachable with this statement: Spin's one-query floor with `complete_session` in place of `SELECT 1` is already {} ms \
             (the statement alone {} ms, of which the commit's flush {} ms), over the budget's {} ms",
            ms(f), ms(st.durable.p50), ms(commit), ms(budget)
        ),
        Some(f) => format!("the statement floor is {} ms; the rest is ours (see the breakdown)", ms(f)),
        None => String::new(),
    }
    };
    let c32_reason = |q_rps: f64| {
        let ceiling = st.durable_c32_rps;
        let verdict = if ceiling < 0.8 * q_rps {
            "under the budget before any runtime"
        } else {
            "the rest is the runtime's share of the 2 cores"
        };
        format!(
            "the database alone, `complete_session` from 32 connections with no runtime and no HTTP, runs {ceiling:.0}/s \
             = {:.2}× the floor's {q_rps:.0} req/s ({verdict}); each statement costs {} ms at c=1 ({:.0}× `SELECT 1` alone), \
             and Spin, Postgres and the load generator share 2 cores",
            ceiling / q_rps,
            ms(st.durable.p50),
            ratio(st.durable.p50, st.select1.p50)
        )
    };
    let why = |met: bool, reason: String| if met { String::new() } else { reason };
    if let (Some(q), Some(sc)) = (spin_q, spin_sc) {
        let r = ratio(sc.c1.p50, q.c1.p50);
        let budget = q.c1.p50.mul_f64(1.5);
        writeln!(
            report,
            "| session-complete p50 at c=1 | ≤ 1.5× Spin's one-query floor | {} ms = {r:.2}× {} ms | {} | {} |",
            ms(sc.c1.p50),
            ms(q.c1.p50),
            mark(r <= 1.5),
            why(r <= 1.5, c1_reason(budget))
        )?;
        let (a, b) = (sc.c32.unwrap_or_default().rps, q.c32.unwrap_or_default().rps);
        writeln!(
            report,
            "| session-complete at c=32 | ≥ 0.8× the floor's req/s | {a:.0} = {:.2}× {b:.0} req/s | {} | {} |",
            a / b,
            mark(a >= 0.8 * b),
            why(a >= 0.8 * b, c32_reason(b))
        )?;
    }
    if let (Some(q), Some(wh)) = (spin_q, spin_wh) {
        let r = ratio(wh.c1.p50, q.c1.p50);
        let budget = q.c1.p50.mul_f64(1.5);
        let reason = format!(
            "its own statement writes the event, the order, the profile and a ledger row (the same guards as a completion), \
             and before it the delivery asks Stripe for the session's line items (one outbound request, the price check); \
             by the statement floor above: {}",
            c1_reason(budget)
        );
        writeln!(
            report,
            "| verified webhook p50 at c=1 | ≤ 1.5× Spin's one-query floor | {} ms = {r:.2}× {} ms | {} | {} |",
            ms(wh.c1.p50),
            ms(q.c1.p50),
            mark(r <= 1.5),
            why(r <= 1.5, reason)
        )?;
        let (a, b) = (wh.c32.unwrap_or_default().rps, q.c32.unwrap_or_default().rps);
        writeln!(
            report,
            "| verified webhook at c=32 | ≥ 0.8× the floor's req/s | {a:.0} = {:.2}× {b:.0} req/s | {} | {} |",
            a / b,
            mark(a >= 0.8 * b),
            why(a >= 0.8 * b, format!("as for session-complete: {}", c32_reason(b)))
        )?;
    }
    if let (Some(sc), Some(d)) = (spin_sc, deno) {
        let r = ratio(sc.c1.p50, d.c1.p50);
        // Both run the same statement on the same database: the difference is the runtime's.
        let spin_own = match (spin_floor, spin_q) {
            (Some(f), Some(q)) => format!(
                "; Spin's per-request floor ({} ms) and its Postgres path for one statement ({} ms) alone come to {} ms",
                ms(f.c1.p50),
                ms(q.c1.p50.saturating_sub(f.c1.p50).saturating_sub(st.select1.p50)),
                ms(q.c1.p50.saturating_sub(st.select1.p50))
            ),
            _ => String::new(),
        };
        let reason = format!(
            "both run the same `complete_session` on the same database, so the {} ms between them is the runtimes'{spin_own}",
            ms(sc.c1.p50.saturating_sub(d.c1.p50))
        );
        writeln!(
            report,
            "| session-complete p50 at c=1 against the Deno peer | ≤ 1.3× | {} ms = {r:.2}× {} ms | {} | {} |",
            ms(sc.c1.p50),
            ms(d.c1.p50),
            mark(r <= 1.3),
            why(r <= 1.3, reason)
        )?;
    }

    cpu_budgets(report, side)?;

    // The table.
    writeln!(
        report,
        "\n| runtime | request | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p50 ms | c=32 p99 ms | \
         c=32 runtime CPU ms/req | c=32 Postgres CPU ms/req | c=32 runtime page faults/req |"
    )?;
    writeln!(report, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for row in &side.rows {
        let (rps, p50, p99) = match row.c32 {
            Some(c) => (format!("{:.0}", c.rps), ms(c.p50), ms(c.p99)),
            None => ("".into(), "".into(), "".into()),
        };
        let faults = |c: PerRequest| c.runtime_faults.map(|f| format!("{f:.0}")).unwrap_or_default();
        let (rt, pg, pf) = match (row.cpu, row.runtime) {
            (Some(c), Runtime::Host) => ("(in the load generator's process)".into(), cpu_ms(c.postgres), String::new()),
            (Some(c), _) => (cpu_ms(c.runtime), cpu_ms(c.postgres), faults(c)),
            (None, _) => (String::new(), String::new(), String::new()),
        };
        writeln!(
            report,
            "| {} | {} | {} | {} | {rps} | {p50} | {p99} | {rt} | {pg} | {pf} |",
            row.runtime.label(),
            row.what.label(),
            ms(row.c1.p50),
            ms(row.c1.p99)
        )?;
    }
    writeln!(
        report,
        "| (no runtime) | `complete_session` alone, one connection, c=1 | {} | {} | | | | | | |\n\
         | (no runtime) | the same with `synchronous_commit = off` for that session | {} | {} | | | | | | |\n\
         | (no runtime) | `SELECT 1` alone, one connection, c=1 | {} | {} | | | | | | |",
        ms(st.durable.p50),
        ms(st.durable.p99),
        ms(st.async_commit.p50),
        ms(st.async_commit.p99),
        ms(st.select1.p50),
        ms(st.select1.p99),
    )?;
    for (which, rps, pg) in &st.sql {
        writeln!(
            report,
            "| (no runtime) | {}, {} connections at once | | | {rps:.0} | | | | {} | |",
            which.label(),
            which.connections(),
            cpu_ms(*pg)
        )?;
    }

    // The breakdown.
    if let (Some(floor), Some(q), Some(sc)) = (spin_floor, spin_q, spin_sc) {
        writeln!(report, "\n### Where a session completion's time goes under Spin (c=1, p50)\n")?;
        writeln!(report, "Differences of the rows above (each a median, so the parts add up only roughly):\n")?;
        writeln!(report, "| part | ms | from |")?;
        writeln!(report, "|---|---:|---|")?;
        writeln!(report, "| Spin's per-request floor (instance, HTTP) | {} | the no-op row |", ms(floor.c1.p50))?;
        // From the runtime-config 400 row when there is one: with settings from the
        // environment a keep-alive request that reads them can stall ~40 ms (below).
        let static_400 = get(Runtime::SpinStatic, What::Rejected400);
        let guest_400 = static_400.or(spin_400);
        if let Some(r) = guest_400 {
            writeln!(
                report,
                "| our guest code before the database: JWT check, body, validation, the answer, the log line | {} | {}400 row − no-op row |",
                ms(r.c1.p50.saturating_sub(floor.c1.p50)),
                if static_400.is_some() { "runtime-config " } else { "" }
            )?;
        }
        if let (Some(env), Some(file)) = (spin_400, static_400) {
            writeln!(
                report,
                "| not in the sum: the same 400 with its settings read from the environment, more | {} | 400 row − runtime-config 400 row (Spin's environment provider; docs/benchmark-notes.md) |",
                msf(env.c1.p50.as_secs_f64() * 1e3 - file.c1.p50.as_secs_f64() * 1e3)
            )?;
        }
        if let (Some(l), Some(l1)) = (get(Runtime::Spin, What::LogLine), get(Runtime::Spin, What::LogLineOnce)) {
            writeln!(
                report,
                "| of which the operator's log line (`eprintln!`; one write) | {} ({}) | log rows − no-op row |",
                msf(l.c1.p50.as_secs_f64() * 1e3 - floor.c1.p50.as_secs_f64() * 1e3),
                msf(l1.c1.p50.as_secs_f64() * 1e3 - floor.c1.p50.as_secs_f64() * 1e3)
            )?;
        }
        writeln!(
            report,
            "| Spin's Postgres path for one statement: pool checkout and reset, prepare, execute, close | {} | `SELECT 1` row − no-op row − `SELECT 1` alone |",
            ms(q.c1.p50.saturating_sub(floor.c1.p50).saturating_sub(st.select1.p50))
        )?;
        writeln!(report, "| the statement's own cost, without the commit's flush | {} | `complete_session` alone, `synchronous_commit = off` |", ms(st.async_commit.p50))?;
        writeln!(
            report,
            "| the commit's WAL flush (fsync) | {} | the two `complete_session` alone rows |",
            ms(commit)
        )?;
        let accounted = floor.c1.p50
            + guest_400.map(|r| r.c1.p50.saturating_sub(floor.c1.p50)).unwrap_or_default()
            + q.c1.p50.saturating_sub(floor.c1.p50).saturating_sub(st.select1.p50)
            + st.durable.p50;
        writeln!(
            report,
            "| rest: bytes across the pg interface (parameters in, the jsonb answer out), the answer's size | {} | session-complete row − the parts above |",
            msf(sc.c1.p50.as_secs_f64() * 1e3 - accounted.as_secs_f64() * 1e3)
        )?;
        writeln!(report, "| **session-complete under Spin** | **{}** | |", ms(sc.c1.p50))?;
    }
    if let Some(ss) = &side.server_side {
        writeln!(
            report,
            "\nServer side under Spin (`pg_stat_statements`, {} requests at c=1, execution and planning time per request): \
             `complete_session` {} ms; Spin's pool reset {:.1} statements (deadpool `Clean`: `CLOSE ALL`, \
             `SET SESSION AUTHORIZATION DEFAULT`, `RESET ALL`, `UNLISTEN *`, `pg_advisory_unlock_all()`, \
             `DISCARD TEMP`, `DISCARD SEQUENCES`) taking {} ms{}.",
            ss.requests,
            msf(ss.complete_session_ms),
            ss.reset_statements,
            msf(ss.reset_ms),
            ss.other
                .iter()
                .filter(|o| o.1 >= 0.01)
                .map(|o| format!("; `{}` {:.2}× per request, {} ms", o.0, o.1, msf(o.2)))
                .collect::<String>()
        )?;
    }
    cpu_breakdown(report, side)?;
    cold_start(report, side)?;
    Ok(())
}

fn cold_start(report: &mut String, side: &SideBySide) -> Result<()> {
    let Some(cold) = &side.cold else { return Ok(()) };
    writeln!(report, "\n### The app's start under Spin\n")?;
    writeln!(
        report,
        "`spin up` of the app served after {} ms (its components compiled, or loaded from Spin's cache of an \
         earlier run). Then, before any other request reached it, each endpoint's first request, each on a new \
         connection: a component no request had used yet, and Postgres connections the pool had not opened yet \
         (the first request opens one); then its second.\n",
        ms(cold.ready)
    )?;
    writeln!(report, "| endpoint | first request ms | second request ms |")?;
    writeln!(report, "|---|---:|---:|")?;
    for e in &cold.endpoints {
        writeln!(report, "| {} | {} | {} |", e.name, ms(e.first), ms(e.second))?;
    }
    Ok(())
}

fn cpu_ms(x: Option<f64>) -> String {
    x.map(msf).unwrap_or_else(|| "n/a".into())
}

/// The CPU figures of a row at c=32.
fn cpu_of(side: &SideBySide, runtime: Runtime, what: What) -> Option<PerRequest> {
    side.get(runtime, what).and_then(|r| r.cpu)
}

/// `a − b` when both were measured.
fn minus(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

/// The CPU budgets, as rows of the budget table above them.
fn cpu_budgets(report: &mut String, side: &SideBySide) -> Result<()> {
    for runtime in [Runtime::Spin, Runtime::SpinStatic] {
        cpu_budgets_of(report, side, runtime)?;
    }
    Ok(())
}

/// The two CPU budgets for Spin as `runtime` runs it (settings from the environment, or
/// from a runtime config's static provider).
fn cpu_budgets_of(report: &mut String, side: &SideBySide, runtime: Runtime) -> Result<()> {
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let (floor, sc, deno) = (
        cpu_of(side, runtime, What::SessionStatement),
        cpu_of(side, runtime, What::SessionComplete),
        cpu_of(side, Runtime::Deno, What::SessionComplete),
    );
    let who = runtime.label();
    let st = &side.statement;
    let floor_rt = floor.and_then(|c| c.runtime);
    if let (Some(own), Some(floor_rt)) = (minus(sc.and_then(|c| c.runtime), floor_rt), floor_rt) {
        writeln!(
            report,
            "| {who}: CPU per session-complete above its same-statement floor, c=32 | ≤ 0.15 ms | {} ms = {} − {} ms | {} | {} |",
            msf(own),
            msf(own + floor_rt),
            msf(floor_rt),
            mark(own <= 0.15),
            if own <= 0.15 {
                String::new()
            } else {
                "the component's work in Spin's process beyond sending the statement: a larger module's instance \
                 and the memory it touches, 3 more setting reads (each a host call), the request's headers and body, \
                 the JWT check, JSON in and out, the log line (parts in the breakdown below; \
                 docs/benchmark-notes.md)"
                    .to_string()
            }
        )?;
    }
    if let (Some(sc), Some(d)) = (sc.and_then(|c| c.postgres), deno.and_then(|c| c.postgres)) {
        let r = sc / d;
        let spin_extra = minus(st.sql(Sql::CompleteResetPrepare), st.sql(Sql::CompletePrepared));
        let reason = match spin_extra {
            Some(x) => format!(
                "the same statement on the same database: without any runtime, Spin's wire traffic (the pool's \
                 7-statement reset on every checkout, the statement prepared and closed on every request) costs \
                 Postgres {} ms more per `complete_session` than sending it prepared once per connection, as the \
                 Deno peer's postgres-js does; under Spin it costs {} ms more than under the peer",
                msf(x),
                msf(sc - d)
            ),
            None => String::new(),
        };
        writeln!(
            report,
            "| {who}: Postgres CPU per session-complete, c=32 | ≤ 1.1× the Deno peer's | {} ms = {r:.2}× {} ms | {} | {} |",
            msf(sc),
            msf(d),
            mark(r <= 1.1),
            if r <= 1.1 { String::new() } else { reason }
        )?;
    }
    Ok(())
}

/// Where a request's CPU goes under Spin, by differences of the c=32 rows.
fn cpu_breakdown(report: &mut String, side: &SideBySide) -> Result<()> {
    let spin = |w: What| cpu_of(side, Runtime::Spin, w);
    let (Some(noop), Some(q)) = (spin(What::Noop), spin(What::Select1)) else { return Ok(()) };
    let st = &side.statement;
    writeln!(report, "\n### Where a request's CPU goes under Spin (c=32, ms per request)\n")?;
    writeln!(
        report,
        "CPU time (`utime + stime` from `/proc`, reaped children included) over each c=32 measuring window, divided by \
         the requests completed in it; the median of {BUDGET_PASSES} passes. Runtime: `spin up`'s process group (or the \
         Deno peer's process). Postgres: the postmaster and every process it started (backends, WAL writer, \
         checkpointer, autovacuum){}. The load generator's CPU (this process, with the fake upstreams the webhook \
         calls) is in neither. Page faults: the runtime's minor faults (`minflt` + `cminflt`), each a page of memory \
         touched for the first time since it was mapped or an instance's memory was reset. Differences of medians, so \
         the parts add up only roughly. Above the same-statement floor (the fixture sending session-complete's own \
         statement and nothing else), the runtime column is the component's own share.\n",
        if side.pg_shared { "; **a cluster shared with other work (`--pg-from-env`): its figures include that work**" } else { "" }
    )?;
    writeln!(report, "| part | runtime CPU | Postgres CPU | runtime page faults | from |")?;
    writeln!(report, "|---|---:|---:|---:|---|")?;
    let mut line = |part: &str, x: PerRequest, from: &str| {
        let faults = x.runtime_faults.map(|f| format!("{f:.0}")).unwrap_or_default();
        writeln!(report, "| {part} | {} | {} | {faults} | {from} |", cpu_ms(x.runtime), cpu_ms(x.postgres))
    };
    let runtime_only = |runtime: Option<f64>| PerRequest { runtime, ..PerRequest::default() };
    line("Spin's per-request floor (instance, HTTP)", noop, "no-op row")?;
    let (read, reads) = (spin(What::VariableRead), spin(What::VariableReads));
    let further_read = minus(reads.and_then(|r| r.runtime), read.and_then(|r| r.runtime)).map(|d| d / 3.0);
    if let Some(read) = read {
        line(
            "Spin's first variable read in a request (`variables::get`)",
            sub(read, noop),
            "one-read row − no-op row",
        )?;
        line("each further variable read", runtime_only(further_read), "(4-read row − one-read row) / 3")?;
    }
    // The fixture's statements read `database_url` first: above the one-read row is the
    // Postgres path alone.
    let before_pg = read.unwrap_or(noop);
    let before_pg_row = if read.is_some() { "one-read row" } else { "no-op row" };
    line(
        "Spin's Postgres path for one `SELECT 1` (checkout and reset, prepare, execute, close)",
        sub(q, before_pg),
        &format!("`SELECT 1` row − {before_pg_row}"),
    )?;
    let statement = spin(What::SessionStatement);
    if let Some(statement) = statement {
        line(
            "Spin's path for session-complete's statement over `SELECT 1`: 8 parameters in, the `jsonb` answer out, \
             a statement that runs 1 ms instead of 0.03 (and the database's own work, in its column)",
            sub(statement, q),
            "same-statement row − `SELECT 1` row",
        )?;
    }
    // session-complete above its same-statement floor, in parts that add up to it: up to
    // its statement (the 400 row above the floor's own first read), split into the host
    // calls a 400 makes and our code, and from the statement on.
    for runtime in [Runtime::Spin, Runtime::SpinStatic] {
        let row = |w: What| cpu_of(side, runtime, w);
        let (Some(sc), Some(refused), Some(statement), Some(read)) =
            (row(What::SessionComplete), row(What::Rejected400), row(What::SessionStatement), row(What::VariableRead))
        else {
            continue;
        };
        let who = if runtime == Runtime::Spin { String::new() } else { "settings in a runtime config: ".to_string() };
        line(
            &format!("{who}session-complete up to its statement, above the floor's variable read"),
            sub(refused, read),
            "400 row − one-read row",
        )?;
        if let Some(shape) = row(What::RequestShape) {
            line(
                &format!(
                    "{who}of that, a 400's host calls without our code: the headers, the body, 2 more variable reads, \
                     one log line, the answer"
                ),
                sub(shape, read),
                "request-shape row − one-read row",
            )?;
            line(
                &format!(
                    "{who}of that, our code: the larger module's instance, the JWT check, the body's JSON, \
                     validation, the 400 document"
                ),
                sub(refused, shape),
                "400 row − request-shape row",
            )?;
        }
        line(
            &format!(
                "{who}session-complete from its statement on, above sending it: one more variable read \
                 (`database_url`), the parameters built from the request, the answer parsed, the 200 document"
            ),
            sub(sub(sc, refused), sub(statement, read)),
            "session-complete − 400 row − (same-statement row − one-read row)",
        )?;
        line(
            &format!("**{who}session-complete, above its same-statement floor**"),
            sub(sc, statement),
            "session-complete row − same-statement row",
        )?;
    }
    if let Some(log) = spin(What::LogLineOnce) {
        line("one log line (one write to stderr), in any request", sub(log, noop), "one-write log row − no-op row")?;
    }
    for (what, name) in [
        (What::SessionComplete, "session-complete"),
        (What::Webhook, "stripe-webhook"),
        (What::TtsCacheHit, "tts (cache hit)"),
        (What::Insights, "insights"),
    ] {
        if let Some(c) = spin(what) {
            line(
                &format!("**{name}, above the `SELECT 1` floor**"),
                sub(c, q),
                &format!("{name} row − `SELECT 1` row"),
            )?;
        }
    }
    if let (Some(sc), Some(d)) = (spin(What::SessionComplete), cpu_of(side, Runtime::Deno, What::SessionComplete)) {
        let d = PerRequest { runtime_faults: None, ..d };
        line(
            "session-complete under Spin − under the Deno peer (same statement)",
            sub(sc, d),
            "the two session-complete rows",
        )?;
    }
    let on_static = |w: What| cpu_of(side, Runtime::SpinStatic, w);
    if let Some(sr) = on_static(What::VariableRead) {
        line(
            "settings in a runtime config: a variable read (answered by the static provider)",
            sub(sr, noop),
            "runtime-config one-read row − no-op row",
        )?;
    }
    for (what, name) in [
        (What::Select1, "Spin's `SELECT 1` floor"),
        (What::SessionStatement, "the same-statement floor"),
        (What::SessionComplete, "session-complete"),
    ] {
        if let (Some(env), Some(on_static)) = (spin(what), on_static(what)) {
            line(
                &format!("settings in a runtime config: {name}, saved against the environment"),
                sub(env, on_static),
                &format!("{name}: Spin row − runtime-config row"),
            )?;
        }
    }
    let sql = |w: Sql| st.sql(w);
    let postgres_only = |postgres: Option<f64>| PerRequest { postgres, ..PerRequest::default() };
    line(
        "Postgres, no runtime: preparing and closing the statement on every request",
        postgres_only(minus(sql(Sql::Select1Prepare), sql(Sql::Select1Prepared))),
        "`SELECT 1` prepared per request − prepared once",
    )?;
    line(
        "Postgres, no runtime: the pool's 7-statement reset on every checkout",
        postgres_only(minus(sql(Sql::Select1ResetPrepare), sql(Sql::Select1Prepare))),
        "reset + `SELECT 1` − `SELECT 1` prepared per request",
    )?;
    line(
        "Postgres, no runtime: `complete_session` with Spin's traffic − prepared once",
        postgres_only(minus(sql(Sql::CompleteResetPrepare), sql(Sql::CompletePrepared))),
        "the two `complete_session` rows without a runtime",
    )?;
    Ok(())
}

/// `a − b` in every figure both measured.
fn sub(a: PerRequest, b: PerRequest) -> PerRequest {
    PerRequest {
        runtime: minus(a.runtime, b.runtime),
        postgres: minus(a.postgres, b.postgres),
        runtime_faults: minus(a.runtime_faults, b.runtime_faults),
    }
}

//! What the benchmark needs besides the bundled host: a Postgres with default durability,
//! real Spin, the Deno peer, and session completions that each earn their rewards.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libero_tests::cluster::Cluster;
use serde_json::json;
use uuid::Uuid;

use super::{MakeReq, Req};

// ---------------------------------------------------------------------------------------
// Postgres with default durability
// ---------------------------------------------------------------------------------------

/// A Postgres cluster of the benchmark's own with the server's default durability
/// (`fsync`, `synchronous_commit` and `full_page_writes` on), unlike `scripts/pg.sh`'s
/// throwaway cluster, which turns them off; None when this machine has no Postgres
/// binaries (the caller falls back to `DATABASE_URL` and labels the figures with that
/// server's settings).
pub fn durable_pg() -> Result<Option<Cluster>> {
    let Some(cluster) = Cluster::init("bench")? else { return Ok(None) };
    // Durability is left at the server's defaults. The rest as in scripts/pg.sh: room for
    // Spin's, the host's and the peer's pools at once, the same buffer size; and
    // pg_stat_statements, for the server-side breakdown under Spin.
    cluster.start(&[
        ("max_connections", "600"),
        ("shared_buffers", "256MB"),
        ("shared_preload_libraries", "pg_stat_statements"),
    ])?;
    Ok(Some(cluster))
}

/// `fsync`, `synchronous_commit`, `full_page_writes` of the server at `url`, for the report.
pub async fn durability(url: &str) -> Result<String> {
    let client = libero_tests::db::connect(url).await?;
    let mut parts = Vec::new();
    for name in ["fsync", "synchronous_commit", "full_page_writes"] {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
        parts.push(format!("{name}={}", row.get::<_, String>(0)));
    }
    Ok(parts.join(", "))
}

// ---------------------------------------------------------------------------------------
// Session completions that earn
// ---------------------------------------------------------------------------------------

/// Rewarded sessions one user can have per local day (`daily_sessions_cap` in
/// `complete_session`).
const DAILY_CAP: u64 = 12;

/// Session completions each of which is rewarded: every request is a new session id, for
/// the next user in turn, reported with a `started_at` in the past that overlaps none of
/// that user's earlier sessions. Users are taken round-robin, so concurrent requests are
/// for different users (as from many phones), and each user gets at most [`DAILY_CAP`]
/// completions. The counter is shared by every target measured on one database, so no
/// completion repeats another's slot. Each user's profile must have been created more
/// than `DAILY_CAP` slots before the first `started_at` (`backdate_profiles`).
pub struct Completions {
    users: Vec<Uuid>,
    /// Each user's bearer token (empty for statement-only use).
    tokens: Vec<String>,
    next: AtomicU64,
    /// Slot `k` starts `(k + 1) * SLOT` before this moment.
    epoch_ms: i64,
}

/// Wall-clock room per completion: a 5-minute session plus a minute apart.
const SLOT_MS: i64 = 6 * 60 * 1000;
const DURATION_SECONDS: i64 = 300;

impl Completions {
    /// `tokens[i]` is `users[i]`'s bearer token; empty when only [`Self::next_sql_args`]
    /// is used.
    pub fn new(users: Vec<Uuid>, tokens: Vec<String>) -> Arc<Completions> {
        Arc::new(Completions {
            users,
            tokens,
            next: AtomicU64::new(0),
            epoch_ms: chrono::Utc::now().timestamp_millis(),
        })
    }

    /// How many completions can be rewarded in all.
    pub fn capacity(&self) -> u64 {
        self.users.len() as u64 * DAILY_CAP
    }

    /// How many were handed out.
    pub fn used(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// The body and bearer of the next completion.
    fn next(&self) -> (String, Vec<u8>) {
        let (user, started_ms) = self.slot();
        let started = chrono::DateTime::from_timestamp_millis(started_ms).unwrap_or_default();
        let body = json!({
            "session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "action": "calm",
            "duration_seconds": DURATION_SECONDS, "started_at": started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        (self.tokens[user].clone(), body.to_string().into_bytes())
    }

    /// Requests to `path` (the request index the load generator passes is not used).
    pub fn make(self: &Arc<Self>, path: &str) -> MakeReq {
        let (this, path) = (self.clone(), path.to_string());
        Arc::new(move |_| {
            let (bearer, body) = this.next();
            Req {
                method: "POST",
                path: path.clone(),
                headers: vec![("authorization", bearer), ("content-type", "application/json".into())],
                body,
            }
        })
    }

    /// GETs of the fixture's `/pg/complete-session` at `path`: session-complete's own
    /// statement with the parameters the endpoint would send for the next completion.
    pub fn make_statement(self: &Arc<Self>, path: &str) -> MakeReq {
        let (this, path) = (self.clone(), path.to_string());
        let sql = percent_encode(libero_shared::economy::COMPLETE_SESSION_SQL);
        Arc::new(move |_| {
            let (user, started_ms, fingerprint) = this.next_sql_args();
            Req {
                method: "GET",
                path: format!(
                    "{path}?sql={sql}&user={user}&session={}&started_ms={started_ms}&fingerprint={}",
                    Uuid::new_v4(),
                    percent_encode(&fingerprint)
                ),
                headers: vec![],
                body: vec![],
            }
        })
    }

    /// The next (user index, `started_at` in ms).
    fn slot(&self) -> (usize, i64) {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.users.len() as u64;
        ((k % n) as usize, self.epoch_ms - ((k / n) as i64 + 1) * SLOT_MS)
    }

    /// The next completion's user, `started_at` (ms) and fingerprint, as the endpoint
    /// passes them to `complete_session` (for the rows that call the statement alone).
    pub fn next_sql_args(&self) -> (Uuid, i64, String) {
        let (user, started_ms) = self.slot();
        (self.users[user], started_ms, format!("v1|guardian|calm|{DURATION_SECONDS}||started_at_ms={started_ms}"))
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Makes the profiles old enough for every slot's `started_at` (a session may not start
/// before its account was created).
pub async fn backdate_profiles(client: &tokio_postgres::Client, users: &[Uuid]) -> Result<()> {
    client
        .execute("UPDATE public.user_profiles SET created_at = now() - interval '2 days' WHERE id = ANY($1)", &[&users])
        .await
        .context("backdating the benchmark's profiles")?;
    Ok(())
}

/// Session completions recorded so far on the database at `url`: (all, rewarded).
pub async fn rewarded_counts(url: &str) -> Result<(i64, i64)> {
    let client = libero_tests::db::connect(url).await?;
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE rewarded) FROM public.sessions WHERE request_fingerprint <> 'bench'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

// ---------------------------------------------------------------------------------------
// Real Spin
// ---------------------------------------------------------------------------------------

pub use libero_tests::spin::{find_spin, SpinApp};

/// `spin --version`'s first line.
pub fn spin_version(spin: &Path) -> String {
    Command::new(spin)
        .arg("--version")
        .output()
        .ok()
        // "spin 4.0.2 (<build info>)": the name and the version.
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "spin (unknown version)".into())
}

/// Starts `spin up` on `manifest` with these variables.
pub async fn start_spin(manifest: &Path, variables: &HashMap<String, String>) -> Result<SpinApp> {
    SpinApp::start(manifest, variables, false).await.with_context(|| format!("spin up {}", manifest.display()))
}

// ---------------------------------------------------------------------------------------
// The Deno peer
// ---------------------------------------------------------------------------------------

/// session-complete and the streamed chat as a Supabase-style Deno edge function
/// (`tests/benches/deno-peer`).
pub struct DenoPeer {
    pub addr: SocketAddr,
    pub version: String,
    child: std::process::Child,
}

fn peer_dir() -> PathBuf {
    libero_tests::repo_root().join("tests/benches/deno-peer")
}

/// The Deno binary npm installed (`npm ci` in the peer's folder when it is missing). Run
/// directly, not through npm's node wrapper.
fn deno_binary() -> Result<PathBuf> {
    let dir = peer_dir();
    let find = || -> Option<PathBuf> {
        let platform = dir.join("node_modules/@deno");
        std::fs::read_dir(platform).ok()?.filter_map(|e| e.ok()).map(|e| e.path().join("deno")).find(|p| p.is_file())
    };
    if let Some(deno) = find() {
        return Ok(deno);
    }
    eprintln!("bench: installing the Deno peer's packages (npm ci in {})", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .status()
        .context("npm ci for the Deno peer (is npm installed?)")?;
    if !status.success() {
        bail!("npm ci in {} failed", dir.display());
    }
    find().context("npm installed no Deno binary under node_modules/@deno")
}

impl DenoPeer {
    pub async fn start(database_url: &str, jwt_secret: &str, openai_base_url: &str) -> Result<DenoPeer> {
        let deno = deno_binary()?;
        let version = Command::new(&deno)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(&deno)
            .args(["run", "--allow-net", "--allow-env", "--allow-read", "--allow-sys", "main.ts"])
            .current_dir(peer_dir())
            .env("PORT", addr.port().to_string())
            .env("DATABASE_URL", database_url)
            .env("SUPABASE_JWT_SECRET", jwt_secret)
            .env("OPENAI_BASE_URL", openai_base_url)
            .env("DENO_NO_UPDATE_CHECK", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the Deno peer")?;
        let mut peer = DenoPeer { addr, version, child };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = peer.child.try_wait()? {
                bail!("the Deno peer exited ({status}) before serving");
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the Deno peer did not serve on {addr} within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(peer)
    }
}

impl DenoPeer {
    /// The peer's process id, the root of the processes its CPU time is read over.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for DenoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

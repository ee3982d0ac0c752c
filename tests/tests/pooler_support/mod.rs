//! PgBouncer in front of the test cluster, for `pooler.rs`: one process per test, on a
//! free loopback port, its ini and userlist in a temporary directory.
//!
//! PgBouncer comes from the OS (`apt-get install pgbouncer`; `.ci/run` installs it). Where
//! it is missing a test fails, or with `LIBERO_ALLOW_SKIPS=1` (outside CI only) skips with
//! a line saying so: a pooler test that silently passes without a pooler proves nothing.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libero_tests::cluster::is_root;
use libero_tests::testing::skip;
use tokio::process::{Child, Command};

/// The `pgbouncer` binary: `PGBOUNCER`, `PATH`, then Debian's `/usr/sbin/pgbouncer`.
pub fn find_pgbouncer() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PGBOUNCER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("pgbouncer")).find(|p| p.is_file())
}

/// The binary, or `None` once [`skip`] has said why (a failure in CI, and outside CI
/// unless `LIBERO_ALLOW_SKIPS=1`).
pub fn pgbouncer_or_skip() -> Option<PathBuf> {
    let found = find_pgbouncer();
    if found.is_none() {
        skip("pgbouncer not found (apt-get install pgbouncer, or set PGBOUNCER; .ci/run installs it)");
    }
    found
}

/// PgBouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

/// A running PgBouncer, killed when dropped.
pub struct Pgbouncer {
    pub port: u16,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Pgbouncer {
    /// PgBouncer in `mode` in front of the Postgres at `upstream` (any database on it),
    /// trusting its clients, with these `[pgbouncer]` settings on top of the
    /// defaults below (e.g. `default_pool_size`).
    pub async fn start(
        binary: &std::path::Path,
        upstream: &str,
        mode: PoolMode,
        settings: &[(&str, &str)],
    ) -> Pgbouncer {
        let config: tokio_postgres::Config = upstream.parse().expect("a Postgres URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_string();
        // PgBouncer logs in to the upstream with the password its auth file holds for the
        // user (a cluster of scripts/pg.sh requires one over TCP).
        let password =
            config.get_password().map(|p| String::from_utf8_lossy(p).replace('"', "\"\"")).unwrap_or_default();

        let dir = tempfile::Builder::new().prefix("libero-pgbouncer").tempdir().expect("a temp dir");
        // PgBouncer refuses to run as root: it switches to `user` (below), which must be
        // able to read the files after the switch (a reload re-reads them).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let listen = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        let mut ini: Vec<(String, String)> = [
            ("listen_addr", "127.0.0.1".to_string()),
            ("listen_port", listen.to_string()),
            // No Unix socket: nothing to clean up, nothing shared between tests.
            ("unix_socket_dir", String::new()),
            ("auth_type", "trust".to_string()),
            ("auth_file", dir.path().join("userlist.txt").display().to_string()),
            (
                "pool_mode",
                match mode {
                    PoolMode::Session => "session",
                    PoolMode::Transaction => "transaction",
                }
                .to_string(),
            ),
            ("default_pool_size", "20".to_string()),
            ("max_client_conn", "1000".to_string()),
            ("ignore_startup_parameters", "extra_float_digits".to_string()),
            ("log_connections", "0".to_string()),
            ("log_disconnections", "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in settings {
            ini.retain(|(key, _)| key != k);
            ini.push((k.to_string(), v.to_string()));
        }
        if is_root() {
            ini.push(("user".into(), "postgres".into()));
        }
        let mut text = format!("[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n");
        for (k, v) in &ini {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let ini_path = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini_path, text).expect("writing pgbouncer.ini");
        std::fs::write(dir.path().join("userlist.txt"), format!("\"{user}\" \"{password}\"\n"))
            .expect("writing userlist.txt");

        let (child, logs) = spawn_listening(Command::new(binary).arg(&ini_path), listen, "pgbouncer").await;
        Pgbouncer { port: listen, child, logs, _dir: dir }
    }

    /// `url` (an address of the upstream cluster) through this PgBouncer: same user and
    /// database, PgBouncer's port.
    pub fn url_for(&self, url: &str) -> String {
        let config: tokio_postgres::Config = url.parse().expect("a Postgres URL");
        let user = config.get_user().unwrap_or("postgres");
        let dbname = config.get_dbname().unwrap_or("postgres");
        format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Points an app's `database_url` (and `db_host`, for `allowed_outbound_hosts`) at
    /// this PgBouncer, keeping the database the app was given.
    pub fn route(&self, variables: &mut HashMap<String, String>) {
        let url = self.url_for(&variables["database_url"]);
        variables.insert("database_url".into(), url);
        variables.insert("db_host".into(), format!("127.0.0.1:{}", self.port));
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `command` with its output collected (and echoed with `LIBERO_ECHO_LOGS`), and
/// waits until it listens on `port` of loopback.
async fn spawn_listening(command: &mut Command, port: u16, name: &str) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let logs = libero_tests::spin::capture_output(&mut child, name, std::env::var_os("LIBERO_ECHO_LOGS").is_some());
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!("{name} exited ({status}):\n{}", logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n"));
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{name} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, logs)
}

/// A pooler that keeps named prepared statements in transaction mode, when one is at
/// hand: `PGCAT` names a PgCat binary (built from source; no package registry has one,
/// so this is never required, in CI either). `None` after a line saying why.
pub fn pgcat_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("PGCAT").filter(|p| !p.is_empty()).map(PathBuf::from).filter(|p| p.is_file());
    if found.is_none() {
        skip("no pooler with prepared statement support at hand (set PGCAT to a PgCat binary)");
    }
    found
}

/// PgCat in transaction mode with its prepared statement cache on, in front of one
/// database of the test cluster (PgCat pools are per database name), trusting the client.
pub struct Pgcat {
    pub port: u16,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Pgcat {
    pub async fn start(binary: &std::path::Path, database_url: &str, pool_size: u32) -> Pgcat {
        let config: tokio_postgres::Config = database_url.parse().expect("a Postgres URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres");
        // PgCat logs in to the upstream with this user's password (TOML basic string).
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).replace('\\', "\\\\").replace('"', "\\\""))
            .unwrap_or_default();
        let dbname = config.get_dbname().expect("a database name");
        let dir = tempfile::Builder::new().prefix("libero-pgcat").tempdir().expect("a temp dir");
        let listen = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        let toml = format!(
            r#"[general]
host = "127.0.0.1"
port = {listen}
admin_username = "pgcat"
admin_password = "pgcat"
enable_prometheus_exporter = false

[pools.{dbname}]
pool_mode = "transaction"
prepared_statements_cache_size = 500
query_parser_enabled = false

[pools.{dbname}.users.0]
username = "{user}"
password = "{password}"
auth_type = "trust"
pool_size = {pool_size}

[pools.{dbname}.shards.0]
servers = [["{host}", {port}, "primary"]]
database = "{dbname}"
"#
        );
        let path = dir.path().join("pgcat.toml");
        std::fs::write(&path, toml).expect("writing pgcat.toml");
        let (child, logs) = spawn_listening(Command::new(binary).arg(&path), listen, "pgcat").await;
        Pgcat { port: listen, child, logs, _dir: dir }
    }

    /// Points an app's `database_url` and `db_host` at this PgCat.
    pub fn route(&self, variables: &mut HashMap<String, String>) {
        let config: tokio_postgres::Config = variables["database_url"].parse().expect("a Postgres URL");
        let user = config.get_user().unwrap_or("postgres").to_string();
        let dbname = config.get_dbname().unwrap_or("postgres").to_string();
        variables.insert("database_url".into(), format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port));
        variables.insert("db_host".into(), format!("127.0.0.1:{}", self.port));
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Pgcat {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

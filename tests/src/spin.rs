//! Real Spin as the runtime under the end-to-end tests: `spin up` on the project's own
//! `spin.toml`, one process per test, variables passed as `SPIN_VARIABLE_*`.
//!
//! `LIBERO_RUNTIME=spin` selects it for [`crate::testing::TestApp`]. Spin is found in
//! `SPIN`, then on `PATH`, then at `../shared/bin/spin` beside the repository.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a first start may take: Spin compiles every component once, then its
/// Wasmtime cache makes later starts quick.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Which runtime serves the app in end-to-end tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The bundled wasmtime host (`crate::host`), in-process.
    Host,
    /// Real `spin up`, as a child process.
    Spin,
}

impl RuntimeKind {
    /// `LIBERO_RUNTIME=spin` or `host` (the default).
    pub fn from_env() -> RuntimeKind {
        match std::env::var("LIBERO_RUNTIME").as_deref() {
            Ok("spin") => RuntimeKind::Spin,
            Ok("host") | Ok("") | Err(_) => RuntimeKind::Host,
            Ok(other) => panic!("LIBERO_RUNTIME={other}: expected `spin` or `host`"),
        }
    }
}

/// The Spin binary: `SPIN`, else `spin` on `PATH`, else `../shared/bin/spin`.
pub fn find_spin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SPIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("spin");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let beside = crate::repo_root().join("../shared/bin/spin");
    beside.is_file().then_some(beside)
}

/// A running `spin up`: killed when dropped.
pub struct SpinApp {
    pub addr: std::net::SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _state_dir: tempfile::TempDir,
}

impl SpinApp {
    /// Starts `spin up` on `manifest` with these variables and waits until it serves.
    pub async fn start(manifest: &Path, variables: &HashMap<String, String>, echo_logs: bool) -> Result<SpinApp> {
        Self::launch(manifest, variables, None, echo_logs).await
    }

    /// [`SpinApp::start`] with `spin up --runtime-config-file runtime_config`.
    pub async fn start_with_runtime_config(
        manifest: &Path,
        variables: &HashMap<String, String>,
        runtime_config: &Path,
    ) -> Result<SpinApp> {
        Self::launch(manifest, variables, Some(runtime_config), false).await
    }

    async fn launch(
        manifest: &Path,
        variables: &HashMap<String, String>,
        runtime_config: Option<&Path>,
        echo_logs: bool,
    ) -> Result<SpinApp> {
        let spin = find_spin().context("LIBERO_RUNTIME=spin, but no Spin found (SPIN, PATH, ../shared/bin/spin)")?;
        let state_dir = tempfile::Builder::new().prefix("libero-spin-state").tempdir()?;
        let addr = free_loopback_addr()?;
        let mut command = Command::new(&spin);
        command
            .arg("up")
            .arg("--from")
            .arg(manifest)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(state_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // `spin up` runs the app in a child process of its own (`spin trigger http`):
            // a group of their own lets Drop stop both.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(path) = runtime_config {
            command.arg("--runtime-config-file").arg(path);
        }
        // Only this test's variables: none inherited from the developer's shell.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                command.env_remove(name);
            }
        }
        for (name, value) in variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", spin.display()))?;
        let logs = capture_output(&mut child, "spin", echo_logs);
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let logs = logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                bail!("spin up exited ({status}) before serving:\n{logs}");
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("spin up did not serve on {addr} within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(SpinApp { addr, child, logs, _state_dir: state_dir })
    }

    /// Everything Spin and the components printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for SpinApp {
    fn drop(&mut self) {
        // The whole group: killing `spin up` alone leaves its trigger process serving.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
        let _ = self.child.start_kill();
    }
}

fn free_loopback_addr() -> Result<std::net::SocketAddr> {
    // Bound and released at once; Spin binds it a moment later (a race only with another
    // process picking the same ephemeral port in between).
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Collects a child process's stdout and stderr, line by line, as it runs (and echoes
/// them to this process's stderr, prefixed with `[label]`, when `echo` is set).
pub fn capture_output(child: &mut Child, label: &str, echo: bool) -> Arc<Mutex<Vec<String>>> {
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let streams = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ];
    for stream in streams.into_iter().flatten() {
        let (logs, label) = (logs.clone(), label.to_string());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[{label}] {line}");
                }
                logs.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }
    logs
}

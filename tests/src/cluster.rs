//! A Postgres cluster of a test's (or the benchmark's) own, for what the shared one of
//! `scripts/pg.sh` must not be used for: crashing it on purpose, or measuring with the
//! server's default durability. Made with the machine's Postgres binaries, run as
//! `postgres` when we are root (Postgres refuses to run as root), logins over TCP by
//! password (scram) as on a real server; stopped and deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Cluster {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    password: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A new cluster (not started) in a directory named after `purpose`; None when this
    /// machine has no Postgres binaries (initdb, pg_ctl).
    pub fn init(purpose: &str) -> Result<Option<Cluster>> {
        let Some(bindir) = pg_bindir() else { return Ok(None) };
        // /var/tmp: on disk, where /tmp may be a small tmpfs (the benchmark loads a million rows).
        let dir = tempfile::Builder::new().prefix(&format!("libero-{purpose}-pg")).tempdir_in("/var/tmp")?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let password = {
            use rand::Rng;
            hex::encode(rand::rng().random::<[u8; 16]>())
        };
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        if is_root() {
            let status = Command::new("chown").arg("-R").arg("postgres").arg(dir.path()).status()?;
            if !status.success() {
                bail!("chown postgres {}", dir.path().display());
            }
        }
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        let data_arg = data.to_str().context("the data directory's path")?;
        let args = ["-D", data_arg, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", &pwfile_arg];
        let out = as_owner(&bindir.join("initdb"), &[&args[..], &["-E", "UTF8", "--locale=C", "-N"]].concat())?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Some(Cluster { bindir, data, port, password, _dir: dir }))
    }

    /// The `postgres` role's address, password included.
    pub fn url(&self) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/postgres", self.password, self.port)
    }

    /// Starts it (again), listening on loopback only, with these server settings
    /// (`-c name=value` each) on top of the server's defaults.
    pub fn start(&self, settings: &[(&str, &str)]) -> Result<()> {
        let mut options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.data.display());
        for (name, value) in settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let log = self.data.join("server.log");
        let out =
            self.pg_ctl(&["-l", log.to_str().context("the log's path")?, "-w", "-t", "60", "start", "-o", &options])?;
        if !out.status.success() {
            bail!("pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Stops it the way a crash or a pulled cable would: every connection is cut.
    pub fn crash(&self) -> Result<()> {
        let out = self.pg_ctl(&["-m", "immediate", "-w", "stop"])?;
        if !out.status.success() {
            bail!("pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        let data = self.data.to_str().context("the data directory's path")?;
        as_owner(&self.bindir.join("pg_ctl"), &[&["-D", data][..], args].concat())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

/// Where the machine's Postgres binaries are (`pg_config`, else the newest of Debian's).
fn pg_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.pop()
}

/// Whether this process runs as root (servers that refuse root are run as `postgres`).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs a Postgres binary as the cluster's owner.
fn as_owner(bin: &Path, args: &[&str]) -> Result<std::process::Output> {
    let output = if is_root() {
        Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(bin).args(args).output()
    } else {
        Command::new(bin).args(args).output()
    };
    output.with_context(|| format!("running {}", bin.display()))
}

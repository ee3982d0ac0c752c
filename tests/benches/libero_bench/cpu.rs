//! CPU time of the processes a target runs on, from `/proc/<pid>/stat`: what a host bills
//! and what bounds throughput on a busy node, where latency on 2 shared cores is mostly
//! other processes' time.
//!
//! A set's CPU time is `utime + stime` of each live member plus `cutime + cstime` (the
//! children it has reaped), so a Postgres backend that exits inside a window is still
//! counted: in its own figures before, in the postmaster's after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

/// The processes whose CPU time is read.
#[derive(Clone, Debug)]
pub enum Procs {
    /// Every process of a process group (`spin up` and the `spin trigger http` it starts).
    Group(i32),
    /// A process and all its descendants (the postmaster and its backends; the Deno peer).
    Tree(i32),
}

struct Stat {
    ppid: i32,
    pgid: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
    /// Minor page faults, its own and its reaped children's (minflt + cminflt): each a
    /// page of memory touched for the first time since it was mapped or reset.
    faults: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: the fields that
    // follow start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, pgrp 5, minflt 10, cminflt 11, utime 14 ..
    // cstime 17.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    let sum = |fields: &[usize]| fields.iter().map(|&i| num(i).unwrap_or(0).max(0) as u64).sum();
    Some(Stat { ppid: num(1)? as i32, pgid: num(2)? as i32, ticks: sum(&[11, 12, 13, 14]), faults: sum(&[7, 8]) })
}

fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect())
        .unwrap_or_default()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The CPU figures of every process, read at one moment.
pub struct Snapshot(HashMap<i32, Stat>);

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot(all_pids().into_iter().filter_map(|p| Some((p, read_stat(p)?))).collect())
    }
}

impl Procs {
    /// Their CPU time up to `at`.
    pub fn cpu(&self, at: &Snapshot) -> Duration {
        Duration::from_secs_f64(self.sum(at, |s| s.ticks) as f64 / ticks_per_second())
    }

    /// Their minor page faults up to `at`.
    pub fn faults(&self, at: &Snapshot) -> u64 {
        self.sum(at, |s| s.faults)
    }

    /// Their memory at `at`: the proportional set size (`Pss` of `smaps_rollup`: each
    /// shared page divided among the processes sharing it), summed, in KiB. None when no
    /// process of the set could be read.
    pub fn pss_kib(&self, at: &Snapshot) -> Option<u64> {
        let figures: Vec<u64> = self.pids(at).into_iter().filter_map(pss_kib).collect();
        (!figures.is_empty()).then(|| figures.iter().sum())
    }

    fn sum(&self, at: &Snapshot, field: impl Fn(&Stat) -> u64) -> u64 {
        self.pids(at).iter().filter_map(|pid| at.0.get(pid)).map(field).sum()
    }

    fn pids(&self, at: &Snapshot) -> Vec<i32> {
        let stats = &at.0;
        match *self {
            Procs::Group(g) => stats.iter().filter(|(_, s)| s.pgid == g).map(|(&pid, _)| pid).collect(),
            Procs::Tree(root) => {
                let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
                for (&pid, s) in stats {
                    children.entry(s.ppid).or_default().push(pid);
                }
                let (mut tree, mut todo) = (Vec::new(), vec![root]);
                while let Some(pid) = todo.pop() {
                    if stats.contains_key(&pid) {
                        tree.push(pid);
                    }
                    todo.extend(children.get(&pid).into_iter().flatten());
                }
                tree
            }
        }
    }

    /// `spin up --listen <addr>` (and the trigger process it starts, which inherits the
    /// command line's `--listen`): their process group.
    pub fn spin_listening_on(addr: SocketAddr) -> Option<Procs> {
        let want = format!("--listen\0{addr}\0");
        all_pids().into_iter().find_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let hit = cmdline.windows(want.len()).any(|w| w == want.as_bytes());
            hit.then(|| read_stat(pid).map(|s| Procs::Group(s.pgid))).flatten()
        })
    }

    /// The Postgres cluster behind `url`: the postmaster (the parent of the backend
    /// serving a connection) and every process it started.
    pub async fn postgres(url: &str) -> Result<Procs> {
        let client = libero_tests::db::connect(url).await?;
        let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        let stat = read_stat(backend).context("the backend is not a process of this machine")?;
        Ok(Procs::Tree(stat.ppid))
    }
}

/// CPU per completed request, in ms, of each of a window's process sets.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerRequest {
    /// The runtime serving the target (None: not measurable apart from the load
    /// generator, as for the bundled host, which runs in its process).
    pub runtime: Option<f64>,
    /// The Postgres cluster.
    pub postgres: Option<f64>,
    /// The runtime's minor page faults per request.
    pub runtime_faults: Option<f64>,
}

/// The median of the measured figures (None when no pass measured it).
pub fn median(all: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = all.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

impl PerRequest {
    /// Each figure the median of the passes'.
    pub fn median_of(passes: &[PerRequest]) -> PerRequest {
        PerRequest {
            runtime: median(&passes.iter().map(|p| p.runtime).collect::<Vec<_>>()),
            postgres: median(&passes.iter().map(|p| p.postgres).collect::<Vec<_>>()),
            runtime_faults: median(&passes.iter().map(|p| p.runtime_faults).collect::<Vec<_>>()),
        }
    }
}

/// The cumulative figures of a target's processes at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    runtime_ms: Option<f64>,
    postgres_ms: Option<f64>,
    runtime_faults: Option<f64>,
}

/// What a load window reads CPU time of.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    pub runtime: Option<Procs>,
    pub postgres: Option<Procs>,
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.runtime.is_none() && self.postgres.is_none()
    }

    /// Each set's figures at `at`: CPU time in ms, and the runtime's page faults.
    pub fn read(&self, at: &Snapshot) -> Reading {
        let cpu_ms = |p: &Option<Procs>| p.as_ref().map(|p| p.cpu(at).as_secs_f64() * 1e3);
        Reading {
            runtime_ms: cpu_ms(&self.runtime),
            postgres_ms: cpu_ms(&self.postgres),
            runtime_faults: self.runtime.as_ref().map(|p| p.faults(at) as f64),
        }
    }

    /// Per request, between two readings over `requests` completed requests.
    pub fn per_request(before: Reading, after: Reading, requests: u64) -> PerRequest {
        let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if requests > 0 => Some((b - a) / requests as f64),
            _ => None,
        };
        PerRequest {
            runtime: per(before.runtime_ms, after.runtime_ms),
            postgres: per(before.postgres_ms, after.postgres_ms),
            runtime_faults: per(before.runtime_faults, after.runtime_faults),
        }
    }
}

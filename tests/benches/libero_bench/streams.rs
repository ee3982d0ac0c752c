//! Memory with streamed chats open: `chatgpt-chat` with `"stream": true` under real Spin and
//! the Deno peer's streamed chat, each relaying a slow fake OpenAI stream, and Spin's floor
//! (a component streaming as many chunks with no upstream), with 0, 100 and 400 streams
//! open at once. What an open stream costs a node is memory, not CPU: every
//! stream holds an instance (under Spin) or a request's objects (under Deno) for as long
//! as the model talks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;

use super::cpu::{Procs, Snapshot};
use super::runtimes::{self, DenoPeer};
use super::JWT_SECRET;

const CHAT: &str = "/functions/v1/chatgpt-chat";

/// The levels measured, in streams open at once.
pub const LEVELS: [usize; 3] = [0, 100, 400];
/// Each fake answer: this many deltas, this far apart (10 s in all), long enough that
/// every stream of a level is open at once.
const DELTAS: usize = 50;
const DELTA_INTERVAL: Duration = Duration::from_millis(200);
/// Streams run to the end before the first level: the component compiled and
/// instantiated once, the runtime's pools warm.
const WARM_STREAMS: usize = 4;

/// One runtime at one level.
pub struct Level {
    pub streams: usize,
    /// The highest proportional set size of the runtime's processes while the level ran,
    /// in KiB (sampled every 100 ms; for 0, the idle figure).
    pub peak_pss_kib: Option<u64>,
    /// The most streams open at one moment (answer begun, end not yet read).
    pub most_open: usize,
    /// From the first request sent until every stream had its first delta.
    pub all_open_after: Option<Duration>,
    pub failures: usize,
    pub first_failure: Option<String>,
}

/// What is streamed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `chatgpt-chat` (or the Deno peer's) relaying the slow fake OpenAI.
    Chat,
    /// The fixture sending as many chunks as far apart, from a component with no upstream
    /// and no database: Spin's own floor for an open stream.
    Floor,
}

impl Kind {
    /// Bytes that mark the stream's first delta.
    fn marker(self) -> &'static str {
        match self {
            Kind::Chat => "\"delta\":",
            Kind::Floor => "data: chunk",
        }
    }

    fn request(self, addr: SocketAddr, path: &str, bearer: &str) -> Result<hyper::Request<Full<Bytes>>> {
        let builder = hyper::Request::builder().uri(path).header("host", addr.to_string());
        Ok(match self {
            Kind::Chat => {
                let body =
                    json!({"messages": [{"role": "user", "content": "Help me breathe slowly."}], "stream": true});
                builder
                    .method("POST")
                    .header("authorization", bearer)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))?
            }
            Kind::Floor => builder.method("GET").body(Full::new(Bytes::new()))?,
        })
    }

    /// An error unless the stream was whole.
    fn check(self, text: &str) -> Result<()> {
        let deltas = text.matches(self.marker()).count();
        let whole = match self {
            Kind::Chat => text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\""),
            Kind::Floor => true,
        };
        anyhow::ensure!(
            deltas == DELTAS && whole,
            "an incomplete stream ({deltas} of {DELTAS} deltas): …{}",
            text.chars().rev().take(200).collect::<String>().chars().rev().collect::<String>()
        );
        Ok(())
    }
}

/// Where a runtime's streams go, and whose memory is read.
struct Target<'a> {
    kind: Kind,
    addr: SocketAddr,
    path: &'a str,
    procs: Procs,
}

/// Who sends the streams: each stream a user of its own, in turn across every level and
/// runtime.
struct Senders<'a> {
    tokens: &'a [String],
    next: AtomicUsize,
}

impl Senders<'_> {
    fn next_token(&self) -> String {
        self.tokens[self.next.fetch_add(1, Ordering::Relaxed) % self.tokens.len()].clone()
    }
}

pub struct RuntimeStreams {
    pub runtime: String,
    pub levels: Vec<Level>,
}

pub struct Streams {
    pub runtimes: Vec<RuntimeStreams>,
    pub missing: Vec<String>,
}

/// Measures every level under Spin (when found) and the Deno peer. `vars` are the app's
/// settings; `tokens` bearer tokens of existing users (one stream each).
pub async fn measure(vars: &HashMap<String, String>, db_url: &str, tokens: &Arc<Vec<String>>) -> Result<Streams> {
    let say = |line: &str| eprintln!("bench: streams: {line}");
    let upstream = format!("http://{}", slow_openai().await?);
    let mut vars = vars.clone();
    vars.insert("openai_base_url".into(), upstream.clone());
    let senders = Senders { tokens, next: AtomicUsize::new(0) };
    let (mut runtimes_measured, mut missing) = (Vec::new(), Vec::new());

    match runtimes::find_spin() {
        Some(_) => {
            say("real Spin, its floor");
            let fixture = runtimes::start_spin(&super::fixture_manifest()?, &vars).await?;
            let procs = Procs::spin_listening_on(fixture.addr).context("no `spin up --listen` process in /proc")?;
            let path = format!("/fixture/stream?n={DELTAS}&delay_ms={}", DELTA_INTERVAL.as_millis());
            let target = Target { kind: Kind::Floor, addr: fixture.addr, path: &path, procs };
            let levels = measure_levels(&target, &senders).await?;
            let runtime = format!("Spin floor: a component streaming {DELTAS} chunks, no upstream, no database");
            runtimes_measured.push(RuntimeStreams { runtime, levels });
            drop(fixture);
            say("real Spin");
            let app = runtimes::start_spin(&libero_tests::repo_root().join("spin.toml"), &vars).await?;
            let procs = Procs::spin_listening_on(app.addr).context("no `spin up --listen` process in /proc")?;
            let target = Target { kind: Kind::Chat, addr: app.addr, path: CHAT, procs };
            let levels = measure_levels(&target, &senders).await?;
            runtimes_measured.push(RuntimeStreams { runtime: "Spin: chatgpt-chat".into(), levels });
        }
        None => missing.push("real Spin".to_string()),
    }
    match DenoPeer::start(db_url, JWT_SECRET, &upstream).await {
        Ok(peer) => {
            say("the Deno peer");
            let target = Target { kind: Kind::Chat, addr: peer.addr, path: CHAT, procs: Procs::Tree(peer.pid()) };
            let levels = measure_levels(&target, &senders).await?;
            runtimes_measured.push(RuntimeStreams {
                runtime: format!(
                    "Deno peer: its streamed chat ({})",
                    peer.version.split(" (").next().unwrap_or_default()
                ),
                levels,
            });
        }
        Err(e) => missing.push(format!("the Deno peer ({e:#})")),
    }
    Ok(Streams { runtimes: runtimes_measured, missing })
}

async fn measure_levels(target: &Target<'_>, senders: &Senders<'_>) -> Result<Vec<Level>> {
    let warm = level(target, senders, WARM_STREAMS).await?;
    anyhow::ensure!(warm.failures == 0, "warming up: {}", warm.first_failure.unwrap_or_default());
    let mut out = Vec::new();
    for streams in LEVELS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("bench: streams: {streams} at once");
        out.push(level(target, senders, streams).await?);
    }
    Ok(out)
}

/// `n` streams started at once and read to their end, the runtime's memory sampled
/// throughout.
async fn level(target: &Target<'_>, senders: &Senders<'_>, n: usize) -> Result<Level> {
    let (kind, addr, procs) = (target.kind, target.addr, &target.procs);
    let (open, most_open, first_delta) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let token = senders.next_token();
        let (path, open, most_open, first_delta) =
            (target.path.to_string(), open.clone(), most_open.clone(), first_delta.clone());
        tasks.push(tokio::spawn(async move {
            let mut began = false;
            let result = {
                let mut on_first_delta = || {
                    began = true;
                    first_delta.fetch_add(1, Ordering::Relaxed);
                    let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
                    most_open.fetch_max(now_open, Ordering::Relaxed);
                };
                one_stream(kind, addr, &path, &token, &mut on_first_delta).await
            };
            if began {
                open.fetch_sub(1, Ordering::Relaxed);
            }
            result
        }));
    }
    let mut peak = procs.pss_kib(&Snapshot::take());
    let mut all_open_after = (n == 0).then(Duration::default);
    while !tasks.iter().all(|t| t.is_finished()) {
        if all_open_after.is_none() && first_delta.load(Ordering::Relaxed) == n {
            all_open_after = Some(started.elapsed());
        }
        peak = peak.max(procs.pss_kib(&Snapshot::take()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut failures, mut first_failure) = (0, None);
    for task in tasks {
        if let Err(e) = task.await? {
            failures += 1;
            first_failure.get_or_insert_with(|| format!("{e:#}"));
        }
    }
    Ok(Level {
        streams: n,
        peak_pss_kib: peak,
        most_open: most_open.load(Ordering::Relaxed),
        all_open_after,
        failures,
        first_failure,
    })
}

/// One stream read to its end; an error unless it was whole (200, and for a chat every
/// delta, the closing `[DONE]` and no error event).
async fn one_stream(
    kind: Kind,
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    on_first_delta: &mut (dyn FnMut() + Send),
) -> Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(kind.request(addr, path, bearer)?).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let (mut seen, mut began, marker) = (Vec::new(), false, kind.marker().as_bytes());
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.context("the stream broke off")?.data_ref() {
            seen.extend_from_slice(data);
            if !began && status == 200 && seen.windows(marker.len()).any(|w| w == marker) {
                began = true;
                on_first_delta();
            }
        }
    }
    let text = String::from_utf8_lossy(&seen);
    anyhow::ensure!(status == 200, "{status}: {}", text.chars().take(300).collect::<String>());
    kind.check(&text)
}

/// A fake OpenAI whose streamed chat answers send `DELTAS` deltas `DELTA_INTERVAL` apart,
/// then the usage and `[DONE]`, as OpenAI does with `stream_options.include_usage`.
async fn slow_openai() -> Result<SocketAddr> {
    super::serve_loopback(hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        let _ = req.into_body().collect().await;
        let response = if path == "/v1/chat/completions" {
            hyper::Response::builder().header("content-type", "text/event-stream").body(slow_answer())
        } else {
            hyper::Response::builder().status(404).body(Full::new(Bytes::new()).boxed())
        };
        Ok::<_, Infallible>(response.expect("a valid response"))
    }))
    .await
}

fn slow_answer() -> BoxBody<Bytes, Infallible> {
    let events = futures_util::stream::unfold(0usize, |i| async move {
        if i > DELTAS {
            return None;
        }
        let event = if i < DELTAS {
            tokio::time::sleep(DELTA_INTERVAL).await;
            let chunk = json!({"object": "chat.completion.chunk", "model": "gpt-bench",
                "choices": [{"index": 0, "delta": {"content": format!("word{i} ")}}]});
            format!("data: {chunk}\n\n")
        } else {
            let usage = json!({"object": "chat.completion.chunk", "model": "gpt-bench", "choices": [],
                "usage": {"prompt_tokens": 20, "completion_tokens": DELTAS, "total_tokens": 20 + DELTAS}});
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: {usage}\n\ndata: [DONE]\n\n"
            )
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), i + 1))
    });
    StreamBody::new(events).boxed()
}

/// The section of `BENCHMARKS.md`.
pub fn write_report(report: &mut String, streams: &Streams) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(report, "\n## Memory with streamed chats open\n")?;
    writeln!(
        report,
        "`chatgpt-chat` with `\"stream\": true` under real Spin (the app's `spin.toml`, settings from the environment) \
         and the Deno peer's streamed chat (`tests/benches/deno-peer`: the same token check, the upstream's deltas \
         relayed in the same events; it does not meter), each relaying a fake OpenAI on loopback that sends {DELTAS} \
         deltas {} ms apart; and Spin's floor, the fixture component sending as many chunks as far apart with no \
         upstream and no database (`/fixture/stream`). Each level starts its streams at once, each on its own connection and for a user of its \
         own, and reads them to the end; {WARM_STREAMS} streams ran before the first level. Memory: the proportional \
         set size (`Pss` in `/proc/<pid>/smaps_rollup`) summed over the runtime's processes (`spin up`'s process \
         group; the Deno process), sampled every 100 ms, the highest sample of the level. A stream fails unless it \
         answered 200 with every delta, no error event and the closing `[DONE]`.\n",
        DELTA_INTERVAL.as_millis()
    )?;
    for m in &streams.missing {
        writeln!(report, "- not measured: {m}")?;
    }
    writeln!(report, "| runtime | streams started | most open at once | every stream open after | peak memory (PSS) | per stream above idle | failed |")?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|")?;
    for r in &streams.runtimes {
        let idle = r.levels.iter().find(|l| l.streams == 0).and_then(|l| l.peak_pss_kib);
        for l in &r.levels {
            let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
            let per_stream = match (l.peak_pss_kib, idle) {
                (Some(peak), Some(idle)) if l.streams > 0 => {
                    format!("{:.0} KiB", (peak as f64 - idle as f64) / l.streams as f64)
                }
                _ => String::new(),
            };
            let failed = match &l.first_failure {
                Some(first) => format!("{} (first: {})", l.failures, first.replace('|', "/").replace('\n', " ")),
                None => l.failures.to_string(),
            };
            writeln!(
                report,
                "| {} | {} | {} | {} | {} | {per_stream} | {failed} |",
                r.runtime,
                l.streams,
                l.most_open,
                l.all_open_after.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "never".into()),
                l.peak_pss_kib.map(mib).unwrap_or_else(|| "n/a".into()),
            )?;
        }
    }
    Ok(())
}

//! A native host that runs the app's Spin components the way `spin up` does: routes from
//! `spin.toml`, a fresh instance per request, WASI 0.2 + WASI HTTP, Spin variables,
//! Spin's outbound Postgres, and `allowed_outbound_hosts` enforced.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use libero_host::{start, AppOptions};
//! let mut options = AppOptions::new("spin.toml");
//! options.variables.insert("database_url".into(), "postgres://localhost/app".into());
//! let app = start(options).await?;
//! println!("listening on http://{}", app.addr);
//! # Ok(()) }
//! ```

pub mod allowed_hosts;
mod bindings;
mod engine;
mod logs;
pub mod manifest;
pub mod postgres;
pub mod record;
pub mod routes;
mod state;
pub mod variables;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use wasmtime::Store;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpView;

pub use engine::{engine, load_component};
use logs::LogBuffer;
use manifest::Manifest;
use record::{RecordedResponse, Recorder};
use routes::{RouteMatch, Router};
use state::{ComponentShared, RequestState};

/// How to run an app.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Path of `spin.toml`.
    pub manifest: PathBuf,
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Variable values with the highest priority, like `SPIN_VARIABLE_<NAME>` but
    /// in-process (parallel tests each pass their own). Keys are variable names.
    pub variables: HashMap<String, String>,
    /// Also read `SPIN_VARIABLE_<NAME>` from the process environment.
    pub env_variables: bool,
    /// Echo guest output to this process's stderr as well as capturing it.
    pub echo_logs: bool,
    /// Keep a copy of every response for [`RunningApp::recorded`] (the tests' contract
    /// and leak checks). Off when serving: a long-running server should not hoard them.
    pub record_responses: bool,
    /// Connections per database address. Spin's is 64 ([`postgres::SPIN_POOL_SIZE`]); the
    /// benchmark also runs with fewer to show what Postgres oversubscription costs.
    pub pg_pool_size: usize,
}

impl AppOptions {
    /// Loopback, random port, no environment variables, no echo.
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        AppOptions {
            manifest: manifest.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            variables: HashMap::new(),
            env_variables: false,
            echo_logs: false,
            record_responses: false,
            pg_pool_size: postgres::SPIN_POOL_SIZE,
        }
    }
}

/// A served app; stops when dropped or on [`RunningApp::shutdown`].
pub struct RunningApp {
    /// The address it listens on.
    pub addr: SocketAddr,
    logs: LogBuffer,
    recorder: Recorder,
    pools: Arc<postgres::Pools>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl RunningApp {
    /// Everything the components wrote to stdout/stderr (one entry per line, prefixed
    /// `[<component>] `), plus the host's notes about them (traps, denied requests).
    pub fn logs(&self) -> Vec<String> {
        self.logs.snapshot()
    }

    /// Every response sent so far whose body has ended (see [`record`]).
    pub fn recorded(&self) -> Vec<RecordedResponse> {
        self.recorder.snapshot()
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Postgres statements the components have run so far (each `query`/`execute` call
    /// of `spin:postgres`), for counting database round trips per request.
    pub fn db_statements(&self) -> u64 {
        self.pools.statements()
    }

    /// Queries that came back with zero rows. Each trapped its instance here; under Spin
    /// 4.0.0–4.0.2 each would have hung forever (see [`postgres::ZERO_ROWS_HANG`]).
    pub fn zero_row_queries(&self) -> u64 {
        self.pools.zero_row_queries()
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.pools.close();
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.pools.close();
    }
}

/// The loaded app that requests are dispatched into.
struct App {
    router: Router,
    components: HashMap<String, (ProxyPre<RequestState>, ComponentShared)>,
    logs: LogBuffer,
    /// `Some` when [`AppOptions::record_responses`] is on.
    recorder: Option<Recorder>,
}

/// Loads the manifest, resolves variables (failing, as Spin does, if a required one has
/// no value), compiles and pre-links every component, and starts serving.
pub async fn start(options: AppOptions) -> Result<RunningApp> {
    let manifest = Manifest::load(&options.manifest)?;
    let resolver = variables::Resolver::new(manifest.variables.clone(), &options.variables, options.env_variables);
    resolver.check_required()?;

    let logs = LogBuffer::new(options.echo_logs);
    let pools = Arc::new(postgres::Pools::new(options.pg_pool_size));
    let engine = engine();
    let linker = state::linker(engine)?;

    let mut components = HashMap::new();
    for component in manifest.components.values() {
        let path = component.source.clone();
        let compiled = tokio::task::spawn_blocking(move || load_component(&path)).await?.with_context(|| {
            format!(
                "component {:?}: cannot load {} (build the components with scripts/build-wasm.sh)",
                component.id,
                component.source.display()
            )
        })?;
        let pre = linker
            .instantiate_pre(&compiled)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("component {:?} imports something this host does not provide", component.id))?;
        let pre = ProxyPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("component {:?} does not export wasi:http/incoming-handler", component.id))?;

        let allowed = component
            .allowed_outbound_hosts
            .iter()
            .map(|entry| resolver.render(&variables::Template::parse(entry)?))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("component {:?}: allowed_outbound_hosts", component.id))?;
        let shared = ComponentShared {
            id: component.id.clone(),
            variables: Arc::new(
                resolver
                    .component_values(&component.variables)
                    .with_context(|| format!("component {:?}: variables", component.id))?,
            ),
            allowed: Arc::new(allowed_hosts::AllowedHosts::parse(&allowed)?),
            environment: component.environment.clone().into_iter().collect(),
            pools: pools.clone(),
            logs: logs.clone(),
        };
        components.insert(component.id.clone(), (pre, shared));
    }
    let router = Router::new(manifest.routes.iter().map(|r| (r.route.as_str(), r.component.as_str())))?;
    let recorder = Recorder::default();
    let app = Arc::new(App {
        router,
        components,
        logs: logs.clone(),
        recorder: options.record_responses.then(|| recorder.clone()),
    });

    let listener =
        TcpListener::bind(options.listen).await.with_context(|| format!("listening on {}", options.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(serve(listener, app, stopped));
    Ok(RunningApp { addr, logs, recorder, pools, stop: Some(stop), server: Some(server) })
}

async fn serve(listener: TcpListener, app: Arc<App>, mut stopped: oneshot::Receiver<()>) {
    // Dropping the set on the way out aborts the open connections.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, client)) = accepted else { continue };
                // A response's head and body go out as separate writes when the body
                // streams from the guest; with Nagle's algorithm on, the body would wait
                // for the client's delayed ACK of the head (~40 ms on Linux).
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(req, client).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(status: u16, content_type: Option<&str>, body: impl Into<Bytes>) -> hyper::Response<ResponseBody> {
    let mut builder = hyper::Response::builder().status(status);
    if let Some(ct) = content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    builder
        .body(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync())
        .expect("static response parts are valid")
}

/// The answer when a component traps or fails to produce a response. The details go to
/// the log only: a trap message can quote anything the guest had in memory.
fn internal_error(component: &str) -> hyper::Response<ResponseBody> {
    let message = format!("{component} failed unexpectedly; the server log has the details");
    let body = serde_json::json!({ "error": { "code": "internal_error", "message": message } });
    full(500, Some("application/json"), body.to_string())
}

impl App {
    async fn handle(&self, req: hyper::Request<Incoming>, client: SocketAddr) -> hyper::Response<ResponseBody> {
        let (method, path) = (req.method().to_string(), req.uri().path().to_string());
        let response = self.dispatch(req, client).await;
        match &self.recorder {
            Some(recorder) => recorder.tee(&method, &path, response),
            None => response,
        }
    }

    async fn dispatch(&self, mut req: hyper::Request<Incoming>, client: SocketAddr) -> hyper::Response<ResponseBody> {
        let Some(route) = self.router.route(req.uri().path()) else {
            return full(404, None, "Not Found");
        };
        let Some((pre, shared)) = self.components.get(&route.component) else {
            return full(404, None, "Not Found");
        };
        add_spin_headers(&mut req, &route, client);

        match self.run(pre, shared, req).await {
            Ok(response) => response,
            Err(e) => {
                self.logs.push(format!("[{}] error: {e:?}", shared.id));
                internal_error(&shared.id)
            }
        }
    }

    /// Instantiates the component in a fresh store and calls its handler. The handler
    /// runs in its own task so a streamed body keeps flowing after the headers are sent.
    async fn run(
        &self,
        pre: &ProxyPre<RequestState>,
        shared: &ComponentShared,
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<ResponseBody>> {
        let mut store = Store::new(pre.engine(), RequestState::new(shared));
        let (sender, receiver) = oneshot::channel();
        let incoming = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = pre.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, out).await
        });

        match receiver.await {
            Ok(Ok(response)) => {
                // A trap after the headers went out can only be logged.
                let logs = self.logs.clone();
                let id = shared.id.clone();
                tokio::spawn(async move {
                    match task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => logs.push(format!("[{id}] trap after response started: {e:?}")),
                        Err(e) => logs.push(format!("[{id}] handler task failed: {e}")),
                    }
                });
                Ok(response.map(|body| body.map_err(|e| std::io::Error::other(format!("{e:?}"))).boxed_unsync()))
            }
            Ok(Err(code)) => {
                self.logs.push(format!("[{}] responded with error {code:?}", shared.id));
                Ok(internal_error(&shared.id))
            }
            Err(_) => {
                let failure = match task.await {
                    Ok(Ok(())) => anyhow::anyhow!("the handler returned without setting a response"),
                    Ok(Err(e)) => e.into(),
                    Err(e) => e.into(),
                };
                self.logs.push(format!("[{}] trap: {failure:?}", shared.id));
                Ok(internal_error(&shared.id))
            }
        }
    }
}

/// The headers Spin adds to every request (spin-sdk reads some of them).
fn add_spin_headers(req: &mut hyper::Request<Incoming>, route: &RouteMatch, client: SocketAddr) {
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let mut set = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            req.headers_mut().insert(n, v);
        }
    };
    set("spin-full-url", &format!("http://{host}{path_and_query}"));
    set("spin-path-info", &route.path_info);
    set("spin-matched-route", &route.raw_route);
    set("spin-base-path", "/");
    set("spin-raw-component-route", &route.raw_route);
    set("spin-component-route", &route.route_prefix);
    set("spin-client-addr", &client.to_string());
    for (name, value) in &route.params {
        set(&format!("spin-path-match-{}", name.to_ascii_lowercase()), value);
    }
}

/// For the benchmark: compiles the component at `path` with Cranelift (bypassing the
/// on-disk cache) and instantiates it `iterations` times, each in a fresh store as a
/// request does. Returns the compile time and the median time to instantiate.
pub async fn measure_component(
    path: &std::path::Path,
    iterations: usize,
) -> Result<(std::time::Duration, std::time::Duration)> {
    use std::time::Instant;
    let engine = engine();
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let started = Instant::now();
    let component = tokio::task::spawn_blocking(move || wasmtime::component::Component::new(engine, &bytes))
        .await?
        .map_err(anyhow::Error::from)?;
    let compile = started.elapsed();
    let linker = state::linker(engine)?;
    let pre =
        ProxyPre::new(linker.instantiate_pre(&component).map_err(anyhow::Error::from)?).map_err(anyhow::Error::from)?;
    let shared = ComponentShared {
        id: "bench".into(),
        variables: Arc::new(HashMap::new()),
        allowed: Arc::new(allowed_hosts::AllowedHosts::parse::<String>(&[])?),
        environment: Vec::new(),
        pools: Arc::new(postgres::Pools::new(postgres::SPIN_POOL_SIZE)),
        logs: LogBuffer::new(false),
    };
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let mut store = Store::new(engine, RequestState::new(&shared));
        let _proxy = pre.instantiate_async(&mut store).await.map_err(anyhow::Error::from)?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((compile, times[times.len() / 2]))
}

/// The workspace this crate was built in (holds `target/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

//! What one request's `Store` holds: WASI, WASI HTTP (with the outbound-host check), the
//! component's variables and its Postgres connections. Built fresh per request, as Spin
//! builds a fresh instance per request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::allowed_hosts::AllowedHosts;
use super::bindings::{pg, variables};
use super::logs::LogBuffer;
use super::postgres::{PgHost, Pools};

/// What every request of one component shares (built at start).
pub struct ComponentShared {
    pub id: String,
    /// Component variable → rendered value.
    pub variables: Arc<HashMap<String, String>>,
    pub allowed: Arc<AllowedHosts>,
    pub environment: Vec<(String, String)>,
    pub pools: Arc<Pools>,
    pub logs: LogBuffer,
}

pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHttp,
    vars: VariablesHost,
    pg: PgHost,
}

impl RequestState {
    pub fn new(shared: &ComponentShared) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&shared.environment).stdout(shared.logs.stream(&shared.id)).stderr(shared.logs.stream(&shared.id));
        RequestState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHttp {
                allowed: shared.allowed.clone(),
                logs: shared.logs.clone(),
                component: shared.id.clone(),
            },
            vars: VariablesHost { component: shared.id.clone(), values: shared.variables.clone() },
            pg: PgHost {
                component: shared.id.clone(),
                pools: shared.pools.clone(),
                allowed: shared.allowed.clone(),
                table: ResourceTable::new(),
            },
        }
    }
}

/// Everything a component may import: WASI 0.2, WASI HTTP, and the two Spin interfaces.
pub fn linker(engine: &wasmtime::Engine) -> anyhow::Result<Linker<RequestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    variables::add_to_linker::<RequestState, HasSelf<VariablesHost>>(&mut linker, |s| &mut s.vars)?;
    pg::add_to_linker::<RequestState, HasSelf<PgHost>>(&mut linker, |s| &mut s.pg)?;
    Ok(linker)
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// `fermyon:spin/variables`: only the component's own variables are visible.
pub struct VariablesHost {
    component: String,
    values: Arc<HashMap<String, String>>,
}

impl variables::Host for VariablesHost {
    async fn get(&mut self, name: String) -> Result<String, variables::Error> {
        if let Err(e) = super::variables::validate_name(&name) {
            return Err(variables::Error::InvalidName(e.to_string()));
        }
        self.values
            .get(&name)
            .cloned()
            .ok_or_else(|| variables::Error::Undefined(format!("no variable for {:?}.{name:?}", self.component)))
    }
}

/// Outbound HTTP, refused (`HttpRequestDenied`, as Spin does) unless the destination is
/// in the component's `allowed_outbound_hosts`.
struct OutboundHttp {
    allowed: Arc<AllowedHosts>,
    logs: LogBuffer,
    component: String,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        if !self.allowed.allows_uri(request.uri()) {
            let uri = request.uri();
            self.logs.push(format!(
                "[{}] outbound request to {}://{} denied: not in allowed_outbound_hosts",
                self.component,
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map(|a| a.as_str()).unwrap_or("?"),
            ));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            ))
        })
    }
}

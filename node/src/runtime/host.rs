//! The host state of one store (WASI context, resource table, limits), the
//! linkers that expose WASI to guests, and the egress policy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Linker as ComponentLinker, ResourceTable};
use wasmtime::{Engine, Linker, Store};
use wasmtime_wasi::cli::AsyncStdinStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::limits::{CpuMeter, MemoryLimiter, Throttle};
use super::logs::{LogPipe, LogSink, LogStream};
use super::{Launch, Outbound, OutboundError, RuntimeError, RuntimeInner};

/// The `T` of every `Store<T>`: one per instance (command world) or per request
/// (http world). `W` is the WASI state: [`P2`] for components, [`WasiP1Ctx`]
/// for core modules.
pub(crate) struct Host<W> {
    pub(crate) wasi: W,
    pub(crate) memory: MemoryLimiter,
    pub(crate) cpu: CpuMeter,
}

/// WASI state of a component store.
pub(crate) struct P2 {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    egress: Egress,
}

impl WasiView for Host<P2> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.cpu.host_call();
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

impl WasiHttpView for Host<P2> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.cpu.host_call();
        WasiHttpCtxView {
            ctx: &mut self.wasi.http,
            table: &mut self.wasi.table,
            hooks: &mut self.wasi.egress,
        }
    }
}

/// Outgoing HTTP from guests goes to the node's [`Outbound`] (cluster names
/// and addresses, allowed outside hosts); without one, or when it says no,
/// the guest gets `HTTP-request-denied` and the log says why. Nothing here
/// touches the node's own network directly.
struct Egress {
    name: String,
    log: LogSink,
    outbound: Option<Arc<dyn Outbound>>,
}

/// How long an outgoing request may wait for its response head when the
/// guest sets no timeout of its own.
const DEFAULT_RESPONSE_DEADLINE: Duration = Duration::from_secs(30);

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

fn to_wasi_error(e: &OutboundError) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error as E;
    match e {
        OutboundError::Denied(_) => E::HttpRequestDenied,
        OutboundError::NotFound(_) => E::DestinationNotFound,
        OutboundError::Unavailable(_) => E::DestinationUnavailable,
        OutboundError::Refused(_) => E::ConnectionRefused,
        OutboundError::Timeout(_) => E::ConnectionTimeout,
        OutboundError::Invalid(_) => E::HttpRequestUriInvalid,
    }
}

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let log = self.log.clone();
        let name = self.name.clone();
        let report = move |message: &str| {
            tracing::info!(instance = %name, "{message}");
            log(
                LogStream::Stderr,
                format!("[flotilla] {message}\n").as_bytes(),
            );
        };
        let Some(outbound) = self.outbound.clone() else {
            let host = request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "<no host>".into());
            report(&format!(
                "outgoing HTTP to {host} is denied (egress is deny-by-default)"
            ));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        Box::new(async move {
            // The guest's body streams out as it writes it; the response's
            // streams back in as the guest reads it.
            let request = request.map(crate::body::from);
            let wait = response_deadline(options);
            let deadline = tokio::time::Instant::now() + wait.unwrap_or(DEFAULT_RESPONSE_DEADLINE);
            match outbound.send(request, deadline).await {
                Ok(response) => {
                    let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                        Box::new(async { Ok(()) });
                    Ok((response.map(crate::body::to_wasi), done))
                }
                Err(OutboundError::Timeout(m)) if wait.is_some() => {
                    report(&format!(
                        "outgoing HTTP timed out after {:?} (the guest's timeout): {m}",
                        wait.unwrap_or_default()
                    ));
                    Err(wasmtime_wasi_http::Error::HttpResponseTimeout)
                }
                Err(e) => {
                    report(e.message());
                    Err(to_wasi_error(&e))
                }
            }
        })
    }
}

/// How long the guest is willing to wait for a response: its connect and
/// first-byte timeouts together, or `None` when it set neither.
fn response_deadline(options: Option<RequestOptions>) -> Option<Duration> {
    let options = options?;
    match (options.connect_timeout, options.first_byte_timeout) {
        (None, None) => None,
        (connect, first_byte) => Some(
            connect
                .unwrap_or_default()
                .saturating_add(first_byte.unwrap_or_default()),
        ),
    }
}

/// All of WASI p2 plus wasi:http, for both component worlds.
pub(crate) fn component_linker(engine: &Engine) -> Result<ComponentLinker<Host<P2>>, RuntimeError> {
    let mut linker = ComponentLinker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
        .map_err(|e| RuntimeError::Engine(format!("linking wasi: {e:#}")))?;
    Ok(linker)
}

/// WASI preview1 for core modules.
pub(crate) fn core_linker(engine: &Engine) -> Result<Linker<Host<WasiP1Ctx>>, RuntimeError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |host: &mut Host<WasiP1Ctx>| {
        host.cpu.host_call();
        &mut host.wasi
    })
    .map_err(|e| RuntimeError::Engine(format!("linking wasi preview1: {e:#}")))?;
    Ok(linker)
}

/// What every store of one instance shares.
#[derive(Clone)]
pub(crate) struct StoreParams {
    pub(crate) name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: LogSink,
    memory_limit: u64,
    busy_timeout: Duration,
    /// How long an http request's guest may run in all.
    pub(crate) request_timeout: Duration,
    throttle: Option<Arc<Throttle>>,
    outbound: Option<Arc<dyn Outbound>>,
    /// The read end of the stop signal (command world): the guest's stdin.
    stdin: Arc<std::sync::Mutex<Option<AsyncStdinStream>>>,
}

/// Most handles (streams, fields, requests, pollables) one store holds at
/// once. They live in the node's memory, outside the guest's limit: wasmtime's
/// default of a million would let 64 requests of one guest take gigabytes.
/// (A guest making 10,000 refused calls in one request held more than
/// 10,000, so the cap leaves room for that.)
const MAX_RESOURCES: usize = 100_000;

/// The environment variable telling a command-world guest how it is asked to
/// stop, and its value: its stdin is closed.
pub(crate) const STOP_SIGNAL_ENV: (&str, &str) = ("FLOTILLA_STOP_SIGNAL", "stdin");

impl StoreParams {
    pub(crate) fn new(rt: &RuntimeInner, launch: Launch) -> Self {
        let Launch {
            name,
            world: _,
            args,
            env,
            memory_limit_bytes,
            cpu_limit_millis,
            log,
            outbound,
        } = launch;
        let max = rt.config.max_memory_per_instance;
        let memory_limit = match memory_limit_bytes {
            0 => max,
            n => n.min(max),
        };
        // argv[0] is the program name, as a shell would pass it.
        let program = name.rsplit('/').next().unwrap_or(&name).to_string();
        let argv = std::iter::once(program).chain(args).collect();
        StoreParams {
            name,
            argv,
            env,
            log,
            memory_limit,
            busy_timeout: rt.config.busy_timeout,
            request_timeout: rt.config.request_timeout,
            throttle: Throttle::new(cpu_limit_millis),
            outbound,
            stdin: Arc::default(),
        }
    }

    /// Writes a `[flotilla] ...` line into the instance's log (stderr).
    pub(crate) fn node_line(&self, message: &str) {
        (self.log)(
            LogStream::Stderr,
            format!("[flotilla] {message}\n").as_bytes(),
        );
    }

    /// Gives the guest a stdin that stays open until the returned writer is
    /// dropped, and tells it so through [`STOP_SIGNAL_ENV`]: dropping the
    /// writer is how the node asks a command-world instance to stop.
    pub(crate) fn with_stop_signal(mut self) -> (Self, tokio::io::DuplexStream) {
        let (writer, reader) = tokio::io::duplex(64);
        self.env
            .push((STOP_SIGNAL_ENV.0.to_string(), STOP_SIGNAL_ENV.1.to_string()));
        self.stdin = Arc::new(std::sync::Mutex::new(Some(AsyncStdinStream::new(reader))));
        (self, writer)
    }

    /// Deny by default: only the given args and env, stdio into the log, no
    /// stdin but the stop signal, no preopened directories, no sockets or name
    /// lookups.
    fn wasi_builder(&self) -> WasiCtxBuilder {
        let mut b = WasiCtxBuilder::new();
        if let Some(stdin) = self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.stdin(stdin);
        }
        b.args(&self.argv)
            .envs(&self.env)
            .stdout(LogPipe::new(self.log.clone(), LogStream::Stdout))
            .stderr(LogPipe::new(self.log.clone(), LogStream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        b
    }

    pub(crate) fn p2(&self) -> P2 {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        P2 {
            ctx: self.wasi_builder().build(),
            table,
            http: WasiHttpCtx::new(),
            egress: Egress {
                name: self.name.clone(),
                log: self.log.clone(),
                outbound: self.outbound.clone(),
            },
        }
    }

    pub(crate) fn p1(&self) -> WasiP1Ctx {
        self.wasi_builder().build_p1()
    }

    /// A store with the memory limiter and the CPU meter installed.
    pub(crate) fn store<W: Send + 'static>(&self, engine: &Engine, wasi: W) -> Store<Host<W>> {
        let mut store = Store::new(
            engine,
            Host {
                wasi,
                memory: MemoryLimiter::new(self.memory_limit),
                cpu: CpuMeter::new(self.busy_timeout, self.throttle.clone()),
            },
        );
        store.limiter(|host| &mut host.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| ctx.data_mut().cpu.on_epoch());
        store
    }
}

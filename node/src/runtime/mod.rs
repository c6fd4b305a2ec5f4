//! The node's Wasm runtime: validates, compiles (or loads from the node's own
//! compile cache) and runs Wasm workloads in wasmtime sandboxes, one `Engine` per
//! node. Components run in the `command` world (`wasi:cli/run`) or the `http` world
//! (`wasi:http/incoming-handler`, pre-instantiated once, a fresh instance per
//! request); WASI preview1 core modules run `_start`.
//!
//! [`HollowRuntime`] implements the same [`Runtime`] trait without wasmtime: its
//! instances only pretend to run (for load-testing the control plane).
//!
//! Every instance is sandboxed deny-by-default: no preopened directories, no
//! inherited environment or arguments, no sockets, no outgoing HTTP. Each store
//! caps its memories and tables (`limits::MemoryLimiter`) and its CPU time
//! (`limits::CpuMeter`, epoch interruption).
//!
//! Must never: load a compiled artifact this node did not write itself, or give a
//! guest anything its `Launch` does not grant.

mod cache;
mod command;
mod engine;
mod exit;
mod hollow;
mod host;
mod http;
mod limits;
mod logs;
mod preview1;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::exit::Exit;
pub use self::hollow::HollowRuntime;
pub use self::logs::{LogSink, LogStream};
pub use crate::body::Body;

use self::host::{Host, P2};

/// A boxed, sendable future; what [`Runtime`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `type Result<T, E = RuntimeError>` for this module.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The WASI world an instance runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// `wasi:http/proxy`: serves requests through `wasi:http/incoming-handler`.
    Http,
    /// `wasi:cli/command`: runs `wasi:cli/run` (components) or `_start` (core
    /// modules) to completion.
    Command,
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Http => "http",
            World::Command => "command",
        })
    }
}

/// What kind of Wasm binary a module is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// A component (component model).
    Component,
    /// A core module (WASI preview1).
    Core,
}

/// How the node's runtime is sized. Capacity the scheduler counts is derived
/// from these numbers.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Compiled artifacts are cached here by digest. Only artifacts this node
    /// compiled itself are ever loaded from here.
    pub cache_dir: PathBuf,
    /// Pooling allocator: total component instance slots. Stops one node from
    /// being asked to hold more instances than it reserved memory for.
    pub max_instances: u32,
    /// Upper bound, in bytes, of any instance's memory limit (and the size of a
    /// memory slot in the pool).
    pub max_memory_per_instance: u64,
    /// A guest that runs this long without returning to the host is killed with
    /// [`Exit::CpuLimit`]. Stops a spinning guest from holding a core forever.
    pub busy_timeout: Duration,
    /// An http-world request whose guest still runs this long after it
    /// arrived (writing its response body included) is ended, its store
    /// dropped, with [`Exit::Deadline`]. Stops a guest that keeps calling the
    /// host (and so never trips the busy timeout) from holding its slot and
    /// memory after its caller gave up.
    pub request_timeout: Duration,
    /// Per http instance, the most requests served at once. Stops one instance
    /// from taking every pool slot under a request flood.
    pub http_concurrency: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: PathBuf::from("cache"),
            max_instances: 1000,
            max_memory_per_instance: 64 << 20,
            busy_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            http_concurrency: 64,
        }
    }
}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The bytes are not valid Wasm; carries the validator's message.
    #[error("invalid wasm: {0}")]
    Invalid(String),
    /// Valid Wasm that wasmtime could not compile.
    #[error("compiling module failed: {0}")]
    Compile(String),
    /// The module does not export what any supported world needs.
    #[error("unsupported module: {0}")]
    Unsupported(String),
    /// The world the spec states is not one the module implements.
    #[error("spec states world {stated} but the module {detail}")]
    WorldMismatch {
        /// What the spec states.
        stated: World,
        /// What the module exports instead.
        detail: String,
    },
    /// Linking or instantiating failed.
    #[error("instantiating {name} failed: {message}")]
    Instantiate {
        /// `namespace/name` of the instance.
        name: String,
        /// wasmtime's message.
        message: String,
    },
    /// `serve_http` on an instance that is not in the http world.
    #[error("instance is not in the http world")]
    NotHttp,
    /// `serve_http` on an instance that was stopped.
    #[error("instance is stopped")]
    Stopped,
    /// The guest's request handler failed (trapped, hit a limit, or never set a
    /// response).
    #[error("http handler failed: {0}")]
    Handler(String),
    /// The engine could not be created.
    #[error("creating the wasmtime engine failed: {0}")]
    Engine(String),
    /// A module prepared by another runtime (a hollow one) was given to
    /// [`WasmtimeRuntime::start`]; prepare it with the runtime that starts it.
    #[error("the module was not prepared by this runtime")]
    ForeignModule,
    /// Reading or writing the compile cache.
    #[error("compile cache i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What a started instance is given. Everything not here is denied.
#[derive(Clone)]
pub struct Launch {
    /// `namespace/name`, for messages.
    pub name: String,
    /// The world the spec states; `None` = detect from exports.
    pub world: Option<World>,
    /// Arguments after `argv[0]` (which is the instance name).
    pub args: Vec<String>,
    /// Environment variables; nothing is inherited from the node.
    pub env: Vec<(String, String)>,
    /// All memories and tables together, in bytes; 0 =
    /// [`RuntimeConfig::max_memory_per_instance`].
    pub memory_limit_bytes: u64,
    /// Share of one core in millicores; 0 = unlimited. `busy_timeout` applies
    /// either way.
    pub cpu_limit_millis: u64,
    /// Receives the guest's stdout and stderr.
    pub log: LogSink,
    /// Where the guest's outgoing HTTP goes; `None` denies all of it.
    pub outbound: Option<Arc<dyn Outbound>>,
}

/// Why an outgoing request got no response, in the terms wasi:http gives the
/// guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundError {
    /// Egress policy: the host is not allowed.
    Denied(String),
    /// No such service, or no address for the name.
    NotFound(String),
    /// The destination exists but nothing answers (no ready endpoint, the
    /// peer node is unreachable).
    Unavailable(String),
    /// The destination refused or dropped the connection.
    Refused(String),
    /// No answer in time.
    Timeout(String),
    /// The request could not be sent as given.
    Invalid(String),
}

impl OutboundError {
    /// The message, for logs.
    pub fn message(&self) -> &str {
        match self {
            Self::Denied(m)
            | Self::NotFound(m)
            | Self::Unavailable(m)
            | Self::Refused(m)
            | Self::Timeout(m)
            | Self::Invalid(m) => m,
        }
    }
}

impl OutboundError {
    /// The failure's kind as one word, for the tunnel between nodes (which
    /// carries it back to the node that sent the request).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Denied(_) => "denied",
            Self::NotFound(_) => "not-found",
            Self::Unavailable(_) => "unavailable",
            Self::Refused(_) => "refused",
            Self::Timeout(_) => "timeout",
            Self::Invalid(_) => "invalid",
        }
    }

    /// The failure [`kind`](Self::kind) names, with `message`; an unknown
    /// kind (a newer peer) counts as unavailable.
    pub fn from_kind(kind: &str, message: String) -> Self {
        match kind {
            "denied" => Self::Denied(message),
            "not-found" => Self::NotFound(message),
            "refused" => Self::Refused(message),
            "timeout" => Self::Timeout(message),
            "invalid" => Self::Invalid(message),
            _ => Self::Unavailable(message),
        }
    }
}

/// A guest's outgoing HTTP, decided by the node: cluster names and addresses
/// are routed inside the cluster, listed outside hosts are called, anything
/// else is denied. Bodies stream both ways.
pub trait Outbound: Send + Sync + 'static {
    /// Sends one request; its response head must arrive by `deadline`.
    fn send(
        &self,
        req: ::http::Request<Body>,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, std::result::Result<::http::Response<Body>, OutboundError>>;
}

impl fmt::Debug for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launch")
            .field("name", &self.name)
            .field("world", &self.world)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("outbound", &self.outbound.is_some())
            .field("cpu_limit_millis", &self.cpu_limit_millis)
            .finish_non_exhaustive()
    }
}

/// A validated, compiled module, ready to start any number of instances. Cheap
/// to clone. Only usable with the runtime that prepared it (a
/// [`HollowRuntime`] accepts any, since it runs nothing).
#[derive(Clone)]
pub struct Prepared {
    /// The digest it was prepared under.
    pub digest: String,
    /// Component or core module.
    pub kind: ModuleKind,
    /// The world detected from its exports (http wins if it exports both).
    pub world: World,
    /// What wasmtime compiled; `None` when a [`HollowRuntime`] prepared it.
    inner: Option<Arc<PreparedInner>>,
}

impl Prepared {
    /// Whether the compiled artifact came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.from_cache)
    }

    /// The wasmtime side, or [`RuntimeError::ForeignModule`] if a hollow
    /// runtime prepared it.
    fn wasmtime(&self) -> Result<&PreparedInner> {
        self.inner.as_deref().ok_or(RuntimeError::ForeignModule)
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .field("world", &self.world)
            .field("from_cache", &self.from_cache())
            .finish_non_exhaustive()
    }
}

pub(crate) enum Compiled {
    Component {
        component: wasmtime::component::Component,
        exports_http: bool,
        exports_run: bool,
    },
    Core(wasmtime::Module),
}

/// Pre-instantiations are made on first start and shared by every instance of
/// the same prepared module (wasmtime `serve`: "pre-instantiate once").
pub(crate) struct PreparedInner {
    compiled: Compiled,
    from_cache: bool,
    command_pre: OnceLock<wasmtime_wasi::p2::bindings::CommandPre<Host<P2>>>,
    proxy_pre: OnceLock<wasmtime_wasi_http::p2::bindings::ProxyPre<Host<P2>>>,
    core_pre: OnceLock<wasmtime::InstancePre<Host<wasmtime_wasi::p1::WasiP1Ctx>>>,
}

/// A runtime that can prepare modules and start instances of them.
pub trait Runtime: Send + Sync + 'static {
    /// Validates (wasmparser; the error carries the validator's message),
    /// detects component vs core and the world from exports (a component
    /// exporting `wasi:http/incoming-handler` is Http, one exporting
    /// `wasi:cli/run` is Command, a core module with `_start` is Command), and
    /// compiles or loads from the on-disk cache.
    ///
    /// The caller must have verified that `bytes` hash to `digest`: the cache is
    /// keyed by digest alone.
    fn prepare(&self, digest: &str, bytes: Vec<u8>) -> BoxFuture<'_, Result<Prepared>>;

    /// Starts an instance (must be called inside a tokio runtime). Command
    /// world: a task runs the guest, stdout/stderr go to `launch.log`. Http
    /// world: requests are served through [`InstanceHandle::serve_http`], a new
    /// store and instance per request, at most `http_concurrency` at once.
    fn start(&self, prepared: &Prepared, launch: Launch) -> Result<InstanceHandle>;

    /// What the node reports as its runtime version (the Node's
    /// `nodeInfo.wasmtimeVersion`).
    fn version(&self) -> &'static str;
}

/// The wasmtime implementation of [`Runtime`]: one `Engine` per node.
#[derive(Clone)]
pub struct WasmtimeRuntime {
    inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    engine: wasmtime::Engine,
    config: RuntimeConfig,
    cache: cache::CompileCache,
    component_linker: wasmtime::component::Linker<Host<P2>>,
    core_linker: wasmtime::Linker<Host<wasmtime_wasi::p1::WasiP1Ctx>>,
}

impl WasmtimeRuntime {
    /// Creates the engine (pooling allocator, epoch ticker), the linkers and the
    /// cache directory.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let engine = engine::build(&config)?;
        let cache = cache::CompileCache::open(&config.cache_dir, &engine)?;
        let component_linker = host::component_linker(&engine)?;
        let core_linker = host::core_linker(&engine)?;
        Ok(WasmtimeRuntime {
            inner: Arc::new(RuntimeInner {
                engine,
                config,
                cache,
                component_linker,
                core_linker,
            }),
        })
    }

    /// The wasmtime version this node runs, for the Node object.
    pub fn wasmtime_version() -> &'static str {
        engine::WASMTIME_VERSION
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }
}

impl fmt::Debug for WasmtimeRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmtimeRuntime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Runtime for WasmtimeRuntime {
    fn prepare(&self, digest: &str, bytes: Vec<u8>) -> BoxFuture<'_, Result<Prepared>> {
        let inner = self.inner.clone();
        let digest = digest.to_string();
        Box::pin(async move {
            // Compiling is seconds of CPU for a large module; keep it off the
            // async workers.
            tokio::task::spawn_blocking(move || inner.prepare_blocking(digest, bytes))
                .await
                .map_err(|e| RuntimeError::Compile(format!("compile task failed: {e}")))?
        })
    }

    fn start(&self, prepared: &Prepared, launch: Launch) -> Result<InstanceHandle> {
        let world = resolve_world(prepared, launch.world)?;
        match (&prepared.wasmtime()?.compiled, world) {
            (Compiled::Core(_), World::Command) => preview1::start(&self.inner, prepared, launch),
            (Compiled::Core(_), World::Http) => Err(RuntimeError::WorldMismatch {
                stated: World::Http,
                detail: "is a core module (core modules run only in the command world)".into(),
            }),
            (Compiled::Component { .. }, World::Command) => {
                command::start(&self.inner, prepared, launch)
            }
            (Compiled::Component { .. }, World::Http) => http::start(&self.inner, prepared, launch),
        }
    }

    fn version(&self) -> &'static str {
        Self::wasmtime_version()
    }
}

impl RuntimeInner {
    fn prepare_blocking(&self, digest: String, bytes: Vec<u8>) -> Result<Prepared> {
        let (compiled, from_cache) = self.cache.load_or_compile(&self.engine, &digest, &bytes)?;
        let (kind, world) = match &compiled {
            Compiled::Core(module) => {
                let has_start = module
                    .exports()
                    .any(|e| e.name() == "_start" && e.ty().func().is_some());
                if !has_start {
                    return Err(RuntimeError::Unsupported(
                        "core module exports no `_start` function; only WASI preview1 \
                         command modules can run"
                            .into(),
                    ));
                }
                (ModuleKind::Core, World::Command)
            }
            Compiled::Component {
                exports_http,
                exports_run,
                ..
            } => {
                let world = match (exports_http, exports_run) {
                    (true, _) => World::Http,
                    (false, true) => World::Command,
                    (false, false) => {
                        return Err(RuntimeError::Unsupported(
                            "component exports neither wasi:http/incoming-handler (http \
                             world) nor wasi:cli/run (command world)"
                                .into(),
                        ))
                    }
                };
                (ModuleKind::Component, world)
            }
        };
        Ok(Prepared {
            digest,
            kind,
            world,
            inner: Some(Arc::new(PreparedInner {
                compiled,
                from_cache,
                command_pre: OnceLock::new(),
                proxy_pre: OnceLock::new(),
                core_pre: OnceLock::new(),
            })),
        })
    }
}

/// The world an instance runs in: what the spec states, if the module
/// implements it, else what was detected.
fn resolve_world(prepared: &Prepared, stated: Option<World>) -> Result<World> {
    let Some(stated) = stated else {
        return Ok(prepared.world);
    };
    let implements = match &prepared.wasmtime()?.compiled {
        Compiled::Core(_) => stated == World::Command,
        Compiled::Component {
            exports_http,
            exports_run,
            ..
        } => match stated {
            World::Http => *exports_http,
            World::Command => *exports_run,
        },
    };
    if implements {
        return Ok(stated);
    }
    let detail = match (prepared.kind, stated) {
        (ModuleKind::Core, _) => "is a core module (core modules run only in the command world)",
        (ModuleKind::Component, World::Http) => "does not export wasi:http/incoming-handler",
        (ModuleKind::Component, World::Command) => "does not export wasi:cli/run",
    };
    Err(RuntimeError::WorldMismatch {
        stated,
        detail: detail.into(),
    })
}

/// What answers the requests of one http-world instance.
#[derive(Clone)]
enum HttpBackend {
    /// The guest, a fresh store and instance per request.
    Wasmtime(Arc<http::HttpServer>),
    /// A canned answer (see [`HollowRuntime`]).
    Hollow(hollow::HollowHttp),
}

impl HttpBackend {
    async fn serve(&self, req: ::http::Request<Body>) -> Result<::http::Response<Body>> {
        match self {
            HttpBackend::Wasmtime(server) => server.serve(req).await,
            HttpBackend::Hollow(server) => server.serve(req),
        }
    }
}

/// Serves requests of one http-world instance; cloneable.
#[derive(Clone)]
pub struct HttpHandle {
    server: HttpBackend,
}

impl HttpHandle {
    /// Serves one request: a fresh store and instance; the request body
    /// streams into the guest as it reads it, the response body out as it
    /// writes it.
    pub async fn serve(&self, req: ::http::Request<Body>) -> Result<::http::Response<Body>> {
        self.server.serve(req).await
    }
}

/// A running instance. Dropping the handle stops the instance.
pub struct InstanceHandle {
    world: World,
    stop: Arc<watch::Sender<bool>>,
    task: Option<JoinHandle<Exit>>,
    exit: Option<Exit>,
    http: Option<HttpBackend>,
    /// Dropped to ask a command-world guest to stop (its stdin closes).
    stop_signal: std::sync::Mutex<Option<tokio::io::DuplexStream>>,
}

impl fmt::Debug for InstanceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceHandle")
            .field("world", &self.world)
            .field("stopped", &*self.stop.borrow())
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl InstanceHandle {
    /// The world the instance runs in.
    pub fn world(&self) -> World {
        self.world
    }

    /// A cheap handle for serving requests of an http-world instance while
    /// someone else holds this handle (to wait on or stop it).
    pub fn http_handle(&self) -> Option<HttpHandle> {
        self.http.clone().map(|server| HttpHandle { server })
    }

    /// Resolves when the command guest ends, or for the http world when the
    /// instance is stopped. Cancel-safe; after it resolved once it returns the
    /// same exit again.
    pub async fn wait(&mut self) -> Exit {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        let exit = match &mut self.task {
            Some(task) => match task.await {
                Ok(exit) => exit,
                Err(e) if e.is_cancelled() => Exit::Stopped,
                Err(e) => Exit::Trap(format!("instance task panicked: {e}")),
            },
            None => {
                let mut stopped = self.stop.subscribe();
                // The sender lives in `self`, so this only returns on stop.
                let _ = stopped.wait_for(|s| *s).await;
                Exit::Stopped
            }
        };
        self.exit = Some(exit.clone());
        exit
    }

    /// Asks the guest to stop on its own: a command-world guest's stdin is
    /// closed (it was told so by `FLOTILLA_STOP_SIGNAL=stdin`). False when the
    /// instance has no such signal (the http world, whose requests are short,
    /// and hollow instances): then only [`stop`](Self::stop) ends it.
    pub fn request_stop(&self) -> bool {
        self.stop_signal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }

    /// Ends the instance promptly: a guest running Wasm is interrupted at its
    /// next epoch tick, one waiting in the host is dropped there. `wait()` then
    /// yields [`Exit::Stopped`] (unless it had already ended).
    pub fn stop(&self) {
        self.stop.send_replace(true);
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// Serves one request (http world only): a fresh store and instance of the
    /// pre-instantiated component, bodies streamed.
    pub async fn serve_http(&self, req: ::http::Request<Body>) -> Result<::http::Response<Body>> {
        match &self.http {
            Some(server) => server.serve(req).await,
            None => Err(RuntimeError::NotHttp),
        }
    }
}

impl fmt::Debug for HttpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpHandle").finish_non_exhaustive()
    }
}

impl Drop for InstanceHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves once `stop` has been set (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::sync::Mutex;

    /// A log sink that keeps everything, per stream.
    #[derive(Clone, Default)]
    pub struct Captured(pub Arc<Mutex<(Vec<u8>, Vec<u8>)>>);

    impl Captured {
        pub fn sink(&self) -> LogSink {
            let this = self.clone();
            Arc::new(move |stream, bytes: &[u8]| {
                let mut both = this.0.lock().unwrap();
                match stream {
                    LogStream::Stdout => both.0.extend_from_slice(bytes),
                    LogStream::Stderr => both.1.extend_from_slice(bytes),
                }
            })
        }
        pub fn stdout(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap().0).into_owned()
        }
        pub fn stderr(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap().1).into_owned()
        }
    }

    pub fn config(dir: &std::path::Path) -> RuntimeConfig {
        RuntimeConfig {
            cache_dir: dir.join("cache"),
            max_instances: 16,
            max_memory_per_instance: 16 << 20,
            busy_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            http_concurrency: 4,
        }
    }

    pub fn launch(name: &str, log: LogSink) -> Launch {
        Launch {
            name: name.into(),
            world: None,
            args: vec![],
            env: vec![],
            memory_limit_bytes: 0,
            cpu_limit_millis: 0,
            log,
            outbound: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn invalid_bytes_carry_the_validator_message() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let err = rt
            .prepare("sha256-bad", b"not wasm at all".to_vec())
            .await
            .unwrap_err();
        match &err {
            RuntimeError::Invalid(msg) => assert!(msg.contains("magic header"), "{msg}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
        // Truncated but with the right header: the validator names the offset.
        let mut bytes = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        bytes.truncate(bytes.len() - 3);
        let err = rt.prepare("sha256-trunc", bytes).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::Invalid(ref m) if m.contains("offset")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn core_module_without_start_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let bytes = wat::parse_str("(module (func (export \"main\")))").unwrap();
        let err = rt.prepare("sha256-nostart", bytes).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Unsupported(_)), "{err}");
    }

    #[test]
    fn exit_reasons() {
        assert_eq!(Exit::Code(0).reason(), "Completed");
        assert!(Exit::Code(0).success());
        assert_eq!(Exit::Code(3).reason(), "Error");
        assert!(!Exit::Code(3).success());
        assert_eq!(Exit::Trap("x".into()).reason(), "Trapped");
        assert_eq!(Exit::MemoryLimit("x".into()).reason(), "OOMKilled");
        assert_eq!(Exit::CpuLimit("x".into()).reason(), "CPULimitExceeded");
        assert_eq!(Exit::Stopped.reason(), "Stopped");
        assert_eq!(World::Http.to_string(), "http");
        assert_eq!(World::Command.to_string(), "command");
    }
}

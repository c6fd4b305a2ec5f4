//! The node agent (the kubelet analogue): registers the node, renews its lease,
//! runs the instances bound to it and reports their status; serves their logs
//! and port-forwards to the apiserver; runs static instances from a manifests
//! directory with or without a control plane.
//!
//! It runs instances through the [`Runtime`] trait: wasmtime, or the hollow
//! runtime whose instances only pretend to run (many hollow agents in one
//! process load a control plane like a large cluster would).
//!
//! The agent keeps running what it has when the apiserver is unreachable: the
//! desired state is the last one it saw (kept on disk), status reports wait in
//! memory, and nothing is restarted when the link comes back unless its spec
//! changed.
//!
//! Ready (for `/readyz`) once its last heartbeat (Node status and Lease)
//! reached the apiserver; a node without a control plane is always ready.
//!
//! Must never: write anything but its own Node, Lease, and its instances' status
//! (and mirror objects of its static instances).

mod identity;
mod link;
mod listener;
mod logs;
mod metrics;
mod modules;
mod netsync;
mod probes;
mod registration;
mod renewal;
mod reporter;
mod static_instances;
mod supervisor;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex};

use flotilla_api::instance::Instance;
use flotilla_api::node::{NodeDaemonEndpoints, Taint};
use flotilla_api::quantity::Quantity;
use flotilla_client::{Cause, ClientError};
use flotilla_telemetry::{Readiness, Telemetry};

use crate::runtime::{HollowRuntime, Runtime, RuntimeConfig, WasmtimeRuntime};

pub use supervisor::Backoff;
use supervisor::{Context, Key, Supervisor};

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad flags or data dir, with nothing failing underneath.
    #[error("{0}")]
    Config(String),
    /// A flag or file that could not be used.
    #[error("{setting}: {source}")]
    Setting {
        /// The flag and its value, or the file.
        setting: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// Joining failed or was refused.
    #[error("join failed: {step}: {source}")]
    Join {
        /// The step that failed.
        step: &'static str,
        /// Why.
        #[source]
        source: Cause,
    },
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the apiserver failed, or it answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The apiserver is unreachable.
    #[error("{0}")]
    Offline(String),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

impl AgentError {
    /// File trouble at `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
        move |source| AgentError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// `setting` could not be used.
    pub fn setting(setting: impl Into<String>, source: impl Into<Cause>) -> AgentError {
        AgentError::Setting {
            setting: setting.into(),
            source: source.into(),
        }
    }

    /// The join failed at `step`.
    pub fn join(step: &'static str) -> impl FnOnce(Cause) -> AgentError {
        move |source| AgentError::Join { step, source }
    }
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Which runtime runs a node's instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimeKind {
    /// [`WasmtimeRuntime`]: instances really run.
    #[default]
    Wasmtime,
    /// [`HollowRuntime`]: instances only pretend to run, at almost no cost.
    Hollow,
}

/// How often a node renews its lease unless told otherwise (`--lease-interval`).
pub const DEFAULT_LEASE_INTERVAL: Duration = Duration::from_secs(10);

/// How a node runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name.
    pub name: String,
    /// Apiserver address (needed with a token on the first start).
    pub server: Option<String>,
    /// Join token (first start only).
    pub token: Option<String>,
    /// Where the node keeps its identity, modules, compiled artifacts and logs.
    pub data_dir: PathBuf,
    /// Labels of the Node object.
    pub labels: BTreeMap<String, String>,
    /// Taints of the Node object.
    pub taints: Vec<Taint>,
    /// Static instance manifests.
    pub manifests_dir: Option<PathBuf>,
    /// CPU the node offers.
    pub capacity_cpu: Quantity,
    /// Memory the node offers.
    pub capacity_memory: Quantity,
    /// Instance slots (the pooling allocator's size).
    pub capacity_instances: u32,
    /// Address of the node's own listener (logs, port-forward).
    pub listen: String,
    /// Lease renewal interval.
    pub lease_interval: Duration,
    /// Restart backoff.
    pub backoff: Backoff,
    /// Kill a guest busy this long without returning to the host.
    pub busy_timeout: Duration,
    /// The longest an http-world request may run, its body included.
    pub request_timeout: Duration,
    /// What runs the instances.
    pub runtime: RuntimeKind,
    /// Address of the HTTP ingress; `None` serves none.
    pub ingress: Option<String>,
    /// Run the service layer (names and cluster IPs); instance IPs route
    /// without it.
    pub service_forwarder: bool,
    /// Where the node's metrics and readiness checks go (served by the
    /// caller, if at all).
    pub telemetry: Telemetry,
    /// When the node renews its certificate (a fraction of its validity
    /// period, or off).
    pub cert_renew_at: flotilla_client::tls::RenewAt,
}

impl AgentConfig {
    /// Defaults for a node name and data dir.
    pub fn new(name: String, data_dir: PathBuf) -> Self {
        Self {
            name,
            server: None,
            token: None,
            data_dir,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            manifests_dir: None,
            capacity_cpu: Quantity::parse("2000m").expect("valid quantity"),
            capacity_memory: Quantity::parse("4Gi").expect("valid quantity"),
            capacity_instances: 1000,
            listen: "127.0.0.1:0".into(),
            lease_interval: DEFAULT_LEASE_INTERVAL,
            backoff: Backoff::default(),
            busy_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            runtime: RuntimeKind::default(),
            ingress: None,
            service_forwarder: true,
            telemetry: Telemetry::default(),
            cert_renew_at: flotilla_client::tls::RenewAt::default(),
        }
    }
}

/// Everything the agent's tasks share.
pub(crate) struct Shared {
    config: AgentConfig,
    ctx: Arc<Context>,
    running: Mutex<HashMap<Key, Supervisor>>,
    link: Option<Arc<flotilla_client::Link>>,
    logs_dir: PathBuf,
}

impl Shared {
    fn log_dir(&self, key: &Key) -> PathBuf {
        self.logs_dir.join(format!("{}_{}", key.0, key.1))
    }
}

/// A running node agent.
pub struct Agent {
    /// The address of its listener.
    pub listen_addr: String,
    /// The address of its HTTP ingress, when it serves one.
    pub ingress_addr: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Agent {
    /// Starts the agent: identity (joining if needed), runtime, listener, and
    /// the loops that keep the node in step with the cluster.
    pub async fn start(config: AgentConfig) -> Result<Self> {
        let data_dir = config.data_dir.clone();
        flotilla_client::files::create_private_dir(&data_dir).map_err(AgentError::io(&data_dir))?;
        let standalone = config.server.is_none() && !data_dir.join("node.json").exists();
        let identity = if standalone {
            if config.manifests_dir.is_none() {
                return Err(AgentError::Config(
                    "nothing to do: give --server and --token to join a cluster, or --manifests-dir to run static instances".into(),
                ));
            }
            None
        } else {
            Some(
                identity::load_or_join(
                    &data_dir,
                    config.server.as_deref(),
                    config.token.as_deref(),
                    &config.name,
                )
                .await?,
            )
        };
        let link = identity.as_ref().map(|id| {
            let max_delay = (config.lease_interval / 4).min(Duration::from_secs(5));
            Arc::new(link::node_link(
                id.client.clone(),
                &config.name,
                id.path.clone(),
                max_delay,
            ))
        });

        let runtime: Arc<dyn Runtime> = match config.runtime {
            RuntimeKind::Wasmtime => {
                warn_if_map_count_too_low(config.capacity_instances);
                Arc::new(WasmtimeRuntime::new(RuntimeConfig {
                    cache_dir: data_dir.join("compiled"),
                    max_instances: config.capacity_instances,
                    busy_timeout: config.busy_timeout,
                    request_timeout: config.request_timeout,
                    ..RuntimeConfig::default()
                })?)
            }
            RuntimeKind::Hollow => Arc::new(HollowRuntime),
        };
        let modules = Arc::new(
            modules::ModuleCache::new(data_dir.join("modules"), link.clone())
                .map_err(AgentError::io(&data_dir.join("modules")))?,
        );
        let network = link.as_ref().map(|api_link| {
            // The link's configuration: a renewed certificate is dialled with.
            let tunnel = crate::net::tunnel::TunnelClient::shared(api_link.config().clone())
                .with_metrics(crate::net::tunnel::TunnelMetrics::register(
                    &config.telemetry.registry,
                ));
            let denials: Option<crate::net::DenialSink> = link.clone().map(|link| {
                let recorder = Arc::new(flotilla_client::events::Recorder::on_node(
                    "node-agent",
                    &config.name,
                ));
                let sink: crate::net::DenialSink =
                    Arc::new(move |ns: &str, name: &str, message: &str| {
                        netsync::record_denial(recorder.clone(), link.clone(), ns, name, message);
                    });
                sink
            });
            let net = crate::net::Network::new(
                &config.name,
                &data_dir.join("net"),
                tunnel,
                denials,
                crate::net::ForwarderMetrics::register(&config.telemetry.registry),
            );
            net.set_services(config.service_forwarder);
            net
        });
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Context {
            runtime,
            modules: modules.clone(),
            reports: reports_tx,
            backoff: config.backoff,
            node_name: config.name.clone(),
            network: network.clone(),
            metrics: metrics::AgentMetrics::register(&config.telemetry.registry),
        });
        let shared = Arc::new(Shared {
            config: config.clone(),
            ctx,
            running: Mutex::new(HashMap::new()),
            link: link.clone(),
            logs_dir: data_dir.join("logs"),
        });

        let mut tasks = Vec::new();
        let (listen_addr, listener_endpoint, listener_task) = match &identity {
            Some(id) => {
                let (addr, endpoint, task) = listener::start(shared.clone(), id).await?;
                (addr, Some(endpoint), Some(task))
            }
            None => (String::new(), None, None),
        };
        tasks.extend(listener_task);
        if let (Some(link), Some(id)) = (&link, &identity) {
            tasks.push(tokio::spawn(renewal::run(renewal::Renewal {
                link: link.clone(),
                path: id.path.clone(),
                listener: listener_endpoint,
                renew_at: config.cert_renew_at,
            })));
        }

        let mut ingress_addr = None;
        if let (Some(net), Some(addr)) = (&network, &config.ingress) {
            let (bound, task) = crate::net::ingress::start(net.clone(), addr)
                .await
                .map_err(|e| AgentError::setting(format!("--ingress-addr {addr}"), e))?;
            ingress_addr = Some(bound.to_string());
            tasks.push(task);
        }
        if let (Some(net), Some(link)) = (&network, &link) {
            tasks.push(tokio::spawn(netsync::run(net.clone(), link.clone())));
        }

        let (api_tx, api_rx) = watch::channel(sync::load_desired(&data_dir));
        let (static_tx, static_rx) = watch::channel(BTreeMap::new());
        if let (Some(link), Some(id)) = (&link, &identity) {
            let registered = Readiness::not_ready(format!(
                "not yet registered with the apiserver at {}",
                id.client.server
            ));
            config.telemetry.health.add("node", &registered);
            tasks.push(tokio::spawn(registration::run(
                shared.clone(),
                link.clone(),
                NodeDaemonEndpoints {
                    tunnel: listen_addr.clone(),
                    ingress: ingress_addr.clone().unwrap_or_default(),
                },
                registered,
            )));
            tasks.push(tokio::spawn(sync::run(
                shared.clone(),
                link.clone(),
                api_tx,
            )));
            tasks.push(tokio::spawn(reporter::run(link.clone(), reports_rx)));
        } else {
            drop(api_tx);
            tasks.push(tokio::spawn(reporter::discard(reports_rx)));
        }
        if let Some(dir) = config.manifests_dir.clone() {
            tasks.push(tokio::spawn(static_instances::run(
                shared.clone(),
                dir,
                modules,
                static_tx,
            )));
        } else {
            drop(static_tx);
        }
        tasks.push(tokio::spawn(reconcile(shared.clone(), api_rx, static_rx)));
        Ok(Self {
            listen_addr,
            ingress_addr,
            tasks,
            shared,
        })
    }

    /// Stops every instance and loop. The instances stop together, so the
    /// node is gone within the longest grace period, not their sum.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        let running: Vec<Supervisor> = self
            .shared
            .running
            .lock()
            .await
            .drain()
            .map(|(_, s)| s)
            .collect();
        let mut stopping = tokio::task::JoinSet::new();
        for s in running {
            stopping.spawn(s.stop());
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// Memory mappings one running instance takes (memory, table, async stack, each
/// with its guard), measured on Linux with the pooling allocator.
const MAPPINGS_PER_INSTANCE: u64 = 8;

/// Each instance costs a few memory mappings; Linux caps them per process
/// (`vm.max_map_count`, 65530 by default, about 8,000 instances). Say so at
/// start rather than failing instances later.
fn warn_if_map_count_too_low(slots: u32) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/vm/max_map_count") else {
        return;
    };
    let Ok(max) = text.trim().parse::<u64>() else {
        return;
    };
    let needed = u64::from(slots) * MAPPINGS_PER_INSTANCE + 1024;
    if needed > max {
        tracing::warn!(
            "vm.max_map_count is {max}; {slots} instance slots may need {needed}: raise it (sysctl -w vm.max_map_count={}) or lower --capacity-instances",
            needed.next_power_of_two()
        );
        eprintln!(
            "warning: vm.max_map_count is {max}; {slots} instance slots may need {needed} memory mappings: raise it (sysctl -w vm.max_map_count={}) or lower --capacity-instances",
            needed.next_power_of_two()
        );
    }
}

/// Keeps the supervisors equal to the desired instances: the API's bound ones
/// and the static ones (which win on a name clash).
async fn reconcile(
    shared: Arc<Shared>,
    mut api: watch::Receiver<BTreeMap<Key, Instance>>,
    mut statics: watch::Receiver<BTreeMap<Key, Instance>>,
) {
    let mut api_open = true;
    let mut static_open = true;
    loop {
        let mut desired = api.borrow_and_update().clone();
        desired.extend(statics.borrow_and_update().clone());
        apply_desired(&shared, desired).await;
        tokio::select! {
            r = api.changed(), if api_open => { if r.is_err() { api_open = false; } }
            r = statics.changed(), if static_open => { if r.is_err() { static_open = false; } }
            _ = std::future::pending::<()>(), if !api_open && !static_open => {}
        }
    }
}

async fn apply_desired(shared: &Arc<Shared>, desired: BTreeMap<Key, Instance>) {
    let mut running = shared.running.lock().await;
    let stale: Vec<Key> = running
        .iter()
        .filter(|(k, s)| desired.get(*k).is_none_or(|d| d.spec != s.spec))
        .map(|(k, _)| k.clone())
        .collect();
    let mut stopping = Vec::new();
    for key in stale {
        if let Some(s) = running.remove(&key) {
            let gone = !desired.contains_key(&key);
            if gone {
                if let Some(net) = &shared.ctx.network {
                    net.release(&key);
                }
            }
            let dir = shared.log_dir(&key);
            let metrics = shared.ctx.metrics.clone();
            let after = shared.clone();
            tracing::debug!(
                namespace = %key.0,
                name = %key.1,
                step = ?s.step(),
                "stopping an instance"
            );
            let stop = async move {
                s.stop().await;
                if gone {
                    // An instance of the same name may have been created
                    // while this one used its grace period: its log and
                    // metrics are the new one's now. Checked under the lock
                    // that starting one takes.
                    let running = after.running.lock().await;
                    if !running.contains_key(&key) {
                        metrics.forget(&key);
                        logs::InstanceLog::remove(&dir);
                    }
                } else {
                    metrics.forget(&key);
                }
            };
            if gone {
                // A deleted instance may take its grace period to end; the
                // others need not wait for it.
                tokio::spawn(stop);
            } else {
                // A changed spec is started again under the same key once the
                // old run has ended.
                stopping.push(stop);
            }
        }
    }
    stop_in_order(stopping).await;
    for (key, instance) in desired {
        if running.contains_key(&key) {
            continue;
        }
        let log = match logs::InstanceLog::open(shared.log_dir(&key)) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(instance = %format!("{}/{}", key.0, key.1), error = %e, "cannot open the instance log");
                continue;
            }
        };
        let sup = Supervisor::spawn(shared.ctx.clone(), instance, log);
        running.insert(key, sup);
    }
}

async fn stop_in_order<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    for f in set {
        f.await;
    }
}

//! `flotilla hollow-nodes`: many node agents in one process, each with the
//! hollow runtime (Kubernetes' kubemark). They run the real agent code —
//! joining, registering, renewing leases, watching their instances, reporting
//! status, probing — but no Wasm, so one machine can put the load of a large
//! cluster on a control plane.
//!
//! One tokio runtime serves every node; a node costs two UDP sockets (its API
//! connection and its listener) and its tasks, no threads and no wasmtime
//! `Engine`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use flotilla_node::agent::{Agent, AgentConfig, AgentError, RuntimeKind};
use tokio::task::JoinSet;

use super::node::AgentArgs;
use super::Context;

/// Nodes joining at once: enough to bring 1000 up in well under a minute,
/// few enough not to swamp the apiserver with handshakes and certificate
/// signing.
const JOIN_CONCURRENCY: usize = 32;

/// Starts per node before giving up. Under a burst of joins a busy apiserver
/// may miss the connect timeout; a refused token fails every attempt.
const START_ATTEMPTS: u32 = 4;

/// Delay before the first retry of a start; doubled after each.
const FIRST_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Open files one running hollow node holds: its API connection's socket and
/// its listener's.
const FILES_PER_NODE: u64 = 2;

/// Flags of `flotilla hollow-nodes`: [`AgentArgs`], applied to every node,
/// and how many nodes, named and kept where.
#[derive(Args, Debug)]
// Kubernetes' default pod limit per node; hollow nodes mimic ordinary ones.
#[command(mut_arg("capacity_instances", |a| a.default_value("110")))]
pub struct HollowNodesArgs {
    /// How many hollow nodes to run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Nodes are named PREFIX-1 … PREFIX-COUNT.
    #[arg(long, default_value = "hollow")]
    name_prefix: String,
    /// Each node keeps its identity, modules and logs in DIR/NAME (a restart
    /// on the same DIR needs no token).
    #[arg(long)]
    data_dir: PathBuf,
    /// IP the nodes' listeners bind, each on its own port (apiservers reach
    /// logs and port-forwards there).
    #[arg(long, default_value = "127.0.0.1")]
    listen_ip: IpAddr,
    #[command(flatten)]
    agent: AgentArgs,
}

impl HollowNodesArgs {
    /// Starts the nodes, reports when all have joined, and runs them until
    /// Ctrl-C or SIGTERM.
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        warn_if_file_limit_too_low(self.count);
        let configs = (1..=self.count)
            .map(|i| {
                let name = format!("{}-{i}", self.name_prefix);
                let data_dir = self.data_dir.join(&name);
                let mut config = self.agent.config(ctx, name, data_dir)?;
                config.listen = SocketAddr::new(self.listen_ip, 0).to_string();
                config.runtime = RuntimeKind::Hollow;
                Ok(config)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        let shutdown = super::server::shutdown_signal();
        tokio::pin!(shutdown);
        let mut agents = Vec::with_capacity(configs.len());
        let started = tokio::select! {
            r = start_all(configs, &mut agents) => Some(r),
            () = &mut shutdown => None,
        };
        let result = match started {
            Some(Ok(())) => {
                eprintln!("{} hollow nodes running", agents.len());
                shutdown.await;
                Ok(ExitCode::SUCCESS)
            }
            Some(Err(e)) => Err(e),
            // Stopped while joining.
            None => Ok(ExitCode::SUCCESS),
        };
        stop_all(agents).await;
        result
    }
}

/// Starts every agent, at most [`JOIN_CONCURRENCY`] at once, into `agents`;
/// the first node that fails [`START_ATTEMPTS`] times ends it (the caller
/// stops those already started).
async fn start_all(configs: Vec<AgentConfig>, agents: &mut Vec<Agent>) -> anyhow::Result<()> {
    let mut configs = configs.into_iter();
    let mut starting = JoinSet::new();
    loop {
        while starting.len() < JOIN_CONCURRENCY {
            let Some(config) = configs.next() else { break };
            starting.spawn(async move {
                let name = config.name.clone();
                (name, start_one(config).await)
            });
        }
        let Some(done) = starting.join_next().await else {
            return Ok(());
        };
        let (name, started) = done.context("a hollow node's start task failed")?;
        agents.push(started.with_context(|| format!("hollow node {name}"))?);
    }
}

/// Starts one agent, retrying with a doubling delay.
async fn start_one(config: AgentConfig) -> Result<Agent, AgentError> {
    let mut delay = FIRST_RETRY_DELAY;
    for _ in 1..START_ATTEMPTS {
        match Agent::start(config.clone()).await {
            Ok(agent) => return Ok(agent),
            Err(e) => {
                tracing::info!(node = %config.name, error = %e, "hollow node did not start; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    Agent::start(config).await
}

/// Stops every agent, all at once.
async fn stop_all(agents: Vec<Agent>) {
    let mut stopping = JoinSet::new();
    for agent in agents {
        stopping.spawn(agent.shutdown());
    }
    while stopping.join_next().await.is_some() {}
}

/// Every node holds sockets; a process past its open-file limit fails joins
/// with an unhelpful "cannot open a local socket". Say so at start.
fn warn_if_file_limit_too_low(count: u32) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    // "Max open files            1024                 4096                 files"
    let Some(soft) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let needed = u64::from(count) * FILES_PER_NODE + JOIN_CONCURRENCY as u64 + 64;
    if needed > soft {
        eprintln!(
            "warning: the open-file limit is {soft}; {count} hollow nodes need about {needed}: raise it (ulimit -n {}) or lower --count",
            needed.next_power_of_two()
        );
    }
}

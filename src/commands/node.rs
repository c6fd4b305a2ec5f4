//! `flotilla node`: a node agent. Also the flags every node verb shares
//! ([`AgentArgs`], used by `flotilla hollow-nodes` too).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;
use flotilla_api::duration::Duration;
use flotilla_api::node::Taint;
use flotilla_api::quantity::Quantity;
use flotilla_node::agent::{Agent, AgentConfig, Backoff, RuntimeKind};

use super::context::{parse_duration, parse_quantity};
use super::Context;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where the node keeps its identity, modules, compiled code and logs.
    #[arg(long, default_value = "flotilla-node")]
    data_dir: PathBuf,
    /// Directory of static Instance manifests to run with or without a control plane.
    #[arg(long)]
    manifests_dir: Option<PathBuf>,
    /// Address of the node's listener (apiservers reach logs and port-forwards here).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// A guest busy this long without returning to the host is stopped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    busy_timeout: Duration,
    /// An http-world request still running this long after it arrived (its
    /// response body included) is ended: DeadlineExceeded.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Serve HTTP/1.1 ingress here: services with spec.ingress.host are
    /// reachable through it by Host header, wherever their instances run.
    #[arg(long)]
    ingress_addr: Option<String>,
    /// Do not resolve service names and cluster IPs (the service layer);
    /// instance IPs still route.
    #[arg(long)]
    no_service_forwarder: bool,
    /// Run no Wasm: instances only pretend to run (http ones answer 200
    /// "hollow"), for load-testing a control plane.
    #[arg(long)]
    hollow: bool,
    #[command(flatten)]
    metrics: super::metrics_flag::MetricsArgs,
    #[command(flatten)]
    agent: AgentArgs,
}

/// The flags of every node verb: how a node joins, what it offers, how it
/// restarts instances.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Join token from `flotilla token create` (first start only).
    #[arg(long)]
    token: Option<String>,
    /// Node labels, k=v,k2=v2.
    #[arg(long, default_value = "")]
    labels: String,
    /// Node taints, k=v:NoSchedule,...
    #[arg(long, default_value = "")]
    taints: String,
    /// CPU the node offers.
    #[arg(long, default_value = "2000m", value_parser = parse_quantity)]
    capacity_cpu: Quantity,
    /// Memory the node offers.
    #[arg(long, default_value = "4Gi", value_parser = parse_quantity)]
    capacity_memory: Quantity,
    /// Instance slots.
    #[arg(long, default_value_t = 1000)]
    capacity_instances: u32,
    /// How often the node renews its lease.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease_interval: Duration,
    /// First restart delay of a crashing instance.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    restart_backoff: Duration,
    /// Largest restart delay.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    restart_backoff_max: Duration,
    /// A run this long resets the restart delay.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    restart_backoff_reset: Duration,
    /// When to renew the node's certificate: a fraction of its validity
    /// period (0.667, or 67%), or `off`.
    #[arg(long, default_value = "0.667", value_name = "FRACTION|off")]
    cert_renew_at: flotilla_client::tls::RenewAt,
}

impl AgentArgs {
    /// The configuration of node `name` kept in `data_dir`, joining through
    /// the global `--server`.
    pub fn config(
        &self,
        ctx: &Context,
        name: String,
        data_dir: PathBuf,
    ) -> anyhow::Result<AgentConfig> {
        let Self {
            token,
            labels,
            taints,
            capacity_cpu,
            capacity_memory,
            capacity_instances,
            lease_interval,
            restart_backoff,
            restart_backoff_max,
            restart_backoff_reset,
            cert_renew_at,
        } = self;
        let mut config = AgentConfig::new(name, data_dir);
        config.server = ctx.server().map(str::to_string);
        config.token = token.clone();
        config.labels = parse_labels(labels)?;
        config.taints = taints
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Taint::parse(t).map_err(|e| anyhow!("--taints: {e}")))
            .collect::<anyhow::Result<_>>()?;
        config.capacity_cpu = capacity_cpu.clone();
        config.capacity_memory = capacity_memory.clone();
        config.capacity_instances = *capacity_instances;
        config.lease_interval = lease_interval.as_std();
        config.cert_renew_at = *cert_renew_at;
        config.backoff = Backoff {
            initial: restart_backoff.as_std(),
            max: restart_backoff_max.as_std(),
            reset_after: restart_backoff_reset.as_std(),
        };
        Ok(config)
    }
}

fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--labels: \"{pair}\" is not key=value"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub fn default_node_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_lowercase())
        .unwrap_or_else(|| "node".into())
}

impl NodeArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let name = self.name.unwrap_or_else(default_node_name);
        let mut config = self.agent.config(ctx, name.clone(), self.data_dir)?;
        config.manifests_dir = self.manifests_dir;
        config.listen = self.listen;
        config.busy_timeout = self.busy_timeout.as_std();
        config.request_timeout = self.request_timeout.as_std();
        config.ingress = self.ingress_addr;
        config.service_forwarder = !self.no_service_forwarder;
        config.runtime = if self.hollow {
            RuntimeKind::Hollow
        } else {
            RuntimeKind::Wasmtime
        };
        let telemetry = config.telemetry.clone();
        let agent = Agent::start(config).await?;
        println!("flotilla node: {name} listening on {}", agent.listen_addr);
        if let Some(addr) = &agent.ingress_addr {
            println!("flotilla node: {name} ingress on http://{addr}");
        }
        let _metrics = self.metrics.serve("flotilla node", &telemetry).await?;
        super::server::shutdown_signal().await;
        agent.shutdown().await;
        Ok(ExitCode::SUCCESS)
    }
}

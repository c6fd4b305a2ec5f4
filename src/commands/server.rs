//! `flotilla server`: one control-plane peer.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use flotilla_api::duration::Duration;
use flotilla_orchestrator::apiserver::audit::AuditConfig;
use flotilla_orchestrator::server::{run, ServerConfig};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where this peer keeps its log, state and credentials.
    #[arg(long, default_value = "flotilla-data")]
    data_dir: PathBuf,
    /// UDP address to serve QUIC on (port 0: pick a free port and keep it).
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
    /// Address to advertise to peers and clients (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Join the cluster that a peer at this address belongs to.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// Join token from `flotilla token create`.
    #[arg(long, requires = "join")]
    token: Option<String>,
    /// Changes kept for watches; older revisions get "too old".
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Log entries between snapshots (the log is compacted after each).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    no_scheduler: bool,
    /// Do not run the controllers in this process.
    #[arg(long)]
    no_controllers: bool,
    #[command(flatten)]
    controllers: super::controllers::ControllerFlags,
    /// Range split into per-node instance ranges (every peer must be given the same).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: flotilla_api::cidr::Cidr,
    /// Prefix length of each node's instance range.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// Range of service cluster IPs (every peer must be given the same).
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: flotilla_api::cidr::Cidr,
    /// How long the leader among schedulers (and among controllers) keeps its
    /// lease without renewing it.
    #[arg(long, default_value = "15s", value_parser = super::context::parse_duration)]
    leader_lease: Duration,
    /// Largest module `apply` may upload.
    #[arg(long, default_value = "64Mi", value_parser = super::context::parse_quantity)]
    max_module_size: flotilla_api::quantity::Quantity,
    /// How long a write waits for a quorum before failing.
    #[arg(long, default_value = "5s", value_parser = super::context::parse_duration)]
    write_timeout: Duration,
    /// Lifetime of every certificate this peer issues: its own, joining
    /// peers', nodes', the admin's (e.g. 30d, 24h; at most 3650d).
    #[arg(long, default_value = "365d", value_parser = super::context::parse_duration)]
    cert_lifetime: Duration,
    /// When to renew this peer's certificates: a fraction of their validity
    /// period (0.667, or 67%), or `off`.
    #[arg(long, default_value = "0.667", value_name = "FRACTION|off")]
    cert_renew_at: flotilla_client::tls::RenewAt,
    /// Where the apiserver appends a JSON line for every change and every
    /// refused request (default: DATA_DIR/audit.log), or `off`.
    #[arg(long, value_name = "PATH|off")]
    audit_log: Option<String>,
    /// Size past which the audit log is rotated to audit.log.1.
    #[arg(long, default_value = "100Mi", value_parser = super::context::parse_quantity)]
    audit_log_max_size: flotilla_api::quantity::Quantity,
    /// Rotated audit logs kept.
    #[arg(long, default_value_t = 5)]
    audit_log_max_backups: usize,
    #[command(flatten)]
    metrics: super::metrics_flag::MetricsArgs,
}

impl ServerArgs {
    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        let ServerArgs {
            data_dir,
            listen,
            advertise,
            join,
            token,
            watch_history,
            snapshot_every,
            write_timeout,
            max_module_size,
            no_scheduler,
            no_controllers,
            controllers,
            leader_lease,
            cluster_cidr,
            node_cidr_mask_size,
            service_cidr,
            cert_lifetime,
            cert_renew_at,
            audit_log,
            audit_log_max_size,
            audit_log_max_backups,
            metrics,
        } = self;
        if node_cidr_mask_size < cluster_cidr.prefix_len() {
            anyhow::bail!(
                "--node-cidr-mask-size {node_cidr_mask_size} is shorter than the cluster CIDR {cluster_cidr}'s prefix: a node's range must fit inside it"
            );
        }
        let audit_log = match audit_log.as_deref() {
            Some("off") => None,
            Some(path) => Some(PathBuf::from(path)),
            None => Some(data_dir.join("audit.log")),
        };
        let mut config = ServerConfig::new(data_dir, listen);
        config.audit_log = audit_log.map(|path| AuditConfig {
            path,
            max_bytes: audit_log_max_size.as_bytes().max(1),
            backups: audit_log_max_backups,
        });
        config.advertise = advertise;
        config.join = join.zip(token);
        config.history = watch_history;
        config.snapshot_every = snapshot_every.max(10);
        config.write_timeout = write_timeout.as_std();
        config.max_module_bytes = max_module_size.as_bytes();
        config.scheduler = !no_scheduler;
        config.controllers = !no_controllers;
        config.controller_settings = controllers.settings();
        config.leader_lease = leader_lease.as_std();
        config.cert_lifetime = cert_lifetime.as_std();
        config.cert_renew_at = cert_renew_at;
        config.ranges = flotilla_orchestrator::apiserver::NetworkRanges {
            cluster_cidr,
            node_prefix: node_cidr_mask_size,
            service_cidr,
        };
        let _metrics = metrics.serve("flotilla server", &config.telemetry).await?;
        match run(config, shutdown_signal()).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e @ flotilla_orchestrator::server::ServerError::StoreFailed(_)) => {
                exit_on_store_failure(&e)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Exits at once, non-zero, as a crash would: closing the key space flushes
/// it, and on a disk that failed that flush never returns. What was
/// acknowledged is in the synced log; the restart replays it.
pub fn exit_on_store_failure(e: &flotilla_orchestrator::server::ServerError) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

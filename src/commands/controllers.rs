//! `flotilla controllers` and `flotilla scheduler`: the controller manager or
//! the scheduler alone, as a client of the apiserver. Several may run; a lease
//! elects the one that acts.

use std::process::ExitCode;

use clap::Args;
use flotilla_api::duration::Duration;
use flotilla_node::agent::DEFAULT_LEASE_INTERVAL;
use flotilla_orchestrator::controllers::{ControllerMetrics, Settings};
use flotilla_orchestrator::leader::{run_elected, Election, LeaderMetrics};
use flotilla_orchestrator::scheduler::SchedulerMetrics;
use flotilla_orchestrator::server::{CONTROLLERS_LEASE, SCHEDULER_LEASE};
use flotilla_telemetry::Telemetry;

use super::server::shutdown_signal;
use super::Context;

/// Timing of the controllers, shared by `flotilla server` and `flotilla controllers`.
#[derive(Args, Debug)]
pub struct ControllerFlags {
    /// A node whose lease is not renewed for this long becomes NotReady and
    /// is tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = super::context::parse_duration)]
    node_grace_period: Duration,
    /// Seconds instances stay on an unreachable or not-ready node unless their
    /// tolerations say otherwise.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: u64,
    /// Events last seen longer ago than this are deleted.
    #[arg(long, default_value = "1h", value_parser = super::context::parse_duration)]
    event_ttl: Duration,
}

impl ControllerFlags {
    pub fn settings(&self) -> Settings {
        let grace = self.node_grace_period.as_std();
        if grace <= DEFAULT_LEASE_INTERVAL {
            tracing::warn!(
                "--node-grace-period {} is not longer than the nodes' default lease interval ({}): \
                 every node that renews at the default is marked NotReady between its renewals. \
                 Give a longer grace period (the default is 40s), or start nodes with a shorter \
                 --lease-interval",
                self.node_grace_period,
                Duration::from_std(DEFAULT_LEASE_INTERVAL)
            );
        }
        Settings {
            node_grace_period: self.node_grace_period.as_std(),
            default_toleration: std::time::Duration::from_secs(self.default_toleration_seconds),
            event_ttl: self.event_ttl.as_std(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ControllersArgs {
    #[command(flatten)]
    flags: ControllerFlags,
    /// How long the leader keeps its lease without renewing it.
    #[arg(long, default_value = "15s", value_parser = super::context::parse_duration)]
    leader_lease: Duration,
    #[command(flatten)]
    metrics: super::metrics_flag::MetricsArgs,
}

impl ControllersArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let config = ctx.client_config()?;
        let settings = self.flags.settings();
        let telemetry = Telemetry::new();
        let election = settings.published_on(
            Election::new(CONTROLLERS_LEASE, "controllers", self.leader_lease.as_std())
                .with_metrics(&LeaderMetrics::register(&telemetry.registry)),
        );
        // Ready while it reaches the apiserver, leading or standing by.
        telemetry.health.add("apiserver", &election.connected);
        let metrics = ControllerMetrics::register(&telemetry.registry);
        let _served = self
            .metrics
            .serve("flotilla controllers", &telemetry)
            .await?;
        tracing::info!(identity = %election.identity, server = %config.server, "controllers campaigning");
        tokio::select! {
            () = run_elected(config, election, move |c| {
                flotilla_orchestrator::controllers::run(c, settings.clone(), metrics.clone())
            }) => {}
            () = shutdown_signal() => {}
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// How long the leader keeps its lease without renewing it.
    #[arg(long, default_value = "15s", value_parser = super::context::parse_duration)]
    leader_lease: Duration,
    #[command(flatten)]
    metrics: super::metrics_flag::MetricsArgs,
}

impl SchedulerArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let config = ctx.client_config()?;
        let telemetry = Telemetry::new();
        let election = Election::new(SCHEDULER_LEASE, "scheduler", self.leader_lease.as_std())
            .with_metrics(&LeaderMetrics::register(&telemetry.registry));
        // Ready while it reaches the apiserver, leading or standing by.
        telemetry.health.add("apiserver", &election.connected);
        let metrics = SchedulerMetrics::register(&telemetry.registry);
        let _served = self.metrics.serve("flotilla scheduler", &telemetry).await?;
        tracing::info!(identity = %election.identity, server = %config.server, "scheduler campaigning");
        tokio::select! {
            () = run_elected(config, election, move |c| {
                flotilla_orchestrator::scheduler::run(c, metrics.clone())
            }) => {}
            () = shutdown_signal() => {}
        }
        Ok(ExitCode::SUCCESS)
    }
}

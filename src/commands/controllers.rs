//! `flotilla controllers` and `flotilla scheduler`: the controller manager or
//! the scheduler alone, as a client of the apiserver. Several may run; a lease
//! elects the one that acts.

use std::process::ExitCode;

use clap::Args;
use flotilla_api::duration::Duration;
use flotilla_orchestrator::controllers::Settings;
use flotilla_orchestrator::leader::{run_elected, Election};
use flotilla_orchestrator::server::{CONTROLLERS_LEASE, SCHEDULER_LEASE};

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
}

impl ControllerFlags {
    pub fn settings(&self) -> Settings {
        Settings {
            node_grace_period: self.node_grace_period.as_std(),
            default_toleration: std::time::Duration::from_secs(self.default_toleration_seconds),
            ..Settings::default()
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
}

impl ControllersArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let config = ctx.client_config()?;
        let settings = self.flags.settings();
        let election = Election::new(CONTROLLERS_LEASE, "controllers", self.leader_lease.as_std());
        tracing::info!(identity = %election.identity, server = %config.server, "controllers campaigning");
        tokio::select! {
            () = run_elected(config, election, move |c| flotilla_orchestrator::controllers::run(c, settings.clone())) => {}
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
}

impl SchedulerArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let config = ctx.client_config()?;
        let election = Election::new(SCHEDULER_LEASE, "scheduler", self.leader_lease.as_std());
        tracing::info!(identity = %election.identity, server = %config.server, "scheduler campaigning");
        tokio::select! {
            () = run_elected(config, election, flotilla_orchestrator::scheduler::run) => {}
            () = shutdown_signal() => {}
        }
        Ok(ExitCode::SUCCESS)
    }
}

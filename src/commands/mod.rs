//! One module per verb; [`Cli::execute`] dispatches.

mod apply;
mod auth;
mod cluster;
mod columns;
mod context;
mod controllers;
mod delete;
mod describe;
mod doctor;
mod drain;
mod get;
mod hollow_nodes;
mod logs;
mod metrics_flag;
mod node;
mod output;
mod port_forward;
mod rollout;
mod server;
mod token;
mod up;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use context::Context;

/// The exit status of a request the server refused as Forbidden, apart from
/// other failures so that scripts can tell "not allowed" from "broken"
/// (doctor uses 1 and 2 for its findings).
pub const FORBIDDEN_STATUS: u8 = 3;

/// Whether the server refused the request as Forbidden.
pub fn is_forbidden(e: &flotilla_client::ClientError) -> bool {
    matches!(e, flotilla_client::ClientError::Api(api) if api.code == flotilla_client::wire::ErrorCode::Forbidden)
}

/// The outcome of a command that made one request per object: success,
/// [`FORBIDDEN_STATUS`] when every failure was a refusal, or failure.
#[derive(Default)]
pub struct Outcomes {
    failed: bool,
    only_forbidden: bool,
}

impl Outcomes {
    /// Records a failed request.
    pub fn failed(&mut self, e: &flotilla_client::ClientError) {
        self.only_forbidden = is_forbidden(e) && (self.only_forbidden || !self.failed);
        self.failed = true;
    }

    /// The exit code.
    pub fn exit_code(&self) -> ExitCode {
        match (self.failed, self.only_forbidden) {
            (false, _) => ExitCode::SUCCESS,
            (true, true) => ExitCode::from(FORBIDDEN_STATUS),
            (true, false) => ExitCode::FAILURE,
        }
    }
}

/// Flotilla: a micro-orchestrator for WebAssembly workloads.
#[derive(Parser, Debug)]
#[command(name = "flotilla", version, about, propagate_version = true)]
pub struct Cli {
    /// Client configuration file (default: $FLOTILLA_CONFIG, else ~/.flotilla/config).
    #[arg(long, global = true, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// Apiserver address HOST:PORT, overriding the configuration's.
    #[arg(long, global = true)]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a control-plane peer (store + apiserver).
    Server(server::ServerArgs),
    /// Manage join tokens.
    Token(token::TokenArgs),
    /// Make users' client certificates.
    User(user::UserArgs),
    /// Ask who this client is and what it may do.
    Auth(auth::AuthArgs),
    /// Inspect and change the store's peers.
    Cluster(cluster::ClusterArgs),
    /// Create or update objects from manifests.
    Apply(apply::ApplyArgs),
    /// List or show objects.
    Get(get::GetArgs),
    /// Show one object in detail.
    Describe(describe::DescribeArgs),
    /// Delete objects.
    Delete(delete::DeleteArgs),
    /// Run a node agent: join a cluster, run the instances bound to it.
    Node(node::NodeArgs),
    /// Run many node agents in one process whose instances only pretend to run
    /// (kubemark's hollow nodes), to load-test a control plane.
    HollowNodes(hollow_nodes::HollowNodesArgs),
    /// Print an instance's log.
    Logs(logs::LogsArgs),
    /// Forward a local port to an http-world instance.
    PortForward(port_forward::PortForwardArgs),
    /// Run the scheduler alone (a lease elects one active among several).
    Scheduler(controllers::SchedulerArgs),
    /// Run the controllers alone (a lease elects one active among several).
    Controllers(controllers::ControllersArgs),
    /// Follow, list, undo, pause or resume Deployment rollouts.
    Rollout(rollout::RolloutArgs),
    /// Change a Deployment's replicas.
    Scale(rollout::ScaleArgs),
    /// Mark a node unschedulable.
    Cordon(drain::CordonArgs),
    /// Mark a node schedulable again.
    Uncordon(drain::CordonArgs),
    /// Cordon a node and evict its instances, keeping Deployments available.
    Drain(drain::DrainArgs),
    /// Run a whole cluster in one process: a store peer, the apiserver and a node.
    Up(up::UpArgs),
    /// Walk the chain from this client to every node and name the first broken
    /// link (exit 0 all OK, 1 warnings, 2 failures).
    Doctor(doctor::DoctorArgs),
}

impl Cli {
    /// Runs the chosen verb.
    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        let ctx = Context::new(self.config, self.server);
        match self.command {
            Command::Server(args) => args.execute().await,
            Command::Token(args) => args.execute(&ctx).await,
            Command::User(args) => args.execute(&ctx).await,
            Command::Auth(args) => args.execute(&ctx).await,
            Command::Cluster(args) => args.execute(&ctx).await,
            Command::Apply(args) => args.execute(&ctx).await,
            Command::Get(args) => args.execute(&ctx).await,
            Command::Describe(args) => args.execute(&ctx).await,
            Command::Delete(args) => args.execute(&ctx).await,
            Command::Node(args) => args.execute(&ctx).await,
            Command::HollowNodes(args) => args.execute(&ctx).await,
            Command::Logs(args) => args.execute(&ctx).await,
            Command::PortForward(args) => args.execute(&ctx).await,
            Command::Up(args) => args.execute().await,
            Command::Rollout(args) => args.execute(&ctx).await,
            Command::Scale(args) => args.execute(&ctx).await,
            Command::Cordon(args) => args.cordon(&ctx).await,
            Command::Uncordon(args) => args.uncordon(&ctx).await,
            Command::Drain(args) => args.execute(&ctx).await,
            Command::Scheduler(args) => args.execute(&ctx).await,
            Command::Controllers(args) => args.execute(&ctx).await,
            Command::Doctor(args) => args.execute(&ctx).await,
        }
    }
}

//! `flotilla up`: a whole cluster in one process, for a first look and for
//! development: one store peer with its apiserver, and one node, wired through
//! the same API as separate processes would be.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use flotilla_client::wire::{RequestV1, ResponseV1};
use flotilla_client::{Client, ClientConfig};
use flotilla_node::agent::{Agent, AgentConfig};
use flotilla_orchestrator::server::{Server, ServerConfig};
use flotilla_telemetry::Telemetry;

use super::metrics_flag::{parse_metrics_addr, MetricsAddr, UP_DEFAULT};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where the cluster keeps everything (default: ~/.flotilla/up).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the apiserver (UDP, QUIC).
    #[arg(long, default_value = "127.0.0.1:7443")]
    api_addr: String,
    /// Address of the node's HTTP ingress (services with spec.ingress.host).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ingress_addr: String,
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz of the
    /// whole cluster here (TCP), or `off`.
    #[arg(long, value_name = "IP:PORT|off", default_value = UP_DEFAULT, value_parser = parse_metrics_addr)]
    metrics_addr: MetricsAddr,
}

impl UpArgs {
    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => home
                .clone()
                .map(|h| h.join(".flotilla").join("up"))
                .context("no --data-dir and no HOME to put one in")?,
        };
        // One registry and one set of checks for both: ready when the store
        // has a leader, the apiserver serves and the node is registered.
        let telemetry = Telemetry::new();
        let metrics = super::metrics_flag::serve(self.metrics_addr.0, &telemetry).await?;
        let mut server_config = ServerConfig::new(data_dir.join("server"), self.api_addr.clone());
        server_config.telemetry = telemetry.clone();
        let server = Server::start(server_config).await?;
        let admin = ClientConfig::load(&server.admin_config)?;
        let node_dir = data_dir.join("node");
        let mut agent_config = AgentConfig::new(super::node::default_node_name(), node_dir.clone());
        if !node_dir.join("node.json").exists() {
            let client = Client::connect_to(&server.address, &admin).await?;
            let token = match client
                .call(RequestV1::CreateToken { ttl_seconds: 600 })
                .await?
            {
                ResponseV1::Token(t) => t,
                other => anyhow::bail!("unexpected answer to a token request: {other:?}"),
            };
            agent_config.token = Some(token);
        }
        agent_config.server = Some(server.address.clone());
        agent_config.ingress = Some(self.ingress_addr.clone());
        agent_config.telemetry = telemetry.clone();
        let agent = Agent::start(agent_config)
            .await
            .context("starting the node (another --ingress-addr, or 127.0.0.1:0 for any free port, avoids a port in use)")?;

        let mut written = None;
        if let Some(path) = ClientConfig::default_path() {
            let mut config = admin.clone();
            config.server = server.address.clone();
            config
                .save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            written = Some(path);
        }
        println!(
            "flotilla up: cluster running; apiserver listening on {}",
            server.address
        );
        match written {
            Some(p) => println!("client configuration written to {}", p.display()),
            None => println!("client configuration: {}", server.admin_config.display()),
        }
        if let Some(addr) = &agent.ingress_addr {
            println!("ingress: http://{addr} (a service with spec.ingress.host is reached by that Host header)");
        }
        if let Some(m) = &metrics {
            println!("metrics: http://{}/metrics (and /healthz, /readyz)", m.addr);
        }
        println!();
        println!("Next:");
        println!("  rustup target add wasm32-wasip2 wasm32-wasip1   # once: the guests' targets");
        println!("  cd examples && cargo build --release && cd ..");
        println!("  flotilla apply -f examples/hello/");
        println!("  flotilla get instances");
        println!("  flotilla port-forward instance/hello 8081   # then: curl 127.0.0.1:8081");
        println!("  flotilla apply -f examples/backend/ -f examples/frontend/");
        if let Some(addr) = &agent.ingress_addr {
            println!("  curl -H 'Host: frontend.local' http://{addr}/   # frontend -> backend");
        }
        println!();
        println!("Ctrl-C stops the cluster; `flotilla up` again resumes it.");
        tokio::select! {
            () = super::server::shutdown_signal() => {}
            failed = server.store_failed() => super::server::exit_on_store_failure(&failed),
        }
        agent.shutdown().await;
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    }
}

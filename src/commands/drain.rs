//! `flotilla cordon|uncordon NODE` and `flotilla drain NODE`: keep new work off
//! a node, and move what runs there elsewhere without taking any Deployment
//! below `replicas - maxUnavailable` ready instances.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use flotilla_api::event::EventType;
use flotilla_api::instance::{Instance, InstancePhase, MIRROR_ANNOTATION};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ErrorCode, Propagation};
use flotilla_client::Client;
use flotilla_orchestrator::events::Recorder;

use super::Context;

#[derive(Args, Debug)]
pub struct CordonArgs {
    /// Node name.
    node: String,
}

async fn set_unschedulable(client: &Client, node: &str, value: bool) -> anyhow::Result<bool> {
    let mut obj = client.get(Kind::Node, "", node).await?;
    let Object::Node(n) = &mut obj else {
        bail!("\"{node}\" is not a node");
    };
    if n.spec.unschedulable == value {
        return Ok(false);
    }
    n.spec.unschedulable = value;
    obj.meta_mut().resource_version.clear();
    client.update(obj).await?;
    Ok(true)
}

impl CordonArgs {
    pub async fn cordon(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let client = ctx.connect().await?;
        let changed = set_unschedulable(&client, &self.node, true).await?;
        println!(
            "node/{} {}",
            self.node,
            if changed {
                "cordoned"
            } else {
                "already cordoned"
            }
        );
        Ok(ExitCode::SUCCESS)
    }

    pub async fn uncordon(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let client = ctx.connect().await?;
        let changed = set_unschedulable(&client, &self.node, false).await?;
        println!(
            "node/{} {}",
            self.node,
            if changed {
                "uncordoned"
            } else {
                "already uncordoned"
            }
        );
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// Node name.
    node: String,
    /// Give up after this long (exit 1); default: wait as long as it takes.
    #[arg(long, value_parser = super::context::parse_duration)]
    timeout: Option<flotilla_api::duration::Duration>,
    /// Also evict instances no controller manages (they are not replaced).
    #[arg(long)]
    force: bool,
}

/// Why an instance on the node is left alone by a drain.
fn skipped(i: &Instance) -> bool {
    i.metadata.is_being_deleted()
        || i.metadata.annotations.contains_key(MIRROR_ANNOTATION)
        || matches!(
            i.status.phase,
            InstancePhase::Succeeded | InstancePhase::Failed
        )
        || i.metadata
            .controller_ref()
            .is_some_and(|r| r.kind == Kind::DaemonSet.as_str())
}

/// How many more instances of each Deployment (by uid) may stop being ready.
async fn disruption_budgets(
    client: &Client,
    all: &[Instance],
) -> anyhow::Result<HashMap<String, i64>> {
    let mut budgets = HashMap::new();
    let (deployments, _) = client.list(Kind::Deployment, None, "").await?;
    for obj in deployments {
        let Object::Deployment(d) = obj else { continue };
        let want = d.spec.replicas;
        let max_unavailable = d
            .spec
            .strategy
            .rolling_update
            .max_unavailable
            .resolve(want, false);
        let min_ready = i64::from(want.saturating_sub(max_unavailable));
        let ready = all
            .iter()
            .filter(|i| {
                i.is_ready()
                    && !i.metadata.is_being_deleted()
                    && i.metadata
                        .controller_ref()
                        .is_some_and(|r| r.uid == d.metadata.uid)
            })
            .count() as i64;
        budgets.insert(d.metadata.uid.clone(), ready - min_ready);
    }
    Ok(budgets)
}

impl DrainArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let client = ctx.connect().await?;
        set_unschedulable(&client, &self.node, true).await?;
        println!("node/{} cordoned", self.node);
        let recorder = Recorder::new("drain");
        let deadline = self.timeout.map(|t| Instant::now() + t.as_std());
        loop {
            let (items, _) = client.list(Kind::Instance, None, "").await?;
            let all: Vec<Instance> = items
                .into_iter()
                .filter_map(|o| match o {
                    Object::Instance(i) => Some(i),
                    _ => None,
                })
                .collect();
            let here: Vec<&Instance> = all
                .iter()
                .filter(|i| i.spec.node_name == self.node && !skipped(i))
                .collect();
            let unmanaged: Vec<&str> = here
                .iter()
                .filter(|i| i.metadata.controller_ref().is_none())
                .map(|i| i.metadata.name.as_str())
                .collect();
            if !unmanaged.is_empty() && !self.force {
                bail!(
                    "cannot drain node {}: instances no controller manages would be lost: {} (use --force to evict them anyway)",
                    self.node,
                    unmanaged.join(", ")
                );
            }
            if here.is_empty() {
                println!("node/{} drained", self.node);
                return Ok(ExitCode::SUCCESS);
            }
            let mut budgets = disruption_budgets(&client, &all).await?;
            for i in here {
                let owner = i.metadata.controller_ref().map(|r| r.uid.clone());
                if let Some(budget) = owner.as_ref().and_then(|uid| budgets.get_mut(uid)) {
                    if i.is_ready() {
                        if *budget <= 0 {
                            continue;
                        }
                        *budget -= 1;
                    }
                }
                match client
                    .delete(
                        Kind::Instance,
                        &i.metadata.namespace,
                        &i.metadata.name,
                        Propagation::Background,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(ErrorCode::NotFound) => continue,
                    Err(e) => return Err(e.into()),
                }
                println!("instance/{} evicted", i.metadata.name);
                recorder
                    .record(
                        &client,
                        Kind::Instance,
                        &i.metadata,
                        EventType::Normal,
                        "Evicted",
                        &format!("evicted by a drain of node {}", self.node),
                    )
                    .await;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                bail!("timed out draining node {}", self.node);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

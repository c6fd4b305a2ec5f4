//! Node lifecycle: a node whose lease is not renewed for the grace period
//! becomes NotReady (Ready=Unknown), its instances' Ready turns Unknown, and it
//! is tainted `node.flotilla.dev/unreachable:NoExecute`; the taint goes once the
//! lease is renewed again. Instances on a node with a NoExecute taint they do
//! not tolerate are evicted: at once for a taint a user set, after the default
//! toleration for unreachable and not-ready, after their own
//! `tolerationSeconds` when they tolerate it for a while.

use std::time::{Duration, Instant};

use flotilla_api::event::EventType;
use flotilla_api::instance::{Instance, CONDITION_READY, MIRROR_ANNOTATION};
use flotilla_api::meta::{
    elapsed_since, find_condition, now_timestamp, set_condition, Condition, ConditionStatus,
};
use flotilla_api::node::{
    Node, Taint, TaintEffect, CONDITION_READY as NODE_READY, TAINT_NOT_READY, TAINT_UNREACHABLE,
};
use flotilla_api::object::{Kind, Object};
use flotilla_client::ClientError;

use super::{is_terminal, Ctx, Snapshot};

/// True when the node's lease has been renewed within the grace period, by
/// this controller's clock.
fn lease_fresh(ctx: &Ctx, snap: &Snapshot, node: &Node) -> bool {
    let renewal = snap
        .node_leases
        .get(&node.metadata.name)
        .map(|l| l.spec.renew_time.clone())
        .unwrap_or_default();
    let mut memory = ctx.memory.lock().unwrap_or_else(|p| p.into_inner());
    let seen = memory
        .leases
        .entry(node.metadata.name.clone())
        .or_insert_with(|| (renewal.clone(), Instant::now()));
    if seen.0 != renewal {
        *seen = (renewal, Instant::now());
    }
    seen.1.elapsed() < ctx.settings.node_grace_period
}

fn taint_text(t: &Taint) -> String {
    if t.value.is_empty() {
        format!("{}:{}", t.key, t.effect)
    } else {
        format!("{}={}:{}", t.key, t.value, t.effect)
    }
}

/// How long `i` may stay on a node with NoExecute `taint`; `None` for forever.
fn tolerated_for(ctx: &Ctx, i: &Instance, taint: &Taint) -> Option<Duration> {
    match i.spec.tolerations.iter().find(|t| t.tolerates(taint)) {
        Some(t) => t.toleration_seconds.map(Duration::from_secs),
        None if taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY => {
            Some(ctx.settings.default_toleration)
        }
        None => Some(Duration::ZERO),
    }
}

fn owned_by_daemonset(i: &Instance) -> bool {
    i.metadata
        .controller_ref()
        .is_some_and(|r| r.kind == Kind::DaemonSet.as_str())
}

pub(super) async fn reconcile(ctx: &Ctx, snap: &Snapshot) -> Result<(), ClientError> {
    {
        let mut memory = ctx.memory.lock().unwrap_or_else(|p| p.into_inner());
        memory
            .leases
            .retain(|name, _| snap.nodes.iter().any(|n| &n.metadata.name == name));
    }
    for node in &snap.nodes {
        let fresh = lease_fresh(ctx, snap, node);
        let tainted = node.spec.taints.iter().any(|t| t.key == TAINT_UNREACHABLE);
        let on_node = || {
            snap.instances
                .iter()
                .filter(|i| i.spec.node_name == node.metadata.name && !is_terminal(i))
        };
        if !fresh {
            let ready = find_condition(&node.status.conditions, NODE_READY);
            if ready.is_none_or(|c| c.status != ConditionStatus::Unknown) {
                let mut next = node.clone();
                let grace = ctx.settings.node_grace_period.as_secs();
                set_condition(
                    &mut next.status.conditions,
                    Condition::new(
                        NODE_READY,
                        ConditionStatus::Unknown,
                        "NodeStatusUnknown",
                        &format!(
                            "the node agent stopped renewing its lease (grace period {grace}s)"
                        ),
                    ),
                );
                ctx.write_status(Object::Node(next)).await?;
                ctx.event(
                    Kind::Node,
                    &node.metadata,
                    EventType::Warning,
                    "NodeNotReady",
                    &format!(
                        "node {} stopped renewing its lease for {grace}s",
                        node.metadata.name
                    ),
                )
                .await;
                for i in on_node() {
                    let mut next = i.clone();
                    let changed = set_condition(
                        &mut next.status.conditions,
                        Condition::new(
                            CONDITION_READY,
                            ConditionStatus::Unknown,
                            "NodeNotReady",
                            &format!("node {} is not ready", node.metadata.name),
                        ),
                    );
                    if changed {
                        ctx.write_status(Object::Instance(next)).await?;
                    }
                }
            }
            if !tainted {
                let mut next = node.clone();
                next.spec.taints.push(Taint {
                    key: TAINT_UNREACHABLE.to_string(),
                    value: String::new(),
                    effect: TaintEffect::NoExecute,
                    time_added: now_timestamp(),
                });
                ctx.write(Object::Node(next)).await?;
            }
        } else if tainted {
            let mut next = node.clone();
            next.spec.taints.retain(|t| t.key != TAINT_UNREACHABLE);
            ctx.write(Object::Node(next)).await?;
            ctx.event(
                Kind::Node,
                &node.metadata,
                EventType::Normal,
                "NodeReachable",
                &format!("node {} renews its lease again", node.metadata.name),
            )
            .await;
        }
        evict(ctx, node, on_node().collect()).await?;
    }
    Ok(())
}

/// Evicts what the node's NoExecute taints no longer allow to stay.
async fn evict(ctx: &Ctx, node: &Node, instances: Vec<&Instance>) -> Result<(), ClientError> {
    let now = time::OffsetDateTime::now_utc();
    let no_execute: Vec<&Taint> = node
        .spec
        .taints
        .iter()
        .filter(|t| t.effect == TaintEffect::NoExecute)
        .collect();
    if no_execute.is_empty() {
        return Ok(());
    }
    for i in instances {
        if i.metadata.is_being_deleted() || i.metadata.annotations.contains_key(MIRROR_ANNOTATION) {
            continue;
        }
        let expired = no_execute.iter().find(|taint| {
            let lifecycle = taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY;
            if lifecycle && owned_by_daemonset(i) {
                return false;
            }
            let age = elapsed_since(&taint.time_added, now).unwrap_or_default();
            tolerated_for(ctx, i, taint).is_some_and(|allowed| age >= allowed)
        });
        let Some(taint) = expired else { continue };
        ctx.delete_instance(i).await?;
        let allowed = tolerated_for(ctx, i, taint).unwrap_or_default();
        let message = format!(
            "evicted from node {}: taint {{{}}} not tolerated after {}s",
            node.metadata.name,
            taint_text(taint),
            allowed.as_secs()
        );
        ctx.event(
            Kind::Instance,
            &i.metadata,
            EventType::Warning,
            "Evicted",
            &message,
        )
        .await;
    }
    Ok(())
}

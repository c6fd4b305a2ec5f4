//! DaemonSets: one instance on every node that matches the template's node
//! selector, required node affinity and taints, bound to that node directly.
//! Instances on nodes that no longer match (or are gone) are removed; a new
//! template replaces old instances a few nodes at a time (maxUnavailable).
//! Like Kubernetes, a DaemonSet ignores cordons and tolerates the node
//! lifecycle taints (unreachable, not-ready).

use std::collections::BTreeMap;

use flotilla_api::daemonset::DaemonSet;
use flotilla_api::deployment::LABEL_TEMPLATE_HASH;
use flotilla_api::event::EventType;
use flotilla_api::instance::Instance;
use flotilla_api::node::{
    Node, TaintEffect, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
};
use flotilla_api::object::{Kind, Object};
use flotilla_client::ClientError;

use super::{is_available, is_terminal, Ctx, Snapshot};

/// True when a DaemonSet with this template belongs on `node`.
fn wants(ds: &DaemonSet, node: &Node) -> bool {
    let spec = &ds.spec.template.spec;
    spec.selects_node(&node.metadata.labels)
        && node.spec.taints.iter().all(|taint| {
            taint.effect == TaintEffect::PreferNoSchedule
                || [TAINT_UNREACHABLE, TAINT_NOT_READY, TAINT_UNSCHEDULABLE]
                    .contains(&taint.key.as_str())
                || spec.tolerations.iter().any(|t| t.tolerates(taint))
        })
}

pub(super) async fn reconcile(
    ctx: &Ctx,
    snap: &Snapshot,
    ds: &DaemonSet,
) -> Result<(), ClientError> {
    if ds.metadata.is_being_deleted() {
        return Ok(());
    }
    let hash = ds.spec.template.template_hash();
    let min_ready = ds.spec.min_ready_seconds;
    let eligible: Vec<&Node> = snap.nodes.iter().filter(|n| wants(ds, n)).collect();
    let mut by_node: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    let owned = snap.owned(&ds.metadata.uid);
    let mut created = Vec::new();
    let mut deleted = Vec::new();
    for i in &owned {
        if is_terminal(i) {
            ctx.delete_instance(i).await?;
            deleted.push(i.metadata.name.clone());
        } else {
            by_node
                .entry(i.spec.node_name.as_str())
                .or_default()
                .push(i);
        }
    }
    let mut misscheduled = 0u32;
    for (node, instances) in &by_node {
        if !eligible.iter().any(|n| n.metadata.name == *node) {
            misscheduled += instances.len() as u32;
            for i in instances {
                ctx.delete_instance(i).await?;
                deleted.push(i.metadata.name.clone());
            }
        }
    }
    let desired = eligible.len() as u32;
    let max_unavailable = ds
        .spec
        .update_strategy
        .rolling_update
        .max_unavailable
        .resolve(desired, false)
        .max(1) as usize;
    let is_new = |i: &Instance| i.metadata.labels.get(LABEL_TEMPLATE_HASH) == Some(&hash);
    let mut unavailable = eligible
        .iter()
        .filter(|n| {
            !by_node
                .get(n.metadata.name.as_str())
                .is_some_and(|v| v.iter().any(|i| is_available(i, min_ready)))
        })
        .count();
    let (mut current, mut ready, mut updated, mut available) = (0u32, 0u32, 0u32, 0u32);
    for node in &eligible {
        let name = node.metadata.name.as_str();
        let mut here: Vec<&Instance> = by_node.get(name).cloned().unwrap_or_default();
        // Keep one: the newest template first, then the ready one.
        here.sort_by_key(|i| (!is_new(i), !i.is_ready()));
        for extra in here.iter().skip(1) {
            ctx.delete_instance(extra).await?;
            deleted.push(extra.metadata.name.clone());
        }
        match here.first() {
            None => {
                let prefix = ds.metadata.name.clone();
                let created_name = ctx
                    .create_instance(
                        Kind::DaemonSet,
                        &ds.metadata,
                        &ds.spec.template,
                        &prefix,
                        Some(name),
                    )
                    .await?;
                created.push(created_name);
                current += 1;
                updated += 1;
            }
            Some(i) if !is_new(i) => {
                let counted_available = is_available(i, min_ready);
                // An old instance that is not available costs nothing to replace.
                if !counted_available || unavailable < max_unavailable {
                    if counted_available {
                        unavailable += 1;
                    }
                    ctx.delete_instance(i).await?;
                    deleted.push(i.metadata.name.clone());
                } else {
                    current += 1;
                    ready += u32::from(i.is_ready());
                    available += 1;
                }
            }
            Some(i) => {
                current += 1;
                updated += 1;
                ready += u32::from(i.is_ready());
                available += u32::from(is_available(i, min_ready));
            }
        }
    }
    if !created.is_empty() {
        ctx.event(
            Kind::DaemonSet,
            &ds.metadata,
            EventType::Normal,
            "SuccessfulCreate",
            &format!("created {}", created.join(", ")),
        )
        .await;
    }
    if !deleted.is_empty() {
        ctx.event(
            Kind::DaemonSet,
            &ds.metadata,
            EventType::Normal,
            "SuccessfulDelete",
            &format!("deleted {}", deleted.join(", ")),
        )
        .await;
    }
    let mut status = ds.status.clone();
    status.observed_generation = ds.metadata.generation;
    status.desired_number_scheduled = desired;
    status.current_number_scheduled = current;
    status.number_misscheduled = misscheduled;
    status.number_ready = ready;
    status.updated_number_scheduled = updated;
    status.number_available = available;
    status.number_unavailable = desired.saturating_sub(available);
    if status != ds.status {
        let mut next = ds.clone();
        next.status = status;
        ctx.write_status(Object::DaemonSet(next)).await?;
    }
    Ok(())
}

//! DaemonSets: one instance on every node that matches the template's node
//! selector, required node affinity and taints, bound to that node directly.
//! Instances on nodes that no longer match (or are gone) are removed; a new
//! template replaces old instances a few nodes at a time (maxUnavailable).
//! Like Kubernetes, a DaemonSet ignores cordons and tolerates the node
//! lifecycle taints (unreachable, not-ready).
//!
//! Keyed by DaemonSet; a change of the DaemonSet, of an instance it owns, of
//! the Module it names, or of any Node concerns it.

use std::collections::BTreeMap;

use flotilla_api::daemonset::DaemonSet;
use flotilla_api::deployment::LABEL_TEMPLATE_HASH;
use flotilla_api::event::EventType;
use flotilla_api::instance::Instance;
use flotilla_api::node::{
    Node, TaintEffect, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
};
use flotilla_api::object::{Kind, Object};

use super::runtime::{Action, Ctx, ObjectRef, ReconcileError, Reconciler};
use super::triggers;
use super::writes::{execute, module_missing, module_uploaded, new_instance, Plan, Write};
use super::{is_available, is_terminal, until_available, Now};
use crate::informer::{Cache, CacheChange};

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

/// What the DaemonSet controller decides for one DaemonSet, from the nodes
/// there are, the instances it owns (none being deleted) and whether its
/// template's module was uploaded.
pub fn decide(
    ds: &DaemonSet,
    nodes: &[Node],
    owned: &[Instance],
    module_known: bool,
    now: &Now,
) -> Plan {
    let mut plan = Plan::nothing();
    if ds.metadata.is_being_deleted() {
        return plan;
    }
    let hash = ds.spec.template.template_hash();
    let min_ready = ds.spec.min_ready_seconds;
    let available_now = |i: &Instance| is_available(i, min_ready, now.wall);
    let eligible: Vec<&Node> = nodes.iter().filter(|n| wants(ds, n)).collect();
    let mut by_node: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    let mut created = Vec::new();
    let mut deleted = Vec::new();
    let mut delete = |plan: &mut Plan, i: &Instance| {
        plan.writes.push(Write::DeleteInstance(i.clone()));
        deleted.push(i.metadata.name.clone());
    };
    for i in owned {
        if is_terminal(i) {
            delete(&mut plan, i);
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
                delete(&mut plan, i);
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
                .is_some_and(|v| v.iter().any(|i| available_now(i)))
        })
        .count();
    let (mut current, mut ready, mut updated, mut available) = (0u32, 0u32, 0u32, 0u32);
    for node in &eligible {
        let name = node.metadata.name.as_str();
        let mut here: Vec<&Instance> = by_node.get(name).cloned().unwrap_or_default();
        // Keep one: the newest template first, then the ready one.
        here.sort_by_key(|i| (!is_new(i), !i.is_ready()));
        for extra in here.iter().skip(1) {
            delete(&mut plan, extra);
        }
        match here.first() {
            None if !module_known => {
                let why = module_missing(
                    Kind::DaemonSet,
                    &ds.metadata.name,
                    &ds.spec.template.spec.module,
                );
                if plan.blocked.is_none() {
                    plan.writes.push(Write::event(
                        Kind::DaemonSet,
                        &ds.metadata,
                        EventType::Warning,
                        "FailedCreate",
                        why.clone(),
                    ));
                }
                plan.blocked = Some(why);
            }
            None => {
                let instance = new_instance(
                    Kind::DaemonSet,
                    &ds.metadata,
                    &ds.spec.template,
                    &ds.metadata.name,
                    Some(name),
                );
                created.push(instance.metadata.name.clone());
                plan.writes.push(Write::CreateInstance(instance));
                current += 1;
                updated += 1;
            }
            Some(i) if !is_new(i) => {
                let counted_available = available_now(i);
                // An old instance that is not available costs nothing to replace.
                if !counted_available || unavailable < max_unavailable {
                    if counted_available {
                        unavailable += 1;
                    }
                    delete(&mut plan, i);
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
                available += u32::from(available_now(i));
                plan.action = plan.action.sooner(Action::requeue_after(until_available(
                    i, min_ready, now.wall,
                )));
            }
        }
    }
    if !created.is_empty() {
        plan.writes.push(Write::event(
            Kind::DaemonSet,
            &ds.metadata,
            EventType::Normal,
            "SuccessfulCreate",
            format!("created {}", created.join(", ")),
        ));
    }
    if !deleted.is_empty() {
        plan.writes.push(Write::event(
            Kind::DaemonSet,
            &ds.metadata,
            EventType::Normal,
            "SuccessfulDelete",
            format!("deleted {}", deleted.join(", ")),
        ));
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
        plan.writes.push(Write::Status(Object::DaemonSet(next)));
    }
    plan
}

/// The DaemonSet controller.
pub struct DaemonSets;

impl Reconciler for DaemonSets {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn triggers(&self, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef> {
        let node_changed = match change {
            CacheChange::Reset(kind) => *kind == Kind::Node,
            CacheChange::Upserted { new, .. } => new.kind() == Kind::Node,
            CacheChange::Removed(old) => old.kind() == Kind::Node,
        };
        if node_changed {
            return triggers::all(Kind::DaemonSet, cache);
        }
        triggers::owner_or_self(Kind::DaemonSet, change, cache)
    }

    fn all_keys(&self, cache: &Cache) -> Vec<ObjectRef> {
        triggers::all(Kind::DaemonSet, cache)
    }

    async fn reconcile(&self, key: &ObjectRef, ctx: &Ctx) -> Result<Action, ReconcileError> {
        let Some(Object::DaemonSet(ds)) = ctx.cache.get(Kind::DaemonSet, &key.namespace, &key.name)
        else {
            return Ok(Action::await_change());
        };
        let nodes: Vec<Node> = ctx
            .cache
            .list(Kind::Node)
            .into_iter()
            .filter_map(|o| match o {
                Object::Node(n) => Some(n),
                _ => None,
            })
            .collect();
        let owned: Vec<Instance> = ctx
            .cache
            .owned_by(&ds.metadata.uid)
            .into_iter()
            .filter(|i| !i.metadata.is_being_deleted())
            .collect();
        let module_known = module_uploaded(&ctx.cache, &ds.spec.template.spec.module);
        execute(ctx, decide(&ds, &nodes, &owned, module_known, &Now::read())).await
    }
}

//! Node lifecycle: a node whose lease is not renewed for the grace period
//! becomes NotReady (Ready=Unknown), its instances' Ready turns Unknown, and it
//! is tainted `node.flotilla.dev/unreachable:NoExecute`; the taint goes once the
//! lease is renewed again. Instances on a node with a NoExecute taint they do
//! not tolerate are evicted: at once for a taint a user set, after the default
//! toleration for unreachable and not-ready, after their own
//! `tolerationSeconds` when they tolerate it for a while.
//!
//! Keyed by Node; a change of the Node, of its Lease, or of an instance bound
//! to it concerns it (a Lease renewal concerns only this controller).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_api::event::EventType;
use flotilla_api::instance::{Instance, CONDITION_READY, MIRROR_ANNOTATION};
use flotilla_api::lease::NODE_LEASE_NAMESPACE;
use flotilla_api::meta::{
    elapsed_since, find_condition, format_timestamp, set_condition, Condition, ConditionStatus,
};
use flotilla_api::node::{
    Node, Taint, TaintEffect, CONDITION_READY as NODE_READY, TAINT_NOT_READY, TAINT_UNREACHABLE,
};
use flotilla_api::object::{Kind, Object};

use super::runtime::{Action, Ctx, ObjectRef, ReconcileError, Reconciler};
use super::triggers;
use super::writes::{execute, Plan, Write};
use super::{is_terminal, Now, Settings};
use crate::informer::{Cache, CacheChange};

/// What the node lifecycle controller decides for one node, from how long
/// ago (by this controller's clock) its lease was last seen renewed and the
/// instances bound to it.
pub fn decide(
    node: &Node,
    lease_age: Duration,
    on_node: &[Instance],
    settings: &Settings,
    now: &Now,
) -> Plan {
    let mut plan = Plan::nothing();
    let grace = settings.node_grace_period;
    let fresh = lease_age < grace;
    let tainted = node.spec.taints.iter().any(|t| t.key == TAINT_UNREACHABLE);
    let live: Vec<&Instance> = on_node.iter().filter(|i| !is_terminal(i)).collect();
    let mut next = node.clone();
    if !fresh {
        let ready = find_condition(&node.status.conditions, NODE_READY);
        if ready.is_none_or(|c| c.status != ConditionStatus::Unknown) {
            let mut status = node.clone();
            let grace = grace.as_secs();
            set_condition(
                &mut status.status.conditions,
                Condition::new(
                    NODE_READY,
                    ConditionStatus::Unknown,
                    "NodeStatusUnknown",
                    &format!("the node agent stopped renewing its lease (grace period {grace}s)"),
                ),
            );
            plan.writes.push(Write::Status(Object::Node(status)));
            plan.writes.push(Write::event(
                Kind::Node,
                &node.metadata,
                EventType::Warning,
                "NodeNotReady",
                format!(
                    "node {} stopped renewing its lease for {grace}s",
                    node.metadata.name
                ),
            ));
            for i in &live {
                let mut next = (*i).clone();
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
                    plan.writes.push(Write::Status(Object::Instance(next)));
                }
            }
        }
        if !tainted {
            next.spec.taints.push(Taint {
                key: TAINT_UNREACHABLE.to_string(),
                value: String::new(),
                effect: TaintEffect::NoExecute,
                time_added: format_timestamp(now.wall),
            });
            plan.writes.push(Write::Update(Object::Node(next.clone())));
        }
    } else {
        // Looked at again when the lease would be late.
        plan.action = Action::requeue(grace - lease_age + Duration::from_millis(10));
        if tainted {
            next.spec.taints.retain(|t| t.key != TAINT_UNREACHABLE);
            plan.writes.push(Write::Update(Object::Node(next.clone())));
            plan.writes.push(Write::event(
                Kind::Node,
                &node.metadata,
                EventType::Normal,
                "NodeReachable",
                format!("node {} renews its lease again", node.metadata.name),
            ));
        }
    }
    evict(&mut plan, &next, &live, settings, now);
    plan
}

/// Evicts what the node's NoExecute taints no longer allow to stay, and
/// looks again when the next toleration runs out.
fn evict(plan: &mut Plan, node: &Node, instances: &[&Instance], settings: &Settings, now: &Now) {
    let no_execute: Vec<&Taint> = node
        .spec
        .taints
        .iter()
        .filter(|t| t.effect == TaintEffect::NoExecute)
        .collect();
    if no_execute.is_empty() {
        return;
    }
    for i in instances {
        if i.metadata.is_being_deleted() || i.metadata.annotations.contains_key(MIRROR_ANNOTATION) {
            continue;
        }
        let mut expired = None;
        for taint in &no_execute {
            let lifecycle = taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY;
            if lifecycle && owned_by_daemonset(i) {
                continue;
            }
            let Some(allowed) = tolerated_for(settings, i, taint) else {
                continue;
            };
            let age = elapsed_since(&taint.time_added, now.wall).unwrap_or_default();
            if age >= allowed {
                expired = Some((*taint, allowed));
                break;
            }
            plan.action = plan.action.sooner(Action::requeue(allowed - age));
        }
        let Some((taint, allowed)) = expired else {
            continue;
        };
        plan.writes.push(Write::DeleteInstance((*i).clone()));
        let message = format!(
            "evicted from node {}: taint {{{}}} not tolerated after {}s",
            node.metadata.name,
            taint_text(taint),
            allowed.as_secs()
        );
        plan.writes.push(Write::event(
            Kind::Instance,
            &i.metadata,
            EventType::Warning,
            "Evicted",
            message,
        ));
    }
}

/// The node lifecycle controller.
#[derive(Default)]
pub struct NodeLifecycle {
    /// Per node: the lease renewal last seen and when it was first seen.
    leases: Mutex<HashMap<String, (String, Instant)>>,
}

impl NodeLifecycle {
    /// How long ago the node's lease renewal was first seen as it is now.
    fn lease_age(&self, node: &str, renewal: String) -> Duration {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let seen = leases
            .entry(node.to_string())
            .or_insert_with(|| (renewal.clone(), Instant::now()));
        if seen.0 != renewal {
            *seen = (renewal, Instant::now());
        }
        seen.1.elapsed()
    }
}

impl Reconciler for NodeLifecycle {
    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    fn triggers(&self, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef> {
        if let CacheChange::Reset(kind) = change {
            return match kind {
                Kind::Node | Kind::Lease | Kind::Instance => triggers::all(Kind::Node, cache),
                _ => Vec::new(),
            };
        }
        let (old, new) = triggers::states(change);
        let mut keys = Vec::new();
        for object in old.into_iter().chain(new) {
            match object {
                Object::Node(n) => keys.push(ObjectRef::new(Kind::Node, "", &n.metadata.name)),
                Object::Lease(l) if l.metadata.namespace == NODE_LEASE_NAMESPACE => {
                    keys.push(ObjectRef::new(Kind::Node, "", &l.metadata.name))
                }
                Object::Instance(i) if !i.spec.node_name.is_empty() => {
                    keys.push(ObjectRef::new(Kind::Node, "", &i.spec.node_name))
                }
                _ => {}
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn all_keys(&self, cache: &Cache) -> Vec<ObjectRef> {
        triggers::all(Kind::Node, cache)
    }

    async fn reconcile(&self, key: &ObjectRef, ctx: &Ctx) -> Result<Action, ReconcileError> {
        let Some(Object::Node(node)) = ctx.cache.get(Kind::Node, "", &key.name) else {
            self.leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key.name);
            return Ok(Action::await_change());
        };
        let renewal = match ctx.cache.get(Kind::Lease, NODE_LEASE_NAMESPACE, &key.name) {
            Some(Object::Lease(l)) => l.spec.renew_time,
            _ => String::new(),
        };
        let age = self.lease_age(&key.name, renewal);
        let on_node = ctx.cache.on_node(&key.name);
        execute(
            ctx,
            decide(&node, age, &on_node, &ctx.settings, &Now::read()),
        )
        .await
    }
}

fn taint_text(t: &Taint) -> String {
    if t.value.is_empty() {
        format!("{}:{}", t.key, t.effect)
    } else {
        format!("{}={}:{}", t.key, t.value, t.effect)
    }
}

/// How long `i` may stay on a node with NoExecute `taint`; `None` for forever.
fn tolerated_for(settings: &Settings, i: &Instance, taint: &Taint) -> Option<Duration> {
    match i.spec.tolerations.iter().find(|t| t.tolerates(taint)) {
        Some(t) => t.toleration_seconds.map(Duration::from_secs),
        None if taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY => {
            Some(settings.default_toleration)
        }
        None => Some(Duration::ZERO),
    }
}

fn owned_by_daemonset(i: &Instance) -> bool {
    i.metadata
        .controller_ref()
        .is_some_and(|r| r.kind == Kind::DaemonSet.as_str())
}

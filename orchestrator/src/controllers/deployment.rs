//! Deployments: keep `replicas` instances of the current template, replacing
//! instances of older templates within maxSurge / maxUnavailable, counting only
//! instances that are Ready (for minReadySeconds) as available. Instances are
//! owned by the Deployment directly; the template hash label tells revisions
//! apart, and `status.history` keeps old templates for `rollout undo`.
//!
//! Keyed by Deployment; a change of the Deployment, of an instance it owns,
//! or of the Module its template names concerns it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_api::deployment::{
    Deployment, DeploymentRevision, DeploymentStatus, DeploymentStrategyType, CONDITION_AVAILABLE,
    CONDITION_PROGRESSING, LABEL_TEMPLATE_HASH,
};
use flotilla_api::event::EventType;
use flotilla_api::instance::Instance;
use flotilla_api::meta::{now_timestamp, set_condition, Condition, ConditionStatus};
use flotilla_api::object::{Kind, Object};

use super::runtime::{Action, Ctx, ObjectRef, ReconcileError, Reconciler};
use super::triggers;
use super::writes::{execute, module_missing, module_uploaded, new_instance, Plan, Write};
use super::{is_available, is_terminal, until_available, Now};
use crate::informer::{Cache, CacheChange};

/// Annotation whose value is recorded as a revision's change cause.
pub const ANNOTATION_CHANGE_CAUSE: &str = "flotilla.dev/change-cause";

/// Brings the history up to date with the current template; returns the
/// current revision number.
fn record_revision(d: &Deployment, status: &mut DeploymentStatus, hash: &str) -> u64 {
    let newest = status.history.iter().map(|h| h.revision).max().unwrap_or(0);
    let revision = match status.history.iter_mut().find(|h| h.template_hash == hash) {
        Some(h) if h.revision == newest => newest,
        Some(h) => {
            // Rolling back to an older template makes it the newest revision.
            h.revision = newest + 1;
            h.created = now_timestamp();
            newest + 1
        }
        None => {
            status.history.push(DeploymentRevision {
                revision: newest + 1,
                template_hash: hash.to_string(),
                template: d.spec.template.clone(),
                change_cause: d
                    .metadata
                    .annotations
                    .get(ANNOTATION_CHANGE_CAUSE)
                    .cloned()
                    .unwrap_or_default(),
                created: now_timestamp(),
            });
            newest + 1
        }
    };
    status.history.sort_by_key(|h| h.revision);
    let keep = d.spec.revision_history_limit as usize + 1;
    if status.history.len() > keep {
        let excess = status.history.len() - keep;
        status.history.drain(..excess);
    }
    revision
}

/// Order in which instances are removed when there are too many: unbound
/// first, then not ready, then from the node holding the most, newest first.
fn removal_order<'a>(mut candidates: Vec<&'a Instance>, all: &[&Instance]) -> Vec<&'a Instance> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for i in all {
        *per_node.entry(i.spec.node_name.as_str()).or_default() += 1;
    }
    candidates.sort_by(|a, b| {
        let key = |i: &Instance| {
            (
                !i.spec.node_name.is_empty(),
                i.is_ready(),
                std::cmp::Reverse(
                    per_node
                        .get(i.spec.node_name.as_str())
                        .copied()
                        .unwrap_or(0),
                ),
                std::cmp::Reverse(i.metadata.creation_timestamp.clone()),
            )
        };
        key(a).cmp(&key(b))
    });
    candidates
}

/// The counts a rollout last showed and since when they stand still: the
/// Deployment controller's own clock for `progressDeadlineSeconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// (replicas, updated, available).
    pub counts: (u32, u32, u32),
    /// When they last changed.
    pub since: Instant,
}

/// What the Deployment controller decides for one Deployment, from the
/// instances it owns (none being deleted), whether its template's module was
/// uploaded, and its progress clock (updated here).
pub fn decide(
    d: &Deployment,
    owned: &[Instance],
    module_known: bool,
    progress: &mut Option<Progress>,
    now: &Now,
) -> Plan {
    let mut plan = Plan::nothing();
    if d.metadata.is_being_deleted() {
        return plan;
    }
    let hash = d.spec.template.template_hash();
    let mut status = d.status.clone();
    let revision = record_revision(d, &mut status, &hash);
    let (finished, live): (Vec<&Instance>, Vec<&Instance>) =
        owned.iter().partition(|i| is_terminal(i));
    for i in &finished {
        plan.writes.push(Write::DeleteInstance((*i).clone()));
    }
    let (new, old): (Vec<&Instance>, Vec<&Instance>) = live
        .iter()
        .partition(|i| i.metadata.labels.get(LABEL_TEMPLATE_HASH) == Some(&hash));
    let min_ready = d.spec.min_ready_seconds;
    let available_now = |i: &Instance| is_available(i, min_ready, now.wall);
    let want = d.spec.replicas as usize;
    let rolling = &d.spec.strategy.rolling_update;
    let surge = rolling.max_surge.resolve(d.spec.replicas, true) as usize;
    let mut max_unavailable = rolling.max_unavailable.resolve(d.spec.replicas, false) as usize;
    if surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let min_available = want.saturating_sub(max_unavailable);
    let prefix = format!("{}-{hash}", d.metadata.name);

    let mut created = Vec::new();
    let mut deleted = Vec::new();
    let mut delete = |plan: &mut Plan, i: &Instance| {
        plan.writes.push(Write::DeleteInstance(i.clone()));
        deleted.push(i.metadata.name.clone());
    };
    if !d.spec.paused {
        let recreate = d.spec.strategy.type_ == DeploymentStrategyType::Recreate;
        let mut to_create = if old.is_empty() {
            want.saturating_sub(new.len())
        } else if recreate {
            for i in &old {
                delete(&mut plan, i);
            }
            0
        } else {
            let total = new.len() + old.len();
            let room = (want + surge).saturating_sub(total);
            want.saturating_sub(new.len()).min(room)
        };
        if to_create > 0 && !module_known {
            let why = module_missing(
                Kind::Deployment,
                &d.metadata.name,
                &d.spec.template.spec.module,
            );
            plan.writes.push(Write::event(
                Kind::Deployment,
                &d.metadata,
                EventType::Warning,
                "FailedCreate",
                why.clone(),
            ));
            plan.blocked = Some(why);
            to_create = 0;
        }
        for _ in 0..to_create {
            let instance = new_instance(
                Kind::Deployment,
                &d.metadata,
                &d.spec.template,
                &prefix,
                None,
            );
            created.push(instance.metadata.name.clone());
            plan.writes.push(Write::CreateInstance(instance));
        }
        if new.len() > want {
            for i in removal_order(new.clone(), &live)
                .into_iter()
                .take(new.len() - want)
            {
                delete(&mut plan, i);
            }
        }
        if !old.is_empty() && !recreate {
            // Kubernetes' rule: never scale old instances down so far that fewer
            // than minAvailable remain, counting new ones not yet available as
            // unavailable.
            let total = new.len() + old.len();
            let new_unavailable = new.iter().filter(|i| !available_now(i)).count();
            let mut budget = total
                .saturating_sub(min_available)
                .saturating_sub(new_unavailable);
            let (old_available, old_unavailable): (Vec<&Instance>, Vec<&Instance>) =
                old.iter().partition(|i| available_now(i));
            for i in removal_order(old_unavailable, &live) {
                if budget == 0 {
                    break;
                }
                delete(&mut plan, i);
                budget -= 1;
            }
            let available = live.iter().filter(|i| available_now(i)).count();
            let mut spare = available.saturating_sub(min_available).min(budget);
            for i in removal_order(old_available, &live) {
                if spare == 0 {
                    break;
                }
                delete(&mut plan, i);
                spare -= 1;
            }
        }
    }
    if !created.is_empty() {
        let message = format!(
            "created {} instance(s) of revision {revision}: {}",
            created.len(),
            created.join(", ")
        );
        plan.writes.push(Write::event(
            Kind::Deployment,
            &d.metadata,
            EventType::Normal,
            "ScalingUp",
            message,
        ));
    }
    if !deleted.is_empty() {
        let message = format!(
            "deleted {} instance(s): {}",
            deleted.len(),
            deleted.join(", ")
        );
        plan.writes.push(Write::event(
            Kind::Deployment,
            &d.metadata,
            EventType::Normal,
            "ScalingDown",
            message,
        ));
    }

    let remaining: Vec<&&Instance> = live
        .iter()
        .filter(|i| !deleted.contains(&i.metadata.name))
        .collect();
    let updated = remaining
        .iter()
        .filter(|i| i.metadata.labels.get(LABEL_TEMPLATE_HASH) == Some(&hash))
        .count()
        + created.len();
    let ready = remaining.iter().filter(|i| i.is_ready()).count();
    let available = remaining.iter().filter(|i| available_now(i)).count();
    status.observed_generation = d.metadata.generation;
    status.replicas = (remaining.len() + created.len()) as u32;
    status.updated_replicas = updated as u32;
    status.ready_replicas = ready as u32;
    status.available_replicas = available as u32;
    status.unavailable_replicas = want.saturating_sub(available) as u32;
    status.revision = revision;
    let name = &d.metadata.name;
    set_condition(
        &mut status.conditions,
        if available >= min_available {
            Condition::new(
                CONDITION_AVAILABLE,
                ConditionStatus::True,
                "MinimumReplicasAvailable",
                &format!(
                    "{available} of {want} instances available (at least {min_available} required)"
                ),
            )
        } else {
            Condition::new(
                CONDITION_AVAILABLE,
                ConditionStatus::False,
                "MinimumReplicasUnavailable",
                &format!("{available} of {want} instances available, {min_available} required"),
            )
        },
    );
    let complete = updated == want && status.replicas as usize == want && available == want;
    let counts = (
        status.replicas,
        status.updated_replicas,
        status.available_replicas,
    );
    let clock = progress.get_or_insert(Progress {
        counts,
        since: now.mono,
    });
    if clock.counts != counts || complete || d.spec.paused {
        *clock = Progress {
            counts,
            since: now.mono,
        };
    }
    let stalled_for = now.mono.saturating_duration_since(clock.since);
    let deadline = Duration::from_secs(u64::from(d.spec.progress_deadline_seconds));
    let progressing = if d.spec.paused {
        Condition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::Unknown,
            "DeploymentPaused",
            "rollouts are paused",
        )
    } else if complete {
        Condition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::True,
            "NewRevisionAvailable",
            &format!("deployment \"{name}\" has successfully progressed to revision {revision}"),
        )
    } else if stalled_for > deadline {
        Condition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::False,
            "ProgressDeadlineExceeded",
            &format!(
                "deployment \"{name}\" has not progressed for {}s: {updated} of {want} updated, {available} available",
                d.spec.progress_deadline_seconds
            ),
        )
    } else {
        // Looked at again when the deadline would pass.
        plan.action = plan.action.sooner(Action::requeue(
            deadline - stalled_for + Duration::from_millis(10),
        ));
        Condition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::True,
            "RevisionUpdating",
            &format!("deployment \"{name}\" is progressing to revision {revision}"),
        )
    };
    let deadline_newly_passed = progressing.reason == "ProgressDeadlineExceeded"
        && !status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_PROGRESSING && c.reason == "ProgressDeadlineExceeded");
    set_condition(&mut status.conditions, progressing);
    if deadline_newly_passed {
        plan.writes.push(Write::event(
            Kind::Deployment,
            &d.metadata,
            EventType::Warning,
            "ProgressDeadlineExceeded",
            format!(
                "revision {revision} made no progress for {}s",
                d.spec.progress_deadline_seconds
            ),
        ));
    }
    // An instance that will count as available once minReadySeconds pass
    // changes the counts without any change to watch.
    for i in &remaining {
        plan.action = plan.action.sooner(Action::requeue_after(until_available(
            i, min_ready, now.wall,
        )));
    }
    if status != d.status {
        let mut next = d.clone();
        next.status = status;
        plan.writes.push(Write::Status(Object::Deployment(next)));
    }
    plan
}

/// The Deployment controller.
#[derive(Default)]
pub struct Deployments {
    /// Progress clocks, per Deployment uid.
    progress: Mutex<HashMap<String, Progress>>,
}

impl Reconciler for Deployments {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn triggers(&self, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef> {
        triggers::owner_or_self(Kind::Deployment, change, cache)
    }

    fn all_keys(&self, cache: &Cache) -> Vec<ObjectRef> {
        triggers::all(Kind::Deployment, cache)
    }

    async fn reconcile(&self, key: &ObjectRef, ctx: &Ctx) -> Result<Action, ReconcileError> {
        let Some(Object::Deployment(d)) =
            ctx.cache.get(Kind::Deployment, &key.namespace, &key.name)
        else {
            return Ok(Action::await_change());
        };
        let owned: Vec<Instance> = ctx
            .cache
            .owned_by(&d.metadata.uid)
            .into_iter()
            .filter(|i| !i.metadata.is_being_deleted())
            .collect();
        let module_known = module_uploaded(&ctx.cache, &d.spec.template.spec.module);
        let plan = {
            let mut clocks = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            let mut progress = clocks.get(&d.metadata.uid).copied();
            let plan = decide(&d, &owned, module_known, &mut progress, &Now::read());
            if let Some(p) = progress {
                clocks.insert(d.metadata.uid.clone(), p);
            }
            plan
        };
        execute(ctx, plan).await
    }
}

//! Deployments: keep `replicas` instances of the current template, replacing
//! instances of older templates within maxSurge / maxUnavailable, counting only
//! instances that are Ready (for minReadySeconds) as available. Instances are
//! owned by the Deployment directly; the template hash label tells revisions
//! apart, and `status.history` keeps old templates for `rollout undo`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flotilla_api::deployment::{
    Deployment, DeploymentRevision, DeploymentStatus, DeploymentStrategyType, CONDITION_AVAILABLE,
    CONDITION_PROGRESSING, LABEL_TEMPLATE_HASH,
};
use flotilla_api::event::EventType;
use flotilla_api::instance::Instance;
use flotilla_api::meta::{now_timestamp, set_condition, Condition, ConditionStatus};
use flotilla_api::object::{Kind, Object};
use flotilla_client::ClientError;

use super::{is_available, is_terminal, Ctx, Snapshot};

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

pub(super) async fn reconcile(
    ctx: &Ctx,
    snap: &Snapshot,
    d: &Deployment,
) -> Result<(), ClientError> {
    if d.metadata.is_being_deleted() {
        return Ok(());
    }
    let hash = d.spec.template.template_hash();
    let mut status = d.status.clone();
    let revision = record_revision(d, &mut status, &hash);
    let owned = snap.owned(&d.metadata.uid);
    let (finished, live): (Vec<&Instance>, Vec<&Instance>) =
        owned.iter().partition(|i| is_terminal(i));
    for i in &finished {
        ctx.delete_instance(i).await?;
    }
    let (new, old): (Vec<&Instance>, Vec<&Instance>) = live
        .iter()
        .partition(|i| i.metadata.labels.get(LABEL_TEMPLATE_HASH) == Some(&hash));
    let min_ready = d.spec.min_ready_seconds;
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
    if !d.spec.paused {
        let recreate = d.spec.strategy.type_ == DeploymentStrategyType::Recreate;
        let to_create = if old.is_empty() {
            want.saturating_sub(new.len())
        } else if recreate {
            for i in &old {
                ctx.delete_instance(i).await?;
                deleted.push(i.metadata.name.clone());
            }
            0
        } else {
            let total = new.len() + old.len();
            let room = (want + surge).saturating_sub(total);
            want.saturating_sub(new.len()).min(room)
        };
        for _ in 0..to_create {
            let name = ctx
                .create_instance(
                    Kind::Deployment,
                    &d.metadata,
                    &d.spec.template,
                    &prefix,
                    None,
                )
                .await?;
            created.push(name);
        }
        if new.len() > want {
            for i in removal_order(new.clone(), &live)
                .into_iter()
                .take(new.len() - want)
            {
                ctx.delete_instance(i).await?;
                deleted.push(i.metadata.name.clone());
            }
        }
        if !old.is_empty() && !recreate {
            // Kubernetes' rule: never scale old instances down so far that fewer
            // than minAvailable remain, counting new ones not yet available as
            // unavailable.
            let total = new.len() + old.len();
            let new_unavailable = new.iter().filter(|i| !is_available(i, min_ready)).count();
            let mut budget = total
                .saturating_sub(min_available)
                .saturating_sub(new_unavailable);
            let (old_available, old_unavailable): (Vec<&Instance>, Vec<&Instance>) =
                old.iter().partition(|i| is_available(i, min_ready));
            for i in removal_order(old_unavailable, &live) {
                if budget == 0 {
                    break;
                }
                ctx.delete_instance(i).await?;
                deleted.push(i.metadata.name.clone());
                budget -= 1;
            }
            let available = live.iter().filter(|i| is_available(i, min_ready)).count();
            let mut spare = available.saturating_sub(min_available).min(budget);
            for i in removal_order(old_available, &live) {
                if spare == 0 {
                    break;
                }
                ctx.delete_instance(i).await?;
                deleted.push(i.metadata.name.clone());
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
        ctx.event(
            Kind::Deployment,
            &d.metadata,
            EventType::Normal,
            "ScalingUp",
            &message,
        )
        .await;
    }
    if !deleted.is_empty() {
        let message = format!(
            "deleted {} instance(s): {}",
            deleted.len(),
            deleted.join(", ")
        );
        ctx.event(
            Kind::Deployment,
            &d.metadata,
            EventType::Normal,
            "ScalingDown",
            &message,
        )
        .await;
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
    let available = remaining
        .iter()
        .filter(|i| is_available(i, min_ready))
        .count();
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
    let stalled_for = {
        let mut memory = ctx.memory.lock().unwrap_or_else(|p| p.into_inner());
        let entry = memory
            .progress
            .entry(d.metadata.uid.clone())
            .or_insert((counts, Instant::now()));
        if entry.0 != counts || complete || d.spec.paused {
            *entry = (counts, Instant::now());
        }
        entry.1.elapsed()
    };
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
    } else if stalled_for > Duration::from_secs(u64::from(d.spec.progress_deadline_seconds)) {
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
        ctx.event(
            Kind::Deployment,
            &d.metadata,
            EventType::Warning,
            "ProgressDeadlineExceeded",
            &format!(
                "revision {revision} made no progress for {}s",
                d.spec.progress_deadline_seconds
            ),
        )
        .await;
    }
    if status != d.status {
        let mut next = d.clone();
        next.status = status;
        ctx.write_status(Object::Deployment(next)).await?;
    }
    Ok(())
}

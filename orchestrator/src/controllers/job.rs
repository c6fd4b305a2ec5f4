//! Jobs: run instances until `completions` of them succeed, at most
//! `parallelism` at a time; fail the Job when more than `backoffLimit` fail or
//! when it runs past `activeDeadlineSeconds`; delete it `ttlSecondsAfterFinished`
//! after it ends.
//!
//! Keyed by Job; a change of the Job, of an instance it owns, or of the
//! Module it names concerns it.

use std::time::Duration;

use flotilla_api::event::EventType;
use flotilla_api::instance::{Instance, InstancePhase};
use flotilla_api::job::{Job, CONDITION_COMPLETE, CONDITION_FAILED};
use flotilla_api::meta::{
    elapsed_since, format_timestamp, set_condition, Condition, ConditionStatus,
};
use flotilla_api::object::{Kind, Object};

use super::runtime::{Action, Ctx, ObjectRef, ReconcileError, Reconciler};
use super::triggers;
use super::writes::{execute, module_missing, module_uploaded, new_instance, Plan, Write};
use super::Now;
use crate::informer::{Cache, CacheChange};

/// What the Job controller decides for one Job, from the instances it owns
/// (none being deleted) and whether its template's module was uploaded.
pub fn decide(job: &Job, owned: &[Instance], module_known: bool, now: &Now) -> Plan {
    let mut plan = Plan::nothing();
    if job.metadata.is_being_deleted() {
        return plan;
    }
    let now_text = format_timestamp(now.wall);
    let active: Vec<&Instance> = owned
        .iter()
        .filter(|i| {
            !matches!(
                i.status.phase,
                InstancePhase::Succeeded | InstancePhase::Failed
            )
        })
        .collect();
    let succeeded = owned
        .iter()
        .filter(|i| i.status.phase == InstancePhase::Succeeded)
        .count() as u32;
    let failed = owned
        .iter()
        .filter(|i| i.status.phase == InstancePhase::Failed)
        .count() as u32;
    let mut status = job.status.clone();
    status.observed_generation = job.metadata.generation;
    status.succeeded = succeeded;
    status.failed = failed;
    if status.start_time.is_empty() {
        status.start_time = now_text.clone();
    }

    if job.is_finished() {
        for i in &active {
            plan.writes.push(Write::DeleteInstance((*i).clone()));
        }
        status.active = 0;
        if let Some(ttl) = job.spec.ttl_seconds_after_finished {
            let ttl = Duration::from_secs(u64::from(ttl));
            let done_for = elapsed_since(&job.status.completion_time, now.wall).unwrap_or_default();
            if done_for >= ttl {
                plan.writes.push(Write::Delete(Object::Job(job.clone())));
                return plan;
            }
            plan.action = Action::requeue(ttl - done_for);
        }
    } else {
        let running_for = elapsed_since(&status.start_time, now.wall).unwrap_or_default();
        let deadline = job.spec.active_deadline_seconds.map(Duration::from_secs);
        let outcome = if failed > job.spec.backoff_limit {
            Some((
                CONDITION_FAILED,
                "BackoffLimitExceeded",
                format!(
                    "{failed} instance(s) failed, more than the backoff limit of {}",
                    job.spec.backoff_limit
                ),
            ))
        } else if deadline.is_some_and(|d| running_for >= d) {
            Some((
                CONDITION_FAILED,
                "DeadlineExceeded",
                format!(
                    "the job was active longer than its deadline of {}s",
                    job.spec.active_deadline_seconds.unwrap_or_default()
                ),
            ))
        } else if succeeded >= job.spec.completions {
            Some((
                CONDITION_COMPLETE,
                "Completed",
                format!(
                    "{succeeded} of {} completions succeeded",
                    job.spec.completions
                ),
            ))
        } else {
            None
        };
        match outcome {
            Some((condition, reason, message)) => {
                for i in &active {
                    plan.writes.push(Write::DeleteInstance((*i).clone()));
                }
                status.active = 0;
                status.completion_time = now_text;
                set_condition(
                    &mut status.conditions,
                    Condition::new(condition, ConditionStatus::True, reason, &message),
                );
                let type_ = if condition == CONDITION_FAILED {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                plan.writes.push(Write::event(
                    Kind::Job,
                    &job.metadata,
                    type_,
                    reason,
                    message,
                ));
                if let Some(ttl) = job.spec.ttl_seconds_after_finished {
                    plan.action = Action::requeue(Duration::from_secs(u64::from(ttl)));
                }
            }
            None => {
                if let Some(d) = deadline {
                    plan.action = Action::requeue(d.saturating_sub(running_for));
                }
                let remaining = job.spec.completions - succeeded;
                let want = job.spec.parallelism.min(remaining) as usize;
                let template = &job.spec.template;
                let mut created = Vec::new();
                if active.len() < want && !module_known {
                    let why = module_missing(Kind::Job, &job.metadata.name, &template.spec.module);
                    plan.writes.push(Write::event(
                        Kind::Job,
                        &job.metadata,
                        EventType::Warning,
                        "FailedCreate",
                        why.clone(),
                    ));
                    plan.blocked = Some(why);
                } else {
                    for _ in active.len()..want {
                        let instance = new_instance(
                            Kind::Job,
                            &job.metadata,
                            template,
                            &job.metadata.name,
                            None,
                        );
                        created.push(instance.metadata.name.clone());
                        plan.writes.push(Write::CreateInstance(instance));
                    }
                }
                status.active = (active.len() + created.len()) as u32;
                if !created.is_empty() {
                    plan.writes.push(Write::event(
                        Kind::Job,
                        &job.metadata,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("created {}", created.join(", ")),
                    ));
                }
            }
        }
    }
    if status != job.status {
        let mut next = job.clone();
        next.status = status;
        plan.writes.push(Write::Status(Object::Job(next)));
    }
    plan
}

/// The Job controller.
pub struct Jobs;

impl Reconciler for Jobs {
    fn name(&self) -> &'static str {
        "job"
    }

    fn triggers(&self, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef> {
        triggers::owner_or_self(Kind::Job, change, cache)
    }

    fn all_keys(&self, cache: &Cache) -> Vec<ObjectRef> {
        triggers::all(Kind::Job, cache)
    }

    async fn reconcile(&self, key: &ObjectRef, ctx: &Ctx) -> Result<Action, ReconcileError> {
        let Some(Object::Job(job)) = ctx.cache.get(Kind::Job, &key.namespace, &key.name) else {
            return Ok(Action::await_change());
        };
        let owned: Vec<Instance> = ctx
            .cache
            .owned_by(&job.metadata.uid)
            .into_iter()
            .filter(|i| !i.metadata.is_being_deleted())
            .collect();
        let module_known = module_uploaded(&ctx.cache, &job.spec.template.spec.module);
        execute(ctx, decide(&job, &owned, module_known, &Now::read())).await
    }
}

//! Jobs: run instances until `completions` of them succeed, at most
//! `parallelism` at a time; fail the Job when more than `backoffLimit` fail or
//! when it runs past `activeDeadlineSeconds`; delete it `ttlSecondsAfterFinished`
//! after it ends.

use std::time::Duration;

use flotilla_api::event::EventType;
use flotilla_api::instance::InstancePhase;
use flotilla_api::job::{Job, CONDITION_COMPLETE, CONDITION_FAILED};
use flotilla_api::meta::{elapsed_since, now_timestamp, set_condition, Condition, ConditionStatus};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ErrorCode, Propagation};
use flotilla_client::ClientError;

use super::{Ctx, Snapshot};

pub(super) async fn reconcile(ctx: &Ctx, snap: &Snapshot, job: &Job) -> Result<(), ClientError> {
    if job.metadata.is_being_deleted() {
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc();
    let owned = snap.owned(&job.metadata.uid);
    let active: Vec<_> = owned
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
        status.start_time = now_timestamp();
    }

    if job.is_finished() {
        for i in &active {
            ctx.delete_instance(i).await?;
        }
        status.active = 0;
        if let Some(ttl) = job.spec.ttl_seconds_after_finished {
            let done_for = elapsed_since(&job.status.completion_time, now).unwrap_or_default();
            if done_for >= Duration::from_secs(u64::from(ttl)) {
                match ctx
                    .client
                    .delete(
                        Kind::Job,
                        &job.metadata.namespace,
                        &job.metadata.name,
                        Propagation::Background,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
                    Err(e) => return Err(e),
                }
                ctx.cache.removed(&Object::Job(job.clone()));
                return Ok(());
            }
        }
    } else {
        let running_for = elapsed_since(&status.start_time, now).unwrap_or_default();
        let outcome = if failed > job.spec.backoff_limit {
            Some((
                CONDITION_FAILED,
                "BackoffLimitExceeded",
                format!(
                    "{failed} instance(s) failed, more than the backoff limit of {}",
                    job.spec.backoff_limit
                ),
            ))
        } else if job
            .spec
            .active_deadline_seconds
            .is_some_and(|s| running_for >= Duration::from_secs(s))
        {
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
                    ctx.delete_instance(i).await?;
                }
                status.active = 0;
                status.completion_time = now_timestamp();
                set_condition(
                    &mut status.conditions,
                    Condition::new(condition, ConditionStatus::True, reason, &message),
                );
                let type_ = if condition == CONDITION_FAILED {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                ctx.event(Kind::Job, &job.metadata, type_, reason, &message)
                    .await;
            }
            None => {
                let remaining = job.spec.completions - succeeded;
                let want = job.spec.parallelism.min(remaining) as usize;
                let template = &job.spec.template;
                let mut created = Vec::new();
                for _ in active.len()..want {
                    created.push(
                        ctx.create_instance(
                            Kind::Job,
                            &job.metadata,
                            template,
                            &job.metadata.name,
                            None,
                        )
                        .await?,
                    );
                }
                status.active = (active.len() + created.len()) as u32;
                if !created.is_empty() {
                    ctx.event(
                        Kind::Job,
                        &job.metadata,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("created {}", created.join(", ")),
                    )
                    .await;
                }
            }
        }
    }
    if status != job.status {
        let mut next = job.clone();
        next.status = status;
        ctx.write_status(Object::Job(next)).await?;
    }
    Ok(())
}

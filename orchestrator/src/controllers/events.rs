//! Events expire: one last seen longer than `--event-ttl` ago (default one
//! hour, as Kubernetes' `--event-ttl`) is deleted, so a long-running cluster
//! does not keep every event it ever recorded. A sweep lists the events at
//! most every minute (every quarter of the TTL when that is shorter).

use std::time::{Duration, Instant};

use flotilla_api::meta::parse_timestamp;
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ErrorCode, RequestV1};
use flotilla_client::ClientError;

use super::Ctx;

/// Longest time between two sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most events one sweep deletes: the rest wait for the next sweep, so a
/// large backlog (the first sweep of a long-running cluster) does not hold
/// up the other controllers, which run in the same pass.
const DELETES_PER_SWEEP: usize = 500;

pub(super) async fn expire(ctx: &Ctx) -> Result<(), ClientError> {
    let ttl = ctx.settings.event_ttl;
    let every = SWEEP_EVERY.min(ttl / 4).max(Duration::from_millis(100));
    {
        let mut memory = ctx.memory.lock().unwrap_or_else(|p| p.into_inner());
        if memory
            .last_event_sweep
            .is_some_and(|at| at.elapsed() < every)
        {
            return Ok(());
        }
        memory.last_event_sweep = Some(Instant::now());
    }
    let (events, _) = ctx.client.list(Kind::Event, None, "").await?;
    let now = time::OffsetDateTime::now_utc();
    let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::MAX);
    let mut deleted_here = 0;
    for object in events {
        if deleted_here >= DELETES_PER_SWEEP {
            break;
        }
        let Object::Event(event) = object else {
            continue;
        };
        let last_seen = [
            &event.last_timestamp,
            &event.first_timestamp,
            &event.metadata.creation_timestamp,
        ]
        .into_iter()
        .find_map(|t| parse_timestamp(t));
        if last_seen.is_none_or(|t| now - t < ttl) {
            continue;
        }
        // At the version read: an event repeated since (its count raised)
        // is fresh again and stays.
        let deleted = ctx
            .client
            .call(RequestV1::Delete {
                kind: Kind::Event,
                namespace: event.metadata.namespace.clone(),
                name: event.metadata.name.clone(),
                resource_version: event.metadata.resource_version.clone(),
                propagation: Default::default(),
            })
            .await;
        match deleted {
            Ok(_) => deleted_here += 1,
            Err(e) if matches!(e.code(), Some(ErrorCode::NotFound | ErrorCode::Conflict)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

//! Events expire: one last seen longer than `--event-ttl` ago (default one
//! hour, as Kubernetes' `--event-ttl`) is deleted, so a long-running cluster
//! does not keep every event it ever recorded. Events are not cached: a
//! sweep lists them a page at a time, at most every minute (every quarter of the TTL when that
//! is shorter). One key, requeued after each sweep.

use std::time::Duration;

use flotilla_api::event::Event;
use flotilla_api::meta::parse_timestamp;
use flotilla_api::object::{Kind, Object};
use flotilla_client::{ListQuery, LIST_PAGE};

use super::runtime::{Action, Ctx, ObjectRef, ReconcileError, Reconciler};
use super::writes::{execute, Plan, Write};
use crate::informer::{Cache, CacheChange};

/// Longest time between two sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most events one sweep deletes: the rest wait for the next sweep, so a
/// large backlog (the first sweep of a long-running cluster) is taken in
/// steps.
const DELETES_PER_SWEEP: usize = 500;

/// How often the events are swept for a TTL of `ttl`.
pub fn sweep_every(ttl: Duration) -> Duration {
    SWEEP_EVERY.min(ttl / 4).max(Duration::from_millis(100))
}

/// What a sweep deletes of `events`: those last seen more than `ttl` before
/// `now`, at the version listed (an event repeated since is fresh again and
/// stays), at most [`DELETES_PER_SWEEP`].
pub fn decide(events: Vec<Event>, ttl: Duration, now: time::OffsetDateTime) -> Plan {
    let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::MAX);
    let mut plan = Plan::nothing();
    for event in events {
        if plan.writes.len() >= DELETES_PER_SWEEP {
            break;
        }
        let last_seen = [
            &event.last_timestamp,
            &event.first_timestamp,
            &event.metadata.creation_timestamp,
        ]
        .into_iter()
        .find_map(|t| parse_timestamp(t));
        if last_seen.is_some_and(|t| now - t >= ttl) {
            plan.writes.push(Write::Delete(Object::Event(event)));
        }
    }
    plan
}

/// The event sweeper.
pub struct EventExpiry;

/// The sweeper's one key.
fn sweep_key() -> ObjectRef {
    ObjectRef::new(Kind::Event, "", "")
}

impl Reconciler for EventExpiry {
    fn name(&self) -> &'static str {
        "event-expiry"
    }

    fn triggers(&self, _change: &CacheChange, _cache: &Cache) -> Vec<ObjectRef> {
        Vec::new()
    }

    fn all_keys(&self, _cache: &Cache) -> Vec<ObjectRef> {
        vec![sweep_key()]
    }

    async fn reconcile(&self, _key: &ObjectRef, ctx: &Ctx) -> Result<Action, ReconcileError> {
        let ttl = ctx.settings.event_ttl;
        let now = time::OffsetDateTime::now_utc();
        // A page at a time: a cluster's events can be more than one answer
        // carries, and a sweep needs only the first expired ones.
        let query = ListQuery::all(Kind::Event);
        let mut plan = Plan::nothing();
        let mut continue_token = String::new();
        loop {
            let page = ctx
                .client
                .list_page(&query, LIST_PAGE, &continue_token)
                .await?;
            let events = page
                .items
                .into_iter()
                .filter_map(|o| match o {
                    Object::Event(e) => Some(e),
                    _ => None,
                })
                .collect();
            let room = DELETES_PER_SWEEP - plan.writes.len();
            let found = decide(events, ttl, now).writes;
            plan.writes.extend(found.into_iter().take(room));
            if page.continue_token.is_empty() || plan.writes.len() >= DELETES_PER_SWEEP {
                break;
            }
            continue_token = page.continue_token;
        }
        plan.action = Action::requeue(sweep_every(ttl));
        execute(ctx, plan).await
    }
}

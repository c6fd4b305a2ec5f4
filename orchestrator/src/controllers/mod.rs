//! The controller manager (kube-controller-manager's analogue): Deployments,
//! DaemonSets, Jobs, node lifecycle, Endpoints, garbage collection and event
//! expiry, each a [`runtime::Reconciler`] on one controller runtime. They
//! share one cache of the cluster (an informer) and one link to the
//! apiserver, and each writes through the API like any outside client.
//!
//! Each controller is a pure decision (`decide`: a snapshot of one key's
//! world in, a [`writes::Plan`] of writes out, unit-tested as a table) and a
//! reconcile that gathers the snapshot, decides, and makes the writes. The
//! runtime triggers a key when a watched change concerns it and when a clock
//! it asked for runs out; one key's lasting failure is retried with its own
//! backoff and holds up nothing else.
//!
//! Must never: place instances (the scheduler binds; only DaemonSets name their
//! node, as the one node they are for), or run anything.

mod daemonset;
mod deployment;
mod endpoints;
mod events;
mod gc;
mod job;
mod node_lifecycle;
pub mod runtime;
mod triggers;
pub mod writes;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use flotilla_api::instance::{Instance, InstancePhase, CONDITION_READY};
use flotilla_api::meta::{elapsed_since, find_condition};
use flotilla_api::object::Kind;
use flotilla_client::{Link, SharedClientConfig};

use crate::events::Recorder;
use crate::informer::{self, Cache};

pub use runtime::{Action, ControllerMetrics, ObjectRef, ReconcileError, Reconciler};

/// Timing of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A node whose lease is not renewed for this long becomes NotReady.
    pub node_grace_period: Duration,
    /// How long instances stay on an unreachable node without a toleration
    /// that says otherwise.
    pub default_toleration: Duration,
    /// Events last seen longer ago than this are deleted.
    pub event_ttl: Duration,
}

/// The annotation on the controllers' lease that publishes their node grace
/// period, so that `flotilla doctor` can compare it with the nodes' lease
/// intervals.
pub const NODE_GRACE_ANNOTATION: &str = "flotilla.dev/node-grace-period";

impl Settings {
    /// `election` publishing these settings on the lease while it leads.
    pub fn published_on(&self, election: crate::leader::Election) -> crate::leader::Election {
        election.with_annotation(
            NODE_GRACE_ANNOTATION,
            flotilla_api::duration::Duration::from_std(self.node_grace_period).to_string(),
        )
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_grace_period: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
            event_ttl: Duration::from_secs(3600),
        }
    }
}

/// The two clocks a decision reads: the wall clock (timestamps in objects)
/// and the monotonic one (the controllers' own timers).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Wall-clock time.
    pub wall: time::OffsetDateTime,
    /// Monotonic time.
    pub mono: Instant,
}

impl Now {
    /// Both clocks as they are.
    pub fn read() -> Self {
        Self {
            wall: time::OffsetDateTime::now_utc(),
            mono: Instant::now(),
        }
    }
}

/// How long an instance has been Ready at `now`, if it is.
fn ready_for(i: &Instance, now: time::OffsetDateTime) -> Option<Duration> {
    if !i.is_ready() {
        return None;
    }
    find_condition(&i.status.conditions, CONDITION_READY)
        .and_then(|c| elapsed_since(&c.last_transition_time, now))
}

/// True when the instance is Ready and has been for `min_ready_seconds`.
fn is_available(i: &Instance, min_ready_seconds: u32, now: time::OffsetDateTime) -> bool {
    if !i.is_ready() {
        return false;
    }
    if min_ready_seconds == 0 {
        return true;
    }
    ready_for(i, now).is_some_and(|d| d >= Duration::from_secs(u64::from(min_ready_seconds)))
}

/// How long until a Ready instance counts as available, when it does not yet.
fn until_available(
    i: &Instance,
    min_ready_seconds: u32,
    now: time::OffsetDateTime,
) -> Option<Duration> {
    if min_ready_seconds == 0 {
        return None;
    }
    let min = Duration::from_secs(u64::from(min_ready_seconds));
    let ready = ready_for(i, now)?;
    (ready < min).then(|| min - ready + Duration::from_millis(10))
}

fn is_terminal(i: &Instance) -> bool {
    matches!(
        i.status.phase,
        InstancePhase::Succeeded | InstancePhase::Failed
    )
}

/// The kinds the controllers read.
const WATCHED: &[Kind] = &[
    Kind::Node,
    Kind::Lease,
    Kind::Instance,
    Kind::Deployment,
    Kind::DaemonSet,
    Kind::Job,
    Kind::Service,
    Kind::Endpoints,
    Kind::Module,
];

/// Runs the controllers until the future is dropped, through any number of
/// breaks of the link to the apiserver.
pub async fn run(
    config: impl Into<SharedClientConfig>,
    settings: Settings,
    metrics: ControllerMetrics,
) {
    let link = Arc::new(Link::new(config, Duration::from_secs(2)));
    let cache = Cache::new();
    let (synced_tx, mut synced) = watch::channel(false);
    let fill = informer::run(link.clone(), WATCHED, cache.clone(), synced_tx);
    let shared = runtime::Shared {
        cache: cache.clone(),
        link,
        recorder: Arc::new(Recorder::new("controller-manager")),
        settings,
        metrics,
    };
    let work = async {
        if synced.wait_for(|s| *s).await.is_err() {
            return;
        }
        tokio::join!(
            runtime::run(deployment::Deployments::default(), shared.clone()),
            runtime::run(daemonset::DaemonSets, shared.clone()),
            runtime::run(job::Jobs, shared.clone()),
            runtime::run(node_lifecycle::NodeLifecycle::default(), shared.clone()),
            runtime::run(endpoints::EndpointsController, shared.clone()),
            runtime::run(gc::GarbageCollector, shared.clone()),
            runtime::run(events::EventExpiry, shared.clone()),
        );
    };
    tokio::select! {
        () = fill => {}
        () = work => {}
    }
}

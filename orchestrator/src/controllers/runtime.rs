//! The controller runtime, in kube-runtime's shape: a [`Reconciler`] names
//! the keys a cache change concerns ([`Reconciler::triggers`]) and brings one
//! key's world closer to what it asks for ([`Reconciler::reconcile`]); the
//! runtime keeps a work queue of keys and runs them.
//!
//! What the runtime guarantees a reconciler:
//! - a key is queued once however often it is triggered (de-duplication);
//! - at most one reconcile of a key runs at a time; a key triggered while it
//!   runs is run again once it ends, from the newer state;
//! - a failed reconcile is retried after a per-key exponential backoff
//!   ([`Reconciler::error_policy`]), which a success resets; a failing key
//!   never holds up another key or another controller;
//! - [`Action::requeue`] brings a key back after a time (for what depends on
//!   clocks: lease ages, deadlines, minReadySeconds); [`Action::await_change`]
//!   leaves it until a change concerns it.
//!
//! What a reconciler must guarantee the runtime:
//! - reconcile is idempotent: run twice on the same state, the second run
//!   writes nothing;
//! - it is safe to cancel at any await (the runtime drops it when the
//!   controller manager stops leading): every write is one API call that
//!   either happened or not, and the next run decides from what is there;
//! - it decides from the cache (what the key's snapshot says), never from
//!   memory of an earlier run beyond clocks it keeps itself.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio::time::Instant;

use flotilla_client::{Client, ClientError, Link};
use flotilla_telemetry::{Counter, Family, Histogram, Registry};

use super::Settings;
use crate::events::Recorder;
use flotilla_api::object::{Kind, Object};

use crate::informer::{Cache, CacheChange};

/// What a controller's work queue holds: one object, by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// The namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectRef {
    /// The object `kind` named `namespace`/`name`.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of `object`.
    pub fn of(object: &Object) -> Self {
        Self::new(object.kind(), &object.meta().namespace, &object.meta().name)
    }
}

type Key = ObjectRef;

/// What to do with a key after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run it again after this long, unless a change brings it back sooner.
    Requeue(Duration),
    /// Leave it until a change concerns it.
    AwaitChange,
}

impl Action {
    /// Run again after `after`.
    pub fn requeue(after: Duration) -> Self {
        Action::Requeue(after)
    }

    /// Wait for a change.
    pub fn await_change() -> Self {
        Action::AwaitChange
    }

    /// The sooner of two actions.
    pub fn sooner(self, other: Action) -> Action {
        match (self, other) {
            (Action::Requeue(a), Action::Requeue(b)) => Action::Requeue(a.min(b)),
            (Action::Requeue(a), Action::AwaitChange)
            | (Action::AwaitChange, Action::Requeue(a)) => Action::Requeue(a),
            (Action::AwaitChange, Action::AwaitChange) => Action::AwaitChange,
        }
    }

    /// Requeue after `after` when it is `Some`.
    pub fn requeue_after(after: Option<Duration>) -> Self {
        after.map_or(Action::AwaitChange, Action::Requeue)
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A write or read through the API failed.
    #[error("{0}")]
    Api(#[from] ClientError),
    /// What the object asks for cannot be done yet, for a reason outside this
    /// controller (a module not uploaded).
    #[error("{0}")]
    Blocked(String),
}

/// What a reconcile works with.
pub struct Ctx {
    /// The API, for writes and the few reads the cache cannot answer.
    pub client: Client,
    /// The shared cache: what the reconcile decides from.
    pub cache: Arc<Cache>,
    /// Events, signed with the controller manager's name.
    pub recorder: Arc<Recorder>,
    /// Timing.
    pub settings: Settings,
}

/// One controller.
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name: its metrics label.
    fn name(&self) -> &'static str;

    /// The keys a change in the cache concerns: the object itself, its
    /// owners, the parents whose selector matches it, or whatever else this
    /// controller decides from.
    fn triggers(&self, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef>;

    /// Every key there is (at start, and when changes were lost).
    fn all_keys(&self, cache: &Cache) -> Vec<ObjectRef>;

    /// Brings the world of `key` closer to what it asks for; the key's
    /// object may be gone.
    fn reconcile(
        &self,
        key: &ObjectRef,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send;

    /// What to do after `reconcile` failed for the `failures`-th time in a
    /// row: by default, try again after 200 ms doubling to 30 s.
    fn error_policy(&self, key: &ObjectRef, error: &ReconcileError, failures: u32) -> Action {
        tracing::debug!(controller = self.name(), ?key, %error, failures, "reconcile failed");
        Action::requeue(backoff(failures))
    }
}

/// The per-key retry delay after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    (Duration::from_millis(200) * 2u32.pow(exp)).min(Duration::from_secs(30))
}

/// The controllers' metrics; clones share them.
#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: Family<[(&'static str, &'static str); 2], Counter>,
    all: Family<[(&'static str, &'static str); 1], Counter>,
    latency: Histogram,
}

impl ControllerMetrics {
    /// Registers the controllers' metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            all: Family::default(),
            latency: Histogram::latency(),
        };
        registry.register(
            "flotilla_controller_reconciles",
            "Reconciles of one key, by controller and result (ok; error: it is retried after a backoff)",
            m.reconciles.clone(),
        );
        registry.register(
            "flotilla_controllers_passes",
            "Reconciles of every controller together, by result (ok, error); per controller in flotilla_controller_reconciles",
            m.all.clone(),
        );
        registry.register(
            "flotilla_controller_reconcile_duration_seconds",
            "Time of one reconcile, writes included",
            m.latency.clone(),
        );
        m
    }

    fn observe(&self, controller: &'static str, ok: bool, started: Instant) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&[("controller", controller), ("result", result)])
            .inc();
        self.all.get_or_create(&[("result", result)]).inc();
        self.latency.observe(started.elapsed().as_secs_f64());
    }
}

/// The work queue of one controller.
#[derive(Default)]
struct Queue {
    /// Keys to run now, oldest first.
    ready: VecDeque<Key>,
    /// Keys in `ready` or `delayed`.
    queued: HashSet<Key>,
    /// Keys to run later, by when (and a sequence number for ties).
    delayed: BTreeMap<(Instant, u64), Key>,
    /// When each delayed key is due.
    due: HashMap<Key, (Instant, u64)>,
    /// Keys being reconciled.
    running: HashSet<Key>,
    /// Running keys that were triggered again.
    rerun: HashSet<Key>,
    /// Failures in a row, per key.
    failures: HashMap<Key, u32>,
    seq: u64,
}

impl Queue {
    /// Queues `key` to run now.
    fn push(&mut self, key: Key) {
        if self.running.contains(&key) {
            self.rerun.insert(key);
            return;
        }
        if let Some(at) = self.due.remove(&key) {
            self.delayed.remove(&at);
            self.queued.remove(&key);
        }
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// Queues `key` to run after `after`, unless it is due sooner already.
    fn push_after(&mut self, key: Key, after: Duration) {
        let at = Instant::now() + after;
        if self.running.contains(&key) {
            return;
        }
        if let Some(&(current, seq)) = self.due.get(&key) {
            if current <= at {
                return;
            }
            self.delayed.remove(&(current, seq));
        } else if self.queued.contains(&key) {
            return;
        }
        self.seq += 1;
        self.delayed.insert((at, self.seq), key.clone());
        self.due.insert(key.clone(), (at, self.seq));
        self.queued.insert(key);
    }

    /// Moves what is due to `ready`; returns when the next delayed key is due.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(at, seq), _)) = self.delayed.first_key_value() {
            if at > now {
                return Some(at);
            }
            if let Some(key) = self.delayed.remove(&(at, seq)) {
                self.due.remove(&key);
                self.ready.push_back(key);
            }
        }
        None
    }

    /// The next key to run, marked running.
    fn take(&mut self) -> Option<Key> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// A reconcile of `key` ended with `action`.
    fn finish(&mut self, key: Key, action: Action) {
        self.running.remove(&key);
        if self.rerun.remove(&key) {
            self.push(key);
            return;
        }
        if let Action::Requeue(after) = action {
            self.push_after(key, after);
        }
    }
}

/// What every controller of a manager shares.
#[derive(Clone)]
pub struct Shared {
    /// The cache they decide from.
    pub cache: Arc<Cache>,
    /// The link they write through.
    pub link: Arc<Link>,
    /// Their events.
    pub recorder: Arc<Recorder>,
    /// Timing.
    pub settings: Settings,
    /// Their metrics.
    pub metrics: ControllerMetrics,
}

/// How many reconciles of one controller run at once.
const CONCURRENCY: usize = 4;

/// Runs `reconciler` for as long as the future lives: every key once at
/// start, then whatever the cache's changes trigger and the clocks it asked
/// for. Reconciles write through the shared link; while it has no
/// connection, keys wait and are tried again soon.
pub async fn run<R: Reconciler>(reconciler: R, shared: Shared) {
    let reconciler = Arc::new(reconciler);
    let Shared {
        cache,
        link,
        recorder,
        settings,
        metrics,
    } = shared;
    let mut changes = cache.changes();
    let mut queue = Queue::default();
    for key in reconciler.all_keys(&cache) {
        queue.push(key);
    }
    let mut running: JoinSet<(Key, Option<Result<Action, ReconcileError>>)> = JoinSet::new();
    loop {
        let next_due = queue.promote(Instant::now());
        while running.len() < CONCURRENCY {
            let Some(key) = queue.take() else { break };
            let reconciler = reconciler.clone();
            let cache = cache.clone();
            let link = link.clone();
            let recorder = recorder.clone();
            let settings = settings.clone();
            let metrics = metrics.clone();
            running.spawn(async move {
                let Some(client) = link.client().await else {
                    return (key, None);
                };
                let ctx = Ctx {
                    client: client.clone(),
                    cache,
                    recorder,
                    settings,
                };
                let started = Instant::now();
                let result = reconciler.reconcile(&key, &ctx).await;
                metrics.observe(reconciler.name(), result.is_ok(), started);
                if let Err(ReconcileError::Api(e)) = &result {
                    if e.code().is_none() {
                        link.reset_if(&client).await;
                    }
                }
                (key, Some(result))
            });
        }
        let wake = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => {
                    for key in reconciler.triggers(&change, &cache) {
                        queue.push(key);
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    for key in reconciler.all_keys(&cache) {
                        queue.push(key);
                    }
                }
                Err(RecvError::Closed) => return,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((key, result)) = done else { continue };
                let action = match result {
                    // No connection: try again soon, without counting a failure.
                    None => Action::requeue(Duration::from_millis(500)),
                    Some(Ok(action)) => {
                        queue.failures.remove(&key);
                        action
                    }
                    Some(Err(e)) => {
                        let failures = queue.failures.entry(key.clone()).or_default();
                        *failures += 1;
                        reconciler.error_policy(&key, &e, *failures)
                    }
                };
                queue.finish(key, action);
            }
            () = wake => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> Key {
        ObjectRef::new(Kind::Deployment, "default", n)
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_runs_a_key_once_at_a_time_and_again_when_triggered_meanwhile() {
        let mut q = Queue::default();
        q.push(key("a"));
        q.push(key("a"));
        q.push(key("b"));
        assert_eq!(q.take(), Some(key("a")));
        assert_eq!(q.take(), Some(key("b")));
        assert_eq!(q.take(), None, "de-duplicated");
        // Triggered while running: not run twice at once, but once more after.
        q.push(key("a"));
        assert_eq!(q.take(), None);
        q.finish(key("a"), Action::await_change());
        assert_eq!(q.take(), Some(key("a")));
        q.finish(key("a"), Action::await_change());
        q.finish(key("b"), Action::await_change());
        assert_eq!(q.take(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn requeues_wait_their_time_and_a_trigger_brings_them_forward() {
        let mut q = Queue::default();
        q.push(key("a"));
        let a = q.take().unwrap();
        q.finish(a, Action::requeue(Duration::from_secs(10)));
        assert_eq!(
            q.promote(Instant::now()),
            Some(Instant::now() + Duration::from_secs(10))
        );
        assert_eq!(q.take(), None);
        // A sooner requeue wins, a later one does not.
        q.push_after(key("a"), Duration::from_secs(20));
        q.push_after(key("a"), Duration::from_secs(5));
        assert_eq!(
            q.promote(Instant::now()),
            Some(Instant::now() + Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        q.promote(Instant::now());
        assert_eq!(q.take(), Some(key("a")));
        q.finish(key("a"), Action::requeue(Duration::from_secs(60)));
        // A change does not wait for the requeue.
        q.push(key("a"));
        assert_eq!(q.take(), Some(key("a")));
        assert!(q.delayed.is_empty() && q.due.is_empty());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(4), Duration::from_millis(1600));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}

//! The scheduler: places unbound instances on nodes. It reads a snapshot of
//! nodes and instances, runs each unbound instance through a list of filters
//! and one scorer, and binds the winner through the API with compare-and-swap
//! (a lost race is simply retried on the next pass). An instance that fits
//! nowhere gets `Scheduled=False` with the reasons per node, Kubernetes style.
//!
//! Must never: start or watch workloads, or write anything but an instance's
//! `spec.nodeName` and its Scheduled condition. It is a client of the API like
//! any outside process.
//!
//! In files: [`snapshot`] (the world a pass sees), [`filters`] (node
//! readiness and cordon, resources: cpu, memory, instance slots against
//! allocatable minus what is bound; nodeSelector and required node affinity,
//! taints and tolerations, required inter-instance affinity and anti-affinity
//! by topology key), [`scorers`] (least allocated, spread of one controller's
//! instances over nodes, preferred node and inter-instance affinity, module
//! locality, in a weighted table), and [`pipeline`] (the two composed for one
//! instance). Priorities and preemption are not built.
//!
//! It decides from a [`Cache`] of nodes and instances and binds many instances
//! at once; leader election among several schedulers is the caller's
//! ([`crate::leader`]).

mod filters;
mod pipeline;
mod scorers;
mod snapshot;

pub use filters::Unfit;
pub use pipeline::Placement;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use flotilla_api::event::EventType;
use flotilla_api::instance::CONDITION_SCHEDULED;
use flotilla_api::meta::{set_condition, Condition, ConditionStatus};
use flotilla_api::node::Node;
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::ErrorCode;
use flotilla_client::{Client, ClientError, Link, SharedClientConfig};
use flotilla_telemetry::{Counter, Family, Gauge, Histogram, Registry};

use crate::events::Recorder;
use crate::informer::{self, Cache};
use pipeline::place_scanning;
use snapshot::{occupies, World};

type ResultLabel = [(&'static str, &'static str); 1];

/// The scheduler's metrics; clones share them.
#[derive(Clone)]
pub struct SchedulerMetrics {
    pending: Gauge,
    attempts: Family<ResultLabel, Counter>,
    bindings: Family<ResultLabel, Counter>,
    binding_latency: Histogram,
    pass_latency: Histogram,
}

impl SchedulerMetrics {
    /// Registers the scheduler's metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let m = Self {
            pending: Gauge::default(),
            attempts: Family::default(),
            bindings: Family::default(),
            binding_latency: Histogram::latency(),
            pass_latency: Histogram::latency(),
        };
        registry.register(
            "flotilla_scheduler_pending_instances",
            "Unbound instances waiting for a node, as the active scheduler last saw them",
            m.pending.clone(),
        );
        registry.register(
            "flotilla_scheduler_schedule_attempts",
            "Placements tried, by result (scheduled, unschedulable); an instance that fits nowhere is tried again every pass",
            m.attempts.clone(),
        );
        registry.register(
            "flotilla_scheduler_bindings",
            "Binding writes, by result (bound; conflict: the instance changed or went first; error)",
            m.bindings.clone(),
        );
        registry.register(
            "flotilla_scheduler_binding_duration_seconds",
            "Time to write one binding through the API",
            m.binding_latency.clone(),
        );
        registry.register(
            "flotilla_scheduler_pass_duration_seconds",
            "Time of one scheduling pass over every unbound instance, binds included",
            m.pass_latency.clone(),
        );
        m
    }
}

/// Binds taking at most this many writes in flight.
const BINDS_IN_FLIGHT: usize = 128;

struct Scheduler {
    cache: Arc<Cache>,
    recorder: Arc<Recorder>,
    metrics: SchedulerMetrics,
}

impl Scheduler {
    /// One pass: place every unbound instance. Returns how many were bound.
    async fn pass(&self, client: &Client) -> Result<usize, ClientError> {
        let nodes: Vec<Node> = self
            .cache
            .list(Kind::Node)
            .into_iter()
            .filter_map(|o| match o {
                Object::Node(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut world = World::new(nodes);
        let mut unbound = Vec::new();
        for o in self.cache.list(Kind::Instance) {
            let Object::Instance(i) = o else { continue };
            if occupies(&i) {
                let node = i.spec.node_name.clone();
                world.add(i, &node);
            } else if i.spec.node_name.is_empty() && !i.metadata.is_being_deleted() {
                unbound.push(i);
            }
        }
        unbound.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        let started = Instant::now();
        let waiting = unbound.len();
        self.metrics.pending.set(waiting as i64);
        let mut writes: JoinSet<Result<bool, ClientError>> = JoinSet::new();
        let mut bound = 0;
        for mut i in unbound {
            while writes.len() >= BINDS_IN_FLIGHT {
                if let Some(r) = writes.join_next().await {
                    bound += usize::from(r.unwrap_or(Ok(false))?);
                }
            }
            let (placement, examined) = place_scanning(&i, &world);
            match placement {
                Placement::Node(name) => {
                    self.metrics
                        .attempts
                        .get_or_create(&[("result", "scheduled")])
                        .inc();
                    world.start = (world.start + examined) % world.nodes.len().max(1);
                    i.bind_to(&name);
                    world.add(i.clone(), &name);
                    let client = client.clone();
                    let cache = self.cache.clone();
                    let metrics = self.metrics.clone();
                    writes.spawn(async move {
                        let started = Instant::now();
                        let meta = &i.metadata;
                        let written = client
                            .bind(&meta.namespace, &meta.name, &name, &meta.resource_version)
                            .await;
                        metrics.binding_latency.observe_since(started);
                        let (result, outcome) = match written {
                            Ok(resource_version) => {
                                // As stored; the watch brings the same at this revision.
                                i.metadata.resource_version = resource_version;
                                cache.wrote(Object::Instance(i));
                                ("bound", Ok(true))
                            }
                            Err(e)
                                if matches!(
                                    e.code(),
                                    Some(ErrorCode::Conflict | ErrorCode::NotFound)
                                ) =>
                            {
                                ("conflict", Ok(false))
                            }
                            Err(e) => ("error", Err(e)),
                        };
                        metrics.bindings.get_or_create(&[("result", result)]).inc();
                        outcome
                    });
                }
                Placement::Unschedulable(message) => {
                    self.metrics
                        .attempts
                        .get_or_create(&[("result", "unschedulable")])
                        .inc();
                    let changed = set_condition(
                        &mut i.status.conditions,
                        Condition::new(
                            CONDITION_SCHEDULED,
                            ConditionStatus::False,
                            "Unschedulable",
                            &message,
                        ),
                    );
                    if changed {
                        let client = client.clone();
                        let cache = self.cache.clone();
                        let recorder = self.recorder.clone();
                        writes.spawn(async move {
                            recorder
                                .record(
                                    &client,
                                    Kind::Instance,
                                    &i.metadata,
                                    EventType::Warning,
                                    "FailedScheduling",
                                    &message,
                                )
                                .await;
                            let mut o = Object::Instance(i);
                            o.meta_mut().resource_version.clear();
                            match client.update_status(o).await {
                                Ok(o) => cache.wrote(o),
                                Err(e) if e.code().is_some() => {}
                                Err(e) => return Err(e),
                            }
                            Ok(false)
                        });
                    }
                }
            }
        }
        while let Some(r) = writes.join_next().await {
            bound += usize::from(r.unwrap_or(Ok(false))?);
        }
        self.metrics
            .pending
            .set(waiting.saturating_sub(bound) as i64);
        self.metrics.pass_latency.observe_since(started);
        Ok(bound)
    }
}

/// Runs until the task is dropped: a pass whenever nodes or instances change,
/// and every few seconds regardless (which is the retry of what did not fit).
pub async fn run(config: impl Into<SharedClientConfig>, metrics: SchedulerMetrics) {
    let link = Arc::new(Link::new(config, Duration::from_secs(2)));
    let cache = Cache::new();
    let (synced_tx, mut synced) = watch::channel(false);
    let scheduler = Scheduler {
        cache: cache.clone(),
        recorder: Arc::new(Recorder::new("scheduler")),
        metrics,
    };
    let fill = informer::run(
        link.clone(),
        &[Kind::Node, Kind::Instance],
        cache.clone(),
        synced_tx,
    );
    let work = async {
        if synced.wait_for(|s| *s).await.is_err() {
            return;
        }
        let mut changes = cache.subscribe();
        loop {
            if let Some(client) = link.client().await {
                if let Err(e) = scheduler.pass(&client).await {
                    tracing::debug!(error = %e, "scheduler pass failed");
                    if e.code().is_none() {
                        link.reset_if(&client).await;
                    }
                }
            }
            informer::changed_or_tick(
                &mut changes,
                Duration::from_secs(5),
                Duration::from_millis(5),
            )
            .await;
        }
    };
    tokio::select! {
        () = fill => {}
        () = work => {}
    }
}

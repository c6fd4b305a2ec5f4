//! The controller manager (kube-controller-manager's analogue): Deployments,
//! DaemonSets, Jobs, node lifecycle, Endpoints and garbage collection. Each controller
//! compares what is asked with what is, from the shared [`Cache`], and writes
//! the difference through the API, like any outside client.
//!
//! Must never: place instances (the scheduler binds; only DaemonSets name their
//! node, as the one node they are for), or run anything.
//!
//! Passes are level-triggered: after any change in the cache, and on a short
//! tick for what depends on time (lease ages, deadlines, toleration seconds).

mod daemonset;
mod deployment;
mod endpoints;
mod events;
mod gc;
mod job;
mod node_lifecycle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

use flotilla_api::daemonset::DaemonSet;
use flotilla_api::deployment::{Deployment, LABEL_TEMPLATE_HASH};
use flotilla_api::endpoints::Endpoints;
use flotilla_api::event::EventType;
use flotilla_api::instance::{Instance, InstancePhase, InstanceTemplate, CONDITION_READY};
use flotilla_api::job::Job;
use flotilla_api::lease::{Lease, NODE_LEASE_NAMESPACE};
use flotilla_api::meta::{elapsed_since, find_condition, ObjectMeta, OwnerReference};
use flotilla_api::node::Node;
use flotilla_api::object::{Kind, Object};
use flotilla_api::service::Service;
use flotilla_client::wire::{ErrorCode, Propagation};
use flotilla_client::{Client, ClientError, SharedClientConfig};
use flotilla_telemetry::{Counter, Family, Histogram, Registry};

use crate::events::Recorder;
use crate::informer::{self, Cache};

/// Timing of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A node whose lease is not renewed for this long becomes NotReady.
    pub node_grace_period: Duration,
    /// How long instances stay on an unreachable node without a toleration
    /// that says otherwise.
    pub default_toleration: Duration,
    /// Period of time-driven passes.
    pub tick: Duration,
    /// Events last seen longer ago than this are deleted.
    pub event_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_grace_period: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
            tick: Duration::from_millis(500),
            event_ttl: Duration::from_secs(3600),
        }
    }
}

/// The controller manager's metrics; clones share them.
#[derive(Clone)]
pub struct ControllerMetrics {
    passes: Family<[(&'static str, &'static str); 1], Counter>,
    pass_latency: Histogram,
}

impl ControllerMetrics {
    /// Registers the controllers' metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let m = Self {
            passes: Family::default(),
            pass_latency: Histogram::latency(),
        };
        registry.register(
            "flotilla_controllers_passes",
            "Passes of every controller over one snapshot, by result (ok, error: a write failed and the pass ended early)",
            m.passes.clone(),
        );
        registry.register(
            "flotilla_controllers_pass_duration_seconds",
            "Time of one pass of every controller, writes included",
            m.pass_latency.clone(),
        );
        m
    }
}

/// What every controller shares in a pass.
pub struct Ctx {
    client: Client,
    cache: Arc<Cache>,
    recorder: Recorder,
    settings: Settings,
    memory: Mutex<Memory>,
}

/// What controllers remember between passes (and lose on restart, which only
/// restarts their clocks).
#[derive(Default)]
struct Memory {
    /// Per node: the lease renewal last seen and when it was first seen.
    leases: HashMap<String, (String, std::time::Instant)>,
    /// Per deployment uid: the counts last seen and when they last changed.
    progress: HashMap<String, ((u32, u32, u32), std::time::Instant)>,
    /// When expired events were last looked for.
    last_event_sweep: Option<std::time::Instant>,
}

/// The cache's content at the start of a pass, typed.
pub struct Snapshot {
    deployments: Vec<Deployment>,
    daemonsets: Vec<DaemonSet>,
    jobs: Vec<Job>,
    instances: Vec<Instance>,
    nodes: Vec<Node>,
    node_leases: HashMap<String, Lease>,
    services: Vec<Service>,
    endpoints: Vec<Endpoints>,
    by_owner: HashMap<String, Vec<usize>>,
}

impl Snapshot {
    fn take(cache: &Cache) -> Self {
        let typed = |kind| cache.list(kind).into_iter();
        let deployments = typed(Kind::Deployment)
            .filter_map(|o| match o {
                Object::Deployment(d) => Some(d),
                _ => None,
            })
            .collect();
        let daemonsets = typed(Kind::DaemonSet)
            .filter_map(|o| match o {
                Object::DaemonSet(d) => Some(d),
                _ => None,
            })
            .collect();
        let jobs = typed(Kind::Job)
            .filter_map(|o| match o {
                Object::Job(j) => Some(j),
                _ => None,
            })
            .collect();
        let instances: Vec<Instance> = typed(Kind::Instance)
            .filter_map(|o| match o {
                Object::Instance(i) => Some(i),
                _ => None,
            })
            .collect();
        let nodes = typed(Kind::Node)
            .filter_map(|o| match o {
                Object::Node(n) => Some(n),
                _ => None,
            })
            .collect();
        let node_leases = typed(Kind::Lease)
            .filter_map(|o| match o {
                Object::Lease(l) if l.metadata.namespace == NODE_LEASE_NAMESPACE => {
                    Some((l.metadata.name.clone(), l))
                }
                _ => None,
            })
            .collect();
        let services = typed(Kind::Service)
            .filter_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            })
            .collect();
        let endpoints = typed(Kind::Endpoints)
            .filter_map(|o| match o {
                Object::Endpoints(e) => Some(e),
                _ => None,
            })
            .collect();
        let mut by_owner: HashMap<String, Vec<usize>> = HashMap::new();
        for (n, i) in instances.iter().enumerate() {
            for r in &i.metadata.owner_references {
                by_owner.entry(r.uid.clone()).or_default().push(n);
            }
        }
        Self {
            deployments,
            daemonsets,
            jobs,
            instances,
            nodes,
            node_leases,
            services,
            endpoints,
            by_owner,
        }
    }

    /// Instances owned by the object with this uid, not being deleted.
    fn owned(&self, uid: &str) -> Vec<&Instance> {
        self.by_owner
            .get(uid)
            .map(|v| {
                v.iter()
                    .map(|&n| &self.instances[n])
                    .filter(|i| !i.metadata.is_being_deleted())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// True when the instance is Ready and has been for `min_ready_seconds`.
fn is_available(i: &Instance, min_ready_seconds: u32) -> bool {
    if !i.is_ready() {
        return false;
    }
    if min_ready_seconds == 0 {
        return true;
    }
    find_condition(&i.status.conditions, CONDITION_READY)
        .and_then(|c| elapsed_since(&c.last_transition_time, time::OffsetDateTime::now_utc()))
        .is_some_and(|d| d >= Duration::from_secs(u64::from(min_ready_seconds)))
}

fn is_terminal(i: &Instance) -> bool {
    matches!(
        i.status.phase,
        InstancePhase::Succeeded | InstancePhase::Failed
    )
}

fn owner_ref(kind: Kind, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: flotilla_api::object::API_VERSION.to_string(),
        kind: kind.as_str().to_string(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: true,
        block_owner_deletion: true,
    }
}

/// A new instance name `<prefix>-<5 random>`, at most 63 characters.
fn instance_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    let prefix: String = prefix.chars().take(57).collect();
    format!("{}-{suffix}", prefix.trim_end_matches('-'))
}

impl Ctx {
    /// Creates an instance from `template` owned by the object (`kind`, `owner`).
    async fn create_instance(
        &self,
        kind: Kind,
        owner: &ObjectMeta,
        template: &InstanceTemplate,
        name_prefix: &str,
        node_name: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut meta = ObjectMeta::new(&owner.namespace, &instance_name(name_prefix));
        meta.labels = template.metadata.labels.clone();
        meta.labels
            .insert(LABEL_TEMPLATE_HASH.to_string(), template.template_hash());
        meta.annotations = template.metadata.annotations.clone();
        meta.owner_references = vec![owner_ref(kind, owner)];
        let mut spec = template.spec.clone();
        if let Some(node) = node_name {
            spec.node_name = node.to_string();
        }
        let instance = Instance {
            metadata: meta,
            spec,
            status: Default::default(),
        };
        let created = self.client.create(Object::Instance(instance)).await?;
        let name = created.meta().name.clone();
        self.cache.wrote(created);
        Ok(name)
    }

    /// Deletes an instance; one already gone counts as deleted.
    async fn delete_instance(&self, i: &Instance) -> Result<(), ClientError> {
        match self
            .client
            .delete(
                Kind::Instance,
                &i.metadata.namespace,
                &i.metadata.name,
                Propagation::Background,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
            Err(e) => return Err(e),
        }
        self.cache.removed(&Object::Instance(i.clone()));
        Ok(())
    }

    /// Writes a status; a conflict or a vanished object is left to the next pass.
    async fn write_status(&self, mut object: Object) -> Result<(), ClientError> {
        object.meta_mut().resource_version.clear();
        match self.client.update_status(object).await {
            Ok(o) => {
                self.cache.wrote(o);
                Ok(())
            }
            Err(e) if matches!(e.code(), Some(ErrorCode::NotFound | ErrorCode::Conflict)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes spec and metadata with compare-and-swap on the version held.
    async fn write(&self, object: Object) -> Result<(), ClientError> {
        match self.client.update(object).await {
            Ok(o) => {
                self.cache.wrote(o);
                Ok(())
            }
            Err(e) if matches!(e.code(), Some(ErrorCode::NotFound | ErrorCode::Conflict)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn event(
        &self,
        kind: Kind,
        about: &ObjectMeta,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        self.recorder
            .record(&self.client, kind, about, type_, reason, message)
            .await;
    }
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
];

/// Runs the controllers until the task is dropped, reconnecting after any break.
pub async fn run(
    config: impl Into<SharedClientConfig>,
    settings: Settings,
    metrics: ControllerMetrics,
) {
    let config = config.into();
    let memory = Arc::new(Mutex::new(Memory::default()));
    loop {
        let client = match Client::connect(&config.get()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "controllers cannot reach the apiserver");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let cache = Cache::new();
        let (synced_tx, mut synced) = watch::channel(false);
        let ctx = Ctx {
            client: client.clone(),
            cache: cache.clone(),
            recorder: Recorder::new("controller-manager"),
            settings: settings.clone(),
            memory: Mutex::new(std::mem::take(
                &mut *memory.lock().unwrap_or_else(|p| p.into_inner()),
            )),
        };
        let fill = informer::run(&client, WATCHED, &cache, &synced_tx);
        let work = async {
            if synced.wait_for(|s| *s).await.is_err() {
                return;
            }
            let mut changes = cache.subscribe();
            loop {
                let started = Instant::now();
                let passed = pass(&ctx).await;
                metrics.pass_latency.observe_since(started);
                let result = if passed.is_ok() { "ok" } else { "error" };
                metrics.passes.get_or_create(&[("result", result)]).inc();
                if let Err(e) = passed {
                    tracing::debug!(error = %e, "controller pass failed");
                    if e.code().is_none() {
                        return;
                    }
                }
                informer::changed_or_tick(
                    &mut changes,
                    ctx.settings.tick,
                    Duration::from_millis(10),
                )
                .await;
            }
        };
        tokio::select! {
            r = fill => if let Err(e) = r { tracing::debug!(error = %e, "controller cache lost its watch") },
            () = work => {}
        }
        *memory.lock().unwrap_or_else(|p| p.into_inner()) =
            std::mem::take(&mut *ctx.memory.lock().unwrap_or_else(|p| p.into_inner()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pass of every controller over one snapshot.
async fn pass(ctx: &Ctx) -> Result<(), ClientError> {
    let snap = Snapshot::take(&ctx.cache);
    node_lifecycle::reconcile(ctx, &snap).await?;
    for d in &snap.deployments {
        deployment::reconcile(ctx, &snap, d).await?;
    }
    for d in &snap.daemonsets {
        daemonset::reconcile(ctx, &snap, d).await?;
    }
    for j in &snap.jobs {
        job::reconcile(ctx, &snap, j).await?;
    }
    endpoints::reconcile(ctx, &snap).await?;
    gc::reconcile(ctx, &snap).await?;
    events::expire(ctx).await?;
    Ok(())
}

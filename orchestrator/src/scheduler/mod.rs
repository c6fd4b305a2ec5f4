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
//! Filters: node readiness and cordon, resources (cpu, memory, instance slots
//! against allocatable minus what is bound), nodeSelector and required node
//! affinity, taints and tolerations, required inter-instance affinity and
//! anti-affinity by topology key. Scores: least allocated, spread of one
//! controller's instances over nodes, preferred node and inter-instance
//! affinity, module locality. Priorities and preemption are not built.
//!
//! It decides from a [`Cache`] of nodes and instances and binds many instances
//! at once; leader election among several schedulers is the caller's
//! ([`crate::leader`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use flotilla_api::event::EventType;
use flotilla_api::instance::{Instance, InstanceAffinityTerm, InstancePhase, CONDITION_SCHEDULED};
use flotilla_api::meta::{set_condition, Condition, ConditionStatus};
use flotilla_api::node::{Node, TaintEffect};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::ErrorCode;
use flotilla_client::{Client, ClientError, SharedClientConfig};
use flotilla_telemetry::{Counter, Family, Gauge, Histogram, Registry};

use crate::events::Recorder;
use crate::informer::{self, Cache};

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

/// Why a node was filtered out, for the "0/N nodes are available" message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    /// The node is not Ready.
    NotReady,
    /// Cordoned.
    Unschedulable,
    /// nodeSelector or required node affinity does not match.
    Selector,
    /// Required inter-instance affinity has no match in the node's domain.
    Affinity,
    /// Required inter-instance anti-affinity matches in the node's domain.
    AntiAffinity,
    /// A taint the instance does not tolerate.
    Taint(String),
    /// Not enough cpu.
    Cpu,
    /// Not enough memory.
    Memory,
    /// No free instance slot.
    Slots,
}

impl Unfit {
    fn describe(&self, count: usize) -> String {
        let nodes = if count == 1 { "node" } else { "nodes" };
        match self {
            Unfit::NotReady => format!("{count} {nodes} not ready"),
            Unfit::Unschedulable => format!("{count} {nodes} unschedulable"),
            Unfit::Selector => {
                format!("{count} {nodes} didn't match the node selector or affinity")
            }
            Unfit::Affinity => format!("{count} {nodes} didn't match instance affinity rules"),
            Unfit::AntiAffinity => {
                format!("{count} {nodes} didn't match instance anti-affinity rules")
            }
            Unfit::Taint(t) => format!("{count} {nodes} had untolerated taint {{{t}}}"),
            Unfit::Cpu => format!("{count} insufficient cpu"),
            Unfit::Memory => format!("{count} insufficient memory"),
            Unfit::Slots => format!("{count} too many instances"),
        }
    }
}

/// What is already placed on a node.
#[derive(Default, Clone, Copy, Debug)]
struct Usage {
    cpu_millis: u64,
    memory: u64,
    instances: u32,
}

fn requests(i: &Instance) -> (u64, u64) {
    (i.spec.cpu_request_millis(), i.spec.memory_request_bytes())
}

fn occupies(i: &Instance) -> bool {
    !i.spec.node_name.is_empty()
        && !matches!(
            i.status.phase,
            InstancePhase::Succeeded | InstancePhase::Failed
        )
}

/// A bound instance's namespace and labels.
type Placed = (String, BTreeMap<String, String>);

/// The cluster as one pass sees it, updated as the pass places instances.
/// Nodes are addressed by their position in `nodes`.
#[derive(Default)]
struct World {
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    ready: Vec<bool>,
    usage: Vec<Usage>,
    /// Per controller uid: instances per node.
    spread: HashMap<String, Vec<u32>>,
    /// Bound instances' namespace and labels, per node.
    placed: Vec<Vec<Placed>>,
    /// Where the next placement starts looking, so that a partial scan of a
    /// large cluster does not always favour the first nodes.
    start: usize,
}

impl World {
    fn new(nodes: Vec<Node>) -> Self {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(n, node)| (node.metadata.name.clone(), n))
            .collect();
        Self {
            ready: nodes.iter().map(Node::is_ready).collect(),
            usage: vec![Usage::default(); nodes.len()],
            placed: vec![Vec::new(); nodes.len()],
            index,
            nodes,
            ..Self::default()
        }
    }

    /// Counts a bound instance against its node (one unknown to this pass is
    /// ignored).
    fn add(&mut self, i: Instance, node: &str) {
        let Some(&n) = self.index.get(node) else {
            return;
        };
        let (cpu, mem) = requests(&i);
        let u = &mut self.usage[n];
        u.cpu_millis += cpu;
        u.memory += mem;
        u.instances += 1;
        if let Some(owner) = i.metadata.controller_ref() {
            let count = self.nodes.len();
            self.spread
                .entry(owner.uid.clone())
                .or_insert_with(|| vec![0; count])[n] += 1;
        }
        self.placed[n].push((i.metadata.namespace, i.metadata.labels));
    }

    /// Topology values (of `term.topology_key`) of nodes running an instance
    /// that matches the term.
    fn domains_matching(&self, i: &Instance, term: &InstanceAffinityTerm) -> HashSet<String> {
        let namespaces: Vec<&str> = if term.namespaces.is_empty() {
            vec![i.metadata.namespace.as_str()]
        } else {
            term.namespaces.iter().map(String::as_str).collect()
        };
        let mut out = HashSet::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let Some(value) = node.metadata.labels.get(&term.topology_key) else {
                continue;
            };
            let hit = self.placed[n].iter().any(|(ns, labels)| {
                namespaces.contains(&ns.as_str()) && term.label_selector.matches(labels)
            });
            if hit {
                out.insert(value.clone());
            }
        }
        out
    }
}

/// How many feasible nodes are enough to pick from, Kubernetes'
/// percentageOfNodesToScore: all of a small cluster, a shrinking share of a
/// large one, never fewer than 100.
fn enough_feasible(nodes: usize) -> usize {
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(100)
}

/// Per pending instance: the domains its inter-instance terms care about.
struct Terms {
    required: Vec<(String, HashSet<String>)>,
    forbidden: Vec<(String, HashSet<String>)>,
    preferred: Vec<(String, HashSet<String>, i64)>,
    /// The instance matches its own required affinity term (the first of a
    /// group may go anywhere, as in Kubernetes).
    self_affine: bool,
}

impl Terms {
    fn new(i: &Instance, world: &World) -> Self {
        let a = &i.spec.affinity;
        let required = a
            .instance_affinity
            .required_during_scheduling_ignored_during_execution
            .iter()
            .map(|t| (t.topology_key.clone(), world.domains_matching(i, t)))
            .collect::<Vec<_>>();
        let self_affine = required.iter().all(|(_, d)| d.is_empty())
            && a.instance_affinity
                .required_during_scheduling_ignored_during_execution
                .iter()
                .all(|t| t.label_selector.matches(&i.metadata.labels));
        let forbidden = a
            .instance_anti_affinity
            .required_during_scheduling_ignored_during_execution
            .iter()
            .map(|t| (t.topology_key.clone(), world.domains_matching(i, t)))
            .collect();
        let mut preferred: Vec<(String, HashSet<String>, i64)> = a
            .instance_affinity
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .map(|w| {
                let t = &w.instance_affinity_term;
                (
                    t.topology_key.clone(),
                    world.domains_matching(i, t),
                    i64::from(w.weight),
                )
            })
            .collect();
        preferred.extend(
            a.instance_anti_affinity
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .map(|w| {
                    let t = &w.instance_affinity_term;
                    (
                        t.topology_key.clone(),
                        world.domains_matching(i, t),
                        -i64::from(w.weight),
                    )
                }),
        );
        Self {
            required,
            forbidden,
            preferred,
            self_affine,
        }
    }
}

struct Candidate<'a> {
    i: &'a Instance,
    n: &'a Node,
    ready: bool,
    used: Usage,
    terms: &'a Terms,
    /// This instance's controller's instances on this node, and the most on any.
    spread: Option<(u32, u32)>,
}

type Filter = fn(&Candidate) -> Result<(), Unfit>;

fn ready(c: &Candidate) -> Result<(), Unfit> {
    if c.ready {
        Ok(())
    } else {
        Err(Unfit::NotReady)
    }
}

fn schedulable(c: &Candidate) -> Result<(), Unfit> {
    if c.n.spec.unschedulable {
        Err(Unfit::Unschedulable)
    } else {
        Ok(())
    }
}

fn selector(c: &Candidate) -> Result<(), Unfit> {
    if c.i.spec.selects_node(&c.n.metadata.labels) {
        Ok(())
    } else {
        Err(Unfit::Selector)
    }
}

fn taints(c: &Candidate) -> Result<(), Unfit> {
    for taint in &c.n.spec.taints {
        if taint.effect == TaintEffect::PreferNoSchedule {
            continue;
        }
        if !c.i.spec.tolerations.iter().any(|t| t.tolerates(taint)) {
            let text = if taint.value.is_empty() {
                format!("{}:{}", taint.key, taint.effect)
            } else {
                format!("{}={}:{}", taint.key, taint.value, taint.effect)
            };
            return Err(Unfit::Taint(text));
        }
    }
    Ok(())
}

fn resources(c: &Candidate) -> Result<(), Unfit> {
    let (cpu, mem) = requests(c.i);
    let alloc = &c.n.status.allocatable;
    if c.used.instances + 1 > alloc.instances {
        return Err(Unfit::Slots);
    }
    if c.used.cpu_millis + cpu > alloc.cpu.as_millis() {
        return Err(Unfit::Cpu);
    }
    if c.used.memory + mem > alloc.memory.as_bytes() {
        return Err(Unfit::Memory);
    }
    Ok(())
}

fn instance_affinity(c: &Candidate) -> Result<(), Unfit> {
    let labels = &c.n.metadata.labels;
    if !c.terms.self_affine {
        for (key, domains) in &c.terms.required {
            if !labels.get(key).is_some_and(|v| domains.contains(v)) {
                return Err(Unfit::Affinity);
            }
        }
    }
    for (key, domains) in &c.terms.forbidden {
        if labels.get(key).is_some_and(|v| domains.contains(v)) {
            return Err(Unfit::AntiAffinity);
        }
    }
    Ok(())
}

/// The filters, in the order a node is checked (the first failure is its reason).
const FILTERS: &[Filter] = &[
    ready,
    schedulable,
    selector,
    taints,
    resources,
    instance_affinity,
];

/// Weights of the scores; spreading one workload over nodes matters most.
const WEIGHT_LEAST_ALLOCATED: f64 = 1.0;
const WEIGHT_SPREAD: f64 = 2.0;
const WEIGHT_NODE_PREFERENCE: f64 = 1.0;
const WEIGHT_INSTANCE_PREFERENCE: f64 = 1.0;
const WEIGHT_MODULE_LOCALITY: f64 = 0.3;

/// Scores a fitting node, higher is better; each part is 0..=100 before its
/// weight.
fn score(c: &Candidate) -> f64 {
    let (cpu, mem) = requests(c.i);
    let alloc = &c.n.status.allocatable;
    let free = |total: u64, used: u64| {
        if total == 0 {
            0.0
        } else {
            1.0 - (used as f64 / total as f64)
        }
    };
    let least_allocated = 50.0
        * (free(alloc.cpu.as_millis(), c.used.cpu_millis + cpu)
            + free(alloc.memory.as_bytes(), c.used.memory + mem));
    let spread = match c.spread {
        Some((here, max)) if max > 0 => 100.0 * f64::from(max - here.min(max)) / f64::from(max),
        _ => 100.0,
    };
    let labels = &c.n.metadata.labels;
    let prefs =
        &c.i.spec
            .affinity
            .node_affinity
            .preferred_during_scheduling_ignored_during_execution;
    let total: u32 = prefs.iter().map(|p| p.weight).sum();
    let node_preference = if total == 0 {
        0.0
    } else {
        let hit: u32 = prefs
            .iter()
            .filter(|p| p.preference.matches(labels))
            .map(|p| p.weight)
            .sum();
        100.0 * f64::from(hit) / f64::from(total)
    };
    let instance_preference: i64 = c
        .terms
        .preferred
        .iter()
        .filter(|(key, domains, _)| labels.get(key).is_some_and(|v| domains.contains(v)))
        .map(|(_, _, w)| *w)
        .sum();
    let locality = if c.n.status.modules.contains(&c.i.spec.module) {
        100.0
    } else {
        0.0
    };
    WEIGHT_LEAST_ALLOCATED * least_allocated
        + WEIGHT_SPREAD * spread
        + WEIGHT_NODE_PREFERENCE * node_preference
        + WEIGHT_INSTANCE_PREFERENCE * instance_preference as f64
        + WEIGHT_MODULE_LOCALITY * locality
}

/// The decision for one instance.
#[derive(Debug, PartialEq)]
pub enum Placement {
    /// Bind to this node.
    Node(String),
    /// Nowhere: the message says why.
    Unschedulable(String),
}

/// Runs the pipeline for one instance over the world as it stands; also
/// returns how many nodes were examined (the next placement starts after them,
/// as Kubernetes does, so partial scans take turns).
fn place_scanning(i: &Instance, world: &World) -> (Placement, usize) {
    let terms = Terms::new(i, world);
    let spread = i
        .metadata
        .controller_ref()
        .and_then(|r| world.spread.get(&r.uid))
        .map(|per_node| (per_node, per_node.iter().copied().max().unwrap_or(0)));
    let count = world.nodes.len();
    let enough = enough_feasible(count);
    let mut feasible = 0;
    let mut best: Option<(f64, usize)> = None;
    let mut reasons: BTreeMap<Unfit, usize> = BTreeMap::new();
    let mut examined = 0;
    for k in 0..count {
        examined = k + 1;
        let n = (world.start + k) % count;
        let node = &world.nodes[n];
        let c = Candidate {
            i,
            n: node,
            ready: world.ready[n],
            used: world.usage[n],
            terms: &terms,
            spread: spread.map(|(per_node, max)| (per_node[n], max)),
        };
        match FILTERS.iter().try_for_each(|f| f(&c)) {
            Ok(()) => {
                let s = score(&c);
                let better = best.is_none_or(|(b, m)| {
                    s > b || (s == b && node.metadata.name < world.nodes[m].metadata.name)
                });
                if better {
                    best = Some((s, n));
                }
                feasible += 1;
                if feasible >= enough {
                    break;
                }
            }
            Err(why) => *reasons.entry(why).or_default() += 1,
        }
    }
    let placement = match best {
        Some((_, n)) => Placement::Node(world.nodes[n].metadata.name.clone()),
        None => {
            let parts: Vec<String> = reasons.iter().map(|(r, c)| r.describe(*c)).collect();
            let detail = if parts.is_empty() {
                "no nodes registered".to_string()
            } else {
                parts.join(", ")
            };
            Placement::Unschedulable(format!("0/{count} nodes are available: {detail}."))
        }
    };
    (placement, examined)
}

/// Binds taking at most this many writes in flight.
const BINDS_IN_FLIGHT: usize = 128;

struct Scheduler {
    client: Client,
    cache: Arc<Cache>,
    recorder: Arc<Recorder>,
    metrics: SchedulerMetrics,
}

impl Scheduler {
    /// One pass: place every unbound instance. Returns how many were bound.
    async fn pass(&self) -> Result<usize, ClientError> {
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
                    let client = self.client.clone();
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
                        let client = self.client.clone();
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
    let config = config.into();
    let recorder = Arc::new(Recorder::new("scheduler"));
    loop {
        let client = match Client::connect(&config.get()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "scheduler cannot reach the apiserver");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let cache = Cache::new();
        let (synced_tx, mut synced) = watch::channel(false);
        let scheduler = Scheduler {
            client: client.clone(),
            cache: cache.clone(),
            recorder: recorder.clone(),
            metrics: metrics.clone(),
        };
        let fill = informer::run(&client, &[Kind::Node, Kind::Instance], &cache, &synced_tx);
        let work = async {
            if synced.wait_for(|s| *s).await.is_err() {
                return;
            }
            let mut changes = cache.subscribe();
            loop {
                match scheduler.pass().await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "scheduler pass failed");
                        return;
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
            r = fill => if let Err(e) = r { tracing::debug!(error = %e, "scheduler cache lost its watch") },
            () = work => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::manifest::parse_manifests;

    fn place(i: &Instance, world: &World) -> Placement {
        place_scanning(i, world).0
    }

    fn node(name: &str, mem: &str, taints: &str) -> Node {
        let text = format!("apiVersion: flotilla.dev/v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{zone: a}}\nspec:\n  taints: [{taints}]\n");
        let Object::Node(mut n) = parse_manifests(&text).unwrap().remove(0) else {
            unreachable!()
        };
        n.status.allocatable.memory = flotilla_api::quantity::Quantity::parse(mem).unwrap();
        n.status.allocatable.cpu = flotilla_api::quantity::Quantity::parse("2").unwrap();
        n.status.allocatable.instances = 10;
        set_condition(
            &mut n.status.conditions,
            Condition::new("Ready", ConditionStatus::True, "", ""),
        );
        n
    }

    fn instance(mem: &str) -> Instance {
        let text = format!("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: i\nspec:\n  module: sha256:{}\n  resources:\n    requests: {{memory: {mem}}}\n", "a".repeat(64));
        let Object::Instance(i) = parse_manifests(&text).unwrap().remove(0) else {
            unreachable!()
        };
        i
    }

    #[test]
    fn picks_the_least_allocated_fitting_node_and_explains_refusals() {
        let nodes = vec![
            node("small", "64Mi", ""),
            node("big", "1Gi", ""),
            node(
                "edge",
                "4Gi",
                "{key: edge, value: 'true', effect: NoSchedule}",
            ),
        ];
        let world = World::new(nodes);
        assert_eq!(
            place(&instance("32Mi"), &world),
            Placement::Node("big".into())
        );
        match place(&instance("2Gi"), &world) {
            Placement::Unschedulable(m) => assert_eq!(
                m,
                "0/3 nodes are available: 1 node had untolerated taint {edge=true:NoSchedule}, 2 insufficient memory."
            ),
            other => panic!("{other:?}"),
        }
    }

    fn owned(name: &str, extra_spec: &str) -> Instance {
        let text = format!("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: {name}\n  labels: {{app: web}}\n  ownerReferences:\n  - {{apiVersion: flotilla.dev/v1, kind: Deployment, name: web, uid: u1, controller: true}}\nspec:\n  module: sha256:{}\n{extra_spec}", "a".repeat(64));
        let Object::Instance(i) = parse_manifests(&text).unwrap().remove(0) else {
            unreachable!()
        };
        i
    }

    fn place_all(world: &mut World, instances: Vec<Instance>) -> Vec<Placement> {
        instances
            .into_iter()
            .map(|i| {
                let p = place(&i, world);
                if let Placement::Node(name) = &p {
                    world.add(i, name);
                }
                p
            })
            .collect()
    }

    #[test]
    fn one_controllers_instances_spread_evenly() {
        let nodes = vec![
            node("a", "1Gi", ""),
            node("b", "1Gi", ""),
            node("c", "1Gi", ""),
        ];
        let mut world = World::new(nodes);
        let placed = place_all(
            &mut world,
            (0..6).map(|n| owned(&format!("w{n}"), "")).collect(),
        );
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for p in placed {
            let Placement::Node(name) = p else {
                panic!("{p:?}")
            };
            *per_node.entry(name).or_default() += 1;
        }
        assert_eq!(
            per_node.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
    }

    #[test]
    fn required_anti_affinity_keeps_instances_apart_and_says_why() {
        let nodes = vec![node("a", "1Gi", ""), node("b", "1Gi", "")];
        let mut world = World::new(nodes);
        let anti = "  affinity:\n    instanceAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector: {matchLabels: {app: web}}\n        topologyKey: zone-of-node\n";
        // Both nodes are in zone a (label zone: a) under the key "zone".
        let anti = anti.replace("zone-of-node", "zone");
        let placed = place_all(&mut world, vec![owned("w0", &anti), owned("w1", &anti)]);
        assert!(matches!(placed[0], Placement::Node(_)));
        assert_eq!(
            placed[1],
            Placement::Unschedulable(
                "0/2 nodes are available: 2 nodes didn't match instance anti-affinity rules."
                    .into()
            )
        );
    }
}

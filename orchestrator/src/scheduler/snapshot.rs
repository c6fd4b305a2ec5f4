//! The cluster as one pass sees it: every node with what is already placed
//! on it (resources, one controller's spread, the labels of what runs there),
//! updated as the pass places instances, and per pending instance the
//! topology domains its inter-instance terms care about.

use std::collections::{BTreeMap, HashMap, HashSet};

use flotilla_api::instance::{Instance, InstanceAffinityTerm, InstancePhase};
use flotilla_api::node::Node;

/// What is already placed on a node.
#[derive(Default, Clone, Copy, Debug)]
pub(super) struct Usage {
    pub cpu_millis: u64,
    pub memory: u64,
    pub instances: u32,
}

pub(super) fn requests(i: &Instance) -> (u64, u64) {
    (i.spec.cpu_request_millis(), i.spec.memory_request_bytes())
}

pub(super) fn occupies(i: &Instance) -> bool {
    !i.spec.node_name.is_empty()
        && !matches!(
            i.status.phase,
            InstancePhase::Succeeded | InstancePhase::Failed
        )
}

/// A bound instance's namespace and labels.
pub(super) type Placed = (String, BTreeMap<String, String>);

/// The cluster as one pass sees it, updated as the pass places instances.
/// Nodes are addressed by their position in `nodes`.
#[derive(Default)]
pub(super) struct World {
    pub nodes: Vec<Node>,
    pub index: HashMap<String, usize>,
    pub ready: Vec<bool>,
    pub usage: Vec<Usage>,
    /// Per controller uid: instances per node.
    pub spread: HashMap<String, Vec<u32>>,
    /// Bound instances' namespace and labels, per node.
    pub placed: Vec<Vec<Placed>>,
    /// Where the next placement starts looking, so that a partial scan of a
    /// large cluster does not always favour the first nodes.
    pub start: usize,
}

impl World {
    pub fn new(nodes: Vec<Node>) -> Self {
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
    pub fn add(&mut self, i: Instance, node: &str) {
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
    pub fn domains_matching(&self, i: &Instance, term: &InstanceAffinityTerm) -> HashSet<String> {
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
pub(super) fn enough_feasible(nodes: usize) -> usize {
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(100)
}

/// Per pending instance: the domains its inter-instance terms care about.
pub(super) struct Terms {
    pub required: Vec<(String, HashSet<String>)>,
    pub forbidden: Vec<(String, HashSet<String>)>,
    pub preferred: Vec<(String, HashSet<String>, i64)>,
    /// The instance matches its own required affinity term (the first of a
    /// group may go anywhere, as in Kubernetes).
    pub self_affine: bool,
}

impl Terms {
    pub fn new(i: &Instance, world: &World) -> Self {
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

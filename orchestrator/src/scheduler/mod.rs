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
//! Built so far: node readiness and cordon, resources (cpu, memory, instance
//! slots against allocatable minus what is bound), nodeSelector, taints and
//! tolerations, least-allocated scoring. Affinity, spreading, module locality,
//! events and leader election among several schedulers come with the scheduler
//! issue.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::client::{Client, ClientConfig, ClientError};
use flotilla_api::instance::{Instance, InstancePhase, CONDITION_SCHEDULED};
use flotilla_api::meta::{set_condition, Condition, ConditionStatus};
use flotilla_api::node::{Node, TaintEffect};
use flotilla_api::object::{Kind, Object};
use flotilla_api::wire::ErrorCode;

/// Why a node was filtered out, for the "0/N nodes are available" message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    /// The node is not Ready.
    NotReady,
    /// Cordoned.
    Unschedulable,
    /// nodeSelector does not match.
    Selector,
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
            Unfit::Selector => format!("{count} {nodes} didn't match the node selector"),
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
    let r = &i.spec.resources;
    let cpu = r
        .requests
        .cpu
        .as_ref()
        .or(r.limits.cpu.as_ref())
        .map_or(0, |q| q.as_millis());
    let mem = r
        .requests
        .memory
        .as_ref()
        .or(r.limits.memory.as_ref())
        .map_or(0, |q| q.as_bytes());
    (cpu, mem)
}

fn occupies(i: &Instance) -> bool {
    !i.spec.node_name.is_empty()
        && !matches!(
            i.status.phase,
            InstancePhase::Succeeded | InstancePhase::Failed
        )
}

type Filter = fn(&Instance, &Node, &Usage) -> Result<(), Unfit>;

fn ready(_: &Instance, n: &Node, _: &Usage) -> Result<(), Unfit> {
    if n.is_ready() {
        Ok(())
    } else {
        Err(Unfit::NotReady)
    }
}

fn schedulable(_: &Instance, n: &Node, _: &Usage) -> Result<(), Unfit> {
    if n.spec.unschedulable {
        Err(Unfit::Unschedulable)
    } else {
        Ok(())
    }
}

fn selector(i: &Instance, n: &Node, _: &Usage) -> Result<(), Unfit> {
    let labels = &n.metadata.labels;
    if i.spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        Ok(())
    } else {
        Err(Unfit::Selector)
    }
}

fn taints(i: &Instance, n: &Node, _: &Usage) -> Result<(), Unfit> {
    for taint in &n.spec.taints {
        if taint.effect == TaintEffect::PreferNoSchedule {
            continue;
        }
        if !i.spec.tolerations.iter().any(|t| t.tolerates(taint)) {
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

fn resources(i: &Instance, n: &Node, used: &Usage) -> Result<(), Unfit> {
    let (cpu, mem) = requests(i);
    let alloc = &n.status.allocatable;
    if used.instances + 1 > alloc.instances {
        return Err(Unfit::Slots);
    }
    if used.cpu_millis + cpu > alloc.cpu.as_millis() {
        return Err(Unfit::Cpu);
    }
    if used.memory + mem > alloc.memory.as_bytes() {
        return Err(Unfit::Memory);
    }
    Ok(())
}

/// The filters, in the order a node is checked (the first failure is its reason).
const FILTERS: &[Filter] = &[ready, schedulable, selector, taints, resources];

/// Least allocated: the share of cpu and memory still free after placing, higher
/// is better.
fn score(i: &Instance, n: &Node, used: &Usage) -> f64 {
    let (cpu, mem) = requests(i);
    let alloc = &n.status.allocatable;
    let free = |total: u64, used: u64| {
        if total == 0 {
            0.0
        } else {
            1.0 - (used as f64 / total as f64)
        }
    };
    free(alloc.cpu.as_millis(), used.cpu_millis + cpu)
        + free(alloc.memory.as_bytes(), used.memory + mem)
}

/// The decision for one instance.
#[derive(Debug, PartialEq)]
pub enum Placement {
    /// Bind to this node.
    Node(String),
    /// Nowhere: the message says why.
    Unschedulable(String),
}

/// Runs the pipeline for one instance over a snapshot of nodes and their usage.
fn place(i: &Instance, nodes: &[Node], usage: &BTreeMap<String, Usage>) -> Placement {
    let mut best: Option<(f64, &str)> = None;
    let mut reasons: BTreeMap<Unfit, usize> = BTreeMap::new();
    for n in nodes {
        let used = usage.get(&n.metadata.name).copied().unwrap_or_default();
        match FILTERS.iter().try_for_each(|f| f(i, n, &used)) {
            Ok(()) => {
                let s = score(i, n, &used);
                if best.is_none_or(|(b, name)| s > b || (s == b && n.metadata.name.as_str() < name))
                {
                    best = Some((s, &n.metadata.name));
                }
            }
            Err(why) => *reasons.entry(why).or_default() += 1,
        }
    }
    match best {
        Some((_, name)) => Placement::Node(name.to_string()),
        None => {
            let parts: Vec<String> = reasons.iter().map(|(r, c)| r.describe(*c)).collect();
            let detail = if parts.is_empty() {
                "no nodes registered".to_string()
            } else {
                parts.join(", ")
            };
            Placement::Unschedulable(format!("0/{} nodes are available: {detail}.", nodes.len()))
        }
    }
}

/// One pass: place every unbound instance. Returns how many were bound.
pub async fn schedule_once(client: &Client) -> Result<usize, ClientError> {
    let (node_objs, _) = client.list(Kind::Node, None, "").await?;
    let (inst_objs, _) = client.list(Kind::Instance, None, "").await?;
    let nodes: Vec<Node> = node_objs
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    let mut unbound = Vec::new();
    for o in inst_objs {
        let Object::Instance(i) = o else { continue };
        if occupies(&i) {
            let (cpu, mem) = requests(&i);
            let u = usage.entry(i.spec.node_name.clone()).or_default();
            u.cpu_millis += cpu;
            u.memory += mem;
            u.instances += 1;
        } else if i.spec.node_name.is_empty() && i.metadata.deletion_timestamp.is_empty() {
            unbound.push(i);
        }
    }
    let mut bound = 0;
    for mut i in unbound {
        match place(&i, &nodes, &usage) {
            Placement::Node(name) => {
                let (cpu, mem) = requests(&i);
                i.spec.node_name = name.clone();
                match client.update(Object::Instance(i)).await {
                    Ok(_) => {
                        let u = usage.entry(name).or_default();
                        u.cpu_millis += cpu;
                        u.memory += mem;
                        u.instances += 1;
                        bound += 1;
                    }
                    Err(e)
                        if matches!(e.code(), Some(ErrorCode::Conflict | ErrorCode::NotFound)) => {}
                    Err(e) => return Err(e),
                }
            }
            Placement::Unschedulable(message) => {
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
                    let mut o = Object::Instance(i);
                    o.meta_mut().resource_version.clear();
                    match client.update_status(o).await {
                        Ok(_) => {}
                        Err(e) if e.code().is_some() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(bound)
}

/// Runs until the task is dropped: a pass whenever nodes or instances change,
/// and every few seconds regardless.
pub async fn run(config: ClientConfig) {
    loop {
        let client = match Client::connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "scheduler cannot reach the apiserver");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(e) = pass_and_wait(&client).await {
            tracing::debug!(error = %e, "scheduler pass failed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn pass_and_wait(client: &Client) -> Result<(), ClientError> {
    loop {
        schedule_once(client).await?;
        let (_, revision) = client.list(Kind::Node, None, "").await?;
        // Only nodes and instances matter: watching every kind would make each
        // scheduler decode every write in the cluster.
        let mut nodes = client.watch(Some(Kind::Node), None, "", revision).await?;
        let mut instances = client
            .watch(Some(Kind::Instance), None, "", revision)
            .await?;
        let resync = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(resync);
        let changed = tokio::select! {
            _ = &mut resync => true,
            event = nodes.next() => event?.is_some(),
            event = instances.next() => event?.is_some(),
        };
        if !changed {
            return Ok(());
        }
        // Let a burst of changes land before the next pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::manifest::parse_manifests;

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
        let usage = BTreeMap::new();
        assert_eq!(
            place(&instance("32Mi"), &nodes, &usage),
            Placement::Node("big".into())
        );
        match place(&instance("2Gi"), &nodes, &usage) {
            Placement::Unschedulable(m) => assert_eq!(
                m,
                "0/3 nodes are available: 1 node had untolerated taint {edge=true:NoSchedule}, 2 insufficient memory."
            ),
            other => panic!("{other:?}"),
        }
    }
}

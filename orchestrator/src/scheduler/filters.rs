//! Filters: whether an instance may go on a node at all. Each filter is a
//! pure function of one [`Candidate`]; [`FILTERS`] orders them, and the first
//! that fails is the node's [`Unfit`] reason in the "0/N nodes are available"
//! message. Reasons are data, not strings.

use flotilla_api::instance::Instance;
use flotilla_api::node::{Node, TaintEffect};

use super::snapshot::{requests, Terms, Usage};

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
    pub(super) fn describe(&self, count: usize) -> String {
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

pub(super) struct Candidate<'a> {
    pub i: &'a Instance,
    pub n: &'a Node,
    pub ready: bool,
    pub used: Usage,
    pub terms: &'a Terms,
    /// This instance's controller's instances on this node, and the most on any.
    pub spread: Option<(u32, u32)>,
}

pub(super) type Filter = fn(&Candidate) -> Result<(), Unfit>;

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
pub(super) const FILTERS: &[Filter] = &[
    ready,
    schedulable,
    selector,
    taints,
    resources,
    instance_affinity,
];

//! Scorers: how good a node that passed every filter is for an instance.
//! Each scorer is a pure function of one [`Candidate`], 0..=100 (instance
//! preferences may go negative, as Kubernetes' weights do); [`SCORERS`]
//! weighs them, and [`score`] adds them up, higher is better.

use super::filters::Candidate;
use super::snapshot::requests;

/// A scorer.
pub(super) type Scorer = fn(&Candidate) -> f64;

/// The scorers and their weights; spreading one workload over nodes matters
/// most, module locality least (a compile is seconds, not minutes).
pub(super) const SCORERS: &[(f64, Scorer)] = &[
    (1.0, least_allocated),
    (2.0, spread),
    (1.0, node_preference),
    (1.0, instance_preference),
    (0.3, module_locality),
];

/// The weighted sum of every scorer.
pub(super) fn score(c: &Candidate) -> f64 {
    SCORERS
        .iter()
        .map(|(weight, scorer)| weight * scorer(c))
        .sum()
}

/// Free cpu and memory after placing, half each.
fn least_allocated(c: &Candidate) -> f64 {
    let (cpu, mem) = requests(c.i);
    let alloc = &c.n.status.allocatable;
    let free = |total: u64, used: u64| {
        if total == 0 {
            0.0
        } else {
            1.0 - (used as f64 / total as f64)
        }
    };
    50.0 * (free(alloc.cpu.as_millis(), c.used.cpu_millis + cpu)
        + free(alloc.memory.as_bytes(), c.used.memory + mem))
}

/// Fewer of this instance's controller's instances here than on the busiest
/// node scores higher.
fn spread(c: &Candidate) -> f64 {
    match c.spread {
        Some((here, max)) if max > 0 => 100.0 * f64::from(max - here.min(max)) / f64::from(max),
        _ => 100.0,
    }
}

/// The share of preferred node affinity weight the node's labels meet.
fn node_preference(c: &Candidate) -> f64 {
    let labels = &c.n.metadata.labels;
    let prefs =
        &c.i.spec
            .affinity
            .node_affinity
            .preferred_during_scheduling_ignored_during_execution;
    let total: u32 = prefs.iter().map(|p| p.weight).sum();
    if total == 0 {
        return 0.0;
    }
    let hit: u32 = prefs
        .iter()
        .filter(|p| p.preference.matches(labels))
        .map(|p| p.weight)
        .sum();
    100.0 * f64::from(hit) / f64::from(total)
}

/// The weights of preferred inter-instance affinity (positive) and
/// anti-affinity (negative) terms the node's domain meets.
fn instance_preference(c: &Candidate) -> f64 {
    let labels = &c.n.metadata.labels;
    let sum: i64 = c
        .terms
        .preferred
        .iter()
        .filter(|(key, domains, _)| labels.get(key).is_some_and(|v| domains.contains(v)))
        .map(|(_, _, w)| *w)
        .sum();
    sum as f64
}

/// The node has the module compiled already.
fn module_locality(c: &Candidate) -> f64 {
    if c.n.status.modules.contains(&c.i.spec.module) {
        100.0
    } else {
        0.0
    }
}

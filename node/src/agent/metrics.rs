//! The agent's metrics: instances on this node by phase (as the supervisors
//! last reported them), restarts, and heartbeats to the apiserver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_api::instance::InstancePhase;
use flotilla_telemetry::{Counter, Family, Registry, Sample, SampleKind};

use super::supervisor::Key;

const PHASES: [InstancePhase; 5] = [
    InstancePhase::Pending,
    InstancePhase::Running,
    InstancePhase::Succeeded,
    InstancePhase::Failed,
    InstancePhase::Unknown,
];

/// The agent's counts; the default is registered nowhere.
#[derive(Default)]
pub struct AgentMetrics {
    /// Each supervised instance's last phase; changes only when a status
    /// does, so a lock here costs nothing on a request path.
    phases: Mutex<HashMap<Key, InstancePhase>>,
    restarts: Counter,
    heartbeats: Family<[(&'static str, &'static str); 1], Counter>,
}

impl AgentMetrics {
    /// Registers the agent's metrics in `registry`.
    pub fn register(registry: &Registry) -> Arc<Self> {
        let m = Arc::new(Self::default());
        registry.register(
            "flotilla_node_instance_restarts",
            "Restarts of instances on this node (after an exit or a failed liveness probe)",
            m.restarts.clone(),
        );
        registry.register(
            "flotilla_node_heartbeats",
            "Node status and lease renewals sent to the apiserver, by result (ok, error, timeout)",
            m.heartbeats.clone(),
        );
        let weak = Arc::downgrade(&m);
        registry.register_sampled(move |out| {
            let Some(m) = weak.upgrade() else { return };
            let phases = m.lock();
            for phase in PHASES {
                let n = phases.values().filter(|p| **p == phase).count();
                out.push(Sample {
                    name: "flotilla_node_instances",
                    help: "Instances on this node by phase, as last reported",
                    kind: SampleKind::Gauge,
                    labels: vec![("phase", phase.as_str().to_string())],
                    value: n as f64,
                });
            }
        });
        m
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, InstancePhase>> {
        self.phases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an instance's phase.
    pub fn set_phase(&self, key: &Key, phase: InstancePhase) {
        self.lock().insert(key.clone(), phase);
    }

    /// Forgets an instance no longer supervised.
    pub fn forget(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Counts a restart.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// Counts a heartbeat by result.
    pub fn heartbeat(&self, result: &'static str) {
        self.heartbeats.get_or_create(&[("result", result)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_counted_by_their_last_phase() {
        let registry = Registry::new();
        let m = AgentMetrics::register(&registry);
        let a = ("default".to_string(), "a".to_string());
        let b = ("default".to_string(), "b".to_string());
        m.set_phase(&a, InstancePhase::Pending);
        m.set_phase(&b, InstancePhase::Running);
        m.set_phase(&a, InstancePhase::Running);
        let text = registry.render();
        assert!(
            text.contains("flotilla_node_instances{phase=\"Running\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_node_instances{phase=\"Pending\"} 0"),
            "{text}"
        );
        m.forget(&a);
        let text = registry.render();
        assert!(
            text.contains("flotilla_node_instances{phase=\"Running\"} 1"),
            "{text}"
        );
    }
}

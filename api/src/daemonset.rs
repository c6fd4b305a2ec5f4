//! The DaemonSet kind: one instance on every node that matches its node
//! selector, affinity and tolerations.

use serde::{Deserialize, Serialize};

use crate::deployment::{check_rolling_update, check_selector_and_template, IntOrPercent};
use crate::instance::{InstanceTemplate, RestartPolicy};
use crate::labels::Selector;
use crate::meta::{Condition, ObjectMeta};
use crate::validation::ValidationErrors;

/// A daemon set (Kubernetes' `DaemonSet`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSet {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Selector, template and update strategy.
    pub spec: DaemonSetSpec,
    /// Counts written by the daemon set controller.
    pub status: DaemonSetStatus,
}

/// Desired state of a daemon set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSetSpec {
    /// Which instances belong to this daemon set; must match the template's labels.
    pub selector: Selector,
    /// The instance to run on each eligible node; its nodeSelector, affinity and
    /// tolerations decide which nodes are eligible.
    pub template: InstanceTemplate,
    /// How instances are replaced when the template changes.
    pub update_strategy: DaemonSetUpdateStrategy,
    /// Seconds a new instance must be Ready before it counts as available.
    pub min_ready_seconds: u32,
    /// Old revisions kept (default 10).
    pub revision_history_limit: u32,
}

impl Default for DaemonSetSpec {
    fn default() -> Self {
        Self {
            selector: Selector::default(),
            template: InstanceTemplate::default(),
            update_strategy: DaemonSetUpdateStrategy::default(),
            min_ready_seconds: 0,
            revision_history_limit: 10,
        }
    }
}

/// Kind of daemon set update strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DaemonSetUpdateStrategyType {
    /// Replace instances node by node within maxUnavailable / maxSurge.
    #[default]
    RollingUpdate,
    /// Replace an instance only when it is deleted.
    OnDelete,
}

/// How a daemon set replaces instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSetUpdateStrategy {
    /// RollingUpdate (default) or OnDelete.
    #[serde(rename = "type")]
    pub type_: DaemonSetUpdateStrategyType,
    /// Bounds of a rolling update (default maxUnavailable 1, maxSurge 0).
    pub rolling_update: DaemonSetRollingUpdate,
}

/// Bounds of a daemon set rolling update.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSetRollingUpdate {
    /// Nodes whose instance may be unavailable at once (rounded up, at least 1
    /// when maxSurge is 0).
    pub max_unavailable: IntOrPercent,
    /// Nodes that may run an old and a new instance at once.
    pub max_surge: IntOrPercent,
}

impl Default for DaemonSetRollingUpdate {
    fn default() -> Self {
        Self {
            max_unavailable: IntOrPercent::Int(1),
            max_surge: IntOrPercent::Int(0),
        }
    }
}

/// Observed state of a daemon set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSetStatus {
    /// The `metadata.generation` this status describes.
    pub observed_generation: u64,
    /// Nodes that should run the instance.
    pub desired_number_scheduled: u32,
    /// Eligible nodes running at least one instance.
    pub current_number_scheduled: u32,
    /// Nodes running an instance they should not.
    pub number_misscheduled: u32,
    /// Eligible nodes with a Ready instance.
    pub number_ready: u32,
    /// Eligible nodes running the current template.
    pub updated_number_scheduled: u32,
    /// Eligible nodes with an instance available for minReadySeconds.
    pub number_available: u32,
    /// Eligible nodes without an available instance.
    pub number_unavailable: u32,
    /// Revision number of the current template.
    pub revision: u64,
    /// Conditions reported by the controller.
    pub conditions: Vec<Condition>,
}

impl DaemonSet {
    pub(crate) fn apply_defaults(&mut self) {
        self.spec.template.apply_defaults();
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        let spec = &self.spec;
        check_selector_and_template(errs, &spec.selector, &spec.template);
        if spec.template.spec.restart_policy != RestartPolicy::Always {
            errs.push(
                "spec.template.spec.restartPolicy",
                format!(
                    "must be Always for a DaemonSet (got {})",
                    spec.template.spec.restart_policy.as_str()
                ),
            );
        }
        if !spec.template.spec.node_name.is_empty() {
            errs.push(
                "spec.template.spec.nodeName",
                "must be empty: the daemon set controller places one instance per node",
            );
        }
        if spec.update_strategy.type_ == DaemonSetUpdateStrategyType::RollingUpdate {
            let ru = &spec.update_strategy.rolling_update;
            check_rolling_update(
                errs,
                "spec.updateStrategy.rollingUpdate",
                ru.max_surge,
                ru.max_unavailable,
            );
        }
    }
}

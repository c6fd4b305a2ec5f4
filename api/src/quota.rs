//! Per-namespace limits, in Kubernetes' shapes: a [`ResourceQuota`] caps
//! what a namespace may hold (instances, services, the sums of instances'
//! CPU and memory limits); a [`LimitRange`] gives an instance that sets no
//! limits the namespace's defaults, so that nothing runs with unlimited CPU
//! and nothing counts as free to the scheduler.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::instance::{Instance, ResourceList};
use crate::meta::ObjectMeta;
use crate::quantity::Quantity;
use crate::validation::ValidationErrors;

/// Number of instances.
pub const INSTANCES: &str = "instances";
/// Number of services.
pub const SERVICES: &str = "services";
/// Sum of the instances' CPU limits.
pub const LIMITS_CPU: &str = "limits.cpu";
/// Sum of the instances' memory limits.
pub const LIMITS_MEMORY: &str = "limits.memory";

/// What a quota may cap.
pub const QUOTA_RESOURCES: [&str; 4] = [INSTANCES, SERVICES, LIMITS_CPU, LIMITS_MEMORY];

/// Caps on what one namespace holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceQuota {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The caps.
    pub spec: ResourceQuotaSpec,
    /// The use at the last create the quota admitted.
    pub status: ResourceQuotaStatus,
}

/// The caps of a quota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceQuotaSpec {
    /// `instances`, `services`, `limits.cpu`, `limits.memory` to their caps.
    pub hard: BTreeMap<String, Quantity>,
}

/// What a quota saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceQuotaStatus {
    /// The caps it enforced.
    pub hard: BTreeMap<String, Quantity>,
    /// The use, the admitted create included.
    pub used: BTreeMap<String, Quantity>,
}

impl ResourceQuota {
    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        if self.spec.hard.is_empty() {
            errs.required("spec.hard");
        }
        for key in self.spec.hard.keys() {
            if !QUOTA_RESOURCES.contains(&key.as_str()) {
                errs.push(
                    format!("spec.hard.{key}"),
                    format!(
                        "{key:?} cannot be capped (expected one of {})",
                        QUOTA_RESOURCES.join(", ")
                    ),
                );
            }
        }
    }
}

/// What an object adds to each capped resource: a count of 1 for its kind,
/// and an instance's CPU and memory limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Instances.
    pub instances: u64,
    /// Services.
    pub services: u64,
    /// CPU limits, millicores.
    pub cpu_millis: u64,
    /// Memory limits, bytes.
    pub memory_bytes: u64,
}

impl Usage {
    /// What `instance` counts for.
    pub fn of_instance(instance: &Instance) -> Self {
        let limits = &instance.spec.resources.limits;
        Usage {
            instances: 1,
            cpu_millis: limits.cpu.as_ref().map_or(0, Quantity::as_millis),
            memory_bytes: limits.memory.as_ref().map_or(0, Quantity::as_bytes),
            ..Usage::default()
        }
    }

    /// The sum of two uses.
    pub fn plus(&self, other: &Usage) -> Usage {
        Usage {
            instances: self.instances.saturating_add(other.instances),
            services: self.services.saturating_add(other.services),
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    /// The amount of `resource` (one of [`QUOTA_RESOURCES`]), in the unit
    /// its cap is compared in.
    pub fn amount(&self, resource: &str) -> u64 {
        match resource {
            INSTANCES => self.instances,
            SERVICES => self.services,
            LIMITS_CPU => self.cpu_millis,
            LIMITS_MEMORY => self.memory_bytes,
            _ => 0,
        }
    }

    /// `resource`'s amount as a quantity (`3`, `1500m`, `96Mi`).
    pub fn quantity(&self, resource: &str) -> Quantity {
        match resource {
            LIMITS_CPU => Quantity::from_millis(self.cpu_millis),
            LIMITS_MEMORY => Quantity::from_bytes(self.memory_bytes),
            other => Quantity::from_bytes(self.amount(other)),
        }
    }
}

/// A cap's value in the unit [`Usage::amount`] uses.
pub fn cap_amount(resource: &str, cap: &Quantity) -> u64 {
    match resource {
        LIMITS_CPU => cap.as_millis(),
        _ => cap.as_bytes(),
    }
}

/// Defaults for the instances of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitRange {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The defaults.
    pub spec: LimitRangeSpec,
}

/// The items of a LimitRange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitRangeSpec {
    /// One item per kind (only `Instance` today).
    pub limits: Vec<LimitRangeItem>,
}

/// Defaults for one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitRangeItem {
    /// `Instance` (Kubernetes' `Container` is accepted as the same).
    #[serde(rename = "type")]
    pub type_: String,
    /// Limits an instance that sets none gets.
    pub default: ResourceList,
    /// Requests an instance that sets none gets (default: its limits).
    pub default_request: ResourceList,
}

impl LimitRange {
    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        if self.spec.limits.is_empty() {
            errs.required("spec.limits");
        }
        for (i, item) in self.spec.limits.iter().enumerate() {
            if !matches!(item.type_.as_str(), "Instance" | "Container") {
                errs.push(
                    format!("spec.limits[{i}].type"),
                    format!(
                        "{:?} is not a kind limits apply to (expected Instance)",
                        item.type_
                    ),
                );
            }
        }
    }

    /// Gives `instance` the defaults for what it leaves unset: limits first,
    /// then requests (which default to the limits).
    pub fn default_instance(&self, instance: &mut Instance) {
        let r = &mut instance.spec.resources;
        for item in &self.spec.limits {
            if r.limits.cpu.is_none() {
                r.limits.cpu = item.default.cpu.clone();
            }
            if r.limits.memory.is_none() {
                r.limits.memory = item.default.memory.clone();
            }
            if r.requests.cpu.is_none() {
                r.requests.cpu = item.default_request.cpu.clone().or(r.limits.cpu.clone());
            }
            if r.requests.memory.is_none() {
                r.requests.memory = item
                    .default_request
                    .memory
                    .clone()
                    .or(r.limits.memory.clone());
            }
        }
    }
}

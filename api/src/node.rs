//! The Node kind: a machine running the node agent, with its taints, capacity
//! and readiness.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{condition_is_true, Condition, ObjectMeta};
use crate::quantity::Quantity;
use crate::validation::{is_ipv4_cidr, is_qualified_name, ValidationErrors, QUALIFIED_NAME_RULE};

/// Condition type a node agent keeps True while it is healthy.
pub const CONDITION_READY: &str = "Ready";
/// Node condition: whether the node's service forwarder runs (False when the
/// agent was started with `--no-service-forwarder`).
pub const CONDITION_SERVICE_FORWARDER: &str = "ServiceForwarder";
/// Label every node carries with its own name (a default topology key).
pub const LABEL_HOSTNAME: &str = "flotilla.dev/hostname";
/// Taint the node lifecycle controller puts on a node whose lease expired.
pub const TAINT_UNREACHABLE: &str = "node.flotilla.dev/unreachable";
/// Taint the node lifecycle controller puts on a node reporting NotReady.
pub const TAINT_NOT_READY: &str = "node.flotilla.dev/not-ready";
/// Taint on a cordoned node.
pub const TAINT_UNSCHEDULABLE: &str = "node.flotilla.dev/unschedulable";

/// A node (Kubernetes' `Node`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Node {
    /// Standard metadata; nodes are cluster-scoped.
    pub metadata: ObjectMeta,
    /// What the operator wants of this node.
    pub spec: NodeSpec,
    /// What the node agent reports.
    pub status: NodeStatus,
}

/// Desired state of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// True when cordoned: no new instances are placed here.
    pub unschedulable: bool,
    /// Taints repelling instances that do not tolerate them.
    pub taints: Vec<Taint>,
    /// The range instance IPs on this node come from, e.g. `10.244.3.0/24`
    /// (assigned by the control plane when the node registers).
    #[serde(rename = "instanceCIDR")]
    pub instance_cidr: String,
}

/// What a taint does to instances that do not tolerate it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New instances are not placed on the node.
    #[default]
    NoSchedule,
    /// The scheduler avoids the node when it can.
    PreferNoSchedule,
    /// Running instances are evicted too.
    NoExecute,
}

impl TaintEffect {
    /// The effect's name, e.g. `NoSchedule`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }

    /// Parses an effect name (exact spelling).
    pub fn parse(s: &str) -> Option<TaintEffect> {
        match s {
            "NoSchedule" => Some(Self::NoSchedule),
            "PreferNoSchedule" => Some(Self::PreferNoSchedule),
            "NoExecute" => Some(Self::NoExecute),
            _ => None,
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mark on a node that repels instances without a matching toleration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    /// Taint key, e.g. `edge`.
    pub key: String,
    /// Taint value; may be empty.
    pub value: String,
    /// What the taint does.
    pub effect: TaintEffect,
    /// RFC 3339 time a NoExecute taint was added (eviction counts from it).
    pub time_added: String,
}

/// A taint written as `key[=value]:Effect` could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid taint {0:?} (expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute)")]
pub struct TaintParseError(pub String);

impl Taint {
    /// Parses `key=value:Effect` or `key:Effect` (the `--taints` flag form).
    pub fn parse(s: &str) -> Result<Taint, TaintParseError> {
        let err = || TaintParseError(s.to_owned());
        let (kv, effect) = s.rsplit_once(':').ok_or_else(err)?;
        let effect = TaintEffect::parse(effect.trim()).ok_or_else(err)?;
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        let key = key.trim();
        if !is_qualified_name(key) {
            return Err(err());
        }
        Ok(Taint {
            key: key.to_owned(),
            value: value.trim().to_owned(),
            effect,
            time_added: String::new(),
        })
    }

    /// Records problems with this taint under `field`.
    pub(crate) fn check(&self, errs: &mut ValidationErrors, field: &str) {
        if self.key.is_empty() {
            errs.required(format!("{field}.key"));
        } else if !is_qualified_name(&self.key) {
            errs.push(
                format!("{field}.key"),
                format!(
                    "{:?} is not a valid taint key ({QUALIFIED_NAME_RULE})",
                    self.key
                ),
            );
        }
        if !crate::validation::is_label_value(&self.value) {
            errs.push(
                format!("{field}.value"),
                format!(
                    "{:?} is not a valid taint value ({})",
                    self.value,
                    crate::validation::LABEL_VALUE_RULE
                ),
            );
        }
        crate::validation::check_timestamp(errs, &format!("{field}.timeAdded"), &self.time_added);
    }
}

impl fmt::Display for Taint {
    /// `key=value:Effect`, or `key:Effect` without a value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// Observed state of a node, written by its agent (and the node lifecycle controller).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// Total resources of the node.
    pub capacity: NodeResources,
    /// Resources available to instances (capacity minus reservations).
    pub allocatable: NodeResources,
    /// How to reach the node.
    pub addresses: Vec<NodeAddress>,
    /// `Ready` and other conditions.
    pub conditions: Vec<Condition>,
    /// Versions of the node's software.
    pub node_info: NodeInfo,
    /// Listening endpoints of the node's daemons.
    pub daemon_endpoints: NodeDaemonEndpoints,
    /// Digests (`sha256:…`) of modules compiled and cached on this node, for
    /// module-locality scoring.
    pub modules: Vec<String>,
}

/// Amounts of the resources the scheduler counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeResources {
    /// CPU, e.g. `2` or `2000m`.
    pub cpu: Quantity,
    /// Memory for instances' linear memories, e.g. `4Gi`.
    pub memory: Quantity,
    /// Instance slots (the size of the node's instance pool).
    pub instances: u32,
}

/// One address of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddress {
    /// Address type: `InternalIP`, `ExternalIP` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub address: String,
}

/// Versions a node reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInfo {
    /// Version of the flotilla binary running the agent.
    pub flotilla_version: String,
    /// Version of wasmtime embedded in the agent.
    pub wasmtime_version: String,
    /// Operating system, e.g. `linux`.
    pub operating_system: String,
    /// CPU architecture, e.g. `x86_64`.
    pub architecture: String,
    /// When the node's certificate (`node:NAME`) expires, RFC 3339; the
    /// agent renews it before then.
    pub certificate_not_after: String,
}

/// Where a node's daemons listen (`host:port`), empty when not serving.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeDaemonEndpoints {
    /// The node-to-node QUIC tunnel.
    pub tunnel: String,
    /// The HTTP ingress listener.
    pub ingress: String,
}

impl Node {
    /// True when the `Ready` condition is True.
    pub fn is_ready(&self) -> bool {
        condition_is_true(&self.status.conditions, CONDITION_READY)
    }

    /// The first address of type `InternalIP`, else the first address.
    pub fn internal_ip(&self) -> Option<&str> {
        self.status
            .addresses
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .or_else(|| self.status.addresses.first())
            .map(|a| a.address.as_str())
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        for (i, t) in self.spec.taints.iter().enumerate() {
            t.check(errs, &format!("spec.taints[{i}]"));
        }
        if !self.spec.instance_cidr.is_empty() && !is_ipv4_cidr(&self.spec.instance_cidr) {
            errs.push(
                "spec.instanceCIDR",
                format!(
                    "{:?} is not an IPv4 CIDR (e.g. 10.244.1.0/24)",
                    self.spec.instance_cidr
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_parse_and_display() {
        let t = Taint::parse("edge=true:NoSchedule").expect("parse");
        assert_eq!(t.key, "edge");
        assert_eq!(t.value, "true");
        assert_eq!(t.effect, TaintEffect::NoSchedule);
        assert_eq!(t.to_string(), "edge=true:NoSchedule");
        let t = Taint::parse("node.flotilla.dev/unreachable:NoExecute").expect("parse");
        assert_eq!(t.value, "");
        assert_eq!(t.to_string(), "node.flotilla.dev/unreachable:NoExecute");
        for bad in [
            "edge=true",
            "edge=true:Sometimes",
            ":NoSchedule",
            "a b:NoExecute",
        ] {
            assert!(Taint::parse(bad).is_err(), "{bad}");
        }
    }
}

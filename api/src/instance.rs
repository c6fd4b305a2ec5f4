//! The Instance kind (the pod analogue: one sandboxed Wasm instance) and the
//! scheduling vocabulary its spec uses: resources, tolerations, affinity, probes.
//! Also [`InstanceTemplate`], the instance template embedded in workloads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::labels::Selector;
use crate::meta::{condition_is_true, Condition, ObjectMeta};
use crate::module::is_valid_digest;
use crate::node::{Taint, TaintEffect};
use crate::quantity::Quantity;
use crate::service::Protocol;
use crate::validation::{
    check_labels, check_node_name, check_timestamp, is_dns1123_label, is_ip, is_port_name,
    is_qualified_name, ValidationErrors, LABEL_NAME_RULE, PORT_NAME_RULE, QUALIFIED_NAME_RULE,
};

/// Condition type: the instance passes its readiness probe (or runs, without one).
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the instance was bound to a node (False with the reason when
/// it fits nowhere).
pub const CONDITION_SCHEDULED: &str = "Scheduled";
/// Annotation on an instance that mirrors a node's static instance: read-only
/// for everyone but that node.
pub const MIRROR_ANNOTATION: &str = "flotilla.dev/mirror";
/// Smallest memory limit an instance can start with: one Wasm page.
pub const MIN_MEMORY_LIMIT: u64 = 64 * 1024;

/// An instance (Kubernetes' `Pod`): one Wasm module running in a sandbox.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Instance {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// What should run, where, with what limits.
    pub spec: InstanceSpec,
    /// What the node observes.
    pub status: InstanceStatus,
}

impl Instance {
    /// Binds an unbound instance to `node`: sets `spec.nodeName` and the
    /// `Scheduled=True` condition, as the apiserver stores a binding.
    pub fn bind_to(&mut self, node: &str) {
        self.spec.node_name = node.to_string();
        crate::meta::set_condition(
            &mut self.status.conditions,
            Condition::new(
                CONDITION_SCHEDULED,
                crate::meta::ConditionStatus::True,
                "Bound",
                &format!("bound to node {node}"),
            ),
        );
    }
}

/// Which WASI world a module runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// Detected from the module's exports.
    #[default]
    Auto,
    /// `wasi:http/proxy`: an instance per request.
    Http,
    /// `wasi:cli/run` (or a core module's `_start`): runs until it exits.
    Command,
}

impl World {
    /// `auto`, `http` or `command`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Http => "http",
            Self::Command => "command",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a node restarts an instance whose module exited or trapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always restart (with exponential backoff).
    #[default]
    Always,
    /// Restart only after a failure (non-zero exit or trap).
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The policy's name, e.g. `OnFailure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::OnFailure => "OnFailure",
            Self::Never => "Never",
        }
    }
}

/// Desired state of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    /// The module to run: a local path in a manifest (the CLI uploads it and
    /// replaces it by its digest) or `sha256:<64 hex>`.
    pub module: String,
    /// The WASI world; `auto` detects it from the module's exports.
    pub world: World,
    /// Program arguments (after the program name).
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<EnvVar>,
    /// Named ports the instance serves, for services' named `targetPort`s.
    pub ports: Vec<InstancePort>,
    /// CPU and memory requests and limits.
    pub resources: ResourceRequirements,
    /// Whether the node restarts the instance after it ends.
    pub restart_policy: RestartPolicy,
    /// The node the instance is bound to; set by the scheduler, or by the user
    /// to pin it.
    pub node_name: String,
    /// Labels a node must have to run this instance.
    pub node_selector: BTreeMap<String, String>,
    /// Taints this instance tolerates.
    pub tolerations: Vec<Toleration>,
    /// Node affinity and inter-instance (anti-)affinity.
    pub affinity: Affinity,
    /// Restart the instance when this probe keeps failing (http world).
    pub liveness_probe: Option<Probe>,
    /// Mark the instance not Ready while this probe fails (http world).
    pub readiness_probe: Option<Probe>,
    /// Hosts outside the cluster the instance may call (egress is denied
    /// otherwise): `example.com`, `*.example.com`, `https://api.example.com:8443`,
    /// `10.0.0.5:8080`.
    pub allowed_outbound_hosts: Vec<String>,
    /// Seconds between asking the instance to stop and killing it.
    pub termination_grace_period_seconds: u32,
}

impl Default for InstanceSpec {
    fn default() -> Self {
        Self {
            module: String::new(),
            world: World::Auto,
            args: Vec::new(),
            env: Vec::new(),
            ports: Vec::new(),
            resources: ResourceRequirements::default(),
            restart_policy: RestartPolicy::Always,
            node_name: String::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: Affinity::default(),
            liveness_probe: None,
            readiness_probe: None,
            allowed_outbound_hosts: Vec::new(),
            termination_grace_period_seconds: 30,
        }
    }
}

/// One environment variable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Variable value.
    pub value: String,
}

/// A port an instance serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancePort {
    /// Port name, referred to by a service's `targetPort`.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// Requests (what the scheduler reserves) and limits (what the node enforces).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceRequirements {
    /// Hard caps: memory is all linear memories together, cpu by epoch interruption.
    pub limits: ResourceList,
    /// Amounts reserved on the node; default to the limits.
    pub requests: ResourceList,
}

/// CPU and memory amounts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceList {
    /// CPU, e.g. `250m`.
    pub cpu: Option<Quantity>,
    /// Memory, e.g. `64Mi`.
    pub memory: Option<Quantity>,
}

/// How a toleration compares its value with a taint's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TolerationOperator {
    /// Key and value must be equal.
    #[default]
    Equal,
    /// Key must be equal (or empty, to match every key); the value is ignored.
    Exists,
}

/// Lets an instance onto nodes with a matching taint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// Taint key; empty with `Exists` tolerates everything.
    pub key: String,
    /// Comparison.
    pub operator: TolerationOperator,
    /// Taint value for `Equal`.
    pub value: String,
    /// Only taints with this effect; `None` for every effect.
    pub effect: Option<TaintEffect>,
    /// For NoExecute: how long the instance stays after the taint appears;
    /// `None` for forever.
    pub toleration_seconds: Option<u64>,
}

impl Toleration {
    /// True when this toleration tolerates `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

/// Scheduling constraints beyond `nodeSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Affinity {
    /// Constraints on node labels.
    pub node_affinity: NodeAffinity,
    /// Run near instances matching a selector.
    #[serde(alias = "podAffinity")]
    pub instance_affinity: InstanceAffinity,
    /// Run away from instances matching a selector.
    #[serde(alias = "podAntiAffinity")]
    pub instance_anti_affinity: InstanceAffinity,
}

/// Node affinity: required and preferred node label constraints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAffinity {
    /// The node must match one of these terms (no terms: any node).
    pub required_during_scheduling_ignored_during_execution: NodeSelector,
    /// Nodes matching these terms score higher by the term's weight.
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// A disjunction of node selector terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelector {
    /// Terms, any of which may match; no terms matches every node.
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

impl NodeSelector {
    /// True when there are no terms or `labels` match one of them.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms.is_empty()
            || self.node_selector_terms.iter().any(|t| t.matches(labels))
    }
}

/// A conjunction of node label requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelectorTerm {
    /// Requirements that must all hold.
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

impl NodeSelectorTerm {
    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// Operators for node label requirements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeSelectorOperator {
    /// Value is one of `values`.
    #[default]
    In,
    /// Label absent or value none of `values`.
    NotIn,
    /// Label present.
    Exists,
    /// Label absent.
    DoesNotExist,
    /// Value, as an integer, is greater than the single value.
    Gt,
    /// Value, as an integer, is less than the single value.
    Lt,
}

/// One requirement on a node label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelectorRequirement {
    /// Label key.
    pub key: String,
    /// Relation.
    pub operator: NodeSelectorOperator,
    /// Values (one integer for Gt/Lt; none for Exists/DoesNotExist).
    pub values: Vec<String>,
}

impl NodeSelectorRequirement {
    /// True when `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let as_int = |s: &str| s.parse::<i64>().ok();
        let bound = self.values.first().and_then(|v| as_int(v));
        match self.operator {
            NodeSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            NodeSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            NodeSelectorOperator::Exists => value.is_some(),
            NodeSelectorOperator::DoesNotExist => value.is_none(),
            NodeSelectorOperator::Gt => {
                matches!((value.and_then(|v| as_int(v)), bound), (Some(v), Some(b)) if v > b)
            }
            NodeSelectorOperator::Lt => {
                matches!((value.and_then(|v| as_int(v)), bound), (Some(v), Some(b)) if v < b)
            }
        }
    }

    fn check(&self, errs: &mut ValidationErrors, field: &str) {
        if !is_qualified_name(&self.key) {
            errs.push(
                format!("{field}.key"),
                format!(
                    "{:?} is not a valid label key ({QUALIFIED_NAME_RULE})",
                    self.key
                ),
            );
        }
        use NodeSelectorOperator::*;
        match self.operator {
            In | NotIn if self.values.is_empty() => errs.push(
                format!("{field}.values"),
                "must not be empty for operator In or NotIn",
            ),
            Exists | DoesNotExist if !self.values.is_empty() => errs.push(
                format!("{field}.values"),
                "must be empty for operator Exists or DoesNotExist",
            ),
            Gt | Lt if self.values.len() != 1 || self.values[0].parse::<i64>().is_err() => errs
                .push(
                    format!("{field}.values"),
                    "must be exactly one integer for operator Gt or Lt",
                ),
            _ => {}
        }
    }
}

/// A weighted node preference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferredSchedulingTerm {
    /// Weight added to a matching node's score, 1 to 100.
    pub weight: u32,
    /// The term a node should match.
    pub preference: NodeSelectorTerm,
}

/// Inter-instance affinity (or anti-affinity): required and preferred terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceAffinity {
    /// Terms that must all hold.
    pub required_during_scheduling_ignored_during_execution: Vec<InstanceAffinityTerm>,
    /// Weighted terms that should hold.
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedInstanceAffinityTerm>,
}

/// Instances matching `labelSelector` (in `namespaces`) within the same
/// `topologyKey` domain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceAffinityTerm {
    /// Which instances.
    pub label_selector: Selector,
    /// Their namespaces; empty means this instance's namespace.
    pub namespaces: Vec<String>,
    /// Node label whose value defines a domain, e.g. `flotilla.dev/hostname`.
    pub topology_key: String,
}

/// A weighted inter-instance term.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedInstanceAffinityTerm {
    /// Weight, 1 to 100.
    pub weight: u32,
    /// The term.
    #[serde(alias = "podAffinityTerm")]
    pub instance_affinity_term: InstanceAffinityTerm,
}

/// An HTTP health probe (http world).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    /// The request to send.
    pub http_get: HttpGetAction,
    /// Seconds after start before the first probe.
    pub initial_delay_seconds: u32,
    /// Seconds between probes.
    pub period_seconds: u32,
    /// Seconds before a probe counts as failed.
    pub timeout_seconds: u32,
    /// Consecutive successes to count as passing again.
    pub success_threshold: u32,
    /// Consecutive failures to count as failing.
    pub failure_threshold: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            http_get: HttpGetAction::default(),
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

/// The HTTP request a probe sends; a 2xx or 3xx answer passes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    /// Request path, starting with `/`.
    pub path: String,
}

impl Default for HttpGetAction {
    fn default() -> Self {
        Self { path: "/".into() }
    }
}

/// Lifecycle phase of an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstancePhase {
    /// Accepted, not yet running (unscheduled, fetching or compiling).
    #[default]
    Pending,
    /// Running (or restarting after a failure).
    Running,
    /// Ended with exit code 0 and will not restart.
    Succeeded,
    /// Ended in failure and will not restart.
    Failed,
    /// Its node stopped reporting.
    Unknown,
}

impl InstancePhase {
    /// The phase's name, e.g. `Running`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
        }
    }

    /// True for Succeeded and Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

impl fmt::Display for InstancePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one run of the module ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TerminationState {
    /// Exit code, when the module exited.
    pub exit_code: Option<i32>,
    /// One word: `Completed`, `Error`, `Trapped`, `OutOfMemory`, `CpuLimit`, `Killed`.
    pub reason: String,
    /// Detail, e.g. the trap message.
    pub message: String,
    /// RFC 3339 start of the run.
    pub started_at: String,
    /// RFC 3339 end of the run.
    pub finished_at: String,
}

/// Observed state of an instance, written by its node (and the scheduler's
/// `Scheduled` condition).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStatus {
    /// Lifecycle phase.
    pub phase: InstancePhase,
    /// `Scheduled`, `Ready` and other conditions.
    pub conditions: Vec<Condition>,
    /// Node running the instance.
    pub node_name: String,
    /// Virtual IP of the instance.
    #[serde(rename = "instanceIP")]
    pub instance_ip: String,
    /// World the node detected or used.
    pub world: World,
    /// Restarts so far.
    pub restart_count: u32,
    /// Exit code of the current run, once it ended.
    pub exit_code: Option<i32>,
    /// One word for the current state when it needs explaining, e.g.
    /// `CrashLoopBackOff`, `Trapped`, `OutOfMemory`, `Unschedulable`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// RFC 3339 start of the current run.
    pub start_time: String,
    /// How the previous run ended (for `logs --previous` and `describe`).
    pub last_termination: Option<TerminationState>,
}

/// The instance template inside a Deployment, DaemonSet or Job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceTemplate {
    /// Labels and annotations given to every instance (name is ignored).
    pub metadata: ObjectMeta,
    /// Spec given to every instance.
    pub spec: InstanceSpec,
}

impl InstanceTemplate {
    /// A short stable hash of the template (10 hex digits), for naming instances
    /// and recognising revisions.
    pub fn template_hash(&self) -> String {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        hex::encode(&digest[..5])
    }

    pub(crate) fn apply_defaults(&mut self) {
        self.spec.apply_defaults();
    }

    pub(crate) fn check(&self, errs: &mut ValidationErrors, field: &str) {
        check_labels(
            errs,
            &format!("{field}.metadata.labels"),
            &self.metadata.labels,
        );
        self.spec.check(errs, &format!("{field}.spec"));
    }
}

// === impl InstanceSpec ===

impl InstanceSpec {
    /// True when a node with these labels satisfies the spec's nodeSelector and
    /// required node affinity (what the scheduler and DaemonSets both ask).
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .affinity
                .node_affinity
                .required_during_scheduling_ignored_during_execution
                .matches(labels)
    }

    /// CPU the scheduler reserves, in millicores (request, else limit, else 0).
    pub fn cpu_request_millis(&self) -> u64 {
        self.resources
            .requests
            .cpu
            .as_ref()
            .or(self.resources.limits.cpu.as_ref())
            .map_or(0, Quantity::as_millis)
    }

    /// Memory the scheduler reserves, in bytes (request, else limit, else 0).
    pub fn memory_request_bytes(&self) -> u64 {
        self.resources
            .requests
            .memory
            .as_ref()
            .or(self.resources.limits.memory.as_ref())
            .map_or(0, Quantity::as_bytes)
    }

    /// CPU limit in millicores, if any.
    pub fn cpu_limit_millis(&self) -> Option<u64> {
        self.resources.limits.cpu.as_ref().map(Quantity::as_millis)
    }

    /// Memory limit in bytes, if any.
    pub fn memory_limit_bytes(&self) -> Option<u64> {
        self.resources
            .limits
            .memory
            .as_ref()
            .map(Quantity::as_bytes)
    }

    /// The module digest, when `module` is a `sha256:` digest rather than a path.
    pub fn module_digest(&self) -> Option<&str> {
        is_valid_digest(&self.module).then_some(self.module.as_str())
    }

    /// True when a toleration tolerates `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        self.tolerations.iter().any(|t| t.tolerates(taint))
    }

    /// Requests default to limits, as in Kubernetes.
    pub(crate) fn apply_defaults(&mut self) {
        let r = &mut self.resources;
        if r.requests.cpu.is_none() {
            r.requests.cpu = r.limits.cpu.clone();
        }
        if r.requests.memory.is_none() {
            r.requests.memory = r.limits.memory.clone();
        }
    }

    /// Records problems with this spec; `p` is its path, e.g. `spec.template.spec`.
    pub(crate) fn check(&self, errs: &mut ValidationErrors, p: &str) {
        if self.module.trim().is_empty() {
            errs.required(format!("{p}.module"));
        } else if self.module.starts_with("sha256:") && !is_valid_digest(&self.module) {
            errs.push(
                format!("{p}.module"),
                format!(
                    "{:?} is not a valid digest (expected sha256: and 64 lowercase hex digits)",
                    self.module
                ),
            );
        }
        for (i, e) in self.env.iter().enumerate() {
            if e.name.is_empty() {
                errs.required(format!("{p}.env[{i}].name"));
            } else if e.name.contains('=') || e.name.contains('\0') {
                errs.push(
                    format!("{p}.env[{i}].name"),
                    format!("{:?} is not a valid variable name (no '=' or NUL)", e.name),
                );
            }
        }
        let mut seen = Vec::new();
        for (i, port) in self.ports.iter().enumerate() {
            if port.port == 0 {
                errs.push(
                    format!("{p}.ports[{i}].port"),
                    "must be between 1 and 65535",
                );
            }
            if !port.name.is_empty() {
                if !is_port_name(&port.name) {
                    errs.push(
                        format!("{p}.ports[{i}].name"),
                        format!(
                            "{:?} is not a valid port name ({PORT_NAME_RULE})",
                            port.name
                        ),
                    );
                } else if seen.contains(&&port.name) {
                    errs.push(
                        format!("{p}.ports[{i}].name"),
                        format!("duplicate port name {:?}", port.name),
                    );
                }
                seen.push(&port.name);
            }
        }
        self.check_resources(errs, &format!("{p}.resources"));
        check_node_name(errs, &format!("{p}.nodeName"), &self.node_name);
        check_labels(errs, &format!("{p}.nodeSelector"), &self.node_selector);
        for (i, t) in self.tolerations.iter().enumerate() {
            check_toleration(t, errs, &format!("{p}.tolerations[{i}]"));
        }
        self.check_affinity(errs, &format!("{p}.affinity"));
        for (name, probe) in [
            ("livenessProbe", &self.liveness_probe),
            ("readinessProbe", &self.readiness_probe),
        ] {
            if let Some(probe) = probe {
                let f = format!("{p}.{name}");
                if self.world == World::Command {
                    errs.push(
                        &f,
                        "HTTP probes need the http world (spec.world is command)",
                    );
                }
                check_probe(probe, errs, &f);
            }
        }
        for (i, h) in self.allowed_outbound_hosts.iter().enumerate() {
            if !is_outbound_host(h) {
                errs.push(
                    format!("{p}.allowedOutboundHosts[{i}]"),
                    format!(
                        "{h:?} is not a host pattern (expected [http[s]://]HOST[:PORT], HOST a DNS name, '*.' + a DNS name, '*', an IP address or an IPv4 range like 10.0.0.0/8)"
                    ),
                );
            }
        }
    }

    fn check_resources(&self, errs: &mut ValidationErrors, p: &str) {
        let r = &self.resources;
        if let Some(m) = &r.limits.memory {
            if m.as_bytes() < MIN_MEMORY_LIMIT {
                errs.push(
                    format!("{p}.limits.memory"),
                    format!(
                        "{m} is less than 64Ki (one Wasm page), the least an instance can run with"
                    ),
                );
            }
        }
        if let (Some(req), Some(lim)) = (&r.requests.cpu, &r.limits.cpu) {
            if req.as_millis() > lim.as_millis() {
                errs.push(
                    format!("{p}.requests.cpu"),
                    format!("{req} must be less than or equal to the cpu limit {lim}"),
                );
            }
        }
        if let (Some(req), Some(lim)) = (&r.requests.memory, &r.limits.memory) {
            if req.as_bytes() > lim.as_bytes() {
                errs.push(
                    format!("{p}.requests.memory"),
                    format!("{req} must be less than or equal to the memory limit {lim}"),
                );
            }
        }
    }

    fn check_affinity(&self, errs: &mut ValidationErrors, p: &str) {
        let na = &self.affinity.node_affinity;
        for (i, term) in na
            .required_during_scheduling_ignored_during_execution
            .node_selector_terms
            .iter()
            .enumerate()
        {
            for (j, r) in term.match_expressions.iter().enumerate() {
                r.check(
                    errs,
                    &format!("{p}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}].matchExpressions[{j}]"),
                );
            }
        }
        for (i, pref) in na
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let f =
                format!("{p}.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            check_weight(errs, &f, pref.weight);
            for (j, r) in pref.preference.match_expressions.iter().enumerate() {
                r.check(errs, &format!("{f}.preference.matchExpressions[{j}]"));
            }
        }
        for (name, aff) in [
            ("instanceAffinity", &self.affinity.instance_affinity),
            (
                "instanceAntiAffinity",
                &self.affinity.instance_anti_affinity,
            ),
        ] {
            for (i, term) in aff
                .required_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                check_affinity_term(
                    term,
                    errs,
                    &format!("{p}.{name}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
                );
            }
            for (i, w) in aff
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let f = format!("{p}.{name}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                check_weight(errs, &f, w.weight);
                check_affinity_term(
                    &w.instance_affinity_term,
                    errs,
                    &format!("{f}.instanceAffinityTerm"),
                );
            }
        }
    }
}

fn check_weight(errs: &mut ValidationErrors, field: &str, weight: u32) {
    if !(1..=100).contains(&weight) {
        errs.push(format!("{field}.weight"), "must be between 1 and 100");
    }
}

fn check_affinity_term(term: &InstanceAffinityTerm, errs: &mut ValidationErrors, f: &str) {
    term.label_selector
        .check(errs, &format!("{f}.labelSelector"));
    if term.topology_key.is_empty() {
        errs.required(format!("{f}.topologyKey"));
    } else if !is_qualified_name(&term.topology_key) {
        errs.push(
            format!("{f}.topologyKey"),
            format!(
                "{:?} is not a valid label key ({QUALIFIED_NAME_RULE})",
                term.topology_key
            ),
        );
    }
    for (i, ns) in term.namespaces.iter().enumerate() {
        if !is_dns1123_label(ns) {
            errs.push(
                format!("{f}.namespaces[{i}]"),
                format!("{ns:?} is not a valid namespace name ({LABEL_NAME_RULE})"),
            );
        }
    }
}

fn check_toleration(t: &Toleration, errs: &mut ValidationErrors, f: &str) {
    if !t.key.is_empty() && !is_qualified_name(&t.key) {
        errs.push(
            format!("{f}.key"),
            format!(
                "{:?} is not a valid taint key ({QUALIFIED_NAME_RULE})",
                t.key
            ),
        );
    }
    match t.operator {
        TolerationOperator::Exists if !t.value.is_empty() => errs.push(
            format!("{f}.value"),
            "must be empty when operator is Exists",
        ),
        TolerationOperator::Equal if t.key.is_empty() => errs.push(
            format!("{f}.key"),
            "required when operator is Equal (use operator Exists to tolerate every taint)",
        ),
        _ => {}
    }
    if t.toleration_seconds.is_some() && t.effect != Some(TaintEffect::NoExecute) {
        errs.push(
            format!("{f}.tolerationSeconds"),
            "only allowed with effect NoExecute",
        );
    }
}

fn check_probe(probe: &Probe, errs: &mut ValidationErrors, f: &str) {
    if !probe.http_get.path.starts_with('/') {
        errs.push(
            format!("{f}.httpGet.path"),
            format!("{:?} must start with '/'", probe.http_get.path),
        );
    }
    for (name, value) in [
        ("periodSeconds", probe.period_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if value == 0 {
            errs.push(format!("{f}.{name}"), "must be >= 1");
        }
    }
}

/// An `allowedOutboundHosts` entry, split: its scheme, host and port parts.
struct HostPattern<'a> {
    scheme: Option<&'static str>,
    host: &'a str,
    port: Option<&'a str>,
}

impl<'a> HostPattern<'a> {
    fn parse(pattern: &'a str) -> Option<Self> {
        let (scheme, rest) = if let Some(r) = pattern.strip_prefix("https://") {
            (Some("https"), r)
        } else if let Some(r) = pattern.strip_prefix("http://") {
            (Some("http"), r)
        } else {
            (None, pattern)
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']')?;
            (addr, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        Some(Self { scheme, host, port })
    }

    /// Whether it lets `scheme` to `port` through, whatever the host.
    fn allows_scheme_and_port(&self, scheme: &str, port: u16) -> bool {
        if self.scheme.is_some_and(|w| !w.eq_ignore_ascii_case(scheme)) {
            return false;
        }
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        match self.port {
            None => port == default_port,
            Some("*") => true,
            Some(p) => p.parse::<u16>().is_ok_and(|p| p == port),
        }
    }

    /// Whether it names `ip`: the address itself, or an IPv4 range holding it.
    fn names_address(&self, ip: IpAddr) -> bool {
        if let Ok(named) = self.host.parse::<IpAddr>() {
            return named == ip;
        }
        match (self.host.parse::<crate::cidr::Cidr>(), ip) {
            (Ok(range), IpAddr::V4(v4)) => range.contains(v4),
            _ => false,
        }
    }
}

/// True when the `allowedOutboundHosts` entry `pattern` lets a request to
/// `scheme://host:port` through. No scheme in the pattern allows both http and
/// https; no port allows the scheme's default port (80 or 443); `*.example.com`
/// matches the subdomains of example.com, `*` any host, `10.0.0.0/8` the
/// addresses in that range.
pub fn outbound_host_allows(pattern: &str, scheme: &str, host: &str, port: u16) -> bool {
    let Some(pattern) = HostPattern::parse(pattern) else {
        return false;
    };
    if !pattern.allows_scheme_and_port(scheme, port) {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if pattern.host == "*" {
        true
    } else if let Some(domain) = pattern.host.strip_prefix("*.") {
        host.len() > domain.len() + 1
            && host
                .to_ascii_lowercase()
                .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        pattern.names_address(ip)
    } else {
        pattern.host.eq_ignore_ascii_case(host)
    }
}

/// Whether `ip` is one a guest must not reach by a name alone: loopback,
/// link-local (cloud metadata at 169.254.169.254), private, shared (CGNAT),
/// unspecified, broadcast or multicast; IPv4-mapped IPv6 as its IPv4.
pub fn is_internal_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Whether a guest allowed `patterns` may connect to `ip` on `port` for
/// `scheme`, once its host's name resolved to it: any address outside the
/// internal ones ([`is_internal_address`]), and an internal one only when an
/// entry names that address or its range (not merely a name that resolves
/// to it, nor `*`).
pub fn outbound_address_allowed(patterns: &[String], scheme: &str, ip: IpAddr, port: u16) -> bool {
    !is_internal_address(ip)
        || patterns.iter().any(|p| {
            HostPattern::parse(p)
                .is_some_and(|p| p.allows_scheme_and_port(scheme, port) && p.names_address(ip))
        })
}

/// `[http[s]://]HOST[:PORT|:*]` where HOST is a DNS name, `*.` + a DNS name,
/// `*`, an IPv4 address or range (`10.0.0.0/8`) or a bracketed IPv6 address.
fn is_outbound_host(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    if rest.is_empty() {
        return false;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, after)) => {
                if !is_ip(addr) {
                    return false;
                }
                (None, after.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(rest), None),
        }
    };
    let port_ok = match port {
        None => true,
        Some("*") => true,
        Some(p) => p.parse::<u16>().is_ok_and(|p| p > 0),
    };
    let host_ok = match host {
        None => true,
        Some("*") => true,
        Some(h) if h.contains('/') => h.parse::<crate::cidr::Cidr>().is_ok(),
        Some(h) => {
            let name = h.strip_prefix("*.").unwrap_or(h);
            crate::validation::is_dns1123_subdomain(name) || is_ip(h)
        }
    };
    port_ok && host_ok
}

// === impl Instance ===

impl Instance {
    /// True when the `Ready` condition is True.
    pub fn is_ready(&self) -> bool {
        condition_is_true(&self.status.conditions, CONDITION_READY)
    }

    /// The node the instance is bound to (spec), else the one that reported it.
    pub fn node(&self) -> &str {
        if self.spec.node_name.is_empty() {
            &self.status.node_name
        } else {
            &self.spec.node_name
        }
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        self.spec.check(errs, "spec");
        if !self.status.instance_ip.is_empty() && !is_ip(&self.status.instance_ip) {
            errs.push(
                "status.instanceIP",
                format!("{:?} is not an IP address", self.status.instance_ip),
            );
        }
        check_timestamp(errs, "status.startTime", &self.status.start_time);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn internal_addresses_are_reached_only_when_named() {
        let internal = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ];
        for ip in internal {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_internal_address(ip), "{ip}");
            assert!(
                !outbound_address_allowed(&["*".into(), "localhost".into()], "http", ip, 80),
                "{ip} is reached through a name or a wildcard"
            );
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_internal_address(ip), "{ip}");
            assert!(outbound_address_allowed(&[], "http", ip, 80), "{ip}");
        }
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let named = ["127.0.0.1:8080".to_string()];
        assert!(outbound_address_allowed(&named, "http", loopback, 8080));
        assert!(!outbound_address_allowed(&named, "http", loopback, 8081));
        let range = ["10.0.0.0/8:*".to_string()];
        assert!(outbound_address_allowed(
            &range,
            "http",
            "10.9.8.7".parse().unwrap(),
            1234
        ));
        assert!(!outbound_address_allowed(
            &range,
            "http",
            "192.168.0.1".parse().unwrap(),
            1234
        ));
        assert!(outbound_host_allows("10.0.0.0/8", "http", "10.1.1.1", 80));
        assert!(!outbound_host_allows("10.0.0.0/8", "http", "11.1.1.1", 80));
        assert!(is_outbound_host("10.0.0.0/8:443") && !is_outbound_host("10.0.0.0/33"));
    }

    #[test]
    fn outbound_host_patterns() {
        assert!(outbound_host_allows(
            "example.com",
            "http",
            "example.com",
            80
        ));
        assert!(outbound_host_allows(
            "example.com",
            "https",
            "EXAMPLE.com",
            443
        ));
        assert!(!outbound_host_allows(
            "example.com",
            "http",
            "example.com",
            8080
        ));
        assert!(outbound_host_allows(
            "*.example.com",
            "http",
            "api.example.com",
            80
        ));
        assert!(!outbound_host_allows(
            "*.example.com",
            "http",
            "example.com",
            80
        ));
        assert!(outbound_host_allows(
            "https://api.example.com:8443",
            "https",
            "api.example.com",
            8443
        ));
        assert!(!outbound_host_allows(
            "https://api.example.com:8443",
            "http",
            "api.example.com",
            8443
        ));
        assert!(outbound_host_allows(
            "127.0.0.1:*",
            "http",
            "127.0.0.1",
            41234
        ));
        assert!(!outbound_host_allows(
            "127.0.0.1:9000",
            "http",
            "127.0.0.2",
            9000
        ));
    }

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tolerations() {
        let taint = Taint::parse("edge=true:NoSchedule").expect("taint");
        let eq = Toleration {
            key: "edge".into(),
            value: "true".into(),
            ..Toleration::default()
        };
        assert!(eq.tolerates(&taint));
        let wrong_effect = Toleration {
            effect: Some(TaintEffect::NoExecute),
            ..eq.clone()
        };
        assert!(!wrong_effect.tolerates(&taint));
        let all = Toleration {
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        };
        assert!(all.tolerates(&taint));
        let other = Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        };
        assert!(!other.tolerates(&taint));
    }

    #[test]
    fn node_selector_terms() {
        let node = labels(&[("zone", "a"), ("cores", "8")]);
        let req = |key: &str, operator, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        };
        assert!(req("zone", NodeSelectorOperator::In, &["a", "b"]).matches(&node));
        assert!(!req("zone", NodeSelectorOperator::NotIn, &["a"]).matches(&node));
        assert!(req("cores", NodeSelectorOperator::Gt, &["4"]).matches(&node));
        assert!(!req("cores", NodeSelectorOperator::Lt, &["4"]).matches(&node));
        assert!(!req("zone", NodeSelectorOperator::Gt, &["4"]).matches(&node));
        assert!(req("gpu", NodeSelectorOperator::DoesNotExist, &[]).matches(&node));
        let sel = NodeSelector {
            node_selector_terms: vec![
                NodeSelectorTerm {
                    match_expressions: vec![req("zone", NodeSelectorOperator::In, &["b"])],
                },
                NodeSelectorTerm {
                    match_expressions: vec![req("cores", NodeSelectorOperator::Exists, &[])],
                },
            ],
        };
        assert!(sel.matches(&node));
        assert!(NodeSelector::default().matches(&node));
    }

    #[test]
    fn outbound_hosts() {
        for ok in [
            "example.com",
            "*.example.com",
            "https://api.example.com:8443",
            "http://127.0.0.1:8080",
            "10.0.0.5",
            "*",
            "*:443",
            "[::1]:80",
            "example.com:*",
        ] {
            assert!(is_outbound_host(ok), "{ok}");
        }
        for bad in [
            "",
            "https://",
            "example.com/path",
            "Example.com",
            "a b",
            "host:0",
            "[::1",
        ] {
            assert!(!is_outbound_host(bad), "{bad}");
        }
    }

    #[test]
    fn spec_checks_name_fields() {
        let spec = InstanceSpec {
            world: World::Command,
            resources: ResourceRequirements {
                limits: ResourceList {
                    cpu: Some(Quantity::parse("100m").expect("q")),
                    memory: Some(Quantity::parse("1Ki").expect("q")),
                },
                requests: ResourceList {
                    cpu: Some(Quantity::parse("1").expect("q")),
                    memory: None,
                },
            },
            liveness_probe: Some(Probe {
                period_seconds: 0,
                ..Probe::default()
            }),
            tolerations: vec![Toleration {
                toleration_seconds: Some(5),
                ..Toleration::default()
            }],
            ..InstanceSpec::default()
        };
        let mut errs = ValidationErrors::new();
        spec.check(&mut errs, "spec");
        let text = errs.to_string();
        for want in [
            "spec.module: required",
            "spec.resources.limits.memory:",
            "spec.resources.requests.cpu:",
            "spec.livenessProbe: HTTP probes need the http world",
            "spec.livenessProbe.periodSeconds: must be >= 1",
            "spec.tolerations[0].key: required",
            "spec.tolerations[0].tolerationSeconds:",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
    }

    #[test]
    fn resource_accessors_and_defaults() {
        let mut spec = InstanceSpec::default();
        spec.resources.limits.memory = Some(Quantity::parse("64Mi").expect("q"));
        spec.resources.limits.cpu = Some(Quantity::parse("500m").expect("q"));
        assert_eq!(spec.memory_request_bytes(), 64 << 20);
        assert_eq!(spec.cpu_request_millis(), 500);
        spec.apply_defaults();
        assert_eq!(spec.resources.requests.cpu, spec.resources.limits.cpu);
        assert_eq!(spec.memory_limit_bytes(), Some(64 << 20));
        let t = InstanceTemplate {
            spec: spec.clone(),
            ..InstanceTemplate::default()
        };
        assert_eq!(t.template_hash().len(), 10);
        assert_eq!(t.template_hash(), t.clone().template_hash());
        let mut t2 = t.clone();
        t2.spec.args.push("x".into());
        assert_ne!(t.template_hash(), t2.template_hash());
    }
}

//! [`Kind`], the tag of every object: names as manifests and the CLI spell
//! them, and what each kind is (namespaced, owner of instances, dotted names).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// [`Namespace`] (cluster-scoped).
    Namespace,
    /// [`Node`] (cluster-scoped).
    Node,
    /// [`Lease`].
    Lease,
    /// [`Instance`].
    Instance,
    /// [`Deployment`].
    Deployment,
    /// [`DaemonSet`].
    DaemonSet,
    /// [`Job`].
    Job,
    /// [`Service`].
    Service,
    /// [`Endpoints`].
    Endpoints,
    /// [`Event`].
    Event,
    /// [`Module`] (cluster-scoped).
    Module,
    /// [`Role`].
    Role,
    /// [`ClusterRole`] (cluster-scoped).
    ClusterRole,
    /// [`RoleBinding`].
    RoleBinding,
    /// [`ClusterRoleBinding`] (cluster-scoped).
    ClusterRoleBinding,
    /// [`ResourceQuota`].
    ResourceQuota,
    /// [`LimitRange`].
    LimitRange,
}

/// A kind name that is not one of [`Kind::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?} (known kinds: {kinds})", kinds = known_kinds())]
pub struct UnknownKind(pub String);

fn known_kinds() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 17] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Lease,
        Kind::Instance,
        Kind::Deployment,
        Kind::DaemonSet,
        Kind::Job,
        Kind::Service,
        Kind::Endpoints,
        Kind::Event,
        Kind::Module,
        Kind::Role,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::ClusterRoleBinding,
        Kind::ResourceQuota,
        Kind::LimitRange,
    ];

    /// Parses a kind name as the CLI accepts it: case-insensitive, singular,
    /// plural or short (`instance`, `instances`, `inst`, `deploy`, `svc`, `ns`, …).
    pub fn parse(s: &str) -> Result<Kind, UnknownKind> {
        let kind = match s.to_ascii_lowercase().as_str() {
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "node" | "nodes" | "no" => Kind::Node,
            "lease" | "leases" => Kind::Lease,
            "instance" | "instances" | "inst" => Kind::Instance,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "daemonset" | "daemonsets" | "ds" => Kind::DaemonSet,
            "job" | "jobs" => Kind::Job,
            "service" | "services" | "svc" => Kind::Service,
            "endpoints" | "endpoint" | "ep" => Kind::Endpoints,
            "event" | "events" | "ev" => Kind::Event,
            "module" | "modules" | "mod" => Kind::Module,
            "role" | "roles" => Kind::Role,
            "clusterrole" | "clusterroles" => Kind::ClusterRole,
            "rolebinding" | "rolebindings" => Kind::RoleBinding,
            "clusterrolebinding" | "clusterrolebindings" => Kind::ClusterRoleBinding,
            "resourcequota" | "resourcequotas" | "quota" => Kind::ResourceQuota,
            "limitrange" | "limitranges" | "limits" => Kind::LimitRange,
            _ => return Err(UnknownKind(s.to_owned())),
        };
        Ok(kind)
    }

    /// The kind's name as in manifests, e.g. `Instance`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Lease => "Lease",
            Kind::Instance => "Instance",
            Kind::Deployment => "Deployment",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::Event => "Event",
            Kind::Module => "Module",
            Kind::Role => "Role",
            Kind::ClusterRole => "ClusterRole",
            Kind::RoleBinding => "RoleBinding",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::ResourceQuota => "ResourceQuota",
            Kind::LimitRange => "LimitRange",
        }
    }

    /// Lowercase plural, e.g. `instances`.
    pub fn plural(&self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Lease => "leases",
            Kind::Instance => "instances",
            Kind::Deployment => "deployments",
            Kind::DaemonSet => "daemonsets",
            Kind::Job => "jobs",
            Kind::Service => "services",
            Kind::Endpoints => "endpoints",
            Kind::Event => "events",
            Kind::Module => "modules",
            Kind::Role => "roles",
            Kind::ClusterRole => "clusterroles",
            Kind::RoleBinding => "rolebindings",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::ResourceQuota => "resourcequotas",
            Kind::LimitRange => "limitranges",
        }
    }

    /// True for the workload kinds whose controllers own instances.
    pub fn owns_instances(&self) -> bool {
        matches!(self, Kind::Deployment | Kind::DaemonSet | Kind::Job)
    }

    /// False for the cluster-scoped kinds Namespace, Node, Module,
    /// ClusterRole and ClusterRoleBinding.
    pub fn namespaced(&self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::Node
                | Kind::Module
                | Kind::ClusterRole
                | Kind::ClusterRoleBinding
        )
    }

    /// True for the four kinds that grant permissions.
    pub fn is_rbac(&self) -> bool {
        matches!(
            self,
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding
        )
    }

    /// True when names of this kind may be DNS subdomains (with dots) rather
    /// than DNS labels: nodes (host names), leases (named after nodes), events
    /// (`<object>.<suffix>`), modules (`sha256-<hex>`) and the RBAC kinds.
    pub fn allows_dotted_names(&self) -> bool {
        matches!(self, Kind::Node | Kind::Lease | Kind::Event | Kind::Module) || self.is_rbac()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::parse(s)
    }
}

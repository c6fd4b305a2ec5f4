//! The Namespace kind: a scope for names of namespaced objects; deleting it
//! deletes what is in it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;

/// Name of the namespace that always exists and that namespaced objects default to.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A namespace (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespace {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Nothing to configure yet; kept for the Kubernetes shape.
    pub spec: NamespaceSpec,
    /// Whether the namespace is in use or being emptied.
    pub status: NamespaceStatus,
}

/// Desired state of a namespace (no fields yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceSpec {}

/// Observed state of a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceStatus {
    /// Active, or Terminating while its contents are deleted.
    pub phase: NamespacePhase,
}

/// Lifecycle phase of a namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NamespacePhase {
    /// Objects may be created in it.
    #[default]
    Active,
    /// Being deleted: its objects are going away and no new ones are accepted.
    Terminating,
}

impl fmt::Display for NamespacePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "Active",
            Self::Terminating => "Terminating",
        })
    }
}

impl Namespace {}

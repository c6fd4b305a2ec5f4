//! [`Object`], the one enum every stored object is, and [`Kind`], its tag.
//!
//! What is common to all kinds lives here, one concern a file: the kind table
//! ([`kind`]), reading and writing manifests ([`document`]), metadata
//! validation and defaulting ([`validate`]), and the comparisons `apply` needs
//! ([`compare`]). Per-kind rules live with each kind (`instance.rs`,
//! `deployment.rs`, …) and are dispatched from here. Table columns are the
//! CLI's.

use serde::{Deserialize, Serialize};

use crate::daemonset::DaemonSet;
use crate::deployment::Deployment;
use crate::endpoints::Endpoints;
use crate::event::Event;
use crate::instance::Instance;
use crate::job::Job;
use crate::lease::Lease;
use crate::meta::ObjectMeta;
use crate::module::Module;
use crate::namespace::Namespace;
use crate::node::Node;
use crate::quota::{LimitRange, ResourceQuota};
use crate::rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use crate::service::Service;

/// The API version of every Flotilla object.
pub const API_VERSION: &str = "flotilla.dev/v1";

/// Any Flotilla object. Externally tagged in serde, for the store and the wire;
/// use [`Object::to_manifest`] / [`Object::from_manifest`] for what users read
/// and write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A node.
    Node(Node),
    /// A lease.
    Lease(Lease),
    /// An instance.
    Instance(Instance),
    /// A deployment.
    Deployment(Deployment),
    /// A daemon set.
    DaemonSet(DaemonSet),
    /// A job.
    Job(Job),
    /// A service.
    Service(Service),
    /// Endpoints of a service.
    Endpoints(Endpoints),
    /// An event.
    Event(Event),
    /// A module.
    Module(Module),
    /// Rules in a namespace.
    Role(Role),
    /// Rules anywhere.
    ClusterRole(ClusterRole),
    /// A role granted in a namespace.
    RoleBinding(RoleBinding),
    /// A cluster role granted everywhere.
    ClusterRoleBinding(ClusterRoleBinding),
    /// Caps on a namespace.
    ResourceQuota(ResourceQuota),
    /// Defaults for a namespace's instances.
    LimitRange(LimitRange),
}

/// Runs `$body` with `$o` bound to the inner struct, whatever the variant.
macro_rules! dispatch {
    ($obj:expr, $o:ident => $body:expr) => {
        match $obj {
            Object::Namespace($o) => $body,
            Object::Node($o) => $body,
            Object::Lease($o) => $body,
            Object::Instance($o) => $body,
            Object::Deployment($o) => $body,
            Object::DaemonSet($o) => $body,
            Object::Job($o) => $body,
            Object::Service($o) => $body,
            Object::Endpoints($o) => $body,
            Object::Event($o) => $body,
            Object::Module($o) => $body,
            Object::Role($o) => $body,
            Object::ClusterRole($o) => $body,
            Object::RoleBinding($o) => $body,
            Object::ClusterRoleBinding($o) => $body,
            Object::ResourceQuota($o) => $body,
            Object::LimitRange($o) => $body,
        }
    };
}

/// A kind struct ([`Instance`], [`Deployment`], …): its [`Kind`] and metadata,
/// and conversions to and from [`Object`].
pub trait Resource: Clone + Into<Object> + TryFrom<Object, Error = Object> {
    /// The kind of this struct.
    const KIND: Kind;
    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;
    /// The object's metadata, mutably.
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
}

macro_rules! resource {
    ($($t:ident),*) => {$(
        impl Resource for $t {
            const KIND: Kind = Kind::$t;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl From<$t> for Object {
            fn from(o: $t) -> Object {
                Object::$t(o)
            }
        }

        impl TryFrom<Object> for $t {
            type Error = Object;
            /// The inner struct, or the object back when it is another kind.
            fn try_from(o: Object) -> Result<$t, Object> {
                match o {
                    Object::$t(inner) => Ok(inner),
                    other => Err(other),
                }
            }
        }
    )*};
}

resource!(
    Namespace,
    Node,
    Lease,
    Instance,
    Deployment,
    DaemonSet,
    Job,
    Service,
    Endpoints,
    Event,
    Module,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
    ResourceQuota,
    LimitRange
);

mod compare;
mod document;
mod kind;
mod validate;

pub use document::ManifestError;
pub use kind::{Kind, UnknownKind};
pub use validate::MAX_ANNOTATIONS_BYTES;

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Lease(_) => Kind::Lease,
            Object::Instance(_) => Kind::Instance,
            Object::Deployment(_) => Kind::Deployment,
            Object::DaemonSet(_) => Kind::DaemonSet,
            Object::Job(_) => Kind::Job,
            Object::Service(_) => Kind::Service,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Event(_) => Kind::Event,
            Object::Module(_) => Kind::Module,
            Object::Role(_) => Kind::Role,
            Object::ClusterRole(_) => Kind::ClusterRole,
            Object::RoleBinding(_) => Kind::RoleBinding,
            Object::ClusterRoleBinding(_) => Kind::ClusterRoleBinding,
            Object::ResourceQuota(_) => Kind::ResourceQuota,
            Object::LimitRange(_) => Kind::LimitRange,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        dispatch!(self, o => &o.metadata)
    }

    /// The object's metadata, mutably.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        dispatch!(self, o => &mut o.metadata)
    }

    /// An object of `kind` with default spec and status. The namespace is kept
    /// only for namespaced kinds.
    pub fn new_empty(kind: Kind, namespace: &str, name: &str) -> Object {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let metadata = ObjectMeta::new(namespace, name);
        match kind {
            Kind::Namespace => Object::Namespace(Namespace {
                metadata,
                ..Namespace::default()
            }),
            Kind::Node => Object::Node(Node {
                metadata,
                ..Node::default()
            }),
            Kind::Lease => Object::Lease(Lease {
                metadata,
                ..Lease::default()
            }),
            Kind::Instance => Object::Instance(Instance {
                metadata,
                ..Instance::default()
            }),
            Kind::Deployment => Object::Deployment(Deployment {
                metadata,
                ..Deployment::default()
            }),
            Kind::DaemonSet => Object::DaemonSet(DaemonSet {
                metadata,
                ..DaemonSet::default()
            }),
            Kind::Job => Object::Job(Job {
                metadata,
                ..Job::default()
            }),
            Kind::Service => Object::Service(Service {
                metadata,
                ..Service::default()
            }),
            Kind::Endpoints => Object::Endpoints(Endpoints {
                metadata,
                ..Endpoints::default()
            }),
            Kind::Event => Object::Event(Event {
                metadata,
                ..Event::default()
            }),
            Kind::Module => Object::Module(Module {
                metadata,
                ..Module::default()
            }),
            Kind::Role => Object::Role(Role {
                metadata,
                ..Role::default()
            }),
            Kind::ClusterRole => Object::ClusterRole(ClusterRole {
                metadata,
                ..ClusterRole::default()
            }),
            Kind::RoleBinding => Object::RoleBinding(RoleBinding {
                metadata,
                ..RoleBinding::default()
            }),
            Kind::ClusterRoleBinding => Object::ClusterRoleBinding(ClusterRoleBinding {
                metadata,
                ..ClusterRoleBinding::default()
            }),
            Kind::ResourceQuota => Object::ResourceQuota(ResourceQuota {
                metadata,
                ..ResourceQuota::default()
            }),
            Kind::LimitRange => Object::LimitRange(LimitRange {
                metadata,
                ..LimitRange::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests;

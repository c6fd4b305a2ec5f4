//! The comparisons `apply` and updates need: the desired state of an object
//! (what a manifest says) apart from what the server sets and observes.

use super::Object;
use crate::event::Event;
use crate::meta::ObjectMeta;

impl Object {
    /// The parts `apply` compares: name, namespace, labels, annotations, owner
    /// references, finalizers and everything but metadata and status.
    fn desired_view(&self) -> Object {
        let mut o = self.clone();
        let m = self.meta();
        *o.meta_mut() = ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            owner_references: m.owner_references.clone(),
            finalizers: m.finalizers.clone(),
            ..ObjectMeta::default()
        };
        o.clear_status();
        o
    }

    fn clear_status(&mut self) {
        match self {
            Object::Namespace(o) => o.status = Default::default(),
            Object::Node(o) => o.status = Default::default(),
            Object::Instance(o) => o.status = Default::default(),
            Object::Deployment(o) => o.status = Default::default(),
            Object::DaemonSet(o) => o.status = Default::default(),
            Object::Job(o) => o.status = Default::default(),
            Object::Service(o) => o.status = Default::default(),
            Object::ResourceQuota(o) => o.status = Default::default(),
            Object::Lease(_)
            | Object::Endpoints(_)
            | Object::Event(_)
            | Object::Module(_)
            | Object::Role(_)
            | Object::ClusterRole(_)
            | Object::RoleBinding(_)
            | Object::ClusterRoleBinding(_)
            | Object::LimitRange(_) => {}
        }
    }

    /// True when labels, annotations, owner references, finalizers and spec (for
    /// kinds without a spec: every non-metadata field) are equal; status and
    /// server-set metadata are ignored. `apply` prints "unchanged" when this holds.
    pub fn same_desired_state(&self, other: &Object) -> bool {
        self.kind() == other.kind() && self.desired_view() == other.desired_view()
    }

    /// Replaces this object's status with `other`'s when both are the same kind;
    /// a no-op otherwise and for kinds without status (Lease, Endpoints, Event,
    /// Module).
    pub fn copy_status_from(&mut self, other: &Object) {
        match (self, other) {
            (Object::Namespace(a), Object::Namespace(b)) => a.status = b.status.clone(),
            (Object::Node(a), Object::Node(b)) => a.status = b.status.clone(),
            (Object::Instance(a), Object::Instance(b)) => a.status = b.status.clone(),
            (Object::Deployment(a), Object::Deployment(b)) => a.status = b.status.clone(),
            (Object::DaemonSet(a), Object::DaemonSet(b)) => a.status = b.status.clone(),
            (Object::Job(a), Object::Job(b)) => a.status = b.status.clone(),
            (Object::Service(a), Object::Service(b)) => a.status = b.status.clone(),
            (Object::ResourceQuota(a), Object::ResourceQuota(b)) => a.status = b.status.clone(),
            _ => {}
        }
    }

    /// Replaces this object's spec with `other`'s when both are the same kind
    /// (for Endpoints the subsets, for Event every non-metadata field); a no-op
    /// otherwise.
    pub fn copy_spec_from(&mut self, other: &Object) {
        match (self, other) {
            (Object::Namespace(a), Object::Namespace(b)) => a.spec = b.spec.clone(),
            (Object::Node(a), Object::Node(b)) => a.spec = b.spec.clone(),
            (Object::Lease(a), Object::Lease(b)) => a.spec = b.spec.clone(),
            (Object::Instance(a), Object::Instance(b)) => a.spec = b.spec.clone(),
            (Object::Deployment(a), Object::Deployment(b)) => a.spec = b.spec.clone(),
            (Object::DaemonSet(a), Object::DaemonSet(b)) => a.spec = b.spec.clone(),
            (Object::Job(a), Object::Job(b)) => a.spec = b.spec.clone(),
            (Object::Service(a), Object::Service(b)) => a.spec = b.spec.clone(),
            (Object::Endpoints(a), Object::Endpoints(b)) => a.subsets = b.subsets.clone(),
            (Object::Event(a), Object::Event(b)) => {
                *a = Event {
                    metadata: std::mem::take(&mut a.metadata),
                    ..b.clone()
                }
            }
            (Object::Module(a), Object::Module(b)) => a.spec = b.spec.clone(),
            (Object::Role(a), Object::Role(b)) => a.rules = b.rules.clone(),
            (Object::ResourceQuota(a), Object::ResourceQuota(b)) => a.spec = b.spec.clone(),
            (Object::LimitRange(a), Object::LimitRange(b)) => a.spec = b.spec.clone(),
            (Object::ClusterRole(a), Object::ClusterRole(b)) => a.rules = b.rules.clone(),
            (Object::RoleBinding(a), Object::RoleBinding(b)) => {
                a.role_ref = b.role_ref.clone();
                a.subjects = b.subjects.clone();
            }
            (Object::ClusterRoleBinding(a), Object::ClusterRoleBinding(b)) => {
                a.role_ref = b.role_ref.clone();
                a.subjects = b.subjects.clone();
            }
            _ => {}
        }
    }
}

//! What every object must satisfy (metadata rules, then the kind's own), and
//! the defaults filled in before it is checked.

use super::{Kind, Object};
use crate::meta::ObjectMeta;
use crate::namespace::DEFAULT_NAMESPACE;
use crate::validation::{
    check_labels, check_timestamp, is_dns1123_label, is_dns1123_subdomain, is_qualified_name,
    ValidationErrors, LABEL_NAME_RULE, QUALIFIED_NAME_RULE, SUBDOMAIN_NAME_RULE,
};

/// Most bytes all annotations of one object may take together (keys and values).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

impl Object {
    /// Checks metadata rules (names, namespace, labels, annotations, owner
    /// references, finalizers, timestamps) and the kind's own rules, reporting
    /// every problem with its field path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::new();
        check_metadata(self.kind(), self.meta(), &mut errs);
        match self {
            Object::Namespace(_) => {}
            Object::Node(o) => o.validate_into(&mut errs),
            Object::Lease(o) => o.validate_into(&mut errs),
            Object::Instance(o) => o.validate_into(&mut errs),
            Object::Deployment(o) => o.validate_into(&mut errs),
            Object::DaemonSet(o) => o.validate_into(&mut errs),
            Object::Job(o) => o.validate_into(&mut errs),
            Object::Service(o) => o.validate_into(&mut errs),
            Object::Endpoints(o) => o.validate_into(&mut errs),
            Object::Event(o) => o.validate_into(&mut errs),
            Object::Module(o) => o.validate_into(&mut errs),
            Object::Role(o) => o.validate_into(&mut errs),
            Object::ClusterRole(o) => o.validate_into(&mut errs),
            Object::RoleBinding(o) => o.validate_into(&mut errs),
            Object::ClusterRoleBinding(o) => o.validate_into(&mut errs),
            Object::ResourceQuota(o) => o.validate_into(&mut errs),
            Object::LimitRange(o) => o.validate_into(&mut errs),
        }
        errs.into_result()
    }

    /// Fills in what a user may leave out: namespace `default` for namespaced
    /// kinds, instance requests from limits, a service port's targetPort from its
    /// port, a job's `job-name` selector. (Field defaults such as replicas 1,
    /// restartPolicy Always, strategy 25%/25%, completions 1, parallelism 1,
    /// backoffLimit 6 are already set when a manifest is read.) Idempotent.
    pub fn apply_defaults(&mut self) {
        if self.kind().namespaced() && self.meta().namespace.is_empty() {
            self.meta_mut().namespace = DEFAULT_NAMESPACE.to_owned();
        }
        match self {
            Object::Instance(o) => o.spec.apply_defaults(),
            Object::Deployment(o) => o.apply_defaults(),
            Object::DaemonSet(o) => o.apply_defaults(),
            Object::Job(o) => o.apply_defaults(),
            Object::Service(o) => o.apply_defaults(),
            _ => {}
        }
    }
}

fn check_metadata(kind: Kind, m: &ObjectMeta, errs: &mut ValidationErrors) {
    if m.name.is_empty() {
        errs.required("metadata.name");
    } else if kind == Kind::Module {
        if !crate::module::is_valid_module_name(&m.name) {
            errs.push(
                "metadata.name",
                format!(
                    "{:?} is not a valid module name (sha256-<64 hex digits>, or {SUBDOMAIN_NAME_RULE})",
                    m.name
                ),
            );
        }
    } else if kind.allows_dotted_names() {
        if !is_dns1123_subdomain(&m.name) {
            errs.push(
                "metadata.name",
                format!("{:?} is not a valid name ({SUBDOMAIN_NAME_RULE})", m.name),
            );
        }
    } else if !is_dns1123_label(&m.name) {
        errs.push(
            "metadata.name",
            format!("{:?} is not a valid name ({LABEL_NAME_RULE})", m.name),
        );
    }
    if kind.namespaced() {
        if m.namespace.is_empty() {
            errs.required("metadata.namespace");
        } else if !is_dns1123_label(&m.namespace) {
            errs.push(
                "metadata.namespace",
                format!(
                    "{:?} is not a valid namespace name ({LABEL_NAME_RULE})",
                    m.namespace
                ),
            );
        }
    } else if !m.namespace.is_empty() {
        errs.push(
            "metadata.namespace",
            format!("must be empty: {kind} is cluster-scoped"),
        );
    }
    if !m.resource_version.is_empty() && m.resource_version.parse::<u64>().is_err() {
        errs.push(
            "metadata.resourceVersion",
            format!("{:?} is not a revision number", m.resource_version),
        );
    }
    check_labels(errs, "metadata.labels", &m.labels);
    let mut annotation_bytes = 0;
    for (k, v) in &m.annotations {
        if !is_qualified_name(k) {
            errs.push(
                "metadata.annotations",
                format!("{k:?} is not a valid annotation key ({QUALIFIED_NAME_RULE})"),
            );
        }
        annotation_bytes += k.len() + v.len();
    }
    if annotation_bytes > MAX_ANNOTATIONS_BYTES {
        errs.push(
            "metadata.annotations",
            format!("total size {annotation_bytes} bytes exceeds {MAX_ANNOTATIONS_BYTES}"),
        );
    }
    let mut controllers = 0;
    for (i, r) in m.owner_references.iter().enumerate() {
        let f = format!("metadata.ownerReferences[{i}]");
        for (name, value) in [
            ("apiVersion", &r.api_version),
            ("kind", &r.kind),
            ("name", &r.name),
            ("uid", &r.uid),
        ] {
            if value.is_empty() {
                errs.required(format!("{f}.{name}"));
            }
        }
        if r.controller {
            controllers += 1;
            if controllers > 1 {
                errs.push(
                    format!("{f}.controller"),
                    "only one owner reference may be the controller",
                );
            }
        }
    }
    for (i, fin) in m.finalizers.iter().enumerate() {
        if !is_qualified_name(fin) {
            errs.push(
                format!("metadata.finalizers[{i}]"),
                format!("{fin:?} is not a valid finalizer name ({QUALIFIED_NAME_RULE})"),
            );
        }
    }
    check_timestamp(errs, "metadata.creationTimestamp", &m.creation_timestamp);
    check_timestamp(errs, "metadata.deletionTimestamp", &m.deletion_timestamp);
}

//! [`Object`], the one enum every stored object is, and [`Kind`], its tag.
//!
//! This module owns what is common to all kinds: reading and writing manifests
//! (`apiVersion`/`kind`/`metadata`/…), metadata validation, defaulting, the
//! comparisons `apply` needs, and the columns of `flotilla get`. Per-kind rules
//! live with each kind (`instance.rs`, `deployment.rs`, …) and are dispatched
//! from here.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::daemonset::DaemonSet;
use crate::deployment::Deployment;
use crate::duration::format_age;
use crate::endpoints::Endpoints;
use crate::event::Event;
use crate::instance::Instance;
use crate::job::Job;
use crate::lease::Lease;
use crate::meta::{elapsed_since, ObjectMeta};
use crate::module::Module;
use crate::namespace::{Namespace, DEFAULT_NAMESPACE};
use crate::node::Node;
use crate::service::Service;
use crate::validation::{
    check_labels, check_timestamp, is_dns1123_label, is_dns1123_subdomain, is_qualified_name,
    ValidationErrors, LABEL_NAME_RULE, QUALIFIED_NAME_RULE, SUBDOMAIN_NAME_RULE,
};

/// The API version of every Flotilla object.
pub const API_VERSION: &str = "flotilla.dev/v1";

/// Most bytes all annotations of one object may take together (keys and values).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

// === Kind ===

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
    pub const ALL: [Kind; 11] = [
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
        }
    }

    /// True for the workload kinds whose controllers own instances.
    pub fn owns_instances(&self) -> bool {
        matches!(self, Kind::Deployment | Kind::DaemonSet | Kind::Job)
    }

    /// False for the cluster-scoped kinds Namespace, Node and Module.
    pub fn namespaced(&self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::Module)
    }

    /// True when names of this kind may be DNS subdomains (with dots) rather
    /// than DNS labels: nodes (host names), leases (named after nodes), events
    /// (`<object>.<suffix>`) and modules (`sha256-<hex>`).
    pub fn allows_dotted_names(&self) -> bool {
        matches!(self, Kind::Node | Kind::Lease | Kind::Event | Kind::Module)
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

// === ManifestError ===

/// Why a manifest document could not be turned into a valid object.
///
/// Displays as `document 2 (Instance "web"): spec.resources.limits.memory: "64Xi"
/// is not a quantity (…)`, leaving out what is unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based document number in the file; 0 when not known.
    pub document: usize,
    /// Kind named by the document, when known.
    pub kind: String,
    /// `metadata.name` of the document, when known.
    pub name: String,
    /// Dotted path of the offending field; empty for the whole document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ManifestError {
    /// An error about `field` of an object of `kind` named `name`.
    pub fn new(kind: &str, name: &str, field: &str, message: impl Into<String>) -> Self {
        ManifestError {
            document: 0,
            kind: kind.to_owned(),
            name: name.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Validation errors of an object as one manifest error: the first error's
    /// field, and every message (the others with their fields).
    pub fn from_validation(kind: &str, name: &str, errs: &ValidationErrors) -> Self {
        let mut e = ManifestError::new(kind, name, "", "invalid object");
        if let Some((first, rest)) = errs.0.split_first() {
            e.field = first.field.clone();
            e.message = first.message.clone();
            for other in rest {
                e.message.push_str("; ");
                e.message.push_str(&other.to_string());
            }
        }
        e
    }

    /// Sets the document number.
    pub fn in_document(mut self, document: usize) -> Self {
        self.document = document;
        self
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut context = false;
        if self.document > 0 {
            write!(f, "document {}", self.document)?;
            context = true;
        }
        if !self.kind.is_empty() {
            let (open, close) = if context { (" (", ")") } else { ("", "") };
            f.write_str(open)?;
            f.write_str(&self.kind)?;
            if !self.name.is_empty() {
                write!(f, " {:?}", self.name)?;
            }
            f.write_str(close)?;
            context = true;
        }
        if context {
            f.write_str(": ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

// === Object ===

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
    Namespace, Node, Lease, Instance, Deployment, DaemonSet, Job, Service, Endpoints, Event, Module
);

fn deserialize_kind<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize::<_, T>(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, humanize_serde_message(&e.into_inner().to_string()))
    })
}

/// Rewrites serde's integer range messages (`invalid value: integer `-1`,
/// expected u32`) into the rule they break.
fn humanize_serde_message(msg: &str) -> String {
    let parsed = msg
        .strip_prefix("invalid value: integer `")
        .and_then(|rest| rest.split_once("`, expected "));
    if let Some((number, expected)) = parsed {
        let max = match expected {
            "u8" => Some(u64::from(u8::MAX)),
            "u16" => Some(u64::from(u16::MAX)),
            "u32" => Some(u64::from(u32::MAX)),
            "u64" => Some(u64::MAX),
            _ => None,
        };
        if let Some(max) = max {
            return if number.starts_with('-') {
                format!("must be >= 0, got {number}")
            } else {
                format!("must be at most {max}, got {number}")
            };
        }
    }
    msg.to_owned()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

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
        }
    }

    /// The object as a manifest: `apiVersion`, `kind`, `metadata`, then `spec`
    /// and `status` (or the kind's own top-level fields). Nulls, empty strings,
    /// `false`, empty lists and mappings, and a zero generation are left out, so
    /// it reads like a hand-written manifest; label-like maps keep empty values.
    pub fn to_manifest(&self) -> Value {
        let body = dispatch!(self, o => serde_json::to_value(o));
        // Serializing plain data into a Value cannot fail; an empty body is the
        // safe fallback should it ever.
        let body = match body {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let mut out = Map::new();
        out.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        out.insert("kind".into(), Value::String(self.kind().as_str().into()));
        // A Service's selector is a label map whose empty values matter.
        let label_map = |key: &str| {
            LABEL_MAPS.contains(&key) || (self.kind() == Kind::Service && key == "selector")
        };
        for (k, mut v) in body {
            if !prune(&mut v, &k, &label_map, false) {
                out.insert(k, v);
            }
        }
        Value::Object(out)
    }

    /// Reads a manifest (the shape [`Object::to_manifest`] writes). Checks
    /// `apiVersion` and `kind` (exact kind name, e.g. `Instance`) and reports
    /// the path of a bad field. Does not apply defaults or validate.
    pub fn from_manifest(value: Value) -> Result<Object, ManifestError> {
        let mut map = match value {
            Value::Object(map) => map,
            other => {
                return Err(ManifestError::new(
                    "",
                    "",
                    "",
                    format!(
                        "expected a mapping with apiVersion, kind and metadata, found {}",
                        json_type(&other)
                    ),
                ))
            }
        };
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind_text = match map.remove("kind") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(ManifestError::new(
                    "",
                    &name,
                    "kind",
                    format!("must be a string, found {}", json_type(&other)),
                ))
            }
            None => return Err(ManifestError::new("", &name, "kind", "required")),
        };
        match map.remove("apiVersion") {
            Some(Value::String(v)) if v == API_VERSION => {}
            Some(Value::String(v)) => {
                return Err(ManifestError::new(
                    &kind_text,
                    &name,
                    "apiVersion",
                    format!("{v:?} is not supported (expected {API_VERSION})"),
                ))
            }
            Some(other) => {
                return Err(ManifestError::new(
                    &kind_text,
                    &name,
                    "apiVersion",
                    format!(
                        "must be the string {API_VERSION}, found {}",
                        json_type(&other)
                    ),
                ))
            }
            None => {
                return Err(ManifestError::new(
                    &kind_text,
                    &name,
                    "apiVersion",
                    format!("required (use {API_VERSION})"),
                ))
            }
        }
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == kind_text) else {
            let mut message = UnknownKind(kind_text.clone()).to_string();
            if let Ok(k) = Kind::parse(&kind_text) {
                message = format!(
                    "unknown kind {kind_text:?} (did you mean {:?}?)",
                    k.as_str()
                );
            }
            return Err(ManifestError::new("", &name, "kind", message));
        };
        let parsed = match kind {
            Kind::Namespace => deserialize_kind(map).map(Object::Namespace),
            Kind::Node => deserialize_kind(map).map(Object::Node),
            Kind::Lease => deserialize_kind(map).map(Object::Lease),
            Kind::Instance => deserialize_kind(map).map(Object::Instance),
            Kind::Deployment => deserialize_kind(map).map(Object::Deployment),
            Kind::DaemonSet => deserialize_kind(map).map(Object::DaemonSet),
            Kind::Job => deserialize_kind(map).map(Object::Job),
            Kind::Service => deserialize_kind(map).map(Object::Service),
            Kind::Endpoints => deserialize_kind(map).map(Object::Endpoints),
            Kind::Event => deserialize_kind(map).map(Object::Event),
            Kind::Module => deserialize_kind(map).map(Object::Module),
        };
        parsed.map_err(|(field, message)| ManifestError::new(kind.as_str(), &name, &field, message))
    }

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
            Object::Lease(_) | Object::Endpoints(_) | Object::Event(_) | Object::Module(_) => {}
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
            _ => {}
        }
    }

    /// Header and value pairs for a `flotilla get` table row, kubectl-like:
    /// NAME first (except events, which follow `kubectl get events`: LAST SEEN,
    /// TYPE, REASON, OBJECT, MESSAGE); `wide` adds columns. AGE is computed from
    /// `creationTimestamp` and the current time.
    pub fn summary_columns(&self, wide: bool) -> Vec<(&'static str, String)> {
        let age = elapsed_since(
            &self.meta().creation_timestamp,
            time::OffsetDateTime::now_utc(),
        )
        .map(format_age)
        .unwrap_or_else(|| "<unknown>".to_owned());
        match self {
            Object::Namespace(o) => o.columns(wide, age),
            Object::Node(o) => o.columns(wide, age),
            Object::Lease(o) => o.columns(wide, age),
            Object::Instance(o) => o.columns(wide, age),
            Object::Deployment(o) => o.columns(wide, age),
            Object::DaemonSet(o) => o.columns(wide, age),
            Object::Job(o) => o.columns(wide, age),
            Object::Service(o) => o.columns(wide, age),
            Object::Endpoints(o) => o.columns(wide, age),
            Object::Event(o) => o.columns(wide, age),
            Object::Module(o) => o.columns(wide, age),
        }
    }
}

/// Keys whose values are label-like maps: their entries are user data and keep
/// empty values when a manifest is pruned.
const LABEL_MAPS: [&str; 4] = ["labels", "annotations", "nodeSelector", "matchLabels"];

/// Removes empty fields from `v`, the value of field `key` (see
/// [`Object::to_manifest`]); returns true when `v` itself is empty and should be
/// left out by its parent. Entries of a label map (`in_label_map`) are kept as
/// they are; list elements are pruned inside but never removed; a zero
/// `generation` in any `metadata` (templates included) is removed.
fn prune(v: &mut Value, key: &str, label_map: &dyn Fn(&str) -> bool, in_label_map: bool) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !*b,
        Value::Number(_) => false,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => {
            for item in items.iter_mut() {
                prune(item, "", label_map, false);
            }
            items.is_empty()
        }
        Value::Object(map) => {
            if key == "metadata" && map.get("generation").and_then(Value::as_u64) == Some(0) {
                map.remove("generation");
            }
            if !in_label_map {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    let child_is_label_map = label_map(&k);
                    let empty = map
                        .get_mut(&k)
                        .is_some_and(|child| prune(child, &k, label_map, child_is_label_map));
                    if empty {
                        map.remove(&k);
                    }
                }
            }
            map.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemonset::DaemonSetSpec;
    use crate::deployment::{DeploymentRevision, IntOrPercent};
    use crate::endpoints::{EndpointAddress, EndpointPort, EndpointSubset};
    use crate::event::{EventSource, EventType};
    use crate::instance::{
        EnvVar, InstancePhase, InstancePort, InstanceTemplate, Probe, RestartPolicy, Toleration,
        TolerationOperator, World,
    };
    use crate::job::JobSpec;
    use crate::lease::LeaseSpec;
    use crate::meta::{Condition, ConditionStatus, ObjectReference, OwnerReference};
    use crate::module::{ModuleSpec, ModuleType};
    use crate::node::{NodeResources, Taint, TaintEffect};
    use crate::quantity::Quantity;
    use crate::service::{Protocol, ServicePort, TargetPort};

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).expect("quantity")
    }

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        let mut m = ObjectMeta::new(namespace, name);
        m.uid = "0b6f6c1e-uid".into();
        m.resource_version = "42".into();
        m.generation = 2;
        m.labels.insert("app".into(), "web".into());
        m.labels.insert("empty".into(), String::new());
        m.annotations.insert("note".into(), "hello".into());
        m.creation_timestamp = "2024-05-01T12:00:00Z".into();
        m
    }

    fn template() -> InstanceTemplate {
        let mut t = InstanceTemplate::default();
        t.metadata.labels.insert("app".into(), "web".into());
        t.spec.module = format!("sha256:{}", "ab".repeat(32));
        t.spec.world = World::Http;
        t.spec.args = vec!["--flag".into(), String::new()];
        t.spec.env = vec![EnvVar {
            name: "MODE".into(),
            value: String::new(),
        }];
        t.spec.ports = vec![InstancePort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }];
        t.spec.resources.limits.memory = Some(q("64Mi"));
        t.spec.resources.limits.cpu = Some(q("500m"));
        t.spec.tolerations = vec![Toleration {
            key: "edge".into(),
            operator: TolerationOperator::Exists,
            effect: Some(TaintEffect::NoExecute),
            toleration_seconds: Some(30),
            ..Toleration::default()
        }];
        t.spec.readiness_probe = Some(Probe::default());
        t.spec.allowed_outbound_hosts = vec!["api.example.com".into()];
        t
    }

    /// One populated object of every kind.
    fn samples() -> Vec<Object> {
        let mut ns = Namespace {
            metadata: meta("", "team-a"),
            ..Namespace::default()
        };
        ns.metadata.finalizers = vec!["flotilla.dev/namespace".into()];
        let mut node = Node {
            metadata: meta("", "edge-1.local"),
            ..Node::default()
        };
        node.spec.taints = vec![Taint::parse("edge=true:NoSchedule").expect("taint")];
        node.spec.instance_cidr = "10.244.1.0/24".into();
        node.status.capacity = NodeResources {
            cpu: q("2"),
            memory: q("4Gi"),
            instances: 1000,
        };
        node.status.allocatable = node.status.capacity.clone();
        node.status.conditions = vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "AgentReady".into(),
            message: String::new(),
            last_transition_time: "2024-05-01T12:00:00Z".into(),
        }];
        node.status.node_info.wasmtime_version = "48.0.0".into();
        let lease = Lease {
            metadata: meta("flotilla-node-lease", "edge-1.local"),
            spec: LeaseSpec {
                holder_identity: "node:edge-1.local".into(),
                lease_duration_seconds: 40,
                acquire_time: "2024-05-01T12:00:00Z".into(),
                renew_time: "2024-05-01T12:00:10.5Z".into(),
                lease_transitions: 3,
            },
        };
        let mut inst = Instance {
            metadata: meta("default", "web-1"),
            spec: template().spec,
            ..Instance::default()
        };
        inst.metadata.owner_references = vec![OwnerReference {
            api_version: API_VERSION.into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "u1".into(),
            controller: true,
            block_owner_deletion: false,
        }];
        inst.status.phase = InstancePhase::Running;
        inst.status.instance_ip = "10.244.1.7".into();
        inst.status.exit_code = Some(0);
        inst.status.restart_count = 2;
        let mut deploy = Deployment {
            metadata: meta("default", "web"),
            ..Deployment::default()
        };
        deploy.spec.replicas = 0;
        deploy
            .spec
            .selector
            .match_labels
            .insert("app".into(), "web".into());
        deploy.spec.template = template();
        deploy.spec.strategy.rolling_update.max_surge = IntOrPercent::Int(1);
        deploy.status.history = vec![DeploymentRevision {
            revision: 1,
            template_hash: template().template_hash(),
            template: template(),
            change_cause: String::new(),
            created: "2024-05-01T12:00:00Z".into(),
        }];
        let ds = DaemonSet {
            metadata: meta("default", "agent"),
            spec: DaemonSetSpec {
                selector: crate::labels::Selector::from_labels(
                    [("app".to_owned(), "web".to_owned())].into(),
                ),
                template: template(),
                ..DaemonSetSpec::default()
            },
            ..DaemonSet::default()
        };
        let mut job_template = template();
        job_template.spec.restart_policy = RestartPolicy::Never;
        job_template.spec.world = World::Command;
        job_template.spec.readiness_probe = None;
        let job = Job {
            metadata: meta("default", "batch"),
            spec: JobSpec {
                completions: 5,
                parallelism: 2,
                active_deadline_seconds: Some(600),
                template: job_template,
                ..JobSpec::default()
            },
            ..Job::default()
        };
        let mut svc = Service {
            metadata: meta("default", "web"),
            ..Service::default()
        };
        svc.spec.selector.insert("app".into(), "web".into());
        svc.spec.selector.insert("tier".into(), String::new());
        svc.spec.ports = vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: Some(TargetPort::Name("http".into())),
            protocol: Protocol::Tcp,
        }];
        svc.spec.cluster_ip = "10.96.0.10".into();
        svc.spec.ingress.host = "hello.local".into();
        let ep = Endpoints {
            metadata: meta("default", "web"),
            subsets: vec![EndpointSubset {
                addresses: vec![EndpointAddress {
                    ip: "10.244.1.7".into(),
                    node_name: "edge-1.local".into(),
                    target_ref: Some(ObjectReference {
                        kind: "Instance".into(),
                        namespace: "default".into(),
                        name: "web-1".into(),
                        uid: "u2".into(),
                    }),
                }],
                not_ready_addresses: vec![],
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }],
            }],
        };
        let ev = Event {
            metadata: meta("default", "web-1.17a3b2c4d5e6f708"),
            involved_object: ObjectReference {
                kind: "Instance".into(),
                namespace: "default".into(),
                name: "web-1".into(),
                uid: "u2".into(),
            },
            reason: "FailedScheduling".into(),
            message: "0/3 nodes are available: 3 insufficient memory.".into(),
            type_: EventType::Warning,
            count: 4,
            first_timestamp: "2024-05-01T12:00:00Z".into(),
            last_timestamp: "2024-05-01T12:05:00Z".into(),
            source: EventSource {
                component: "scheduler".into(),
                host: String::new(),
            },
        };
        let module = Module {
            metadata: meta("", &format!("sha256-{}", "ab".repeat(32))),
            spec: ModuleSpec {
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 12_345,
                module_type: ModuleType::Core,
                source: "hello.wasm".into(),
            },
        };
        vec![
            Object::Namespace(ns),
            Object::Node(node),
            Object::Lease(lease),
            Object::Instance(inst),
            Object::Deployment(deploy),
            Object::DaemonSet(ds),
            Object::Job(job),
            Object::Service(svc),
            Object::Endpoints(ep),
            Object::Event(ev),
            Object::Module(module),
        ]
    }

    #[test]
    fn samples_cover_every_kind_and_are_valid() {
        let objs = samples();
        let kinds: Vec<Kind> = objs.iter().map(Object::kind).collect();
        assert_eq!(kinds, Kind::ALL.to_vec());
        for o in &objs {
            if let Err(e) = o.validate() {
                panic!("{} invalid: {e}", o.kind());
            }
        }
    }

    #[test]
    fn round_trip_postcard_json_and_manifest() {
        for obj in samples() {
            let bytes = postcard::to_stdvec(&obj).expect("postcard encode");
            let back: Object = postcard::from_bytes(&bytes).expect("postcard decode");
            assert_eq!(back, obj, "postcard {}", obj.kind());

            let json = serde_json::to_string(&obj).expect("json encode");
            let back: Object = serde_json::from_str(&json).expect("json decode");
            assert_eq!(back, obj, "json {}", obj.kind());

            let manifest = obj.to_manifest();
            let back = Object::from_manifest(manifest.clone())
                .unwrap_or_else(|e| panic!("manifest {}: {e}\n{manifest:#}", obj.kind()));
            assert_eq!(back, obj, "manifest {}", obj.kind());

            let yaml = serde_yaml_ng::to_string(&manifest).expect("yaml");
            let parsed = crate::manifest::parse_manifests(&yaml)
                .unwrap_or_else(|e| panic!("yaml {}: {e}\n{yaml}", obj.kind()));
            assert_eq!(parsed.len(), 1);
            let mut want = obj.clone();
            want.apply_defaults();
            assert_eq!(parsed[0], want, "yaml {}", obj.kind());
        }
    }

    #[test]
    fn every_empty_object_round_trips() {
        for kind in Kind::ALL {
            let obj = Object::new_empty(kind, "default", "x");
            assert_eq!(obj.kind(), kind);
            assert_eq!(obj.meta().namespace.is_empty(), !kind.namespaced());
            let bytes = postcard::to_stdvec(&obj).expect("encode");
            assert_eq!(postcard::from_bytes::<Object>(&bytes).expect("decode"), obj);
            let back = Object::from_manifest(obj.to_manifest()).expect("manifest");
            assert_eq!(back, obj, "{kind}");
        }
    }

    #[test]
    fn to_manifest_prunes_empty_fields() {
        let mut inst = Instance {
            metadata: ObjectMeta::new("default", "web"),
            ..Instance::default()
        };
        inst.metadata.labels.insert("flag".into(), String::new());
        inst.spec.module = "./web.wasm".into();
        let m = Object::Instance(inst).to_manifest();
        assert_eq!(m["apiVersion"], API_VERSION);
        assert_eq!(m["kind"], "Instance");
        let meta = m["metadata"].as_object().expect("metadata");
        assert_eq!(
            meta.keys().collect::<Vec<_>>(),
            ["labels", "name", "namespace"],
            "{m:#}"
        );
        assert_eq!(m["metadata"]["labels"]["flag"], "");
        let spec = m["spec"].as_object().expect("spec");
        for absent in [
            "args",
            "env",
            "nodeName",
            "nodeSelector",
            "affinity",
            "resources",
            "livenessProbe",
        ] {
            assert!(!spec.contains_key(absent), "{absent} in {m:#}");
        }
        assert_eq!(m["spec"]["module"], "./web.wasm");
        assert_eq!(m["spec"]["restartPolicy"], "Always");
        assert_eq!(m["status"]["phase"], "Pending");
        assert!(m["status"].get("exitCode").is_none());
        assert!(m["status"].get("instanceIP").is_none());

        let ns = Object::new_empty(Kind::Namespace, "", "team");
        let m = ns.to_manifest();
        assert!(m.get("spec").is_none(), "{m:#}");
        assert_eq!(m["status"]["phase"], "Active");

        let mut svc = Object::new_empty(Kind::Service, "default", "s");
        if let Object::Service(s) = &mut svc {
            s.spec.selector.insert("x".into(), String::new());
        }
        assert_eq!(svc.to_manifest()["spec"]["selector"]["x"], "");

        let d = samples().remove(4).to_manifest();
        assert!(
            d["spec"]["template"]["metadata"]
                .get("generation")
                .is_none(),
            "{d:#}"
        );

        let mut o = samples().remove(3);
        o.meta_mut().resource_version = "17".into();
        let m = o.to_manifest();
        assert_eq!(m["metadata"]["resourceVersion"], "17");
        assert_eq!(m["metadata"]["generation"], 2);
    }

    #[test]
    fn from_manifest_errors() {
        let cases = [
            (
                serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
                r#"Deployment "web": apiVersion: "apps/v1" is not supported (expected flotilla.dev/v1)"#,
            ),
            (
                serde_json::json!({"apiVersion": API_VERSION, "kind": "Pod", "metadata": {"name": "web"}}),
                "kind: unknown kind \"Pod\" (known kinds: Namespace, Node, Lease, Instance, Deployment, DaemonSet, Job, Service, Endpoints, Event, Module)",
            ),
            (
                serde_json::json!({"apiVersion": API_VERSION, "kind": "instance"}),
                r#"kind: unknown kind "instance" (did you mean "Instance"?)"#,
            ),
            (
                serde_json::json!({"apiVersion": API_VERSION, "metadata": {"name": "web"}}),
                "kind: required",
            ),
            (
                serde_json::json!({"apiVersion": API_VERSION, "kind": "Instance", "metadata": {"name": "web"}, "spec": {"resources": {"limits": {"memory": "64Xi"}}}}),
                r#"Instance "web": spec.resources.limits.memory: "64Xi" is not a quantity"#,
            ),
            (
                serde_json::json!({"apiVersion": API_VERSION, "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": -1}}),
                r#"Deployment "web": spec.replicas: must be >= 0, got -1"#,
            ),
            (
                serde_json::json!({"apiVersion": API_VERSION, "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "prot": "TCP"}]}}),
                r#"Service "s": spec.ports[0].prot: unknown field `prot`, expected one of `name`, `port`, `targetPort`, `protocol`"#,
            ),
            (
                serde_json::json!({"apiVersion": API_VERSION, "kind": "Instance", "spce": {}}),
                "Instance: spce: unknown field `spce`, expected one of `metadata`, `spec`, `status`",
            ),
            (serde_json::json!([1, 2]), "expected a mapping"),
        ];
        for (value, want) in cases {
            let err = Object::from_manifest(value).expect_err(want);
            let text = err.to_string();
            assert!(text.starts_with(want), "got {text:?}, want {want:?}");
        }
    }

    #[test]
    fn validation_messages() {
        let mut o = Object::new_empty(Kind::Instance, "", "Web_1");
        let errs = o.validate().expect_err("invalid");
        let text = errs.to_string();
        assert!(text.contains(r#"metadata.name: "Web_1" is not a valid name (lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"#), "{text}");
        assert!(text.contains("metadata.namespace: required"), "{text}");
        assert!(text.contains("spec.module: required"), "{text}");
        o.apply_defaults();
        assert_eq!(o.meta().namespace, "default");

        let mut d = Object::new_empty(Kind::Deployment, "default", "web");
        let text = d.validate().expect_err("invalid").to_string();
        assert!(text.contains("spec.selector: required"), "{text}");
        assert!(
            text.contains("spec.template.spec.module: required"),
            "{text}"
        );
        if let Object::Deployment(dep) = &mut d {
            dep.spec
                .selector
                .match_labels
                .insert("app".into(), "web".into());
            dep.spec
                .template
                .metadata
                .labels
                .insert("app".into(), "web".into());
            dep.spec.template.spec.module = "./web.wasm".into();
        }
        d.validate().expect("valid");

        let n = Object::new_empty(Kind::Node, "ignored", "edge-1.example.com");
        n.validate().expect("dotted node names are fine");
        let mut n = n;
        n.meta_mut().namespace = "default".into();
        let text = n.validate().expect_err("namespaced node").to_string();
        assert!(
            text.contains("metadata.namespace: must be empty: Node is cluster-scoped"),
            "{text}"
        );
    }

    #[test]
    fn defaults() {
        let mut job = Object::new_empty(Kind::Job, "", "batch");
        job.apply_defaults();
        let Object::Job(j) = &job else { unreachable!() };
        assert_eq!(j.metadata.namespace, "default");
        assert_eq!(
            (j.spec.completions, j.spec.parallelism, j.spec.backoff_limit),
            (1, 1, 6)
        );
        assert_eq!(
            j.spec
                .selector
                .match_labels
                .get("job-name")
                .map(String::as_str),
            Some("batch")
        );
        assert!(j.spec.selector.matches(&j.spec.template.metadata.labels));

        let Object::Deployment(d) = Object::new_empty(Kind::Deployment, "default", "web") else {
            unreachable!()
        };
        assert_eq!(d.spec.replicas, 1);
        assert_eq!(
            d.spec.strategy.rolling_update.max_surge,
            IntOrPercent::Percent(25)
        );
        assert_eq!(
            d.spec.strategy.rolling_update.max_unavailable,
            IntOrPercent::Percent(25)
        );

        let mut svc = samples().remove(7);
        if let Object::Service(s) = &mut svc {
            s.spec.ports[0].target_port = None;
        }
        svc.apply_defaults();
        let Object::Service(s) = &svc else {
            unreachable!()
        };
        assert_eq!(s.spec.ports[0].target_port, Some(TargetPort::Number(80)));

        let mut again = svc.clone();
        again.apply_defaults();
        assert_eq!(again, svc, "defaults are idempotent");
    }

    #[test]
    fn desired_state_and_copies() {
        let objs = samples();
        let a = objs[3].clone();
        let mut b = a.clone();
        b.meta_mut().resource_version = "99".into();
        b.meta_mut().uid = "other".into();
        b.meta_mut().generation = 7;
        if let Object::Instance(i) = &mut b {
            i.status.phase = InstancePhase::Failed;
        }
        assert!(a.same_desired_state(&b));
        let mut c = b.clone();
        c.meta_mut().labels.insert("new".into(), "x".into());
        assert!(!a.same_desired_state(&c));
        let mut d = b.clone();
        if let Object::Instance(i) = &mut d {
            i.spec.args.push("more".into());
        }
        assert!(!a.same_desired_state(&d));
        assert!(!a.same_desired_state(&objs[4]));

        let mut x = a.clone();
        x.copy_status_from(&b);
        let Object::Instance(xi) = &x else {
            unreachable!()
        };
        assert_eq!(xi.status.phase, InstancePhase::Failed);
        x.copy_spec_from(&d);
        let Object::Instance(xi) = &x else {
            unreachable!()
        };
        assert_eq!(xi.spec.args.last().map(String::as_str), Some("more"));
        // Different kinds: no-op.
        let before = x.clone();
        x.copy_spec_from(&objs[0]);
        x.copy_status_from(&objs[0]);
        assert_eq!(x, before);

        let mut ev = objs[9].clone();
        let mut other = objs[9].clone();
        other.meta_mut().name = "other".into();
        if let Object::Event(e) = &mut other {
            e.count = 9;
        }
        ev.copy_spec_from(&other);
        let Object::Event(e) = &ev else {
            unreachable!()
        };
        assert_eq!(e.count, 9);
        assert_eq!(e.metadata.name, "web-1.17a3b2c4d5e6f708");
    }

    #[test]
    fn columns() {
        for obj in samples() {
            for wide in [false, true] {
                let cols = obj.summary_columns(wide);
                assert!(!cols.is_empty());
                if obj.kind() != Kind::Event {
                    assert_eq!(cols[0], ("NAME", obj.meta().name.clone()), "{}", obj.kind());
                    assert!(
                        cols.iter().any(|(h, v)| *h == "AGE" && v.ends_with('d')),
                        "{cols:?}"
                    );
                }
            }
        }
        let cols = samples()[3].summary_columns(true);
        let get = |h: &str| cols.iter().find(|(k, _)| *k == h).map(|(_, v)| v.clone());
        assert_eq!(get("STATUS").as_deref(), Some("Running"));
        assert_eq!(get("RESTARTS").as_deref(), Some("2"));
        assert_eq!(get("IP").as_deref(), Some("10.244.1.7"));
        let ev = samples()[9].summary_columns(false);
        assert_eq!(ev[0].0, "LAST SEEN");
        assert_eq!(ev[3], ("OBJECT", "instance/web-1".to_owned()));
    }

    #[test]
    fn kinds() {
        for (text, kind) in [
            ("instance", Kind::Instance),
            ("Instances", Kind::Instance),
            ("inst", Kind::Instance),
            ("deploy", Kind::Deployment),
            ("svc", Kind::Service),
            ("ns", Kind::Namespace),
            ("no", Kind::Node),
            ("ds", Kind::DaemonSet),
            ("ep", Kind::Endpoints),
            ("ev", Kind::Event),
            ("mod", Kind::Module),
            ("LEASES", Kind::Lease),
            ("jobs", Kind::Job),
        ] {
            assert_eq!(Kind::parse(text), Ok(kind), "{text}");
        }
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Ok(k));
            assert_eq!(Kind::parse(k.plural()), Ok(k));
        }
        let err = Kind::parse("pods").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown kind \"pods\" (known kinds: Namespace, Node,"),
            "{err}"
        );
        assert!(
            !Kind::Node.namespaced() && !Kind::Module.namespaced() && !Kind::Namespace.namespaced()
        );
        assert!(Kind::Instance.namespaced());
    }

    #[test]
    fn resource_conversions() {
        let inst = Instance {
            metadata: ObjectMeta::new("default", "a"),
            ..Instance::default()
        };
        let obj: Object = inst.clone().into();
        assert_eq!(<Instance as Resource>::KIND, Kind::Instance);
        assert_eq!(Instance::try_from(obj.clone()), Ok(inst));
        assert!(Deployment::try_from(obj).is_err());
    }

    #[test]
    fn manifest_error_display() {
        let e = ManifestError {
            document: 2,
            kind: "Instance".into(),
            name: "web".into(),
            field: "spec.resources.limits.memory".into(),
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"document 2 (Instance "web"): spec.resources.limits.memory: bad"#
        );
        let e = ManifestError {
            document: 1,
            message: "invalid YAML at line 3 column 5: oops".into(),
            ..ManifestError::default()
        };
        assert_eq!(
            e.to_string(),
            "document 1: invalid YAML at line 3 column 5: oops"
        );
        let e = ManifestError::new("Job", "", "spec", "x").in_document(3);
        assert_eq!(e.to_string(), "document 3 (Job): spec: x");
    }
}

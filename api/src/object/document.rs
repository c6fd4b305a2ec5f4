//! Objects as manifests: `apiVersion`, `kind`, `metadata`, then `spec` and
//! `status`, with empty fields pruned on the way out and every bad field
//! named by its path on the way in ([`ManifestError`]).

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Kind, Object, UnknownKind, API_VERSION};
use crate::validation::ValidationErrors;

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
            Kind::Role => deserialize_kind(map).map(Object::Role),
            Kind::ClusterRole => deserialize_kind(map).map(Object::ClusterRole),
            Kind::RoleBinding => deserialize_kind(map).map(Object::RoleBinding),
            Kind::ClusterRoleBinding => deserialize_kind(map).map(Object::ClusterRoleBinding),
            Kind::ResourceQuota => deserialize_kind(map).map(Object::ResourceQuota),
            Kind::LimitRange => deserialize_kind(map).map(Object::LimitRange),
        };
        parsed.map_err(|(field, message)| ManifestError::new(kind.as_str(), &name, &field, message))
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

//! Object metadata shared by every kind: [`ObjectMeta`], [`OwnerReference`],
//! [`ObjectReference`], status [`Condition`]s, and the RFC 3339 timestamps they use.
//!
//! Metadata is data only. Which fields the server sets (uid, resourceVersion,
//! generation, timestamps) is the apiserver's business, not this module's.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Finalizer on an owner deleted with foreground cascade: the garbage collector
/// removes it once every dependent is gone.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// Metadata every object carries (Kubernetes' `ObjectMeta`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Object name, unique per kind and namespace.
    pub name: String,
    /// Namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Unique id the server assigns at creation.
    pub uid: String,
    /// Store revision of the last write, in decimal; empty when unset.
    /// YAML and JSON may give it as a number or a string.
    #[serde(deserialize_with = "de_resource_version")]
    pub resource_version: String,
    /// Incremented by the server on every spec change.
    pub generation: u64,
    /// Identifying key/value pairs, matched by selectors.
    pub labels: BTreeMap<String, String>,
    /// Non-identifying key/value pairs for tools and people.
    pub annotations: BTreeMap<String, String>,
    /// Objects this one depends on, for garbage collection.
    pub owner_references: Vec<OwnerReference>,
    /// Keys that must be removed before a deleted object goes away.
    pub finalizers: Vec<String>,
    /// RFC 3339 creation time; empty when unset.
    pub creation_timestamp: String,
    /// RFC 3339 time the deletion was requested; empty when not being deleted.
    pub deletion_timestamp: String,
}

impl ObjectMeta {
    /// Metadata with just a namespace and a name.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            ..Self::default()
        }
    }

    /// The resource version as a number (0 when unset or not a number).
    pub fn revision(&self) -> u64 {
        self.resource_version.parse().unwrap_or(0)
    }

    /// True once a deletion was requested (finalizers may still hold the object).
    pub fn is_being_deleted(&self) -> bool {
        !self.deletion_timestamp.is_empty()
    }

    /// The owner reference marked `controller: true`, if any.
    pub fn controller_ref(&self) -> Option<&OwnerReference> {
        self.owner_references.iter().find(|r| r.controller)
    }

    /// True when `finalizer` is present.
    pub fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }
}

/// Accepts `resourceVersion: 42` and `resourceVersion: "42"` in YAML/JSON; a plain
/// string in binary formats.
fn de_resource_version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a resource version (a non-negative integer, as a number or a string)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            if v < 0 {
                Err(E::custom(format!("must be >= 0, got {v}")))
            } else {
                Ok(v.to_string())
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }
    if d.is_human_readable() {
        d.deserialize_any(V)
    } else {
        String::deserialize(d)
    }
}

/// A reference from a dependent object to its owner (for garbage collection).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    /// API version of the owner (`flotilla.dev/v1`).
    pub api_version: String,
    /// Kind of the owner, e.g. `Deployment`.
    pub kind: String,
    /// Name of the owner (same namespace as the dependent).
    pub name: String,
    /// Uid of the owner, so a new object with the same name is not mistaken for it.
    pub uid: String,
    /// True when the owner is the managing controller.
    pub controller: bool,
    /// True when foreground deletion of the owner waits for this dependent.
    pub block_owner_deletion: bool,
}

/// A reference to any object, e.g. the subject of an Event or an endpoint's instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    /// Kind of the referent, e.g. `Instance`.
    pub kind: String,
    /// Namespace of the referent; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Name of the referent.
    pub name: String,
    /// Uid of the referent, when known.
    pub uid: String,
}

impl fmt::Display for ObjectReference {
    /// `instance/web-1`, the way `flotilla get events` shows an object.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }
}

// === conditions ===

/// Status of a [`Condition`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Nobody knows (e.g. the node stopped reporting).
    #[default]
    Unknown,
}

impl ConditionStatus {
    /// `"True"`, `"False"` or `"Unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One observed condition of an object (`Ready`, `Scheduled`, `Available`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// One CamelCase word saying why, e.g. `Unschedulable`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// RFC 3339 time the status last changed.
    pub last_transition_time: String,
}

impl Condition {
    /// A condition stamped with the current time.
    pub fn new(type_: &str, status: ConditionStatus, reason: &str, message: &str) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: now_timestamp(),
        }
    }
}

/// The condition of type `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition `type_` is present with status True.
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// Sets `condition` in `conditions`, replacing one of the same type. The old
/// `lastTransitionTime` is kept when the status did not change. Returns true when
/// anything changed (so a controller knows whether a status write is needed).
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            if *existing == condition {
                false
            } else {
                *existing = condition;
                true
            }
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

// === timestamps ===

/// Formats a time as RFC 3339 in UTC, e.g. `2024-05-01T12:00:00.123456Z`
/// (sub-second digits only when non-zero, at most microseconds).
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let micros = t.microsecond();
    let t = t.replace_nanosecond(micros * 1000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// This machine's wall clock, microseconds since the Unix epoch.
pub fn unix_micros_now() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000).unwrap_or(i64::MAX)
}

/// The current time, formatted by [`format_timestamp`].
pub fn now_timestamp() -> String {
    format_timestamp(OffsetDateTime::now_utc())
}

/// Parses an RFC 3339 timestamp; `None` when empty or malformed.
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    if s.is_empty() {
        return None;
    }
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Time elapsed from the timestamp `since` until `now`; `None` when `since` is
/// unset or malformed, zero when it lies in the future.
pub fn elapsed_since(since: &str, now: OffsetDateTime) -> Option<std::time::Duration> {
    let t = parse_timestamp(since)?;
    let d = now - t;
    Some(std::time::Duration::try_from(d).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_version_accepts_number_or_string() {
        let m: ObjectMeta =
            serde_json::from_str(r#"{"name":"a","resourceVersion":42}"#).expect("number");
        assert_eq!(m.resource_version, "42");
        assert_eq!(m.revision(), 42);
        let m: ObjectMeta =
            serde_json::from_str(r#"{"name":"a","resourceVersion":"7"}"#).expect("string");
        assert_eq!(m.resource_version, "7");
        let m: ObjectMeta = serde_yaml_ng::from_str("name: a\nresourceVersion: 9\n").expect("yaml");
        assert_eq!(m.resource_version, "9");
        assert!(serde_json::from_str::<ObjectMeta>(r#"{"resourceVersion":-1}"#).is_err());
    }

    #[test]
    fn unknown_metadata_field_is_an_error() {
        let err = serde_json::from_str::<ObjectMeta>(r#"{"nmae":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
    }

    #[test]
    fn postcard_round_trip() {
        let mut m = ObjectMeta::new("default", "web");
        m.resource_version = "12".into();
        m.generation = 3;
        m.labels.insert("app".into(), "web".into());
        m.owner_references.push(OwnerReference {
            api_version: "flotilla.dev/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "u1".into(),
            controller: true,
            block_owner_deletion: true,
        });
        let bytes = postcard::to_stdvec(&m).expect("encode");
        let back: ObjectMeta = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, m);
        assert_eq!(back.controller_ref().map(|r| r.name.as_str()), Some("web"));
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = Vec::new();
        let mut c = Condition::new("Ready", ConditionStatus::True, "Started", "");
        c.last_transition_time = "2024-01-01T00:00:00Z".into();
        assert!(set_condition(&mut conds, c.clone()));
        let mut again = c.clone();
        again.last_transition_time = "2024-02-02T00:00:00Z".into();
        assert!(!set_condition(&mut conds, again));
        assert_eq!(conds[0].last_transition_time, "2024-01-01T00:00:00Z");
        let mut flipped = c;
        flipped.status = ConditionStatus::False;
        flipped.last_transition_time = "2024-03-03T00:00:00Z".into();
        assert!(set_condition(&mut conds, flipped));
        assert_eq!(conds[0].last_transition_time, "2024-03-03T00:00:00Z");
        assert!(!condition_is_true(&conds, "Ready"));
    }

    #[test]
    fn timestamps() {
        let now = now_timestamp();
        assert!(parse_timestamp(&now).is_some(), "{now}");
        let t = parse_timestamp("2024-05-01T12:00:00Z").expect("parse");
        assert_eq!(format_timestamp(t), "2024-05-01T12:00:00Z");
        let later = parse_timestamp("2024-05-01T12:01:30Z").expect("parse");
        assert_eq!(
            elapsed_since("2024-05-01T12:00:00Z", later),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(elapsed_since("", later), None);
        assert_eq!(
            elapsed_since("2024-05-01T12:05:00Z", later),
            Some(std::time::Duration::ZERO)
        );
    }
}

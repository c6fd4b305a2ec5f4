//! The Event kind: a record of something a user would ask "why" about (a failed
//! placement, an eviction, a denied egress), attached to the object it concerns.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::meta::{now_timestamp, ObjectMeta, ObjectReference};
use crate::namespace::DEFAULT_NAMESPACE;
use crate::object::Kind;
use crate::validation::{check_timestamp, ValidationErrors};

/// An event (Kubernetes' core `Event`); it has no spec or status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The object the event is about.
    pub involved_object: ObjectReference,
    /// One CamelCase word, e.g. `FailedScheduling`, `Evicted`, `Started`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: EventType,
    /// How many times this event was seen (repeats update the same event).
    pub count: u32,
    /// RFC 3339 time it was first seen.
    pub first_timestamp: String,
    /// RFC 3339 time it was last seen.
    pub last_timestamp: String,
    /// Who reported it.
    pub source: EventSource,
}

/// Severity of an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// Something expected happened.
    #[default]
    Normal,
    /// Something needs attention.
    Warning,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        })
    }
}

/// The reporter of an event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSource {
    /// Component, e.g. `scheduler`, `deployment-controller`, `node-agent`.
    pub component: String,
    /// Node name, for events from a node.
    pub host: String,
}

impl Event {
    /// A new event (count 1, timestamps now) about the object with metadata
    /// `involved` of kind `kind`. It lives in the object's namespace (`default`
    /// for cluster-scoped objects) and is named `<object>.<16 hex digits>`.
    pub fn about(
        kind: Kind,
        involved: &ObjectMeta,
        type_: EventType,
        reason: &str,
        message: &str,
        component: &str,
    ) -> Event {
        let namespace = if involved.namespace.is_empty() {
            DEFAULT_NAMESPACE.to_owned()
        } else {
            involved.namespace.clone()
        };
        let suffix: u64 = rand::thread_rng().gen();
        let now = now_timestamp();
        Event {
            metadata: ObjectMeta::new(&namespace, &format!("{}.{suffix:016x}", involved.name)),
            involved_object: ObjectReference {
                kind: kind.as_str().to_owned(),
                namespace: involved.namespace.clone(),
                name: involved.name.clone(),
                uid: involved.uid.clone(),
            },
            reason: reason.to_owned(),
            message: message.to_owned(),
            type_,
            count: 1,
            first_timestamp: now.clone(),
            last_timestamp: now,
            source: EventSource {
                component: component.to_owned(),
                host: String::new(),
            },
        }
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        if self.involved_object.kind.is_empty() {
            errs.required("involvedObject.kind");
        }
        if self.involved_object.name.is_empty() {
            errs.required("involvedObject.name");
        }
        if self.reason.is_empty() {
            errs.required("reason");
        }
        check_timestamp(errs, "firstTimestamp", &self.first_timestamp);
        check_timestamp(errs, "lastTimestamp", &self.last_timestamp);
    }
}

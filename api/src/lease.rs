//! The Lease kind: a named lock with a holder and an expiry, renewed by its
//! holder. Node heartbeats and the scheduler's and controllers' leader election
//! use it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::meta::{parse_timestamp, ObjectMeta};
use crate::validation::{check_timestamp, ValidationErrors};

/// Namespace holding node heartbeat leases (one per node, named after it).
pub const NODE_LEASE_NAMESPACE: &str = "flotilla-node-lease";

/// The annotation on a node's lease that says how often the node renews it,
/// so that a node grace period too short for it can be pointed out.
pub const RENEW_INTERVAL_ANNOTATION: &str = "flotilla.dev/renew-interval";

/// A lease (Kubernetes' `coordination.k8s.io/Lease`); it has no status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lease {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Holder and timing.
    pub spec: LeaseSpec,
}

/// Holder and timing of a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    /// Identity of the current holder; empty when free.
    pub holder_identity: String,
    /// Seconds after `renewTime` at which the lease expires.
    pub lease_duration_seconds: u32,
    /// RFC 3339 time the current holder acquired it.
    pub acquire_time: String,
    /// RFC 3339 time the holder last renewed it.
    pub renew_time: String,
    /// Times the lease changed hands.
    pub lease_transitions: u32,
}

impl Lease {
    /// True when the lease has a holder whose last renewal is older than the
    /// lease duration at `now` (or unreadable).
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        if self.spec.holder_identity.is_empty() {
            return true;
        }
        match parse_timestamp(&self.spec.renew_time) {
            Some(renewed) => {
                let duration = time::Duration::seconds(i64::from(self.spec.lease_duration_seconds));
                renewed + duration < now
            }
            None => true,
        }
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        if !self.spec.holder_identity.is_empty() && self.spec.lease_duration_seconds == 0 {
            errs.push(
                "spec.leaseDurationSeconds",
                "must be >= 1 when the lease is held",
            );
        }
        check_timestamp(errs, "spec.acquireTime", &self.spec.acquire_time);
        check_timestamp(errs, "spec.renewTime", &self.spec.renew_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let now = parse_timestamp("2024-05-01T12:00:30Z").expect("now");
        let mut l = Lease::default();
        assert!(l.is_expired(now));
        l.spec.holder_identity = "node:a".into();
        l.spec.lease_duration_seconds = 40;
        l.spec.renew_time = "2024-05-01T12:00:00Z".into();
        assert!(!l.is_expired(now));
        l.spec.lease_duration_seconds = 10;
        assert!(l.is_expired(now));
    }
}

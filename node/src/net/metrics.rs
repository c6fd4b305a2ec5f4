//! The service forwarder's metrics: requests to each Service (from guests and
//! from the ingress) by result, and their latency.

use std::time::Instant;

use crate::body::Body;
use flotilla_telemetry::{Counter, Family, Histogram, Registry};

use super::ServiceKey;
use crate::runtime::OutboundError;

type ServiceLabels = [(&'static str, String); 2];
type ResultLabels = (ServiceLabels, [(&'static str, &'static str); 1]);

/// Counts of requests through the forwarder; clones share them. The default
/// is registered nowhere (counts go unread).
#[derive(Clone)]
pub struct ForwarderMetrics {
    requests: Family<ResultLabels, Counter>,
    latency: Family<ServiceLabels, Histogram, fn() -> Histogram>,
}

impl Default for ForwarderMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(Histogram::latency),
        }
    }
}

impl ForwarderMetrics {
    /// Registers the forwarder's metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let m = Self::default();
        registry.register(
            "flotilla_forwarder_requests",
            "Requests to a Service through this node's forwarder (from its guests and its ingress), by namespace, service and result (2xx..5xx, no_endpoint, timeout, unreachable, error)",
            m.requests.clone(),
        );
        registry.register(
            "flotilla_forwarder_request_duration_seconds",
            "Time from a request reaching the forwarder to the Service's answer, by namespace and service",
            m.latency.clone(),
        );
        m
    }

    /// Counts one request to `svc` that started at `started`.
    pub fn observe(&self, svc: &ServiceKey, result: &'static str, started: Instant) {
        let service = [("namespace", svc.0.clone()), ("service", svc.1.clone())];
        self.latency.get_or_create(&service).observe_since(started);
        self.requests
            .get_or_create(&(service, [("result", result)]))
            .inc();
    }
}

/// Every value the result label takes.
const RESULTS: &[&str] = &[
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "no_endpoint",
    "timeout",
    "unreachable",
    "error",
];

impl ForwarderMetrics {
    /// Drops the series of a deleted Service, so a cluster that creates and
    /// deletes services does not grow its metrics for ever.
    pub fn forget(&self, svc: &ServiceKey) {
        let service = [("namespace", svc.0.clone()), ("service", svc.1.clone())];
        self.latency.remove(&service);
        for result in RESULTS {
            self.requests
                .remove(&(service.clone(), [("result", *result)]));
        }
    }
}

/// The result label of a forwarded request.
pub fn result_of(r: &Result<http::Response<Body>, OutboundError>) -> &'static str {
    match r {
        Ok(resp) => match resp.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        Err(OutboundError::Timeout(_)) => "timeout",
        Err(OutboundError::Unavailable(_) | OutboundError::Refused(_)) => "unreachable",
        Err(_) => "error",
    }
}

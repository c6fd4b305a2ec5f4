//! flotilla-telemetry: what a daemon tells about itself. A [`Registry`] of
//! metrics rendered in the Prometheus text exposition format 0.0.4, a set of
//! readiness checks ([`Health`]), and the small HTTP/1.1 endpoint
//! ([`http::serve`]) that serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Components register their metrics once, at start, and then update them
//! with atomics only: counters and gauges are prometheus-client's (one atomic
//! each), histograms are ours ([`Histogram`], one atomic per bucket) because
//! the client's takes a mutex per observation. Values that another part of
//! the program already keeps (raft's indices, say) are read when scraped
//! ([`Registry::register_sampled`]) instead of being copied on every change.
//!
//! Must never: decide anything about the cluster, or block a hot path: a
//! scrape takes the registry lock, an observation never does.

#![warn(missing_docs)]

mod health;
mod histogram;
pub mod http;
mod registry;

pub use health::{Health, Readiness};
pub use histogram::{Histogram, LATENCY_BUCKETS};
pub use registry::{Registry, Sample, SampleKind};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;

/// The metrics and readiness checks of one daemon; clones share them. A
/// component is given one at start and registers what it has.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    /// Metrics.
    pub registry: Registry,
    /// Readiness checks for `/readyz`.
    pub health: Health,
}

impl Telemetry {
    /// An empty registry and no checks (a daemon with no checks is ready).
    pub fn new() -> Self {
        Self::default()
    }
}

//! A histogram with fixed buckets and no lock: one atomic per bucket, one for
//! the count and one for the sum, so observing on a request path costs a few
//! uncontended atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Seconds, for request latencies: 1 ms to 10 s (Kubernetes' apiserver uses
/// much the same spread).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram; clones share the same counts.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last slot is above every
    /// bound.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum's f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Self {
            inner: Arc::new(Inner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// A histogram of [`LATENCY_BUCKETS`].
    pub fn latency() -> Self {
        Self::new(LATENCY_BUCKETS)
    }

    /// Records one value (NaN is ignored).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.inner.bounds.partition_point(|b| *b < v);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        let mut old = self.inner.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(old) + v).to_bits();
            match self.inner.sum.compare_exchange_weak(
                old,
                new,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
        self.inner.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the seconds since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Read without a lock while observations go on: take the buckets
        // first and never report a count below their total, so the rendered
        // histogram stays cumulative and `+Inf` equals `_count`.
        let inner = &self.inner;
        let mut buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(inner.buckets.iter())
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        let finite: u64 = buckets.iter().map(|(_, n)| n).sum();
        let above = inner.buckets[inner.bounds.len()].load(Ordering::Relaxed);
        let count = inner.count.load(Ordering::Relaxed).max(finite + above);
        buckets.push((f64::INFINITY, count - finite));
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0, f64::NAN] {
            h.observe(v);
        }
        let counts: Vec<u64> = h
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, vec![2, 2, 1], "le is inclusive; NaN is dropped");
        assert_eq!(h.count(), 5);
        assert_eq!(f64::from_bits(h.inner.sum.load(Ordering::Relaxed)), 8.0);
    }

    #[test]
    fn concurrent_observations_all_count() {
        let h = Histogram::latency();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        h.observe(0.003);
                    }
                });
            }
        });
        assert_eq!(h.count(), 40_000);
        let sum = f64::from_bits(h.inner.sum.load(Ordering::Relaxed));
        assert!((sum - 120.0).abs() < 1e-6, "{sum}");
    }
}

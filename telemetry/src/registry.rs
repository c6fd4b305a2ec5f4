//! The registry: every metric of a daemon, rendered on scrape.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Metric;

/// The `Content-Type` of what [`Registry::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Metrics of one daemon; clones share them. Registering and rendering take
/// a lock; updating a registered metric does not.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, prometheus_client::registry::Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `metric` under `name`. Counters are rendered with `_total`
    /// appended, so `name` has none; `help` has no final period (one is
    /// added).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// Registers values read at scrape time: `sample` is called on every
    /// scrape and pushes the current samples. Samples of one name are
    /// rendered together, in the order their names first appear.
    pub fn register_sampled(&self, sample: impl Fn(&mut Vec<Sample>) + Send + Sync + 'static) {
        self.lock()
            .register_collector(Box::new(Sampled(Box::new(sample))));
    }

    /// Everything registered, in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in
        // a metric, and a partial page is better than none.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.lock())
        {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Gauge or counter, for [`Sample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleKind {
    /// Goes up and down.
    Gauge,
    /// Only goes up (rendered with `_total`).
    Counter,
}

/// One value read at scrape time.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Metric name (counters without `_total`).
    pub name: &'static str,
    /// Help text, without a final period.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: SampleKind,
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A gauge without labels.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind: SampleKind::Gauge,
            labels: Vec::new(),
            value,
        }
    }
}

/// Pushes the samples of one scrape.
type SampleFn = Box<dyn Fn(&mut Vec<Sample>) + Send + Sync>;

struct Sampled(SampleFn);

impl fmt::Debug for Sampled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sampled")
    }
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut samples = Vec::new();
        (self.0)(&mut samples);
        let mut names: Vec<&'static str> = Vec::new();
        for s in &samples {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
        for name in names {
            let mut group = samples.iter().filter(|s| s.name == name).peekable();
            let Some(first) = group.peek() else { continue };
            let metric_type = match first.kind {
                SampleKind::Gauge => MetricType::Gauge,
                SampleKind::Counter => MetricType::Counter,
            };
            let kind = first.kind;
            // The same final period `Registry::register` adds.
            let help = format!("{}.", first.help);
            let mut family = encoder.encode_descriptor(name, &help, None, metric_type)?;
            for s in group {
                let series = family.encode_family(&s.labels)?;
                match kind {
                    SampleKind::Gauge => ConstValue::Gauge(s.value).encode(series)?,
                    SampleKind::Counter => ConstValue::Counter(s.value).encode(series)?,
                }
            }
        }
        Ok(())
    }
}

enum ConstValue {
    Gauge(f64),
    Counter(f64),
}

impl EncodeMetric for ConstValue {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), fmt::Error> {
        match self {
            ConstValue::Gauge(v) => encoder.encode_gauge(v),
            ConstValue::Counter(v) => {
                encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(v, None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            ConstValue::Gauge(_) => MetricType::Gauge,
            ConstValue::Counter(_) => MetricType::Counter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counter, Family, Gauge, Histogram};

    #[test]
    fn renders_text_format_0_0_4() {
        let r = Registry::new();
        let requests: Family<[(&'static str, &'static str); 2], Counter> = Family::default();
        r.register("flotilla_test_requests", "Requests", requests.clone());
        requests
            .get_or_create(&[("verb", "get"), ("result", "ok")])
            .inc();
        requests
            .get_or_create(&[("verb", "get"), ("result", "ok")])
            .inc();
        let g = Gauge::<i64>::default();
        r.register("flotilla_test_open", "Open things", g.clone());
        g.set(-3);
        let h = Histogram::new(&[0.1, 1.0]);
        r.register("flotilla_test_seconds", "Latency", h.clone());
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        r.register_sampled(|out| {
            out.push(Sample::gauge("flotilla_test_term", "Term", 7.0));
            out.push(Sample {
                name: "flotilla_test_phase",
                help: "By phase",
                kind: SampleKind::Gauge,
                labels: vec![("phase", "Running".into())],
                value: 2.0,
            });
            out.push(Sample {
                name: "flotilla_test_phase",
                help: "By phase",
                kind: SampleKind::Gauge,
                labels: vec![("phase", "Pending \"x\"".into())],
                value: 0.0,
            });
        });
        let text = r.render();
        for line in [
            "# HELP flotilla_test_requests_total Requests.",
            "# TYPE flotilla_test_requests_total counter",
            "flotilla_test_requests_total{verb=\"get\",result=\"ok\"} 2",
            "# TYPE flotilla_test_open gauge",
            "flotilla_test_open -3",
            "# TYPE flotilla_test_seconds histogram",
            "flotilla_test_seconds_bucket{le=\"0.1\"} 1",
            "flotilla_test_seconds_bucket{le=\"1\"} 2",
            "flotilla_test_seconds_bucket{le=\"+Inf\"} 3",
            "flotilla_test_seconds_sum 5.55",
            "flotilla_test_seconds_count 3",
            "# HELP flotilla_test_term Term.",
            "flotilla_test_term 7.0",
            "flotilla_test_phase{phase=\"Running\"} 2.0",
            "flotilla_test_phase{phase=\"Pending \\\"x\\\"\"} 0.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE flotilla_test_phase gauge").count(),
            1,
            "{text}"
        );
        assert!(!text.contains("# EOF"), "0.0.4 has no EOF marker");
    }
}

//! The apiserver's metrics: requests by verb, kind and result, their latency,
//! and the watches open. Every label value is a static string, so counting a
//! request allocates nothing.

use std::time::Instant;

use flotilla_api::object::Kind;
use flotilla_client::wire::{ApiError, ErrorCode, RequestV1};
use flotilla_telemetry::{Counter, Family, Gauge, Histogram, Registry};

type RequestLabels = [(&'static str, &'static str); 3];
type VerbLabel = [(&'static str, &'static str); 1];

/// The apiserver's request counters; cheap to clone (shared counts).
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbLabel, Histogram, fn() -> Histogram>,
    watches: Gauge,
}

impl ApiMetrics {
    /// Registers the apiserver's metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(Histogram::latency),
            watches: Gauge::default(),
        };
        registry.register(
            "flotilla_apiserver_requests",
            "API requests served, by verb, kind and result (ok or the error code)",
            m.requests.clone(),
        );
        registry.register(
            "flotilla_apiserver_request_duration_seconds",
            "Time to answer an API request, by verb (watch, logs and port-forward are long-lived and not timed)",
            m.latency.clone(),
        );
        registry.register(
            "flotilla_apiserver_watches",
            "Watches open now",
            m.watches.clone(),
        );
        m
    }

    /// Counts one request; times it from `started` unless it is long-lived.
    pub fn observe(
        &self,
        verb: &'static str,
        kind: &'static str,
        result: &'static str,
        started: Instant,
    ) {
        self.requests
            .get_or_create(&[("verb", verb), ("kind", kind), ("result", result)])
            .inc();
        if !long_lived(verb) {
            self.latency
                .get_or_create(&[("verb", verb)])
                .observe_since(started);
        }
    }

    /// Counts an open watch until the guard is dropped.
    pub fn watch_open(&self) -> WatchOpen {
        self.watches.inc();
        WatchOpen(self.watches.clone())
    }
}

/// An open watch, counted in `flotilla_apiserver_watches` while it lives.
pub struct WatchOpen(Gauge);

impl Drop for WatchOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Requests whose duration is how long the client keeps them open.
fn long_lived(verb: &str) -> bool {
    matches!(verb, "watch" | "logs" | "port-forward")
}

/// The verb and kind labels of a request.
pub fn labels_of(req: &RequestV1) -> (&'static str, &'static str) {
    let kind = |k: Option<Kind>| k.map_or("", |k| k.as_str());
    match req {
        RequestV1::Get { kind: k, .. } => ("get", k.as_str()),
        RequestV1::List { kind: k, .. } => ("list", k.as_str()),
        RequestV1::Create { object } => ("create", object.kind().as_str()),
        RequestV1::Update { object } => ("update", object.kind().as_str()),
        RequestV1::UpdateStatus { object } => ("update-status", object.kind().as_str()),
        RequestV1::Apply { object } => ("apply", object.kind().as_str()),
        RequestV1::Delete { kind: k, .. } => ("delete", k.as_str()),
        RequestV1::Watch { kind: k, .. } => ("watch", kind(*k)),
        RequestV1::CreateToken { .. } => ("create-token", ""),
        RequestV1::Members => ("members", ""),
        RequestV1::RemoveMember { .. } => ("remove-member", ""),
        RequestV1::JoinPeer { .. } => ("join-peer", ""),
        RequestV1::AddPeer { .. } => ("add-peer", ""),
        RequestV1::WhoAmI => ("whoami", ""),
        RequestV1::UploadModule { .. } => ("upload", Kind::Module.as_str()),
        RequestV1::DownloadModule { .. } => ("download", Kind::Module.as_str()),
        RequestV1::JoinNode { .. } => ("join-node", ""),
        RequestV1::Logs { .. } => ("logs", Kind::Instance.as_str()),
        RequestV1::PortForward { .. } => ("port-forward", Kind::Instance.as_str()),
        RequestV1::RenewCertificate { .. } => ("renew-certificate", ""),
        RequestV1::Clock => ("clock", ""),
        RequestV1::ProbeTunnel { .. } => ("probe-tunnel", Kind::Node.as_str()),
        RequestV1::Bind { .. } => ("bind", Kind::Instance.as_str()),
        RequestV1::SelfSubjectReview => ("self-subject-review", ""),
        RequestV1::AccessReview { .. } => ("access-review", ""),
        RequestV1::SignUser { .. } => ("sign-user", ""),
        RequestV1::CreateJoinToken { .. } => ("create-token", ""),
        RequestV1::ListTokens => ("list-tokens", ""),
        RequestV1::RevokeToken { .. } => ("revoke-token", ""),
    }
}

/// The result label: `ok`, or the error's code.
pub fn result_of<T>(r: &Result<T, ApiError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => code_label(e.code),
    }
}

/// An error code as a label value.
pub fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotFound => "NotFound",
        ErrorCode::AlreadyExists => "AlreadyExists",
        ErrorCode::Conflict => "Conflict",
        ErrorCode::Invalid => "Invalid",
        ErrorCode::BadRequest => "BadRequest",
        ErrorCode::Unauthorized => "Unauthorized",
        ErrorCode::Forbidden => "Forbidden",
        ErrorCode::NoQuorum => "NoQuorum",
        ErrorCode::TooOld => "TooOld",
        ErrorCode::Unavailable => "Unavailable",
        ErrorCode::Internal => "Internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_verb_kind_and_result() {
        let registry = Registry::new();
        let m = ApiMetrics::register(&registry);
        let started = Instant::now();
        m.observe("get", "Instance", "ok", started);
        m.observe("get", "Instance", "ok", started);
        m.observe("create", "Service", "AlreadyExists", started);
        m.observe("watch", "Node", "ok", started);
        let watch = m.watch_open();
        let text = registry.render();
        assert!(text.contains(
            "flotilla_apiserver_requests_total{verb=\"get\",kind=\"Instance\",result=\"ok\"} 2"
        ));
        assert!(text.contains(
            "flotilla_apiserver_requests_total{verb=\"create\",kind=\"Service\",result=\"AlreadyExists\"} 1"
        ));
        assert!(text.contains("flotilla_apiserver_request_duration_seconds_count{verb=\"get\"} 2"));
        assert!(
            !text.contains("duration_seconds_count{verb=\"watch\"}"),
            "{text}"
        );
        assert!(text.contains("flotilla_apiserver_watches 1"));
        drop(watch);
        assert!(registry.render().contains("flotilla_apiserver_watches 0"));
    }
}

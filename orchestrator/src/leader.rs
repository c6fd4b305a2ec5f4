//! Leader election through a Lease object, so that of several schedulers (or
//! controller managers) exactly one acts.
//!
//! A candidate takes the lease when it is free or when its record has not
//! changed for a whole lease duration as measured by the candidate's own clock
//! (so skew between machines does not matter), renews it every third of the
//! duration, and stops acting as soon as it cannot renew for two thirds of it:
//! before any other candidate may take over.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use flotilla_api::lease::Lease;
use flotilla_api::meta::now_timestamp;
use flotilla_api::object::{Kind, Object};
use flotilla_client::watcher::Backoff;
use flotilla_client::wire::ErrorCode;
use flotilla_client::{Client, ClientError, SharedClientConfig};
use flotilla_telemetry::{Family, Gauge, Readiness, Registry};

/// Namespace of the leader-election leases.
pub const SYSTEM_NAMESPACE: &str = "flotilla-system";

/// How long a silent leader keeps the lease unless told otherwise
/// (`--leader-lease`).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// What is being elected and by whom.
#[derive(Clone, Debug)]
pub struct Election {
    /// Lease name, e.g. `flotilla-scheduler`.
    pub lease: String,
    /// This candidate's identity, unique among candidates.
    pub identity: String,
    /// How long a silent leader keeps the lease.
    pub duration: Duration,
    /// Whether the candidate reaches the apiserver (its readiness).
    pub connected: Readiness,
    /// 1 while this candidate leads.
    leading: Gauge,
    /// Settings the leader publishes on its lease, for `flotilla doctor`.
    annotations: BTreeMap<String, String>,
}

impl Election {
    /// An election for `lease` with an identity made of `component`, the process
    /// id and a random suffix.
    pub fn new(lease: &str, component: &str, duration: Duration) -> Self {
        let suffix: u32 = rand::random();
        Self {
            lease: lease.to_string(),
            identity: format!("{component}-{}-{suffix:08x}", std::process::id()),
            duration,
            connected: Readiness::not_ready("not connected to the apiserver yet"),
            leading: Gauge::default(),
            annotations: BTreeMap::new(),
        }
    }

    /// Publishes `key: value` on the lease while this candidate holds it.
    pub fn with_annotation(mut self, key: &str, value: String) -> Self {
        self.annotations.insert(key.to_string(), value);
        self
    }

    /// Shows whether this candidate leads in `metrics`.
    pub fn with_metrics(mut self, metrics: &LeaderMetrics) -> Self {
        self.leading = metrics
            .leading
            .get_or_create_owned(&[("lease", self.lease.clone())]);
        self
    }
}

/// Leader-election metrics of a process (one family for all its elections).
#[derive(Clone, Debug)]
pub struct LeaderMetrics {
    leading: Family<[(&'static str, String); 1], Gauge>,
}

impl LeaderMetrics {
    /// Registers the family in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let leading = Family::default();
        registry.register(
            "flotilla_leader_election_leading",
            "1 while this process holds the lease (flotilla-scheduler, flotilla-controllers) and acts",
            leading.clone(),
        );
        Self { leading }
    }
}

/// What a candidate last saw of someone else's lease, and when.
struct Observed {
    record: (String, String),
    since: Instant,
}

enum Attempt {
    Acquired,
    HeldByOther,
}

async fn try_acquire(
    client: &Client,
    election: &Election,
    observed: &mut Option<Observed>,
) -> Result<Attempt, ClientError> {
    let now = now_timestamp();
    let seconds = election.duration.as_secs().max(1) as u32;
    let current = match client
        .get(Kind::Lease, SYSTEM_NAMESPACE, &election.lease)
        .await
    {
        Ok(Object::Lease(l)) => l,
        Ok(_) => return Err(ClientError::Unexpected("not a lease".into())),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => {
            let mut lease = Lease::default();
            lease.metadata.namespace = SYSTEM_NAMESPACE.into();
            lease.metadata.name = election.lease.clone();
            lease.metadata.annotations = election.annotations.clone();
            lease.spec.holder_identity = election.identity.clone();
            lease.spec.lease_duration_seconds = seconds;
            lease.spec.acquire_time = now.clone();
            lease.spec.renew_time = now;
            return match client.create(Object::Lease(lease)).await {
                Ok(_) => Ok(Attempt::Acquired),
                Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => Ok(Attempt::HeldByOther),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    if current.spec.holder_identity != election.identity && !current.spec.holder_identity.is_empty()
    {
        let record = (
            current.spec.holder_identity.clone(),
            current.spec.renew_time.clone(),
        );
        let stale = match observed {
            Some(o) if o.record == record => {
                o.since.elapsed()
                    >= Duration::from_secs(u64::from(current.spec.lease_duration_seconds.max(1)))
            }
            _ => {
                *observed = Some(Observed {
                    record,
                    since: Instant::now(),
                });
                false
            }
        };
        if !stale {
            return Ok(Attempt::HeldByOther);
        }
    }
    let mut next = current.clone();
    if next.spec.holder_identity != election.identity {
        next.spec.lease_transitions += 1;
        next.spec.acquire_time = now.clone();
    }
    next.spec.holder_identity = election.identity.clone();
    next.spec.lease_duration_seconds = seconds;
    next.metadata
        .annotations
        .extend(election.annotations.clone());
    next.spec.renew_time = now;
    match client.update(Object::Lease(next)).await {
        Ok(_) => Ok(Attempt::Acquired),
        Err(e) if e.code() == Some(ErrorCode::Conflict) => Ok(Attempt::HeldByOther),
        Err(e) => Err(e),
    }
}

/// Renews the held lease until it is lost; returns why.
async fn keep_renewing(config: &SharedClientConfig, client: Client, election: &Election) -> String {
    let period = election.duration / 3;
    let deadline = election.duration * 2 / 3;
    let mut client = client;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        if !client.is_connected() {
            if let Ok(c) = Client::connect(&config.get()).await {
                client = c;
            }
        }
        let attempt = tokio::time::timeout(deadline, async {
            let mut observed = None;
            try_acquire(&client, election, &mut observed).await
        })
        .await;
        match attempt {
            Ok(Ok(Attempt::Acquired)) => {
                renewed = Instant::now();
                election.connected.set_ready();
            }
            Ok(Ok(Attempt::HeldByOther)) => return "another candidate holds the lease".into(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, lease = %election.lease, "renewal failed");
                election
                    .connected
                    .set_not_ready(format!("renewing the lease failed: {e}"));
            }
            Err(_) => {
                tracing::debug!(lease = %election.lease, "renewal timed out");
                election.connected.set_not_ready(format!(
                    "the apiserver at {} did not answer a lease renewal within {deadline:?}",
                    config.get().server
                ));
            }
        }
        if renewed.elapsed() >= deadline {
            return format!("could not renew for {deadline:?}");
        }
    }
}

/// Runs `work` while this candidate holds the lease, forever: campaigns, acts
/// while leading, and stops acting (drops the `work` future) when the lease is
/// lost, then campaigns again. Each connection takes the configuration's
/// current certificate, so one renewed under it is used from then on.
pub async fn run_elected<F, Fut>(config: impl Into<SharedClientConfig>, election: Election, work: F)
where
    F: Fn(SharedClientConfig) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = config.into();
    let retry = (election.duration / 4).max(Duration::from_millis(100));
    // Short at first, since the usual failure is a server still starting (no
    // raft leader yet, its system namespace not made yet), then doubling up to
    // the campaign period.
    let backoff = Backoff {
        initial: Duration::from_millis(25),
        max: retry,
    };
    let mut delay = backoff.initial;
    let mut observed = None;
    loop {
        let client = match Client::connect(&config.get()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "candidate cannot reach the apiserver");
                election.connected.set_not_ready(e.to_string());
                let wait = delay;
                delay = backoff.after(delay);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        match try_acquire(&client, &election, &mut observed).await {
            Ok(Attempt::Acquired) => {
                delay = backoff.initial;
                election.connected.set_ready();
                tracing::info!(lease = %election.lease, identity = %election.identity, "became leader");
                election.leading.set(1);
                let why = tokio::select! {
                    why = keep_renewing(&config, client, &election) => why,
                    () = work(config.clone()) => "the work ended".to_string(),
                };
                election.leading.set(0);
                tracing::warn!(lease = %election.lease, reason = %why, "stopped leading");
                observed = None;
            }
            Ok(Attempt::HeldByOther) => {
                delay = backoff.initial;
                election.connected.set_ready();
                tokio::time::sleep(retry).await
            }
            Err(e) => {
                tracing::debug!(error = %e, "campaign failed");
                election.connected.set_not_ready(format!(
                    "the apiserver at {} did not answer the campaign: {e}",
                    config.get().server
                ));
                let wait = delay;
                delay = backoff.after(delay);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

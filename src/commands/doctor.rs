//! `flotilla doctor`: walks the chain from this client to every node and says
//! which link is broken and what to do about it.
//!
//! The chain: client configuration → apiserver → store quorum → scheduler
//! and controllers (their leases) → nodes (lease, Ready, version) → each
//! node's forwarder, its tunnel to the next node (a probe the apiserver
//! relays to it) and its ingress → certificates → clocks (peers' and nodes'
//! against this machine's, and leases renewed in its future). Every link gets one
//! line, OK / WARN / FAIL; the first broken one also gets what to do. When
//! the store has lost its quorum the later links are read stale from the
//! apiserver's own copy, and say so. Exit 0 when all is OK, 1 on warnings,
//! 2 on failures.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use flotilla_api::lease::{NODE_LEASE_NAMESPACE, RENEW_INTERVAL_ANNOTATION};
use flotilla_api::meta::{find_condition, parse_timestamp, ConditionStatus};
use flotilla_api::node::{CONDITION_READY, CONDITION_SERVICE_FORWARDER};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{Consistency, RequestV1, ResponseV1};
use flotilla_client::{Client, ClientConfig};
use flotilla_orchestrator::controllers::NODE_GRACE_ANNOTATION;
use flotilla_orchestrator::leader::{DEFAULT_LEASE_DURATION, SYSTEM_NAMESPACE};
use flotilla_orchestrator::server::{CONTROLLERS_LEASE, SCHEDULER_LEASE};
use serde::Serialize;
use time::OffsetDateTime;

use super::Context;

/// Certificates closer than this to expiry are a warning.
const CERT_WARN_DAYS: i64 = 30;
/// How long one call may take before the link counts as not answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A lease renewed this far in the future says the holder's clock is ahead.
const LEASE_IN_FUTURE_WARN: Duration = Duration::from_secs(2);
/// Clocks of peers and nodes this far apart are a warning (etcd warns at 1 s).
const CLOCK_SKEW_WARN_MICROS: i64 = 1_000_000;
/// This far apart, leases (the scheduler's and controllers' last 15 s)
/// expire early or late: a failure.
const CLOCK_SKEW_FAIL_MICROS: i64 = 10_000_000;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Output format: text (default) or json.
    #[arg(short, long)]
    output: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    link: &'static str,
    status: Status,
    message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    hint: String,
}

#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, link: &'static str, status: Status, message: String, hint: &str) {
        self.checks.push(Check {
            link,
            status,
            message,
            hint: hint.to_string(),
        });
    }

    fn ok(&mut self, link: &'static str, message: String) {
        self.add(link, Status::Ok, message, "");
    }

    fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    fn first_broken(&self) -> Option<&Check> {
        let worst = self.worst();
        (worst != Status::Ok)
            .then(|| self.checks.iter().find(|c| c.status == worst))
            .flatten()
    }
}

impl DoctorArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let json = match self.output.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                anyhow::bail!("--output: \"{other}\" is not a format (expected text or json)")
            }
        };
        let started = Instant::now();
        let report = diagnose(ctx).await;
        let worst = report.worst();
        if json {
            let out = serde_json::json!({
                "status": worst,
                "firstBroken": report.first_broken().map(|c| c.link),
                "checks": report.checks,
                "seconds": started.elapsed().as_secs_f64(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            print_text(&report);
        }
        Ok(ExitCode::from(match worst {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }))
    }
}

fn print_text(report: &Report) {
    let first = report.first_broken().map(|c| c as *const Check);
    for check in &report.checks {
        println!(
            "{:<5} {:<13} {}",
            check.status.word(),
            check.link,
            check.message
        );
        if Some(check as *const Check) == first && !check.hint.is_empty() {
            println!("{:<5} {:<13} -> {}", "", "", check.hint);
        }
    }
    match report.first_broken() {
        None => println!("all links OK"),
        Some(c) => println!(
            "first broken link: {} ({})",
            c.link,
            c.status.word().to_lowercase()
        ),
    }
}

async fn diagnose(ctx: &Context) -> Report {
    let mut report = Report::default();

    // 1. client configuration and credentials
    let config = match ctx.client_config() {
        Ok(config) => config,
        Err(e) => {
            report.add(
                "config",
                Status::Fail,
                format!("{e:#}"),
                "start a cluster with `flotilla up`, or pass --config DATA_DIR/admin.config",
            );
            return report;
        }
    };
    match flotilla_client::tls::seconds_until_expiry(&config.client_cert) {
        Ok(left) if left <= 0 => report.add(
            "config",
            Status::Fail,
            format!(
                "the client certificate ({}) expired {} ago: the apiserver will refuse it",
                config.identity,
                human(time::Duration::seconds(-left))
            ),
            "get new credentials: a server's DATA_DIR/admin.config, or `flotilla up` again",
        ),
        Ok(_) => report.ok(
            "config",
            format!("{} for the server at {}", config.identity, config.server),
        ),
        Err(e) => report.add(
            "config",
            Status::Fail,
            format!("the client certificate cannot be read: {e}"),
            "get new credentials: a server's DATA_DIR/admin.config",
        ),
    }

    // 2. apiserver
    let t = Instant::now();
    let client = match tokio::time::timeout(CALL_TIMEOUT, Client::connect(&config)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e @ flotilla_client::ClientError::ServerCertificate { .. })) => {
            // The server answers, but with a certificate no client accepts.
            report.ok(
                "apiserver",
                format!("{} answers, but its certificate is refused", config.server),
            );
            check_local_certificates(&mut report, &config);
            report.add(
                "certificates",
                Status::Fail,
                e.to_string(),
                "restart that server peer: it renews its own certificate at start (unless started with --cert-renew-at off)",
            );
            return report;
        }
        Ok(Err(e)) => {
            report.add(
                "apiserver",
                Status::Fail,
                e.to_string(),
                "is `flotilla server` running there? Check the address (--server, or the configuration's `server`) and that the port is reachable",
            );
            check_local_certificates(&mut report, &config);
            return report;
        }
        Err(_) => {
            report.add(
                "apiserver",
                Status::Fail,
                format!(
                    "unable to connect to the server at {}: no answer within {CALL_TIMEOUT:?}",
                    config.server
                ),
                "is `flotilla server` running there? Check the address and that the port is reachable",
            );
            check_local_certificates(&mut report, &config);
            return report;
        }
    };
    report.ok(
        "apiserver",
        format!(
            "{} answered in {} ms",
            config.server,
            t.elapsed().as_millis()
        ),
    );

    // 2b. what this identity, and the components, may do
    check_identity(&mut report, &client).await;

    // 3. store quorum
    let mut readings = Vec::new();
    let mut peer_certificates = Vec::new();
    let quorum = check_store(
        &mut report,
        &client,
        &config,
        &mut readings,
        &mut peer_certificates,
    )
    .await;
    let consistency = if quorum {
        Consistency::Linearizable
    } else {
        Consistency::Stale
    };
    let stale = if quorum {
        ""
    } else {
        " (read stale: no quorum)"
    };

    // 4. scheduler and controllers
    let now = OffsetDateTime::now_utc();
    let mut clocks = Vec::new();
    let moment = Moment {
        consistency,
        now,
        stale,
        serving_for: readings.iter().filter_map(|r| r.serving_for).max(),
    };
    let mut node_grace = None;
    for (link, lease, what) in [
        ("scheduler", SCHEDULER_LEASE, "the scheduler"),
        ("controllers", CONTROLLERS_LEASE, "the controllers"),
    ] {
        let lease = check_election(
            &mut report,
            &client,
            &moment,
            (link, lease, what),
            &mut clocks,
        )
        .await;
        if let Some(grace) = lease
            .as_ref()
            .and_then(|l| l.metadata.annotations.get(NODE_GRACE_ANNOTATION))
        {
            node_grace = flotilla_api::duration::Duration::parse(grace)
                .ok()
                .map(|d| d.as_std());
        }
    }

    // 5. and 6. nodes, their forwarders and ingress
    let nodes = check_nodes(
        &mut report,
        &client,
        consistency,
        (now, stale),
        node_grace,
        &mut clocks,
        &mut readings,
    )
    .await;

    // 7. certificates
    check_local_certificates(&mut report, &config);
    if peer_certificates.is_empty() {
        if let Some((identity, not_after)) = client.server_certificate_not_after() {
            certificate_line(
                &mut report,
                &format!("the server's certificate ({identity} at {})", config.server),
                (not_after - OffsetDateTime::now_utc()).whole_seconds(),
            );
        }
    }
    for (peer, certificate) in &peer_certificates {
        match certificate {
            Ok((identity, not_after)) => certificate_line(
                &mut report,
                &format!("store peer {peer}'s certificate ({identity})"),
                (*not_after - OffsetDateTime::now_utc()).whole_seconds(),
            ),
            Err(refused) => report.add(
                "certificates",
                Status::Fail,
                format!("store peer {peer}: {refused}"),
                "restart that server peer: it renews its own certificate at start (unless started with --cert-renew-at off)",
            ),
        }
    }
    check_node_certificates(&mut report, &nodes);

    // 8. clocks
    check_skew(&mut report, &readings);
    match clocks.iter().max_by_key(|(_, ahead)| *ahead) {
        Some((who, ahead)) if *ahead > LEASE_IN_FUTURE_WARN => report.add(
            "clocks",
            Status::Warn,
            format!(
                "{who} renewed its lease {:.1} s in this machine's future: one of the two clocks is off",
                ahead.as_secs_f64()
            ),
            "run NTP (chrony, systemd-timesyncd) on every machine; leases and certificates need clocks within a second or two",
        ),
        _ => report.ok(
            "clocks",
            format!(
                "no lease renewed in this machine's future ({} leases checked)",
                clocks.len()
            ),
        ),
    }
    report
}

/// Returns whether the store has a quorum.
/// What doctor reads, as (verb, resource, namespace).
const DOCTOR_READS: [(&str, &str, &str); 5] = [
    ("list", "members", ""),
    ("list", "nodes", ""),
    ("list", "instances", ""),
    ("get", "leases", "flotilla-system"),
    ("get", "nodes/tunnel", ""),
];

/// What each component's loops need, as (identity, verb, resource).
const COMPONENT_NEEDS: [(&str, &str, &str); 6] = [
    ("component:scheduler", "create", "instances/bind"),
    ("component:scheduler", "create", "events"),
    ("component:scheduler", "list", "nodes"),
    ("component:controllers", "create", "instances"),
    ("component:controllers", "update", "deployments/status"),
    ("component:controllers", "update", "nodes/status"),
];

async fn review(
    client: &Client,
    identity: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> Result<(bool, String), String> {
    let asked = client.call(RequestV1::AccessReview {
        identity: identity.to_string(),
        groups: Vec::new(),
        verb: verb.to_string(),
        resource: resource.to_string(),
        namespace: namespace.to_string(),
        name: String::new(),
    });
    match tokio::time::timeout(CALL_TIMEOUT, asked).await {
        Ok(Ok(ResponseV1::Access { allowed, reason })) => Ok((allowed, reason)),
        Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// Reports an identity that cannot do what doctor (or, asked by whoever may
/// review others, a component) needs.
async fn check_identity(report: &mut Report, client: &Client) {
    let who =
        match tokio::time::timeout(CALL_TIMEOUT, client.call(RequestV1::SelfSubjectReview)).await {
            Ok(Ok(ResponseV1::Subject { identity, groups })) => (identity, groups),
            _ => return,
        };
    let (identity, groups) = who;
    let mut missing = Vec::new();
    for (verb, resource, namespace) in DOCTOR_READS {
        if let Ok((false, reason)) = review(client, "", verb, resource, namespace).await {
            missing.push(format!("{verb} {resource}: {reason}"));
        }
    }
    if missing.is_empty() {
        report.ok(
            "identity",
            format!(
                "{identity} (groups {}) may read what doctor checks",
                groups.join(",")
            ),
        );
    } else {
        report.add(
            "identity",
            Status::Warn,
            format!("{identity} cannot do what doctor needs, so the checks below that need it fail: {}", missing.join("; ")),
            "run doctor as cluster-admin (a server's DATA_DIR/admin.config), or bind a ClusterRole that reads nodes, instances, leases and members",
        );
        return;
    }
    let mut broken = Vec::new();
    for (component, verb, resource) in COMPONENT_NEEDS {
        match review(client, component, verb, resource, "default").await {
            Ok((true, _)) => {}
            Ok((false, reason)) => {
                broken.push(format!("{component} may not {verb} {resource}: {reason}"))
            }
            // Reviewing others needs more than reading: say nothing.
            Err(_) => return,
        }
    }
    if broken.is_empty() {
        report.ok(
            "identity",
            "the scheduler and the controllers may do what their loops need".to_string(),
        );
    } else {
        report.add(
            "identity",
            Status::Fail,
            broken.join("; "),
            "the components' roles (system:scheduler, system:controllers) are built in: this server is out of date or damaged; upgrade or restart it",
        );
    }
}

async fn check_store(
    report: &mut Report,
    client: &Client,
    config: &ClientConfig,
    readings: &mut Vec<ClockReading>,
    peer_certificates: &mut Vec<PeerCertificate>,
) -> bool {
    let members = match tokio::time::timeout(CALL_TIMEOUT, client.call(RequestV1::Members)).await {
        Ok(Ok(ResponseV1::Members(members))) => members,
        Ok(Ok(other)) => {
            report.add(
                "store",
                Status::Fail,
                format!("unexpected answer to members: {other:?}"),
                "",
            );
            return false;
        }
        Ok(Err(e)) => {
            report.add(
                "store",
                Status::Fail,
                e.to_string(),
                "start the stopped store peers (`flotilla server --data-dir ...`): a majority must answer",
            );
            return false;
        }
        Err(_) => {
            report.add(
                "store",
                Status::Fail,
                format!("the store did not list its peers within {CALL_TIMEOUT:?}"),
                "start the stopped store peers: a majority must answer",
            );
            return false;
        }
    };

    // Which peers answer, each asked directly.
    let mut answering = Vec::new();
    let mut silent = Vec::new();
    let probes = members.iter().map(|m| {
        let addr = m.address.clone();
        let config = config.clone();
        async move {
            let asked = tokio::time::timeout(CALL_TIMEOUT, async {
                let c = match Client::connect_to(&addr, &config).await {
                    Ok(c) => c,
                    Err(e @ flotilla_client::ClientError::ServerCertificate { .. }) => {
                        return (None, Some(Err(e.to_string())));
                    }
                    Err(_) => return (None, None),
                };
                let certificate = c.server_certificate_not_after().map(Ok);
                let answered = c.call(RequestV1::WhoAmI).await.is_ok();
                let clock = if answered { read_clock(&c).await } else { None };
                c.close();
                (answered.then_some(clock), certificate)
            })
            .await;
            asked.unwrap_or((None, None))
        }
    });
    let results = join_all(probes.collect()).await;
    let mut answering_voters = 0;
    for (m, (answer, certificate)) in members.iter().zip(results) {
        let peer = format!("{} ({})", m.id, m.address);
        if let Some(certificate) = certificate {
            peer_certificates.push((peer.clone(), certificate));
        }
        if let Some(clock) = answer {
            if let Some(reading) = clock {
                readings.push(ClockReading {
                    who: format!("peer {peer}"),
                    ..reading
                });
            }
            answering.push(peer);
            answering_voters += usize::from(m.role != "learner");
        } else {
            silent.push(peer);
        }
    }
    let voters = members.iter().filter(|m| m.role != "learner").count();
    let majority = voters / 2 + 1;
    let leader = members.iter().find(|m| m.role == "leader");
    let behind: Vec<String> = match members.iter().filter_map(|m| m.matched_index).max() {
        Some(top) => members
            .iter()
            .filter_map(|m| {
                let lag = top.saturating_sub(m.matched_index?);
                (lag > 100).then(|| format!("{} by {lag} entries", m.id))
            })
            .collect(),
        None => Vec::new(),
    };
    let summary = format!(
        "{} of {} peers answering{}",
        answering.len(),
        members.len(),
        match leader {
            Some(l) => format!(", leader {} ({})", l.id, l.address),
            None => ", no leader".into(),
        }
    );
    if leader.is_none() || answering_voters < majority {
        report.add(
            "store",
            Status::Fail,
            format!(
                "no quorum: {summary}; a majority ({majority} of {voters}) is needed; not answering: {}",
                silent.join(", ")
            ),
            "start the stopped store peers (`flotilla server --data-dir ...` on each); writes resume when a majority answers",
        );
        return false;
    }
    if !silent.is_empty() || !behind.is_empty() {
        let mut parts = vec![summary];
        if !silent.is_empty() {
            parts.push(format!("not answering: {}", silent.join(", ")));
        }
        if !behind.is_empty() {
            parts.push(format!("behind: {}", behind.join(", ")));
        }
        report.add(
            "store",
            Status::Warn,
            parts.join("; "),
            "start the stopped peer, or remove it for good with `flotilla cluster remove ID`",
        );
        return true;
    }
    report.ok("store", summary);
    true
}

/// A store peer and its server certificate (identity, end) as its
/// handshake showed it, or why the handshake refused it.
type PeerCertificate = (String, Result<(String, OffsetDateTime), String>);

/// A peer's or node's clock against this machine's.
#[derive(Debug, Clone)]
struct ClockReading {
    who: String,
    /// How far it is ahead of this machine (negative: behind).
    offset_micros: i64,
    /// How far off that may be: half the round trip it was read over.
    uncertainty_micros: i64,
    /// How long it has served, for a store peer.
    serving_for: Option<Duration>,
}

/// Asks a peer for its clock (taking the reading to be halfway through the
/// round trip) and how long it has served.
async fn read_clock(client: &Client) -> Option<ClockReading> {
    let sent_at = flotilla_api::meta::unix_micros_now();
    let started = Instant::now();
    let answer = client.call(RequestV1::Clock).await;
    let half = micros(started.elapsed()) / 2;
    match answer {
        Ok(ResponseV1::Clock {
            unix_micros,
            serving_millis,
        }) => Some(ClockReading {
            who: String::new(),
            offset_micros: unix_micros.saturating_sub(sent_at.saturating_add(half)),
            uncertainty_micros: half,
            serving_for: Some(Duration::from_millis(serving_millis)),
        }),
        _ => None,
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Compares every clock read with the two furthest apart; the uncertainty of
/// both readings is given to them before anything is called skew.
fn check_skew(report: &mut Report, readings: &[ClockReading]) {
    let (Some(ahead), Some(behind)) = (
        readings.iter().max_by_key(|r| r.offset_micros),
        readings.iter().min_by_key(|r| r.offset_micros),
    ) else {
        report.ok("clocks", "no peer or node clock could be read".into());
        return;
    };
    let spread = ahead.offset_micros.saturating_sub(behind.offset_micros);
    let surely = spread
        .saturating_sub(ahead.uncertainty_micros)
        .saturating_sub(behind.uncertainty_micros);
    let hint = "run NTP (chrony, systemd-timesyncd) on every machine; leases and certificates need clocks within a second or two";
    let apart = format!(
        "{} is {:.1} s ahead of {}",
        ahead.who,
        spread as f64 / 1e6,
        behind.who
    );
    if surely >= CLOCK_SKEW_FAIL_MICROS {
        report.add(
            "clocks",
            Status::Fail,
            format!("{apart}: leases expire early or late at this skew"),
            hint,
        );
    } else if surely >= CLOCK_SKEW_WARN_MICROS {
        report.add("clocks", Status::Warn, format!("{apart} (over 1 s)"), hint);
    } else {
        report.ok(
            "clocks",
            format!(
                "{} clocks of peers and nodes within {} ms of each other",
                readings.len(),
                spread.max(0) / 1000
            ),
        );
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        // A probe task only panics if the runtime is shutting down.
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// When the checks were made, and what they could read.
struct Moment<'a> {
    consistency: Consistency,
    now: OffsetDateTime,
    /// Said after what was read stale.
    stale: &'a str,
    /// The longest any store peer has served: a component is given its first
    /// lease period after that before it is called missing.
    serving_for: Option<Duration>,
}

impl Moment<'_> {
    /// How long the cluster has served, while that is within the time a
    /// candidate takes to hold a lease of `duration`: it takes a missing lease at
    /// once, and one left by a previous run after watching it a whole duration.
    fn starting(&self, duration: Duration) -> Option<Duration> {
        self.serving_for
            .filter(|served| *served < duration + duration / 2)
    }
}

/// Checks the lease of an elected component; returns it when it was read.
async fn check_election(
    report: &mut Report,
    client: &Client,
    moment: &Moment<'_>,
    (link, lease_name, what): (&'static str, &str, &str),
    clocks: &mut Vec<(String, Duration)>,
) -> Option<flotilla_api::lease::Lease> {
    let stale = moment.stale;
    let got = tokio::time::timeout(
        CALL_TIMEOUT,
        get_with(
            client,
            Kind::Lease,
            SYSTEM_NAMESPACE,
            lease_name,
            moment.consistency,
        ),
    )
    .await;
    let starting_hint = "run `flotilla doctor` again in a few seconds";
    let lease = match got {
        Ok(Ok(Object::Lease(lease))) => lease,
        Ok(Err(e)) if e.code() == Some(flotilla_client::wire::ErrorCode::NotFound) => {
            match moment.starting(DEFAULT_LEASE_DURATION) {
                Some(served) => report.add(
                    link,
                    Status::Warn,
                    format!(
                        "{what} is starting: no lease {SYSTEM_NAMESPACE}/{lease_name} yet, {} after the apiserver started",
                        human_std(served)
                    ),
                    starting_hint,
                ),
                None => report.add(
                    link,
                    Status::Fail,
                    format!("{what} never ran: no lease {SYSTEM_NAMESPACE}/{lease_name}"),
                    &format!("run `flotilla server` without --no-{link}, or `flotilla {link}`"),
                ),
            }
            return None;
        }
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            report.add(
                link,
                Status::Fail,
                format!("could not read the lease {SYSTEM_NAMESPACE}/{lease_name}{stale}"),
                "",
            );
            return None;
        }
    };
    let holder = lease.spec.holder_identity.clone();
    let renewed = parse_timestamp(&lease.spec.renew_time);
    let age = renewed.map(|t| moment.now - t);
    if let Some(age) = age {
        clocks.push((format!("{link} {holder}"), ahead_by(age)));
    }
    let seconds = u64::from(lease.spec.lease_duration_seconds);
    let duration = time::Duration::seconds(seconds as i64);
    let starting = moment.starting(Duration::from_secs(seconds));
    match age {
        _ if holder.is_empty() => report.add(
            link,
            Status::Fail,
            format!("no {link} holds the lease {lease_name}: none is running{stale}"),
            &format!("start `flotilla {link}`, or a `flotilla server` without --no-{link}"),
        ),
        Some(age) if age <= duration => report.ok(
            link,
            format!(
                "active: {holder}, lease renewed {} ago{stale}",
                human(age)
            ),
        ),
        Some(age) if starting.is_some() => report.add(
            link,
            Status::Warn,
            format!(
                "{what} is starting: the lease {lease_name} was last renewed {} ago by {holder}, before the apiserver started {} ago; a new candidate takes it over once it has watched it for {seconds}s{stale}",
                human(age),
                human_std(starting.unwrap_or_default()),
            ),
            starting_hint,
        ),
        Some(age) => report.add(
            link,
            Status::Fail,
            format!(
                "{what} stopped: the lease {lease_name} was last renewed {} ago by {holder} (it lasts {seconds}s){stale}",
                human(age),
            ),
            &format!(
                "start `flotilla {link}` (or restart the server that ran it); new instances stay Pending meanwhile"
            ),
        ),
        None => report.add(
            link,
            Status::Fail,
            format!("the lease {lease_name} has no readable renewTime"),
            "",
        ),
    }
    Some(lease)
}

async fn get_with(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    consistency: Consistency,
) -> Result<Object, flotilla_client::ClientError> {
    match client
        .call(RequestV1::Get {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            consistency,
        })
        .await?
    {
        ResponseV1::Object(o) => Ok(o),
        other => Err(flotilla_client::ClientError::Unexpected(format!(
            "{other:?}"
        ))),
    }
}

async fn check_nodes(
    report: &mut Report,
    client: &Client,
    consistency: Consistency,
    (now, stale): (OffsetDateTime, &str),
    node_grace: Option<Duration>,
    clocks: &mut Vec<(String, Duration)>,
    readings: &mut Vec<ClockReading>,
) -> Vec<flotilla_api::node::Node> {
    let listed = tokio::time::timeout(
        CALL_TIMEOUT,
        client.list_with(Kind::Node, None, "", consistency),
    )
    .await;
    let nodes: Vec<flotilla_api::node::Node> = match listed {
        Ok(Ok((items, _))) => items
            .into_iter()
            .filter_map(|o| match o {
                Object::Node(n) => Some(n),
                _ => None,
            })
            .collect(),
        _ => {
            report.add(
                "nodes",
                Status::Fail,
                format!("could not list the nodes{stale}"),
                "",
            );
            return Vec::new();
        }
    };
    let leases: Vec<flotilla_api::lease::Lease> = tokio::time::timeout(
        CALL_TIMEOUT,
        client.list_with(Kind::Lease, Some(NODE_LEASE_NAMESPACE), "", consistency),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|(items, _)| {
        items
            .into_iter()
            .filter_map(|o| match o {
                Object::Lease(l) => Some(l),
                _ => None,
            })
            .collect()
    })
    .unwrap_or_default();

    if nodes.is_empty() {
        report.add(
            "nodes",
            Status::Warn,
            format!("no node has joined{stale}"),
            "join one: `flotilla token create`, then `flotilla node --token TOKEN` on the machine",
        );
        return nodes;
    }
    let probes = probe_tunnels(client, &nodes).await;
    let mut read_nodes = std::collections::HashSet::new();
    for probe in &probes {
        // The first Ready node also sends the probes to NotReady nodes: one
        // reading per node.
        if let Ok(answer) = &probe.outcome {
            if read_nodes.insert(probe.from.as_str()) {
                readings.push(ClockReading {
                    who: format!("node {}", probe.from),
                    offset_micros: answer.from_offset_micros,
                    uncertainty_micros: answer.from_uncertainty_micros,
                    serving_for: None,
                });
            }
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    for node in &nodes {
        let name = &node.metadata.name;
        let lease = leases.iter().find(|l| &l.metadata.name == name);
        let age = lease
            .and_then(|l| parse_timestamp(&l.spec.renew_time))
            .map(|t| now - t);
        if let Some(age) = age {
            clocks.push((format!("node {name}"), ahead_by(age)));
        }
        let lease_text = match age {
            Some(age) => format!("lease renewed {} ago", human(age)),
            None => "no lease".into(),
        };
        let ready = find_condition(&node.status.conditions, CONDITION_READY);
        let link = "node";
        if let Some(problem) = lease
            .zip(node_grace)
            .and_then(|(l, g)| grace_too_short(l, g))
        {
            report.add(
                link,
                Status::Warn,
                format!("{name}: {problem}"),
                "give the controllers a --node-grace-period of a few lease intervals (the default is 40s), or start the node with a shorter --lease-interval",
            );
        }
        match ready.map(|c| c.status) {
            Some(ConditionStatus::True) => {
                let theirs = &node.status.node_info.flotilla_version;
                if !theirs.is_empty() && theirs != version {
                    report.add(
                        link,
                        Status::Warn,
                        format!("{name}: Ready, {lease_text}; runs flotilla {theirs}, this client {version}"),
                        "upgrade the node agent to the control plane's version",
                    );
                } else {
                    report.ok(link, format!("{name}: Ready, {lease_text}{stale}"));
                }
            }
            _ => {
                let why = ready
                    .map(|c| format!("{} ({}: {})", c.status, c.reason, c.message))
                    .unwrap_or_else(|| "no Ready condition".into());
                let (tunnel, hint) = match probes.iter().find(|p| &p.to == name) {
                    Some(TunnelCheck { from, outcome: Ok(answer), .. }) => (
                        format!(
                            "; its tunnel still answers {from} ({:.1} ms): the agent runs but cannot reach the apiserver",
                            answer.round_trip.as_secs_f64() * 1e3
                        ),
                        format!("check the network between {name} and the apiserver (the address it was given with --server); its instances keep running, new work does not reach it"),
                    ),
                    Some(TunnelCheck { from, outcome: Err(e), .. }) => (
                        format!("; its tunnel does not answer {from} either ({e})"),
                        format!("check the node agent on {name}: is `flotilla node` running, is its machine up? Its instances are replaced elsewhere after their toleration"),
                    ),
                    None => (
                        String::new(),
                        format!("check the node agent on {name}: is `flotilla node` running, and can it reach the apiserver? Its instances keep running; new work does not reach it"),
                    ),
                };
                report.add(
                    link,
                    Status::Fail,
                    format!("{name}: NotReady, {lease_text}: {why}{tunnel}{stale}"),
                    &hint,
                );
                continue;
            }
        }
        let tunnel = probes.iter().find(|p| &p.from == name);
        check_forwarding(report, node, tunnel).await;
    }
    nodes
}

/// What is wrong with a node grace period of `grace` for a node renewing
/// `lease` as often as it says, if anything.
fn grace_too_short(lease: &flotilla_api::lease::Lease, grace: Duration) -> Option<String> {
    let interval = lease
        .metadata
        .annotations
        .get(RENEW_INTERVAL_ANNOTATION)
        .and_then(|text| flotilla_api::duration::Duration::parse(text).ok())?
        .as_std();
    (grace <= interval).then(|| {
        format!(
            "renews its lease every {}, but the node grace period is {}: it is marked NotReady between renewals",
            human_std(interval),
            human_std(grace)
        )
    })
}

/// A probe one node sent through the tunnel to another, as the apiserver
/// relayed it.
struct TunnelCheck {
    from: String,
    to: String,
    outcome: Result<TunnelAnswer, String>,
}

struct TunnelAnswer {
    round_trip: Duration,
    /// The sender's clock against this machine's.
    from_offset_micros: i64,
    from_uncertainty_micros: i64,
}

fn is_ready(node: &flotilla_api::node::Node) -> bool {
    find_condition(&node.status.conditions, CONDITION_READY)
        .is_some_and(|c| c.status == ConditionStatus::True)
}

/// Every Ready node probes the next one by name (the last the first; a lone
/// node itself), so each node's tunnel is used both ways with one probe per
/// node. A NotReady node is probed by the first Ready one: an answer tells
/// an agent cut off from the apiserver from one that is down.
async fn probe_tunnels(client: &Client, nodes: &[flotilla_api::node::Node]) -> Vec<TunnelCheck> {
    let mut ready: Vec<&str> = nodes
        .iter()
        .filter(|n| is_ready(n) && !n.status.daemon_endpoints.tunnel.is_empty())
        .map(|n| n.metadata.name.as_str())
        .collect();
    ready.sort_unstable();
    let Some(first) = ready.first().copied() else {
        return Vec::new();
    };
    let mut pairs: Vec<(String, String)> = ready
        .iter()
        .enumerate()
        .map(|(i, from)| (from.to_string(), ready[(i + 1) % ready.len()].to_string()))
        .collect();
    pairs.extend(
        nodes
            .iter()
            .filter(|n| !is_ready(n) && !n.status.daemon_endpoints.tunnel.is_empty())
            .map(|n| (first.to_string(), n.metadata.name.clone())),
    );
    let probes = pairs.into_iter().map(|(from, to)| {
        let client = client.clone();
        async move {
            let outcome = probe_tunnel(&client, &from, &to).await;
            TunnelCheck { from, to, outcome }
        }
    });
    join_all(probes.collect()).await
}

async fn probe_tunnel(client: &Client, from: &str, to: &str) -> Result<TunnelAnswer, String> {
    let sent_at = flotilla_api::meta::unix_micros_now();
    let started = Instant::now();
    let asked = tokio::time::timeout(
        CALL_TIMEOUT,
        client.call(RequestV1::ProbeTunnel {
            from: from.to_string(),
            to: to.to_string(),
            to_address: String::new(),
        }),
    )
    .await;
    let half = micros(started.elapsed()) / 2;
    match asked {
        Ok(Ok(ResponseV1::TunnelProbe {
            round_trip_micros,
            from_clock_micros,
            ..
        })) => Ok(TunnelAnswer {
            round_trip: Duration::from_micros(round_trip_micros),
            from_offset_micros: from_clock_micros.saturating_sub(sent_at.saturating_add(half)),
            from_uncertainty_micros: half,
        }),
        Ok(Ok(other)) => Err(format!("unexpected answer: {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The node's forwarder (as the node reports it), its tunnel to the next
/// node (probed from it) and its ingress (probed from here).
async fn check_forwarding(
    report: &mut Report,
    node: &flotilla_api::node::Node,
    tunnel: Option<&TunnelCheck>,
) {
    let name = &node.metadata.name;
    match find_condition(&node.status.conditions, CONDITION_SERVICE_FORWARDER) {
        Some(c) if c.status == ConditionStatus::True => {}
        Some(c) => {
            report.add(
                "forwarder",
                Status::Fail,
                format!("{name}: the service forwarder is off ({}): service names and cluster IPs fail on this node; instance IPs still route", c.message),
                &format!("restart the node agent on {name} without --no-service-forwarder"),
            );
            return;
        }
        None => {
            report.add(
                "forwarder",
                Status::Warn,
                format!("{name}: the node does not report its forwarder (an older agent?)"),
                "",
            );
            return;
        }
    }
    let tunnel_text = match tunnel {
        Some(TunnelCheck {
            to,
            outcome: Ok(answer),
            ..
        }) => format!(
            "; tunnel to {to} answered in {:.1} ms",
            answer.round_trip.as_secs_f64() * 1e3
        ),
        Some(TunnelCheck {
            to,
            outcome: Err(e),
            ..
        }) => {
            report.add(
                "forwarder",
                Status::Fail,
                format!("{name}: the tunnel to {to} fails: {e}"),
                &format!("requests from {name} to instances on {to} fail: check that UDP reaches {to}'s --listen address from {name}, and that both agents run"),
            );
            return;
        }
        None => String::new(),
    };
    let ingress = &node.status.daemon_endpoints.ingress;
    if ingress.is_empty() {
        report.ok(
            "forwarder",
            format!("{name}: forwarding services{tunnel_text}; no ingress"),
        );
        return;
    }
    match probe_ingress(ingress).await {
        Ok(status) => report.ok(
            "forwarder",
            format!(
                "{name}: forwarding services{tunnel_text}; ingress at {ingress} answered ({status})"
            ),
        ),
        Err(why) => report.add(
            "forwarder",
            Status::Fail,
            format!("{name}: the ingress at {ingress} does not answer: {why}"),
            &format!("check the node agent on {name} and its --ingress-addr"),
        ),
    }
}

/// One HTTP/1.1 request for a host no Service claims: a live ingress answers
/// it 404 at once.
async fn probe_ingress(addr: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: flotilla-doctor.invalid\r\nConnection: close\r\n\r\n",
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("no status")
            .to_string();
        if line.starts_with("HTTP/1.") {
            Ok(format!("HTTP {status}"))
        } else {
            Err(format!("not an HTTP answer: {line:?}"))
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
}

/// The CA and client certificates in the configuration.
fn check_local_certificates(report: &mut Report, config: &ClientConfig) {
    for (what, pem) in [
        ("the cluster CA", &config.ca_cert),
        (
            &*format!("the client certificate ({})", config.identity),
            &config.client_cert,
        ),
    ] {
        match flotilla_client::tls::seconds_until_expiry(pem) {
            Ok(left) => certificate_line(report, what, left),
            Err(e) => report.add(
                "certificates",
                Status::Fail,
                format!("{what} cannot be read: {e}"),
                "",
            ),
        }
    }
}

/// The certificates nodes report in their status.
fn check_node_certificates(report: &mut Report, nodes: &[flotilla_api::node::Node]) {
    let now = OffsetDateTime::now_utc();
    for node in nodes {
        let Some(not_after) = node_certificate_not_after(node) else {
            continue;
        };
        let left = (not_after - now).whole_seconds();
        certificate_line(
            report,
            &format!("node {}'s certificate", node.metadata.name),
            left,
        );
    }
}

fn node_certificate_not_after(node: &flotilla_api::node::Node) -> Option<OffsetDateTime> {
    parse_timestamp(&node.status.node_info.certificate_not_after)
}

fn certificate_line(report: &mut Report, what: &str, seconds_left: i64) {
    let days = seconds_left / 86_400;
    if seconds_left <= 0 {
        report.add(
            "certificates",
            Status::Fail,
            format!(
                "{what} expired {} ago",
                human(time::Duration::seconds(-seconds_left))
            ),
            "renew it: servers and nodes renew their own before expiry; for a client, ask an admin for new credentials (the server's admin.config)",
        );
    } else if days < CERT_WARN_DAYS {
        report.add(
            "certificates",
            Status::Warn,
            format!(
                "{what} expires in {} (under {CERT_WARN_DAYS} days)",
                human(time::Duration::seconds(seconds_left))
            ),
            "renew it before it expires",
        );
    } else {
        report.ok("certificates", format!("{what}: {days} days left"));
    }
}

/// How far in the future a renewal `age` ago lies (zero when in the past).
fn ahead_by(age: time::Duration) -> Duration {
    Duration::try_from(-age).unwrap_or_default()
}

/// `3s`, `4m10s`, `2h5m`, `12d`.
fn human_std(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        human(time::Duration::seconds(d.as_secs() as i64))
    }
}

fn human(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_is_starting_for_a_lease_period_and_a_half_after_the_server_started() {
        let moment = |serving_for| Moment {
            consistency: Consistency::Stale,
            now: OffsetDateTime::now_utc(),
            stale: "",
            serving_for,
        };
        let lease = Duration::from_secs(15);
        assert!(moment(Some(Duration::from_secs(3)))
            .starting(lease)
            .is_some());
        assert!(moment(Some(Duration::from_secs(22)))
            .starting(lease)
            .is_some());
        assert!(moment(Some(Duration::from_secs(23)))
            .starting(lease)
            .is_none());
        // No peer's age was read: nothing is excused.
        assert!(moment(None).starting(lease).is_none());
    }

    #[test]
    fn the_worst_check_decides_and_is_named_first() {
        let mut r = Report::default();
        r.ok("config", "fine".into());
        assert_eq!(r.worst(), Status::Ok);
        assert!(r.first_broken().is_none());
        r.add("store", Status::Warn, "slow".into(), "");
        r.add("node", Status::Fail, "down".into(), "restart it");
        r.add("forwarder", Status::Fail, "off".into(), "");
        assert_eq!(r.worst(), Status::Fail);
        assert_eq!(r.first_broken().map(|c| c.link), Some("node"));
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human(time::Duration::seconds(3)), "3s");
        assert_eq!(human(time::Duration::seconds(250)), "4m10s");
        assert_eq!(human(time::Duration::seconds(7500)), "2h5m");
        assert_eq!(human(time::Duration::days(12)), "12d");
        assert_eq!(human(time::Duration::seconds(-5)), "0s");
    }

    fn reading(who: &str, offset_ms: i64, uncertainty_ms: i64) -> ClockReading {
        ClockReading {
            who: who.into(),
            offset_micros: offset_ms * 1000,
            uncertainty_micros: uncertainty_ms * 1000,
            serving_for: None,
        }
    }

    #[test]
    fn clocks_are_compared_furthest_apart_after_their_errors() {
        let status = |readings: &[ClockReading]| {
            let mut r = Report::default();
            check_skew(&mut r, readings);
            (r.checks[0].status, r.checks[0].message.clone())
        };
        // 1.2 s apart, but 0.3 s of it may be the round trips: not surely 1 s.
        let (s, m) = status(&[reading("a", 0, 100), reading("b", 1200, 200)]);
        assert_eq!(s, Status::Ok, "{m}");
        assert!(
            m.contains("2 clocks of peers and nodes within 1200 ms"),
            "{m}"
        );
        let (s, m) = status(&[
            reading("peer 1", -800, 1),
            reading("node n", 300, 1),
            reading("peer 2", 0, 1),
        ]);
        assert_eq!(s, Status::Warn, "{m}");
        assert!(m.starts_with("node n is 1.1 s ahead of peer 1"), "{m}");
        let (s, _) = status(&[reading("a", 0, 1), reading("b", 12_000, 1)]);
        assert_eq!(s, Status::Fail);
        let (s, _) = status(&[]);
        assert_eq!(s, Status::Ok);
    }

    #[test]
    fn certificates_warn_under_30_days_and_fail_when_expired() {
        let mut r = Report::default();
        certificate_line(&mut r, "a", 40 * 86_400);
        certificate_line(&mut r, "b", 10 * 86_400);
        certificate_line(&mut r, "c", -60);
        let statuses: Vec<Status> = r.checks.iter().map(|c| c.status).collect();
        assert_eq!(statuses, vec![Status::Ok, Status::Warn, Status::Fail]);
        assert!(r.checks[2].message.contains("expired 1m0s ago"));
    }
}

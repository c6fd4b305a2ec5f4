//! Metrics and health end to end: `--metrics-addr 127.0.0.1:0` on a server, a
//! node, a scheduler and a controller manager; `/healthz`, `/readyz` and
//! `/metrics` read over real HTTP while the cluster works.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{run_cli, service_manifest, stderr, wait_for, Cluster, BIN};

/// A process whose stdout lines are collected as they come.
pub(crate) struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub(crate) fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("FLOTILLA_CONFIG")
            .env(
                "RUST_LOG",
                std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("FLOTILLA_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn flotilla");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The word after `marker` in the first stdout line that has it.
    fn after(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(marker)) {
                let rest = line.split(marker).nth(1).unwrap_or_default();
                return rest.split_whitespace().next().unwrap_or_default().into();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line with {marker:?} within {timeout:?}; stdout so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The metrics endpoint's `HOST:PORT`, from the "metrics on" line.
    pub(crate) fn metrics_addr(&mut self) -> String {
        let url = self.after("metrics on http://", Duration::from_secs(30));
        url.trim_end_matches("/metrics").to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET: (status, body); status 0 when nothing answered.
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: metrics\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `series` (name and labels as rendered), if present.
pub(crate) fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok()).flatten()
    })
}

pub(crate) fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

fn wait_ready(addr: &str, what: &str) {
    wait_for(what, Duration::from_secs(20), || {
        let (status, body) = http_get(addr, "/readyz");
        (status == 200 && body == "ok\n").then_some(())
    });
}

#[test]
fn a_server_is_live_ready_and_counts_its_raft_and_api_requests() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("peer-1");
    let mut server = Proc::spawn(&[
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics = server.metrics_addr();
    let api = server.after(" listening on ", Duration::from_secs(30));
    let config = data.join("admin.config");
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut full = vec!["--config", config.to_str().unwrap(), "--server", &api];
        full.extend_from_slice(args);
        run_cli(&full, stdin, Duration::from_secs(20))
    };

    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".into()));
    wait_ready(&metrics, "the server to be ready");
    let (status, body) = http_get(&metrics, "/nothing-here");
    assert_eq!(status, 404, "{body}");

    let before = scrape(&metrics);
    assert_eq!(
        value(&before, "flotilla_raft_is_leader"),
        Some(1.0),
        "{before}"
    );
    assert_eq!(value(&before, "flotilla_raft_has_leader"), Some(1.0));
    assert_eq!(value(&before, "flotilla_raft_voters"), Some(1.0));
    assert!(value(&before, "flotilla_raft_term").unwrap() >= 1.0);
    let commit = value(&before, "flotilla_raft_commit_index").expect("commit index");
    let applied = value(&before, "flotilla_raft_applied_index").expect("applied index");
    assert!(value(&before, "flotilla_raft_last_log_index").unwrap() >= commit);
    let applies =
        "flotilla_apiserver_requests_total{verb=\"apply\",kind=\"Service\",result=\"ok\"}";
    assert_eq!(value(&before, applies), None, "nothing applied yet");

    for name in ["m1", "m2", "m3"] {
        let out = cli(&["apply", "-f", "-"], Some(&service_manifest(name)));
        assert!(out.status.success(), "apply {name}: {}", stderr(&out));
    }
    let out = cli(&["get", "svc", "absent"], None);
    assert!(!out.status.success());

    let after = scrape(&metrics);
    assert_eq!(value(&after, applies), Some(3.0), "{after}");
    assert_eq!(
        value(
            &after,
            "flotilla_apiserver_requests_total{verb=\"get\",kind=\"Service\",result=\"NotFound\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert!(
        value(
            &after,
            "flotilla_apiserver_request_duration_seconds_count{verb=\"apply\"}"
        )
        .unwrap()
            >= 3.0
    );
    assert!(
        value(
            &after,
            "flotilla_apiserver_request_duration_seconds_bucket{verb=\"apply\",le=\"+Inf\"}"
        )
        .unwrap()
            >= 3.0,
        "{after}"
    );
    // Each apply is a raft entry: the indices move together.
    let commit_after = value(&after, "flotilla_raft_commit_index").unwrap();
    let applied_after = value(&after, "flotilla_raft_applied_index").unwrap();
    assert!(commit_after >= commit + 3.0, "{commit} -> {commit_after}");
    assert!(
        applied_after >= applied + 3.0,
        "{applied} -> {applied_after}"
    );
    // The in-process scheduler and controllers report here too.
    let scheduler = scrape(&metrics);
    for series in [
        "flotilla_scheduler_pending_instances 0",
        "# TYPE flotilla_scheduler_binding_duration_seconds histogram",
        "# TYPE flotilla_apiserver_watches gauge",
    ] {
        assert!(
            scheduler.lines().any(|l| l == series),
            "{series}: {scheduler}"
        );
    }
    wait_for("the scheduler to lead", Duration::from_secs(10), || {
        let m = scrape(&metrics);
        (value(
            &m,
            "flotilla_leader_election_leading{lease=\"flotilla-scheduler\"}",
        ) == Some(1.0))
        .then_some(())
    });
}

/// A preview1 module that sleeps a minute at a time, forever: an instance
/// that stays Running without any example build.
pub(crate) const SLEEPER_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; one clock subscription at 0: tag 0 (clock) at 8, clock id 1
    ;; (monotonic) at 16, relative timeout in ns at 24
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 60000000000))
    (loop $again
      (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $again))))
"#;

#[test]
fn a_node_reports_instances_by_phase_and_forwarder_requests() {
    let cluster = Cluster::start(1, &[]);
    let token = cluster.token("1h");
    let config = cluster.config();
    let node_dir = cluster.dir.path().join("node-m");
    let mut node = Proc::spawn(&[
        "--server",
        &cluster.peers[0].addr,
        "node",
        "--name",
        "node-m",
        "--data-dir",
        node_dir.to_str().unwrap(),
        "--token",
        &token,
        "--ingress-addr",
        "127.0.0.1:0",
        "--lease-interval",
        "2s",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let ingress = node.after(" ingress on http://", Duration::from_secs(30));
    let metrics = node.metrics_addr();
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".into()));
    wait_ready(&metrics, "the node to register");

    let wat = cluster.dir.path().join("sleeper.wat");
    std::fs::write(&wat, SLEEPER_WAT).unwrap();
    let manifest = format!(
        "apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: sleeper\nspec:\n  module: {}\n  nodeName: node-m\n  terminationGracePeriodSeconds: 1\n---\n\
         apiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: nobody\nspec:\n  selector: {{app: nobody}}\n  ports:\n  - port: 80\n  ingress: {{host: nobody.local}}\n",
        wat.display()
    );
    let out = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "--server",
            &cluster.peers[0].addr,
            "apply",
            "-f",
            "-",
        ],
        Some(&manifest),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "apply: {}", stderr(&out));

    let running = "flotilla_node_instances{phase=\"Running\"}";
    wait_for(
        "the instance Running in /metrics",
        Duration::from_secs(20),
        || (value(&scrape(&metrics), running) == Some(1.0)).then_some(()),
    );
    let m = scrape(&metrics);
    assert_eq!(
        value(&m, "flotilla_node_instances{phase=\"Pending\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "flotilla_node_instances{phase=\"Failed\"}"),
        Some(0.0)
    );
    assert!(value(&m, "flotilla_node_heartbeats_total{result=\"ok\"}").unwrap() >= 1.0);

    // A service without endpoints, reached through the ingress: counted by
    // service and result.
    wait_for(
        "the ingress to know the service",
        Duration::from_secs(20),
        || {
            let mut s = TcpStream::connect(&ingress).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET / HTTP/1.1\r\nHost: nobody.local\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.starts_with("HTTP/1.1 503").then_some(())
        },
    );
    let m = scrape(&metrics);
    assert_eq!(
        value(
            &m,
            "flotilla_forwarder_requests_total{namespace=\"default\",service=\"nobody\",result=\"no_endpoint\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "flotilla_forwarder_request_duration_seconds_count{namespace=\"default\",service=\"nobody\"}"
        ),
        Some(1.0)
    );

    // Deleting the service drops its series.
    let out = cluster.cli(0, &["delete", "service", "nobody"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    wait_for(
        "the deleted service's series gone from /metrics",
        Duration::from_secs(20),
        || (!scrape(&metrics).contains("service=\"nobody\"")).then_some(()),
    );

    // Deleting the instance takes it off the node's count.
    let out = cluster.cli(0, &["delete", "instance", "sleeper"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    wait_for(
        "the instance gone from /metrics",
        Duration::from_secs(20),
        || (value(&scrape(&metrics), running) == Some(0.0)).then_some(()),
    );
}

#[test]
fn a_scheduler_and_controllers_are_ready_while_they_reach_the_apiserver() {
    let mut cluster = Cluster::start(1, &["--no-scheduler", "--no-controllers"]);
    let config = cluster.config();
    let component = |verb: &str| {
        Proc::spawn(&[
            "--config",
            config.to_str().unwrap(),
            "--server",
            &cluster.peers[0].addr,
            verb,
            "--leader-lease",
            "3s",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
    };
    let mut scheduler = component("scheduler");
    let mut controllers = component("controllers");
    let (s, c) = (scheduler.metrics_addr(), controllers.metrics_addr());
    for (addr, lease) in [(&s, "flotilla-scheduler"), (&c, "flotilla-controllers")] {
        wait_ready(addr, lease);
        wait_for("the lease", Duration::from_secs(10), || {
            let series = format!("flotilla_leader_election_leading{{lease=\"{lease}\"}}");
            (value(&scrape(addr), &series) == Some(1.0)).then_some(())
        });
    }
    let m = scrape(&s);
    assert!(
        m.contains("# TYPE flotilla_scheduler_pending_instances gauge"),
        "{m}"
    );
    let m = scrape(&c);
    assert!(
        value(&m, "flotilla_controllers_passes_total{result=\"ok\"}").unwrap() >= 1.0,
        "{m}"
    );

    // Without an apiserver they stay alive and say why they are not ready.
    cluster.peers[0].kill9();
    for addr in [&s, &c] {
        let body = wait_for(
            "not ready without the apiserver",
            Duration::from_secs(15),
            || {
                let (status, body) = http_get(addr, "/readyz");
                (status == 503).then_some(body)
            },
        );
        assert!(body.starts_with("not ready\napiserver: "), "{body}");
        assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".into()));
    }
}

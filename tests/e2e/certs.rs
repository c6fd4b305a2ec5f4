//! Certificate lifetimes: servers and nodes renew theirs before they end, and
//! an expired one is named (which, whose, since when, what to do) instead of
//! failing as a bare TLS error. Lifetimes of seconds stand in for the year.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flotilla_api::meta::parse_timestamp;
use flotilla_client::tls::CertInfo;
use flotilla_client::{Client, ClientConfig, ClientError};
use flotilla_orchestrator::ca::CertificateAuthority;
use time::OffsetDateTime;

use crate::harness::{run_cli, stderr, stdout, wait_for, Cluster, ServerProc, BIN};
use crate::node::NodeProc;

fn cert_of_file(path: &Path) -> Option<CertInfo> {
    CertInfo::from_pem(&std::fs::read_to_string(path).ok()?).ok()
}

fn cert_of_config(path: &Path) -> Option<CertInfo> {
    CertInfo::from_pem(&ClientConfig::load(path).ok()?.client_cert).ok()
}

/// Sleeps until `t` has passed by `margin` (bounded: certificates in these
/// tests live seconds).
fn sleep_past(t: OffsetDateTime, margin: Duration) {
    let wait = t - OffsetDateTime::now_utc() + margin;
    if wait.is_positive() {
        let wait: Duration = wait.try_into().unwrap();
        assert!(
            wait < Duration::from_secs(20),
            "waiting {wait:?} is too long"
        );
        std::thread::sleep(wait);
    }
}

fn node_json(cluster: &Cluster, name: &str) -> Option<serde_json::Value> {
    let out = cluster.cli(0, &["get", "node", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_str(&stdout(&out)).ok())
        .flatten()
}

fn is_ready(node: &serde_json::Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The node's reported certificate end, once it has reported one.
fn reported_not_after(cluster: &Cluster, name: &str) -> Option<OffsetDateTime> {
    let node = node_json(cluster, name)?;
    parse_timestamp(node["status"]["nodeInfo"]["certificateNotAfter"].as_str()?)
}

fn lease_renewed(cluster: &Cluster, name: &str) -> Option<OffsetDateTime> {
    let out = cluster.cli(
        0,
        &[
            "get",
            "lease",
            name,
            "-n",
            "flotilla-node-lease",
            "-o",
            "json",
        ],
    );
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
    parse_timestamp(v["spec"]["renewTime"].as_str()?)
}

const NODE_FLAGS: &[&str] = &["--hollow", "--lease-interval", "1s"];

#[test]
fn servers_and_nodes_renew_their_certificates_and_keep_working() {
    // Long enough that the node's renewed certificate outlasts the server's
    // restart below even on a loaded machine (a third of it is left when
    // the node's renewal falls due).
    let mut cluster = Cluster::start(1, &["--cert-lifetime", "9s"]);
    let peer_crt = cluster.peers[0].data_dir.join("peer.crt");
    let first_server = cert_of_file(&peer_crt).expect("peer.crt");
    assert_eq!(first_server.identity, "peer:1");

    let token = cluster.token("1h");
    let node_dir = cluster.dir.path().join("renewing");
    let _node = NodeProc::start(
        Some(&cluster.peers[0].addr),
        Some(&token),
        "renewing",
        &node_dir,
        NODE_FLAGS,
    );
    let node_config = node_dir.join("node.config");
    let first_node = wait_for("the node to join", Duration::from_secs(10), || {
        cert_of_config(&node_config)
    });
    assert_eq!(first_node.identity, "node:renewing");
    assert!(
        first_node.not_after - OffsetDateTime::now_utc() <= time::Duration::seconds(10),
        "the node's certificate has the server's lifetime: {first_node:?}"
    );

    // The server renews its own certificate and writes it to its data dir.
    let renewed = wait_for(
        "the server's certificate to be renewed",
        Duration::from_secs(10),
        || cert_of_file(&peer_crt).filter(|c| c.not_after > first_server.not_after),
    );
    assert_eq!(renewed.identity, "peer:1");

    // Past the end of its first certificate, new connections still verify:
    // the endpoint serves the new one, and admin.config was renewed too.
    sleep_past(first_server.not_after, Duration::from_millis(1200));
    let out = cluster.cli(0, &["get", "nodes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (identity, not_after) = rt.block_on(async {
        let client = cluster.client(0).await;
        client
            .server_certificate_not_after()
            .expect("a server certificate")
    });
    assert_eq!(identity, "peer:1");
    assert!(
        not_after > first_server.not_after,
        "{not_after} is the first certificate's end"
    );

    // The node renewed its certificate through the apiserver, kept it in its
    // data dir and reports when it ends.
    let node_renewed = wait_for(
        "the node's certificate to be renewed",
        Duration::from_secs(10),
        || cert_of_config(&node_config).filter(|c| c.not_after > first_node.not_after),
    );
    assert_eq!(node_renewed.identity, "node:renewing");
    wait_for(
        "the Node to report its renewed certificate",
        Duration::from_secs(10),
        || reported_not_after(&cluster, "renewing").filter(|t| *t > first_node.not_after),
    );

    // Past the end of its first certificate, the node must connect anew
    // (the server restarts): only the renewed certificate gets it in.
    sleep_past(first_node.not_after, Duration::from_millis(500));
    cluster.peers[0].restart();
    let restarted = OffsetDateTime::now_utc();
    wait_for(
        "the node's lease renewed after the restart",
        Duration::from_secs(15),
        || lease_renewed(&cluster, "renewing").filter(|t| *t > restarted),
    );
    let node = node_json(&cluster, "renewing").expect("the Node");
    assert!(is_ready(&node), "{node}");
}

#[test]
fn store_peers_renew_and_still_reach_each_other() {
    let mut cluster = Cluster::start(2, &["--cert-lifetime", "4s"]);
    let firsts: Vec<CertInfo> = cluster
        .peers
        .iter()
        .map(|p| cert_of_file(&p.data_dir.join("peer.crt")).expect("peer.crt"))
        .collect();
    let last_end = firsts.iter().map(|c| c.not_after).max().unwrap();
    sleep_past(last_end, Duration::from_millis(1200));
    for (peer, first) in cluster.peers.iter().zip(&firsts) {
        let now = cert_of_file(&peer.data_dir.join("peer.crt")).expect("peer.crt");
        assert_eq!(now.identity, first.identity);
        assert!(now.not_after > first.not_after, "{} renewed", now.identity);
    }
    // Peer 2 comes back: raft connections both ways are made anew, with
    // renewed certificates only (the first ones have ended).
    cluster.peers[1].restart();
    cluster.wait_members(2);
    let manifest = crate::harness::service_manifest("after-renewal");
    wait_for("a write through peer 2", Duration::from_secs(15), || {
        let out = cluster.cli_in(1, &["apply", "-f", "-"], Some(&manifest));
        out.status.success().then_some(())
    });
    let out = cluster.cli(0, &["get", "svc", "after-renewal"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_expired_client_certificate_is_named_and_the_cli_exits_at_once() {
    let cluster = Cluster::start(1, &["--cert-lifetime", "3s"]);
    let copy = cluster.dir.path().join("copied-admin.config");
    std::fs::copy(cluster.config(), &copy).unwrap();
    let copied = cert_of_config(&copy).expect("admin certificate");
    sleep_past(copied.not_after, Duration::from_millis(1200));

    let started = Instant::now();
    let out = run_cli(
        &["--config", copy.to_str().unwrap(), "get", "nodes"],
        None,
        Duration::from_secs(10),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let expected = format!(
        "your client certificate (user:admin, from {}) expired at {}",
        copy.display(),
        copied.not_after_rfc3339()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(
        err.contains("admin.config"),
        "says where a fresh one is: {err}"
    );

    // doctor names the expired credentials as the first broken link.
    let (code, report) = doctor_with(&copy);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["firstBroken"], "config", "{report}");
    assert!(
        report
            .to_string()
            .contains("the client certificate (user:admin) expired"),
        "{report}"
    );

    // The peer's own admin.config was renewed meanwhile and still gets in.
    let out = cluster.cli(0, &["get", "ns", "default"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `flotilla doctor -o json` with a configuration file: exit code and report.
fn doctor_with(config: &Path) -> (i32, serde_json::Value) {
    let out = run_cli(
        &["--config", config.to_str().unwrap(), "doctor", "-o", "json"],
        None,
        Duration::from_secs(15),
    );
    let report = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {}", stderr(&out)));
    (out.status.code().unwrap_or(-1), report)
}

#[test]
fn an_expired_server_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("peer");
    let server = ServerProc::start(&data, &["--cert-lifetime", "4s", "--cert-renew-at", "off"])
        .expect("the server starts");
    let peer = cert_of_file(&data.join("peer.crt")).expect("peer.crt");

    // A client certificate that outlives the server's, from the CA in its
    // data dir, so that only the server's certificate is at fault.
    let ca = CertificateAuthority {
        cert_pem: std::fs::read_to_string(data.join("ca.crt")).unwrap(),
        key_pem: std::fs::read_to_string(data.join("ca.key")).unwrap(),
    };
    let admin = ca
        .issue_for("user:admin", &[], time::Duration::hours(1))
        .unwrap();
    let config = ClientConfig {
        server: server.addr.clone(),
        identity: "user:admin".into(),
        ca_cert: ca.cert_pem.clone(),
        client_cert: admin.cert_pem,
        client_key: admin.key_pem,
    };
    let config_path = dir.path().join("long.config");
    config.save(&config_path).unwrap();

    sleep_past(peer.not_after, Duration::from_millis(1200));
    assert_eq!(
        cert_of_file(&data.join("peer.crt")),
        Some(peer.clone()),
        "renewal is off"
    );
    let out = run_cli(
        &["--config", config_path.to_str().unwrap(), "get", "nodes"],
        None,
        Duration::from_secs(15),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let expected = format!(
        "the server's certificate (peer:1 at {}) expired at {}",
        server.addr,
        peer.not_after_rfc3339()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("--cert-renew-at"), "says what to do: {err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(Client::connect(&config)).map(|_| ());
    assert!(
        matches!(result, Err(ClientError::ServerCertificate { ref identity, .. }) if identity == "peer:1"),
        "{result:?}"
    );

    // doctor names the server's certificate.
    let (code, report) = doctor_with(&config_path);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["firstBroken"], "certificates", "{report}");
    assert!(
        report.to_string().contains(&format!(
            "the server's certificate (peer:1 at {})",
            server.addr
        )),
        "{report}"
    );
    drop(server);
}

/// A `flotilla node` whose stderr the test reads.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watched {
    fn start(args: &[String]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("FLOTILLA_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flotilla node");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The first stderr line containing `needle`, within `timeout`.
    fn line_with(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => panic!("no line with {needle:?} within {timeout:?}; stderr:\n{seen}"),
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_args(server: &str, name: &str, dir: &Path, token: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--server".into(),
        server.into(),
        "node".into(),
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--cert-renew-at".into(),
        "off".into(),
    ];
    args.extend(NODE_FLAGS.iter().map(|s| s.to_string()));
    if let Some(t) = token {
        args.extend(["--token".into(), t.into()]);
    }
    args
}

#[test]
fn a_node_whose_certificate_expired_says_how_to_rejoin_and_rejoins_with_a_token() {
    let cluster = Cluster::start(1, &["--cert-lifetime", "4s"]);
    let addr = cluster.peers[0].addr.clone();
    let token = cluster.token("1h");
    let dir: PathBuf = cluster.dir.path().join("late");
    let config = dir.join("node.config");

    // Joined with renewal off, then away past its certificate's end.
    let first = {
        let _node = Watched::start(&node_args(&addr, "late", &dir, Some(&token)));
        wait_for("the node to join", Duration::from_secs(10), || {
            cert_of_config(&config)
        })
    };
    sleep_past(first.not_after, Duration::from_millis(1200));

    let node = Watched::start(&node_args(&addr, "late", &dir, None));
    let line = node.line_with("expired at", Duration::from_secs(10));
    for needle in [
        "node:late",
        &config.display().to_string(),
        &first.not_after_rfc3339(),
        "flotilla token create",
        "--token",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    assert!(
        !line.contains("handshake") && !line.contains("alert"),
        "no bare TLS error: {line}"
    );
    drop(node);

    // A restart with a new token joins again as the same node.
    let token = cluster.token("1h");
    let _node = Watched::start(&node_args(&addr, "late", &dir, Some(&token)));
    let rejoined = wait_for("the node to join again", Duration::from_secs(10), || {
        cert_of_config(&config).filter(|c| c.not_after > first.not_after)
    });
    assert_eq!(rejoined.identity, "node:late");
    wait_for(
        "the Node to report the new certificate",
        Duration::from_secs(10),
        || reported_not_after(&cluster, "late").filter(|t| *t > first.not_after),
    );
}

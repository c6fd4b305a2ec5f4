//! The virtual network's addresses: node instance ranges, service cluster IPs,
//! exhaustion, and the Endpoints of a Service.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{service_manifest, stderr, stdout, wait_for, Cluster};
use crate::node::NodeProc;

fn get_json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = cluster.cli(0, &full);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[test]
fn services_get_cluster_ips_until_the_range_is_exhausted() {
    let cluster = Cluster::start(1, &["--service-cidr", "10.96.7.0/30"]);
    for name in ["a", "b"] {
        let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest(name)));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let a = get_json(&cluster, &["svc", "a"]);
    let b = get_json(&cluster, &["svc", "b"]);
    let ips = [
        a["spec"]["clusterIP"].as_str().unwrap(),
        b["spec"]["clusterIP"].as_str().unwrap(),
    ];
    assert_eq!(ips, ["10.96.7.1", "10.96.7.2"]);

    // Applying again keeps the address: nothing changed.
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("a")));
    assert!(stdout(&out).contains("unchanged"), "{}", stdout(&out));

    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("c")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no cluster IP left for service \"c\": every address of the service CIDR 10.96.7.0/30 is taken"),
        "{}",
        stderr(&out)
    );
    assert!(
        !cluster.cli(0, &["get", "svc", "c"]).status.success(),
        "nothing written"
    );

    // Deleting a service frees its address for the next one.
    assert!(cluster.cli(0, &["delete", "svc", "a"]).status.success());
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("c")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        get_json(&cluster, &["svc", "c"])["spec"]["clusterIP"],
        "10.96.7.1"
    );

    // An address outside the range, or one taken, is refused by name.
    let taken = service_manifest("d").replace("spec:\n", "spec:\n  clusterIP: 10.96.7.2\n");
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&taken));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already allocated"),
        "{}",
        stderr(&out)
    );
    let outside = service_manifest("e").replace("spec:\n", "spec:\n  clusterIP: 10.1.2.3\n");
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&outside));
    assert!(
        stderr(&out).contains("spec.clusterIP: 10.1.2.3 is outside the service CIDR 10.96.7.0/30"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nodes_get_distinct_instance_ranges() {
    let cluster = Cluster::start(1, &["--cluster-cidr", "10.250.0.0/23"]);
    let node = |name: &str| {
        format!("apiVersion: flotilla.dev/v1\nkind: Node\nmetadata:\n  name: {name}\n")
    };
    for name in ["n1", "n2"] {
        let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&node(name)));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let r1 = get_json(&cluster, &["node", "n1"])["spec"]["instanceCIDR"].clone();
    let r2 = get_json(&cluster, &["node", "n2"])["spec"]["instanceCIDR"].clone();
    assert_eq!(
        (r1.as_str().unwrap(), r2.as_str().unwrap()),
        ("10.250.0.0/24", "10.250.1.0/24")
    );
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&node("n3")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no instance range left for node \"n3\""),
        "{}",
        stderr(&out)
    );
}

/// One HTTP/1.1 GET with a Host header: (status, body, how long it took).
pub(crate) fn get(addr: &str, host: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, format!("connect: {e}"), started.elapsed()),
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
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
    (status, body, started.elapsed())
}

pub(crate) fn free_tcp_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A plain HTTP server on loopback that stands for a host outside the cluster.
pub(crate) fn outside_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\noutside\n",
            );
        }
    });
    addr
}

fn examples_manifest(name: &str) -> String {
    let dir = crate::node::examples();
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      module: {}
      world: http
      nodeSelector: {{role: back}}
      resources:
        limits: {{cpu: 100m, memory: 32Mi}}
---
apiVersion: flotilla.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - port: 80
  ingress: {{host: {name}.local}}
",
        dir.join(format!("{name}.wasm")).display()
    )
}

pub(crate) fn frontend_manifest(allowed: &str) -> String {
    let dir = crate::node::examples();
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: frontend
spec:
  replicas: 1
  selector:
    matchLabels: {{app: frontend}}
  template:
    metadata:
      labels: {{app: frontend}}
    spec:
      module: {}
      world: http
      nodeSelector: {{role: front}}
      allowedOutboundHosts: [\"{allowed}\"]
---
apiVersion: flotilla.dev/v1
kind: Service
metadata:
  name: frontend
spec:
  selector: {{app: frontend}}
  ports:
  - port: 80
  ingress: {{host: frontend.local}}
",
        dir.join("frontend.wasm").display()
    )
}

#[test]
fn services_route_across_nodes_through_ingress_names_and_addresses() {
    let cluster = Cluster::start(
        1,
        &[
            "--node-grace-period",
            "2s",
            "--default-toleration-seconds",
            "2",
        ],
    );
    let token = cluster.token("1h");
    let ingress: Vec<String> = (0..3).map(|_| free_tcp_addr()).collect();
    let roles = ["front", "back", "back"];
    let mut nodes: Vec<NodeProc> = (0..3)
        .map(|i| {
            let name = format!("node-{}", i + 1);
            let labels = format!("role={}", roles[i]);
            NodeProc::start(
                Some(&cluster.peers[0].addr),
                Some(&token),
                &name,
                &cluster.dir.path().join(&name),
                &[
                    "--lease-interval",
                    "500ms",
                    "--labels",
                    &labels,
                    "--ingress-addr",
                    &ingress[i],
                ],
            )
        })
        .collect();
    crate::workloads::wait_nodes_ready(&cluster, 3);
    let outside = outside_server();
    for manifest in [
        examples_manifest("hello"),
        examples_manifest("backend"),
        frontend_manifest(&outside),
    ] {
        let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&manifest));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    crate::workloads::wait_ready_instances(&cluster, "hello", 2, Duration::from_secs(60));
    crate::workloads::wait_ready_instances(&cluster, "backend", 2, Duration::from_secs(60));
    crate::workloads::wait_ready_instances(&cluster, "frontend", 1, Duration::from_secs(60));

    // Every node's ingress answers for hello, from both replicas.
    for addr in &ingress {
        let seen = wait_for("hello through the ingress", Duration::from_secs(20), || {
            let mut seen = BTreeSet::new();
            for _ in 0..8 {
                let (status, body, _) = get(addr, "hello.local", "/");
                if status != 200 {
                    return None;
                }
                seen.insert(body);
            }
            (seen.len() == 2).then_some(seen)
        });
        assert!(
            seen.iter().all(|b| b.starts_with("hello from hello-")),
            "{seen:?}"
        );
    }
    let (status, body, _) = get(&ingress[0], "nobody.local", "/");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no service is exposed for host \"nobody.local\""),
        "{body}"
    );

    // frontend (node-1) reaches backend (node-2, node-3) by name, cluster IP
    // and instance IP.
    let by_name = wait_for("frontend -> backend", Duration::from_secs(20), || {
        let (status, body, _) = get(&ingress[0], "frontend.local", "/");
        (status == 200).then_some(body)
    });
    assert!(
        by_name.starts_with("frontend frontend-") && by_name.contains("-> backend backend-"),
        "{by_name}"
    );
    let svc = get_json(&cluster, &["svc", "backend"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let (status, body, _) = get(
        &ingress[1],
        "frontend.local",
        &format!("/?to=http://{cluster_ip}/"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("-> backend backend-"), "{body}");
    let (status, body, _) = get(
        &ingress[2],
        "frontend.local",
        "/?to=http://backend.default.svc/",
    );
    assert_eq!(status, 200, "{body}");
    let backends = get_json(&cluster, &["inst", "-l", "app=backend"]);
    for b in backends["items"].as_array().unwrap() {
        let ip = b["status"]["instanceIP"].as_str().unwrap();
        let name = b["metadata"]["name"].as_str().unwrap();
        let (status, body, _) = get(&ingress[0], "frontend.local", &format!("/?to=http://{ip}/"));
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with(&format!("-> backend {name}\n")), "{body}");
    }

    // Egress: the listed host is reached, another one is denied (and said so).
    let (status, body, _) = get(
        &ingress[0],
        "frontend.local",
        &format!("/?to=http://{outside}/"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("-> outside\n"), "{body}");
    let other = free_tcp_addr();
    let (status, body, _) = get(
        &ingress[0],
        "frontend.local",
        &format!("/?to=http://{other}/"),
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(
            ": denied: outgoing calls outside the cluster need the host in allowedOutboundHosts"
        ),
        "{body}"
    );
    wait_for("an EgressDenied event", Duration::from_secs(10), || {
        stdout(&cluster.cli(0, &["get", "events"]))
            .contains("EgressDenied")
            .then_some(())
    });

    // Scaled to 0: a fast 503-class answer; back to 2: traffic again.
    crate::workloads::scale(&cluster, "backend", 0);
    let (_, body, took) = wait_for("503 from frontend", Duration::from_secs(20), || {
        let r = get(&ingress[0], "frontend.local", "/");
        (r.0 == 503).then_some(r)
    });
    assert!(took < Duration::from_secs(1), "took {took:?}: {body}");
    let scaled = Instant::now();
    crate::workloads::scale(&cluster, "backend", 2);
    wait_for("traffic again", Duration::from_secs(30), || {
        (get(&ingress[0], "frontend.local", "/").0 == 200).then_some(())
    });
    eprintln!(
        "traffic flowed again {:?} after scaling back",
        scaled.elapsed()
    );
    assert!(
        scaled.elapsed() < Duration::from_secs(2),
        "took {:?}",
        scaled.elapsed()
    );
    crate::workloads::wait_ready_instances(&cluster, "backend", 2, Duration::from_secs(60));

    // A client without a node certificate is refused by the tunnel.
    let tunnel_refused = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let n = get_json(&cluster, &["node", "node-2"]);
        let addr = n["status"]["daemonEndpoints"]["tunnel"]
            .as_str()
            .unwrap()
            .to_string();
        let config = flotilla_client::ClientConfig::load(&cluster.config()).unwrap();
        let cert = flotilla_client::tls::IssuedCert {
            cert_pem: config.client_cert.clone(),
            key_pem: config.client_key.clone(),
        };
        let tls = flotilla_client::tls::client_config(
            &config.ca_cert,
            Some(&cert),
            flotilla_client::tls::ALPN_TUNNEL,
            flotilla_client::tls::ServerIdentity::Node("node-2".into()),
        )
        .unwrap();
        let (_endpoint, conn) = flotilla_client::dial(&addr, tls).await.unwrap();
        let attempt = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"\0\0\0\x01x").await?;
            let _ = send.finish();
            let buf = recv
                .read_to_end(1 << 20)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<usize, Box<dyn std::error::Error>>(buf.len())
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
    });
    assert!(
        tunnel_refused,
        "the tunnel served a client without a node certificate"
    );

    // A node with a backend replica dies: once its endpoint is gone, no
    // request goes to it.
    let on_node3: Vec<String> = get_json(&cluster, &["inst", "-l", "app=backend"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["spec"]["nodeName"] == "node-3")
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    nodes[2].kill9();
    wait_for("node-3's endpoints gone", Duration::from_secs(20), || {
        let ep = get_json(&cluster, &["endpoints", "backend"]);
        let text = ep.to_string();
        (!text.contains("node-3") || on_node3.iter().all(|n| !text.contains(n.as_str())))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        let (status, body, _) = get(&ingress[0], "frontend.local", "/");
        assert_eq!(status, 200, "{body}");
        assert!(
            on_node3.iter().all(|n| !body.contains(n.as_str())),
            "{body} went to the dead node"
        );
    }

    // The server dies: every ingress still serves hello and frontend -> backend.
    cluster_kill_servers(&cluster);
    for addr in &ingress[..2] {
        let (status, body, _) = get(addr, "hello.local", "/");
        assert_eq!(status, 200, "{body}");
        let (status, body, _) = get(addr, "frontend.local", "/");
        assert_eq!(status, 200, "{body}");
    }
}

fn cluster_kill_servers(cluster: &Cluster) {
    for p in &cluster.peers {
        if let Some(pid) = p.child.as_ref().map(|c| c.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

//! What the HTTP benchmarks share: a cluster of one or more nodes serving
//! Deployments through their ingresses, a keep-alive HTTP/1.1 load generator
//! (hyper), and `wrk` run and read.

#![allow(dead_code)] // each bench binary uses its own part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::support::{flotilla_bin, spawn_listening, Proc, BIN};

/// One `flotilla server` and one or more `flotilla node --ingress-addr`.
pub struct IngressCluster {
    _server: Proc,
    _nodes: Vec<Proc>,
    _dir: tempfile::TempDir,
    config: PathBuf,
    addr: String,
    /// The first node's ingress address.
    pub ingress: String,
    /// Each node's ingress address, in the order the nodes were named.
    pub ingresses: Vec<String>,
}

impl IngressCluster {
    /// One node, `bench`, of this build.
    pub fn start() -> Self {
        Self::start_nodes(BIN, &["bench"])
    }

    /// Nodes named `names`, server and nodes all of the binary `bin`.
    pub fn start_nodes(bin: &str, names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_dir = dir.path().join("server");
        let (server, addr) = spawn_listening(flotilla_bin(
            bin,
            &[
                "server",
                "--data-dir",
                server_dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
        ));
        let config = server_dir.join("admin.config");
        let token = cli(&config, &addr, &["token", "create"], None)
            .trim()
            .to_string();
        let mut nodes = Vec::new();
        let mut ingresses = Vec::new();
        for name in names {
            let ingress = free_addr();
            let node_dir = dir.path().join(format!("node-{name}"));
            let (node, _) = spawn_listening(flotilla_bin(
                bin,
                &[
                    "--server",
                    &addr,
                    "node",
                    "--name",
                    name,
                    "--data-dir",
                    node_dir.to_str().unwrap(),
                    "--token",
                    &token,
                    "--ingress-addr",
                    &ingress,
                ],
            ));
            nodes.push(node);
            ingresses.push(ingress);
        }
        IngressCluster {
            _server: server,
            _nodes: nodes,
            _dir: dir,
            config,
            addr,
            ingress: ingresses[0].clone(),
            ingresses,
        }
    }

    /// The nodes' process ids, in the order the nodes were named.
    pub fn node_pids(&self) -> Vec<u32> {
        self._nodes.iter().map(|p| p.0.id()).collect()
    }

    /// A Deployment of one replica of `wasm` named `name`, behind a Service
    /// with ingress host `NAME.local`; returns once it answers there.
    pub async fn serve(&self, name: &str, wasm: &Path) -> String {
        self.serve_on(name, wasm, None).await
    }

    /// [`Self::serve`], with the replica pinned to node `pinned` when given;
    /// returns once it answers through every node's ingress.
    pub async fn serve_on(&self, name: &str, wasm: &Path, pinned: Option<&str>) -> String {
        let host = format!("{name}.local");
        let node_name = pinned
            .map(|n| format!("      nodeName: {n}\n"))
            .unwrap_or_default();
        let manifest = format!(
            "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      module: {}\n      world: http\n{node_name}---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - port: 80\n  ingress: {{host: {host}}}\n",
            wasm.display()
        );
        cli(
            &self.config,
            &self.addr,
            &["apply", "-f", "-"],
            Some(&manifest),
        );
        let ready = Instant::now();
        for ingress in &self.ingresses {
            loop {
                if let Some((200, _)) = get_once(ingress, &host).await {
                    break;
                }
                assert!(
                    ready.elapsed() < Duration::from_secs(120),
                    "{name} never answered through the ingress at {ingress}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        host
    }
}

/// A built example's .wasm, or a message saying how to build it.
pub fn example_wasm(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/target/wasm32-wasip2/release")
        .join(file);
    assert!(
        path.exists(),
        "{} is missing: cd examples && cargo build --release",
        path.display()
    );
    path
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn cli(config: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--server", server])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "flotilla {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One GET over a fresh connection; status and body.
pub async fn get_once(addr: &str, host: &str) -> Option<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// Waits (60 s at most) until `addr` answers a GET for `host`.
pub async fn wait_answering(addr: &str, host: &str, what: &str) {
    let started = Instant::now();
    while get_once(addr, host).await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub struct Measured {
    pub requests: usize,
    pub errors: usize,
    pub secs: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// `connections` keep-alive connections, each sending GETs back to back.
pub async fn load(addr: &str, host: &str, connections: usize, secs: u64) -> Measured {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let addr = addr.to_string();
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            'outer: while Instant::now() < deadline {
                let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                    errors += 1;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut send, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    errors += 1;
                    continue;
                };
                tokio::spawn(conn);
                while Instant::now() < deadline {
                    let req = http::Request::get("/")
                        .header("host", host.as_str())
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let t = Instant::now();
                    match send.send_request(req).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            let body = resp.into_body().collect().await;
                            if ok && body.is_ok() {
                                lat.push(t.elapsed());
                            } else {
                                errors += 1;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            continue 'outer;
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Measured {
        requests: all.len(),
        errors,
        secs,
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

/// What one `wrk` run measured.
pub struct Wrk {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

/// `wrk -t1 -cCONNECTIONS -dSECSs --latency` against `http://ADDR/` with
/// `Host: HOST`.
pub fn wrk(addr: &str, host: &str, connections: usize, secs: u64) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
        .args(["--latency", "-H", &format!("Host: {host}")])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("wrk is not installed: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's report:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut requests_per_sec = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => requests_per_sec = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = wrk_duration(v),
            (Some("99%"), Some(v)) => p99 = wrk_duration(v),
            (Some("Non-2xx"), _) => errors += line.rsplit(' ').next()?.parse::<u64>().ok()?,
            (Some("Socket"), Some("errors:")) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                errors += line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    Some(Wrk {
        requests_per_sec: requests_per_sec?,
        p50: p50?,
        p99: p99?,
        errors,
    })
}

/// `60.00us`, `1.20ms`, `2.00s`.
fn wrk_duration(v: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

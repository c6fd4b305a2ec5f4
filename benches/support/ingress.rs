//! What the HTTP benchmarks share: a one-node cluster serving Deployments
//! through its ingress, and a keep-alive HTTP/1.1 load generator (hyper).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::support::{flotilla, spawn_listening, Proc, BIN};

/// One `flotilla server` and one `flotilla node --ingress-addr`.
pub struct IngressCluster {
    _server: Proc,
    _node: Proc,
    _dir: tempfile::TempDir,
    config: PathBuf,
    addr: String,
    /// The node's ingress address.
    pub ingress: String,
}

impl IngressCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_dir = dir.path().join("server");
        let (server, addr) = spawn_reporting(&[
            "server",
            "--data-dir",
            server_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        let config = server_dir.join("admin.config");
        let token = cli(&config, &addr, &["token", "create"], None)
            .trim()
            .to_string();
        let ingress = free_addr();
        let node_dir = dir.path().join("node");
        let (node, _) = spawn_reporting(&[
            "--server",
            &addr,
            "node",
            "--name",
            "bench",
            "--data-dir",
            node_dir.to_str().unwrap(),
            "--token",
            &token,
            "--ingress-addr",
            &ingress,
        ]);
        IngressCluster {
            _server: server,
            _node: node,
            _dir: dir,
            config,
            addr,
            ingress,
        }
    }

    /// A Deployment of one replica of `wasm` named `name`, behind a Service
    /// with ingress host `NAME.local`; returns once it answers there.
    pub async fn serve(&self, name: &str, wasm: &Path) -> String {
        let host = format!("{name}.local");
        let manifest = format!(
            "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      module: {}\n      world: http\n---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - port: 80\n  ingress: {{host: {host}}}\n",
            wasm.display()
        );
        cli(
            &self.config,
            &self.addr,
            &["apply", "-f", "-"],
            Some(&manifest),
        );
        let ready = Instant::now();
        loop {
            if let Some((200, _)) = get_once(&self.ingress, &host).await {
                return host;
            }
            assert!(
                ready.elapsed() < Duration::from_secs(120),
                "{name} never answered through the ingress"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

fn spawn_reporting(args: &[&str]) -> (Proc, String) {
    spawn_listening(flotilla(args))
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

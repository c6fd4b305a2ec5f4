//! Scheduler throughput: bindings per second, and the time to place 10,000
//! instances onto 1,000 registered hollow nodes (real agents whose runtime only
//! pretends to run: `flotilla hollow-nodes`).
//!
//! One `flotilla server --no-scheduler --no-controllers`, one
//! `flotilla hollow-nodes` process; the instances are created unbound first,
//! then a `flotilla scheduler` process is started and the bindings are timed
//! through a watch, as Kubernetes' scheduler_perf does.
//!
//! Run: `cargo bench --bench scheduler` (FLOTILLA_BENCH_NODES and
//! FLOTILLA_BENCH_INSTANCES override 1000 and 10000).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flotilla_api::client::{Client, ClientConfig};
use flotilla_api::instance::Instance;
use flotilla_api::meta::ObjectMeta;
use flotilla_api::object::{Kind, Object};
use flotilla_api::quantity::Quantity;
use flotilla_api::wire::{EventType, RequestV1, ResponseV1};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// `(module (func (export "_start")))`: the hollow runtime never runs it.
const MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02,
    0x01, 0x00, 0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, 0x0a, 0x04,
    0x01, 0x02, 0x00, 0x0b,
];

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_server(dir: &Path) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-scheduler",
            "--no-controllers",
            // 1,000 nodes need more than the default /16's 256 node ranges.
            "--cluster-cidr",
            "10.0.0.0/8",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server address");
    (Proc(child), addr)
}

fn client_args(config: &Path, addr: &str) -> Vec<String> {
    vec![
        "--config".into(),
        config.display().to_string(),
        "--server".into(),
        addr.into(),
    ]
}

async fn ready_nodes(client: &Client) -> usize {
    match client.list(Kind::Node, None, "").await {
        Ok((items, _)) => items
            .iter()
            .filter(|o| matches!(o, Object::Node(n) if n.is_ready()))
            .count(),
        Err(_) => 0,
    }
}

fn instance(digest: &str, n: usize) -> Object {
    let mut i = Instance {
        metadata: ObjectMeta::new("default", &format!("bench-{n}")),
        ..Instance::default()
    };
    i.metadata.labels.insert("app".into(), "bench".into());
    i.spec.module = digest.to_string();
    i.spec.resources.requests.cpu = Some(Quantity::parse("10m").unwrap());
    i.spec.resources.requests.memory = Some(Quantity::parse("1Mi").unwrap());
    Object::Instance(i)
}

#[tokio::main]
async fn main() {
    let nodes = env_usize("FLOTILLA_BENCH_NODES", 1000);
    let instances = env_usize("FLOTILLA_BENCH_INSTANCES", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(&dir.path().join("server"));
    let config_path = dir.path().join("server/admin.config");
    let config = ClientConfig::load(&config_path).unwrap();
    let client = loop {
        if let Ok(c) = Client::connect(&config).await {
            if c.get(Kind::Namespace, "", "default").await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let token = match client
        .call(RequestV1::CreateToken { ttl_seconds: 3600 })
        .await
        .unwrap()
    {
        ResponseV1::Token(t) => t,
        other => panic!("{other:?}"),
    };

    let started = Instant::now();
    let mut args = client_args(&config_path, &addr);
    args.extend([
        "hollow-nodes".into(),
        "--count".into(),
        nodes.to_string(),
        "--data-dir".into(),
        dir.path().join("hollow").display().to_string(),
        "--token".into(),
        token,
    ]);
    let _hollow = Proc(
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hollow nodes"),
    );
    loop {
        let ready = ready_nodes(&client).await;
        if ready >= nodes {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {ready} of {nodes} hollow nodes Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let registered = started.elapsed();

    let Object::Module(module) = client.upload_module(MODULE, "bench.wasm").await.unwrap() else {
        panic!("the upload did not answer with a module");
    };
    let digest = module.spec.digest.clone();
    let created_at = Instant::now();
    let mut writers = Vec::new();
    let per_writer = instances.div_ceil(64);
    for w in 0..64 {
        let client = Client::connect(&config).await.unwrap();
        let digest = digest.clone();
        writers.push(tokio::spawn(async move {
            for n in (w * per_writer)..((w + 1) * per_writer).min(instances) {
                client.create(instance(&digest, n)).await.expect("create");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let created = created_at.elapsed();

    let (_, revision) = client.list(Kind::Instance, None, "").await.unwrap();
    let mut watch = client
        .watch(Some(Kind::Instance), None, "", revision)
        .await
        .unwrap();
    let mut args = client_args(&config_path, &addr);
    args.push("scheduler".into());
    let scheduler_start = Instant::now();
    let _scheduler = Proc(
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn scheduler"),
    );
    let mut bound: HashSet<String> = HashSet::new();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while bound.len() < instances {
        let event = tokio::time::timeout(Duration::from_secs(120), watch.next())
            .await
            .expect("bindings stalled for 2 minutes")
            .unwrap()
            .expect("watch ended");
        if event.event_type != EventType::Modified {
            continue;
        }
        if let Object::Instance(i) = event.object {
            if !i.spec.node_name.is_empty() && bound.insert(i.metadata.name.clone()) {
                last = Instant::now();
                first.get_or_insert(last);
            }
        }
    }
    let all = last - scheduler_start;
    let binding = last - first.unwrap();
    let per_node = {
        let (items, _) = client.list(Kind::Instance, None, "").await.unwrap();
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for o in items {
            if let Object::Instance(i) = o {
                *counts.entry(i.spec.node_name).or_default() += 1;
            }
        }
        let max = counts.values().copied().max().unwrap_or(0);
        let min = counts.values().copied().min().unwrap_or(0);
        (counts.len(), min, max)
    };
    println!(
        "hollow nodes: {nodes} Ready after {:.1} s",
        registered.as_secs_f64()
    );
    println!(
        "created {instances} unbound instances in {:.2} s ({:.0}/s, 64 clients)",
        created.as_secs_f64(),
        instances as f64 / created.as_secs_f64()
    );
    println!(
        "scheduler: all {instances} bound {:.2} s after its process started (includes connect and list); bindings from first to last: {:.2} s = {:.0} bindings/s",
        all.as_secs_f64(),
        binding.as_secs_f64(),
        instances as f64 / binding.as_secs_f64()
    );
    println!(
        "placement: {} nodes used, {}..{} instances per node",
        per_node.0, per_node.1, per_node.2
    );
}

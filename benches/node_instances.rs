//! Node benchmarks: apply of one pinned instance to Running (p50 / p99 over
//! 100 runs on a warm node), and how many idle instances one node holds with
//! the resident memory each costs. Real `flotilla server` and `flotilla node`
//! processes on loopback.
//!
//! Run: `cargo bench --bench node_instances` (FLOTILLA_BENCH_IDLE sets the
//! idle instance count, default 10000; FLOTILLA_BENCH_RUNS the start runs,
//! default 100).

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_api::instance::InstancePhase;
use flotilla_api::manifest::parse_manifests;
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{EventType, Propagation, RequestV1, ResponseV1};
use flotilla_client::{Client, ClientConfig};

mod support;

use support::{flotilla, spawn_listening, Proc};

/// A guest that sleeps an hour at a time in poll_oneoff, forever.
const SLEEPER: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (loop $l
      (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $l))))"#;

fn spawn(args: &[String]) -> (Proc, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_listening(flotilla(&args))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn instance(name: &str, digest: &str) -> Object {
    let text = format!(
        "apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: {name}\nspec:\n  module: {digest}\n  nodeName: bench\n  world: command\n  resources:\n    limits:\n      memory: 128Ki\n"
    );
    parse_manifests(&text).unwrap().remove(0)
}

async fn wait_running(client: &Client, name: &str, from: u64) -> Duration {
    let started = Instant::now();
    let mut stream = client
        .watch(Some(Kind::Instance), Some("default"), "", from)
        .await
        .unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        if let Object::Instance(i) = &e.object {
            if i.metadata.name == name
                && e.event_type != EventType::Deleted
                && i.status.phase == InstancePhase::Running
            {
                return started.elapsed();
            }
        }
    }
}

fn main() {
    let idle: usize = std::env::var("FLOTILLA_BENCH_IDLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let runs: usize = std::env::var("FLOTILLA_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let (_server, addr) = spawn(&[
        "server".into(),
        "--data-dir".into(),
        d("server"),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = ClientConfig::load(Path::new(&d("server/admin.config"))).unwrap();
    let client = rt.block_on(async {
        loop {
            if let Ok(c) = Client::connect(&config).await {
                if c.get(Kind::Namespace, "", "default").await.is_ok() {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let token = match rt
        .block_on(client.call(RequestV1::CreateToken { ttl_seconds: 600 }))
        .unwrap()
    {
        ResponseV1::Token(t) => t,
        other => panic!("{other:?}"),
    };
    let slots = (idle + 100).to_string();
    let (node, _) = spawn(&[
        "--server".into(),
        addr.clone(),
        "node".into(),
        "--name".into(),
        "bench".into(),
        "--data-dir".into(),
        d("node"),
        "--token".into(),
        token,
        "--capacity-instances".into(),
        slots,
    ]);
    let wasm = wat::parse_str(SLEEPER).unwrap();
    let digest = match rt
        .block_on(client.upload_module(&wasm, "sleeper.wat"))
        .unwrap()
    {
        Object::Module(m) => m.spec.digest,
        other => panic!("{other:?}"),
    };

    // Start latency on a warm node: the module is cached and compiled after the first run.
    let mut latencies = Vec::new();
    rt.block_on(async {
        for i in 0..runs + 1 {
            let name = format!("start-{i}");
            let t = Instant::now();
            let created = client.create(instance(&name, &digest)).await.unwrap();
            let from: u64 = created.meta().resource_version.parse().unwrap();
            let _ = wait_running(&client, &name, from - 1).await;
            let took = t.elapsed();
            if i > 0 {
                latencies.push(took);
            }
            client
                .delete(Kind::Instance, "default", &name, Propagation::Background)
                .await
                .unwrap();
        }
    });
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "apply -> Running over {runs} runs: p50 {:.1} ms, p99 {:.1} ms",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3
    );

    std::thread::sleep(Duration::from_secs(2));
    let base = rss_kib(node.0.id());
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for chunk in 0..8 {
            let client = client.clone();
            let digest = digest.clone();
            tasks.push(tokio::spawn(async move {
                for i in (chunk..idle).step_by(8) {
                    client.create(instance(&format!("idle-{i}"), &digest)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        loop {
            let (items, _) = client.list(Kind::Instance, Some("default"), "").await.unwrap();
            let running = items
                .iter()
                .filter(|o| matches!(o, Object::Instance(i) if i.status.phase == InstancePhase::Running))
                .count();
            let failed = items
                .iter()
                .filter(|o| matches!(o, Object::Instance(i) if i.status.phase == InstancePhase::Failed))
                .count();
            eprintln!("  {running} running, {failed} failed after {:.0} s", started.elapsed().as_secs_f64());
            if running + failed >= idle || started.elapsed() > Duration::from_secs(240) {
                println!("idle instances: {running} running, {failed} failed, of {idle}, after {:.1} s", started.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(node.0.id());
    println!(
        "node RSS: {} MiB before, {} MiB with {idle} idle instances: {:.1} KiB per instance",
        base / 1024,
        rss / 1024,
        (rss.saturating_sub(base)) as f64 / idle as f64
    );
}

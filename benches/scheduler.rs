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
//! FLOTILLA_BENCH_INSTANCES override 1000 and 10000;
//! FLOTILLA_BENCH_COMPARE_BIN=PATH runs that binary and this build in turn).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::instance::Instance;
use flotilla_api::meta::ObjectMeta;
use flotilla_api::object::{Kind, Object};
use flotilla_api::quantity::Quantity;
use flotilla_client::wire::{EventType, RequestV1, ResponseV1};
use flotilla_client::{Client, ClientConfig};

mod support;

use support::{bare_server, spawn_listening, turns, Proc};

/// `(module (func (export "_start")))`: the hollow runtime never runs it.
const MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02,
    0x01, 0x00, 0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, 0x0a, 0x04,
    0x01, 0x02, 0x00, 0x0b,
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_server(bin: &str, dir: &Path) -> (Proc, String) {
    // 1,000 nodes need more than the default /16's 256 node ranges.
    let mut cmd = bare_server(bin, &["--cluster-cidr", "10.0.0.0/8"]);
    cmd.arg("--data-dir").arg(dir);
    spawn_listening(cmd)
}

/// A `flotilla scheduler` of `bin`, with a short lease so that the next
/// turn's scheduler takes over soon after this one stops.
fn start_scheduler(bin: &str, config: &Path, addr: &str) -> Proc {
    let mut args = client_args(config, addr);
    args.extend(["scheduler".into(), "--leader-lease".into(), "2s".into()]);
    Proc(
        Command::new(bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn scheduler"),
    )
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

fn instance(digest: &str, name: &str) -> Object {
    let mut i = Instance {
        metadata: ObjectMeta::new("default", name),
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
    // Each turn a whole run: its own server, nodes and scheduler.
    let turns = turns();
    let mut results: Vec<(&str, Results)> = Vec::new();
    for (label, bin) in &turns {
        println!("== {label}: {bin}");
        results.push((label, whole_run(bin, nodes, instances).await));
    }
    if turns.len() > 1 {
        println!("\nmeans of two turns each (this build / baseline):");
        let mean = |which: &str, f: &Measure| {
            let of: Vec<f64> = results
                .iter()
                .filter(|(l, _)| *l == which)
                .map(|(_, r)| f(r))
                .collect();
            of.iter().sum::<f64>() / of.len() as f64
        };
        let rows: [(&str, &Measure); 4] = [
            ("nodes Ready after (s)", &|r| r.registered),
            ("run 1 bindings/s", &|r| r.run1_rate),
            ("run 1 all bound after scheduler start (s)", &|r| {
                r.run1_all_bound
            }),
            ("run 2 all bound after first create (s)", &|r| {
                r.run2_all_bound
            }),
        ];
        for (name, f) in rows {
            let (this, base) = (mean("this build", f), mean("baseline", f));
            println!("{name}: {this:.2} vs {base:.2} = {:.2}", this / base);
        }
    }
}

/// One figure of a run's results.
type Measure = dyn Fn(&Results) -> f64;

/// What one whole run measured.
struct Results {
    registered: f64,
    run1_rate: f64,
    run1_all_bound: f64,
    run2_all_bound: f64,
}

/// One server, `nodes` hollow nodes and a scheduler, all of `bin`: run 1
/// with the agents paused, run 2 with them running.
async fn whole_run(bin: &str, nodes: usize, instances: usize) -> Results {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(bin, &dir.path().join("server"));
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
    let hollow_log = dir.path().join("hollow.log");
    let mut hollow = Proc(
        Command::new(bin)
            .args(&args)
            // For a baseline built on glibc's allocator, which otherwise keeps
            // every freed QUIC receive buffer resident (~11 MB per hollow node
            // instead of ~0.5 MB); builds on mimalloc ignore it.
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&hollow_log).unwrap())
            .spawn()
            .expect("spawn hollow nodes"),
    );
    loop {
        let ready = ready_nodes(&client).await;
        if ready >= nodes {
            break;
        }
        if let Ok(Some(status)) = hollow.0.try_wait() {
            let log = std::fs::read_to_string(&hollow_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "hollow-nodes exited ({status}) with {ready} nodes Ready:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {ready} of {nodes} hollow nodes Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let registered = started.elapsed().as_secs_f64();

    let Object::Module(module) = client.upload_module(MODULE, "bench.wasm").await.unwrap() else {
        panic!("the upload did not answer with a module");
    };
    let digest = module.spec.digest.clone();
    let hollow_pid = hollow.0.id().to_string();
    let signal = |sig: &str| {
        let _ = Command::new("kill").args([sig, &hollow_pid]).status();
    };
    println!("hollow nodes: {nodes} Ready after {registered:.1} s");

    // Run 1: the agents paused (SIGSTOP), as scheduler_perf measures a
    // scheduler with no kubelets: the apiserver and the scheduler alone
    // (their connections stay open until QUIC's idle timeout ends them).
    signal("-STOP");
    let (run1_rate, run1_all_bound) = run_paused(
        &config,
        &config_path,
        &addr,
        &digest,
        bin,
        "paused",
        instances,
    )
    .await;

    // Run 2: the agents running (they start every instance bound to them and
    // report it), the scheduler already up; instances created while it runs.
    signal("-CONT");
    let _scheduler = start_scheduler(bin, &config_path, &addr);
    // Let the agents reconnect, start the first 10,000 and report them.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let (_, revision) = client.list(Kind::Instance, None, "").await.unwrap();
    let mut watch = client
        .watch(Some(Kind::Instance), None, "", revision)
        .await
        .unwrap();
    let started = Instant::now();
    let creating = {
        let config = config.clone();
        let digest = digest.clone();
        tokio::spawn(async move { create_all(&config, &digest, "live", instances).await })
    };
    let (first, last) = wait_bound(&mut watch, "live", instances).await;
    let (created, _) = creating.await.unwrap();
    let run2_all_bound = (last - started).as_secs_f64();
    println!(
        "run 2 (agents running): {instances} created in {:.2} s and all bound {run2_all_bound:.2} s after the first create; first to last binding {:.2} s = {:.0} bindings/s",
        created.as_secs_f64(),
        (last - first).as_secs_f64(),
        instances as f64 / (last - first).as_secs_f64()
    );

    let (items, _) = client.list(Kind::Instance, None, "").await.unwrap();
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for o in items {
        if let Object::Instance(i) = o {
            *counts.entry(i.spec.node_name).or_default() += 1;
        }
    }
    println!(
        "placement of both runs: {} nodes used, {}..{} instances per node",
        counts.len(),
        counts.values().copied().min().unwrap_or(0),
        counts.values().copied().max().unwrap_or(0)
    );
    Results {
        registered,
        run1_rate,
        run1_all_bound,
        run2_all_bound,
    }
}

/// Creates `count` unbound instances tagged `tag` with the agents paused,
/// starts the scheduler of `bin`, and times the bindings through a watch;
/// stops that scheduler and returns its bindings per second.
async fn run_paused(
    config: &ClientConfig,
    config_path: &Path,
    addr: &str,
    digest: &str,
    bin: &str,
    tag: &str,
    instances: usize,
) -> (f64, f64) {
    let (created, _) = create_all(config, digest, tag, instances).await;
    println!(
        "run 1 (agents paused): created {instances} unbound instances in {:.2} s ({:.0}/s, 64 clients)",
        created.as_secs_f64(),
        instances as f64 / created.as_secs_f64()
    );
    let client = connect(config).await;
    let (_, revision) = client.list(Kind::Instance, None, "").await.unwrap();
    let mut watch = client
        .watch(Some(Kind::Instance), None, "", revision)
        .await
        .unwrap();
    let scheduler_start = Instant::now();
    let scheduler = start_scheduler(bin, config_path, addr);
    let (first, last) = wait_bound(&mut watch, tag, instances).await;
    drop(scheduler);
    let rate = instances as f64 / (last - first).as_secs_f64();
    let all_bound = (last - scheduler_start).as_secs_f64();
    println!(
        "run 1: all {instances} bound {all_bound:.2} s after the scheduler process started (connect, lease and list included); first to last binding {:.2} s = {rate:.0} bindings/s",
        (last - first).as_secs_f64(),
    );
    (rate, all_bound)
}

/// Creates `count` unbound instances named `bench-<tag>-N` from 64 clients.
async fn create_all(
    config: &ClientConfig,
    digest: &str,
    tag: &str,
    count: usize,
) -> (Duration, ()) {
    let started = Instant::now();
    let mut writers = Vec::new();
    let per_writer = count.div_ceil(64);
    for w in 0..64 {
        let config = config.clone();
        let digest = digest.to_string();
        let tag = tag.to_string();
        writers.push(tokio::spawn(async move {
            let mut client = connect(&config).await;
            for n in (w * per_writer)..((w + 1) * per_writer).min(count) {
                let name = format!("bench-{tag}-{n}");
                // A busy server may drop a connection: reconnect and go on.
                for attempt in 0.. {
                    match client.create(instance(&digest, &name)).await {
                        Ok(_) => break,
                        Err(e)
                            if e.code()
                                == Some(flotilla_client::wire::ErrorCode::AlreadyExists) =>
                        {
                            break
                        }
                        Err(e) if attempt < 10 && e.code().is_none() => {
                            client = connect(&config).await;
                        }
                        Err(e) => panic!("create {name}: {e}"),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    (started.elapsed(), ())
}

async fn connect(config: &ClientConfig) -> Client {
    for _ in 0..30 {
        if let Ok(c) = Client::connect(config).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the apiserver did not accept a connection in 30 attempts");
}

/// Waits until every `bench-<tag>-*` instance is bound; the first and last
/// binding times.
async fn wait_bound(
    watch: &mut flotilla_client::WatchStream,
    tag: &str,
    count: usize,
) -> (Instant, Instant) {
    let prefix = format!("bench-{tag}-");
    let mut bound: HashSet<String> = HashSet::new();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while bound.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(120), watch.next())
            .await
            .expect("bindings stalled for 2 minutes")
            .unwrap()
            .expect("watch ended");
        if event.event_type == EventType::Deleted {
            continue;
        }
        if let Object::Instance(i) = event.object {
            if i.metadata.name.starts_with(&prefix)
                && !i.spec.node_name.is_empty()
                && bound.insert(i.metadata.name.clone())
            {
                last = Instant::now();
                first.get_or_insert(last);
            }
        }
    }
    (first.unwrap_or(last), last)
}

//! Creates per second and latency through the API: 1 and 64 concurrent clients,
//! against 1 and 3 peers, fsync on. Each configuration is a fresh cluster of real
//! `flotilla server` processes on loopback.
//!
//! Run: `cargo bench --bench api_writes` (FLOTILLA_BENCH_SECS sets the seconds
//! per measurement, default 10; FLOTILLA_BENCH_COMPARE_BIN=PATH runs that
//! binary and this build in turn, A B B A, each on a fresh cluster;
//! FLOTILLA_BENCH_THIS_ARGS adds server flags to this build's peers only).

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_api::manifest::parse_manifests;
use flotilla_client::{Client, ClientConfig};

mod support;

use support::{bare_server, spawn_listening, turns, Proc};

/// A server process and the address it listens on.
struct Peer {
    _proc: Proc,
    addr: String,
}

fn start(bin: &str, dir: &Path, extra: &[&str], threads: Option<usize>) -> Peer {
    // No controllers: they would answer every Service created with an
    // Endpoints object of their own, a second write.
    let mut cmd = bare_server(
        bin,
        // Every Service claims a cluster IP: 10 s at 64 clients needs more
        // than the default /16's 65,536.
        &["--service-cidr", "10.0.0.0/8"],
    );
    cmd.arg("--data-dir")
        .arg(dir)
        .args(
            std::env::var("FLOTILLA_BENCH_SERVER_ARGS")
                .map(|a| a.split_whitespace().map(String::from).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .args(extra)
        // Flags only this build knows (`--audit-log off`), for comparing a
        // feature's cost against a baseline built before it.
        .args(
            std::env::var("FLOTILLA_BENCH_THIS_ARGS")
                .ok()
                .filter(|_| bin == support::BIN)
                .map(|a| a.split_whitespace().map(String::from).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .envs(threads.map(|t| ("TOKIO_WORKER_THREADS".to_string(), t.to_string())));
    let (proc, addr) = spawn_listening(cmd);
    Peer { _proc: proc, addr }
}

async fn cluster(
    bin: &str,
    dir: &Path,
    n: usize,
    threads: Option<usize>,
) -> (Vec<Peer>, ClientConfig) {
    let mut peers = vec![start(bin, &dir.join("p1"), &[], threads)];
    let config = ClientConfig::load(&dir.join("p1/admin.config")).unwrap();
    let client = loop {
        if let Ok(c) = Client::connect(&config).await {
            if c.get(flotilla_api::object::Kind::Namespace, "", "default")
                .await
                .is_ok()
            {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for i in 1..n {
        // A peer token; a build from before typed tokens knows only the
        // untyped request, whose tokens admit peers too.
        let typed = client
            .call(flotilla_client::wire::RequestV1::CreateJoinToken {
                kind: flotilla_client::wire::TokenKind::Peer,
                ttl_seconds: 600,
                uses: 0,
            })
            .await;
        let answer = match typed {
            Ok(answer) => answer,
            Err(_) => client
                .call(flotilla_client::wire::RequestV1::CreateToken { ttl_seconds: 600 })
                .await
                .unwrap(),
        };
        let token = match answer {
            flotilla_client::wire::ResponseV1::Token(t) => t,
            other => panic!("{other:?}"),
        };
        let addr = peers[0].addr.clone();
        peers.push(start(
            bin,
            &dir.join(format!("p{}", i + 1)),
            &["--join", &addr, "--token", &token],
            threads,
        ));
    }
    loop {
        if let Ok(flotilla_client::wire::ResponseV1::Members(m)) =
            client.call(flotilla_client::wire::RequestV1::Members).await
        {
            if m.iter().filter(|m| m.role != "learner").count() == n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (peers, config)
}

struct Measured {
    build: &'static str,
    peers: usize,
    threads: Option<usize>,
    clients: usize,
    creates: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(
    config: &ClientConfig,
    clients: usize,
    secs: u64,
    tag: &str,
) -> (usize, f64, Vec<Duration>) {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Client::connect(config).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in conns.into_iter().enumerate() {
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            // The manifest is parsed once: what is timed is the API, not YAML.
            let template = parse_manifests(
                "apiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: template\nspec:\n  selector:\n    app: b\n  ports:\n  - port: 80\n",
            )
            .unwrap()
            .remove(0);
            let mut lat = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let mut obj = template.clone();
                obj.meta_mut().name = format!("b-{tag}-{c}-{i}");
                let t = Instant::now();
                client.create(obj).await.expect("create");
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (all.len(), elapsed, all)
}

fn main() {
    let secs: u64 = std::env::var("FLOTILLA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    // Three peers on this machine share two cores; a real cluster gives each peer
    // its own. The last configuration sizes each peer's runtime for its share
    // (one worker thread), as one would on a small shared host.
    // FLOTILLA_BENCH_ONLY=3x1 runs one configuration (peers x worker threads,
    // 0 for the default), and FLOTILLA_BENCH_CLIENTS=1 one client count.
    let only = std::env::var("FLOTILLA_BENCH_ONLY").ok();
    let client_counts: Vec<usize> = std::env::var("FLOTILLA_BENCH_CLIENTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .map_or(vec![1, 64], |c| vec![c]);
    // Every configuration, each turn on a fresh cluster.
    let turns = turns();
    for (peers, threads) in [(1usize, None), (3, None), (3, Some(1usize))] {
        let name = format!("{peers}x{}", threads.unwrap_or(0));
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        for (build, bin) in &turns {
            let dir = tempfile::tempdir().unwrap();
            rt.block_on(async {
                let (_peers, config) = cluster(bin, dir.path(), peers, threads).await;
                // Warm up connections and the log.
                let _ = measure(&config, 4, 1, "warm").await;
                for &clients in &client_counts {
                    let (n, elapsed, lat) = measure(
                        &config,
                        clients,
                        secs,
                        &format!("p{peers}t{}c{clients}", threads.unwrap_or(0)),
                    )
                    .await;
                    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
                    results.push(Measured {
                        build,
                        peers,
                        threads,
                        clients,
                        creates: n,
                        secs: elapsed,
                        p50: p(0.5),
                        p99: p(0.99),
                    });
                }
            });
        }
    }
    println!(
        "| build | peers | server worker threads | clients | creates/s | p50 | p99 | creates |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            r.build,
            r.peers,
            r.threads
                .map_or("default (2)".to_string(), |t| t.to_string()),
            r.clients,
            r.creates as f64 / r.secs,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            r.creates
        );
    }
}

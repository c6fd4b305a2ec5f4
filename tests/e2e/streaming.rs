//! The data path streams: through one node's ingress and the tunnel to a
//! guest on another node, a large response arrives whole while the ingress
//! node holds only a little of it, a slow response arrives as it is written,
//! and a large request body goes the other way; one request after another
//! reuses one open tunnel stream, and a restarted peer is reached again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{stderr, wait_for, Cluster};
use crate::network::{free_tcp_addr, get};
use crate::node::NodeProc;

fn stream_manifest() -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: stream
spec:
  replicas: 1
  selector:
    matchLabels: {{app: stream}}
  template:
    metadata:
      labels: {{app: stream}}
    spec:
      module: {}
      world: http
      nodeSelector: {{role: back}}
      resources:
        limits: {{cpu: '1', memory: 16Mi}}
---
apiVersion: flotilla.dev/v1
kind: Service
metadata:
  name: stream
spec:
  selector: {{app: stream}}
  ports:
  - port: 80
  ingress: {{host: stream.local}}
",
        crate::node::examples().join("stream.wasm").display()
    )
}

/// A process's resident set and its peak so far, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Sends a request head (and `body`, chunk by chunk) and returns the
/// connection with the response's status line and headers read.
fn request(addr: &str, head: &str, body: Option<(u64, usize)>) -> (BufReader<TcpStream>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    if let Some((total, chunk)) = body {
        let block = vec![7u8; chunk];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk as u64) as usize;
            s.write_all(&block[..n]).unwrap();
            sent += n as u64;
        }
    }
    let mut reader = BufReader::new(s);
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        headers.push_str(&line);
    }
    (reader, headers)
}

fn fnv(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn bodies_stream_through_another_nodes_ingress_and_the_tunnel() {
    let cluster = Cluster::start(1, &[]);
    let token = cluster.token("1h");
    let ingress = free_tcp_addr();
    let front_metrics = free_tcp_addr();
    let front = NodeProc::start(
        Some(&cluster.peers[0].addr),
        Some(&token),
        "front",
        &cluster.dir.path().join("front"),
        &[
            "--labels",
            "role=front",
            "--ingress-addr",
            &ingress,
            "--metrics-addr",
            &front_metrics,
        ],
    );
    let mut back = NodeProc::start(
        Some(&cluster.peers[0].addr),
        Some(&token),
        "back",
        &cluster.dir.path().join("back"),
        &["--labels", "role=back"],
    );
    crate::workloads::wait_nodes_ready(&cluster, 2);
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&stream_manifest()));
    assert!(out.status.success(), "{}", stderr(&out));
    crate::workloads::wait_ready_instances(&cluster, "stream", 1, Duration::from_secs(60));
    wait_for(
        "stream through the front ingress",
        Duration::from_secs(20),
        || {
            let (status, body, _) = get(&ingress, "stream.local", "/bytes?n=10");
            (status == 200 && body.len() == 10).then_some(())
        },
    );
    let pid = front.pid().unwrap();

    // 100 MiB, intact, while the front node's resident set hardly moves.
    const SIZE: u64 = 100 << 20;
    // Warmed up first: what a node allocates once for its first large body
    // (buffers, allocator arenas) is not what this measures.
    let (mut warm, _) = request(
        &ingress,
        &format!(
            "GET /bytes?n={} HTTP/1.1\r\nHost: stream.local\r\nConnection: close\r\n\r\n",
            8 << 20
        ),
        None,
    );
    assert_eq!(
        std::io::copy(&mut warm, &mut std::io::sink()).unwrap(),
        8 << 20
    );
    let (before, _) = rss(pid);
    let (mut reader, headers) = request(
        &ingress,
        &format!("GET /bytes?n={SIZE} HTTP/1.1\r\nHost: stream.local\r\nConnection: close\r\n\r\n"),
        None,
    );
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            let want = ((got + k as u64) % 251) as u8;
            assert_eq!(*b, want, "byte {} of the response", got + k as u64);
        }
        got += n as u64;
    }
    assert_eq!(got, SIZE, "the whole body arrived");
    let (_, peak) = rss(pid);
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 20 << 20,
        "the front node's peak resident set grew by {} MiB while 100 MiB went through it",
        grew >> 20
    );

    // A line every 100 ms arrives as it is written.
    let sent = Instant::now();
    let (mut reader, headers) = request(
        &ingress,
        "GET /ticks?n=6&every=100 HTTP/1.1\r\nHost: stream.local\r\nConnection: close\r\n\r\n",
        None,
    );
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{headers}"
    );
    let mut arrivals = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let len = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0u8; len + 2];
        reader.read_exact(&mut chunk).unwrap();
        if len == 0 {
            break;
        }
        arrivals.push((
            sent.elapsed(),
            String::from_utf8_lossy(&chunk[..len]).to_string(),
        ));
    }
    let lines: String = arrivals.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(lines, "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\ntick 6\n");
    assert!(
        arrivals[0].0 < Duration::from_millis(200),
        "the first chunk took {:?}",
        arrivals[0].0
    );
    let last = arrivals.last().unwrap().0;
    assert!(
        last >= Duration::from_millis(450),
        "all chunks arrived within {last:?}: they were held back and sent together"
    );
    for pair in arrivals.windows(2) {
        assert!(
            pair[1].0 > pair[0].0 + Duration::from_millis(40),
            "chunks came together: {arrivals:?}"
        );
    }

    // 50 MiB up the same path, counted by the guest as it reads.
    const UP: u64 = 50 << 20;
    let (mut reader, headers) = request(
        &ingress,
        &format!(
            "POST /count HTTP/1.1\r\nHost: stream.local\r\nContent-Length: {UP}\r\nConnection: close\r\n\r\n"
        ),
        Some((UP, 64 * 1024)),
    );
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    let mut answer = String::new();
    reader.read_to_string(&mut answer).unwrap();
    let want = format!(
        "bytes={UP} fnv={:016x}\n",
        fnv(std::iter::repeat_n(7u8, UP as usize))
    );
    assert_eq!(answer, want);

    // One request after another reuses an open tunnel stream: at most one
    // more is opened (for a probe that runs beside a request).
    let counts = || {
        let metrics = crate::metrics::scrape(&front_metrics);
        let count = |series: &str| {
            crate::metrics::value(&metrics, series)
                .unwrap_or_else(|| panic!("{series} in the front node's metrics:\n{metrics}"))
        };
        (
            count("flotilla_tunnel_requests_total"),
            count("flotilla_tunnel_streams_opened_total"),
        )
    };
    let (requests_before, opened_before) = counts();
    for n in 0..40 {
        let (status, body, _) = get(&ingress, "stream.local", &format!("/bytes?n={n}"));
        assert_eq!((status, body.len()), (200, n), "request {n}: {body}");
    }
    let (requests, opened) = counts();
    assert!(
        requests - requests_before >= 40.0,
        "40 requests went through the tunnel, the metric counted {}",
        requests - requests_before
    );
    assert!(
        opened - opened_before <= 1.0,
        "40 requests one after another opened {} tunnel streams",
        opened - opened_before
    );

    // The streams kept open to the back node die with it; once it is back,
    // requests reach it on new ones.
    back.restart();
    wait_for(
        "stream through the front ingress after the back node restarted",
        Duration::from_secs(60),
        || {
            let (status, body, _) = get(&ingress, "stream.local", "/bytes?n=10");
            (status == 200 && body.len() == 10).then_some(())
        },
    );
    for n in 0..5 {
        let (status, body, _) = get(&ingress, "stream.local", &format!("/bytes?n={n}"));
        assert_eq!(
            (status, body.len()),
            (200, n),
            "request {n} after the restart: {body}"
        );
    }
}

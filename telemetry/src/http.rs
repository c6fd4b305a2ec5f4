//! The metrics endpoint: HTTP/1.1, `GET` (or `HEAD`) only.
//!
//! - `/metrics`: the registry, Prometheus text format 0.0.4;
//! - `/healthz`: 200 `ok` while the process serves at all (liveness);
//! - `/readyz`: 200 `ok` when every readiness check passes, else 503 with
//!   one line per failing check;
//! - anything else: 404 (405 for other methods).
//!
//! It is meant for a scraper and a probe, not for the world: one request per
//! connection, headers capped at [`MAX_HEADER_BYTES`] and
//! [`HEADER_TIMEOUT`], at most [`MAX_CONNECTIONS`] at once, request bodies
//! never read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::registry::CONTENT_TYPE;
use crate::Telemetry;

/// Largest request head read (hyper's floor is 8 KiB): stops a client from
/// making the endpoint buffer without bound. Larger heads get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A client that has not sent its whole request head by then is dropped, so
/// slow or idle connections cannot pin the endpoint's connection slots.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; further ones wait in the kernel's backlog.
/// Bounds the memory and tasks one noisy client can take.
pub const MAX_CONNECTIONS: usize = 64;

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (TCP) and serves `telemetry` there until the returned
/// handle is dropped.
pub async fn serve(addr: &str, telemetry: Telemetry) -> Result<MetricsServer, Error> {
    let bind_err = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let telemetry = Arc::new(telemetry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::debug!(error = %e, "metrics endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let telemetry = telemetry.clone();
            tokio::spawn(async move {
                let health = telemetry.health.clone();
                let unready = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let answered_unready = unready.clone();
                let service = service_fn(move |req| {
                    let response = respond(&telemetry, &req);
                    if req.uri().path() == "/readyz" && response.status() != http::StatusCode::OK {
                        unready.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if answered_unready.load(std::sync::atomic::Ordering::Relaxed) {
                    health.sent_unready_answer();
                }
                drop(permit);
            });
        }
    });
    Ok(MetricsServer { addr: local, task })
}

fn respond<B>(telemetry: &Telemetry, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let method = req.method();
    if method != http::Method::GET && method != http::Method::HEAD {
        let mut r = plain(405, format!("method {method} not allowed: use GET\n"));
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = http::Response::new(Full::new(Bytes::from(telemetry.registry.render())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        "/healthz" => plain(200, "ok\n".into()),
        "/readyz" => match telemetry.health.check() {
            Ok(()) => plain(200, "ok\n".into()),
            Err(reasons) => {
                let mut body = String::from("not ready\n");
                for r in reasons {
                    body.push_str(&r);
                    body.push('\n');
                }
                plain(503, body)
            }
        },
        other => plain(
            404,
            format!("{other}: not found; this endpoint serves /metrics, /healthz and /readyz\n"),
        ),
    }
}

fn plain(status: u16, body: String) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counter, Readiness};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends raw bytes, returns everything the server answers.
    async fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let t = Telemetry::new();
        let c = Counter::<u64>::default();
        t.registry
            .register("flotilla_test_things", "Things", c.clone());
        c.inc();
        let ready = Readiness::not_ready("no leader known");
        t.health.add("raft", &ready);
        let server = serve("127.0.0.1:0", t).await.unwrap();
        let addr = server.addr;

        let m = raw(addr, &get("/metrics")).await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("content-type: text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("\nflotilla_test_things_total 1\n"), "{m}");

        let h = raw(addr, &get("/healthz")).await;
        assert!(
            h.starts_with("HTTP/1.1 200") && h.ends_with("\r\n\r\nok\n"),
            "{h}"
        );

        let r = raw(addr, &get("/readyz")).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("raft: no leader known"), "{r}");
        ready.set_ready();
        let r = raw(addr, &get("/readyz?verbose")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        let n = raw(addr, &get("/nope")).await;
        assert!(n.starts_with("HTTP/1.1 404"), "{n}");
        let p = raw(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert!(
            p.starts_with("HTTP/1.1 405") && p.contains("allow: GET, HEAD"),
            "{p}"
        );
    }

    #[tokio::test]
    async fn bad_input_gets_an_error_not_a_crash() {
        let server = serve("127.0.0.1:0", Telemetry::new()).await.unwrap();
        let addr = server.addr;
        let garbage = raw(addr, b"\x00\x01 not http at all\r\n\r\n").await;
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES * 2)
        );
        let r = raw(addr, big.as_bytes()).await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
        // Still serving.
        let h = raw(addr, &get("/healthz")).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let first = serve("127.0.0.1:0", Telemetry::new()).await.unwrap();
        let taken = first.addr.to_string();
        let err = serve(&taken, Telemetry::new()).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot serve metrics on {taken}: ")),
            "{err}"
        );
    }
}

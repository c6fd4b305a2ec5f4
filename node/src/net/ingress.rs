//! Ingress: an HTTP/1.1 listener on every node. A request's Host header (and
//! path) picks the Service whose `spec.ingress` matches; the request goes to
//! one of its ready endpoints, on this node or through the tunnel. An unknown
//! host gets 404, a service with no ready endpoint 503, both at once. Bodies
//! stream both ways; the request's deadline starts here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::{deadline, plain, Network};
use crate::body::{self, Body};
use crate::runtime::OutboundError;

/// Largest request body the ingress passes on (it streams, so this bounds
/// what one client can push at a guest, not what the node holds).
const MAX_BODY: usize = 1 << 30;

/// Most client connections the ingress holds at once; more wait in the
/// kernel's backlog until one ends.
const MAX_CONNECTIONS: usize = 10_000;

/// A client must send a request's head within this of connecting or of its
/// last response (hyper's header timeout, which needs a timer to be on).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body that sends nothing for this long is ended.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The wait after a failed accept (out of file descriptors, say), doubling
/// to [`ACCEPT_BACKOFF_MAX`], cut short when a connection ends (which gives
/// a descriptor back): the listener waits for the condition to pass instead
/// of spinning on it.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds `addr`; returns the bound address and the accept task.
pub async fn start(
    net: Arc<Network>,
    addr: &str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let ended = Arc::new(tokio::sync::Notify::new());
        let mut backoff = ACCEPT_BACKOFF_FIRST;
        loop {
            let Ok(permit) = connections.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_FIRST;
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, wait = ?backoff, "the ingress cannot accept connections");
                    let _ = tokio::time::timeout(backoff, ended.notified()).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let net = net.clone();
            let ended = ended.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| {
                    let net = net.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&net, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                ended.notify_waiters();
            });
        }
    });
    Ok((local, task))
}

async fn handle(net: &Network, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
    let deadline = deadline();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("")
        .to_string();
    let host = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(h, _)| h)
        .to_string();
    let path = req.uri().path().to_string();
    let route = net.tables().ingress_route(&host, &path);
    match route {
        None => plain(404, format!("no service is exposed for host \"{host}\"\n")),
        Some(svc) => {
            let request = req.map(|b| {
                body::idle_timeout(body::limited(body::from(b), MAX_BODY), BODY_IDLE_TIMEOUT)
            });
            match net.to_service(&svc, request, deadline).await {
                Ok(r) => r,
                Err(OutboundError::Timeout(m)) => plain(504, format!("{m}\n")),
                Err(e) => plain(502, format!("{}\n", e.message())),
            }
        }
    }
}

//! The tunnel between nodes: one QUIC connection per peer node, mutual TLS
//! with `node:` certificates of the cluster CA on both sides, so nothing but
//! cluster nodes can use it. A bidirectional stream starts with one version
//! byte and then carries plain HTTP/1.1 (hyper on both ends), kept open for
//! one exchange after another as an HTTP/1.1 client keeps its connections:
//! the sending node pools idle streams per peer, so a request costs one
//! exchange on an open stream, and bodies stream through in both directions
//! with nothing buffered whole. The receiving node serves only its own
//! addresses (no transit).
//!
//! Each request names the instance address it is for and the milliseconds
//! left of its deadline in two headers ([`IP_HEADER`], [`DEADLINE_HEADER`]),
//! which the receiver takes off before the instance sees the request: one
//! deadline travels end to end instead of a timeout on each side. A failure
//! to reach the instance is answered with status 502 and the header
//! `flotilla-failure` naming its kind ([`OutboundError::kind`]); the body
//! says why.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use tokio::io::AsyncWrite;
use tokio::sync::Mutex;
use tokio::time::Instant as Deadline;

use flotilla_client::tls::{self, IssuedCert, ALPN_TUNNEL};
use flotilla_client::{dial, ClientConfig, SharedClientConfig};
use flotilla_telemetry::{Counter, Registry};

use super::coalesce::Coalescer;
use super::Network;
use crate::body::{self, Body};
use crate::runtime::OutboundError;

/// The byte a stream starts with: 2, HTTP/1.1 kept open with the address and
/// deadline in headers (1 was a 9-byte preamble and one exchange per stream).
const VERSION: u8 = 2;
/// How long a peer may take to send the version byte of a stream it opened.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the receiver keeps an open stream waiting for its next request
/// head (hyper's header-read timeout, which covers the idle wait).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the sender keeps an idle stream for reuse: well under
/// [`STREAM_IDLE_TIMEOUT`], so the receiver does not close a stream as a
/// request goes out on it.
const POOL_IDLE: Duration = Duration::from_secs(20);
/// Most idle streams kept per peer; more concurrent requests open more
/// streams, which end with their exchange.
const POOL_MAX_IDLE: usize = 64;
/// The request header naming the instance address a request is for.
pub const IP_HEADER: &str = "flotilla-tunnel-ip";
/// The request header with the milliseconds left of the request's deadline.
pub const DEADLINE_HEADER: &str = "flotilla-tunnel-deadline-ms";
/// The header of a failure answer.
const FAILURE_HEADER: &str = "flotilla-failure";
/// Most bytes of a failure's message read.
const MAX_FAILURE_MESSAGE: usize = 4096;

/// The address a probe names: no instance has it.
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
/// How long a probe waits for its answer on an open connection.
const PROBE_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// The header of a probe's answer that carries the answering node's clock.
const CLOCK_HEADER: &str = "x-flotilla-clock-micros";

/// What a probe through the tunnel found.
#[derive(Debug, Clone, Copy)]
pub struct TunnelProbe {
    /// Request out to answer in, on an open connection.
    pub round_trip: Duration,
    /// How far the peer's clock is ahead of this node's, in microseconds.
    pub peer_clock_offset_micros: i64,
}

/// Counts of the sending side; clones share them. The default is registered
/// nowhere (counts go unread).
#[derive(Clone, Default)]
pub struct TunnelMetrics {
    requests: Counter,
    streams_opened: Counter,
}

impl TunnelMetrics {
    /// Registers the tunnel's metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let m = Self::default();
        registry.register(
            "flotilla_tunnel_requests",
            "Requests this node sent to peer nodes through the tunnel (probes included)",
            m.requests.clone(),
        );
        registry.register(
            "flotilla_tunnel_streams_opened",
            "Tunnel streams this node opened to peer nodes; requests reuse open ones",
            m.streams_opened.clone(),
        );
        m
    }
}

/// A stream's two halves as one byte pipe for hyper.
type StreamIo = TokioIo<tokio::io::Join<quinn::RecvStream, Prefixed>>;

fn stream_io(send: quinn::SendStream, recv: quinn::RecvStream, prefix: Vec<u8>) -> StreamIo {
    TokioIo::new(tokio::io::join(recv, Prefixed { prefix, send }))
}

/// A stream's sending side that writes `prefix` with the first bytes
/// written to it, so the version byte and the first request head leave in
/// one packet.
struct Prefixed {
    /// What of the prefix is still to be written.
    prefix: Vec<u8>,
    send: quinn::SendStream,
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        while !this.prefix.is_empty() {
            let mut joined = Vec::with_capacity(this.prefix.len() + buf.len());
            joined.extend_from_slice(&this.prefix);
            joined.extend_from_slice(buf);
            let written = ready!(AsyncWrite::poll_write(
                Pin::new(&mut this.send),
                cx,
                &joined
            ))?;
            let of_prefix = written.min(this.prefix.len());
            this.prefix.drain(..of_prefix);
            if this.prefix.is_empty() {
                return Poll::Ready(Ok(written - of_prefix));
            }
        }
        AsyncWrite::poll_write(Pin::new(&mut this.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

type SendRequest = hyper::client::conn::http1::SendRequest<Body>;
type Connection = hyper::client::conn::http1::Connection<StreamIo, Body>;

/// One HTTP/1.1 connection on a tunnel stream. Whoever uses it drives it:
/// the request's task until the answer's head, then the reader of the
/// answer's body (see [`Driven`]); no task of its own, so a packet that
/// arrives wakes the task that waits for it, one wake-up fewer each way.
struct Exchange {
    sender: SendRequest,
    connection: Pin<Box<Connection>>,
    /// The connection and what waits on it wake each other in one task.
    coalescer: Arc<Coalescer>,
}

impl Exchange {
    /// Whether this idle connection can take a request now: its stream is
    /// open and the previous exchange is over. Polls without waiting.
    fn ready_now(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if self.connection.as_mut().poll(&mut cx).is_ready() {
            return false;
        }
        matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// An answer's head, and the connection it came on (gone if it ended).
type Answered = (http::Response<hyper::body::Incoming>, Kept);

/// A connection kept for the next exchange once the answer's body is read.
struct Kept {
    sender: SendRequest,
    connection: Option<Pin<Box<Connection>>>,
    coalescer: Arc<Coalescer>,
}

impl Exchange {
    /// Sends `req` and drives the connection until the answer's head is in.
    /// A failure gives back the request when it never left.
    async fn request(
        self,
        req: http::Request<Body>,
    ) -> Result<Answered, (hyper::Error, Option<http::Request<Body>>)> {
        let Exchange {
            mut sender,
            connection,
            coalescer,
        } = self;
        let mut connection = Some(connection);
        let answer = sender.try_send_request(req);
        tokio::pin!(answer);
        // The connection writes the request and reads the answer's head in
        // this task; it ending first is an error `answer` reports.
        let answer = std::future::poll_fn(|cx| {
            coalescer.poll(cx, |cx| {
                if let Some(c) = connection.as_mut() {
                    if c.as_mut().poll(cx).is_ready() {
                        connection = None;
                    }
                }
                answer.as_mut().poll(cx)
            })
        })
        .await;
        match answer {
            Ok(response) => Ok((
                response,
                Kept {
                    sender,
                    connection,
                    coalescer,
                },
            )),
            Err(mut e) => {
                let unsent = e.take_message();
                Err((e.into_error(), unsent))
            }
        }
    }
}

fn no_answer(addr: &str) -> OutboundError {
    OutboundError::Timeout(format!("tunnel to {addr}: no answer in time"))
}

/// An idle exchange in a peer's pool.
struct Idle {
    exchange: Exchange,
    since: Instant,
}

/// What the client keeps for one peer address.
#[derive(Default)]
struct Peer {
    /// The QUIC connection, dialled under this lock, so that dialling one
    /// peer (a dead one can take until the dial's timeout) holds up only
    /// requests to it.
    /// The connection, and the node whose certificate it was made with.
    link: Mutex<Option<(quinn::Endpoint, quinn::Connection, String)>>,
    /// Idle exchanges, the most recently used last.
    idle: std::sync::Mutex<Vec<Idle>>,
}

impl Peer {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle exchange that can take a request.
    fn take_idle(&self) -> Option<Exchange> {
        loop {
            let Idle {
                mut exchange,
                since,
            } = self.idle().pop()?;
            if since.elapsed() < POOL_IDLE && exchange.ready_now() {
                return Some(exchange);
            }
        }
    }

    fn put_idle(&self, exchange: Exchange) {
        let mut idle = self.idle();
        idle.retain(|i| i.since.elapsed() < POOL_IDLE);
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                exchange,
                since: Instant::now(),
            });
        }
    }
}

/// A response body that drives its HTTP/1.1 connection as it is read, and
/// gives the connection back to its peer's pool once the body has been read
/// to its end.
struct Driven {
    exchange: Option<Kept>,
    body: hyper::body::Incoming,
    ended: bool,
    peer: Arc<Peer>,
}

impl http_body::Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(coalescer) = this.exchange.as_ref().map(|k| k.coalescer.clone()) else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        let frame = ready!(coalescer.poll(cx, |cx| {
            if let Some(kept) = this.exchange.as_mut() {
                if let Some(connection) = kept.connection.as_mut() {
                    if connection.as_mut().poll(cx).is_ready() {
                        // Done, or failed: the body says which; the stream
                        // is not reused either way.
                        kept.connection = None;
                    }
                }
            }
            Pin::new(&mut this.body).poll_frame(cx)
        }));
        if frame.is_none() {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // A body read only in part leaves the stream mid-message: it is
        // dropped with it (the peer sees the stream reset).
        if !(self.ended || http_body::Body::is_end_stream(&self.body)) {
            return;
        }
        if let Some(Kept {
            sender,
            connection: Some(connection),
            coalescer,
        }) = self.exchange.take()
        {
            self.peer.put_idle(Exchange {
                sender,
                connection,
                coalescer,
            });
        }
    }
}

/// Whether a request may be sent again after a reused stream failed under
/// it: no body, and a method the peer may see twice.
fn replayable(req: &http::Request<Body>) -> Option<http::Request<Body>> {
    use http_body::Body as _;
    if !req.body().is_end_stream() || !req.method().is_idempotent() {
        return None;
    }
    let mut again = http::Request::new(body::empty());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// Dials peer nodes with this node's certificate and keeps one connection per
/// peer, with a pool of open streams on it.
pub struct TunnelClient {
    /// The CA and this node's certificate, read at each dial (the agent
    /// renews the certificate under it).
    tls: Option<SharedClientConfig>,
    peers: std::sync::Mutex<HashMap<String, Arc<Peer>>>,
    metrics: TunnelMetrics,
}

impl TunnelClient {
    /// A client with this node's CA and certificate.
    pub fn new(ca_pem: &str, cert: IssuedCert) -> Self {
        Self::shared(SharedClientConfig::new(ClientConfig {
            server: String::new(),
            identity: String::new(),
            ca_cert: ca_pem.to_string(),
            client_cert: cert.cert_pem,
            client_key: cert.key_pem,
        }))
    }

    /// A client with the CA and certificate of `config` as they are at each
    /// dial.
    pub fn shared(config: SharedClientConfig) -> Self {
        Self {
            tls: Some(config),
            peers: std::sync::Mutex::new(HashMap::new()),
            metrics: TunnelMetrics::default(),
        }
    }

    /// A client that reaches no one (a node without a cluster).
    pub fn disabled() -> Self {
        Self {
            tls: None,
            peers: std::sync::Mutex::new(HashMap::new()),
            metrics: TunnelMetrics::default(),
        }
    }

    /// This client, counting into `metrics`.
    pub fn with_metrics(mut self, metrics: TunnelMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn peer(&self, addr: &str) -> Arc<Peer> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_string())
            .or_default()
            .clone()
    }

    async fn connection(
        &self,
        peer: &Peer,
        node: &str,
        addr: &str,
    ) -> Result<quinn::Connection, OutboundError> {
        let mut cached = peer.link.lock().await;
        if let Some((_, c, with)) = cached.as_ref() {
            if c.close_reason().is_none() && with == node {
                return Ok(c.clone());
            }
        }
        let Some(shared) = &self.tls else {
            return Err(OutboundError::Unavailable(
                "this node has no cluster identity for the tunnel".into(),
            ));
        };
        let current = shared.get();
        // Only node `node` may answer at its address: any certificate of
        // the CA would pass the chain check, another node's included.
        let config = tls::client_config(
            &current.ca_cert,
            Some(&current.cert()),
            ALPN_TUNNEL,
            tls::ServerIdentity::Node(node.to_string()),
        )
        .map_err(|e| OutboundError::Unavailable(format!("tunnel tls: {e}")))?;
        let (endpoint, conn) = dial(addr, config).await.map_err(|e| {
            OutboundError::Unavailable(format!("tunnel to node {node} at {addr}: {e}"))
        })?;
        *cached = Some((endpoint, conn.clone(), node.to_string()));
        Ok(conn)
    }

    async fn forget(&self, addr: &str) {
        let peer = self.peer(addr);
        peer.idle().clear();
        *peer.link.lock().await = None;
    }

    /// Opens a stream to the node at `addr` and makes it an HTTP/1.1
    /// connection.
    async fn open(&self, peer: &Peer, node: &str, addr: &str) -> Result<Exchange, OutboundError> {
        let conn = self.connection(peer, node, addr).await?;
        let opened = async {
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            hyper::client::conn::http1::handshake(stream_io(send, recv, vec![VERSION]))
                .await
                .map_err(|e| e.to_string())
        };
        match opened.await {
            Ok((sender, connection)) => {
                self.metrics.streams_opened.inc();
                Ok(Exchange {
                    sender,
                    connection: Box::pin(connection),
                    coalescer: Coalescer::new(),
                })
            }
            Err(e) => {
                self.forget(addr).await;
                Err(OutboundError::Unavailable(format!("tunnel to {addr}: {e}")))
            }
        }
    }

    /// Sends a request for `ip` to node `node` at `addr`; its response head
    /// must arrive by `deadline`. The bodies stream.
    pub async fn send(
        &self,
        node: &str,
        addr: &str,
        ip: Ipv4Addr,
        mut req: http::Request<Body>,
        deadline: Deadline,
    ) -> Result<http::Response<Body>, OutboundError> {
        self.metrics.requests.inc();
        let peer = self.peer(addr);
        let headers = req.headers_mut();
        // Hop-by-hop: the client's `Connection: close` is for its own
        // connection, not for the tunnel stream, which stays open.
        headers.remove(http::header::CONNECTION);
        headers.remove("keep-alive");
        headers.insert(IP_HEADER, http::HeaderValue::from(u32::from(ip)));
        let left = deadline.saturating_duration_since(Deadline::now());
        let millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        headers.insert(DEADLINE_HEADER, http::HeaderValue::from(millis));
        let (exchange, again) = match peer.take_idle() {
            Some(e) => (e, replayable(&req)),
            None => (self.open(&peer, node, addr).await?, None),
        };
        let answer = match tokio::time::timeout_at(deadline, exchange.request(req)).await {
            Ok(Ok(done)) => done,
            Ok(Err((e, unsent))) => {
                // A reused stream the peer closed as the request went out:
                // once more on a new one, if the request can be sent again.
                let Some(req) = unsent.or(again) else {
                    return Err(OutboundError::Unavailable(format!("tunnel to {addr}: {e}")));
                };
                let exchange = self.open(&peer, node, addr).await?;
                match tokio::time::timeout_at(deadline, exchange.request(req)).await {
                    Ok(Ok(done)) => done,
                    Ok(Err((e, _))) => {
                        return Err(OutboundError::Unavailable(format!("tunnel to {addr}: {e}")))
                    }
                    Err(_) => return Err(no_answer(addr)),
                }
            }
            Err(_) => return Err(no_answer(addr)),
        };
        let (response, kept) = answer;
        let (parts, incoming) = response.into_parts();
        let incoming = Driven {
            exchange: Some(kept),
            body: incoming,
            ended: false,
            peer,
        };
        if let Some(kind) = parts.headers.get(FAILURE_HEADER) {
            let kind = kind.to_str().unwrap_or_default().to_string();
            let message = body::collect(body::from(incoming), MAX_FAILURE_MESSAGE)
                .await
                .map(|b| String::from_utf8_lossy(&b).trim_end().to_string())
                .unwrap_or_else(|e| format!("the failure's message was lost: {e}"));
            return Err(OutboundError::from_kind(&kind, message));
        }
        Ok(http::Response::from_parts(parts, body::from(incoming)))
    }
    /// Sends a probe to the node at `addr` over the connection requests use
    /// (dialled first if there is none), and reads the peer's clock from
    /// its answer.
    pub async fn probe(&self, node: &str, addr: &str) -> Result<TunnelProbe, OutboundError> {
        let sent_at = flotilla_api::meta::unix_micros_now();
        let started = std::time::Instant::now();
        let deadline = Deadline::now() + PROBE_ANSWER_TIMEOUT;
        let req = http::Request::get("/")
            .body(body::empty())
            .map_err(|e| OutboundError::Invalid(e.to_string()))?;
        // A connection whose peer went away silently would hold a probe
        // until QUIC's idle timeout; a silent probe drops it instead.
        let answer =
            match tokio::time::timeout_at(deadline, self.send(node, addr, PROBE_IP, req, deadline))
                .await
            {
                Ok(a) => a,
                Err(_) => Err(OutboundError::Timeout(format!(
                    "tunnel to {addr}: no answer within {PROBE_ANSWER_TIMEOUT:?}"
                ))),
            };
        let round_trip = started.elapsed();
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.forget(addr).await;
                return Err(OutboundError::Unavailable(format!(
                    "tunnel to {addr}: {}",
                    e.message()
                )));
            }
        };
        let peer_clock = answer
            .headers()
            .get(CLOCK_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
            .ok_or_else(|| {
                OutboundError::Unavailable(format!(
                    "tunnel to {addr}: the probe's answer has no clock"
                ))
            })?;
        let half_way =
            sent_at.saturating_add(i64::try_from(round_trip.as_micros() / 2).unwrap_or(0));
        Ok(TunnelProbe {
            round_trip,
            peer_clock_offset_micros: peer_clock.saturating_sub(half_way),
        })
    }
}

/// Serves one tunnel connection from a peer node (already authenticated).
pub async fn serve_connection(net: Arc<Network>, conn: quinn::Connection) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(net.clone(), send, recv));
    }
}

async fn serve_stream(net: Arc<Network>, send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut version = [0u8; 1];
    match tokio::time::timeout(VERSION_TIMEOUT, recv.read_exact(&mut version)).await {
        Ok(Ok(_)) if version[0] == VERSION => {}
        // Not our protocol, or a peer too slow to say what it wants.
        _ => return,
    }
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let net = net.clone();
        async move { Ok::<_, std::convert::Infallible>(receive(&net, req.map(body::from)).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(STREAM_IDLE_TIMEOUT)
        .serve_connection(stream_io(send, recv, Vec::new()), service)
        .await;
}

/// Takes the tunnel's headers off a request: the address it is for and its
/// deadline.
fn tunnel_headers(req: &mut http::Request<Body>) -> Result<(Ipv4Addr, Deadline), OutboundError> {
    let headers = req.headers_mut();
    let ip = headers.remove(IP_HEADER);
    let millis = headers.remove(DEADLINE_HEADER);
    let number = |v: Option<http::HeaderValue>, name: &str| {
        v.as_ref()
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .ok_or_else(|| {
                OutboundError::Invalid(format!(
                    "a tunnel request needs the header {name} as a decimal number"
                ))
            })
    };
    let ip = u32::try_from(number(ip, IP_HEADER)?)
        .map(Ipv4Addr::from)
        .map_err(|_| OutboundError::Invalid(format!("{IP_HEADER} is not an IPv4 address")))?;
    let left = Duration::from_millis(number(millis, DEADLINE_HEADER)?);
    let deadline = Deadline::now()
        .checked_add(left)
        .unwrap_or_else(|| Deadline::now() + STREAM_IDLE_TIMEOUT);
    Ok((ip, deadline))
}

async fn receive(net: &Network, mut req: http::Request<Body>) -> http::Response<Body> {
    match tunnel_headers(&mut req) {
        Ok((ip, deadline)) => answer(net, ip, deadline, req).await,
        Err(e) => failure(&e),
    }
}

fn failure(e: &OutboundError) -> http::Response<Body> {
    let mut r = super::plain(502, format!("{}\n", e.message()));
    r.headers_mut()
        .insert(FAILURE_HEADER, http::HeaderValue::from_static(e.kind()));
    r
}

async fn answer(
    net: &Network,
    ip: Ipv4Addr,
    deadline: Deadline,
    req: http::Request<Body>,
) -> http::Response<Body> {
    if ip == PROBE_IP {
        let mut r = http::Response::new(body::empty());
        *r.status_mut() = http::StatusCode::NO_CONTENT;
        let headers = r.headers_mut();
        if let Ok(v) = http::HeaderValue::from_str(net.node()) {
            headers.insert("x-flotilla-node", v);
        }
        if let Ok(v) =
            http::HeaderValue::from_str(&flotilla_api::meta::unix_micros_now().to_string())
        {
            headers.insert(CLOCK_HEADER, v);
        }
        return r;
    }
    if !net.own_range().is_some_and(|r| r.contains(ip)) {
        return failure(&OutboundError::Unavailable(format!(
            "{ip} is not an address of node {}",
            net.node()
        )));
    }
    match net.serve_local(ip, req, deadline).await {
        Ok(r) => r,
        Err(e) => failure(&e),
    }
}

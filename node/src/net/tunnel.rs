//! The tunnel between nodes: one QUIC connection per peer node, mutual TLS
//! with `node:` certificates of the cluster CA on both sides, so nothing but
//! cluster nodes can use it. Each request is its own bidirectional stream
//! carrying a short preamble and then one plain HTTP/1.1 exchange (hyper on
//! both ends), so bodies stream through in both directions and nothing is
//! buffered whole. The receiving node serves only its own addresses (no
//! transit).
//!
//! The preamble, 9 bytes: the version (1), the IPv4 address the request is
//! for, and the milliseconds left of the request's deadline (big-endian
//! u32): one deadline travels end to end instead of a timeout on each side.
//! A failure to reach the instance is answered with status 502 and the
//! header `flotilla-failure` naming its kind
//! ([`OutboundError::kind`]); the body says why.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use tokio::io::AsyncWrite;
use tokio::sync::Mutex;
use tokio::time::Instant as Deadline;

use flotilla_client::tls::{self, IssuedCert, ALPN_TUNNEL};
use flotilla_client::{dial, ClientConfig, SharedClientConfig};

use super::Network;
use crate::body::{self, Body};
use crate::runtime::OutboundError;

/// The preamble's version byte.
const VERSION: u8 = 1;
/// Bytes of the preamble.
const PREAMBLE: usize = 9;
/// How long a peer may take to send the preamble of a stream it opened.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
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

fn preamble(ip: Ipv4Addr, deadline: Deadline) -> [u8; PREAMBLE] {
    let left = deadline.saturating_duration_since(Deadline::now());
    let millis = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
    let mut out = [0u8; PREAMBLE];
    out[0] = VERSION;
    out[1..5].copy_from_slice(&ip.octets());
    out[5..].copy_from_slice(&millis.to_be_bytes());
    out
}

/// A stream's two halves as one byte pipe for hyper.
type StreamIo = TokioIo<tokio::io::Join<quinn::RecvStream, Prefixed>>;

fn stream_io(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    preamble: Option<[u8; PREAMBLE]>,
) -> StreamIo {
    TokioIo::new(tokio::io::join(
        recv,
        Prefixed {
            prefix: preamble.map(|p| p.to_vec()).unwrap_or_default(),
            send,
        },
    ))
}

/// A stream's sending side that writes `prefix` with the first bytes
/// written to it, so the preamble and the request head leave in one packet.
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

/// A response body that drives its HTTP/1.1 connection as it is read, so
/// the exchange needs no task of its own: the reader's task is the one the
/// stream wakes, one wake-up fewer on each way through.
struct Driven {
    connection: Option<Pin<Box<Connection>>>,
    body: hyper::body::Incoming,
}

impl http_body::Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(connection) = this.connection.as_mut() {
            if connection.as_mut().poll(cx).is_ready() {
                // Done, or failed: the body says which.
                this.connection = None;
            }
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Dials peer nodes with this node's certificate and keeps one connection per
/// peer.
pub struct TunnelClient {
    /// The CA and this node's certificate, read at each dial (the agent
    /// renews the certificate under it).
    tls: Option<SharedClientConfig>,
    /// One slot per peer address, so that dialling one peer (a dead one can
    /// take until the dial's timeout) does not hold up requests to others.
    conns: std::sync::Mutex<HashMap<String, Slot>>,
}

type Slot = Arc<Mutex<Option<(quinn::Endpoint, quinn::Connection)>>>;

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
            conns: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A client that reaches no one (a node without a cluster).
    pub fn disabled() -> Self {
        Self {
            tls: None,
            conns: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, addr: &str) -> Slot {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_string())
            .or_default()
            .clone()
    }

    async fn connection(&self, addr: &str) -> Result<quinn::Connection, OutboundError> {
        let slot = self.slot(addr);
        let mut cached = slot.lock().await;
        if let Some((_, c)) = cached.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let Some(shared) = &self.tls else {
            return Err(OutboundError::Unavailable(
                "this node has no cluster identity for the tunnel".into(),
            ));
        };
        let current = shared.get();
        let config = tls::client_config(&current.ca_cert, Some(&current.cert()), ALPN_TUNNEL)
            .map_err(|e| OutboundError::Unavailable(format!("tunnel tls: {e}")))?;
        let (endpoint, conn) = dial(addr, config)
            .await
            .map_err(|e| OutboundError::Unavailable(format!("tunnel to {addr}: {e}")))?;
        *cached = Some((endpoint, conn.clone()));
        Ok(conn)
    }

    async fn forget(&self, addr: &str) {
        *self.slot(addr).lock().await = None;
    }

    /// Opens a stream to the node at `addr` for `ip` and makes it an
    /// HTTP/1.1 connection of its own; the connection is driven by whoever
    /// reads the exchange (see [`Driven`]), not by a task of its own.
    async fn open(
        &self,
        addr: &str,
        ip: Ipv4Addr,
        deadline: Deadline,
    ) -> Result<(SendRequest, Connection), OutboundError> {
        let conn = self.connection(addr).await?;
        let opened = async {
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let io = stream_io(send, recv, Some(preamble(ip, deadline)));
            hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())
        };
        match opened.await {
            Ok(exchange) => Ok(exchange),
            Err(e) => {
                self.forget(addr).await;
                Err(OutboundError::Unavailable(format!("tunnel to {addr}: {e}")))
            }
        }
    }

    /// Sends a request for `ip` to the node at `addr`; its response head
    /// must arrive by `deadline`. The bodies stream.
    pub async fn send(
        &self,
        addr: &str,
        ip: Ipv4Addr,
        req: http::Request<Body>,
        deadline: Deadline,
    ) -> Result<http::Response<Body>, OutboundError> {
        let (mut sender, connection) = self.open(addr, ip, deadline).await?;
        let mut connection = Some(Box::pin(connection));
        let exchange = async {
            let answer = sender.send_request(req);
            tokio::pin!(answer);
            // The connection writes the request and reads the answer's head
            // in this task; it ending first is an error `answer` reports.
            loop {
                match connection.as_mut() {
                    Some(c) => tokio::select! {
                        biased;
                        r = &mut answer => break r,
                        _ = c.as_mut() => connection = None,
                    },
                    None => break answer.await,
                }
            }
        };
        let answer = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(OutboundError::Unavailable(format!("tunnel to {addr}: {e}")));
            }
            Err(_) => {
                return Err(OutboundError::Timeout(format!(
                    "tunnel to {addr}: no answer in time"
                )))
            }
        };
        let (parts, incoming) = answer.into_parts();
        let incoming = Driven {
            connection,
            body: incoming,
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
    pub async fn probe(&self, addr: &str) -> Result<TunnelProbe, OutboundError> {
        let sent_at = flotilla_api::meta::unix_micros_now();
        let started = std::time::Instant::now();
        let deadline = Deadline::now() + PROBE_ANSWER_TIMEOUT;
        let req = http::Request::get("/")
            .body(body::empty())
            .map_err(|e| OutboundError::Invalid(e.to_string()))?;
        // A connection whose peer went away silently would hold a probe
        // until QUIC's idle timeout; a silent probe drops it instead.
        let answer =
            match tokio::time::timeout_at(deadline, self.send(addr, PROBE_IP, req, deadline)).await
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
    let mut head = [0u8; PREAMBLE];
    match tokio::time::timeout(PREAMBLE_TIMEOUT, recv.read_exact(&mut head)).await {
        Ok(Ok(_)) if head[0] == VERSION => {}
        // Not our protocol, or a peer too slow to say what it wants.
        _ => return,
    }
    let ip = Ipv4Addr::new(head[1], head[2], head[3], head[4]);
    let millis = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    let deadline = Deadline::now() + Duration::from_millis(u64::from(millis));
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let net = net.clone();
        async move {
            Ok::<_, std::convert::Infallible>(answer(&net, ip, deadline, req.map(body::from)).await)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(stream_io(send, recv, None), service)
        .await;
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

//! The tunnel between nodes: one QUIC connection per peer node, a stream per
//! request, mutual TLS with `node:` certificates of the cluster CA on both
//! sides, so nothing but cluster nodes can use it. A request names the
//! instance address it is for; the receiving node serves only its own
//! addresses (no transit).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use flotilla_client::tls::{self, IssuedCert, ALPN_TUNNEL};
use flotilla_client::wire::{read_frame, write_frame, MAX_FRAME};
use flotilla_client::{dial, ClientConfig, SharedClientConfig};

use super::{Network, REQUEST_TIMEOUT};
use crate::runtime::OutboundError;

/// A request through the tunnel.
#[derive(Serialize, Deserialize, Debug)]
pub struct TunnelRequest {
    /// The instance address it is for.
    pub ip: [u8; 4],
    /// Method.
    pub method: String,
    /// Request target (path and query, or an absolute URI).
    pub uri: String,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

/// The address a probe names: no instance has it, so a node that predates
/// probes answers it with a plain "not an address of this node".
pub const PROBE_IP: [u8; 4] = [0, 0, 0, 0];
/// How long a probe waits for its answer on an open connection.
const PROBE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// The header of a probe's answer that carries the answering node's clock.
const CLOCK_HEADER: &str = "x-flotilla-clock-micros";

/// What a probe through the tunnel found.
#[derive(Debug, Clone, Copy)]
pub struct TunnelProbe {
    /// Request out to answer in, on an open connection.
    pub round_trip: std::time::Duration,
    /// How far the peer's clock is ahead of this node's, in microseconds.
    pub peer_clock_offset_micros: i64,
}

/// The answer.
#[derive(Serialize, Deserialize, Debug)]
pub enum TunnelResponse {
    /// The instance answered.
    Response {
        /// Status code.
        status: u16,
        /// Headers.
        headers: Vec<(String, Vec<u8>)>,
        /// Body.
        body: Vec<u8>,
    },
    /// No instance answered; the kind and why.
    Failed {
        /// 0 refused, 1 timeout, 2 unavailable, 3 invalid.
        kind: u8,
        /// Why.
        message: String,
    },
}

fn headers_of(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn header_map(list: Vec<(String, Vec<u8>)>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (k, v) in list {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(&v),
        ) {
            map.append(k, v);
        }
    }
    map
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

    /// Sends a probe to the node at `addr` over the connection requests use
    /// (dialled first if there is none), and reads the peer's clock from
    /// its answer.
    pub async fn probe(&self, addr: &str) -> Result<TunnelProbe, OutboundError> {
        let conn = self.connection(addr).await?;
        let frame = TunnelRequest {
            ip: PROBE_IP,
            method: "GET".into(),
            uri: "/".into(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let sent_at = flotilla_api::meta::unix_micros_now();
        let started = std::time::Instant::now();
        // A connection whose peer went away silently would hold a probe
        // until QUIC's idle timeout; a silent probe drops it instead.
        let answer = match tokio::time::timeout(PROBE_ANSWER_TIMEOUT, exchange(&conn, &frame)).await
        {
            Ok(a) => a,
            Err(_) => Err(format!("no answer within {PROBE_ANSWER_TIMEOUT:?}")),
        };
        let round_trip = started.elapsed();
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.forget(addr).await;
                return Err(OutboundError::Unavailable(format!("tunnel to {addr}: {e}")));
            }
        };
        let peer_clock = match answer {
            TunnelResponse::Response { headers, .. } => headers
                .iter()
                .find(|(k, _)| k == CLOCK_HEADER)
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok()),
            TunnelResponse::Failed { message, .. } => {
                return Err(OutboundError::Unavailable(format!(
                    "tunnel to {addr}: the peer does not answer probes ({message}): an older agent?"
                )))
            }
        };
        let peer_clock = peer_clock.ok_or_else(|| {
            OutboundError::Unavailable(format!("tunnel to {addr}: the probe's answer has no clock"))
        })?;
        let half_way =
            sent_at.saturating_add(i64::try_from(round_trip.as_micros() / 2).unwrap_or(0));
        Ok(TunnelProbe {
            round_trip,
            peer_clock_offset_micros: peer_clock.saturating_sub(half_way),
        })
    }

    /// Sends a request for `ip` to the node at `addr`.
    pub async fn send(
        &self,
        addr: &str,
        ip: Ipv4Addr,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let conn = self.connection(addr).await?;
        let (parts, body) = req.into_parts();
        let frame = TunnelRequest {
            ip: ip.octets(),
            method: parts.method.as_str().to_string(),
            uri: parts.uri.to_string(),
            headers: headers_of(&parts.headers),
            body: body.to_vec(),
        };
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&conn, &frame)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.forget(addr).await;
                return Err(OutboundError::Unavailable(format!("tunnel to {addr}: {e}")));
            }
            Err(_) => {
                return Err(OutboundError::Timeout(format!(
                    "tunnel to {addr}: no answer within {REQUEST_TIMEOUT:?}"
                )))
            }
        };
        match answer {
            TunnelResponse::Response {
                status,
                headers,
                body,
            } => {
                let mut r = http::Response::new(Bytes::from(body));
                *r.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
                *r.headers_mut() = header_map(headers);
                Ok(r)
            }
            TunnelResponse::Failed { kind, message } => Err(match kind {
                0 => OutboundError::Refused(message),
                1 => OutboundError::Timeout(message),
                3 => OutboundError::Invalid(message),
                _ => OutboundError::Unavailable(message),
            }),
        }
    }
}

/// One request on its own stream of `conn`, and its answer.
async fn exchange(
    conn: &quinn::Connection,
    frame: &TunnelRequest,
) -> Result<TunnelResponse, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, frame)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    read_frame::<_, TunnelResponse>(&mut recv, MAX_FRAME)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the peer closed the stream".to_string())
}

/// Serves one tunnel connection from a peer node (already authenticated).
pub async fn serve_connection(net: Arc<Network>, conn: quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let net = net.clone();
        tokio::spawn(async move {
            let req: TunnelRequest = match read_frame(&mut recv, MAX_FRAME).await {
                Ok(Some(r)) => r,
                _ => return,
            };
            let answer = serve_request(&net, req).await;
            let _ = write_frame(&mut send, &answer).await;
            let _ = send.finish();
        });
    }
}

async fn serve_request(net: &Network, req: TunnelRequest) -> TunnelResponse {
    if req.ip == PROBE_IP {
        return TunnelResponse::Response {
            status: 204,
            headers: vec![
                ("x-flotilla-node".into(), net.node().as_bytes().to_vec()),
                (
                    CLOCK_HEADER.into(),
                    flotilla_api::meta::unix_micros_now()
                        .to_string()
                        .into_bytes(),
                ),
            ],
            body: Vec::new(),
        };
    }
    let ip = Ipv4Addr::from(req.ip);
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(req.uri.as_str());
    if let Some(h) = builder.headers_mut() {
        *h = header_map(req.headers);
    }
    let request = match builder.body(Bytes::from(req.body)) {
        Ok(r) => r,
        Err(e) => {
            return TunnelResponse::Failed {
                kind: 3,
                message: format!("bad request through the tunnel: {e}"),
            }
        }
    };
    if !net.own_range().is_some_and(|r| r.contains(ip)) {
        return TunnelResponse::Failed {
            kind: 2,
            message: format!("{ip} is not an address of node {}", net.node()),
        };
    }
    match net.serve_local(ip, request).await {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            TunnelResponse::Response {
                status: parts.status.as_u16(),
                headers: headers_of(&parts.headers),
                body: body.to_vec(),
            }
        }
        Err(e) => TunnelResponse::Failed {
            kind: match e {
                OutboundError::Refused(_) => 0,
                OutboundError::Timeout(_) => 1,
                OutboundError::Invalid(_) => 3,
                _ => 2,
            },
            message: e.message().to_string(),
        },
    }
}

//! The node's own listener. ALPN `flotilla-node/1`: apiservers, and only
//! apiservers (`peer:` certificates of the cluster CA), reach it to stream an
//! instance's log, carry a port-forward connection to it, or have it probe
//! the tunnel to another node. ALPN
//! `flotilla-tunnel/1`: other nodes (`node:` certificates), and only they,
//! carry requests for this node's instance addresses.

use std::sync::Arc;

use flotilla_client::tls::{self, IssuedCert, ALPN_NODE, ALPN_TUNNEL};
use flotilla_client::wire::{
    read_frame, write_frame, ApiError, ErrorCode, Request, RequestV1, Response, ResponseV1,
    MAX_FRAME,
};

use super::identity::Identity;
use super::{AgentError, Result, Shared};

/// The listener's QUIC server side with `cert` (also what a renewed
/// certificate is swapped in with).
pub fn quic_config(ca_pem: &str, cert: &IssuedCert) -> Result<quinn::ServerConfig> {
    let server_tls = tls::server_config(ca_pem, cert, &[ALPN_NODE, ALPN_TUNNEL])
        .map_err(|e| AgentError::setting("node listener tls", e))?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| AgentError::setting("node listener tls", e))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server_config.transport_config(flotilla_client::transport_config());
    Ok(server_config)
}

/// Binds the listener; returns its address, its endpoint (whose certificate
/// renewal replaces) and the accept task.
pub async fn start(
    shared: Arc<Shared>,
    identity: &Identity,
) -> Result<(String, quinn::Endpoint, tokio::task::JoinHandle<()>)> {
    let server_config = quic_config(&identity.client.ca_cert, &identity.client.cert())?;
    let addr: std::net::SocketAddr = shared
        .config
        .listen
        .parse()
        .map_err(|e| AgentError::setting(format!("--listen {}", shared.config.listen), e))?;
    let key_path = shared.config.data_dir.join("quic-reset.key");
    let endpoint_config =
        flotilla_client::listening_endpoint_config(&key_path).map_err(AgentError::io(&key_path))?;
    let socket = std::net::UdpSocket::bind(addr)
        .map_err(|e| AgentError::setting(format!("cannot listen on {addr}"), e))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| AgentError::Config("no async runtime for QUIC".into()))?;
    let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
        .map_err(|e| AgentError::setting(format!("cannot listen on {addr}"), e))?;
    let local = endpoint
        .local_addr()
        .map_err(|e| AgentError::setting(format!("the node listener on {addr}"), e))?
        .to_string();
    let accepting = endpoint.clone();
    let task = tokio::spawn(async move {
        let endpoint = accepting;
        while let Some(incoming) = endpoint.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let caller = tls::connection_identity(&conn).unwrap_or_default();
                let alpn = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.protocol);
                if alpn.as_deref() == Some(ALPN_TUNNEL) {
                    match (&shared.ctx.network, caller.starts_with("node:")) {
                        (Some(net), true) => {
                            crate::net::tunnel::serve_connection(net.clone(), conn).await
                        }
                        _ => conn.close(3u32.into(), b"only cluster nodes may use the tunnel"),
                    }
                    return;
                }
                if !caller.starts_with("peer:") {
                    conn.close(3u32.into(), b"only apiservers may call a node");
                    return;
                }
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve_stream(shared.clone(), send, recv));
                }
            });
        }
    });
    Ok((local, endpoint, task))
}

async fn error(send: &mut quinn::SendStream, code: ErrorCode, message: String) {
    let _ = write_frame(
        send,
        &Response::V1(ResponseV1::Error(ApiError::new(code, message))),
    )
    .await;
    let _ = send.finish();
}

async fn not_here(send: &mut quinn::SendStream, key: &(String, String), node: &str) {
    error(
        send,
        ErrorCode::NotFound,
        format!("instance \"{}\" does not run on node \"{node}\"", key.1),
    )
    .await;
}

async fn serve_stream(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let req: Request = match read_frame(&mut recv, MAX_FRAME).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            error(
                &mut send,
                ErrorCode::BadRequest,
                format!("bad request frame: {e}"),
            )
            .await;
            return;
        }
    };
    let Request::V1(req) = req;
    match req {
        RequestV1::Logs {
            namespace,
            name,
            follow,
            tail,
            previous,
        } => serve_logs(shared, send, (namespace, name), follow, tail, previous).await,
        RequestV1::PortForward { namespace, name } => {
            serve_port_forward(shared, send, recv, (namespace, name)).await
        }
        RequestV1::ProbeTunnel { to, to_address, .. } => {
            serve_tunnel_probe(shared, send, &to, &to_address).await
        }
        _ => {
            error(
                &mut send,
                ErrorCode::BadRequest,
                "a node serves only logs, port-forward and tunnel probes".into(),
            )
            .await
        }
    }
}

async fn serve_logs(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    key: (String, String),
    follow: bool,
    tail: Option<u64>,
    previous: bool,
) {
    let log = {
        let running = shared.running.lock().await;
        running.get(&key).map(|s| s.log.clone())
    };
    let Some(log) = log else {
        not_here(&mut send, &key, &shared.config.name).await;
        return;
    };
    // Subscribe before reading, so nothing written in between is lost.
    let mut live = log.follow();
    let backlog = log.read(previous, tail);
    for chunk in backlog.chunks(64 * 1024) {
        if write_frame(
            &mut send,
            &Response::V1(ResponseV1::LogChunk(chunk.to_vec())),
        )
        .await
        .is_err()
        {
            return;
        }
    }
    if !follow || previous {
        let _ = write_frame(&mut send, &Response::V1(ResponseV1::Ok)).await;
        let _ = send.finish();
        return;
    }
    loop {
        let next = tokio::select! {
            next = live.recv() => next,
            _ = send.stopped() => return,
        };
        match next {
            Ok(bytes) => {
                if write_frame(
                    &mut send,
                    &Response::V1(ResponseV1::LogChunk(bytes.to_vec())),
                )
                .await
                .is_err()
                {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                let _ = write_frame(&mut send, &Response::V1(ResponseV1::Ok)).await;
                let _ = send.finish();
                return;
            }
        }
    }
}

/// How long a tunnel probe may take, dial included: under the apiserver's
/// and `flotilla doctor`'s own bounds, so the answer says where it stopped.
const TUNNEL_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

async fn serve_tunnel_probe(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    to: &str,
    to_address: &str,
) {
    let me = &shared.config.name;
    let Some(net) = &shared.ctx.network else {
        error(
            &mut send,
            ErrorCode::Unavailable,
            format!("node \"{me}\" runs without a cluster network"),
        )
        .await;
        return;
    };
    let probed = tokio::time::timeout(TUNNEL_PROBE_TIMEOUT, net.probe_tunnel(to, to_address)).await;
    let resp = match probed {
        Ok(Ok(probe)) => ResponseV1::TunnelProbe {
            round_trip_micros: u64::try_from(probe.round_trip.as_micros()).unwrap_or(u64::MAX),
            from_clock_micros: flotilla_api::meta::unix_micros_now(),
            to_clock_offset_micros: probe.peer_clock_offset_micros,
        },
        Ok(Err(e)) => ResponseV1::Error(ApiError::new(
            ErrorCode::Unavailable,
            format!("from node \"{me}\": {}", e.message()),
        )),
        Err(_) => ResponseV1::Error(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "from node \"{me}\": no answer from \"{to}\" at {to_address} within {TUNNEL_PROBE_TIMEOUT:?}"
            ),
        )),
    };
    let _ = write_frame(&mut send, &Response::V1(resp)).await;
    let _ = send.finish();
}

async fn serve_port_forward(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    key: (String, String),
) {
    let http = {
        let running = shared.running.lock().await;
        running.get(&key).map(|s| s.http())
    };
    let handle = match http {
        None => {
            not_here(&mut send, &key, &shared.config.name).await;
            return;
        }
        Some(None) => {
            error(
                &mut send,
                ErrorCode::BadRequest,
                format!(
                    "instance \"{}\" is not an http-world instance that is running",
                    key.1
                ),
            )
            .await;
            return;
        }
        Some(Some(h)) => h,
    };
    if write_frame(&mut send, &Response::V1(ResponseV1::Ok))
        .await
        .is_err()
    {
        return;
    }
    let io = hyper_util::rt::TokioIo::new(tokio::io::join(recv, send));
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let handle = handle.clone();
        async move {
            let resp = match handle.serve(req.map(crate::body::from)).await {
                Ok(r) => r,
                Err(e) => crate::net::plain(502, format!("instance error: {e}\n")),
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

//! Dialling: QUIC endpoints and connections with the settings every Flotilla
//! connection shares, and the explanation of a handshake that failed on a
//! certificate's validity.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Cause, ClientError, Result, While};
use crate::tls;

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves `HOST:PORT`.
pub async fn resolve(addr: &str) -> Result<SocketAddr> {
    let unreachable = |source: Cause| ClientError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(While::cause("cannot resolve the address", e)))?;
    addrs
        .next()
        .ok_or_else(|| unreachable("the address resolves to nothing".into()))
}

/// A local address to bind a client endpoint to: loopback stays on loopback.
pub fn client_bind_addr(server: &SocketAddr) -> SocketAddr {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(ip) if ip.is_loopback() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

/// A connection that hears nothing from its peer for this long is closed:
/// a peer that vanished (its machine stopped, the link cut, no reset sent)
/// is noticed this soon, and whoever used it dials another. QUIC stretches
/// it to three probe timeouts on a slow path, so a live but distant peer is
/// not given up on.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often an otherwise quiet connection proves it is alive: three times
/// within [`IDLE_TIMEOUT`], so one or two lost packets do not close it.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// QUIC transport settings shared by every Flotilla connection.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("3 s is a valid idle timeout"),
    ));
    t.max_concurrent_bidi_streams(4096u32.into());
    Arc::new(t)
}

/// Bytes of a stateless-reset key.
const RESET_KEY_LEN: usize = 64;

/// The QUIC endpoint settings of a process that listens (a server peer, a
/// node). Its stateless-reset key is kept in `key_path`, made at the first
/// start, and its connection ids are keyed from it too: after a restart the
/// process recognises the ids its previous run gave out and can tell peers
/// still talking to that run that their connection is gone (a stateless
/// reset), so they dial again at once instead of waiting out the idle
/// timeout.
pub fn listening_endpoint_config(
    key_path: &std::path::Path,
) -> std::io::Result<quinn::EndpointConfig> {
    let key = match std::fs::read(key_path) {
        Ok(key) if key.len() == RESET_KEY_LEN => key,
        Ok(_) => new_reset_key(key_path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_reset_key(key_path)?,
        Err(e) => return Err(e),
    };
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let derived = ring::hmac::sign(&reset_key, b"flotilla connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derived.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// A random reset key, written (owner-only, atomically) to `path`.
fn new_reset_key(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use rand::RngCore;
    let mut key = vec![0u8; RESET_KEY_LEN];
    rand::thread_rng().fill_bytes(&mut key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::files::write_private(path, &key)?;
    Ok(key)
}

/// Dials `addr` with a rustls client config and returns the connection, with the
/// endpoint that owns it.
pub async fn dial(
    addr: &str,
    rustls_config: rustls::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let unreachable = |source: Cause| ClientError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    let sock = resolve(addr).await?;
    let alpns = rustls_config.alpn_protocols.clone();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| unreachable(e.into()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    let mut endpoint = quinn::Endpoint::client(client_bind_addr(&sock))
        .map_err(|e| unreachable(While::cause("cannot open a local socket", e)))?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(sock, tls::SERVER_NAME)
        .map_err(|e| unreachable(e.into()))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if rejected_as_expired(&e) {
                if let Some(err) = explain_server_certificate(&endpoint, sock, addr, &alpns).await {
                    return Err(err);
                }
            }
            return Err(unreachable(e.into()));
        }
        Err(_) => return Err(unreachable("no answer (timed out)".into())),
    };
    Ok((endpoint, conn))
}

/// Whether this side's TLS refused the server's certificate for its validity
/// period (rustls sends the `certificate_expired` alert for both expired and
/// not yet valid certificates).
fn rejected_as_expired(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            t.code == quinn::TransportErrorCode::crypto(tls::certificate_expired_alert())
        }
        _ => false,
    }
}

/// After a handshake failed on the server's certificate's validity: dials once
/// more only to read that certificate, and says which one it is and why it
/// failed. `None` when the second look shows nothing wrong (the first error
/// is then reported as it was).
async fn explain_server_certificate(
    endpoint: &quinn::Endpoint,
    sock: SocketAddr,
    addr: &str,
    alpns: &[Vec<u8>],
) -> Option<ClientError> {
    let (config, captured) = tls::capturing_client_config(alpns).ok()?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config).ok()?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    let connecting = endpoint.connect_with(config, sock, tls::SERVER_NAME).ok()?;
    // The capturing verifier always fails the handshake after reading.
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await;
    let der = captured.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    let info = tls::CertInfo::from_der(der.as_ref()).ok()?;
    let problem = info.problem_at(time::OffsetDateTime::now_utc())?;
    Some(ClientError::ServerCertificate {
        advice: server_certificate_advice(&info.identity),
        identity: info.identity,
        addr: addr.to_string(),
        problem,
    })
}

fn server_certificate_advice(identity: &str) -> String {
    if identity.starts_with("node:") {
        "the node renews its certificate through the apiserver while it is valid; once expired, the node must join again with a new token (`flotilla token create`, then restart it with --token TOKEN)".into()
    } else {
        "a server peer renews its certificate itself unless started with --cert-renew-at off; restart that peer with renewal on and it renews at start from the CA key in its data dir".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[tokio::test]
    async fn an_unreachable_server_keeps_the_error_underneath() {
        let err = resolve("127.0.0.1").await.unwrap_err();
        assert!(
            err.to_string().starts_with(
                "unable to connect to the server at 127.0.0.1: cannot resolve the address: "
            ),
            "{err}"
        );
        let while_resolving = err.source().and_then(|s| s.downcast_ref::<While>());
        let while_resolving = while_resolving.expect("the cause is kept");
        assert_eq!(while_resolving.doing, "cannot resolve the address");
        let io = while_resolving.source.downcast_ref::<std::io::Error>();
        assert!(
            io.is_some(),
            "the resolver's own error is kept: {:?}",
            while_resolving.source
        );
    }
}

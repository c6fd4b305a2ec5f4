//! A server peer's certificates over time. Every peer holds the CA key, so it
//! renews its own certificate (`peer:N`) itself: once the renewal point of the
//! one it serves with has passed (`--cert-renew-at`, a fraction of its
//! validity period), it issues a new one for `--cert-lifetime`, writes it to
//! the data dir (so a restart uses it) and swaps it into what uses it: the
//! server side of its QUIC endpoint (clients and peers dialling in), the
//! client side raft dials peers with, and its apiserver (what it shows nodes
//! when it proxies logs). Connections already made keep going; TLS checks
//! certificates only at the handshake. The same pass re-issues the
//! certificates of the in-process scheduler and controllers, and
//! `admin.config` once the admin certificate in it is due, so that a copy
//! taken from any running peer's data dir is always fresh.
//!
//! Must never: issue a certificate for another identity than this peer's own,
//! its own components' and the admin's, or close a connection.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use flotilla_client::tls::{self, CertInfo, IssuedCert, RenewAt};
use flotilla_client::{ClientConfig, SharedClientConfig};

use crate::ca::{self, CertificateAuthority};
use flotilla_client::tls::{ALPN_API, ALPN_RAFT};

use crate::apiserver::ApiServer;
use crate::server::{io_err, write_private, Result, ServerError};
use crate::store::network::PeerNet;

/// How long certificates live and when they are renewed.
#[derive(Clone, Copy, Debug)]
pub struct CertPolicy {
    /// Lifetime of every certificate this peer issues.
    pub lifetime: time::Duration,
    /// When a certificate is renewed.
    pub renew_at: RenewAt,
}

impl CertPolicy {
    /// Checks the lifetime: at least a second (certificates count whole
    /// seconds), at most the CA's own ten years.
    pub fn new(lifetime: Duration, renew_at: RenewAt) -> Result<Self> {
        let out_of_range = || {
            ServerError::Config(format!(
                "--cert-lifetime {}: out of range (1s to 3650d)",
                flotilla_api::duration::Duration::from_std(lifetime)
            ))
        };
        let lifetime = time::Duration::try_from(lifetime).map_err(|_| out_of_range())?;
        if lifetime < time::Duration::SECOND || lifetime > ca::MAX_CERT_LIFETIME {
            return Err(out_of_range());
        }
        Ok(Self { lifetime, renew_at })
    }

    /// When `cert` is due, or `None` when renewal is off (or it does not parse,
    /// which is then due at once).
    fn due(&self, cert_pem: &str) -> Option<OffsetDateTime> {
        match CertInfo::from_pem(cert_pem) {
            Ok(info) => self.renew_at.due(&info),
            Err(_) if self.renew_at.is_on() => Some(OffsetDateTime::UNIX_EPOCH),
            Err(_) => None,
        }
    }

    /// Whether `cert` is past its renewal point at `now`.
    fn is_due(&self, cert_pem: &str, now: OffsetDateTime) -> bool {
        self.due(cert_pem).is_some_and(|t| t <= now)
    }
}

/// Where the peer keeps what it renews.
pub(crate) struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub admin: PathBuf,
}

/// The certificates of one server peer and the places they are used.
pub(crate) struct PeerCerts {
    ca: CertificateAuthority,
    identity: String,
    addrs: Vec<IpAddr>,
    /// The address written into a re-issued `admin.config` that has none.
    address: String,
    paths: CertPaths,
    policy: CertPolicy,
    current: Mutex<IssuedCert>,
    components: Mutex<Vec<SharedClientConfig>>,
}

/// What a renewed peer certificate is swapped into.
pub(crate) struct Users {
    pub endpoint: quinn::Endpoint,
    pub net: Arc<PeerNet>,
    pub api: Arc<ApiServer>,
}

impl PeerCerts {
    /// This peer's certificates, starting from `cert` as loaded or issued.
    pub fn new(
        ca: CertificateAuthority,
        peer_id: u64,
        address: &str,
        cert: IssuedCert,
        paths: CertPaths,
        policy: CertPolicy,
    ) -> Self {
        let addrs = address
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|s| s.ip())
            .into_iter()
            .collect();
        Self {
            ca,
            identity: format!("peer:{peer_id}"),
            addrs,
            address: address.to_string(),
            paths,
            policy,
            current: Mutex::new(cert),
            components: Mutex::new(Vec::new()),
        }
    }

    /// The certificate this peer serves with now.
    pub fn current(&self) -> IssuedCert {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Before serving: a certificate that does not match its key (a renewal
    /// cut short) is issued again, one past its renewal point (a peer that was
    /// down) is renewed, and so is the admin configuration. Renewal off leaves
    /// everything as it is, expired or not.
    pub fn prepare(&self) -> Result<()> {
        let cert = self.current();
        let torn = !tls::cert_matches_key(&cert.cert_pem, &cert.key_pem).unwrap_or(false);
        let now = OffsetDateTime::now_utc();
        let due = self.policy.is_due(&cert.cert_pem, now);
        if torn || due {
            self.renew_own()?;
        }
        self.renew_admin_if_due(now)
    }

    /// A client configuration for the in-process component `name`
    /// (`component:NAME`), kept renewed.
    pub fn component_config(&self, name: &str) -> Result<SharedClientConfig> {
        let identity = format!("component:{name}");
        let cert = self.ca.issue_for(&identity, &[], self.policy.lifetime)?;
        let shared = SharedClientConfig::new(ClientConfig {
            server: self.address.clone(),
            identity,
            ca_cert: self.ca.cert_pem.clone(),
            client_cert: cert.cert_pem,
            client_key: cert.key_pem,
        });
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shared.clone());
        Ok(shared)
    }

    /// Issues this peer a new certificate and writes it to the data dir.
    fn renew_own(&self) -> Result<IssuedCert> {
        let cert = self
            .ca
            .issue_for(&self.identity, &self.addrs, self.policy.lifetime)?;
        // Key first: a crash between the two leaves a certificate that does
        // not match its key, which `prepare` issues again at the next start.
        write_private(&self.paths.key, &cert.key_pem)?;
        write_private(&self.paths.cert, &cert.cert_pem)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = cert.clone();
        let not_after = CertInfo::from_pem(&cert.cert_pem)
            .map(|i| i.not_after_rfc3339())
            .unwrap_or_default();
        tracing::info!(identity = %self.identity, %not_after, path = %self.paths.cert.display(), "renewed this peer's certificate");
        Ok(cert)
    }

    /// Re-issues `admin.config` when the certificate in it is due (or the file
    /// is missing or unreadable).
    fn renew_admin_if_due(&self, now: OffsetDateTime) -> Result<()> {
        let existing = ClientConfig::load(&self.paths.admin).ok();
        if let Some(config) = &existing {
            if !self.policy.is_due(&config.client_cert, now) {
                return Ok(());
            }
        } else if !self.policy.renew_at.is_on() {
            return Ok(());
        }
        let server = existing
            .map(|c| c.server)
            .unwrap_or_else(|| self.address.clone());
        write_admin_config(&self.ca, &self.paths.admin, &server, self.policy.lifetime)?;
        tracing::info!(path = %self.paths.admin.display(), "renewed the admin client certificate");
        Ok(())
    }

    fn renew_components_if_due(&self, now: OffsetDateTime) -> Result<()> {
        let components = self
            .components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for shared in components {
            let config = shared.get();
            if self.policy.is_due(&config.client_cert, now) {
                let cert = self
                    .ca
                    .issue_for(&config.identity, &[], self.policy.lifetime)?;
                shared.set_cert(&cert);
                tracing::info!(identity = %config.identity, "renewed an in-process component's certificate");
            }
        }
        Ok(())
    }

    /// The earliest renewal point among everything this peer renews.
    fn next_due(&self) -> Option<OffsetDateTime> {
        let mut due = self.policy.due(&self.current().cert_pem);
        let mut consider = |t: Option<OffsetDateTime>| {
            if let Some(t) = t {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        };
        if let Ok(admin) = ClientConfig::load(&self.paths.admin) {
            consider(self.policy.due(&admin.client_cert));
        }
        for shared in self
            .components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            consider(self.policy.due(&shared.get().client_cert));
        }
        due
    }

    /// Renews whatever is due and swaps a new peer certificate into `users`.
    fn renew_due(&self, users: &Users) -> Result<()> {
        let now = OffsetDateTime::now_utc();
        if self.policy.is_due(&self.current().cert_pem, now) {
            let cert = self.renew_own()?;
            users
                .endpoint
                .set_server_config(Some(quic_server_config(&self.ca.cert_pem, &cert)?));
            users
                .net
                .set_client_config(quic_peer_client_config(&self.ca.cert_pem, &cert)?);
            users.api.set_peer_cert(cert);
        }
        self.renew_components_if_due(now)?;
        self.renew_admin_if_due(now)
    }
}

/// Renews this peer's certificates at their renewal points, forever (or
/// returns at once when renewal is off).
pub(crate) async fn run(certs: Arc<PeerCerts>, users: Users) {
    let mut failures: u32 = 0;
    loop {
        let Some(due) = certs.next_due() else {
            return;
        };
        let wait = due - OffsetDateTime::now_utc();
        if wait.is_positive() {
            tokio::time::sleep(wait.try_into().unwrap_or(Duration::ZERO)).await;
        }
        match certs.renew_due(&users) {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let expires = CertInfo::from_pem(&certs.current().cert_pem)
                    .map(|i| i.not_after_rfc3339())
                    .unwrap_or_default();
                tracing::warn!(error = %e, identity = %certs.identity, %expires, "certificate renewal failed; retrying");
                // Soon, but not in a tight loop on a persistent failure
                // (a full disk).
                let delay = Duration::from_millis(500 * u64::from(failures.min(60)));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The QUIC server side of a peer: both ALPNs, with `cert`.
pub(crate) fn quic_server_config(ca_pem: &str, cert: &IssuedCert) -> Result<quinn::ServerConfig> {
    let server_tls = tls::server_config(ca_pem, cert, &[ALPN_API, ALPN_RAFT])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| ServerError::unusable("tls", e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(flotilla_client::transport_config());
    Ok(config)
}

/// The QUIC client side raft dials other peers with.
pub(crate) fn quic_peer_client_config(
    ca_pem: &str,
    cert: &IssuedCert,
) -> Result<quinn::ClientConfig> {
    let peer_tls = tls::client_config(ca_pem, Some(cert), ALPN_RAFT, tls::ServerIdentity::AnyPeer)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(peer_tls)
        .map_err(|e| ServerError::unusable("tls", e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(flotilla_client::transport_config());
    Ok(config)
}

/// Writes `admin.config`: a `user:admin` certificate for `lifetime` and the
/// address of `server`.
pub(crate) fn write_admin_config(
    ca: &CertificateAuthority,
    path: &std::path::Path,
    server: &str,
    lifetime: time::Duration,
) -> Result<()> {
    let admin = ca.issue_for("user:admin", &[], lifetime)?;
    let config = ClientConfig {
        server: server.to_string(),
        identity: "user:admin".into(),
        ca_cert: ca.cert_pem.clone(),
        client_cert: admin.cert_pem,
        client_key: admin.key_pem,
    };
    config.save(path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(dir: &std::path::Path, lifetime: time::Duration, renew_at: RenewAt) -> PeerCerts {
        let ca = CertificateAuthority::generate("test").unwrap();
        let cert = ca.issue_for("peer:1", &[], lifetime).unwrap();
        PeerCerts::new(
            ca,
            1,
            "127.0.0.1:7443",
            cert,
            CertPaths {
                cert: dir.join("peer.crt"),
                key: dir.join("peer.key"),
                admin: dir.join("admin.config"),
            },
            CertPolicy { lifetime, renew_at },
        )
    }

    #[test]
    fn lifetimes_out_of_range_are_refused() {
        for bad in [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_secs(3651 * 86400),
        ] {
            let err = CertPolicy::new(bad, RenewAt::default()).unwrap_err();
            assert!(err.to_string().contains("--cert-lifetime"), "{err}");
        }
        CertPolicy::new(Duration::from_secs(365 * 86400), RenewAt::default()).unwrap();
    }

    #[test]
    fn prepare_renews_what_is_due_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let year = time::Duration::days(365);
        let fresh = certs(dir.path(), year, RenewAt::default());
        let before = fresh.current();
        fresh.prepare().unwrap();
        assert_eq!(fresh.current().cert_pem, before.cert_pem, "not due yet");
        let admin = ClientConfig::load(&dir.path().join("admin.config")).unwrap();
        assert!(admin.check_certificate(None).is_ok());
        let due = fresh.next_due().unwrap();
        assert!(due > OffsetDateTime::now_utc() + time::Duration::days(200));

        // A certificate whose key is not its own is issued again.
        let torn = certs(dir.path(), year, RenewAt::default());
        let other = torn.ca.issue("peer:1", &[]).unwrap();
        *torn.current.lock().unwrap() = IssuedCert {
            cert_pem: before.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        torn.prepare().unwrap();
        let healed = torn.current();
        assert!(tls::cert_matches_key(&healed.cert_pem, &healed.key_pem).unwrap());
        let on_disk = std::fs::read_to_string(dir.path().join("peer.crt")).unwrap();
        assert_eq!(on_disk, healed.cert_pem);

        // Renewal off: an expired certificate stays.
        let off = certs(dir.path(), time::Duration::SECOND, RenewAt::OFF);
        std::thread::sleep(Duration::from_millis(1100));
        let before = off.current();
        off.prepare().unwrap();
        assert_eq!(off.current().cert_pem, before.cert_pem);
        assert_eq!(off.next_due(), None);
    }
}

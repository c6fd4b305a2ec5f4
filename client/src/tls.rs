//! TLS identities: certificates for peers, nodes and users as their holders
//! see them (key pairs, CSRs, what a certificate says about itself), and the
//! rustls configurations every Flotilla endpoint uses. Signing is the
//! orchestrator's (`flotilla_orchestrator::ca`).
//!
//! Every identity is a certificate signed by the cluster CA whose common name is the
//! identity (`user:admin`, `peer:2`, `node:edge-1`, `component:scheduler`). A joiner
//! that has no certificate yet pins the CA by the SHA-256 of its DER encoding, the
//! hash a join token carries.

use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The server name every Flotilla server certificate carries, so clients can dial
/// any address and still verify the peer against the cluster CA.
pub const SERVER_NAME: &str = "flotilla";

/// ALPN of the client-facing API protocol.
pub const ALPN_API: &[u8] = b"flotilla-api/1";
/// ALPN of the store's peer-to-peer raft protocol.
pub const ALPN_RAFT: &[u8] = b"flotilla-raft/1";
/// ALPN of a node's own listener (logs and port-forwards proxied by apiservers).
pub const ALPN_NODE: &[u8] = b"flotilla-node/1";
/// ALPN of the tunnel between nodes (service and instance traffic; version 2
/// carries HTTP/1.1 on each stream).
pub const ALPN_TUNNEL: &[u8] = b"flotilla-tunnel/2";

/// Errors from certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key could not be made or parsed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// PEM text held no certificate or key.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("tls client verifier: {0}")]
    Verifier(String),
    /// A certificate lifetime out of range.
    #[error("certificate lifetime {0} is out of range (more than zero, at most 3650 days)")]
    Lifetime(time::Duration),
    /// A certificate's validity period could not be read.
    #[error("certificate: {0}")]
    Parse(String),
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

/// Makes a key pair and a CSR for it; returns (key PEM, CSR PEM).
pub fn generate_csr(identity: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// SHA-256 of the first certificate in `pem`, lowercase hex.
pub fn ca_fingerprint(pem: &str) -> Result<String> {
    let der = first_cert(pem)?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>> {
    certs_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem("no certificate found".into()))
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))
}

/// The identity (common name) a certificate carries, if it parses.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Seconds until a certificate expires (negative once it has).
pub fn seconds_until_expiry(cert_pem: &str) -> Result<i64> {
    let info = CertInfo::from_pem(cert_pem)?;
    Ok(info.not_after.unix_timestamp() - time::OffsetDateTime::now_utc().unix_timestamp())
}

/// Whether the certificate in `cert_pem` is for the private key in `key_pem`.
pub fn cert_matches_key(cert_pem: &str, key_pem: &str) -> Result<bool> {
    let der = first_cert(cert_pem)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    let key = KeyPair::from_pem(key_pem)?;
    Ok(parsed.public_key().raw == key.public_key_der().as_slice())
}

// === certificate lifetimes ===

/// What a certificate says about itself: who holds it and when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The identity (common name), e.g. `peer:1`, `node:edge-1`.
    pub identity: String,
    /// The groups the CA put the holder in: its organization fields, each a
    /// comma-separated list.
    pub groups: Vec<String>,
    /// Valid from.
    pub not_before: time::OffsetDateTime,
    /// Valid until.
    pub not_after: time::OffsetDateTime,
}

/// Where a certificate stands at some moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Before its `not_before`.
    NotYetValid,
    /// Within its validity period.
    Valid,
    /// After its `not_after`.
    Expired,
}

impl CertInfo {
    /// Reads the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::from_der(first_cert(pem)?.as_ref())
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse(e.to_string()))?;
        let identity = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let groups = parsed
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .flat_map(|o| o.split(','))
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        let validity = parsed.validity();
        Ok(Self {
            identity,
            groups,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
        })
    }

    /// Where the certificate stands at `now`.
    pub fn validity_at(&self, now: time::OffsetDateTime) -> Validity {
        if now < self.not_before {
            Validity::NotYetValid
        } else if now > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// What is wrong with the certificate at `now`, as the end of a sentence
    /// (`expired at 2025-01-01T00:00:00Z`), or `None` while it is valid.
    pub fn problem_at(&self, now: time::OffsetDateTime) -> Option<String> {
        match self.validity_at(now) {
            Validity::Valid => None,
            Validity::Expired => Some(format!("expired at {}", self.not_after_rfc3339())),
            Validity::NotYetValid => Some(format!(
                "is not valid until {} (is this machine's clock right? it says {})",
                flotilla_api::meta::format_timestamp(self.not_before),
                flotilla_api::meta::format_timestamp(now)
            )),
        }
    }

    /// The end of the validity period, RFC 3339.
    pub fn not_after_rfc3339(&self) -> String {
        flotilla_api::meta::format_timestamp(self.not_after)
    }

    /// The length of the validity period.
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.not_before
    }
}

/// When certificates are renewed: once a fraction of their validity period
/// has passed (default two thirds, `0.667`), or never (`off`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenewAt(Option<f64>);

/// The default renewal point: two thirds of a certificate's validity period.
pub const DEFAULT_RENEW_AT: f64 = 0.667;

impl Default for RenewAt {
    fn default() -> Self {
        RenewAt(Some(DEFAULT_RENEW_AT))
    }
}

impl RenewAt {
    /// Never renew.
    pub const OFF: RenewAt = RenewAt(None);

    /// Renew at `fraction` of the validity period; `None` unless it lies
    /// strictly between 0 and 1.
    pub fn fraction(fraction: f64) -> Option<Self> {
        (fraction > 0.0 && fraction < 1.0).then_some(RenewAt(Some(fraction)))
    }

    /// Whether renewal is on.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// When `cert` is due for renewal; `None` when renewal is off.
    pub fn due(&self, cert: &CertInfo) -> Option<time::OffsetDateTime> {
        let fraction = self.0?;
        Some(cert.not_before + cert.lifetime() * fraction)
    }
}

impl std::str::FromStr for RenewAt {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let text = s.trim();
        if text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("never") {
            return Ok(RenewAt::OFF);
        }
        let (number, scale) = match text.strip_suffix('%') {
            Some(n) => (n, 100.0),
            None => (text, 1.0),
        };
        number
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|f| RenewAt::fraction(f / scale))
            .ok_or_else(|| {
                format!("{s:?} is not a renewal point (expected a fraction between 0 and 1 such as 0.667, a percentage such as 67%, or off)")
            })
    }
}

impl std::fmt::Display for RenewAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(fraction) => write!(f, "{fraction}"),
            None => f.write_str("off"),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Server side: presents `cert` (plus the CA, so pinned joiners can see it), and
/// verifies client certificates against the CA. Clients without a certificate are
/// let through the handshake so they can join; what they may do is decided per
/// request from their (absent) identity.
pub fn server_config(
    ca_pem: &str,
    cert: &IssuedCert,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut chain = certs_from_pem(&cert.cert_pem)?;
    chain.extend(certs_from_pem(ca_pem)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_from_pem(&cert.key_pem)?)?;
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// Who a client means to reach: every certificate the CA signs is valid
/// for the same server name, so the identity in it is what tells a store
/// peer from a node, and one node from another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerIdentity {
    /// A store peer (`peer:N`): the apiserver, or raft.
    AnyPeer,
    /// This node (`node:NAME`): its tunnel or its listener.
    Node(String),
}

impl ServerIdentity {
    fn accepts(&self, identity: &str) -> bool {
        match self {
            ServerIdentity::AnyPeer => identity
                .strip_prefix("peer:")
                .is_some_and(|n| n.parse::<u64>().is_ok()),
            ServerIdentity::Node(name) => identity.strip_prefix("node:") == Some(name.as_str()),
        }
    }
}

impl std::fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerIdentity::AnyPeer => f.write_str("a store peer (peer:N)"),
            ServerIdentity::Node(name) => write!(f, "node:{name}"),
        }
    }
}

/// Client side with a certificate, verifying the server against the CA and
/// that it is `server`.
pub fn client_config(
    ca_pem: &str,
    cert: Option<&IssuedCert>,
    alpn: &[u8],
    server: ServerIdentity,
) -> Result<rustls::ClientConfig> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        provider(),
    )
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(IdentityVerifier {
        inner,
        expected: server,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(cert) => builder.with_client_auth_cert(
            certs_from_pem(&cert.cert_pem)?,
            key_from_pem(&cert.key_pem)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Client side for a joiner: no certificate of its own, and the server is trusted
/// only if its chain includes a CA whose fingerprint is `ca_sha256` and the server
/// certificate verifies against that CA.
pub fn pinned_client_config(ca_sha256: &str, alpn: &[u8]) -> Result<rustls::ClientConfig> {
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_sha256.to_ascii_lowercase(),
        provider: provider(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The CA's verdict on the chain, then the identity in the certificate.
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: ServerIdentity,
}

/// Refuses `end_entity` unless it names `expected`.
fn check_identity(
    end_entity: &CertificateDer<'_>,
    expected: &ServerIdentity,
) -> std::result::Result<(), rustls::Error> {
    let identity = identity_of(end_entity).unwrap_or_default();
    if expected.accepts(&identity) {
        Ok(())
    } else {
        Err(rustls::Error::General(format!(
            "the server presented the certificate of {}, not of {expected}: it is not the server this client means to reach",
            if identity.is_empty() { "no identity" } else { &identity }
        )))
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_identity(end_entity, &self.expected)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the fingerprint in the join token".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(pinned.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        check_identity(end_entity, &ServerIdentity::AnyPeer)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The identity of the client on an established QUIC connection, if it presented
/// a certificate (the handshake already verified it against the CA).
pub fn connection_identity(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    identity_of(certs.first()?)
}

/// The certificate the other end of an established QUIC connection presented:
/// a server's on a client connection, a client's (if any) on a server one.
pub fn connection_certificate(conn: &quinn::Connection) -> Option<CertInfo> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    CertInfo::from_der(certs.first()?.as_ref()).ok()
}

/// The TLS alert a verifier sends for a certificate outside its validity
/// period (expired or not yet valid).
pub fn certificate_expired_alert() -> u8 {
    u8::from(rustls::AlertDescription::CertificateExpired)
}

/// Where [`capturing_client_config`] puts the certificate the server showed.
pub type CapturedCert = Arc<std::sync::Mutex<Option<CertificateDer<'static>>>>;

/// Client side that only looks: it records the certificate the server presents
/// and then fails the handshake, so nothing is ever sent over the connection.
/// Used after a failed handshake to say which certificate failed and why.
pub fn capturing_client_config(alpns: &[Vec<u8>]) -> Result<(rustls::ClientConfig, CapturedCert)> {
    let captured = CapturedCert::default();
    let verifier = Arc::new(CapturingVerifier {
        captured: captured.clone(),
        provider: provider(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpns.to_vec();
    Ok((config, captured))
}

#[derive(Debug)]
struct CapturingVerifier {
    captured: CapturedCert,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for CapturingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        *self.captured.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(end_entity.clone().into_owned());
        Err(rustls::Error::General(
            "the certificate was only read, not trusted".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_points_parse_as_fractions_percentages_or_off() {
        assert_eq!("0.5".parse::<RenewAt>().unwrap(), RenewAt(Some(0.5)));
        assert_eq!("75%".parse::<RenewAt>().unwrap(), RenewAt(Some(0.75)));
        assert_eq!("off".parse::<RenewAt>().unwrap(), RenewAt::OFF);
        for bad in ["0", "1", "1.5", "-0.2", "abc", "", "100%"] {
            let err = bad.parse::<RenewAt>().unwrap_err();
            assert!(err.contains("renewal point"), "{bad}: {err}");
        }
        assert_eq!(RenewAt::default().to_string(), "0.667");
        assert_eq!(RenewAt::OFF.to_string(), "off");
    }
}

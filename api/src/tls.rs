//! TLS identities: the cluster CA, certificates for peers, nodes and users, and the
//! rustls configurations every Flotilla endpoint uses.
//!
//! Every identity is a certificate signed by the cluster CA whose common name is the
//! identity (`user:admin`, `peer:2`, `node:edge-1`, `component:scheduler`). A joiner
//! that has no certificate yet pins the CA by the SHA-256 of its DER encoding, the
//! hash a join token carries.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
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
/// ALPN of the tunnel between nodes (service and instance traffic).
pub const ALPN_TUNNEL: &[u8] = b"flotilla-tunnel/1";

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
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// Default lifetime of issued certificates.
pub const DEFAULT_CERT_LIFETIME: time::Duration = time::Duration::days(365);

/// The cluster certificate authority: its certificate and private key as PEM.
#[derive(Clone)]
pub struct CertificateAuthority {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, PEM.
    pub key_pem: String,
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

impl CertificateAuthority {
    /// Makes a new CA with a ten-year lifetime.
    pub fn generate(cluster_name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("flotilla-ca:{cluster_name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The SHA-256 of the CA certificate's DER encoding, lowercase hex: what a join
    /// token pins.
    pub fn fingerprint(&self) -> Result<String> {
        ca_fingerprint(&self.cert_pem)
    }

    /// Issues a certificate for `identity` with a fresh key pair.
    pub fn issue(&self, identity: &str, addrs: &[IpAddr]) -> Result<IssuedCert> {
        let key = KeyPair::generate()?;
        let cert_pem = self.sign(identity, addrs, &key, DEFAULT_CERT_LIFETIME)?;
        Ok(IssuedCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `identity` over the public key in a PEM CSR. The
    /// subject the CSR asks for is ignored: the CA decides who the holder is.
    pub fn sign_csr(&self, csr_pem: &str, identity: &str, addrs: &[IpAddr]) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.sign(identity, addrs, &csr.public_key, DEFAULT_CERT_LIFETIME)
    }

    fn sign(
        &self,
        identity: &str,
        addrs: &[IpAddr],
        public_key: &impl rcgen::PublicKeyData,
        lifetime: time::Duration,
    ) -> Result<String> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let ca_params = CertificateParams::from_ca_cert_pem(&self.cert_pem)?;
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        params
            .subject_alt_names
            .push(SanType::DnsName("localhost".try_into()?));
        for addr in addrs {
            params.subject_alt_names.push(SanType::IpAddress(*addr));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + lifetime;
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut serial[..]);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        Ok(params.signed_by(public_key, &ca_cert, &ca_key)?.pem())
    }
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
    let der = first_cert(cert_pem)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let not_after = parsed.validity().not_after.timestamp();
    Ok(not_after - time::OffsetDateTime::now_utc().unix_timestamp())
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

/// Client side with a certificate, verifying the server against the CA.
pub fn client_config(
    ca_pem: &str,
    cert: Option<&IssuedCert>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
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
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_cert_carries_identity_and_verifies() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let cert = ca.issue("peer:1", &["127.0.0.1".parse().unwrap()]).unwrap();
        let der = first_cert(&cert.cert_pem).unwrap();
        assert_eq!(identity_of(&der).as_deref(), Some("peer:1"));
        assert!(seconds_until_expiry(&cert.cert_pem).unwrap() > 360 * 86400);
        server_config(&ca.cert_pem, &cert, &[ALPN_API]).unwrap();
        client_config(&ca.cert_pem, Some(&cert), ALPN_API).unwrap();
    }

    #[test]
    fn csr_is_signed_with_the_identity_the_ca_chooses() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let (_key, csr) = generate_csr("user:mallory").unwrap();
        let pem = ca.sign_csr(&csr, "peer:7", &[]).unwrap();
        let der = first_cert(&pem).unwrap();
        assert_eq!(identity_of(&der).as_deref(), Some("peer:7"));
        assert_eq!(ca.fingerprint().unwrap().len(), 64);
    }
}

//! The cluster certificate authority: made at the first server start, held
//! by every store peer, and the only thing that signs certificates. Every
//! identity is a certificate it signed whose common name is the identity
//! (`user:admin`, `peer:2`, `node:edge-1`, `component:scheduler`).
//!
//! Must never: leave the control plane. Clients and nodes make key pairs and
//! CSRs (`flotilla_client::tls`); only the orchestrator signs.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use flotilla_client::tls::{ca_fingerprint, IssuedCert, TlsError, SERVER_NAME};

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// The cluster certificate authority: its certificate and private key as PEM.
#[derive(Clone)]
pub struct CertificateAuthority {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, PEM.
    pub key_pem: String,
}

/// Default lifetime of issued certificates.
pub const DEFAULT_CERT_LIFETIME: time::Duration = time::Duration::days(365);

/// Longest lifetime a certificate may be given: the CA's own (a certificate
/// cannot usefully outlive the authority that signed it).
pub const MAX_CERT_LIFETIME: time::Duration = time::Duration::days(3650);

/// How far before its issue a certificate becomes valid, so that a verifier
/// whose clock is a little behind accepts it: five minutes, or a tenth of a
/// short lifetime (tests use lifetimes of seconds).
fn backdate(lifetime: time::Duration) -> time::Duration {
    std::cmp::min(lifetime / 10_i32, time::Duration::minutes(5))
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

    /// Issues a certificate for `identity` with a fresh key pair, valid for
    /// [`DEFAULT_CERT_LIFETIME`].
    pub fn issue(&self, identity: &str, addrs: &[IpAddr]) -> Result<IssuedCert> {
        self.issue_for(identity, addrs, DEFAULT_CERT_LIFETIME)
    }

    /// Issues a certificate for `identity` with a fresh key pair, valid for
    /// `lifetime` from now.
    pub fn issue_for(
        &self,
        identity: &str,
        addrs: &[IpAddr],
        lifetime: time::Duration,
    ) -> Result<IssuedCert> {
        let key = KeyPair::generate()?;
        let cert_pem = self.sign(identity, &[], addrs, &key, lifetime)?;
        Ok(IssuedCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `identity` over the public key in a PEM CSR,
    /// valid for [`DEFAULT_CERT_LIFETIME`]. The subject the CSR asks for is
    /// ignored: the CA decides who the holder is.
    pub fn sign_csr(&self, csr_pem: &str, identity: &str, addrs: &[IpAddr]) -> Result<String> {
        self.sign_csr_for(csr_pem, identity, addrs, DEFAULT_CERT_LIFETIME)
    }

    /// [`sign_csr`](Self::sign_csr) with a lifetime.
    pub fn sign_csr_for(
        &self,
        csr_pem: &str,
        identity: &str,
        addrs: &[IpAddr],
        lifetime: time::Duration,
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.sign(identity, &[], addrs, &csr.public_key, lifetime)
    }

    /// Issues a user's client certificate over the public key in a PEM CSR:
    /// `identity` in the common name and `groups` in the organization field,
    /// which authorization reads as the user's groups. rcgen writes one value
    /// per attribute type, so the groups share one field, comma-separated
    /// (a group name holds no comma).
    pub fn sign_user_csr(
        &self,
        csr_pem: &str,
        identity: &str,
        groups: &[String],
        lifetime: time::Duration,
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.sign(identity, groups, &[], &csr.public_key, lifetime)
    }

    fn sign(
        &self,
        identity: &str,
        groups: &[String],
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
        // Every certificate is valid for the same server name, so the
        // identity in a SAN is what names the holder to other tools; clients
        // check it (`tls::ServerIdentity`).
        params
            .subject_alt_names
            .push(SanType::URI(format!("flotilla:{identity}").try_into()?));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity);
        if !groups.is_empty() {
            dn.push(DnType::OrganizationName, groups.join(","));
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if lifetime <= time::Duration::ZERO || lifetime > MAX_CERT_LIFETIME {
            return Err(TlsError::Lifetime(lifetime));
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - backdate(lifetime);
        params.not_after = now + lifetime;
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut serial[..]);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        Ok(params.signed_by(public_key, &ca_cert, &ca_key)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_client::tls::{
        cert_matches_key, certs_from_pem, client_config, generate_csr, identity_of,
        seconds_until_expiry, server_config, CertInfo, RenewAt, ServerIdentity, Validity, ALPN_API,
    };

    #[test]
    fn issued_cert_carries_identity_and_verifies() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let cert = ca.issue("peer:1", &["127.0.0.1".parse().unwrap()]).unwrap();
        let der = certs_from_pem(&cert.cert_pem).unwrap().remove(0);
        assert_eq!(identity_of(&der).as_deref(), Some("peer:1"));
        assert!(seconds_until_expiry(&cert.cert_pem).unwrap() > 360 * 86400);
        server_config(&ca.cert_pem, &cert, &[ALPN_API]).unwrap();
        client_config(&ca.cert_pem, Some(&cert), ALPN_API, ServerIdentity::AnyPeer).unwrap();
    }

    #[test]
    fn lifetimes_are_chosen_by_the_issuer_and_renewal_falls_inside_them() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let cert = ca
            .issue_for("node:a", &[], time::Duration::seconds(30))
            .unwrap();
        let info = CertInfo::from_pem(&cert.cert_pem).unwrap();
        assert_eq!(info.identity, "node:a");
        let now = time::OffsetDateTime::now_utc();
        assert!(info.not_after - now <= time::Duration::seconds(31));
        assert!(info.lifetime() < time::Duration::seconds(40), "{info:?}");
        assert_eq!(info.validity_at(now), Validity::Valid);
        assert!(info.problem_at(now).is_none());
        let later = info.not_after + time::Duration::seconds(1);
        assert_eq!(info.validity_at(later), Validity::Expired);
        assert!(info.problem_at(later).unwrap().starts_with("expired at "));
        let earlier = info.not_before - time::Duration::seconds(1);
        assert_eq!(info.validity_at(earlier), Validity::NotYetValid);

        let due = RenewAt::default().due(&info).unwrap();
        assert!(due > info.not_before && due < info.not_after);
        assert_eq!(RenewAt::OFF.due(&info), None);
        assert!(cert_matches_key(&cert.cert_pem, &cert.key_pem).unwrap());
        let other = ca.issue("node:a", &[]).unwrap();
        assert!(!cert_matches_key(&cert.cert_pem, &other.key_pem).unwrap());

        assert!(matches!(
            ca.issue_for("node:a", &[], time::Duration::ZERO),
            Err(TlsError::Lifetime(_))
        ));
        assert!(matches!(
            ca.issue_for("node:a", &[], time::Duration::days(4000)),
            Err(TlsError::Lifetime(_))
        ));
        let (_key, csr) = generate_csr("node:a").unwrap();
        let pem = ca
            .sign_csr_for(&csr, "node:a", &[], time::Duration::hours(1))
            .unwrap();
        let signed = CertInfo::from_pem(&pem).unwrap();
        assert!(signed.lifetime() <= time::Duration::minutes(66));
    }

    #[test]
    fn csr_is_signed_with_the_identity_the_ca_chooses() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let (_key, csr) = generate_csr("user:mallory").unwrap();
        let pem = ca.sign_csr(&csr, "peer:7", &[]).unwrap();
        let der = certs_from_pem(&pem).unwrap().remove(0);
        assert_eq!(identity_of(&der).as_deref(), Some("peer:7"));
        assert_eq!(ca.fingerprint().unwrap().len(), 64);
    }
}

//! Join tokens: what a new store peer (or, later, a node) presents to join, and the
//! fingerprint of the cluster CA it pins before trusting the server it talks to.
//!
//! Text form: `flt1.<ca-sha256-hex>.<id>.<secret>`. The id names the token on the
//! server; only a hash of the secret is stored there.

use sha2::{Digest, Sha256};

/// Errors parsing a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The text is not a Flotilla join token.
    #[error("malformed join token: {0} (expected flt1.<ca-sha256>.<id>.<secret>)")]
    Malformed(&'static str),
}

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca_sha256: String,
    /// Token id (16 hex characters).
    pub id: String,
    /// Token secret (32 hex characters).
    pub secret: String,
}

impl JoinToken {
    /// Makes a fresh random token for the CA with this fingerprint.
    pub fn generate(ca_sha256: &str) -> Self {
        let mut bytes = [0u8; 24];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
        Self {
            ca_sha256: ca_sha256.to_string(),
            id: hex::encode(&bytes[..8]),
            secret: hex::encode(&bytes[8..]),
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [version, ca, id, secret] = parts[..] else {
            return Err(TokenError::Malformed("wrong number of parts"));
        };
        if version != "flt1" {
            return Err(TokenError::Malformed("unknown version"));
        }
        let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(ca, 64) {
            return Err(TokenError::Malformed(
                "the CA fingerprint is not 64 hex characters",
            ));
        }
        if !is_hex(id, 16) || !is_hex(secret, 32) {
            return Err(TokenError::Malformed(
                "the id or secret is not hex of the right length",
            ));
        }
        Ok(Self {
            ca_sha256: ca.to_ascii_lowercase(),
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }

    /// SHA-256 of the secret, hex: what the server stores.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flt1.{}.{}.{}", self.ca_sha256, self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = JoinToken::generate(&"ab".repeat(32));
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        assert!(JoinToken::parse("flt1.zz.00.11").is_err());
        assert!(JoinToken::parse("hello").is_err());
        assert!(JoinToken::parse("").is_err());
    }
}

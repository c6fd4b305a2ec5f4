//! Joining: a new store peer or node presents a join token and a CSR and gets
//! a certificate for the identity the cluster chooses (`peer:N` with the next
//! free id, `node:NAME`); a node renews that certificate with itself, as the
//! kubelet rotates its client certificate.

use std::net::IpAddr;

use flotilla_client::token::JoinToken;
use flotilla_client::wire::{ApiError, ErrorCode, JoinedPeer, ResponseV1, TokenKind};

use super::authz::Caller;
use super::errors::{internal, ApiResult, Subject};
use super::keys;
use super::tokens;
use super::update::{Decision, Freshness};
use super::ApiServer;
use crate::store::Action;

fn refused(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, format!("join refused: {e}"))
}

fn bad_csr(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("csr: {e}"))
}

/// DNS-subdomain-shaped: lowercase labels of letters, digits and '-'.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl ApiServer {
    pub(super) async fn join_peer(
        &self,
        token: &str,
        address: &str,
        csr_pem: &str,
    ) -> ApiResult<ResponseV1> {
        let token = JoinToken::parse(token).map_err(refused)?;
        tokens::admit(&self.store, &token, TokenKind::Peer).await?;
        let ip: Option<IpAddr> = address.parse::<std::net::SocketAddr>().ok().map(|s| s.ip());
        let next_id = self.allocate_peer_id().await?;
        let addrs: Vec<IpAddr> = ip.into_iter().collect();
        let cert_pem = self
            .ca
            .sign_csr_for(
                csr_pem,
                &format!("peer:{next_id}"),
                &addrs,
                self.cert_lifetime,
            )
            .map_err(bad_csr)?;
        Ok(ResponseV1::Joined(JoinedPeer {
            id: next_id,
            cert_pem,
            ca_cert_pem: self.ca.cert_pem.clone(),
            ca_key_pem: self.ca.key_pem.clone(),
            cluster_name: self.cluster_name.clone(),
        }))
    }

    /// Hands out peer ids through the store, so concurrent joins never share one.
    async fn allocate_peer_id(&self) -> ApiResult<u64> {
        let subject = Subject::internal(keys::PEER_ID_KEY, "the next peer id");
        let outcome = self
            .guaranteed_update(&subject, None, Freshness::Lazy, |attempt| {
                let members_next = self.store.members().iter().map(|m| m.id).max().unwrap_or(0) + 1;
                let next = match attempt.stored {
                    Some(v) => {
                        let stored: u64 = postcard::from_bytes(&v.value).map_err(internal)?;
                        stored.max(members_next)
                    }
                    None => members_next,
                };
                Ok(Decision::Write {
                    action: Action::Put(postcard::to_allocvec(&(next + 1)).map_err(internal)?),
                    also: Vec::new(),
                    answer: next,
                })
            })
            .await?;
        Ok(outcome.answer)
    }

    pub(super) async fn join_node(
        &self,
        token: &str,
        name: &str,
        csr_pem: &str,
    ) -> ApiResult<ResponseV1> {
        if !valid_node_name(name) {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!("--name: \"{name}\" is not a valid node name (lowercase letters, digits, '-' and '.', at most 253 characters)"),
            ));
        }
        let token = JoinToken::parse(token).map_err(refused)?;
        tokens::admit(&self.store, &token, TokenKind::Node).await?;
        let cert_pem = self
            .ca
            .sign_csr_for(csr_pem, &format!("node:{name}"), &[], self.cert_lifetime)
            .map_err(bad_csr)?;
        Ok(ResponseV1::JoinedNode {
            cert_pem,
            ca_cert_pem: self.ca.cert_pem.clone(),
        })
    }

    /// Signs a new certificate for the identity the caller's connection
    /// proves, and only that one: `node:NAME` gets `node:NAME` (the router
    /// let only nodes through). Peers renew their own from the CA key they
    /// hold; other identities get new credentials from an operator.
    pub(super) fn renew_certificate(
        &self,
        caller: &Caller,
        csr_pem: &str,
    ) -> ApiResult<ResponseV1> {
        let identity = caller.name();
        let now = time::OffsetDateTime::now_utc();
        if let Some(not_after) = caller.cert_not_after().filter(|t| *t < now) {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "the certificate of {identity} on this connection expired at {}; join again with a new token",
                    flotilla_api::meta::format_timestamp(not_after)
                ),
            ));
        }
        let cert_pem = self
            .ca
            .sign_csr_for(csr_pem, identity, &[], self.cert_lifetime)
            .map_err(bad_csr)?;
        tracing::info!(%identity, "renewed a node certificate");
        Ok(ResponseV1::RenewedCertificate { cert_pem })
    }
}

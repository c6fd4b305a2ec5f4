//! Join tokens on the server side: only the secret's hash and the expiry are
//! stored, under the control plane's own keys.

use serde::{Deserialize, Serialize};

use crate::ca::CertificateAuthority;
use flotilla_client::token::JoinToken;
use flotilla_client::wire::{ApiError, ErrorCode};

use super::errors::store_error;
use super::keys::token_key;
use crate::store::{Action, Command, Op, Precondition, Store};

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    secret_sha256: String,
    expires_unix: i64,
}

/// Longest lifetime a token may be given (one year).
const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;

/// Makes and stores a token valid for `ttl_seconds`; returns its text.
pub async fn create(
    store: &Store,
    ca: &CertificateAuthority,
    ttl_seconds: u64,
) -> Result<String, ApiError> {
    if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!("ttl: {ttl_seconds}s is out of range (1s to {MAX_TTL_SECONDS}s)"),
        ));
    }
    let fingerprint = ca
        .fingerprint()
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let token = JoinToken::generate(&fingerprint);
    let record = TokenRecord {
        secret_sha256: token.secret_hash(),
        expires_unix: time::OffsetDateTime::now_utc().unix_timestamp() + ttl_seconds as i64,
    };
    let value = postcard::to_allocvec(&record)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    store
        .propose(Command {
            ops: vec![Op {
                key: token_key(&token.id),
                precondition: Precondition::Absent,
                action: Action::Put(value),
            }],
        })
        .await
        .map_err(store_error)?;
    Ok(token.to_string())
}

/// Checks a presented token against the stored ones.
pub async fn check(store: &Store, token: &JoinToken) -> Result<(), ApiError> {
    let refused =
        |why: &str| ApiError::new(ErrorCode::Unauthorized, format!("join refused: {why}"));
    store.read_barrier().await.map_err(store_error)?;
    let stored = store
        .reader()
        .get(&token_key(&token.id))
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .ok_or_else(|| {
            refused("the join token is unknown to this cluster (wrong cluster, or never created)")
        })?;
    let record: TokenRecord = postcard::from_bytes(&stored.value)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    if record.secret_sha256 != token.secret_hash() {
        return Err(refused("the join token's secret is wrong"));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if now >= record.expires_unix {
        let when = time::OffsetDateTime::from_unix_timestamp(record.expires_unix)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| record.expires_unix.to_string());
        return Err(refused(&format!(
            "the join token expired at {when}; create a new one with `flotilla token create`"
        )));
    }
    Ok(())
}

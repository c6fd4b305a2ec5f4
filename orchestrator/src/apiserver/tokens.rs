//! Join tokens on the server side: only the secret's hash, the kind, the
//! expiry and the uses are stored, under the control plane's own keys.
//!
//! A token admits one kind of joiner: a node token never joins a store peer
//! (which receives the CA key). A token limited to N uses admits N joins,
//! counted by compare-and-swap so concurrent joins cannot overspend it. A
//! revoked or used-up token stays as a tombstone until it expires, so a join
//! that presents it is told why it is refused; expired tokens are swept
//! whenever tokens are created or listed.

use serde::{Deserialize, Serialize};

use crate::ca::CertificateAuthority;
use flotilla_client::token::JoinToken;
use flotilla_client::wire::{ApiError, ErrorCode, TokenInfo, TokenKind};

use super::errors::{internal, store_error};
use super::keys::{token_key, TOKENS_PREFIX};
use crate::store::{Action, Command, Op, Precondition, Store, StoredValue};

/// A token as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TokenRecord {
    secret_sha256: String,
    expires_unix: i64,
    kind: TokenKind,
    /// Joins still allowed; `None` for any number.
    uses_left: Option<u32>,
    used: u32,
    revoked: bool,
}

/// A token as stored before tokens had kinds.
#[derive(Deserialize)]
struct UntypedRecord {
    secret_sha256: String,
    expires_unix: i64,
}

impl TokenRecord {
    fn decode(bytes: &[u8]) -> Result<Self, ApiError> {
        if let Ok(record) = postcard::from_bytes::<TokenRecord>(bytes) {
            return Ok(record);
        }
        let old: UntypedRecord = postcard::from_bytes(bytes).map_err(internal)?;
        Ok(TokenRecord {
            secret_sha256: old.secret_sha256,
            expires_unix: old.expires_unix,
            kind: TokenKind::Any,
            uses_left: None,
            used: 0,
            revoked: false,
        })
    }

    fn encode(&self) -> Result<Vec<u8>, ApiError> {
        postcard::to_allocvec(self).map_err(internal)
    }

    fn info(&self, id: &str) -> TokenInfo {
        TokenInfo {
            id: id.to_string(),
            kind: self.kind,
            expires_unix: self.expires_unix,
            uses_left: self.uses_left,
            used: self.used,
            revoked: self.revoked,
        }
    }
}

/// Longest lifetime a token may be given (one year).
const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;

/// Times a join retries spending a use when another join spent one first.
const SPEND_ATTEMPTS: usize = 16;

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Makes and stores a token of `kind`, valid for `ttl_seconds` and `uses`
/// joins (0: any number); returns its text.
pub async fn create(
    store: &Store,
    ca: &CertificateAuthority,
    kind: TokenKind,
    ttl_seconds: u64,
    uses: u32,
) -> Result<String, ApiError> {
    if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!("ttl: {ttl_seconds}s is out of range (1s to {MAX_TTL_SECONDS}s)"),
        ));
    }
    if kind == TokenKind::Any {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            "kind: must be node or peer",
        ));
    }
    let fingerprint = ca.fingerprint().map_err(internal)?;
    let token = JoinToken::generate(&fingerprint);
    let record = TokenRecord {
        secret_sha256: token.secret_hash(),
        expires_unix: now_unix() + ttl_seconds as i64,
        kind,
        uses_left: (uses > 0).then_some(uses),
        used: 0,
        revoked: false,
    };
    store
        .propose(Command {
            ops: vec![Op {
                key: token_key(&token.id),
                precondition: Precondition::Absent,
                action: Action::Put(record.encode()?),
            }],
        })
        .await
        .map_err(store_error)?;
    sweep(store).await;
    Ok(token.to_string())
}

/// Every stored token, expired ones removed first.
pub async fn list(store: &Store) -> Result<Vec<TokenInfo>, ApiError> {
    store.read_barrier().await.map_err(store_error)?;
    sweep(store).await;
    let mut out = Vec::new();
    for (key, stored) in store.reader().scan(TOKENS_PREFIX).map_err(internal)? {
        let id = key.trim_start_matches(TOKENS_PREFIX);
        out.push(TokenRecord::decode(&stored.value)?.info(id));
    }
    out.sort_by(|a, b| a.expires_unix.cmp(&b.expires_unix).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Removes expired tokens. Best effort: a token a sweep misses is still
/// refused as expired, and the next sweep takes it.
async fn sweep(store: &Store) {
    let Ok(items) = store.reader().scan(TOKENS_PREFIX) else {
        return;
    };
    let now = now_unix();
    for (key, stored) in items {
        let expired = TokenRecord::decode(&stored.value).is_ok_and(|r| now >= r.expires_unix);
        if expired {
            let removed = store
                .propose(Command {
                    ops: vec![Op {
                        key,
                        precondition: Precondition::ModRevision(stored.mod_revision),
                        action: Action::Delete,
                    }],
                })
                .await;
            if let Err(e) = removed {
                tracing::debug!(error = %e, "could not remove an expired join token");
            }
        }
    }
}

/// Revokes the token `id`: it admits no one from now on.
pub async fn revoke(store: &Store, id: &str) -> Result<(), ApiError> {
    for _ in 0..SPEND_ATTEMPTS {
        store.read_barrier().await.map_err(store_error)?;
        let Some(stored) = store.reader().get(&token_key(id)).map_err(internal)? else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("token {id:?} not found (see `flotilla token list`)"),
            ));
        };
        let mut record = TokenRecord::decode(&stored.value)?;
        if record.revoked {
            return Ok(());
        }
        record.revoked = true;
        if replace(store, id, &stored, &record).await? {
            tracing::info!(token = %id, "revoked a join token");
            return Ok(());
        }
    }
    Err(contended(id))
}

/// Writes `record` over `stored` if the token is still at its revision.
async fn replace(
    store: &Store,
    id: &str,
    stored: &StoredValue,
    record: &TokenRecord,
) -> Result<bool, ApiError> {
    let resp = store
        .propose(Command {
            ops: vec![Op {
                key: token_key(id),
                precondition: Precondition::ModRevision(stored.mod_revision),
                action: Action::Put(record.encode()?),
            }],
        })
        .await
        .map_err(store_error)?;
    Ok(resp.rejected.is_none())
}

fn contended(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("token {id} is being changed by many joins at once; try again"),
    )
}

/// Checks a presented token for a joiner of `kind` and spends one of its
/// uses.
pub async fn admit(store: &Store, token: &JoinToken, kind: TokenKind) -> Result<(), ApiError> {
    let refused =
        |why: String| ApiError::new(ErrorCode::Unauthorized, format!("join refused: {why}"));
    let id = &token.id;
    for _ in 0..SPEND_ATTEMPTS {
        store.read_barrier().await.map_err(store_error)?;
        let stored = store
            .reader()
            .get(&token_key(id))
            .map_err(internal)?
            .ok_or_else(|| {
                refused(
                    "the join token is unknown to this cluster (wrong cluster, never created, or expired and removed)"
                        .to_string(),
                )
            })?;
        let mut record = TokenRecord::decode(&stored.value)?;
        if record.secret_sha256 != token.secret_hash() {
            return Err(refused("the join token's secret is wrong".to_string()));
        }
        if record.revoked {
            return Err(refused(format!("join token {id} was revoked")));
        }
        if now_unix() >= record.expires_unix {
            return Err(refused(format!(
                "the join token expired at {}; create a new one with `flotilla token create`",
                rfc3339(record.expires_unix)
            )));
        }
        if record.kind != TokenKind::Any && record.kind != kind {
            return Err(refused(format!(
                "join token {id} is a {} token and cannot join a {kind}; create one with `flotilla token create --kind {kind}`",
                record.kind
            )));
        }
        record.used += 1;
        match record.uses_left {
            None => return Ok(()),
            Some(0) => {
                return Err(refused(format!(
                    "join token {id} is used up (it allowed {} join{})",
                    record.used - 1,
                    if record.used == 2 { "" } else { "s" }
                )))
            }
            Some(n) => record.uses_left = Some(n - 1),
        }
        if replace(store, id, &stored, &record).await? {
            return Ok(());
        }
    }
    Err(contended(id))
}

//! The apiserver's errors as callers see them: what failed, about which
//! object, and what to do. Every layer builds its errors here so that the same
//! mistake reads the same whichever verb or transport met it.

use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ApiError, ErrorCode};

use super::keys::key_for;
use crate::store::{Rejection, StoreError};

/// A result with an error a caller can read.
pub type ApiResult<T> = Result<T, ApiError>;

/// A store failure as an API error: no quorum and invalid commands keep their
/// codes, anything else is internal.
pub(super) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NoQuorum(msg) => ApiError::new(ErrorCode::NoQuorum, msg),
        StoreError::Invalid(msg) => ApiError::new(ErrorCode::Invalid, msg),
        other => ApiError::new(ErrorCode::Internal, other.to_string()),
    }
}

/// A failure that is the server's, not the caller's.
pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// A request that is not well formed.
pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// `instances "web" in namespace "default"`, `nodes "edge-1"`.
pub(super) fn describe(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        format!("{} \"{name}\" in namespace \"{namespace}\"", kind.plural())
    } else {
        format!("{} \"{name}\"", kind.plural())
    }
}

/// The object does not exist.
pub(super) fn not_found(kind: Kind, namespace: &str, name: &str) -> ApiError {
    Subject::object(kind, namespace, name).not_found()
}

/// The object breaks a rule; the message names every field.
pub(super) fn validate(obj: &Object) -> ApiResult<()> {
    obj.validate().map_err(|errs| {
        ApiError::new(
            ErrorCode::Invalid,
            format!(
                "{} \"{}\" is invalid: {errs}",
                obj.kind().as_str(),
                obj.meta().name
            ),
        )
    })
}

/// A resourceVersion as the revision it names (`None` when empty).
pub(super) fn parse_revision(rv: &str, field: &str) -> ApiResult<Option<u64>> {
    if rv.is_empty() {
        return Ok(None);
    }
    rv.parse::<u64>().map(Some).map_err(|_| {
        ApiError::new(
            ErrorCode::Invalid,
            format!("{field}: \"{rv}\" is not a resourceVersion (expected a decimal revision)"),
        )
    })
}

/// What a write is about: its store key and how messages name it.
#[derive(Clone, Debug)]
pub(super) struct Subject {
    /// The store key.
    pub key: String,
    /// `instances "web" in namespace "default"`.
    pub description: String,
}

impl Subject {
    /// An object.
    pub fn object(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            key: key_for(kind, namespace, name),
            description: describe(kind, namespace, name),
        }
    }

    /// A key of the apiserver's own (peer ids, tokens).
    pub fn internal(key: &str, description: &str) -> Self {
        Self {
            key: key.to_string(),
            description: description.to_string(),
        }
    }

    /// It does not exist.
    pub fn not_found(&self) -> ApiError {
        ApiError::new(
            ErrorCode::NotFound,
            format!("{} not found", self.description),
        )
    }

    /// It changed under the caller.
    pub fn conflict(&self, detail: &str) -> ApiError {
        ApiError::new(
            ErrorCode::Conflict,
            format!(
                "conflict: {} was modified since it was read ({detail}); get it again and reapply your change",
                self.description
            ),
        )
    }

    /// A refused commit as the caller's error.
    pub fn rejected(&self, r: Rejection) -> ApiError {
        match r {
            Rejection::Exists { .. } => ApiError::new(
                ErrorCode::AlreadyExists,
                format!("{} already exists", self.description),
            ),
            Rejection::Missing { .. } => self.not_found(),
            Rejection::Conflict {
                expected, actual, ..
            } => self.conflict(&format!(
                "resourceVersion {expected} was given, the object is at {actual}"
            )),
        }
    }
}

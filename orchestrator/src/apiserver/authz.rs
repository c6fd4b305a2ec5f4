//! Who may do what: every rule that depends on the caller, in one place. The
//! router asks [`authorize`] before anything is read or written, for every
//! request kind and whichever transport carried it; the verbs ask
//! [`check_mirror`] about the object they are about to change.
//!
//! Today's rules: a caller without a certificate may only join, ask who it is
//! and read the clock; any certificate of the cluster CA may do anything
//! else, except that only a node renews its certificate here, only `peer:N`
//! adds peer N, and only a node changes the mirrors of its static instances.

use flotilla_api::object::Object;
use flotilla_client::tls::CertInfo;
use flotilla_client::wire::{ApiError, ErrorCode, RequestV1};

use super::errors::ApiResult;

/// Who is calling, as the transport authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The certificate's identity (`user:admin`, `node:edge-1`, `peer:2`);
    /// `None` for an anonymous caller.
    identity: Option<String>,
    /// When the certificate the caller presented expires (a connection may
    /// outlive its certificate).
    cert_not_after: Option<time::OffsetDateTime>,
}

impl Caller {
    /// No certificate: may only join.
    pub fn anonymous() -> Self {
        Self {
            identity: None,
            cert_not_after: None,
        }
    }

    /// A certificate of the cluster CA with this identity.
    pub fn identity(name: &str) -> Self {
        Self {
            identity: Some(name.to_string()),
            cert_not_after: None,
        }
    }

    /// Whoever presented `cert` (the handshake verified it against the CA).
    pub fn from_certificate(cert: Option<CertInfo>) -> Self {
        match cert {
            Some(c) if !c.identity.is_empty() => Self {
                identity: Some(c.identity),
                cert_not_after: Some(c.not_after),
            },
            _ => Self::anonymous(),
        }
    }

    /// The identity, `""` when anonymous.
    pub fn name(&self) -> &str {
        self.identity.as_deref().unwrap_or("")
    }

    /// When the presented certificate expires, if one was.
    pub fn cert_not_after(&self) -> Option<time::OffsetDateTime> {
        self.cert_not_after
    }
}

fn needs_identity(caller: &Caller, what: &str) -> ApiResult<()> {
    match caller.identity {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("{what} needs a client certificate signed by the cluster CA; anonymous callers may only join"),
        )),
    }
}

/// Whether `caller` may make `req` at all.
pub(super) fn authorize(caller: &Caller, req: &RequestV1) -> ApiResult<()> {
    match req {
        RequestV1::JoinPeer { .. }
        | RequestV1::JoinNode { .. }
        | RequestV1::WhoAmI
        | RequestV1::Clock => Ok(()),
        RequestV1::RenewCertificate { .. } => {
            let Some(identity) = &caller.identity else {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "renewing a certificate needs the current certificate: anonymous callers may only join",
                ));
            };
            if !identity.starts_with("node:") {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "only nodes renew their certificates through the apiserver; {identity} cannot"
                    ),
                ));
            }
            Ok(())
        }
        RequestV1::AddPeer { id, .. } => {
            needs_identity(caller, "this request")?;
            if caller.name() != format!("peer:{id}") {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "only peer:{id} may add itself; the caller is {}",
                        caller.name()
                    ),
                ));
            }
            Ok(())
        }
        RequestV1::Watch { .. } => needs_identity(caller, "watch"),
        _ => needs_identity(caller, "this request"),
    }
}

/// Mirror objects of static instances belong to their node: only it may change
/// or remove them; everyone else changes the manifest on the node.
pub(super) fn check_mirror(caller: &Caller, current: &Object) -> ApiResult<()> {
    let Object::Instance(i) = current else {
        return Ok(());
    };
    if !i
        .metadata
        .annotations
        .contains_key(flotilla_api::instance::MIRROR_ANNOTATION)
    {
        return Ok(());
    }
    if caller.name() == format!("node:{}", i.spec.node_name) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "instance \"{}\" mirrors a static instance of node \"{}\" and is read-only; change the manifest in that node's --manifests-dir",
            i.metadata.name, i.spec.node_name
        ),
    ))
}

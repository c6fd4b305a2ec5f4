//! Users and what they may do: signing a user's client certificate
//! (`flotilla user create`) and answering access reviews (`flotilla auth
//! can-i`, `auth whoami`). A user exists only as a certificate the CA
//! signed: `user:NAME` in its common name, its groups in its organization.

use flotilla_api::object::Kind;
use flotilla_api::rbac::{is_resource, Attributes, CLUSTER_RESOURCES, VERBS};
use flotilla_api::validation::is_dns1123_subdomain;
use flotilla_client::wire::{ApiError, ErrorCode, ResponseV1};

use super::authz::{self, roles, Caller};
use super::errors::ApiResult;
use super::ApiServer;
use crate::ca::MAX_CERT_LIFETIME;

/// Most groups one user certificate may name.
const MAX_GROUPS: usize = 32;

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Invalid, format!("{field}: {message}"))
}

/// A group name: lowercase letters, digits, '-', '.' and ':' (as in
/// `system:masters`), starting and ending with a letter or digit, at most 63.
fn valid_group(group: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    group.len() <= 63
        && edge(group.chars().next())
        && edge(group.chars().last())
        && group
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'))
}

impl ApiServer {
    /// Signs `user:NAME`'s certificate over the CSR's key, in `groups`,
    /// valid for `ttl_seconds` (the router let only those allowed `create`
    /// on `users` through).
    pub(super) fn sign_user(
        &self,
        name: String,
        groups: Vec<String>,
        csr_pem: String,
        ttl_seconds: u64,
    ) -> ApiResult<ResponseV1> {
        let component = [roles::SCHEDULER, roles::CONTROLLERS].contains(&name.as_str());
        if !component && !is_dns1123_subdomain(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} is not a valid user name (lowercase letters, digits, '-' and '.', at most 253 characters; or {} or {} for a component run on its own)", roles::SCHEDULER, roles::CONTROLLERS),
            ));
        }
        if groups.len() > MAX_GROUPS {
            return Err(invalid(
                "--group",
                format!("{} groups, at most {MAX_GROUPS}", groups.len()),
            ));
        }
        if let Some(bad) = groups.iter().find(|g| !valid_group(g)) {
            return Err(invalid(
                "--group",
                format!("{bad:?} is not a valid group name (lowercase letters, digits, '-', '.' and ':', at most 63 characters)"),
            ));
        }
        let max = MAX_CERT_LIFETIME.whole_seconds() as u64;
        if ttl_seconds == 0 || ttl_seconds > max {
            return Err(invalid(
                "--ttl",
                format!("must be between 1s and {}h, got {ttl_seconds}s", max / 3600),
            ));
        }
        let lifetime = time::Duration::seconds(ttl_seconds as i64);
        let identity = if component {
            name
        } else {
            format!("user:{name}")
        };
        let cert_pem = self
            .ca
            .sign_user_csr(&csr_pem, &identity, &groups, lifetime)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("csr: {e}")))?;
        tracing::info!(%identity, ?groups, ttl_seconds, "signed a user certificate");
        Ok(ResponseV1::UserCertificate { cert_pem })
    }

    /// Whether `identity` in `groups` (the caller when `identity` is empty)
    /// may `verb` on `resource` in `namespace`, named `name`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn review_access(
        &self,
        caller: &Caller,
        identity: String,
        groups: Vec<String>,
        verb: String,
        resource: String,
        namespace: String,
        name: String,
    ) -> ApiResult<ResponseV1> {
        let subject = if identity.is_empty() {
            caller.clone()
        } else {
            Caller::with_groups(&identity, &groups)
        };
        let Some(verb) = VERBS.iter().copied().find(|v| *v == verb) else {
            return Err(invalid(
                "verb",
                format!(
                    "{verb:?} is not a verb (expected one of {})",
                    VERBS.join(", ")
                ),
            ));
        };
        if !is_resource(&resource) || resource == "*" {
            return Err(invalid(
                "resource",
                format!("{resource:?} is not a resource (a kind such as instances, a subresource such as instances/logs, or tokens, members, users)"),
            ));
        }
        let kind = resource.split('/').next().unwrap_or_default();
        let cluster_scoped = CLUSTER_RESOURCES.contains(&kind)
            || Kind::ALL
                .iter()
                .any(|k| k.plural() == kind && !k.namespaced());
        let attrs = Attributes {
            verb,
            namespace: if cluster_scoped {
                String::new()
            } else {
                namespace
            },
            resource,
            name,
        };
        let (allowed, reason) = authz::review(&subject, &attrs, &self.rbac.current());
        Ok(ResponseV1::Access { allowed, reason })
    }
}

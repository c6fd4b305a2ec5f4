//! Who may do what: every rule that depends on the caller, in one place. The
//! router asks [`authorize`] before anything is read or written, for every
//! request kind and whichever transport carried it; the verbs ask
//! [`check_current`] about the object they are about to read or change.
//!
//! A request is described by its [`Attributes`] (`attributes.rs`): a verb on
//! a resource, in a namespace, on a name. A caller without a certificate may
//! only join, ask who it is and read the clock. A node is held to what it
//! runs (`node.rs`); everyone else is allowed what the roles bound to it
//! grant (`roles.rs`), and nothing when it is bound to none. Only a node
//! renews its certificate here, only `peer:N` adds peer N, and only a node
//! changes the mirrors of its static instances.
//!
//! Roles are granted by the built-in bindings (`roles.rs`) and by the stored
//! RoleBindings and ClusterRoleBindings (`bindings.rs`). Whoever writes a
//! Role, a ClusterRole or a binding must already hold every permission it
//! grants, where it grants it (Kubernetes' escalation check): `edit` in one
//! namespace cannot make itself `cluster-admin` there.

mod attributes;
pub mod bindings;
mod node;
pub mod roles;

use flotilla_api::object::Object;
use flotilla_api::rbac::{static_verb, Attributes, PolicyRule};
use flotilla_client::tls::CertInfo;
use flotilla_client::wire::{ApiError, ErrorCode, RequestV1};

use super::errors::ApiResult;
use bindings::Bindings;

/// Who is calling, as the transport authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The certificate's identity (`user:admin`, `node:edge-1`, `peer:2`);
    /// `None` for an anonymous caller.
    identity: Option<String>,
    /// The groups the certificate names, and those the identity implies
    /// (`system:masters` for `user:admin`, `system:nodes` for nodes, …).
    groups: Vec<String>,
    /// When the certificate the caller presented expires (a connection may
    /// outlive its certificate).
    cert_not_after: Option<time::OffsetDateTime>,
}

impl Caller {
    /// No certificate: may only join.
    pub fn anonymous() -> Self {
        Self {
            identity: None,
            groups: Vec::new(),
            cert_not_after: None,
        }
    }

    /// A certificate of the cluster CA with this identity.
    pub fn identity(name: &str) -> Self {
        Self::with_groups(name, &[])
    }

    /// A certificate of the cluster CA with this identity and these groups
    /// (those the identity implies are added).
    pub fn with_groups(name: &str, groups: &[String]) -> Self {
        let mut all: Vec<String> = groups.to_vec();
        for implied in roles::groups_of(name) {
            if !all.iter().any(|g| g == implied) {
                all.push(implied.to_string());
            }
        }
        Self {
            identity: Some(name.to_string()),
            groups: all,
            cert_not_after: None,
        }
    }

    /// Whoever presented `cert` (the handshake verified it against the CA).
    pub fn from_certificate(cert: Option<CertInfo>) -> Self {
        match cert {
            Some(c) if !c.identity.is_empty() => Self {
                cert_not_after: Some(c.not_after),
                ..Self::with_groups(&c.identity, &c.groups)
            },
            _ => Self::anonymous(),
        }
    }

    /// The groups the caller is in.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// Whether the caller showed no certificate.
    pub fn is_anonymous(&self) -> bool {
        self.identity.is_none()
    }

    /// The identity, `""` when anonymous.
    pub fn name(&self) -> &str {
        self.identity.as_deref().unwrap_or("")
    }

    /// The node's name when the caller is `node:NAME`.
    pub fn node(&self) -> Option<&str> {
        self.identity.as_deref()?.strip_prefix("node:")
    }

    /// The store peer's id when the caller is `peer:N`.
    pub fn peer_id(&self) -> Option<u64> {
        self.identity
            .as_deref()?
            .strip_prefix("peer:")?
            .parse()
            .ok()
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

/// What a verb is about to do to a stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Read it.
    Read,
    /// Write its status.
    Status,
    /// Change its spec or metadata, bind it, or delete it.
    Spec,
}

/// The refusal of `attrs` to `caller`, saying what is missing.
fn forbidden(caller: &Caller, attrs: &Attributes, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("forbidden: {} may not {attrs}: {why}", caller.name()),
    )
}

/// The namespace and name `req` is about, as the audit log records them.
pub(super) fn audit_target(req: &RequestV1) -> (String, String) {
    match req {
        RequestV1::JoinNode { name, .. } => (String::new(), name.clone()),
        RequestV1::AddPeer { id, .. } => (String::new(), id.to_string()),
        _ => attributes::of(req)
            .map(|a| (a.namespace, a.name))
            .unwrap_or_default(),
    }
}

/// Whether `caller` may make `req` at all, given the stored `bindings`.
pub(super) fn authorize(caller: &Caller, req: &RequestV1, bindings: &Bindings) -> ApiResult<()> {
    match req {
        RequestV1::JoinPeer { .. } if caller.node().is_some() => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "forbidden: {} may not join the control plane: a store peer joins with a token and no certificate of its own",
                    caller.name()
                ),
            ));
        }
        RequestV1::JoinPeer { .. }
        | RequestV1::JoinNode { .. }
        | RequestV1::WhoAmI
        | RequestV1::Clock => return Ok(()),
        RequestV1::SelfSubjectReview => return needs_identity(caller, "this request"),
        RequestV1::AccessReview { identity, .. } if identity.is_empty() => {
            return needs_identity(caller, "this request")
        }
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
            return Ok(());
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
            return Ok(());
        }
        RequestV1::Watch { .. } => needs_identity(caller, "watch")?,
        _ => needs_identity(caller, "this request")?,
    }
    let Some(attrs) = attributes::of(req) else {
        return Ok(());
    };
    if let Some(node) = caller.node() {
        return node::authorize(node, req, &attrs).map_err(|why| forbidden(caller, &attrs, &why));
    }
    let (allowed, why) = review(caller, &attrs, bindings);
    if !allowed {
        return Err(forbidden(caller, &attrs, &why));
    }
    if let Some(object) = written(req) {
        check_escalation(caller, object, bindings)?;
    }
    Ok(())
}

/// Whether `subject` may do `attrs`, and why (what is missing when not):
/// the answer `authorize` gives and `flotilla auth can-i` shows.
pub(super) fn review(subject: &Caller, attrs: &Attributes, bindings: &Bindings) -> (bool, String) {
    if subject.identity.is_none() {
        return (
            false,
            "anonymous callers may only join, ask who they are and read the clock".to_string(),
        );
    }
    if let Some(node) = subject.node() {
        return (
            false,
            format!(
                "node:{node} is held to the node restriction, which decides on the objects themselves (what is bound to {node}); make the request to find out"
            ),
        );
    }
    let name = subject.name();
    if allows(name, subject.groups(), attrs, bindings) {
        return (
            true,
            format!(
                "a role bound to {name} grants {} on {}",
                attrs.verb, attrs.resource
            ),
        );
    }
    let place = if attrs.namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {:?}", attrs.namespace)
    };
    (
        false,
        format!(
            "no role bound to {name} grants {} on {}{place}",
            attrs.verb, attrs.resource
        ),
    )
}

/// Whether the built-in roles or the stored bindings grant `attrs` to
/// `identity` in `groups`.
pub(super) fn allows(
    identity: &str,
    groups: &[String],
    attrs: &Attributes,
    bindings: &Bindings,
) -> bool {
    roles::allows(identity, groups, attrs) || bindings.grants(identity, groups, attrs)
}

/// The object a create, update or apply writes.
fn written(req: &RequestV1) -> Option<&Object> {
    match req {
        RequestV1::Create { object }
        | RequestV1::Update { object }
        | RequestV1::Apply { object } => Some(object),
        _ => None,
    }
}

/// Refuses a Role, ClusterRole or binding that grants what its writer does
/// not hold where it grants it.
fn check_escalation(caller: &Caller, object: &Object, bindings: &Bindings) -> ApiResult<()> {
    let namespace = object.meta().namespace.as_str();
    if let Object::ClusterRole(r) = object {
        if roles::role(&r.metadata.name).is_some() {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!(
                    "metadata.name: {:?} is a built-in ClusterRole and cannot be stored; choose another name",
                    r.metadata.name
                ),
            ));
        }
    }
    let rules: &[PolicyRule] = match object {
        Object::Role(r) => &r.rules,
        Object::ClusterRole(r) => &r.rules,
        Object::RoleBinding(b) => bindings.rules_of(&b.role_ref.kind, &b.role_ref.name, namespace),
        Object::ClusterRoleBinding(b) => bindings.rules_of(&b.role_ref.kind, &b.role_ref.name, ""),
        _ => return Ok(()),
    };
    for wanted in grants_of(rules, namespace) {
        if !allows(caller.name(), caller.groups(), &wanted, bindings) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "forbidden: {} may not write {} {:?}: it would grant {wanted}, which {} does not hold",
                    caller.name(),
                    object.kind(),
                    object.meta().name,
                    caller.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Each (verb, resource, name) `rules` grant, in `namespace`.
fn grants_of<'a>(
    rules: &'a [PolicyRule],
    namespace: &'a str,
) -> impl Iterator<Item = Attributes> + 'a {
    rules.iter().flat_map(move |rule| {
        let names: Vec<String> = if rule.resource_names.is_empty() {
            vec![String::new()]
        } else {
            rule.resource_names.clone()
        };
        rule.verbs
            .iter()
            .filter_map(|v| static_verb(v))
            .flat_map(move |verb| {
                let names = names.clone();
                rule.resources.iter().flat_map(move |resource| {
                    names.clone().into_iter().map(move |name| Attributes {
                        verb,
                        resource: resource.clone(),
                        namespace: namespace.to_string(),
                        name,
                    })
                })
            })
    })
}

/// Whether `caller` may make `change` to `current`, as stored: a node only
/// to what is bound to it; mirror objects of static instances belong to
/// their node, so only it may change or remove them, and everyone else
/// changes the manifest on the node.
pub(super) fn check_current(caller: &Caller, change: Change, current: &Object) -> ApiResult<()> {
    if let Some(node) = caller.node() {
        node::check_current(node, change, current).map_err(|why| {
            let meta = current.meta();
            let attrs = Attributes {
                verb: match change {
                    Change::Read => "get",
                    Change::Status | Change::Spec => "update",
                },
                resource: current.kind().plural().to_string(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
            };
            forbidden(caller, &attrs, &why)
        })?;
    }
    if change == Change::Read {
        return Ok(());
    }
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
    if caller.node() == Some(i.spec.node_name.as_str()) {
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

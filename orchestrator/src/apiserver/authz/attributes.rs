//! What each request does, in the terms rules speak: a verb on a resource,
//! in a namespace, on a name.

use flotilla_api::module::Module;
use flotilla_api::object::{Kind, Object};
use flotilla_api::rbac::Attributes;
use flotilla_client::wire::RequestV1;

use crate::apiserver::stored::scope;

/// The attributes of `req`; `None` for the requests every caller may make
/// (joins carry their own token, `WhoAmI`, `Clock`, a review of oneself) and the two that only
/// one identity may make (`RenewCertificate`, `AddPeer`), which
/// [`super::authorize`] decides by itself.
pub(crate) fn of(req: &RequestV1) -> Option<Attributes> {
    let attrs = match req {
        RequestV1::JoinPeer { .. }
        | RequestV1::JoinNode { .. }
        | RequestV1::WhoAmI
        | RequestV1::Clock
        | RequestV1::RenewCertificate { .. }
        | RequestV1::AddPeer { .. }
        | RequestV1::SelfSubjectReview => return None,
        RequestV1::AccessReview { identity, .. } if identity.is_empty() => return None,
        RequestV1::AccessReview { identity, .. } => {
            cluster("create", "subjectaccessreviews", identity)
        }
        RequestV1::SignUser { name, .. } => cluster("create", "users", name),
        RequestV1::Get {
            kind,
            namespace,
            name,
            ..
        } => on_object("get", *kind, "", namespace, name),
        RequestV1::List {
            kind, namespace, ..
        } => across("list", Some(*kind), namespace.as_deref()),
        RequestV1::Watch {
            kind, namespace, ..
        } => across("watch", *kind, namespace.as_deref()),
        RequestV1::Create { object } => about("create", object, ""),
        RequestV1::Update { object } => about("update", object, ""),
        RequestV1::UpdateStatus { object } => about("update", object, "status"),
        RequestV1::Apply { object } => about("patch", object, ""),
        RequestV1::Delete {
            kind,
            namespace,
            name,
            ..
        } => on_object("delete", *kind, "", namespace, name),
        RequestV1::Bind {
            namespace, name, ..
        } => on_object("create", Kind::Instance, "bind", namespace, name),
        RequestV1::Logs {
            namespace, name, ..
        } => on_object("get", Kind::Instance, "logs", namespace, name),
        RequestV1::PortForward { namespace, name } => {
            on_object("create", Kind::Instance, "portforward", namespace, name)
        }
        RequestV1::UploadModule { digest, .. } => Attributes {
            verb: "create",
            resource: Kind::Module.plural().to_string(),
            namespace: String::new(),
            name: Module::name_for_digest(digest),
        },
        RequestV1::DownloadModule { digest } => Attributes {
            verb: "get",
            resource: Kind::Module.plural().to_string(),
            namespace: String::new(),
            name: Module::name_for_digest(digest),
        },
        RequestV1::ProbeTunnel { from, .. } => cluster("get", "nodes/tunnel", from),
        RequestV1::CreateToken { .. } | RequestV1::CreateJoinToken { .. } => {
            cluster("create", "tokens", "")
        }
        RequestV1::ListTokens => cluster("list", "tokens", ""),
        RequestV1::RevokeToken { id } => cluster("delete", "tokens", id),
        RequestV1::Members => cluster("list", "members", ""),
        RequestV1::RemoveMember { id } => cluster("delete", "members", &id.to_string()),
    };
    Some(attrs)
}

fn resource(kind: Kind, subresource: &str) -> String {
    if subresource.is_empty() {
        kind.plural().to_string()
    } else {
        format!("{}/{subresource}", kind.plural())
    }
}

fn on_object(
    verb: &'static str,
    kind: Kind,
    subresource: &str,
    namespace: &str,
    name: &str,
) -> Attributes {
    Attributes {
        verb,
        resource: resource(kind, subresource),
        namespace: scope(kind, namespace),
        name: name.to_string(),
    }
}

fn about(verb: &'static str, object: &Object, subresource: &str) -> Attributes {
    let meta = object.meta();
    on_object(
        verb,
        object.kind(),
        subresource,
        &meta.namespace,
        &meta.name,
    )
}

/// A list or watch: one kind or all (`*`), one namespace or all (empty).
fn across(verb: &'static str, kind: Option<Kind>, namespace: Option<&str>) -> Attributes {
    let namespace = match (kind, namespace) {
        (Some(kind), Some(ns)) if kind.namespaced() => ns.to_string(),
        (None, Some(ns)) => ns.to_string(),
        _ => String::new(),
    };
    Attributes {
        verb,
        resource: kind.map_or_else(|| "*".to_string(), |k| k.plural().to_string()),
        namespace,
        name: String::new(),
    }
}

fn cluster(verb: &'static str, resource: &str, name: &str) -> Attributes {
    Attributes {
        verb,
        resource: resource.to_string(),
        namespace: String::new(),
        name: name.to_string(),
    }
}

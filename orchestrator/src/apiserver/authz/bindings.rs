//! The stored Roles, ClusterRoles and their bindings, held in memory for the
//! authorizer: every request that the built-in roles do not already allow
//! asks them, so they are never read from the store on a request's path.
//!
//! A [`PrefixCache`](crate::store::cache::PrefixCache) keeps them current:
//! on any change under the four kinds it reads all four again (they change
//! rarely and are few). Like Kubernetes' RBAC authorizer, which reads
//! informer caches, this peer decides from what it has applied; a refusal is
//! decided again on a copy read on the spot, so a binding this peer applied
//! a moment ago is never refused for the cache's lag.

use std::collections::HashMap;

use flotilla_api::object::{Kind, Object};
use flotilla_api::rbac::{Attributes, ClusterRoleBinding, PolicyRule, RoleBinding};

use super::roles;
use crate::apiserver::keys::kind_prefix;
use crate::apiserver::stored::decode_object;
use crate::store::state_machine::StateReader;

const RBAC_KINDS: [Kind; 4] = [
    Kind::Role,
    Kind::ClusterRole,
    Kind::RoleBinding,
    Kind::ClusterRoleBinding,
];

/// The stored RBAC objects, indexed for the authorizer.
#[derive(Debug, Default)]
pub struct Bindings {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// Keyed by (namespace, name).
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    /// Keyed by namespace.
    role_bindings: HashMap<String, Vec<RoleBinding>>,
}

impl Bindings {
    /// The index of `objects` (other kinds are ignored).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut b = Bindings::default();
        for o in objects {
            match o {
                Object::ClusterRole(r) => {
                    b.cluster_roles.insert(r.metadata.name, r.rules);
                }
                Object::Role(r) => {
                    b.roles
                        .insert((r.metadata.namespace, r.metadata.name), r.rules);
                }
                Object::ClusterRoleBinding(c) => b.cluster_bindings.push(c),
                Object::RoleBinding(r) => b
                    .role_bindings
                    .entry(r.metadata.namespace.clone())
                    .or_default()
                    .push(r),
                _ => {}
            }
        }
        b
    }

    /// The rules of the role a binding in `namespace` ("" for a cluster
    /// binding) refers to: a built-in ClusterRole, a stored ClusterRole, or
    /// a Role of that namespace. Empty when it does not exist (yet).
    pub fn rules_of(&self, kind: &str, name: &str, namespace: &str) -> &[PolicyRule] {
        let found = match kind {
            "ClusterRole" => roles::role(name)
                .map(|built_in| &built_in.rules)
                .or_else(|| self.cluster_roles.get(name)),
            "Role" => self.roles.get(&(namespace.to_string(), name.to_string())),
            _ => None,
        };
        found.map_or(&[], Vec::as_slice)
    }

    fn grants_rules(&self, kind: &str, name: &str, namespace: &str, attrs: &Attributes) -> bool {
        self.rules_of(kind, name, namespace)
            .iter()
            .any(|r| r.allows(attrs))
    }

    /// Whether a binding of `identity` (in `groups`) grants `attrs`: a
    /// ClusterRoleBinding anywhere, a RoleBinding only in its own namespace.
    pub fn grants(&self, identity: &str, groups: &[String], attrs: &Attributes) -> bool {
        let cluster = self.cluster_bindings.iter().any(|b| {
            b.subjects.iter().any(|s| s.matches(identity, groups))
                && self.grants_rules(&b.role_ref.kind, &b.role_ref.name, "", attrs)
        });
        if cluster || attrs.namespace.is_empty() {
            return cluster;
        }
        self.role_bindings
            .get(&attrs.namespace)
            .into_iter()
            .flatten()
            .any(|b| {
                b.subjects.iter().any(|s| s.matches(identity, groups))
                    && self.grants_rules(
                        &b.role_ref.kind,
                        &b.role_ref.name,
                        &attrs.namespace,
                        attrs,
                    )
            })
    }
}

/// The top segments the RBAC kinds are stored under.
pub const RBAC_TOPS: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

/// The bindings as stored in `reader`.
pub fn read(reader: &StateReader) -> std::io::Result<Bindings> {
    let mut objects = Vec::new();
    for kind in RBAC_KINDS {
        objects.extend(
            reader
                .scan(&kind_prefix(kind))?
                .into_iter()
                .filter_map(|(_, stored)| decode_object(&stored).ok()),
        );
    }
    Ok(Bindings::from_objects(objects))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::rbac::{Role, RoleRef, Subject};

    fn attrs(verb: &'static str, resource: &str, namespace: &str) -> Attributes {
        Attributes {
            verb,
            resource: resource.into(),
            namespace: namespace.into(),
            name: String::new(),
        }
    }

    fn subject(kind: &str, name: &str) -> Subject {
        Subject {
            kind: kind.into(),
            name: name.into(),
            ..Subject::default()
        }
    }

    #[test]
    fn bindings_grant_in_their_scope_only() {
        let mut edit_in_a = RoleBinding::default();
        edit_in_a.metadata.namespace = "a".into();
        edit_in_a.role_ref = RoleRef {
            kind: "ClusterRole".into(),
            name: "edit".into(),
            ..RoleRef::default()
        };
        edit_in_a.subjects = vec![subject("User", "alice"), subject("Group", "ops")];
        let mut reader_role = Role::default();
        reader_role.metadata.namespace = "b".into();
        reader_role.metadata.name = "reader".into();
        reader_role.rules = vec![PolicyRule::new(&["services"], &["get", "list"])];
        let mut read_b = RoleBinding::default();
        read_b.metadata.namespace = "b".into();
        read_b.role_ref = RoleRef {
            kind: "Role".into(),
            name: "reader".into(),
            ..RoleRef::default()
        };
        read_b.subjects = vec![subject("Node", "edge-1")];
        let view_all = ClusterRoleBinding {
            role_ref: RoleRef {
                kind: "ClusterRole".into(),
                name: "view".into(),
                ..RoleRef::default()
            },
            subjects: vec![subject("User", "component:auditor")],
            ..ClusterRoleBinding::default()
        };
        let b = Bindings::from_objects([
            Object::RoleBinding(edit_in_a),
            Object::Role(reader_role),
            Object::RoleBinding(read_b),
            Object::ClusterRoleBinding(view_all),
        ]);
        let ops = ["ops".to_string()];
        let cases = [
            (
                "user:alice",
                &[][..],
                attrs("create", "instances", "a"),
                true,
            ),
            (
                "user:alice",
                &[][..],
                attrs("create", "instances", "b"),
                false,
            ),
            ("user:alice", &[][..], attrs("list", "instances", ""), false),
            ("user:alice", &[][..], attrs("get", "nodes", ""), false),
            ("user:bob", &ops[..], attrs("delete", "services", "a"), true),
            ("user:bob", &[][..], attrs("delete", "services", "a"), false),
            ("node:edge-1", &[][..], attrs("list", "services", "b"), true),
            (
                "node:edge-1",
                &[][..],
                attrs("delete", "services", "b"),
                false,
            ),
            (
                "component:auditor",
                &[][..],
                attrs("list", "jobs", ""),
                true,
            ),
            (
                "user:component:auditor",
                &[][..],
                attrs("list", "jobs", ""),
                false,
            ),
        ];
        for (who, groups, a, want) in cases {
            assert_eq!(b.grants(who, groups, &a), want, "{who} {groups:?}: {a}");
        }
    }
}

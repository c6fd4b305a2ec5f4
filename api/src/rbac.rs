//! Role-based access control in Kubernetes' shapes: a [`PolicyRule`] grants
//! verbs on resources (optionally on named objects only); a request is
//! described by its [`Attributes`] and allowed when some rule of some role
//! bound to the caller matches them.
//!
//! Resources are lowercase plurals (`instances`, `deployments`), a
//! subresource after a slash (`instances/status`, `instances/logs`,
//! `instances/portforward`, `instances/bind`), plus the cluster's own
//! resources that are not objects: `tokens`, `members`, `nodes/tunnel`,
//! `users` and `subjectaccessreviews`.
//!
//! The stored kinds are Kubernetes' four: a [`Role`] (rules in one
//! namespace) and a [`ClusterRole`] (rules anywhere), granted to subjects by
//! a [`RoleBinding`] (in its namespace only) or a [`ClusterRoleBinding`]
//! (everywhere). A subject is a User (`alice` is the certificate identity
//! `user:alice`; a name with a colon, such as `component:scheduler`, is the
//! identity itself), a Group (a certificate's organization) or a Node.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::object::Kind;
use crate::validation::ValidationErrors;

/// Every verb a rule may grant, as Kubernetes spells them.
pub const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// Matches every verb, resource or name.
pub const WILDCARD: &str = "*";

/// The subresources a rule may name, after their kind's plural.
pub const SUBRESOURCES: [&str; 10] = [
    "instances/status",
    "instances/logs",
    "instances/portforward",
    "instances/bind",
    "nodes/status",
    "nodes/tunnel",
    "deployments/status",
    "daemonsets/status",
    "jobs/status",
    "namespaces/status",
];

/// The resources that are not stored objects.
pub const CLUSTER_RESOURCES: [&str; 4] = ["tokens", "members", "users", "subjectaccessreviews"];

/// Whether `resource` names something a rule can grant: a kind's plural,
/// one of [`SUBRESOURCES`] or [`CLUSTER_RESOURCES`], or `*`.
pub fn is_resource(resource: &str) -> bool {
    resource == WILDCARD
        || Kind::ALL.iter().any(|k| k.plural() == resource)
        || SUBRESOURCES.contains(&resource)
        || CLUSTER_RESOURCES.contains(&resource)
}

/// `verb` as the `'static` spelling [`Attributes`] carries, if it is one of
/// [`VERBS`] or `*`.
pub fn static_verb(verb: &str) -> Option<&'static str> {
    VERBS.iter().copied().chain([WILDCARD]).find(|v| *v == verb)
}

fn check_rules(rules: &[PolicyRule], errs: &mut ValidationErrors) {
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        if rule.verbs.is_empty() {
            errs.required(format!("{at}.verbs"));
        }
        for (j, verb) in rule.verbs.iter().enumerate() {
            if static_verb(verb).is_none() {
                errs.push(
                    format!("{at}.verbs[{j}]"),
                    format!(
                        "{verb:?} is not a verb (expected one of {}, or *)",
                        VERBS.join(", ")
                    ),
                );
            }
        }
        if rule.resources.is_empty() {
            errs.required(format!("{at}.resources"));
        }
        for (j, resource) in rule.resources.iter().enumerate() {
            if !is_resource(resource) {
                errs.push(
                    format!("{at}.resources[{j}]"),
                    format!(
                        "{resource:?} is not a resource (expected a kind's lowercase plural such as instances, a subresource such as instances/logs, one of {}, or *)",
                        CLUSTER_RESOURCES.join(", ")
                    ),
                );
            }
        }
    }
}

/// Rules that apply in the Role's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Role {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// What the role grants.
    pub rules: Vec<PolicyRule>,
}

/// Rules that apply in every namespace and to cluster-scoped resources
/// (cluster-scoped). Also names the built-in roles `cluster-admin`,
/// `admin`, `edit` and `view`, which are not stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterRole {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// What the role grants.
    pub rules: Vec<PolicyRule>,
}

/// Grants a Role of its namespace, or a ClusterRole's rules within its
/// namespace, to subjects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleBinding {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The role granted.
    pub role_ref: RoleRef,
    /// Who is granted it.
    pub subjects: Vec<Subject>,
}

/// Grants a ClusterRole to subjects everywhere (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRoleBinding {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The role granted (a ClusterRole).
    pub role_ref: RoleRef,
    /// Who is granted it.
    pub subjects: Vec<Subject>,
}

/// The role a binding grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleRef {
    /// Accepted for Kubernetes manifests (`rbac.authorization.k8s.io`) and
    /// otherwise ignored.
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    pub kind: String,
    /// The role's name.
    pub name: String,
}

/// Who a binding grants its role to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Accepted for Kubernetes manifests and otherwise ignored.
    pub api_group: String,
    /// `User`, `Group` or `Node`.
    pub kind: String,
    /// The user's, group's or node's name.
    pub name: String,
}

impl Subject {
    /// Whether this subject is `identity`, or one of `groups` it is in.
    pub fn matches(&self, identity: &str, groups: &[String]) -> bool {
        match self.kind.as_str() {
            "User" if self.name.contains(':') => identity == self.name,
            "User" => identity.strip_prefix("user:") == Some(self.name.as_str()),
            "Node" => identity.strip_prefix("node:") == Some(self.name.as_str()),
            "Group" => groups.contains(&self.name),
            _ => false,
        }
    }
}

fn check_binding(
    role_ref: &RoleRef,
    subjects: &[Subject],
    role_kinds: &[&str],
    errs: &mut ValidationErrors,
) {
    if role_ref.kind.is_empty() {
        errs.required("roleRef.kind");
    } else if !role_kinds.contains(&role_ref.kind.as_str()) {
        errs.push(
            "roleRef.kind",
            format!(
                "{:?} cannot be bound here (expected {})",
                role_ref.kind,
                role_kinds.join(" or ")
            ),
        );
    }
    if role_ref.name.is_empty() {
        errs.required("roleRef.name");
    }
    if subjects.is_empty() {
        errs.required("subjects");
    }
    for (i, s) in subjects.iter().enumerate() {
        if !["User", "Group", "Node"].contains(&s.kind.as_str()) {
            errs.push(
                format!("subjects[{i}].kind"),
                format!(
                    "{:?} is not a subject kind (expected User, Group or Node)",
                    s.kind
                ),
            );
        }
        if s.name.is_empty() {
            errs.required(format!("subjects[{i}].name"));
        }
    }
}

impl Role {
    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        check_rules(&self.rules, errs);
    }
}

impl ClusterRole {
    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        check_rules(&self.rules, errs);
    }
}

impl RoleBinding {
    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        check_binding(
            &self.role_ref,
            &self.subjects,
            &["Role", "ClusterRole"],
            errs,
        );
    }
}

impl ClusterRoleBinding {
    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        check_binding(&self.role_ref, &self.subjects, &["ClusterRole"], errs);
    }
}

/// One grant: these verbs on these resources, on every object of them or,
/// when `resource_names` is not empty, on those names only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Resources (`instances`, `instances/status`, `*`).
    pub resources: Vec<String>,
    /// Verbs (`get`, `list`, …, `*`).
    pub verbs: Vec<String>,
    /// Object names the rule is limited to; empty for all.
    pub resource_names: Vec<String>,
}

impl PolicyRule {
    /// A rule over every object of `resources`.
    pub fn new(resources: &[&str], verbs: &[&str]) -> Self {
        Self {
            resources: resources.iter().map(|s| s.to_string()).collect(),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: Vec::new(),
        }
    }

    /// Whether the rule grants `attrs`. A rule limited to names never grants
    /// `list`, `watch` or `create`, which name no one object (as in
    /// Kubernetes).
    pub fn allows(&self, attrs: &Attributes) -> bool {
        let verb = self.verbs.iter().any(|v| v == WILDCARD || v == attrs.verb);
        let resource = self
            .resources
            .iter()
            .any(|r| r == WILDCARD || *r == attrs.resource);
        let name = self.resource_names.is_empty()
            || (!attrs.name.is_empty() && self.resource_names.contains(&attrs.name));
        verb && resource && name
    }
}

/// What a request does, as authorization sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    /// `instances`, `instances/status`, `tokens`, …
    pub resource: String,
    /// The namespace, empty for cluster-scoped resources and for requests
    /// across all namespaces.
    pub namespace: String,
    /// The object's name, empty when the request names none.
    pub name: String,
}

impl fmt::Display for Attributes {
    /// `update instances/status "web-1" in namespace "a"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        if self.namespace.is_empty() {
            Ok(())
        } else {
            write!(f, " in namespace {:?}", self.namespace)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &'static str, resource: &str, name: &str) -> Attributes {
        Attributes {
            verb,
            resource: resource.to_string(),
            namespace: "a".into(),
            name: name.into(),
        }
    }

    #[test]
    fn rules_match_verbs_resources_and_names() {
        let read = PolicyRule::new(&["instances", "services"], &["get", "list", "watch"]);
        let all = PolicyRule::new(&["*"], &["*"]);
        let one_lease = PolicyRule {
            resource_names: vec!["edge-1".into()],
            ..PolicyRule::new(&["leases"], &["get", "update"])
        };
        let cases: [(&PolicyRule, Attributes, bool); 10] = [
            (&read, attrs("get", "instances", "web"), true),
            (&read, attrs("list", "services", ""), true),
            (&read, attrs("update", "instances", "web"), false),
            (&read, attrs("get", "instances/status", "web"), false),
            (&read, attrs("get", "deployments", "web"), false),
            (&all, attrs("delete", "tokens", "x"), true),
            (&one_lease, attrs("update", "leases", "edge-1"), true),
            (&one_lease, attrs("update", "leases", "edge-2"), false),
            (&one_lease, attrs("get", "leases", ""), false),
            (&one_lease, attrs("delete", "leases", "edge-1"), false),
        ];
        for (rule, a, want) in cases {
            assert_eq!(rule.allows(&a), want, "{rule:?} on {a}");
        }
    }

    #[test]
    fn attributes_read_as_a_sentence() {
        let a = attrs("update", "instances/status", "web-1");
        assert_eq!(
            a.to_string(),
            "update instances/status \"web-1\" in namespace \"a\""
        );
        let cluster = Attributes {
            verb: "create",
            resource: "tokens".into(),
            namespace: String::new(),
            name: String::new(),
        };
        assert_eq!(cluster.to_string(), "create tokens");
    }
}

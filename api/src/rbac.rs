//! Role-based access control in Kubernetes' shapes: a [`PolicyRule`] grants
//! verbs on resources (optionally on named objects only); a request is
//! described by its [`Attributes`] and allowed when some rule of some role
//! bound to the caller matches them.
//!
//! Resources are lowercase plurals (`instances`, `deployments`), a
//! subresource after a slash (`instances/status`, `instances/logs`,
//! `instances/portforward`, `instances/bind`), plus the cluster's own
//! resources that are not objects: `tokens`, `members`, `nodes/tunnel`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every verb a rule may grant, as Kubernetes spells them.
pub const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// Matches every verb, resource or name.
pub const WILDCARD: &str = "*";

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

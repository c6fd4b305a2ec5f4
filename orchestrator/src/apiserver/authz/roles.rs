//! The built-in cluster roles and who holds them. `cluster-admin`, `admin`,
//! `edit` and `view` are Kubernetes' user-facing roles; `system:scheduler`
//! and `system:controllers` are what the two components' loops write, and
//! nothing more. `user:admin` is in `system:masters`, which holds
//! `cluster-admin`; every other user holds nothing until it is bound.

use std::sync::OnceLock;

use flotilla_api::rbac::{Attributes, PolicyRule, VERBS};

/// A named set of rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRole {
    /// `cluster-admin`, `edit`, `system:scheduler`, …
    pub name: &'static str,
    /// What it grants.
    pub rules: Vec<PolicyRule>,
}

impl ClusterRole {
    /// Whether some rule of the role grants `attrs`.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        self.rules.iter().any(|r| r.allows(attrs))
    }
}

/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";

/// The identity of the scheduler.
pub const SCHEDULER: &str = "component:scheduler";

/// The identity of the controllers.
pub const CONTROLLERS: &str = "component:controllers";

const READ: [&str; 3] = ["get", "list", "watch"];

/// Every object kind a user works with inside a namespace.
const NAMESPACED: [&str; 8] = [
    "instances",
    "deployments",
    "daemonsets",
    "jobs",
    "services",
    "endpoints",
    "events",
    "leases",
];

/// A namespace's quotas and defaults: set by cluster admins, read by all
/// who work there.
const LIMITS: [&str; 2] = ["resourcequotas", "limitranges"];

/// Every object kind, the cluster-scoped ones included.
const OBJECTS: [&str; 11] = [
    "namespaces",
    "nodes",
    "leases",
    "instances",
    "deployments",
    "daemonsets",
    "jobs",
    "services",
    "endpoints",
    "events",
    "modules",
];

fn built_in() -> &'static [ClusterRole] {
    static ROLES: OnceLock<Vec<ClusterRole>> = OnceLock::new();
    ROLES.get_or_init(|| {
        let instance_subresources = [
            "instances/status",
            "instances/logs",
            "instances/portforward",
        ];
        vec![
            ClusterRole {
                name: "cluster-admin",
                rules: vec![PolicyRule::new(&["*"], &["*"])],
            },
            ClusterRole {
                name: "admin",
                rules: vec![
                    PolicyRule::new(&NAMESPACED, &VERBS),
                    PolicyRule::new(&instance_subresources, &VERBS),
                    PolicyRule::new(&["modules"], &["get", "create"]),
                    PolicyRule::new(&LIMITS, &READ),
                    PolicyRule::new(&["roles", "rolebindings"], &VERBS),
                ],
            },
            ClusterRole {
                name: "edit",
                rules: vec![
                    PolicyRule::new(&NAMESPACED, &VERBS),
                    PolicyRule::new(&instance_subresources, &VERBS),
                    PolicyRule::new(&["modules"], &["get", "create"]),
                    PolicyRule::new(&LIMITS, &READ),
                ],
            },
            ClusterRole {
                name: "view",
                rules: vec![
                    PolicyRule::new(&NAMESPACED, &READ),
                    PolicyRule::new(&LIMITS, &READ),
                    PolicyRule::new(&["instances/logs"], &["get"]),
                ],
            },
            ClusterRole {
                name: "system:scheduler",
                rules: vec![
                    PolicyRule::new(&OBJECTS, &READ),
                    PolicyRule::new(&["instances/bind"], &["create"]),
                    PolicyRule::new(&["instances/status"], &["update"]),
                    PolicyRule::new(&["events"], &["create", "update"]),
                    PolicyRule::new(&["leases"], &["create", "update"]),
                ],
            },
            ClusterRole {
                name: "system:controllers",
                rules: vec![
                    PolicyRule::new(&OBJECTS, &READ),
                    PolicyRule::new(
                        &["instances", "endpoints", "events"],
                        &["create", "update", "delete"],
                    ),
                    PolicyRule::new(&["deployments", "daemonsets", "jobs", "nodes"], &["update"]),
                    PolicyRule::new(&["jobs"], &["delete"]),
                    PolicyRule::new(&["leases"], &["create", "update"]),
                    PolicyRule::new(
                        &[
                            "instances/status",
                            "deployments/status",
                            "daemonsets/status",
                            "jobs/status",
                            "nodes/status",
                        ],
                        &["update"],
                    ),
                ],
            },
        ]
    })
}

/// The built-in role called `name`.
pub fn role(name: &str) -> Option<&'static ClusterRole> {
    built_in().iter().find(|r| r.name == name)
}

/// The groups an identity is in.
pub fn groups_of(identity: &str) -> &'static [&'static str] {
    if identity == "user:admin" {
        &[MASTERS]
    } else if identity.starts_with("node:") {
        &["system:nodes"]
    } else if identity.starts_with("peer:") {
        &["system:peers"]
    } else if identity.starts_with("component:") {
        &["system:components"]
    } else {
        &[]
    }
}

/// The built-in roles `identity` in `groups` holds, cluster-wide.
fn held_by<'a>(
    identity: &str,
    groups: &'a [String],
) -> impl Iterator<Item = &'static ClusterRole> + 'a {
    let by_group = groups
        .iter()
        .filter(|g| *g == MASTERS)
        .take(1)
        .filter_map(|_| role("cluster-admin"));
    let by_name = match identity {
        SCHEDULER => role("system:scheduler"),
        CONTROLLERS => role("system:controllers"),
        _ => None,
    };
    by_group.chain(by_name)
}

/// Whether the built-in roles bound to `identity` in `groups` grant `attrs`.
pub fn allows(identity: &str, groups: &[String], attrs: &Attributes) -> bool {
    held_by(identity, groups).any(|r| r.allows(attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &'static str, resource: &str, namespace: &str, name: &str) -> Attributes {
        Attributes {
            verb,
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn who_may_do_what() {
        let cases = [
            ("user:admin", attrs("create", "tokens", "", ""), true),
            ("user:admin", attrs("delete", "members", "", "2"), true),
            (
                "user:alice",
                attrs("get", "instances", "default", "web"),
                false,
            ),
            ("user:alice", attrs("list", "namespaces", "", ""), false),
            (
                SCHEDULER,
                attrs("create", "instances/bind", "a", "web"),
                true,
            ),
            (SCHEDULER, attrs("list", "nodes", "", ""), true),
            (SCHEDULER, attrs("create", "tokens", "", ""), false),
            (SCHEDULER, attrs("delete", "instances", "a", "web"), false),
            (SCHEDULER, attrs("list", "members", "", ""), false),
            (
                CONTROLLERS,
                attrs("create", "instances", "a", "web-1"),
                true,
            ),
            (
                CONTROLLERS,
                attrs("update", "deployments/status", "a", "web"),
                true,
            ),
            (
                CONTROLLERS,
                attrs("create", "instances/bind", "a", "web"),
                false,
            ),
            (CONTROLLERS, attrs("delete", "nodes", "", "edge-1"), false),
            (CONTROLLERS, attrs("create", "tokens", "", ""), false),
            ("peer:2", attrs("delete", "members", "", "1"), false),
            ("node:edge-1", attrs("create", "tokens", "", ""), false),
        ];
        for (who, a, want) in cases {
            let groups: Vec<String> = groups_of(who).iter().map(|g| g.to_string()).collect();
            assert_eq!(allows(who, &groups, &a), want, "{who} {a}");
        }
    }

    #[test]
    fn user_roles_nest() {
        let view = role("view").unwrap();
        let edit = role("edit").unwrap();
        let write = attrs("create", "deployments", "a", "web");
        let read = attrs("list", "instances", "a", "");
        assert!(view.allows(&read) && !view.allows(&write));
        assert!(edit.allows(&read) && edit.allows(&write));
        assert!(!edit.allows(&attrs("create", "tokens", "", "")));
        assert!(!edit.allows(&attrs("get", "nodes", "", "edge-1")));
        let grant = attrs("create", "rolebindings", "a", "");
        assert!(!edit.allows(&grant) && role("admin").unwrap().allows(&grant));
    }
}

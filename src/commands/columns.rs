//! The columns of `flotilla get` tables, kubectl-like: NAME first (except
//! events, which follow `kubectl get events`: LAST SEEN, TYPE, REASON, OBJECT,
//! MESSAGE); `wide` adds columns. AGE is computed from `creationTimestamp` and
//! the current time. Presentation lives here, with the CLI, not in the object
//! model.

use flotilla_api::daemonset::DaemonSet;
use flotilla_api::deployment::Deployment;
use flotilla_api::endpoints::Endpoints;
use flotilla_api::event::Event;
use flotilla_api::instance::{Instance, World};
use flotilla_api::job::{Job, CONDITION_COMPLETE, CONDITION_FAILED};
use flotilla_api::lease::Lease;
use flotilla_api::meta::{
    condition_is_true, elapsed_since, find_condition, parse_timestamp, ConditionStatus,
};
use flotilla_api::module::is_valid_digest;
use flotilla_api::module::Module;
use flotilla_api::namespace::{Namespace, NamespacePhase};
use flotilla_api::node::{Node, Taint, CONDITION_READY};
use flotilla_api::object::Object;
use flotilla_api::rbac::{PolicyRule, RoleRef, Subject};
use flotilla_api::service::{Service, TargetPort};

/// Header and value pairs for one object's row.
pub fn columns(object: &Object, wide: bool) -> Vec<(&'static str, String)> {
    let age = elapsed_since(
        &object.meta().creation_timestamp,
        time::OffsetDateTime::now_utc(),
    )
    .map(format_age)
    .unwrap_or_else(|| "<unknown>".to_owned());
    match object {
        Object::Namespace(o) => namespace(o, wide, age),
        Object::Node(o) => node(o, wide, age),
        Object::Lease(o) => lease(o, wide, age),
        Object::Instance(o) => instance(o, wide, age),
        Object::Deployment(o) => deployment(o, wide, age),
        Object::DaemonSet(o) => daemonset(o, wide, age),
        Object::Job(o) => job(o, wide, age),
        Object::Service(o) => service(o, wide, age),
        Object::Endpoints(o) => endpoints(o, wide, age),
        Object::Event(o) => event(o, wide, age),
        Object::Module(o) => module(o, wide, age),
        Object::Role(o) => rules(&o.metadata.name, &o.rules, age),
        Object::ClusterRole(o) => rules(&o.metadata.name, &o.rules, age),
        Object::RoleBinding(o) => binding(&o.metadata.name, &o.role_ref, &o.subjects, wide, age),
        Object::ClusterRoleBinding(o) => {
            binding(&o.metadata.name, &o.role_ref, &o.subjects, wide, age)
        }
        Object::ResourceQuota(o) => {
            let used = o
                .spec
                .hard
                .iter()
                .map(|(k, cap)| {
                    let now = o.status.used.get(k).map_or("0", |q| q.as_str());
                    format!("{k}: {now}/{}", cap.as_str())
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                ("NAME", o.metadata.name.clone()),
                ("USED/HARD", or_none(&used)),
                ("AGE", age),
            ]
        }
        Object::LimitRange(o) => vec![
            ("NAME", o.metadata.name.clone()),
            ("ITEMS", o.spec.limits.len().to_string()),
            ("AGE", age),
        ],
    }
}

fn rules(name: &str, rules: &[PolicyRule], age: String) -> Vec<(&'static str, String)> {
    vec![
        ("NAME", name.to_owned()),
        ("RULES", rules.len().to_string()),
        ("AGE", age),
    ]
}

fn binding(
    name: &str,
    role: &RoleRef,
    subjects: &[Subject],
    wide: bool,
    age: String,
) -> Vec<(&'static str, String)> {
    let mut cols = vec![
        ("NAME", name.to_owned()),
        ("ROLE", format!("{}/{}", role.kind, role.name)),
        ("AGE", age),
    ];
    if wide {
        let named = |kind: &str| {
            let names: Vec<&str> = subjects
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.name.as_str())
                .collect();
            or_none(&names.join(","))
        };
        cols.push(("USERS", named("User")));
        cols.push(("GROUPS", named("Group")));
        cols.push(("NODES", named("Node")));
    }
    cols
}

fn namespace(ns: &Namespace, _wide: bool, age: String) -> Vec<(&'static str, String)> {
    let phase = if ns.metadata.is_being_deleted() {
        NamespacePhase::Terminating
    } else {
        ns.status.phase
    };
    vec![
        ("NAME", ns.metadata.name.clone()),
        ("STATUS", phase.to_string()),
        ("AGE", age),
    ]
}

fn node(n: &Node, wide: bool, age: String) -> Vec<(&'static str, String)> {
    let alloc = &n.status.allocatable;
    let mut cols = vec![
        ("NAME", n.metadata.name.clone()),
        ("STATUS", node_status(n)),
        ("CPU", alloc.cpu.to_string()),
        ("MEMORY", alloc.memory.to_string()),
        ("INSTANCES", alloc.instances.to_string()),
        ("AGE", age),
        ("VERSION", or_none(&n.status.node_info.flotilla_version)),
    ];
    if wide {
        cols.push((
            "INTERNAL-IP",
            n.internal_ip().unwrap_or("<none>").to_owned(),
        ));
        cols.push(("INSTANCE-CIDR", or_none(&n.spec.instance_cidr)));
        cols.push(("WASMTIME", or_none(&n.status.node_info.wasmtime_version)));
        let taints: Vec<String> = n.spec.taints.iter().map(Taint::to_string).collect();
        cols.push(("TAINTS", or_none(&taints.join(","))));
    }
    cols
}

fn lease(l: &Lease, _wide: bool, age: String) -> Vec<(&'static str, String)> {
    vec![
        ("NAME", l.metadata.name.clone()),
        ("HOLDER", or_none(&l.spec.holder_identity)),
        ("AGE", age),
    ]
}

fn instance(i: &Instance, wide: bool, age: String) -> Vec<(&'static str, String)> {
    let mut cols = vec![
        ("NAME", i.metadata.name.clone()),
        ("READY", if i.is_ready() { "1/1" } else { "0/1" }.to_owned()),
        ("STATUS", instance_status(i)),
        ("RESTARTS", i.status.restart_count.to_string()),
        ("NODE", or_none(i.node())),
        ("AGE", age),
    ];
    if wide {
        cols.push(("IP", or_none(&i.status.instance_ip)));
        cols.push(("MODULE", or_none(&short_module(&i.spec.module))));
        let world = if i.status.world == World::Auto {
            i.spec.world
        } else {
            i.status.world
        };
        cols.push(("WORLD", world.to_string()));
    }
    cols
}

fn deployment(d: &Deployment, wide: bool, age: String) -> Vec<(&'static str, String)> {
    let s = &d.status;
    let mut cols = vec![
        ("NAME", d.metadata.name.clone()),
        ("READY", format!("{}/{}", s.ready_replicas, d.spec.replicas)),
        ("UP-TO-DATE", s.updated_replicas.to_string()),
        ("AVAILABLE", s.available_replicas.to_string()),
        ("AGE", age),
    ];
    if wide {
        cols.push((
            "MODULE",
            or_none(&short_module(&d.spec.template.spec.module)),
        ));
        cols.push(("SELECTOR", or_none(&d.spec.selector.to_string())));
    }
    cols
}

fn daemonset(ds: &DaemonSet, wide: bool, age: String) -> Vec<(&'static str, String)> {
    let s = &ds.status;
    let selector: Vec<String> = ds
        .spec
        .template
        .spec
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut cols = vec![
        ("NAME", ds.metadata.name.clone()),
        ("DESIRED", s.desired_number_scheduled.to_string()),
        ("CURRENT", s.current_number_scheduled.to_string()),
        ("READY", s.number_ready.to_string()),
        ("UP-TO-DATE", s.updated_number_scheduled.to_string()),
        ("AVAILABLE", s.number_available.to_string()),
        ("NODE SELECTOR", or_none(&selector.join(","))),
        ("AGE", age),
    ];
    if wide {
        cols.push((
            "MODULE",
            or_none(&short_module(&ds.spec.template.spec.module)),
        ));
        cols.push(("SELECTOR", or_none(&ds.spec.selector.to_string())));
    }
    cols
}

fn job(j: &Job, wide: bool, age: String) -> Vec<(&'static str, String)> {
    let s = &j.status;
    let status = if condition_is_true(&s.conditions, CONDITION_COMPLETE) {
        "Complete"
    } else if condition_is_true(&s.conditions, CONDITION_FAILED) {
        "Failed"
    } else if s.start_time.is_empty() {
        "Pending"
    } else {
        "Running"
    };
    let duration = match parse_timestamp(&s.completion_time) {
        Some(end) => elapsed_since(&s.start_time, end),
        None => elapsed_since(&s.start_time, time::OffsetDateTime::now_utc()),
    }
    .map(format_age)
    .unwrap_or_else(|| "<none>".to_owned());
    let mut cols = vec![
        ("NAME", j.metadata.name.clone()),
        ("STATUS", status.to_owned()),
        (
            "COMPLETIONS",
            format!("{}/{}", s.succeeded, j.spec.completions),
        ),
        ("DURATION", duration),
        ("AGE", age),
    ];
    if wide {
        cols.push((
            "MODULE",
            or_none(&short_module(&j.spec.template.spec.module)),
        ));
        cols.push(("SELECTOR", or_none(&j.spec.selector.to_string())));
    }
    cols
}

fn service(svc: &Service, wide: bool, age: String) -> Vec<(&'static str, String)> {
    let ports: Vec<String> = svc
        .spec
        .ports
        .iter()
        .map(|p| match &p.target_port {
            Some(t) if *t != TargetPort::Number(p.port) => {
                format!("{}:{t}/{}", p.port, p.protocol)
            }
            _ => format!("{}/{}", p.port, p.protocol),
        })
        .collect();
    let ingress = if svc.has_ingress() {
        format!("{}{}", svc.spec.ingress.host, svc.spec.ingress.path)
    } else {
        String::new()
    };
    let mut cols = vec![
        ("NAME", svc.metadata.name.clone()),
        ("CLUSTER-IP", or_none(&svc.spec.cluster_ip)),
        ("PORT(S)", or_none(&ports.join(","))),
        ("INGRESS", or_none(&ingress)),
        ("AGE", age),
    ];
    if wide {
        let sel: Vec<String> = svc
            .spec
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        cols.push(("SELECTOR", or_none(&sel.join(","))));
    }
    cols
}

fn endpoints(ep: &Endpoints, _wide: bool, age: String) -> Vec<(&'static str, String)> {
    const SHOWN: usize = 3;
    let all: Vec<String> = ep
        .ready_addresses()
        .flat_map(|(a, ports)| {
            let ip = if a.ip.contains(':') {
                format!("[{}]", a.ip)
            } else {
                a.ip.clone()
            };
            if ports.is_empty() {
                vec![ip]
            } else {
                ports.iter().map(|p| format!("{ip}:{}", p.port)).collect()
            }
        })
        .collect();
    let mut text = all
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if all.len() > SHOWN {
        text.push_str(&format!(" + {} more...", all.len() - SHOWN));
    }
    vec![
        ("NAME", ep.metadata.name.clone()),
        ("ENDPOINTS", or_none(&text)),
        ("AGE", age),
    ]
}

/// Columns in `kubectl get events` order: LAST SEEN, TYPE, REASON, OBJECT,
/// MESSAGE (wide adds SOURCE, COUNT and NAME).
fn event(e: &Event, wide: bool, _age: String) -> Vec<(&'static str, String)> {
    let last = if e.last_timestamp.is_empty() {
        &e.metadata.creation_timestamp
    } else {
        &e.last_timestamp
    };
    let last_seen = elapsed_since(last, time::OffsetDateTime::now_utc())
        .map(format_age)
        .unwrap_or_else(|| "<unknown>".to_owned());
    let mut cols = vec![
        ("LAST SEEN", last_seen),
        ("TYPE", e.type_.to_string()),
        ("REASON", e.reason.clone()),
        ("OBJECT", e.involved_object.to_string()),
        ("MESSAGE", e.message.clone()),
    ];
    if wide {
        cols.push(("SOURCE", or_none(&e.source.component)));
        cols.push(("COUNT", e.count.to_string()));
        cols.push(("NAME", e.metadata.name.clone()));
    }
    cols
}

fn module(m: &Module, _wide: bool, age: String) -> Vec<(&'static str, String)> {
    vec![
        ("NAME", m.metadata.name.clone()),
        ("DIGEST", short_module(&m.spec.digest)),
        ("TYPE", m.spec.module_type.to_string()),
        ("SIZE", format_size(m.spec.size)),
        ("SOURCE", or_none(&m.spec.source)),
        ("AGE", age),
    ]
}

/// `Ready`, `NotReady` or `Unknown`, with `,SchedulingDisabled` when cordoned.
fn node_status(n: &Node) -> String {
    let ready = match find_condition(&n.status.conditions, CONDITION_READY) {
        Some(c) if c.status == ConditionStatus::True => "Ready",
        Some(c) if c.status == ConditionStatus::False => "NotReady",
        _ => "Unknown",
    };
    if n.spec.unschedulable {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_owned()
    }
}

/// What `flotilla get` shows as STATUS: `Terminating`, the status reason
/// (e.g. `CrashLoopBackOff`) or the phase.
pub fn instance_status(i: &Instance) -> String {
    if i.metadata.is_being_deleted() {
        "Terminating".to_owned()
    } else if !i.status.reason.is_empty() {
        i.status.reason.clone()
    } else {
        i.status.phase.to_string()
    }
}

/// `<none>` for an empty column value, like kubectl.
fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_owned()
    } else {
        s.to_owned()
    }
}
/// `sha256:0123456789ab` (12 hex digits) for a digest, the text otherwise.
fn short_module(module: &str) -> String {
    if is_valid_digest(module) {
        module.chars().take("sha256:".len() + 12).collect()
    } else {
        module.to_owned()
    }
}
/// `1.5MiB`-style size for tables.
fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1}{unit}")
}
/// The short age `flotilla get` shows: `5s`, `3m`, `2h`, `4d` (whole units,
/// rounded down).
pub fn format_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3_600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3_600)
    } else {
        format!("{}d", s / 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::manifest::parse_manifests;
    use flotilla_api::meta::Condition;
    use flotilla_api::object::Kind;

    const CREATED: &str = "2024-05-01T12:00:00Z";

    /// One object of every kind, created long ago.
    fn samples() -> Vec<Object> {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            r#"
kind: Namespace
metadata: {{name: team-a}}
---
kind: Node
metadata: {{name: edge-1}}
---
kind: Lease
metadata: {{name: edge-1, namespace: flotilla-node-lease}}
spec: {{holderIdentity: "node:edge-1", leaseDurationSeconds: 40}}
---
kind: Instance
metadata: {{name: web-1}}
spec: {{module: "{digest}", nodeName: edge-1}}
status: {{phase: Running, restartCount: 2, instanceIP: 10.244.1.7}}
---
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{module: "{digest}"}}
---
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec: {{module: "{digest}"}}
---
kind: Job
metadata: {{name: batch}}
spec:
  template:
    spec: {{module: "{digest}", restartPolicy: Never, world: command}}
---
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
  ingress: {{host: hello.local}}
---
kind: Endpoints
metadata: {{name: web}}
subsets: [{{addresses: [{{ip: 10.244.1.7}}], ports: [{{port: 8080}}]}}]
---
kind: Event
metadata: {{name: web-1.17a3b2c4d5e6f708}}
involvedObject: {{kind: Instance, namespace: default, name: web-1}}
reason: FailedScheduling
message: "0/3 nodes are available"
type: Warning
lastTimestamp: "{CREATED}"
---
kind: Module
metadata: {{name: "sha256-{hex}"}}
spec: {{digest: "{digest}", size: 1536, moduleType: core}}
---
kind: Role
metadata: {{name: reader, namespace: a}}
rules: [{{resources: [instances], verbs: [get]}}]
---
kind: ClusterRole
metadata: {{name: node-reader}}
rules: [{{resources: [nodes], verbs: [get]}}]
---
kind: RoleBinding
metadata: {{name: alice-reads, namespace: a}}
roleRef: {{kind: Role, name: reader}}
subjects: [{{kind: User, name: alice}}]
---
kind: ClusterRoleBinding
metadata: {{name: team-reads-nodes}}
roleRef: {{kind: ClusterRole, name: node-reader}}
subjects: [{{kind: Group, name: team-a}}]
---
kind: ResourceQuota
metadata: {{name: compute, namespace: a}}
spec: {{hard: {{instances: "3", limits.cpu: "2"}}}}
---
kind: LimitRange
metadata: {{name: defaults, namespace: a}}
spec: {{limits: [{{type: Instance, default: {{cpu: 250m, memory: 64Mi}}}}]}}
"#,
            hex = "ab".repeat(32)
        )
        .replace("\nkind:", "\napiVersion: flotilla.dev/v1\nkind:");
        let mut objects = parse_manifests(&text).expect("samples parse");
        for o in &mut objects {
            o.meta_mut().creation_timestamp = CREATED.into();
        }
        objects
    }

    #[test]
    fn every_kind_has_a_name_and_an_age() {
        let objects = samples();
        let kinds: Vec<Kind> = objects.iter().map(Object::kind).collect();
        assert_eq!(kinds, Kind::ALL.to_vec());
        for obj in &objects {
            for wide in [false, true] {
                let cols = columns(obj, wide);
                if obj.kind() == Kind::Event {
                    assert_eq!(cols[0].0, "LAST SEEN");
                    assert!(cols[0].1.ends_with('d'), "{cols:?}");
                    continue;
                }
                assert_eq!(cols[0], ("NAME", obj.meta().name.clone()), "{}", obj.kind());
                assert!(
                    cols.iter().any(|(h, v)| *h == "AGE" && v.ends_with('d')),
                    "{cols:?}"
                );
            }
        }
    }

    #[test]
    fn instance_service_module_and_event_rows() {
        let objects = samples();
        let row = |n: usize, wide: bool| columns(&objects[n], wide);
        let get = |cols: &[(&str, String)], h: &str| {
            cols.iter()
                .find(|(k, _)| *k == h)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let inst = row(3, true);
        assert_eq!(get(&inst, "STATUS"), "Running");
        assert_eq!(get(&inst, "RESTARTS"), "2");
        assert_eq!(get(&inst, "IP"), "10.244.1.7");
        assert_eq!(get(&inst, "MODULE"), "sha256:abababababab");
        let svc = row(7, false);
        assert_eq!(get(&svc, "PORT(S)"), "80:8080/TCP");
        assert_eq!(get(&svc, "INGRESS"), "hello.local");
        assert_eq!(get(&svc, "CLUSTER-IP"), "<none>");
        assert_eq!(get(&row(8, false), "ENDPOINTS"), "10.244.1.7:8080");
        let ev = row(9, false);
        assert_eq!(ev[3], ("OBJECT", "instance/web-1".to_owned()));
        assert_eq!(get(&row(10, false), "SIZE"), "1.5KiB");
    }

    #[test]
    fn node_status_names_readiness_and_cordon() {
        let mut n = Node::default();
        assert_eq!(node_status(&n), "Unknown");
        n.status.conditions.push(Condition {
            type_: CONDITION_READY.into(),
            status: ConditionStatus::True,
            ..Condition::default()
        });
        n.spec.unschedulable = true;
        assert_eq!(node_status(&n), "Ready,SchedulingDisabled");
    }

    #[test]
    fn sizes_and_ages() {
        use std::time::Duration;
        assert_eq!(format_size(10), "10B");
        assert_eq!(format_size(1536), "1.5KiB");
        assert_eq!(format_size(3 << 20), "3.0MiB");
        assert_eq!(format_age(Duration::from_secs(5)), "5s");
        assert_eq!(format_age(Duration::from_secs(190)), "3m");
        assert_eq!(format_age(Duration::from_secs(7_300)), "2h");
        assert_eq!(format_age(Duration::from_secs(4 * 86_400 + 5)), "4d");
    }
}

use super::*;
use crate::daemonset::DaemonSetSpec;
use crate::deployment::{DeploymentRevision, IntOrPercent};
use crate::endpoints::{EndpointAddress, EndpointPort, EndpointSubset};
use crate::event::{EventSource, EventType};
use crate::instance::{
    EnvVar, InstancePhase, InstancePort, InstanceTemplate, Probe, RestartPolicy, Toleration,
    TolerationOperator, World,
};
use crate::job::JobSpec;
use crate::lease::LeaseSpec;
use crate::meta::{Condition, ConditionStatus, ObjectReference, OwnerReference};
use crate::module::{ModuleSpec, ModuleType};
use crate::namespace::Namespace;
use crate::node::Node;
use crate::node::{NodeResources, Taint, TaintEffect};
use crate::quantity::Quantity;
use crate::rbac::{PolicyRule, RoleRef, Subject};
use crate::service::{Protocol, ServicePort, TargetPort};

fn q(s: &str) -> Quantity {
    Quantity::parse(s).expect("quantity")
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    let mut m = ObjectMeta::new(namespace, name);
    m.uid = "0b6f6c1e-uid".into();
    m.resource_version = "42".into();
    m.generation = 2;
    m.labels.insert("app".into(), "web".into());
    m.labels.insert("empty".into(), String::new());
    m.annotations.insert("note".into(), "hello".into());
    m.creation_timestamp = "2024-05-01T12:00:00Z".into();
    m
}

fn template() -> InstanceTemplate {
    let mut t = InstanceTemplate::default();
    t.metadata.labels.insert("app".into(), "web".into());
    t.spec.module = format!("sha256:{}", "ab".repeat(32));
    t.spec.world = World::Http;
    t.spec.args = vec!["--flag".into(), String::new()];
    t.spec.env = vec![EnvVar {
        name: "MODE".into(),
        value: String::new(),
    }];
    t.spec.ports = vec![InstancePort {
        name: "http".into(),
        port: 8080,
        protocol: Protocol::Tcp,
    }];
    t.spec.resources.limits.memory = Some(q("64Mi"));
    t.spec.resources.limits.cpu = Some(q("500m"));
    t.spec.tolerations = vec![Toleration {
        key: "edge".into(),
        operator: TolerationOperator::Exists,
        effect: Some(TaintEffect::NoExecute),
        toleration_seconds: Some(30),
        ..Toleration::default()
    }];
    t.spec.readiness_probe = Some(Probe::default());
    t.spec.allowed_outbound_hosts = vec!["api.example.com".into()];
    t
}

/// One populated object of every kind.
fn samples() -> Vec<Object> {
    let mut ns = Namespace {
        metadata: meta("", "team-a"),
        ..Namespace::default()
    };
    ns.metadata.finalizers = vec!["flotilla.dev/namespace".into()];
    let mut node = Node {
        metadata: meta("", "edge-1.local"),
        ..Node::default()
    };
    node.spec.taints = vec![Taint::parse("edge=true:NoSchedule").expect("taint")];
    node.spec.instance_cidr = "10.244.1.0/24".into();
    node.status.capacity = NodeResources {
        cpu: q("2"),
        memory: q("4Gi"),
        instances: 1000,
    };
    node.status.allocatable = node.status.capacity.clone();
    node.status.conditions = vec![Condition {
        type_: "Ready".into(),
        status: ConditionStatus::True,
        reason: "AgentReady".into(),
        message: String::new(),
        last_transition_time: "2024-05-01T12:00:00Z".into(),
    }];
    node.status.node_info.wasmtime_version = "48.0.0".into();
    let lease = Lease {
        metadata: meta("flotilla-node-lease", "edge-1.local"),
        spec: LeaseSpec {
            holder_identity: "node:edge-1.local".into(),
            lease_duration_seconds: 40,
            acquire_time: "2024-05-01T12:00:00Z".into(),
            renew_time: "2024-05-01T12:00:10.5Z".into(),
            lease_transitions: 3,
        },
    };
    let mut inst = Instance {
        metadata: meta("default", "web-1"),
        spec: template().spec,
        ..Instance::default()
    };
    inst.metadata.owner_references = vec![OwnerReference {
        api_version: API_VERSION.into(),
        kind: "Deployment".into(),
        name: "web".into(),
        uid: "u1".into(),
        controller: true,
        block_owner_deletion: false,
    }];
    inst.status.phase = InstancePhase::Running;
    inst.status.instance_ip = "10.244.1.7".into();
    inst.status.exit_code = Some(0);
    inst.status.restart_count = 2;
    let mut deploy = Deployment {
        metadata: meta("default", "web"),
        ..Deployment::default()
    };
    deploy.spec.replicas = 0;
    deploy
        .spec
        .selector
        .match_labels
        .insert("app".into(), "web".into());
    deploy.spec.template = template();
    deploy.spec.strategy.rolling_update.max_surge = IntOrPercent::Int(1);
    deploy.status.history = vec![DeploymentRevision {
        revision: 1,
        template_hash: template().template_hash(),
        template: template(),
        change_cause: String::new(),
        created: "2024-05-01T12:00:00Z".into(),
    }];
    let ds = DaemonSet {
        metadata: meta("default", "agent"),
        spec: DaemonSetSpec {
            selector: crate::labels::Selector::from_labels(
                [("app".to_owned(), "web".to_owned())].into(),
            ),
            template: template(),
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    };
    let mut job_template = template();
    job_template.spec.restart_policy = RestartPolicy::Never;
    job_template.spec.world = World::Command;
    job_template.spec.readiness_probe = None;
    let job = Job {
        metadata: meta("default", "batch"),
        spec: JobSpec {
            completions: 5,
            parallelism: 2,
            active_deadline_seconds: Some(600),
            template: job_template,
            ..JobSpec::default()
        },
        ..Job::default()
    };
    let mut svc = Service {
        metadata: meta("default", "web"),
        ..Service::default()
    };
    svc.spec.selector.insert("app".into(), "web".into());
    svc.spec.selector.insert("tier".into(), String::new());
    svc.spec.ports = vec![ServicePort {
        name: "http".into(),
        port: 80,
        target_port: Some(TargetPort::Name("http".into())),
        protocol: Protocol::Tcp,
    }];
    svc.spec.cluster_ip = "10.96.0.10".into();
    svc.spec.ingress.host = "hello.local".into();
    let ep = Endpoints {
        metadata: meta("default", "web"),
        subsets: vec![EndpointSubset {
            addresses: vec![EndpointAddress {
                ip: "10.244.1.7".into(),
                node_name: "edge-1.local".into(),
                target_ref: Some(ObjectReference {
                    kind: "Instance".into(),
                    namespace: "default".into(),
                    name: "web-1".into(),
                    uid: "u2".into(),
                }),
            }],
            not_ready_addresses: vec![],
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
        }],
    };
    let ev = Event {
        metadata: meta("default", "web-1.17a3b2c4d5e6f708"),
        involved_object: ObjectReference {
            kind: "Instance".into(),
            namespace: "default".into(),
            name: "web-1".into(),
            uid: "u2".into(),
        },
        reason: "FailedScheduling".into(),
        message: "0/3 nodes are available: 3 insufficient memory.".into(),
        type_: EventType::Warning,
        count: 4,
        first_timestamp: "2024-05-01T12:00:00Z".into(),
        last_timestamp: "2024-05-01T12:05:00Z".into(),
        source: EventSource {
            component: "scheduler".into(),
            host: String::new(),
        },
    };
    let module = Module {
        metadata: meta("", &format!("sha256-{}", "ab".repeat(32))),
        spec: ModuleSpec {
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 12_345,
            module_type: ModuleType::Core,
            source: "hello.wasm".into(),
        },
    };
    let role = Role {
        metadata: meta("a", "reader"),
        rules: vec![PolicyRule::new(
            &["instances", "instances/logs"],
            &["get", "list"],
        )],
    };
    let cluster_role = ClusterRole {
        metadata: meta("", "node-reader"),
        rules: vec![PolicyRule {
            resource_names: vec!["edge-1".into()],
            ..PolicyRule::new(&["nodes"], &["get"])
        }],
    };
    let role_ref = |kind: &str, name: &str| RoleRef {
        kind: kind.into(),
        name: name.into(),
        ..RoleRef::default()
    };
    let subject = |kind: &str, name: &str| Subject {
        kind: kind.into(),
        name: name.into(),
        ..Subject::default()
    };
    let role_binding = RoleBinding {
        metadata: meta("a", "alice-reads"),
        role_ref: role_ref("Role", "reader"),
        subjects: vec![subject("User", "alice"), subject("Group", "team-a")],
    };
    let quota = crate::quota::ResourceQuota {
        metadata: meta("a", "compute"),
        spec: crate::quota::ResourceQuotaSpec {
            hard: [("instances".to_string(), Quantity::parse("3").unwrap())].into(),
        },
        ..Default::default()
    };
    let limit_range = crate::quota::LimitRange {
        metadata: meta("a", "defaults"),
        spec: crate::quota::LimitRangeSpec {
            limits: vec![crate::quota::LimitRangeItem {
                type_: "Instance".into(),
                default: crate::instance::ResourceList {
                    cpu: Some(Quantity::parse("250m").unwrap()),
                    memory: Some(Quantity::parse("64Mi").unwrap()),
                },
                ..Default::default()
            }],
        },
    };
    let cluster_role_binding = ClusterRoleBinding {
        metadata: meta("", "edge-reads-itself"),
        role_ref: role_ref("ClusterRole", "node-reader"),
        subjects: vec![subject("Node", "edge-1")],
    };
    vec![
        Object::Namespace(ns),
        Object::Node(node),
        Object::Lease(lease),
        Object::Instance(inst),
        Object::Deployment(deploy),
        Object::DaemonSet(ds),
        Object::Job(job),
        Object::Service(svc),
        Object::Endpoints(ep),
        Object::Event(ev),
        Object::Module(module),
        Object::Role(role),
        Object::ClusterRole(cluster_role),
        Object::RoleBinding(role_binding),
        Object::ClusterRoleBinding(cluster_role_binding),
        Object::ResourceQuota(quota),
        Object::LimitRange(limit_range),
    ]
}

#[test]
fn samples_cover_every_kind_and_are_valid() {
    let objs = samples();
    let kinds: Vec<Kind> = objs.iter().map(Object::kind).collect();
    assert_eq!(kinds, Kind::ALL.to_vec());
    for o in &objs {
        if let Err(e) = o.validate() {
            panic!("{} invalid: {e}", o.kind());
        }
    }
}

#[test]
fn round_trip_postcard_json_and_manifest() {
    for obj in samples() {
        let bytes = postcard::to_stdvec(&obj).expect("postcard encode");
        let back: Object = postcard::from_bytes(&bytes).expect("postcard decode");
        assert_eq!(back, obj, "postcard {}", obj.kind());

        let json = serde_json::to_string(&obj).expect("json encode");
        let back: Object = serde_json::from_str(&json).expect("json decode");
        assert_eq!(back, obj, "json {}", obj.kind());

        let manifest = obj.to_manifest();
        let back = Object::from_manifest(manifest.clone())
            .unwrap_or_else(|e| panic!("manifest {}: {e}\n{manifest:#}", obj.kind()));
        assert_eq!(back, obj, "manifest {}", obj.kind());

        let yaml = serde_yaml_ng::to_string(&manifest).expect("yaml");
        let parsed = crate::manifest::parse_manifests(&yaml)
            .unwrap_or_else(|e| panic!("yaml {}: {e}\n{yaml}", obj.kind()));
        assert_eq!(parsed.len(), 1);
        let mut want = obj.clone();
        want.apply_defaults();
        assert_eq!(parsed[0], want, "yaml {}", obj.kind());
    }
}

#[test]
fn every_empty_object_round_trips() {
    for kind in Kind::ALL {
        let obj = Object::new_empty(kind, "default", "x");
        assert_eq!(obj.kind(), kind);
        assert_eq!(obj.meta().namespace.is_empty(), !kind.namespaced());
        let bytes = postcard::to_stdvec(&obj).expect("encode");
        assert_eq!(postcard::from_bytes::<Object>(&bytes).expect("decode"), obj);
        let back = Object::from_manifest(obj.to_manifest()).expect("manifest");
        assert_eq!(back, obj, "{kind}");
    }
}

#[test]
fn to_manifest_prunes_empty_fields() {
    let mut inst = Instance {
        metadata: ObjectMeta::new("default", "web"),
        ..Instance::default()
    };
    inst.metadata.labels.insert("flag".into(), String::new());
    inst.spec.module = "./web.wasm".into();
    let m = Object::Instance(inst).to_manifest();
    assert_eq!(m["apiVersion"], API_VERSION);
    assert_eq!(m["kind"], "Instance");
    let meta = m["metadata"].as_object().expect("metadata");
    assert_eq!(
        meta.keys().collect::<Vec<_>>(),
        ["labels", "name", "namespace"],
        "{m:#}"
    );
    assert_eq!(m["metadata"]["labels"]["flag"], "");
    let spec = m["spec"].as_object().expect("spec");
    for absent in [
        "args",
        "env",
        "nodeName",
        "nodeSelector",
        "affinity",
        "resources",
        "livenessProbe",
    ] {
        assert!(!spec.contains_key(absent), "{absent} in {m:#}");
    }
    assert_eq!(m["spec"]["module"], "./web.wasm");
    assert_eq!(m["spec"]["restartPolicy"], "Always");
    assert_eq!(m["status"]["phase"], "Pending");
    assert!(m["status"].get("exitCode").is_none());
    assert!(m["status"].get("instanceIP").is_none());

    let ns = Object::new_empty(Kind::Namespace, "", "team");
    let m = ns.to_manifest();
    assert!(m.get("spec").is_none(), "{m:#}");
    assert_eq!(m["status"]["phase"], "Active");

    let mut svc = Object::new_empty(Kind::Service, "default", "s");
    if let Object::Service(s) = &mut svc {
        s.spec.selector.insert("x".into(), String::new());
    }
    assert_eq!(svc.to_manifest()["spec"]["selector"]["x"], "");

    let d = samples().remove(4).to_manifest();
    assert!(
        d["spec"]["template"]["metadata"]
            .get("generation")
            .is_none(),
        "{d:#}"
    );

    let mut o = samples().remove(3);
    o.meta_mut().resource_version = "17".into();
    let m = o.to_manifest();
    assert_eq!(m["metadata"]["resourceVersion"], "17");
    assert_eq!(m["metadata"]["generation"], 2);
}

#[test]
fn from_manifest_errors() {
    let cases = [
        (
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            r#"Deployment "web": apiVersion: "apps/v1" is not supported (expected flotilla.dev/v1)"#,
        ),
        (
            serde_json::json!({"apiVersion": API_VERSION, "kind": "Pod", "metadata": {"name": "web"}}),
            "kind: unknown kind \"Pod\" (known kinds: Namespace, Node, Lease, Instance, Deployment, DaemonSet, Job, Service, Endpoints, Event, Module, Role, ClusterRole, RoleBinding, ClusterRoleBinding, ResourceQuota, LimitRange)",
        ),
        (
            serde_json::json!({"apiVersion": API_VERSION, "kind": "instance"}),
            r#"kind: unknown kind "instance" (did you mean "Instance"?)"#,
        ),
        (
            serde_json::json!({"apiVersion": API_VERSION, "metadata": {"name": "web"}}),
            "kind: required",
        ),
        (
            serde_json::json!({"apiVersion": API_VERSION, "kind": "Instance", "metadata": {"name": "web"}, "spec": {"resources": {"limits": {"memory": "64Xi"}}}}),
            r#"Instance "web": spec.resources.limits.memory: "64Xi" is not a quantity"#,
        ),
        (
            serde_json::json!({"apiVersion": API_VERSION, "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": -1}}),
            r#"Deployment "web": spec.replicas: must be >= 0, got -1"#,
        ),
        (
            serde_json::json!({"apiVersion": API_VERSION, "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "prot": "TCP"}]}}),
            r#"Service "s": spec.ports[0].prot: unknown field `prot`, expected one of `name`, `port`, `targetPort`, `protocol`"#,
        ),
        (
            serde_json::json!({"apiVersion": API_VERSION, "kind": "Instance", "spce": {}}),
            "Instance: spce: unknown field `spce`, expected one of `metadata`, `spec`, `status`",
        ),
        (serde_json::json!([1, 2]), "expected a mapping"),
    ];
    for (value, want) in cases {
        let err = Object::from_manifest(value).expect_err(want);
        let text = err.to_string();
        assert!(text.starts_with(want), "got {text:?}, want {want:?}");
    }
}

#[test]
fn validation_messages() {
    let mut o = Object::new_empty(Kind::Instance, "", "Web_1");
    let errs = o.validate().expect_err("invalid");
    let text = errs.to_string();
    assert!(text.contains(r#"metadata.name: "Web_1" is not a valid name (lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"#), "{text}");
    assert!(text.contains("metadata.namespace: required"), "{text}");
    assert!(text.contains("spec.module: required"), "{text}");
    o.apply_defaults();
    assert_eq!(o.meta().namespace, "default");

    let mut d = Object::new_empty(Kind::Deployment, "default", "web");
    let text = d.validate().expect_err("invalid").to_string();
    assert!(text.contains("spec.selector: required"), "{text}");
    assert!(
        text.contains("spec.template.spec.module: required"),
        "{text}"
    );
    if let Object::Deployment(dep) = &mut d {
        dep.spec
            .selector
            .match_labels
            .insert("app".into(), "web".into());
        dep.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        dep.spec.template.spec.module = "./web.wasm".into();
    }
    d.validate().expect("valid");

    let n = Object::new_empty(Kind::Node, "ignored", "edge-1.example.com");
    n.validate().expect("dotted node names are fine");
    let mut n = n;
    n.meta_mut().namespace = "default".into();
    let text = n.validate().expect_err("namespaced node").to_string();
    assert!(
        text.contains("metadata.namespace: must be empty: Node is cluster-scoped"),
        "{text}"
    );
}

#[test]
fn defaults() {
    let mut job = Object::new_empty(Kind::Job, "", "batch");
    job.apply_defaults();
    let Object::Job(j) = &job else { unreachable!() };
    assert_eq!(j.metadata.namespace, "default");
    assert_eq!(
        (j.spec.completions, j.spec.parallelism, j.spec.backoff_limit),
        (1, 1, 6)
    );
    assert_eq!(
        j.spec
            .selector
            .match_labels
            .get("job-name")
            .map(String::as_str),
        Some("batch")
    );
    assert!(j.spec.selector.matches(&j.spec.template.metadata.labels));

    let Object::Deployment(d) = Object::new_empty(Kind::Deployment, "default", "web") else {
        unreachable!()
    };
    assert_eq!(d.spec.replicas, 1);
    assert_eq!(
        d.spec.strategy.rolling_update.max_surge,
        IntOrPercent::Percent(25)
    );
    assert_eq!(
        d.spec.strategy.rolling_update.max_unavailable,
        IntOrPercent::Percent(25)
    );

    let mut svc = samples().remove(7);
    if let Object::Service(s) = &mut svc {
        s.spec.ports[0].target_port = None;
    }
    svc.apply_defaults();
    let Object::Service(s) = &svc else {
        unreachable!()
    };
    assert_eq!(s.spec.ports[0].target_port, Some(TargetPort::Number(80)));

    let mut again = svc.clone();
    again.apply_defaults();
    assert_eq!(again, svc, "defaults are idempotent");
}

#[test]
fn desired_state_and_copies() {
    let objs = samples();
    let a = objs[3].clone();
    let mut b = a.clone();
    b.meta_mut().resource_version = "99".into();
    b.meta_mut().uid = "other".into();
    b.meta_mut().generation = 7;
    if let Object::Instance(i) = &mut b {
        i.status.phase = InstancePhase::Failed;
    }
    assert!(a.same_desired_state(&b));
    let mut c = b.clone();
    c.meta_mut().labels.insert("new".into(), "x".into());
    assert!(!a.same_desired_state(&c));
    let mut d = b.clone();
    if let Object::Instance(i) = &mut d {
        i.spec.args.push("more".into());
    }
    assert!(!a.same_desired_state(&d));
    assert!(!a.same_desired_state(&objs[4]));

    let mut x = a.clone();
    x.copy_status_from(&b);
    let Object::Instance(xi) = &x else {
        unreachable!()
    };
    assert_eq!(xi.status.phase, InstancePhase::Failed);
    x.copy_spec_from(&d);
    let Object::Instance(xi) = &x else {
        unreachable!()
    };
    assert_eq!(xi.spec.args.last().map(String::as_str), Some("more"));
    // Different kinds: no-op.
    let before = x.clone();
    x.copy_spec_from(&objs[0]);
    x.copy_status_from(&objs[0]);
    assert_eq!(x, before);

    let mut ev = objs[9].clone();
    let mut other = objs[9].clone();
    other.meta_mut().name = "other".into();
    if let Object::Event(e) = &mut other {
        e.count = 9;
    }
    ev.copy_spec_from(&other);
    let Object::Event(e) = &ev else {
        unreachable!()
    };
    assert_eq!(e.count, 9);
    assert_eq!(e.metadata.name, "web-1.17a3b2c4d5e6f708");
}

#[test]
fn kinds() {
    for (text, kind) in [
        ("instance", Kind::Instance),
        ("Instances", Kind::Instance),
        ("inst", Kind::Instance),
        ("deploy", Kind::Deployment),
        ("svc", Kind::Service),
        ("ns", Kind::Namespace),
        ("no", Kind::Node),
        ("ds", Kind::DaemonSet),
        ("ep", Kind::Endpoints),
        ("ev", Kind::Event),
        ("mod", Kind::Module),
        ("LEASES", Kind::Lease),
        ("jobs", Kind::Job),
    ] {
        assert_eq!(Kind::parse(text), Ok(kind), "{text}");
    }
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.as_str()), Ok(k));
        assert_eq!(Kind::parse(k.plural()), Ok(k));
    }
    let err = Kind::parse("pods").unwrap_err().to_string();
    assert!(
        err.starts_with("unknown kind \"pods\" (known kinds: Namespace, Node,"),
        "{err}"
    );
    assert!(
        !Kind::Node.namespaced() && !Kind::Module.namespaced() && !Kind::Namespace.namespaced()
    );
    assert!(Kind::Instance.namespaced());
}

#[test]
fn resource_conversions() {
    let inst = Instance {
        metadata: ObjectMeta::new("default", "a"),
        ..Instance::default()
    };
    let obj: Object = inst.clone().into();
    assert_eq!(<Instance as Resource>::KIND, Kind::Instance);
    assert_eq!(Instance::try_from(obj.clone()), Ok(inst));
    assert!(Deployment::try_from(obj).is_err());
}

#[test]
fn manifest_error_display() {
    let e = ManifestError {
        document: 2,
        kind: "Instance".into(),
        name: "web".into(),
        field: "spec.resources.limits.memory".into(),
        message: "bad".into(),
    };
    assert_eq!(
        e.to_string(),
        r#"document 2 (Instance "web"): spec.resources.limits.memory: bad"#
    );
    let e = ManifestError {
        document: 1,
        message: "invalid YAML at line 3 column 5: oops".into(),
        ..ManifestError::default()
    };
    assert_eq!(
        e.to_string(),
        "document 1: invalid YAML at line 3 column 5: oops"
    );
    let e = ManifestError::new("Job", "", "spec", "x").in_document(3);
    assert_eq!(e.to_string(), "document 3 (Job): spec: x");
}

#[test]
fn rbac_objects_name_what_is_wrong() {
    let manifest = |yaml: &str| {
        let value: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut o = Object::from_manifest(value).expect("parses");
        o.apply_defaults();
        o.validate().map_err(|e| e.to_string())
    };
    let cases = [
        (
            "apiVersion: flotilla.dev/v1\nkind: Role\nmetadata: {name: r, namespace: a}\nrules:\n- {resources: [pods], verbs: [get, fly]}\n",
            &[
                r#"rules[0].verbs[1]: "fly" is not a verb"#,
                r#"rules[0].resources[0]: "pods" is not a resource"#,
            ][..],
        ),
        (
            "apiVersion: flotilla.dev/v1\nkind: ClusterRole\nmetadata: {name: c}\nrules:\n- {resources: [instances]}\n",
            &["rules[0].verbs: required"][..],
        ),
        (
            "apiVersion: flotilla.dev/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\nroleRef: {kind: Role, name: r}\nsubjects:\n- {kind: ServiceAccount, name: x}\n",
            &[
                r#"roleRef.kind: "Role" cannot be bound here (expected ClusterRole)"#,
                r#"subjects[0].kind: "ServiceAccount" is not a subject kind (expected User, Group or Node)"#,
            ][..],
        ),
        (
            "apiVersion: flotilla.dev/v1\nkind: RoleBinding\nmetadata: {name: b}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole}\n",
            &["roleRef.name: required", "subjects: required"][..],
        ),
    ];
    for (yaml, wants) in cases {
        let text = manifest(yaml).expect_err(yaml);
        for want in wants {
            assert!(text.contains(want), "{yaml}: got {text:?}, want {want:?}");
        }
    }
    let ok = manifest("apiVersion: flotilla.dev/v1\nkind: RoleBinding\nmetadata: {name: b}\nroleRef: {kind: ClusterRole, name: edit}\nsubjects:\n- {kind: Group, name: 'system:masters'}\n");
    assert_eq!(ok, Ok(()), "a RoleBinding defaults to namespace default");
}

#[test]
fn quotas_and_limit_ranges_name_what_is_wrong() {
    let check = |yaml: &str| {
        let value: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut o = Object::from_manifest(value).expect("parses");
        o.apply_defaults();
        o.validate().map_err(|e| e.to_string())
    };
    let err = check("apiVersion: flotilla.dev/v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec: {hard: {pods: '3'}}\n").unwrap_err();
    assert!(err.contains(r#"spec.hard.pods: "pods" cannot be capped (expected one of instances, services, limits.cpu, limits.memory)"#), "{err}");
    let err = check("apiVersion: flotilla.dev/v1\nkind: LimitRange\nmetadata: {name: l}\nspec: {limits: [{type: Pod}]}\n").unwrap_err();
    assert!(
        err.contains(
            r#"spec.limits[0].type: "Pod" is not a kind limits apply to (expected Instance)"#
        ),
        "{err}"
    );
    let value: serde_json::Value = serde_yaml_ng::from_str("apiVersion: flotilla.dev/v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec: {hard: {instances: -1}}\n").unwrap();
    let err = Object::from_manifest(value).unwrap_err().to_string();
    assert!(
        err.contains("spec.hard.instances") && err.contains("must not be negative"),
        "{err}"
    );
    let mut instance = crate::instance::Instance::default();
    instance.spec.resources.limits.memory = Some(Quantity::parse("8Mi").unwrap());
    let range: crate::quota::LimitRange = serde_yaml_ng::from_str(
        "metadata: {name: l}\nspec: {limits: [{type: Instance, default: {cpu: 250m, memory: 64Mi}, defaultRequest: {cpu: 100m}}]}\n",
    )
    .unwrap();
    range.default_instance(&mut instance);
    let r = &instance.spec.resources;
    assert_eq!(r.limits.cpu.as_ref().map(Quantity::as_str), Some("250m"));
    assert_eq!(
        r.limits.memory.as_ref().map(Quantity::as_str),
        Some("8Mi"),
        "what is set stays"
    );
    assert_eq!(r.requests.cpu.as_ref().map(Quantity::as_str), Some("100m"));
    assert_eq!(
        r.requests.memory.as_ref().map(Quantity::as_str),
        Some("8Mi")
    );
}

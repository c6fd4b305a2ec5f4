//! Every controller's decision driven as a table: a snapshot in, the writes
//! and the next look out. No server, no cache, no clock but the one given.

use std::time::Duration;

use flotilla_api::daemonset::DaemonSet;
use flotilla_api::deployment::{Deployment, LABEL_TEMPLATE_HASH};
use flotilla_api::endpoints::Endpoints;
use flotilla_api::event::Event;
use flotilla_api::instance::{Instance, InstancePhase, CONDITION_READY};
use flotilla_api::job::{Job, CONDITION_COMPLETE, CONDITION_FAILED};
use flotilla_api::manifest::parse_manifests;
use flotilla_api::meta::{
    find_condition, format_timestamp, set_condition, Condition, ConditionStatus, ObjectMeta,
    FOREGROUND_FINALIZER,
};
use flotilla_api::node::{
    Node, Taint, TaintEffect, CONDITION_READY as NODE_READY, TAINT_UNREACHABLE,
};
use flotilla_api::object::{Kind, Object};
use flotilla_api::service::Service;

use super::writes::{new_instance, Plan, Write};
use super::{daemonset, deployment, endpoints, events, gc, job, node_lifecycle};
use super::{Action, Now, Settings};

const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn parse(yaml: &str) -> Object {
    let mut o = parse_manifests(&format!("apiVersion: flotilla.dev/v1\n{yaml}"))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .remove(0);
    o.meta_mut().uid = format!("uid-{}", o.meta().name);
    o.meta_mut().generation = 1;
    o
}

fn now() -> Now {
    Now::read()
}

fn ago(now: &Now, secs: i64) -> String {
    format_timestamp(now.wall - time::Duration::seconds(secs))
}

fn a_deployment(replicas: u32, extra: &str) -> Deployment {
    let Object::Deployment(d) = parse(&format!(
        "kind: Deployment\nmetadata: {{name: web, namespace: default}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{module: \"{DIGEST}\"}}\n{extra}"
    )) else {
        unreachable!()
    };
    d
}

/// An instance of `owner`'s template (the current one), Ready for
/// `ready_secs` when given, on node `node`.
fn owned_instance(
    kind: Kind,
    owner: &ObjectMeta,
    template: &flotilla_api::instance::InstanceTemplate,
    node: &str,
    ready_secs: Option<i64>,
    now: &Now,
) -> Instance {
    let mut i = new_instance(kind, owner, template, &owner.name, None);
    i.metadata.uid = format!("uid-{}", i.metadata.name);
    i.spec.node_name = node.to_string();
    i.status.phase = InstancePhase::Running;
    i.status.instance_ip = "10.244.0.5".into();
    if let Some(secs) = ready_secs {
        let mut c = Condition::new(CONDITION_READY, ConditionStatus::True, "Ready", "");
        c.last_transition_time = ago(now, secs);
        set_condition(&mut i.status.conditions, c);
        i.status.conditions[0].last_transition_time = ago(now, secs);
    }
    i
}

fn count(plan: &Plan, what: fn(&Write) -> bool) -> usize {
    plan.writes.iter().filter(|w| what(w)).count()
}

fn creates(w: &Write) -> bool {
    matches!(w, Write::CreateInstance(_))
}

fn deletes(w: &Write) -> bool {
    matches!(w, Write::DeleteInstance(_))
}

fn events_named(plan: &Plan, reason: &str) -> usize {
    plan.writes
        .iter()
        .filter(|w| matches!(w, Write::Event { reason: r, .. } if r == reason))
        .count()
}

fn status_of(plan: &Plan) -> Option<&Object> {
    plan.writes.iter().find_map(|w| match w {
        Write::Status(o) => Some(o),
        _ => None,
    })
}

// === Deployment ===

#[test]
fn deployment_decisions() {
    struct Case {
        name: &'static str,
        replicas: u32,
        extra: &'static str,
        /// Ready seconds of each current-template instance (None: not ready).
        current: Vec<Option<i64>>,
        /// Ready instances of an older template.
        old: usize,
        module_known: bool,
        creates: usize,
        deletes: usize,
        blocked: bool,
    }
    let cases = vec![
        Case {
            name: "a new deployment creates its replicas",
            replicas: 3,
            extra: "",
            current: vec![],
            old: 0,
            module_known: true,
            creates: 3,
            deletes: 0,
            blocked: false,
        },
        Case {
            name: "a module never uploaded blocks creates",
            replicas: 3,
            extra: "",
            current: vec![],
            old: 0,
            module_known: false,
            creates: 0,
            deletes: 0,
            blocked: true,
        },
        Case {
            name: "an unknown module does not block what needs no create",
            replicas: 1,
            extra: "",
            current: vec![Some(5)],
            old: 0,
            module_known: false,
            creates: 0,
            deletes: 0,
            blocked: false,
        },
        Case {
            name: "scaling down deletes the surplus",
            replicas: 2,
            extra: "",
            current: vec![Some(5), Some(5), Some(5), Some(5)],
            old: 0,
            module_known: true,
            creates: 0,
            deletes: 2,
            blocked: false,
        },
        Case {
            name: "a rollout surges one new instance first",
            replicas: 3,
            extra: "",
            current: vec![],
            old: 3,
            module_known: true,
            creates: 1,
            deletes: 0,
            blocked: false,
        },
        Case {
            name: "a rollout removes old ones as new ones are available",
            replicas: 3,
            extra: "",
            current: vec![Some(5)],
            old: 3,
            module_known: true,
            creates: 0,
            deletes: 1,
            blocked: false,
        },
        Case {
            name: "recreate deletes every old instance first",
            replicas: 2,
            extra: "  strategy: {type: Recreate}\n",
            current: vec![],
            old: 2,
            module_known: true,
            creates: 0,
            deletes: 2,
            blocked: false,
        },
        Case {
            name: "paused does nothing to instances",
            replicas: 3,
            extra: "  paused: true\n",
            current: vec![],
            old: 0,
            module_known: true,
            creates: 0,
            deletes: 0,
            blocked: false,
        },
    ];
    for c in cases {
        let now = now();
        let d = a_deployment(c.replicas, c.extra);
        let mut owned: Vec<Instance> = c
            .current
            .iter()
            .map(|r| {
                owned_instance(
                    Kind::Deployment,
                    &d.metadata,
                    &d.spec.template,
                    "n1",
                    *r,
                    &now,
                )
            })
            .collect();
        let mut old_template = d.spec.template.clone();
        old_template.spec.args = vec!["--old".into()];
        for _ in 0..c.old {
            let mut i = owned_instance(
                Kind::Deployment,
                &d.metadata,
                &old_template,
                "n1",
                Some(60),
                &now,
            );
            i.metadata
                .labels
                .insert(LABEL_TEMPLATE_HASH.into(), old_template.template_hash());
            owned.push(i);
        }
        let mut progress = None;
        let plan = deployment::decide(&d, &owned, c.module_known, &mut progress, &now);
        assert_eq!(count(&plan, creates), c.creates, "{}: {plan:#?}", c.name);
        assert_eq!(count(&plan, deletes), c.deletes, "{}: {plan:#?}", c.name);
        assert_eq!(plan.blocked.is_some(), c.blocked, "{}", c.name);
        if c.blocked {
            assert_eq!(events_named(&plan, "FailedCreate"), 1, "{}", c.name);
            assert!(plan.blocked.unwrap().contains("has not been uploaded"));
        }
        for w in &plan.writes {
            if let Write::CreateInstance(i) = w {
                assert_eq!(i.metadata.owner_references[0].uid, d.metadata.uid);
                assert_eq!(
                    i.metadata.labels.get(LABEL_TEMPLATE_HASH),
                    Some(&d.spec.template.template_hash())
                );
                assert!(i.spec.node_name.is_empty(), "the scheduler binds");
            }
        }
    }
}

#[test]
fn a_settled_deployment_writes_nothing_and_waits_for_a_change() {
    let now = now();
    let mut d = a_deployment(2, "");
    let owned: Vec<Instance> = (0..2)
        .map(|_| {
            owned_instance(
                Kind::Deployment,
                &d.metadata,
                &d.spec.template,
                "n1",
                Some(30),
                &now,
            )
        })
        .collect();
    let mut progress = None;
    let first = deployment::decide(&d, &owned, true, &mut progress, &now);
    let Some(Object::Deployment(written)) = status_of(&first) else {
        panic!("{first:#?}")
    };
    assert_eq!(written.status.available_replicas, 2);
    d.status = written.status.clone();
    let again = deployment::decide(&d, &owned, true, &mut progress, &now);
    assert_eq!(again.writes, Vec::new(), "idempotent");
    assert_eq!(again.action, Action::AwaitChange);
}

#[test]
fn deployment_clocks_requeue_for_min_ready_and_the_progress_deadline() {
    let now = now();
    let d = a_deployment(1, "  minReadySeconds: 10\n  progressDeadlineSeconds: 600\n");
    let owned = vec![owned_instance(
        Kind::Deployment,
        &d.metadata,
        &d.spec.template,
        "n1",
        Some(4),
        &now,
    )];
    let mut progress = None;
    let plan = deployment::decide(&d, &owned, true, &mut progress, &now);
    match plan.action {
        Action::Requeue(after) => assert!(
            after > Duration::from_secs(5) && after <= Duration::from_secs(7),
            "{after:?}"
        ),
        other => panic!("{other:?}"),
    }
    // A rollout whose counts stood still past its deadline says so, once.
    let stalled = Now {
        mono: now.mono + Duration::from_secs(601),
        ..now
    };
    let plan = deployment::decide(&d, &owned, true, &mut progress, &stalled);
    assert_eq!(
        events_named(&plan, "ProgressDeadlineExceeded"),
        1,
        "{plan:#?}"
    );
    let Some(Object::Deployment(w)) = status_of(&plan) else {
        panic!("{plan:#?}")
    };
    let progressing = find_condition(&w.status.conditions, "Progressing").unwrap();
    assert_eq!(progressing.reason, "ProgressDeadlineExceeded");
    let mut said = d.clone();
    said.status = w.status.clone();
    let plan = deployment::decide(&said, &owned, true, &mut progress, &stalled);
    assert_eq!(
        events_named(&plan, "ProgressDeadlineExceeded"),
        0,
        "said once"
    );
}

#[test]
fn deployments_being_deleted_and_finished_instances() {
    let now = now();
    let mut d = a_deployment(1, "");
    let mut done = owned_instance(
        Kind::Deployment,
        &d.metadata,
        &d.spec.template,
        "n1",
        None,
        &now,
    );
    done.status.phase = InstancePhase::Succeeded;
    let plan = deployment::decide(&d, std::slice::from_ref(&done), true, &mut None, &now);
    assert_eq!((count(&plan, deletes), count(&plan, creates)), (1, 1));
    d.metadata.deletion_timestamp = format_timestamp(now.wall);
    assert_eq!(
        deployment::decide(&d, &[done], true, &mut None, &now),
        Plan::nothing()
    );
}

// === DaemonSet ===

fn a_node(name: &str, extra: &str) -> Node {
    let Object::Node(mut n) = parse(&format!("kind: Node\nmetadata: {{name: {name}}}\n{extra}"))
    else {
        unreachable!()
    };
    set_condition(
        &mut n.status.conditions,
        Condition::new(NODE_READY, ConditionStatus::True, "AgentReady", ""),
    );
    n
}

fn a_daemonset() -> DaemonSet {
    let Object::DaemonSet(ds) = parse(&format!(
        "kind: DaemonSet\nmetadata: {{name: agent, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec: {{module: \"{DIGEST}\"}}\n"
    )) else {
        unreachable!()
    };
    ds
}

#[test]
fn daemonset_decisions() {
    let now = now();
    let ds = a_daemonset();
    let nodes = vec![
        a_node("plain", ""),
        a_node(
            "edge",
            "spec: {taints: [{key: edge, value: 'true', effect: NoSchedule}]}",
        ),
        a_node("cordoned", "spec: {unschedulable: true}"),
    ];
    // One per eligible node (cordons do not count; untolerated taints do),
    // bound to it.
    let plan = daemonset::decide(&ds, &nodes, &[], true, &now);
    let bound: Vec<&str> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::CreateInstance(i) => Some(i.spec.node_name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(bound, vec!["plain", "cordoned"], "{plan:#?}");
    // An instance on a node that is gone goes.
    let stray = owned_instance(
        Kind::DaemonSet,
        &ds.metadata,
        &ds.spec.template,
        "gone",
        Some(9),
        &now,
    );
    let plan = daemonset::decide(&ds, &nodes[..1], &[stray], true, &now);
    assert_eq!((count(&plan, deletes), count(&plan, creates)), (1, 1));
    let Some(Object::DaemonSet(s)) = status_of(&plan) else {
        panic!()
    };
    assert_eq!(s.status.number_misscheduled, 1);
    // Without its module: nothing is created, once said.
    let plan = daemonset::decide(&ds, &nodes, &[], false, &now);
    assert_eq!(count(&plan, creates), 0);
    assert_eq!(events_named(&plan, "FailedCreate"), 1);
    assert!(plan.blocked.is_some());
}

// === Job ===

fn a_job(extra: &str) -> Job {
    let mut o = parse(&format!(
        "kind: Job\nmetadata: {{name: batch, namespace: default}}\nspec:\n  completions: 2\n  parallelism: 1\n  backoffLimit: 1\n{extra}  template:\n    spec: {{module: \"{DIGEST}\", restartPolicy: Never, world: command}}\n"
    ));
    o.apply_defaults();
    let Object::Job(j) = o else { unreachable!() };
    j
}

fn job_instance(j: &Job, phase: InstancePhase, now: &Now) -> Instance {
    let mut i = owned_instance(Kind::Job, &j.metadata, &j.spec.template, "n1", None, now);
    i.status.phase = phase;
    i
}

#[test]
fn job_decisions() {
    let now = now();
    let j = a_job("");
    let plan = job::decide(&j, &[], true, &now);
    assert_eq!(count(&plan, creates), 1, "parallelism 1");
    let plan = job::decide(&j, &[], false, &now);
    assert_eq!(count(&plan, creates), 0);
    assert!(plan.blocked.is_some());

    let done = vec![
        job_instance(&j, InstancePhase::Succeeded, &now),
        job_instance(&j, InstancePhase::Succeeded, &now),
    ];
    let plan = job::decide(&j, &done, true, &now);
    let Some(Object::Job(s)) = status_of(&plan) else {
        panic!("{plan:#?}")
    };
    assert!(find_condition(&s.status.conditions, CONDITION_COMPLETE).is_some());
    assert_eq!(events_named(&plan, "Completed"), 1);

    let failing = vec![
        job_instance(&j, InstancePhase::Failed, &now),
        job_instance(&j, InstancePhase::Failed, &now),
        job_instance(&j, InstancePhase::Running, &now),
    ];
    let plan = job::decide(&j, &failing, true, &now);
    let Some(Object::Job(s)) = status_of(&plan) else {
        panic!()
    };
    assert!(find_condition(&s.status.conditions, CONDITION_FAILED).is_some());
    assert_eq!(count(&plan, deletes), 1, "the active one stops");

    // The deadline is looked at when it passes.
    let mut timed = a_job("  activeDeadlineSeconds: 100\n");
    timed.status.start_time = ago(&now, 40);
    let plan = job::decide(
        &timed,
        &[job_instance(&timed, InstancePhase::Running, &now)],
        true,
        &now,
    );
    match plan.action {
        Action::Requeue(after) => assert!(
            after <= Duration::from_secs(60) && after > Duration::from_secs(58),
            "{after:?}"
        ),
        other => panic!("{other:?}"),
    }
    timed.status.start_time = ago(&now, 101);
    let plan = job::decide(&timed, &[], true, &now);
    assert_eq!(events_named(&plan, "DeadlineExceeded"), 1);

    // Finished and past its TTL: the Job itself goes.
    let mut finished = a_job("  ttlSecondsAfterFinished: 5\n");
    set_condition(
        &mut finished.status.conditions,
        Condition::new(CONDITION_COMPLETE, ConditionStatus::True, "Completed", ""),
    );
    finished.status.completion_time = ago(&now, 6);
    let plan = job::decide(&finished, &[], true, &now);
    assert!(
        plan.writes
            .iter()
            .any(|w| matches!(w, Write::Delete(Object::Job(_)))),
        "{plan:#?}"
    );
    finished.status.completion_time = ago(&now, 2);
    let plan = job::decide(&finished, &[], true, &now);
    assert!(matches!(plan.action, Action::Requeue(a) if a <= Duration::from_secs(3)));
}

// === Node lifecycle ===

#[test]
fn node_lifecycle_decisions() {
    let now = now();
    let settings = Settings {
        node_grace_period: Duration::from_secs(40),
        default_toleration: Duration::from_secs(300),
        ..Settings::default()
    };
    let node = a_node("n1", "");
    let ds = a_daemonset();
    let d = a_deployment(1, "");
    let web = owned_instance(
        Kind::Deployment,
        &d.metadata,
        &d.spec.template,
        "n1",
        Some(100),
        &now,
    );
    let agent = owned_instance(
        Kind::DaemonSet,
        &ds.metadata,
        &ds.spec.template,
        "n1",
        Some(100),
        &now,
    );
    let on_node = vec![web.clone(), agent.clone()];

    // Renewing: nothing to write; looked at again when the lease would be late.
    let plan = node_lifecycle::decide(&node, Duration::from_secs(10), &on_node, &settings, &now);
    assert!(plan.writes.is_empty(), "{plan:#?}");
    assert!(
        matches!(plan.action, Action::Requeue(a) if a > Duration::from_secs(29) && a <= Duration::from_secs(31))
    );

    // Silent for the grace period: Unknown, its instances Unknown, tainted.
    let plan = node_lifecycle::decide(&node, Duration::from_secs(41), &on_node, &settings, &now);
    assert_eq!(events_named(&plan, "NodeNotReady"), 1);
    let instance_statuses = plan
        .writes
        .iter()
        .filter(|w| matches!(w, Write::Status(Object::Instance(_))))
        .count();
    assert_eq!(instance_statuses, 2);
    let Some(Write::Update(Object::Node(tainted))) = plan
        .writes
        .iter()
        .find(|w| matches!(w, Write::Update(Object::Node(_))))
    else {
        panic!("{plan:#?}")
    };
    assert!(tainted
        .spec
        .taints
        .iter()
        .any(|t| t.key == TAINT_UNREACHABLE));
    assert_eq!(count(&plan, deletes), 0, "the toleration has not run out");
    assert!(matches!(plan.action, Action::Requeue(a) if a > Duration::from_secs(299)));

    // Tainted for longer than the default toleration: evicted, but not the
    // DaemonSet's instance.
    let mut long_tainted = a_node("n1", "");
    long_tainted.spec.taints.push(Taint {
        key: TAINT_UNREACHABLE.into(),
        value: String::new(),
        effect: TaintEffect::NoExecute,
        time_added: ago(&now, 301),
    });
    let plan = node_lifecycle::decide(
        &long_tainted,
        Duration::from_secs(400),
        &on_node,
        &settings,
        &now,
    );
    let evicted: Vec<&str> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::DeleteInstance(i) => Some(i.metadata.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, vec![web.metadata.name.as_str()]);
    assert_eq!(events_named(&plan, "Evicted"), 1);

    // Renewing again: the taint goes.
    let plan = node_lifecycle::decide(
        &long_tainted,
        Duration::from_secs(1),
        &on_node,
        &settings,
        &now,
    );
    assert_eq!(events_named(&plan, "NodeReachable"), 1);
    assert_eq!(count(&plan, deletes), 0);
}

// === Endpoints ===

fn a_service(selector: &str) -> Service {
    let Object::Service(s) = parse(&format!(
        "kind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  selector: {selector}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    )) else {
        unreachable!()
    };
    s
}

#[test]
fn endpoints_decisions() {
    let now = now();
    let svc = a_service("{app: web}");
    let d = a_deployment(2, "");
    let mut ready = owned_instance(
        Kind::Deployment,
        &d.metadata,
        &d.spec.template,
        "n1",
        Some(5),
        &now,
    );
    ready.status.instance_ip = "10.244.0.7".into();
    let mut starting = owned_instance(
        Kind::Deployment,
        &d.metadata,
        &d.spec.template,
        "n1",
        None,
        &now,
    );
    starting.status.instance_ip = "10.244.0.8".into();
    let mut other = owned_instance(
        Kind::Deployment,
        &d.metadata,
        &d.spec.template,
        "n1",
        Some(5),
        &now,
    );
    other.metadata.labels.insert("app".into(), "other".into());
    let instances = vec![ready, starting, other];

    let plan = endpoints::decide(Some(&svc), None, &instances);
    let [Write::Create(Object::Endpoints(e))] = plan.writes.as_slice() else {
        panic!("{plan:#?}")
    };
    assert_eq!(e.subsets.len(), 1);
    assert_eq!(e.subsets[0].addresses[0].ip, "10.244.0.7");
    assert_eq!(e.subsets[0].not_ready_addresses[0].ip, "10.244.0.8");
    assert_eq!(e.subsets[0].ports[0].port, 8080);
    assert_eq!(e.metadata.owner_references[0].uid, svc.metadata.uid);

    let same = e.clone();
    assert_eq!(
        endpoints::decide(Some(&svc), Some(&same), &instances),
        Plan::nothing()
    );
    let plan = endpoints::decide(Some(&svc), Some(&same), &instances[..1]);
    assert!(matches!(plan.writes.as_slice(), [Write::Update(_)]));
    // The Service is gone, or selects nothing: its Endpoints go.
    let plan = endpoints::decide(None, Some(&same), &[]);
    assert!(matches!(
        plan.writes.as_slice(),
        [Write::Delete(Object::Endpoints(_))]
    ));
    let plan = endpoints::decide(Some(&a_service("{}")), Some(&same), &instances);
    assert!(matches!(plan.writes.as_slice(), [Write::Delete(_)]));
    // Endpoints someone else made are left alone.
    let mut manual: Endpoints = same;
    manual.metadata.owner_references.clear();
    assert_eq!(endpoints::decide(None, Some(&manual), &[]), Plan::nothing());
}

// === Garbage collection ===

#[test]
fn garbage_collection_decisions() {
    let now = now();
    let d = a_deployment(1, "");
    let i = owned_instance(
        Kind::Deployment,
        &d.metadata,
        &d.spec.template,
        "n1",
        None,
        &now,
    );
    assert!(matches!(
        gc::decide_orphan(&i, true).writes.as_slice(),
        [Write::Delete(Object::Instance(_))]
    ));
    assert_eq!(gc::decide_orphan(&i, false), Plan::nothing());
    let mut unowned = i.clone();
    unowned.metadata.owner_references.clear();
    assert_eq!(gc::decide_orphan(&unowned, true), Plan::nothing());

    let mut owner = Object::Deployment(d.clone());
    owner.meta_mut().deletion_timestamp = format_timestamp(now.wall);
    owner
        .meta_mut()
        .finalizers
        .push(FOREGROUND_FINALIZER.into());
    let plan = gc::decide_foreground(&owner, std::slice::from_ref(&i));
    assert!(matches!(plan.writes.as_slice(), [Write::DeleteInstance(_)]));
    let mut going = i.clone();
    going.metadata.deletion_timestamp = format_timestamp(now.wall);
    assert_eq!(
        gc::decide_foreground(&owner, &[going]),
        Plan::nothing(),
        "waits for it"
    );
    let plan = gc::decide_foreground(&owner, &[]);
    let [Write::Update(done)] = plan.writes.as_slice() else {
        panic!("{plan:#?}")
    };
    assert!(done.meta().finalizers.is_empty());
    assert_eq!(
        gc::decide_foreground(&Object::Deployment(d), &[i]),
        Plan::nothing(),
        "not being deleted"
    );
}

// === Event expiry ===

#[test]
fn event_expiry_decisions() {
    let now = now();
    let about = ObjectMeta::new("default", "web-1");
    let event = |secs: i64| {
        let mut e = Event::about(
            Kind::Instance,
            &about,
            flotilla_api::event::EventType::Normal,
            "Started",
            "started",
            "test",
        );
        e.last_timestamp = ago(&now, secs);
        e
    };
    let ttl = Duration::from_secs(3600);
    let plan = events::decide(vec![event(10), event(3601), event(7200)], ttl, now.wall);
    assert_eq!(plan.writes.len(), 2);
    let many: Vec<Event> = (0..600).map(|_| event(4000)).collect();
    assert_eq!(
        events::decide(many, ttl, now.wall).writes.len(),
        500,
        "a sweep is bounded"
    );
    assert_eq!(events::sweep_every(ttl), Duration::from_secs(60));
    assert_eq!(
        events::sweep_every(Duration::from_secs(2)),
        Duration::from_millis(500)
    );
}

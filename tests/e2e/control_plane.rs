//! The replicated store through the API: replication, leader loss, quorum loss,
//! restarts, compare-and-swap, snapshots and membership.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::manifest::parse_manifests;
use flotilla_api::object::Kind;
use flotilla_client::wire::{Consistency, ErrorCode, RequestV1, ResponseV1};

use crate::harness::{service_manifest, stderr, stdout, wait_for, Cluster};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn three_peers_replicate_objects_applied_through_any_peer() {
    let cluster = Cluster::start(3, &[]);
    for (i, name) in ["via-one", "via-two", "via-three"].iter().enumerate() {
        let out = cluster.cli_in(i, &["apply", "-f", "-"], Some(&service_manifest(name)));
        assert!(out.status.success(), "apply via peer {i}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), format!("service/{name} created"));
    }
    for i in 0..3 {
        for name in ["via-one", "via-two", "via-three"] {
            let out = cluster.cli(i, &["get", "svc", name, "-o", "json"]);
            assert!(
                out.status.success(),
                "get {name} via peer {i}: {}",
                stderr(&out)
            );
            let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
            assert_eq!(v["metadata"]["name"], name);
            assert_eq!(v["kind"], "Service");
        }
    }
    let again = cluster.cli_in(1, &["apply", "-f", "-"], Some(&service_manifest("via-one")));
    assert_eq!(stdout(&again).trim(), "service/via-one unchanged");
    let changed = service_manifest("via-one").replace("port: 80", "port: 81");
    let out = cluster.cli_in(2, &["apply", "-f", "-"], Some(&changed));
    assert_eq!(stdout(&out).trim(), "service/via-one configured");

    let out = cluster.cli(0, &["get", "services", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
}

#[test]
fn leader_kill9_under_writes_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.leader(0).expect("a leader");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let rt = rt();
    let writer_peer = survivors[0];
    let client = rt.block_on(cluster.client(writer_peer));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        let client = client.clone();
        rt.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{i}");
                let obj = parse_manifests(&service_manifest(&name)).unwrap().remove(0);
                if client.create(obj).await.is_ok() {
                    acked.lock().unwrap().push(name);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_for("writes before the kill", Duration::from_secs(20), || {
        (acked.lock().unwrap().len() >= 20).then_some(())
    });
    let before_kill = acked.lock().unwrap().len();
    // Asked over a connection opened before the kill, so the time measured is
    // the election's, not a CLI process start and handshake on a loaded machine.
    let observer = rt.block_on(cluster.client(survivors[1]));
    let old_leader_addr = cluster.peers[leader].addr.clone();
    cluster.peers[leader].kill9();
    let killed_at = Instant::now();
    let new_leader_addr = rt.block_on(async {
        loop {
            let asked =
                tokio::time::timeout(Duration::from_secs(1), observer.call(RequestV1::Members))
                    .await;
            if let Ok(Ok(ResponseV1::Members(members))) = asked {
                let leader = members.into_iter().find(|m| m.role == "leader");
                if let Some(m) = leader.filter(|m| m.address != old_leader_addr) {
                    break m.address;
                }
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "no new leader within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let elected_after = killed_at.elapsed();
    let new_leader = cluster
        .peers
        .iter()
        .position(|p| p.addr == new_leader_addr)
        .expect("the new leader is a known peer");
    assert!(survivors.contains(&new_leader));
    assert!(
        elected_after <= Duration::from_secs(3),
        "new leader took {elected_after:?}"
    );
    wait_for("writes after the kill", Duration::from_secs(20), || {
        (acked.lock().unwrap().len() >= before_kill + 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).unwrap();
    let acked = acked.lock().unwrap().clone();
    for peer in &survivors {
        let c = rt.block_on(cluster.client(*peer));
        let (items, _) = rt
            .block_on(c.list(Kind::Service, Some("default"), ""))
            .unwrap();
        let names: std::collections::HashSet<String> =
            items.iter().map(|o| o.meta().name.clone()).collect();
        for name in &acked {
            assert!(
                names.contains(name),
                "acknowledged write {name} lost on peer {peer}"
            );
        }
    }
}

#[test]
fn quorum_loss_fails_writes_clearly_and_recovers() {
    let mut cluster = Cluster::start(3, &[]);
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("before")));
    assert!(out.status.success(), "{}", stderr(&out));
    cluster.peers[1].kill9();
    cluster.peers[2].kill9();
    let started = Instant::now();
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("during")));
    let took = started.elapsed();
    assert!(!out.status.success(), "apply without quorum must fail");
    assert!(took <= Duration::from_secs(10), "failing took {took:?}");
    let err = stderr(&out);
    assert!(
        err.contains("no quorum"),
        "the error names the lost quorum: {err}"
    );
    cluster.peers[1].restart();
    wait_for("writes to succeed again", Duration::from_secs(30), || {
        let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("after")));
        out.status.success().then_some(())
    });
    for name in ["before", "after"] {
        let out = cluster.cli(1, &["get", "svc", name]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
}

#[test]
fn full_restart_keeps_every_object_and_resource_version() {
    let mut cluster = Cluster::start(3, &[]);
    for i in 0..10 {
        let out = cluster.cli_in(
            i % 3,
            &["apply", "-f", "-"],
            Some(&service_manifest(&format!("keep-{i}"))),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let list = |cluster: &Cluster, i: usize| -> Vec<(String, String)> {
        let out = cluster.cli(i, &["get", "svc", "-o", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let mut items: Vec<(String, String)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_string(),
                    o["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        items.sort();
        items
    };
    let mut before = list(&cluster, 0);
    assert_eq!(before.len(), 10);
    // The last write is killed before the state machines' next flush to
    // disk (every 50 ms): it comes back from the raft log.
    let last = rt().block_on(async {
        let c = cluster.client(0).await;
        let obj = parse_manifests(&service_manifest("keep-last"))
            .unwrap()
            .remove(0);
        c.create(obj).await.unwrap()
    });
    for p in &mut cluster.peers {
        p.kill9();
    }
    before.push((
        "keep-last".to_string(),
        last.meta().resource_version.clone(),
    ));
    before.sort();
    for p in &mut cluster.peers {
        p.restart();
    }
    let after = wait_for(
        "the restarted cluster to serve",
        Duration::from_secs(30),
        || {
            let out = cluster.cli(2, &["get", "svc", "-o", "json"]);
            out.status.success().then(|| list(&cluster, 2))
        },
    );
    assert_eq!(before, after);
}

#[test]
fn stale_resource_version_is_a_conflict_and_changes_nothing() {
    let cluster = Cluster::start(1, &[]);
    let rt = rt();
    rt.block_on(async {
        let c = cluster.client(0).await;
        let obj = parse_manifests(&service_manifest("cas")).unwrap().remove(0);
        let created = c.create(obj).await.unwrap();
        let mut first = created.clone();
        first.meta_mut().labels.insert("step".into(), "one".into());
        let updated = c.update(first).await.unwrap();
        assert_ne!(
            updated.meta().resource_version,
            created.meta().resource_version
        );

        let mut stale = created.clone();
        stale
            .meta_mut()
            .labels
            .insert("step".into(), "stale".into());
        let err = c.update(stale).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
        assert!(err.to_string().contains("conflict"), "{err}");

        let now = c.get(Kind::Service, "default", "cas").await.unwrap();
        assert_eq!(
            now.meta().labels.get("step").map(String::as_str),
            Some("one")
        );
        assert_eq!(now.meta().resource_version, updated.meta().resource_version);

        let dup = parse_manifests(&service_manifest("cas")).unwrap().remove(0);
        let err = c.create(dup).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::AlreadyExists), "{err}");
    });
}

#[test]
fn a_binding_is_compare_and_swap_and_binds_once() {
    let cluster = Cluster::start(1, &["--no-scheduler"]);
    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&crate::workloads::instance("lone", "16Mi")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rt = rt();
    rt.block_on(async {
        let c = cluster.client(0).await;
        let created = c.get(Kind::Instance, "default", "lone").await.unwrap();
        let rv = created.meta().resource_version.clone();

        let err = c.bind("", "lone", "node-a", "1").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
        assert!(
            err.to_string().contains("resourceVersion 1 was given"),
            "{err}"
        );
        let err = c.bind("", "lone", "Not_A_Node", &rv).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Invalid), "{err}");
        assert!(err.to_string().contains("spec.nodeName"), "{err}");
        let err = c.bind("", "missing", "node-a", "").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
        let unchanged = c.get(Kind::Instance, "default", "lone").await.unwrap();
        assert_eq!(unchanged.meta().resource_version, rv);

        let bound_rv = c.bind("", "lone", "node-a", &rv).await.unwrap();
        let flotilla_api::object::Object::Instance(bound) =
            c.get(Kind::Instance, "default", "lone").await.unwrap()
        else {
            panic!("not an instance");
        };
        assert_eq!(bound.metadata.resource_version, bound_rv);
        assert_eq!(bound.spec.node_name, "node-a");
        let scheduled = flotilla_api::meta::find_condition(
            &bound.status.conditions,
            flotilla_api::instance::CONDITION_SCHEDULED,
        )
        .expect("a Scheduled condition");
        assert_eq!(scheduled.reason, "Bound");

        let err = c.bind("", "lone", "node-b", &bound_rv).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
        assert!(
            err.to_string().contains("bound to node node-a already"),
            "{err}"
        );
    });
}

#[test]
fn a_restarted_follower_is_replicated_to_again_within_seconds() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.leader(0).expect("a leader");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let rt = rt();
    let writer = rt.block_on(cluster.client(leader));
    let create = |name: &str| {
        let obj = parse_manifests(&service_manifest(name)).unwrap().remove(0);
        rt.block_on(writer.create(obj)).unwrap();
    };
    create("before-restart");
    // The leader's connection to the old process is now dead; QUIC alone
    // would notice only at its idle timeout (3 s).
    cluster.peers[follower].restart();
    let restarted = Instant::now();
    create("after-restart");
    let reader = rt.block_on(cluster.client(follower));
    wait_for(
        "the restarted follower to have the write",
        Duration::from_secs(20),
        || {
            let (items, _) = rt
                .block_on(reader.list_with(Kind::Service, Some("default"), "", Consistency::Stale))
                .ok()?;
            items
                .iter()
                .any(|o| o.meta().name == "after-restart")
                .then_some(())
        },
    );
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "replicated to again after {took:?}"
    );
}

#[test]
fn a_restarted_server_resets_connections_to_its_previous_run() {
    let mut cluster = Cluster::start(1, &[]);
    let rt = rt();
    let client = rt.block_on(cluster.client(0));
    rt.block_on(client.call(RequestV1::WhoAmI)).unwrap();
    cluster.peers[0].restart();
    // The new process keeps the old one's stateless-reset key, so it tells
    // this client at once that the connection is gone; without it the call
    // would wait out QUIC's 3 s idle timeout.
    let started = Instant::now();
    let answer = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(8), client.call(RequestV1::WhoAmI)).await
    });
    let took = started.elapsed();
    let err = match answer {
        Ok(Err(e)) => e,
        Ok(Ok(r)) => panic!("the old connection answered: {r:?}"),
        Err(_) => panic!("no answer within 8 s"),
    };
    assert!(took < Duration::from_secs(2), "told after {took:?}: {err}");
    assert!(err.to_string().contains("connection"), "{err}");
    // A new connection works.
    let again = rt.block_on(cluster.client(0));
    rt.block_on(again.call(RequestV1::WhoAmI)).unwrap();
}

#[test]
fn snapshots_compact_the_log_and_catch_up_a_lagging_peer() {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "20"]);
    cluster.peers[2].kill9();
    let rt = rt();
    rt.block_on(async {
        let c = cluster.client(0).await;
        for i in 0..120 {
            let obj = parse_manifests(&service_manifest(&format!("snap-{i}")))
                .unwrap()
                .remove(0);
            c.create(obj).await.unwrap();
        }
    });
    cluster.peers[2].restart();
    let rt2 = rt;
    wait_for(
        "the restarted peer to catch up",
        Duration::from_secs(30),
        || {
            rt2.block_on(async {
                let c = cluster.client(2).await;
                let (items, _) = c
                    .list_with(Kind::Service, Some("default"), "", Consistency::Stale)
                    .await
                    .ok()?;
                (items.len() == 120).then_some(())
            })
        },
    );
}

#[test]
fn membership_remove_and_namespace_delete() {
    let cluster = Cluster::start(3, &[]);
    let members = cluster.members(0).unwrap();
    let victim = members
        .iter()
        .find(|(_, _, r)| r == "follower")
        .map(|(id, _, _)| *id)
        .unwrap();
    let out = cluster.cli(0, &["cluster", "remove", &victim.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("two members", Duration::from_secs(10), || {
        (cluster.members(0)?.len() == 2).then_some(())
    });

    let ns = "apiVersion: flotilla.dev/v1\nkind: Namespace\nmetadata:\n  name: team\n";
    let svc = service_manifest("in-team")
        .replace("  name: in-team\n", "  name: in-team\n  namespace: team\n");
    let both = format!("{svc}---\n{ns}");
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&both));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.cli(0, &["get", "svc", "-n", "team"]);
    assert!(stdout(&out).contains("in-team"));
    let out = cluster.cli(0, &["delete", "ns", "team"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.cli(0, &["get", "svc", "in-team", "-n", "team"]);
    assert!(!out.status.success());
    let out = cluster.cli(0, &["get", "ns", "team"]);
    assert!(!out.status.success());
    let out = cluster.cli(0, &["delete", "ns", "default"]);
    assert!(!out.status.success());
}

#[test]
fn peers_joining_at_once_get_distinct_ids() {
    let mut cluster = Cluster::start(1, &[]);
    let token = cluster.peer_token("1h");
    let addr = cluster.peers[0].addr.clone();
    let dirs: Vec<std::path::PathBuf> = (2..=3)
        .map(|i| cluster.dir.path().join(format!("peer-{i}")))
        .collect();
    let handles: Vec<_> = dirs
        .into_iter()
        .map(|dir| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                crate::harness::ServerProc::start(&dir, &["--join", &addr, "--token", &token])
            })
        })
        .collect();
    for h in handles {
        cluster.peers.push(h.join().unwrap().expect("join"));
    }
    cluster.wait_members(3);
    let mut ids: Vec<u64> = cluster.members(0).unwrap().iter().map(|m| m.0).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
}

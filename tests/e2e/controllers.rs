//! The controller runtime end to end: one key's lasting failure holds up no
//! other key or controller, and changes wake only the controllers they
//! concern.

use std::time::{Duration, Instant};

use crate::harness::{stderr, wait_for, Cluster};
use crate::metrics::{scrape, value, Proc};
use crate::node::HollowNodes;
use crate::workloads::{
    apply, condition, deployment, job, list, start_nodes, wait_nodes_ready, wait_ready_instances,
};

/// A Deployment whose template names a module digest nobody uploaded.
fn stuck_deployment() -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: stuck
spec:
  replicas: 2
  selector:
    matchLabels: {{app: stuck}}
  template:
    metadata:
      labels: {{app: stuck}}
    spec:
      module: sha256:{}
      world: http
",
        "0".repeat(64)
    )
}

#[test]
fn a_deployment_that_keeps_failing_holds_up_no_other_deployment_or_job() {
    let cluster = Cluster::start(1, &[]);
    let _nodes = start_nodes(&cluster, &["node-1"], &[]);
    wait_nodes_ready(&cluster, 1);

    // First in every order the old pass-based manager used.
    apply(&cluster, &stuck_deployment());
    apply(&cluster, &deployment("web", 3, "up", ""));
    let ok = cluster.dir.path().join("ok.wat");
    std::fs::write(
        &ok,
        "(module (memory (export \"memory\") 1) (func (export \"_start\")))",
    )
    .unwrap();
    apply(&cluster, &job("sum", &ok, 2, 1, 0));

    wait_ready_instances(&cluster, "web", 3, Duration::from_secs(60));
    wait_for("job sum complete", Duration::from_secs(60), || {
        let j = list(&cluster, &["job", "sum"]).remove(0);
        (condition(&j, "Complete").as_deref() == Some("True")).then_some(())
    });

    // The stuck one made nothing and says why, where a user looks.
    assert!(list(&cluster, &["inst", "-l", "app=stuck"]).is_empty());
    let events = wait_for("a FailedCreate event", Duration::from_secs(20), || {
        let events = list(&cluster, &["events"]);
        events
            .into_iter()
            .find(|e| e["reason"] == "FailedCreate" && e["involvedObject"]["name"] == "stuck")
    });
    let message = events["message"].as_str().unwrap_or_default();
    assert!(message.contains("has not been uploaded"), "{events}");
    let out = cluster.cli(0, &["describe", "deployment", "stuck"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FailedCreate"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn lease_renewals_of_a_hundred_nodes_do_not_wake_the_deployment_controller() {
    let cluster = Cluster::start(1, &["--no-controllers"]);
    let config = cluster.config();
    let mut controllers = Proc::spawn(&[
        "--config",
        config.to_str().unwrap(),
        "--server",
        &cluster.peers[0].addr,
        "controllers",
        "--leader-lease",
        "3s",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics = controllers.metrics_addr();
    let _hollow = HollowNodes::start(&cluster, 100);
    wait_nodes_ready(&cluster, 100);
    apply(&cluster, &deployment("web", 5, "hollow", ""));
    wait_ready_instances(&cluster, "web", 5, Duration::from_secs(60));

    let deployment_ok =
        "flotilla_controller_reconciles_total{controller=\"deployment\",result=\"ok\"}";
    let lifecycle_ok =
        "flotilla_controller_reconciles_total{controller=\"node-lifecycle\",result=\"ok\"}";
    let read = |series: &str| value(&scrape(&metrics), series).unwrap_or(0.0);
    // Settled: the rollout's last status write and its watch event are in.
    let settled = wait_for(
        "the deployment controller to settle",
        Duration::from_secs(30),
        || {
            let before = read(deployment_ok);
            std::thread::sleep(Duration::from_secs(2));
            (before > 0.0 && read(deployment_ok) == before).then_some(before)
        },
    );
    let lifecycle_before = read(lifecycle_ok);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        let now = read(deployment_ok);
        assert_eq!(
            now,
            settled,
            "the deployment controller reconciled {} more times {:?} into a quiet period",
            now - settled,
            started.elapsed()
        );
    }
    // The renewals did arrive: every node's lease concerns the lifecycle
    // controller, about once a second each.
    let renewals = read(lifecycle_ok) - lifecycle_before;
    assert!(
        renewals >= 500.0,
        "only {renewals} lifecycle reconciles in 10 s of 100 nodes renewing"
    );
}

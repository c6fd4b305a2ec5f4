//! Trust: the apiserver authorizes every request. A node's own credentials,
//! as it keeps them in its data dir, reach only what is the node's own.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ErrorCode, RequestV1};
use flotilla_client::{Client, ClientConfig, ClientError};
use serde_json::Value;

use crate::harness::{run_cli, stderr, stdout, wait_for, Cluster};
use crate::network::{free_tcp_addr, get};
use crate::workloads::{apply, start_nodes, wait_nodes_ready};

/// The CLI's exit status for a request the server refused as Forbidden.
const FORBIDDEN_STATUS: i32 = 3;

fn pinned_hello(name: &str, node: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Instance
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  module: {}
  world: http
  nodeName: {node}
  resources:
    limits: {{cpu: 100m, memory: 32Mi}}
---
apiVersion: flotilla.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - port: 80
  ingress: {{host: {name}.local}}
",
        crate::node::examples().join("hello.wasm").display()
    )
}

fn as_node(config: &Path, cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Output {
    let mut full = vec![
        "--config",
        config.to_str().unwrap(),
        "--server",
        &cluster.peers[0].addr,
    ];
    full.extend_from_slice(args);
    run_cli(&full, stdin, Duration::from_secs(30))
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    cluster
        .get_json(args)
        .unwrap_or_else(|| panic!("get {args:?}"))
}

fn assert_forbidden(what: &str, out: &Output) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(FORBIDDEN_STATUS),
        "{what}: {err}{}",
        stdout(out)
    );
    assert!(
        err.contains("forbidden: node:node-1 may not"),
        "{what}: {err}"
    );
}

fn refused_as_forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) {
    match r {
        Err(ClientError::Api(e)) if e.code == ErrorCode::Forbidden => {
            assert!(e.message.contains("node:node-1"), "{what}: {e}")
        }
        other => panic!("{what}: expected Forbidden, got {other:?}"),
    }
}

#[test]
fn a_nodes_own_credentials_reach_only_what_is_its_own() {
    let cluster = Cluster::start(1, &[]);
    let ingress = free_tcp_addr();
    let _nodes = start_nodes(
        &cluster,
        &["node-1", "node-2"],
        &[&["--ingress-addr", &ingress], &[]],
    );
    wait_nodes_ready(&cluster, 2);
    apply(&cluster, &pinned_hello("mine", "node-1"));
    apply(&cluster, &pinned_hello("theirs", "node-2"));
    for name in ["mine", "theirs"] {
        wait_for(&format!("{name} Running"), Duration::from_secs(30), || {
            (cluster.get_json(&["inst", name])?["status"]["phase"] == "Running").then_some(())
        });
    }
    let serves = || {
        wait_for(
            "mine through node-1's ingress",
            Duration::from_secs(20),
            || {
                let (status, body, _) = get(&ingress, "mine.local", "/");
                (status == 200).then_some(body)
            },
        )
    };
    serves();

    let config = cluster.dir.path().join("node-1").join("node.config");
    let theirs_before = json(&cluster, &["inst", "theirs"]);
    let mut lease = json(&cluster, &["lease", "node-2", "-n", "flotilla-node-lease"]);
    lease["spec"]["holderIdentity"] = "node-1".into();
    let mut node_2 = json(&cluster, &["node", "node-2"]);
    node_2["metadata"]["labels"]["taken"] = "yes".into();
    let mut respec = json(&cluster, &["inst", "theirs"]);
    respec["spec"]["args"] = serde_json::json!(["--evil"]);
    let mut own_respec = json(&cluster, &["inst", "mine"]);
    own_respec["spec"]["args"] = serde_json::json!(["--evil"]);

    let cli_refusals: [(&str, Vec<&str>, Option<String>); 8] = [
        (
            "read an instance bound to node-2",
            vec!["get", "inst", "theirs"],
            None,
        ),
        ("list every instance", vec!["get", "inst", "-A"], None),
        (
            "update Node node-2",
            vec!["apply", "-f", "-"],
            Some(node_2.to_string()),
        ),
        (
            "update node-2's Lease",
            vec!["apply", "-f", "-"],
            Some(lease.to_string()),
        ),
        (
            "update another node's instance's spec",
            vec!["apply", "-f", "-"],
            Some(respec.to_string()),
        ),
        (
            "update its own instance's spec",
            vec!["apply", "-f", "-"],
            Some(own_respec.to_string()),
        ),
        ("create a token", vec!["token", "create"], None),
        ("remove a store peer", vec!["cluster", "remove", "1"], None),
    ];
    for (what, args, stdin) in cli_refusals {
        let out = as_node(&config, &cluster, &args, stdin.as_deref());
        assert_forbidden(what, &out);
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = cluster.token("1h");
    rt.block_on(async {
        let node = Client::connect(&ClientConfig::load(&config).unwrap())
            .await
            .unwrap();
        refused_as_forbidden(
            "JoinPeer",
            node.call(RequestV1::JoinPeer {
                token: token.clone(),
                address: "127.0.0.1:1".into(),
                csr_pem: String::new(),
            })
            .await,
        );
        let theirs = node.get(Kind::Instance, "default", "theirs").await;
        refused_as_forbidden("get theirs", theirs);
        refused_as_forbidden("Bind", node.bind("default", "theirs", "node-1", "").await);

        // What is its own still works.
        let own_lease = node
            .get(Kind::Lease, "flotilla-node-lease", "node-1")
            .await
            .expect("its own Lease");
        node.update(own_lease).await.expect("renew its own Lease");
        let own_node = node.get(Kind::Node, "", "node-1").await.expect("its Node");
        node.update_status(own_node)
            .await
            .expect("write its Node's status");
        let mine = node
            .get(Kind::Instance, "default", "mine")
            .await
            .expect("an instance bound to it");
        let Object::Instance(_) = &mine else {
            panic!("{mine:?}")
        };
        node.update_status(mine)
            .await
            .expect("write its instance's status");
    });

    // Nothing refused changed anything.
    let theirs_after = json(&cluster, &["inst", "theirs"]);
    assert_eq!(theirs_after["spec"], theirs_before["spec"]);
    assert_eq!(
        theirs_after["metadata"]["resourceVersion"],
        theirs_before["metadata"]["resourceVersion"]
    );
    let lease_after = json(&cluster, &["lease", "node-2", "-n", "flotilla-node-lease"]);
    assert_eq!(lease_after["spec"]["holderIdentity"], "node-2");
    let node_2_after = json(&cluster, &["node", "node-2"]);
    assert!(node_2_after["metadata"]["labels"].get("taken").is_none());
    let mine_after = json(&cluster, &["inst", "mine"]);
    assert_ne!(mine_after["spec"]["args"], serde_json::json!(["--evil"]));
    let tokens_and_members = cluster.cli(0, &["cluster", "members"]);
    assert!(
        stdout(&tokens_and_members).lines().count() >= 2,
        "peer 1 still a member: {}",
        stdout(&tokens_and_members)
    );

    // Its instances still run and serve.
    assert_eq!(
        json(&cluster, &["inst", "mine"])["status"]["phase"],
        "Running"
    );
    serves();
}

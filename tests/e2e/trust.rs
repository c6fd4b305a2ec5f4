//! Trust: the apiserver authorizes every request. A node's own credentials,
//! as it keeps them in its data dir, reach only what is the node's own.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ErrorCode, RequestV1};
use flotilla_client::{Client, ClientConfig, ClientError};
use serde_json::Value;

use flotilla_orchestrator::store::network::{Forward, PeerNet, PeerRequest, PeerResponse};

use crate::harness::{run_cli, stderr, stdout, wait_for, Cluster, ServerProc};
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

    // Every refusal, and every change it made, is in the audit log.
    let lines = audit_lines(&cluster, |l| {
        l["verb"] == "update-status" && l["identity"] == "node:node-1"
    });
    let has = |verb: &str, kind: &str, namespace: &str, name: &str, result: &str| {
        assert!(
            lines
                .iter()
                .any(|l| audited(l, "node:node-1", verb, kind, namespace, name, result)),
            "no audit line for node:node-1 {verb} {kind} {namespace}/{name} {result}"
        );
    };
    has("get", "Instance", "default", "theirs", "Forbidden");
    has("list", "Instance", "", "", "Forbidden");
    has("apply", "Node", "", "node-2", "Forbidden");
    has(
        "apply",
        "Lease",
        "flotilla-node-lease",
        "node-2",
        "Forbidden",
    );
    has("create-token", "", "", "", "Forbidden");
    has("remove-member", "", "", "1", "Forbidden");
    has("join-peer", "", "", "", "Forbidden");
    has("bind", "Instance", "default", "theirs", "Forbidden");
    has("update", "Lease", "flotilla-node-lease", "node-1", "ok");
    has("update-status", "Instance", "default", "mine", "ok");
    let denied = lines
        .iter()
        .find(|l| l["verb"] == "create-token" && l["identity"] == "node:node-1")
        .unwrap();
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("forbidden: node:node-1 may not create tokens"),
        "{denied}"
    );
    assert_eq!(denied["groups"], serde_json::json!(["system:nodes"]));
    assert!(
        denied["latencyMicros"].as_u64().is_some()
            && denied["time"].as_str().unwrap().ends_with('Z')
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["verb"] == "get" && l["result"] == "ok"),
        "reads that were allowed are not audited"
    );
}

/// The lines of peer 0's audit log, parsed, once it holds one that `want`
/// accepts (the writer appends moments after the answer).
fn audit_lines(cluster: &Cluster, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let path = cluster.peers[0].data_dir.join("audit.log");
    wait_for("the audit log line", Duration::from_secs(10), || {
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .ok()?
            .lines()
            .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
            .collect();
        lines.iter().any(&want).then_some(lines)
    })
}

/// Whether `line` records `identity` doing `verb` on `kind` `namespace/name`
/// with `result`.
fn audited(
    line: &Value,
    identity: &str,
    verb: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    result: &str,
) -> bool {
    line["identity"] == identity
        && line["verb"] == verb
        && line["kind"] == kind
        && line["namespace"] == namespace
        && line["name"] == name
        && line["result"] == result
}

fn run_as(config: &Path, cluster: &Cluster, args: &[&str]) -> Output {
    as_node(config, cluster, args, None)
}

fn apply_as(config: &Path, cluster: &Cluster, manifest: &str) -> Output {
    as_node(config, cluster, &["apply", "-f", "-"], Some(manifest))
}

fn make_user(cluster: &Cluster, name: &str, groups: &[&str]) -> std::path::PathBuf {
    let path = cluster.dir.path().join(format!("{name}.config"));
    let mut args = vec!["user", "create", name, "-o", path.to_str().unwrap()];
    for g in groups {
        args.extend_from_slice(&["--group", g]);
    }
    let out = cluster.cli(0, &args);
    assert!(out.status.success(), "user create {name}: {}", stderr(&out));
    path
}

fn binding(kind: &str, name: &str, namespace: &str, role: &str, subject: &str) -> String {
    let (role_kind, role_name) = role.split_once('/').unwrap();
    let (subject_kind, subject_name) = subject.split_once('/').unwrap();
    let namespace = if namespace.is_empty() {
        String::new()
    } else {
        format!("\n  namespace: {namespace}")
    };
    format!(
        "apiVersion: flotilla.dev/v1
kind: {kind}
metadata:
  name: {name}{namespace}
roleRef: {{kind: {role_kind}, name: {role_name}}}
subjects:
- {{kind: {subject_kind}, name: {subject_name}}}
"
    )
}

fn service_in(name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector: {{app: {name}}}
  ports:
  - port: 80
"
    )
}

/// What is done, the `auth can-i` arguments that ask about it, the request
/// that does it, its stdin, and whether it is allowed.
type AccessCase<'a> = (&'a str, [&'a str; 4], Vec<&'a str>, Option<&'a str>, bool);

#[test]
fn a_user_bound_to_edit_in_a_namespace_works_there_only_and_can_i_agrees() {
    let cluster = Cluster::start(1, &[]);
    cluster.wait_ready(0);
    apply(
        &cluster,
        "apiVersion: flotilla.dev/v1
kind: Namespace
metadata: {name: a}
---
apiVersion: flotilla.dev/v1
kind: Namespace
metadata: {name: b}
",
    );
    apply(&cluster, &service_in("kept", "b"));
    apply(
        &cluster,
        &binding(
            "RoleBinding",
            "alice-edits",
            "a",
            "ClusterRole/edit",
            "User/alice",
        ),
    );
    let alice = make_user(&cluster, "alice", &[]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&alice).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "alice's config is private");
    }
    let whoami = run_as(&alice, &cluster, &["auth", "whoami"]);
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    assert!(
        stdout(&whoami).contains("user:alice"),
        "{}",
        stdout(&whoami)
    );

    // Each case: what can-i is asked, the request that does it, and whether
    // it is allowed. can-i must say what the server then does.
    let web = service_in("web", "a");
    let in_b = service_in("web", "b");
    let cases: [AccessCase; 9] = [
        (
            "create a service in a",
            ["create", "services", "-n", "a"],
            vec!["apply", "-f", "-"],
            Some(&web),
            true,
        ),
        (
            "get a service in a",
            ["get", "services/web", "-n", "a"],
            vec!["get", "svc", "web", "-n", "a"],
            None,
            true,
        ),
        (
            "list services in a",
            ["list", "services", "-n", "a"],
            vec!["get", "svc", "-n", "a"],
            None,
            true,
        ),
        (
            "delete a service in a",
            ["delete", "services/web", "-n", "a"],
            vec!["delete", "svc", "web", "-n", "a"],
            None,
            true,
        ),
        (
            "list services in b",
            ["list", "services", "-n", "b"],
            vec!["get", "svc", "-n", "b"],
            None,
            false,
        ),
        (
            "create a service in b",
            ["create", "services", "-n", "b"],
            vec!["apply", "-f", "-"],
            Some(&in_b),
            false,
        ),
        (
            "list nodes",
            ["list", "nodes", "-n", "a"],
            vec!["get", "nodes"],
            None,
            false,
        ),
        (
            "create a token",
            ["create", "tokens", "-n", "a"],
            vec!["token", "create"],
            None,
            false,
        ),
        (
            "bind a role in a",
            ["create", "rolebindings", "-n", "a"],
            vec!["apply", "-f", "-"],
            None,
            false,
        ),
    ];
    let grant = binding(
        "RoleBinding",
        "mine",
        "a",
        "ClusterRole/admin",
        "User/alice",
    );
    for (what, can_i, request, stdin, allowed) in cases {
        let mut ask = vec!["auth", "can-i"];
        ask.extend_from_slice(&can_i);
        ask.push("-v");
        let answer = run_as(&alice, &cluster, &ask);
        let said = stdout(&answer);
        assert_eq!(
            answer.status.code(),
            Some(if allowed { 0 } else { 1 }),
            "can-i {what}: {said}{}",
            stderr(&answer)
        );
        assert!(
            said.starts_with(if allowed { "yes" } else { "no" }),
            "can-i {what}: {said}"
        );
        let admin_asks = {
            let mut full = ask.clone();
            full.extend_from_slice(&["--as", "user:alice"]);
            cluster.cli(0, &full)
        };
        assert_eq!(
            answer.status.code(),
            admin_asks.status.code(),
            "can-i --as user:alice {what}: {}",
            stdout(&admin_asks)
        );
        let stdin = if can_i[1] == "rolebindings" {
            Some(grant.as_str())
        } else {
            stdin
        };
        let did = as_node(&alice, &cluster, &request, stdin);
        if allowed {
            assert!(did.status.success(), "{what}: {}", stderr(&did));
        } else {
            assert_eq!(
                did.status.code(),
                Some(FORBIDDEN_STATUS),
                "{what}: {}{}",
                stderr(&did),
                stdout(&did)
            );
            let err = stderr(&did);
            assert!(
                err.contains("forbidden: user:alice may not"),
                "{what}: {err}"
            );
            assert!(
                err.contains("no role bound to user:alice grants"),
                "{what}: {err}"
            );
        }
    }
    // Doctor says what alice's identity lacks for its checks.
    let doctor = run_as(&alice, &cluster, &["doctor"]);
    let said = stdout(&doctor);
    let line = said
        .lines()
        .find(|l| l.starts_with("WARN") && l.split_whitespace().nth(1) == Some("identity"))
        .unwrap_or_else(|| panic!("no identity warning:\n{said}"));
    assert!(
        line.contains("user:alice cannot do what doctor needs")
            && line.contains("list nodes: no role bound to user:alice"),
        "{line}"
    );

    // The refused requests changed nothing.
    let in_b = json(&cluster, &["svc", "-n", "b"]);
    let names: Vec<&str> = in_b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept"]);
    assert!(cluster
        .get_json(&["rolebinding", "mine", "-n", "a"])
        .is_none());
    let other = cluster.cli(
        0,
        &[
            "auth",
            "can-i",
            "list",
            "services",
            "-n",
            "a",
            "--as",
            "user:mallory",
        ],
    );
    assert_eq!(
        other.status.code(),
        Some(1),
        "an unbound user may do nothing"
    );
    let asks_for_other = run_as(
        &alice,
        &cluster,
        &["auth", "can-i", "list", "services", "--as", "user:admin"],
    );
    assert_eq!(
        asks_for_other.status.code(),
        Some(FORBIDDEN_STATUS),
        "only cluster-admin reviews others: {}",
        stderr(&asks_for_other)
    );
    let mints = run_as(
        &alice,
        &cluster,
        &[
            "user",
            "create",
            "eve",
            "-o",
            cluster.dir.path().join("eve.config").to_str().unwrap(),
        ],
    );
    assert_eq!(
        mints.status.code(),
        Some(FORBIDDEN_STATUS),
        "only cluster-admin signs users: {}",
        stderr(&mints)
    );

    // An admin of namespace a grants what it holds there, and no more.
    apply(
        &cluster,
        &binding(
            "RoleBinding",
            "bob-admins",
            "a",
            "ClusterRole/admin",
            "User/bob",
        ),
    );
    let bob = make_user(&cluster, "bob", &[]);
    let escalates = apply_as(
        &bob,
        &cluster,
        &binding(
            "RoleBinding",
            "bob-owns",
            "a",
            "ClusterRole/cluster-admin",
            "User/bob",
        ),
    );
    assert_eq!(
        escalates.status.code(),
        Some(FORBIDDEN_STATUS),
        "{}",
        stderr(&escalates)
    );
    assert!(
        stderr(&escalates).contains("does not hold"),
        "{}",
        stderr(&escalates)
    );
    let delegates = apply_as(
        &bob,
        &cluster,
        &binding(
            "RoleBinding",
            "carol-edits",
            "a",
            "ClusterRole/edit",
            "User/carol",
        ),
    );
    assert!(delegates.status.success(), "{}", stderr(&delegates));

    // Groups come from the certificate; stored ClusterRoles grant what they say.
    apply(
        &cluster,
        &binding(
            "RoleBinding",
            "team-views",
            "a",
            "ClusterRole/view",
            "Group/team-a",
        ),
    );
    apply(
        &cluster,
        "apiVersion: flotilla.dev/v1
kind: ClusterRole
metadata: {name: node-reader}
rules:
- {resources: [nodes], verbs: [get, list, watch]}
",
    );
    apply(
        &cluster,
        &binding(
            "ClusterRoleBinding",
            "team-reads-nodes",
            "",
            "ClusterRole/node-reader",
            "Group/team-a",
        ),
    );
    let dave = make_user(&cluster, "dave", &["team-a", "readers"]);
    let who = stdout(&run_as(&dave, &cluster, &["auth", "whoami"]));
    assert!(who.contains("team-a,readers"), "{who}");
    let reads = run_as(&dave, &cluster, &["get", "svc", "-n", "a"]);
    assert!(reads.status.success(), "{}", stderr(&reads));
    let nodes = run_as(&dave, &cluster, &["get", "nodes"]);
    assert!(nodes.status.success(), "{}", stderr(&nodes));
    let writes = apply_as(&dave, &cluster, &service_in("dave", "a"));
    assert_eq!(
        writes.status.code(),
        Some(FORBIDDEN_STATUS),
        "{}",
        stderr(&writes)
    );
    let shadow = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some("apiVersion: flotilla.dev/v1\nkind: ClusterRole\nmetadata: {name: edit}\nrules:\n- {resources: ['*'], verbs: ['*']}\n"),
    );
    assert!(
        !shadow.status.success(),
        "a built-in ClusterRole cannot be replaced"
    );
    assert!(
        stderr(&shadow).contains("built-in ClusterRole"),
        "{}",
        stderr(&shadow)
    );

    // The audit log holds the users' changes and refusals, with their groups.
    let lines = audit_lines(&cluster, |l| {
        l["identity"] == "user:dave" && l["result"] == "Forbidden"
    });
    let has = |who: &str, verb: &str, kind: &str, namespace: &str, name: &str, result: &str| {
        assert!(
            lines
                .iter()
                .any(|l| audited(l, who, verb, kind, namespace, name, result)),
            "no audit line for {who} {verb} {kind} {namespace}/{name} {result}"
        );
    };
    has("user:admin", "sign-user", "", "", "alice", "ok");
    has("user:alice", "apply", "Service", "a", "web", "ok");
    has("user:alice", "delete", "Service", "a", "web", "ok");
    has("user:alice", "list", "Service", "b", "", "Forbidden");
    has("user:alice", "apply", "Service", "b", "web", "Forbidden");
    has("user:alice", "list", "Node", "", "", "Forbidden");
    has("user:alice", "create-token", "", "", "", "Forbidden");
    has("user:alice", "sign-user", "", "", "eve", "Forbidden");
    has(
        "user:bob",
        "apply",
        "RoleBinding",
        "a",
        "bob-owns",
        "Forbidden",
    );
    has("user:bob", "apply", "RoleBinding", "a", "carol-edits", "ok");
    has("user:dave", "apply", "Service", "a", "dave", "Forbidden");
    has("user:admin", "apply", "ClusterRole", "", "edit", "Invalid");
    let dave = lines
        .iter()
        .find(|l| l["identity"] == "user:dave" && l["result"] == "Forbidden")
        .unwrap();
    assert_eq!(dave["groups"], serde_json::json!(["team-a", "readers"]));
}

/// Every file under `dir`, with its text (binary files read lossily).
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

fn join_refusal(cluster: &Cluster, dir: &str, token: &str) -> String {
    ServerProc::start(
        &cluster.dir.path().join(dir),
        &["--join", &cluster.peers[0].addr, "--token", token],
    )
    .err()
    .unwrap_or_else(|| panic!("the join into {dir} is refused"))
}

#[test]
fn tokens_admit_their_kind_their_uses_and_no_more_and_removed_peers_lose_their_certificates() {
    let mut cluster = Cluster::start(1, &[]);
    cluster.wait_ready(0);
    let ca_key = std::fs::read_to_string(cluster.peers[0].data_dir.join("ca.key")).unwrap();
    let ca_key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(ca_key_body.len() > 40, "the CA key is where it should be");

    // A node joins with a node token and receives nothing of the CA key.
    let _node = start_nodes(&cluster, &["node-1"], &[]);
    wait_nodes_ready(&cluster, 1);
    let node_files = files_under(&cluster.dir.path().join("node-1"));
    assert!(!node_files.is_empty());
    for (path, text) in &node_files {
        let flat: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            !flat.contains(&ca_key_body),
            "{} holds the CA key",
            path.display()
        );
    }

    // Credentials are their owner's only, and no temporary copy is left.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let peer_dir = &cluster.peers[0].data_dir;
        let node_dir = cluster.dir.path().join("node-1");
        assert_eq!(mode(peer_dir), 0o700, "the peer's data dir");
        assert_eq!(mode(&node_dir), 0o700, "the node's data dir");
        for file in [
            peer_dir.join("ca.key"),
            peer_dir.join("peer.key"),
            peer_dir.join("admin.config"),
            node_dir.join("node.config"),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        for dir in [peer_dir.clone(), node_dir] {
            let temporary: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect();
            assert!(temporary.is_empty(), "{}: {temporary:?}", dir.display());
        }
    }

    // A node token never joins a store peer.
    let node_token = cluster.token("1h");
    let err = join_refusal(&cluster, "peer-by-node-token", &node_token);
    assert!(
        err.contains("is a node token and cannot join a peer"),
        "{err}"
    );

    // A token for one use admits one peer, then says it is used up.
    let once = stdout(&cluster.cli(0, &["token", "create", "--kind", "peer", "--uses", "1"]))
        .trim()
        .to_string();
    let peer_2 = ServerProc::start(
        &cluster.dir.path().join("peer-2"),
        &["--join", &cluster.peers[0].addr, "--token", &once],
    )
    .expect("the first use joins");
    cluster.peers.push(peer_2);
    cluster.wait_members(2);
    let err = join_refusal(&cluster, "peer-3", &once);
    assert!(err.contains("is used up (it allowed 1 join)"), "{err}");

    // A revoked token says so.
    let revoked = cluster.peer_token("1h");
    let id = revoked.split('.').nth(2).unwrap().to_string();
    let out = cluster.cli(0, &["token", "revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = join_refusal(&cluster, "peer-4", &revoked);
    assert!(
        err.contains(&format!("join token {id} was revoked")),
        "{err}"
    );
    let listed = stdout(&cluster.cli(0, &["token", "list"]));
    let row = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {listed}"))
            .to_string()
    };
    assert!(
        row(&id).contains("peer") && row(&id).ends_with("revoked"),
        "{listed}"
    );
    let once_id = once.split('.').nth(2).unwrap();
    assert!(row(once_id).ends_with("used-up"), "{listed}");
    let node_id = node_token.split('.').nth(2).unwrap();
    assert!(
        row(node_id).contains("node") && row(node_id).contains("unlimited"),
        "{listed}"
    );
    assert!(
        !listed.contains(node_token.split('.').nth(3).unwrap()),
        "no secrets in the list"
    );

    // A removed peer's certificate works no more: not for the API, not for raft.
    let peer_2_dir = cluster.peers[1].data_dir.clone();
    let out = cluster.cli(0, &["cluster", "remove", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("one member", Duration::from_secs(10), || {
        (cluster.members(0)?.len() == 1).then_some(())
    });
    let ca_cert = std::fs::read_to_string(cluster.peers[0].data_dir.join("ca.crt")).unwrap();
    let peer_cert = flotilla_client::tls::IssuedCert {
        cert_pem: std::fs::read_to_string(peer_2_dir.join("peer.crt")).unwrap(),
        key_pem: std::fs::read_to_string(peer_2_dir.join("peer.key")).unwrap(),
    };
    let addr = cluster.peers[0].addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect_with(&addr, &ca_cert, Some(&peer_cert))
            .await
            .expect("the TLS handshake still passes: the CA signed it");
        match client.call(RequestV1::Members).await {
            Err(ClientError::Api(e)) if e.code == ErrorCode::Unauthorized => {
                assert!(e.message.contains("peer:2 was removed"), "{e}")
            }
            other => panic!("a removed peer's API request: {other:?}"),
        }
        let tls = flotilla_client::tls::client_config(
            &ca_cert,
            Some(&peer_cert),
            flotilla_client::tls::ALPN_RAFT,
            flotilla_client::tls::ServerIdentity::AnyPeer,
        )
        .unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let net = PeerNet::new(
            endpoint,
            quinn::ClientConfig::new(std::sync::Arc::new(quic)),
        );
        let answer = net
            .call(
                1,
                &addr,
                &PeerRequest::Forward(Forward::ReadIndex),
                Duration::from_secs(10),
            )
            .await
            .expect("peer 1 answers");
        let wrong = net
            .call(
                7,
                &addr,
                &PeerRequest::Forward(Forward::ReadIndex),
                Duration::from_secs(10),
            )
            .await;
        match wrong {
            Err(e) => assert!(e.to_string().contains("is peer:1, not peer:7"), "{e}"),
            Ok(_) => panic!("raft talked to peer 1 as if it were peer 7"),
        }
        match answer {
            PeerResponse::Refused(why) => {
                assert!(why.contains("peer 2 was removed"), "{why}")
            }
            _ => panic!("a removed peer's raft request was served"),
        }
    });
    let lines = audit_lines(&cluster, |l| {
        l["identity"] == "peer:2" && l["result"] == "Unauthorized"
    });
    let refused_join = |needle: &str| {
        lines.iter().any(|l| {
            l["verb"] == "join-peer"
                && l["identity"] == ""
                && l["result"] == "Unauthorized"
                && l["message"].as_str().unwrap_or_default().contains(needle)
        })
    };
    for needle in ["is a node token", "is used up", "was revoked"] {
        assert!(
            refused_join(needle),
            "no audit line for the join refused as {needle:?}"
        );
    }
    assert!(lines
        .iter()
        .any(|l| l["verb"] == "join-node" && l["name"] == "node-1" && l["result"] == "ok"));
    assert!(lines
        .iter()
        .any(|l| l["verb"] == "revoke-token" && l["name"] == id.as_str() && l["result"] == "ok"));
    assert!(lines
        .iter()
        .any(|l| l["verb"] == "remove-member" && l["name"] == "2" && l["result"] == "ok"));
    let out = cluster.cli(0, &["get", "ns", "default"]);
    assert!(
        out.status.success(),
        "the cluster still serves: {}",
        stderr(&out)
    );
}

/// A QUIC server on loopback that presents `cert` for `alpn` and accepts
/// connections until dropped.
fn impostor(
    ca_pem: &str,
    cert: &flotilla_client::tls::IssuedCert,
    alpn: &[u8],
) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = flotilla_client::tls::server_config(ca_pem, cert, &[alpn]).unwrap();
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(quic));
    let endpoint = rt.block_on(async {
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
    });
    let addr = endpoint.local_addr().unwrap().to_string();
    rt.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let _ = conn.accept_bi().await;
                }
            });
        }
    });
    (rt, addr)
}

#[test]
fn clients_talk_only_to_the_server_they_mean() {
    let cluster = Cluster::start(1, &[]);
    let _nodes = start_nodes(&cluster, &["node-1", "node-2"], &[]);
    wait_nodes_ready(&cluster, 2);
    let node_1 =
        ClientConfig::load(&cluster.dir.path().join("node-1").join("node.config")).unwrap();
    let node_1_cert = flotilla_client::tls::IssuedCert {
        cert_pem: node_1.client_cert.clone(),
        key_pem: node_1.client_key.clone(),
    };
    let info = flotilla_client::tls::CertInfo::from_pem(&node_1.client_cert).unwrap();
    assert_eq!(info.identity, "node:node-1");
    let node_2 = json(&cluster, &["node", "node-2"]);
    let node_2_tunnel = node_2["status"]["daemonEndpoints"]["tunnel"]
        .as_str()
        .unwrap()
        .to_string();

    // Node 1 dials node 2's tunnel address believing it is node 3's: node 2
    // answers with its own certificate, valid for the CA, and is refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dial_as = |expected: &str| {
            flotilla_client::tls::client_config(
                &node_1.ca_cert,
                Some(&node_1_cert),
                flotilla_client::tls::ALPN_TUNNEL,
                flotilla_client::tls::ServerIdentity::Node(expected.into()),
            )
            .unwrap()
        };
        let err = match flotilla_client::dial(&node_2_tunnel, dial_as("node-3")).await {
            Ok(_) => panic!("a tunnel dial accepted another node's certificate"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("node:node-2") && err.contains("not of node:node-3"),
            "{err}"
        );
        flotilla_client::dial(&node_2_tunnel, dial_as("node-2"))
            .await
            .expect("the node it means answers");
    });

    // A server that presents a node's certificate for the API is no
    // apiserver: the CLI refuses it, whatever the CA says of the chain.
    let (_server, addr) = impostor(
        &node_1.ca_cert,
        &node_1_cert,
        flotilla_client::tls::ALPN_API,
    );
    let out = run_cli(
        &[
            "--config",
            cluster.config().to_str().unwrap(),
            "--server",
            &addr,
            "get",
            "ns",
        ],
        None,
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "the CLI talked to a node posing as the apiserver"
    );
    let err = stderr(&out);
    assert!(
        err.contains("node:node-1") && err.contains("not of a store peer"),
        "{err}"
    );
    let out = cluster.cli(0, &["get", "ns", "default"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn instance_in(name: &str, namespace: &str, limits: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Instance
metadata:
  name: {name}
  namespace: {namespace}
spec:
  module: {}
  world: http
{limits}",
        crate::node::examples().join("hello.wasm").display()
    )
}

#[test]
fn quotas_cap_a_namespace_and_limit_ranges_default_its_instances() {
    let cluster = Cluster::start(1, &[]);
    cluster.wait_ready(0);
    apply(
        &cluster,
        "apiVersion: flotilla.dev/v1
kind: Namespace
metadata: {name: q}
---
apiVersion: flotilla.dev/v1
kind: LimitRange
metadata: {name: defaults, namespace: q}
spec:
  limits:
  - type: Instance
    default: {cpu: 250m, memory: 32Mi}
---
apiVersion: flotilla.dev/v1
kind: ResourceQuota
metadata: {name: compute, namespace: q}
spec:
  hard: {instances: '3', limits.cpu: '1', limits.memory: 1Gi}
---
apiVersion: flotilla.dev/v1
kind: ResourceQuota
metadata: {name: services, namespace: q}
spec:
  hard: {services: '1'}
",
    );
    let apply_in = |manifest: &str| cluster.cli_in(0, &["apply", "-f", "-"], Some(manifest));
    for name in ["one", "two", "three"] {
        let out = apply_in(&instance_in(name, "q", ""));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    let one = json(&cluster, &["inst", "one", "-n", "q"]);
    let resources = &one["spec"]["resources"];
    assert_eq!(
        resources["limits"],
        serde_json::json!({"cpu": "250m", "memory": "32Mi"})
    );
    assert_eq!(
        resources["requests"],
        serde_json::json!({"cpu": "250m", "memory": "32Mi"})
    );
    let again = apply_in(&instance_in("one", "q", ""));
    assert!(stdout(&again).contains("unchanged"), "{}", stdout(&again));

    let fourth = apply_in(&instance_in("four", "q", ""));
    assert_eq!(
        fourth.status.code(),
        Some(FORBIDDEN_STATUS),
        "{}",
        stderr(&fourth)
    );
    assert!(
        stderr(&fourth).contains(
            "exceeded quota \"compute\" in namespace \"q\": requested instances=1, used instances=3, limited instances=3"
        ),
        "{}",
        stderr(&fourth)
    );
    assert!(cluster.get_json(&["inst", "four", "-n", "q"]).is_none());
    let quota = json(&cluster, &["quota", "compute", "-n", "q"]);
    assert_eq!(
        quota["status"]["used"],
        serde_json::json!({"instances": "3", "limits.cpu": "750m", "limits.memory": "96Mi"})
    );

    // Room for one more instance, but not for its CPU.
    let out = cluster.cli(0, &["delete", "inst", "three", "-n", "q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let big = apply_in(&instance_in(
        "big",
        "q",
        "  resources:\n    limits: {cpu: 600m, memory: 32Mi}\n",
    ));
    assert_eq!(
        big.status.code(),
        Some(FORBIDDEN_STATUS),
        "{}",
        stderr(&big)
    );
    assert!(
        stderr(&big)
            .contains("requested limits.cpu=600m, used limits.cpu=500m, limited limits.cpu=1"),
        "{}",
        stderr(&big)
    );
    let out = apply_in(&instance_in("four", "q", ""));
    assert!(
        out.status.success(),
        "a freed slot is taken again: {}",
        stderr(&out)
    );

    let first = apply_in(&service_in("first", "q"));
    assert!(first.status.success(), "{}", stderr(&first));
    let second = apply_in(&service_in("second", "q"));
    assert_eq!(
        second.status.code(),
        Some(FORBIDDEN_STATUS),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("exceeded quota \"services\" in namespace \"q\": requested services=1, used services=1, limited services=1"),
        "{}",
        stderr(&second)
    );
    // Other namespaces are not capped.
    for name in ["a", "b", "c", "d"] {
        let out = apply_in(&instance_in(name, "default", ""));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let free = json(&cluster, &["inst", "a"]);
    assert!(
        free["spec"]["resources"]["limits"].is_null(),
        "no LimitRange in default"
    );

    let lines = audit_lines(&cluster, |l| {
        l["name"] == "second" && l["result"] == "Forbidden"
    });
    for (kind, name, result) in [
        ("Instance", "one", "ok"),
        ("Instance", "four", "Forbidden"),
        ("Instance", "big", "Forbidden"),
        ("Instance", "four", "ok"),
        ("Service", "second", "Forbidden"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| audited(l, "user:admin", "apply", kind, "q", name, result)),
            "no audit line for apply {kind} q/{name} {result}"
        );
    }
    let refused = lines
        .iter()
        .find(|l| l["name"] == "big" && l["result"] == "Forbidden")
        .unwrap();
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("exceeded quota \"compute\""),
        "{refused}"
    );
}

//! The CLI's verbs and output shapes against a real server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_api::manifest::parse_manifests;
use flotilla_api::object::Kind;
use flotilla_client::wire::Propagation;

use crate::harness::{service_manifest, stderr, stdout, wait_for, Cluster, BIN};

#[test]
fn get_describe_delete_selectors_namespaces_and_watch() {
    let cluster = Cluster::start(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objs.yaml");
    let team = "apiVersion: flotilla.dev/v1\nkind: Namespace\nmetadata:\n  name: team\n";
    let other = service_manifest("other")
        .replace("app: test", "app: other")
        .replace("  name: other\n", "  name: other\n  namespace: team\n");
    std::fs::write(
        &file,
        format!("{}---\n{team}---\n{other}", service_manifest("web")),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = cluster.cli(0, &["apply", "-f", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    for line in [
        "namespace/team created",
        "service/web created",
        "service/other created",
    ] {
        assert!(printed.contains(line), "{printed}");
    }

    let out = cluster.cli(0, &["get", "svc", "-A"]);
    let text = stdout(&out);
    assert!(text.starts_with("NAMESPACE"), "{text}");
    assert!(text.contains("web") && text.contains("other"), "{text}");
    let out = cluster.cli(0, &["get", "svc", "-A", "-l", "app=other", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["namespace"], "team");
    let out = cluster.cli(0, &["get", "services", "web", "-o", "yaml"]);
    assert!(stdout(&out).contains("kind: Service"), "{}", stdout(&out));
    let out = cluster.cli(0, &["describe", "svc", "web"]);
    assert!(stdout(&out).contains("Name:") && stdout(&out).contains("web"));
    let out = cluster.cli(0, &["get", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown kind"), "{}", stderr(&out));

    // A watch prints changes made after it starts.
    let config = cluster.config();
    let spawn_cli = |args: &[&str]| {
        Command::new(BIN)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--server",
                &cluster.peers[0].addr,
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut watch = spawn_cli(&["get", "svc", "-w", "-o", "json"]);
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The watch lists what exists first; apply only once that is printed, so
    // the new service comes as a change and not in the listing.
    wait_for("the watch's listing", Duration::from_secs(10), || {
        rx.recv_timeout(Duration::from_millis(200)).ok()
    });
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("late")));
    assert!(out.status.success());
    let seen = wait_for(
        "the watch to print the new service",
        Duration::from_secs(10),
        || {
            let line = rx.recv_timeout(Duration::from_millis(200)).ok()?;
            (line.contains("\"ADDED\"") && line.contains("late")).then_some(line)
        },
    );
    assert!(seen.contains("\"type\""));
    let _ = watch.kill();
    let _ = watch.wait();

    // A reader that stops reading (`| head -1`) ends the CLI quietly, as
    // SIGPIPE ends a Unix tool: no panic, status 141.
    let mut watch = spawn_cli(&["get", "svc", "-w"]);
    let mut first = String::new();
    BufReader::new(watch.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("NAME"), "{first}");
    // The pipe's read end is closed now; the next change makes it print.
    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&service_manifest("after-head")),
    );
    assert!(out.status.success());
    let status = wait_for("the watch to end", Duration::from_secs(10), || {
        watch.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(141), "{err}");

    let out = cluster.cli(0, &["delete", "-f", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.cli(0, &["get", "svc", "web"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn finalizers_hold_a_delete_until_they_are_removed() {
    let cluster = Cluster::start(1, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = cluster.client(0).await;
        let mut obj = parse_manifests(&service_manifest("held"))
            .unwrap()
            .remove(0);
        obj.meta_mut().finalizers.push("flotilla.dev/test".into());
        c.create(obj).await.unwrap();
        let (marked, gone) = c
            .delete(Kind::Service, "default", "held", Propagation::Background)
            .await
            .unwrap();
        assert!(!gone);
        assert!(!marked.meta().deletion_timestamp.is_empty());
        let mut current = c.get(Kind::Service, "default", "held").await.unwrap();
        assert!(current.meta().is_being_deleted());
        current.meta_mut().finalizers.clear();
        c.update(current).await.unwrap();
        let err = c.get(Kind::Service, "default", "held").await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(flotilla_client::wire::ErrorCode::NotFound),
            "{err}"
        );
    });
}

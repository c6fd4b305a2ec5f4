//! Watches: ordered delivery from a revision, across a leader change, and the
//! "too old" error once the history window has moved on.

use std::time::Duration;

use flotilla_api::manifest::parse_manifests;
use flotilla_api::object::Kind;
use flotilla_client::wire::{ErrorCode, EventType};

use crate::harness::{service_manifest, Cluster};

#[test]
fn watch_from_a_revision_is_ordered_across_a_leader_change_and_too_old_after_compaction() {
    let mut cluster = Cluster::start(3, &["--watch-history", "60"]);
    let leader = cluster.leader(0).unwrap();
    let watcher_peer = (0..3).find(|i| *i != leader).unwrap();
    let writer_peer = (0..3).find(|i| *i != leader && *i != watcher_peer).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let writer = cluster.client(writer_peer).await;
        let first = parse_manifests(&service_manifest("start"))
            .unwrap()
            .remove(0);
        let start = writer.create(first).await.unwrap();
        let from: u64 = start.meta().resource_version.parse().unwrap();

        for i in 0..10 {
            let o = parse_manifests(&service_manifest(&format!("a-{i}")))
                .unwrap()
                .remove(0);
            writer.create(o).await.unwrap();
        }
        // The watch starts after the writes: the first ten come from the history.
        let watcher = cluster.client(watcher_peer).await;
        let mut stream = watcher
            .watch(Some(Kind::Service), Some("default"), "", from)
            .await
            .unwrap();

        cluster.peers[leader].kill9();
        let mut expected: Vec<String> = (0..10).map(|i| format!("a-{i}")).collect();
        for i in 0..10 {
            let name = format!("b-{i}");
            let o = parse_manifests(&service_manifest(&name)).unwrap().remove(0);
            // Writes may be refused while the survivors elect; retry until acknowledged.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                match writer.create(o.clone()).await {
                    Ok(_) => break,
                    Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => break,
                    Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("write {name}: {e}"),
                }
            }
            expected.push(name);
        }
        let mut seen = Vec::new();
        let mut last_rev = from;
        while seen.len() < expected.len() {
            let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("watch event in time")
                .expect("watch stays up")
                .expect("watch not ended");
            assert!(event.revision > last_rev, "revisions increase");
            last_rev = event.revision;
            assert_eq!(event.event_type, EventType::Added);
            seen.push(event.object.meta().name.clone());
        }
        assert_eq!(seen, expected);

        // Push the history window past `from`.
        for i in 0..70 {
            let o = parse_manifests(&service_manifest(&format!("c-{i}")))
                .unwrap()
                .remove(0);
            writer.create(o).await.unwrap();
        }
        let err = wait_for_err(&watcher, from).await;
        assert_eq!(err.0, Some(ErrorCode::TooOld), "{}", err.1);
        assert!(err.1.contains("too old"), "{}", err.1);
    });
}

async fn wait_for_err(client: &flotilla_client::Client, from: u64) -> (Option<ErrorCode>, String) {
    let mut stream = client
        .watch(Some(Kind::Service), None, "", from)
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Err(e)) => (e.code(), e.to_string()),
        other => panic!(
            "expected a too-old error, got {:?}",
            other.map(|r| r.map(|o| o.map(|e| e.revision)))
        ),
    }
}

//! Nothing lost, nothing wedged: damaged logs, large replies and messages, full
//! disks, floods and bad input (issue 14).

use std::path::{Path, PathBuf};

use crate::harness::{service_manifest, stderr, Cluster, ServerProc};

/// The newest write-ahead log segment of a peer.
fn newest_segment(data_dir: &Path) -> PathBuf {
    let wal = data_dir.join("store").join("wal");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap_or_else(|e| panic!("read {}: {e}", wal.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

#[test]
fn a_flipped_bit_in_the_middle_of_the_newest_wal_segment_is_refused_at_start() {
    let mut cluster = Cluster::start(1, &[]);
    for i in 0..40 {
        let out = cluster.cli_in(
            0,
            &["apply", "-f", "-"],
            Some(&service_manifest(&format!("kept-{i}"))),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let peer = &mut cluster.peers[0];
    peer.kill9();
    let segment = newest_segment(&peer.data_dir);
    let mut data = std::fs::read(&segment).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x10;
    std::fs::write(&segment, &data).unwrap();

    let refused = match ServerProc::start(&peer.data_dir, &[]) {
        Ok(_) => panic!("a peer started on a write-ahead log with a flipped bit"),
        Err(text) => text,
    };
    assert!(
        refused.contains(&segment.display().to_string()) && refused.contains("corrupt at byte"),
        "the refusal names the file and the offset: {refused}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        data,
        "a refused log is left as it was, for whoever repairs it"
    );
}

/// Sends `signal` to a process.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn a_peer_that_vanished_is_noticed_in_about_3_s() {
    let cluster = Cluster::start(1, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = cluster.peers[0].child.as_ref().unwrap().id();
    let noticed = rt.block_on(async {
        let client = cluster.client(0).await;
        let mut watch = client
            .watch(Some(flotilla_api::object::Kind::Service), None, "", 0)
            .await
            .expect("watch");
        // Stopped, the process sends nothing: no close, no reset.
        signal(pid, "STOP");
        let stopped = std::time::Instant::now();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(15), async {
            loop {
                if !matches!(watch.next().await, Ok(Some(_))) {
                    return;
                }
            }
        })
        .await;
        (ended.is_ok(), stopped.elapsed())
    });
    signal(pid, "CONT");
    let (ended, took) = noticed;
    assert!(ended, "the connection outlived 15 s of silence");
    assert!(
        took < std::time::Duration::from_millis(4500),
        "a silent peer was noticed after {took:?}"
    );
}

//! Bad input from users and peers: clear errors, nothing written, servers stay up.

use std::time::{Duration, Instant};

use flotilla_client::tls;
use flotilla_client::Client;
use tokio::io::AsyncWriteExt;

use crate::harness::{free_udp_addr, run_cli, service_manifest, stderr, stdout, Cluster};

fn count_services(cluster: &Cluster) -> usize {
    let out = cluster.cli(0, &["get", "svc", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["items"].as_array().unwrap().len()
}

#[test]
fn bad_manifests_name_the_document_and_field_and_write_nothing() {
    let cluster = Cluster::start(1, &[]);
    let good = service_manifest("good");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "malformed yaml",
            format!("{good}---\nkind: Service\nmetadata: [unclosed\n"),
            vec!["document 2"],
        ),
        (
            "unknown kind",
            format!("{good}---\napiVersion: flotilla.dev/v1\nkind: Gizmo\nmetadata:\n  name: g\n"),
            vec!["document 2", "Gizmo"],
        ),
        (
            "missing required field",
            format!("{good}---\napiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: noname\nspec:\n  world: command\n"),
            vec!["document 2", "spec.module"],
        ),
        (
            "invalid quantity",
            format!("{good}---\napiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: q\nspec:\n  module: sha256:{}\n  resources:\n    limits:\n      memory: 64Xi\n", "a".repeat(64)),
            vec!["document 2", "memory", "64Xi", "quantity"],
        ),
    ];
    for (what, text, needles) in cases {
        let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&text));
        assert!(!out.status.success(), "{what}: must fail");
        let err = stderr(&out);
        for needle in needles {
            assert!(
                err.contains(needle),
                "{what}: error should mention {needle:?}: {err}"
            );
        }
        assert_eq!(
            count_services(&cluster),
            0,
            "{what}: nothing may be written"
        );
    }
}

#[test]
fn garbage_on_the_wire_leaves_every_server_serving() {
    let cluster = Cluster::start(3, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Raw datagrams that are not QUIC.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for p in &cluster.peers {
            for i in 0..200u32 {
                let junk: Vec<u8> = (0..(i % 1400 + 1)).map(|_| rand::random::<u8>()).collect();
                let _ = sock.send_to(&junk, &p.addr).await;
            }
        }
        let config = flotilla_client::ClientConfig::load(&cluster.config()).unwrap();
        let cert = tls::IssuedCert {
            cert_pem: config.client_cert.clone(),
            key_pem: config.client_key.clone(),
        };
        for p in &cluster.peers {
            // Authenticated API streams carrying random bytes, an oversized length and a truncated frame.
            let (_ep, conn) = flotilla_client::dial(
                &p.addr,
                tls::client_config(
                    &config.ca_cert,
                    Some(&cert),
                    tls::ALPN_API,
                    tls::ServerIdentity::AnyPeer,
                )
                .unwrap(),
            )
            .await
            .unwrap();
            let payloads: Vec<Vec<u8>> = vec![
                (0..4096).map(|_| rand::random::<u8>()).collect(),
                u32::MAX.to_be_bytes().to_vec(),
                {
                    let mut v = 1000u32.to_be_bytes().to_vec();
                    v.extend_from_slice(&[1, 2, 3]);
                    v
                },
                vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
            ];
            for payload in &payloads {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(payload).await.unwrap();
                send.finish().unwrap();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
            }
            // Anonymous raft connections get closed; a peer certificate is required.
            if let Ok((_ep, conn)) = flotilla_client::dial(
                &p.addr,
                tls::client_config(
                    &config.ca_cert,
                    None,
                    tls::ALPN_RAFT,
                    tls::ServerIdentity::AnyPeer,
                )
                .unwrap(),
            )
            .await
            {
                if let Ok((mut send, _recv)) = conn.open_bi().await {
                    let _ = send.write_all(&[0xde, 0xad, 0xbe, 0xef]).await;
                }
            }
            // The admin (not a peer) speaking raft with garbage and an oversized frame.
            if let Ok((_ep, conn)) = flotilla_client::dial(
                &p.addr,
                tls::client_config(
                    &config.ca_cert,
                    Some(&cert),
                    tls::ALPN_RAFT,
                    tls::ServerIdentity::AnyPeer,
                )
                .unwrap(),
            )
            .await
            {
                if let Ok((mut send, _recv)) = conn.open_bi().await {
                    let _ = send.write_all(&u32::MAX.to_be_bytes()).await;
                    let _ = send.shutdown().await;
                }
            }
        }
        for p in &cluster.peers {
            let c = Client::connect_to(&p.addr, &config).await.unwrap();
            let obj = flotilla_api::manifest::parse_manifests(&service_manifest(&format!(
                "after-garbage-{}",
                p.addr.replace([':', '.'], "-")
            )))
            .unwrap()
            .remove(0);
            c.create(obj).await.expect("the server still serves writes");
        }
    });
    for i in 0..3 {
        let out = cluster.cli(i, &["get", "svc"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), 4);
    }
}

#[test]
fn no_server_reachable_is_a_clear_error_within_five_seconds() {
    let cluster = Cluster::start(1, &[]);
    let nobody = free_udp_addr();
    let config = cluster.config();
    let started = Instant::now();
    let out = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "--server",
            &nobody,
            "get",
            "svc",
        ],
        None,
        Duration::from_secs(20),
    );
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("unable to connect to the server at {nobody}")),
        "{err}"
    );
}

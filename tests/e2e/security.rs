//! Identities: only certificates of the cluster CA get in; joins need a valid token.

use std::time::Duration;

use flotilla_client::wire::RequestV1;
use flotilla_client::Client;
use flotilla_orchestrator::ca::CertificateAuthority;

use crate::harness::{stderr, Cluster, ServerProc};

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::start(1, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = flotilla_client::ClientConfig::load(&cluster.config()).unwrap();
        let rogue_ca = CertificateAuthority::generate("rogue").unwrap();
        let rogue = rogue_ca.issue("user:admin", &[]).unwrap();
        let result = async {
            let c =
                Client::connect_with(&cluster.peers[0].addr, &config.ca_cert, Some(&rogue)).await?;
            c.call(RequestV1::Members).await
        }
        .await;
        assert!(
            result.is_err(),
            "a certificate of another CA must be refused"
        );

        // Anonymous callers may only join.
        let anon = Client::connect_with(&cluster.peers[0].addr, &config.ca_cert, None)
            .await
            .unwrap();
        let err = anon.call(RequestV1::Members).await.unwrap_err();
        assert!(err.to_string().contains("client certificate"), "{err}");
    });
}

#[test]
fn joins_with_a_wrong_or_expired_token_are_refused() {
    let cluster = Cluster::start(1, &[]);
    let good = cluster.peer_token("1h");
    let addr = cluster.peers[0].addr.clone();

    // Right CA, unknown secret.
    let parts: Vec<&str> = good.split('.').collect();
    let wrong = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        "0".repeat(16),
        "1".repeat(32)
    );
    let err = ServerProc::start(
        &cluster.dir.path().join("wrong"),
        &["--join", &addr, "--token", &wrong],
    )
    .err()
    .expect("a wrong token is refused");
    assert!(
        err.contains("join refused") && err.contains("unknown"),
        "{err}"
    );

    // A token for another CA: the server's certificate does not match the pin.
    let other_ca = format!("{}.{}.{}.{}", parts[0], "b".repeat(64), parts[2], parts[3]);
    let err = ServerProc::start(
        &cluster.dir.path().join("other"),
        &["--join", &addr, "--token", &other_ca],
    )
    .err()
    .expect("a token pinning another CA is refused");
    assert!(err.contains("join failed"), "{err}");

    let short = cluster.peer_token("1s");
    std::thread::sleep(Duration::from_millis(2100));
    let err = ServerProc::start(
        &cluster.dir.path().join("late"),
        &["--join", &addr, "--token", &short],
    )
    .err()
    .expect("an expired token is refused");
    assert!(err.contains("expired"), "{err}");

    let out = cluster.cli(0, &["get", "ns"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

//! The virtual network's addresses: node instance ranges, service cluster IPs,
//! exhaustion, and the Endpoints of a Service.

use crate::harness::{service_manifest, stderr, stdout, Cluster};

fn get_json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = cluster.cli(0, &full);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[test]
fn services_get_cluster_ips_until_the_range_is_exhausted() {
    let cluster = Cluster::start(1, &["--service-cidr", "10.96.7.0/30"]);
    for name in ["a", "b"] {
        let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest(name)));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let a = get_json(&cluster, &["svc", "a"]);
    let b = get_json(&cluster, &["svc", "b"]);
    let ips = [
        a["spec"]["clusterIP"].as_str().unwrap(),
        b["spec"]["clusterIP"].as_str().unwrap(),
    ];
    assert_eq!(ips, ["10.96.7.1", "10.96.7.2"]);

    // Applying again keeps the address: nothing changed.
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("a")));
    assert!(stdout(&out).contains("unchanged"), "{}", stdout(&out));

    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("c")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no cluster IP left for service \"c\": every address of the service CIDR 10.96.7.0/30 is taken"),
        "{}",
        stderr(&out)
    );
    assert!(
        !cluster.cli(0, &["get", "svc", "c"]).status.success(),
        "nothing written"
    );

    // Deleting a service frees its address for the next one.
    assert!(cluster.cli(0, &["delete", "svc", "a"]).status.success());
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&service_manifest("c")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        get_json(&cluster, &["svc", "c"])["spec"]["clusterIP"],
        "10.96.7.1"
    );

    // An address outside the range, or one taken, is refused by name.
    let taken = service_manifest("d").replace("spec:\n", "spec:\n  clusterIP: 10.96.7.2\n");
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&taken));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already allocated"),
        "{}",
        stderr(&out)
    );
    let outside = service_manifest("e").replace("spec:\n", "spec:\n  clusterIP: 10.1.2.3\n");
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&outside));
    assert!(
        stderr(&out).contains("spec.clusterIP: 10.1.2.3 is outside the service CIDR 10.96.7.0/30"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nodes_get_distinct_instance_ranges() {
    let cluster = Cluster::start(1, &["--cluster-cidr", "10.250.0.0/23"]);
    let node = |name: &str| {
        format!("apiVersion: flotilla.dev/v1\nkind: Node\nmetadata:\n  name: {name}\n")
    };
    for name in ["n1", "n2"] {
        let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&node(name)));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let r1 = get_json(&cluster, &["node", "n1"])["spec"]["instanceCIDR"].clone();
    let r2 = get_json(&cluster, &["node", "n2"])["spec"]["instanceCIDR"].clone();
    assert_eq!(
        (r1.as_str().unwrap(), r2.as_str().unwrap()),
        ("10.250.0.0/24", "10.250.1.0/24")
    );
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&node("n3")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no instance range left for node \"n3\""),
        "{}",
        stderr(&out)
    );
}

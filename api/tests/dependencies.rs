//! The object model is data and rules only: whatever wants the types must not
//! pull in a network stack, an async runtime or TLS.

use std::process::Command;

#[test]
fn the_object_model_depends_on_no_runtime_network_or_tls() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "flotilla-api",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"flotilla-api"), "{tree}");
    for forbidden in ["tokio", "quinn", "rustls", "rcgen", "ring", "hyper"] {
        assert!(
            !crates.contains(&forbidden),
            "flotilla-api depends on {forbidden}:\n{tree}"
        );
    }
}

//! The domain crate must stay pure: no runtime, broker, database, HTTP or codec crate may enter
//! its dependency tree, however indirectly. Reads `cargo metadata` so a new transitive
//! dependency is caught, not just a direct one.

use std::process::Command;

const FORBIDDEN: [&str; 8] = [
    "tokio",
    "rdkafka",
    "sqlx",
    "axum",
    "apache-avro",
    "hyper",
    "serde_json",
    "async-trait",
];

#[test]
fn domain_dependency_tree_has_no_runtime_broker_database_http_or_codec_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree", "-p", "domain", "--edges", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"domain"),
        "cargo tree listed the domain crate: {tree}"
    );
    for forbidden in FORBIDDEN {
        assert!(
            !names.contains(&forbidden),
            "domain depends on {forbidden}:\n{tree}"
        );
    }
}

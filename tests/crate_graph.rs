//! Dependencies point one way (ARCHITECTURE.md): the workspace's crate graph,
//! read from `cargo metadata`, against an allow-list of which workspace
//! crate may depend on which. The compiler already refuses a path into a
//! crate that is not a dependency, so this test only has to keep the
//! manifests honest. It checks the transitive closure, so a crate cannot
//! reach a forbidden one through an allowed one (the worker core must not
//! reach the Docker Engine client through, say, telemetry).

use std::collections::{BTreeMap, BTreeSet};

/// Workspace crate → the workspace crates it may depend on (normal
/// dependencies, directly or transitively). Crates missing here are
/// refused: a new crate gets a line saying where it sits.
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    const FOUNDATION: &str = "oz-foundation";
    const PROTOCOL: &str = "oz-protocol";
    const RUNTIME: &str = "oz-runtime";
    BTreeMap::from([
        // Leaves: depends on no workspace crate.
        (FOUNDATION, vec![]),
        ("xtask", vec![]),
        // The test Kubernetes API server stands alone (tests only).
        ("oz-test-apiserver", vec![]),
        // The wire protocol knows only the foundations (secrets).
        (PROTOCOL, vec![FOUNDATION]),
        (
            "oz-telemetry",
            // Pushes OTLP through the foundations' connector, not the engine's.
            vec![FOUNDATION],
        ),
        ("oz-docker-engine", vec![FOUNDATION]),
        // The seam names no runtime and no engine.
        (RUNTIME, vec![FOUNDATION, PROTOCOL]),
        // Each runtime knows the seam and what it drives; never another
        // runtime, never the worker core.
        (
            "oz-runtime-docker",
            vec![FOUNDATION, PROTOCOL, RUNTIME, "oz-docker-engine"],
        ),
        ("oz-runtime-direct", vec![FOUNDATION, PROTOCOL, RUNTIME]),
        ("oz-runtime-command", vec![FOUNDATION, PROTOCOL, RUNTIME]),
        ("oz-runtime-kubernetes", vec![FOUNDATION, PROTOCOL, RUNTIME]),
        // The core drives `dyn Runtime`: no runtime implementation, no
        // Docker, no control plane.
        (
            "oz-worker",
            vec![FOUNDATION, PROTOCOL, RUNTIME, "oz-telemetry"],
        ),
        ("oz-runs-api", vec![FOUNDATION, PROTOCOL]),
        // The control plane speaks the protocol and serves the runs API; it
        // knows neither the worker nor any runtime.
        // Its own metrics page uses the telemetry crate's registry and
        // exposition, so it has the worker's shape.
        (
            "oz-control-plane",
            vec![FOUNDATION, PROTOCOL, "oz-telemetry", "oz-runs-api"],
        ),
        // Harnesses for tests and benches drive everything below the binary.
        (
            "oz-test-support",
            vec![
                FOUNDATION,
                PROTOCOL,
                "oz-telemetry",
                "oz-docker-engine",
                RUNTIME,
                "oz-runtime-docker",
                "oz-runtime-direct",
                "oz-runtime-command",
                "oz-worker",
                "oz-runs-api",
                "oz-control-plane",
            ],
        ),
        // The binary assembles everything, except the test harnesses.
        (
            "oz-agent-worker",
            vec![
                FOUNDATION,
                PROTOCOL,
                "oz-telemetry",
                "oz-docker-engine",
                RUNTIME,
                "oz-runtime-docker",
                "oz-runtime-direct",
                "oz-runtime-command",
                "oz-runtime-kubernetes",
                "oz-worker",
                "oz-runs-api",
                "oz-control-plane",
            ],
        ),
    ])
}

/// Crates only ever used as dev-dependencies.
const DEV_ONLY: &[&str] = &["oz-test-support", "oz-test-apiserver"];

/// One workspace crate's edges to other workspace crates.
#[derive(Debug, Default)]
struct Edges {
    normal: BTreeSet<String>,
    dev: BTreeSet<String>,
}

/// The workspace graph from `cargo metadata --no-deps` (its `packages` are
/// exactly the workspace members; each lists its declared dependencies with
/// their `kind`: null for normal, "dev", "build").
fn workspace_graph() -> BTreeMap<String, Edges> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let mut graph = BTreeMap::new();
    for p in packages {
        let mut edges = Edges::default();
        for d in p["dependencies"].as_array().unwrap() {
            let name = d["name"].as_str().unwrap();
            if !members.contains(name) {
                continue;
            }
            match d["kind"].as_str() {
                Some("dev") => edges.dev.insert(name.to_owned()),
                _ => edges.normal.insert(name.to_owned()),
            };
        }
        graph.insert(p["name"].as_str().unwrap().to_owned(), edges);
    }
    graph
}

/// Every crate `from` reaches through normal dependencies.
fn closure(graph: &BTreeMap<String, Edges>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(next) = todo.pop() {
        for dep in graph.get(&next).map(|e| &e.normal).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

/// What breaks the rules, one sentence each.
fn offences(graph: &BTreeMap<String, Edges>, allowed: &BTreeMap<&str, Vec<&str>>) -> Vec<String> {
    let mut found = Vec::new();
    for (krate, edges) in graph {
        let Some(may) = allowed.get(krate.as_str()) else {
            found.push(format!(
                "{krate} is not in the allow-list of tests/crate_graph.rs: add it with the crates it may use"
            ));
            continue;
        };
        for dep in closure(graph, krate) {
            if !may.contains(&dep.as_str()) {
                found.push(format!("{krate} depends on {dep} (directly or through another crate), which it may not"));
            }
        }
        for dep in &edges.dev {
            let ok = may.contains(&dep.as_str())
                || DEV_ONLY.contains(&dep.as_str())
                || krate == "oz-agent-worker";
            if !ok {
                found.push(format!("{krate}'s tests depend on {dep}, which it may not"));
            }
        }
    }
    for (krate, edges) in graph {
        for dep in &edges.normal {
            if DEV_ONLY.contains(&dep.as_str()) {
                found.push(format!(
                    "{krate} depends on {dep}, which may only be a dev-dependency"
                ));
            }
        }
    }
    found
}

#[test]
fn dependencies_point_one_way() {
    let graph = workspace_graph();
    for expected in allowed().keys() {
        assert!(
            graph.contains_key(*expected),
            "{expected} is in the allow-list but not in the workspace"
        );
    }
    let found = offences(&graph, &allowed());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let mut graph = workspace_graph();
    // The worker core reaching the Docker Engine client through telemetry,
    // a runtime naming another runtime, and the harness as a normal
    // dependency: each must be caught.
    graph
        .get_mut("oz-telemetry")
        .unwrap()
        .normal
        .insert("oz-docker-engine".to_owned());
    graph
        .get_mut("oz-runtime-direct")
        .unwrap()
        .normal
        .insert("oz-runtime-command".to_owned());
    graph
        .get_mut("oz-control-plane")
        .unwrap()
        .normal
        .insert("oz-test-support".to_owned());
    let found = offences(&graph, &allowed()).join("\n");
    for expected in [
        "oz-worker depends on oz-docker-engine",
        "oz-telemetry depends on oz-docker-engine",
        "oz-runtime-direct depends on oz-runtime-command",
        "oz-control-plane depends on oz-test-support, which may only be a dev-dependency",
    ] {
        assert!(found.contains(expected), "{expected:?} not in:\n{found}");
    }
}

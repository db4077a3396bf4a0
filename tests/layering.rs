//! Dependencies point one way (ARCHITECTURE.md), checked by reading the
//! source tree: each layer may name only the layers below it. A `use` or a
//! path through `crate::` into a layer a module may not know fails here,
//! naming the file and line. (The control plane's inner layers have their
//! own test, `control_plane_layering.rs`.)

use std::path::{Path, PathBuf};

/// Top-level modules of the crate.
const LEAVES: &[&str] = &[
    "secret",
    "text",
    "duration",
    "dirs",
    "percent",
    "operator_env",
    "tls_roots",
    "image_reference",
];

/// (folder or file under `src/`, modules of the crate it must not name).
fn rules() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut rules = vec![
        // The worker core: no runtime implementation, no Docker, no transport.
        (
            "worker",
            vec![
                "runtime::docker",
                "runtime::direct",
                "runtime::command",
                "docker",
                "transport",
                "cli",
                "control_plane",
            ],
        ),
        // The transport knows nothing above it.
        (
            "transport",
            vec![
                "docker",
                "runtime",
                "worker",
                "cli",
                "control_plane",
                "telemetry",
            ],
        ),
        // The bindings know the transport, nothing above.
        (
            "docker",
            vec!["runtime", "worker", "cli", "control_plane", "telemetry"],
        ),
        // Runtimes know the seam and what they drive, never the core.
        (
            "runtime",
            vec!["worker", "cli", "control_plane", "telemetry"],
        ),
        // Each runtime knows none of the others.
        (
            "runtime/docker",
            vec!["runtime::direct", "runtime::command"],
        ),
        (
            "runtime/direct",
            vec!["runtime::docker", "runtime::command", "docker", "transport"],
        ),
        (
            "runtime/command",
            vec!["runtime::docker", "runtime::direct", "docker", "transport"],
        ),
        // What runtimes share names no runtime.
        (
            "runtime/output.rs",
            vec!["runtime::docker", "runtime::direct", "runtime::command"],
        ),
        (
            "runtime/process.rs",
            vec!["runtime::docker", "runtime::direct", "runtime::command"],
        ),
        (
            "runtime/host.rs",
            vec!["runtime::docker", "runtime::direct", "runtime::command"],
        ),
        // The wire protocol is shared by both sides and knows neither.
        (
            "protocol",
            vec![
                "worker",
                "runtime",
                "docker",
                "transport",
                "cli",
                "control_plane",
                "telemetry",
            ],
        ),
        (
            "telemetry",
            vec!["worker", "runtime", "docker", "cli", "control_plane"],
        ),
    ];
    for leaf in LEAVES {
        rules.push((
            Box::leak(format!("{leaf}.rs").into_boxed_str()),
            vec![
                "worker",
                "runtime",
                "docker",
                "transport",
                "cli",
                "control_plane",
                "protocol",
                "telemetry",
            ],
        ));
    }
    rules
}

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// Lines of code (comments and doc comments left out) that name
/// `crate::<forbidden>` as a path or in a `use`.
fn offences(file: &Path, forbidden: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for f in forbidden {
            let needle = format!("crate::{f}");
            let hit = code.match_indices(&needle).any(|(i, _)| {
                // `crate::docker` must not match `crate::docker_x`.
                let rest = &code[i + needle.len()..];
                rest.is_empty() || !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if hit {
                found.push(format!(
                    "{}:{}: names crate::{f}: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

#[test]
fn dependencies_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    for (place, forbidden) in rules() {
        let path = src.join(place);
        assert!(
            path.exists(),
            "the layering rules name {place}, which does not exist"
        );
        for file in rust_files(&path) {
            // `runtime/mod.rs` declares its runtimes, as a seam does.
            if place == "runtime" && file.ends_with("runtime/mod.rs") {
                continue;
            }
            all.extend(offences(&file, &forbidden));
        }
    }
    assert!(
        all.is_empty(),
        "dependencies that point the wrong way:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.rs");
    std::fs::write(
        &f,
        "use crate::docker::Docker; // crate::transport in a comment\nlet y = crate::docker_x::z;\n/// crate::transport in docs\n",
    )
    .unwrap();
    let hits = offences(&f, &["docker", "transport"]);
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(hits[0].contains(":1:"));
}

//! The control plane's layers, checked from the source text (in the manner of
//! rust-analyzer's tidy tests): each module of `src/control_plane/` may name
//! only the modules listed for it, so dependencies point one way, and the
//! control plane as a whole reaches into no other layer of the crate than the
//! shared leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the control-plane modules it may use. `mod.rs` composes them all.
const LAYERS: &[(&str, &[&str])] = &[
    ("time", &[]),
    ("keys", &[]),
    ("model", &[]),
    ("writer", &[]),
    ("store", &["keys", "model", "time", "writer"]),
    ("index", &["model"]),
    ("output", &["store"]),
    ("dispatcher", &["index", "model", "output", "store", "time"]),
    ("calendar", &[]),
    ("scheduler", &["calendar", "dispatcher", "model", "store"]),
    ("sessions", &["keys", "store"]),
    ("connections", &[]),
    ("followers", &[]),
    ("login_limit", &[]),
    (
        "edge",
        &[
            "connections",
            "dispatcher",
            "followers",
            "keys",
            "login_limit",
            "model",
            "scheduler",
            "sessions",
            "store",
        ],
    ),
    ("api_runs", &["dispatcher", "edge", "model", "store"]),
    ("api_output", &["api_runs", "edge", "followers", "model"]),
    ("api_workers", &["edge", "model"]),
    (
        "api_schedules",
        &["api_runs", "edge", "model", "scheduler", "store"],
    ),
    (
        "api",
        &[
            "api_output",
            "api_runs",
            "api_schedules",
            "api_workers",
            "edge",
        ],
    ),
    (
        "ws",
        &["connections", "dispatcher", "edge", "keys", "store"],
    ),
    ("tls", &[]),
    ("ui", &["edge", "keys", "sessions"]),
    ("server", &["api", "connections", "edge", "tls", "ui", "ws"]),
    ("client", &["model"]),
    ("openapi", &["model"]),
];

/// What of the rest of the crate the control plane may use.
const CRATE_LEAVES: &[&str] = &[
    "control_plane",
    "protocol",
    "secret",
    "percent",
    "dirs",
    "duration",
    "tls_roots",
    "image_reference",
    "text",
];

/// Strips `//` comments (doc comments mention other modules by name).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Every name that follows `prefix` in `code`: `prefix::x` gives `x`,
/// `prefix::{x, y::z}` gives `x` and `y`.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident_at(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn sources() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/control_plane");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, code_of(&std::fs::read_to_string(&p).unwrap()))
        })
        .collect()
}

#[test]
fn control_plane_modules_depend_only_on_earlier_layers() {
    let layers: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut problems = Vec::new();
    for (module, code) in sources() {
        if module == "mod" {
            continue;
        }
        let Some(allowed) = layers.get(module.as_str()) else {
            problems.push(format!(
                "src/control_plane/{module}.rs is not in LAYERS: add it with the modules it may use"
            ));
            continue;
        };
        let mut used = names_after(&code, "control_plane::");
        used.extend(names_after(&code, "super::"));
        for name in used {
            let is_module = layers.contains_key(name.as_str());
            if is_module && name != module && !allowed.contains(&name.as_str()) {
                problems.push(format!("{module} uses {name}, which its layer may not"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_control_plane_uses_only_the_shared_leaves_of_the_crate() {
    let mut problems = Vec::new();
    for (module, code) in sources() {
        for name in names_after(&code, "crate::") {
            if !CRATE_LEAVES.contains(&name.as_str()) {
                problems.push(format!("control_plane::{module} uses crate::{name}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_layering_check_sees_grouped_and_nested_imports() {
    let code = code_of(
        "use crate::control_plane::{api, ws::WS_PATH};\n// use crate::control_plane::store;\nlet x = super::time::now();",
    );
    assert_eq!(
        names_after(&code, "control_plane::"),
        BTreeSet::from(["api".to_string(), "ws".to_string()])
    );
    assert_eq!(
        names_after(&code, "super::"),
        BTreeSet::from(["time".to_string()])
    );
}

//! JSON schemas generated from this crate's types and committed under
//! `api-specs/`. `cargo xtask codegen` writes them; the test below fails when
//! a committed copy is stale.

use std::path::Path;

/// (file name under `api-specs/`, contents).
pub fn all() -> Vec<(&'static str, String)> {
    fn pretty<T: schemars::JsonSchema>() -> String {
        let mut s =
            serde_json::to_string_pretty(&schemars::schema_for!(T)).expect("schema serializes");
        s.push('\n');
        s
    }
    let mut openapi = serde_json::to_string_pretty(&oz_control_plane::http::openapi::document())
        .expect("the OpenAPI document serializes");
    openapi.push('\n');
    vec![
        (
            "worker-protocol.schema.json",
            pretty::<oz_protocol::ProtocolMessages>(),
        ),
        ("control-plane-runs.openapi.json", openapi),
        (
            "worker-config.schema.json",
            pretty::<crate::cli::config_file::ConfigFile>(),
        ),
        (
            "command-dispatch-payload.schema.json",
            pretty::<oz_runtime_command::payload::DispatchPayload>(),
        ),
    ]
}

pub fn write_all(dir: &Path, check: bool) -> Result<(), String> {
    let mut stale = Vec::new();
    for (name, contents) in all() {
        let path = dir.join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == contents {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else {
            std::fs::write(&path, contents)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "stale generated schemas: {}; run `cargo xtask codegen` and commit",
            stale.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schemas_are_fresh() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("api-specs");
        super::write_all(&dir, true).unwrap();
    }
}

//! JSON schemas generated from this crate's types and committed under
//! `api-specs/`. `cargo xtask codegen` writes them; the test below fails when
//! a committed copy is stale.

use std::path::{Path, PathBuf};

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

/// Why [`write_all`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// With `check`: the committed files that differ from the types.
    #[error("stale generated schemas: {}; run `cargo xtask codegen` and commit", stale.join(", "))]
    Stale { stale: Vec<String> },
}

/// Writes every schema of [`all`] under `dir`; with `check`, writes nothing
/// and fails with the stale ones instead.
pub fn write_all(dir: &Path, check: bool) -> Result<(), SchemaError> {
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
                .map_err(|source| SchemaError::Write { path, source })?;
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Stale { stale })
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

//! Where per-user files go by default, following the XDG base directories.

use std::path::PathBuf;

/// `$XDG_VAR/oz-agent-worker`, else `~/<home_fallback>/oz-agent-worker`,
/// else `oz-agent-worker-<kind>` in the working directory.
pub fn xdg_dir(xdg_var: &str, home_fallback: &str, kind: &str) -> PathBuf {
    let non_empty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = non_empty(xdg_var) {
        return x.join("oz-agent-worker");
    }
    if let Some(h) = non_empty("HOME") {
        return h.join(home_fallback).join("oz-agent-worker");
    }
    PathBuf::from(format!("oz-agent-worker-{kind}"))
}

/// Creates `dir` (and its parents) readable by its owner only (0700), and
/// makes an existing one so: for folders that hold reports, records and
/// workspaces that may quote secrets.
pub fn create_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

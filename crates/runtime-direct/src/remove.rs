//! Removing a task's workspace even when the task left folders without
//! write permission (a Go module cache is read-only by design: `go clean
//! -modcache` makes it writable first, and so does this). Root needs no
//! such step; a worker running as an ordinary user (the systemd unit's
//! set-up) does.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Removes `path` and everything under it. When that fails for want of
/// permission, gives the owner write and search permission on every folder
/// under `path` it owns (symbolic links are not followed) and tries again.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_folders_writable(path);
            std::fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_folders_writable(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_folders_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_read_only_trees() {
        let root = tempfile::tempdir().unwrap();
        let ws = root.path().join("ws");
        let deep = ws.join("go/pkg/mod/example.com/m@v1.0.0");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("go.mod"), "module m\n").unwrap();
        for d in [
            deep.as_path(),
            deep.parent().unwrap(),
            &ws.join("go/pkg/mod"),
        ] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        remove_tree(&ws).unwrap();
        assert!(!ws.exists());
        remove_tree(&ws).unwrap();
    }
}

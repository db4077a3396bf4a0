//! `backend.direct.user`: the unprivileged user a task's programs run as,
//! resolved from the user and group databases at start-up.

use super::launcher::RunAs;
use nix::unistd::{Uid, User};

/// Resolves `user` (a name, or a numeric uid) to its ids, primary group,
/// supplementary groups and home. Errors name the key and the fix.
pub fn resolve(user: &str) -> Result<RunAs, String> {
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .map_err(|e| format!("backend.direct.user: cannot look up {user:?}: {e}"))?
    .ok_or_else(|| {
        format!("backend.direct.user: no user {user:?} on this host; create it (useradd --system {user}) or fix the name")
    })?;
    if found.uid.is_root() {
        return Err(format!(
            "backend.direct.user: {user:?} is root; name an unprivileged user, or remove the key to run tasks as the worker's own user"
        ));
    }
    let name = std::ffi::CString::new(found.name.clone())
        .map_err(|_| format!("backend.direct.user: {user:?} has a NUL in its name"))?;
    let groups = nix::unistd::getgrouplist(&name, found.gid)
        .map_err(|e| format!("backend.direct.user: cannot list the groups of {user:?}: {e}"))?;
    Ok(RunAs {
        name: found.name,
        uid: found.uid.as_raw(),
        gid: found.gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        home: found.dir,
    })
}

/// Whether this process may switch to another user (it runs as root).
pub fn may_switch_user() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives `path` to `user` (owner and primary group).
pub fn give(path: &std::path::Path, user: &RunAs) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_root_users_are_refused_naming_the_key() {
        let e = resolve("no-such-user-oz-test").unwrap_err();
        assert!(
            e.starts_with("backend.direct.user") && e.contains("useradd"),
            "{e}"
        );
        let e = resolve("root").unwrap_err();
        assert!(e.contains("is root"), "{e}");
        let e = resolve("0").unwrap_err();
        assert!(e.contains("is root"), "{e}");
        let nobody = resolve("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        assert!(nobody.groups.contains(&nobody.gid));
    }
}

//! `backend.direct.user`: the unprivileged user a task's programs run as,
//! resolved from the user and group databases at start-up.

use super::launcher::RunAs;
use nix::unistd::{Uid, User};

/// Why `backend.direct.user` cannot be used; `Display` names the key and
/// the fix.
#[derive(Debug)]
pub enum UserError {
    Lookup { user: String, source: nix::Error },
    Unknown { user: String },
    Root { user: String },
    BadName { user: String },
    Groups { user: String, source: nix::Error },
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::Lookup { user, source } => {
                write!(f, "backend.direct.user: cannot look up {user:?}: {source}")
            }
            UserError::Unknown { user } => write!(
                f,
                "backend.direct.user: no user {user:?} on this host; create it (useradd --system {user}) or fix the name"
            ),
            UserError::Root { user } => write!(
                f,
                "backend.direct.user: {user:?} is root; name an unprivileged user, or remove the key to run tasks as the worker's own user"
            ),
            UserError::BadName { user } => {
                write!(f, "backend.direct.user: {user:?} has a NUL in its name")
            }
            UserError::Groups { user, source } => write!(
                f,
                "backend.direct.user: cannot list the groups of {user:?}: {source}"
            ),
        }
    }
}

impl std::error::Error for UserError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UserError::Lookup { source, .. } | UserError::Groups { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Resolves `user` (a name, or a numeric uid) to its ids, primary group,
/// supplementary groups and home.
pub fn resolve(user: &str) -> Result<RunAs, UserError> {
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .map_err(|source| UserError::Lookup {
        user: user.into(),
        source,
    })?
    .ok_or_else(|| UserError::Unknown { user: user.into() })?;
    if found.uid.is_root() {
        return Err(UserError::Root { user: user.into() });
    }
    let name = std::ffi::CString::new(found.name.clone())
        .map_err(|_| UserError::BadName { user: user.into() })?;
    let groups =
        nix::unistd::getgrouplist(&name, found.gid).map_err(|source| UserError::Groups {
            user: user.into(),
            source,
        })?;
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
        let e = resolve("no-such-user-oz-test").unwrap_err().to_string();
        assert!(
            e.starts_with("backend.direct.user") && e.contains("useradd"),
            "{e}"
        );
        let e = resolve("root").unwrap_err().to_string();
        assert!(e.contains("is root"), "{e}");
        let e = resolve("0").unwrap_err().to_string();
        assert!(e.contains("is root"), "{e}");
        let nobody = resolve("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        assert!(nobody.groups.contains(&nobody.gid));
    }
}

//! Where the worker's API key comes from: `--api-key-file`, `--api-key`,
//! `WARP_API_KEY_FILE`, `WARP_API_KEY`, or a systemd credential named
//! `warp-api-key` (`$CREDENTIALS_DIRECTORY/warp-api-key`, from the unit's
//! `LoadCredential=`), in that order: a flag beats the environment, which
//! beats the credential. Two sources at the same level (both flags, or both
//! variables) are a configuration error naming both, since neither can be
//! assumed to be the one the operator meant.
//!
//! A key on the command line is readable by every local user in
//! `/proc/PID/cmdline`, so `--api-key` still works but warns. A key file
//! readable by group or others also warns (Kubernetes secret volumes default
//! to 0644; `defaultMode: 0400` fixes that).

use oz_foundation::operator_env::EnvLookup;
use oz_foundation::secret::Secret;
use std::path::{Path, PathBuf};

/// The systemd credential name the worker reads when nothing else gives a key.
pub use oz_foundation::secret::CREDENTIAL_NAME;

/// The key as given, before it is resolved.
#[derive(Debug, Default, Clone)]
pub struct KeySources {
    pub flag: Option<Secret>,
    pub flag_file: Option<PathBuf>,
}

/// Why no key could be had. Every variant is a bad setting (exit status 2).
#[derive(Debug)]
pub enum ApiKeyError {
    /// Two sources at the same level were given (their names).
    Both(&'static str, &'static str),
    /// A key file could not be read (the setting that named it, the path).
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A key file is empty once its trailing newline is removed.
    Empty {
        setting: &'static str,
        path: PathBuf,
    },
}

impl std::fmt::Display for ApiKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiKeyError::Both(a, b) => write!(
                f,
                "both {a} and {b} are given; keep one (prefer {b}: a key file is not visible to other users)"
            ),
            ApiKeyError::Unreadable {
                setting,
                path,
                source,
            } => write!(
                f,
                "{setting}: cannot read the API key from {}: {source}",
                path.display()
            ),
            ApiKeyError::Empty { setting, path } => write!(
                f,
                "{setting}: the API key file {} is empty; write the key into it (a trailing newline is fine)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ApiKeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiKeyError::Unreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The key, if any source gave one, and warnings to log once logging is up.
/// `None` lets the caller say that no key was given at all.
pub fn resolve(
    given: &KeySources,
    env: &dyn EnvLookup,
) -> Result<(Option<Secret>, Vec<String>), ApiKeyError> {
    let mut warnings = Vec::new();
    match (&given.flag, &given.flag_file) {
        (Some(_), Some(_)) => return Err(ApiKeyError::Both("--api-key", "--api-key-file")),
        (None, Some(path)) => {
            return read_key_file("--api-key-file", path, &mut warnings)
                .map(|k| (Some(k), warnings))
        }
        (Some(key), None) => {
            warnings.push(
                "--api-key puts the key on the command line, where every user of this host can \
                 read it in /proc/PID/cmdline (and ps shows it); use --api-key-file or \
                 WARP_API_KEY_FILE instead (or the systemd credential warp-api-key)"
                    .into(),
            );
            return Ok((Some(key.clone()), warnings));
        }
        (None, None) => {}
    }
    let env_key = env.var("WARP_API_KEY").filter(|k| !k.is_empty());
    let env_file = env.var("WARP_API_KEY_FILE").filter(|p| !p.is_empty());
    match (env_key, env_file) {
        (Some(_), Some(_)) => Err(ApiKeyError::Both("WARP_API_KEY", "WARP_API_KEY_FILE")),
        (Some(key), None) => Ok((Some(Secret::new(key)), warnings)),
        (None, Some(path)) => read_key_file("WARP_API_KEY_FILE", Path::new(&path), &mut warnings)
            .map(|k| (Some(k), warnings)),
        (None, None) => {
            let Some(dir) = env.var("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
                return Ok((None, warnings));
            };
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            if !path.exists() {
                return Ok((None, warnings));
            }
            read_key_file("$CREDENTIALS_DIRECTORY/warp-api-key", &path, &mut warnings)
                .map(|k| (Some(k), warnings))
        }
    }
}

/// Reads a key file: the whole file less its trailing newline (`\n` or
/// `\r\n`, as `echo` and editors leave it). Warns when group or others may
/// read it.
fn read_key_file(
    setting: &'static str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Secret, ApiKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |source| ApiKeyError::Unreadable {
        setting,
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        ))
    })?;
    let key = text.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        return Err(ApiKeyError::Empty {
            setting,
            path: path.to_path_buf(),
        });
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            warnings.push(format!(
                "{setting}: the API key file {} can be read by {} (mode {mode:03o}); \
                 make it readable by the worker's user only: chmod 600 {}",
                path.display(),
                if mode & 0o004 != 0 {
                    "every user of this host"
                } else {
                    "its group"
                },
                path.display()
            ));
        }
    }
    Ok(Secret::new(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    struct Env(HashMap<&'static str, String>);
    impl EnvLookup for Env {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env(pairs: &[(&'static str, &str)]) -> Env {
        Env(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    fn key_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn sources_in_order_with_their_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let private = key_file(dir.path(), "k", "from-file\r\n", 0o600);
        let open = key_file(dir.path(), "open", "from-open\n", 0o644);

        let (k, w) = resolve(
            &KeySources {
                flag_file: Some(private.clone()),
                ..Default::default()
            },
            &env(&[("WARP_API_KEY", "from-env")]),
        )
        .unwrap();
        assert_eq!(k.unwrap().expose_str(), "from-file", "flag beats env");
        assert!(w.is_empty(), "{w:?}");

        let (k, w) = resolve(
            &KeySources {
                flag: Some(Secret::new("on-cmdline")),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap();
        assert_eq!(k.unwrap().expose_str(), "on-cmdline");
        assert!(w[0].contains("/proc/PID/cmdline") && w[0].contains("--api-key-file"));
        assert!(
            !w[0].contains("on-cmdline"),
            "the key is never in a warning"
        );

        let (k, w) = resolve(
            &KeySources::default(),
            &env(&[("WARP_API_KEY_FILE", open.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(k.unwrap().expose_str(), "from-open");
        assert!(
            w[0].contains("every user") && w[0].contains("chmod 600"),
            "{w:?}"
        );

        let creds = tempfile::tempdir().unwrap();
        key_file(creds.path(), CREDENTIAL_NAME, "from-systemd\n", 0o400);
        let (k, _) = resolve(
            &KeySources::default(),
            &env(&[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(k.unwrap().expose_str(), "from-systemd");
        let (k, _) = resolve(&KeySources::default(), &env(&[])).unwrap();
        assert!(k.is_none());
    }

    #[test]
    fn two_sources_at_one_level_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = key_file(dir.path(), "empty", "\n", 0o600);
        let e = resolve(
            &KeySources {
                flag: Some(Secret::new("x")),
                flag_file: Some(empty.clone()),
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--api-key and --api-key-file"), "{e}");
        let e = resolve(
            &KeySources::default(),
            &env(&[("WARP_API_KEY", "a"), ("WARP_API_KEY_FILE", "/x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("WARP_API_KEY and WARP_API_KEY_FILE"), "{e}");
        let e = resolve(
            &KeySources {
                flag_file: Some(empty),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--api-key-file") && e.contains("empty"), "{e}");
        let e = resolve(
            &KeySources {
                flag_file: Some(dir.path().join("missing")),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
    }
}

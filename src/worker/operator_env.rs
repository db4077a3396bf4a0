//! The operator's environment for every task (`-e/--env` and the config
//! file's `environment: [{name, value?}]`) and the order of the operator's
//! volumes, as the Go worker builds them (`parseEnvFlags`, `ResolveEnv` and
//! `mergeConfig` in its main.go and internal/config):
//!
//! - `-e K=V` splits at the first `=` (`K=a=b` is `K` = `a=b`, `K=` is
//!   `K` = ""); a bare `-e K` copies the worker's own `K`, and when the
//!   worker has no `K` the task still gets `K=""`. That case is returned as
//!   an [`EnvWarning`] so the caller can log it at start-up.
//! - A file entry without `value` (or with `value: null`) is a bare `K`.
//! - An empty `-e` entry, a missing key (`=V`) or whitespace in a key stops
//!   the worker with an error naming the entry (never its value).
//! - The file's list is overlaid by the flags: a name the flags repeat keeps
//!   its place in the file's order with the flag's value; new flag names
//!   follow in flag order. Within one list a repeated name keeps its first
//!   place and takes its last value (the Go worker's map does the same).
//! - Volumes: the file's list, then the flags', both kept (never replaced).
//!
//! Deliberate differences (stricter, to fail at start-up rather than in a
//! task): a key with any whitespace or control character is refused (Go
//! checks only space and tab), and a file entry whose name holds `=` is
//! refused (Go would hand `A=B=v` to Docker, which sets `A` to `B=v`).

use crate::secret::Secret;
use std::fmt;

pub use crate::worker::config::EnvLookup;

/// Where an entry was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvOrigin {
    /// The `index`-th (0-based) `-e/--env` flag.
    Flag { index: usize },
    /// The `index`-th (0-based) entry of the config file's `environment`.
    File { index: usize },
}

impl fmt::Display for EnvOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvOrigin::Flag { index } => write!(f, "-e/--env entry #{}", index + 1),
            EnvOrigin::File { index } => write!(f, "config file environment[{index}]"),
        }
    }
}

/// One entry before resolution: a name and, unless it is a pass-through,
/// a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEntry {
    pub name: String,
    pub value: Option<Secret>,
    pub origin: EnvOrigin,
}

/// Why an entry was refused. Holds no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorEnvError {
    pub origin: EnvOrigin,
    pub problem: EnvProblem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvProblem {
    /// `-e ""`, or a file entry with an empty name.
    Empty,
    /// `-e =VALUE`: nothing before the `=`.
    MissingKey,
    /// The key (quoted in the message) holds whitespace or a control character.
    InvalidKeyCharacter(String),
    /// A file entry's name holds `=`.
    EqualsInName(String),
}

impl fmt::Display for OperatorEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.origin;
        let form = match origin {
            EnvOrigin::Flag { .. } => {
                "write -e KEY=VALUE, or -e KEY to pass the worker's own value"
            }
            EnvOrigin::File { .. } => {
                "write {name: KEY, value: VALUE}, or {name: KEY} to pass the worker's own value"
            }
        };
        match &self.problem {
            EnvProblem::Empty => write!(f, "{origin} is empty; {form}"),
            EnvProblem::MissingKey => {
                write!(
                    f,
                    "{origin} has no key before '=' (the value is not shown); {form}"
                )
            }
            EnvProblem::InvalidKeyCharacter(key) => write!(
                f,
                "{origin}: key {key:?} contains whitespace or a control character; {form}"
            ),
            EnvProblem::EqualsInName(name) => write!(
                f,
                "{origin}: name {name:?} contains '='; put the value in `value:`; {form}"
            ),
        }
    }
}

impl std::error::Error for OperatorEnvError {}

/// A start-up warning about an entry that still applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvWarning {
    /// A pass-through entry whose variable the worker does not have: the
    /// task gets `name=""`, as with the Go worker.
    UnsetHostVariable { name: String, origin: EnvOrigin },
}

impl fmt::Display for EnvWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvWarning::UnsetHostVariable { name, origin } => write!(
                f,
                "{origin} passes {name} through, but {name} is not set in the worker's environment: \
                 tasks get {name}=\"\" (set it for the worker, or give {name}=VALUE)"
            ),
        }
    }
}

/// The resolved operator environment: names in order, each once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorEnv {
    pub vars: Vec<(String, Secret)>,
    pub warnings: Vec<EnvWarning>,
}

/// Parses one `-e/--env` value (`K=V` or `K`); `index` is its position
/// among the flags, for messages.
pub fn parse_env_flag(raw: &str, index: usize) -> Result<EnvEntry, OperatorEnvError> {
    let origin = EnvOrigin::Flag { index };
    let fail = |problem| OperatorEnvError { origin, problem };
    if raw.is_empty() {
        return Err(fail(EnvProblem::Empty));
    }
    let (name, value) = match raw.split_once('=') {
        Some((name, value)) => (name, Some(Secret::new(value))),
        None => (raw, None),
    };
    if name.is_empty() {
        return Err(fail(EnvProblem::MissingKey));
    }
    check_key(name).map_err(fail)?;
    Ok(EnvEntry {
        name: name.to_owned(),
        value,
        origin,
    })
}

/// Checks one config-file entry (`name`, optional `value`); `index` is its
/// position in the file's list.
pub fn file_entry(
    name: &str,
    value: Option<&str>,
    index: usize,
) -> Result<EnvEntry, OperatorEnvError> {
    let origin = EnvOrigin::File { index };
    let fail = |problem| OperatorEnvError { origin, problem };
    if name.is_empty() {
        return Err(fail(EnvProblem::Empty));
    }
    if name.contains('=') {
        return Err(fail(EnvProblem::EqualsInName(name.to_owned())));
    }
    check_key(name).map_err(fail)?;
    Ok(EnvEntry {
        name: name.to_owned(),
        value: value.map(Secret::new),
        origin,
    })
}

fn check_key(key: &str) -> Result<(), EnvProblem> {
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(EnvProblem::InvalidKeyCharacter(key.to_owned()));
    }
    Ok(())
}

/// The file's entries overlaid by the flags' (see the module
/// documentation), pass-throughs resolved through `host`.
pub fn resolve_operator_env(
    file: &[(String, Option<String>)],
    flags: &[String],
    host: &dyn EnvLookup,
) -> Result<OperatorEnv, OperatorEnvError> {
    let mut entries: Vec<EnvEntry> = Vec::new();
    let file_entries = file
        .iter()
        .enumerate()
        .map(|(i, (name, value))| file_entry(name, value.as_deref(), i));
    let flag_entries = flags
        .iter()
        .enumerate()
        .map(|(i, raw)| parse_env_flag(raw, i));
    for entry in file_entries.chain(flag_entries) {
        let entry = entry?;
        match entries.iter_mut().find(|e| e.name == entry.name) {
            Some(existing) => *existing = entry,
            None => entries.push(entry),
        }
    }
    let mut env = OperatorEnv::default();
    for entry in entries {
        let value = match entry.value {
            Some(v) => v,
            None => match host.var(&entry.name) {
                Some(v) => Secret::new(v),
                None => {
                    env.warnings.push(EnvWarning::UnsetHostVariable {
                        name: entry.name.clone(),
                        origin: entry.origin,
                    });
                    Secret::new("")
                }
            },
        };
        env.vars.push((entry.name, value));
    }
    Ok(env)
}

/// The operator's volume specs in the order the Go worker mounts them: the
/// file's, then the flags'.
pub fn merge_volumes(file: &[String], flags: &[String]) -> Vec<String> {
    file.iter().chain(flags).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn host(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(entries: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        entries
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
            .collect()
    }

    fn flags(raw: &[&str]) -> Vec<String> {
        raw.iter().map(|s| s.to_string()).collect()
    }

    fn exposed(env: &OperatorEnv) -> Vec<(&str, &str)> {
        env.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_str()))
            .collect()
    }

    /// `-e` values, as the Go worker's `parseEnvFlags` reads them
    /// (`strings.Cut` at the first '='; bare keys copy `os.Getenv`).
    #[test]
    fn flags_split_at_the_first_equals() {
        let h = host(&[("HOSTVAR", "from-host"), ("EMPTY", "")]);
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("K=V", "K", "V"),
            ("K=a=b", "K", "a=b"),
            ("K=", "K", ""),
            ("K= spaced value ", "K", " spaced value "),
            ("HOSTVAR", "HOSTVAR", "from-host"),
            ("EMPTY", "EMPTY", ""),
            ("lower_case.dots-1=x", "lower_case.dots-1", "x"),
        ];
        for &(raw, name, value) in cases {
            let env = resolve_operator_env(&[], &flags(&[raw]), &h).unwrap();
            assert_eq!(exposed(&env), vec![(name, value)], "{raw:?}");
            assert!(env.warnings.is_empty(), "{raw:?}: {:?}", env.warnings);
        }
    }

    /// A pass-through of an unset variable still sets it, to "" (Go:
    /// `os.Getenv` of an unset variable), with a warning naming the key.
    #[test]
    fn unset_pass_through_sets_empty_and_warns() {
        let env = resolve_operator_env(
            &file(&[("FROM_FILE", None)]),
            &flags(&["FROM_FLAG"]),
            &host(&[]),
        )
        .unwrap();
        assert_eq!(exposed(&env), vec![("FROM_FILE", ""), ("FROM_FLAG", "")]);
        assert_eq!(
            env.warnings,
            vec![
                EnvWarning::UnsetHostVariable {
                    name: "FROM_FILE".into(),
                    origin: EnvOrigin::File { index: 0 }
                },
                EnvWarning::UnsetHostVariable {
                    name: "FROM_FLAG".into(),
                    origin: EnvOrigin::Flag { index: 0 }
                },
            ]
        );
        let text = env.warnings[1].to_string();
        assert!(
            text.contains("-e/--env entry #1 passes FROM_FLAG through")
                && text.contains("FROM_FLAG=\"\""),
            "{text}"
        );
    }

    /// Refusals. Source: the Go worker's `parseEnvFlags` (empty entry,
    /// missing key, space or tab in the key) and config validation (`name`
    /// required, no whitespace); the others are our stricter rules.
    #[test]
    fn bad_entries_are_refused_naming_the_entry_not_the_value() {
        #[rustfmt::skip]
        let flag_cases: &[(&str, EnvProblem)] = &[
            ("", EnvProblem::Empty),
            ("=s3cr3t", EnvProblem::MissingKey),
            ("MY KEY=s3cr3t", EnvProblem::InvalidKeyCharacter("MY KEY".into())),
            ("TAB\tKEY", EnvProblem::InvalidKeyCharacter("TAB\tKEY".into())),
            (" LEADING=s3cr3t", EnvProblem::InvalidKeyCharacter(" LEADING".into())),
            ("NEW\nLINE=s3cr3t", EnvProblem::InvalidKeyCharacter("NEW\nLINE".into())),
            ("NUL\0=s3cr3t", EnvProblem::InvalidKeyCharacter("NUL\0".into())),
        ];
        for (raw, problem) in flag_cases {
            let err = resolve_operator_env(&[], &flags(&["OK=1", raw]), &host(&[])).unwrap_err();
            assert_eq!(err.origin, EnvOrigin::Flag { index: 1 }, "{raw:?}");
            assert_eq!(&err.problem, problem, "{raw:?}");
            let text = err.to_string();
            assert!(text.contains("-e/--env entry #2"), "{text}");
            assert!(
                !text.contains("s3cr3t") && !format!("{err:?}").contains("s3cr3t"),
                "{text}"
            );
        }
        #[rustfmt::skip]
        let file_cases: &[(&str, EnvProblem)] = &[
            ("", EnvProblem::Empty),
            ("A B", EnvProblem::InvalidKeyCharacter("A B".into())),
            ("A=B", EnvProblem::EqualsInName("A=B".into())),
        ];
        for (name, problem) in file_cases {
            let err = resolve_operator_env(&file(&[(name, Some("s3cr3t"))]), &[], &host(&[]))
                .unwrap_err();
            assert_eq!(err.origin, EnvOrigin::File { index: 0 });
            assert_eq!(&err.problem, problem, "{name:?}");
            let text = err.to_string();
            assert!(
                text.contains("environment[0]") && !text.contains("s3cr3t"),
                "{text}"
            );
        }
    }

    /// File overlaid by flags: the flag wins, in the file's order, then new
    /// flag names. Source: the Go worker's `mergeConfig` (file map, then
    /// flag map written over it).
    #[test]
    fn flags_overlay_the_file_in_its_order() {
        let h = host(&[("PASS", "host-value")]);
        let env = resolve_operator_env(
            &file(&[
                ("A", Some("file-a")),
                ("B", Some("file-b")),
                ("PASS", None),
                ("C", Some("file-c")),
            ]),
            &flags(&["B=flag-b", "D=flag-d", "A", "D=flag-d2"]),
            &h,
        );
        // `-e A` passes the host's A, which is unset: "" with a warning.
        let env = env.unwrap();
        assert_eq!(
            exposed(&env),
            vec![
                ("A", ""),
                ("B", "flag-b"),
                ("PASS", "host-value"),
                ("C", "file-c"),
                ("D", "flag-d2"),
            ]
        );
        assert_eq!(env.warnings.len(), 1);

        // A name repeated in the file keeps its first place and last value.
        let env = resolve_operator_env(
            &file(&[("X", Some("1")), ("Y", Some("y")), ("X", Some("2"))]),
            &[],
            &h,
        )
        .unwrap();
        assert_eq!(exposed(&env), vec![("X", "2"), ("Y", "y")]);
    }

    #[test]
    fn values_never_show_in_debug() {
        let env = resolve_operator_env(&[], &flags(&["TOKEN=s3cr3t"]), &host(&[])).unwrap();
        assert!(!format!("{env:?}").contains("s3cr3t"));
    }

    /// Source: the Go worker's `mergeConfig` (file `volumes`, then `-v`).
    #[test]
    fn volumes_are_file_then_flags() {
        let file = vec!["/a:/a".to_string(), "/b:/b".to_string()];
        let flags = vec!["/c:/c".to_string(), "/a:/a".to_string()];
        assert_eq!(
            merge_volumes(&file, &flags),
            vec!["/a:/a", "/b:/b", "/c:/c", "/a:/a"]
        );
        assert_eq!(merge_volumes(&[], &flags), flags);
    }

    proptest! {
        #[test]
        fn flags_never_panic(raw in ".{0,40}") {
            let _ = resolve_operator_env(&[], &[raw], &HashMap::<String, String>::new());
        }

        /// `K=V` with a plain key always yields exactly (K, V).
        #[test]
        fn key_value_round_trips(key in "[A-Za-z_][A-Za-z0-9_.-]{0,20}", value in ".{0,40}") {
            let env = resolve_operator_env(&[], &[format!("{key}={value}")], &HashMap::<String, String>::new()).unwrap();
            prop_assert_eq!(exposed(&env), vec![(key.as_str(), value.as_str())]);
        }
    }
}

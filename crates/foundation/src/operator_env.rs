//! The operator's own environment entries for every task: `-e/--env` flags
//! and a backend section's `environment: [{name, value?}]`, resolved as the
//! Go worker resolves them (BACKENDS.md §1):
//!
//! - `K=V` splits at the first `=`; a bare `K` copies the worker's own value,
//!   and when the worker has no such variable `K` is still set, to "" (with
//!   a warning at start-up naming it).
//! - An empty entry, an empty name or whitespace in a name is an error.
//! - The file's list comes first, overlaid by the flags: a flag with the same
//!   name replaces the file's value in place, new names are appended.
//!
//! A leaf module: the composition root resolves, runtimes receive the result.

use crate::secret::Secret;
use schemars::JsonSchema;
use serde::Deserialize;

/// Where environment variables come from; tests pass a map instead of
/// mutating the process environment.
pub trait EnvLookup {
    fn var(&self, name: &str) -> Option<String>;
}

/// The worker process's own environment.
pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvLookup for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// One `environment` entry of a backend section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvEntry {
    pub name: String,
    /// Absent: the worker's own value of `name` (or "" when it has none).
    pub value: Option<String>,
}

/// Resolved entries in order, and warnings to log at start-up.
#[derive(Debug, Default)]
pub struct Resolved {
    pub env: Vec<(String, Secret)>,
    pub warnings: Vec<String>,
}

/// A refused environment entry. Display is `ENTRY: PROBLEM` (the form the
/// config file's error locator reads to add the file and line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {problem}")]
pub struct InvalidEntry {
    /// `backend.docker.environment[1]` (counted from 0) or `-e/--env`.
    pub entry: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl InvalidEntry {
    fn new(entry: impl Into<String>, problem: impl Into<String>) -> InvalidEntry {
        InvalidEntry {
            entry: entry.into(),
            problem: problem.into(),
        }
    }
}

/// Resolves the file's entries overlaid by the `-e` flags. `key` is the
/// file's list (`backend.docker.environment`).
///
/// Errors and warnings start with the entry (`KEY[i]`, counted from 0, or
/// `-e/--env`) and say what is expected.
pub fn resolve(
    file: &[EnvEntry],
    key: &str,
    flags: &[String],
    lookup: &dyn EnvLookup,
) -> Result<Resolved, InvalidEntry> {
    let mut out = Resolved::default();
    let mut put = |name: &str, value: Option<&str>, source: &str| -> Result<(), InvalidEntry> {
        if name.is_empty() {
            return Err(InvalidEntry::new(
                source,
                "empty environment variable name; expected KEY=VALUE or KEY",
            ));
        }
        // Stricter than the Go worker (which checks space and tab only): a
        // name with any whitespace or control character would fail later,
        // inside a task.
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidEntry::new(
                source,
                format!("environment variable name {name:?} contains whitespace or a control character; expected KEY=VALUE or KEY"),
            ));
        }
        let value = match value {
            Some(v) => v.to_string(),
            None => lookup.var(name).unwrap_or_else(|| {
                out.warnings.push(format!(
                    "{source}: {name} is not set in the worker's environment; tasks get {name}=\"\" (set it, or give {name}=VALUE)"
                ));
                String::new()
            }),
        };
        match out.env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = Secret::new(value),
            None => out.env.push((name.to_string(), Secret::new(value))),
        }
        Ok(())
    };
    for (i, e) in file.iter().enumerate() {
        let source = format!("{key}[{i}]");
        if e.name.contains('=') {
            return Err(InvalidEntry::new(
                source,
                format!("name {:?} contains '='; put the value in `value`", e.name),
            ));
        }
        put(&e.name, e.value.as_deref(), &source)?;
    }
    for f in flags {
        if f.is_empty() {
            return Err(InvalidEntry::new(
                "-e/--env",
                "empty entry; expected KEY=VALUE or KEY",
            ));
        }
        match f.split_once('=') {
            Some((k, v)) => put(k, Some(v), "-e/--env")?,
            None => put(f, None, "-e/--env")?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn host(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn entry(name: &str, value: Option<&str>) -> EnvEntry {
        EnvEntry {
            name: name.into(),
            value: value.map(str::to_string),
        }
    }

    fn pairs(r: &Resolved) -> Vec<(&str, &str)> {
        r.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_str()))
            .collect()
    }

    /// Inputs and the Go worker's behaviour (internal/config/config.go,
    /// BACKENDS.md §1).
    #[test]
    fn overlay_table() {
        let host = host(&[("HOSTVAR", "h"), ("EMPTY", "")]);
        type Want<'a> = Result<&'a [(&'a str, &'a str)], &'a str>;
        let cases: &[(&[EnvEntry], &[&str], Want, usize)] = &[
            // file only: entries in order, a bare name inherits
            (
                &[entry("A", Some("1")), entry("HOSTVAR", None)],
                &[],
                Ok(&[("A", "1"), ("HOSTVAR", "h")]),
                0,
            ),
            // flags overlay the file: same name replaced in place, new appended
            (
                &[entry("A", Some("1")), entry("B", Some("2"))],
                &["B=flag", "C=3"],
                Ok(&[("A", "1"), ("B", "flag"), ("C", "3")]),
                0,
            ),
            // split at the first '='
            (&[], &["URL=a=b=c"], Ok(&[("URL", "a=b=c")]), 0),
            // an empty value is a value
            (&[], &["E="], Ok(&[("E", "")]), 0),
            // bare and unset on the host: set to "" with a warning
            (&[], &["MISSING"], Ok(&[("MISSING", "")]), 1),
            (&[entry("MISSING", None)], &[], Ok(&[("MISSING", "")]), 1),
            // bare and set to "" on the host: "" without a warning
            (&[], &["EMPTY"], Ok(&[("EMPTY", "")]), 0),
            // errors
            (&[], &[""], Err("empty entry"), 0),
            (&[], &["=v"], Err("empty environment variable name"), 0),
            (&[], &["A B=1"], Err("whitespace"), 0),
            (&[], &["A\tB"], Err("whitespace"), 0),
            (&[], &["A\u{7}B=1"], Err("control character"), 0),
            (
                &[entry("", Some("x"))],
                &[],
                Err("backend.docker.environment[0]: empty environment variable name"),
                0,
            ),
            (
                &[entry("A", Some("1")), entry("B=2", None)],
                &[],
                Err("backend.docker.environment[1]: name \"B=2\" contains '='"),
                0,
            ),
        ];
        for (file, flags, want, warnings) in cases {
            let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            match (
                resolve(file, "backend.docker.environment", &flags, &host),
                want,
            ) {
                (Ok(r), Ok(want)) => {
                    assert_eq!(pairs(&r), *want, "{file:?} {flags:?}");
                    assert_eq!(r.warnings.len(), *warnings, "{:?}", r.warnings);
                }
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{e} should say {want}")
                }
                (got, want) => panic!("{file:?} {flags:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn warnings_name_the_key_and_values_stay_secret() {
        let r = resolve(
            &[],
            "backend.docker.environment",
            &["TOKEN".into(), "PASS=hunter2".into()],
            &host(&[]),
        )
        .unwrap();
        assert!(r.warnings[0].contains("TOKEN"));
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}

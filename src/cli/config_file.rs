//! The worker's YAML configuration file, as the Go worker reads it: the
//! core's top-level keys and one `backend` section per runtime, each owned
//! by its runtime. Parsed strictly: an unknown key or a wrong type is an
//! error naming the key and its line; a value its resolver refuses later
//! (a duration, an address, a volume) is named with the file and line too
//! ([`Loaded::locate_error`]). Its JSON schema is
//! `api-specs/worker-config.schema.json`.

use oz_foundation::operator_env::EnvEntry;
use oz_runtime_command::config::CommandSection;
use oz_runtime_direct::config::DirectSection;
use oz_runtime_docker::config::DockerSection;
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "oz-agent-worker configuration file")]
pub struct ConfigFile {
    /// Worker id that tasks are routed to (ids starting with "warp" are reserved).
    pub worker_id: Option<String>,
    /// Remove what a task leaves (containers, workspaces) after it ends (default true).
    pub cleanup: Option<bool>,
    /// Most tasks at once; 0 = unlimited.
    pub max_concurrent_tasks: Option<u32>,
    /// Keep the agent idle after completion for this long (e.g. "10m"); empty = the bare flag.
    pub idle_on_complete: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. "127.0.0.1:9090").
    pub metrics_listen: Option<String>,
    /// Serve /healthz and /readyz on this address (e.g. "0.0.0.0:8081").
    pub health_listen: Option<String>,
    /// The longest a task may run (a Go duration, e.g. "2h"); past it the task is stopped and reported failed with reason task_timeout. Unset or "0": no limit.
    pub task_timeout: Option<String>,
    /// Exit 0 after one task has ended and its report is delivered, claiming no other (for ephemeral workers).
    pub disconnect_after_task: Option<bool>,
    /// The runtime: exactly one section (or none: docker).
    pub backend: Option<BackendSections>,
}

/// One section per runtime; at most one may be present.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendSections {
    pub docker: Option<DockerSection>,
    pub direct: Option<DirectSection>,
    pub command: Option<CommandSection>,
    #[cfg(feature = "kubernetes")]
    pub kubernetes: Option<oz_runtime_kubernetes::KubernetesSection>,
    /// Recognised so the error can say this build has no kubernetes runtime.
    #[cfg(not(feature = "kubernetes"))]
    pub kubernetes: Option<serde_json::Value>,
}

impl BackendSections {
    /// The names of the sections present, in the Go worker's order.
    pub fn present(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.direct.is_some() {
            names.push("direct");
        }
        if self.kubernetes.is_some() {
            names.push("kubernetes");
        }
        if self.command.is_some() {
            names.push("command");
        }
        if self.docker.is_some() {
            names.push("docker");
        }
        names
    }

    /// The section's `environment` list of the runtime `name`.
    pub fn environment(&self, name: &str) -> &[EnvEntry] {
        let env = match name {
            "docker" => self.docker.as_ref().and_then(|s| s.environment.as_ref()),
            "direct" => self.direct.as_ref().and_then(|s| s.environment.as_ref()),
            "command" => self.command.as_ref().and_then(|s| s.environment.as_ref()),
            _ => None,
        };
        env.map(Vec::as_slice).unwrap_or_default()
    }
}

/// A file as read: its values and, for messages, where it is and its text.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub file: ConfigFile,
    pub path: Option<std::path::PathBuf>,
    text: String,
}

impl Loaded {
    /// Puts the file and line in front of an error about one of its values.
    /// The error must start with the value's key path as written by the
    /// resolvers (`backend.docker.pull_policy: …`,
    /// `backend.docker.volumes[1]: …`); any other error is returned as is
    /// (it is about a flag, or already names the file).
    pub fn locate_error(&self, error: String) -> String {
        match self.location_of(&error) {
            Some(at) => format!("{at}: {error}"),
            None => error,
        }
    }

    /// `config file PATH line N` for an error message that starts with a
    /// key path this file has (see [`Loaded::locate_error`]); `None` for
    /// any other, or without a file.
    pub fn location_of(&self, error: &str) -> Option<String> {
        let path = self.path.as_ref()?;
        let key = error.split(": ").next().unwrap_or_default();
        let line = line_of(&self.text, key)?;
        Some(format!("config file {} line {line}", path.display()))
    }
}

/// Why the config file could not be loaded (a bad setting: exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, an unknown key or a wrong type; the parser's message names
    /// the key and its line.
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
}

pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = parse(&text).map_err(|source| LoadError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Loaded {
        file,
        path: Some(path.to_path_buf()),
        text,
    })
}

/// The 1-based line of `key` (`a.b.c`, or `a.b[N]` for a list's item N,
/// counted from 0) in block-style YAML, found by indentation. `None` when
/// it is not written as a block key (flow style, or not there).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let (path, index) = match key.strip_suffix(']').and_then(|k| k.rsplit_once('[')) {
        Some((path, n)) => (path, Some(n.parse::<usize>().ok()?)),
        None => (key, None),
    };
    let wanted: Vec<&str> = path.split('.').collect();
    if wanted
        .iter()
        .any(|w| w.is_empty() || w.contains(char::is_whitespace))
    {
        return None;
    }
    // (indent, key) of the keys enclosing the current line
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut found: Option<(usize, usize)> = None; // (line, indent) of the key
    let mut item = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split(" #").next().unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some((key_line, key_indent)) = found {
            if indent < key_indent || (indent == key_indent && !trimmed.starts_with('-')) {
                return None;
            }
            if trimmed.starts_with('-') && indent >= key_indent {
                let first_dash = text.lines().skip(key_line).find_map(|l| {
                    let t = l.trim_start();
                    t.starts_with('-').then(|| l.len() - t.len())
                });
                if Some(indent) == first_dash {
                    if Some(item) == index {
                        return Some(n + 1);
                    }
                    item += 1;
                }
            }
            continue;
        }
        let Some((name, _)) = trimmed.split_once(':') else {
            continue;
        };
        let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
        if name.starts_with('-') || name.contains(char::is_whitespace) {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, name.to_string()));
        if stack.len() == wanted.len() && stack.iter().zip(&wanted).all(|((_, k), w)| k == w) {
            if index.is_none() {
                return Some(n + 1);
            }
            found = Some((n + 1, indent));
        }
    }
    None
}

/// The file's text as a [`ConfigFile`]; empty text is the default. The
/// error names an unknown key or a wrong type with its line.
pub fn parse(text: &str) -> Result<ConfigFile, serde_norway::Error> {
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_norway::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A YAML scalar of any kind, some of them wrong for any key.
    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("~".to_string()),
            Just("true".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-zA-Z0-9 :/._=-]{0,12}".prop_map(|s| format!("{s:?}")),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("[1, 2]".to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "worker_id",
            "cleanup",
            "max_concurrent_tasks",
            "idle_on_complete",
            "metrics_listen",
            "health_listen",
            "volumes",
            "environment",
            "pull_policy",
            "dispatch_command",
            "dispatch_timeout",
            "oz_path",
            "network_mode",
            "dns",
            "cpus",
            "memory",
            "memory_swap",
            "pids_limit",
            "oom_score_adj",
            "allowed_images",
            "unknown_key",
        ])
    }

    proptest! {
        /// No file text makes the parser panic.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = parse(&text);
        }

        /// Well-formed YAML with the real keys at every level and values of
        /// every type: an answer (a config or an error naming something),
        /// never a panic.
        #[test]
        fn real_keys_with_any_values_never_panic(
            top in prop::collection::vec((key(), scalar()), 0..5),
            section in prop::sample::select(vec!["docker", "direct", "command", "kubernetes", "other"]),
            inner in prop::collection::vec((key(), scalar()), 0..5),
        ) {
            let mut text = String::new();
            for (k, v) in &top {
                text.push_str(&format!("{k}: {v}\n"));
            }
            text.push_str(&format!("backend:\n  {section}:\n"));
            for (k, v) in &inner {
                text.push_str(&format!("    {k}: {v}\n"));
            }
            if inner.is_empty() {
                text.push_str("    {}\n");
            }
            match parse(&text) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_line() {
        let e = parse("worker_id: w\nbackend:\n  docker:\n    volumez: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("volumez") && e.contains("line 4"), "{e}");
        let e = parse("worker_id: w\nmax_concurrent_tasks: lots\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_concurrent_tasks") && e.contains("line 2"),
            "{e}"
        );
        let e = parse("backend:\n  direct:\n    oz_pth: /x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("oz_pth"), "{e}");
    }

    #[test]
    fn keys_and_list_items_are_found_by_indentation() {
        let text = "worker_id: w   # the id\nbackend:\n  docker:\n    # comment\n    pull_policy: sometimes\n    volumes:\n      - /a:/a\n      - \"./b:/b\"\n    environment:\n      - name: A\n        value: x\n      - name: \"B C\"\n  direct:\n    environment:\n    - name: D\nidle_on_complete: soon\n";
        for (key, line) in [
            ("worker_id", Some(1)),
            ("backend.docker.pull_policy", Some(5)),
            ("backend.docker.volumes[0]", Some(7)),
            ("backend.docker.volumes[1]", Some(8)),
            ("backend.docker.volumes[2]", None),
            ("backend.docker.environment[1]", Some(12)),
            // a list at the key's own indentation
            ("backend.direct.environment[0]", Some(15)),
            ("idle_on_complete", Some(16)),
            ("pull_policy", None),
            ("backend.direct.pull_policy", None),
            ("-e/--env", None),
        ] {
            assert_eq!(line_of(text, key), line, "{key}");
        }
    }

    #[test]
    fn every_reference_section_parses() {
        let f = parse("worker_id: w\ncleanup: false\nbackend:\n  kubernetes:\n    namespace: ci\n")
            .unwrap();
        assert_eq!(f.backend.unwrap().present(), ["kubernetes"]);
        let f = parse(
            "backend:\n  command:\n    dispatch_command: ./dispatch.sh\n    dispatch_timeout: 90s\n  docker: {}\n",
        )
        .unwrap();
        assert_eq!(f.backend.unwrap().present(), ["command", "docker"]);
    }
}

//! The command runtime's configuration: its section of the config file
//! (`backend.command`, the Go worker's keys).

use oz_foundation::operator_env::EnvEntry;
use oz_foundation::secret::Secret;
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// The Go worker's default `dispatch_timeout`.
pub const DEFAULT_DISPATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// `backend.command` in the config file. Unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandSection {
    /// Run with `sh -c`; gets the dispatch payload (JSON) on stdin. Exit 0 means dispatched. Required.
    pub dispatch_command: Option<String>,
    /// Run with `sh -c` when the server cancels a dispatched task (OZ_RUN_ID, OZ_EXECUTION_ID set).
    pub cancel_command: Option<String>,
    /// Most time dispatch_command may take (Go duration, default "60s").
    pub dispatch_timeout: Option<String>,
    /// Environment for both commands; an entry without `value` inherits the worker's own. `-e` flags overlay it.
    pub environment: Option<Vec<EnvEntry>>,
}

/// Everything the command runtime needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dispatch_command: String,
    pub cancel_command: Option<String>,
    pub dispatch_timeout: Duration,
    /// Config and `-e` entries for the commands' environment.
    pub env: Vec<(String, Secret)>,
}

impl Settings {
    pub fn resolve(
        section: &CommandSection,
        env: Vec<(String, Secret)>,
    ) -> Result<Settings, SettingsError> {
        let dispatch_command = section
            .dispatch_command
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or(SettingsError::NoDispatchCommand)?;
        let dispatch_timeout = match &section.dispatch_timeout {
            Some(d) => oz_foundation::duration::parse_duration(d).map_err(|e| {
                oz_runtime::InvalidSetting::new("backend.command.dispatch_timeout", e.to_string())
            })?,
            None => DEFAULT_DISPATCH_TIMEOUT,
        };
        if dispatch_timeout.is_zero() {
            return Err(SettingsError::ZeroDispatchTimeout);
        }
        Ok(Settings {
            dispatch_command,
            cancel_command: section
                .cancel_command
                .clone()
                .filter(|s| !s.trim().is_empty()),
            dispatch_timeout,
            env,
        })
    }
}

/// Why the command runtime's settings were refused; each message names the
/// key to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("backend.command.dispatch_command is required: the command that hands a task to your system (it reads the task as JSON on stdin)")]
    NoDispatchCommand,
    /// A value that does not parse.
    #[error(transparent)]
    Invalid(#[from] oz_runtime::InvalidSetting),
    #[error("backend.command.dispatch_timeout must be more than 0")]
    ZeroDispatchTimeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_command_is_required_and_timeout_defaults_to_a_minute() {
        let e = Settings::resolve(&Default::default(), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dispatch_command is required"), "{e}");
        let s = Settings::resolve(
            &CommandSection {
                dispatch_command: Some("./d.sh".into()),
                ..Default::default()
            },
            vec![],
        )
        .unwrap();
        assert_eq!(s.dispatch_timeout, Duration::from_secs(60));
    }
}

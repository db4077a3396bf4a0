//! The error of a runtime setting the worker refuses at start-up (a flag or
//! a `backend.*` key), shared by every runtime's settings resolution.

/// A refused configuration value. Display is `KEY: PROBLEM`, the form the
/// config file's error locator reads to add the file and line
/// (`cli::config_file::Loaded::locate_error`); the problem says what the
/// key takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting {
    /// The key path, with a list index where there is one:
    /// `backend.docker.memory`, `backend.docker.dns[1]`.
    pub key: String,
    pub problem: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

impl std::error::Error for InvalidSetting {}

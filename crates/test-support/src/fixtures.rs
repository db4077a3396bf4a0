//! The repository's test fixtures (`tests/fixtures/`) and the direct-runtime
//! set-up around the fake agent that many worker tests share.

use std::path::{Path, PathBuf};

/// The repository's root (this crate is `crates/test-support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/test-support lies two levels below the repository")
        .to_path_buf()
}

/// `tests/fixtures/<relative>`, e.g. `command/dispatch.sh`.
pub fn path(relative: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(relative)
}

/// `tests/fixtures/fake-oz/oz`: a fake agent program that records its argv,
/// working directory, environment and pids under `$FAKE_OZ_REPORT/<task
/// id>/` and behaves as `FAKE_OZ_BEHAVIOUR` says.
pub fn fake_oz() -> PathBuf {
    path("fake-oz/oz")
}

/// A temporary root for a worker on the direct runtime running [`fake_oz`]:
/// `ws/` (the `workspace_root`) and `report/` (the agent's
/// `FAKE_OZ_REPORT`). Removed when dropped.
pub struct FakeAgentRoot {
    pub root: tempfile::TempDir,
}

impl FakeAgentRoot {
    pub fn new() -> FakeAgentRoot {
        let root = tempfile::tempdir().unwrap();
        for d in ["ws", "report"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        FakeAgentRoot { root }
    }

    pub fn ws(&self) -> PathBuf {
        self.root.path().join("ws")
    }

    pub fn report(&self) -> PathBuf {
        self.root.path().join("report")
    }

    /// Writes `config.yaml` (`top` first: top-level keys such as
    /// `task_timeout: 2s\n`, then the `backend.direct` section) and returns
    /// its path, for `--backend direct --config-file PATH`.
    pub fn config(&self, top: &str) -> PathBuf {
        let config = self.root.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "{top}backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    environment:\n      - name: FAKE_OZ_REPORT\n        value: {}\n",
                self.ws().display(),
                fake_oz().display(),
                self.report().display()
            ),
        )
        .unwrap();
        config
    }
}

impl Default for FakeAgentRoot {
    fn default() -> Self {
        Self::new()
    }
}

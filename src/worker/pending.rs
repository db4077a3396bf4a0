//! Terminal messages that outlive the process. When the worker exits with
//! reports it could not deliver (the orchestrator was unreachable during
//! shutdown), they are written to the state directory; the next start of a
//! worker with the same id on this machine delivers them.
//!
//! Files are claimed by an atomic rename, so when several workers sharing an
//! id start together, each file is delivered by exactly one of them.

use crate::protocol::WorkerMessage;
use std::path::{Path, PathBuf};

pub fn default_state_dir() -> PathBuf {
    crate::dirs::xdg_dir("XDG_STATE_HOME", ".local/state", "state")
}

/// A per-process id for file names.
pub fn instance_id() -> String {
    format!("{}-{:016x}", std::process::id(), fastrand::u64(..))
}

fn worker_dir(state_dir: &Path, worker_id: &str) -> PathBuf {
    let safe: String = worker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join(safe)
}

/// Writes undelivered reports for a later start. They may quote task output,
/// so the directory and files are private.
pub fn save(
    state_dir: &Path,
    worker_id: &str,
    instance: &str,
    messages: &[WorkerMessage],
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = worker_dir(state_dir, worker_id);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let path = dir.join(format!("pending-{instance}.json"));
    let tmp = dir.join(format!(".pending-{instance}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(
        &mut file,
        &serde_json::to_vec(messages).expect("messages serialize"),
    )?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Takes every pending file of this worker id that no other process has
/// taken, and returns their messages.
pub fn take(state_dir: &Path, worker_id: &str, instance: &str) -> Vec<WorkerMessage> {
    let dir = worker_dir(state_dir, worker_id);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (n, entry) in entries.flatten().enumerate() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pending-") && name.ends_with(".json")) {
            continue;
        }
        let claimed = dir.join(format!(".claimed-{instance}-{n}.json"));
        if std::fs::rename(entry.path(), &claimed).is_err() {
            continue; // another worker took it first
        }
        match std::fs::read(&claimed).map(|b| serde_json::from_slice::<Vec<WorkerMessage>>(&b)) {
            Ok(Ok(messages)) => out.extend(messages.into_iter().filter(WorkerMessage::is_terminal)),
            Ok(Err(e)) => tracing::warn!(
                "ignoring unreadable pending reports {}: {e}",
                claimed.display()
            ),
            Err(e) => tracing::warn!("cannot read pending reports {}: {e}", claimed.display()),
        }
        let _ = std::fs::remove_file(&claimed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FailureReason, TaskFailed};

    fn failed(id: &str) -> WorkerMessage {
        WorkerMessage::TaskFailed(TaskFailed {
            task_id: id.into(),
            message: "m".into(),
            failure_reason: FailureReason::GracefulShutdown,
            exit_code: None,
            execution_id: None,
        })
    }

    #[test]
    fn saved_reports_are_taken_once_and_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = save(dir.path(), "w/1", "i1", &[failed("a"), failed("b")]).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            take(dir.path(), "other", "i2").is_empty(),
            "another worker id sees nothing"
        );
        let got = take(dir.path(), "w/1", "i2");
        assert_eq!(got, vec![failed("a"), failed("b")]);
        assert!(
            take(dir.path(), "w/1", "i3").is_empty(),
            "taken exactly once"
        );
    }
}

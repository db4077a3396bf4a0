//! The worker's own OOM score: lowered at start-up where the kernel lets it,
//! so that under memory pressure the OOM killer picks a task (whose
//! containers get a positive `OomScoreAdj`, whose direct-runtime agent a
//! positive `oom_score_adj`) before the worker that reports it.
//!
//! Linux (proc(5), `oom_score_adj`): any process may raise its value; going
//! below the lowest value a privileged writer set for it needs
//! CAP_SYS_RESOURCE. So the worker asks for [`WORKER_OOM_SCORE_ADJ`]; when
//! refused it settles for 0 if it started above (a launcher raised it, a
//! value it may always return to), and it never raises its own value.

use std::io;
use std::path::Path;

/// What the worker asks for: dockerd's own default (`--oom-score-adjust`).
pub const WORKER_OOM_SCORE_ADJ: i64 = -500;

/// What happened to the value.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Lowered {
        from: i64,
        to: i64,
    },
    /// Already at or below the target: left alone (never raised).
    AlreadyLow(i64),
    /// Not allowed to go lower (no CAP_SYS_RESOURCE), left at `current`.
    Refused {
        current: i64,
    },
}

/// Lowers `/proc/self/oom_score_adj` and logs what happened (refusals at
/// debug level: an unprivileged worker is normal).
pub fn lower_own() {
    match lower_at(Path::new("/proc/self/oom_score_adj"), WORKER_OOM_SCORE_ADJ) {
        Ok(Outcome::Lowered { from, to }) if to == WORKER_OOM_SCORE_ADJ => {
            tracing::info!("lowered the worker's oom_score_adj from {from} to {to}")
        }
        Ok(Outcome::Lowered { from, to }) => tracing::debug!(
            "lowered the worker's oom_score_adj from {from} to {to}; going down to {WORKER_OOM_SCORE_ADJ} needs CAP_SYS_RESOURCE"
        ),
        Ok(Outcome::AlreadyLow(v)) => {
            tracing::debug!("the worker's oom_score_adj is already {v}; left as it is")
        }
        Ok(Outcome::Refused { current }) => tracing::debug!(
            "could not lower the worker's oom_score_adj below {current} (needs CAP_SYS_RESOURCE); left as it is"
        ),
        Err(e) => tracing::debug!("cannot adjust the worker's oom_score_adj: {e}"),
    }
}

/// The rule on any file holding the value (the proc file, or a test's).
pub fn lower_at(path: &Path, target: i64) -> io::Result<Outcome> {
    let read = || -> io::Result<i64> {
        std::fs::read_to_string(path)?
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    };
    let current = read()?;
    if current <= target {
        return Ok(Outcome::AlreadyLow(current));
    }
    match std::fs::write(path, target.to_string()) {
        Ok(()) => Ok(Outcome::Lowered {
            from: current,
            to: target,
        }),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            if current > 0 && std::fs::write(path, "0").is_ok() {
                return Ok(Outcome::Lowered {
                    from: current,
                    to: 0,
                });
            }
            Ok(Outcome::Refused { current })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_and_never_raises() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("oom_score_adj");
        std::fs::write(&f, "300\n").unwrap();
        assert_eq!(
            lower_at(&f, -500).unwrap(),
            Outcome::Lowered {
                from: 300,
                to: -500
            }
        );
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "-500");
        std::fs::write(&f, "-800\n").unwrap();
        assert_eq!(lower_at(&f, -500).unwrap(), Outcome::AlreadyLow(-800));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "-800\n");
        std::fs::write(&f, "lots").unwrap();
        assert!(lower_at(&f, -500).is_err());
    }
}

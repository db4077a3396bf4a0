//! What the worker does to itself at start, before any thread exists, so a
//! task's processes cannot read its credentials:
//!
//! - the orchestrator key's variables ([`SECRET_VARS`]) leave the process
//!   environment (so nothing spawned inherits them) *and* the initial
//!   environment block the kernel shows in `/proc/PID/environ` (overwritten
//!   with NUL bytes through `/proc/self/mem`, which a process may always
//!   write for itself; clap has already copied the values);
//! - the process becomes non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): its
//!   `/proc/PID/{environ,mem,maps,fd}` belong to root and it cannot be
//!   ptraced by processes of the same user; no core dump holds its memory.
//!
//! Root (CAP_SYS_PTRACE) can still read a non-dumpable process's memory:
//! only running the agent as another user keeps a root worker's secrets
//! from it (the direct runtime's `user`).

pub use oz_foundation::secret::SECRET_VARS;

/// What [`harden`] did, to log once logging is up.
#[derive(Debug, Default)]
pub struct Hardened {
    /// Why the process could not be made non-dumpable.
    pub dumpable_error: Option<String>,
    /// Entries overwritten in the initial environment block.
    pub scrubbed: usize,
    pub scrub_error: Option<String>,
}

static OUTCOME: std::sync::OnceLock<Hardened> = std::sync::OnceLock::new();

/// The values [`harden`] took out of the environment, for the one reader
/// that needs them afterwards (the worker's key resolution).
static REMOVED: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();

/// The process environment as it was before [`harden`] removed the key's
/// variables: the worker reads `WARP_API_KEY` / `WARP_API_KEY_FILE` from
/// here once, after which they exist nowhere in the environment.
pub struct EnvBeforeHardening;

impl oz_foundation::operator_env::EnvLookup for EnvBeforeHardening {
    fn var(&self, name: &str) -> Option<String> {
        REMOVED
            .get()
            .and_then(|removed| removed.iter().find(|(n, _)| *n == name))
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

/// Logs what [`harden`] did (once logging is up); nothing when it did not run
/// (a test calling the library).
pub fn log_outcome() {
    let Some(h) = OUTCOME.get() else { return };
    if let Some(e) = &h.dumpable_error {
        tracing::warn!("cannot make the worker non-dumpable (prctl PR_SET_DUMPABLE): {e}; processes of the same user can read its memory");
    }
    if let Some(e) = &h.scrub_error {
        tracing::warn!("cannot clear the API key from the worker's initial environment block (/proc/self/environ): {e}");
    }
    if h.scrubbed > 0 {
        tracing::debug!(
            "cleared {} key variable(s) from the initial environment block",
            h.scrubbed
        );
    }
}

/// Removes [`SECRET_VARS`] from the environment and the initial
/// environment block, and makes the process non-dumpable. Call first thing
/// in `main`, after the arguments are parsed and before threads start
/// (`std::env::remove_var` is not thread-safe).
pub fn harden() {
    let _ = OUTCOME.set(harden_now());
}

fn harden_now() -> Hardened {
    let present: Vec<&str> = SECRET_VARS
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_some())
        .collect();
    let _ = REMOVED.set(
        present
            .iter()
            .filter_map(|v| std::env::var(v).ok().map(|value| (*v, value)))
            .collect(),
    );
    for v in &present {
        std::env::remove_var(v);
    }
    let (scrubbed, scrub_error) = if present.is_empty() {
        (0, None)
    } else {
        match scrub_initial_environment(&present) {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e.to_string())),
        }
    };
    Hardened {
        dumpable_error: nix::sys::prctl::set_dumpable(false)
            .err()
            .map(|e| e.to_string()),
        scrubbed,
        scrub_error,
    }
}

/// The initial environment block's address range from `/proc/self/stat`
/// (fields 50 and 51: `env_start`, `env_end`; proc(5)).
fn env_range(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(47)?.parse().ok()?, f.get(48)?.parse().ok()?))
}

/// Offsets and lengths of `NAME=…` entries for `names` in a NUL-separated
/// environment block.
fn entries_to_clear(block: &[u8], names: &[&str]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for entry in block.split(|b| *b == 0) {
        if names.iter().any(|n| {
            entry.len() > n.len() && entry.starts_with(n.as_bytes()) && entry[n.len()] == b'='
        }) {
            out.push((start, entry.len()));
        }
        start += entry.len() + 1;
    }
    out
}

fn scrub_initial_environment(names: &[&str]) -> std::io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let (start, end) = env_range(&stat)
        .ok_or_else(|| std::io::Error::other("no env_start/env_end in /proc/self/stat"))?;
    let mut mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let mut block = vec![0u8; end.saturating_sub(start) as usize];
    mem.seek(SeekFrom::Start(start))?;
    mem.read_exact(&mut block)?;
    let clear = entries_to_clear(&block, names);
    for (off, len) in &clear {
        mem.seek(SeekFrom::Start(start + *off as u64))?;
        mem.write_all(&vec![0u8; *len])?;
    }
    Ok(clear.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_entries_by_exact_name() {
        let block = b"PATH=/bin\0WARP_API_KEY=k1\0WARP_API_KEY_FILE=/f\0WARP_API_KEYS=no\0X=WARP_API_KEY=no\0";
        assert_eq!(entries_to_clear(block, &SECRET_VARS), [(10, 15), (26, 20)]);
    }

    #[test]
    fn reads_the_environment_range_after_a_command_name_with_spaces() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let stat = format!("123 (a ) b) {}", fields.join(" "));
        assert_eq!(env_range(&stat), Some((50, 51)));
    }
}

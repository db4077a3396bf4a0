//! Host processes and files that tests wait on: a pid that must go away, a
//! file a fake agent or dispatcher writes, a `KEY=VALUE` dump.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// How long a file a test waits for may take to appear.
const FILE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `pid` is a live (not zombie) process.
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

pub async fn wait_gone(pid: u32, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} (pid {pid}) still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_file(path: &Path) {
    let deadline = tokio::time::Instant::now() + FILE_TIMEOUT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

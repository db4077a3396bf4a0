//! The process groups this worker process still waits on (a task's agent,
//! a setup, teardown or dispatch command whose `process::Group` handle is
//! alive), so a stop can end them all when its deadline has come: the
//! worker must not exit leaving a teardown command running on its own
//! (issue 22 item 8). A group whose handle was dropped is no longer the
//! worker's business (a dispatch's background job belongs to the outside
//! system).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Leader pid → its start time (clock ticks since boot).
static LIVE: Mutex<BTreeMap<u32, String>> = Mutex::new(BTreeMap::new());

fn live() -> std::sync::MutexGuard<'static, BTreeMap<u32, String>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a group just spawned (its leader's pid = its process group id).
pub fn register(pgid: u32) {
    if let Some(start) = crate::host::process_start_time(pgid) {
        live().insert(pgid, start);
    }
}

/// The group's handle is gone.
pub fn forget(pgid: u32) {
    live().remove(&pgid);
}

/// SIGKILLs every recorded group whose leader still runs (a recycled pid
/// is never signalled: the start time must match). Returns how many.
pub fn kill_all() -> usize {
    kill_where(|_| true)
}

/// [`kill_all`] for the recorded groups whose process group id `pick`
/// accepts; the others stay recorded. The tests of this crate run in
/// parallel in one process, so a test of the kill must name its own groups.
fn kill_where(pick: impl Fn(u32) -> bool) -> usize {
    let groups: Vec<(u32, String)> = {
        let mut live = live();
        let picked: Vec<u32> = live.keys().copied().filter(|g| pick(*g)).collect();
        picked
            .into_iter()
            .filter_map(|g| live.remove(&g).map(|start| (g, start)))
            .collect()
    };
    groups
        .into_iter()
        .filter(|(pgid, start)| crate::process::kill_group_if_alive(*pgid, start))
        .count()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn kill_all_ends_the_groups_still_waited_on_and_only_those() {
        let spawn = || {
            crate::process::spawn(
                {
                    let mut c = tokio::process::Command::new("/bin/sh");
                    c.args(["-c", "sleep 300 & wait"]);
                    c
                },
                crate::OutputSink::none(),
                None,
            )
            .unwrap()
        };
        let mut kept = spawn();
        let dropped = spawn();
        let dropped_pgid = dropped.pgid();
        drop(dropped);
        assert!(super::live().contains_key(&kept.pgid()));
        assert!(!super::live().contains_key(&dropped_pgid));
        // Only this test's groups: others' run in parallel in this process.
        let kept_pgid = kept.pgid();
        assert_eq!(
            super::kill_where(|g| g == kept_pgid || g == dropped_pgid),
            1
        );
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), kept.wait())
            .await
            .expect("killed")
            .unwrap();
        assert_eq!(crate::process::exit_code(&status), 128 + 9);
    }
}

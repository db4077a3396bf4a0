//! Live-output followers (`GET /api/v1/runs/{id}/output?follow=true`): how
//! many a team may have open at once, and how long one may leave its
//! stream unread before it is dropped (its place and its buffered events
//! are worth more than its lag). Memory per follower is bounded by
//! `api_output` (a page of output, a few events); this bounds their number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `--max-followers-per-team`'s default.
pub const DEFAULT_MAX_PER_TEAM: usize = 1_000;
/// `--follower-send-timeout`'s default: a follower that reads nothing of
/// its next event for this long is dropped.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Whole (not followed) output reads at once: each holds up to
/// `--output-limit` bytes and their JSON while it is answered.
const WHOLE_READS: usize = 8;

#[derive(Clone)]
pub(crate) struct Followers {
    max_per_team: usize,
    send_timeout: Duration,
    open: Arc<Mutex<HashMap<i64, usize>>>,
    whole_reads: Arc<tokio::sync::Semaphore>,
}

/// One follower's place; dropping it frees the place.
pub(crate) struct Place {
    team_id: i64,
    open: Arc<Mutex<HashMap<i64, usize>>>,
}

impl Followers {
    pub(crate) fn new(max_per_team: usize, send_timeout: Duration) -> Followers {
        Followers {
            max_per_team,
            send_timeout,
            open: Arc::default(),
            whole_reads: Arc::new(tokio::sync::Semaphore::new(WHOLE_READS)),
        }
    }

    /// A turn to read a run's whole output (waits while [`WHOLE_READS`]
    /// others are being answered).
    pub(crate) async fn whole_read(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.whole_reads
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    pub(crate) fn max_per_team(&self) -> usize {
        self.max_per_team
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        self.send_timeout
    }

    /// A place for one more follower of `team_id`; `None` at the cap.
    pub(crate) fn join(&self, team_id: i64) -> Option<Place> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(team_id).or_default();
        if *n >= self.max_per_team {
            return None;
        }
        *n += 1;
        Some(Place {
            team_id,
            open: self.open.clone(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.team_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.team_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_team_has_its_own_cap() {
        let f = Followers::new(2, DEFAULT_SEND_TIMEOUT);
        let a1 = f.join(1).unwrap();
        let _a2 = f.join(1).unwrap();
        assert!(f.join(1).is_none(), "team 1 is at its cap");
        assert!(f.join(2).is_some(), "team 2 is not");
        drop(a1);
        assert!(f.join(1).is_some(), "a place freed is taken again");
    }
}

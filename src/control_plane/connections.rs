//! The budget of open HTTP connections of `serve`: at most `max` at once,
//! kept below the process's file-descriptor limit, so `accept` never fails
//! for want of a descriptor (the database and the log need some too).
//!
//! A connection is *trusted* once one of its requests authenticated (a
//! team key, a UI session) or it became a worker WebSocket. When the budget
//! is full, a new connection takes the place of the oldest connection that
//! is not trusted (a slow or silent client still sending its first
//! request, or an idle unauthenticated one), which is closed at once. Only
//! when every open connection is trusted is the new one refused: a `503`
//! written without reading anything, then closed. So clients without a key
//! can never starve the API, the UI's signed-in users or the workers; the
//! per-phase deadlines (TLS handshake, headers, body, idle keep-alive)
//! close the slow ones in any case.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// File descriptors kept out of the connection budget: the SQLite
/// database and its WAL, the log, the listener, TLS files at start-up.
pub const FD_RESERVE: u64 = 64;
/// The default budget when the file limit allows more: enough for
/// thousands of workers, bounded memory under a flood.
pub const DEFAULT_MAX: u64 = 16_384;

/// Marks a connection trusted. Held by every request (an extension) so the
/// endpoint that authenticates it can say so.
#[derive(Clone, Debug)]
pub struct Trust(Arc<AtomicBool>);

impl Trust {
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_trusted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Slot {
    trust: Trust,
    evict: Option<oneshot::Sender<()>>,
}

/// The open connections, oldest first.
pub struct Connections {
    max: usize,
    open: Mutex<(u64, BTreeMap<u64, Slot>)>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admission {
    id: u64,
    table: Arc<Connections>,
    pub trust: Trust,
    /// Resolves when a newer connection took this one's place.
    pub evicted: oneshot::Receiver<()>,
}

/// What [`Connections::admit`] decided.
pub enum Admitted {
    /// Room for it (`evicted`: an untrusted connection was closed to make it).
    Yes { admission: Admission, evicted: bool },
    /// Every open connection is trusted and the budget is full.
    Full,
}

impl Connections {
    /// A budget of `max` (at least 1) connections.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: max.max(1),
            open: Mutex::new((0, BTreeMap::new())),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().1.len()
    }

    /// Admits a new connection, closing the oldest untrusted one when the
    /// budget is full.
    pub fn admit(self: &Arc<Self>) -> Admitted {
        let mut guard = self.lock();
        let (next, open) = &mut *guard;
        let mut evicted = false;
        if open.len() >= self.max {
            let oldest = open
                .iter()
                .find(|(_, s)| !s.trust.is_trusted())
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else {
                return Admitted::Full;
            };
            if let Some(mut slot) = open.remove(&oldest) {
                if let Some(tx) = slot.evict.take() {
                    let _ = tx.send(());
                }
            }
            evicted = true;
        }
        *next += 1;
        let id = *next;
        let trust = Trust(Arc::new(AtomicBool::new(false)));
        let (tx, rx) = oneshot::channel();
        open.insert(
            id,
            Slot {
                trust: trust.clone(),
                evict: Some(tx),
            },
        );
        Admitted::Yes {
            admission: Admission {
                id,
                table: self.clone(),
                trust,
                evicted: rx,
            },
            evicted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Slot>)> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.table.lock().1.remove(&self.id);
    }
}

/// The default budget for a file limit of `nofile` descriptors.
pub fn default_max(nofile: u64) -> u64 {
    nofile.saturating_sub(FD_RESERVE).clamp(1, DEFAULT_MAX)
}

/// Raises the soft limit on open files to the hard limit (a service
/// manager's `LimitNOFILE=` sets both) and returns the soft limit in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(c: &Arc<Connections>) -> (Admission, bool) {
        match c.admit() {
            Admitted::Yes { admission, evicted } => (admission, evicted),
            Admitted::Full => panic!("refused"),
        }
    }

    #[test]
    fn the_oldest_untrusted_connection_makes_room_and_trusted_ones_stay() {
        let c = Connections::new(2);
        let (trusted, _) = admit(&c);
        trusted.trust.mark();
        let (mut slow, evicted) = admit(&c);
        assert!(!evicted);
        let (_new, evicted) = admit(&c);
        assert!(evicted, "the budget was full");
        assert!(slow.evicted.try_recv().is_ok(), "the untrusted one is told to close");
        assert_eq!(c.open(), 2);
        drop(slow);
        assert_eq!(c.open(), 2, "an evicted slot is already gone");
    }

    #[test]
    fn a_budget_full_of_trusted_connections_refuses() {
        let c = Connections::new(1);
        let (a, _) = admit(&c);
        a.trust.mark();
        assert!(matches!(c.admit(), Admitted::Full));
        drop(a);
        assert!(matches!(c.admit(), Admitted::Yes { .. }));
    }

    #[test]
    fn defaults_stay_below_the_file_limit() {
        assert_eq!(default_max(1024), 1024 - FD_RESERVE);
        assert_eq!(default_max(1 << 20), DEFAULT_MAX);
        assert_eq!(default_max(10), 1);
    }
}

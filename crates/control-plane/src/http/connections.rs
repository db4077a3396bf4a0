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
pub(crate) const FD_RESERVE: u64 = 64;
/// The default budget when the file limit allows more: enough for
/// thousands of workers, bounded memory under a flood.
pub(crate) const DEFAULT_MAX: u64 = 16_384;

/// Marks a connection trusted. Held by every request (an extension) so the
/// endpoint that authenticates it can say so.
#[derive(Clone, Debug)]
pub(crate) struct Trust(Arc<AtomicBool>);

impl Trust {
    pub(crate) fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_trusted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The request's connection's place (a request extension): a WebSocket
/// keeps it for as long as it lives. Held for its drop only.
#[derive(Clone)]
pub(crate) struct Held {
    _admission: Arc<Admission>,
}

impl Held {
    pub(crate) fn new(admission: Arc<Admission>) -> Held {
        Held {
            _admission: admission,
        }
    }
}

struct Slot {
    trust: Trust,
    evict: Option<oneshot::Sender<()>>,
}

/// Evicted connections whose tasks have not yet closed them: each still
/// holds its descriptor. Past this many, new connections are refused
/// rather than admitted over the budget (a burst of connects outruns the
/// tasks that close the evicted ones). Most of [`FD_RESERVE`]: on a loaded
/// machine those tasks run late, and at 16 an authenticated client's new
/// connection was refused during a slow-client flood.
const MAX_CLOSING: usize = 48;

#[derive(Default)]
struct Table {
    next: u64,
    /// Open connections by age, oldest first, evicted ones included until
    /// their task has dropped them.
    open: BTreeMap<u64, Slot>,
    /// Of `open`, those told to close.
    closing: usize,
}

/// The open connections, oldest first.
pub(crate) struct Connections {
    max: usize,
    table: Mutex<Table>,
}

/// One admitted connection; dropping it frees its place. Shared (`Arc`)
/// by the connection's task and, once upgraded, its WebSocket's task: the
/// place is held until both let go of the socket.
pub(crate) struct Admission {
    id: u64,
    table: Arc<Connections>,
    pub trust: Trust,
}

/// What [`Connections::admit`] decided.
pub(crate) enum Admitted {
    /// Room for it (`evicted`: an untrusted connection was told to close to
    /// make it). `close` resolves when a newer connection takes its place.
    Yes {
        admission: Arc<Admission>,
        close: oneshot::Receiver<()>,
        evicted: bool,
    },
    /// Every open connection is trusted (or enough are already closing)
    /// and the budget is full.
    Full,
}

impl Connections {
    /// A budget of `max` (at least 1) connections.
    pub(crate) fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: max.max(1),
            table: Mutex::default(),
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections open now (closing ones included).
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Admits a new connection, telling the oldest untrusted one to close
    /// when the budget is full. At most `max` + [`MAX_CLOSING`] connections
    /// hold descriptors at any time.
    pub(crate) fn admit(self: &Arc<Self>) -> Admitted {
        let mut t = self.lock();
        let mut evicted = false;
        if t.open.len() - t.closing >= self.max {
            if t.closing >= MAX_CLOSING {
                return Admitted::Full;
            }
            let Some(slot) = t
                .open
                .values_mut()
                .find(|s| s.evict.is_some() && !s.trust.is_trusted())
            else {
                return Admitted::Full;
            };
            if let Some(tx) = slot.evict.take() {
                let _ = tx.send(());
            }
            t.closing += 1;
            evicted = true;
        }
        t.next += 1;
        let id = t.next;
        let trust = Trust(Arc::new(AtomicBool::new(false)));
        let (tx, rx) = oneshot::channel();
        t.open.insert(
            id,
            Slot {
                trust: trust.clone(),
                evict: Some(tx),
            },
        );
        Admitted::Yes {
            admission: Arc::new(Admission {
                id,
                table: self.clone(),
                trust,
            }),
            close: rx,
            evicted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        if let Some(slot) = t.open.remove(&self.id) {
            if slot.evict.is_none() {
                t.closing -= 1;
            }
        }
    }
}

/// The default budget for a file limit of `nofile` descriptors.
pub(crate) fn default_max(nofile: u64) -> u64 {
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

    struct Held {
        admission: Arc<Admission>,
        evicted: oneshot::Receiver<()>,
    }

    fn admit(c: &Arc<Connections>) -> (Held, bool) {
        match c.admit() {
            Admitted::Yes {
                admission,
                close,
                evicted,
            } => (
                Held {
                    admission,
                    evicted: close,
                },
                evicted,
            ),
            Admitted::Full => panic!("refused"),
        }
    }

    #[test]
    fn the_oldest_untrusted_connection_makes_room_and_trusted_ones_stay() {
        let c = Connections::new(2);
        let (trusted, _) = admit(&c);
        trusted.admission.trust.mark();
        let (mut slow, evicted) = admit(&c);
        assert!(!evicted);
        let (_new, evicted) = admit(&c);
        assert!(evicted, "the budget was full");
        assert!(
            slow.evicted.try_recv().is_ok(),
            "the untrusted one is told to close"
        );
        assert_eq!(
            c.open(),
            3,
            "it holds its descriptor until its task drops it"
        );
        drop(slow);
        assert_eq!(c.open(), 2);
    }

    #[test]
    fn at_most_max_closing_connections_are_pending() {
        let c = Connections::new(1);
        let mut held = vec![admit(&c).0];
        for _ in 0..MAX_CLOSING {
            let (a, evicted) = admit(&c);
            assert!(evicted);
            held.push(a);
        }
        assert!(
            matches!(c.admit(), Admitted::Full),
            "too many evicted connections have not closed yet"
        );
        held.remove(0);
        assert!(matches!(c.admit(), Admitted::Yes { evicted: true, .. }));
    }

    #[test]
    fn a_budget_full_of_trusted_connections_refuses() {
        let c = Connections::new(1);
        let (a, _) = admit(&c);
        a.admission.trust.mark();
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

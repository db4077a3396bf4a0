//! The run scheduler's memory: every run that has not ended, the queue of
//! runs per (team, worker id) in creation order, and the live worker
//! connections with what each holds. Pure data, no I/O: dispatching an event
//! touches only the runs and connections it concerns, never the database.
//!
//! Derived structures (queue membership, a connection's offer and held
//! runs) follow from each run's `state` and `holder`, and `place` is the
//! only way to change those two, so they cannot drift apart.

use futures_util::future::Shared;
use oz_protocol::ServerMessage;
use oz_runs_api::model::{CreateRunRequest, RunState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub(crate) type ConnId = u64;
pub(crate) use crate::store::WorkerKey;

/// The next run to offer and the connection to offer it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub conn: ConnId,
    pub run_id: String,
}

/// Resolves to `true` once a change is stored, `false` if it was not (an
/// error means the same). Cloneable: several messages may wait on one.
pub(crate) type Receipt = Shared<oneshot::Receiver<bool>>;

/// A message for one worker connection, written in the order queued.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Now(ServerMessage),
    /// Written only once the change it announces is stored; dropped when the
    /// change did not happen.
    WhenStored(Receipt, ServerMessage),
}

/// A run that has not ended.
#[derive(Debug, Clone)]
pub(crate) struct LiveRun {
    /// Creation order, the queue order.
    pub seq: i64,
    pub team_id: i64,
    pub spec: Arc<CreateRunRequest>,
    pub created_at: String,
    /// Queued, assigned or claimed; changed only through [`Index::place`].
    state: RunState,
    /// The connection holding it (assigned to or claimed by); changed only
    /// through [`Index::place`].
    holder: Option<ConnId>,
    pub execution_id: Option<String>,
    pub cancel_requested: bool,
    /// The store write of the first cancel request, which repeated requests
    /// wait on instead of writing (and sending) their own.
    pub cancel_stored: Option<Receipt>,
    /// Claimed, with no connection of its worker id live, since then.
    pub absent_since: Option<Instant>,
    /// Assigned before a restart and not known to be claimed: a worker may
    /// re-announce it until then; after that it is offered again.
    pub unconfirmed_until: Option<Instant>,
    /// When this process queued it (its creation, or the start-up that
    /// restored it): the start of its dispatch latency and queue age
    /// (monotonic, so a clock step cannot skew either).
    pub queued_since: Instant,
}

impl LiveRun {
    pub(crate) fn new(
        seq: i64,
        team_id: i64,
        spec: CreateRunRequest,
        created_at: String,
    ) -> LiveRun {
        LiveRun {
            seq,
            team_id,
            spec: Arc::new(spec),
            created_at,
            state: RunState::Queued,
            holder: None,
            execution_id: None,
            cancel_requested: false,
            cancel_stored: None,
            absent_since: None,
            unconfirmed_until: None,
            queued_since: Instant::now(),
        }
    }

    pub(crate) fn key(&self) -> WorkerKey {
        WorkerKey::new(self.team_id, &self.spec.worker_host)
    }

    pub(crate) fn state(&self) -> RunState {
        self.state
    }

    pub(crate) fn holder(&self) -> Option<ConnId> {
        self.holder
    }
}

/// A connection that rejected an offer: it is offered nothing more until
/// it holds fewer runs than it did then (one of its tasks ended) or the
/// back-off has passed (then one offer probes it again).
#[derive(Debug, Clone)]
pub(crate) struct AtCapacity {
    pub since: Instant,
    /// The claimed runs it held when it rejected: its capacity, as seen.
    pub limit: usize,
    pub backoff: Duration,
    pub reason: String,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub key: WorkerKey,
    /// RFC 3339, UTC.
    pub connected_at: String,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Assigned to it, not yet claimed or rejected (at most one is offered
    /// at a time, so a worker's capacity is learnt without a burst of
    /// rejections).
    offered: HashSet<String>,
    /// Claimed runs it holds.
    held: HashSet<String>,
    pub at_capacity: Option<AtCapacity>,
    /// The worker said it is draining (extension `worker-state`): it takes
    /// nothing new, so it is offered nothing.
    pub draining: bool,
    /// What the worker sent as `X-Warp-Worker-Version` when it connected.
    pub version: Option<String>,
}

impl Conn {
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Runs offered to it and not yet claimed (0 or 1).
    pub(crate) fn offered(&self) -> usize {
        self.offered.len()
    }

    /// Whether it may be offered a run now.
    pub(crate) fn can_take(&self, now: Instant) -> bool {
        !self.tx.is_closed()
            && !self.draining
            && self.offered.is_empty()
            && self.at_capacity.as_ref().is_none_or(|c| {
                self.held.len() < c.limit || now.duration_since(c.since) >= c.backoff
            })
    }
}

#[derive(Default)]
pub(crate) struct Index {
    runs: HashMap<String, LiveRun>,
    queues: HashMap<WorkerKey, BTreeMap<i64, String>>,
    conns: HashMap<ConnId, Conn>,
    /// Live connections per key, in connection order.
    by_worker: HashMap<WorkerKey, Vec<ConnId>>,
    cursor: HashMap<WorkerKey, usize>,
    next_conn: ConnId,
    /// Worker ids paused by an operator: offered nothing until resumed;
    /// what they already hold runs on.
    paused: HashSet<WorkerKey>,
}

impl Index {
    // ---- runs ----

    /// Adds a run in `state` held by `holder` (queued runs join their queue).
    pub(crate) fn insert(
        &mut self,
        id: &str,
        run: LiveRun,
        state: RunState,
        holder: Option<ConnId>,
    ) {
        self.runs.insert(id.to_string(), run);
        self.place(id, state, holder);
    }

    pub(crate) fn run(&self, id: &str) -> Option<&LiveRun> {
        self.runs.get(id)
    }

    pub(crate) fn run_mut(&mut self, id: &str) -> Option<&mut LiveRun> {
        self.runs.get_mut(id)
    }

    pub(crate) fn runs(&self) -> impl Iterator<Item = (&String, &LiveRun)> {
        self.runs.iter()
    }

    pub(crate) fn runs_mut(&mut self) -> impl Iterator<Item = (&String, &mut LiveRun)> {
        self.runs.iter_mut()
    }

    /// Moves a run to `state` with `holder`, keeping the queue and the
    /// connections' offers and holdings in step. Unknown runs are ignored.
    pub(crate) fn place(&mut self, id: &str, state: RunState, holder: Option<ConnId>) {
        self.detach(id);
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        debug_assert!(!state.is_terminal(), "ended runs are removed, not placed");
        run.state = state;
        run.holder = if state == RunState::Queued {
            None
        } else {
            holder
        };
        let (key, seq, holder) = (run.key(), run.seq, run.holder);
        match state {
            RunState::Queued => {
                self.queues
                    .entry(key)
                    .or_default()
                    .insert(seq, id.to_string());
            }
            RunState::Assigned => {
                if let Some(c) = holder.and_then(|h| self.conns.get_mut(&h)) {
                    c.offered.insert(id.to_string());
                }
            }
            _ => {
                if let Some(c) = holder.and_then(|h| self.conns.get_mut(&h)) {
                    c.held.insert(id.to_string());
                }
            }
        }
    }

    /// The run ended: forget it. Returns what was known of it.
    pub(crate) fn remove(&mut self, id: &str) -> Option<LiveRun> {
        self.detach(id);
        self.runs.remove(id)
    }

    fn detach(&mut self, id: &str) {
        let Some(run) = self.runs.get(id) else {
            return;
        };
        let key = run.key();
        if let Some(q) = self.queues.get_mut(&key) {
            q.remove(&run.seq);
            if q.is_empty() {
                self.queues.remove(&key);
            }
        }
        if let Some(c) = run.holder.and_then(|h| self.conns.get_mut(&h)) {
            c.offered.remove(id);
            c.held.remove(id);
        }
    }

    /// Keys with queued runs.
    pub(crate) fn queued_keys(&self) -> Vec<WorkerKey> {
        self.queues.keys().cloned().collect()
    }

    /// The next offer for `key`: the oldest queued run and the next
    /// connection, in turn, that can take it.
    pub(crate) fn next_offer(&mut self, key: &WorkerKey, now: Instant) -> Option<Offer> {
        if self.paused.contains(key) {
            return None;
        }
        let run = self.queues.get(key)?.first_key_value()?.1.clone();
        let conns = self.by_worker.get(key)?;
        let n = conns.len();
        let start = self.cursor.get(key).copied().unwrap_or(0);
        let i = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.conns[&conns[i]].can_take(now))?;
        let conn = conns[i];
        self.cursor.insert(key.clone(), (i + 1) % n);
        Some(Offer { conn, run_id: run })
    }

    // ---- paused worker ids ----

    /// Pauses or resumes `key`; returns whether that changed anything.
    pub(crate) fn set_paused(&mut self, key: &WorkerKey, paused: bool) -> bool {
        if paused {
            self.paused.insert(key.clone())
        } else {
            self.paused.remove(key)
        }
    }

    pub(crate) fn is_paused(&self, key: &WorkerKey) -> bool {
        self.paused.contains(key)
    }

    // ---- connections ----

    pub(crate) fn add_conn(
        &mut self,
        key: WorkerKey,
        tx: mpsc::UnboundedSender<Outgoing>,
        connected_at: String,
    ) -> ConnId {
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.insert(
            id,
            Conn {
                key: key.clone(),
                connected_at,
                tx,
                offered: HashSet::new(),
                held: HashSet::new(),
                at_capacity: None,
                draining: false,
                version: None,
            },
        );
        self.by_worker.entry(key).or_default().push(id);
        id
    }

    /// Forgets a closed connection. Returns its key and the runs it was
    /// offered and held (their holder is now none; the caller decides what
    /// becomes of them).
    pub(crate) fn remove_conn(
        &mut self,
        id: ConnId,
    ) -> Option<(WorkerKey, Vec<String>, Vec<String>)> {
        let c = self.conns.remove(&id)?;
        if let Some(list) = self.by_worker.get_mut(&c.key) {
            list.retain(|&x| x != id);
            if list.is_empty() {
                self.by_worker.remove(&c.key);
                self.cursor.remove(&c.key);
            }
        }
        for run in c.offered.iter().chain(c.held.iter()) {
            if let Some(r) = self.runs.get_mut(run) {
                r.holder = None;
            }
        }
        Some((
            c.key,
            c.offered.into_iter().collect(),
            c.held.into_iter().collect(),
        ))
    }

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    pub(crate) fn conn_count(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn conns(&self) -> impl Iterator<Item = (&ConnId, &Conn)> {
        self.conns.iter()
    }

    /// Live connections of `key`, in connection order.
    pub(crate) fn conns_of(&self, key: &WorkerKey) -> &[ConnId] {
        self.by_worker.get(key).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn has_live(&self, key: &WorkerKey) -> bool {
        self.by_worker.contains_key(key)
    }

    /// Queues `msg` for connection `id`; a closed one is going away, and its
    /// removal puts back what it held.
    pub(crate) fn send(&self, id: ConnId, msg: Outgoing) {
        if let Some(c) = self.conns.get(&id) {
            let _ = c.tx.send(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: i64, host: &str) -> LiveRun {
        LiveRun::new(
            seq,
            1,
            CreateRunRequest {
                worker_host: host.into(),
                ..Default::default()
            },
            "t".into(),
        )
    }

    fn key(host: &str) -> WorkerKey {
        WorkerKey::new(1, host)
    }

    fn conn(ix: &mut Index, host: &str) -> (ConnId, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ix.add_conn(key(host), tx, "t".into()), rx)
    }

    #[test]
    fn offers_go_oldest_first_one_at_a_time_per_connection_in_turn() {
        let mut ix = Index::default();
        let (a, _ra) = conn(&mut ix, "w");
        let (b, _rb) = conn(&mut ix, "w");
        for (seq, id) in [(3, "r3"), (1, "r1"), (2, "r2")] {
            ix.insert(id, run(seq, "w"), RunState::Queued, None);
        }
        let now = Instant::now();
        let first = ix.next_offer(&key("w"), now).unwrap();
        assert_eq!((first.conn, first.run_id.as_str()), (a, "r1"));
        ix.place("r1", RunState::Assigned, Some(a));
        let second = ix.next_offer(&key("w"), now).unwrap();
        assert_eq!((second.conn, second.run_id.as_str()), (b, "r2"));
        ix.place("r2", RunState::Assigned, Some(b));
        // Both have an offer out: nothing more until one is claimed.
        assert!(ix.next_offer(&key("w"), now).is_none());
        ix.place("r1", RunState::Claimed, Some(a));
        assert_eq!(ix.next_offer(&key("w"), now).unwrap().conn, a);
        assert_eq!(ix.conn(a).unwrap().held(), 1);
        // Another worker id never sees these runs.
        let (_c, _rc) = conn(&mut ix, "other");
        assert!(ix.next_offer(&key("other"), now).is_none());
    }

    #[test]
    fn a_connection_at_capacity_waits_for_a_free_slot_or_the_backoff() {
        let mut ix = Index::default();
        let (a, _ra) = conn(&mut ix, "w");
        ix.insert("held", run(1, "w"), RunState::Claimed, Some(a));
        ix.insert("r2", run(2, "w"), RunState::Queued, None);
        let t0 = Instant::now();
        ix.conn_mut(a).unwrap().at_capacity = Some(AtCapacity {
            since: t0,
            limit: 1,
            backoff: Duration::from_secs(30),
            reason: "at capacity".into(),
        });
        assert!(ix.next_offer(&key("w"), t0).is_none());
        assert!(ix
            .next_offer(&key("w"), t0 + Duration::from_secs(31))
            .is_some());
        // Its task ended: a slot is free at once.
        ix.remove("held");
        assert_eq!(ix.next_offer(&key("w"), t0).unwrap().run_id, "r2");
    }

    #[test]
    fn a_paused_worker_id_and_a_draining_connection_are_offered_nothing() {
        let mut ix = Index::default();
        let (a, _ra) = conn(&mut ix, "w");
        let (b, _rb) = conn(&mut ix, "w");
        ix.insert("r1", run(1, "w"), RunState::Queued, None);
        let now = Instant::now();
        assert!(ix.set_paused(&key("w"), true));
        assert!(!ix.set_paused(&key("w"), true), "already paused");
        assert!(ix.next_offer(&key("w"), now).is_none());
        assert!(ix.set_paused(&key("w"), false));
        ix.conn_mut(a).unwrap().draining = true;
        assert_eq!(ix.next_offer(&key("w"), now).unwrap().conn, b);
        ix.conn_mut(b).unwrap().draining = true;
        assert!(ix.next_offer(&key("w"), now).is_none());
    }

    #[test]
    fn removing_a_connection_releases_what_it_held() {
        let mut ix = Index::default();
        let (a, _ra) = conn(&mut ix, "w");
        ix.insert("r1", run(1, "w"), RunState::Assigned, Some(a));
        ix.insert("r2", run(2, "w"), RunState::Claimed, Some(a));
        let (k, offered, held) = ix.remove_conn(a).unwrap();
        assert_eq!(k, key("w"));
        assert_eq!((offered, held), (vec!["r1".into()], vec!["r2".into()]));
        assert_eq!(ix.run("r1").unwrap().holder(), None);
        assert!(!ix.has_live(&key("w")));
        ix.place("r1", RunState::Queued, None);
        assert_eq!(ix.queued_keys(), [key("w")]);
        ix.remove("r1");
        assert!(ix.queued_keys().is_empty());
    }
}

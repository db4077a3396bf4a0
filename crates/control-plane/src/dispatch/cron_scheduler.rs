//! Schedules: runs created from a cron expression (`calendar`), once per
//! slot, even across restarts.
//!
//! A schedule records the instant until which its slots are handled. One
//! task wakes at the next slot of any schedule (or when one changes) and,
//! for each schedule with a slot due, creates the run and moves that
//! instant forward in one database change (`Store::handle_slot`, which also
//! checks the schedule was not changed meanwhile). So a slot gets one run
//! or none, whenever the process dies; a unique index on (schedule, slot)
//! backs this up.
//!
//! Only the latest due slot of a schedule is handled at a time: slots that
//! passed unhandled are folded into it (a schedule never bursts). A slot
//! that came due while the control plane was not running is *missed*: with
//! `skip` (the default, as cron) it creates no run, with `run_once` (as
//! anacron) the latest missed slot creates one. A paused schedule handles
//! nothing; resuming it marks what came due meanwhile handled.

use crate::dispatch::calendar::{
    self, Calendar, CalendarError, StoredTimeError, DEFAULT_TIME_ZONE,
};
use crate::dispatch::run_scheduler::RunScheduler;
use crate::store::{ScheduleRecord, SlotOutcome, SlotRun, StoreError};
use chrono::{DateTime, Utc};
use oz_runs_api::model::{CreateScheduleRequest, MissedSlots};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The loop looks again at least this often (wall-clock changes, retries).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// After a database error, wait this long before trying a slot again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Woken this long after a slot, so the clock reads at or past it.
const SLOT_MARGIN: Duration = Duration::from_millis(3);

/// Why a schedule operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    /// The expression or time zone: the message names the fix.
    #[error(transparent)]
    Invalid(#[from] CalendarError),
    #[error("no such schedule")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a stored schedule cannot be followed (it was written by another
/// build, or the database was edited).
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error(transparent)]
    Calendar(#[from] CalendarError),
    #[error(transparent)]
    Time(#[from] StoredTimeError),
}

/// An active schedule, as the loop sees it.
struct Entry {
    calendar: Calendar,
    missed: MissedSlots,
    /// As stored (the store compares it to detect changes).
    handled_until: String,
    handled_until_at: DateTime<Utc>,
    /// After a failed write, not before this.
    retry_at: Option<DateTime<Utc>>,
}

/// Creates runs from the stored schedules at their slots (as Kubernetes'
/// CronJob controller creates Jobs), handing each to the [`RunScheduler`].
pub(crate) struct CronScheduler {
    run_scheduler: Arc<RunScheduler>,
    /// Slots before this came due while the control plane was not running.
    started_at: DateTime<Utc>,
    active: Mutex<HashMap<String, Entry>>,
    wake: Notify,
}

impl CronScheduler {
    /// Loads the stored schedules; slots before now count as missed.
    pub(crate) async fn load(
        run_scheduler: Arc<RunScheduler>,
    ) -> Result<CronScheduler, StoreError> {
        let started_at = Utc::now();
        let stored = run_scheduler.store().list_schedules(None).await?;
        let s = CronScheduler {
            run_scheduler,
            started_at,
            active: Mutex::default(),
            wake: Notify::new(),
        };
        {
            let mut active = s.lock();
            for rec in stored.iter().filter(|r| !r.paused) {
                match entry(rec) {
                    Ok(e) => {
                        active.insert(rec.id.clone(), e);
                    }
                    Err(why) => {
                        tracing::error!(schedule = %rec.id, "schedule not loaded: {why}")
                    }
                }
            }
        }
        Ok(s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles due slots until `stop` flips.
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let wait = self.handle_due().await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Handles every schedule's due slot; returns how long until the next.
    async fn handle_due(&self) -> Duration {
        let now = Utc::now();
        let due: Vec<(String, String, calendar::Due, MissedSlots)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.retry_at.is_none_or(|t| t <= now))
            .filter_map(|(id, e)| {
                let d = e.calendar.due(e.handled_until_at, now, self.started_at)?;
                Some((id.clone(), e.handled_until.clone(), d, e.missed))
            })
            .collect();
        for (id, expected, d, missed) in due {
            self.handle_slot(&id, &expected, d, missed).await;
        }
        let now = Utc::now();
        let next = self
            .lock()
            .values()
            .filter_map(|e| {
                let slot = e.calendar.next_after(e.handled_until_at.max(now))?;
                Some(e.retry_at.map_or(slot, |r| r.min(slot)))
            })
            .min();
        match next {
            Some(t) => (t - now).to_std().unwrap_or_default() + SLOT_MARGIN,
            None => MAX_SLEEP,
        }
        .min(MAX_SLEEP)
    }

    async fn handle_slot(&self, id: &str, expected: &str, d: calendar::Due, policy: MissedSlots) {
        let slot = calendar::format(d.slot);
        let create = !d.missed || policy == MissedSlots::RunOnce;
        let run = create.then(|| {
            let mut note = format!("created by schedule {id} for its slot {slot}");
            if d.missed {
                note.push_str(
                    " (it came due while the control plane was not running; missed: run_once)",
                );
            }
            if d.folded {
                note.push_str("; earlier unhandled slots were folded into this one");
            }
            SlotRun {
                run_id: RunScheduler::new_run_id(),
                note,
            }
        });
        let result = self
            .run_scheduler
            .store()
            .handle_slot(id, expected, &slot, run)
            .await;
        match result {
            Ok(SlotOutcome::Created(run)) => {
                tracing::info!(
                    schedule = id,
                    slot,
                    run = %run.record.id,
                    missed = d.missed,
                    folded = d.folded,
                    "schedule created a run"
                );
                self.run_scheduler.enqueue(*run);
                self.mark_handled(id, &slot, d.slot);
            }
            Ok(SlotOutcome::Skipped) => {
                tracing::info!(
                    schedule = id,
                    slot,
                    "slot came due while the control plane was not running; skipped (missed: skip)"
                );
                self.mark_handled(id, &slot, d.slot);
            }
            Ok(SlotOutcome::Stale) => self.reload(id).await,
            Err(e) => {
                tracing::error!(
                    schedule = id,
                    slot,
                    "cannot handle the schedule's slot: {e}; trying again"
                );
                if let Some(e) = self.lock().get_mut(id) {
                    e.retry_at = chrono::Duration::from_std(RETRY_AFTER)
                        .ok()
                        .map(|r| Utc::now() + r);
                }
            }
        }
    }

    fn mark_handled(&self, id: &str, slot: &str, at: DateTime<Utc>) {
        if let Some(e) = self.lock().get_mut(id) {
            e.handled_until = slot.to_string();
            e.handled_until_at = at;
            e.retry_at = None;
        }
    }

    /// The stored schedule changed under the loop: take it as stored.
    async fn reload(&self, id: &str) {
        match self.run_scheduler.store().get_schedule(id, None).await {
            Ok(found) => self.track(id, found.as_ref()),
            Err(e) => tracing::error!(schedule = id, "cannot reload the schedule: {e}"),
        }
    }

    /// Makes the loop follow `rec` (none, or paused: forget it).
    fn track(&self, id: &str, rec: Option<&ScheduleRecord>) {
        let mut active = self.lock();
        match rec.filter(|r| !r.paused).map(entry) {
            Some(Ok(e)) => {
                active.insert(id.to_string(), e);
            }
            Some(Err(why)) => {
                tracing::error!(schedule = id, "schedule not loaded: {why}");
                active.remove(id);
            }
            None => {
                active.remove(id);
            }
        }
        drop(active);
        self.wake.notify_one();
    }

    // ---- API operations ----

    /// Stores a new schedule; its first slot is the first after now.
    pub(crate) async fn create(
        &self,
        team_id: i64,
        req: CreateScheduleRequest,
    ) -> Result<ScheduleRecord, ScheduleError> {
        let time_zone = req
            .time_zone
            .as_deref()
            .map(str::trim)
            .filter(|z| !z.is_empty())
            .unwrap_or(DEFAULT_TIME_ZONE)
            .to_string();
        Calendar::parse(&req.cron, &time_zone)?;
        let now = calendar::format(Utc::now());
        let name = req
            .name
            .clone()
            .or_else(|| req.run.title.clone())
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| req.cron.trim().to_string());
        let rec = ScheduleRecord {
            id: format!("sch_{:016x}", fastrand::u64(..)),
            team_id,
            name,
            cron: req.cron.trim().to_string(),
            time_zone,
            missed: req.missed,
            spec: req.run,
            paused: false,
            handled_until: now.clone(),
            last_run_id: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let rec = self.run_scheduler.store().insert_schedule(rec).await?;
        tracing::info!(schedule = %rec.id, team_id, cron = %oz_foundation::escape::Escaped(&rec.cron), time_zone = %oz_foundation::escape::Escaped(&rec.time_zone), "schedule created");
        self.track(&rec.id, Some(&rec));
        Ok(rec)
    }

    /// Pauses (`true`) or resumes a schedule. A resume marks every slot
    /// until now handled: what came due while paused does not run.
    pub(crate) async fn set_paused(
        &self,
        team_id: i64,
        id: &str,
        paused: bool,
    ) -> Result<ScheduleRecord, ScheduleError> {
        let handled_until = (!paused).then(|| calendar::format(Utc::now()));
        let store = self.run_scheduler.store();
        let current = store
            .get_schedule(id, Some(team_id))
            .await?
            .ok_or(ScheduleError::NotFound)?;
        if current.paused == paused {
            return Ok(current);
        }
        let rec = store
            .set_schedule_paused(id, team_id, paused, handled_until)
            .await?
            .ok_or(ScheduleError::NotFound)?;
        tracing::info!(
            schedule = id,
            paused,
            "schedule {}",
            if paused { "paused" } else { "resumed" }
        );
        self.track(id, Some(&rec));
        Ok(rec)
    }

    /// Deletes a schedule (its runs keep its id); returns it as it was.
    pub(crate) async fn delete(
        &self,
        team_id: i64,
        id: &str,
    ) -> Result<ScheduleRecord, ScheduleError> {
        let rec = self
            .run_scheduler
            .store()
            .delete_schedule(id, team_id)
            .await?
            .ok_or(ScheduleError::NotFound)?;
        tracing::info!(schedule = id, "schedule deleted");
        self.track(id, None);
        Ok(rec)
    }

    /// When `rec` next creates a run (none while paused), RFC 3339.
    pub(crate) fn next_slot(rec: &ScheduleRecord) -> Option<String> {
        if rec.paused {
            return None;
        }
        let c = Calendar::parse(&rec.cron, &rec.time_zone).ok()?;
        let from = calendar::parse_time(&rec.handled_until)
            .ok()?
            .max(Utc::now());
        c.next_after(from).map(calendar::format)
    }
}

fn entry(rec: &ScheduleRecord) -> Result<Entry, EntryError> {
    Ok(Entry {
        calendar: Calendar::parse(&rec.cron, &rec.time_zone)?,
        missed: rec.missed,
        handled_until: rec.handled_until.clone(),
        handled_until_at: calendar::parse_time(&rec.handled_until)?,
        retry_at: None,
    })
}

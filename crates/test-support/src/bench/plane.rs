//! Runs timed from the plane's own record, on the one embedded control
//! plane harness ([`TestPlane`], started with [`TestPlane::ephemeral`]).
//!
//! A run's end is read from its history (the time the plane recorded the
//! terminal report), not from when a poll happened to see it, so polling
//! can be slow and cheap without blurring the figure.

use crate::control_plane::TestPlane;
use oz_runs_api::client::ClientError;
use oz_runs_api::model::{CreateRunRequest, Run, RunState};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a waiting bench looks at a run.
pub const POLL: Duration = Duration::from_millis(20);

/// Why a timed run has no figure; each message names the run and, where
/// it was read, shows it.
#[derive(Debug, thiserror::Error)]
pub enum TimedRunError {
    #[error("creating a run: {0}")]
    Create(#[source] Box<ClientError>),
    #[error("reading run {id}: {source}")]
    Read {
        id: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("run {} did not end within {within:?}: {run:#?}", run.id)]
    NotEnded { within: Duration, run: Box<Run> },
    #[error("run {} ended before it was observed running: {run:#?}", run.id)]
    EndedUnclaimed { run: Box<Run> },
    #[error("run {} was not claimed within {within:?}: {run:#?}", run.id)]
    NotClaimed { within: Duration, run: Box<Run> },
    #[error("run {id} has no readable created_at")]
    NoCreatedAt { id: String },
    #[error("run {} was never claimed: {run:#?}", run.id)]
    NeverClaimed { run: Box<Run> },
    #[error("run {} has no terminal entry: {run:#?}", run.id)]
    NoTerminalEntry { run: Box<Run> },
}

/// One run, end to end.
#[derive(Debug, Clone)]
pub struct Timed {
    pub run: Run,
    /// From just before the run was created to the terminal report recorded.
    pub total: Duration,
    /// From just before the request to the run recorded (the runs API call).
    pub to_created: Duration,
    /// From the run created to the worker's claim recorded.
    pub to_claim: Duration,
    /// From the claim recorded to the terminal report recorded.
    pub claim_to_end: Duration,
}

impl TestPlane {
    /// Creates the run and waits (at most `within`) for it to end.
    pub async fn timed_run(
        &self,
        req: &CreateRunRequest,
        within: Duration,
    ) -> Result<Timed, TimedRunError> {
        let t0 = SystemTime::now();
        let run = self
            .runs
            .create_run(req)
            .await
            .map_err(|e| TimedRunError::Create(Box::new(e)))?;
        let run = self.wait_terminal(&run.id, within).await?;
        timing(t0, run)
    }

    /// Polls until the run is terminal; the answer has its history.
    pub async fn wait_terminal(&self, id: &str, within: Duration) -> Result<Run, TimedRunError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let run = self
                .runs
                .get_run(id)
                .await
                .map_err(|source| TimedRunError::Read {
                    id: id.to_string(),
                    source: Box::new(source),
                })?;
            if run.state.is_terminal() {
                return Ok(run);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(TimedRunError::NotEnded {
                    within,
                    run: Box::new(run),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until every run is claimed (its task is running); a run that
    /// ends first is an error.
    pub async fn wait_all_claimed(
        &self,
        ids: &[String],
        within: Duration,
    ) -> Result<(), TimedRunError> {
        let deadline = tokio::time::Instant::now() + within;
        for id in ids {
            loop {
                let run = self
                    .runs
                    .get_run(id)
                    .await
                    .map_err(|source| TimedRunError::Read {
                        id: id.to_string(),
                        source: Box::new(source),
                    })?;
                match run.state {
                    RunState::Claimed => break,
                    s if s.is_terminal() => {
                        return Err(TimedRunError::EndedUnclaimed { run: Box::new(run) })
                    }
                    _ => {}
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(TimedRunError::NotClaimed {
                        within,
                        run: Box::new(run),
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }
}

/// The run's times from its history. The plane writes milliseconds,
/// truncated; half a millisecond is added to the end so the figure is not
/// biased low.
pub fn timing(t0: SystemTime, run: Run) -> Result<Timed, TimedRunError> {
    let at = |state: RunState| {
        run.history
            .iter()
            .find(|h| h.state == state)
            .and_then(|h| parse_rfc3339_ms(&h.at))
    };
    let Some(created) = parse_rfc3339_ms(&run.created_at) else {
        return Err(TimedRunError::NoCreatedAt { id: run.id });
    };
    let Some(claimed) = at(RunState::Claimed) else {
        return Err(TimedRunError::NeverClaimed { run: Box::new(run) });
    };
    let Some(end) = at(run.state) else {
        return Err(TimedRunError::NoTerminalEntry { run: Box::new(run) });
    };
    let half = Duration::from_micros(500);
    let since = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default();
    Ok(Timed {
        total: since(t0, end + half),
        to_created: since(t0, created + half),
        to_claim: since(created, claimed),
        claim_to_end: since(claimed, end),
        run,
    })
}

/// `2024-05-01T12:34:56.789Z` (the control plane's format) as a time.
pub fn parse_rfc3339_ms(s: &str) -> Option<SystemTime> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let millis = num(20..23).unwrap_or(0);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis as u64))
}

//! Runs in motion: the live index of runs, queues and connections
//! (`index`), runs' live output (`output`), the run scheduler that places
//! queued runs on worker connections and follows them to their end
//! (`run_scheduler`), its instruments (`metrics`), cron expressions in a time
//! zone (`calendar`) and the cron scheduler that creates runs from
//! schedules, once per slot (`cron_scheduler`). Below `http`, above `store`.

pub(crate) mod calendar;
pub(crate) mod cron_scheduler;
pub(crate) mod index;
pub(crate) mod metrics;
pub mod output;
pub(crate) mod run_scheduler;

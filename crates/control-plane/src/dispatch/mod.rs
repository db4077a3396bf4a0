//! Routing runs to workers: the live index of runs, queues and connections
//! (`index`), runs' live output (`output`), the run scheduler that offers runs
//! to connections (`run_scheduler`), cron expressions in a time zone
//! (`calendar`) and the cron scheduler that creates runs from schedules, once per
//! slot (`cron_scheduler`). Below `http`, above `store`.

pub mod calendar;
pub mod run_scheduler;
pub mod index;
pub mod metrics;
pub mod output;
pub mod cron_scheduler;

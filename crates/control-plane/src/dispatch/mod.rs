//! Routing runs to workers: the live index of runs, queues and connections
//! (`index`), runs' live output (`output`), the dispatcher that offers runs
//! to connections (`dispatcher`), cron expressions in a time zone
//! (`calendar`) and the scheduler that creates runs from schedules, once per
//! slot (`scheduler`). Below `http`, above `store`.

pub mod calendar;
pub mod dispatcher;
pub mod index;
pub mod metrics;
pub mod output;
pub mod scheduler;

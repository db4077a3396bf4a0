//! The worker binary end to end: the protocol against a scripted
//! orchestrator, every engine of the matrix, draining, timeouts, faults,
//! proxies, exit statuses, API key sources and shared worker ids. One test
//! binary.

mod api_key_sources;
mod drain;
mod e2e;
mod exit_status;
mod faults;
mod hostile_logs;
mod output_resilience;
mod pid_namespaces;
mod protocol;
mod proxy;
mod shared_worker_id;
mod stop_budget;
mod task_timeout;

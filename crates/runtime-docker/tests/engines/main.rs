//! The Docker runtime's pieces against real engines: the glibc/musl check,
//! the OOM event fallback and volume specs. One test binary.

mod libc_check;
mod oom_events;
mod volume_specs;

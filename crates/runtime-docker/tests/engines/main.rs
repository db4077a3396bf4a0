//! The Docker runtime's pieces against real engines: the glibc/musl check
//! and volume specs. One test binary.

mod libc_check;
mod volume_specs;

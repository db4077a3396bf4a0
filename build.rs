//! Links the release executable as a non-PIE (position-dependent) program
//! on Linux with glibc. Why: a PIE is relocated by the dynamic loader at
//! every start, which reads all of `.rela.dyn` (1.5 MiB of relative
//! relocations) and writes every pointer in `.data.rel.ro` (1.6 MiB), so
//! both are resident in every worker process, the latter as private dirty
//! memory. A non-PIE has its addresses fixed at link time: no load-time
//! relocations, and static data is paged in only where it is read. Measured
//! on the same LTO objects linked both ways: idle RSS 15.0 → 12.4 MiB
//! (BENCHMARKS.md, "Idle RSS"). The code stays position-independent (the crates are compiled
//! with rustc's default relocation model); only the link is `-no-pie`, which
//! glibc's loader has run for decades, so the binary still needs no glibc
//! newer than it did. The cost: the executable's own code is not placed at
//! a random address (ASLR still randomises the stack, heap, mmap area and
//! shared libraries). `OZ_LINK_PIE=1` at build time keeps a PIE.
//!
//! Only the `release` and `bench` profiles (cargo's `PROFILE=release`):
//! debug builds and tests link as before.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=OZ_LINK_PIE");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if release && linux_gnu && var("OZ_LINK_PIE") != "1" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

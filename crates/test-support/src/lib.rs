//! Shared test helpers, one per boundary, for the integration tests
//! (`use oz_test_support as support;`) and, under [`bench`], the benches.
#![allow(dead_code)]

pub mod bench;
pub mod browser;
pub mod cli;
pub mod control_plane;
pub mod docker;
pub mod fixtures;
pub mod host;
pub mod images;
pub mod net;
pub mod plane_process;
pub mod private_dockerd;
pub mod scripted_server;
pub mod worker;

/// The `oz-agent-worker` binary of the build running this test or bench:
/// `OZ_AGENT_WORKER_BIN` when set, else the one next to the test's own
/// executable (`target/<profile>/deps/TEST` → `target/<profile>/oz-agent-worker`).
/// Cargo's `CARGO_BIN_EXE_*` is only given to the binary's own package's
/// tests, not to this crate; cargo builds the binary before running any
/// test or bench of the root package.
pub fn worker_binary() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("OZ_AGENT_WORKER_BIN") {
            return p;
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test executable lives in target/<profile>/deps");
        profile_dir
            .join("oz-agent-worker")
            .to_string_lossy()
            .into_owned()
    })
}

//! What a bench needs from its environment, and a clear exit when it is
//! missing. `cargo xtask bench` sets `OZ_BENCH_QUICK=1` for a smoke run.

use super::engine::RawEngine;

/// Exit status of a bench whose environment is missing (as opposed to 1, a
/// bench that ran and found something wrong).
pub const EXIT_MISSING: i32 = 2;

/// Whether this is a smoke run with small counts (`cargo xtask bench --quick`).
pub fn quick() -> bool {
    std::env::var("OZ_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// An environment variable, or `default` when unset or empty.
pub fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A count from `var` when set, else `full` (or `quick` in a smoke run).
/// An unparsable value is an error naming the variable.
pub fn count(var_name: &str, full: usize, quick_n: usize) -> usize {
    match std::env::var(var_name)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{var_name}={v:?} is not a count; give a whole number");
            std::process::exit(EXIT_MISSING)
        }),
        None if quick() => quick_n,
        None => full,
    }
}

/// Says what is missing and how to get it, and exits with [`EXIT_MISSING`].
pub fn missing(bench: &str, what: &str) -> ! {
    eprintln!(
        "{bench}: cannot run: {what}. Bring the test environment up with `scripts/test-env.sh up` \
         (it writes /var/lib/oz-worker-test/env; source it for non-default locations)."
    );
    std::process::exit(EXIT_MISSING)
}

/// The test environment's dockerd 20.10 (API 1.41).
pub fn docker_host() -> String {
    var("OZ_TEST_DOCKER_HOST", "unix:///var/run/docker.sock")
}

/// The matrix's Docker 28 (API 1.51), which also serves the volume-copy path
/// when a client pins `DOCKER_API_VERSION=1.47`.
pub fn docker28_host() -> String {
    var(
        "OZ_TEST_DOCKER28_HOST",
        "unix:///var/lib/oz-worker-test/daemons/docker28/docker.sock",
    )
}

pub fn busybox_image() -> String {
    var("OZ_TEST_IMAGE_BUSYBOX", "oz-test/busybox:latest")
}

/// Connects to the daemon at `host` and checks that `images` are present,
/// or exits saying which is missing.
pub async fn engine(bench: &str, host: &str, images: &[&str]) -> RawEngine {
    let engine = RawEngine::connect(host)
        .await
        .unwrap_or_else(|e| missing(bench, &format!("no Docker daemon answers at {host} ({e})")));
    for image in images {
        match engine.image_id(image).await {
            Ok(Some(_)) => {}
            Ok(None) => missing(
                bench,
                &format!("image {image} is not loaded in the daemon at {host}"),
            ),
            Err(e) => missing(bench, &format!("cannot inspect {image} at {host}: {e}")),
        }
    }
    engine
}

//! `Browser`: Debian's Chromium, headless, driven over WebDriver
//! (`chromedriver`, through fantoccini), with a fresh profile. The packages
//! come from `scripts/test-browser.sh`; without them a test is skipped,
//! except under CI, where that is a failure.
//!
//! A browser test runs in namespaces of its own ([`in_own_namespaces`]):
//! a network namespace with only a loopback interface (Chromium looks up
//! and contacts outside hosts however it is told not to; here it cannot,
//! and the machine has no network for it anyway) and a PID namespace, so
//! whatever Chromium leaves running ends with the test. The control plane,
//! the worker and the browser all run inside; dockerd is reached through
//! its unix socket.

use crate::net::free_port;
use fantoccini::{Client, ClientBuilder};
use std::process::Stdio;
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// Set inside the namespaces.
const INSIDE: &str = "OZ_BROWSER_TEST_NAMESPACED";
/// A file the run inside creates once its body starts: the proof that the
/// filter named a test (libtest passes a filter that matches nothing).
const STARTED: &str = "OZ_BROWSER_TEST_STARTED";

/// Runs test `name` of module `module` (its `module_path!()`) of this test
/// binary again inside fresh network and PID namespaces (`unshare`,
/// loopback up) and returns how it ended; `None` when already inside (then
/// the caller runs the test's body). A run inside that did not start the
/// test's body is a failure: an exact filter naming no test passes with
/// "running 0 tests", which once made the browser tests pass without
/// running.
pub async fn in_own_namespaces(module: &str, name: &str) -> Option<std::process::ExitStatus> {
    if std::env::var_os(INSIDE).is_some() {
        if let Some(marker) = std::env::var_os(STARTED) {
            std::fs::write(marker, name).expect("the started marker is writable");
        }
        return None;
    }
    // libtest names tests by their path inside the binary's crate.
    let path = match module.split_once("::") {
        Some((_crate, inner)) => format!("{inner}::{name}"),
        None => name.to_string(),
    };
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let status = tokio::process::Command::new("unshare")
        .args(["--net", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(["sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args([path.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .env(STARTED, &marker)
        .kill_on_drop(true)
        .status()
        .await
        .expect("unshare (util-linux) and ip (iproute2) run the test in its own namespaces");
    assert!(
        !status.success() || marker.exists(),
        "no test {path:?} ran inside the namespaces (the filter named no test)"
    );
    Some(status)
}

impl Browser {
    /// `None` (test skipped) when Chromium or ChromeDriver is missing,
    /// unless `CI=true`.
    pub async fn start() -> Option<Browser> {
        let driver_bin = on_path("chromedriver");
        if driver_bin.is_none() || !std::path::Path::new(CHROMIUM).exists() {
            let why = "chromium and chromedriver are not installed; run scripts/test-browser.sh (it installs Debian's chromium and chromium-driver)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        let port = free_port();
        let driver = tokio::process::Command::new(driver_bin.unwrap())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browser it starts goes with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let caps: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                        "--window-size=1280,1000",
                        // Nothing to look up: every host name fails at once.
                        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                        "--password-store=basic",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }))
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                // Not listening yet.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}"),
            }
        };
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Ends the session (Chromium quits) and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test leaves no browser behind: the whole group goes.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(format!("-{pid}"))
                .stderr(Stdio::null())
                .status();
        }
    }
}

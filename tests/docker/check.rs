//! `oz-agent-worker check` through the built binary, with the environment
//! set on the child process only: against every daemon of the matrix, over
//! TLS, ssh:// and a context, and failing.

use oz_test_support as support;

use oz_docker_engine::transport::ApiVersion;
use std::process::{Command, Output};
use support::docker::{per_daemon, Setup, TestDaemon, TestEnv, Via};

per_daemon!(json_report);

/// `check --json` names the engine, its version and the negotiated API
/// version as the daemon's own `/version` gives them.
async fn json_report(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let host = d.env.socket_host(via).unwrap().to_string();
    let cfg = Setup::new();
    let cfg = cfg.config_dir.path().to_str().unwrap().to_string();
    let out = check(&[("DOCKER_HOST", &host), ("DOCKER_CONFIG", &cfg)], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert_eq!(v["endpoint"], host.as_str());
    assert_eq!(v["chosen_by"]["kind"], "env");
    assert_eq!(v["tls"]["enabled"], false);
    let version = d.docker.version().await.expect("version");
    let kind = if via.is_podman() { "podman" } else { "docker" };
    assert_eq!(v["engine"]["kind"], kind, "{v}");
    assert_eq!(v["engine"]["version"], version.version.as_str(), "{v}");
    let api: ApiVersion = v["api_version"].as_str().unwrap().parse().unwrap();
    let daemon_api: ApiVersion = version.api_version.parse().unwrap();
    assert_eq!(api, daemon_api.min(ApiVersion::LATEST), "{v}");
    assert_eq!(
        v["platform"].as_str().unwrap(),
        format!("{}/{}", version.os, version.arch)
    );
}

fn check(vars: &[(&str, &str)], json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"));
    cmd.arg("check").env_clear();
    if json {
        cmd.arg("--json");
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run oz-agent-worker check")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn failure_exits_non_zero_with_the_workers_error() {
    let setup = Setup::new();
    let cfg = setup.config_dir.path().to_str().unwrap().to_string();
    let vars = [
        ("DOCKER_CONFIG", cfg.as_str()),
        ("DOCKER_HOST", "unix:///nonexistent/oz-test.sock"),
    ];
    let out = check(&vars, false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the Docker daemon at unix:///nonexistent/oz-test.sock (from env DOCKER_HOST)")
            && stderr.contains("Is the daemon running?"),
        "{stderr}"
    );
    let out = check(&vars, true);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on failure");
    assert_eq!(v["ok"], false);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("No such file or directory"));
}

#[test]
fn unknown_context_fails_naming_it() {
    let _ = TestEnv::load();
    let setup = Setup::new();
    let cfg = setup.config_dir.path().to_str().unwrap().to_string();
    let out = check(
        &[("DOCKER_CONFIG", &cfg), ("DOCKER_CONTEXT", "ghost")],
        false,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("\"ghost\"") && stderr.contains(&cfg),
        "{stderr}"
    );
}

/// dockerd 20.10 over TCP with mutual TLS.
mod docker_tls {
    use super::*;

    #[test]
    fn text_report_over_tls() {
        let Some((env, _)) = TestDaemon::setup(Via::TlsEnv) else {
            return;
        };
        let out = check(
            &[
                ("DOCKER_HOST", &env.tls_host),
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", env.cert_dir.to_str().unwrap()),
            ],
            false,
        );
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        for line in [
            "endpoint:    tcp://127.0.0.1:2376",
            "chosen by:   env DOCKER_HOST",
            "TLS:         on, daemon certificate verified",
            "engine:      Docker ",
            "API version: 1.",
            "(negotiated)",
            "platform:    linux/",
        ] {
            assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
        }
        assert!(stdout.lines().count() <= 8, "{stdout}");
    }
}

/// dockerd 20.10 over ssh:// (the test sshd).
mod docker_ssh {
    use super::*;

    #[test]
    fn text_report_over_ssh() {
        let Some((env, _)) = TestDaemon::setup(Via::Ssh) else {
            return;
        };
        let path = std::env::var("PATH").unwrap_or_default();
        let out = check(&[("DOCKER_HOST", &env.ssh_host), ("PATH", &path)], false);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        for line in [
            format!("endpoint:    {}", env.ssh_host),
            "via:         ssh -l root -p ".to_string(),
            " docker system dial-stdio".to_string(),
            "chosen by:   env DOCKER_HOST".to_string(),
            "TLS:         not used (ssh".to_string(),
            "engine:      Docker ".to_string(),
        ] {
            assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
        }
    }
}

/// dockerd 20.10 found at the default socket.
mod docker_default_socket {
    use super::*;

    #[test]
    fn default_socket_text() {
        let Some((env, setup)) = TestDaemon::setup(Via::Unix) else {
            return;
        };
        if env.docker_host != "unix:///var/run/docker.sock" {
            return; // the default only applies to the standard path
        }
        let cfg = setup.config_dir.path().to_str().unwrap().to_string();
        let out = check(&[("DOCKER_CONFIG", &cfg)], false);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(stdout.contains("chosen by:   default socket"), "{stdout}");
        assert!(stdout.contains("TLS:         off"), "{stdout}");
    }
}

/// Podman 4 through a context made by the real CLI.
mod podman_context {
    use super::*;

    #[test]
    fn json_report_for_a_context_on_podman() {
        let Some((env, setup)) = TestDaemon::setup(Via::Podman) else {
            return;
        };
        setup
            .create_context("pod", &format!("host={}", env.podman_host))
            .expect("docker CLI");
        let cfg = setup.config_dir.path().to_str().unwrap().to_string();
        let out = check(&[("DOCKER_CONFIG", &cfg), ("DOCKER_CONTEXT", "pod")], true);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(v["ok"], true);
        assert_eq!(v["endpoint"], env.podman_host.as_str());
        assert_eq!(v["chosen_by"]["kind"], "context");
        assert_eq!(v["chosen_by"]["context"], "pod");
        assert_eq!(v["tls"]["enabled"], false);
        assert_eq!(v["engine"]["kind"], "podman");
        assert!(v["engine"]["version"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric));
        let api: oz_docker_engine::transport::ApiVersion =
            v["api_version"].as_str().unwrap().parse().unwrap();
        assert!(api >= oz_docker_engine::transport::ApiVersion::MINIMUM);
        assert!(v["platform"].as_str().unwrap().starts_with("linux/"));
    }
}

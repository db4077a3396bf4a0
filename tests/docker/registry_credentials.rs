//! Credential problems, case by case, against the real Docker CLI as the
//! reference: for each broken credential set-up (real helper scripts, real
//! config files), `docker pull` runs first with the same config and PATH,
//! and the worker must do what it did. Where the CLI pulls without
//! credentials, the worker's pull succeeds too and its log warns, naming the
//! helper or file, never a secret. Images come from a registry without
//! authentication started by the test (the distribution registry the test
//! environment installs), and from the htpasswd registry for a private pull.

use oz_test_support as support;

use oz_docker_engine::params::ImageDeleteParams;
use oz_runs_api::model::RunState;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::control_plane::{test_config, TestPlane};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const SECRET: &str = "S3cret-from-helper-never-logged";

/// A distribution registry with no authentication on a free port, for the
/// life of the test.
struct OpenRegistry {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl OpenRegistry {
    fn start() -> Option<OpenRegistry> {
        let binary = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(binary) = binary else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("docker-registry is not installed; run scripts/test-env.sh up");
            }
            eprintln!("skipping: docker-registry is not installed");
            return None;
        };
        let port = support::net::free_port();
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = OpenRegistry {
            child,
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start on {}",
                registry.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    /// Pushes a local image under a fresh tag, then drops the local copy.
    async fn push(&self, source: &str, repo: &str) -> String {
        let d = Engine::Docker.docker().await;
        let target = format!("{}/{repo}", self.address);
        // An empty auth config: this registry wants none.
        support::images::push_only(&d, source, &target, "e30=".into()).await
    }
}

impl Drop for OpenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One broken set-up: a config file, helper scripts, extra environment.
struct Setup {
    name: &'static str,
    config: Option<&'static str>,
    /// (helper name, script body).
    helpers: &'static [(&'static str, &'static str)],
    env: &'static [(&'static str, &'static str)],
    /// Text the worker's warning must contain; `None`: no warning.
    warning: Option<&'static str>,
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "helper binary missing",
        config: Some(r#"{"credsStore": "oz-missing"}"#),
        helpers: &[],
        env: &[],
        warning: Some("docker-credential-oz-missing was not found on PATH"),
    },
    Setup {
        name: "helper exits non-zero",
        config: Some(r#"{"credsStore": "oz-locked"}"#),
        helpers: &[("oz-locked", "echo 'the keychain is locked' >&2; exit 3")],
        env: &[],
        warning: Some("credsStore \"oz-locked\": `docker-credential-oz-locked get` failed"),
    },
    Setup {
        name: "helper says credentials not found",
        config: Some(r#"{"credHelpers": {"REGISTRY": "oz-empty"}}"#),
        helpers: &[("oz-empty", "echo 'credentials not found in native keychain'; exit 1")],
        env: &[],
        warning: None,
    },
    Setup {
        name: "helper prints something that is not JSON",
        config: Some(r#"{"credHelpers": {"REGISTRY": "oz-chatty"}}"#),
        helpers: &[("oz-chatty", "echo 'hello there'")],
        env: &[],
        warning: Some("credential helper \"oz-chatty\": `docker-credential-oz-chatty get` answered with invalid JSON"),
    },
    Setup {
        name: "helper fails after printing credentials",
        config: Some(r#"{"credsStore": "oz-leaky"}"#),
        helpers: &[(
            "oz-leaky",
            r#"printf '{"Username":"u","Secret":"S3cret-from-helper-never-logged"}'; exit 1"#,
        )],
        env: &[],
        warning: Some("withheld"),
    },
    Setup {
        name: "config.json is not JSON",
        config: Some(r#"{"auths": {"#),
        helpers: &[],
        env: &[],
        warning: Some("cannot be read as a Docker config"),
    },
    Setup {
        name: "an auths entry that does not decode",
        config: Some(r#"{"auths": {"REGISTRY": {"auth": "%%%"}}}"#),
        helpers: &[],
        env: &[],
        warning: Some("is invalid: its \"auth\" value is not valid base64"),
    },
    Setup {
        name: "DOCKER_AUTH_CONFIG is malformed",
        config: None,
        helpers: &[],
        env: &[("DOCKER_AUTH_CONFIG", "{not json")],
        warning: Some("DOCKER_AUTH_CONFIG is not what the Docker CLI accepts"),
    },
];

struct Prepared {
    config_dir: tempfile::TempDir,
    helper_dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn prepare(setup: &Setup, registry: &str) -> Prepared {
    let config_dir = tempfile::tempdir().unwrap();
    if let Some(config) = setup.config {
        std::fs::write(
            config_dir.path().join("config.json"),
            config.replace("REGISTRY", registry),
        )
        .unwrap();
    }
    let helper_dir = tempfile::tempdir().unwrap();
    for (name, body) in setup.helpers {
        use std::os::unix::fs::PermissionsExt;
        let path = helper_dir.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut env = vec![
        (
            "DOCKER_CONFIG".to_string(),
            config_dir.path().display().to_string(),
        ),
        (
            "PATH".to_string(),
            format!(
                "{}:{}",
                helper_dir.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
    ];
    env.extend(
        setup
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Prepared {
        config_dir,
        helper_dir,
        env,
    }
}

/// The reference: `docker pull` with the same environment. True when it
/// pulled; the local copy is removed again.
fn docker_cli_pulls(prepared: &Prepared, image: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["pull", "-q", image])
        .envs(prepared.env.iter().cloned())
        .env("DOCKER_HOST", Engine::Docker.host())
        .env_remove("DOCKER_CONTEXT")
        .output()
        .expect("the docker CLI on PATH");
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", image])
        .env("DOCKER_HOST", Engine::Docker.host())
        .env("DOCKER_CONFIG", prepared.config_dir.path())
        .output();
    out.status.success()
}

async fn run_worker(
    plane: &TestPlane,
    prepared: &Prepared,
    image: &str,
    sidecar: &str,
) -> (oz_runs_api::model::Run, String) {
    let id = unique_id("cred");
    let w = WorkerProcess::start(
        plane,
        Engine::Docker,
        WorkerOptions {
            worker_id: &id,
            pull_policy: Some("always"),
            env: prepared.env.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut req = demo_run(&id, &[]);
    req.docker_image = Some(image.into());
    req.sidecar_image = Some(sidecar.into());
    let run = plane.client().create_run(&req).await.unwrap();
    let done = wait_terminal(plane, &run.id, RUN_TIMEOUT).await;
    (done, w.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_docker_pull_goes_anonymous_the_worker_pulls_and_warns() {
    if !Engine::Docker.available() {
        return;
    }
    let Some(registry) = OpenRegistry::start() else {
        return;
    };
    let image = registry.push(BUSYBOX, "oz/busybox").await;
    let sidecar = registry.push(SIDECAR, "oz/agent-sidecar").await;
    let plane = TestPlane::start(test_config()).await;

    let runs = SETUPS.iter().map(|setup| {
        let (plane, registry, image, sidecar) = (&plane, &registry, &image, &sidecar);
        async move {
            let prepared = prepare(setup, &registry.address);
            let cli_pulled = docker_cli_pulls(&prepared, image);
            let (done, log) = run_worker(plane, &prepared, image, sidecar).await;
            (setup, prepared, cli_pulled, done, log)
        }
    });
    for (setup, prepared, cli_pulled, done, log) in futures_util::future::join_all(runs).await {
        let name = setup.name;
        assert!(
            cli_pulled,
            "{name}: the Docker CLI is expected to pull anonymously here"
        );
        assert_eq!(done.state, RunState::Succeeded, "{name}: {done:#?}\n{log}");
        match setup.warning {
            Some(expected) => {
                let line = log
                    .lines()
                    .find(|l| l.contains("pulling without credentials, as docker pull does"))
                    .unwrap_or_else(|| panic!("{name}: no warning in:\n{log}"));
                assert!(line.contains("WARN"), "{name}: not a warning: {line}");
                assert!(
                    line.contains(expected),
                    "{name}: warning lacks {expected:?}: {line}"
                );
            }
            None => assert!(
                !log.contains("pulling without credentials"),
                "{name}: unexpected warning:\n{log}"
            ),
        }
        assert!(
            !log.contains(SECRET),
            "{name}: a secret reached the log:\n{log}"
        );
        drop(prepared.helper_dir);
    }
    // The workers pulled both images from a registry that is gone now.
    let d = Engine::Docker.docker().await;
    for pulled in [&image, &sidecar] {
        let _ = d
            .image_delete(
                pulled,
                &ImageDeleteParams {
                    force: Some(true),
                    ..Default::default()
                },
            )
            .await;
    }
}

/// A private registry and a broken helper: the CLI's anonymous pull is
/// refused, and so is the worker's, with a message that says no credentials
/// were sent and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_pull_with_a_broken_helper_says_why_no_credentials_were_sent() {
    if !Engine::Docker.available() {
        return;
    }
    let root = std::env::var("OZ_TEST_ROOT").unwrap_or_else(|_| "/var/lib/oz-worker-test".into());
    let registry = std::env::var("OZ_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let image = std::env::var("OZ_TEST_REGISTRY_IMAGE_BUSYBOX")
        .unwrap_or_else(|_| format!("{registry}/oz/busybox:1"));
    if std::net::TcpStream::connect(&registry).is_err()
        || !PathBuf::from(format!("{root}/registry/password")).exists()
    {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the test registry is not up at {registry}");
        }
        return;
    }
    let setup = &SETUPS[1]; // helper exits non-zero
    let prepared = prepare(setup, &registry);
    assert!(
        !docker_cli_pulls(&prepared, &image),
        "the CLI cannot pull a private image without credentials"
    );
    let plane = TestPlane::start(test_config()).await;
    let (done, log) = run_worker(&plane, &prepared, &image, SIDECAR).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("image_pull"),
        "{done:#?}"
    );
    let msg = done.message.unwrap_or_default();
    for needle in [
        "wants credentials and none were sent",
        "credsStore \"oz-locked\"",
        "the keychain is locked",
    ] {
        assert!(
            msg.contains(needle),
            "message lacks {needle:?}: {msg}\n{log}"
        );
    }
}

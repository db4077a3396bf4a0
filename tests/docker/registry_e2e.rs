//! Private registry: the worker pulls task and sidecar images from the
//! authenticated test registry with credentials found the way the Docker CLI
//! finds them, and explains pull failures without leaking secrets.

use oz_test_support as support;

use oz_docker_engine::credentials::RegistryAuth;
use oz_docker_engine::params::ImageTagParams;
use oz_runs_api::model::RunState;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Registry {
    address: String,
    user: String,
    password: String,
}

impl Registry {
    fn load() -> Option<Registry> {
        let root =
            std::env::var("OZ_TEST_ROOT").unwrap_or_else(|_| "/var/lib/oz-worker-test".into());
        let password_file = std::env::var("OZ_TEST_REGISTRY_PASSWORD_FILE")
            .unwrap_or_else(|_| format!("{root}/registry/password"));
        let address = std::env::var("OZ_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
        let up = std::net::TcpStream::connect(&address).is_ok();
        match (std::fs::read_to_string(&password_file), up) {
            (Ok(p), true) => Some(Registry {
                address,
                user: std::env::var("OZ_TEST_REGISTRY_USER").unwrap_or_else(|_| "oztest".into()),
                password: p.trim().to_string(),
            }),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("the test registry is not up at {address}; run scripts/test-env.sh up")
            }
            _ => {
                eprintln!("skipping: the test registry is not up (run scripts/test-env.sh up)");
                None
            }
        }
    }

    /// Pushes a local image under a fresh tag and drops the local copy, so
    /// the image exists only in the registry. Returns the reference.
    async fn push_unique(&self, source: &str, repo: &str) -> String {
        let d = Engine::Docker.docker().await;
        let auth = RegistryAuth::with_password(&self.address, &self.user, &self.password);
        let target = format!("{}/{repo}", self.address);
        support::images::push_only(&d, source, &target, auth.header_value()).await
    }

    /// A local-only tag under the registry's name (never pushed).
    async fn local_only(&self, source: &str) -> String {
        let d = Engine::Docker.docker().await;
        let tag = unique_id("local");
        let target = format!("{}/oz/local-only", self.address);
        d.image_tag(
            source,
            &ImageTagParams {
                repo: Some(target.clone()),
                tag: Some(tag.clone()),
            },
        )
        .await
        .unwrap();
        format!("{target}:{tag}")
    }
}

/// A Docker config directory written by the real `docker login`.
fn docker_login(reg: &Registry, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("docker")
        .args([
            "--config",
            dir.path().to_str().unwrap(),
            "login",
            &reg.address,
            "-u",
            &reg.user,
            "--password-stdin",
        ])
        .env("DOCKER_HOST", Engine::Docker.host())
        .env("DOCKER_API_VERSION", "1.41")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker CLI on PATH");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("config.json").exists());
    dir
}

fn write_config(dir: &Path, json: serde_json::Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// A `docker-credential-NAME` script answering with the given credentials.
fn helper_dir(name: &str, user: &str, secret: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join(format!("docker-credential-{name}"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\nread server\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$server\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (dir, path)
}

struct Case {
    plane: TestPlane,
    reg: Registry,
}

impl Case {
    async fn new() -> Option<Case> {
        if !Engine::Docker.available() {
            return None;
        }
        let reg = Registry::load()?;
        Some(Case {
            plane: TestPlane::start(test_config()).await,
            reg,
        })
    }

    async fn run(
        &self,
        policy: &str,
        config_dir: Option<&Path>,
        path: Option<String>,
        image: &str,
        sidecar: &str,
    ) -> (oz_runs_api::model::Run, String) {
        let id = unique_id("reg");
        let mut env = Vec::new();
        if let Some(dir) = config_dir {
            env.push(("DOCKER_CONFIG".to_string(), dir.display().to_string()));
        } else {
            env.push((
                "DOCKER_CONFIG".to_string(),
                "/nonexistent-oz-test-config".to_string(),
            ));
        }
        if let Some(p) = path {
            env.push(("PATH".to_string(), p));
        }
        let w = WorkerProcess::start(
            &self.plane,
            Engine::Docker,
            WorkerOptions {
                worker_id: &id,
                pull_policy: Some(policy),
                env,
                ..Default::default()
            },
        )
        .await;
        let mut req = demo_run(&id, &[]);
        req.docker_image = Some(image.into());
        req.sidecar_image = Some(sidecar.into());
        let run = self.plane.client().create_run(&req).await.unwrap();
        let done = wait_terminal(&self.plane, &run.id, RUN_TIMEOUT).await;
        (done, w.log_text())
    }
}

fn tmp_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_and_sidecar_images_pulled_with_docker_login_credentials() {
    let Some(c) = Case::new().await else { return };
    let image = c.reg.push_unique(BUSYBOX, "oz/busybox").await;
    let sidecar = c.reg.push_unique(SIDECAR, "oz/agent-sidecar").await;
    let config = docker_login(&c.reg, &c.reg.password);
    let (done, log) = c
        .run("always", Some(&tmp_path(&config)), None, &image, &sidecar)
        .await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}\n{log}");
    assert!(
        log.contains("pulling image") && log.contains("auths in"),
        "{log}"
    );
    assert!(
        !log.contains(&c.reg.password),
        "the password never appears in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_helper_wins_over_auths() {
    let Some(c) = Case::new().await else { return };
    let image = c.reg.push_unique(BUSYBOX, "oz/busybox").await;
    let sidecar = c.reg.push_unique(SIDECAR, "oz/agent-sidecar").await;
    let config = tempfile::tempdir().unwrap();
    write_config(
        config.path(),
        serde_json::json!({
            "auths": { &c.reg.address: { "auth": basic(&c.reg.user, "wrong-password-in-auths") } },
            "credHelpers": { &c.reg.address: "oztest" }
        }),
    );
    let (_bin, path) = helper_dir("oztest", &c.reg.user, &c.reg.password);
    let (done, log) = c
        .run("always", Some(config.path()), Some(path), &image, &sidecar)
        .await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}\n{log}");
    assert!(log.contains("credential helper \"oztest\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unauthorized_naming_the_source_not_the_secret() {
    let Some(c) = Case::new().await else { return };
    let image = c.reg.push_unique(BUSYBOX, "oz/busybox").await;
    let wrong = "Wr0ng-Pa55-oz-test";
    let config = tempfile::tempdir().unwrap();
    write_config(
        config.path(),
        serde_json::json!({ "auths": { &c.reg.address: { "auth": basic(&c.reg.user, wrong) } } }),
    );
    let (done, log) = c
        .run("always", Some(config.path()), None, &image, SIDECAR)
        .await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("image_pull"),
        "{done:#?}"
    );
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains("refused the credentials") && msg.contains("auths in"),
        "{msg}"
    );
    for text in [&msg, &log, &format!("{done:?}")] {
        assert!(
            !text.contains(wrong) && !text.contains(&basic(&c.reg.user, wrong)),
            "secret leaked: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_tag_is_not_found() {
    let Some(c) = Case::new().await else { return };
    let config = docker_login(&c.reg, &c.reg.password);
    let image = format!("{}/oz/busybox:{}", c.reg.address, unique_id("absent"));
    let (done, _) = c
        .run("always", Some(&tmp_path(&config)), None, &image, SIDECAR)
        .await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("image_pull"),
        "{done:#?}"
    );
    let msg = done.message.unwrap_or_default();
    assert!(msg.contains("not found") && msg.contains(&image), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_never_fails_at_once_for_an_absent_image() {
    let Some(c) = Case::new().await else { return };
    let image = c.reg.push_unique(BUSYBOX, "oz/busybox").await; // only in the registry
    let config = docker_login(&c.reg, &c.reg.password);
    let (done, _) = c
        .run("never", Some(&tmp_path(&config)), None, &image, SIDECAR)
        .await;
    assert_eq!(done.failure_reason.as_deref(), Some("image_pull"));
    assert!(done
        .message
        .unwrap_or_default()
        .contains("pull policy is \"never\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_if_not_present_uses_the_local_image_without_the_registry() {
    let Some(c) = Case::new().await else { return };
    // Exists locally only: any registry contact would fail (no credentials, no such tag).
    let image = c.reg.local_only(BUSYBOX).await;
    let (done, log) = c.run("if-not-present", None, None, &image, SIDECAR).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}\n{log}");
    assert!(!log.contains("pulling image"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_always_contacts_the_registry_even_when_present() {
    let Some(c) = Case::new().await else { return };
    let image = c.reg.local_only(BUSYBOX).await;
    let config = docker_login(&c.reg, &c.reg.password);
    let (done, log) = c
        .run("always", Some(&tmp_path(&config)), None, &image, SIDECAR)
        .await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("image_pull"),
        "{done:#?}"
    );
    assert!(log.contains("pulling image"));
}

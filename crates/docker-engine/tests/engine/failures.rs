//! Each way of getting the daemon wrong, asserted on what the error says:
//! the kind, the endpoint and how it was chosen, the file or setting to fix
//! (for ssh://, what ssh itself said); the daemon's own refusals against
//! every daemon of the matrix.

use oz_test_support as support;

use oz_docker_engine::error::ErrorKind;
use oz_docker_engine::{Docker, DockerError};
use support::docker::{per_daemon, unavailable, Setup, TestDaemon, TestEnv, Via};

async fn connect_err(setup: &Setup) -> DockerError {
    match Docker::connect(&setup.env).await {
        Ok(d) => panic!("connected to {:?} but expected an error", d.endpoint()),
        Err(e) => e,
    }
}

fn assert_mentions(err: &DockerError, needles: &[&str]) {
    let text = err.to_string();
    for n in needles {
        assert!(text.contains(n), "error does not mention {n:?}:\n{text}");
    }
}

#[tokio::test]
async fn socket_path_that_does_not_exist() {
    let setup = Setup::new().var("DOCKER_HOST", "unix:///nonexistent/oz-test.sock");
    let err = connect_err(&setup).await;
    assert_eq!(err.kind(), &ErrorKind::Connect);
    assert_mentions(
        &err,
        &[
            "cannot connect to the Docker daemon at unix:///nonexistent/oz-test.sock (from env DOCKER_HOST)",
            "No such file or directory",
            "Is the daemon running?",
            "oz-agent-worker check",
        ],
    );
}

#[tokio::test]
async fn unknown_context_in_a_real_store() {
    // A store the real CLI wrote, holding another context.
    let env = TestEnv::load();
    let setup = Setup::new().var("DOCKER_CONTEXT", "no-such-context");
    if setup
        .create_context("present", &Setup::tls_context_spec(&env))
        .is_none()
    {
        return;
    }
    let err = connect_err(&setup).await;
    assert_eq!(err.kind(), &ErrorKind::Config);
    let store = setup.config_dir.path().join("contexts");
    assert_mentions(
        &err,
        &[
            "\"no-such-context\"",
            store.to_str().unwrap(),
            "DOCKER_CONTEXT",
        ],
    );
}

per_daemon!(
    pinned_version_below_the_minimum,
    daemon_message_reaches_the_error
);

async fn pinned_version_below_the_minimum(via: Via) {
    let Some((_, setup)) = TestDaemon::setup(via) else {
        return;
    };
    let setup = setup.var("DOCKER_API_VERSION", "1.40");
    let err = connect_err(&setup).await;
    assert_eq!(err.kind(), &ErrorKind::Version);
    assert_mentions(&err, &["DOCKER_API_VERSION=1.40", "minimum", "1.41"]);
}

/// The daemon's own words reach the error, with the operation and status.
async fn daemon_message_reaches_the_error(via: Via) {
    let Some(d) = TestDaemon::connect(via).await else {
        return;
    };
    let err = d
        .json(
            "ContainerInspect",
            http::Method::GET,
            "/containers/oz-test-does-not-exist/json".into(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(http::StatusCode::NOT_FOUND));
    assert!(err.is_not_found(), "{err}");
    // Podman words it its own way.
    let daemon_says = if via.is_podman() {
        "no container with name or ID \"oz-test-does-not-exist\" found"
    } else {
        "No such container: oz-test-does-not-exist"
    };
    assert_mentions(&err, &["ContainerInspect failed", "404", daemon_says]);
}

#[test]
fn ci_never_skips_silently() {
    // Documented contract of the helper; cheap to pin down.
    if std::env::var("CI").as_deref() == Ok("true") {
        let r = std::panic::catch_unwind(|| unavailable::<()>("probe"));
        assert!(r.is_err());
    }
}

/// dockerd 20.10's TLS port, reached wrongly.
mod docker_tls {
    use super::*;

    /// The TLS port is there (else skip, or fail under CI).
    fn tls_env() -> Option<TestEnv> {
        TestDaemon::setup(Via::TlsEnv).map(|(env, _)| env)
    }

    #[tokio::test]
    async fn wrong_ca() {
        let Some(env) = tls_env() else { return };
        let setup = Setup::new()
            .var("DOCKER_HOST", &env.tls_host)
            .var("DOCKER_TLS_VERIFY", "1")
            .var("DOCKER_CERT_PATH", env.other_ca_dir.to_str().unwrap());
        let err = connect_err(&setup).await;
        assert_eq!(err.kind(), &ErrorKind::Tls);
        let ca = env.other_ca_dir.join("ca.pem");
        assert_mentions(
            &err,
            &[
                "cannot connect to the Docker daemon at tcp://127.0.0.1:2376",
                "from env DOCKER_HOST",
                "not signed by the CA in",
                ca.to_str().unwrap(),
                "DOCKER_CERT_PATH",
            ],
        );
    }

    #[tokio::test]
    async fn missing_client_certificate() {
        let Some(env) = tls_env() else { return };
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(env.cert_dir.join("ca.pem"), dir.path().join("ca.pem")).unwrap();
        let setup = Setup::new()
            .var("DOCKER_HOST", &env.tls_host)
            .var("DOCKER_TLS_VERIFY", "1")
            .var("DOCKER_CERT_PATH", dir.path().to_str().unwrap());
        let err = connect_err(&setup).await;
        assert_eq!(err.kind(), &ErrorKind::Tls);
        assert_mentions(
            &err,
            &[
                "requires a client certificate",
                dir.path().to_str().unwrap(),
                "cert.pem",
                "key.pem",
            ],
        );
    }

    #[tokio::test]
    async fn plain_http_to_the_tls_port() {
        let Some(env) = tls_env() else { return };
        let setup = Setup::new().var("DOCKER_HOST", &env.tls_host);
        let err = connect_err(&setup).await;
        assert_eq!(err.kind(), &ErrorKind::Connect);
        assert_mentions(
            &err,
            &[
                "tcp://127.0.0.1:2376",
                "expects TLS",
                "DOCKER_TLS_VERIFY",
                "DOCKER_CERT_PATH",
            ],
        );
    }
}

/// ssh:// to the test sshd, failing as ssh does.
mod docker_ssh {
    use super::*;

    /// sshd is there (else skip, or fail under CI): the failures below are ssh's
    /// own answers, quoted, not a missing test environment.
    fn ssh_env() -> Option<TestEnv> {
        TestDaemon::setup(Via::Ssh).map(|(env, _)| env)
    }

    #[tokio::test]
    async fn ssh_to_a_closed_port() {
        let Some(_) = ssh_env() else { return };
        let setup = Setup::new().var("DOCKER_HOST", "ssh://root@127.0.0.1:1");
        let err = connect_err(&setup).await;
        assert_eq!(err.kind(), &ErrorKind::Connect, "{err}");
        assert_mentions(
            &err,
            &[
                "cannot connect to the Docker daemon at ssh://root@127.0.0.1:1 (from env DOCKER_HOST)",
                "ssh -l root -p 1 -- 127.0.0.1 docker system dial-stdio",
                "ssh exited with status 255",
                "port 1: Connection refused",
                "Is sshd running",
            ],
        );
    }

    #[tokio::test]
    async fn ssh_host_key_mismatch() {
        // test-env.sh's client config gives this alias a known_hosts holding
        // another key than the server's.
        let Some(_) = ssh_env() else { return };
        let setup = Setup::new().var("DOCKER_HOST", "ssh://root@oz-test-wrong-hostkey");
        let err = connect_err(&setup).await;
        assert_eq!(err.kind(), &ErrorKind::Connect, "{err}");
        assert_mentions(
            &err,
            &[
                "ssh://root@oz-test-wrong-hostkey",
                "REMOTE HOST IDENTIFICATION HAS CHANGED",
                "Host key verification failed.",
                "known_hosts",
            ],
        );
    }

    #[tokio::test]
    async fn ssh_unknown_user() {
        let Some(env) = ssh_env() else { return };
        let url = env.ssh_host.replacen("root@", "oz-no-such-user@", 1);
        let setup = Setup::new().var("DOCKER_HOST", &url);
        let err = connect_err(&setup).await;
        assert_eq!(err.kind(), &ErrorKind::Connect, "{err}");
        assert_mentions(
            &err,
            &[
                &url,
                "Permission denied (publickey)",
                "ssh could not log in",
            ],
        );
    }

    /// Every connection's ssh child is gone once the client is dropped.
    #[tokio::test]
    async fn ssh_children_end_with_the_client() {
        let Some(d) = TestDaemon::connect(Via::Ssh).await else {
            return;
        };
        d.docker.ping().await.expect("ping");
        let ours = || {
            std::process::Command::new("pgrep")
                .args(["-P", &std::process::id().to_string(), "-x", "ssh"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
                .unwrap_or(0)
        };
        assert!(ours() >= 1, "no ssh child while connected");
        drop(d);
        let mut left = ours();
        for _ in 0..100 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            left = ours();
        }
        assert_eq!(left, 0, "ssh children left after the client was dropped");
    }
}

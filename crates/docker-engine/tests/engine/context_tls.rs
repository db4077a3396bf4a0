//! TLS failures on a daemon reached through a context (written by the real
//! Docker CLI) name the context's TLS files and how to replace them, never
//! `DOCKER_CERT_PATH`, which plays no part there.

use oz_test_support as support;

use oz_docker_engine::error::ErrorKind;
use oz_docker_engine::Docker;
use support::docker::{Setup, TestDaemon, Via};

struct Case {
    name: &'static str,
    /// The `--docker` spec, from the test environment's files.
    spec: fn(&support::docker::TestEnv) -> String,
    kind: ErrorKind,
    /// Text the error must contain (besides the context's name).
    mentions: &'static [&'static str],
    /// Whether the message must point into the context's TLS store.
    names_tls_store: bool,
}

#[tokio::test]
async fn tls_errors_on_a_context_name_its_tls_files() {
    // Only to check the TLS port is up (else skip, or fail under CI).
    let Some((env, _)) = TestDaemon::setup(Via::TlsEnv) else {
        return;
    };
    // (A context without a client certificate is not here: dockerd's refusal
    // arrives after the TLS 1.3 handshake and is sometimes reported as a
    // closed connection instead; see the report.)
    let cases = [
        Case {
            name: "oz-wrong-ca",
            spec: |env| {
                format!(
                    "host={},ca={},cert={},key={}",
                    env.tls_host,
                    env.other_ca_dir.join("ca.pem").display(),
                    env.cert_dir.join("cert.pem").display(),
                    env.cert_dir.join("key.pem").display()
                )
            },
            kind: ErrorKind::Tls,
            mentions: &[
                "not signed by the CA in",
                "docker context create oz-wrong-ca",
            ],
            names_tls_store: true,
        },
        Case {
            name: "oz-no-tls",
            spec: |env| format!("host={}", env.tls_host),
            kind: ErrorKind::Connect,
            mentions: &[
                "expects TLS",
                "has no TLS files",
                "docker context create oz-no-tls",
            ],
            names_tls_store: false,
        },
    ];
    for case in cases {
        let setup = Setup::new().var("DOCKER_CONTEXT", case.name);
        setup
            .create_context(case.name, &(case.spec)(&env))
            .expect("docker CLI present (checked by setup)");
        let err = match Docker::connect(&setup.env).await {
            Ok(d) => panic!("{}: connected to {:?}", case.name, d.endpoint()),
            Err(e) => e,
        };
        let text = err.to_string();
        assert_eq!(err.kind(), &case.kind, "{}: {text}", case.name);
        assert!(
            text.contains(&format!("context {}", case.name))
                || text.contains(&format!("context \"{}\"", case.name)),
            "{}: does not name the context:\n{text}",
            case.name
        );
        for needle in case.mentions {
            assert!(
                text.contains(needle),
                "{}: no {needle:?} in:\n{text}",
                case.name
            );
        }
        if case.names_tls_store {
            let store = setup.config_dir.path().join("contexts").join("tls");
            assert!(
                text.contains(store.to_str().unwrap()),
                "{}: does not name the context's TLS files under {}:\n{text}",
                case.name,
                store.display()
            );
        }
        assert!(
            !text.contains("DOCKER_CERT_PATH"),
            "{}: sends the operator to DOCKER_CERT_PATH, which a context does not use:\n{text}",
            case.name
        );
    }
}

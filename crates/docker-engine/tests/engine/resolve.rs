//! Endpoint resolution against context stores written by the real Docker CLI
//! (`docker context create/use` with DOCKER_CONFIG set on the child only).
//! No daemon needed.

use oz_test_support as support;

use oz_docker_engine::transport::{
    resolve_endpoint, ContextSelector, EndpointSource, Host, TlsSettings,
};
use support::docker::{Setup, TestEnv};

#[test]
fn tls_context_uses_the_stores_own_tls_files() {
    let env = TestEnv::load();
    let setup = Setup::new().var("DOCKER_CONTEXT", "remote");
    if setup
        .create_context("remote", &Setup::tls_context_spec(&env))
        .is_none()
    {
        return;
    }
    let ep = resolve_endpoint(&setup.env).unwrap();
    assert_eq!(
        ep.host,
        Host::Tcp {
            host: "127.0.0.1".into(),
            port: 2376
        }
    );
    assert_eq!(
        ep.source,
        EndpointSource::Context {
            name: "remote".into(),
            selected_by: ContextSelector::EnvVar
        }
    );
    // The CLI copies the files into the store; we must use those copies.
    let tls: TlsSettings = ep.tls.unwrap();
    let store = setup.config_dir.path().join("contexts/tls");
    for p in [&tls.ca, &tls.cert, &tls.key] {
        let p = p.as_ref().expect("file present");
        assert!(
            p.starts_with(&store),
            "{} not under {}",
            p.display(),
            store.display()
        );
    }
    assert!(tls.verify);
}

#[test]
fn skip_tls_verify_context() {
    let setup = Setup::new().var("DOCKER_CONTEXT", "insecure");
    if setup
        .create_context("insecure", "host=tcp://127.0.0.1:2376,skip-tls-verify=true")
        .is_none()
    {
        return;
    }
    let tls = resolve_endpoint(&setup.env).unwrap().tls.unwrap();
    assert!(!tls.verify);
}

#[test]
fn plain_tcp_and_unix_contexts() {
    let setup = Setup::new();
    if setup
        .create_context("plain", "host=tcp://127.0.0.1:2375")
        .is_none()
    {
        return;
    }
    setup
        .create_context("sock", "host=unix:///run/podman/podman.sock")
        .unwrap();
    let plain = resolve_endpoint(&setup.env.clone().with_var("DOCKER_CONTEXT", "plain")).unwrap();
    assert!(plain.tls.is_none());
    let sock = resolve_endpoint(&setup.env.clone().with_var("DOCKER_CONTEXT", "sock")).unwrap();
    assert_eq!(sock.host, Host::Unix("/run/podman/podman.sock".into()));
}

#[test]
fn current_context_written_by_docker_context_use() {
    let setup = Setup::new();
    if setup
        .create_context("chosen", "host=unix:///tmp/chosen.sock")
        .is_none()
    {
        return;
    }
    setup.docker_cli(&["context", "use", "chosen"]).unwrap();
    let ep = resolve_endpoint(&setup.env).unwrap();
    assert_eq!(ep.host, Host::Unix("/tmp/chosen.sock".into()));
    let config = setup.config_dir.path().join("config.json");
    assert_eq!(
        ep.source,
        EndpointSource::Context {
            name: "chosen".into(),
            selected_by: ContextSelector::ConfigFile(config)
        }
    );
    // DOCKER_CONTEXT beats currentContext; DOCKER_HOST beats both.
    setup
        .create_context("other", "host=unix:///tmp/other.sock")
        .unwrap();
    let env = setup.env.clone().with_var("DOCKER_CONTEXT", "other");
    assert_eq!(
        resolve_endpoint(&env).unwrap().host,
        Host::Unix("/tmp/other.sock".into())
    );
    let env = env.with_var("DOCKER_HOST", "unix:///tmp/host.sock");
    let ep = resolve_endpoint(&env).unwrap();
    assert_eq!(ep.host, Host::Unix("/tmp/host.sock".into()));
    assert_eq!(ep.source, EndpointSource::Env);
}

#[test]
fn default_context_means_the_environment() {
    let setup = Setup::new()
        .var("DOCKER_CONTEXT", "default")
        .var("XDG_RUNTIME_DIR", "/nonexistent");
    let ep = resolve_endpoint(&setup.env).unwrap();
    assert!(matches!(ep.host, Host::Unix(_)));
    assert!(matches!(ep.source, EndpointSource::Context { ref name, .. } if name == "default"));
}

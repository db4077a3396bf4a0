//! `oz-agent-worker cleanup` against the test dockerd: containers labelled
//! as workers label them, for owners that are dead on this host, alive on
//! this host, on another host, kept on purpose, or with a claimed execution
//! their journal has not reported, plus a container that is not ours. The
//! command removes exactly the ones it may, says why for each, and removes
//! the rest only when told (`--gone-host`, `--kept`, `--force`).

use oz_test_support as support;

use oz_runtime::host::process_start_time;
use oz_runtime::liveness::{this_host, ProcessIdentity};
use oz_runtime_docker::identity::WorkerIdentity;
use std::collections::HashMap;
use std::path::Path;
use support::docker::{TestDaemon, Via};

struct Made {
    name: &'static str,
    id: String,
}

async fn create(d: &TestDaemon, name: &str, labels: HashMap<String, String>) -> String {
    let created = d
        .json(
            "ContainerCreate",
            http::Method::POST,
            format!("/containers/create?name={name}"),
            Some(serde_json::json!({
                "Image": d.env.busybox, "Cmd": ["true"], "Labels": labels,
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    created["Id"].as_str().unwrap().to_string()
}

async fn exists(d: &TestDaemon, id: &str) -> bool {
    d.json(
        "ContainerInspect",
        http::Method::GET,
        format!("/containers/{id}/json"),
        None,
    )
    .await
    .is_ok()
}

fn cleanup(d: &TestDaemon, state: &Path, workers: &[&str], extra: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"));
    cmd.arg("cleanup").arg("--state-dir").arg(state);
    for w in workers {
        cmd.args(["--worker-id", w]);
    }
    let out = cmd
        .args(extra)
        .env("DOCKER_HOST", &d.env.docker_host)
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_API_VERSION")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The line the command printed for `name`.
fn line<'a>(said: &'a str, name: &str) -> &'a str {
    said.lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
        .unwrap_or_else(|| panic!("nothing said about {name}:\n{said}"))
}

#[tokio::test]
async fn cleanup_removes_only_what_provably_dead_workers_left() {
    let Some(d) = TestDaemon::connect(Via::Unix).await else {
        return;
    };
    let tag = format!("{:08x}", fastrand::u32(..));
    let (host, boot) = this_host();
    // A pid that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let me = std::process::id();
    let owner = |worker: &str, host: &str, pid: u32, start: &str| WorkerIdentity {
        worker_id: worker.to_string(),
        process: ProcessIdentity {
            instance: format!("i-{worker}"),
            host: host.to_string(),
            boot: boot.clone(),
            pid,
            pid_start: start.to_string(),
            // Labels as written before liveness sockets: judged by pid alone.
            beacon: String::new(),
            net_namespace: String::new(),
            pid_namespace: String::new(),
        },
    };
    let dead = |w: &str| owner(w, &host, dead_pid, "1");
    let far_host = format!("0000/gone-builder-{tag}");
    let w = |s: &str| format!("cleanup-{s}-{tag}");
    let (w_dead, w_live, w_far, w_pending) = (w("dead"), w("live"), w("far"), w("pending"));

    let state = tempfile::tempdir().unwrap();
    // The pending worker's journal: execution e1 of t1 claimed, never finished.
    let jdir = state.path().join(&w_pending);
    std::fs::create_dir_all(&jdir).unwrap();
    std::fs::write(
        jdir.join("journal-1-dead.jsonl"),
        "{\"op\":\"claimed\",\"task_id\":\"t1\",\"execution_id\":\"e1\",\"at\":1}\n",
    )
    .unwrap();

    let specs: Vec<(&'static str, String, HashMap<String, String>)> = vec![
        (
            "dead",
            format!("oz-c-dead-{tag}"),
            dead(&w_dead).labels("task", Some(("t0", Some("e0")))),
        ),
        (
            "fill",
            format!("oz-c-fill-{tag}"),
            dead(&w_dead).labels("sidecar-fill", None),
        ),
        (
            "live",
            format!("oz-c-live-{tag}"),
            owner(&w_live, &host, me, &process_start_time(me).unwrap())
                .labels("task", Some(("t2", None))),
        ),
        (
            "far",
            format!("oz-c-far-{tag}"),
            owner(&w_far, &far_host, 1, "1").labels("task", Some(("t3", None))),
        ),
        (
            "kept",
            format!("oz-c-dead-{tag}-kept"),
            dead(&w_dead).labels("task", Some(("t4", None))),
        ),
        (
            "pending",
            format!("oz-c-pending-{tag}"),
            dead(&w_pending).labels("task", Some(("t1", Some("e1")))),
        ),
        (
            "foreign",
            format!("oz-c-foreign-{tag}"),
            HashMap::from([("dev.oz.worker-id".to_string(), w_dead.clone())]),
        ),
    ];
    let mut made: Vec<(Made, String)> = Vec::new();
    for (key, name, labels) in specs {
        let id = create(&d, &name, labels).await;
        made.push((Made { name: key, id }, name));
    }
    let id_of = |key: &str| {
        made.iter()
            .find(|(m, _)| m.name == key)
            .map(|(m, _)| m.id.clone())
            .unwrap()
    };
    let name_of = |key: &str| {
        made.iter()
            .find(|(m, _)| m.name == key)
            .map(|(_, n)| n.clone())
            .unwrap()
    };
    let workers = [
        w_dead.as_str(),
        w_live.as_str(),
        w_far.as_str(),
        w_pending.as_str(),
    ];

    // A dry run says what it would do and removes nothing.
    let (ok, said) = cleanup(&d, state.path(), &workers, &["--dry-run"]);
    assert!(ok, "{said}");
    assert!(
        line(&said, &name_of("dead")).starts_with("would remove"),
        "{said}"
    );
    assert!(
        said.contains("2 would be removed, 4 kept, 0 failed"),
        "{said}"
    );
    for (m, _) in &made {
        assert!(exists(&d, &m.id).await, "{} removed by a dry run", m.name);
    }

    let (ok, said) = cleanup(&d, state.path(), &workers, &[]);
    assert!(ok, "{said}");
    for key in ["dead", "fill"] {
        assert!(
            !exists(&d, &id_of(key)).await,
            "{key} is still there:\n{said}"
        );
        assert!(line(&said, &name_of(key)).starts_with("removed"), "{said}");
    }
    assert!(
        line(&said, &name_of("dead")).contains("its process has exited"),
        "{said}"
    );
    for (key, why) in [
        ("live", "is running (pid"),
        ("far", "--gone-host gone-builder-"),
        ("kept", "--kept removes it"),
        ("pending", "start worker"),
    ] {
        assert!(exists(&d, &id_of(key)).await, "{key} was removed:\n{said}");
        let l = line(&said, &name_of(key));
        assert!(l.starts_with("kept") && l.contains(why), "{key}: {l}");
    }
    assert!(
        exists(&d, &id_of("foreign")).await,
        "a container without the managed-by label was removed"
    );
    assert!(!said.contains(&name_of("foreign")), "{said}");

    // Told that the host is gone, to remove kept ones, and to force.
    let far_name = far_host.rsplit_once('/').unwrap().1;
    let (ok, said) = cleanup(
        &d,
        state.path(),
        &workers,
        &["--gone-host", far_name, "--kept", "--force"],
    );
    assert!(ok, "{said}");
    for key in ["far", "kept", "pending"] {
        assert!(
            !exists(&d, &id_of(key)).await,
            "{key} is still there:\n{said}"
        );
    }
    assert!(exists(&d, &id_of("live")).await, "{said}");
    assert!(said.contains("3 removed, 1 kept, 0 failed"), "{said}");

    for key in ["live", "foreign"] {
        d.remove(&id_of(key)).await;
    }
}

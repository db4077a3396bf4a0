//! The test API server against kube-rs, the client the kubernetes runtime
//! uses: typed create (and its 409), the watcher across a restart of the
//! server process and across a 410 Gone after compaction (re-list), logs,
//! and foreground deletion awaited with kube's own condition.

mod support;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{wait, watcher, WatchStreamExt};
use kube::{Api, Client, Config};
use serde_json::json;

async fn client(env: &support::Env) -> Client {
    let kubeconfig = Kubeconfig::read_from(env.server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn job(name: &str, labels: serde_json::Value, script: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "task", "image": support::busybox(), "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]}]}}}
    }))
    .unwrap()
}

fn complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

#[test]
fn kube_rs_watches_a_job_to_completion_across_a_server_restart_and_a_410_relist() {
    // Bookmarks rarely, so the watcher's resourceVersion stays behind a
    // compaction and the 410 path is taken.
    let Some(mut env) = support::start(&["--bookmark-interval-ms", "600000"]) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client(&env).await;
        let version = client.apiserver_version().await.unwrap();
        assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
        let jobs: Api<Job> = Api::default_namespaced(client.clone());
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        let created = jobs.create(&PostParams::default(), &job("kube", json!({"oz-test": "kube"}), "echo one; sleep 8; echo two")).await.unwrap();
        match jobs.create(&PostParams::default(), &job("kube", json!({}), "true")).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 409);
                assert_eq!(s.reason, "AlreadyExists");
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }

        let mut stream = watcher(jobs.clone(), watcher::Config::default().labels("oz-test=kube")).default_backoff().boxed();
        let mut inits = 0;
        let mut errors = 0;
        let mut restarted = false;
        let mut compacted = false;
        let mut done = false;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
        while !done {
            let event = tokio::time::timeout_at(deadline, stream.next()).await.expect("the Job completes within 180 s").expect("the stream goes on");
            let event = match event {
                Ok(e) => e,
                Err(_) => {
                    errors += 1;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => inits += 1,
                watcher::Event::Apply(j) | watcher::Event::InitApply(j) => {
                    let active = j.status.as_ref().and_then(|s| s.active).unwrap_or(0);
                    if active == 1 && !restarted {
                        // Running: the server process dies and comes back.
                        restarted = true;
                        tokio::task::block_in_place(|| env.server.restart().unwrap());
                    } else if restarted && !compacted {
                        // Then the change log is compacted past the
                        // watcher's version and its watch closed: it must
                        // get 410 and re-list.
                        compacted = true;
                        tokio::task::block_in_place(|| {
                            env.admin("compact");
                            let (code, _) = env.request("POST", "/apis/batch/v1/namespaces/default/jobs", Some(&json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "bump"}, "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": support::busybox()}]}}}})));
                            assert_eq!(code, 201);
                            env.admin("compact");
                            env.admin("close-watches");
                        });
                    }
                    done = complete(&j);
                }
                _ => {}
            }
        }
        assert!(restarted && compacted);
        assert!(inits >= 2, "the watcher re-listed after 410 ({inits} Init events, {errors} errors)");

        let list = pods.list(&ListParams::default().labels("job-name=kube")).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let pod = &list.items[0];
        let name = pod.metadata.name.clone().unwrap();
        let logs = pods.logs(&name, &LogParams { container: Some("task".into()), ..LogParams::default() }).await.unwrap();
        assert_eq!(logs, "one\ntwo\n");

        // Foreground deletion, awaited as the runtime will.
        let deleted = jobs.delete("kube", &DeleteParams::foreground()).await.unwrap();
        let marked = deleted.left().expect("the Job is returned while its Pods go");
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(marked.metadata.finalizers, Some(vec!["foregroundDeletion".to_string()]));
        let uid = created.metadata.uid.clone().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(60), wait::await_condition(jobs.clone(), "kube", wait::conditions::is_deleted(&uid)))
            .await
            .expect("the Job is gone within 60 s")
            .unwrap();
        assert!(pods.get_opt(&name).await.unwrap().is_none(), "its Pod went first");
    });
}

#[test]
fn a_server_bound_in_process_answers_kube_rs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server =
            oz_test_apiserver::bind(oz_test_apiserver::Config::new(dir.path().to_path_buf()))
                .await
                .unwrap();
        let kubeconfig = server.kubeconfig.clone();
        tokio::spawn(server.run());
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(kubeconfig).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = Client::try_from(config).unwrap();
        let jobs: Api<Job> = Api::default_namespaced(client);
        assert!(jobs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty());
        let mut suspended = job("quiet", json!({}), "true");
        suspended.spec.as_mut().unwrap().suspend = Some(true);
        let created = jobs
            .create(&PostParams::default(), &suspended)
            .await
            .unwrap();
        assert_eq!(created.spec.unwrap().backoff_limit, Some(0));
        assert_eq!(
            jobs.list(&ListParams::default()).await.unwrap().items.len(),
            1
        );
    });
}

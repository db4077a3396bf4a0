//! The test API server against the real kubectl, curl and dockerd: Jobs
//! that really run, OOM and fail to pull; the protocol's errors (401, 404,
//! 409, 410, 422, strict decoding) as Status objects; selectors; watches
//! with bookmarks, resumption and 410 after compaction; foreground
//! deletion; eviction; a restart of the server process mid-run. Every
//! object read back is checked against the vendored Kubernetes schema.

mod support;

use serde_json::{json, Value};
use support::{job_yaml, pod_of, status, valid};

fn condition<'a>(job: &'a Value, kind: &str) -> Option<&'a Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn events_for(env: &support::Env, name: &str) -> Vec<Value> {
    let list = env.get_json(&[
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
    ]);
    let items = list["items"].as_array().unwrap().clone();
    for e in &items {
        valid(e);
    }
    items
}

fn reasons(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kubectl_runs_a_job_whose_init_and_task_containers_really_run_and_complete() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let yaml = format!(
        "{}      initContainers:\n      - name: setup\n        image: {}\n        imagePullPolicy: IfNotPresent\n        command: [\"sh\", \"-c\", \"echo prepared > /workspace/marker\"]\n        volumeMounts:\n        - {{name: workspace, mountPath: /workspace}}\n      volumes:\n      - name: workspace\n        emptyDir: {{}}\n",
        job_yaml(
            "hello",
            "echo task sees $(cat /workspace/marker) in $POD_NAME $GREETING; echo to-stderr >&2",
            "",
            "        env:\n        - name: POD_NAME\n          valueFrom: {fieldRef: {fieldPath: metadata.name}}\n        - {name: WHO, value: world}\n        - {name: GREETING, value: \"hello $(WHO)\"}\n        volumeMounts:\n        - {name: workspace, mountPath: /workspace}\n",
        ),
        support::busybox()
    );
    assert_eq!(
        env.ok(&["create", "-f", "-"], Some(&yaml)).trim(),
        "job.batch/hello created"
    );
    env.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/hello",
            "--timeout=120s",
        ],
        None,
    );

    let jobs = env.get_json(&["jobs"]);
    let job = &jobs["items"][0];
    valid(job);
    assert_eq!(job["status"]["succeeded"], 1);
    assert_eq!(
        condition(job, "SuccessCriteriaMet").unwrap()["reason"],
        "CompletionsReached"
    );
    assert_eq!(condition(job, "Complete").unwrap()["status"], "True");
    assert!(job["status"]["completionTime"].is_string());

    let pod = pod_of(&env, "hello");
    valid(&pod);
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("hello-") && name.len() == "hello-".len() + 5,
        "{name}"
    );
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["uid"],
        job["metadata"]["uid"]
    );
    assert_eq!(
        pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"],
        job["metadata"]["uid"]
    );
    assert_eq!(pod["status"]["phase"], "Succeeded");
    let init = &pod["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!(init["exitCode"], 0);
    assert_eq!(init["reason"], "Completed");
    let task = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(task["exitCode"], 0);
    assert_eq!(task["reason"], "Completed");
    // A real container ran on the daemon: its ID is Docker's.
    let id = task["containerID"]
        .as_str()
        .unwrap()
        .strip_prefix("docker://")
        .unwrap();
    let inspect = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.State.ExitCode}} {{.Config.Image}}",
            id,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        format!("0 {}", support::busybox())
    );

    let logs = env.ok(&["logs", "job/hello"], None);
    assert!(
        logs.contains(&format!("task sees prepared in {name} hello world")),
        "{logs}"
    );
    assert!(logs.contains("to-stderr"), "{logs}");
    let stamped = env.ok(&["logs", name, "-c", "task", "--timestamps"], None);
    // Every line stamped; in log order, which is the runtime's stamps'
    // order: Docker stamps stdout and stderr lines in separate goroutines,
    // so the stderr line written second may come first.
    assert!(
        stamped
            .lines()
            .all(|l| l.split(' ').next().unwrap().ends_with('Z')),
        "{stamped}"
    );
    assert!(
        stamped.lines().any(|l| l.contains("task sees"))
            && stamped.lines().any(|l| l.contains("to-stderr")),
        "{stamped}"
    );
    let setup = env.kubectl(&["logs", name, "-c", "nope"], None);
    assert!(
        String::from_utf8_lossy(&setup.stderr).contains("container nope is not valid for pod"),
        "{setup:?}"
    );

    let ev = reasons(&events_for(&env, name));
    for r in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(ev.contains(&r.to_string()), "{r} in {ev:?}");
    }
    assert!(reasons(&events_for(&env, "hello")).contains(&"SuccessfulCreate".to_string()));
}

#[test]
fn a_task_past_its_memory_limit_is_oom_killed_and_fails_its_job() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let yaml = job_yaml("oom", "tail /dev/zero", "", "        resources:\n          limits: {memory: 16Mi}\n          requests: {memory: 16Mi}\n");
    env.ok(&["create", "-f", "-"], Some(&yaml));
    env.ok(
        &[
            "wait",
            "--for=condition=failed",
            "job/oom",
            "--timeout=120s",
        ],
        None,
    );
    let job = env.get_json(&["job", "oom"]);
    valid(&job);
    assert_eq!(
        condition(&job, "FailureTarget").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(
        condition(&job, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(job["status"]["failed"], 1);
    let pod = pod_of(&env, "oom");
    valid(&pod);
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    let t = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{pod}");
    assert_eq!(t["exitCode"], 137);
}

#[test]
fn an_image_that_cannot_be_pulled_waits_in_err_image_pull_and_back_off_until_the_deadline() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let yaml = job_yaml("badimage", "true", "  activeDeadlineSeconds: 15\n", "")
        .replace(&support::busybox(), "oz-test/no-such-image:1");
    env.ok(&["create", "-f", "-"], Some(&yaml));
    let pod = pod_of(&env, "badimage");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    env.ok(
        &[
            "wait",
            "--for=jsonpath={.status.containerStatuses[0].state.waiting.reason}=ImagePullBackOff",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
    let pod = env.get_json(&["pod", &name]);
    valid(&pod);
    assert_eq!(pod["status"]["phase"], "Pending");
    let events = events_for(&env, &name);
    assert!(
        events.iter().any(|e| e["reason"] == "Failed"
            && e["type"] == "Warning"
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("Failed to pull image \"oz-test/no-such-image:1\"")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["reason"] == "BackOff"
            && e["message"] == "Back-off pulling image \"oz-test/no-such-image:1\""),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["message"] == "Error: ErrImagePull"
            && e["involvedObject"]["fieldPath"] == "spec.containers{task}"),
        "{events:?}"
    );
    // The deadline fails the Job and deletes its Pod.
    env.ok(
        &[
            "wait",
            "--for=condition=failed",
            "job/badimage",
            "--timeout=120s",
        ],
        None,
    );
    let job = env.get_json(&["job", "badimage"]);
    assert_eq!(
        condition(&job, "Failed").unwrap()["reason"],
        "DeadlineExceeded"
    );
    assert_eq!(
        condition(&job, "Failed").unwrap()["message"],
        "Job was active longer than specified deadline"
    );
    env.ok(
        &[
            "wait",
            "--for=delete",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
    assert!(reasons(&events_for(&env, "badimage")).contains(&"DeadlineExceeded".to_string()));
}

fn suspended_job(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
        "spec": {"suspend": true, "backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "task", "image": support::busybox(), "imagePullPolicy": "IfNotPresent"}]}}}})
}

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

#[test]
fn errors_are_kubernetes_status_objects_with_the_right_codes() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let job = suspended_job("j1", json!({}));
    let (code, created) = env.request("POST", JOBS, Some(&job));
    assert_eq!(code, 201, "{created}");
    valid(&created);
    let (code, body) = env.request("POST", JOBS, Some(&job));
    assert_eq!(code, 409);
    status(&body, 409, "AlreadyExists");
    assert_eq!(body["message"], "jobs.batch \"j1\" already exists");
    assert_eq!(
        body["details"],
        json!({"name": "j1", "group": "batch", "kind": "jobs"})
    );

    // Optimistic concurrency: a PUT with the old resourceVersion loses.
    let mut changed = created.clone();
    changed["metadata"]["labels"] = json!({"a": "1"});
    let (code, updated) = env.request("PUT", &format!("{JOBS}/j1"), Some(&changed));
    assert_eq!(code, 200, "{updated}");
    let old_rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let new_rv: u64 = updated["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(new_rv > old_rv);
    changed["metadata"]["labels"] = json!({"a": "2"});
    let (code, body) = env.request("PUT", &format!("{JOBS}/j1"), Some(&changed));
    status(&body, 409, "Conflict");
    assert_eq!(code, 409);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));
    // The template is immutable.
    let mut template = updated.clone();
    template["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
    let (code, body) = env.request("PUT", &format!("{JOBS}/j1"), Some(&template));
    assert_eq!(code, 422);
    status(&body, 422, "Invalid");

    // Semantic validation: 422 with the field named.
    let mut bad = suspended_job("j2", json!({}));
    bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    let (code, body) = env.request("POST", JOBS, Some(&bad));
    assert_eq!(code, 422);
    status(&body, 422, "Invalid");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.template.spec.restartPolicy"
    );
    assert_eq!(
        body["details"]["causes"][0]["reason"],
        "FieldValueNotSupported"
    );
    let mut bad = suspended_job("Not_A_Name", json!({}));
    bad["metadata"]["labels"] = json!({"bad key!": "x"});
    let (code, body) = env.request("POST", JOBS, Some(&bad));
    assert_eq!(code, 422, "{body}");
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["metadata.name", "metadata.labels"], "{body}");
    let mut bad = suspended_job("j3", json!({}));
    bad["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let (code, body) = env.request("POST", JOBS, Some(&bad));
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.template.spec.containers[0].name"
    );
    assert_eq!(body["details"]["causes"][0]["reason"], "FieldValueRequired");

    // Strict field validation: an unknown field is refused, never dropped.
    let mut bad = suspended_job("j4", json!({}));
    bad["spec"]["bakoffLimit"] = json!(0);
    let (code, body) = env.request("POST", JOBS, Some(&bad));
    assert_eq!(code, 400);
    status(&body, 400, "BadRequest");
    assert_eq!(
        body["message"],
        "strict decoding error: unknown field \"spec.bakoffLimit\""
    );
    let out = env.kubectl(
        &["create", "-f", "-"],
        Some(&serde_json::to_string(&bad).unwrap()),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"spec.bakoffLimit\""),
        "{out:?}"
    );

    // Injected overload: the next two requests get 429 with Retry-After,
    // then service resumes.
    env.admin("fail-next?count=2&code=429");
    for _ in 0..2 {
        let (code, body) = env.request("GET", JOBS, None);
        assert_eq!(code, 429);
        status(&body, 429, "TooManyRequests");
        assert_eq!(body["details"]["retryAfterSeconds"], 1);
    }
    assert_eq!(env.request("GET", JOBS, None).0, 200);

    let (code, body) = env.request("GET", &format!("{JOBS}/missing"), None);
    assert_eq!(code, 404);
    status(&body, 404, "NotFound");
    assert_eq!(body["message"], "jobs.batch \"missing\" not found");
    let (code, text) = env.curl("GET", JOBS, None, "", false);
    assert_eq!(code, 401);
    status(&serde_json::from_str(&text).unwrap(), 401, "Unauthorized");
    let (code, body) = env.request("GET", &format!("{JOBS}?labelSelector=a%20in%20()"), None);
    assert_eq!(code, 400);
    status(&body, 400, "BadRequest");
    let (code, body) = env.request("GET", &format!("{JOBS}?fieldSelector=spec.foo%3D1"), None);
    assert_eq!(code, 400);
    assert_eq!(body["message"], "field label not supported: spec.foo");
}

#[test]
fn label_and_field_selectors_filter_lists_as_kubernetes_does() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    for (name, labels) in [
        ("a", json!({"tier": "task", "team": "x"})),
        ("b", json!({"tier": "task"})),
        ("c", json!({"tier": "preflight", "team": "y"})),
    ] {
        let (code, body) = env.request("POST", JOBS, Some(&suspended_job(name, labels)));
        assert_eq!(code, 201, "{body}");
    }
    let names = |selector: &str| -> Vec<String> {
        let list = env.get_json(&["jobs", "-l", selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("tier=task"), ["a", "b"]);
    assert_eq!(names("tier!=task"), ["c"]);
    assert_eq!(names("team in (x,y)"), ["a", "c"]);
    assert_eq!(names("team notin (x)"), ["b", "c"]);
    assert_eq!(names("team"), ["a", "c"]);
    assert_eq!(names("!team"), ["b"]);
    assert_eq!(names("tier=task,team"), ["a"]);
    let list = env.get_json(&["jobs", "--field-selector", "metadata.name=b"]);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Paging: limit and continue.
    let (code, page) = env.request("GET", &format!("{JOBS}?limit=2"), None);
    assert_eq!(code, 200);
    valid(&page);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(
        page["items"][0].get("kind").is_none(),
        "list items carry no TypeMeta"
    );
    let token = page["metadata"]["continue"].as_str().unwrap();
    let (_, rest) = env.request("GET", &format!("{JOBS}?limit=2&continue={token}"), None);
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["metadata"]["name"], "c");
}

#[test]
fn watches_replay_from_a_resource_version_with_bookmarks_and_get_410_after_compaction() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let (_, first) = env.request(
        "POST",
        JOBS,
        Some(&suspended_job("w1", json!({"w": "yes"}))),
    );
    let start = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut labelled = first.clone();
    labelled["metadata"]["labels"] = json!({"w": "no"});
    let (code, _) = env.request("PUT", &format!("{JOBS}/w1"), Some(&labelled));
    assert_eq!(code, 200);
    env.request(
        "POST",
        JOBS,
        Some(&suspended_job("w2", json!({"w": "yes"}))),
    );
    let (code, _) = env.request("DELETE", &format!("{JOBS}/w2"), Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})));
    assert_eq!(code, 200);

    let events = env.watch_lines(&format!(
        "{JOBS}?watch=1&resourceVersion={start}&allowWatchBookmarks=true&timeoutSeconds=1"
    ));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|t| *t != "BOOKMARK")
        .collect();
    assert_eq!(kinds, ["MODIFIED", "ADDED", "DELETED"]);
    let mut last = start.parse::<u64>().unwrap();
    for e in &events {
        // A watch event on the wire has no TypeMeta of its own.
        if let Err(err) =
            oz_test_apiserver::schema::Schemas::global().validate_as("v1", "WatchEvent", e)
        {
            panic!("{err}: {e}");
        }
        if e["type"] != "BOOKMARK" {
            valid(&e["object"]);
        }
        let rv: u64 = e["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv >= last, "resourceVersions only grow");
        last = rv;
    }
    assert!(
        events.iter().any(|e| e["type"] == "BOOKMARK"),
        "bookmarks were asked for"
    );
    let bookmark = events.iter().find(|e| e["type"] == "BOOKMARK").unwrap();
    assert_eq!(bookmark["object"]["kind"], "Job");
    valid(&bookmark["object"]);

    // A label-filtered watch sees w1 leave its selector as DELETED.
    let filtered = env.watch_lines(&format!(
        "{JOBS}?watch=1&resourceVersion={start}&labelSelector=w%3Dyes&timeoutSeconds=1"
    ));
    let kinds: Vec<(&str, &str)> = filtered
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("DELETED", "w1"), ("ADDED", "w2"), ("DELETED", "w2")]
    );

    // Compaction: the old resourceVersion is gone.
    env.admin("compact");
    let gone = env.watch_lines(&format!("{JOBS}?watch=1&resourceVersion={start}"));
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["type"], "ERROR");
    status(&gone[0]["object"], 410, "Expired");
    assert!(gone[0]["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with(&format!("too old resource version: {start} (")));
    // A watch from now works; a list gives the current resourceVersion.
    let (_, list) = env.request("GET", JOBS, None);
    let now = list["metadata"]["resourceVersion"].as_str().unwrap();
    assert!(now.parse::<u64>().unwrap() >= last);
    let fresh = env.watch_lines(&format!(
        "{JOBS}?watch=1&resourceVersion={now}&timeoutSeconds=1"
    ));
    assert!(fresh.iter().all(|e| e["type"] != "ERROR"), "{fresh:?}");
}

#[test]
fn kubectl_delete_cascade_foreground_removes_the_pod_before_the_job() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let yaml = job_yaml(
        "fg",
        "trap 'echo got TERM; exit 143' TERM; echo running; while true; do sleep 1; done",
        "",
        "        lifecycle:\n          preStop:\n            exec:\n              command: [\"sh\", \"-c\", \"echo prestop > /proc/1/fd/1\"]\n",
    );
    env.ok(&["create", "-f", "-"], Some(&yaml));
    let pod = pod_of(&env, "fg");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    env.ok(
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Running",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
    let (_, list) = env.request("GET", JOBS, None);
    let before = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.ok(
        &[
            "delete",
            "job",
            "fg",
            "--cascade=foreground",
            "--timeout=120s",
        ],
        None,
    );
    assert!(out.contains("job.batch \"fg\" deleted"), "{out}");
    let jobs = env.watch_lines(&format!(
        "{JOBS}?watch=1&resourceVersion={before}&timeoutSeconds=1"
    ));
    let pods = env.watch_lines(&format!(
        "/api/v1/namespaces/default/pods?watch=1&resourceVersion={before}&timeoutSeconds=1"
    ));
    let marked = jobs
        .iter()
        .find(|e| e["object"]["metadata"]["deletionTimestamp"].is_string())
        .expect("the Job was marked first");
    assert_eq!(marked["type"], "MODIFIED");
    assert_eq!(
        marked["object"]["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    let job_gone: u64 = jobs.iter().find(|e| e["type"] == "DELETED").unwrap()["object"]["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pod_gone: u64 = pods.iter().find(|e| e["type"] == "DELETED").unwrap()["object"]["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pod_gone < job_gone, "the Pod went before the Job");
    // The Pod was stopped gracefully: preStop, then SIGTERM (exit 143).
    let last_pod = &pods.iter().find(|e| e["type"] == "DELETED").unwrap()["object"];
    let t = &last_pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 143, "{last_pod}");
    let ev = reasons(&events_for(&env, &name));
    assert!(ev.contains(&"Killing".to_string()), "{ev:?}");
    assert!(!ev.contains(&"FailedPreStopHook".to_string()), "{ev:?}");
}

#[test]
fn an_evicted_pod_fails_and_its_job_fails() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    env.ok(
        &["create", "-f", "-"],
        Some(&job_yaml("ev", "sleep 300", "", "")),
    );
    let pod = pod_of(&env, "ev");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    env.ok(
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Running",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
    env.admin(&format!("evict?namespace=default&name={name}"));
    env.ok(
        &["wait", "--for=condition=failed", "job/ev", "--timeout=120s"],
        None,
    );
    let pod = env.get_json(&["pod", &name]);
    valid(&pod);
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(pod["status"]["reason"], "Evicted");
    assert!(pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "TerminationByKubelet"));
    let events = events_for(&env, &name);
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "Evicted" && e["type"] == "Warning"),
        "{events:?}"
    );
    let job = env.get_json(&["job", "ev"]);
    assert_eq!(
        condition(&job, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
}

#[test]
fn a_restarted_server_keeps_its_objects_and_resource_versions_and_readopts_running_containers() {
    let Some(mut env) = support::start(&[]) else {
        return;
    };
    env.ok(
        &["create", "-f", "-"],
        Some(&job_yaml(
            "survivor",
            "echo before; sleep 4; echo after",
            "",
            "",
        )),
    );
    let pod = pod_of(&env, "survivor");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    env.ok(
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Running",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
    let running = env.get_json(&["pod", &name]);
    let id = running["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, list) = env.request("GET", JOBS, None);
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    env.server.restart().expect("restart");
    // Same objects, same resourceVersion, and a watch from before the
    // restart resumes without 410.
    let (_, again) = env.request("GET", JOBS, None);
    assert!(
        again["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv.parse::<u64>().unwrap()
    );
    let resumed = env.watch_lines(&format!(
        "/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=1"
    ));
    assert!(resumed.iter().all(|e| e["type"] != "ERROR"), "{resumed:?}");
    env.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/survivor",
            "--timeout=120s",
        ],
        None,
    );
    let done = env.get_json(&["pod", &name]);
    valid(&done);
    let t = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 0);
    assert_eq!(
        t["containerID"], id,
        "the same container, adopted, not a new one"
    );
    let logs = env.ok(&["logs", &name], None);
    assert_eq!(logs, "before\nafter\n");
}

#[test]
fn kubectl_logs_follow_streams_until_the_container_exits() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    env.ok(
        &["create", "-f", "-"],
        Some(&job_yaml(
            "follow",
            "for i in 1 2 3; do echo line $i; sleep 1; done",
            "",
            "",
        )),
    );
    let pod = pod_of(&env, "follow");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    env.ok(
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Running",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
    // Returns only when the stream ends, i.e. when the container exited.
    let out = env.ok(&["logs", "-f", &name], None);
    assert_eq!(out, "line 1\nline 2\nline 3\n");
    env.ok(
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
}

#[test]
fn a_finished_job_is_deleted_after_its_ttl_with_its_pod() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    env.ok(
        &["create", "-f", "-"],
        Some(&job_yaml(
            "ttl",
            "true",
            "  ttlSecondsAfterFinished: 2\n",
            "",
        )),
    );
    let pod = pod_of(&env, "ttl");
    env.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/ttl",
            "--timeout=120s",
        ],
        None,
    );
    env.ok(&["wait", "--for=delete", "job/ttl", "--timeout=120s"], None);
    env.ok(
        &[
            "wait",
            "--for=delete",
            &format!("pod/{}", pod["metadata"]["name"].as_str().unwrap()),
            "--timeout=120s",
        ],
        None,
    );
}

#[test]
fn orphan_and_background_propagation_as_the_garbage_collector_does() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    for name in ["orphan", "background", "default"] {
        env.ok(
            &["create", "-f", "-"],
            Some(&job_yaml(name, "sleep 300", "", "")),
        );
    }
    let orphan = pod_of(&env, "orphan");
    let background = pod_of(&env, "background");
    let default = pod_of(&env, "default");
    // Orphan: the Job goes, its Pod stays and loses its ownerReference.
    let (code, body) = env.request(
        "DELETE",
        &format!("{JOBS}/orphan"),
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"})),
    );
    assert_eq!(code, 200, "{body}");
    valid(&body);
    env.ok(
        &["wait", "--for=delete", "job/orphan", "--timeout=120s"],
        None,
    );
    let name = orphan["metadata"]["name"].as_str().unwrap();
    let kept = env.get_json(&["pod", name]);
    assert!(kept["metadata"]["ownerReferences"].is_null(), "{kept}");
    assert!(kept["metadata"]["deletionTimestamp"].is_null());
    // No body at all: batch/v1 Jobs default to orphaning too.
    let (code, _) = env.request("DELETE", &format!("{JOBS}/default"), None);
    assert_eq!(code, 200);
    env.ok(
        &["wait", "--for=delete", "job/default", "--timeout=120s"],
        None,
    );
    assert!(
        env.get_json(&["pod", default["metadata"]["name"].as_str().unwrap()])["metadata"]
            ["ownerReferences"]
            .is_null()
    );
    // Background: the Job goes at once, the collector deletes its Pod.
    let (code, body) = env.request("DELETE", &format!("{JOBS}/background"), Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})));
    assert_eq!(code, 200, "{body}");
    let (code, _) = env.request("GET", &format!("{JOBS}/background"), None);
    assert_eq!(code, 404, "gone at once");
    env.ok(
        &[
            "wait",
            "--for=delete",
            &format!("pod/{}", background["metadata"]["name"].as_str().unwrap()),
            "--timeout=120s",
        ],
        None,
    );
    // A bare Pod deleted with a zero grace period: SIGKILL, gone.
    let (code, body) = env.request(
        "DELETE",
        &format!("/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    env.ok(
        &[
            "wait",
            "--for=delete",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
    let (code, body) = env.request(
        "DELETE",
        &format!("/api/v1/namespaces/default/pods/{name}"),
        None,
    );
    assert_eq!(code, 404);
    status(&body, 404, "NotFound");
}

/// Waits (polling the API, 60 s at most) for an event about `name`.
fn wait_event(env: &support::Env, name: &str, reason: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let list = env.get_json(&[
            "events",
            "--field-selector",
            &format!("involvedObject.name={name},reason={reason}"),
        ]);
        if let Some(e) = list["items"].as_array().and_then(|i| i.first()) {
            valid(e);
            return e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {reason} event for {name} within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn an_unschedulable_pod_and_a_missing_configmap_volume_stay_pending_with_the_schedulers_and_kubelets_reasons(
) {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let selector = job_yaml("nofit", "true", "", "").replace(
        "      restartPolicy: Never\n",
        "      restartPolicy: Never\n      nodeSelector:\n        disktype: ssd\n",
    );
    env.ok(&["create", "-f", "-"], Some(&selector));
    let pod = pod_of(&env, "nofit");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let event = wait_event(&env, &name, "FailedScheduling");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["source"]["component"], "default-scheduler");
    assert!(
        event["message"].as_str().unwrap().starts_with(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        ),
        "{event}"
    );
    let pod = env.get_json(&["pod", &name]);
    valid(&pod);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(pod["spec"]["nodeName"].is_null());
    assert_eq!(pod["status"]["conditions"][0]["type"], "PodScheduled");
    assert_eq!(pod["status"]["conditions"][0]["status"], "False");
    assert_eq!(pod["status"]["conditions"][0]["reason"], "Unschedulable");

    let mount = format!(
        "{}        volumeMounts:\n        - {{name: cfg, mountPath: /cfg}}\n      volumes:\n      - name: cfg\n        configMap: {{name: settings}}\n",
        job_yaml("nomount", "true", "", "")
    );
    env.ok(&["create", "-f", "-"], Some(&mount));
    let pod = pod_of(&env, "nomount");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let event = wait_event(&env, &name, "FailedMount");
    assert_eq!(
        event["message"],
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"settings\" not found"
    );
    let pod = env.get_json(&["pod", &name]);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    // Both go when their Jobs are deleted.
    env.ok(
        &[
            "delete",
            "job",
            "nofit",
            "nomount",
            "--cascade=foreground",
            "--timeout=120s",
        ],
        None,
    );
    assert_eq!(env.get_json(&["pods"])["items"], json!([]));
}

#[test]
fn the_deploy_role_allows_exactly_what_it_grants() {
    let role = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kubernetes/base/role.yaml"
    );
    let Some(env) = support::start(&["--rbac-role", role, "--rbac-namespace", "default"]) else {
        return;
    };
    // Everything the runtime does: create, get, list, watch, patch (a
    // takeover's claim) and delete Jobs; get, list and watch Pods; read
    // their logs; list Events.
    env.ok(
        &["create", "-f", "-"],
        Some(&job_yaml("rbac", "echo allowed", "", "")),
    );
    env.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/rbac",
            "--timeout=120s",
        ],
        None,
    );
    assert_eq!(env.ok(&["logs", "job/rbac"], None), "allowed\n");
    env.ok(&["get", "pods,events"], None);
    let (code, _) = env.request(
        "GET",
        "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1",
        None,
    );
    assert_eq!(code, 200);

    env.ok(&["label", "job", "rbac", "x=y"], None);
    // And nothing else.
    let pods = env.get_json(&["pods"]);
    let pod_name = pods["items"][0]["metadata"]["name"].as_str().unwrap();
    let out = env.kubectl(&["label", "pod", pod_name, "x=y"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("Error from server (Forbidden): pods \"{pod_name}\" is forbidden: User \"system:serviceaccount:default:oz-agent-worker\" cannot patch resource \"pods\" in API group \"\" in the namespace \"default\"")
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": support::busybox()}]}});
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/namespaces/default/pods".to_string(),
            Some(&pod),
        ),
        (
            "GET",
            "/api/v1/namespaces/default/events?watch=1".to_string(),
            None,
        ),
        (
            "GET",
            "/apis/batch/v1/namespaces/other/jobs".to_string(),
            None,
        ),
        ("GET", "/apis/batch/v1/jobs".to_string(), None),
        (
            "DELETE",
            "/api/v1/namespaces/default/pods/p".to_string(),
            None,
        ),
        (
            "PUT",
            "/apis/batch/v1/namespaces/default/jobs/rbac/status".to_string(),
            Some(&pod),
        ),
    ] {
        let (code, body) = env.request(method, &path, body);
        assert_eq!(code, 403, "{method} {path}: {body}");
        status(&body, 403, "Forbidden");
    }
    env.ok(
        &[
            "delete",
            "job",
            "rbac",
            "--cascade=foreground",
            "--timeout=120s",
        ],
        None,
    );
}

#[test]
fn a_native_sidecar_runs_beside_the_task_and_is_stopped_after_it() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    let yaml = format!(
        "{}      initContainers:\n      - name: sidecar\n        image: {}\n        imagePullPolicy: IfNotPresent\n        restartPolicy: Always\n        command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
        job_yaml("sidecar", "echo task done", "", ""),
        support::busybox()
    );
    env.ok(&["create", "-f", "-"], Some(&yaml));
    env.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/sidecar",
            "--timeout=120s",
        ],
        None,
    );
    let pod = pod_of(&env, "sidecar");
    valid(&pod);
    assert_eq!(pod["status"]["phase"], "Succeeded");
    let side = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(side["name"], "sidecar");
    assert!(
        side["state"]["terminated"].is_object(),
        "stopped after the task: {side}"
    );
    assert!(
        reasons(&events_for(&env, pod["metadata"]["name"].as_str().unwrap()))
            .contains(&"Killing".to_string())
    );
}

/// `timestamps` and `sinceTime` as the kubelet serves them: RFC 3339 times
/// with nanoseconds before each line, and `sinceTime` keeps the lines
/// logged at or after it (what a follower resuming after a break asks
/// for); `kubectl logs --since-time` (second precision) agrees; bad options
/// are refused as the API server refuses them.
#[test]
fn logs_with_timestamps_and_since_time_return_the_lines_from_that_instant() {
    let Some(env) = support::start(&[]) else {
        return;
    };
    env.ok(
        &["create", "-f", "-"],
        Some(&job_yaml(
            "stamped",
            "echo one; sleep 2; echo two; echo three >&2; sleep 2; echo four",
            "",
            "",
        )),
    );
    let pod = pod_of(&env, "stamped");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    env.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/stamped",
            "--timeout=120s",
        ],
        None,
    );
    let path = format!("/api/v1/namespaces/default/pods/{name}/log");
    let (code, all) = env.curl("GET", &format!("{path}?timestamps=true"), None, "", true);
    assert_eq!(code, 200, "{all}");
    let stamped: Vec<(String, String)> = all
        .lines()
        .map(|l| {
            let (t, text) = l.split_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            assert!(
                chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.contains('.'),
                "an RFC 3339 time with fractional seconds: {t:?}"
            );
            (t.to_string(), text.to_string())
        })
        .collect();
    let texts: Vec<&str> = stamped.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.len(), 4, "{all}");
    assert_eq!(texts[0], "one");
    assert_eq!(texts[3], "four");

    // From the instant of the earlier of "two" and "three" (stdout and
    // stderr are stamped by two copiers, so either may come first), with
    // nanoseconds: those lines and the later ones.
    let t_two = stamped
        .iter()
        .filter(|(_, t)| t == "two" || t == "three")
        .map(|(at, _)| at)
        .min()
        .unwrap();
    let (code, since) = env.curl(
        "GET",
        &format!("{path}?sinceTime={}", t_two.replace(':', "%3A")),
        None,
        "",
        true,
    );
    assert_eq!(code, 200, "{since}");
    let mut lines: Vec<&str> = since.lines().collect();
    lines.sort();
    assert_eq!(lines, ["four", "three", "two"], "{since}");

    // kubectl sends the second of "four": the lines before it were logged
    // two seconds earlier, so they are left out.
    let (t_four, _) = stamped.iter().find(|(_, t)| t == "four").unwrap();
    let second = format!("{}Z", &t_four[..19]);
    let out = env.ok(&["logs", &name, "--since-time", &second], None);
    assert_eq!(out, "four\n");

    let (code, body) = env.request("GET", &format!("{path}?sinceTime=yesterday"), None);
    assert_eq!(code, 400, "{body}");
    status(&body, 400, "BadRequest");
    assert!(
        body["message"].as_str().unwrap().contains("yesterday"),
        "{body}"
    );
    let (code, body) = env.request(
        "GET",
        &format!(
            "{path}?sinceSeconds=5&sinceTime={}",
            second.replace(':', "%3A")
        ),
        None,
    );
    assert_eq!(code, 422, "{body}");
    status(&body, 422, "Invalid");
    assert_eq!(body["details"]["kind"], "PodLogOptions", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("at most one of `sinceTime` or `sinceSeconds` may be specified"),
        "{body}"
    );
    let (code, body) = env.request("GET", &format!("{path}?sinceSeconds=0"), None);
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"], "sinceSeconds",
        "{body}"
    );
}

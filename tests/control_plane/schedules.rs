//! Schedules: create, list, pause, resume and delete them through the API
//! and the CLI, team by team; each slot creates one run that records its
//! schedule and slot; and "once, even across restarts": the real `serve`
//! is SIGKILLed right around a due slot of a per-second schedule and
//! started again, with missed slots run once or skipped as configured.

use oz_test_support as support;

use chrono::{DateTime, Utc};
use oz_runs_api::client::Client;
use oz_runs_api::model::{CreateRunRequest, CreateScheduleRequest, MissedSlots, Run};
use std::time::Duration;
use support::control_plane::{create_key_with_cli, test_config, ServeProcess, TestPlane};

fn every_second(host: &str, missed: MissedSlots) -> CreateScheduleRequest {
    CreateScheduleRequest {
        name: None,
        cron: "* * * * * *".into(),
        time_zone: None,
        missed,
        run: CreateRunRequest {
            worker_host: host.into(),
            title: Some("tick".into()),
            env_vars: [("TOKEN".to_string(), "s3cret-value".into())].into(),
            ..Default::default()
        },
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The schedule's runs, by slot.
async fn runs_of(client: &Client, schedule: &str, host: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = client
        .list_runs(None, Some(host))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.schedule_id.as_deref() == Some(schedule))
        .collect();
    runs.sort_by(|a, b| a.scheduled_for.cmp(&b.scheduled_for));
    runs
}

/// Polls until `schedule` has a run whose slot satisfies `pred`.
async fn wait_for_run(
    client: &Client,
    schedule: &str,
    host: &str,
    what: &str,
    pred: impl Fn(DateTime<Utc>) -> bool,
) -> Vec<Run> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let runs = runs_of(client, schedule, host).await;
        if runs
            .iter()
            .any(|r| pred(at(r.scheduled_for.as_deref().unwrap())))
        {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "schedule {schedule} never created a run {what}; runs: {:?}",
            runs.iter().map(|r| &r.scheduled_for).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn slots(runs: &[Run]) -> Vec<DateTime<Utc>> {
    runs.iter()
        .map(|r| at(r.scheduled_for.as_deref().unwrap()))
        .collect()
}

fn assert_one_run_per_slot(runs: &[Run]) {
    let s = slots(runs);
    let mut unique = s.clone();
    unique.dedup();
    assert_eq!(s, unique, "a slot has two runs");
}

#[tokio::test]
async fn schedules_are_created_listed_paused_resumed_and_deleted_per_team() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut req = every_second("w1", MissedSlots::RunOnce);
    req.cron = "30 9 * * MON-FRI".into();
    req.time_zone = Some("Europe/Berlin".into());
    req.name = Some("weekday mornings".into());
    let s = client.create_schedule(&req).await.unwrap();
    assert!(s.id.starts_with("sch_"), "{s:?}");
    assert_eq!(
        (s.name.as_str(), s.time_zone.as_str(), s.missed, s.paused),
        (
            "weekday mornings",
            "Europe/Berlin",
            MissedSlots::RunOnce,
            false
        )
    );
    // The run's secrets are never shown, only their names.
    assert_eq!(s.run.env_var_names, ["TOKEN"]);
    let shown = serde_json::to_string(&client.get_schedule(&s.id).await.unwrap()).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    // 09:30 in Berlin is 07:30 or 08:30 UTC, on a weekday.
    let next = at(s.next_slot_at.as_deref().unwrap());
    assert!(next > Utc::now());
    assert!(
        matches!(next.format("%H:%M").to_string().as_str(), "07:30" | "08:30"),
        "{next}"
    );

    let paused = client.pause_schedule(&s.id).await.unwrap();
    assert!(paused.paused && paused.next_slot_at.is_none());
    let resumed = client.resume_schedule(&s.id).await.unwrap();
    assert!(!resumed.paused && resumed.next_slot_at.is_some());
    assert_eq!(client.list_schedules().await.unwrap().len(), 1);

    // Another team sees none of it and can change none of it.
    let beta = t.plane.create_api_key("beta").unwrap();
    let theirs = Client::new(&t.plane.url(), &beta.secret).unwrap();
    assert!(theirs.list_schedules().await.unwrap().is_empty());
    for e in [
        theirs.get_schedule(&s.id).await.unwrap_err(),
        theirs.pause_schedule(&s.id).await.unwrap_err(),
        theirs.delete_schedule(&s.id).await.unwrap_err(),
    ] {
        assert_eq!(e.status(), Some(404), "{e}");
    }

    let deleted = client.delete_schedule(&s.id).await.unwrap();
    assert_eq!(deleted.id, s.id);
    assert!(client.list_schedules().await.unwrap().is_empty());
    assert_eq!(
        client.get_schedule(&s.id).await.unwrap_err().status(),
        Some(404)
    );
}

#[tokio::test]
async fn bad_schedules_are_refused_with_what_to_fix() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let mut req = every_second("w1", MissedSlots::Skip);
    req.cron = "every five minutes".into();
    let e = client.create_schedule(&req).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(
        e.to_string().contains("invalid cron expression") && e.to_string().contains("*/15 * * * *"),
        "{e}"
    );
    let mut req = every_second("w1", MissedSlots::Skip);
    req.time_zone = Some("Europe/Atlantis".into());
    let e = client.create_schedule(&req).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown time zone \"Europe/Atlantis\""),
        "{e}"
    );
    let req = every_second("warp-reserved", MissedSlots::Skip);
    let e = client.create_schedule(&req).await.unwrap_err();
    assert!(e.to_string().starts_with("run: worker_host"), "{e}");
    assert!(client.list_schedules().await.unwrap().is_empty());
}

#[tokio::test]
async fn each_slot_creates_one_run_that_records_its_schedule_and_pausing_stops_them() {
    let t = TestPlane::start(test_config()).await;
    let client = t.client();
    let s = client
        .create_schedule(&every_second("w1", MissedSlots::Skip))
        .await
        .unwrap();
    let created = at(&s.created_at);
    let runs = wait_for_run(&client, &s.id, "w1", "two slots in", |slot| {
        slot >= created + chrono::Duration::seconds(2)
    })
    .await;
    assert_one_run_per_slot(&runs);
    let s2 = slots(&runs);
    // Consecutive seconds, all after the schedule was created.
    assert!(s2[0] > created, "{s2:?}");
    for w in s2.windows(2) {
        assert_eq!(w[1] - w[0], chrono::Duration::seconds(1), "{s2:?}");
    }
    let run = client.get_run(&runs[0].id).await.unwrap();
    assert_eq!(run.title, "tick");
    assert_eq!(run.env_var_names, ["TOKEN"]);
    assert!(
        run.history[0]
            .note
            .as_deref()
            .unwrap()
            .contains(&format!("created by schedule {}", s.id)),
        "{run:#?}"
    );

    // Paused: no slot creates a run; resumed: only slots after the resume.
    let paused = client.pause_schedule(&s.id).await.unwrap();
    let count = runs_of(&client, &s.id, "w1").await.len();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        runs_of(&client, &s.id, "w1").await.len(),
        count,
        "ran while paused"
    );
    let resumed = client.resume_schedule(&s.id).await.unwrap();
    let resumed_at = at(&resumed.handled_until);
    let runs = wait_for_run(&client, &s.id, "w1", "after the resume", |slot| {
        slot > resumed_at
    })
    .await;
    assert_one_run_per_slot(&runs);
    let paused_at = at(&paused.updated_at);
    assert!(
        slots(&runs)
            .iter()
            .all(|&slot| slot <= paused_at || slot > resumed_at),
        "a slot that came due while paused ran: {:?}",
        slots(&runs)
    );
    let last = client.get_schedule(&s.id).await.unwrap();
    assert_eq!(
        last.last_run_id.as_deref(),
        Some(
            runs_of(&client, &s.id, "w1")
                .await
                .last()
                .unwrap()
                .id
                .as_str()
        )
    );
}

/// Waits until `offset` past the next whole second (a per-second slot).
async fn just_after_the_next_slot(offset: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    let next = DateTime::from_timestamp(now.timestamp() + 1, 0).unwrap();
    let wait = (next - now).to_std().unwrap() + offset;
    tokio::time::sleep(wait).await;
    next
}

/// What [`kill_around_a_slot`] did, and when.
struct Outage {
    /// The slot the kill was aimed just after.
    slot: DateTime<Utc>,
    /// Once the process was gone: a loaded machine may kill it later than
    /// aimed, after more slots ran, so "before the kill" is measured.
    killed_at: DateTime<Utc>,
    /// When the restart began.
    restarted_at: DateTime<Utc>,
    /// When the restarted process listened (its start may take seconds
    /// under load; it catches up on the missed slots as it starts).
    back_at: DateTime<Utc>,
    runs: Vec<Run>,
    log: String,
}

/// SIGKILLs `serve` `offset` after a slot comes due, keeps it down over
/// two more slots, starts it again and waits until it is back on time.
async fn kill_around_a_slot(missed: MissedSlots, offset: Duration) -> Outage {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key_with_cli(dir.path(), "alpha").await;
    let serve = ServeProcess::start(dir.path(), &[]).await;
    let client = Client::new(&serve.url, &key).unwrap();
    let host = "nobody-runs-these";
    let s = client
        .create_schedule(&every_second(host, missed))
        .await
        .unwrap();
    wait_for_run(&client, &s.id, host, "before the kill", |_| true).await;
    let killed_slot = just_after_the_next_slot(offset).await;
    let mut log = serve.log_text();
    serve.kill().await;
    let killed_at = Utc::now();
    // The fault itself: the control plane stays down while slots pass.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let restarted_at = Utc::now();
    let serve = ServeProcess::start(dir.path(), &[]).await;
    let back_at = Utc::now();
    let client = Client::new(&serve.url, &key).unwrap();
    let runs = wait_for_run(&client, &s.id, host, "after the restart", |slot| {
        slot > restarted_at + chrono::Duration::seconds(1)
    })
    .await;
    log.push_str(&serve.log_text());
    // With their history.
    let mut full = Vec::new();
    for r in runs {
        full.push(client.get_run(&r.id).await.unwrap());
    }
    Outage {
        slot: killed_slot,
        killed_at,
        restarted_at,
        back_at,
        runs: full,
        log,
    }
}

fn missed_note(r: &Run) -> bool {
    r.history[0]
        .note
        .as_deref()
        .is_some_and(|n| n.contains("came due while the control plane was not running"))
}

#[tokio::test]
async fn a_slot_runs_once_across_a_sigkill_and_missed_slots_run_once() {
    // Killed as the slot's run is being created, and just after.
    for offset in [Duration::from_millis(2), Duration::from_millis(40)] {
        let Outage {
            slot: k,
            killed_at,
            back_at,
            runs,
            log,
            ..
        } = kill_around_a_slot(MissedSlots::RunOnce, offset).await;
        assert_one_run_per_slot(&runs);
        assert!(!log.contains(" ERROR "), "{log}");
        let s = slots(&runs);
        // The slot of the kill ran at most once; every slot from it up to
        // the restart that had no run before the kill folds into one run.
        let at_kill = s.iter().filter(|&&x| x == k).count();
        assert!(at_kill <= 1, "{s:?}");
        let created_before_kill = runs
            .iter()
            .any(|r| r.scheduled_for.as_deref().map(at) == Some(k) && !missed_note(r));
        eprintln!(
            "killed {offset:?} after slot {k}; its run was created before: {created_before_kill}"
        );
        let missed: Vec<&Run> = runs.iter().filter(|r| missed_note(r)).collect();
        assert_eq!(missed.len(), 1, "missed slots run once: {s:?}");
        let m = at(missed[0].scheduled_for.as_deref().unwrap());
        assert!(
            m >= k && m < back_at + chrono::Duration::seconds(2),
            "{m} {s:?}"
        );
        // Nothing between the last run before the kill and that one.
        let before: Vec<_> = s.iter().filter(|&&x| x < m).collect();
        assert!(before.iter().all(|&&x| x <= killed_at), "{s:?}");
        // And back on time after it: one run per second.
        let after: Vec<_> = s.iter().filter(|&&x| x > m).copied().collect();
        for w in after.windows(2) {
            assert_eq!(w[1] - w[0], chrono::Duration::seconds(1), "{s:?}");
        }
    }
}

#[tokio::test]
async fn a_slot_runs_once_across_a_sigkill_and_missed_slots_are_skipped() {
    let Outage {
        slot: k,
        killed_at,
        restarted_at: restarted,
        runs,
        log,
        ..
    } = kill_around_a_slot(MissedSlots::Skip, Duration::from_millis(2)).await;
    assert_one_run_per_slot(&runs);
    assert!(!log.contains(" ERROR "), "{log}");
    assert!(log.contains("skipped (missed: skip)"), "{log}");
    let s = slots(&runs);
    assert!(runs.iter().all(|r| !missed_note(r)), "{s:?}");
    // No run for the slots after the kill while the control plane was down.
    assert!(
        s.iter().all(|&x| x <= killed_at || x >= restarted),
        "a missed slot ran: kill at {killed_at} (aimed after {k}), restart at {restarted}: {s:?}"
    );
    assert!(s.iter().filter(|&&x| x == k).count() <= 1);
}

#[tokio::test]
async fn the_cli_manages_schedules() {
    let t = TestPlane::start(test_config()).await;
    let cli = |args: &[&str]| {
        let mut c = support::cli::client(&t.plane.url(), &t.key);
        c.args(args);
        c
    };
    let out = cli(&[
        "schedules",
        "create",
        "--cron",
        "0 3 * * *",
        "--time-zone",
        "America/New_York",
        "--missed",
        "run-once",
        "--host",
        "w1",
        "--title",
        "nightly",
        "-e",
        "A=secret-a",
    ])
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let list = cli(&["schedules", "list"]).output().await.unwrap();
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(
        text.contains(&id) && text.contains("America/New_York") && text.contains("nightly"),
        "{text}"
    );
    let get = cli(&["schedules", "get", &id]).output().await.unwrap();
    let text = String::from_utf8(get.stdout).unwrap();
    assert!(
        text.contains("missed:      run_once") && text.contains("env:         A"),
        "{text}"
    );
    assert!(!text.contains("secret-a"), "{text}");
    for (verb, done) in [
        ("pause", "paused"),
        ("resume", "resumed"),
        ("delete", "deleted"),
    ] {
        let out = cli(&["schedules", verb, &id]).output().await.unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            format!("schedule {id} {done}")
        );
    }
    let out = cli(&["schedules", "get", &id]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no schedule"));
}

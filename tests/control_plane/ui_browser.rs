//! The management UI in a real headless browser (Debian's Chromium over
//! WebDriver): it signs in with a team key, shows the real worker connected
//! on dockerd, creates a run with the host picked from the dropdown, and
//! shows the run's live output to its end. Set `OZ_UI_SCREENSHOTS=DIR` to
//! keep screenshots of each page.

use oz_test_support as support;

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, Locator};
use std::time::Duration;
use support::browser::Browser;
use support::control_plane::{test_config, TestPlane};
use support::worker::*;

const WAIT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

async fn find(c: &Client, css: &str, within: Duration) -> Element {
    find_at(c, Locator::Css(css), within).await
}

async fn find_at(c: &Client, loc: Locator<'_>, within: Duration) -> Element {
    match c.wait().at_most(within).for_element(loc).await {
        Ok(e) => e,
        Err(e) => panic!(
            "no {loc:?} on {} within {within:?}: {e}\npage:\n{}",
            c.current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default(),
            c.source().await.unwrap_or_default()
        ),
    }
}

/// Finds `loc` and does `act` with the element; when the page replaced the
/// element in between (a stale element reference: the workers and runs
/// views redraw every 2 s), finds it again and retries, until `WAIT`.
async fn on_element<T, F, Fut>(c: &Client, loc: Locator<'_>, act: F) -> T
where
    F: Fn(Element) -> Fut,
    Fut: std::future::Future<Output = Result<T, CmdError>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match act(find_at(c, loc, left).await).await {
            Ok(v) => return v,
            Err(e) if e.is_stale_element_reference() && tokio::time::Instant::now() < deadline => {}
            Err(e) => panic!("{loc:?}: {e}"),
        }
    }
}

async fn click(c: &Client, loc: Locator<'_>) {
    on_element(c, loc, |e| async move { e.click().await }).await
}

async fn text(c: &Client, loc: Locator<'_>) -> String {
    on_element(c, loc, |e| async move { e.text().await }).await
}

async fn screenshot(c: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("OZ_UI_SCREENSHOTS") {
        let png = c.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

#[tokio::test]
async fn the_ui_signs_in_shows_the_worker_creates_a_run_and_shows_its_output() {
    if let Some(status) = support::browser::in_own_namespaces(
        module_path!(),
        "the_ui_signs_in_shows_the_worker_creates_a_run_and_shows_its_output",
    )
    .await
    {
        assert!(status.success(), "the browser test failed: {status}");
        return;
    }
    let Some(browser) = Browser::start().await else {
        return;
    };
    if !Engine::Docker.available() {
        return;
    }
    let plane = TestPlane::start(test_config()).await;
    let id = unique_id("ui");
    let _worker = WorkerProcess::start(
        &plane,
        Engine::Docker,
        WorkerOptions {
            worker_id: &id,
            ..Default::default()
        },
    )
    .await;
    let c = &browser.client;
    let base = plane.plane.url();

    // Not signed in: the app sends the browser to the sign-in form.
    c.goto(&format!("{base}/ui/")).await.unwrap();
    let key = find(c, "input[name=api_key]", WAIT).await;
    screenshot(c, "login").await;
    key.send_keys(&plane.key).await.unwrap();
    find(c, "#sign-in", WAIT).await.click().await.unwrap();

    // The workers page shows the worker: one process, connected.
    let processes = format!("tr[data-worker-id='{id}'].connected td.processes");
    assert_eq!(text(c, Locator::Css(&processes)).await, "1");
    screenshot(c, "workers").await;
    // Pause and resume it with the row's button; the state column follows
    // and the API agrees.
    let row = format!("tr[data-worker-id='{id}']");
    click(c, Locator::Css(&format!("{row} button.pause-toggle"))).await;
    let paused = |want: bool| {
        let client = plane.client();
        let id = id.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let list = client.list_workers().await.unwrap();
                if list
                    .workers
                    .iter()
                    .any(|w| w.worker_id == id && w.paused == want)
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "paused never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    paused(true).await;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(&format!(
            "//tr[@data-worker-id='{id}']/td[@class='worker-state'][starts-with(., 'paused')]"
        )))
        .await
        .expect("the state column says paused");
    screenshot(c, "workers-paused").await;
    click(
        c,
        Locator::XPath(&format!("//tr[@data-worker-id='{id}']//button[.='Resume']")),
    )
    .await;
    paused(false).await;
    // The session cookie: HttpOnly, SameSite=Strict; the key itself is
    // nowhere in the page.
    let cookies = c.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|k| k.name() == "oz_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    assert_ne!(session.value(), plane.key);
    assert!(!c.source().await.unwrap().contains(&plane.key));
    let js_sees: serde_json::Value = c.execute("return document.cookie", vec![]).await.unwrap();
    assert!(
        !js_sees.as_str().unwrap_or("").contains("oz_session"),
        "scripts can read the session cookie: {js_sees}"
    );

    // A new run, its host chosen from the dropdown of known worker ids.
    find(c, "nav a[data-nav=new]", WAIT)
        .await
        .click()
        .await
        .unwrap();
    find(c, &format!("#host option[value='{id}']"), WAIT).await;
    find(c, "#host", WAIT)
        .await
        .select_by_value(&id)
        .await
        .unwrap();
    find(c, "#title", WAIT)
        .await
        .send_keys("from the browser")
        .await
        .unwrap();
    find(c, "#image", WAIT)
        .await
        .send_keys(BUSYBOX)
        .await
        .unwrap();
    find(c, "#sidecar", WAIT)
        .await
        .send_keys(SIDECAR)
        .await
        .unwrap();
    find(c, "#env", WAIT)
        .await
        .send_keys("UI_SECRET=hunter2-value")
        .await
        .unwrap();
    screenshot(c, "new-run").await;
    find(c, "#create-run", WAIT).await.click().await.unwrap();

    // The run's page: its output, live, to the end, and its state.
    let output = find(c, "pre#output[data-complete=true]", RUN_TIMEOUT).await;
    let shown = output.text().await.unwrap();
    assert!(shown.contains("started in /workspace"), "{shown}");
    assert!(shown.contains("oz demo agent: done"), "{shown}");
    find(c, "#run-meta [data-state=succeeded]", WAIT).await;
    let url = c.current_url().await.unwrap();
    let run_id = url
        .fragment()
        .unwrap()
        .trim_start_matches("/runs/")
        .to_string();
    assert!(run_id.starts_with("run_"), "{url}");
    let page = c.source().await.unwrap();
    assert!(
        page.contains("from the browser") && page.contains("UI_SECRET"),
        "{page}"
    );
    assert!(!page.contains("hunter2-value"), "an env value was rendered");
    screenshot(c, "run").await;

    // The API agrees: the run was created for that worker and succeeded.
    let run = plane.client().get_run(&run_id).await.unwrap();
    assert_eq!(run.worker_host, id);
    assert_eq!(run.title, "from the browser");
    assert_eq!(run.env_var_names, ["UI_SECRET"]);

    // Schedules: one created from the form shows in the list and pauses.
    find(c, "nav a[data-nav=schedules]", WAIT)
        .await
        .click()
        .await
        .unwrap();
    find(c, &format!("#host option[value='{id}']"), WAIT).await;
    find(c, "#cron", WAIT)
        .await
        .send_keys("0 3 * * *")
        .await
        .unwrap();
    find(c, "#schedule-name", WAIT)
        .await
        .send_keys("nightly from the browser")
        .await
        .unwrap();
    find(c, "#create-schedule", WAIT)
        .await
        .click()
        .await
        .unwrap();
    // The list is redrawn after each change (found afresh each time).
    let row = text(c, Locator::Css("tr[data-schedule-id]")).await;
    assert!(
        row.contains("nightly from the browser") && row.contains(&id),
        "{row}"
    );
    click(
        c,
        Locator::XPath("//tr[@data-schedule-id]//button[text()='Pause']"),
    )
    .await;
    let paused = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(
            "//tr[@data-schedule-id]//button[text()='Resume']",
        ))
        .await;
    assert!(paused.is_ok(), "the schedule did not show as paused");
    screenshot(c, "schedules").await;
    let listed = plane.client().list_schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].paused);
    assert_eq!(listed[0].run.worker_host, id);
    browser.close().await;
}

/// The runs of the page's `fetch` calls to `/api/v1/runs` (the browser's
/// own record of its requests: Resource Timing), in order.
async fn runs_fetches(c: &Client) -> Vec<String> {
    let names: serde_json::Value = c
        .execute(
            "return performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('/api/v1/runs'))",
            vec![],
        )
        .await
        .unwrap();
    names
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The run ids of the runs view's rows, in order, read in one script: the
/// view redraws its table every 2 s, so reading row by row over WebDriver
/// could mix two drawings or meet a row already replaced (stale).
async fn rows(c: &Client) -> Vec<String> {
    let ids: serde_json::Value = c
        .execute(
            "return Array.from(document.querySelectorAll('tr[data-run-id]'), (r) => r.getAttribute('data-run-id'))",
            vec![],
        )
        .await
        .unwrap();
    ids.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// With more runs than a page, the runs view fetches one page (50, newest
/// first), one more per "More", and its 2 s refresh asks for the newest
/// runs it shows, never the whole list.
#[tokio::test]
async fn the_runs_view_fetches_a_page_at_a_time() {
    if let Some(status) = support::browser::in_own_namespaces(
        module_path!(),
        "the_runs_view_fetches_a_page_at_a_time",
    )
    .await
    {
        assert!(status.success(), "the browser test failed: {status}");
        return;
    }
    let Some(browser) = Browser::start().await else {
        return;
    };
    let plane = TestPlane::start(test_config()).await;
    let client = plane.client();
    let mut created = Vec::new();
    for i in 0..120 {
        let run = client
            .create_run(&host_run("ui-paging-absent", &format!("paged {i}"), &[]))
            .await
            .unwrap();
        created.push(run.id);
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let c = &browser.client;
    let base = plane.plane.url();
    c.goto(&format!("{base}/ui/")).await.unwrap();
    find(c, "input[name=api_key]", WAIT)
        .await
        .send_keys(&plane.key)
        .await
        .unwrap();
    find(c, "#sign-in", WAIT).await.click().await.unwrap();
    find(c, "nav a[data-nav=runs]", WAIT)
        .await
        .click()
        .await
        .unwrap();

    // One page: the newest 50, and a "More" control.
    find(c, "#runs-more:not([hidden])", WAIT).await;
    assert_eq!(rows(c).await, newest_first[..50]);
    let count = text(c, Locator::Css("#runs-count")).await;
    assert_eq!(count, "Showing the newest 50 runs");
    screenshot(c, "runs-page").await;

    // The next page from the cursor.
    click(c, Locator::Css("#runs-more")).await;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(
            "//p[@id='runs-count'][text()='Showing the newest 100 runs']",
        ))
        .await
        .expect("the second page is shown");
    assert_eq!(rows(c).await, newest_first[..100]);
    // A refresh after it asks for the 100 shown (2 s apart).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !runs_fetches(c)
        .await
        .iter()
        .any(|u| u.ends_with("/api/v1/runs?limit=100"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            runs_fetches(c).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The last page: 20 more, then no "More".
    click(c, Locator::Css("#runs-more")).await;
    find(c, "#runs-more[hidden]", WAIT).await;
    assert_eq!(rows(c).await, newest_first);

    let fetches = runs_fetches(c).await;
    assert!(fetches.len() >= 4, "{fetches:?}");
    for url in &fetches {
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        assert!(
            query == "limit=50"
                || query == "limit=100"
                || query == "limit=120"
                || (query.starts_with("limit=50&cursor=") && query.len() > 16),
            "the runs view asked for {url}"
        );
    }
    assert_eq!(
        fetches.iter().filter(|u| u.contains("cursor=")).count(),
        2,
        "{fetches:?}"
    );
    browser.close().await;
}

//! The agent's live output, followed from `pods/log` of the `task`
//! container once it has started, into the task's output sink (only when
//! the orchestrator asked for live output). Kubernetes merges stdout and
//! stderr, so everything is sent as stdout.
//!
//! The follow survives breaks: when the stream breaks, or ends while the
//! container still runs (the API server or the kubelet restarted), it is
//! opened again with `sinceTime`, with backoff, until the container has
//! ended or the Pod is gone; [`LogCursor`] drops the lines the new stream
//! repeats, so each line is sent once.
//!
//! A task followed again after a worker restart ([`LogFollower::resuming`])
//! goes on from where its log stands: a Pod whose `task` container had
//! already started when it was first seen is followed from its current end
//! (after its last line), since the earlier worker sent what came before
//! (and what was printed while no worker ran is lost to live output; the
//! Pod's log keeps it); a Pod that starts later is followed from its
//! beginning.

use futures_util::{AsyncBufRead, AsyncBufReadExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::LogParams;
use kube::{Api, Client};
use oz_protocol::OutputStream;
use oz_runtime::OutputSink;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::job_spec::TASK_CONTAINER;
use crate::log_cursor::{self, LogCursor};
use oz_foundation::backoff::ExponentialBackoff;

/// The first wait before a broken follow is opened again; it doubles up to
/// [`MAX_BACKOFF`] while attempts fail, and starts over once a stream
/// delivers.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts one follower per Pod whose `task` container has started.
pub struct LogFollower {
    pods: Api<Pod>,
    sink: OutputSink,
    started: BTreeSet<String>,
    /// Pods seen at least once (for `resume`).
    seen: BTreeSet<String>,
    /// Following a task again: Pods already running at first sight are
    /// followed from their log's end.
    resume: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl LogFollower {
    pub fn new(client: &Client, namespace: &str, sink: OutputSink) -> LogFollower {
        LogFollower {
            pods: Api::namespaced(client.clone(), namespace),
            sink,
            started: BTreeSet::new(),
            seen: BTreeSet::new(),
            resume: false,
            tasks: Vec::new(),
        }
    }

    /// A follower for a task followed again after a worker restart.
    pub fn resuming(client: &Client, namespace: &str, sink: OutputSink) -> LogFollower {
        LogFollower {
            resume: true,
            ..LogFollower::new(client, namespace, sink)
        }
    }

    /// Looks at a Pod version; starts following its task container's log
    /// the first time it is running or has ended.
    pub fn observe(&mut self, pod: &Pod) {
        if !self.sink.is_wanted() {
            return;
        }
        let Some(name) = pod.metadata.name.clone() else {
            return;
        };
        let started =
            task_state(pod).is_some_and(|s| s.running.is_some() || s.terminated.is_some());
        let first_sight = self.seen.insert(name.clone());
        if !started || !self.started.insert(name.clone()) {
            return;
        }
        let from_the_end = self.resume && first_sight;
        let follow = Follow {
            pods: self.pods.clone(),
            pod: name,
            sink: self.sink.clone(),
        };
        self.tasks.push(tokio::spawn(follow.run(from_the_end)));
    }

    /// Observes every Pod of `selector` as it is now: at the task's end,
    /// the Job's watch can report it before the Pod watch has shown the
    /// task container running or ended (a short task on a loaded server),
    /// and an ended container's log is still there to read.
    pub async fn observe_now(&mut self, selector: &str) {
        if !self.sink.is_wanted() {
            return;
        }
        match self
            .pods
            .list(&kube::api::ListParams::default().labels(selector))
            .await
        {
            Ok(list) => list.items.iter().for_each(|p| self.observe(p)),
            Err(e) => tracing::debug!("cannot list the task's Pods for their log: {e}"),
        }
    }

    /// Waits up to `within` for the followers to reach the end of the log
    /// (the container has ended, so the server closes the stream), so the
    /// last lines go out before the report; then stops them.
    pub async fn finish(mut self, within: Duration) {
        let all = futures_util::future::join_all(self.tasks.iter_mut());
        let _ = tokio::time::timeout(within, all).await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The `task` container's state in a Pod version.
fn task_state(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == TASK_CONTAINER)?
        .state
        .as_ref()
}

/// How one stream ended.
enum StreamEnd {
    /// The server closed it: the container ended, or the server went away
    /// cleanly.
    Closed,
    Broke(std::io::Error),
}

/// One Pod's `task` log, followed to its end.
struct Follow {
    pods: Api<Pod>,
    pod: String,
    sink: OutputSink,
}

impl Follow {
    async fn run(self, from_the_end: bool) {
        let mut cursor = LogCursor::default();
        let mut backoff = ExponentialBackoff::new(FIRST_BACKOFF, MAX_BACKOFF, 0.0);
        let mut find_the_end = from_the_end;
        let mut opened_once = false;
        loop {
            if find_the_end {
                match self.last_line_time().await {
                    Ok(last) => {
                        if let Some(last) = last {
                            cursor = LogCursor::after(last);
                        }
                        find_the_end = false;
                        tracing::debug!(
                            pod = self.pod,
                            "following the task's log from its current end"
                        );
                    }
                    Err(kube::Error::Api(s)) if s.is_not_found() => return,
                    Err(e) => {
                        tracing::debug!(pod = self.pod, "cannot read the task's log yet: {e}");
                        self.wait(&mut backoff).await;
                        continue;
                    }
                }
            }
            let params = LogParams {
                container: Some(TASK_CONTAINER.into()),
                follow: true,
                timestamps: true,
                since_time: cursor.reopen(),
                ..Default::default()
            };
            let stream = match self.pods.log_stream(&self.pod, &params).await {
                Ok(s) => s,
                Err(kube::Error::Api(s)) if s.is_not_found() => return,
                Err(e) => {
                    if !opened_once {
                        tracing::warn!(pod = self.pod, "cannot follow the task's log: {e}");
                    } else {
                        tracing::debug!(pod = self.pod, "cannot follow the task's log yet: {e}");
                    }
                    self.wait(&mut backoff).await;
                    continue;
                }
            };
            if !opened_once && !from_the_end {
                tracing::debug!(pod = self.pod, "following the task's log");
            }
            opened_once = true;
            let (end, delivered) = self.pump(stream, &mut cursor).await;
            if delivered {
                backoff.reset();
            }
            match end {
                StreamEnd::Closed => match self.container_ended().await {
                    Some(true) => {
                        let mut out = Vec::new();
                        cursor.finish(&mut out);
                        self.send(&out);
                        return;
                    }
                    Some(false) => tracing::info!(
                        pod = self.pod,
                        "the task's log stream ended while the task runs; following it again"
                    ),
                    None => tracing::info!(
                        pod = self.pod,
                        "the task's log stream ended and the Pod cannot be read; following the log again"
                    ),
                },
                StreamEnd::Broke(e) => tracing::info!(
                    pod = self.pod,
                    "the task's log stream broke ({e}); following it again from where it stopped"
                ),
            }
            self.wait(&mut backoff).await;
        }
    }

    /// Sends what a stream delivers until it ends; whether it delivered.
    async fn pump(
        &self,
        mut stream: impl AsyncBufRead + Unpin,
        cursor: &mut LogCursor,
    ) -> (StreamEnd, bool) {
        let mut delivered = false;
        let mut out = Vec::new();
        loop {
            let chunk = match stream.fill_buf().await {
                Ok([]) => return (StreamEnd::Closed, delivered),
                Ok(chunk) => chunk,
                Err(e) => return (StreamEnd::Broke(e), delivered),
            };
            let n = chunk.len();
            cursor.feed(chunk, &mut out);
            stream.consume_unpin(n);
            delivered = true;
            self.send(&out);
            out.clear();
        }
    }

    fn send(&self, out: &[u8]) {
        if !out.is_empty() {
            self.sink.write(OutputStream::Stdout, out);
        }
    }

    /// The time of the log's last line, None for an empty log.
    async fn last_line_time(&self) -> Result<Option<Timestamp>, kube::Error> {
        let params = LogParams {
            container: Some(TASK_CONTAINER.into()),
            tail_lines: Some(1),
            timestamps: true,
            ..Default::default()
        };
        let text = self.pods.logs(&self.pod, &params).await?;
        Ok(log_cursor::timestamp_of(text.as_bytes()))
    }

    /// Whether the `task` container has ended (a Pod that is gone has);
    /// None when the Pod cannot be read.
    async fn container_ended(&self) -> Option<bool> {
        match self.pods.get_opt(&self.pod).await {
            Ok(None) => Some(true),
            Ok(Some(pod)) => Some(task_state(&pod).is_some_and(|s| s.terminated.is_some())),
            Err(_) => None,
        }
    }

    /// Sleeps `backoff`'s next delay.
    async fn wait(&self, backoff: &mut ExponentialBackoff) {
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

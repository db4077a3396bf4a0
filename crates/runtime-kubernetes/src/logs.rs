//! The agent's live output, followed from `pods/log` of the `task`
//! container once it has started, into the task's output sink (only when
//! the orchestrator asked for live output). Kubernetes merges stdout and
//! stderr, so everything is sent as stdout.
//!
//! A task followed again after a worker restart ([`LogFollower::resuming`])
//! goes on from where its log stands: a Pod whose `task` container had
//! already started when it was first seen is followed from its current end
//! (`tailLines=0`), since the earlier worker sent what came before (and
//! what was printed while no worker ran is lost to live output; the Pod's
//! log keeps it); a Pod that starts later is followed from its beginning.

use futures_util::AsyncReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use kube::{Api, Client};
use oz_protocol::OutputStream;
use oz_runtime::OutputSink;
use std::collections::BTreeSet;
use tokio::task::JoinHandle;

use crate::job_spec::TASK_CONTAINER;

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
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.name == TASK_CONTAINER)
            .any(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            });
        let first_sight = self.seen.insert(name.clone());
        if !started || !self.started.insert(name.clone()) {
            return;
        }
        let from_the_end = self.resume && first_sight;
        let pods = self.pods.clone();
        let sink = self.sink.clone();
        self.tasks.push(tokio::spawn(async move {
            let params = LogParams {
                container: Some(TASK_CONTAINER.into()),
                follow: true,
                tail_lines: from_the_end.then_some(0),
                ..Default::default()
            };
            let mut stream = match pods.log_stream(&name, &params).await {
                Ok(s) => {
                    tracing::debug!(
                        pod = name,
                        "following the task's log{}",
                        if from_the_end {
                            " from its current end"
                        } else {
                            ""
                        }
                    );
                    s
                }
                Err(e) => {
                    tracing::warn!(pod = name, "cannot follow the task's log: {e}");
                    return;
                }
            };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => sink.write(OutputStream::Stdout, &buf[..n]),
                    Err(e) => {
                        tracing::warn!(pod = name, "the task's log stream broke: {e}");
                        break;
                    }
                }
            }
        }));
    }

    /// Waits up to `within` for the followers to reach the end of the log
    /// (the container has ended, so the server closes the stream), so the
    /// last lines go out before the report; then stops them.
    pub async fn finish(mut self, within: std::time::Duration) {
        let all = futures_util::future::join_all(self.tasks.iter_mut());
        let _ = tokio::time::timeout(within, all).await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

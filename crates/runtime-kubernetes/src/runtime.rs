//! The kubernetes runtime: one Job per task execution.
//!
//! Better than the Go worker on what its users report:
//! - a Job that already exists for the same execution is adopted, not a
//!   failure (#86), and one still being deleted is waited for;
//! - a cancellation deletes the Job with foreground propagation and the
//!   run ends once its Pods are gone, or once their grace period and a
//!   margin have passed (a Pod stuck terminating is left to Kubernetes,
//!   with a warning naming it: `stopping.rs`);
//! - a failure read from a Pod that waits forever (image, node, volume)
//!   deletes the Job too, so nothing of the failed task runs later; a Job
//!   that finished failed is kept for its TTL, as the Go worker keeps it;
//! - at a worker restart every journalled execution's Job is found again by
//!   its deterministic name and labels and followed to its end (#74/#84);
//! - a worker whose journal was lost (its Pod replaced, the state dir an
//!   emptyDir) finds the Jobs of dead instances of its worker id by their
//!   labels and annotations ([`Runtime::discover`], `discover.rs`);
//! - at shutdown running Jobs are left in place for the next start.

use crate::client::{self, ConnectError};
use crate::diagnosis;
use crate::discover;
use crate::holder::Holder;
use crate::job_spec::{self, Sidecar, TaskJobRequest};
use crate::logs::LogFollower;
use crate::names;
use crate::preflight::{self, PreflightError};
use crate::retry::{self, Backoff};
use crate::settings::Settings;
use crate::stopping;
use crate::watch::{self, Ended};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use oz_foundation::secret::Secret;
use oz_protocol::FailureReason;
use oz_runtime::{
    Adoptable, CheckError, Failure, Invocation, Known, RunOutcome, Runtime, RuntimeContext,
    TaskContext, TaskRef, DEFAULT_TASK_IMAGE,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the last output may take to arrive after the task ended. The
/// follow normally ends with the container, at once; this bounds a follow
/// still opening its stream (a loaded API server or kubelet: 2 s lost the
/// agent's last line on a loaded CI machine), at the cost of delaying the
/// report that long when the log cannot be read at all.
const OUTPUT_FLUSH: Duration = Duration::from_secs(10);
/// How long a Job's create answered 5xx or not at all is repeated.
const CREATE_RETRY_FOR: Duration = Duration::from_secs(60);
/// How long after its success a task's Job is deleted.
const DELETE_SUCCEEDED_AFTER: Duration = Duration::from_secs(5);
/// How long after a failure is returned its unfinished Job is deleted
/// ([`KubernetesRuntime::settle_failed`]): time for the core to record the
/// report (one fsync), short enough that a Pod which finds a node
/// meanwhile is unlikely to start the agent.
const DELETE_UNFINISHED_AFTER: Duration = Duration::from_secs(1);
/// How long a new run of an execution waits for the execution's earlier
/// Job, still being deleted (an earlier cancellation), to go before it
/// fails `job_create`: longer than a Pod's default grace period and the
/// cancellation's margin together ([`stopping`]).
const EARLIER_JOB_GONE_WITHIN: Duration = Duration::from_secs(120);

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
}

pub struct KubernetesRuntime {
    client: Client,
    settings: Settings,
    worker_id: String,
    /// The operator's `-e` entries; they win over the task's.
    operator_env: Vec<(String, Secret)>,
    server_version: String,
    /// This process, as written on the Jobs it creates.
    holder: Holder,
    /// Deletions of failed tasks' unfinished Jobs under way
    /// ([`KubernetesRuntime::settle_failed`]); awaited at shutdown.
    deletions: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl KubernetesRuntime {
    /// Connects, reads the server's version and runs the preflight Job.
    pub async fn start(
        ctx: RuntimeContext,
        settings: Settings,
        operator_env: Vec<(String, Secret)>,
    ) -> Result<KubernetesRuntime, StartError> {
        let (client, server_version) = client::connect(settings.kubeconfig.as_deref()).await?;
        preflight::run(&client, &settings, &ctx.worker_id).await?;
        Ok(KubernetesRuntime {
            client,
            settings,
            worker_id: ctx.worker_id,
            operator_env,
            server_version,
            holder: Holder::current(),
            deletions: Default::default(),
        })
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn request(&self, inv: &Invocation) -> Result<TaskJobRequest, Failure> {
        let harness = inv
            .spec
            .agent_config_snapshot
            .as_ref()
            .and_then(|s| s.harness.as_ref())
            .and_then(|h| h.kind.as_deref());
        let requested: Vec<Sidecar> = inv
            .sidecars
            .iter()
            .map(|s| Sidecar {
                image: s.image.clone(),
                mount_path: s.mount_path.clone(),
                read_write: s.read_write,
            })
            .collect();
        let sidecars = job_spec::task_sidecars(&self.settings, &requested, harness);
        job_spec::check_sidecars(&sidecars, self.settings.use_image_volumes)
            .map_err(|e| Failure::new(FailureReason::SidecarPrep, e.0))?;
        let image = inv
            .image
            .clone()
            .or_else(|| self.settings.default_image.clone())
            .unwrap_or_else(|| DEFAULT_TASK_IMAGE.to_string());
        let env = inv
            .env_exposed()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(
                self.operator_env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose_str().to_string())),
            )
            .collect();
        Ok(TaskJobRequest {
            worker_id: self.worker_id.clone(),
            task_id: inv.task.task_id.clone(),
            execution_id: inv.task.execution_id.clone(),
            image,
            base_args: inv.base_args.clone(),
            env,
            sidecars,
            cpus: inv.limits.cpus,
            memory_bytes: inv.limits.memory_bytes,
            holder: Some(self.holder.clone()),
        })
    }

    /// Creates the Job, or adopts the one this execution already has.
    ///
    /// A create answered 5xx, or not answered at all, may have been
    /// carried out: it is repeated with backoff for up to
    /// [`CREATE_RETRY_FOR`], and a repeat answered 409 AlreadyExists finds
    /// the Job of this very execution, adopted like any other. Returns
    /// early (Ok) when `stop` fires while waiting to repeat: the caller's
    /// cancellation then deletes whatever was created.
    async fn create_or_adopt(&self, job: &Job, stop: &CancellationToken) -> Result<(), Failure> {
        // job_spec::task_job always names the Job; without a name there is
        // nothing to create or adopt.
        let Some(name) = job.metadata.name.clone() else {
            return Err(Failure::new(
                FailureReason::JobCreate,
                "the task's Job was built without metadata.name",
            ));
        };
        let mut backoff = Backoff::new(CREATE_RETRY_FOR);
        let mut freed = 0;
        loop {
            // A stop while a create is under way: the caller's cancellation
            // deletes whatever the create made.
            let attempt = tokio::select! {
                a = self.create_attempt(&name, job) => a?,
                _ = stop.cancelled() => return Ok(()),
            };
            match attempt {
                Attempt::Done => return Ok(()),
                // Deleted between our create and our read, or an earlier
                // Job of the execution finished its deletion: try again,
                // not forever.
                Attempt::Freed => {
                    freed += 1;
                    if freed >= 2 {
                        return Err(Failure::new(
                            FailureReason::JobCreate,
                            format!("Job {name} kept reappearing while it was being created"),
                        ));
                    }
                }
                Attempt::Transient(e) => {
                    tracing::warn!(
                        job = name,
                        "creating the task's Job: {e}; trying again (it may have been created: a Job of this \
                         execution is then adopted)"
                    );
                    tokio::select! {
                        more = backoff.wait() => if !more {
                            return Err(Failure::new(FailureReason::JobCreate, format!(
                                "cannot create Job {name} in namespace {}: {e} (tried for {}s)",
                                self.settings.namespace,
                                CREATE_RETRY_FOR.as_secs()
                            )));
                        },
                        _ = stop.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    /// One create of the Job `name`; on 409 AlreadyExists the existing Job
    /// is adopted when it is this execution's.
    async fn create_attempt(&self, name: &str, job: &Job) -> Result<Attempt, Failure> {
        let job_create = |what: String| Failure::new(FailureReason::JobCreate, what);
        match self.jobs().create(&PostParams::default(), job).await {
            Ok(_) => {
                tracing::info!(
                    job = name,
                    namespace = self.settings.namespace,
                    "created the task's Job"
                );
                Ok(Attempt::Done)
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                let existing = match self.jobs().get_opt(name).await {
                    Ok(Some(existing)) => existing,
                    Ok(None) => return Ok(Attempt::Freed),
                    Err(e) if retry::is_transient(&e) => return Ok(Attempt::Transient(e)),
                    Err(e) => {
                        return Err(job_create(format!(
                            "Job {name} exists but cannot be read: {e}"
                        )))
                    }
                };
                if !job_spec::is_same_execution(&existing, job) {
                    return Err(job_create(format!(
                        "a Job named {name} already exists in namespace {} and belongs to another execution or worker \
                         (its oz-execution-hash/oz-worker-hash labels differ); delete it, or use another namespace",
                        self.settings.namespace
                    )));
                }
                // A Job of the same execution still being deleted (an
                // earlier cancellation) is waited for; then the name is free.
                if existing.metadata.deletion_timestamp.is_some() {
                    tracing::info!(
                        job = name,
                        "waiting for this execution's earlier Job to be deleted"
                    );
                    if tokio::time::timeout(EARLIER_JOB_GONE_WITHIN, self.wait_gone(name))
                        .await
                        .is_err()
                    {
                        return Err(job_create(format!(
                            "this execution's earlier Job {name} in namespace {} is still being deleted after {}s \
                             (a Pod stuck terminating holds it: `kubectl describe job {name}`); the task cannot \
                             start until it is gone",
                            self.settings.namespace,
                            EARLIER_JOB_GONE_WITHIN.as_secs()
                        )));
                    }
                    return Ok(Attempt::Freed);
                }
                tracing::info!(job = name, "adopting this execution's existing Job");
                Ok(Attempt::Done)
            }
            Err(e) if retry::is_transient(&e) => Ok(Attempt::Transient(e)),
            Err(e) => Err(job_create(format!(
                "cannot create Job {name} in namespace {}: {e}",
                self.settings.namespace
            ))),
        }
    }

    /// Waits until the Job `name` no longer exists.
    async fn wait_gone(&self, name: &str) {
        let mut stream = watcher(
            self.jobs(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff()
        .boxed();
        loop {
            if matches!(self.jobs().get_opt(name).await, Ok(None)) {
                return;
            }
            match stream.next().await {
                Some(Ok(watcher::Event::Delete(_))) | None => return,
                _ => {}
            }
        }
    }

    /// Waits until no Pod of the execution is left, for at most
    /// [`stopping::bound`] from the call (made once the Job's deletion was
    /// accepted): past it the Pods are left to Kubernetes with a warning
    /// naming them, so a Pod stuck terminating (a lost node, a finalizer)
    /// cannot hold the run's end forever. Also ends when `force` fires
    /// (the worker's shutdown deadline). The Go chart's Role has no `pods
    /// delete`, so Pods are never force-deleted here.
    async fn wait_pods_gone(&self, selector: &str, force: &CancellationToken) {
        wait_pods_gone(&self.pods(), &self.settings.namespace, selector, force).await
    }

    /// Stops a run: deletes its Job with foreground propagation (the Pods
    /// go first, each with its grace period and preStop teardown) and
    /// returns once they are gone.
    async fn cancel(&self, name: &str, selector: &str, force: &CancellationToken) {
        self.delete_foreground(name).await;
        self.wait_pods_gone(selector, force).await;
    }

    /// Deletes the Job `name` with foreground propagation: the Job
    /// controller stops creating Pods at once, and the Job object stays
    /// (finalizer `foregroundDeletion`) until its Pods are gone.
    async fn delete_foreground(&self, name: &str) {
        delete_foreground(&self.jobs(), name).await
    }

    /// After a failure the runtime reports: a Job that finished (or is
    /// bound to: [`crate::diagnosis::ends_by_itself`]) is kept for
    /// `ttl_seconds_after_finished`, the Go worker's rule; one that has not
    /// (its Pod waits on an image, a node or a volume, which Kubernetes
    /// retries forever) is deleted with foreground propagation, so it holds
    /// no quota and nothing of the failed task starts later. The Go worker
    /// leaves such a Job, whose TTL never starts.
    ///
    /// The deletion starts [`DELETE_UNFINISHED_AFTER`] after the failure
    /// is returned, once the core has recorded the report in its journal:
    /// a worker that stops or dies before then finds the Job at its next
    /// start and diagnoses it again, instead of finding nothing and
    /// reporting an unknown end. [`Runtime::shutdown`] waits for the
    /// deletions under way.
    async fn settle_failed(&self, name: &str, selector: &str, ends_by_itself: bool) {
        let finished = ends_by_itself
            || matches!(self.jobs().get_opt(name).await, Ok(Some(job)) if diagnosis::job_finished(&job));
        if finished {
            tracing::info!(
                job = name,
                namespace = self.settings.namespace,
                "the task failed; its finished Job is kept for ttl_seconds_after_finished"
            );
            return;
        }
        tracing::info!(
            job = name,
            namespace = self.settings.namespace,
            "the task failed while its Job had not finished (its Pod waits and Kubernetes would retry it forever); \
             deleting the Job so nothing of it runs later, once the failure is recorded"
        );
        let (jobs, pods) = (self.jobs(), self.pods());
        let (name, selector, namespace) = (
            name.to_string(),
            selector.to_string(),
            self.settings.namespace.clone(),
        );
        self.deletions.lock().unwrap().spawn(async move {
            tokio::time::sleep(DELETE_UNFINISHED_AFTER).await;
            delete_foreground(&jobs, &name).await;
            wait_pods_gone(&pods, &namespace, &selector, &CancellationToken::new()).await;
        });
    }

    /// Follows an execution's Job to its end; `again` when an earlier
    /// instance of the worker started it (its output is followed from where
    /// it stands).
    async fn follow(&self, task: &TaskRef, ctx: TaskContext, again: bool) -> RunOutcome {
        let name = names::job_name(&task.task_id, task.execution_id.as_deref());
        let selector = names::execution_selector(&task.task_id, task.execution_id.as_deref());
        let mut logs = if again {
            LogFollower::resuming(&self.client, &self.settings.namespace, ctx.output.clone())
        } else {
            LogFollower::new(&self.client, &self.settings.namespace, ctx.output.clone())
        };
        let ended = {
            let exec = watch::Execution {
                client: &self.client,
                settings: &self.settings,
                job_name: &name,
                pod_selector: &selector,
            };
            let mut observe = |p: &Pod| logs.observe(p);
            tokio::select! {
                e = watch::until_ended(exec, &mut observe) => Some(e),
                _ = ctx.stop.cancelled() => None,
            }
        };
        let Some(ended) = ended else {
            self.cancel(&name, &selector, &ctx.force).await;
            logs.finish(Duration::ZERO).await;
            return RunOutcome::Stopped;
        };
        logs.observe_now(&selector).await;
        logs.finish(OUTPUT_FLUSH).await;
        match ended {
            Ended::Completed => {
                if self.settings.cleanup {
                    self.delete_later(name);
                }
                RunOutcome::Completed
            }
            Ended::Failed {
                reason,
                message,
                exit_code,
                details,
                ends_by_itself,
            } => {
                self.settle_failed(&name, &selector, ends_by_itself).await;
                RunOutcome::Failed(Failure {
                    reason: wire_reason(reason),
                    message,
                    exit_code,
                    details: Some(details),
                })
            }
            Ended::JobGone { message } => {
                RunOutcome::Failed(Failure::new(FailureReason::JobWatch, message))
            }
        }
    }

    /// Deletes a succeeded task's Job a little later: by then the core has
    /// written the report to its journal, so a worker that dies in between
    /// finds the Job complete at its restart and reports the success,
    /// rather than finding nothing. A worker that exits first leaves the
    /// Job to its TTL.
    fn delete_later(&self, name: String) {
        let jobs = self.jobs();
        tokio::spawn(async move {
            tokio::time::sleep(DELETE_SUCCEEDED_AFTER).await;
            match jobs.delete(&name, &DeleteParams::background()).await {
                Ok(_) => tracing::debug!(job = name, "deleted the succeeded task's Job"),
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(job = name, "could not delete the succeeded task's Job: {e}")
                }
            }
        });
    }
}

/// What one create of a task's Job came to.
enum Attempt {
    /// Created, or this execution's existing Job adopted.
    Done,
    /// The name was free again by the time it was looked at.
    Freed,
    /// No answer, or a 5xx: it may have been created.
    Transient(kube::Error),
}

/// The wire reason of a diagnosis.
fn wire_reason(reason: crate::diagnosis::Reason) -> FailureReason {
    use crate::diagnosis::Reason;
    match reason {
        Reason::JobFailed => FailureReason::JobFailed,
        Reason::ActiveDeadline => FailureReason::ActiveDeadline,
        Reason::InitContainer => FailureReason::InitContainer,
        Reason::ImagePull => FailureReason::ImagePull,
        Reason::InvalidImage => FailureReason::InvalidImage,
        Reason::ContainerCreate => FailureReason::ContainerCreate,
        Reason::ContainerWait => FailureReason::ContainerWait,
        Reason::ContainerOom => FailureReason::ContainerOom,
        Reason::ContainerExit => FailureReason::ContainerExit,
        Reason::Unschedulable => FailureReason::Unschedulable,
        Reason::VolumeMount => FailureReason::VolumeMount,
    }
}

impl KubernetesRuntime {
    /// The Job of an execution found again at start-up: followed to its
    /// end; one that is gone is reported as found nowhere.
    async fn follow_again(&self, task: TaskRef, ctx: TaskContext) -> RunOutcome {
        let name = names::job_name(&task.task_id, task.execution_id.as_deref());
        match self.jobs().get_opt(&name).await {
            Ok(None) => RunOutcome::Failed(Failure::new(
                FailureReason::Unknown,
                format!(
                    "the worker stopped while it followed this task, and at its restart the task's Job {name} was gone \
                     from namespace {} (deleted by someone, or by its TTL); how the task ended is unknown",
                    self.settings.namespace
                ),
            )),
            // Unreadable now (the API server restarting): the watches retry.
            Ok(Some(_)) | Err(_) => self.follow(&task, ctx, true).await,
        }
    }
}

/// [`KubernetesRuntime::wait_pods_gone`] on `pods` of `namespace`, for a
/// caller that outlives the runtime's borrow (a spawned deletion).
async fn wait_pods_gone(
    pods: &Api<Pod>,
    namespace: &str,
    selector: &str,
    force: &CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let mut stream = watcher(pods.clone(), watcher::Config::default().labels(selector))
        .default_backoff()
        .boxed();
    // The longest bound of any Pod seen: a Pod's deletion can only
    // shorten its grace period, and the first list may predate it.
    let mut bound: Option<Duration> = None;
    let mut left: Vec<Pod> = Vec::new();
    loop {
        match pods.list(&ListParams::default().labels(selector)).await {
            Ok(list) if list.items.is_empty() => return,
            Ok(list) => {
                let b = stopping::bound(&list.items);
                bound = Some(bound.map_or(b, |old| old.max(b)));
                left = list.items;
            }
            Err(e) => tracing::warn!("could not list the task's Pods: {e}"),
        }
        let deadline = started + bound.unwrap_or(stopping::DEFAULT_GRACE + stopping::MARGIN);
        tokio::select! {
            _ = stream.next() => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    "{}",
                    stopping::stuck_message(&left, namespace, started.elapsed())
                );
                return;
            }
            _ = force.cancelled() => {
                tracing::warn!("no time left to wait for the task's Pods to go; Kubernetes finishes deleting them");
                return;
            }
        }
    }
}

/// [`KubernetesRuntime::delete_foreground`] on `jobs`.
async fn delete_foreground(jobs: &Api<Job>, name: &str) {
    match jobs.delete(name, &DeleteParams::foreground()).await {
        Ok(_) => tracing::info!(job = name, "deleting the task's Job (foreground)"),
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => tracing::warn!(job = name, "could not delete the task's Job: {e}"),
    }
}

impl Runtime for KubernetesRuntime {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn describe(&self) -> String {
        format!(
            "kubernetes {} (namespace {})",
            self.server_version, self.settings.namespace
        )
    }

    fn preserves_tasks_on_shutdown(&self) -> bool {
        true
    }

    /// Waits, within `deadline`, for the deletions of failed tasks'
    /// unfinished Jobs under way; running Jobs are left for the next start.
    fn shutdown(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        let mut deletions = std::mem::take(&mut *self.deletions.lock().unwrap());
        Box::pin(async move {
            if deletions.is_empty() {
                return;
            }
            let all = async { while deletions.join_next().await.is_some() {} };
            if tokio::time::timeout(deadline, all).await.is_err() {
                tracing::warn!(
                    "the deletions of failed tasks' unfinished Jobs did not finish within {deadline:?}; \
                     such a Job may be left with its Pod still waiting: find it with `kubectl get jobs -l \
                     {}={}` and delete it",
                    names::WORKER_HASH_LABEL,
                    names::label_hash(&self.worker_id)
                );
            }
        })
    }

    fn run(&self, invocation: Invocation, ctx: TaskContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(async move {
            let request = match self.request(&invocation) {
                Ok(r) => r,
                Err(f) => return RunOutcome::Failed(f),
            };
            let job = job_spec::task_job(&self.settings, &request);
            if let Err(f) = self.create_or_adopt(&job, &ctx.stop).await {
                return RunOutcome::Failed(f);
            }
            self.follow(&invocation.task, ctx, false).await
        })
    }

    fn reattaches(&self) -> bool {
        true
    }

    fn reattach(&self, task: TaskRef, ctx: TaskContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(self.follow_again(task, ctx))
    }

    fn discover<'a>(&'a self, known: Known<'a>) -> BoxFuture<'a, Vec<Adoptable>> {
        Box::pin(discover::orphans(
            &self.client,
            &self.settings,
            &self.worker_id,
            &self.holder,
            known,
        ))
    }

    /// Jobs outlive the worker: nothing to stop or remove here. Executions
    /// the journal holds are followed again through `reattach`.
    fn recover(&self, _unfinished: Vec<TaskRef>) -> BoxFuture<'_, Vec<(TaskRef, RunOutcome)>> {
        Box::pin(async { Vec::new() })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), CheckError>> {
        Box::pin(async move {
            self.client
                .apiserver_version()
                .await
                .map(|_| ())
                .map_err(|e| CheckError::Unreachable {
                    context: "the Kubernetes API server does not answer: ",
                    source: Box::new(e),
                })
        })
    }
}

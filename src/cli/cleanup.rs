//! `oz-agent-worker cleanup`: removes the containers workers left on the
//! Docker daemon when those workers will not start again to remove them
//! (a retired worker id, a host rebuilt under a new name). A worker removes
//! its own dead instances' containers at start-up; this is for the rest.
//!
//! A container is removed when its owner provably no longer runs: it ran on
//! this host (same machine id and hostname) and the host rebooted since or
//! its pid is gone (`oz_runtime_docker::identity::owner`). A container made on
//! another host is only removed when that host is named with `--gone-host`:
//! from here nothing says whether its worker still runs. Also left alone:
//! containers kept on purpose (`--no-cleanup`; `--kept` removes them), and
//! task containers of executions their worker claimed and has not reported
//! (its next start reads how the task ended from the container; `--force`
//! removes them anyway).

use oz_docker_engine::params::{ContainerDeleteParams, ContainerListParams};
use oz_docker_engine::transport::EnvSnapshot;
use oz_docker_engine::Docker;
use oz_runtime::TaskRef;
use oz_runtime_docker::identity::{
    self, Owner, EXECUTION_ID, MANAGED_BY, MANAGED_BY_VALUE, ROLE, TASK_ID, WORKER_ID,
};
use oz_runtime_docker::orphans::KEPT_SUFFIX;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// Only containers of this worker id. Repeatable.
    #[arg(long, value_name = "ID")]
    pub worker_id: Vec<String>,
    /// Treat workers on this host as gone: the `dev.oz.host` label's value
    /// (`MACHINE-ID/HOSTNAME`) or just its hostname. Repeatable.
    #[arg(long, value_name = "HOST")]
    pub gone_host: Vec<String>,
    /// Also remove containers kept with `--no-cleanup`.
    #[arg(long)]
    pub kept: bool,
    /// Also remove task containers of executions not yet reported.
    #[arg(long)]
    pub force: bool,
    /// The workers' state directory, to find executions not yet reported
    /// (default: the worker's default, $XDG_STATE_HOME/oz-agent-worker).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What happens to one container, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Remove(String),
    Keep(String),
}

/// One container as listed, with what decides its fate.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// Decides for one container (pure: the owner's state and the unreported
/// executions are given).
pub fn decide(
    c: &Found,
    owner: &Owner,
    args: &CleanupArgs,
    unreported: &dyn Fn(&str, &TaskRef) -> bool,
) -> Verdict {
    let get = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or("");
    let worker = get(WORKER_ID);
    let why_gone = match owner {
        Owner::Alive { pid } => {
            return Verdict::Keep(format!("its worker {worker} is running (pid {pid})"))
        }
        Owner::Unknown => {
            return Verdict::Keep(
                "its labels do not say which process made it; remove it with `docker rm -f` if you know it is not in use".into(),
            )
        }
        Owner::Unknowable(why) => {
            return Verdict::Keep(format!(
                "{why}; run cleanup where worker {worker} runs, or remove it with `docker rm -f` if you know it is gone"
            ))
        }
        Owner::OtherHost(host) => {
            let named = args.gone_host.iter().any(|g| {
                g == host || host.rsplit_once('/').is_some_and(|(_, name)| name == g)
            });
            if !named {
                let name = host.rsplit_once('/').map_or(host.as_str(), |(_, n)| n);
                return Verdict::Keep(format!(
                    "made by worker {worker} on host {name}: run cleanup there, or pass --gone-host {name} if that machine is gone"
                ));
            }
            "its host is gone (--gone-host)"
        }
        Owner::Dead(why) => why,
    };
    if c.name.ends_with(KEPT_SUFFIX) && !args.kept {
        return Verdict::Keep("kept on purpose (--no-cleanup); --kept removes it".into());
    }
    if get(ROLE) == "task" && !args.force {
        let task = TaskRef {
            task_id: get(TASK_ID).to_string(),
            execution_id: Some(get(EXECUTION_ID))
                .filter(|e| !e.is_empty())
                .map(str::to_string),
        };
        if unreported(worker, &task) {
            return Verdict::Keep(format!(
                "task {} is claimed and not reported yet: start worker {worker} once (it reports the task and removes this), or pass --force",
                task.task_id
            ));
        }
    }
    let what = match get(ROLE) {
        "task" => format!("task {}", get(TASK_ID)),
        "" => "container".to_string(),
        role => role.to_string(),
    };
    Verdict::Remove(format!("{what} of worker {worker}: {why_gone}"))
}

pub async fn run(args: CleanupArgs) -> ExitCode {
    let env = EnvSnapshot::from_process();
    let docker = match Docker::connect(&env).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Docker ANDs label filters: the worker ids are picked out below.
    let params = ContainerListParams {
        all: Some(true),
        filters: Some(
            serde_json::json!({ "label": [format!("{MANAGED_BY}={MANAGED_BY_VALUE}")] })
                .to_string(),
        ),
        ..Default::default()
    };
    let listed = match docker.container_list(&params).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(oz_worker::config::default_state_dir);
    // Per worker id, read once: what its dead instances left unreported.
    let mut journals: BTreeMap<String, Vec<TaskRef>> = BTreeMap::new();
    let (host, boot) = oz_runtime::liveness::this_host();
    let mut failed = 0;
    let (mut removed, mut kept) = (0, 0);
    for c in listed {
        // Listed by our label, so a container without labels is not ours (a
        // daemon that ignored the filter).
        let Some(labels) = c.labels else {
            continue;
        };
        // Docker and Podman always name a container; were one unnamed, its
        // id is what the operator could act on.
        let name = match c.names.iter().flatten().next() {
            Some(n) => n.trim_start_matches('/').to_string(),
            None => c.id.clone(),
        };
        let found = Found {
            id: c.id,
            name,
            labels,
        };
        let worker = found.labels.get(WORKER_ID);
        if !args.worker_id.is_empty() && !worker.is_some_and(|w| args.worker_id.contains(w)) {
            continue;
        }
        let owner = identity::owner(&found.labels, &host, &boot, &identity::process_alive);
        if let Some(worker) = found.labels.get(WORKER_ID) {
            if !journals.contains_key(worker) {
                let pending = oz_worker::journal::unfinished_in_dead_journals(&state_dir, worker)
                    .unwrap_or_else(|e| {
                        eprintln!(
                            "warning: cannot read worker {worker}'s journal under {}: {e}; its unreported tasks cannot be told apart",
                            state_dir.display()
                        );
                        Vec::new()
                    });
                journals.insert(worker.clone(), pending);
            }
        }
        let unreported =
            |w: &str, t: &TaskRef| journals.get(w).is_some_and(|pending| pending.contains(t));
        let short = &found.id[..found.id.len().min(12)];
        match decide(&found, &owner, &args, &unreported) {
            Verdict::Keep(why) => {
                kept += 1;
                println!("kept     {short}  {}  {why}", found.name);
            }
            Verdict::Remove(why) if args.dry_run => {
                removed += 1;
                println!("would remove {short}  {}  {why}", found.name);
            }
            Verdict::Remove(why) => {
                let delete = ContainerDeleteParams {
                    force: Some(true),
                    ..Default::default()
                };
                match docker.container_delete(&found.id, &delete).await {
                    Ok(()) => {
                        removed += 1;
                        println!("removed  {short}  {}  {why}", found.name);
                    }
                    Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {
                        println!("gone     {short}  {}  removed meanwhile", found.name);
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: removing {short} ({}): {e}", found.name);
                    }
                }
            }
        }
    }
    let verb = if args.dry_run {
        "would be removed"
    } else {
        "removed"
    };
    println!("{removed} {verb}, {kept} kept, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CleanupArgs,
    }

    fn args(flags: &[&str]) -> CleanupArgs {
        Cli::parse_from(std::iter::once("cleanup").chain(flags.iter().copied())).args
    }

    fn task(name: &str, worker: &str, task: &str) -> Found {
        Found {
            id: format!("{name}-id"),
            name: name.into(),
            labels: HashMap::from([
                (WORKER_ID.to_string(), worker.to_string()),
                (ROLE.to_string(), "task".to_string()),
                (TASK_ID.to_string(), task.to_string()),
                (EXECUTION_ID.to_string(), format!("{task}-e")),
            ]),
        }
    }

    #[test]
    fn who_is_removed() {
        let none = |_: &str, _: &TaskRef| false;
        let dead = Owner::Dead("its process has exited");
        let far = Owner::OtherHost("m1/builder-7".into());
        let c = task("oz-t1", "w1", "t1");
        let removes = |v: Verdict| matches!(v, Verdict::Remove(_));

        assert!(removes(decide(&c, &dead, &args(&[]), &none)));
        assert!(!removes(decide(
            &c,
            &Owner::Alive { pid: 7 },
            &args(&["--force", "--kept"]),
            &none
        )));
        assert!(!removes(decide(
            &c,
            &Owner::Unknown,
            &args(&["--force"]),
            &none
        )));
        // another host: only when named, by label or by hostname
        let Verdict::Keep(why) = decide(&c, &far, &args(&[]), &none) else {
            panic!()
        };
        assert!(why.contains("--gone-host builder-7"), "{why}");
        assert!(removes(decide(
            &c,
            &far,
            &args(&["--gone-host", "builder-7"]),
            &none
        )));
        assert!(removes(decide(
            &c,
            &far,
            &args(&["--gone-host", "m1/builder-7"]),
            &none
        )));
        assert!(!removes(decide(
            &c,
            &far,
            &args(&["--gone-host", "builder-8"]),
            &none
        )));
        // kept on purpose
        let k = task("oz-t2-kept", "w1", "t2");
        assert!(!removes(decide(&k, &dead, &args(&[]), &none)));
        assert!(removes(decide(&k, &dead, &args(&["--kept"]), &none)));
        // claimed and not reported
        let pending = |w: &str, t: &TaskRef| {
            w == "w1" && t.task_id == "t1" && t.execution_id.as_deref() == Some("t1-e")
        };
        let Verdict::Keep(why) = decide(&c, &dead, &args(&[]), &pending) else {
            panic!()
        };
        assert!(
            why.contains("start worker w1 once") && why.contains("--force"),
            "{why}"
        );
        assert!(removes(decide(&c, &dead, &args(&["--force"]), &pending)));
    }
}

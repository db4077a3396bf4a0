//! Names and labels of task Jobs, exactly as the Go worker writes them, so
//! that Jobs made by either worker are found by the other's selectors and a
//! team's label queries keep working.
//!
//! - Job name: `oz-task-<run>-exec-<last 8 of the execution id>`, at most 63
//!   characters (the Job controller copies it into the Pods' `job-name`
//!   label, which is limited to 63).
//! - Labels on the Job and its Pods: `oz-{worker,task,execution}-id` (the
//!   id made a valid label value) and `oz-{worker,task,execution}-hash` (hex
//!   of the first 8 bytes of the id's SHA-256): the hash is what selectors
//!   use, since sanitising can make two ids look alike.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const WORKER_ID_LABEL: &str = "oz-worker-id";
pub const WORKER_HASH_LABEL: &str = "oz-worker-hash";
pub const TASK_ID_LABEL: &str = "oz-task-id";
pub const TASK_HASH_LABEL: &str = "oz-task-hash";
pub const EXECUTION_ID_LABEL: &str = "oz-execution-id";
pub const EXECUTION_HASH_LABEL: &str = "oz-execution-hash";
/// Every label the worker sets on a task's Job and Pod (over the operator's
/// `extra_labels`, as the Go worker does).
pub const WORKER_LABELS: [&str; 6] = [
    WORKER_ID_LABEL,
    WORKER_HASH_LABEL,
    TASK_ID_LABEL,
    TASK_HASH_LABEL,
    EXECUTION_ID_LABEL,
    EXECUTION_HASH_LABEL,
];

/// Kubernetes' limit on a DNS label and on a label value.
pub const MAX_NAME: usize = 63;

/// How many trailing characters of the execution id end a Job name.
const EXECUTION_SUFFIX: usize = 8;

/// Hex of the first 8 bytes of SHA-256 of `value`: 16 characters.
pub fn label_hash(value: &str) -> String {
    hex::encode(&Sha256::digest(value.as_bytes())[..8])
}

/// The execution a task's Job belongs to: the assignment's execution id, or
/// the task id when it had none (the Go worker's `taskExecutionID`).
pub fn execution_key<'a>(task_id: &'a str, execution_id: Option<&'a str>) -> &'a str {
    match execution_id.map(str::trim) {
        Some(e) if !e.is_empty() => e,
        _ => task_id,
    }
}

/// The task Job's name for one execution of a run.
pub fn job_name(task_id: &str, execution_id: Option<&str>) -> String {
    let execution = execution_key(task_id, execution_id);
    let mut exec_fragment = name_fragment(execution);
    if exec_fragment.len() > EXECUTION_SUFFIX {
        exec_fragment = exec_fragment[exec_fragment.len() - EXECUTION_SUFFIX..]
            .trim_matches('-')
            .to_string();
    }
    if exec_fragment.is_empty() {
        exec_fragment = "exec".into();
    }
    const PREFIX: &str = "oz-task-";
    const SEPARATOR: &str = "-exec-";
    let room = MAX_NAME.saturating_sub(PREFIX.len() + SEPARATOR.len() + exec_fragment.len());
    let mut run_fragment = name_fragment(task_id);
    if run_fragment.len() > room {
        run_fragment = run_fragment[..room].trim_matches('-').to_string();
    }
    if run_fragment.is_empty() {
        run_fragment = "run".into();
    }
    format!("{PREFIX}{run_fragment}{SEPARATOR}{exec_fragment}")
}

/// Lower-case letters and digits kept, everything else `-`, trimmed of `-`.
fn name_fragment(value: &str) -> String {
    let mapped: String = value
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').to_string()
}

/// `value` as a label value: lower case, `[a-z0-9._-]`, other characters
/// `-`, trimmed of `-_.`, at most 63 characters; "unknown" when nothing is
/// left.
pub fn label_value(value: &str) -> String {
    let mapped: String = value
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .collect();
    let trim = |s: &str| s.trim_matches(|c| matches!(c, '-' | '_' | '.')).to_string();
    let mut value = trim(&mapped);
    if value.len() > MAX_NAME {
        value = trim(&value[..MAX_NAME]);
    }
    if value.is_empty() {
        "unknown".into()
    } else {
        value
    }
}

/// The labels of a task's Job and Pod: the operator's `extra_labels`, then
/// the worker's six (which win).
pub fn task_labels(
    extra: &BTreeMap<String, String>,
    worker_id: &str,
    task_id: &str,
    execution_id: Option<&str>,
) -> BTreeMap<String, String> {
    let execution = execution_key(task_id, execution_id);
    let mut labels = extra.clone();
    for (id_label, hash_label, value) in [
        (WORKER_ID_LABEL, WORKER_HASH_LABEL, worker_id),
        (TASK_ID_LABEL, TASK_HASH_LABEL, task_id),
        (EXECUTION_ID_LABEL, EXECUTION_HASH_LABEL, execution),
    ] {
        labels.insert(id_label.into(), label_value(value));
        labels.insert(hash_label.into(), label_hash(value));
    }
    labels
}

/// The selector for the Pods of one execution.
pub fn execution_selector(task_id: &str, execution_id: Option<&str>) -> String {
    format!(
        "{EXECUTION_HASH_LABEL}={}",
        label_hash(execution_key(task_id, execution_id))
    )
}

/// The selector for every Job of one worker id.
pub fn worker_selector(worker_id: &str) -> String {
    format!("{WORKER_HASH_LABEL}={}", label_hash(worker_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_run_keeps_its_whole_id_in_the_job_name() {
        let run = "3f2b6c1e-8f7a-4a51-9d0e-5b1c2d3e4f50";
        let name = job_name(run, Some("9a8b7c6d-1111-2222-3333-abcdef012345"));
        assert_eq!(name, format!("oz-task-{run}-exec-ef012345"));
        assert!(name.len() <= MAX_NAME);
    }

    #[test]
    fn long_and_odd_ids_still_give_a_valid_dns_label() {
        let name = job_name(&"R".repeat(100), Some("--__--"));
        assert!(name.len() <= MAX_NAME, "{name}");
        assert!(name.ends_with("-exec-exec"), "{name}");
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        // Without an execution id the task id stands in for it.
        assert_eq!(job_name("run-1", None), "oz-task-run-1-exec-run-1");
        assert_eq!(job_name("!!", None), "oz-task-run-exec-exec");
    }

    #[test]
    fn label_values_are_sanitised_and_hashes_are_sha256_prefixes() {
        assert_eq!(label_value("Team A/Worker_1."), "team-a-worker_1");
        assert_eq!(label_value("///"), "unknown");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        // sha256("abc") = ba7816bf8f01cfea…
        assert_eq!(label_hash("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn worker_labels_win_over_extra_labels() {
        let extra = BTreeMap::from([
            ("team".to_string(), "infra".to_string()),
            (TASK_ID_LABEL.to_string(), "forged".to_string()),
        ]);
        let labels = task_labels(&extra, "w1", "t1", None);
        assert_eq!(labels["team"], "infra");
        assert_eq!(labels[TASK_ID_LABEL], "t1");
        assert_eq!(labels[EXECUTION_HASH_LABEL], label_hash("t1"));
        assert_eq!(labels.len(), 7);
    }
}

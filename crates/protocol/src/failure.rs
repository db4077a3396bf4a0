//! The bounded set of failure reasons, kept open on the wire: other backends
//! (and the control plane's `worker_lost`) add their own, and a peer must not
//! fail to decode a reason it does not know.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! reasons {
    ($($variant:ident => $text:literal),* $(,)?) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(from = "String", into = "String")]
        #[schemars(with = "String")]
        pub enum FailureReason {
            $($variant,)*
            /// A reason this build does not know, kept verbatim.
            Other(String),
        }

        impl FailureReason {
            pub fn as_str(&self) -> &str {
                match self {
                    $(FailureReason::$variant => $text,)*
                    FailureReason::Other(s) => s,
                }
            }
        }

        impl From<String> for FailureReason {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($text => FailureReason::$variant,)*
                    _ => FailureReason::Other(s),
                }
            }
        }
    };
}

reasons! {
    ImagePull => "image_pull",
    InvalidImage => "invalid_image",
    SidecarPrep => "sidecar_prep",
    ContainerCreate => "container_create",
    ContainerStart => "container_start",
    ContainerWait => "container_wait",
    ContainerExit => "container_exit",
    ContainerOom => "container_oom",
    TaskTimeout => "task_timeout",
    TaskCancelled => "task_cancelled",
    GracefulShutdown => "graceful_shutdown",
    Cleanup => "cleanup",
    Unknown => "unknown",
    WorkerLost => "worker_lost",
    // The Go worker's direct backend.
    WorkspaceSetup => "workspace_setup",
    SetupCommand => "setup_command",
    AgentInvocation => "agent_invocation",
    // The Go worker's command backend.
    DispatchCommand => "dispatch_command",
    DispatchTimeout => "dispatch_timeout",
    // The Go worker's kubernetes backend.
    JobCreate => "job_create",
    JobWatch => "job_watch",
    PodWatch => "pod_watch",
    JobFailed => "job_failed",
    ActiveDeadline => "active_deadline",
    InitContainer => "init_container",
    Unschedulable => "unschedulable",
    VolumeMount => "volume_mount",
}

impl From<FailureReason> for String {
    fn from(r: FailureReason) -> String {
        r.as_str().to_string()
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_reasons_round_trip() {
        for text in ["container_oom", "worker_lost", "k8s_pod_evicted"] {
            let r: FailureReason = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{text}\""));
        }
        assert_eq!(
            FailureReason::from("image_pull".to_string()),
            FailureReason::ImagePull
        );
    }
}

//! Where the daemons we talk to disagree with the vendored spec.
//!
//! The generator reads these tables; the spec stays as vendored and generated
//! code is never edited by hand. Every entry says why it exists.

/// Values a daemon sends that the spec's enum does not list. Unknown values
/// decode anyway (every enum has an `Other(String)` variant); listing them
/// here gives them a proper variant callers can match on.
/// (generated enum type, extra wire values, why)
pub const EXTRA_ENUM_VALUES: &[(&str, &[&str], &str)] = &[
    (
        "ContainerStateStatus",
        &["configured", "initialized", "stopping", "stopped"],
        "Podman's compatibility API reports its own container states",
    ),
    (
        "ContainerSummaryState",
        &["configured", "initialized", "stopping", "stopped"],
        "the same Podman states, in container lists",
    ),
    (
        "HealthStatus",
        &[""],
        "Podman sends an empty health status for containers without a healthcheck",
    ),
    (
        "EventMessageType",
        &["pod", "system"],
        "Podman emits events for pods and for itself",
    ),
];

/// Fields the spec lists in a schema's `required` that a real engine omits
/// or sends as `null`: they stay `Option` so the engine's answer decodes.
/// (generated type, JSON field name, which engine and what it sends)
///
/// Checked against dockerd 20.10, Docker 26.1 and 28.5, Podman 4.3 and 5.8
/// (the test matrix: `scripts/test-env.sh`) by sending every operation
/// whose answer holds one of these types and comparing against the spec.
/// Not checkable there, so taken from the spec as written: the plugin types
/// (no engine here has a plugin), `Driver` (swarm only),
/// `ImageManifestSummary` (only with the containerd image store).
pub const NOT_REQUIRED: &[(&str, &str, &str)] = &[
    (
        "ImageSummary",
        "Labels",
        "dockerd 20.10 and Podman 4.3 send null for an image without labels",
    ),
    (
        "ImageSummary",
        "RepoDigests",
        "dockerd 20.10 sends null in image lists, Docker 26/28 and Podman 5 in /system/df",
    ),
    (
        "Volume",
        "Labels",
        "dockerd 20.10, Docker 26 and 28 send null for a volume created without labels",
    ),
    (
        "Volume",
        "Options",
        "every engine here (dockerd 20.10, Docker 26/28, Podman 4/5) sends null without options",
    ),
    (
        "ImageHistoryResponseItem",
        "Tags",
        "Podman 4.3 sends null for an untagged layer",
    ),
    (
        "DriverData",
        "Data",
        "Podman 5 with the vfs storage driver sends null",
    ),
];

/// Fields the spec leaves optional although every engine sends them, made
/// required because callers need them (an id to act on, a name to show, a
/// platform to check): a daemon answer without one is a decode error naming
/// the field instead of an empty string read further on.
/// (generated type, JSON field name, why)
///
/// Every engine of the test matrix (dockerd 20.10, Docker 26/28, Podman 4/5)
/// sends each of these.
pub const EXTRA_REQUIRED: &[(&str, &str, &str)] = &[
    (
        "ContainerSummary",
        "Id",
        "the container's id: what every later call about it needs",
    ),
    (
        "ContainerInspectResponse",
        "Id",
        "the container's id: what every later call about it needs",
    ),
    (
        "ContainerInspectResponse",
        "Name",
        "the container's name, which kept containers are found by",
    ),
    (
        "ImageInspect",
        "Id",
        "the image id a task's container is created from and its libc check is keyed by",
    ),
    (
        "ImageInspect",
        "Os",
        "the image's platform, checked against the daemon's before a task runs",
    ),
    (
        "ImageInspect",
        "Architecture",
        "the image's platform, checked against the daemon's before a task runs",
    ),
];

/// Fields whose type the spec gets wrong: (type, JSON field name, Rust
/// type, why). Empty so far: no wrongly typed field has been observed yet
/// (`null` or a missing required field belongs in [`NOT_REQUIRED`]). Add one (with its evidence) rather than editing
/// the spec.
pub const FIELD_TYPES: &[(&str, &str, &str, &str)] = &[];

/// How a successful response is read when the spec does not say (no schema)
/// or says something the daemon does not do.
#[derive(Clone, Copy)]
pub enum ResponseQuirk {
    /// JSON lines of the given model type.
    JsonStream(&'static str),
    /// A hijacked connection (`Upgrade: tcp`, 101), or a plain 200 without a
    /// body when the request asked the daemon not to attach
    /// (`ExecStartOutcome`).
    UpgradeOrDetached,
    /// A WebSocket (RFC 6455) handshake on the same connection, 101 with a
    /// checked `Sec-WebSocket-Accept`.
    WebSocket,
}

/// (operationId, response, why)
pub const RESPONSES: &[(&str, ResponseQuirk, &str)] = &[
    (
        "ImageCreate",
        ResponseQuirk::JsonStream("CreateImageInfo"),
        "the spec gives no schema; the daemon streams JSON progress lines",
    ),
    (
        "ImagePush",
        ResponseQuirk::JsonStream("PushImageInfo"),
        "the spec gives no schema; the daemon streams JSON progress lines",
    ),
    (
        "ImageBuild",
        ResponseQuirk::JsonStream("BuildInfo"),
        "the spec gives no schema; the daemon streams JSON build output",
    ),
    (
        "ImageLoad",
        ResponseQuirk::JsonStream("BuildInfo"),
        "the spec gives no schema; the daemon streams JSON lines with `stream`",
    ),
    (
        "SystemEvents",
        ResponseQuirk::JsonStream("EventMessage"),
        "the spec names one EventMessage; the daemon sends one per line",
    ),
    (
        "ContainerStats",
        ResponseQuirk::JsonStream("ContainerStatsResponse"),
        "one JSON object per line while `stream` is true (one line otherwise)",
    ),
    (
        "PluginPull",
        ResponseQuirk::JsonStream("CreateImageInfo"),
        "the spec says 204; the daemon streams JSON pull progress",
    ),
    (
        "PluginUpgrade",
        ResponseQuirk::JsonStream("CreateImageInfo"),
        "the spec says 204; the daemon streams JSON pull progress",
    ),
    (
        "PluginPush",
        ResponseQuirk::JsonStream("PushImageInfo"),
        "the spec says 200 without a body; the daemon streams JSON push progress",
    ),
    (
        "ExecStart",
        ResponseQuirk::UpgradeOrDetached,
        // One method, not an attached and a detached one: whether the daemon
        // hijacks is decided by a body field (`Detach`), so two methods would
        // have to be kept in agreement with it by every caller, and the wrong
        // pairing fails badly (a hijacked stream read as an empty body). The
        // client reads the answer instead: 101 is attached, 200 detached.
        "clients hijack the connection (as the docker CLI does) to get stdin; \
         with `Detach: true` the daemon answers 200 without a body instead of 101",
    ),
    (
        "ContainerAttachWebsocket",
        ResponseQuirk::WebSocket,
        "the spec's 101 is a WebSocket handshake, not a raw `Upgrade: tcp` hijack",
    ),
];

/// Operations deliberately not generated. (operationId, why)
/// Empty: every operation of the spec has a method. Add one only with a
/// reason a caller can act on.
pub const SKIPPED_OPERATIONS: &[(&str, &str)] = &[];

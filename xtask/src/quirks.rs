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

/// Fields whose type the spec gets wrong: (type, JSON field name, Rust
/// type, why). Empty so far: every field is already `Option`, so `null` and
/// missing fields decode without an entry here, and no wrongly typed field
/// has been observed yet. Add one (with its evidence) rather than editing
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

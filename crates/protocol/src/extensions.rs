//! Protocol extensions a server may offer at the WebSocket handshake.
//!
//! The server lists what it offers in one response header of the upgrade
//! (`Oz-Worker-Extensions: report-ack, task-reannounce, task-output,
//! worker-state`). The
//! worker never asks and never sends anything an extension adds unless the
//! server offered it on that connection, so a server that knows none of
//! them (the hosted Oz service) sees exactly the reference protocol.
//! docs/PROTOCOL.md describes each one.

/// The handshake response header that lists the offered extensions
/// (comma-separated tokens, case-insensitive, unknown tokens ignored).
pub const EXTENSIONS_HEADER: &str = "oz-worker-extensions";

/// `report-ack`: the server answers every terminal report with
/// `report_ack` once it is durably recorded (also for a run that had
/// already ended), and the worker keeps the report until then.
pub const REPORT_ACK: &str = "report-ack";
/// `task-reannounce`: on every new connection the worker sends
/// `task_claimed` (with `execution_id`) again for each task it still holds;
/// the server accepts a repeated claim as idempotent.
pub const TASK_REANNOUNCE: &str = "task-reannounce";
/// `task-output`: the worker streams `task_output` chunks while a task runs.
pub const TASK_OUTPUT: &str = "task-output";
/// `worker-state`: the worker says when it starts draining (`worker_state`
/// `{draining: true}`), on the connection where it starts and first on
/// every later one, so the server stops offering it runs and can show it.
pub const WORKER_STATE: &str = "worker-state";

/// What one connection may use. `Default` is the reference protocol: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    pub report_ack: bool,
    pub task_reannounce: bool,
    pub task_output: bool,
    pub worker_state: bool,
}

impl Extensions {
    /// Everything this build implements (what the local control plane offers).
    pub const ALL: Extensions = Extensions {
        report_ack: true,
        task_reannounce: true,
        task_output: true,
        worker_state: true,
    };

    /// Parses the header's values (it may be repeated). Unknown tokens are
    /// ignored so a newer server can offer more.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Extensions {
        let mut ext = Extensions::default();
        for token in values.into_iter().flat_map(|v| v.split(',')) {
            match token.trim().to_ascii_lowercase().as_str() {
                REPORT_ACK => ext.report_ack = true,
                TASK_REANNOUNCE => ext.task_reannounce = true,
                TASK_OUTPUT => ext.task_output = true,
                WORKER_STATE => ext.worker_state = true,
                _ => {}
            }
        }
        ext
    }

    /// The header value that offers these extensions.
    pub fn header_value(&self) -> String {
        let mut tokens = Vec::new();
        if self.report_ack {
            tokens.push(REPORT_ACK);
        }
        if self.task_reannounce {
            tokens.push(TASK_REANNOUNCE);
        }
        if self.task_output {
            tokens.push(TASK_OUTPUT);
        }
        if self.worker_state {
            tokens.push(WORKER_STATE);
        }
        tokens.join(", ")
    }

    pub fn is_empty(&self) -> bool {
        *self == Extensions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_ignores_unknown_tokens() {
        assert_eq!(
            Extensions::parse([Extensions::ALL.header_value().as_str()]),
            Extensions::ALL
        );
        let some = Extensions::parse(["Report-Ack , future-thing", "task-output"]);
        assert_eq!(
            some,
            Extensions {
                report_ack: true,
                task_reannounce: false,
                task_output: true,
                worker_state: false,
            }
        );
        assert!(Extensions::parse(std::iter::empty()).is_empty());
        assert!(Extensions::parse([""]).is_empty());
    }
}

//! The worker wire protocol (see docs/PROTOCOL.md): the one definition of every
//! message, shared by the worker and the control plane. Wire types are serde
//! types; nothing here does I/O.

mod codec;
pub mod extensions;
mod failure;
mod failure_details;
mod messages;
pub mod version;
pub mod worker_id;

pub use codec::{decode_server_frame, decode_worker_frame, encode, DecodeError};
pub use extensions::Extensions;
pub use failure::FailureReason;
pub use failure_details::*;
pub use messages::*;
pub use version::{WORKER_VERSION, WORKER_VERSION_HEADER};
pub use worker_id::{is_reserved_worker_id, RESERVED_WORKER_ID_PREFIX};

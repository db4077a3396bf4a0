//! Small shared foundations with no knowledge of the worker, the control
//! plane or any runtime: secrets that never print, durations, text escaping
//! and error chains, XDG directories, percent-encoding, the operator's
//! environment entries, image references, the trusted CA roots, and the one
//! outbound connection stack ([`net`]).

pub mod dirs;
pub mod duration;
pub mod image_reference;
pub mod net;
pub mod operator_env;
pub mod percent;
pub mod secret;
pub mod text;
pub mod tls;
pub mod tls_roots;

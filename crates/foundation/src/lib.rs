//! Small shared foundations with no knowledge of the worker, the control
//! plane or any runtime: secrets that never print, durations, escaping of
//! outside text, error chains on one line, XDG directories,
//! percent-encoding, the operator's environment entries, image references,
//! the trusted CA roots, the generic TLS client pieces ([`tls`]) and the
//! one outbound connection stack ([`net`]).

pub mod backoff;
pub mod dirs;
pub mod duration;
pub mod error_chain;
pub mod escape;
pub mod image_reference;
pub mod net;
pub mod operator_env;
pub mod percent;
pub mod secret;
pub mod tls;
pub mod tls_roots;

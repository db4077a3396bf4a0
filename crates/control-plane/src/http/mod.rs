//! The control plane's HTTP side: what every endpoint shares
//! (`endpoint_support`: bodies, JSON and error responses, authentication,
//! shared state), the runs API's resources (`api`), the worker endpoint
//! (`ws`), the management UI (`ui`, with its sign-ins in `sessions` and
//! their per-address failure limit in `login_limit`), the connection budget
//! (`connections`), live-output followers per team (`followers`), the
//! OpenAPI description (`openapi`), TLS files (`tls`) and `server`, which
//! only accepts connections and routes requests. Above `dispatch` and
//! `store`; nothing below names it.

pub mod api;
pub mod connections;
pub mod endpoint_support;
pub mod followers;
pub mod login_limit;
pub mod openapi;
pub mod paging;
pub mod server;
pub mod sessions;
pub mod tls;
pub mod ui;
pub mod ws;

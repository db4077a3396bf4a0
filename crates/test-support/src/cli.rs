//! The worker binary as the CLI client of a control plane (`runs`,
//! `schedules`, `workers`, ...), configured as a user would: the server in
//! `OZ_SERVER_URL`, the team key in `WARP_API_KEY`.

/// The binary ([`crate::worker_binary`]) with `OZ_SERVER_URL=server` and
/// `WARP_API_KEY=key`, killed when dropped; add the subcommand's arguments.
pub fn client(server: &str, key: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(crate::worker_binary());
    c.env("OZ_SERVER_URL", server)
        .env("WARP_API_KEY", key)
        .kill_on_drop(true);
    c
}

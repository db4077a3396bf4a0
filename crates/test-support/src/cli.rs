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

/// A finished process's stdout then stderr, as text (lossy UTF-8): what a
/// test shows when a command's result is not the expected one.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

//! Running as PID 1 (the container image without `--init`): the kernel
//! hands every orphaned process of the container to PID 1, and only PID 1
//! can reap it; a PID 1 that never calls `wait` for them collects zombies
//! (one per task that left a background process behind). Waiting for any
//! child from inside the worker would steal the exit statuses of the
//! worker's own children (tokio waits for each of them by pid), so instead,
//! as `tini` and `docker run --init` do, PID 1 starts the worker again as
//! its child (the same executable and arguments) and stays a minimal init
//! that forwards signals to it, reaps every orphan, and exits with the
//! worker's exit status.
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

/// Signals PID 1 passes on to the worker (SIGCHLD is its own business).
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// When this process is PID 1, starts the worker as its child and becomes
/// its init: it never returns then. Elsewhere, or when the child cannot be
/// started, it returns at once (and the caller runs as usual). Call it
/// first thing in `main`, before any thread exists.
pub fn reap_orphans_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "oz-agent-worker".into());
    // The child is not PID 1, so it runs the worker itself.
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let child = match std::process::Command::new(exe)
        .arg0(&arg0)
        .args(args)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "warning: running as PID 1 and cannot start the worker as a child to reap orphans ({e}): \
                 orphaned processes will stay zombies; run the container with --init"
            );
            return;
        }
    };
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    // Blocked only now (a blocked mask would pass to the child through
    // exec): a signal in the instant before this is ignored, as the kernel
    // does for a PID 1 without handlers.
    if nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        eprintln!("warning: running as PID 1 and cannot block signals to forward them");
    }
    init_loop(Pid::from_raw(child.id() as i32), &set)
}

/// PID 1's whole life once the worker runs as `child`.
fn init_loop(child: Pid, set: &SigSet) -> ! {
    loop {
        // Reap everything that has ended: the worker, or orphans (also what
        // ended before the signals were blocked).
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    std::process::exit(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(signal) => {
                let _ = kill(child, signal);
            }
        }
    }
}

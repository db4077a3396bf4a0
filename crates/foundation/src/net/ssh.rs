//! `ssh://[user@]host[:port]` as the Docker CLI does it: every connection is
//! one `ssh` process running `docker system dial-stdio` on the remote host,
//! and the process's stdin/stdout are the connection's bytes.
//!
//! ssh's own configuration (`~/.ssh/config`, the agent, `known_hosts`)
//! decides keys and host checking; nothing here reads or passes a key. We add
//! `BatchMode=yes`: a worker has nobody to answer a password or host key
//! prompt, so ssh must fail (with its message) instead of waiting on a tty.
//!
//! The child is killed when the connection is dropped. Its stderr is kept
//! (bounded) and becomes the error when ssh fails: a connection that ends
//! while ssh exited non-zero reads as an error carrying [`SshFailure`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;

/// The program run for every connection (found on `PATH`).
const SSH_PROGRAM: &str = "ssh";
/// What the remote host runs.
const REMOTE_COMMAND: [&str; 3] = ["docker", "system", "dial-stdio"];
/// The most of ssh's stderr kept (its tail).
const STDERR_LIMIT: usize = 8 * 1024;
/// How long a connection that reached end-of-file waits for ssh's exit
/// status before treating the end as a clean close.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Where `ssh` goes: the parts of an `ssh://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl SshTarget {
    /// The arguments of `ssh`, as the Docker CLI's connection helper builds
    /// them (`-o ConnectTimeout=N -T [-l user] [-p port] -- host docker
    /// system dial-stdio`), plus `-o BatchMode=yes`.
    pub fn args(&self, connect_timeout: Duration) -> Vec<String> {
        let secs = connect_timeout.as_secs() + u64::from(connect_timeout.subsec_nanos() > 0);
        let mut args = vec![
            "-o".to_string(),
            format!("ConnectTimeout={}", secs.max(1)),
            "-o".to_string(),
            "BatchMode=yes".to_string(),
            "-T".to_string(),
        ];
        if let Some(user) = &self.user {
            args.push("-l".into());
            args.push(user.clone());
        }
        if let Some(port) = self.port {
            args.push("-p".into());
            args.push(port.to_string());
        }
        args.push("--".into());
        args.push(self.host.clone());
        args.extend(REMOTE_COMMAND.iter().map(|s| s.to_string()));
        args
    }

    /// The command line, for messages: `ssh -l root -p 2222 -- host docker system dial-stdio`.
    pub fn command_line(&self) -> String {
        let mut parts = vec![SSH_PROGRAM.to_string()];
        if let Some(user) = &self.user {
            parts.push(format!("-l {user}"));
        }
        if let Some(port) = self.port {
            parts.push(format!("-p {port}"));
        }
        parts.push(format!("-- {}", self.host));
        parts.extend(REMOTE_COMMAND.iter().map(|s| s.to_string()));
        parts.join(" ")
    }
}

/// ssh could not be run, or exited non-zero: its exit status and what it
/// said on stderr (ssh never prints a key or password there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshFailure {
    /// The exit code; `None` when it could not start or died by a signal.
    pub exit_code: Option<i32>,
    /// ssh's stderr (its last lines, one line), or why it could not start.
    pub message: String,
}

impl std::fmt::Display for SshFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exit_code {
            Some(code) => write!(f, "ssh exited with status {code}")?,
            None => f.write_str("ssh failed")?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for SshFailure {}

/// How the child ended, sent by the task that owns it.
struct Exit {
    status: Option<std::process::ExitStatus>,
    stderr: String,
}

/// Starts `ssh` for one connection.
pub fn spawn(target: &SshTarget, connect_timeout: Duration) -> Result<SshStream, SshFailure> {
    let mut child = Command::new(SSH_PROGRAM)
        .args(target.args(connect_timeout))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SshFailure {
            exit_code: None,
            message: match e.kind() {
                io::ErrorKind::NotFound => {
                    "cannot run `ssh`: it is not on PATH (install the OpenSSH client)".to_string()
                }
                _ => format!("cannot run `ssh`: {e}"),
            },
        })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(SshFailure {
            exit_code: None,
            message: "ssh started without its pipes".into(),
        });
    };
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let (exit_tx, exit_rx) = oneshot::channel::<Exit>();
    tokio::spawn(async move {
        let stderr_task = tokio::spawn(read_tail(stderr));
        let status = tokio::select! {
            status = child.wait() => status.ok(),
            // The stream was dropped (its sender with it): end ssh now.
            _ = kill_rx => {
                let _ = child.kill().await;
                None
            }
        };
        let stderr = match tokio::time::timeout(Duration::from_secs(1), stderr_task).await {
            Ok(Ok(text)) => text,
            _ => String::new(),
        };
        let _ = exit_tx.send(Exit { status, stderr });
    });
    Ok(SshStream {
        stdin: Some(stdin),
        stdout,
        exit: Some(exit_rx),
        exit_wait: None,
        failure: None,
        _kill: kill_tx,
    })
}

/// Reads ssh's stderr to its end, keeping the last [`STDERR_LIMIT`] bytes,
/// and condenses it to one line.
async fn read_tail(mut stderr: ChildStderr) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_LIMIT {
            kept.drain(..kept.len() - STDERR_LIMIT);
        }
    }
    condense(&String::from_utf8_lossy(&kept))
}

/// ssh's message on one line: non-empty lines, without the `@` frame of its
/// warning banners and the `Warning: Permanently added` notes, joined with ` | `.
pub(crate) fn condense(stderr: &str) -> String {
    stderr
        .lines()
        .map(|l| l.trim().trim_matches('@').trim())
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// One connection over `ssh … docker system dial-stdio`.
pub struct SshStream {
    /// `None` once shut down (dropping it closes ssh's stdin, which the
    /// remote `dial-stdio` passes on as a half-close).
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    /// How ssh ended; taken once known.
    exit: Option<oneshot::Receiver<Exit>>,
    exit_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    failure: Option<SshFailure>,
    /// Dropped with the stream: tells the owning task to kill ssh.
    _kill: oneshot::Sender<()>,
}

impl SshStream {
    /// After end-of-file or a broken pipe: waits (bounded) for ssh's exit
    /// and returns its failure if it exited non-zero.
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<Option<SshFailure>> {
        if let Some(rx) = self.exit.as_mut() {
            let wait = self
                .exit_wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(EXIT_WAIT)));
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(exit)) => {
                    self.exit = None;
                    let failed = exit.status.is_some_and(|s| !s.success());
                    if failed {
                        self.failure = Some(SshFailure {
                            exit_code: exit.status.and_then(|s| s.code()),
                            message: exit.stderr,
                        });
                    }
                }
                Poll::Ready(Err(_)) => self.exit = None,
                Poll::Pending => {
                    ready!(wait.as_mut().poll(cx));
                    self.exit = None;
                }
            }
        }
        Poll::Ready(self.failure.clone())
    }
}

fn failure_error(f: SshFailure) -> io::Error {
    io::Error::other(f)
}

impl AsyncRead for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stdout).poll_read(cx, buf))?;
        if buf.filled().len() > before || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // End of file: a clean close unless ssh failed.
        match ready!(this.poll_failure(cx)) {
            Some(f) => Poll::Ready(Err(failure_error(f))),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(stdin) = this.stdin.as_mut() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the ssh connection's write side is shut down",
            )));
        };
        match ready!(Pin::new(stdin).poll_write(cx, buf)) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                match ready!(this.poll_failure(cx)) {
                    Some(f) => Poll::Ready(Err(failure_error(f))),
                    None => Poll::Ready(Err(e)),
                }
            }
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(stdin) = this.stdin.as_mut() {
            ready!(Pin::new(stdin).poll_flush(cx))?;
        }
        this.stdin = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_as_the_docker_cli_builds_them() {
        let t = SshTarget {
            user: Some("me".into()),
            host: "box".into(),
            port: Some(2222),
        };
        assert_eq!(
            t.args(Duration::from_millis(2500)).join(" "),
            "-o ConnectTimeout=3 -o BatchMode=yes -T -l me -p 2222 -- box docker system dial-stdio"
        );
        let t = SshTarget {
            user: None,
            host: "::1".into(),
            port: None,
        };
        assert_eq!(
            t.args(Duration::ZERO).join(" "),
            "-o ConnectTimeout=1 -o BatchMode=yes -T -- ::1 docker system dial-stdio"
        );
        assert_eq!(t.command_line(), "ssh -- ::1 docker system dial-stdio");
    }

    #[test]
    fn stderr_is_condensed() {
        let text = "@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@\nOffending key in /k:1\n\nHost key verification failed.\n";
        assert_eq!(
            condense(text),
            "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! | Offending key in /k:1 | Host key verification failed."
        );
    }

    #[tokio::test]
    async fn a_failed_ssh_reads_as_its_error() {
        // Nothing listens on port 1: ssh fails fast with "Connection refused".
        let t = SshTarget {
            user: None,
            host: "127.0.0.1".into(),
            port: Some(1),
        };
        let Ok(mut s) = spawn(&t, Duration::from_secs(3)) else {
            eprintln!("SKIPPED: no ssh client");
            return;
        };
        let mut out = Vec::new();
        let err = s.read_to_end(&mut out).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ssh exited with status 255"), "{text}");
        assert!(text.contains("port 1"), "{text}");
    }
}

//! `PrivateDockerd`: a second dockerd for fault tests, which kill, stop and
//! restart it. It has its own data root, exec root, pidfile, socket and
//! bridge (never `--bridge=none`: dockerd 20.10 then deletes the host's
//! docker0). Dropping it stops it and removes everything it made: its
//! containerd and shims, its mounts, its folder and its bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct PrivateDockerd {
    root: PathBuf,
    bridge: String,
    child: Option<std::process::Child>,
    starts: usize,
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

impl PrivateDockerd {
    /// Starts it and loads `images` from the test environment's dockerd.
    /// Returns `None` (or fails under CI) when dockerd is not installed.
    pub async fn start(images: &[&str]) -> Option<PrivateDockerd> {
        if sh("command -v dockerd").stdout.is_empty() {
            return super::docker::unavailable(
                "dockerd is not installed (run scripts/test-env.sh up)",
            );
        }
        let tag = &oz_runtime::host::random_id()[..8];
        let root = PathBuf::from(format!("/tmp/ozf-{tag}"));
        std::fs::create_dir_all(&root).unwrap();
        let bridge = format!("ozf{tag}");
        // A /24 in 10.213.0.0/16 that no interface here uses.
        let used = String::from_utf8(sh("ip -o -4 addr show").stdout).unwrap();
        let octet = (1..=254)
            .map(|_| fastrand::u8(1..=254))
            .find(|o| !used.contains(&format!("10.213.{o}.")))
            .expect("a free /24");
        let out = sh(&format!(
            "ip link add {bridge} type bridge && ip addr add 10.213.{octet}.1/24 dev {bridge} && ip link set {bridge} up"
        ));
        assert!(
            out.status.success(),
            "bridge: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut d = PrivateDockerd {
            root,
            bridge,
            child: None,
            starts: 0,
        };
        d.spawn().await;
        let out = sh(&format!(
            "docker save {} | docker -H {} load",
            images.join(" "),
            d.host()
        ));
        assert!(
            out.status.success(),
            "loading images: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(d)
    }

    /// `unix://…/docker.sock`, for DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.root.join("docker.sock").display())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn spawn(&mut self) {
        self.launch();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.ready() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private dockerd did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether it answers `/_ping`; panics when it exited.
    fn ready(&mut self) -> bool {
        let sock = self.root.join("docker.sock");
        if sh(&format!(
            "curl -sf --unix-socket {} http://d/_ping",
            sock.display()
        ))
        .status
        .success()
        {
            return true;
        }
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the private dockerd exited ({status}) while starting: {}",
                self.log()
            );
        }
        false
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.root.join(format!("dockerd-{}.log", self.starts))).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("docker.pid"))
            .args(["-H", &self.host()])
            .arg(format!("--bridge={}", self.bridge))
            .arg("--iptables=false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.root.join(format!("dockerd-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("dockerd runs").id();
        assert!(sh(&format!("kill -{sig} {pid}")).status.success());
    }

    /// SIGKILL: its containerd and shims keep running, as after a crash.
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.child.take().unwrap().wait().unwrap();
    }

    /// SIGTERM: dockerd stops every container, then exits.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "dockerd did not stop"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts it again with the same roots, socket and bridge.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.forget_dead_containerd().await;
        self.spawn().await;
    }

    /// dockerd's containerd dies with it (parent-death signal), but here
    /// nothing may reap it quickly, and dockerd takes a zombie named in the
    /// pid file for a live containerd and waits for it in vain. A real init
    /// reaps at once; do what it would have done.
    async fn forget_dead_containerd(&self) {
        let pid_file = self.root.join("exec/containerd/containerd.pid");
        let Ok(pid) = std::fs::read_to_string(&pid_file) else {
            return;
        };
        let state = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .ok()
                .and_then(|s| s.rfind(')').map(|i| s[i + 2..i + 3].to_string()))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Some(s) = state(&pid) {
            if s == "Z" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old containerd does not die"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_file(&pid_file);
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        // A killed dockerd left containers running under its shims: start it
        // again so its own shutdown stops them (and its containerd).
        if self.child.is_none() {
            self.launch();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.ready()))
                .unwrap_or(true)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = sh(&format!("kill -TERM {}", c.id()));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever is left of its containerd and shims.
        let root = self.root.display().to_string();
        let _ = sh(&format!(
            "for p in $(grep -l -a -- '{root}' /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do kill -9 $p 2>/dev/null; done"
        ));
        let _ = sh(&format!(
            "grep -- ' {root}' /proc/mounts | cut -d' ' -f2 | sort -r | while read m; do umount -l \"$m\"; done"
        ));
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = sh(&format!("ip link del {}", self.bridge));
    }
}

//! `oz-agent-worker check`: resolves the daemon the worker would use,
//! negotiates with it and pings it, then says what it found. On failure it
//! prints the same actionable error the worker would give and exits 1.

use oz_docker_engine::transport::ssh::SshTarget;
use oz_docker_engine::transport::{EndpointSource, EngineKind, EnvSnapshot, Host};
use oz_docker_engine::Docker;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `check` reports; also its `--json` shape.
#[derive(Debug, serde::Serialize)]
pub struct CheckReport {
    pub ok: bool,
    /// e.g. `unix:///var/run/docker.sock`, `tcp://127.0.0.1:2376`.
    pub endpoint: String,
    pub chosen_by: ChosenBy,
    /// For `ssh://`: the command run for every connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    pub tls: TlsReport,
    pub engine: EngineReport,
    /// The version every request uses.
    pub api_version: String,
    /// Whether `api_version` was pinned by `DOCKER_API_VERSION`.
    pub api_version_pinned: bool,
    pub platform: String,
    /// How the Docker runtime would mount sidecars on this daemon:
    /// `image-mount` (API >= 1.48, no copy) or `volume-copy`.
    pub sidecars: &'static str,
    /// The same, in a sentence.
    pub sidecars_detail: String,
}

#[derive(Debug, serde::Serialize)]
pub struct ChosenBy {
    /// `env`, `context` or `default`.
    pub kind: &'static str,
    /// The context name, for `context`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Human-readable: `env DOCKER_HOST`, `context NAME, selected by DOCKER_CONTEXT`.
    pub detail: String,
}

#[derive(Debug, serde::Serialize)]
pub struct TlsReport {
    pub enabled: bool,
    /// The daemon's certificate is checked against a CA.
    pub verified: bool,
    /// A client certificate is presented.
    pub client_certificate: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct EngineReport {
    /// `docker` or `podman`.
    pub kind: &'static str,
    pub version: String,
    /// The newest API version the daemon speaks.
    pub api_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libpod_api_version: Option<String>,
}

impl CheckReport {
    /// Describes a connected client.
    pub fn new(docker: &Docker, pinned: bool) -> Self {
        use oz_runtime_docker::SidecarMode;
        let endpoint = docker.endpoint();
        let engine = docker.engine();
        let mode = SidecarMode::for_daemon(engine.kind, docker.api_version());
        CheckReport {
            ok: true,
            endpoint: endpoint.host.to_string(),
            chosen_by: ChosenBy {
                kind: endpoint.source.kind(),
                context: match &endpoint.source {
                    EndpointSource::Context { name, .. } => Some(name.clone()),
                    _ => None,
                },
                detail: endpoint.source.to_string(),
            },
            ssh_command: match &endpoint.host {
                Host::Ssh { user, host, port } => Some(
                    SshTarget {
                        user: user.clone(),
                        host: host.clone(),
                        port: *port,
                    }
                    .command_line(),
                ),
                _ => None,
            },
            tls: TlsReport {
                enabled: endpoint.tls.is_some(),
                verified: endpoint.tls.as_ref().is_some_and(|t| t.verify),
                client_certificate: endpoint.tls.as_ref().is_some_and(|t| t.cert.is_some()),
            },
            engine: EngineReport {
                kind: match engine.kind {
                    EngineKind::Docker => "docker",
                    EngineKind::Podman => "podman",
                },
                version: engine.version.clone(),
                api_version: engine.api_version.to_string(),
                libpod_api_version: engine.libpod_api_version.clone(),
            },
            api_version: docker.api_version().to_string(),
            api_version_pinned: pinned,
            platform: docker.platform().to_string(),
            sidecars: match mode {
                SidecarMode::ImageMount => "image-mount",
                SidecarMode::VolumeCopy => "volume-copy",
            },
            sidecars_detail: mode.describe(docker.api_version()),
        }
    }

    /// The few lines `check` prints.
    pub fn to_text(&self) -> String {
        let tls = match (self.tls.enabled, self.tls.verified) {
            (false, _) if self.ssh_command.is_some() => {
                "not used (ssh: its own config decides keys and host checking)".to_string()
            }
            (false, _) => "off".to_string(),
            (true, true) => "on, daemon certificate verified".to_string(),
            (true, false) => "on, daemon certificate NOT verified".to_string(),
        };
        let tls = if self.tls.client_certificate {
            format!("{tls}, client certificate sent")
        } else {
            tls
        };
        let engine = match self.engine.kind {
            "podman" => "Podman",
            _ => "Docker",
        };
        let pinned = if self.api_version_pinned {
            " (pinned by DOCKER_API_VERSION)"
        } else {
            " (negotiated)"
        };
        let via = match &self.ssh_command {
            Some(c) => format!("\n  via:         {c}"),
            None => String::new(),
        };
        format!(
            "Docker daemon reachable\n  endpoint:    {}{}\n  chosen by:   {}\n  TLS:         {}\n  engine:      {} {} (API {})\n  API version: {}{}\n  platform:    {}\n  sidecars:    {}\n",
            self.endpoint,
            via,
            self.chosen_by.detail,
            tls,
            engine,
            self.engine.version,
            self.engine.api_version,
            self.api_version,
            pinned,
            self.platform,
            self.sidecars_detail,
        )
    }
}

pub async fn run(args: CheckArgs) -> ExitCode {
    let env = EnvSnapshot::from_process();
    let pinned = env.non_empty("DOCKER_API_VERSION").is_some();
    let result = match Docker::connect(&env).await {
        Ok(docker) => docker.ping().await.map(|()| docker),
        Err(e) => Err(e),
    };
    match result {
        Ok(docker) => {
            let report = CheckReport::new(&docker, pinned);
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("report serializes")
                );
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                let obj = serde_json::json!({ "ok": false, "error": e.to_string() });
                println!("{obj}");
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `ScriptedWorker`: a worker peer driven by the test over a real WebSocket,
//! plus helpers to start an embedded control plane and poll its runs API.

use futures_util::{SinkExt, StreamExt};
use oz_control_plane::{Config, ControlPlane};
use oz_protocol::extensions::EXTENSIONS_HEADER;
use oz_protocol::{
    decode_server_frame, encode, Extensions, FailureReason, OutputStream, ReportAck, ServerMessage,
    TaskAssignment, TaskClaimed, TaskCompleted, TaskFailed, TaskOutput, TaskRejected,
    WorkerMessage,
};
use oz_runs_api::client::Client;
use oz_runs_api::model::{Run, RunState};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long an `expect_*` (or `wait_for_*`) waits before failing the test:
/// a bound on waiting for an event, never a delay (each returns as soon as
/// the event comes), so generous: CI runs the whole suite on two loaded
/// cores, where a plane or a serve process can be starved for seconds.
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test watches for something that must not happen (a message,
/// a command) after the event that would have caused it.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Test defaults: in memory, ephemeral port, short timers.
pub fn test_config() -> Config {
    let mut c = Config::ephemeral();
    c.sweep_interval = Duration::from_millis(20);
    c.rejection_backoff = Duration::from_millis(300);
    c
}

/// The embedded control plane with a team key: the one harness for it, used
/// by the tests (with [`test_config`]'s short timers) and the benches
/// ([`TestPlane::ephemeral`], the plane's own timers; the runs they time
/// are in `bench::plane`).
pub struct TestPlane {
    pub plane: ControlPlane,
    /// A key of team "alpha".
    pub key: String,
    pub team_id: i64,
    /// One runs-API client with that key, for callers that make many calls
    /// ([`TestPlane::client`] makes a new one each time).
    pub runs: Client,
}

impl TestPlane {
    pub async fn start(config: Config) -> TestPlane {
        let plane = ControlPlane::start(config)
            .await
            .expect("control plane starts");
        let k = plane.create_api_key("alpha").unwrap();
        let runs = Client::new(&plane.url(), &k.secret).expect("a runs client");
        TestPlane {
            plane,
            key: k.secret,
            team_id: k.team.id,
            runs,
        }
    }

    /// In memory, on an ephemeral port, with the control plane's own
    /// timers: what the benches measure.
    pub async fn ephemeral() -> TestPlane {
        TestPlane::start(Config::ephemeral()).await
    }

    /// The worker endpoint, `ws://127.0.0.1:PORT/…`.
    pub fn ws_url(&self) -> String {
        self.plane.ws_url()
    }

    /// The runs API's root, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.plane.url()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.plane.url(), &self.key).unwrap()
    }

    pub async fn worker(&self, worker_id: &str) -> ScriptedWorker {
        ScriptedWorker::connect(&self.plane.ws_url(), &self.key, worker_id).await
    }
}

/// Polls `GET /api/v1/runs/{id}` until the run is in `state`.
pub async fn wait_for_state(client: &Client, id: &str, state: RunState) -> Run {
    let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
    loop {
        let run = client.get_run(id).await.unwrap();
        if run.state == state {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} never reached {state}; it is {run:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /api/v1/runs/{id}/output` until `bytes` bytes were received.
pub async fn wait_for_output(
    client: &Client,
    id: &str,
    bytes: u64,
) -> oz_runs_api::model::RunOutput {
    let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
    loop {
        let out = client.get_output(id, 0).await.unwrap();
        if out.next_offset >= bytes {
            return out;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} never had {bytes} bytes of output; it has {out:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct ScriptedWorker {
    pub worker_id: String,
    /// What the server offered in `Oz-Worker-Extensions`.
    pub extensions: Extensions,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// `report_ack`s read so far and not yet expected, oldest first. Acks
    /// never come out of `next_message`, so scripts that do not care about
    /// them read as before.
    acks: Vec<ReportAck>,
}

impl ScriptedWorker {
    pub async fn connect(ws_url: &str, key: &str, worker_id: &str) -> ScriptedWorker {
        Self::try_connect(ws_url, Some(key), Some(worker_id))
            .await
            .unwrap_or_else(|(status, body)| panic!("worker refused: {status} {body}"))
    }

    /// On refusal: the HTTP status and body.
    pub async fn try_connect(
        ws_url: &str,
        key: Option<&str>,
        worker_id: Option<&str>,
    ) -> Result<ScriptedWorker, (u16, String)> {
        let url = match worker_id {
            Some(id) => format!("{ws_url}?worker_id={id}"),
            None => ws_url.to_string(),
        };
        let mut req = url.into_client_request().unwrap();
        if let Some(k) = key {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {k}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, resp)) => Ok(ScriptedWorker {
                worker_id: worker_id.unwrap_or_default().to_string(),
                extensions: Extensions::parse(
                    resp.headers()
                        .get_all(EXTENSIONS_HEADER)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                ),
                ws,
                acks: Vec::new(),
            }),
            Err(WsError::Http(resp)) => Err((
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            )),
            Err(e) => panic!("cannot connect: {e}"),
        }
    }

    pub async fn send(&mut self, msg: WorkerMessage) {
        self.ws.send(Message::text(encode(&msg))).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// A reference worker's claim: no execution id.
    pub async fn claim(&mut self, task_id: &str) {
        self.claim_execution(task_id, None).await;
    }

    /// A claim naming an execution, as a worker re-announcing a task does
    /// (extension `task-reannounce`).
    pub async fn claim_execution(&mut self, task_id: &str, execution_id: Option<&str>) {
        let worker_id = self.worker_id.clone();
        self.send(WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: task_id.into(),
            worker_id,
            execution_id: execution_id.map(str::to_string),
        }))
        .await;
    }

    /// A `task_output` frame (extension `task-output`).
    pub async fn output(
        &mut self,
        task_id: &str,
        execution_id: Option<&str>,
        stream: OutputStream,
        data: &str,
        dropped_bytes: u64,
    ) {
        self.send(WorkerMessage::TaskOutput(TaskOutput {
            task_id: task_id.into(),
            execution_id: execution_id.map(str::to_string),
            stream,
            data: data.into(),
            dropped_bytes,
        }))
        .await;
    }

    pub async fn reject(&mut self, task_id: &str, reason: &str) {
        self.send(WorkerMessage::TaskRejected(TaskRejected {
            task_id: task_id.into(),
            reason: reason.into(),
            execution_id: None,
        }))
        .await;
    }

    pub async fn complete(&mut self, task_id: &str, task_state: Option<&str>) {
        self.complete_execution(task_id, None, task_state).await;
    }

    /// `task_completed` carrying the assignment's execution id (Go PR #139).
    pub async fn complete_execution(
        &mut self,
        task_id: &str,
        execution_id: Option<&str>,
        task_state: Option<&str>,
    ) {
        self.send(WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task_id.into(),
            message: "done".into(),
            task_state: task_state.map(str::to_string),
            execution_id: execution_id.map(str::to_string),
        }))
        .await;
    }

    pub async fn fail(&mut self, task_id: &str, reason: FailureReason, exit_code: Option<i64>) {
        self.send(WorkerMessage::TaskFailed(TaskFailed {
            task_id: task_id.into(),
            message: "it broke".into(),
            failure_reason: reason,
            exit_code,
            execution_id: None,
            failure_details: None,
        }))
        .await;
    }

    /// The next protocol message other than `report_ack` (control frames
    /// are skipped; acks are kept for `expect_ack`).
    pub async fn next_message(&mut self, within: Duration) -> Option<ServerMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.next_frame(deadline).await? {
                ServerMessage::ReportAck(a) => self.acks.push(a),
                other => return Some(other),
            }
        }
    }

    async fn next_frame(&mut self, deadline: tokio::time::Instant) -> Option<ServerMessage> {
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Message::Text(t))) => {
                    return Some(decode_server_frame(t.as_str()).expect("server frames decode"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("connection ended while expecting a message: {other:?}"),
            }
        }
    }

    /// Waits for the `report_ack` of `task_id` and returns it (acks that
    /// arrived earlier count).
    pub async fn expect_ack(&mut self, task_id: &str) -> ReportAck {
        let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
        loop {
            if let Some(i) = self.acks.iter().position(|a| a.task_id == task_id) {
                return self.acks.remove(i);
            }
            match self.next_frame(deadline).await {
                Some(ServerMessage::ReportAck(a)) => self.acks.push(a),
                other => panic!(
                    "{}: expected report_ack for {task_id}, got {other:?}",
                    self.worker_id
                ),
            }
        }
    }

    pub async fn expect_assignment(&mut self) -> TaskAssignment {
        match self.next_message(EXPECT_TIMEOUT).await {
            Some(ServerMessage::TaskAssignment(a)) => *a,
            other => panic!("{}: expected an assignment, got {other:?}", self.worker_id),
        }
    }

    pub async fn expect_cancellation(&mut self) -> String {
        match self.next_message(EXPECT_TIMEOUT).await {
            Some(ServerMessage::TaskCancellation(c)) => c.task_id,
            other => panic!("{}: expected a cancellation, got {other:?}", self.worker_id),
        }
    }

    pub async fn expect_nothing(&mut self, for_: Duration) {
        if let Some(m) = self.next_message(for_).await {
            panic!("{}: expected nothing, got {m:?}", self.worker_id);
        }
    }

    /// Sends a ping and waits for its pong: proves the connection is served.
    pub async fn ping(&mut self) {
        self.ws
            .send(Message::Ping(b"hi".to_vec().into()))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == b"hi" => return,
                Ok(Some(Ok(Message::Text(t)))) => match decode_server_frame(t.as_str()) {
                    Ok(ServerMessage::ReportAck(a)) => self.acks.push(a),
                    _ => panic!("expected a pong, got {t}"),
                },
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        }
    }

    /// Waits for the server to end the connection.
    pub async fn expect_closed(&mut self, within: Duration) {
        if !self.closed_within(within).await {
            panic!("{}: connection still open after {within:?}", self.worker_id);
        }
    }

    /// Whether the server ends the connection within `within` (messages
    /// meanwhile are read and dropped).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server acknowledges, so the close is processed
        // (it answers once it has let go of the connection).
        let _ = tokio::time::timeout(EXPECT_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// `oz-agent-worker serve` as a real process on an ephemeral port, so tests
/// can SIGKILL it and start it again on the same data directory.
pub struct ServeProcess {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub url: String,
    pub log: std::path::PathBuf,
}

impl ServeProcess {
    /// Starts `serve` on `data_dir` with `extra_args` and waits until it
    /// listens. Its log goes to `data_dir/serve-N.log`.
    pub async fn start(data_dir: &std::path::Path, extra_args: &[&str]) -> ServeProcess {
        Self::start_wrapped(data_dir, &[], extra_args).await
    }

    /// As [`ServeProcess::start`], run through `wrapper` (a command that
    /// execs its arguments, such as `prlimit --nofile=1024:1024 --`).
    pub async fn start_wrapped(
        data_dir: &std::path::Path,
        wrapper: &[&str],
        extra_args: &[&str],
    ) -> ServeProcess {
        let n = std::fs::read_dir(data_dir).map_or(0, |d| d.count());
        let log = data_dir.join(format!("serve-{n}.log"));
        let bin = crate::worker_binary();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = tokio::process::Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => tokio::process::Command::new(bin),
        };
        let child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "debug"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("serve starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("control plane on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap().to_string();
                return ServeProcess { child, url, log };
            }
            if tokio::time::Instant::now() > deadline {
                panic!("serve did not start; log:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The worker endpoint (`ws://…` or `wss://…`).
    pub fn ws_url(&self) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let ws = if scheme == "https" { "wss" } else { "ws" };
        format!("{ws}://{rest}{}", oz_control_plane::WS_PATH)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs, as in a crash or an OOM kill.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// A team key created with the real `api-keys create` command.
pub async fn create_key_with_cli(data_dir: &std::path::Path, team: &str) -> String {
    let out = tokio::process::Command::new(crate::worker_binary())
        .args(["api-keys", "create", "--team", team, "--data-dir"])
        .arg(data_dir)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A CA and a server certificate it signed for `127.0.0.1` and `localhost`
/// (and any names given to [`TestCa::for_names`]),
/// generated at test time (rcgen) into a temporary directory, as PEM.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate: what a client must trust (`SSL_CERT_FILE`).
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCa {
    pub fn generate() -> TestCa {
        Self::for_names(&[])
    }

    /// As [`TestCa::generate`], the server certificate also valid for
    /// `extra` names or addresses.
    pub fn for_names(extra: &[&str]) -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: two test CAs must not look like one.
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("oz-agent-worker test CA {:08x}", fastrand::u32(..)),
        );
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        names.extend(extra.iter().map(|n| n.to_string()));
        let mut server = CertificateParams::new(names).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "oz-agent-worker test control plane");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&key, &issuer).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        TestCa {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("server-cert.pem", cert.pem()),
            key: write("server-key.pem", key.serialize_pem()),
            dir,
        }
    }

    /// `serve` flags for this certificate.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// An empty directory, for `SSL_CERT_DIR`, so only `SSL_CERT_FILE` counts.
    pub fn empty_dir(&self) -> std::path::PathBuf {
        let d = self.dir.path().join("empty");
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

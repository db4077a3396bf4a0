//! `ScriptedWorker`: a worker peer driven by the test over a real WebSocket,
//! plus helpers to start an embedded control plane and poll its runs API.

use futures_util::{SinkExt, StreamExt};
use oz_agent_worker::control_plane::client::Client;
use oz_agent_worker::control_plane::model::{Run, RunState};
use oz_agent_worker::control_plane::{Config, ControlPlane};
use oz_agent_worker::protocol::{
    decode_server_frame, encode, FailureReason, ServerMessage, TaskAssignment, TaskClaimed,
    TaskCompleted, TaskFailed, TaskRejected, WorkerMessage,
};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long an `expect_*` waits before failing the test.
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Test defaults: in memory, ephemeral port, short timers.
pub fn test_config() -> Config {
    let mut c = Config::ephemeral();
    c.sweep_interval = Duration::from_millis(20);
    c.reoffer_delay = Duration::from_millis(300);
    c
}

pub struct TestPlane {
    pub plane: ControlPlane,
    /// A key of team "alpha".
    pub key: String,
    pub team_id: i64,
}

impl TestPlane {
    pub async fn start(config: Config) -> TestPlane {
        let plane = ControlPlane::start(config)
            .await
            .expect("control plane starts");
        let k = plane.create_api_key("alpha").unwrap();
        TestPlane {
            plane,
            key: k.secret,
            team_id: k.team.id,
        }
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

pub struct ScriptedWorker {
    pub worker_id: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
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
            Ok((ws, _)) => Ok(ScriptedWorker {
                worker_id: worker_id.unwrap_or_default().to_string(),
                ws,
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

    pub async fn claim(&mut self, task_id: &str) {
        let worker_id = self.worker_id.clone();
        self.send(WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: task_id.into(),
            worker_id,
            execution_id: None,
        }))
        .await;
    }

    pub async fn reject(&mut self, task_id: &str, reason: &str) {
        self.send(WorkerMessage::TaskRejected(TaskRejected {
            task_id: task_id.into(),
            reason: reason.into(),
        }))
        .await;
    }

    pub async fn complete(&mut self, task_id: &str, task_state: Option<&str>) {
        self.send(WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task_id.into(),
            message: "done".into(),
            task_state: task_state.map(str::to_string),
            execution_id: None,
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
        }))
        .await;
    }

    /// The next protocol message (control frames are skipped).
    pub async fn next_message(&mut self, within: Duration) -> Option<ServerMessage> {
        let deadline = tokio::time::Instant::now() + within;
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
                Ok(Some(Ok(Message::Text(t)))) => panic!("expected a pong, got {t}"),
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        }
    }

    /// Waits for the server to end the connection.
    pub async fn expect_closed(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("{}: connection still open after {within:?}", self.worker_id),
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server acknowledges, so the close is processed.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

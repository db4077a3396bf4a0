//! The control plane's HTTP API as an OpenAPI 3.1 document, built from the
//! schemars schemas of `model` so the description cannot drift from the
//! code. Written to `api-specs/control-plane-runs.openapi.json` by `cargo
//! xtask codegen`.

use oz_runs_api::model::{
    ApiError, CreateRunRequest, CreateScheduleRequest, OutputChunk, OutputDropped, OutputTruncated,
    Run, RunList, RunOutput, RunResultRequest, RunState, Schedule, ScheduleList, Worker,
    WorkerList, RUNS_PAGE_DEFAULT_LIMIT, RUNS_PAGE_MAX_LIMIT,
};
use schemars::generate::SchemaSettings;
use serde_json::{json, Value};

pub fn document() -> Value {
    let mut gen = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas".into())
        .into_generator();
    let create = gen.subschema_for::<CreateRunRequest>().to_value();
    let run = gen.subschema_for::<Run>().to_value();
    let list = gen.subschema_for::<RunList>().to_value();
    let error = gen.subschema_for::<ApiError>().to_value();
    let state = gen.subschema_for::<RunState>().to_value();
    let output = gen.subschema_for::<RunOutput>().to_value();
    let chunk = gen.subschema_for::<OutputChunk>().to_value();
    let truncated = gen.subschema_for::<OutputTruncated>().to_value();
    let dropped = gen.subschema_for::<OutputDropped>().to_value();
    let result = gen.subschema_for::<RunResultRequest>().to_value();
    let workers = gen.subschema_for::<WorkerList>().to_value();
    let worker = gen.subschema_for::<Worker>().to_value();
    let create_schedule = gen.subschema_for::<CreateScheduleRequest>().to_value();
    let schedule = gen.subschema_for::<Schedule>().to_value();
    let schedules = gen.subschema_for::<ScheduleList>().to_value();
    let schemas = gen.take_definitions(true);

    let json_body = |s: &Value| json!({ "content": { "application/json": { "schema": s } } });
    let err = |why: &str| {
        let mut r = json_body(&error);
        r["description"] = json!(why);
        r
    };
    let ok = |why: &str, s: &Value| {
        let mut r = json_body(s);
        r["description"] = json!(why);
        r
    };
    let unauthorized = err("Missing, malformed or unknown API key.");
    let schedule_id = json!({
        "name": "id", "in": "path", "required": true, "schema": { "type": "string" },
        "description": "The schedule id (`sch_…`)."
    });
    let worker_id = json!({
        "name": "id", "in": "path", "required": true, "schema": { "type": "string" },
        "description": "The worker id (as given to the worker's `--worker-id`; case-sensitive)."
    });
    let run_id = json!({
        "name": "id", "in": "path", "required": true, "schema": { "type": "string" },
        "description": "The run id (`run_…`)."
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "oz-agent-worker control plane: runs API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Create, list, inspect and cancel runs on a local control plane, read and follow their live output, schedule runs with cron expressions, and list, pause and resume the team's worker ids. Every call needs a team API key (`Authorization: Bearer ozk_…`, created with `oz-agent-worker api-keys create --team NAME`); a team only ever sees its own runs. Runs move queued → assigned → claimed → succeeded | failed | cancelled; a run goes back to queued when its worker rejects it or disconnects before claiming it."
        },
        "components": {
            "securitySchemes": {
                "teamKey": { "type": "http", "scheme": "bearer" },
                "uiSession": {
                    "type": "apiKey", "in": "cookie", "name": "oz_session",
                    "description": "The management UI's session (from signing in at /ui/login with a team key). A request made with it that changes anything (any method but GET and HEAD) must also send the session's CSRF token (GET /ui/session) in `X-CSRF-Token` and come from the control plane's own origin."
                }
            },
            "schemas": schemas
        },
        "security": [{ "teamKey": [] }, { "uiSession": [] }],
        "paths": {
            "/api/v1/runs": {
                "post": {
                    "operationId": "createRun",
                    "summary": "Create a run for a worker id; it is queued until a worker with that id is connected.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": create } } },
                    "responses": {
                        "201": ok("The run, as stored.", &run),
                        "400": err("Invalid request (unknown field, missing worker_host, bad sidecar, or an image reference the worker could not pull: the worker's own message)."),
                        "401": unauthorized
                    }
                },
                "get": {
                    "operationId": "listRuns",
                    "summary": "List the team's runs, newest first (without history), a page at a time.",
                    "description": format!("Runs are ordered by creation, newest first. A page holds at most `limit` runs; its `next_cursor`, passed back as `cursor`, gives the next (older) page, and is null on the last one. Every run is on exactly one page: runs created while a client pages come before its first page and never shift later ones. Filters apply to every page; keep them the same from page to page. Without `limit` a page has {RUNS_PAGE_DEFAULT_LIMIT} runs."),
                    "parameters": [
                        { "name": "state", "in": "query", "required": false, "schema": state, "description": "Only runs in this state." },
                        { "name": "worker_host", "in": "query", "required": false, "schema": { "type": "string" }, "description": "Only runs for this worker id." },
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": RUNS_PAGE_MAX_LIMIT, "default": RUNS_PAGE_DEFAULT_LIMIT }, "description": "Runs per page." },
                        { "name": "cursor", "in": "query", "required": false, "schema": { "type": "string" }, "description": "The `next_cursor` of the page before, unchanged (opaque). Leave it out for the first page." }
                    ],
                    "responses": {
                        "200": ok("One page of runs and the cursor of the next.", &list),
                        "400": err("Unknown state or query parameter, a limit outside 1 to 1000, or a cursor this control plane did not hand out (the message names the parameter and what it accepts)."),
                        "401": unauthorized
                    }
                }
            },
            "/api/v1/runs/{id}": {
                "get": {
                    "operationId": "getRun",
                    "summary": "One run with its state history, failure reason, exit code and message.",
                    "parameters": [run_id],
                    "responses": {
                        "200": ok("The run.", &run),
                        "401": unauthorized,
                        "404": err("No such run for this team.")
                    }
                }
            },
            "/api/v1/runs/{id}/output": {
                "get": {
                    "operationId": "getRunOutput",
                    "summary": "The run's live output as the control plane keeps it (the last `--output-limit` bytes, default 4 MiB; stdout and stderr interleaved in the order received). Plainly a JSON read from byte `after` on; with `follow=true` or `Accept: text/event-stream`, server-sent events as the output arrives, ending once the run has ended and its output is final.",
                    "description": "Follow mode sends these events: `output` (data: OutputChunk; the event id is the offset after it, and a reconnecting client's `Last-Event-ID` takes the place of `after`), `truncated` (data: OutputTruncated: bytes after the reader's offset that the control plane no longer keeps), and `end` (data: Run without history), after which the stream closes; or `dropped` (data: OutputDropped; the event id is `resume_from`) when the reader took no event for `--follower-send-timeout`, after which the stream closes too. A comment line every 15 s keeps idle connections open. A team may follow at most `--max-followers-per-team` outputs at once. A chunk's `dropped_bytes` counts output the worker dropped just before it because its link was slower than the task.",
                    "parameters": [
                        run_id,
                        { "name": "after", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0, "default": 0 }, "description": "Byte offset to read from: 0, or the `next_offset` of an earlier read." },
                        { "name": "follow", "in": "query", "required": false, "schema": { "type": "boolean", "default": false }, "description": "Stream server-sent events until the run ends." },
                        { "name": "Last-Event-ID", "in": "header", "required": false, "schema": { "type": "string" }, "description": "Sent by a reconnecting EventSource: the offset to resume from." }
                    ],
                    "responses": {
                        "200": {
                            "description": "The output: JSON for a read; an event stream when following.",
                            "content": {
                                "application/json": { "schema": output },
                                "text/event-stream": {
                                    "schema": { "type": "string", "description": "Events `output` (OutputChunk), `truncated` (OutputTruncated), `end` (Run) and `dropped` (OutputDropped), each `data` one line of JSON." },
                                    "x-events": { "output": chunk, "truncated": truncated, "end": run, "dropped": dropped }
                                }
                            }
                        },
                        "400": err("`after` is not a byte offset, or an unknown query parameter."),
                        "401": unauthorized,
                        "404": err("No such run for this team."),
                        "429": err("Following: the team already follows `--max-followers-per-team` outputs.")
                    }
                }
            },
            "/api/v1/runs/{id}/result": {
                "post": {
                    "operationId": "reportRunResult",
                    "summary": "Report how a claimed run ended, for an outside system its worker handed it to (the command runtime's dispatched tasks, which report by themselves). Accepted only while the run is claimed; recorded in the run's history; the same outcome reported again is answered with the run and changes nothing.",
                    "parameters": [run_id],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": result } } },
                    "responses": {
                        "200": ok("The run as it ended.", &run),
                        "400": err("Invalid body (unknown field, unknown outcome)."),
                        "401": unauthorized,
                        "404": err("No such run for this team."),
                        "409": err("The run is not claimed (queued or assigned: cancel it instead), the execution id is not the run's, or it already ended otherwise.")
                    }
                }
            },
            "/api/v1/schedules": {
                "post": {
                    "operationId": "createSchedule",
                    "summary": "Create a schedule: at each slot of a cron expression (read in an IANA time zone, UTC by default) the control plane creates the run described in `run`, once per slot even across its restarts. Slots that came due while it was not running are skipped or run once (`missed`). Each run records its `schedule_id` and `scheduled_for`.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": create_schedule } } },
                    "responses": {
                        "201": ok("The schedule, with its next slot.", &schedule),
                        "400": err("Invalid cron expression or time zone, or an invalid run (as for createRun, prefixed `run:`)."),
                        "401": unauthorized
                    }
                },
                "get": {
                    "operationId": "listSchedules",
                    "summary": "List the team's schedules, oldest first.",
                    "responses": {
                        "200": ok("The schedules.", &schedules),
                        "401": unauthorized
                    }
                }
            },
            "/api/v1/schedules/{id}": {
                "get": {
                    "operationId": "getSchedule",
                    "summary": "One schedule, with its next slot and last run.",
                    "parameters": [schedule_id],
                    "responses": {
                        "200": ok("The schedule.", &schedule),
                        "401": unauthorized,
                        "404": err("No such schedule for this team.")
                    }
                },
                "delete": {
                    "operationId": "deleteSchedule",
                    "summary": "Delete a schedule. Its runs stay, with its id.",
                    "parameters": [schedule_id],
                    "responses": {
                        "200": ok("The schedule as it was.", &schedule),
                        "401": unauthorized,
                        "404": err("No such schedule for this team.")
                    }
                }
            },
            "/api/v1/schedules/{id}/pause": {
                "post": {
                    "operationId": "pauseSchedule",
                    "summary": "Stop creating runs until resumed (a paused schedule is answered as is).",
                    "parameters": [schedule_id],
                    "responses": {
                        "200": ok("The schedule.", &schedule),
                        "401": unauthorized,
                        "404": err("No such schedule for this team.")
                    }
                }
            },
            "/api/v1/schedules/{id}/resume": {
                "post": {
                    "operationId": "resumeSchedule",
                    "summary": "Create runs again from the next slot on; slots that came due while paused do not run.",
                    "parameters": [schedule_id],
                    "responses": {
                        "200": ok("The schedule.", &schedule),
                        "401": unauthorized,
                        "404": err("No such schedule for this team.")
                    }
                }
            },
            "/api/v1/workers": {
                "get": {
                    "operationId": "listWorkers",
                    "summary": "Every worker id the team's workers have connected with: its live connections (one per worker process, since when, its version, runs held, at capacity or draining), whether it is paused, runs active and queued for it, first and last seen.",
                    "description": "A connection shows `draining` only when its worker says so through the `worker-state` protocol extension (this project's worker does, on SIGQUIT or after its one task with --disconnect-after-task); another worker that drains shows as at capacity, since all it sends is a rejection.",
                    "responses": {
                        "200": ok("The worker ids, connected ones first.", &workers),
                        "401": unauthorized
                    }
                }
            },
            "/api/v1/workers/{id}/pause": {
                "post": {
                    "operationId": "pauseWorker",
                    "summary": "Pause a worker id: none of its connections is offered a run until it is resumed; the runs it holds go on. Stored: a restart keeps it paused. Pausing a paused id changes nothing.",
                    "parameters": [worker_id],
                    "responses": {
                        "200": ok("The worker id, paused.", &worker),
                        "401": unauthorized,
                        "404": err("No worker with this id has connected for this team.")
                    }
                }
            },
            "/api/v1/workers/{id}/resume": {
                "post": {
                    "operationId": "resumeWorker",
                    "summary": "Resume a worker id: its queued runs are offered at once.",
                    "parameters": [worker_id],
                    "responses": {
                        "200": ok("The worker id, resumed.", &worker),
                        "401": unauthorized,
                        "404": err("No worker with this id has connected for this team.")
                    }
                }
            },
            "/api/v1/runs/{id}/cancel": {
                "post": {
                    "operationId": "cancelRun",
                    "summary": "Cancel a run: at once when queued; otherwise the holding worker is sent task_cancellation and the run ends when it reports.",
                    "parameters": [run_id],
                    "responses": {
                        "200": ok("The run after the request (cancelled, or cancel_requested).", &run),
                        "401": unauthorized,
                        "404": err("No such run for this team."),
                        "409": err("The run already finished.")
                    }
                }
            }
        }
    })
}

//! The runs API as an OpenAPI 3.1 document, built from the schemars schemas of
//! `model` so the description cannot drift from the code. Written to
//! `api-specs/control-plane-runs.openapi.json` by `cargo xtask codegen`.

use crate::control_plane::model::{ApiError, CreateRunRequest, Run, RunList, RunState};
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
    let run_id = json!({
        "name": "id", "in": "path", "required": true, "schema": { "type": "string" },
        "description": "The run id (`run_…`)."
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "oz-agent-worker control plane: runs API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Create, list, inspect and cancel runs on a local control plane. Every call needs a team API key (`Authorization: Bearer ozk_…`, created with `oz-agent-worker api-keys create --team NAME`); a team only ever sees its own runs. Runs move queued → assigned → claimed → succeeded | failed | cancelled; a run goes back to queued when its worker rejects it or disconnects before claiming it."
        },
        "components": {
            "securitySchemes": { "teamKey": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas
        },
        "security": [{ "teamKey": [] }],
        "paths": {
            "/api/v1/runs": {
                "post": {
                    "operationId": "createRun",
                    "summary": "Create a run for a worker id; it is queued until a worker with that id is connected.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": create } } },
                    "responses": {
                        "201": ok("The run, as stored.", &run),
                        "400": err("Invalid request (unknown field, missing worker_host, bad sidecar)."),
                        "401": unauthorized
                    }
                },
                "get": {
                    "operationId": "listRuns",
                    "summary": "List the team's runs, oldest first (without history).",
                    "parameters": [
                        { "name": "state", "in": "query", "required": false, "schema": state },
                        { "name": "worker_host", "in": "query", "required": false, "schema": { "type": "string" } }
                    ],
                    "responses": {
                        "200": ok("The runs.", &list),
                        "400": err("Unknown state or query parameter."),
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

//! One `impl Docker` method per operation, and its parameter struct.

use super::models::{description, integer_type, ref_name, Models};
use super::naming::{doc_comment, pascal_case, snake_case};
use crate::quirks::{self, ResponseQuirk};
use serde_json::Value;
use std::fmt::Write;

pub struct Operations {
    methods: String,
    params: String,
    pub count: usize,
    pub skipped: usize,
}

enum Response {
    Json(String),
    Unit,
    Text,
    Headers,
    ByteStream,
    JsonStream(String),
    Upgrade,
    UpgradeOrDetached,
    WebSocket,
}

enum Body {
    None,
    Json {
        ty: String,
        required: bool,
    },
    Stream {
        content_type: &'static str,
        required: bool,
    },
}

struct Param {
    field: String,
    wire: String,
    ty: String,
    doc: String,
    required: bool,
    header: bool,
    array: bool,
    is_enum: bool,
}

/// Answers that come only when something happens in the container, however
/// long that takes: no request timeout, like the streams.
const LONG_POLLS: &[&str] = &["ContainerWait"];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

pub fn generate(spec: &Value, models: &mut Models<'_>) -> Operations {
    let mut ops = Operations {
        methods: String::new(),
        params: String::new(),
        count: 0,
        skipped: 0,
    };
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let id = op["operationId"]
                .as_str()
                .expect("every operation has an operationId");
            if quirks::SKIPPED_OPERATIONS
                .iter()
                .any(|(skip, _)| *skip == id)
            {
                ops.skipped += 1;
                continue;
            }
            operation(&mut ops, models, path, method, id, op);
            ops.count += 1;
        }
    }
    ops
}

impl Operations {
    pub fn methods(&self) -> &str {
        &self.methods
    }
    pub fn params(&self) -> &str {
        &self.params
    }
}

fn operation(
    ops: &mut Operations,
    models: &mut Models<'_>,
    path: &str,
    method: &str,
    id: &str,
    op: &Value,
) {
    let fn_name = snake_case(id);
    let no_params = Vec::new();
    let spec_params = op["parameters"].as_array().unwrap_or(&no_params);

    let mut path_args = Vec::new();
    let mut params = Vec::new();
    let mut body = Body::None;
    let mut content_type = None;
    for p in spec_params {
        let name = p["name"].as_str().unwrap_or_default();
        let required = p["required"].as_bool() == Some(true);
        match p["in"].as_str() {
            Some("path") => path_args.push((name.to_owned(), snake_case(name))),
            Some("body") => body = body_of(models, id, op, &p["schema"], required),
            // Not a parameter: the streamed body carries its content type
            // (sending the header twice would conflict).
            Some("header") if name.eq_ignore_ascii_case("content-type") => {
                content_type = p["enum"][0].as_str().or(p["default"].as_str());
            }
            Some(location @ ("query" | "header")) => {
                params.push(param(models, id, p, required, location == "header"))
            }
            _ => {}
        }
    }
    if let (
        Body::Stream {
            content_type: ct, ..
        },
        Some(declared),
    ) = (&mut body, content_type)
    {
        *ct = if declared == "application/x-tar" {
            "application/x-tar"
        } else {
            "application/octet-stream"
        };
    }
    let response = response_of(models, id, method, op);
    let streaming = matches!(
        response,
        Response::ByteStream
            | Response::JsonStream(_)
            | Response::Upgrade
            | Response::UpgradeOrDetached
            | Response::WebSocket
    ) || matches!(body, Body::Stream { .. })
        || LONG_POLLS.contains(&id);

    // The parameter struct.
    let params_ty = format!("{id}Params");
    if !params.is_empty() {
        render_params(&mut ops.params, id, &params_ty, &params);
    }

    // The method.
    let m = &mut ops.methods;
    let mut doc = doc_comment(op["summary"].as_str().or_else(|| description(op)));
    let details = doc_comment(description(op));
    if !details.is_empty() && details != doc {
        doc.push_str("///\n");
        doc.push_str(&details);
    }
    let _ = write!(
        m,
        "{doc}///\n/// `{} {path}` (`{id}`).\npub async fn {fn_name}(&self",
        method.to_uppercase()
    );
    for (_, arg) in &path_args {
        let _ = write!(m, ", {arg}: &str");
    }
    if !params.is_empty() {
        let _ = write!(m, ", params: &{params_ty}");
    }
    match &body {
        Body::None => {}
        Body::Json { ty, required: true } => {
            let _ = write!(m, ", body: &{ty}");
        }
        Body::Json {
            ty,
            required: false,
        } => {
            let _ = write!(m, ", body: Option<&{ty}>");
        }
        Body::Stream { required: true, .. } => m.push_str(", body: BodyStream"),
        Body::Stream {
            required: false, ..
        } => m.push_str(", body: Option<BodyStream>"),
    }
    let ret = match &response {
        Response::Json(ty) => ty.clone(),
        Response::Unit => "()".to_owned(),
        Response::Text => "String".to_owned(),
        Response::Headers => "http::HeaderMap".to_owned(),
        Response::ByteStream => "ByteStream".to_owned(),
        Response::JsonStream(ty) => format!("JsonStream<{ty}>"),
        Response::Upgrade => "TokioIo<Upgraded>".to_owned(),
        Response::UpgradeOrDetached => "ExecStartOutcome".to_owned(),
        Response::WebSocket => "WebSocketStream<TokioIo<Upgraded>>".to_owned(),
    };
    let _ = writeln!(m, ") -> Result<{ret}, DockerError> {{");

    let path_expr = if path_args.is_empty() {
        format!("{path:?}.to_owned()")
    } else {
        let mut template = path.to_owned();
        for (wire, _) in &path_args {
            template = template.replace(&format!("{{{wire}}}"), "{}");
        }
        let args: Vec<String> = path_args
            .iter()
            .map(|(_, arg)| format!("encode_path_segment({arg})"))
            .collect();
        format!("format!({template:?}, {})", args.join(", "))
    };
    let kind = if streaming { "Streaming" } else { "Ordinary" };
    let mutable = if params.is_empty() && matches!(body, Body::None) {
        ""
    } else {
        "mut "
    };
    let _ = writeln!(
        m,
        "let {mutable}req = ApiRequest::new({id:?}, Method::{}, {path_expr}, CallKind::{kind});",
        method.to_uppercase()
    );
    for p in &params {
        let target = if p.header { "headers" } else { "query" };
        let value = |v: &str| {
            if p.is_enum {
                format!("{v}.as_str().to_owned()")
            } else if p.ty == "String" || p.ty == "Vec<String>" {
                format!("{v}.clone()")
            } else {
                format!("{v}.to_string()")
            }
        };
        let push = |v: &str| format!("req.{target}.push(({:?}, {}));", p.wire, value(v));
        let line = match (p.required, p.array) {
            (true, false) => push(&format!("params.{}", p.field)),
            (true, true) => format!("for v in &params.{} {{ {} }}", p.field, push("v")),
            (false, false) => format!("if let Some(v) = &params.{} {{ {} }}", p.field, push("v")),
            (false, true) => format!(
                "for v in params.{}.iter().flatten() {{ {} }}",
                p.field,
                push("v")
            ),
        };
        m.push_str(&line);
        m.push('\n');
    }
    match &body {
        Body::None => {}
        Body::Json { required: true, .. } => m.push_str("req.body = json_body(body);\n"),
        Body::Json {
            required: false, ..
        } => m.push_str("if let Some(body) = body { req.body = json_body(body); }\n"),
        Body::Stream {
            content_type,
            required: true,
        } => {
            let _ = writeln!(
                m,
                "req.body = RequestBody::Stream {{ content_type: {content_type:?}, stream: body }};"
            );
        }
        Body::Stream {
            content_type,
            required: false,
        } => {
            let _ = writeln!(
                m,
                "if let Some(stream) = body {{ req.body = RequestBody::Stream {{ content_type: {content_type:?}, stream }}; }}"
            );
        }
    }
    let send = match &response {
        Response::Json(_) => "send_json",
        Response::Unit => "send_unit",
        Response::Text => "send_text",
        Response::Headers => "send_headers",
        Response::ByteStream => "send_byte_stream",
        Response::JsonStream(_) => "send_json_stream",
        Response::Upgrade => "send_upgrade",
        Response::UpgradeOrDetached => "send_upgrade_or_detached",
        Response::WebSocket => "send_websocket",
    };
    let _ = writeln!(m, "self.{send}(req).await\n}}\n");
}

fn param(models: &mut Models<'_>, id: &str, p: &Value, required: bool, header: bool) -> Param {
    let wire = p["name"].as_str().unwrap_or_default().to_owned();
    let hint = format!("{id}{}", pascal_case(&wire));
    let array = p["type"].as_str() == Some("array");
    let scalar = if array { &p["items"] } else { p };
    let is_enum = scalar.get("enum").is_some() && scalar["type"].as_str() == Some("string");
    let ty = match scalar["type"].as_str() {
        Some("string") if is_enum => models.resolve(scalar, &hint),
        Some("integer") => integer_type(scalar).to_owned(),
        Some("number") => "f64".to_owned(),
        Some("boolean") => "bool".to_owned(),
        _ => "String".to_owned(),
    };
    let ty = if array { format!("Vec<{ty}>") } else { ty };
    Param {
        field: snake_case(&wire),
        wire,
        ty,
        doc: doc_comment(description(p)),
        required,
        header,
        array,
        is_enum,
    }
}

fn render_params(out: &mut String, id: &str, name: &str, params: &[Param]) {
    let has_header = params.iter().any(|p| p.header);
    let derives = if has_header {
        "Clone, Default, PartialEq"
    } else {
        "Debug, Clone, Default, PartialEq"
    };
    let _ = writeln!(
        out,
        "/// Query and header parameters of [`Docker::{}`].\n#[derive({derives})]\npub struct {name} {{",
        snake_case(id)
    );
    for p in params {
        let ty = if p.required {
            p.ty.clone()
        } else {
            format!("Option<{}>", p.ty)
        };
        let _ = writeln!(out, "{}pub {}: {ty},", p.doc, p.field);
    }
    out.push_str("}\n\n");
    if has_header {
        // Header values carry registry credentials: never print them.
        let _ = writeln!(
            out,
            "impl std::fmt::Debug for {name} {{\nfn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {{\nf.debug_struct({name:?})"
        );
        for p in params {
            if p.header && p.required {
                let _ = writeln!(out, ".field({:?}, &\"<redacted>\")", p.field);
            } else if p.header {
                let _ = writeln!(
                    out,
                    ".field({:?}, &self.{}.as_ref().map(|_| \"<redacted>\"))",
                    p.field.trim_start_matches("r#"),
                    p.field
                );
            } else {
                let _ = writeln!(
                    out,
                    ".field({:?}, &self.{})",
                    p.field.trim_start_matches("r#"),
                    p.field
                );
            }
        }
        out.push_str(".finish()\n}\n}\n\n");
    }
}

fn body_of(models: &mut Models<'_>, id: &str, op: &Value, schema: &Value, required: bool) -> Body {
    let is_raw = schema["type"].as_str() == Some("string");
    if is_raw {
        let consumes: Vec<&str> = op["consumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let content_type = if consumes.contains(&"application/x-tar") {
            "application/x-tar"
        } else {
            "application/octet-stream"
        };
        return Body::Stream {
            content_type,
            required,
        };
    }
    Body::Json {
        ty: models.resolve(schema, &format!("{id}Body")),
        required,
    }
}

fn response_of(models: &mut Models<'_>, id: &str, method: &str, op: &Value) -> Response {
    if let Some((_, quirk, _)) = quirks::RESPONSES.iter().find(|(op, _, _)| *op == id) {
        return match quirk {
            ResponseQuirk::JsonStream(ty) => Response::JsonStream(ty.to_string()),
            ResponseQuirk::UpgradeOrDetached => Response::UpgradeOrDetached,
            ResponseQuirk::WebSocket => Response::WebSocket,
        };
    }
    if method == "head" {
        return Response::Headers;
    }
    let responses = op["responses"].as_object();
    let has = |code: &str| responses.is_some_and(|r| r.contains_key(code));
    if has("101") {
        return Response::Upgrade;
    }
    let produces: Vec<&str> = op["produces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let binary = produces.iter().any(|p| {
        matches!(
            *p,
            "application/x-tar"
                | "application/octet-stream"
                | "application/vnd.docker.raw-stream"
                | "application/vnd.docker.multiplexed-stream"
        )
    });
    if binary {
        return Response::ByteStream;
    }
    let success = responses
        .into_iter()
        .flatten()
        .find(|(code, _)| code.starts_with('2'))
        .map(|(_, r)| r);
    let Some(schema) = success.and_then(|r| r.get("schema")) else {
        return Response::Unit;
    };
    if schema["type"].as_str() == Some("string")
        && ref_name(schema).is_none()
        && produces == ["text/plain"]
    {
        return Response::Text;
    }
    Response::Json(models.resolve(schema, &format!("{id}Response")))
}

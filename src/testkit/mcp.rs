//! The mock's MCP server: the streamable HTTP transport of the Model Context Protocol
//! (specification 2025-06-18 and 2025-11-25, "Transports"), at [`MCP_PATH`],
//! behind the same token check as the rest of the API.
//!
//! What it answers is what the specification's examples show and what clients must cope with:
//! `initialize` opens a session named by an `Mcp-Session-Id` header, which every later message
//! carries; a request is answered as one server-sent event (`event: message`), a notification or
//! a response with `202 Accepted` and no body; a message without the session header gets `400`,
//! one for a session that is unknown or was deleted gets `404` (the client must initialize
//! again); `GET` gets `405` (no server-initiated stream), `DELETE` ends the session. A client
//! that does not accept both `application/json` and `text/event-stream` gets `406`. One tool,
//! [`MCP_TOOL`], echoes its `text` argument.

use std::collections::HashMap;

use http::Method;
use serde_json::{Value, json};
use wiremock::{Request, ResponseTemplate};

use super::Shared;
#[cfg(doc)]
use super::{MockProvider, MockProviderBuilder};

/// The resource's path when the mock serves MCP: where [`MockProvider::mcp_url`] points.
pub(super) const MCP_PATH: &str = "/api/mcp";

/// The name of the mock MCP server's one tool: it answers with the `text` it was given.
pub const MCP_TOOL: &str = "echo";

/// The protocol versions the mock speaks, newest first; `initialize` settles on the client's if
/// it is one of these, else on the newest (the specification's version negotiation). Both
/// without JSON-RPC batches, which 2025-06-18 removed: an older version would need them.
const PROTOCOL_VERSIONS: [&str; 2] = ["2025-11-25", "2025-06-18"];

/// The session header (MCP "Transports", "Session Management").
const SESSION_HEADER: &str = "mcp-session-id";

/// The header a client sends after initialization with the version it settled on.
const VERSION_HEADER: &str = "mcp-protocol-version";

/// The sessions the server opened, by id: `false` once a `DELETE` ended one.
#[derive(Debug, Default)]
pub(super) struct McpState {
    sessions: HashMap<String, bool>,
}

impl Shared {
    /// Answers an admitted request for the MCP endpoint.
    pub(super) fn mcp_answer(&self, request: &Request) -> ResponseTemplate {
        match request.method {
            Method::POST => self.mcp_post(request),
            Method::DELETE => match self.mcp_session(request) {
                Ok(id) => {
                    self.state.lock().mcp.sessions.insert(id, false);
                    ResponseTemplate::new(204)
                }
                Err((status, text)) => plain(status, text),
            },
            // The server offers no stream of its own; the specification lets it say so with 405.
            _ => ResponseTemplate::new(405).insert_header("allow", "POST, DELETE"),
        }
    }

    /// A `POST`: one JSON-RPC message.
    fn mcp_post(&self, request: &Request) -> ResponseTemplate {
        let accept = header(request, "accept").unwrap_or_default();
        if !(accept.contains("application/json") && accept.contains("text/event-stream")) {
            return plain(406, "the client must accept both application/json and text/event-stream");
        }
        let Ok(message) = serde_json::from_slice::<Value>(&request.body) else {
            return json_rpc_error(Value::Null, -32700, "parse error: the body is not JSON");
        };
        let Some(object) = message.as_object().filter(|object| object.get("jsonrpc") == Some(&json!("2.0"))) else {
            // Batches went out of the protocol in 2025-06-18.
            return json_rpc_error(Value::Null, -32600, "invalid request: one JSON-RPC 2.0 message per POST");
        };
        let method = object.get("method").and_then(Value::as_str);
        let id = object.get("id").cloned();
        if method == Some("initialize") {
            return self.mcp_initialize(id.unwrap_or(Value::Null), object.get("params"));
        }
        if let Err((status, text)) = self.mcp_session(request) {
            return plain(status, text);
        }
        if let Some(version) = header(request, VERSION_HEADER)
            && !PROTOCOL_VERSIONS.contains(&version.as_str())
        {
            return plain(400, "unsupported MCP-Protocol-Version");
        }
        self.state.lock().stats.mcp_messages += 1;
        match (method, id) {
            // A request: answered on a stream of one event.
            (Some(method), Some(id)) => event(&match tool_answer(method, object.get("params")) {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err((code, message)) => {
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
                }
            }),
            // A notification, or a response to the server: accepted, nothing to say.
            _ => ResponseTemplate::new(202),
        }
    }

    /// `initialize`: a new session, its id in the answer's header.
    fn mcp_initialize(&self, id: Value, params: Option<&Value>) -> ResponseTemplate {
        let asked = params.and_then(|params| params.get("protocolVersion")).and_then(Value::as_str);
        let version = asked.filter(|asked| PROTOCOL_VERSIONS.contains(asked)).unwrap_or(PROTOCOL_VERSIONS[0]);
        let session = session_id();
        let mut state = self.state.lock();
        state.mcp.sessions.insert(session.clone(), true);
        state.stats.mcp_sessions += 1;
        state.stats.mcp_messages += 1;
        drop(state);
        let result = json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "reqwest-token-refresh mock MCP server", "version": env!("CARGO_PKG_VERSION")},
        });
        event(&json!({"jsonrpc": "2.0", "id": id, "result": result})).insert_header(SESSION_HEADER, session.as_str())
    }

    /// The open session a request names, or the status and text to answer one that names none
    /// or another.
    fn mcp_session(&self, request: &Request) -> Result<String, (u16, &'static str)> {
        let Some(id) = header(request, SESSION_HEADER) else {
            return Err((400, "Mcp-Session-Id is required after initialization"));
        };
        match self.state.lock().mcp.sessions.get(&id) {
            Some(true) => Ok(id),
            _ => Err((404, "no such session: initialize again")),
        }
    }
}

/// A request's answer: `Ok` with its result, `Err` with a JSON-RPC error code and message.
fn tool_answer(method: &str, params: Option<&Value>) -> Result<Value, (i64, String)> {
    match method {
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": [{
            "name": MCP_TOOL,
            "description": "Answers with the text it was given.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        }]})),
        "tools/call" => {
            let name = params.and_then(|params| params.get("name")).and_then(Value::as_str);
            if name != Some(MCP_TOOL) {
                return Err((-32602, format!("unknown tool: {}", name.unwrap_or("(none)"))));
            }
            let text = params.and_then(|params| params.pointer("/arguments/text")).and_then(Value::as_str);
            let Some(text) = text else {
                return Err((-32602, "the echo tool needs a text argument".to_owned()));
            };
            Ok(json!({"content": [{"type": "text", "text": text}], "isError": false}))
        }
        other => Err((-32601, format!("method not found: {other}"))),
    }
}

/// A header's value as text, when it is some.
fn header(request: &Request, name: &str) -> Option<String> {
    request.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

/// One JSON-RPC message as the one event of a server-sent-event stream.
fn event(message: &Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", "no-cache")
        .set_body_raw(format!("event: message\ndata: {message}\n\n"), "text/event-stream")
}

/// A JSON-RPC error with no request to answer (a message that could not be read), as JSON.
fn json_rpc_error(id: Value, code: i64, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(400)
        .set_body_json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
}

/// A transport-level refusal, as text.
fn plain(status: u16, text: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(text.to_owned(), "text/plain")
}

/// A session id: 128 random bits in hex, visible ASCII as the specification requires.
fn session_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

//! An MCP session over the layer with the JSON-RPC POSTs an MCP client sends (`Mcp-Session-Id`,
//! answers as server-sent events), against the mock provider's MCP server: what the mock answers,
//! and a session that lives through its token's expiry, ahead of it or on the first 401.

use std::time::Duration;

use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::testkit::{MCP_TOOL, MockProvider};
use reqwest_token_refresh::{Clock, TokenRefresh};
use serde_json::{Value, json};
use tokio::time::timeout;

use crate::helpers::{client_with, grant, on_a_driven_clock};

/// How long one exchange may take: far more than a loopback round trip on a loaded machine.
const BOUND: Duration = Duration::from_secs(20);

/// What one POST got back: its status, the session header, and the JSON-RPC message if any.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub session: Option<String>,
    pub message: Option<Value>,
}

/// POSTs one JSON-RPC message to an MCP endpoint as a client does: accepting JSON or a stream,
/// naming `session` when it has one. A server-sent-event answer is read for its first message.
pub async fn rpc(
    client: &ClientWithMiddleware,
    url: &str,
    session: Option<&str>,
    message: &Value,
) -> reqwest_middleware::Result<Answer> {
    let mut request = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(message.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session).header("mcp-protocol-version", "2025-11-25");
    }
    let response = timeout(BOUND, request.send()).await.expect("the MCP endpoint answers")?;
    let status = response.status().as_u16();
    let session = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let stream = response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body =
        timeout(BOUND, response.text()).await.expect("the body ends").map_err(reqwest_middleware::Error::from)?;
    let json = if stream {
        body.lines().find_map(|line| line.strip_prefix("data:")).map(str::trim).unwrap_or_default().to_owned()
    } else {
        body
    };
    Ok(Answer { status, session, message: serde_json::from_str(&json).ok() })
}

/// The `initialize` request.
pub fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}}})
}

/// A `tools/call` of the mock's echo tool.
pub fn echo(id: u64, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": MCP_TOOL, "arguments": {"text": text}}})
}

/// The text of a tool call's result.
pub fn echoed(answer: &Answer) -> Option<&str> {
    answer.message.as_ref()?.pointer("/result/content/0/text")?.as_str()
}

/// Initializes a session as a client does (the request, then `notifications/initialized`); its id.
pub async fn open_session(client: &ClientWithMiddleware, url: &str) -> String {
    let answer = rpc(client, url, None, &initialize()).await.expect("initialize is answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    let session = answer.session.expect("initialize names a session");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let answer = rpc(client, url, Some(&session), &initialized).await.unwrap();
    assert_eq!(answer.status, 202, "a notification is accepted without a body");
    session
}

/// A plain client (no layer) with a bearer token the mock issued.
fn bearer(provider: &MockProvider) -> ClientWithMiddleware {
    let token = provider.issue_tokens().access_token().secret().to_owned();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let client = reqwest::Client::builder().default_headers(headers).build().unwrap();
    reqwest_middleware::ClientBuilder::new(client).build()
}

#[tokio::test]
async fn the_mock_mcp_server_answers_as_the_streamable_http_transport_specifies() {
    let provider = MockProvider::builder().mcp_server().start().await;
    let client = bearer(&provider);
    let url = provider.mcp_url();

    let answer = rpc(&client, &url, None, &initialize()).await.unwrap();
    assert_eq!(answer.status, 200);
    let result = answer.message.as_ref().and_then(|m| m.get("result")).expect("a result");
    assert_eq!(result["protocolVersion"], "2025-11-25");
    assert!(result["capabilities"]["tools"].is_object(), "{result}");
    let session = answer.session.expect("a session id");
    assert!(session.len() >= 32 && session.bytes().all(|b| b.is_ascii_graphic()), "{session}");
    let older = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
    let answer = rpc(&client, &url, None, &older).await.unwrap();
    assert_eq!(answer.message.unwrap()["result"]["protocolVersion"], "2025-06-18", "the client's version if known");
    assert_ne!(answer.session.as_deref(), Some(session.as_str()), "each initialize opens its own session");
    let batches =
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}});
    let answer = rpc(&client, &url, None, &batches).await.unwrap();
    assert_eq!(answer.message.unwrap()["result"]["protocolVersion"], "2025-11-25", "not a version with batches");

    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let answer = rpc(&client, &url, Some(&session), &ping).await.unwrap();
    assert_eq!((answer.status, answer.message.unwrap()), (200, json!({"jsonrpc": "2.0", "id": 2, "result": {}})));
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
    let answer = rpc(&client, &url, Some(&session), &list).await.unwrap();
    assert_eq!(answer.message.unwrap()["result"]["tools"][0]["name"], MCP_TOOL);
    let answer = rpc(&client, &url, Some(&session), &echo(4, "hi")).await.unwrap();
    assert_eq!(echoed(&answer), Some("hi"));
    assert_eq!(answer.message.as_ref().unwrap()["id"], 4);

    let other = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "other"}});
    let answer = rpc(&client, &url, Some(&session), &other).await.unwrap();
    assert_eq!(answer.message.unwrap()["error"]["code"], -32602);
    let no_text = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": MCP_TOOL}});
    let answer = rpc(&client, &url, Some(&session), &no_text).await.unwrap();
    assert_eq!(answer.message.unwrap()["error"]["code"], -32602, "the echo tool needs its text");
    let unknown = json!({"jsonrpc": "2.0", "id": 6, "method": "resources/list"});
    let answer = rpc(&client, &url, Some(&session), &unknown).await.unwrap();
    assert_eq!(answer.message.unwrap()["error"]["code"], -32601);
    let reply = json!({"jsonrpc": "2.0", "id": 7, "result": {}});
    assert_eq!(rpc(&client, &url, Some(&session), &reply).await.unwrap().status, 202, "a response is accepted");

    // What the transport refuses.
    assert_eq!(rpc(&client, &url, None, &ping).await.unwrap().status, 400, "no session header");
    assert_eq!(rpc(&client, &url, Some("not-a-session"), &ping).await.unwrap().status, 404);
    let batch = json!([ping.clone()]);
    let answer = rpc(&client, &url, Some(&session), &batch).await.unwrap();
    assert_eq!((answer.status, answer.message.unwrap()["error"]["code"].clone()), (400, json!(-32600)));
    let not_json = client.post(&url).header("accept", "application/json, text/event-stream").body("{").send();
    let not_json = not_json.await.unwrap();
    assert_eq!(not_json.status(), 400);
    let error: Value = serde_json::from_str(&not_json.text().await.unwrap()).unwrap();
    assert_eq!((error["id"].clone(), error["error"]["code"].clone()), (Value::Null, json!(-32700)));
    let json_only = client.post(&url).header("accept", "application/json").body(initialize().to_string()).send();
    assert_eq!(json_only.await.unwrap().status(), 406);
    let version = client
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "1999-01-01")
        .body(ping.to_string());
    assert_eq!(version.send().await.unwrap().status(), 400, "an unknown protocol version");
    let stream = client.get(&url).header("accept", "text/event-stream").header("mcp-session-id", &session);
    assert_eq!(stream.send().await.unwrap().status(), 405, "no stream of the server's own");

    // DELETE ends the session; it is then unknown.
    let delete = client.delete(&url).header("mcp-session-id", &session).send().await.unwrap();
    assert_eq!(delete.status(), 204);
    assert_eq!(rpc(&client, &url, Some(&session), &ping).await.unwrap().status, 404);
    assert_eq!(client.delete(&url).header("mcp-session-id", &session).send().await.unwrap().status(), 404);

    let stats = provider.stats();
    assert_eq!(stats.mcp_sessions, 3);
    assert_eq!(stats.mcp_messages, 10, "three initializes and the seven messages the open session took: {stats:?}");
}

#[tokio::test]
async fn the_mcp_endpoint_answers_401_naming_the_metadata_before_anything_else() {
    let provider = MockProvider::builder().mcp_server().start().await;
    let url = provider.mcp_url();
    let bare = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
    let metadata = format!("resource_metadata=\"{}\"", provider.resource_metadata_url());

    for method in ["POST", "GET", "DELETE"] {
        let response = bare.request(method.parse().unwrap(), &url).send().await.unwrap();
        assert_eq!(response.status(), 401, "{method}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer ") && challenge.contains(&metadata), "{challenge}");
    }
    let client = bearer(&provider);
    provider.expire_access_tokens();
    let answer = rpc(&client, &url, None, &initialize()).await.unwrap();
    assert_eq!((answer.status, answer.session), (401, None));
    assert_eq!(answer.message.unwrap()["error"], "invalid_token");
    assert_eq!(provider.resource(), url, "the MCP endpoint is the protected resource");
    assert_eq!(provider.stats().mcp_sessions, 0);
}

#[tokio::test]
async fn a_session_lives_through_its_tokens_expiry_with_one_token_call_for_a_burst_of_tool_calls() {
    let provider = MockProvider::builder().mcp_server().require_resource_indicator(true).start().await;
    let auth = TokenRefresh::builder(grant(&provider).resource(provider.resource()))
        .initial_tokens(provider.issue_tokens())
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.mcp_url();
    let session = open_session(&client, &url).await;

    // A long tool call's worth of time later: the token has expired, 20 calls go at once.
    provider.expire_access_tokens();
    let calls = (0..20).map(|i| {
        let (client, url, session) = (&client, &url, &session);
        async move { rpc(client, url, Some(session), &echo(i, &format!("call {i}"))).await.unwrap() }
    });
    let answers = futures::future::join_all(calls).await;

    for (i, answer) in answers.iter().enumerate() {
        assert_eq!((answer.status, echoed(answer)), (200, Some(format!("call {i}").as_str())));
    }
    let stats = provider.stats();
    assert_eq!(stats.token_calls, 1, "{stats:?}");
    assert_eq!((stats.invalid_targets, stats.resource_indicators), (0, 1), "the refresh named the resource");
    assert_eq!(stats.mcp_sessions, 1, "the session was kept: no second initialize");
    assert_eq!(auth.stats().retries, stats.api_unauthorized, "each 401 retried once, with the new token");
}

#[tokio::test]
async fn a_token_due_to_expire_mid_session_is_refreshed_before_the_next_message_with_no_401() {
    let (clock, provider, auth, client) = on_a_driven_clock(MockProvider::builder().mcp_server()).await;
    let url = provider.mcp_url();
    let session = open_session(&client, &url).await;
    let lifetime = provider.issue_tokens().expires_at().unwrap().duration_since(clock.now()).unwrap();

    // Within the layer's skew of the token's expiry, which has not come yet at the server.
    clock.advance(lifetime - Duration::from_secs(10));
    let answer = rpc(&client, &url, Some(&session), &echo(1, "ahead")).await.unwrap();

    assert_eq!(echoed(&answer), Some("ahead"));
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.api_unauthorized), (1, 0), "{stats:?}");
    assert_eq!((auth.stats().retries, stats.mcp_sessions), (0, 1));
    assert!(auth.tokens().unwrap().expires_at().unwrap() > clock.now() + Duration::from_secs(60));
}

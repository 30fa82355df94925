//! An MCP client, from a bare server URL to a session that outlives its access token, with the
//! official MCP SDK (rmcp) over the layer: `cargo run --example mcp`.
//!
//! 1. The first request gets a 401 whose challenge names the server's protected resource
//!    metadata (RFC 9728); from it, the authorization server's metadata (RFC 8414), the issuer
//!    and resource checked.
//! 2. The client registers itself (RFC 7591) and the user logs in (authorization code with PKCE),
//!    the resource indicator (RFC 8707) on the authorization request and the code exchange.
//! 3. rmcp's client, over [`McpHttpClient`], opens a session and calls a tool.
//! 4. The access token expires mid-session: the next tool call is refreshed once, on the first
//!    401, in the same MCP session.
//! 5. A second process (this example again) shares the `FileStore`, as one MCP client process
//!    per workspace would: it finds the registered client beside the tokens and makes no token
//!    call of its own.
//!
//! All against the crate's embedded mock: its authorization server approves at once, and its MCP
//! server behind the token check speaks the streamable HTTP transport with one tool, `echo`.
//! Exits non-zero when any step does not turn out as printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest_token_refresh::testkit::{MCP_TOOL, MockProvider};
use reqwest_token_refresh::{DynamicRegistration, FileStore, McpHttpClient, ResourceMetadata, TokenRefresh};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use tokio::process::Command;

/// Where the user's browser comes back: a loopback port of the client, as native MCP clients do.
const REDIRECT_URI: &str = "http://127.0.0.1:33418/callback";

/// The flag that makes this example the second process.
const SECOND_PROCESS: &str = "--second-process";

/// The longest any step may take, far above a loopback round trip.
const BOUND: Duration = Duration::from_secs(20);

type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, store, server] = args.as_slice()
        && flag == SECOND_PROCESS
    {
        return second_process(Path::new(store), server).await;
    }
    first_process().await
}

async fn first_process() -> Result<(), Failure> {
    let provider =
        MockProvider::builder().mcp_server().dynamic_registration().require_resource_indicator(true).start().await;
    let server = provider.mcp_url();
    println!("MCP server: {server}");

    // 1. The bare URL: the 401's challenge says where to look.
    let first = reqwest::Client::new()
        .post(&server)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#)
        .send()
        .await?;
    let challenge = first.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
    println!("first request: {} {challenge}", first.status());
    check(first.status() == 401 && challenge.contains("resource_metadata="), "a 401 naming the metadata")?;
    let resource = bounded(ResourceMetadata::from_challenge(&server, first.headers())).await??;
    let issuer = resource.authorization_server().issuer().to_owned();
    println!("discovery: resource {} -> authorization server {issuer}", resource.resource());

    // 2. Registration and login. The MCP specification prefers a client metadata document
    // (`ClientMetadataDocument`) where the server takes one; this one registers clients instead.
    let documents = resource.authorization_server().client_id_metadata_document_supported();
    check(!documents, "a server that registers clients")?;
    let client = DynamicRegistration::from_metadata(resource.authorization_server())?
        .client_name("reqwest-token-refresh MCP example")
        .redirect_uri(REDIRECT_URI);
    let client = bounded(client.register()).await??;
    println!(
        "registered (RFC 7591; no client metadata documents here): client_id {} (its secret kept beside the tokens)",
        client.client_id()
    );
    let grant = resource.refresh_token_grant().registered_client(client);
    let login = grant.login(REDIRECT_URI)?;
    let (authorize, pending) = login.start()?;
    let callback = bounded(provider.approve(&authorize)).await?;
    let tokens = bounded(login.exchange(&pending, &callback)).await??;
    let dir = scratch_dir()?;
    let store_path = dir.join("tokens.json");
    let auth = TokenRefresh::builder(grant).store(FileStore::new(&store_path)).build()?;
    auth.set_tokens(tokens).await?;
    println!(
        "login: code exchanged with PKCE and resource {}; tokens saved to {}",
        provider.resource(),
        store_path.display()
    );

    // 3. A session and a tool call.
    let session = connect(&auth, &server).await?;
    let answer = echo(&session, "hello").await?;
    println!("tool call: {MCP_TOOL} -> {answer:?}");
    check(answer == "hello", "the tool's answer")?;

    // 4. The token expires mid-session.
    provider.expire_access_tokens();
    let calls = provider.stats().token_calls;
    let answer = echo(&session, "still here").await?;
    let refreshes = provider.stats().token_calls - calls;
    let sessions = provider.stats().mcp_sessions;
    println!("after expiry: {MCP_TOOL} -> {answer:?}; token calls: {refreshes}; MCP sessions opened: {sessions}");
    check(answer == "still here" && refreshes == 1 && sessions == 1, "one refresh within the same session")?;
    let stats = provider.stats();
    check(
        stats.resource_indicators == stats.token_calls + stats.authorizations && stats.invalid_targets == 0,
        "the resource on every token request",
    )?;

    // 5. A second process on the same store.
    let calls = provider.stats().token_calls;
    // Killed if it outlives its bound: `output` is dropped with the timeout.
    let child = Command::new(std::env::current_exe()?)
        .args([SECOND_PROCESS.as_ref(), store_path.as_os_str(), server.as_ref()])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BOUND * 2, child).await??;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let child_calls = provider.stats().token_calls - calls;
    println!("second process: token calls of its own: {child_calls}");
    check(output.status.success() && child_calls == 0, "a second process that makes no token call")?;
    check(provider.stats().mcp_sessions == 2, "a session of the second process's own")?;

    bounded(session.cancel()).await??;
    let stats = provider.stats();
    println!(
        "in all: {} registration, {} login, {} token calls, {} MCP sessions, {} MCP messages",
        stats.registrations, stats.authorizations, stats.token_calls, stats.mcp_sessions, stats.mcp_messages
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The second process: the same server, the same store, nothing else.
async fn second_process(store: &Path, server: &str) -> Result<(), Failure> {
    // No challenge at hand: the well-known paths the MCP specification lists.
    let resource = bounded(ResourceMetadata::discover(server)).await??;
    // No client named: the registered client stored beside the tokens is the one used.
    let auth = TokenRefresh::builder(resource.refresh_token_grant()).store(FileStore::new(store)).build()?;
    let session = connect(&auth, server).await?;
    let answer = echo(&session, "from the second process").await?;
    println!("second process: {MCP_TOOL} -> {answer:?}");
    check(answer == "from the second process", "the second process's tool call")?;
    bounded(session.cancel()).await??;
    Ok(())
}

/// An rmcp client session over the layer.
async fn connect(auth: &TokenRefresh, server: &str) -> Result<RunningService<RoleClient, ClientConfig>, Failure> {
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let config = StreamableHttpClientTransportConfig::with_uri(server);
    let transport = StreamableHttpClientTransport::with_client(McpHttpClient::new(client), config);
    Ok(bounded(ClientConfig::default().serve(transport)).await??)
}

/// Calls the mock's echo tool; its text answer.
async fn echo(session: &RunningService<RoleClient, ClientConfig>, text: &str) -> Result<String, Failure> {
    let arguments = serde_json::json!({"text": text}).as_object().cloned();
    let mut call = CallToolRequestParams::new(MCP_TOOL);
    call.arguments = arguments;
    let result = bounded(session.call_tool(call)).await??;
    let text = result.content.first().and_then(|content| content.as_text()).map(|text| text.text.clone());
    text.ok_or_else(|| format!("the tool answered without text: {result:?}").into())
}

/// `future`, or an error once [`BOUND`] has passed.
async fn bounded<T>(future: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(BOUND, future).await.map_err(|_| "a step took longer than its bound".into())
}

/// `Err` naming what was expected unless `ok`.
fn check(ok: bool, expected: &str) -> Result<(), Failure> {
    if ok { Ok(()) } else { Err(format!("expected {expected}").into()) }
}

/// A fresh directory for the store.
fn scratch_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rtr-mcp-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

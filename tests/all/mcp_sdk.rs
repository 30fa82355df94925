#![cfg(feature = "rmcp")]
//! The MCP client path: rmcp's own streamable-HTTP client and server on loopback, the client over
//! `McpHttpClient` with the layer in it, the server behind a check that admits only the access
//! tokens the mock provider issued and still accepts. Then `McpHttpClient` alone against
//! servers that answer badly: every answer a typed error, within bounded time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{Error, McpHttpClient, TokenRefresh};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientConfig, ClientJsonRpcMessage, ClientRequest, ContentBlock,
    ErrorData, ListToolsResult, PaginatedRequestParams, PingRequest, RequestId, ServerCapabilities, ServerConfig,
    ServerJsonRpcMessage, Tool,
};
use rmcp::service::{RequestContext, RoleServer, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt};
use tokio::net::TcpListener;
use tokio::time::timeout;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{client_with, eventually, grant};

/// How long any one step may take: far more than a loopback round trip on a loaded machine.
const BOUND: Duration = Duration::from_secs(20);

/// The one tool of the test server: it answers with a greeting.
const TOOL: &str = "greet";

/// An MCP server with one tool.
#[derive(Debug, Clone)]
struct Greeter;

impl ServerHandler for Greeter {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = serde_json::json!({"type": "object", "properties": {}});
        let schema = schema.as_object().cloned().unwrap_or_default();
        Ok(ListToolsResult::with_all_items(vec![Tool::new(TOOL, "Says hello.", Arc::new(schema))]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != TOOL {
            return Err(ErrorData::invalid_params(format!("no tool {}", request.name), None));
        }
        Ok(rmcp::model::CallToolResult::success(vec![ContentBlock::text("hello")]).into())
    }
}

/// What the check in front of the MCP server saw: each admitted request's method and session
/// id, and how many it turned away.
#[derive(Debug, Default)]
struct Seen {
    admitted: Vec<(http::Method, Option<String>)>,
    rejected: usize,
}

/// rmcp's streamable-HTTP server on 127.0.0.1, behind a check that admits a request only when
/// its bearer token is one the mock provider accepts now, and answers `401 invalid_token`
/// otherwise, as a resource server does.
struct McpServer {
    url: String,
    origin: String,
    seen: Arc<Mutex<Seen>>,
}

impl McpServer {
    async fn start(provider: Arc<MockProvider>) -> McpServer {
        let config = StreamableHttpServerConfig::default().with_sse_keep_alive(None);
        let service = StreamableHttpService::new(|| Ok(Greeter), Arc::new(LocalSessionManager::default()), config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (service, provider, seen) = (service.clone(), provider.clone(), shared.clone());
                tokio::spawn(async move {
                    let front = service_fn(move |request: http::Request<Incoming>| {
                        let (service, provider, seen) = (service.clone(), provider.clone(), seen.clone());
                        async move { Ok::<_, Infallible>(admit(request, &service, &provider, &seen).await) }
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), front).await;
                });
            }
        });
        McpServer { url: format!("{origin}/mcp"), origin, seen }
    }

    /// The distinct session ids of the admitted requests that carried one.
    fn sessions(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.seen.lock().admitted.iter().filter_map(|(_, id)| id.clone()).collect();
        ids.dedup();
        ids
    }
}

async fn admit(
    request: http::Request<Incoming>,
    service: &StreamableHttpService<Greeter, LocalSessionManager>,
    provider: &MockProvider,
    seen: &Mutex<Seen>,
) -> http::Response<BoxBody<Bytes, Infallible>> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !token.is_some_and(|token| provider.accepts_access_token(token)) {
        seen.lock().rejected += 1;
        return http::Response::builder()
            .status(401)
            .header(WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    let session = request.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock().admitted.push((request.method().clone(), session));
    service.handle(request).await
}

/// A layer with the mock's tokens that may send them to the MCP server's origin.
fn layer_for(provider: &MockProvider, server: &McpServer) -> TokenRefresh {
    TokenRefresh::builder(grant(provider))
        .initial_tokens(provider.issue_tokens())
        .allow_origin(server.origin.clone())
        .build()
        .unwrap()
}

fn transport(client: McpHttpClient, url: &str) -> StreamableHttpClientTransport<McpHttpClient> {
    StreamableHttpClientTransport::with_client(client, StreamableHttpClientTransportConfig::with_uri(url))
}

fn greeting(result: &rmcp::model::CallToolResult) -> Option<&str> {
    result.content.first().and_then(ContentBlock::as_text).map(|text| text.text.as_str())
}

#[tokio::test]
async fn a_tool_call_after_the_token_expired_refreshes_once_in_the_same_session() {
    let provider = Arc::new(MockProvider::start().await);
    let server = McpServer::start(provider.clone()).await;
    let auth = layer_for(&provider, &server);
    let client = McpHttpClient::new(client_with(&auth));

    let session = timeout(BOUND, ClientConfig::default().serve(transport(client, &server.url))).await.unwrap().unwrap();
    let tools = timeout(BOUND, session.list_all_tools()).await.unwrap().unwrap();
    assert_eq!(tools.iter().map(|tool| tool.name.as_ref()).collect::<Vec<_>>(), [TOOL]);
    let first = timeout(BOUND, session.call_tool(CallToolRequestParams::new(TOOL))).await.unwrap().unwrap();
    assert_eq!(greeting(&first), Some("hello"));
    assert_eq!(provider.stats().token_calls, 0);
    assert_eq!(server.seen.lock().rejected, 0);

    provider.expire_access_tokens();
    let second = timeout(BOUND, session.call_tool(CallToolRequestParams::new(TOOL))).await.unwrap().unwrap();

    assert_eq!(greeting(&second), Some("hello"));
    assert_eq!(provider.stats().token_calls, 1, "one refresh for the expired token");
    assert!(server.seen.lock().rejected >= 1, "the server did turn the expired token away");
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 1, "one MCP session throughout: {sessions:?}");
    let posts_in_session =
        server.seen.lock().admitted.iter().filter(|(m, id)| m == http::Method::POST && id.is_some()).count();
    assert!(posts_in_session >= 4, "initialized, tools/list and both calls went in the session: {posts_in_session}");

    timeout(BOUND, session.cancel()).await.unwrap().unwrap();
    // Ending the session is a request of it too, with a fresh token.
    let session_id = sessions[0].clone();
    eventually("the session is deleted", || {
        server.seen.lock().admitted.iter().any(|(m, id)| m == http::Method::DELETE && id.as_ref() == Some(&session_id))
    })
    .await;
}

#[tokio::test]
async fn a_dead_refresh_token_fails_the_tool_call_in_bounded_time() {
    let provider = Arc::new(MockProvider::start().await);
    let server = McpServer::start(provider.clone()).await;
    let auth = layer_for(&provider, &server);
    let client = McpHttpClient::new(client_with(&auth));
    let session = timeout(BOUND, ClientConfig::default().serve(transport(client, &server.url))).await.unwrap().unwrap();
    let first = timeout(BOUND, session.call_tool(CallToolRequestParams::new(TOOL))).await.unwrap().unwrap();
    assert_eq!(greeting(&first), Some("hello"));

    provider.revoke_all();
    let started = Instant::now();
    let outcome = timeout(BOUND, session.call_tool(CallToolRequestParams::new(TOOL))).await.expect("no hang");

    let err = outcome.expect_err("the refresh token is dead");
    assert!(started.elapsed() < BOUND);
    let ServiceError::TransportSend(sent) = &err else { panic!("expected a transport error, got {err:?}") };
    match sent.error.downcast_ref::<StreamableHttpError<reqwest_middleware::Error>>() {
        Some(StreamableHttpError::Client(inner)) => {
            assert!(matches!(Error::from_middleware(inner), Some(Error::ReauthorizationRequired { .. })), "{inner}");
        }
        other => panic!("expected the layer's error, got {other:?}"),
    }
    assert_eq!(provider.stats().invalid_grants, 1, "{err}");
    assert!(auth.state().is_reauthorization_required(), "{err}");
    let _ = timeout(BOUND, session.cancel()).await.unwrap();
}

// ---- McpHttpClient alone, against servers that answer badly ----

/// A ping: a request, so the client waits for an answer to it.
fn ping() -> ClientJsonRpcMessage {
    ClientJsonRpcMessage::request(ClientRequest::PingRequest(PingRequest::default()), RequestId::Number(1))
}

fn plain_client() -> McpHttpClient {
    McpHttpClient::from(reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build())
}

async fn post_to(
    url: &str,
    session: Option<&str>,
    limits: StreamableHttpResponseLimits,
) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest_middleware::Error>> {
    let client = plain_client();
    let post = client.post_message_with_response_limits(
        url.into(),
        ping(),
        session.map(Into::into),
        None,
        HashMap::new(),
        limits,
    );
    timeout(BOUND, post).await.expect("bounded")
}

async fn answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(template.clone()).mount(&server).await;
    Mock::given(method("GET")).respond_with(template.clone()).mount(&server).await;
    Mock::given(method("DELETE")).respond_with(template).mount(&server).await;
    server
}

fn limits(json: usize, sse: usize) -> StreamableHttpResponseLimits {
    let mut limits = StreamableHttpResponseLimits::default();
    limits.max_json_response_size = json;
    limits.max_sse_event_size = sse;
    limits
}

#[tokio::test]
async fn a_401_with_a_challenge_is_auth_required_and_a_403_names_its_scope() {
    let challenge =
        r#"Bearer error="invalid_token", resource_metadata="http://x/.well-known/oauth-protected-resource""#;
    let server = answering(ResponseTemplate::new(401).insert_header("www-authenticate", challenge)).await;
    match post_to(&server.uri(), None, Default::default()).await {
        Err(StreamableHttpError::AuthRequired(err)) => assert_eq!(err.www_authenticate_header, challenge),
        other => panic!("expected AuthRequired, got {other:?}"),
    }

    let scope = r#"Bearer error="insufficient_scope", scope="tools:call""#;
    let server = answering(ResponseTemplate::new(403).insert_header("www-authenticate", scope)).await;
    match post_to(&server.uri(), None, Default::default()).await {
        Err(StreamableHttpError::InsufficientScope(err)) => assert_eq!(err.get_required_scope(), Some("tools:call")),
        other => panic!("expected InsufficientScope, got {other:?}"),
    }
    let client = plain_client();
    let stream = client.get_stream(server.uri().into(), Some("s".into()), None, None, HashMap::new());
    assert!(matches!(timeout(BOUND, stream).await.unwrap(), Err(StreamableHttpError::InsufficientScope(_))));
}

#[tokio::test]
async fn a_json_answer_over_the_limit_is_refused_not_truncated() {
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"pad":"{}"}}}}"#, "a".repeat(4096));
    let server = answering(ResponseTemplate::new(200).set_body_raw(body, "application/json")).await;

    let refused = post_to(&server.uri(), None, limits(1024, 1024)).await;
    assert!(matches!(refused, Err(StreamableHttpError::ResponseBodyTooLarge { max_size: 1024 })), "{refused:?}");
    let read = post_to(&server.uri(), None, limits(8192, 1024)).await;
    assert!(matches!(read, Ok(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Response(_), None))), "{read:?}");
}

/// A server whose answers, JSON or SSE, never end: a chunk every 5 ms, forever (until 20,000).
async fn endless_server(content_type: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |_request| async move {
                    let opening = if content_type == "text/event-stream" { "data: " } else { "{\"pad\":\"" };
                    let first =
                        futures::stream::once(async move { Ok::<_, Infallible>(Frame::data(Bytes::from(opening))) });
                    let endless = futures::stream::unfold(0u32, |sent| async move {
                        if sent >= 20_000 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'a'; 512]))), sent + 1))
                    });
                    let body = StreamBody::new(first.chain(endless));
                    Ok::<_, Infallible>(
                        http::Response::builder().status(200).header("content-type", content_type).body(body).unwrap(),
                    )
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_never_ending_json_answer_ends_at_the_limit() {
    let url = endless_server("application/json").await;
    let started = Instant::now();
    let outcome = post_to(&url, None, limits(16 * 1024, 1024)).await;
    assert!(matches!(outcome, Err(StreamableHttpError::ResponseBodyTooLarge { max_size: 16384 })), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_never_ending_sse_event_ends_its_stream_at_the_limit() {
    let url = endless_server("text/event-stream").await;
    let Ok(StreamableHttpPostResponse::Sse(mut events, _)) = post_to(&url, None, limits(1024, 8 * 1024)).await else {
        panic!("expected an event stream");
    };
    let first = timeout(BOUND, events.next()).await.expect("ends at the limit, not with the body");
    let err = first.expect("an error, not the end").expect_err("no event that large");
    assert!(err.to_string().contains("8192"), "{err}");
    assert!(timeout(BOUND, events.next()).await.unwrap().is_none(), "nothing after the error");

    let client = plain_client();
    let stream = client.get_stream_with_max_sse_event_size(url.into(), None, None, None, HashMap::new(), 4096);
    let mut events = timeout(BOUND, stream).await.unwrap().unwrap();
    let err = timeout(BOUND, events.next()).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().contains("4096"), "{err}");
}

#[tokio::test]
async fn sse_events_within_the_limit_arrive_whole() {
    let body = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n: keep-alive\n\n";
    let server = answering(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")).await;
    let Ok(StreamableHttpPostResponse::Sse(events, _)) = post_to(&server.uri(), None, limits(1024, 64)).await else {
        panic!("expected an event stream");
    };
    let events: Vec<_> = timeout(BOUND, events.collect::<Vec<_>>()).await.unwrap();
    let data: Vec<_> = events.into_iter().filter_map(|event| event.unwrap().data).collect();
    assert_eq!(data, [r#"{"jsonrpc":"2.0","id":1,"result":{}}"#]);
}

#[tokio::test]
async fn bad_answers_are_typed_errors() {
    let server = answering(ResponseTemplate::new(200).set_body_raw("{not json", "application/json")).await;
    let outcome = post_to(&server.uri(), None, Default::default()).await;
    assert!(matches!(&outcome, Err(StreamableHttpError::UnexpectedServerResponse(m)) if m.contains("{not json")));

    let server = answering(ResponseTemplate::new(200).set_body_raw("<html>", "text/html")).await;
    let outcome = post_to(&server.uri(), None, Default::default()).await;
    assert!(matches!(&outcome, Err(StreamableHttpError::UnexpectedContentType(Some(ct))) if ct == "text/html"));

    let server = answering(ResponseTemplate::new(404)).await;
    assert!(matches!(
        post_to(&server.uri(), Some("gone"), Default::default()).await,
        Err(StreamableHttpError::SessionExpired)
    ));

    let server =
        answering(ResponseTemplate::new(503).insert_header("retry-after", "7").set_body_string("x".repeat(1 << 20)))
            .await;
    match post_to(&server.uri(), None, Default::default()).await {
        Err(StreamableHttpError::HttpStatus(err)) => {
            assert_eq!((err.status, err.retry_after.as_deref()), (503, Some("7")))
        }
        other => panic!("expected HttpStatus, got {other:?}"),
    }

    let server = answering(ResponseTemplate::new(418).set_body_string("y".repeat(1 << 20))).await;
    let mut small = StreamableHttpResponseLimits::default();
    small.max_error_response_size = 16;
    match post_to(&server.uri(), None, small).await {
        Err(StreamableHttpError::UnexpectedServerResponse(message)) => {
            assert_eq!(message, format!("HTTP 418 I'm a teapot: {}", "y".repeat(16)))
        }
        other => panic!("expected UnexpectedServerResponse, got {other:?}"),
    }

    let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"nope"}}"#;
    let server = answering(ResponseTemplate::new(400).set_body_raw(error, "application/json")).await;
    let outcome = post_to(&server.uri(), None, Default::default()).await;
    assert!(matches!(outcome, Ok(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Error(_), _))), "{outcome:?}");
}

#[tokio::test]
async fn accepted_answers_the_session_header_and_the_reserved_headers() {
    let server = answering(ResponseTemplate::new(202).insert_header("mcp-session-id", "abc")).await;
    assert!(matches!(post_to(&server.uri(), None, Default::default()).await, Ok(StreamableHttpPostResponse::Accepted)));

    let answer = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
    let server = answering(
        ResponseTemplate::new(200).insert_header("mcp-session-id", "abc").set_body_raw(answer, "application/json"),
    )
    .await;
    let outcome = post_to(&server.uri(), None, Default::default()).await;
    assert!(matches!(&outcome, Ok(StreamableHttpPostResponse::Json(_, Some(id))) if id == "abc"), "{outcome:?}");
    let sent = &server.received_requests().await.unwrap()[0];
    assert_eq!(sent.headers.get("accept").unwrap(), "text/event-stream, application/json");
    assert_eq!(sent.headers.get("content-type").unwrap(), "application/json");

    let reserved =
        HashMap::from([(http::HeaderName::from_static("mcp-session-id"), http::HeaderValue::from_static("x"))]);
    let client = plain_client();
    let post = client.post_message(server.uri().into(), ping(), None, None, reserved);
    assert!(matches!(timeout(BOUND, post).await.unwrap(), Err(StreamableHttpError::ReservedHeaderConflict(_))));

    let server = answering(ResponseTemplate::new(405)).await;
    let client = plain_client();
    let delete = client.delete_session(server.uri().into(), "abc".into(), None, HashMap::new());
    assert!(timeout(BOUND, delete).await.unwrap().is_ok(), "a server without DELETE has nothing to end");
    let client = plain_client();
    let get = client.get_stream(server.uri().into(), Some("abc".into()), None, None, HashMap::new());
    assert!(matches!(timeout(BOUND, get).await.unwrap(), Err(StreamableHttpError::ServerDoesNotSupportSse)));
}

#[tokio::test]
async fn the_layers_own_errors_come_back_as_client_errors() {
    let provider = MockProvider::start().await;
    let server = MockServer::start().await;
    let auth = TokenRefresh::builder(grant(&provider))
        .initial_tokens(provider.issue_expired_tokens())
        .allow_origin(server.uri())
        .build()
        .unwrap();
    provider.revoke_all();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .mount(&server)
        .await;
    let client = McpHttpClient::new(client_with(&auth));
    let post = client.post_message(server.uri().into(), ping(), None, None, HashMap::new());
    match timeout(BOUND, post).await.unwrap() {
        Err(StreamableHttpError::Client(err)) => {
            assert!(matches!(Error::from_middleware(&err), Some(Error::ReauthorizationRequired { .. })), "{err}");
        }
        other => panic!("expected the layer's error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_401_the_layer_cannot_recover_from_reaches_rmcp_as_auth_required() {
    let provider = MockProvider::start().await;
    let server = MockServer::start().await;
    let challenge = r#"Bearer error="invalid_token", error_description="not for this server""#;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", challenge))
        .expect(2)
        .mount(&server)
        .await;
    let auth = TokenRefresh::builder(grant(&provider))
        .initial_tokens(provider.issue_tokens())
        .allow_origin(server.uri())
        .build()
        .unwrap();
    let client = McpHttpClient::new(client_with(&auth));

    let post = client.post_message(server.uri().into(), ping(), None, None, HashMap::new());
    match timeout(BOUND, post).await.unwrap() {
        Err(StreamableHttpError::AuthRequired(err)) => assert_eq!(err.www_authenticate_header, challenge),
        other => panic!("expected AuthRequired, got {other:?}"),
    }
    assert_eq!(provider.stats().token_calls, 1, "the layer refreshed once and retried once");
}

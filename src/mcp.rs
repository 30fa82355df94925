//! [`McpHttpClient`]: the HTTP client of the MCP SDK's (`rmcp`) streamable-HTTP client transport,
//! over a [`ClientWithMiddleware`] that holds the layer.
//!
//! rmcp's transport sends every JSON-RPC message through its `StreamableHttpClient` trait, and
//! implements that trait for a bare `reqwest::Client` only. The orphan rule forbids implementing
//! it here for `ClientWithMiddleware`, so this newtype does: each POST, GET and DELETE of the
//! transport goes through the middleware stack, where the layer attaches the token, refreshes it
//! once per expiry behind its single flight, and retries the request. The MCP session
//! (`Mcp-Session-Id`) outlives any number of refreshes, because no request of it ever fails for
//! a token the layer could renew.
//!
//! # What reaches rmcp
//!
//! The protocol is the one rmcp's own reqwest client speaks: `Accept: text/event-stream,
//! application/json` on every POST and GET, the session id and `Last-Event-Id` headers, a 202
//! (or 204) as "accepted", a JSON answer read whole, an SSE answer as a stream of events, a 404
//! on a request of a session as [`StreamableHttpError::SessionExpired`], and a 405 on GET or
//! DELETE as "not supported". The errors are typed the same way:
//!
//! - a 401 with a `WWW-Authenticate` challenge is [`StreamableHttpError::AuthRequired`] with
//!   that challenge. With the layer in the client, such a 401 is terminal: the layer already
//!   refreshed and retried, or found nothing to refresh with;
//! - a 403 with a challenge is [`StreamableHttpError::InsufficientScope`], with the challenge's
//!   `scope` when it names one;
//! - a 429 or 5xx is [`StreamableHttpError::HttpStatus`] (the status and a short
//!   `Retry-After`, never the body), unless a 5xx's JSON body is a JSON-RPC error, which rmcp
//!   gets as the answer;
//! - the layer's own errors ([`Error::ReauthorizationRequired`](crate::Error::ReauthorizationRequired)
//!   when the refresh token is dead, [`Error::Refresh`](crate::Error::Refresh), ...) and network
//!   errors are [`StreamableHttpError::Client`] holding the `reqwest_middleware::Error`; get
//!   ours back with [`Error::from_middleware`](crate::Error::from_middleware).
//!
//! A request of an rmcp session that fails so returns rmcp's `ServiceError::TransportSend`,
//! whose `error` is this client's `StreamableHttpError`:
//!
//! ```
//! use reqwest_token_refresh::Error;
//! use rmcp::service::ServiceError;
//! use rmcp::transport::streamable_http_client::StreamableHttpError;
//!
//! /// Whether `err`, from a call on an rmcp session over `McpHttpClient`, means "log in again".
//! fn must_log_in_again(err: &ServiceError) -> bool {
//!     let ServiceError::TransportSend(sent) = err else { return false };
//!     match sent.error.downcast_ref::<StreamableHttpError<reqwest_middleware::Error>>() {
//!         Some(StreamableHttpError::Client(err)) => Error::from_middleware(err).is_some_and(Error::is_reauthorization_required),
//!         _ => false,
//!     }
//! }
//! ```
//!
//! # Limits
//!
//! Every body is read against the transport's `StreamableHttpResponseLimits`, counted as it
//! arrives (a `Content-Length` above the limit is refused before reading): a JSON answer above
//! `max_json_response_size` is [`StreamableHttpError::ResponseBodyTooLarge`], never truncated
//! and parsed; the body of a failed request is read only up to `max_error_response_size`, as a
//! diagnostic; an SSE event whose raw size passes `max_sse_event_size` ends its stream with an
//! error. These are sizes, not times: a server that stops sending is bounded by the timeouts of
//! the `reqwest::Client` inside (`read_timeout`, `timeout`), as every request of that client is.
//!
//! Redirects follow the policy of that `reqwest::Client` too. rmcp's own client follows only
//! same-origin 307 and 308 (which keep the POST's body); a `reqwest::Client::new()` follows any
//! redirect, turning a POST into a bodyless GET on a 301, 302 or 303: give the client inside a
//! policy such as `reqwest::redirect::Policy::none()` when the MCP server may redirect.
//!
//! rmcp treats an error of its own client's oversized event as final; it does not recognize
//! ours, so an oversized event on a resumable stream counts as a broken stream, which rmcp's
//! transport reconnects under its retry policy (`StreamableHttpClientTransportConfig::retry_config`),
//! a bounded number of times.

use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reqwest_middleware::{ClientWithMiddleware, RequestBuilder};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorData, ServerJsonRpcMessage};
use rmcp::transport::common::http_header::{
    EVENT_STREAM_MIME_TYPE, HEADER_LAST_EVENT_ID, HEADER_MCP_PROTOCOL_VERSION, HEADER_SESSION_ID, JSON_MIME_TYPE,
};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError, SseError, StreamableHttpClient, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::{Sse, SseStream};

use crate::challenge::parse_challenges;

/// The errors of [`McpHttpClient`] as rmcp's transport sees them.
type McpError = StreamableHttpError<reqwest_middleware::Error>;

/// The stream of server-sent events that a POST or GET answers with.
type EventStream = BoxStream<'static, Result<Sse, SseError>>;

/// What every POST and GET of the transport accepts: either kind of answer the protocol allows.
const ACCEPT_EITHER: &str = "text/event-stream, application/json";

/// The longest `Retry-After` value kept in an [`HttpStatusError`]: 128 bytes, the limit rmcp's
/// own clients apply (a date takes 29).
const MAX_RETRY_AFTER: usize = 128;

/// rmcp's streamable-HTTP client transport over a [`ClientWithMiddleware`]: MCP requests that
/// carry the layer's token and survive its expiry.
///
/// Build the client with the layer in it, wrap it, and hand it to
/// `StreamableHttpClientTransport::with_client`:
///
/// ```no_run
/// use rmcp::ServiceExt;
/// use rmcp::model::ClientConfig;
/// use rmcp::transport::StreamableHttpClientTransport;
/// use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
/// use reqwest_token_refresh::{McpHttpClient, RefreshTokenGrant, TokenRefresh, TokenSet};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let auth = TokenRefresh::builder(
///         RefreshTokenGrant::new("https://login.example/oauth/token").client_id("mcp-client"),
///     )
///     .initial_tokens(TokenSet::new("access").with_refresh_token("refresh"))
///     .allow_origin("https://mcp.example")
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth).build();
///
/// // No `auth_header` in the config: the layer attaches (and refreshes) the token.
/// let config = StreamableHttpClientTransportConfig::with_uri("https://mcp.example/mcp");
/// let transport = StreamableHttpClientTransport::with_client(McpHttpClient::new(client), config);
/// let session = ClientConfig::default().serve(transport).await?;
/// let tools = session.list_all_tools().await?;
/// println!("{} tools", tools.len());
/// # Ok(()) }
/// ```
///
/// # The `auth_header` argument
///
/// rmcp passes its config's `auth_header` (a bearer token of its own) to every call. Leave it
/// `None` with the layer: given, it goes out as `Authorization: Bearer ...`, and the layer lets a
/// request that already has an `Authorization` header through untouched, neither attaching nor
/// refreshing its token. The transport's `custom_headers` are sent as given, except `Accept`,
/// `Mcp-Session-Id` and `Last-Event-Id`, which the protocol sets
/// ([`StreamableHttpError::ReservedHeaderConflict`]).
#[derive(Debug, Clone)]
pub struct McpHttpClient {
    client: ClientWithMiddleware,
}

impl McpHttpClient {
    /// Wraps `client`, whose middleware (the layer among it) every MCP request goes through.
    pub fn new(client: ClientWithMiddleware) -> Self {
        Self { client }
    }
}

impl From<ClientWithMiddleware> for McpHttpClient {
    fn from(client: ClientWithMiddleware) -> Self {
        Self::new(client)
    }
}

impl StreamableHttpClient for McpHttpClient {
    type Error = reqwest_middleware::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, McpError> {
        let limits = StreamableHttpResponseLimits::default();
        self.post_message_with_response_limits(uri, message, session_id, auth_header, custom_headers, limits).await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, McpError> {
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_sse_event_size = max_sse_event_size;
        self.post_message_with_response_limits(uri, message, session_id, auth_header, custom_headers, limits).await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, McpError> {
        // Bytes, not a stream: the layer clones the request to retry it after a refresh.
        let body = serde_json::to_vec(&message)?;
        let mut request = self.client.post(uri.as_ref()).header(ACCEPT, ACCEPT_EITHER);
        request = with_headers(request, auth_header, custom_headers)?;
        if let Some(session_id) = &session_id {
            request = request.header(HEADER_SESSION_ID, session_id.as_ref());
        }
        let mut response = request
            .header(CONTENT_TYPE, JSON_MIME_TYPE)
            .body(body)
            .send()
            .await
            .map_err(StreamableHttpError::Client)?;
        let status = response.status();
        if let Some(rejection) = auth_rejection(status, response.headers())? {
            return Err(rejection);
        }
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let content_type =
            response.headers().get(CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let is_json = content_type.as_deref().is_some_and(|ct| media_type_is(ct, JSON_MIME_TYPE));
        let mut status_error = status_failure(status, response.headers());
        // A 429, or a failure whose body cannot be a JSON-RPC error, says all it has in its status.
        if let Some(error) = status_error.take_if(|_| !is_json || status == StatusCode::TOO_MANY_REQUESTS) {
            return Err(error.into());
        }
        let answered_session =
            response.headers().get(HEADER_SESSION_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // Notifications, responses and errors leave no request waiting for an answer.
        let awaits_no_answer = !matches!(message, ClientJsonRpcMessage::Request(_));
        if status.is_success() && response.content_length() == Some(0) && awaits_no_answer {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if !status.is_success() {
            return failed_post(
                response,
                &message,
                session_id.is_some(),
                is_json,
                status_error,
                limits,
                answered_session,
            )
            .await;
        }
        match content_type.as_deref() {
            Some(ct) if media_type_is(ct, EVENT_STREAM_MIME_TYPE) => {
                Ok(StreamableHttpPostResponse::Sse(event_stream(response, limits.max_sse_event_size), answered_session))
            }
            Some(ct) if media_type_is(ct, JSON_MIME_TYPE) => {
                let body = read_bounded(&mut response, limits.max_json_response_size).await?;
                match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
                    Ok(answer) => Ok(StreamableHttpPostResponse::Json(answer, answered_session)),
                    // Nothing waits for this body: an unreadable one loses nothing.
                    Err(_) if awaits_no_answer => Ok(StreamableHttpPostResponse::Accepted),
                    Err(err) => Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
                        "the answer is not a JSON-RPC message: {err}: {}",
                        preview(&body)
                    )))),
                }
            }
            // A 2xx to a notification needs no body at all, whatever its type says.
            _ if awaits_no_answer => Ok(StreamableHttpPostResponse::Accepted),
            _ => Err(StreamableHttpError::UnexpectedContentType(content_type)),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), McpError> {
        let request = with_headers(self.client.delete(uri.as_ref()), auth_header, custom_headers)?;
        let response =
            request.header(HEADER_SESSION_ID, session_id.as_ref()).send().await.map_err(StreamableHttpError::Client)?;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            // The server keeps sessions until they expire: nothing to end.
            return Ok(());
        }
        response.error_for_status().map(drop).map_err(|e| StreamableHttpError::Client(e.into()))
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<EventStream, McpError> {
        let max = StreamableHttpResponseLimits::default().max_sse_event_size;
        self.get_stream_with_max_sse_event_size(uri, session_id, last_event_id, auth_header, custom_headers, max).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<EventStream, McpError> {
        let mut request = self.client.get(uri.as_ref()).header(ACCEPT, ACCEPT_EITHER);
        if let Some(session_id) = session_id {
            request = request.header(HEADER_SESSION_ID, session_id.as_ref());
        }
        if let Some(last_event_id) = last_event_id {
            request = request.header(HEADER_LAST_EVENT_ID, last_event_id);
        }
        let request = with_headers(request, auth_header, custom_headers)?;
        let response = request.send().await.map_err(StreamableHttpError::Client)?;
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if let Some(rejection) = auth_rejection(status, response.headers())? {
            return Err(rejection);
        }
        if let Some(error) = status_failure(status, response.headers()) {
            return Err(error.into());
        }
        let response = response.error_for_status().map_err(|e| StreamableHttpError::Client(e.into()))?;
        let content_type =
            response.headers().get(CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match content_type {
            Some(ct) if media_type_is(&ct, EVENT_STREAM_MIME_TYPE) || media_type_is(&ct, JSON_MIME_TYPE) => {
                Ok(event_stream(response, max_sse_event_size))
            }
            other => Err(StreamableHttpError::UnexpectedContentType(other)),
        }
    }
}

/// The transport's own bearer token (see [`McpHttpClient`] on why it should be `None`) and its
/// custom headers, which may not replace the headers the protocol sets.
fn with_headers(
    mut request: RequestBuilder,
    auth_header: Option<String>,
    custom_headers: HashMap<HeaderName, HeaderValue>,
) -> Result<RequestBuilder, McpError> {
    if let Some(token) = auth_header {
        request = request.bearer_auth(token);
    }
    for (name, value) in custom_headers {
        // The transport itself sends the negotiated protocol version as a custom header.
        let reserved = [ACCEPT.as_str(), HEADER_SESSION_ID, HEADER_LAST_EVENT_ID]
            .iter()
            .any(|reserved| name.as_str().eq_ignore_ascii_case(reserved));
        if reserved && !name.as_str().eq_ignore_ascii_case(HEADER_MCP_PROTOCOL_VERSION) {
            return Err(StreamableHttpError::ReservedHeaderConflict(name.to_string()));
        }
        request = request.header(name, value);
    }
    Ok(request)
}

/// A 401 or 403 with a `WWW-Authenticate` challenge: rmcp's [`AuthRequiredError`] or
/// [`InsufficientScopeError`]. A challenge that is not text is an error of its own; `None` for
/// any other answer.
fn auth_rejection(status: StatusCode, headers: &HeaderMap) -> Result<Option<McpError>, McpError> {
    if !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Ok(None);
    }
    let Some(challenge) = headers.get(WWW_AUTHENTICATE) else { return Ok(None) };
    let challenge = challenge.to_str().map_err(|_| {
        StreamableHttpError::UnexpectedServerResponse(Cow::Borrowed("the WWW-Authenticate header is not text"))
    })?;
    if status == StatusCode::UNAUTHORIZED {
        return Ok(Some(StreamableHttpError::AuthRequired(AuthRequiredError::new(challenge.to_owned()))));
    }
    let scope = parse_challenges(challenge)
        .into_iter()
        .filter(|c| c.scheme == "bearer")
        .flat_map(|c| c.params)
        .find_map(|(name, value)| (name == "scope").then_some(value));
    Ok(Some(StreamableHttpError::InsufficientScope(InsufficientScopeError::new(challenge.to_owned(), scope))))
}

/// A 429 or 5xx as rmcp's [`HttpStatusError`]: the status and a `Retry-After` of at most
/// [`MAX_RETRY_AFTER`] bytes, nothing of the body.
fn status_failure(status: StatusCode, headers: &HeaderMap) -> Option<HttpStatusError> {
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let retry_after = headers
        .get(RETRY_AFTER)
        .filter(|v| v.len() <= MAX_RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some(HttpStatusError::new(status.as_u16(), retry_after))
}

/// The answer to a POST that failed (not a 2xx, not a challenge, not a 429): its JSON-RPC error
/// when its body is one, else a typed error with the status and a bounded part of the body.
async fn failed_post(
    mut response: reqwest::Response,
    message: &ClientJsonRpcMessage,
    in_session: bool,
    is_json: bool,
    status_error: Option<HttpStatusError>,
    limits: StreamableHttpResponseLimits,
    answered_session: Option<String>,
) -> Result<StreamableHttpPostResponse, McpError> {
    let status = response.status();
    // A 401 or 403 without a challenge keeps its status: it is no JSON-RPC answer.
    let auth_failure = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    let body = if is_json && !auth_failure {
        match read_bounded(&mut response, limits.max_json_response_size).await {
            Ok(body) => {
                if let Ok(ServerJsonRpcMessage::Error(error)) = serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
                    if let Some(answer) = discover_refused(message, in_session, status, Some(error.error.clone()), "") {
                        return Ok(answer);
                    }
                    return Ok(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Error(error), answered_session));
                }
                let shown = body.len().min(limits.max_error_response_size);
                body.get(..shown).map(<[u8]>::to_vec).unwrap_or_default()
            }
            Err(err @ StreamableHttpError::ResponseBodyTooLarge { .. }) => {
                return Err(status_error.map(StreamableHttpError::from).unwrap_or(err));
            }
            // The body broke off: the status still says what happened.
            Err(StreamableHttpError::Client(_)) => Vec::new(),
            Err(err) => return Err(err),
        }
    } else {
        read_prefix(&mut response, limits.max_error_response_size).await
    };
    let body = String::from_utf8_lossy(&body);
    if let Some(answer) = discover_refused(message, in_session, status, None, &body) {
        return Ok(answer);
    }
    if let Some(error) = status_error {
        return Err(error.into());
    }
    Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!("HTTP {status}: {body}"))))
}

/// A server that predates `server/discover` refuses it with a 4xx (not 401 or 403) that the
/// client must read as a JSON-RPC error of that request, to fall back to `initialize`: the
/// server's own error when it sent one, else an `invalid_request` naming the status.
fn discover_refused(
    message: &ClientJsonRpcMessage,
    in_session: bool,
    status: StatusCode,
    error: Option<ErrorData>,
    body: &str,
) -> Option<StreamableHttpPostResponse> {
    if in_session || !status.is_client_error() || matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return None;
    }
    let ClientJsonRpcMessage::Request(request) = message else { return None };
    if !matches!(request.request, ClientRequest::DiscoverRequest(_)) {
        return None;
    }
    let error = error.unwrap_or_else(|| {
        ErrorData::invalid_request(format!("server/discover rejected with HTTP {status}: {body}"), None)
    });
    // The id is the request's: a middlebox's rejection cannot echo it.
    Some(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::error(error, Some(request.id.clone())), None))
}

/// Whether a `Content-Type` value is `expected`, ignoring case and parameters
/// (`Application/JSON; charset=utf-8` is JSON).
fn media_type_is(content_type: &str, expected: &str) -> bool {
    content_type.split(';').next().is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected))
}

/// The whole body, or [`StreamableHttpError::ResponseBodyTooLarge`] as soon as it passes `max`
/// bytes (or says it will, in its `Content-Length`).
async fn read_bounded(response: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, McpError> {
    let too_large = StreamableHttpError::ResponseBodyTooLarge { max_size: max };
    if response.content_length().is_some_and(|length| length > max as u64) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| StreamableHttpError::Client(e.into()))? {
        if chunk.len() > max - body.len() {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// At most `max` bytes of the body, as a diagnostic: reading stops once they are in, and a body
/// that breaks off leaves what arrived.
async fn read_prefix(response: &mut reqwest::Response, max: usize) -> Vec<u8> {
    let mut prefix = Vec::new();
    while prefix.len() < max {
        let Ok(Some(chunk)) = response.chunk().await else { break };
        let take = chunk.len().min(max - prefix.len());
        prefix.extend_from_slice(chunk.get(..take).unwrap_or_default());
    }
    prefix
}

/// At most 256 characters of a body that was not what it should be, for an error message.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.is_empty() { "<empty>".to_owned() } else { text.chars().take(256).collect() }
}

/// The body as server-sent events, each at most `max_event_size` raw bytes.
fn event_stream(response: reqwest::Response, max_event_size: usize) -> EventStream {
    let chunks = futures_util::stream::unfold(Some(response), |response| async move {
        let mut response = response?;
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
            Ok(None) => None,
            // After an error the body has nothing more to give.
            Err(err) => Some((Err(err), None)),
        }
    });
    let bounded = BoundedEvents { chunks: Box::pin(chunks), budget: EventBudget::new(max_event_size), done: false };
    SseStream::from_bytes_stream(bounded).boxed()
}

/// Why an event stream ended early.
#[derive(Debug, thiserror::Error)]
enum EventStreamError {
    /// The body broke off.
    #[error("the event stream broke off: {0}")]
    Body(#[source] reqwest::Error),
    /// One event passed the transport's `max_sse_event_size`.
    #[error("an SSE event exceeded the maximum size of {max_size} bytes")]
    EventTooLarge {
        /// The limit.
        max_size: usize,
    },
}

/// The body's chunks, checked against an [`EventBudget`] before the SSE parser sees them: the
/// stream ends with [`EventStreamError::EventTooLarge`] instead of buffering a larger event.
struct BoundedEvents {
    chunks: BoxStream<'static, Result<Bytes, reqwest::Error>>,
    budget: EventBudget,
    done: bool,
}

impl Stream for BoundedEvents {
    type Item = Result<Bytes, EventStreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = match self.chunks.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        let item = match next {
            None => None,
            Some(Err(err)) => Some(Err(EventStreamError::Body(err))),
            Some(Ok(chunk)) if self.budget.take(&chunk) => Some(Ok(chunk)),
            Some(Ok(_)) => Some(Err(EventStreamError::EventTooLarge { max_size: self.budget.max })),
        };
        self.done = !matches!(item, Some(Ok(_)));
        Poll::Ready(item)
    }
}

/// The raw size of the SSE event being received, line by line: an event is the lines up to a
/// blank one. A comment line (`:keep-alive`) is not kept by the parser, so only its own length
/// counts, and only while it is being received.
#[derive(Debug)]
struct EventBudget {
    max: usize,
    /// The event's finished lines, each with the newline the parser joins them with.
    event: usize,
    /// The line being received.
    line: usize,
    comment: bool,
    /// The last byte was a CR, so an LF right after it ends nothing more.
    after_cr: bool,
}

impl EventBudget {
    fn new(max: usize) -> Self {
        Self { max, event: 0, line: 0, comment: false, after_cr: false }
    }

    /// Counts `chunk`; `false` once the event passes the limit.
    fn take(&mut self, chunk: &[u8]) -> bool {
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match byte {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    if self.line == 0 {
                        self.event = 0;
                    } else if !self.comment {
                        self.event = self.event.saturating_add(self.line).saturating_add(1);
                    }
                    self.line = 0;
                    self.comment = false;
                }
                _ => {
                    if self.line == 0 {
                        self.comment = byte == b':';
                    }
                    self.line = self.line.saturating_add(1);
                }
            }
            if self.event.saturating_add(self.line) > self.max {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_retry_after_is_128_bytes() {
        assert_eq!(MAX_RETRY_AFTER, 128);
    }

    #[test]
    fn the_client_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<McpHttpClient>();
    }

    #[test]
    fn an_event_within_the_budget_passes_and_the_next_starts_from_zero() {
        let mut budget = EventBudget::new(12);
        assert!(budget.take(b"data: 12345\n\n"));
        assert!(budget.take(b"data: 12345\r\n\r\n"));
        assert!(budget.take(b"data: 12345\r\rdata: 1234\n"));
        assert!(!budget.take(b"data: 1"));
    }

    #[test]
    fn an_event_split_over_chunks_is_counted_whole() {
        let mut budget = EventBudget::new(20);
        assert!(budget.take(b"data: aaaa"));
        assert!(budget.take(b"aaaa\ndata"));
        assert!(!budget.take(b": bbbbbbbbbbbb"));
    }

    #[test]
    fn a_line_without_end_fails_once_it_passes_the_limit() {
        let mut budget = EventBudget::new(1024);
        let endless = vec![b'a'; 512];
        assert!(budget.take(&endless));
        assert!(budget.take(&endless));
        assert!(!budget.take(b"a"));
    }

    #[test]
    fn comment_lines_do_not_add_to_the_event() {
        let mut budget = EventBudget::new(16);
        for _ in 0..100 {
            assert!(budget.take(b":keep-alive ping\n"));
        }
        // A line counts with the newline that joins it to the next: 15 + 1 bytes.
        assert!(budget.take(b"data: 012345678\n\n"));
        assert!(!budget.take(b"data: 0123456789\n"));
    }

    #[test]
    fn media_types_ignore_case_and_parameters() {
        assert!(media_type_is("Application/JSON; charset=utf-8", JSON_MIME_TYPE));
        assert!(media_type_is(" text/event-stream ", EVENT_STREAM_MIME_TYPE));
        assert!(!media_type_is("application/json-seq", JSON_MIME_TYPE));
        assert!(!media_type_is("", JSON_MIME_TYPE));
    }

    #[test]
    fn a_403_challenge_names_its_scope() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="insufficient_scope", scope="tools:call files:read""#),
        );
        match auth_rejection(StatusCode::FORBIDDEN, &headers) {
            Ok(Some(StreamableHttpError::InsufficientScope(err))) => {
                assert_eq!(err.get_required_scope(), Some("tools:call files:read"));
            }
            other => panic!("expected InsufficientScope, got {other:?}"),
        }
        assert!(matches!(
            auth_rejection(StatusCode::UNAUTHORIZED, &headers),
            Ok(Some(StreamableHttpError::AuthRequired(err))) if err.www_authenticate_header.contains("insufficient_scope")
        ));
        assert!(matches!(auth_rejection(StatusCode::FORBIDDEN, &HeaderMap::new()), Ok(None)));
    }

    #[test]
    fn retry_after_is_kept_only_when_short() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let kept = status_failure(StatusCode::SERVICE_UNAVAILABLE, &headers).map(|e| e.retry_after);
        assert_eq!(kept, Some(Some("7".to_owned())));
        let long = "1".repeat(MAX_RETRY_AFTER + 1);
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static("x")));
        let dropped = status_failure(StatusCode::TOO_MANY_REQUESTS, &headers).map(|e| e.retry_after);
        assert_eq!(dropped, Some(None));
        assert!(status_failure(StatusCode::BAD_REQUEST, &headers).is_none());
    }
}

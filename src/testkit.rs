//! A mock OAuth 2.0 provider for tests: [`MockProvider`].
//!
//! A real HTTP server on `127.0.0.1` (a [`wiremock::MockServer`]) with a token endpoint at
//! `/oauth/token` and a protected API under `/api/`, behaving like the providers this crate was
//! written against, so that a client which gets refreshing wrong fails here as in production:
//!
//! * **Rotation**: each refresh returns a new refresh token and spends the one presented (Kroger,
//!   Withings); a spent refresh token gets `400 {"error":"invalid_grant"}`.
//! * **Reuse detection** (RFC 9700 §4.14.2): a provider that sees a spent refresh token again
//!   cannot tell the client from an attacker replaying a stolen token, so it revokes the whole
//!   family, every token descended from that authorization. Two requests that both get a 401 and
//!   both refresh with the same refresh token look exactly like that replay, which is why a client
//!   must refresh behind a single flight; the mock makes forgetting it fail loudly.
//! * **The API's 401**: `WWW-Authenticate: Bearer realm="mock", error="invalid_token", ...` and
//!   `{"error":"invalid_token","error_description":"..."}` (Kroger); a request without credentials
//!   gets a bare challenge (RFC 6750 §3.1).
//! * **Request shapes**: form or JSON bodies (WHOOP's partner API posts JSON), the `refresh_token`
//!   and `client_credentials` grants, client authentication by HTTP Basic (Kroger, oslo) or in the
//!   body (WHOOP).
//!
//! Tests can also inject faults, add latency, drive expiry with a
//! [`ManualClock`](crate::ManualClock) and read counters ([`ProviderStats`]). Not reproduced: the
//! authorization-code flow ([`MockProvider::issue_tokens`] stands in for it), refresh-token expiry,
//! Withings' grace period for the previous refresh token. The mock's routes are mounted at priority
//! 10, so a [`Mock`] a test mounts on [`MockProvider::server`] at the default priority wins.
//!
//! ```
//! use reqwest_token_refresh::testkit::MockProvider;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), reqwest::Error> {
//! let provider = MockProvider::start().await;
//! let tokens = provider.issue_tokens();
//! let client = reqwest::Client::new();
//! let call = || client.get(provider.api_url("v1/sleep")).bearer_auth(tokens.access_token().secret());
//! assert_eq!(call().send().await?.status(), 200);
//!
//! // As if an hour passed: the API rejects the access token, the refresh token gets a new one.
//! provider.expire_access_tokens();
//! assert_eq!(call().send().await?.status(), 401);
//! let refresh_token = tokens.refresh_token().expect("issued with one").secret();
//! let response = client
//!     .post(provider.token_url())
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body(format!("grant_type=refresh_token&refresh_token={refresh_token}"))
//!     .send()
//!     .await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(provider.stats().tokens_issued, 1);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::{ClientSecret, Clock, TokenSet};

const TOKEN_PATH: &str = "/oauth/token";
/// Lower than wiremock's default (5), so that mocks a test mounts itself win.
const MOUNT_PRIORITY: u8 = 10;

/// Numbers providers within a process: wiremock reuses ports from a pool, so the port alone would
/// let a later provider mint the same token strings as an earlier one.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Counters of what a [`MockProvider`] saw and answered; a snapshot from [`MockProvider::stats`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProviderStats {
    /// Every POST to the token endpoint, those answered with an injected [`Fault`] included.
    pub token_calls: u64,
    /// Successful grants by the token endpoint ([`MockProvider::issue_tokens`] does not count).
    pub tokens_issued: u64,
    /// `400 invalid_grant` answers, injected ones included.
    pub invalid_grants: u64,
    /// Times a spent (already rotated) refresh token was presented.
    pub reuse_detected: u64,
    /// Token families revoked, by reuse detection or [`MockProvider::revoke_all`].
    pub families_revoked: u64,
    /// Every request to the API.
    pub api_calls: u64,
    /// API requests answered `200`.
    pub api_ok: u64,
    /// API requests answered `401`.
    pub api_unauthorized: u64,
}

/// An answer the token endpoint gives instead of handling a call; see
/// [`MockProvider::fail_next_token_calls`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status with the body `{"error":"server_error"}`.
    Status(u16),
    /// `429` with `Retry-After` in whole seconds, rounded up, and `{"error":"rate_limited"}`.
    RateLimited {
        /// How long the client is asked to wait.
        retry_after: Duration,
    },
    /// `400 {"error":"invalid_grant",...}`, whatever the request was.
    InvalidGrant,
    /// An arbitrary raw answer, for malformed-response tests; an empty `content_type` sends no
    /// `Content-Type` header.
    Body {
        /// The status code.
        status: u16,
        /// The `Content-Type` header.
        content_type: String,
        /// The body, sent as is.
        body: Vec<u8>,
    },
}

/// Configures and starts a [`MockProvider`]; from [`MockProvider::builder`].
#[derive(Debug, Clone)]
pub struct MockProviderBuilder {
    config: Config,
    token_latency: Duration,
    api_latency: Duration,
}

impl Default for MockProviderBuilder {
    fn default() -> Self {
        let config = Config {
            token_prefix: String::new(),
            access_token_lifetime: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            reuse_revokes_family: true,
            clock: crate::clock::system(),
            client: None,
        };
        Self { config, token_latency: Duration::ZERO, api_latency: Duration::ZERO }
    }
}

impl MockProviderBuilder {
    /// How long access tokens live (default one hour); sent as `expires_in` in whole seconds,
    /// rounded down, so a client never believes a token lives longer than it does.
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.access_token_lifetime = lifetime;
        self
    }

    /// Whether refreshes rotate the refresh token (default `true`): return a new one and spend the
    /// one presented. When not, responses carry no `refresh_token` and the client keeps using the
    /// one it has (RFC 6749 §6), which stays valid.
    pub fn rotate_refresh_tokens(mut self, yes: bool) -> Self {
        self.config.rotate_refresh_tokens = yes;
        self
    }

    /// Whether presenting a spent refresh token revokes its whole family (default `true`,
    /// RFC 9700 §4.14.2): every access and refresh token descended from that authorization.
    /// Either way the spent token itself gets `400 invalid_grant`.
    pub fn reuse_revokes_family(mut self, yes: bool) -> Self {
        self.config.reuse_revokes_family = yes;
        self
    }

    /// Delay of every answer of the token endpoint (default none).
    pub fn token_latency(mut self, latency: Duration) -> Self {
        self.token_latency = latency;
        self
    }

    /// Delay of every answer of the API (default none).
    pub fn api_latency(mut self, latency: Duration) -> Self {
        self.api_latency = latency;
        self
    }

    /// The clock that decides access-token expiry (default the system clock); pass a clone of a
    /// [`ManualClock`](crate::ManualClock) to expire tokens without sleeping.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config.clock = Arc::new(clock);
        self
    }

    /// Requires client authentication at the token endpoint (default none): HTTP Basic
    /// (RFC 6749 §2.3.1: base64 of the form-urlencoded id, `:`, the form-urlencoded secret) or
    /// `client_id` and `client_secret` body parameters, not both. Wrong or missing credentials get
    /// `401 {"error":"invalid_client"}` with `WWW-Authenticate: Basic realm="mock"`.
    pub fn client_credentials(mut self, id: &str, secret: &str) -> Self {
        self.config.client = Some((id.to_owned(), ClientSecret::new(secret)));
        self
    }

    /// Starts the server on a free port of `127.0.0.1`.
    pub async fn start(self) -> MockProvider {
        let server = MockServer::start().await;
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let mut config = self.config;
        config.token_prefix = format!("{}.{instance}", server.address().port());
        let shared = Arc::new(Shared { config, state: Mutex::new(State::default()) });
        let token_endpoint = Endpoint { shared: Arc::clone(&shared), latency: self.token_latency };
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(TokenEndpoint(token_endpoint))
            .with_priority(MOUNT_PRIORITY)
            .named("mock provider: token endpoint")
            .mount(&server)
            .await;
        let api = Endpoint { shared: Arc::clone(&shared), latency: self.api_latency };
        Mock::given(path_regex("^/api/"))
            .respond_with(ApiEndpoint(api))
            .with_priority(MOUNT_PRIORITY)
            .named("mock provider: protected API")
            .mount(&server)
            .await;
        MockProvider { server, shared }
    }
}

/// A mock rotating OAuth 2.0 provider and protected API on `127.0.0.1`; see the
/// [module documentation](self). The server stops when this is dropped.
pub struct MockProvider {
    server: MockServer,
    shared: Arc<Shared>,
}

impl fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No tokens; the client secret in the configuration is a redacting `ClientSecret`.
        f.debug_struct("MockProvider")
            .field("uri", &self.uri())
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl MockProvider {
    /// A builder, to configure the provider before starting it.
    pub fn builder() -> MockProviderBuilder {
        MockProviderBuilder::default()
    }

    /// Starts a provider with the defaults: one-hour access tokens, rotation, reuse revokes the
    /// family, no latency, the system clock, no client authentication.
    pub async fn start() -> MockProvider {
        Self::builder().start().await
    }

    /// The server's base URI, `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The token endpoint, `{uri}/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.uri())
    }

    /// The URL of `path` on the protected API, `{uri}/api/{path}` (a leading `/` is dropped).
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api/{}", self.uri(), path.trim_start_matches('/'))
    }

    /// The underlying server, to mount more mocks or read `received_requests()`.
    pub fn server(&self) -> &MockServer {
        &self.server
    }

    /// Tokens as if a user just authorized: a new token family, an access token expiring one
    /// lifetime after the provider clock's now, and a refresh token.
    pub fn issue_tokens(&self) -> TokenSet {
        self.issue(false)
    }

    /// Like [`issue_tokens`](Self::issue_tokens), but the access token has already expired, for
    /// the API and by [`TokenSet::expires_at`]; the refresh token is valid.
    pub fn issue_expired_tokens(&self) -> TokenSet {
        self.issue(true)
    }

    fn issue(&self, expired: bool) -> TokenSet {
        let now = self.shared.config.clock.now();
        let minted = {
            let mut state = self.shared.state.lock();
            let family = state.new_family(None);
            state.mint(&self.shared.config, family, now, true, expired)
        };
        let mut tokens = TokenSet::new(minted.access).with_token_type("Bearer");
        if let Some(refresh) = minted.refresh {
            tokens = tokens.with_refresh_token(refresh);
        }
        if let Some(expires_at) = minted.expires_at {
            tokens = tokens.with_expires_at(expires_at);
        }
        tokens
    }

    /// Makes the API reject every access token issued so far, as if their lifetime had passed.
    /// Refresh tokens are unaffected; tokens issued afterwards are valid.
    pub fn expire_access_tokens(&self) {
        for record in self.shared.state.lock().access.values_mut() {
            record.expired = true;
        }
    }

    /// Revokes every token family issued so far, as if each user withdrew consent: refresh tokens
    /// get `400 invalid_grant`, access tokens `401`.
    pub fn revoke_all(&self) {
        let mut state = self.shared.state.lock();
        for family in 0..state.families.len() {
            state.revoke(family);
        }
    }

    /// Answers the next `n` token calls with `fault` instead of handling them; they still count
    /// as token calls. Faults queue up behind earlier ones; later calls are handled normally.
    ///
    /// # Panics
    ///
    /// If the status is not an HTTP status code or the content type not a header value (checked
    /// here, because a panic inside the server would hang the test instead).
    pub fn fail_next_token_calls(&self, n: usize, fault: Fault) {
        if let Fault::Status(status) | Fault::Body { status, .. } = &fault {
            assert!(StatusCode::from_u16(*status).is_ok(), "{status} is not an HTTP status");
        }
        if let Fault::Body { content_type, .. } = &fault {
            assert!(HeaderValue::from_str(content_type).is_ok(), "bad content type {content_type:?}");
        }
        let mut state = self.shared.state.lock();
        state.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProviderStats {
        self.shared.state.lock().stats
    }
}

/// What the responders share. The state is locked only for short synchronous decisions (the
/// responders are synchronous, so never across an await).
struct Shared {
    config: Config,
    state: Mutex<State>,
}

#[derive(Debug, Clone)]
struct Config {
    token_prefix: String,
    access_token_lifetime: Duration,
    rotate_refresh_tokens: bool,
    reuse_revokes_family: bool,
    clock: Arc<dyn Clock>,
    client: Option<(String, ClientSecret)>,
}

#[derive(Default)]
struct State {
    stats: ProviderStats,
    /// Indexed by family number; a family is everything descended from one authorization.
    families: Vec<Family>,
    access: HashMap<String, AccessRecord>,
    refresh: HashMap<String, RefreshRecord>,
    faults: VecDeque<Fault>,
    serial: u64,
}

struct Family {
    revoked: bool,
    scope: Option<String>,
}

struct AccessRecord {
    family: usize,
    /// `None` when the lifetime overflows `SystemTime`: never expires by the clock.
    expires_at: Option<SystemTime>,
    /// Set by `expire_access_tokens` and `issue_expired_tokens`.
    expired: bool,
}

#[derive(Clone, Copy)]
struct RefreshRecord {
    family: usize,
    spent: bool,
}

struct Minted {
    access: String,
    refresh: Option<String>,
    expires_at: Option<SystemTime>,
}

impl State {
    fn new_family(&mut self, scope: Option<String>) -> usize {
        self.families.push(Family { revoked: false, scope });
        self.families.len() - 1
    }

    fn mint(&mut self, config: &Config, family: usize, now: SystemTime, refresh: bool, expired: bool) -> Minted {
        self.serial += 1;
        // Visible ASCII without spaces only: valid as an RFC 6750 §2.1 b64token.
        let name = format!("{}-{family}-{}", config.token_prefix, self.serial);
        let expires_at = if expired {
            Some(now.checked_sub(Duration::from_secs(1)).unwrap_or(now))
        } else {
            now.checked_add(config.access_token_lifetime)
        };
        let access = format!("at-{name}");
        let record = AccessRecord { family, expires_at, expired };
        self.access.insert(access.clone(), record);
        let refresh = refresh.then(|| {
            let refresh = format!("rt-{name}");
            self.refresh.insert(refresh.clone(), RefreshRecord { family, spent: false });
            refresh
        });
        Minted { access, refresh, expires_at }
    }

    fn revoke(&mut self, family: usize) {
        if let Some(family) = self.families.get_mut(family).filter(|f| !f.revoked) {
            family.revoked = true;
            self.stats.families_revoked += 1;
        }
    }

    fn family_revoked(&self, family: usize) -> bool {
        self.families.get(family).is_none_or(|f| f.revoked)
    }

    fn invalid_grant(&mut self, description: &'static str) -> Reply {
        self.stats.invalid_grants += 1;
        Reply::Error(OAuthError::new(400, "invalid_grant", description))
    }

    /// Why the API rejects `token`, if it does.
    fn check_access(&self, token: &str, now: SystemTime) -> Result<(), &'static str> {
        let Some(record) = self.access.get(token) else {
            return Err("The access token is unknown");
        };
        if self.family_revoked(record.family) {
            return Err("The access token was revoked");
        }
        if record.expired || record.expires_at.is_some_and(|at| now >= at) {
            return Err("The access token is invalid or has expired");
        }
        Ok(())
    }
}

/// An OAuth 2.0 error response (RFC 6749 §5.2).
struct OAuthError {
    status: u16,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: u16, code: &'static str, description: impl Into<String>) -> Self {
        Self { status, code, description: description.into() }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", description)
    }
}

/// What the token endpoint decided; made into a response after the lock is released.
enum Reply {
    Tokens(Value),
    Error(OAuthError),
    Fault(Fault),
}

/// Never panics: wiremock would, on a bad status or header, and a panicking responder hangs the
/// test. Statuses and content types of faults were checked when injected; this falls back anyway.
fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Reply {
    fn into_template(self) -> ResponseTemplate {
        let json = |code: u16, body: Value| {
            // RFC 6749 §5.1: token endpoint answers must not be cached.
            ResponseTemplate::new(status_code(code))
                .insert_header(header::CACHE_CONTROL, "no-store")
                .set_body_json(body)
        };
        match self {
            Reply::Tokens(body) => json(200, body),
            Reply::Error(OAuthError { status, code, description }) => {
                let template = json(status, json!({"error": code, "error_description": description}));
                if code == "invalid_client" {
                    template.insert_header(header::WWW_AUTHENTICATE, "Basic realm=\"mock\"")
                } else {
                    template
                }
            }
            Reply::Fault(Fault::Status(code)) => json(code, json!({"error": "server_error"})),
            Reply::Fault(Fault::RateLimited { retry_after }) => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                json(429, json!({"error": "rate_limited"}))
                    .insert_header(header::RETRY_AFTER, seconds.to_string().as_str())
            }
            Reply::Fault(Fault::InvalidGrant) => {
                let description = "injected fault: the refresh token is invalid";
                Reply::Error(OAuthError::new(400, "invalid_grant", description)).into_template()
            }
            Reply::Fault(Fault::Body { status: code, mut content_type, body }) => {
                if HeaderValue::from_str(&content_type).is_err() {
                    content_type.clear();
                }
                ResponseTemplate::new(status_code(code)).set_body_raw(body, &content_type)
            }
        }
    }
}

/// A responder's shared state and the delay of its answers.
struct Endpoint {
    shared: Arc<Shared>,
    latency: Duration,
}

/// The token endpoint, `POST /oauth/token`.
struct TokenEndpoint(Endpoint);

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.shared.token_call(request).into_template().set_delay(self.0.latency)
    }
}

impl Shared {
    fn token_call(&self, request: &Request) -> Reply {
        // What needs no state is decided before taking the lock.
        let params = token_params(request);
        let client = match &params {
            Ok(params) => self.authenticate_client(&request.headers, params),
            Err(_) => Ok(()),
        };
        let now = self.config.clock.now();

        let mut state = self.state.lock();
        state.stats.token_calls += 1;
        if let Some(fault) = state.faults.pop_front() {
            if matches!(fault, Fault::InvalidGrant) {
                state.stats.invalid_grants += 1;
            }
            return Reply::Fault(fault);
        }
        let params = match (params, client) {
            (Ok(params), Ok(())) => params,
            (Err(error), _) | (_, Err(error)) => return Reply::Error(error),
        };
        match params.get("grant_type").map(String::as_str) {
            Some("refresh_token") => self.refresh_grant(&mut state, &params, now),
            Some("client_credentials") => {
                let scope = params.get("scope").cloned();
                let family = state.new_family(scope.clone());
                let minted = state.mint(&self.config, family, now, false, false);
                state.stats.tokens_issued += 1;
                Reply::Tokens(self.token_body(minted, scope))
            }
            Some(_) => Reply::Error(OAuthError::new(
                400,
                "unsupported_grant_type",
                "only refresh_token and client_credentials are supported",
            )),
            None => Reply::Error(OAuthError::invalid_request("grant_type is missing")),
        }
    }

    fn refresh_grant(&self, state: &mut State, params: &HashMap<String, String>, now: SystemTime) -> Reply {
        let Some(presented) = params.get("refresh_token") else {
            return Reply::Error(OAuthError::invalid_request("refresh_token is missing"));
        };
        let Some(&RefreshRecord { family, spent }) = state.refresh.get(presented) else {
            return state.invalid_grant("The refresh token is unknown");
        };
        if spent {
            // RFC 9700 §4.14.2: a spent token presented again means it leaked or the client raced
            // itself; the provider cannot tell which, so the whole family goes.
            state.stats.reuse_detected += 1;
            if self.config.reuse_revokes_family {
                state.revoke(family);
            }
            return state.invalid_grant("The refresh token was already used");
        }
        if state.family_revoked(family) {
            return state.invalid_grant("The refresh token was revoked");
        }
        let rotate = self.config.rotate_refresh_tokens;
        if let Some(record) = state.refresh.get_mut(presented).filter(|_| rotate) {
            record.spent = true;
        }
        let granted = state.families.get(family).and_then(|f| f.scope.clone());
        let minted = state.mint(&self.config, family, now, rotate, false);
        state.stats.tokens_issued += 1;
        Reply::Tokens(self.token_body(minted, params.get("scope").cloned().or(granted)))
    }

    fn token_body(&self, minted: Minted, scope: Option<String>) -> Value {
        let mut body = json!({
            "access_token": minted.access,
            "token_type": "Bearer",
            "expires_in": self.config.access_token_lifetime.as_secs(),
        });
        if let Some(refresh) = minted.refresh {
            body["refresh_token"] = Value::String(refresh);
        }
        if let Some(scope) = scope {
            body["scope"] = Value::String(scope);
        }
        body
    }

    fn authenticate_client(&self, headers: &HeaderMap, params: &HashMap<String, String>) -> Result<(), OAuthError> {
        let invalid_client = |description| OAuthError::new(401, "invalid_client", description);
        let Some((expected_id, expected_secret)) = &self.config.client else {
            return Ok(());
        };
        let (id, secret) = match basic_credentials(headers).map_err(invalid_client)? {
            Some(_) if params.contains_key("client_secret") => {
                let description = "HTTP Basic and client_secret: RFC 6749 §2.3 allows one method";
                return Err(OAuthError::invalid_request(description));
            }
            Some(basic) => basic,
            None => match (params.get("client_id"), params.get("client_secret")) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                _ => return Err(invalid_client("client authentication is required")),
            },
        };
        if id == *expected_id && secret == expected_secret.secret() {
            Ok(())
        } else {
            Err(invalid_client("unknown client or wrong client secret"))
        }
    }
}

/// The token request's parameters, from a form or a JSON body; none may repeat (RFC 6749 §3.2).
fn token_params(request: &Request) -> Result<HashMap<String, String>, OAuthError> {
    let content_type = request.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media_type = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let pairs: Vec<(String, String)> = match media_type.as_str() {
        "application/x-www-form-urlencoded" => form_urlencoded::parse(&request.body).into_owned().collect(),
        "application/json" => {
            let Ok(Value::Object(object)) = serde_json::from_slice(&request.body) else {
                return Err(OAuthError::invalid_request("the body is not a JSON object"));
            };
            let mut pairs = Vec::with_capacity(object.len());
            for (name, value) in object {
                match value {
                    Value::String(value) => pairs.push((name, value)),
                    // `"scope": null` from a serialised `Option` is the same as leaving it out.
                    Value::Null => {}
                    _ => {
                        return Err(OAuthError::invalid_request(format!("{name} is not a string")));
                    }
                }
            }
            pairs
        }
        other => {
            return Err(OAuthError::invalid_request(format!("unsupported Content-Type {other:?}")));
        }
    };
    let mut params = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if params.contains_key(&name) {
            return Err(OAuthError::invalid_request(format!("parameter {name} is repeated")));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// HTTP Basic client credentials, decoded per RFC 6749 §2.3.1; `None` without an
/// `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, &'static str> {
    const MALFORMED: &str = "malformed HTTP Basic credentials";
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let (scheme, encoded) = value.to_str().map_err(|_| MALFORMED)?.split_once(' ').unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = BASE64.decode(encoded.trim()).ok().and_then(|d| String::from_utf8(d).ok());
    let (id, secret) = decoded.as_deref().and_then(|d| d.split_once(':')).ok_or(MALFORMED)?;
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) => Ok(Some((id, secret))),
        _ => Err(MALFORMED),
    }
}

/// Decodes one form-urlencoded component (`+` is a space, `%XX` a byte); `None` if the result is
/// not UTF-8. A `%` without two hex digits after it is kept, as browsers do.
fn form_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match (byte, hex(i + 1), hex(i + 2)) {
            (b'+', ..) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.extend(u8::try_from(high * 16 + low).ok());
                i += 2;
            }
            _ => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The protected API, any method under `/api/`.
struct ApiEndpoint(Endpoint);

impl Respond for ApiEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        // RFC 6750 §3.1: no header, or another scheme, means no credentials at all.
        let bearer = request.headers.get(header::AUTHORIZATION).and_then(|value| match value.to_str() {
            // Not visible ASCII: credentials, garbled ones, so they get invalid_token.
            Err(_) => Some(String::new()),
            Ok(value) => {
                let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
            }
        });
        let now = self.0.shared.config.clock.now();
        let verdict = {
            let mut state = self.0.shared.state.lock();
            state.stats.api_calls += 1;
            let verdict = match &bearer {
                None => Err(None),
                Some(token) => state.check_access(token, now).map_err(Some),
            };
            match verdict {
                Ok(()) => state.stats.api_ok += 1,
                Err(_) => state.stats.api_unauthorized += 1,
            }
            verdict
        };
        let template = match verdict {
            Ok(()) => ResponseTemplate::new(200).set_body_json(json!({"ok": true})),
            Err(None) => ResponseTemplate::new(401).insert_header(header::WWW_AUTHENTICATE, "Bearer realm=\"mock\""),
            Err(Some(description)) => {
                // The descriptions are fixed strings without quotes: safe inside the header.
                let challenge =
                    format!("Bearer realm=\"mock\", error=\"invalid_token\", error_description=\"{description}\"");
                ResponseTemplate::new(401)
                    .insert_header(header::WWW_AUTHENTICATE, challenge.as_str())
                    .set_body_json(json!({"error": "invalid_token", "error_description": description}))
            }
        };
        template.set_delay(self.0.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    const FORM: &str = "application/x-www-form-urlencoded";
    const JSON: &str = "application/json; charset=utf-8";

    /// A response, read whole.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: http::HeaderMap,
        json: Value,
    }

    impl Answer {
        async fn read(response: reqwest::Result<reqwest::Response>) -> Answer {
            let response = response.expect("the mock answers");
            let (status, headers) = (response.status().as_u16(), response.headers().clone());
            let body = response.bytes().await.expect("a body");
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Answer { status, headers, json }
        }

        fn header(&self, name: &str) -> &str {
            let value = self.headers.get(name).map(HeaderValue::to_str);
            value.and_then(Result::ok).unwrap_or_default()
        }

        /// A string field of the JSON body, `""` when there is none.
        fn field(&self, name: &str) -> &str {
            self.json[name].as_str().unwrap_or_default()
        }

        fn error(&self) -> (u16, &str) {
            (self.status, self.field("error"))
        }
    }

    impl MockProvider {
        async fn post(&self, content_type: &str, body: &str, basic: Option<&str>) -> Answer {
            let request = reqwest::Client::new().post(self.token_url());
            let mut request = request.header("content-type", content_type).body(body.to_owned());
            if let Some(basic) = basic {
                request = request.header("authorization", basic);
            }
            Answer::read(request.send().await).await
        }

        async fn refresh(&self, refresh_token: &str) -> Answer {
            let body = format!("grant_type=refresh_token&refresh_token={refresh_token}");
            self.post(FORM, &body, None).await
        }

        async fn api(&self, access_token: &str) -> Answer {
            let request = reqwest::Client::new().get(self.api_url("/v1/sleep"));
            Answer::read(request.bearer_auth(access_token).send().await).await
        }
    }

    fn access(tokens: &TokenSet) -> &str {
        tokens.access_token().secret()
    }

    fn refresh(tokens: &TokenSet) -> &str {
        tokens.refresh_token().map_or("", |r| r.secret())
    }

    #[tokio::test]
    async fn a_refresh_rotates_the_refresh_token_and_the_old_one_is_then_rejected() {
        let builder = MockProvider::builder().reuse_revokes_family(false);
        let provider = builder.start().await;
        let tokens = provider.issue_tokens();
        let answer = provider.refresh(refresh(&tokens)).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("cache-control"), "no-store");
        assert_eq!(answer.field("token_type"), "Bearer");
        assert_eq!(answer.json["expires_in"], 3600);
        let new = answer.field("refresh_token");
        assert!(!new.is_empty() && new != refresh(&tokens), "{answer:?}");
        assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

        let replay = provider.refresh(refresh(&tokens)).await;
        assert_eq!(replay.error(), (400, "invalid_grant"));
        // Without family revocation the new refresh token survives the replay.
        assert_eq!(provider.refresh(new).await.status, 200);
    }

    #[tokio::test]
    async fn reusing_a_spent_refresh_token_revokes_the_whole_family() {
        let provider = MockProvider::start().await;
        let (tokens, bystander) = (provider.issue_tokens(), provider.issue_tokens());
        let fresh = provider.refresh(refresh(&tokens)).await;

        assert_eq!(provider.refresh(refresh(&tokens)).await.status, 400);
        let rejected = provider.api(fresh.field("access_token")).await;
        assert_eq!(rejected.error(), (401, "invalid_token"));
        let challenge = rejected.header("www-authenticate");
        assert!(challenge.starts_with(r#"Bearer realm="mock", error="invalid_token", "#));
        assert_eq!(provider.api(access(&tokens)).await.status, 401);
        let refreshed = provider.refresh(fresh.field("refresh_token")).await;
        assert_eq!(refreshed.error(), (400, "invalid_grant"));
        // Another authorization is another family: untouched.
        assert_eq!(provider.api(access(&bystander)).await.status, 200);
        let stats = provider.stats();
        assert_eq!((stats.reuse_detected, stats.families_revoked), (1, 1));
    }

    #[tokio::test]
    async fn without_rotation_no_refresh_token_is_returned_and_the_old_one_keeps_working() {
        let builder = MockProvider::builder().rotate_refresh_tokens(false);
        let provider = builder.start().await;
        let tokens = provider.issue_tokens();
        for _ in 0..3 {
            let answer = provider.refresh(refresh(&tokens)).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            assert!(answer.json.get("refresh_token").is_none(), "{answer:?}");
            assert_eq!(provider.api(answer.field("access_token")).await.status, 200);
        }
        assert_eq!(provider.stats().reuse_detected, 0);
    }

    #[tokio::test]
    async fn access_token_expiry_follows_the_providers_manual_clock() {
        let clock = ManualClock::starting_now();
        let lifetime = Duration::from_secs(60);
        let builder = MockProvider::builder().access_token_lifetime(lifetime);
        let provider = builder.clock(clock.clone()).start().await;
        let tokens = provider.issue_tokens();
        assert_eq!(tokens.expires_at(), Some(clock.now() + lifetime));

        clock.advance(Duration::from_secs(59));
        assert_eq!(provider.api(access(&tokens)).await.status, 200);
        clock.advance(Duration::from_secs(1));
        let expired = provider.api(access(&tokens)).await;
        assert_eq!(expired.error(), (401, "invalid_token"));
        assert!(expired.field("error_description").contains("expired"));

        let answer = provider.refresh(refresh(&tokens)).await;
        assert_eq!((answer.status, answer.json["expires_in"].as_u64()), (200, Some(60)));
        assert_eq!(provider.api(answer.field("access_token")).await.status, 200);
    }

    #[tokio::test]
    async fn expired_and_revoked_tokens_are_rejected_as_the_test_asked() {
        let provider = MockProvider::start().await;
        let expired = provider.issue_expired_tokens();
        assert!(expired.expires_at().is_some_and(|at| at < SystemTime::now()));
        assert_eq!(provider.api(access(&expired)).await.status, 401);
        let renewed = provider.refresh(refresh(&expired)).await;
        assert_eq!(renewed.status, 200);

        provider.expire_access_tokens();
        assert_eq!(provider.api(renewed.field("access_token")).await.status, 401);
        // Refresh tokens are left alone, and tokens issued afterwards are valid.
        let renewed = provider.refresh(renewed.field("refresh_token")).await;
        assert_eq!(provider.api(renewed.field("access_token")).await.status, 200);

        let other = provider.issue_tokens();
        provider.revoke_all();
        assert_eq!(provider.api(access(&other)).await.status, 401);
        assert_eq!(provider.refresh(refresh(&other)).await.status, 400);
        let refreshed = provider.refresh(renewed.field("refresh_token")).await;
        assert_eq!(refreshed.error(), (400, "invalid_grant"));
        assert_eq!(provider.stats().families_revoked, 2);
    }

    #[tokio::test]
    async fn injected_faults_come_first_in_order_then_normal_handling_resumes() {
        let provider = MockProvider::start().await;
        let tokens = provider.issue_tokens();
        let retry_after = Duration::from_millis(1500);
        provider.fail_next_token_calls(2, Fault::RateLimited { retry_after });
        provider.fail_next_token_calls(1, Fault::Status(503));
        provider.fail_next_token_calls(1, Fault::InvalidGrant);
        let (content_type, body) = ("text/html".to_owned(), b"<html>".to_vec());
        provider.fail_next_token_calls(1, Fault::Body { status: 200, content_type, body });

        for _ in 0..2 {
            let limited = provider.refresh(refresh(&tokens)).await;
            assert_eq!(limited.error(), (429, "rate_limited"));
            assert_eq!(limited.header("retry-after"), "2", "1.5 s rounds up");
        }
        let failed = provider.refresh(refresh(&tokens)).await;
        assert_eq!(failed.error(), (503, "server_error"));
        let failed = provider.refresh(refresh(&tokens)).await;
        assert_eq!(failed.error(), (400, "invalid_grant"));
        let html = provider.refresh(refresh(&tokens)).await;
        assert_eq!((html.status, html.header("content-type")), (200, "text/html"));
        assert_eq!(html.json, Value::Null);

        // The refresh token was never really used, so it still works.
        assert_eq!(provider.refresh(refresh(&tokens)).await.status, 200);
        let stats = provider.stats();
        let counts = (stats.token_calls, stats.tokens_issued, stats.invalid_grants);
        assert_eq!(counts, (6, 1, 1));
    }

    #[tokio::test]
    async fn client_credentials_are_accepted_as_http_basic_with_urlencoded_parts() {
        let builder = MockProvider::builder().client_credentials("my client", "s3cr&t:é");
        let provider = builder.start().await;
        let tokens = provider.issue_tokens();
        let form = format!("grant_type=refresh_token&refresh_token={}", refresh(&tokens));
        // RFC 6749 §2.3.1: each part is form-urlencoded, then joined and base64-encoded.
        let basic = |user_pass: &str| format!("Basic {}", BASE64.encode(user_pass));

        let wrong = provider.post(FORM, &form, Some(&basic("my+client:guess"))).await;
        assert_eq!(wrong.error(), (401, "invalid_client"));
        assert_eq!(wrong.header("www-authenticate"), r#"Basic realm="mock""#);
        let missing = provider.post(FORM, &form, None).await;
        assert_eq!(missing.error(), (401, "invalid_client"));
        let garbled = provider.post(FORM, &form, Some("Basic %%%")).await;
        assert_eq!(garbled.error(), (401, "invalid_client"));

        let right = basic("my+client:s3cr%26t%3A%C3%A9");
        let answer = provider.post(FORM, &form, Some(&right)).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(provider.stats().tokens_issued, 1);
    }

    #[tokio::test]
    async fn client_credentials_are_accepted_in_form_and_json_bodies() {
        let builder = MockProvider::builder().client_credentials("partner", "pw");
        let provider = builder.start().await;
        let tokens = provider.issue_tokens();
        let form = format!(
            "grant_type=refresh_token&refresh_token={}&client_id=partner&client_secret=pw&scope=offline",
            refresh(&tokens)
        );
        let answer = provider.post(FORM, &form, None).await;
        assert_eq!((answer.status, answer.field("scope")), (200, "offline"));

        // WHOOP's partner API: the client-credentials grant as JSON; no refresh token comes back.
        let body = json!({"grant_type": "client_credentials", "client_id": "partner",
            "client_secret": "pw", "scope": "whoop-partner/token"});
        let answer = provider.post(JSON, &body.to_string(), None).await;
        assert_eq!(answer.field("scope"), "whoop-partner/token", "{answer:?}");
        assert!(answer.json.get("refresh_token").is_none(), "{answer:?}");
        assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

        let body = json!({"grant_type": "client_credentials", "client_id": "partner",
            "client_secret": "no"});
        let answer = provider.post(JSON, &body.to_string(), None).await;
        assert_eq!(answer.error(), (401, "invalid_client"));
    }

    #[tokio::test]
    async fn stats_count_every_kind_of_call_and_no_credentials_get_a_bare_challenge() {
        let provider = MockProvider::start().await;
        let tokens = provider.issue_tokens();
        let request = reqwest::Client::new().post(provider.api_url("x"));
        let anonymous = Answer::read(request.send().await).await;
        assert_eq!(anonymous.status, 401);
        assert_eq!(anonymous.header("www-authenticate"), r#"Bearer realm="mock""#);
        assert_eq!(provider.api(access(&tokens)).await.status, 200);
        assert_eq!(provider.api("at-never-issued").await.status, 401);
        provider.refresh(refresh(&tokens)).await;
        provider.refresh(refresh(&tokens)).await;
        provider.refresh("rt-never-issued").await;
        provider.post(FORM, "grant_type=password", None).await;

        let expected = ProviderStats {
            token_calls: 4,
            tokens_issued: 1,
            invalid_grants: 2,
            reuse_detected: 1,
            families_revoked: 1,
            api_calls: 3,
            api_ok: 1,
            api_unauthorized: 2,
        };
        assert_eq!(provider.stats(), expected);
    }

    #[tokio::test]
    async fn concurrent_refreshes_with_one_refresh_token_let_exactly_one_succeed() {
        let builder = MockProvider::builder().token_latency(Duration::from_millis(50));
        let provider = builder.start().await;
        let tokens = provider.issue_tokens();
        let refreshes = (0..8).map(|_| provider.refresh(refresh(&tokens)));
        let answers = futures::future::join_all(refreshes).await;

        let (winners, losers): (Vec<_>, Vec<_>) = answers.iter().partition(|a| a.status == 200);
        assert_eq!(winners.len(), 1, "{answers:?}");
        assert!(losers.iter().all(|a| a.error() == (400, "invalid_grant")));
        // The losers look like a replay, so even the winner's tokens are revoked: this is what a
        // client without a single flight does to its user.
        assert_eq!(provider.api(winners[0].field("access_token")).await.status, 401);
        let stats = provider.stats();
        assert_eq!((stats.reuse_detected, stats.families_revoked), (7, 1));
    }

    #[tokio::test]
    async fn malformed_requests_get_an_error_answer_not_a_panic() {
        let provider = MockProvider::start().await;
        let cases = [
            (FORM, "refresh_token=x", "invalid_request"),
            (FORM, "grant_type=authorization_code&code=x", "unsupported_grant_type"),
            (FORM, "grant_type=refresh_token", "invalid_request"),
            (FORM, "grant_type=refresh_token&grant_type=client_credentials", "invalid_request"),
            (FORM, "grant_type=refresh_token&refresh_token=%FF%FE", "invalid_grant"),
            (JSON, "{not json", "invalid_request"),
            (JSON, r#"{"grant_type": 7}"#, "invalid_request"),
            ("text/plain", "grant_type=refresh_token", "invalid_request"),
            ("", "grant_type=refresh_token", "invalid_request"),
        ];
        for (content_type, body, error) in cases {
            let answer = provider.post(content_type, body, None).await;
            assert_eq!(answer.error(), (400, error), "{content_type} {body}");
        }
        assert_eq!(provider.stats().token_calls, cases.len() as u64);
        // An empty bearer token is a 401 like any unknown one.
        assert_eq!(provider.api("").await.error(), (401, "invalid_token"));
    }

    #[tokio::test]
    async fn mocks_mounted_by_a_test_take_precedence_and_debug_hides_secrets() {
        let builder = MockProvider::builder().client_credentials("id", "hunter2");
        let provider = builder.clone().start().await;
        let tokens = provider.issue_tokens();
        assert_eq!(provider.token_url(), format!("{}/oauth/token", provider.uri()));
        assert!(provider.uri().starts_with("http://127.0.0.1:"));
        let teapot = Mock::given(method("POST")).and(path(TOKEN_PATH));
        let teapot = teapot.respond_with(ResponseTemplate::new(418));
        teapot.mount(provider.server()).await;
        assert_eq!(provider.refresh(refresh(&tokens)).await.status, 418);
        assert_eq!(provider.stats().token_calls, 0);
        let received = provider.server().received_requests().await;
        assert_eq!(received.map(|r| r.len()), Some(1));

        let shown = format!("{provider:?} {builder:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(access(&tokens)), "{shown}");
    }
}

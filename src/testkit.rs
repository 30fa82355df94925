//! A mock OAuth 2.0 provider for tests: [`MockProvider`].
//!
//! A real HTTP server on `127.0.0.1` (a [`wiremock::MockServer`]) with a token endpoint (at
//! `/oauth/token` by default) and a protected API under `/api/`, behaving like the providers this
//! crate was written against, so that a client which gets refreshing wrong fails here as in
//! production:
//!
//! * **Rotation**: each refresh returns a new refresh token and spends the one presented (Kroger,
//!   Withings); a spent refresh token gets `400 {"error":"invalid_grant"}`.
//! * **Reuse detection** (RFC 9700 §4.14.2): a provider that sees a spent refresh token again
//!   cannot tell the client from an attacker replaying a stolen token, so it revokes the whole
//!   family, every token descended from that authorization. Two requests that both get a 401 and
//!   both refresh with the same refresh token look exactly like that replay, which is why a client
//!   must refresh behind a single flight; the mock makes forgetting it fail loudly.
//! * **The API's 401**: `WWW-Authenticate: Bearer realm="mock", error="invalid_token", ...` and
//!   `{"error":"invalid_token","error_description":"..."}`; a request without credentials gets a
//!   bare challenge (RFC 6750 §3.1).
//! * **Request shapes**: form or JSON bodies, the `refresh_token` and `client_credentials` grants,
//!   client authentication by HTTP Basic (Kroger, oslo) or in the body (WHOOP).
//!
//! Tests can also inject faults (among them [`Fault::LoseAnswer`], tokens issued but the answer
//! lost), add latency, drive expiry with a [`ManualClock`](crate::ManualClock), read counters
//! ([`ProviderStats`]) and the token requests as sent ([`MockProvider::token_requests`]). Not
//! reproduced: the authorization-code flow ([`MockProvider::issue_tokens`] stands in for it),
//! refresh-token expiry. The mock's routes are mounted at priority 10, so a [`Mock`] a test mounts
//! on [`MockProvider::server`] at the default priority wins.
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
//!
//! # Dialects
//!
//! The above is [`Dialect::Standard`], the RFCs. Real providers each bend them their own way, and
//! a [`Dialect`] makes the mock bend them the same way, as the provider's own documentation
//! describes it (the project's seed documents):
//!
//! * [`Dialect::Whoop`]: the refresh grant as a form body with `client_id` and `client_secret` in
//!   it (HTTP Basic is refused); a new refresh token only when the request's `scope` has
//!   `offline`, the old one staying valid otherwise; `token_type` `bearer`; the API's 401 is bare,
//!   without challenge or body.
//! * [`Dialect::WhoopPartner`]: the client-credentials grant only, as a JSON body with
//!   `client_id`, `client_secret` and `scope`; `{access_token, token_type, expires_in}` and no
//!   refresh token; a bare 401.
//! * [`Dialect::Kroger`]: client credentials by HTTP Basic only; single-use refresh tokens, a spent
//!   one answered `400` with the plain text `Missing/Invalid Refresh Token`; the API's 401 has the
//!   JSON `invalid_token` body but no `WWW-Authenticate`.
//! * [`Dialect::Withings`]: the token endpoint at `/v2/oauth2`, with `action=requesttoken`; every
//!   answer `200` with the outcome in an envelope, `{"status":0,"body":{...}}` or
//!   `{"status":503,"body":{},"error":"Invalid Params: ..."}`; 3-hour access tokens; a rotated
//!   refresh token stays valid until the new access token is used, 8 hours at most
//!   ([`MockProviderBuilder::previous_refresh_token_grace`]); the API, too, answers `200`, with
//!   `{"status":401,...}` for a rejected access token.
//!
//! [`MockProvider::whoop`], [`whoop_partner`](MockProvider::whoop_partner),
//! [`kroger`](MockProvider::kroger) and [`withings`](MockProvider::withings) start one with the
//! client [`MOCK_CLIENT_ID`] and [`MOCK_CLIENT_SECRET`]. Token lifetimes, reuse detection, faults,
//! latency, the clock and the counters work the same in every dialect.

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

/// The client id that [`MockProvider::whoop`], [`MockProvider::whoop_partner`],
/// [`MockProvider::kroger`] and [`MockProvider::withings`] register.
pub const MOCK_CLIENT_ID: &str = "mock-client";
/// The client secret that goes with [`MOCK_CLIENT_ID`].
pub const MOCK_CLIENT_SECRET: &str = "mock-secret";

/// The token endpoint of [`Dialect::Standard`].
const TOKEN_PATH: &str = "/oauth/token";
/// Lower than wiremock's default (5), so that mocks a test mounts itself win.
const MOUNT_PRIORITY: u8 = 10;
/// The longest a rotated refresh token stays usable under
/// [`MockProviderBuilder::previous_refresh_token_grace`]; Withings: "Old refresh_token: Expires 8
/// hours after new issuance or once the new access_token is used".
const PREVIOUS_REFRESH_TOKEN_GRACE: Duration = Duration::from_secs(8 * 60 * 60);
/// How long [`Fault::LoseAnswer`] holds an answer back: far longer than any test waits.
const LOST_ANSWER_DELAY: Duration = Duration::from_secs(60 * 60);
/// Kroger's answer to a spent or unknown refresh token, as plain text.
const KROGER_INVALID_REFRESH_TOKEN: &str = "Missing/Invalid Refresh Token";
/// Withings' data API's answer to a rejected access token (with HTTP 200).
const WITHINGS_INVALID_TOKEN: &str = r#"{"status":401,"body":{},"error":"XRequestID: Not provided invalid_token: The access token provided is invalid"}"#;
/// Kroger's API 401 body, byte for byte as documented (fields in this order).
const KROGER_INVALID_TOKEN: &str =
    r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#;

/// Numbers providers within a process: wiremock reuses ports from a pool, so the port alone would
/// let a later provider mint the same token strings as an earlier one.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Which provider's habits a [`MockProvider`] reproduces; chosen with
/// [`MockProviderBuilder::dialect`] (default [`Standard`](Dialect::Standard)).
///
/// A dialect decides the token endpoint's path, which requests it accepts and how client
/// credentials are sent, the shape of its answers, and the API's 401. It follows what the provider
/// documents; where a document is silent (error answers, mostly), the mock answers as the RFCs do.
/// In every dialect but `Standard` the token endpoint insists on the provider's way of sending
/// client credentials, even when no credentials were configured (then any id and secret pass).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// RFC 6749 and RFC 6750: token endpoint `/oauth/token`; form or JSON bodies; the
    /// `refresh_token` and `client_credentials` grants; client credentials (when configured) by
    /// HTTP Basic or in the body; errors `{"error":...,"error_description":...}`; the API's 401
    /// with `WWW-Authenticate: Bearer realm="mock", error="invalid_token", ...` and a JSON body.
    #[default]
    Standard,
    /// WHOOP's user OAuth: token endpoint `/oauth/oauth2/token`; a form body with
    /// `grant_type=refresh_token`, `refresh_token`, and `client_id` and `client_secret` (HTTP Basic
    /// is refused with `401 invalid_client`). A new refresh token comes back only if the request's
    /// space-separated `scope` has `offline`; without it the answer has no `refresh_token` and the
    /// one presented stays valid. Answers `{access_token, refresh_token?, expires_in, scope,
    /// token_type: "bearer"}`; errors as in `Standard`. The API's 401 is bare: no
    /// `WWW-Authenticate`, an empty body.
    Whoop,
    /// WHOOP's Partner API: token endpoint `/developer/v2/partner/token`; only
    /// `grant_type=client_credentials`, as a JSON body (`application/json`; a form body gets
    /// `400`) with `client_id`, `client_secret` and `scope`. Answers `{access_token,
    /// token_type: "bearer", expires_in}`, no refresh token; wrong credentials get
    /// `401 {"error":"invalid_client"}`. The API's 401 is bare. [`MockProvider::issue_tokens`]
    /// gives an access token only, as this grant would.
    WhoopPartner,
    /// Kroger: token endpoint `/v1/connect/oauth2/token`; client credentials only by HTTP Basic
    /// (RFC 6749 §2.3.1; a `client_secret` in the body gets `401 invalid_client`); a form body
    /// with `grant_type=refresh_token&refresh_token=...`. Refresh tokens are single-use; a spent,
    /// unknown or missing one gets `400` with the `text/plain` body `Missing/Invalid Refresh
    /// Token` instead of OAuth JSON. Answers `{refresh_token, expires_in, access_token,
    /// token_type: "bearer"}`. The API's 401 is
    /// `{"error_description":"The access token is invalid or has expired","error":"invalid_token"}`
    /// without `WWW-Authenticate`.
    Kroger,
    /// Withings: token endpoint `/v2/oauth2`; a form body with `action=requesttoken`,
    /// `grant_type=refresh_token`, `refresh_token`, `client_id` and `client_secret`. Every answer
    /// is HTTP `200` with an envelope: `{"status":0,"body":{"userid",...,"access_token",
    /// "refresh_token","expires_in":10800,"scope":"user.metrics","csrf_token","token_type":
    /// "Bearer"}}`, or `{"status":503,"body":{},"error":"Invalid Params: ..."}` (503 is Withings'
    /// status for invalid parameters: `Invalid Params: invalid refresh_token` for a spent or unknown
    /// refresh token, `Invalid Params: action` without `action=requesttoken`). Access tokens last
    /// 3 hours; every refresh rotates, with
    /// [`previous_refresh_token_grace`](MockProviderBuilder::previous_refresh_token_grace) on. The
    /// API answers in the same envelope, always HTTP `200`: `{"status":0,"body":{}}`, or for a
    /// rejected access token `{"status":401,"body":{},"error":"XRequestID: Not provided
    /// invalid_token: The access token provided is invalid"}` (see
    /// [`providers::withings_token_rejected`](crate::providers::withings_token_rejected)).
    Withings,
}

impl Dialect {
    fn token_path(self) -> &'static str {
        match self {
            Dialect::Standard => TOKEN_PATH,
            Dialect::Whoop => "/oauth/oauth2/token",
            Dialect::WhoopPartner => "/developer/v2/partner/token",
            Dialect::Kroger => "/v1/connect/oauth2/token",
            Dialect::Withings => "/v2/oauth2",
        }
    }

    fn default_access_token_lifetime(self) -> Duration {
        match self {
            Dialect::Withings => Duration::from_secs(3 * 60 * 60),
            _ => Duration::from_secs(60 * 60),
        }
    }

    fn token_type(self) -> &'static str {
        match self {
            Dialect::Standard | Dialect::Withings => "Bearer",
            Dialect::Whoop | Dialect::WhoopPartner | Dialect::Kroger => "bearer",
        }
    }

    /// What [`MockProvider::issue_tokens`] grants: WHOOP issues refresh tokens only to `offline`.
    fn granted_scope(self) -> Option<&'static str> {
        match self {
            Dialect::Whoop => Some("offline"),
            Dialect::Withings => Some("user.metrics"),
            _ => None,
        }
    }

    fn grant_types(self) -> &'static [&'static str] {
        match self {
            Dialect::Standard => &["refresh_token", "client_credentials"],
            Dialect::WhoopPartner => &["client_credentials"],
            Dialect::Whoop | Dialect::Kroger | Dialect::Withings => &["refresh_token"],
        }
    }

    fn accepts_form(self) -> bool {
        self != Dialect::WhoopPartner
    }

    fn accepts_json(self) -> bool {
        matches!(self, Dialect::Standard | Dialect::WhoopPartner)
    }
}

/// Counters of what a [`MockProvider`] saw and answered; a snapshot from [`MockProvider::stats`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProviderStats {
    /// Every POST to the token endpoint, those answered with an injected [`Fault`] included.
    pub token_calls: u64,
    /// Successful grants by the token endpoint ([`MockProvider::issue_tokens`] does not count).
    pub tokens_issued: u64,
    /// Refresh tokens refused, injected refusals included: `400 invalid_grant` in most dialects,
    /// Kroger's plain-text `400`, Withings' `Invalid Params: invalid refresh_token`.
    pub invalid_grants: u64,
    /// Times a spent (already rotated) refresh token was presented.
    pub reuse_detected: u64,
    /// Token families revoked, by reuse detection or [`MockProvider::revoke_all`].
    pub families_revoked: u64,
    /// Refreshes granted to a rotated refresh token within its
    /// [grace](MockProviderBuilder::previous_refresh_token_grace) (counted in `tokens_issued` too).
    pub grace_refreshes: u64,
    /// Token calls handled with their answer held back by [`Fault::LoseAnswer`].
    pub answers_lost: u64,
    /// Every request to the API.
    pub api_calls: u64,
    /// API requests whose token was accepted (answered `200`).
    pub api_ok: u64,
    /// API requests whose token was rejected: answered `401`, or in [`Dialect::Withings`] `200`
    /// with `"status":401`.
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
    /// The dialect's refusal of a refresh token, whatever the request was: in the standard
    /// dialect `400 {"error":"invalid_grant",...}`.
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
    /// The call is handled normally, tokens issued and the refresh token rotated, but the answer
    /// never reaches the client: it is held back for an hour, as if the connection dropped after
    /// the provider committed. The client is left holding a refresh token the provider may already
    /// have spent, the case a grace period (Withings') or a careful client must survive.
    ///
    /// The client must give up on its own, so a test needs a short request timeout on its token
    /// client (a few hundred milliseconds); without one the test waits the full hour.
    LoseAnswer,
}

/// Configures and starts a [`MockProvider`]; from [`MockProvider::builder`].
#[derive(Debug, Clone)]
pub struct MockProviderBuilder {
    dialect: Dialect,
    /// `None`: the dialect's default.
    access_token_lifetime: Option<Duration>,
    rotate_refresh_tokens: bool,
    reuse_revokes_family: bool,
    /// `None`: the dialect's default.
    previous_refresh_token_grace: Option<bool>,
    clock: Arc<dyn Clock>,
    client: Option<(String, ClientSecret)>,
    token_latency: Duration,
    api_latency: Duration,
}

impl Default for MockProviderBuilder {
    fn default() -> Self {
        Self {
            dialect: Dialect::default(),
            access_token_lifetime: None,
            rotate_refresh_tokens: true,
            reuse_revokes_family: true,
            previous_refresh_token_grace: None,
            clock: crate::clock::system(),
            client: None,
            token_latency: Duration::ZERO,
            api_latency: Duration::ZERO,
        }
    }
}

impl MockProviderBuilder {
    /// Which provider to behave like (default [`Dialect::Standard`]); see [`Dialect`]. Settings
    /// made on this builder win over the dialect's defaults, in whichever order they are made.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// How long access tokens live (default one hour, three in [`Dialect::Withings`]); sent as
    /// `expires_in` in whole seconds, rounded down, so a client never believes a token lives longer
    /// than it does. A lifetime too long for the provider's clock to represent (`Duration::MAX`)
    /// makes tokens that never expire, sent without `expires_in`.
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.access_token_lifetime = Some(lifetime);
        self
    }

    /// Whether refreshes rotate the refresh token (default `true`): return a new one and spend the
    /// one presented. When not, responses carry no `refresh_token` and the client keeps using the
    /// one it has (RFC 6749 §6), which stays valid. [`Dialect::Whoop`] rotates only when the
    /// request asks for `scope=offline`, and never when this is off.
    pub fn rotate_refresh_tokens(mut self, yes: bool) -> Self {
        self.rotate_refresh_tokens = yes;
        self
    }

    /// Whether presenting a spent refresh token revokes its whole family (default `true`,
    /// RFC 9700 §4.14.2): every access and refresh token descended from that authorization.
    /// Either way the spent token itself is refused. None of the providers' documents mentions
    /// this; the mock does it in every dialect so that a racing client fails loudly.
    pub fn reuse_revokes_family(mut self, yes: bool) -> Self {
        self.reuse_revokes_family = yes;
        self
    }

    /// Whether a rotated refresh token stays usable for a while, as Withings documents (default
    /// off, on in [`Dialect::Withings`]): the previous refresh token stays valid until an access
    /// token issued in exchange for it is first accepted by the API, or for 8 hours on the
    /// provider's clock, whichever comes first. Presenting it within that grace issues a fresh
    /// pair again, without counting as reuse ([`ProviderStats::grace_refreshes`]); after it, it is
    /// a spent token like any other. This is what saves a client whose refresh answer was lost
    /// ([`Fault::LoseAnswer`]).
    pub fn previous_refresh_token_grace(mut self, yes: bool) -> Self {
        self.previous_refresh_token_grace = Some(yes);
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

    /// The clock that decides access-token expiry and the refresh-token grace (default the system
    /// clock); pass a clone of a [`ManualClock`](crate::ManualClock) to expire tokens without
    /// sleeping.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Requires client authentication at the token endpoint with these credentials (default
    /// none). In [`Dialect::Standard`]: HTTP Basic (RFC 6749 §2.3.1: base64 of the
    /// form-urlencoded id, `:`, the form-urlencoded secret) or `client_id` and `client_secret`
    /// body parameters, not both; other dialects accept only their provider's way. Wrong or
    /// missing credentials get `401 {"error":"invalid_client"}` with
    /// `WWW-Authenticate: Basic realm="mock"` (or the dialect's equivalent).
    pub fn client_credentials(mut self, id: &str, secret: &str) -> Self {
        self.client = Some((id.to_owned(), ClientSecret::new(secret)));
        self
    }

    /// Starts the server on a free port of `127.0.0.1`.
    pub async fn start(self) -> MockProvider {
        let server = MockServer::start().await;
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let dialect = self.dialect;
        let config = Config {
            dialect,
            token_prefix: format!("{}.{instance}", server.address().port()),
            access_token_lifetime: self.access_token_lifetime.unwrap_or(dialect.default_access_token_lifetime()),
            rotate_refresh_tokens: self.rotate_refresh_tokens,
            reuse_revokes_family: self.reuse_revokes_family,
            previous_refresh_token_grace: self.previous_refresh_token_grace.unwrap_or(dialect == Dialect::Withings),
            clock: self.clock,
            client: self.client,
        };
        let shared = Arc::new(Shared { config, state: Mutex::new(State::default()) });
        let token_endpoint = Endpoint { shared: Arc::clone(&shared), latency: self.token_latency };
        Mock::given(method("POST"))
            .and(path(dialect.token_path()))
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
        MockProvider { server: Some(server), shared }
    }
}

/// A mock rotating OAuth 2.0 provider and protected API on `127.0.0.1`; see the
/// [module documentation](self). The server stops when this is dropped.
pub struct MockProvider {
    /// Always `Some` until dropped; see the `Drop` impl for why it is taken out there.
    server: Option<MockServer>,
    shared: Arc<Shared>,
}

impl Drop for MockProvider {
    /// Drops the wiremock server on a thread of its own.
    ///
    /// `wiremock::MockServer`'s `Drop` blocks on an async `RwLock` with `futures::executor::block_on`.
    /// Dropped inside a tokio task that has used up its cooperative-scheduling budget (a test that
    /// just ran a storm of requests), every poll of that lock returns `Pending` and wakes itself
    /// at once, and the thread spins forever. A fresh thread has no tokio context and no budget.
    fn drop(&mut self) {
        let Some(server) = self.server.take() else { return };
        let dropped = std::thread::spawn(move || drop(server)).join();
        // The server's drop verifies `expect(..)` counts and panics when one is unmet: pass that
        // on to the test, unless it is already failing.
        if let Err(panic) = dropped
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
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

    /// Starts a provider with the defaults: [`Dialect::Standard`], one-hour access tokens,
    /// rotation, reuse revokes the family, no grace, no latency, the system clock, no client
    /// authentication.
    pub async fn start() -> MockProvider {
        Self::builder().start().await
    }

    /// Starts a [`Dialect::Whoop`] provider for the client [`MOCK_CLIENT_ID`] with
    /// [`MOCK_CLIENT_SECRET`], otherwise with the defaults.
    pub async fn whoop() -> MockProvider {
        Self::start_with(Dialect::Whoop).await
    }

    /// Starts a [`Dialect::WhoopPartner`] provider for the client [`MOCK_CLIENT_ID`] with
    /// [`MOCK_CLIENT_SECRET`], otherwise with the defaults.
    pub async fn whoop_partner() -> MockProvider {
        Self::start_with(Dialect::WhoopPartner).await
    }

    /// Starts a [`Dialect::Kroger`] provider for the client [`MOCK_CLIENT_ID`] with
    /// [`MOCK_CLIENT_SECRET`], otherwise with the defaults.
    pub async fn kroger() -> MockProvider {
        Self::start_with(Dialect::Kroger).await
    }

    /// Starts a [`Dialect::Withings`] provider for the client [`MOCK_CLIENT_ID`] with
    /// [`MOCK_CLIENT_SECRET`], otherwise with the dialect's defaults (3-hour access tokens, the
    /// previous-refresh-token grace).
    pub async fn withings() -> MockProvider {
        Self::start_with(Dialect::Withings).await
    }

    async fn start_with(dialect: Dialect) -> MockProvider {
        let builder = Self::builder().dialect(dialect);
        builder.client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).start().await
    }

    /// The dialect this provider speaks.
    pub fn dialect(&self) -> Dialect {
        self.shared.config.dialect
    }

    /// The server's base URI, `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        self.server().uri()
    }

    /// The token endpoint: `{uri}/oauth/token`, or the dialect's path (`{uri}/v2/oauth2` for
    /// Withings; see [`Dialect`]).
    pub fn token_url(&self) -> String {
        format!("{}{}", self.uri(), self.shared.config.dialect.token_path())
    }

    /// The URL of `path` on the protected API, `{uri}/api/{path}` (a leading `/` is dropped).
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api/{}", self.uri(), path.trim_start_matches('/'))
    }

    /// The underlying server, to mount more mocks or read `received_requests()`.
    pub fn server(&self) -> &MockServer {
        self.server.as_ref().expect("the server lives as long as the provider")
    }

    /// The requests the token endpoint received, oldest first, faulted ones included: to assert
    /// the exact shape of what a client sends. Requests answered by a mock a test mounted itself
    /// are not here; [`server`](Self::server)`().received_requests()` has every request.
    pub fn token_requests(&self) -> Vec<Request> {
        self.shared.state.lock().token_requests.clone()
    }

    /// Tokens as if a user just authorized: a new token family, an access token expiring one
    /// lifetime after the provider clock's now, and a refresh token ([`Dialect::WhoopPartner`],
    /// which has no users: no refresh token, as from its client-credentials grant).
    pub fn issue_tokens(&self) -> TokenSet {
        self.issue(false)
    }

    /// Like [`issue_tokens`](Self::issue_tokens), but the access token has already expired, for
    /// the API and by [`TokenSet::expires_at`]; the refresh token is valid.
    pub fn issue_expired_tokens(&self) -> TokenSet {
        self.issue(true)
    }

    fn issue(&self, expired: bool) -> TokenSet {
        let config = &self.shared.config;
        let now = config.clock.now();
        let with_refresh = config.dialect != Dialect::WhoopPartner;
        let minted = {
            let mut state = self.shared.state.lock();
            let family = state.new_family(config.dialect.granted_scope().map(str::to_owned));
            state.mint(config, family, now, with_refresh, expired)
        };
        let mut tokens = TokenSet::new(minted.access).with_token_type(config.dialect.token_type());
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
    /// are refused (`400 invalid_grant` in the standard dialect), access tokens get `401`.
    pub fn revoke_all(&self) {
        let mut state = self.shared.state.lock();
        for family in 0..state.families.len() {
            state.revoke(family);
        }
    }

    /// Answers the next `n` token calls with `fault` instead of handling them
    /// ([`Fault::LoseAnswer`] handles them, and withholds the answer); they still count as token
    /// calls. Faults queue up behind earlier ones; later calls are handled normally.
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

/// The builder's settings, the dialect's defaults filled in.
#[derive(Debug, Clone)]
struct Config {
    dialect: Dialect,
    token_prefix: String,
    access_token_lifetime: Duration,
    rotate_refresh_tokens: bool,
    reuse_revokes_family: bool,
    previous_refresh_token_grace: bool,
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
    token_requests: Vec<Request>,
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
    /// Under the grace, the refresh token this one was issued for: its grace ends when the API
    /// first accepts this access token, since the client evidently has the new pair.
    predecessor: Option<String>,
}

#[derive(Clone, Copy)]
struct RefreshRecord {
    family: usize,
    status: RefreshStatus,
}

#[derive(Clone, Copy)]
enum RefreshStatus {
    /// Not rotated away (yet).
    Live,
    /// Rotated away at that time, but kept usable by the grace.
    Previous(SystemTime),
    /// Rotated away: presenting it again is reuse.
    Spent,
}

/// Why a refresh token was refused.
#[derive(Clone, Copy)]
enum Refusal {
    Unknown,
    Spent,
    Revoked,
    Injected,
}

impl Refusal {
    fn description(self) -> &'static str {
        match self {
            Refusal::Unknown => "The refresh token is unknown",
            Refusal::Spent => "The refresh token was already used",
            Refusal::Revoked => "The refresh token was revoked",
            Refusal::Injected => "injected fault: the refresh token is invalid",
        }
    }

    fn into_error(self) -> OAuthError {
        OAuthError::new(400, "invalid_grant", self.description())
    }
}

struct Minted {
    family: usize,
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
        let record = AccessRecord { family, expires_at, expired, predecessor: None };
        self.access.insert(access.clone(), record);
        let refresh = refresh.then(|| {
            let refresh = format!("rt-{name}");
            self.refresh.insert(refresh.clone(), RefreshRecord { family, status: RefreshStatus::Live });
            refresh
        });
        Minted { family, access, refresh, expires_at }
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

    fn refuse(&mut self, refusal: Refusal) -> Refusal {
        self.stats.invalid_grants += 1;
        refusal
    }

    /// Exchanges the refresh token `presented` for new tokens, rotating it if `rotate`.
    fn exchange(&mut self, config: &Config, presented: &str, rotate: bool, now: SystemTime) -> Result<Minted, Refusal> {
        let Some(&RefreshRecord { family, status }) = self.refresh.get(presented) else {
            return Err(self.refuse(Refusal::Unknown));
        };
        let in_grace = match status {
            RefreshStatus::Live => false,
            RefreshStatus::Previous(rotated_at)
                if rotated_at.checked_add(PREVIOUS_REFRESH_TOKEN_GRACE).is_none_or(|end| now < end) =>
            {
                true
            }
            RefreshStatus::Previous(_) | RefreshStatus::Spent => {
                // RFC 9700 §4.14.2: a spent token presented again means it leaked or the client
                // raced itself; the provider cannot tell which, so the whole family goes.
                self.stats.reuse_detected += 1;
                if config.reuse_revokes_family {
                    self.revoke(family);
                }
                return Err(self.refuse(Refusal::Spent));
            }
        };
        if self.family_revoked(family) {
            return Err(self.refuse(Refusal::Revoked));
        }
        let grace = config.previous_refresh_token_grace;
        if let Some(record) = self.refresh.get_mut(presented).filter(|_| rotate) {
            record.status = match (grace, status) {
                (false, _) => RefreshStatus::Spent,
                // The grace runs from the first rotation: re-presenting does not extend it.
                (true, RefreshStatus::Previous(rotated_at)) => RefreshStatus::Previous(rotated_at),
                (true, _) => RefreshStatus::Previous(now),
            };
        }
        if in_grace {
            self.stats.grace_refreshes += 1;
        }
        let minted = self.mint(config, family, now, rotate, false);
        if let Some(record) = self.access.get_mut(&minted.access).filter(|_| rotate && grace) {
            record.predecessor = Some(presented.to_owned());
        }
        self.stats.tokens_issued += 1;
        Ok(minted)
    }

    /// Lets `token` through the API, or says why not; the first accepted use of an access token
    /// ends its predecessor's grace.
    fn admit(&mut self, token: &str, now: SystemTime) -> Result<(), &'static str> {
        let Some(record) = self.access.get(token) else {
            return Err("The access token is unknown");
        };
        if self.family_revoked(record.family) {
            return Err("The access token was revoked");
        }
        if record.expired || record.expires_at.is_some_and(|at| now >= at) {
            return Err("The access token is invalid or has expired");
        }
        let predecessor = self.access.get_mut(token).and_then(|record| record.predecessor.take());
        let in_grace = predecessor.and_then(|predecessor| self.refresh.get_mut(&predecessor));
        if let Some(record) = in_grace.filter(|record| matches!(record.status, RefreshStatus::Previous(_))) {
            record.status = RefreshStatus::Spent;
        }
        Ok(())
    }
}

/// An OAuth 2.0 error response (RFC 6749 §5.2), before the dialect shapes it.
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

    fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", description)
    }
}

/// What the token endpoint answers; made into a response after the lock is released.
enum Reply {
    /// A JSON body, already serialised so that fields keep the provider's order; never cached
    /// (RFC 6749 §5.1).
    Json {
        status: u16,
        body: String,
        /// `WWW-Authenticate`.
        challenge: Option<&'static str>,
        /// `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    /// Any other body, sent as is; an empty content type sends no `Content-Type`.
    Raw { status: u16, content_type: String, body: Vec<u8> },
}

/// Never panics: wiremock would, on a bad status or header, and a panicking responder hangs the
/// test. Statuses and content types of faults were checked when injected; this falls back anyway.
fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Serialises `fields` as a JSON object in this order (a `serde_json` object would sort them).
fn ordered_json(fields: &[(&str, Value)]) -> String {
    let members: Vec<String> = fields.iter().map(|(name, value)| format!("{}:{value}", Value::from(*name))).collect();
    format!("{{{}}}", members.join(","))
}

impl Reply {
    fn json(status: u16, body: String) -> Self {
        Reply::Json { status, body, challenge: None, retry_after: None }
    }

    /// A Withings envelope: HTTP 200 whatever happened, the outcome in `status`.
    fn withings_error(status: u16, error: &str) -> Self {
        Reply::json(200, ordered_json(&[("status", status.into()), ("body", json!({})), ("error", error.into())]))
    }

    fn fault(fault: Fault) -> Self {
        match fault {
            Fault::Status(code) => Reply::json(code, json!({"error": "server_error"}).to_string()),
            Fault::RateLimited { retry_after } => {
                let seconds = retry_after.as_secs().saturating_add(u64::from(retry_after.subsec_nanos() > 0));
                let body = json!({"error": "rate_limited"}).to_string();
                Reply::Json { status: 429, body, challenge: None, retry_after: Some(seconds) }
            }
            Fault::Body { status, content_type, body } => Reply::Raw { status, content_type, body },
            // Handled before a reply is made, as the call is (or is refused by) the dialect.
            Fault::InvalidGrant | Fault::LoseAnswer => Reply::json(500, json!({"error": "server_error"}).to_string()),
        }
    }

    fn into_template(self) -> ResponseTemplate {
        match self {
            Reply::Json { status, body, challenge, retry_after } => {
                let mut template = ResponseTemplate::new(status_code(status))
                    .insert_header(header::CACHE_CONTROL, "no-store")
                    .set_body_raw(body, "application/json");
                if let Some(challenge) = challenge {
                    template = template.insert_header(header::WWW_AUTHENTICATE, challenge);
                }
                if let Some(seconds) = retry_after {
                    template = template.insert_header(header::RETRY_AFTER, seconds.to_string().as_str());
                }
                template
            }
            Reply::Raw { status, mut content_type, body } => {
                if HeaderValue::from_str(&content_type).is_err() {
                    content_type.clear();
                }
                ResponseTemplate::new(status_code(status)).set_body_raw(body, &content_type)
            }
        }
    }
}

/// A responder's shared state and the delay of its answers.
struct Endpoint {
    shared: Arc<Shared>,
    latency: Duration,
}

/// The token endpoint, `POST` at the dialect's path.
struct TokenEndpoint(Endpoint);

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (reply, lost) = self.0.shared.token_call(request);
        // wiremock sleeps after releasing its own locks, so a held-back answer blocks nothing else.
        let delay = if lost { LOST_ANSWER_DELAY.max(self.0.latency) } else { self.0.latency };
        reply.into_template().set_delay(delay)
    }
}

impl Shared {
    /// Handles a token call; `true` with the reply when the answer is to be lost.
    fn token_call(&self, request: &Request) -> (Reply, bool) {
        // What needs no state is decided before taking the lock.
        let checked = token_params(request, self.config.dialect).and_then(|params| {
            self.check_action(&params)?;
            self.authenticate_client(&request.headers, &params)?;
            Ok(params)
        });
        let now = self.config.clock.now();

        let mut state = self.state.lock();
        state.stats.token_calls += 1;
        state.token_requests.push(request.clone());
        let lost = match state.faults.pop_front() {
            None => false,
            Some(Fault::LoseAnswer) => {
                state.stats.answers_lost += 1;
                true
            }
            Some(Fault::InvalidGrant) => {
                let refusal = state.refuse(Refusal::Injected);
                return (self.error_reply(refusal.into_error()), false);
            }
            Some(fault) => return (Reply::fault(fault), false),
        };
        let reply = match checked {
            Ok(params) => self.grant(&mut state, &params, now),
            Err(error) => self.error_reply(error),
        };
        (reply, lost)
    }

    fn grant(&self, state: &mut State, params: &HashMap<String, String>, now: SystemTime) -> Reply {
        let supported = self.config.dialect.grant_types();
        match params.get("grant_type").map(String::as_str) {
            None => self.error_reply(OAuthError::invalid_request("grant_type is missing")),
            Some(grant_type) if !supported.contains(&grant_type) => {
                let description = format!("supported grant types: {}", supported.join(", "));
                self.error_reply(OAuthError::new(400, "unsupported_grant_type", description))
            }
            Some("refresh_token") => self.refresh_grant(state, params, now),
            Some(_) => self.client_credentials_grant(state, params, now),
        }
    }

    fn client_credentials_grant(&self, state: &mut State, params: &HashMap<String, String>, now: SystemTime) -> Reply {
        let scope = params.get("scope").cloned();
        if self.config.dialect == Dialect::WhoopPartner && scope.is_none() {
            return self.error_reply(OAuthError::invalid_request("scope is missing"));
        }
        let family = state.new_family(scope.clone());
        let minted = state.mint(&self.config, family, now, false, false);
        state.stats.tokens_issued += 1;
        self.tokens_reply(&minted, scope)
    }

    fn refresh_grant(&self, state: &mut State, params: &HashMap<String, String>, now: SystemTime) -> Reply {
        let dialect = self.config.dialect;
        let Some(presented) = params.get("refresh_token") else {
            return self.error_reply(match dialect {
                // "Missing/Invalid Refresh Token": Kroger answers both alike.
                Dialect::Kroger => OAuthError::new(400, "invalid_grant", "refresh_token is missing"),
                _ => OAuthError::invalid_request("refresh_token is missing"),
            });
        };
        // WHOOP: "The offline scope allows your app the receive a refresh token".
        let offline =
            || params.get("scope").is_some_and(|scope| scope.split_ascii_whitespace().any(|s| s == "offline"));
        let rotate = self.config.rotate_refresh_tokens && (dialect != Dialect::Whoop || offline());
        match state.exchange(&self.config, presented, rotate, now) {
            Ok(minted) => {
                let granted = state.families.get(minted.family).and_then(|f| f.scope.clone());
                self.tokens_reply(&minted, params.get("scope").cloned().or(granted))
            }
            Err(refusal) => self.error_reply(refusal.into_error()),
        }
    }

    /// A successful token answer, in the dialect's shape and field order.
    fn tokens_reply(&self, minted: &Minted, scope: Option<String>) -> Reply {
        let dialect = self.config.dialect;
        let access = Some(("access_token", Value::from(minted.access.as_str())));
        let refresh = minted.refresh.as_deref().map(|refresh| ("refresh_token", Value::from(refresh)));
        // A lifetime too long for the clock to hold made a token that never expires: say none.
        let expires_in =
            minted.expires_at.map(|_| ("expires_in", Value::from(self.config.access_token_lifetime.as_secs())));
        let token_type = Some(("token_type", Value::from(dialect.token_type())));
        let always_scope = Some(("scope", Value::from(scope.clone().unwrap_or_default())));
        let scope = scope.map(|scope| ("scope", Value::from(scope)));
        let fields = match dialect {
            // The order of RFC 6749 §5.1's example.
            Dialect::Standard => vec![access, token_type, expires_in, refresh, scope],
            Dialect::Whoop => vec![access, refresh, expires_in, always_scope, token_type],
            Dialect::WhoopPartner => vec![access, token_type, expires_in],
            Dialect::Kroger => vec![refresh, expires_in, access, token_type],
            Dialect::Withings => {
                // Withings' user id is a number in a string; the family stands in for the user.
                let userid = Some(("userid", Value::from((1_000_000 + minted.family).to_string())));
                let csrf = Some(("csrf_token", Value::from(minted.access.replacen("at-", "csrf-", 1))));
                vec![userid, access, refresh, expires_in, always_scope, csrf, token_type]
            }
        };
        let body = ordered_json(&fields.into_iter().flatten().collect::<Vec<_>>());
        match dialect {
            Dialect::Withings => Reply::json(200, format!(r#"{{"status":0,"body":{body}}}"#)),
            _ => Reply::json(200, body),
        }
    }

    /// `error` as the dialect answers it.
    fn error_reply(&self, error: OAuthError) -> Reply {
        let OAuthError { status, code, description } = error;
        match (self.config.dialect, code) {
            // Withings: always 200, and 503 is its status for invalid parameters.
            (Dialect::Withings, "invalid_grant") => Reply::withings_error(503, "Invalid Params: invalid refresh_token"),
            (Dialect::Withings, "invalid_client") => {
                Reply::withings_error(503, "Invalid Params: invalid client_id or client_secret")
            }
            (Dialect::Withings, "unsupported_grant_type") => {
                Reply::withings_error(503, "Invalid Params: invalid grant_type")
            }
            (Dialect::Withings, _) => Reply::withings_error(503, &format!("Invalid Params: {description}")),
            (Dialect::Kroger, "invalid_grant") => Reply::Raw {
                status: 400,
                content_type: "text/plain".to_owned(),
                body: KROGER_INVALID_REFRESH_TOKEN.into(),
            },
            (Dialect::WhoopPartner, "invalid_client") => Reply::json(401, json!({"error": code}).to_string()),
            _ => {
                let body = ordered_json(&[("error", code.into()), ("error_description", description.into())]);
                // A Basic challenge only where Basic is how clients authenticate.
                let basic = matches!(self.config.dialect, Dialect::Standard | Dialect::Kroger);
                let challenge = (basic && code == "invalid_client").then_some("Basic realm=\"mock\"");
                Reply::Json { status, body, challenge, retry_after: None }
            }
        }
    }

    /// Withings routes on `action` before anything else.
    fn check_action(&self, params: &HashMap<String, String>) -> Result<(), OAuthError> {
        match self.config.dialect {
            Dialect::Withings if params.get("action").is_none_or(|action| action != "requesttoken") => {
                Err(OAuthError::invalid_request("action"))
            }
            _ => Ok(()),
        }
    }

    fn authenticate_client(&self, headers: &HeaderMap, params: &HashMap<String, String>) -> Result<(), OAuthError> {
        let in_body = || match (params.get("client_id"), params.get("client_secret")) {
            (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
            _ => Err(OAuthError::invalid_client("client_id and client_secret are required in the body")),
        };
        let (id, secret) = match self.config.dialect {
            Dialect::Standard => {
                if self.config.client.is_none() {
                    return Ok(());
                }
                match basic_credentials(headers).map_err(OAuthError::invalid_client)? {
                    Some(_) if params.contains_key("client_secret") => {
                        let description = "HTTP Basic and client_secret: RFC 6749 §2.3 allows one method";
                        return Err(OAuthError::invalid_request(description));
                    }
                    Some(basic) => basic,
                    None => in_body().map_err(|_| OAuthError::invalid_client("client authentication is required"))?,
                }
            }
            Dialect::Whoop | Dialect::WhoopPartner => {
                if !matches!(basic_credentials(headers), Ok(None)) {
                    let description = "HTTP Basic is not accepted: send client_id and client_secret in the body";
                    return Err(OAuthError::invalid_client(description));
                }
                in_body()?
            }
            // Withings reads its parameters only; an Authorization header goes unnoticed.
            Dialect::Withings => in_body()?,
            Dialect::Kroger => {
                if params.contains_key("client_secret") {
                    return Err(OAuthError::invalid_client("the client secret is accepted with HTTP Basic only"));
                }
                let basic = basic_credentials(headers).map_err(OAuthError::invalid_client)?;
                basic.ok_or_else(|| OAuthError::invalid_client("HTTP Basic client authentication is required"))?
            }
        };
        match &self.config.client {
            Some((expected_id, expected_secret)) if id != *expected_id || secret != expected_secret.secret() => {
                Err(OAuthError::invalid_client("unknown client or wrong client secret"))
            }
            _ => Ok(()),
        }
    }
}

/// The token request's parameters, from a body the dialect accepts (form or JSON); none may repeat
/// (RFC 6749 §3.2).
fn token_params(request: &Request, dialect: Dialect) -> Result<HashMap<String, String>, OAuthError> {
    let content_type = request.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media_type = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let pairs: Vec<(String, String)> = match media_type.as_str() {
        "application/x-www-form-urlencoded" if dialect.accepts_form() => {
            form_urlencoded::parse(&request.body).into_owned().collect()
        }
        "application/json" if dialect.accepts_json() => {
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
                Some(token) => state.admit(token, now).map_err(Some),
            };
            match verdict {
                Ok(()) => state.stats.api_ok += 1,
                Err(_) => state.stats.api_unauthorized += 1,
            }
            verdict
        };
        let template = match (verdict, self.0.shared.config.dialect) {
            (Ok(()), Dialect::Withings) => {
                ResponseTemplate::new(200).set_body_raw(r#"{"status":0,"body":{}}"#, "application/json")
            }
            (Ok(()), _) => ResponseTemplate::new(200).set_body_json(json!({"ok": true})),
            (Err(None), Dialect::Standard) => {
                ResponseTemplate::new(401).insert_header(header::WWW_AUTHENTICATE, "Bearer realm=\"mock\"")
            }
            (Err(Some(description)), Dialect::Standard) => {
                // The descriptions are fixed strings without quotes: safe inside the header.
                let challenge =
                    format!("Bearer realm=\"mock\", error=\"invalid_token\", error_description=\"{description}\"");
                ResponseTemplate::new(401)
                    .insert_header(header::WWW_AUTHENTICATE, challenge.as_str())
                    .set_body_json(json!({"error": "invalid_token", "error_description": description}))
            }
            // Kroger documents one body for every rejected token, and no challenge.
            (Err(_), Dialect::Kroger) => {
                ResponseTemplate::new(401).set_body_raw(KROGER_INVALID_TOKEN, "application/json")
            }
            // "WHOOP will return a 401 Unauthorized response": that, and nothing more.
            (Err(_), Dialect::Whoop | Dialect::WhoopPartner) => ResponseTemplate::new(401),
            // Withings answers everything with HTTP 200 and the outcome in `status`.
            (Err(_), Dialect::Withings) => {
                ResponseTemplate::new(200).set_body_raw(WITHINGS_INVALID_TOKEN, "application/json")
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
        /// The body as sent, for exact comparisons.
        text: String,
    }

    impl Answer {
        async fn read(response: reqwest::Result<reqwest::Response>) -> Answer {
            let response = response.expect("the mock answers");
            let (status, headers) = (response.status().as_u16(), response.headers().clone());
            let body = response.bytes().await.expect("a body");
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let text = String::from_utf8_lossy(&body).into_owned();
            Answer { status, headers, json, text }
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

        async fn anonymous_api(&self) -> Answer {
            Answer::read(reqwest::Client::new().get(self.api_url("/v1/sleep")).send().await).await
        }

        /// Withings' refresh, by the book.
        async fn withings_refresh(&self, refresh_token: &str) -> Answer {
            let body = form(&[
                ("action", "requesttoken"),
                ("grant_type", "refresh_token"),
                ("client_id", MOCK_CLIENT_ID),
                ("client_secret", MOCK_CLIENT_SECRET),
                ("refresh_token", refresh_token),
            ]);
            self.post(FORM, &body, None).await
        }
    }

    /// `fields` as a form body.
    fn form(fields: &[(&str, &str)]) -> String {
        form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
    }

    /// An `Authorization: Basic` value, for an id and a secret that need no form-encoding.
    fn basic(id: &str, secret: &str) -> String {
        format!("Basic {}", BASE64.encode(format!("{id}:{secret}")))
    }

    /// Asserts that the JSON object `object`, sent as `text`, has exactly the fields `names`, sent
    /// in that order (a `Value` sorts its fields, so the order is read from the text).
    fn assert_fields(text: &str, object: &Value, names: &[&str]) {
        let mut found: Vec<_> =
            names.iter().filter_map(|name| text.find(&format!("\"{name}\":")).zip(Some(*name))).collect();
        found.sort_unstable();
        let order: Vec<_> = found.into_iter().map(|(_, name)| name).collect();
        assert_eq!(order, names, "{text}");
        assert_eq!(object.as_object().map(serde_json::Map::len), Some(names.len()), "{text}");
    }

    /// Asserts a bare 401: no challenge, no body.
    fn assert_bare_401(answer: &Answer) {
        assert_eq!(answer.status, 401, "{answer:?}");
        assert!(answer.headers.get("www-authenticate").is_none(), "{answer:?}");
        assert!(answer.text.is_empty(), "{answer:?}");
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
            grace_refreshes: 0,
            answers_lost: 0,
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

    #[tokio::test]
    async fn the_default_dialect_is_standard_and_builder_settings_win_over_a_dialects_defaults() {
        assert_eq!(Dialect::default(), Dialect::Standard);
        let provider = MockProvider::start().await;
        assert_eq!(
            (provider.dialect(), provider.token_url()),
            (Dialect::Standard, format!("{}/oauth/token", provider.uri()))
        );

        // Set before the dialect or after it, the lifetime and the grace are the builder's.
        let lifetime = Duration::from_secs(60);
        let builder = MockProvider::builder().access_token_lifetime(lifetime).dialect(Dialect::Withings);
        let provider = builder.previous_refresh_token_grace(false).start().await;
        let tokens = provider.issue_tokens();
        let answer = provider.withings_refresh(refresh(&tokens)).await;
        assert_eq!(answer.json["body"]["expires_in"], 60, "{answer:?}");
        let replay = provider.withings_refresh(refresh(&tokens)).await;
        assert_eq!(replay.json["error"], "Invalid Params: invalid refresh_token", "no grace: {replay:?}");
        assert_eq!(provider.stats().reuse_detected, 1);
    }

    #[tokio::test]
    async fn whoop_takes_credentials_in_a_form_body_and_rotates_only_for_scope_offline() {
        let provider = MockProvider::whoop().await;
        assert!(provider.token_url().ends_with("/oauth/oauth2/token"), "{}", provider.token_url());
        let tokens = provider.issue_tokens();
        let old = refresh(&tokens);
        let grant = |scope: Option<&str>, secret: &str| {
            let mut fields = vec![
                ("grant_type", "refresh_token"),
                ("client_id", MOCK_CLIENT_ID),
                ("client_secret", secret),
                ("refresh_token", old),
            ];
            fields.extend(scope.map(|scope| ("scope", scope)));
            form(&fields)
        };

        // Refused: HTTP Basic, alone or not; a JSON body; a wrong secret; another grant.
        let without_secret = form(&[("grant_type", "refresh_token"), ("refresh_token", old), ("scope", "offline")]);
        let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
        let basic_only = provider.post(FORM, &without_secret, Some(&mock_basic)).await;
        assert_eq!(basic_only.error(), (401, "invalid_client"));
        assert_eq!(basic_only.header("www-authenticate"), "", "no Basic challenge where Basic is refused");
        let both = provider.post(FORM, &grant(Some("offline"), MOCK_CLIENT_SECRET), Some(&mock_basic)).await;
        assert_eq!(both.error(), (401, "invalid_client"));
        let as_json = json!({"grant_type": "refresh_token", "client_id": MOCK_CLIENT_ID,
            "client_secret": MOCK_CLIENT_SECRET, "refresh_token": old, "scope": "offline"});
        assert_eq!(provider.post(JSON, &as_json.to_string(), None).await.error(), (400, "invalid_request"));
        let wrong = provider.post(FORM, &grant(Some("offline"), "guess"), None).await;
        assert_eq!(wrong.error(), (401, "invalid_client"));
        let credentials = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", MOCK_CLIENT_ID),
            ("client_secret", MOCK_CLIENT_SECRET),
        ]);
        assert_eq!(provider.post(FORM, &credentials, None).await.error(), (400, "unsupported_grant_type"));
        assert_eq!(provider.stats().tokens_issued, 0);

        // Without `offline`: no new refresh token, and the old one stays valid.
        for scope in [None, Some("read:recovery"), Some("offlineish")] {
            let answer = provider.post(FORM, &grant(scope, MOCK_CLIENT_SECRET), None).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            assert_fields(&answer.text, &answer.json, &["access_token", "expires_in", "scope", "token_type"]);
            assert_eq!(provider.api(answer.field("access_token")).await.status, 200);
        }
        // With it, among other scopes: a new one, WHOOP's fields in WHOOP's order; the old one spent.
        let answer = provider.post(FORM, &grant(Some("read:recovery offline"), MOCK_CLIENT_SECRET), None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let fields = ["access_token", "refresh_token", "expires_in", "scope", "token_type"];
        assert_fields(&answer.text, &answer.json, &fields);
        assert_eq!((answer.field("scope"), answer.field("token_type")), ("read:recovery offline", "bearer"));
        assert_eq!(answer.json["expires_in"], 3600);
        assert_ne!(answer.field("refresh_token"), old);
        let replay = provider.post(FORM, &grant(Some("offline"), MOCK_CLIENT_SECRET), None).await;
        assert_eq!(replay.error(), (400, "invalid_grant"));
        assert_eq!(provider.stats().reuse_detected, 1);

        // The API's 401 says nothing, whatever the reason.
        assert_bare_401(&provider.api(answer.field("access_token")).await);
        assert_bare_401(&provider.api("at-never-issued").await);
        assert_bare_401(&provider.anonymous_api().await);
    }

    #[tokio::test]
    async fn whoop_partner_grants_client_credentials_from_a_json_body_only() {
        let provider = MockProvider::whoop_partner().await;
        assert!(provider.token_url().ends_with("/developer/v2/partner/token"), "{}", provider.token_url());
        let request = json!({"grant_type": "client_credentials", "client_id": MOCK_CLIENT_ID,
            "client_secret": MOCK_CLIENT_SECRET, "scope": "whoop-partner/token"});
        let answer = provider.post("application/json", &request.to_string(), None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_fields(&answer.text, &answer.json, &["access_token", "token_type", "expires_in"]);
        assert_eq!((answer.field("token_type"), answer.json["expires_in"].as_u64()), ("bearer", Some(3600)));
        assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

        let mut wrong = request.clone();
        wrong["client_secret"] = "guess".into();
        let refused = provider.post(JSON, &wrong.to_string(), None).await;
        assert_eq!((refused.status, refused.text.as_str()), (401, r#"{"error":"invalid_client"}"#));
        assert_eq!(refused.header("www-authenticate"), "");
        let mut by_basic = request.clone();
        by_basic.as_object_mut().map(|fields| fields.remove("client_secret"));
        let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
        assert_eq!(provider.post(JSON, &by_basic.to_string(), Some(&mock_basic)).await.status, 401);
        let fields = [
            ("grant_type", "client_credentials"),
            ("client_id", MOCK_CLIENT_ID),
            ("client_secret", MOCK_CLIENT_SECRET),
            ("scope", "whoop-partner/token"),
        ];
        assert_eq!(provider.post(FORM, &form(&fields), None).await.error(), (400, "invalid_request"));
        let mut unscoped = request.clone();
        unscoped.as_object_mut().map(|fields| fields.remove("scope"));
        assert_eq!(provider.post(JSON, &unscoped.to_string(), None).await.error(), (400, "invalid_request"));
        let mut refresh_grant = request.clone();
        refresh_grant["grant_type"] = "refresh_token".into();
        refresh_grant["refresh_token"] = "rt-anything".into();
        let refused = provider.post(JSON, &refresh_grant.to_string(), None).await;
        assert_eq!(refused.error(), (400, "unsupported_grant_type"));
        assert_eq!(provider.stats().tokens_issued, 1);

        // A partner has no users: what `issue_tokens` stands in for has no refresh token either.
        let tokens = provider.issue_tokens();
        assert!(tokens.refresh_token().is_none());
        provider.expire_access_tokens();
        assert_bare_401(&provider.api(access(&tokens)).await);
        assert_bare_401(&provider.anonymous_api().await);
    }

    #[tokio::test]
    async fn kroger_takes_http_basic_only_and_refuses_a_spent_refresh_token_in_plain_text() {
        let provider = MockProvider::kroger().await;
        assert!(provider.token_url().ends_with("/v1/connect/oauth2/token"), "{}", provider.token_url());
        let tokens = provider.issue_tokens();
        let old = refresh(&tokens);
        let grant = |refresh_token: &str| form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]);
        let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);

        // Refused: no Basic, the secret in the body, a wrong secret, a JSON body.
        assert_eq!(provider.post(FORM, &grant(old), None).await.error(), (401, "invalid_client"));
        let in_body = format!("{}&client_id={MOCK_CLIENT_ID}&client_secret={MOCK_CLIENT_SECRET}", grant(old));
        assert_eq!(provider.post(FORM, &in_body, None).await.error(), (401, "invalid_client"));
        assert_eq!(provider.post(FORM, &in_body, Some(&mock_basic)).await.error(), (401, "invalid_client"));
        let wrong = provider.post(FORM, &grant(old), Some(&basic(MOCK_CLIENT_ID, "guess"))).await;
        assert_eq!(wrong.error(), (401, "invalid_client"));
        let as_json = json!({"grant_type": "refresh_token", "refresh_token": old}).to_string();
        assert_eq!(provider.post(JSON, &as_json, Some(&mock_basic)).await.error(), (400, "invalid_request"));

        let answer = provider.post(FORM, &grant(old), Some(&mock_basic)).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_fields(&answer.text, &answer.json, &["refresh_token", "expires_in", "access_token", "token_type"]);
        assert_eq!(answer.field("token_type"), "bearer");
        assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

        // Single use: spent, unknown, missing or refused by a fault, the same plain-text 400.
        provider.fail_next_token_calls(1, Fault::InvalidGrant);
        let new = answer.field("refresh_token");
        let bodies = [grant(new), grant(old), grant("rt-never-issued"), "grant_type=refresh_token".to_owned()];
        for body in bodies {
            let refused = provider.post(FORM, &body, Some(&mock_basic)).await;
            assert_eq!(refused.status, 400, "{body}");
            assert_eq!(refused.header("content-type"), "text/plain", "{body}");
            assert_eq!(refused.text, "Missing/Invalid Refresh Token", "{body}");
        }
        let stats = provider.stats();
        assert_eq!((stats.invalid_grants, stats.reuse_detected, stats.tokens_issued), (3, 1, 1));

        // The API's 401: Kroger's JSON, byte for byte, and no challenge (the reuse revoked the family).
        for rejected in [provider.api(answer.field("access_token")).await, provider.anonymous_api().await] {
            assert_eq!(rejected.status, 401);
            assert_eq!(
                rejected.text,
                r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#
            );
            assert_eq!(rejected.header("content-type"), "application/json");
            assert_eq!(rejected.header("www-authenticate"), "");
        }
    }

    #[tokio::test]
    async fn withings_answers_every_token_call_with_http_200_and_an_envelope() {
        let provider = MockProvider::withings().await;
        assert_eq!(provider.token_url(), format!("{}/v2/oauth2", provider.uri()));
        let tokens = provider.issue_tokens();
        let answer = provider.withings_refresh(refresh(&tokens)).await;
        assert_eq!((answer.status, &answer.json["status"]), (200, &json!(0)), "{answer:?}");
        let body = &answer.json["body"];
        let fields = ["userid", "access_token", "refresh_token", "expires_in", "scope", "csrf_token", "token_type"];
        assert_fields(&answer.text, body, &fields);
        assert!(answer.text.starts_with(r#"{"status":0,"body":{"userid":""#), "{}", answer.text);
        assert_eq!(
            (&body["expires_in"], &body["scope"], &body["token_type"]),
            (&json!(10800), &json!("user.metrics"), &json!("Bearer"))
        );
        assert!(body["userid"].as_str().is_some_and(|id| id.parse::<u64>().is_ok()), "{body}");
        assert!(body["csrf_token"].as_str().is_some_and(|csrf| !csrf.is_empty()), "{body}");
        let access_token = body["access_token"].as_str().unwrap_or_default();
        let data = provider.api(access_token).await;
        assert_eq!((data.status, data.text.as_str()), (200, r#"{"status":0,"body":{}}"#));

        // Refusals are 200 as well; the envelope's status says what went wrong.
        let envelope = |error: &str| format!(r#"{{"status":503,"body":{{}},"error":"{error}"}}"#);
        let refused = provider.withings_refresh("rt-never-issued").await;
        assert_eq!((refused.status, refused.text), (200, envelope("Invalid Params: invalid refresh_token")));
        let grant = [("grant_type", "refresh_token"), ("refresh_token", refresh(&tokens))];
        let credentials = [("client_id", MOCK_CLIENT_ID), ("client_secret", MOCK_CLIENT_SECRET)];
        let without_action = provider.post(FORM, &form(&[&grant[..], &credentials[..]].concat()), None).await;
        assert_eq!((without_action.status, without_action.text), (200, envelope("Invalid Params: action")));
        let other_action = [&[("action", "getnonce")], &grant[..], &credentials[..]].concat();
        assert_eq!(provider.post(FORM, &form(&other_action), None).await.text, envelope("Invalid Params: action"));
        let basic_auth = [&[("action", "requesttoken")], &grant[..]].concat();
        let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
        let refused = provider.post(FORM, &form(&basic_auth), Some(&mock_basic)).await;
        assert_eq!(
            (refused.status, refused.text),
            (200, envelope("Invalid Params: invalid client_id or client_secret"))
        );
        let as_json = json!({"action": "requesttoken", "grant_type": "refresh_token"}).to_string();
        let refused = provider.post(JSON, &as_json, None).await;
        assert_eq!((refused.status, &refused.json["status"]), (200, &json!(503)), "{refused:?}");
        provider.fail_next_token_calls(1, Fault::InvalidGrant);
        let injected = provider.withings_refresh(body["refresh_token"].as_str().unwrap_or_default()).await;
        assert_eq!(injected.text, envelope("Invalid Params: invalid refresh_token"));
        assert_eq!(provider.stats().invalid_grants, 2);

        // Only the dialect's path is a token endpoint; the API rejects a token with a 200 too.
        let elsewhere = format!("{}/oauth/token", provider.uri());
        let request = reqwest::Client::new().post(elsewhere).header("content-type", FORM).body("action=requesttoken");
        assert_eq!(Answer::read(request.send().await).await.status, 404);
        provider.expire_access_tokens();
        let rejected = provider.api(access_token).await;
        assert_eq!((rejected.status, rejected.text.as_str()), (200, WITHINGS_INVALID_TOKEN));
        assert!(crate::providers::withings_token_rejected(http::StatusCode::OK, rejected.text.as_bytes()));
        assert_eq!(provider.stats().api_unauthorized, 1);
    }

    #[tokio::test]
    async fn withings_grace_keeps_the_previous_refresh_token_until_the_new_access_token_is_used() {
        let provider = MockProvider::withings().await;
        let tokens = provider.issue_tokens();
        let first = provider.withings_refresh(refresh(&tokens)).await;
        assert_eq!(first.json["status"], 0, "{first:?}");
        // The answer went astray, say: the client presents the refresh token it still has.
        let again = provider.withings_refresh(refresh(&tokens)).await;
        assert_eq!(again.json["status"], 0, "within the grace: {again:?}");
        let (first, again) = (&first.json["body"], &again.json["body"]);
        assert_ne!(first["access_token"], again["access_token"]);
        assert_ne!(first["refresh_token"], again["refresh_token"]);
        let stats = provider.stats();
        assert_eq!((stats.tokens_issued, stats.grace_refreshes, stats.reuse_detected), (2, 1, 0));

        // The new access token is used: the client evidently has the new pair, the grace is over.
        assert_eq!(provider.api(again["access_token"].as_str().unwrap_or_default()).await.status, 200);
        let late = provider.withings_refresh(refresh(&tokens)).await;
        assert_eq!(late.json["error"], "Invalid Params: invalid refresh_token", "{late:?}");
        let stats = provider.stats();
        assert_eq!((stats.grace_refreshes, stats.reuse_detected, stats.families_revoked), (1, 1, 1));
    }

    #[tokio::test]
    async fn any_dialect_can_opt_into_the_grace_which_ends_eight_hours_after_the_rotation() {
        let clock = ManualClock::starting_now();
        let builder = MockProvider::builder().previous_refresh_token_grace(true).reuse_revokes_family(false);
        let provider = builder.clock(clock.clone()).start().await;
        let tokens = provider.issue_tokens();
        assert_eq!(provider.refresh(refresh(&tokens)).await.status, 200);

        clock.advance(PREVIOUS_REFRESH_TOKEN_GRACE - Duration::from_secs(1));
        let within = provider.refresh(refresh(&tokens)).await;
        assert_eq!(within.status, 200, "re-presenting does not restart the grace: {within:?}");
        clock.advance(Duration::from_secs(1));
        assert_eq!(provider.refresh(refresh(&tokens)).await.error(), (400, "invalid_grant"));
        // The pair issued within the grace is unaffected (no family revocation here).
        assert_eq!(provider.refresh(within.field("refresh_token")).await.status, 200);
        let stats = provider.stats();
        assert_eq!((stats.tokens_issued, stats.grace_refreshes, stats.reuse_detected), (3, 1, 1));
    }

    #[tokio::test]
    async fn a_lost_answer_rotates_on_the_provider_while_the_client_times_out() {
        let provider = MockProvider::start().await;
        let tokens = provider.issue_tokens();
        provider.fail_next_token_calls(1, Fault::LoseAnswer);
        // The client must time out by itself: the answer would come an hour later.
        let client = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().expect("a client");
        let body = format!("grant_type=refresh_token&refresh_token={}", refresh(&tokens));
        let lost = client.post(provider.token_url()).header("content-type", FORM).body(body.clone()).send().await;
        assert!(lost.as_ref().is_err_and(reqwest::Error::is_timeout), "{lost:?}");
        let stats = provider.stats();
        assert_eq!((stats.token_calls, stats.tokens_issued, stats.answers_lost), (1, 1, 1));

        // The provider rotated: the refresh token the client still holds is spent, and trying it
        // again looks like a replay.
        assert_eq!(provider.refresh(refresh(&tokens)).await.error(), (400, "invalid_grant"));
        assert_eq!(provider.stats().reuse_detected, 1);
        let requests = provider.token_requests();
        assert_eq!(requests.len(), 2);
        for request in &requests {
            assert_eq!((request.url.path(), request.body.as_slice()), ("/oauth/token", body.as_bytes()));
            assert_eq!(request.headers.get("content-type").map(HeaderValue::as_bytes), Some(FORM.as_bytes()));
        }
    }

    #[tokio::test]
    async fn withings_grace_rescues_a_client_whose_refresh_answer_was_lost() {
        let provider = MockProvider::withings().await;
        let tokens = provider.issue_tokens();
        provider.fail_next_token_calls(1, Fault::LoseAnswer);
        let client = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().expect("a client");
        let body = form(&[
            ("action", "requesttoken"),
            ("grant_type", "refresh_token"),
            ("client_id", MOCK_CLIENT_ID),
            ("client_secret", MOCK_CLIENT_SECRET),
            ("refresh_token", refresh(&tokens)),
        ]);
        let lost = client.post(provider.token_url()).header("content-type", FORM).body(body).send().await;
        assert!(lost.as_ref().is_err_and(reqwest::Error::is_timeout), "{lost:?}");

        let retried = provider.withings_refresh(refresh(&tokens)).await;
        assert_eq!(retried.json["status"], 0, "{retried:?}");
        let access_token = retried.json["body"]["access_token"].as_str().unwrap_or_default();
        assert_eq!(provider.api(access_token).await.status, 200);
        let stats = provider.stats();
        assert_eq!((stats.answers_lost, stats.grace_refreshes, stats.reuse_detected), (1, 1, 0));
        assert_eq!(provider.token_requests().len(), 2);
    }

    #[tokio::test]
    async fn every_dialect_answers_malformed_requests_with_its_error_not_a_panic() {
        let dialects = [Dialect::Standard, Dialect::Whoop, Dialect::WhoopPartner, Dialect::Kroger, Dialect::Withings];
        let cases: [(&str, &str, Option<&str>); 9] = [
            (FORM, "", None),
            (FORM, "action=requesttoken&grant_type=refresh_token&grant_type=refresh_token", None),
            (FORM, "%FF%FE=%00&&==&action=requesttoken", Some("Basic %%%")),
            (FORM, "action=requesttoken&grant_type=refresh_token&refresh_token=%FF", Some("Basic Og==")),
            (JSON, "{not json", None),
            (JSON, "[1, 2]", None),
            (JSON, r#"{"grant_type": 7, "scope": ["offline"]}"#, None),
            ("text/plain", "grant_type=refresh_token", None),
            ("", "", Some("Bearer")),
        ];
        for dialect in dialects {
            let builder = MockProvider::builder().dialect(dialect);
            let provider = builder.client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).start().await;
            for (content_type, body, authorization) in cases {
                let answer = provider.post(content_type, body, authorization).await;
                let refused = match dialect {
                    Dialect::Withings => answer.status == 200 && answer.json["status"] == 503,
                    _ => matches!(answer.status, 400 | 401),
                };
                assert!(refused, "{dialect:?} {content_type:?} {body:?}: {answer:?}");
            }
            let garbled = HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text is a valid header value");
            let request = reqwest::Client::new().get(provider.api_url("x")).header("authorization", garbled);
            let rejected = Answer::read(request.send().await).await;
            match dialect {
                Dialect::Withings => assert_eq!(rejected.json["status"], 401, "{rejected:?}"),
                _ => assert_eq!(rejected.status, 401, "{dialect:?}"),
            }
            assert_eq!(provider.stats().tokens_issued, 0, "{dialect:?}");
        }
    }
}

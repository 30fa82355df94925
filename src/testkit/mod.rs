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
//! * **Request shapes**: form or JSON bodies, the `authorization_code`, `refresh_token` and
//!   `client_credentials` grants,
//!   client authentication by HTTP Basic (Kroger, oslo) or in the body (WHOOP), or (feature
//!   `private-key-jwt`) by a signed client assertion, checked against the client's registered
//!   public key, each `jti` accepted once ([`MockProviderBuilder::client_key`]).
//! * **DPoP** (feature `dpop`, [`MockProviderBuilder::dpop`]): proofs checked at the token
//!   endpoint and the API (signature by the embedded key, `htm`, `htu`, `ath`, `iat`, each `jti`
//!   once, the server's nonce where demanded), tokens bound to the key's thumbprint.
//!
//! Tests can also inject faults (among them [`Fault::LoseAnswer`], tokens issued but the answer
//! lost), add latency, drive expiry with a [`ManualClock`](crate::ManualClock), read counters
//! ([`ProviderStats`]) and the token requests as sent ([`MockProvider::token_requests`]).
//! Logins work too: an authorization endpoint ([`MockProvider::authorize_url`]) that approves at
//! once (PKCE `S256` required) and the `authorization_code` grant, each code usable once, for
//! its redirect URI and verifier (and by the client it was issued to, when both name one),
//! within its lifetime (10 minutes; Withings' 30 seconds), a second use revoking what the first
//! granted; [`MockProvider::approve`] plays the browser, and
//! [`MockProvider::issue_tokens`] skips the login. The API can be a protected resource (RFC 9728,
//! [`MockProviderBuilder::protected_resource`]): its metadata at the well-known paths and its
//! 401 naming them, as an MCP server answers; and resource indicators (RFC 8707) can be required
//! ([`MockProviderBuilder::require_resource_indicator`]). A revocation endpoint (RFC 7009,
//! [`MockProvider::revocation_url`]) revokes a refresh token's family or an access token.
//! Clients can register themselves (RFC 7591, [`MockProviderBuilder::dynamic_registration`]):
//! the token, revocation and authorization endpoints then know them by the id and secret the
//! registration endpoint issued, until their secret expires or
//! [`MockProvider::revoke_registration`] ends them; or name themselves by the URL of their own
//! metadata document ([`MockProviderBuilder::client_id_metadata_documents`]), which the mock
//! fetches and checks. An MCP server can sit at the protected resource
//! ([`MockProviderBuilder::mcp_server`]): the streamable HTTP transport, sessions and
//! server-sent-event answers as the MCP specification's examples show them, behind the token
//! check. Not reproduced: refresh-token expiry. The mock's routes are mounted at priority 10, so
//! a [`Mock`] a test mounts on [`MockProvider::server`] at the default priority wins.
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
//!   `{"status":401,...}` for a rejected access token. Withings' signature service issues
//!   single-use nonces, and a token call signed with one needs no client secret
//!   ([`MockProvider::signature_url`]).
//!
//! [`MockProvider::whoop`], [`whoop_partner`](MockProvider::whoop_partner),
//! [`kroger`](MockProvider::kroger) and [`withings`](MockProvider::withings) start one with the
//! client [`MOCK_CLIENT_ID`] and [`MOCK_CLIENT_SECRET`]. Token lifetimes, reuse detection, faults,
//! latency, the clock and the counters work the same in every dialect.

// This file is the public API: `MockProvider`, its builder, `Fault` and `ProviderStats`. Behind it,
// `grants.rs` keeps the token families (minting, rotation, reuse detection, the grace) and decides
// each token call; `dialect.rs` is what each `Dialect` changes (paths, client authentication, the
// shape of answers, the API's 401); `wire.rs` reads requests, builds answers and holds the
// wiremock responders; `tests.rs` has the unit tests.
#[cfg(feature = "private-key-jwt")]
mod assertion;
mod client_metadata;
mod dialect;
#[cfg(feature = "dpop")]
mod dpop;
#[cfg(all(test, feature = "dpop"))]
mod dpop_tests;
mod grants;
mod mcp;
mod metadata;
mod registration;
mod resource;
mod revocation;
mod signature;
#[cfg(test)]
mod tests;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use parking_lot::Mutex;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request};

use crate::{ClientSecret, Clock, TokenSet};
use grants::State;
use wire::{ApiEndpoint, AuthorizeEndpoint, Endpoint, TokenEndpoint};

pub use dialect::Dialect;
pub use mcp::MCP_TOOL;

/// The client id that [`MockProvider::whoop`], [`MockProvider::whoop_partner`],
/// [`MockProvider::kroger`] and [`MockProvider::withings`] register.
pub const MOCK_CLIENT_ID: &str = "mock-client";
/// The client secret that goes with [`MOCK_CLIENT_ID`].
pub const MOCK_CLIENT_SECRET: &str = "mock-secret";

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
    /// Refresh tokens refused, injected refusals included: `400 invalid_grant` in most dialects,
    /// Kroger's plain-text `400`, Withings' `Invalid Params: invalid refresh_token`.
    pub invalid_grants: u64,
    /// Times a spent (already rotated) refresh token was presented.
    pub reuse_detected: u64,
    /// Token families revoked, by reuse detection, the revocation endpoint or
    /// [`MockProvider::revoke_all`].
    pub families_revoked: u64,
    /// Refreshes granted to a rotated refresh token within its
    /// [grace](MockProviderBuilder::previous_refresh_token_grace) (counted in `tokens_issued` too).
    pub grace_refreshes: u64,
    /// Token calls (and revocations) handled with their answer held back by [`Fault::LoseAnswer`].
    pub answers_lost: u64,
    /// Authorization codes the authorize endpoint issued (one per approved login).
    pub authorizations: u64,
    /// Nonces the Withings signature service issued ([`Dialect::Withings`]; see
    /// [`MockProvider::signature_url`]).
    pub nonces_issued: u64,
    /// Every POST to the revocation endpoint ([`MockProvider::revocation_url`]), those answered
    /// with an injected [`Fault`] included.
    pub revocation_calls: u64,
    /// Tokens the revocation endpoint revoked: a refresh token (with its family) or an access
    /// token the provider still honoured. Revoking an unknown or already revoked token is
    /// answered 200 too (RFC 7009 §2.2) but not counted.
    pub tokens_revoked: u64,
    /// Every request to the API.
    pub api_calls: u64,
    /// API requests whose token was accepted (answered `200`).
    pub api_ok: u64,
    /// API requests whose token was rejected: answered `401`, or in [`Dialect::Withings`] `200`
    /// with `"status":401`.
    pub api_unauthorized: u64,
    /// DPoP proofs examined, at the token endpoint and the API (feature `dpop`; see
    /// [`MockProviderBuilder::dpop`]).
    #[cfg(feature = "dpop")]
    pub dpop_proofs_checked: u64,
    /// DPoP proofs refused as invalid (`invalid_dpop_proof`): a bad signature, `htm`, `htu`,
    /// `ath` or `iat`, a replayed `jti`.
    #[cfg(feature = "dpop")]
    pub dpop_proofs_rejected: u64,
    /// Distinct `jti`s among the DPoP proofs that passed the checks before it.
    #[cfg(feature = "dpop")]
    pub dpop_jtis: u64,
    /// DPoP proofs whose `jti` had been seen before (counted in `dpop_proofs_rejected` too).
    #[cfg(feature = "dpop")]
    pub dpop_replays: u64,
    /// DPoP nonces made: the first where one is demanded, then one per
    /// [`MockProvider::rotate_dpop_nonce`].
    #[cfg(feature = "dpop")]
    pub dpop_nonces_issued: u64,
    /// Answers demanding a nonce: `400 use_dpop_nonce` from the token endpoint, `401` with
    /// `WWW-Authenticate: DPoP error="use_dpop_nonce"` from the API.
    #[cfg(feature = "dpop")]
    pub dpop_nonce_demands: u64,
    /// Protected resource metadata documents served (see
    /// [`MockProviderBuilder::protected_resource`]).
    pub resource_metadata_served: u64,
    /// Token calls and authorization requests that carried at least one `resource` (RFC 8707),
    /// whether the mock requires one or not.
    pub resource_indicators: u64,
    /// Token calls and authorization requests refused with `invalid_target` (see
    /// [`MockProviderBuilder::require_resource_indicator`]).
    pub invalid_targets: u64,
    /// Clients the registration endpoint registered (see
    /// [`MockProviderBuilder::dynamic_registration`]).
    pub registrations: u64,
    /// Token and revocation calls refused with `invalid_client`: an unknown client, a wrong
    /// secret, an expired secret or a revoked registration, a failed client assertion.
    pub invalid_clients: u64,
    /// MCP sessions the mock's MCP server opened (`initialize`; see
    /// [`MockProviderBuilder::mcp_server`]).
    pub mcp_sessions: u64,
    /// JSON-RPC messages the MCP server took within a session, `initialize` included: requests,
    /// notifications and responses, each admitted by the token check first.
    pub mcp_messages: u64,
    /// Client metadata documents fetched (see
    /// [`MockProviderBuilder::client_id_metadata_documents`]), those refused included; a
    /// document already fetched and valid is not fetched again.
    pub client_metadata_fetches: u64,
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
///
/// Five-minute tokens on a clock the test drives, so expiry needs no sleeping. The provider, the
/// grant and the layer share the clock:
///
/// ```
/// use std::time::Duration;
/// use reqwest_token_refresh::testkit::MockProvider;
/// use reqwest_token_refresh::{ManualClock, RefreshTokenGrant, TokenRefresh};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let clock = ManualClock::starting_now();
/// let provider = MockProvider::builder()
///     .access_token_lifetime(Duration::from_secs(300))
///     .clock(clock.clone())
///     .start()
///     .await;
/// let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()).clock(clock.clone()))
///     .initial_tokens(provider.issue_tokens())
///     .allow_origin(provider.uri())
///     .clock(clock.clone())
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.clone())
///     .build();
///
/// clock.advance(Duration::from_secs(300));
/// let response = client.get(provider.api_url("v1/me")).send().await?;
///
/// assert_eq!(response.status(), 200);
/// assert_eq!(provider.stats().token_calls, 1, "the layer saw the expiry and refreshed first");
/// assert_eq!(provider.stats().api_unauthorized, 0, "no request went out with the expired token");
/// # Ok(()) }
/// ```
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
    #[cfg(feature = "private-key-jwt")]
    client_keys: Vec<assertion::ClientKey>,
    metadata_fields: Vec<(String, serde_json::Value)>,
    resource: resource::ResourceConfig,
    registration: Option<registration::RegistrationConfig>,
    mcp: bool,
    client_id_metadata_documents: bool,
    token_latency: Duration,
    api_latency: Duration,
    #[cfg(feature = "dpop")]
    dpop: Option<dpop::DpopConfig>,
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
            #[cfg(feature = "private-key-jwt")]
            client_keys: Vec::new(),
            metadata_fields: Vec::new(),
            resource: resource::ResourceConfig::default(),
            registration: None,
            mcp: false,
            client_id_metadata_documents: false,
            token_latency: Duration::ZERO,
            api_latency: Duration::ZERO,
            #[cfg(feature = "dpop")]
            dpop: None,
        }
    }
}

impl MockProviderBuilder {
    /// Which provider to behave like (default [`Dialect::Standard`]); see [`Dialect`]. Settings
    /// made on this builder win over the dialect's defaults, in whichever order they are made.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// How long access tokens live (default one hour, three in [`Dialect::Withings`]); sent as
    /// `expires_in` in whole seconds, rounded down, so a client never believes a token lives longer
    /// than it does. A lifetime too long for the provider's clock to represent (`Duration::MAX`)
    /// makes tokens that never expire, sent without `expires_in`.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.access_token_lifetime = Some(lifetime);
        self
    }

    /// Whether refreshes rotate the refresh token (default `true`): return a new one and spend the
    /// one presented. When not, responses carry no `refresh_token` and the client keeps using the
    /// one it has (RFC 6749 §6), which stays valid. [`Dialect::Whoop`] rotates only when the
    /// request asks for `scope=offline`, and never when this is off.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn rotate_refresh_tokens(mut self, yes: bool) -> Self {
        self.rotate_refresh_tokens = yes;
        self
    }

    /// Whether presenting a spent refresh token revokes its whole family (default `true`,
    /// RFC 9700 §4.14.2): every access and refresh token descended from that authorization.
    /// Either way the spent token itself is refused. None of the providers' documents mentions
    /// this; the mock does it in every dialect so that a racing client fails loudly.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
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
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn previous_refresh_token_grace(mut self, yes: bool) -> Self {
        self.previous_refresh_token_grace = Some(yes);
        self
    }

    /// Delay of every answer of the token endpoint (default none).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn token_latency(mut self, latency: Duration) -> Self {
        self.token_latency = latency;
        self
    }

    /// Delay of every answer of the API (default none).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn api_latency(mut self, latency: Duration) -> Self {
        self.api_latency = latency;
        self
    }

    /// The clock that decides access-token expiry and the refresh-token grace (default the system
    /// clock); pass a clone of a [`ManualClock`](crate::ManualClock) to expire tokens without
    /// sleeping.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
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
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn client_credentials(mut self, id: &str, secret: &str) -> Self {
        self.client = Some((id.to_owned(), ClientSecret::new(secret)));
        self
    }

    /// Registers a public key, as a JWK (RFC 7517: an EC P-256 or an RSA key, as
    /// [`ClientAssertionKey::public_jwk`](crate::ClientAssertionKey::public_jwk) gives it), with
    /// which client `client_id` signs its `private_key_jwt` assertions (feature
    /// `private-key-jwt`; [`Dialect::Standard`] only). Call it again to register more keys; a
    /// JWK's `kid`, if it has one, must match the assertion's.
    ///
    /// Once a key is registered, the token endpoint requires client authentication. An
    /// assertion is accepted when its `client_assertion_type` is RFC 7523's, it is signed by a
    /// registered key of its issuer with the `alg` of that key, `iss` and `sub` are the client id
    /// (and so is `client_id`, if sent), `aud` is the token endpoint's URL, `exp` has not passed
    /// on the provider's clock, `iat` is at most a minute ahead of it, it lives 10 minutes at
    /// most, and its `jti` was never presented before. Anything else gets
    /// `400 {"error":"invalid_client"}` saying which check failed; an assertion together with a
    /// client secret or an `Authorization` header gets `400 invalid_request`.
    ///
    /// # Panics
    ///
    /// If `jwk` is not an EC P-256 or RSA public key: the panic says why.
    #[cfg(feature = "private-key-jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn client_key(mut self, client_id: &str, jwk: &serde_json::Value) -> Self {
        match assertion::ClientKey::from_jwk(client_id, jwk) {
            Ok(key) => self.client_keys.push(key),
            Err(why) => panic!("the client key for {client_id:?} is not usable: {why}"),
        }
        self
    }

    /// Turns DPoP on (RFC 9449; feature `dpop`). Every token request must carry a valid DPoP
    /// proof, and the tokens it gets are bound to the proof's key (`token_type` `DPoP`; the mock
    /// keeps the key's thumbprint as the tokens' `cnf.jkt`); a bound refresh token is refused
    /// (`400 invalid_grant`) with a proof of another key. The API takes a bound token only as
    /// `Authorization: DPoP <token>` with a proof of its key; unbound tokens still work as bearer
    /// tokens ([`MockProvider::issue_tokens`]).
    ///
    /// A proof is valid when it is the request's only `DPoP` header, a JWT with `typ`
    /// `dpop+jwt`, `alg` `ES256` and a public P-256 `jwk` that verifies its signature, whose
    /// `htm` is the request's method and `htu` its URL without query and fragment, whose `iat`
    /// is at most 60 seconds ahead of the provider's clock and 5 minutes behind it, whose `ath`
    /// (on API requests only) is the hash of the access token presented, and whose `jti` was
    /// never seen before. Anything else gets `invalid_dpop_proof`: `400` at the token endpoint,
    /// `401` with `WWW-Authenticate: DPoP error="invalid_dpop_proof"` at the API. A bound token
    /// with a proof of another key, or sent as a bearer token, gets `401` with
    /// `WWW-Authenticate: DPoP error="invalid_token"`. [`ProviderStats`] counts the proofs, the
    /// `jti`s, replays, nonces and demands for them.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn dpop(mut self) -> Self {
        self.dpop.get_or_insert_default();
        self
    }

    /// Turns DPoP on ([`dpop`](Self::dpop)) with server nonces (RFC 9449 §8, §9): the token
    /// endpoint (`at_token_endpoint`) and the API (`at_api`) demand the mock's current nonce in
    /// each proof. A proof without it gets `400 {"error":"use_dpop_nonce"}` from the token
    /// endpoint, `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` from the API. Once
    /// made (at the first demand), the current nonce is sent as `DPoP-Nonce` on every answer
    /// of both; [`MockProvider::rotate_dpop_nonce`] replaces it. One nonce serves both, since
    /// they share an origin.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn dpop_nonces(mut self, at_token_endpoint: bool, at_api: bool) -> Self {
        let config = self.dpop.get_or_insert_default();
        config.nonce_at_token_endpoint = at_token_endpoint;
        config.nonce_at_api = at_api;
        self
    }

    /// Sets a member of the metadata document (see [`MockProvider::issuer`]), replacing the
    /// mock's own value or adding one it does not have: a `revocation_endpoint`,
    /// `dpop_signing_alg_values_supported`, or a wrong `issuer` to see a client refuse it.
    /// `Value::Null` removes the member: `code_challenge_methods_supported`, say, to see an MCP
    /// client refuse a server that does not list PKCE.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn metadata_field(mut self, name: &str, value: serde_json::Value) -> Self {
        self.metadata_fields.push((name.to_owned(), value));
        self
    }

    /// Makes the API a protected resource (RFC 9728) whose identifier is `{uri}{path}`
    /// ([`MockProvider::resource`]; `path` such as `/api/mcp`, an MCP endpoint the API serves
    /// like any path under `/api/`; default `/api`). Its metadata document, `{"resource":
    /// "{uri}{path}", "authorization_servers": ["{uri}"], "bearer_methods_supported":
    /// ["header"]}` and whatever [`protected_resource_field`](Self::protected_resource_field) set,
    /// is served at `{uri}/.well-known/oauth-protected-resource{path}`
    /// ([`MockProvider::resource_metadata_url`]) and at `{uri}/.well-known/oauth-protected-resource`,
    /// the two places the MCP authorization specification looks; and every `401` of the API
    /// names it, as an MCP server's does: `WWW-Authenticate: Bearer realm="mock",
    /// resource_metadata="..."` (with `error="invalid_token"` for a rejected token; in the
    /// dialects whose 401 has no challenge, `Bearer resource_metadata="..."` alone). Counted in
    /// [`ProviderStats::resource_metadata_served`].
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn protected_resource(mut self, path: &str) -> Self {
        let path = path.trim_end_matches('/');
        self.resource.path =
            if path.is_empty() || path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
        self.resource.metadata = true;
        self
    }

    /// Sets a member of the protected resource metadata document (see
    /// [`protected_resource`](Self::protected_resource), which this turns on), replacing the
    /// mock's own value or adding one: `scopes_supported`, or another `resource` or
    /// `authorization_servers` to see a client refuse them.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn protected_resource_field(mut self, name: &str, value: serde_json::Value) -> Self {
        self.resource.metadata = true;
        self.resource.fields.push((name.to_owned(), value));
        self
    }

    /// Requires resource indicators (RFC 8707; default off): every token request (code
    /// exchange, refresh, client credentials) and authorization request must carry `resource`
    /// set to [`MockProvider::resource`], once, and nothing else. A token request without it, or
    /// with another, gets `400 {"error":"invalid_target"}` (RFC 8707 §2), after client
    /// authentication and before the grant is looked at (a refresh token is not spent); an
    /// authorization request is sent back to its redirect URI with `error=invalid_target`.
    /// Counted in [`ProviderStats::invalid_targets`]; requests that carry a resource, required
    /// or not, in [`ProviderStats::resource_indicators`].
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn require_resource_indicator(mut self, yes: bool) -> Self {
        self.resource.required = yes;
        self
    }

    /// Serves an MCP server (default off) at `{uri}/api/mcp` ([`MockProvider::mcp_url`]): the
    /// protected resource (as [`protected_resource("/api/mcp")`](Self::protected_resource) makes
    /// it, its metadata served and named by every `401`), speaking the Model Context Protocol's
    /// streamable HTTP transport behind the API's token check.
    ///
    /// `initialize` opens a session (`Mcp-Session-Id` in the answer, required on every later
    /// message: `400` without it, `404` for an unknown or deleted one); a request gets its answer
    /// as one server-sent event, a notification `202`; `GET` gets `405`, `DELETE` ends the
    /// session; a `POST` that does not accept both `application/json` and `text/event-stream`
    /// gets `406`. Methods: `ping`, `tools/list` and `tools/call` of the one tool [`MCP_TOOL`],
    /// which answers with its `text` argument. Counted in [`ProviderStats::mcp_sessions`] and
    /// [`mcp_messages`](ProviderStats::mcp_messages).
    ///
    /// ```
    /// use reqwest_token_refresh::testkit::MockProvider;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), reqwest::Error> {
    /// let provider = MockProvider::builder().mcp_server().start().await;
    /// let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    ///     "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "doc", "version": "1"}}});
    /// let post = || {
    ///     reqwest::Client::new()
    ///         .post(provider.mcp_url())
    ///         .header("accept", "application/json, text/event-stream")
    ///         .header("content-type", "application/json")
    ///         .body(initialize.to_string())
    /// };
    ///
    /// // Without a token: the 401 names where to start (RFC 9728).
    /// let answer = post().send().await?;
    /// assert_eq!(answer.status(), 401);
    /// let challenge = answer.headers()["www-authenticate"].to_str().unwrap();
    /// assert!(challenge.contains(&format!("resource_metadata=\"{}\"", provider.resource_metadata_url())));
    ///
    /// // With one: a session, and the answer as a server-sent event.
    /// let tokens = provider.issue_tokens();
    /// let answer = post().bearer_auth(tokens.access_token().secret()).send().await?;
    /// assert!(answer.headers().contains_key("mcp-session-id"));
    /// assert!(answer.text().await?.starts_with("event: message\ndata: {"));
    /// assert_eq!(provider.stats().mcp_sessions, 1);
    /// # Ok(()) }
    /// ```
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn mcp_server(self) -> Self {
        let mut builder = self.protected_resource(mcp::MCP_PATH);
        builder.mcp = true;
        builder
    }

    /// Serves dynamic client registration (RFC 7591; default off): `POST` JSON client metadata
    /// to [`MockProvider::registration_url`], named `registration_endpoint` in the metadata
    /// document. A registration needs `redirect_uris`, absolute URLs without fragments, when its
    /// `grant_types` (default `authorization_code`) include `authorization_code`, and otherwise
    /// gets `400 invalid_redirect_uri`; grant types the dialect does not serve, a response type
    /// other than `code`, or a `token_endpoint_auth_method` other than `client_secret_basic`
    /// (the default), `client_secret_post` or `none` get `400 invalid_client_metadata`. Else it
    /// is answered `201` with the metadata as registered and `client_id`, `client_secret` (none
    /// for `none`), `client_id_issued_at` and `client_secret_expires_at` (`0`, unless
    /// [`registration_secret_lifetime`](Self::registration_secret_lifetime) is set).
    ///
    /// From then on a registered client authenticates at the token and revocation endpoints
    /// with its secret, the way it registered (`client_secret_basic`: HTTP Basic only), and a
    /// public one with its `client_id` in the body; an unknown client, a wrong secret, another
    /// method, an expired secret or a [revoked](MockProvider::revoke_registration) registration
    /// gets `401 invalid_client`, as a client the builder names
    /// ([`client_credentials`](Self::client_credentials), still accepted) would. The
    /// authorization endpoint takes a registered `client_id` only with a `redirect_uri` it
    /// registered. Counted in [`ProviderStats::registrations`] and
    /// [`invalid_clients`](ProviderStats::invalid_clients).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn dynamic_registration(mut self) -> Self {
        self.registration.get_or_insert_default();
        self
    }

    /// Turns on [`dynamic_registration`](Self::dynamic_registration) with secrets that expire
    /// `lifetime` after registration, by the provider's clock (`client_secret_expires_at`, in
    /// whole seconds); from then on the token endpoint refuses them with `401 invalid_client`.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn registration_secret_lifetime(mut self, lifetime: Duration) -> Self {
        self.registration.get_or_insert_default().secret_lifetime = Some(lifetime);
        self
    }

    /// Takes clients identified by the URL of their metadata document (OAuth Client ID Metadata
    /// Documents, as the MCP authorization specification uses them; default off; see
    /// [`ClientMetadataDocument`](crate::ClientMetadataDocument)), and says so in the metadata
    /// document (`client_id_metadata_document_supported: true`).
    ///
    /// An authorization request whose `client_id` is an `http` or `https` URL has that URL
    /// checked by the draft's rules (`https` or loopback `http`, a path, no dot segment,
    /// fragment or credentials) and the document fetched over HTTP, without following
    /// redirects, within 5 seconds and 5 KiB. The document must be a JSON object whose
    /// `client_id` is the URL (compared as strings), with `redirect_uris` listing the request's
    /// redirect URI, `token_endpoint_auth_method` `none` and no `client_secret`; anything else is
    /// refused with the authorization endpoint's error page (`400`, never a redirect). A valid
    /// document is kept, and not fetched again; a refused one is fetched again next time. The
    /// token and revocation endpoints take such a client, with its `client_id` in the body and
    /// no secret, only once its document was fetched; else `401 invalid_client`. Fetches are
    /// counted in [`ProviderStats::client_metadata_fetches`]. Serve the documents from another
    /// server than the provider (a [`MockServer`] of the test's): the provider answers nothing
    /// while it fetches.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn client_id_metadata_documents(mut self) -> Self {
        self.client_id_metadata_documents = true;
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
            #[cfg(feature = "private-key-jwt")]
            client_keys: self.client_keys,
            issuer: server.uri(),
            metadata_fields: self.metadata_fields,
            resource: self.resource,
            registration: self.registration,
            mcp: self.mcp,
            client_id_metadata_documents: self.client_id_metadata_documents,
            #[cfg(feature = "dpop")]
            dpop: self.dpop,
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
        let authorize = Endpoint { shared: Arc::clone(&shared), latency: self.api_latency };
        Mock::given(method("GET"))
            .and(path(dialect.authorize_path()))
            .respond_with(AuthorizeEndpoint(authorize))
            .with_priority(MOUNT_PRIORITY)
            .named("mock provider: authorization endpoint")
            .mount(&server)
            .await;
        if dialect == Dialect::Withings {
            let signature = Endpoint { shared: Arc::clone(&shared), latency: self.token_latency };
            Mock::given(method("POST"))
                .and(path(signature::SIGNATURE_PATH))
                .respond_with(signature::SignatureEndpoint(signature))
                .with_priority(MOUNT_PRIORITY)
                .named("mock provider: Withings signature service")
                .mount(&server)
                .await;
        }
        if dialect == Dialect::Standard {
            let revocation = Endpoint { shared: Arc::clone(&shared), latency: self.token_latency };
            Mock::given(method("POST"))
                .and(path(revocation::REVOCATION_PATH))
                .respond_with(revocation::RevocationEndpoint(revocation))
                .with_priority(MOUNT_PRIORITY)
                .named("mock provider: revocation endpoint")
                .mount(&server)
                .await;
        }
        if shared.config.registration.is_some() {
            let registration = Endpoint { shared: Arc::clone(&shared), latency: self.token_latency };
            Mock::given(method("POST"))
                .and(path(registration::REGISTRATION_PATH))
                .respond_with(registration::RegistrationEndpoint(registration))
                .with_priority(MOUNT_PRIORITY)
                .named("mock provider: registration endpoint")
                .mount(&server)
                .await;
        }
        for well_known in [metadata::OAUTH_METADATA_PATH, metadata::OPENID_METADATA_PATH] {
            let metadata = Endpoint { shared: Arc::clone(&shared), latency: self.api_latency };
            Mock::given(method("GET"))
                .and(path(well_known))
                .respond_with(metadata::MetadataEndpoint(metadata))
                .with_priority(MOUNT_PRIORITY)
                .named("mock provider: metadata document")
                .mount(&server)
                .await;
        }
        if shared.config.resource.metadata {
            let inserted = format!("{}{}", resource::PROTECTED_RESOURCE_WELL_KNOWN, shared.config.resource.path);
            let mut paths = vec![resource::PROTECTED_RESOURCE_WELL_KNOWN.to_owned()];
            if inserted != paths[0] {
                paths.push(inserted);
            }
            for well_known in paths {
                let metadata = Endpoint { shared: Arc::clone(&shared), latency: self.api_latency };
                Mock::given(method("GET"))
                    .and(path(well_known.as_str()))
                    .respond_with(resource::ResourceMetadataEndpoint(metadata))
                    .with_priority(MOUNT_PRIORITY)
                    .named("mock provider: protected resource metadata")
                    .mount(&server)
                    .await;
            }
        }
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

    /// The issuer identifier, the same as [`uri`](Self::uri): its metadata document (RFC 8414
    /// §2) is served at `{uri}/.well-known/oauth-authorization-server` and, for OpenID Connect
    /// clients, at `{uri}/.well-known/openid-configuration`, with `issuer`, `token_endpoint`,
    /// `authorization_endpoint`, `revocation_endpoint` (in the standard dialect, which serves
    /// one), `token_endpoint_auth_methods_supported` (the dialect's: Basic
    /// and the body in the standard one, plus `private_key_jwt` once a
    /// [client key](MockProviderBuilder::client_key) is registered), `grant_types_supported`,
    /// `response_types_supported` and `code_challenge_methods_supported`,
    /// `client_id_metadata_document_supported` once
    /// [`client_id_metadata_documents`](MockProviderBuilder::client_id_metadata_documents) is on,
    /// and whatever
    /// [`metadata_field`](MockProviderBuilder::metadata_field) set. Read it with
    /// [`Discovery`](crate::Discovery).
    pub fn issuer(&self) -> String {
        self.shared.config.issuer.clone()
    }

    /// The API's resource identifier (RFC 8707, RFC 9728): `{uri}{path}`, the path given to
    /// [`MockProviderBuilder::protected_resource`] (default `{uri}/api`). What
    /// [`require_resource_indicator`](MockProviderBuilder::require_resource_indicator) requires,
    /// and the `resource` of the protected resource metadata.
    pub fn resource(&self) -> String {
        self.shared.resource()
    }

    /// Where the protected resource metadata is served (see
    /// [`MockProviderBuilder::protected_resource`]):
    /// `{uri}/.well-known/oauth-protected-resource{path}`, the URL the API's 401 names.
    pub fn resource_metadata_url(&self) -> String {
        self.shared.resource_metadata_url()
    }

    /// Withings' signature service, `{uri}/v2/signature`, served in [`Dialect::Withings`] only:
    /// `action=getnonce` with `client_id`, `timestamp` (within ten minutes of the provider's
    /// clock) and the HMAC-SHA256 `signature` of `getnonce,{client_id},{timestamp}` keyed by the
    /// client secret gets `{"status":0,"body":{"nonce":"..."}}`. A token call may then send
    /// `nonce` and the `signature` of `{action},{client_id},{nonce}` instead of its client secret;
    /// each nonce works once, within 30 minutes. A bad signature, an unknown, used or expired
    /// nonce, or a signature with a `client_secret` besides, gets Withings' `status` 503
    /// (`Invalid Params: ...`). Point a grant at it with
    /// `ClientAuth::WithingsSignature(WithingsSignature::new(provider.signature_url()))`.
    pub fn signature_url(&self) -> String {
        format!("{}{}", self.uri(), signature::SIGNATURE_PATH)
    }

    /// The token revocation endpoint (RFC 7009), `{uri}/oauth/revoke`, served in
    /// [`Dialect::Standard`] only (none of the other dialects' providers documents one) and named
    /// `revocation_endpoint` in its metadata document. It takes a form body with `token` (and an
    /// optional `token_type_hint`), authenticates the client as the token endpoint does (wrong
    /// credentials: `401 invalid_client`), and answers `200 {}`: a refresh token's whole family
    /// is revoked (a later refresh with it gets `invalid_grant`, the API answers `401` to its
    /// access tokens), an access token alone stops working; an unknown or already revoked token
    /// is answered 200 too (RFC 7009 §2.2). Calls are counted
    /// ([`ProviderStats::revocation_calls`], [`tokens_revoked`](ProviderStats::tokens_revoked)),
    /// kept ([`revocation_requests`](Self::revocation_requests)) and can be made to fail
    /// ([`fail_next_revocation_calls`](Self::fail_next_revocation_calls)). Point a grant at it with
    /// [`RefreshTokenGrant::revocation_url`](crate::RefreshTokenGrant::revocation_url).
    pub fn revocation_url(&self) -> String {
        format!("{}{}", self.uri(), revocation::REVOCATION_PATH)
    }

    /// The dynamic client registration endpoint (RFC 7591), `{uri}/register`, served once
    /// [`MockProviderBuilder::dynamic_registration`] turns it on (and named
    /// `registration_endpoint` in the metadata document then).
    pub fn registration_url(&self) -> String {
        format!("{}{}", self.uri(), registration::REGISTRATION_PATH)
    }

    /// Revokes the registration of `client_id`, as if an administrator deleted the client: its
    /// token calls and revocations get `401 invalid_client` from now on, and the authorization
    /// endpoint no longer knows it. Tokens issued to it stay as they are. Whether it was a live
    /// registered client.
    pub fn revoke_registration(&self, client_id: &str) -> bool {
        self.shared.state.lock().registrations.revoke(client_id)
    }

    /// The ids of the clients registered so far, live or revoked, in no particular order.
    pub fn registered_clients(&self) -> Vec<String> {
        self.shared.state.lock().registrations.clients.keys().cloned().collect()
    }

    /// The authorization endpoint, where a login sends the user: `{uri}/oauth/authorize`, or the
    /// dialect's path (WHOOP's `/oauth/oauth2/auth`, Kroger's `/v1/connect/oauth2/authorize`,
    /// Withings' `/oauth2_user/authorize2`). Point a grant at it with
    /// [`RefreshTokenGrant::authorize_url`](crate::RefreshTokenGrant::authorize_url).
    pub fn authorize_url(&self) -> String {
        format!("{}{}", self.uri(), self.shared.config.dialect.authorize_path())
    }

    /// Plays the user's browser: opens `authorize_url` (from [`Login::start`](crate::Login::start)),
    /// which the mock approves at once, and returns the URL it redirects back to, the login's
    /// callback with `code` and `state` (or with `error`, for a request the mock refuses).
    ///
    /// # Panics
    ///
    /// If the mock does not redirect (a missing or bad `redirect_uri`, an unknown `client_id`):
    /// the panic says why.
    pub async fn approve(&self, authorize_url: &url::Url) -> String {
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain reqwest client builds");
        let answer = browser.get(authorize_url.clone()).send().await.expect("the authorization endpoint answers");
        let status = answer.status();
        match answer.headers().get(http::header::LOCATION).and_then(|l| l.to_str().ok()) {
            Some(location) if status == StatusCode::FOUND => location.to_owned(),
            _ => panic!("the authorization endpoint refused: {status} {}", answer.text().await.unwrap_or_default()),
        }
    }

    /// The MCP server's endpoint, `{uri}/api/mcp`, when [`MockProviderBuilder::mcp_server`]
    /// turned it on (else a path of the API like any other): the URL an MCP client is given.
    pub fn mcp_url(&self) -> String {
        format!("{}{}", self.uri(), mcp::MCP_PATH)
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
            state.mint(config, family, now, with_refresh, expired, None)
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

    /// Tokens as if a user just authorized with DPoP (feature `dpop`), bound to `key`: like
    /// [`issue_tokens`](Self::issue_tokens), with `token_type` `DPoP` and the key attached
    /// ([`TokenSet::dpop_key`]), as a grant with DPoP on would get them.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub fn issue_dpop_tokens(&self, key: &crate::DpopKey) -> TokenSet {
        let config = &self.shared.config;
        let now = config.clock.now();
        let minted = {
            let mut state = self.shared.state.lock();
            let family = state.new_family(config.dialect.granted_scope().map(str::to_owned));
            state.mint(config, family, now, true, false, Some(key.thumbprint()))
        };
        let mut tokens = TokenSet::new(minted.access).with_token_type("DPoP").with_dpop_key(key.clone());
        if let Some(refresh) = minted.refresh {
            tokens = tokens.with_refresh_token(refresh);
        }
        if let Some(expires_at) = minted.expires_at {
            tokens = tokens.with_expires_at(expires_at);
        }
        tokens
    }

    /// Replaces the DPoP nonce (feature `dpop`; see [`MockProviderBuilder::dpop_nonces`]):
    /// proofs with the old one are answered `use_dpop_nonce` with the new one. Returns it.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub fn rotate_dpop_nonce(&self) -> String {
        let mut state = self.shared.state.lock();
        let state = &mut *state;
        state.dpop.rotate(&self.shared.config.token_prefix, &mut state.stats)
    }

    /// Makes the API reject every access token issued so far, as if their lifetime had passed.
    /// Refresh tokens are unaffected; tokens issued afterwards are valid.
    pub fn expire_access_tokens(&self) {
        for record in self.shared.state.lock().access.values_mut() {
            record.expired = true;
        }
    }

    /// Whether the provider's API would accept `access_token` now, counted in [`stats`](Self::stats)
    /// as a call to its API. For a resource server of your own in front of the mock (a gRPC
    /// service, say) that checks tokens the way the mock's API does.
    pub fn accepts_access_token(&self, access_token: &str) -> bool {
        self.shared.admit(Some(access_token)).is_ok()
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
        check_fault(&fault);
        let mut state = self.shared.state.lock();
        state.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Answers the next `n` calls of the revocation endpoint with `fault` instead of handling
    /// them, as [`fail_next_token_calls`](Self::fail_next_token_calls) does for the token endpoint:
    /// [`Fault::Status`], [`Fault::RateLimited`] (a `429`; RFC 7009 §2.2.1's `503` with
    /// `Retry-After` is a [`Fault::Body`] away) and [`Fault::Body`] answer as there;
    /// [`Fault::LoseAnswer`] revokes and withholds the answer; [`Fault::InvalidGrant`], which means
    /// nothing to a revocation, answers `500`.
    ///
    /// # Panics
    ///
    /// As [`fail_next_token_calls`](Self::fail_next_token_calls).
    pub fn fail_next_revocation_calls(&self, n: usize, fault: Fault) {
        check_fault(&fault);
        let mut state = self.shared.state.lock();
        state.revocation_faults.extend(std::iter::repeat_n(fault, n));
    }

    /// The requests the revocation endpoint received, oldest first, faulted ones included.
    pub fn revocation_requests(&self) -> Vec<Request> {
        self.shared.state.lock().revocation_requests.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProviderStats {
        self.shared.state.lock().stats
    }
}

/// Checks an injected fault here, because a panic inside the server would hang the test instead.
fn check_fault(fault: &Fault) {
    if let Fault::Status(status) | Fault::Body { status, .. } = fault {
        assert!(StatusCode::from_u16(*status).is_ok(), "{status} is not an HTTP status");
    }
    if let Fault::Body { content_type, .. } = fault {
        assert!(HeaderValue::from_str(content_type).is_ok(), "bad content type {content_type:?}");
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
    /// Public keys for `private_key_jwt`, by client.
    #[cfg(feature = "private-key-jwt")]
    client_keys: Vec<assertion::ClientKey>,
    /// The server's URI, `http://127.0.0.1:PORT`: its issuer identifier.
    issuer: String,
    /// Members set on or added to the metadata document.
    metadata_fields: Vec<(String, serde_json::Value)>,
    /// The API as a protected resource, and the resource-indicator checks.
    resource: resource::ResourceConfig,
    /// Dynamic client registration, when served.
    registration: Option<registration::RegistrationConfig>,
    /// Whether the resource's path serves MCP.
    mcp: bool,
    /// Whether clients may be named by the URL of their metadata document.
    client_id_metadata_documents: bool,
    /// DPoP mode, and where nonces are demanded.
    #[cfg(feature = "dpop")]
    dpop: Option<dpop::DpopConfig>,
}

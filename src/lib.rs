//! A [reqwest-middleware] layer that keeps an OAuth 2.0 bearer token fresh for the
//! `reqwest::Client` you already have.
//!
//! It attaches the token, notices when the server rejects it (401 `invalid_token`), refreshes it
//! **once** however many requests failed at that moment, retries each of them once with the new
//! token, and stops cleanly with [`Error::ReauthorizationRequired`] when the refresh token itself
//! is dead (400 `invalid_grant`). It also refreshes ahead of expiry and saves rotated refresh
//! tokens before using them.
//!
//! ```no_run
//! use std::time::Duration;
//! use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh, TokenSet};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = TokenRefresh::builder(
//!         RefreshTokenGrant::new("https://provider.example/oauth/token")
//!             .client_id("id")
//!             .client_secret("secret"),
//!     )
//!     .initial_tokens(
//!         TokenSet::new("access")
//!             .with_refresh_token("refresh")
//!             .with_expires_in(Duration::from_secs(3600)),
//!     )
//!     .allow_origin("https://api.provider.example")
//!     .build()?;
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.clone())
//!     .build();
//!
//! let response = client.get("https://api.provider.example/v1/me").send().await?;
//! println!("{} after {} token calls", response.status(), auth.stats().refreshes);
//! # Ok(()) }
//! ```
//!
//! # One refresh per expiry
//!
//! Every published token carries a generation number. When 200 requests come back 401 with the
//! same expired token, the first starts a refresh and the other 199 wait for it; a 401 that
//! arrives after the refresh finished (it was sent with the old generation) is retried with the
//! new token at once. Requests that start while the refresh runs are not sent with the token the
//! server rejected: they wait for the new one (and go out with the old one after all should the
//! refresh fail). The refresh runs in its own task: dropping any request, even the one that
//! started it, neither cancels it nor strands the others. Each request is retried at most once; a
//! second 401 goes back to the caller as the server sent it.
//!
//! This matters because a refresh is not idempotent. Providers that rotate refresh tokens accept
//! each one exactly once, and one that detects reuse revokes the whole token family (RFC 9700
//! §4.14.2): two parallel refreshes can log the user out of every replica at once.
//!
//! # Terminal errors
//!
//! A 400 `invalid_grant` (also codes added with [`TokenRefreshBuilder::terminal_error`], and any
//! other 400 that is not a retryable error) means the user must authorize again. The layer
//! re-reads the store first (another process may have rotated the token), then moves the key to
//! [`TokenState::ReauthorizationRequired`]: every request for it fails fast with
//! [`Error::ReauthorizationRequired`], without a network call, until [`TokenRefresh::set_tokens`]
//! installs new tokens, or another process saves new ones to a shared store (a dead key looks
//! again every [`TokenRefreshBuilder::terminal_recheck`]). `invalid_client` and
//! `unauthorized_client` are just as terminal, but the client's fault, not the user's:
//! [`Error::ClientRejected`], with its own hook. Network errors, timeouts, 5xx and 429 are
//! transient: that refresh's waiters get [`Error::Refresh`], and the next refresh waits out a
//! short backoff or the server's `Retry-After`. A refresh that does not finish within
//! [`TokenRefreshBuilder::flight_deadline`] (a token source that never answers) is transient too.
//!
//! Errors reach the caller as `reqwest_middleware::Error::Middleware`; get ours back with
//! [`Error::from_middleware`]:
//!
//! ```
//! # async fn run(client: reqwest_middleware::ClientWithMiddleware) {
//! use reqwest_token_refresh::Error;
//!
//! match client.get("https://api.provider.example/v1/me").send().await {
//!     Ok(response) => println!("{}", response.status()),
//!     Err(err) => match Error::from_middleware(&err) {
//!         Some(Error::ReauthorizationRequired { key, .. }) => println!("send {key} to the login page"),
//!         Some(other) => println!("try again later: {other}"),
//!         None => println!("network: {err}"),
//!     },
//! }
//! # }
//! ```
//!
//! # Many users
//!
//! Put a [`TokenKey`] on a request to choose whose tokens it uses. Each key has its own token,
//! generation, single flight and terminal state; requests without a key use
//! [`TokenKey::default()`].
//!
//! # Refresh ahead
//!
//! By default a token is refreshed when a request finds it inside the skew window
//! ([`TokenRefreshBuilder::refresh_skew`]), and that request (with any others of its key
//! meanwhile) waits for the refresh. With [`TokenRefreshBuilder::refresh_ahead`], keys in use are
//! refreshed in the background instead, at a random point before their window opens, so that no
//! request waits: one timer for all keys, keys idle longer than [`RefreshAhead::idle`] left to the
//! on-demand path (dormant users cost nothing), and each background refresh an ordinary one
//! through the same single flight and store lock. [`Stats::waited`] counts the requests that did
//! wait.
//!
//! # Stores
//!
//! Every new token set is saved to the layer's [`TokenStore`] before any request uses it, and
//! tokens already in the store win over [`TokenRefreshBuilder::initial_tokens`] at start-up.
//! [`MemoryStore`] is the default; [`FileStore`] keeps tokens in a file (atomic writes, mode
//! 0600) and shares one refresh between the processes of a machine through an OS lock. A store
//! with a lock ([`TokenStore::lock`]) is re-read under it before each refresh, so a process adopts
//! tokens another one saved instead of spending a rotated refresh token twice. Every save names
//! the store [`Revision`] it replaces, so no late save overwrites a newer set. If a save fails,
//! the new tokens are used anyway (the old refresh token is already spent), the failure is
//! reported through [`TokenRefreshBuilder::on_store_error`] and [`Stats::store_failures`], and
//! the save is retried.
//!
//! # Providers
//!
//! [`providers`] has grants set up for WHOOP, the WHOOP Partner API, Kroger and Withings, each
//! complete: its token endpoint and dialect (Withings' `{"status":0,"body":{..}}` envelope
//! included), its API's origin, and Withings' way of rejecting a token in an HTTP 200, so that
//! `TokenRefresh::builder(providers::withings(id, secret)).build()` needs nothing more. With the
//! `testkit` feature, `testkit::MockProvider` is a rotating mock provider to test your own code
//! against.
//!
//! # Client authentication
//!
//! A grant authenticates the client with HTTP Basic ([`ClientAuth::Basic`], the default) or
//! with its id and secret in the body ([`ClientAuth::RequestBody`]). With the feature
//! `private-key-jwt`, `ClientAuth::PrivateKeyJwt` sends no secret at all: each token request
//! (a refresh, a client-credentials grant, a [`Login`]'s code exchange) carries a JWT signed for
//! it alone with the client's ES256 or RS256 key (RFC 7523), which is what enterprise identity
//! providers ask of confidential clients:
//!
//! ```
//! # #[cfg(feature = "private-key-jwt")]
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_token_refresh::{ClientAssertionKey, ClientAuth, ClientCredentials, TokenRefresh};
//!
//! # let pem = include_str!("../tests/keys/rs256.pem");
//! // let pem = std::fs::read_to_string("/run/secrets/client-key.pem")?;
//! let key = ClientAssertionKey::from_pem(pem)?.with_key_id("2026-01");
//! println!("register this public key: {}", key.public_jwk());
//! let grant = ClientCredentials::new("https://login.example/oauth2/v1/token")
//!     .client_id("reporting-service")
//!     .client_auth(ClientAuth::PrivateKeyJwt(key))
//!     .api_origin("https://api.example");
//! let auth = TokenRefresh::builder(grant).build()?;
//! # Ok(()) }
//! # #[cfg(feature = "private-key-jwt")]
//! # run().unwrap();
//! ```
//!
//! # DPoP
//!
//! With the feature `dpop`, a grant binds its tokens to a key the client holds (RFC 9449):
//! `RefreshTokenGrant::dpop` with a `DpopKey`, or `dpop_generated()` for a fresh key per grant
//! of tokens. Each token request carries a proof signed for it alone, and so does each request to
//! the API: `Authorization: DPoP <token>` and a `DPoP` proof with its method, URL and a hash of
//! the token. A server's nonce is met with one resend and remembered for its origin, and a
//! rejected token is refreshed once for every request that held it, as for bearer tokens. The key
//! is saved with the tokens in the store (`TokenSet`'s `dpop_key`, never shown in `Debug`), so a
//! restart refreshes with the same key; a DPoP-bound token set whose key is lost is terminal
//! (`DpopError::KeyLost`).
//!
//! A proof is signed for one request to one URL. Give a DPoP client's `reqwest::Client` a
//! redirect policy that does not follow redirects (`reqwest::redirect::Policy::none()`):
//! reqwest drops `Authorization` on a redirect to another host but not the `DPoP` header, and a
//! proof for the first URL is refused by the second. For the same reason a retrying middleware
//! belongs outside this layer, never inside it, where it would send one proof twice.
//!
//! ```
//! # #[cfg(all(feature = "testkit", feature = "dpop"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_token_refresh::testkit::MockProvider;
//! use reqwest_token_refresh::{DpopKey, RefreshTokenGrant, TokenRefresh};
//!
//! // A provider that checks every proof and demands a nonce at its API.
//! let provider = MockProvider::builder().dpop_nonces(false, true).start().await;
//! let key = DpopKey::generate()?;
//! let grant = RefreshTokenGrant::new(provider.token_url()).api_origin(provider.uri()).dpop(key.clone());
//! let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_dpop_tokens(&key)).build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
//!
//! provider.expire_access_tokens();
//! let response = client.get(provider.api_url("v1/me")).send().await?;
//!
//! assert_eq!(response.status(), 200, "the nonce met, the token refreshed, the request sent again");
//! assert_eq!((auth.stats().nonce_retries, auth.stats().refreshes), (1, 1));
//! assert_eq!(auth.tokens().unwrap().dpop_key(), Some(&key), "the new tokens are bound to the key");
//! # Ok(()) }
//! # #[cfg(not(all(feature = "testkit", feature = "dpop")))]
//! # fn main() {}
//! ```
//!
//! # Discovery
//!
//! A grant can start from the authorization server's issuer URL alone: [`Discovery`] (or
//! [`ServerMetadata::discover`]) reads its metadata (RFC 8414, falling back to OpenID Connect
//! Discovery), refuses a document that names another issuer or plain-`http` endpoints, and bounds
//! each fetch in time and size like a token call. [`ServerMetadata::refresh_token_grant`] then
//! points a grant at the token and authorization endpoints, sending the client secret the way the
//! server says it takes it.
//!
//! ```no_run
//! use reqwest_token_refresh::{ServerMetadata, TokenRefresh};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let metadata = ServerMetadata::discover("https://login.example/realms/acme").await?;
//! let grant = metadata.refresh_token_grant().client_id("id").client_secret("secret");
//! let auth = TokenRefresh::builder(grant).allow_origin("https://api.example").build()?;
//! # Ok(()) }
//! ```
//!
//! ## From a resource server's 401 (MCP)
//!
//! An MCP client knows only the server's URL. The server's first 401 names its protected
//! resource metadata (RFC 9728, `WWW-Authenticate: Bearer resource_metadata="..."`), which
//! names its authorization server: [`ProtectedResource`] (or [`ResourceMetadata::from_challenge`])
//! follows the chain, falling back to the well-known locations the MCP authorization
//! specification lists, and refuses a document about another resource, an authorization server
//! that names another issuer, plain `http` to anything but loopback, and a redirect to another
//! origin, each fetch bounded in time and size. Its grants carry the resource as an RFC 8707
//! resource indicator ([`RefreshTokenGrant::resource`]) on the login's authorize URL, the code
//! exchange and every refresh, and send the tokens to the resource's origin only. As the MCP
//! specification requires, their logins are refused ([`LoginError::PkceUnsupported`]) when the
//! authorization server's metadata does not list PKCE with `S256`
//! (`code_challenge_methods_supported`).
//!
//! ```no_run
//! use reqwest_token_refresh::{ResourceMetadata, TokenRefresh};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mcp = "https://mcp.example/mcp";
//! let first = reqwest::Client::new().post(mcp).send().await?;
//! let metadata = ResourceMetadata::from_challenge(mcp, first.headers()).await?;
//! let grant = metadata.refresh_token_grant().client_id("registered-client");
//! let (authorize_url, pending) = grant.login("http://127.0.0.1:8976/callback")?.start()?;
//! # Ok(()) }
//! ```
//!
//! ## Dynamic client registration (RFC 7591)
//!
//! A client with no credentials at that authorization server registers first:
//! [`DynamicRegistration`] posts its metadata to the server's `registration_endpoint` (bounded
//! like a metadata fetch, `https` only but for loopback) and reads a [`RegisteredClient`]. A
//! grant given it ([`RefreshTokenGrant::registered_client`]) logs the user in as that client,
//! and the tokens carry the registration ([`TokenSet::client`]): every store saves the two
//! together, and every refresh of the set authenticates with the registered id and secret, in
//! this process or the next, whatever the grant says. A registration the server revokes, or
//! whose secret expires (then not even sent), ends in [`Error::ClientRejected`];
//! [`DynamicRegistration::renew`] registers again, and a new login installs new tokens.
//!
//! ```no_run
//! use reqwest_token_refresh::{DynamicRegistration, ResourceMetadata, TokenRefresh};
//!
//! # async fn run(callback: String) -> Result<(), Box<dyn std::error::Error>> {
//! let mcp = "https://mcp.example/mcp";
//! let first = reqwest::Client::new().post(mcp).send().await?;
//! let metadata = ResourceMetadata::from_challenge(mcp, first.headers()).await?;
//! let client = DynamicRegistration::from_metadata(metadata.authorization_server())?
//!     .client_name("my agent")
//!     .redirect_uri("http://127.0.0.1:8976/callback")
//!     .register()
//!     .await?;
//! let grant = metadata.refresh_token_grant().registered_client(client);
//! let login = grant.login("http://127.0.0.1:8976/callback")?;
//! let (authorize_url, pending) = login.start()?;
//! // ... the user approves; `callback` is the URL their browser comes back with.
//! let tokens = login.exchange(&pending, &callback).await?; // tokens.client() is the registration
//! let auth = TokenRefresh::builder(grant).build()?;
//! auth.set_tokens(tokens).await?;
//! # Ok(()) }
//! ```
//!
//! ## Client ID Metadata Documents
//!
//! Where the server says so ([`ServerMetadata::client_id_metadata_document_supported`]), a
//! client needs no registration at all: its `client_id` is the `https` URL of a JSON document
//! describing it, which the server fetches when the user logs in.
//! [`ClientMetadataDocument`] checks the URL against the draft's rules, gives the document to
//! host there and the public [`RegisteredClient`] to log in as, with PKCE proving the login.
//!
//! ```no_run
//! use reqwest_token_refresh::{ClientMetadataDocument, ResourceMetadata};
//!
//! # async fn run(metadata: ResourceMetadata) -> Result<(), Box<dyn std::error::Error>> {
//! let me = ClientMetadataDocument::new("https://agent.example/oauth/client.json")
//!     .client_name("my agent")
//!     .redirect_uri("http://127.0.0.1:8976/callback");
//! let hosted = me.document()?; // serve at https://agent.example/oauth/client.json
//! assert!(metadata.authorization_server().client_id_metadata_document_supported());
//! let grant = metadata.refresh_token_grant().registered_client(me.client()?);
//! let (authorize_url, pending) = grant.login("http://127.0.0.1:8976/callback")?.start()?;
//! # Ok(()) }
//! ```
//!
//! ## The session: rmcp
//!
//! With the feature `rmcp`, `McpHttpClient` runs the MCP session itself on the official Rust
//! SDK: it is rmcp's streamable-HTTP client over a `ClientWithMiddleware`, so every request of
//! the session carries the layer's token, and a token that expires mid-session is refreshed
//! once without ending the session. `cargo run --example mcp` walks the whole path against the
//! mock provider's own MCP server (`testkit::MockProviderBuilder::mcp_server`, feature
//! `testkit`), which your tests can use too: from the bare URL's 401 to a second process that
//! shares the `FileStore` and makes no token call.
//!
//! # Beyond reqwest
//!
//! With the feature `tower`, [`TokenRefresh::layer`] wraps any tower service that sends
//! `http::Request`s (a tonic channel, hyper-util's client) with the same exchange: the same
//! tokens, single flights, stores, terminal state and counters, so a reqwest client and a tower
//! stack given clones of one `TokenRefresh` refresh once between them. gRPC refuses a dead token
//! with `grpc-status: 16`, which
//! [`token_rejected_by_headers`](TokenRefreshBuilder::token_rejected_by_headers)`(`[`grpc_unauthenticated`]`)`
//! reads from the headers alone. [`TokenRefresh::access_token`] hands the token to anything else.
//!
//! # Revocation
//!
//! [`TokenRefresh::revoke_for`] logs a user out: it revokes the key's refresh token at the
//! provider (RFC 7009, [`RefreshTokenGrant::revocation_url`], which discovery fills in), removes
//! the key's tokens from the store ([`TokenStore::remove`]) and leaves the key failing fast until
//! [`TokenRefresh::set_tokens_for`]. A provider that refuses leaves everything as it was
//! ([`Error::Revocation`]).
//!
//! # Security
//!
//! - Only the allowed origins get the token: those the token source names
//!   ([`TokenSource::resource_server`]; each provider preset names its API's) and those added
//!   with [`TokenRefreshBuilder::allow_origin`]. Requests to others pass through untouched and
//!   never trigger a refresh. A layer that would allow no origin is refused by
//!   [`TokenRefreshBuilder::build`]; sending the token to every `https` origin takes an explicit
//!   [`TokenRefreshBuilder::allow_any_origin`].
//! - The token never goes over plain `http://` except to loopback, unless
//!   [`TokenRefreshBuilder::allow_insecure_http`] says so.
//! - A request that already has an `Authorization` header, or carries [`SkipAuth`], is left alone.
//! - Only the token's own answers count: after a redirect to another origin (where reqwest drops
//!   the token), that origin's 401 is handed back as it came and refreshes nothing.
//! - Reading an answer to classify it is bounded in bytes ([`CLASSIFY_BODY_LIMIT`]) and in time
//!   ([`CLASSIFY_BODY_TIMEOUT`]): a body that stalls does not hang the request.
//! - The `Authorization` header is marked sensitive; no token or secret appears in any `Debug`,
//!   `Display`, error or `tracing` output, even when a provider echoes one back in an error
//!   ([`RefreshError::redact`]).
//! - The token endpoint is called with the crate's own `reqwest::Client`, which never passes
//!   through this middleware and follows no redirects.
//!
//! # The contract
//!
//! What the layer promises, point by point ("contract point N" in the code and tests), is in the
//! repository's `docs/CONTRACT.md`, each point with the tests that pin it.
//!
//! [reqwest-middleware]: https://docs.rs/reqwest-middleware
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, missing_debug_implementations)]
// A builder-style method that takes `self` and returns `Self` says `#[must_use]`: otherwise
// `store.clone().table("..");` compiles and silently changes nothing.
#![deny(clippy::return_self_not_must_use)]
#![forbid(unsafe_code)]

mod builder;
mod cache;
mod challenge;
mod clock;
mod credential;
#[cfg(feature = "dpop")]
mod dpop;
mod error;
mod event;
mod exchange;
#[cfg(any(feature = "private-key-jwt", feature = "dpop"))]
mod jws;
mod kept;
mod key;
#[cfg(feature = "rmcp")]
mod mcp;
mod middleware;
mod origin;
mod peek;
mod policy;
#[cfg(test)]
mod proptests;
mod registered_client;
mod revoke;
mod source;
mod stats;
mod store;
mod token;
mod token_refresh;
#[cfg(feature = "tower")]
mod tower;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use self::tower::{
    DEFAULT_REPLAY_LIMIT, ReplayBody, ResponseBody, ResponseFuture, TokenRefreshLayer, TokenRefreshService,
};
pub use builder::TokenRefreshBuilder;
pub use cache::{DEFAULT_REFRESH_AHEAD_IDLE, DEFAULT_REFRESH_AHEAD_SPREAD, RefreshAhead, TokenState};
pub use challenge::{CLASSIFY_BODY_LIMIT, CLASSIFY_BODY_TIMEOUT, RefreshOn, grpc_unauthenticated};
pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "dpop")]
#[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
pub use dpop::{DpopError, DpopKey, DpopKeyError};
pub use error::{Error, OAuthError, RefreshError, Result, StoreError};
pub use event::TokenEvent;
pub use exchange::SkipAuth;
pub use key::TokenKey;
#[cfg(feature = "rmcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "rmcp")))]
pub use mcp::McpHttpClient;
pub use policy::{
    DEFAULT_FLIGHT_DEADLINE, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_RETRY_AFTER, DEFAULT_MIN_BACKOFF,
    DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_REFRESH_SKEW, DEFAULT_TERMINAL_RECHECK,
};
pub use registered_client::{DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD, RegisteredClient};
pub use source::providers;
pub use source::{
    BodyEncoding, ClientAuth, ClientCredentials, ClientMetadataDocument, ClientMetadataError,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TOKEN_TIMEOUT, Discovery, DiscoveryError, DynamicRegistration, Login,
    LoginError, PendingLogin, ProtectedResource, RefreshTokenGrant, RegistrationError, ResourceMetadata,
    ResourceServer, ServerMetadata, TokenSource,
};
#[cfg(feature = "private-key-jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
pub use source::{
    CLIENT_ASSERTION_TYPE, ClientAssertionKey, ClientKeyError, DEFAULT_CLIENT_ASSERTION_LIFETIME, SigningAlgorithm,
};
pub use stats::Stats;
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::{
    DEFAULT_FILE_LOCK_TIMEOUT, FileStore, MemoryStore, Revision, StoreGuard, Stored, TokenStore, async_trait,
};
pub use token::{AccessToken, ClientSecret, RefreshToken, RegistrationAccessToken, TokenSet};
pub use token_refresh::TokenRefresh;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

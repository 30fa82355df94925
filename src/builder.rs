//! [`TokenRefreshBuilder`]: what a [`TokenRefresh`] is built with. It holds the cache's
//! configuration as the cache will run with it, and checks it once, in [`build`](TokenRefreshBuilder::build).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::cache::{CacheConfig, RefreshAhead};
use crate::challenge::{CLASSIFY_BODY_TIMEOUT, RefreshOn};
use crate::clock::{self, Clock};
use crate::error::{Error, RefreshError, StoreError};
use crate::key::TokenKey;
use crate::origin::OriginPolicy;
use crate::policy::Policy;
use crate::source::{HeaderRule, RejectionRule, TokenSource};
use crate::store::{MemoryStore, TokenStore};
use crate::token::{self, TokenSet};
use crate::token_refresh::TokenRefresh;

/// Builds a [`TokenRefresh`]; see [`TokenRefresh::builder`].
pub struct TokenRefreshBuilder {
    /// What the cache will run with: source, store, clock, policy, hooks. Held here rather than
    /// copied field by field.
    cache: CacheConfig,
    refresh_on: RefreshOn,
    rejected_when: Option<RejectionRule>,
    rejected_by_headers: Option<HeaderRule>,
    /// Added to the source's own ([`TokenSource::resource_server`]).
    allowed_origins: Vec<String>,
    allow_any_origin: bool,
    allow_insecure_http: bool,
    classify_timeout: Duration,
}

/// Why [`TokenRefreshBuilder::build`] refuses a layer that no origin would get the token from.
const NO_ALLOWED_ORIGIN: &str = "no origin may receive the token: call allow_origin(..) with the origin of the API \
     the token is for (such as allow_origin(\"https://api.example\")), or allow_any_origin() to send it to every \
     https origin the client calls";

impl fmt::Debug for TokenRefreshBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefreshBuilder")
            .field("source", &self.cache.source)
            .field("store", &self.cache.store)
            .field("policy", &self.cache.policy)
            .field("max_cached_keys", &self.cache.max_cached_keys)
            .field("refresh_ahead", &self.cache.refresh_ahead)
            .field("refresh_on", &self.refresh_on)
            .field("token_rejected_when", &self.rejected_when.as_ref().map(|_| "a rule"))
            .field("token_rejected_by_headers", &self.rejected_by_headers.as_ref().map(|_| "a rule"))
            .field("allowed_origins", &self.allowed_origins)
            .field("allow_any_origin", &self.allow_any_origin)
            .finish_non_exhaustive()
    }
}

impl TokenRefreshBuilder {
    pub(crate) fn new(source: Arc<dyn TokenSource>) -> Self {
        Self {
            cache: CacheConfig {
                source,
                store: Arc::new(MemoryStore::new()),
                clock: clock::system(),
                policy: Policy::default(),
                initial_tokens: None,
                max_cached_keys: None,
                on_refresh: None,
                on_reauthorization_required: None,
                on_client_rejected: None,
                on_store_error: None,
                name: None,
                on_event: None,
                refresh_ahead: None,
            },
            refresh_on: RefreshOn::default(),
            rejected_when: None,
            rejected_by_headers: None,
            allowed_origins: Vec::new(),
            allow_any_origin: false,
            allow_insecure_http: false,
            classify_timeout: CLASSIFY_BODY_TIMEOUT,
        }
    }

    /// Tokens for the default key to start from. They only seed an empty store: tokens already in
    /// the store win, so a restart never brings back a refresh token that was rotated away.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn initial_tokens(mut self, tokens: TokenSet) -> Self {
        self.cache.initial_tokens = Some(tokens);
        self
    }

    /// Where tokens are kept (default: [`MemoryStore`]).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.cache.store = Arc::new(store);
        self
    }

    /// Where tokens are kept, shared.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn store_arc(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.cache.store = store;
        self
    }

    /// How long before expiry a token is refreshed before use. Any length is fine: the window is
    /// never more than half a token's lifetime as it was fetched, and a window longer than the
    /// clock can reach counts a token with a known expiry as due for a refresh.
    ///
    /// Default: 30 seconds ([`DEFAULT_REFRESH_SKEW`](crate::DEFAULT_REFRESH_SKEW)).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn refresh_skew(mut self, skew: Duration) -> Self {
        self.cache.policy.skew = skew;
        self
    }

    /// Which 401 answers trigger a refresh (default [`RefreshOn::InvalidTokenOrNoDetail`]).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn refresh_on(mut self, refresh_on: RefreshOn) -> Self {
        self.refresh_on = refresh_on;
        self
    }

    /// For APIs that reject a token without a 401: `rule` is asked about each answer that is not
    /// a 401 and whose body may fit in [`CLASSIFY_BODY_LIMIT`](crate::CLASSIFY_BODY_LIMIT) (no `Content-Length`, or one that
    /// small), given its status and the start of its body (at most that many bytes). When it says
    /// the token was rejected, the answer is handled as a 401 that says `invalid_token`: one
    /// refresh for everyone, one retry.
    ///
    /// Reading it holds such an answer back until its first 4 KiB or its end has arrived, or
    /// [`classify_timeout`](Self::classify_timeout) has passed (the rule then sees what arrived),
    /// so set a rule only on a client for an API that answers with documents, not streams
    /// (server-sent events, long polls). Without a rule, no answer body is read unless it is a
    /// 401.
    ///
    /// The token source may carry its API's rule ([`TokenSource::resource_server`]); this one
    /// replaces it. The [`providers::withings`](crate::providers::withings) preset carries
    /// Withings' ([`providers::withings_token_rejected`](crate::providers::withings_token_rejected)):
    /// its data API answers an expired token with HTTP 200 and `{"status":401, ...}`.
    ///
    /// ```
    /// use http::StatusCode;
    /// use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh};
    ///
    /// // An API that answers a dead token with a 403 and `{"code":"token_expired"}`.
    /// let auth = TokenRefresh::builder(RefreshTokenGrant::new("https://login.example/oauth/token"))
    ///     .allow_origin("https://api.example")
    ///     .token_rejected_when(|status, body| {
    ///         status == StatusCode::FORBIDDEN && body.starts_with(br#"{"code":"token_expired""#)
    ///     })
    ///     .build()?;
    /// # Ok::<(), reqwest_token_refresh::Error>(())
    /// ```
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn token_rejected_when(mut self, rule: impl Fn(StatusCode, &[u8]) -> bool + Send + Sync + 'static) -> Self {
        self.rejected_when = Some(Arc::new(rule));
        self
    }

    /// Sets a rule that tells from an answer's status and headers alone whether it rejects the
    /// token; its body is never read for it, so the rule suits any API, streams included. When
    /// the rule says the token was rejected, the answer is handled as a 401 that says
    /// `invalid_token`: one refresh for everyone, one retry.
    ///
    /// gRPC answers a call with a dead token with HTTP 200 and `grpc-status: 16`
    /// (`UNAUTHENTICATED`) in a trailers-only answer; [`grpc_unauthenticated`](crate::grpc_unauthenticated)
    /// is that rule:
    ///
    /// ```
    /// use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh, grpc_unauthenticated};
    ///
    /// let auth = TokenRefresh::builder(RefreshTokenGrant::new("https://login.example/oauth/token"))
    ///     .allow_origin("https://grpc.example")
    ///     .token_rejected_by_headers(grpc_unauthenticated)
    ///     .build()?;
    /// # Ok::<(), reqwest_token_refresh::Error>(())
    /// ```
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn token_rejected_by_headers(
        mut self,
        rule: impl Fn(StatusCode, &http::HeaderMap) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.rejected_by_headers = Some(Arc::new(rule));
        self
    }

    /// How long to wait for the start of an answer's body when it must be read to tell whether
    /// the token was rejected, in all. When it runs out, the answer is judged by its headers and
    /// the bytes that arrived, and handed on at once with nothing lost. Zero reads only what has
    /// already arrived; [`Duration::MAX`] waits for as long as the body takes.
    ///
    /// Default: 2 seconds ([`CLASSIFY_BODY_TIMEOUT`]).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn classify_timeout(mut self, timeout: Duration) -> Self {
        self.classify_timeout = timeout;
        self
    }

    /// Lets requests to this origin (scheme, host and port, such as `https://api.example`) get
    /// the token, besides the origins the token source names ([`TokenSource::resource_server`]:
    /// each provider preset names its API's). Requests to any other origin pass through
    /// untouched and never trigger a refresh. A layer that no origin would get the token from is
    /// refused by [`build`](Self::build); see [`allow_any_origin`](Self::allow_any_origin) for
    /// the alternative.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// Lets every `https` origin the client calls get the token (and plain `http` to loopback, as
    /// always), whatever origins the token source or [`allow_origin`](Self::allow_origin) name.
    ///
    /// # A risk
    ///
    /// The token then goes to every host this client is ever pointed at: a URL built from user
    /// input, a link an API returns, a third-party service called through the same client. Any
    /// of them can read it and call the API as your user until it expires; a 401 from any of
    /// them starts a refresh. Prefer [`allow_origin`](Self::allow_origin) with the API's origin,
    /// and a separate client for other hosts; use this only for a client that calls nothing but
    /// the API, on hosts not known in advance.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn allow_any_origin(mut self) -> Self {
        self.allow_any_origin = true;
        self
    }

    /// Lets the token go over plain `http://` to hosts that are not loopback (default: never).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Adds an OAuth error code that means "re-authorization required", beyond `invalid_grant`
    /// (for providers with their own codes, such as `refresh_token_not_found`). `invalid_client`
    /// and `unauthorized_client` are terminal too, reported as [`Error::ClientRejected`].
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn terminal_error(mut self, code: impl Into<String>) -> Self {
        self.cache.policy.terminal_errors.push(code.into());
        self
    }

    /// The first cool-down after a failed refresh; it doubles with each consecutive failure up to
    /// [`max_backoff`](Self::max_backoff).
    ///
    /// Default: 500 milliseconds ([`DEFAULT_MIN_BACKOFF`](crate::DEFAULT_MIN_BACKOFF)).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn min_backoff(mut self, backoff: Duration) -> Self {
        self.cache.policy.min_backoff = backoff;
        self
    }

    /// The longest cool-down from backoff.
    ///
    /// Default: 30 seconds ([`DEFAULT_MAX_BACKOFF`](crate::DEFAULT_MAX_BACKOFF)).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.cache.policy.max_backoff = backoff;
        self
    }

    /// The longest `Retry-After` honoured; longer asks are cut to this.
    ///
    /// Default: 15 minutes ([`DEFAULT_MAX_RETRY_AFTER`](crate::DEFAULT_MAX_RETRY_AFTER)).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.cache.policy.max_retry_after = limit;
        self
    }

    /// The clock expiry and cool-downs are measured against (default: the system clock). The
    /// crate's grants read it too, unless given a clock of their own: give it once, here.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.cache.clock = Arc::new(clock);
        self
    }

    /// Called after each new token set is published (refreshed or adopted from the store).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn on_refresh(mut self, hook: impl Fn(&TokenKey, &TokenSet) + Send + Sync + 'static) -> Self {
        self.cache.on_refresh = Some(Arc::new(hook));
        self
    }

    /// Called once each time a key's grant dies and the user must authorize again
    /// ([`Error::ReauthorizationRequired`]).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn on_reauthorization_required(
        mut self,
        hook: impl Fn(&TokenKey, &RefreshError) + Send + Sync + 'static,
    ) -> Self {
        self.cache.on_reauthorization_required = Some(Arc::new(hook));
        self
    }

    /// Called when the store fails to load, save or lock (the layer goes on from memory and
    /// retries saves).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn on_store_error(mut self, hook: impl Fn(&TokenKey, &StoreError) + Send + Sync + 'static) -> Self {
        self.cache.on_store_error = Some(Arc::new(hook));
        self
    }

    /// Called once each time the token endpoint refuses the client itself (`invalid_client`,
    /// `unauthorized_client`: [`Error::ClientRejected`]): its credentials or registration are
    /// wrong, which is for an operator to fix, not a user.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn on_client_rejected(mut self, hook: impl Fn(&TokenKey, &RefreshError) + Send + Sync + 'static) -> Self {
        self.cache.on_client_rejected = Some(Arc::new(hook));
        self
    }

    /// How long one refresh may take, lock, token call and save included. A token source or store
    /// that never answers ends there with [`RefreshError::TimedOut`]; requests holding a token that
    /// is still valid are sent with it.
    ///
    /// Default: 45 seconds ([`DEFAULT_FLIGHT_DEADLINE`](crate::DEFAULT_FLIGHT_DEADLINE)).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn flight_deadline(mut self, deadline: Duration) -> Self {
        self.cache.policy.flight_deadline = deadline.max(Duration::from_millis(1));
        self
    }

    /// How soon after it was fetched a token may be rejected (401) before the layer stops
    /// answering rejections with another refresh (it doubles, up to 10 minutes, with each such
    /// token in a row). An API that rejects a token
    /// minted a moment ago rejects it for another reason (a wrong audience or scope, a replica
    /// that has not seen it yet), and a refresh per request would trip the provider's rate limit.
    /// Such rejections go back to the caller as they came, counted in
    /// [`Stats::refreshes_held_back`](crate::Stats::refreshes_held_back).
    ///
    /// Default: 30 seconds ([`DEFAULT_MIN_REFRESH_INTERVAL`](crate::DEFAULT_MIN_REFRESH_INTERVAL)).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.cache.policy.min_refresh_interval = interval;
        self
    }

    /// How often a key whose grant is dead looks in the store for tokens another process saved: a
    /// replica picks up the tokens a user installed through another replica. Between looks, its
    /// requests fail fast.
    ///
    /// Default: 5 seconds ([`DEFAULT_TERMINAL_RECHECK`](crate::DEFAULT_TERMINAL_RECHECK)).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn terminal_recheck(mut self, interval: Duration) -> Self {
        self.cache.policy.terminal_recheck = interval;
        self
    }

    /// An async hook for what happens to keys' tokens ([`TokenEvent`](crate::TokenEvent)): new
    /// tokens, a dead grant, the client refused, a store failure. Each event runs the hook's
    /// future in a task of its own, so it may take its time (write to a database, call a
    /// service) without holding up a request; the synchronous hooks run first.
    ///
    /// ```
    /// use reqwest_token_refresh::{TokenEvent, TokenRefresh, RefreshTokenGrant};
    ///
    /// # fn build() -> Result<TokenRefresh, reqwest_token_refresh::Error> {
    /// let auth = TokenRefresh::builder(RefreshTokenGrant::new("https://provider.example/token"))
    ///     .allow_origin("https://api.provider.example")
    ///     .on_event(|event| async move {
    ///         if let TokenEvent::ReauthorizationRequired { key, .. } = event {
    ///             // e.g. `UPDATE users SET must_reconnect = true WHERE id = $1`, with `key`
    ///             println!("{key} must log in again");
    ///         }
    ///     })
    ///     .build()?;
    /// # Ok(auth) }
    /// ```
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn on_event<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(crate::TokenEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.cache.on_event = Some(Arc::new(move |event| Box::pin(hook(event))));
        self
    }

    /// Names this layer in its tracing spans (the `layer` field) and, with the `metrics`
    /// feature, its metrics (the `layer` label), to tell one provider's layer from another's
    /// (default: `default`).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cache.name = Some(name.into());
        self
    }

    /// Keeps at most this many keys in memory (default: no limit), counting every key held:
    /// loaded, dead, or never loaded. Beyond it, idle keys are evicted (least recently used
    /// first, by the clock algorithm); the store keeps their tokens and an evicted key is loaded
    /// again on its next request, still dead or still cooling down if it was. Keys in use (a
    /// request, a refresh or a save retry) wait until they are idle; the default key is never
    /// evicted (it counts toward the capacity once used). What an evicted key leaves behind (that
    /// it was dead, or cooling down) is kept for as many keys again, oldest first out: past that,
    /// a dead key asked for again tries its refresh token once more.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn max_cached_keys(mut self, capacity: usize) -> Self {
        self.cache.max_cached_keys = Some(capacity);
        self
    }

    /// Refreshes keys in use in the background, before their token's skew window opens, so that
    /// no request of theirs waits for a refresh (default: off; tokens are refreshed when a request
    /// finds them inside the window, and that request waits).
    ///
    /// A key is refreshed ahead when a request used its current token and used the key again
    /// within [`RefreshAhead::idle`] of its due point, a point drawn at random from the
    /// [`RefreshAhead::spread`] before the window opens. Keys idle longer are left to the
    /// on-demand path, so dormant keys cost nothing. All keys share one timer, in one task per
    /// layer that ends when the last clone of the layer is dropped. Each background refresh is an
    /// ordinary one: the same single flight, the store's lock (replicas sharing a store refresh a
    /// key once between them: the later one adopts what the first saved), the same hooks and
    /// [`Stats`](crate::Stats) (counted in [`Stats::refreshes_ahead`](crate::Stats::refreshes_ahead)).
    /// One that fails leaves the key to the on-demand path, its still-valid token in use meanwhile.
    ///
    /// The timer runs in the tokio runtime of the first request that used a key.
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use reqwest_token_refresh::testkit::MockProvider;
    /// use reqwest_token_refresh::{RefreshAhead, RefreshTokenGrant, TokenRefresh, TokenState};
    ///
    /// // Tokens that live 4 seconds, with a 2-second skew window: refreshed ahead between 1.5 and
    /// // 2 seconds after they were issued.
    /// let provider = MockProvider::builder().access_token_lifetime(Duration::from_secs(4)).start().await;
    /// let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()))
    ///     .initial_tokens(provider.issue_tokens())
    ///     .allow_origin(provider.uri())
    ///     .refresh_skew(Duration::from_secs(2))
    ///     .refresh_ahead(RefreshAhead::new().spread(Duration::from_millis(500)))
    ///     .build()?;
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(auth.clone())
    ///     .build();
    ///
    /// assert_eq!(client.get(provider.api_url("v1/me")).send().await?.status(), 200);
    /// // In the background, before the token's skew window opens: the first token call.
    /// let refreshed = async {
    ///     while auth.stats().refreshes == 0
    ///         || matches!(auth.state(), TokenState::Refreshing { .. })
    ///     {
    ///         tokio::time::sleep(Duration::from_millis(50)).await;
    ///     }
    /// };
    /// tokio::time::timeout(Duration::from_secs(10), refreshed).await?;
    /// assert_eq!(client.get(provider.api_url("v1/me")).send().await?.status(), 200);
    ///
    /// let stats = auth.stats();
    /// assert_eq!((stats.refreshes, stats.refreshes_ahead), (1, 1));
    /// assert_eq!(stats.waited, 1, "only the first request waited: for the key's first load");
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn refresh_ahead(mut self, ahead: RefreshAhead) -> Self {
        self.cache.refresh_ahead = Some(ahead);
        self
    }

    /// Builds the layer, with the origins and the rejection rule of the token source's
    /// [`ResourceServer`](crate::ResourceServer) and those set here.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no origin may receive the token (neither the source nor
    /// [`allow_origin`](Self::allow_origin) names one, and [`allow_any_origin`](Self::allow_any_origin)
    /// was not called), when an allowed origin does not parse or has no host, when the initial
    /// access token cannot be sent in a header, or when the minimum backoff exceeds the maximum.
    ///
    /// ```
    /// use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh};
    ///
    /// let grant = RefreshTokenGrant::new("https://login.example/oauth/token");
    /// let err = TokenRefresh::builder(grant).build().unwrap_err();
    /// assert!(err.to_string().contains("allow_origin(..)"), "{err}");
    /// ```
    pub fn build(self) -> Result<TokenRefresh, Error> {
        let (source_origins, source_rule) = self.cache.source.resource_server().into_parts();
        let allowed = if self.allow_any_origin {
            None
        } else {
            let origins: Vec<&String> = source_origins.iter().chain(&self.allowed_origins).collect();
            if origins.is_empty() {
                return Err(Error::Config(NO_ALLOWED_ORIGIN.into()));
            }
            let parsed: Result<Vec<_>, _> = origins.into_iter().map(|o| OriginPolicy::parse_origin(o)).collect();
            Some(parsed.map_err(Error::Config)?)
        };
        if let Some(tokens) = &self.cache.initial_tokens {
            token::check_header_safe(tokens.access_token().secret())
                .map_err(|problem| Error::Config(format!("initial tokens: {problem}")))?;
        }
        if self.cache.policy.min_backoff > self.cache.policy.max_backoff {
            return Err(Error::Config("min_backoff is larger than max_backoff".into()));
        }
        Ok(TokenRefresh::from_parts(
            self.cache,
            OriginPolicy { allowed, allow_insecure_http: self.allow_insecure_http },
            self.refresh_on,
            self.rejected_when.or(source_rule),
            self.rejected_by_headers,
            self.classify_timeout,
        ))
    }
}

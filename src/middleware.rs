//! [`TokenRefresh`], the middleware: what it attaches, which answers it reads, and the one retry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::builder::TokenRefreshBuilder;
use crate::cache::{CacheConfig, Lease, Sent, TokenCache, TokenState, paced};
use crate::challenge::{self, Rejection};
use crate::error::Error;
use crate::kept::Kept;
use crate::key::TokenKey;
use crate::origin::OriginPolicy;
use crate::peek::{Peeked, peek_body};
use crate::source::{RejectionRule, TokenSource};
use crate::stats::{Counters, Event, Stats};
use crate::token::TokenSet;

/// How much of a 401's body is read to classify it: 4 KiB (4,096 bytes). Also how much of another
/// answer a [`token_rejected_when`](TokenRefreshBuilder::token_rejected_when) rule sees.
pub const CLASSIFY_BODY_LIMIT: usize = 4 * 1024;

/// How long the layer waits for the start of a body it reads to classify an answer (up to
/// [`CLASSIFY_BODY_LIMIT`]), unless set otherwise with
/// [`classify_timeout`](TokenRefreshBuilder::classify_timeout): 2 seconds in all.
///
/// A server that sends a 401's headers and then stalls its body must not hang the request. When
/// the time runs out the answer is classified from its headers and the bytes that did arrive,
/// and handed on at once: the caller reads those bytes, then the rest of the body as the server
/// sends it. A stalled body that names no error counts as a 401 with no error detail (what
/// [`RefreshOn`] decides for those): the layer cannot know what the rest would have said, and a
/// dead token behind a slow proxy must still be refreshed.
pub const CLASSIFY_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// Which 401 answers make the layer refresh the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RefreshOn {
    /// Only a 401 that says the token is invalid: `WWW-Authenticate: Bearer error="invalid_token"`
    /// (RFC 6750 §3.1) or a JSON body `{"error":"invalid_token"}`.
    InvalidToken,
    /// Those, and a 401 with no error detail at all (WHOOP answers an expired token with a bare
    /// 401). The default.
    #[default]
    InvalidTokenOrNoDetail,
}

impl RefreshOn {
    pub(crate) fn accepts(self, rejection: &Rejection) -> bool {
        match rejection {
            Rejection::InvalidToken => true,
            Rejection::NoDetail => self == RefreshOn::InvalidTokenOrNoDetail,
            Rejection::OtherError(_) | Rejection::OtherScheme => false,
        }
    }
}

/// A request extension: the request gets no token and never triggers a refresh.
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use reqwest_token_refresh::SkipAuth;
///
/// client.get("https://api.provider.example/health").with_extension(SkipAuth).send().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipAuth;

/// The middleware: attaches the bearer token, refreshes it once when it dies, retries.
///
/// Cheap to clone; clones share tokens, single flights and counters. Build it with
/// [`TokenRefresh::builder`] and add it to a `reqwest_middleware::ClientBuilder`; see the crate
/// docs for the whole picture.
///
/// # Example
///
/// Against the crate's mock provider (`testkit::MockProvider`, feature `testkit`): the API stops
/// accepting the access token, and the layer refreshes it and sends the request again.
///
/// ```
/// # #[cfg(feature = "testkit")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use reqwest_token_refresh::testkit::MockProvider;
/// use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh};
///
/// let provider = MockProvider::start().await;
/// let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()))
///     .initial_tokens(provider.issue_tokens())
///     .allow_origin(provider.uri())
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.clone())
///     .build();
///
/// provider.expire_access_tokens();
/// let response = client.get(provider.api_url("v1/me")).send().await?;
///
/// assert_eq!(response.status(), 200, "a 401, one refresh, and the retry got through");
/// assert_eq!(auth.stats().refreshes, 1);
/// assert_eq!(auth.stats().retries, 1);
/// # Ok(()) }
/// # #[cfg(not(feature = "testkit"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct TokenRefresh {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cache: TokenCache,
    origins: OriginPolicy,
    refresh_on: RefreshOn,
    rejected_when: Option<RejectionRule>,
    classify_timeout: Duration,
    stats: Arc<Counters>,
}

impl fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefresh")
            .field("origins", &self.inner.origins)
            .field("refresh_on", &self.inner.refresh_on)
            .field("token_rejected_when", &self.inner.rejected_when.as_ref().map(|_| "a rule"))
            .field("classify_timeout", &self.inner.classify_timeout)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl TokenRefresh {
    /// The layer from what its builder checked.
    pub(crate) fn from_parts(
        cache: CacheConfig,
        origins: OriginPolicy,
        refresh_on: RefreshOn,
        rejected_when: Option<RejectionRule>,
        classify_timeout: Duration,
    ) -> Self {
        let stats = Arc::new(Counters::named(cache.name.clone()));
        let cache = TokenCache::new(cache, stats.clone());
        TokenRefresh { inner: Arc::new(Inner { cache, origins, refresh_on, rejected_when, classify_timeout, stats }) }
    }

    /// Starts building a layer that gets new tokens from `source`.
    pub fn builder(source: impl TokenSource) -> TokenRefreshBuilder {
        TokenRefreshBuilder::new(Arc::new(source))
    }

    /// Starts building a layer around a shared token source.
    pub fn builder_arc(source: Arc<dyn TokenSource>) -> TokenRefreshBuilder {
        TokenRefreshBuilder::new(source)
    }

    /// Installs new tokens for the default key, after the user authorized again. Clears a
    /// re-authorization-required state. Saves them to the store first.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAccessToken`] if the access token cannot be sent in a header (nothing is
    /// installed); [`Error::Store`] if saving failed — the tokens are in use anyway and the save
    /// is retried in the background.
    pub async fn set_tokens(&self, tokens: TokenSet) -> Result<(), Error> {
        self.set_tokens_for(&TokenKey::default(), tokens).await
    }

    /// Installs new tokens for `key`; see [`set_tokens`](Self::set_tokens).
    ///
    /// # Errors
    ///
    /// As [`set_tokens`](Self::set_tokens).
    pub async fn set_tokens_for(&self, key: &TokenKey, tokens: TokenSet) -> Result<(), Error> {
        self.inner.cache.set_tokens(key, tokens).await.map(|_| ())
    }

    /// The tokens the layer holds in memory for the default key (`None` before the first request
    /// loaded them).
    pub fn tokens(&self) -> Option<TokenSet> {
        self.tokens_for(&TokenKey::default())
    }

    /// The tokens the layer holds in memory for `key`.
    pub fn tokens_for(&self, key: &TokenKey) -> Option<TokenSet> {
        self.inner.cache.tokens(key)
    }

    /// What the default key's tokens are doing: [`TokenState`].
    ///
    /// A key whose grant dies (here the user withdraws consent, and the refresh token is refused)
    /// stays [`ReauthorizationRequired`](TokenState::ReauthorizationRequired), failing fast, until
    /// [`set_tokens`](Self::set_tokens) installs new tokens:
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use reqwest_token_refresh::testkit::MockProvider;
    /// use reqwest_token_refresh::{Error, RefreshTokenGrant, TokenRefresh, TokenState};
    ///
    /// let provider = MockProvider::start().await;
    /// let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()))
    ///     .initial_tokens(provider.issue_tokens())
    ///     .allow_origin(provider.uri())
    ///     .build()?;
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(auth.clone())
    ///     .build();
    ///
    /// client.get(provider.api_url("v1/me")).send().await?;
    /// assert!(matches!(auth.state(), TokenState::Ready { generation: 1, .. }));
    ///
    /// provider.revoke_all();
    /// let err = client.get(provider.api_url("v1/me")).send().await.unwrap_err();
    /// assert!(Error::from_middleware(&err).is_some_and(Error::is_reauthorization_required));
    /// assert!(auth.state().is_reauthorization_required());
    ///
    /// // The user logs in again; the key is usable at once.
    /// auth.set_tokens(provider.issue_tokens()).await?;
    /// assert_eq!(client.get(provider.api_url("v1/me")).send().await?.status(), 200);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn state(&self) -> TokenState {
        self.state_for(&TokenKey::default())
    }

    /// What `key`'s tokens are doing.
    pub fn state_for(&self, key: &TokenKey) -> TokenState {
        self.inner.cache.state(key)
    }

    /// How many token keys the layer holds in memory.
    pub fn cached_keys(&self) -> usize {
        self.inner.cache.cached_keys()
    }

    /// The layer's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// The default key's token as the layer would attach it now; see
    /// [`access_token_for`](Self::access_token_for).
    ///
    /// # Errors
    ///
    /// As [`access_token_for`](Self::access_token_for).
    pub async fn access_token(&self) -> Result<crate::AccessToken, Error> {
        self.access_token_for(&TokenKey::default()).await
    }

    /// A token for `key` as the layer would attach it now: the current one if fresh, else a
    /// refreshed one. For code that must send the token some other way (a websocket handshake).
    ///
    /// # Errors
    ///
    /// As a request through the layer would fail: re-authorization required, a failed refresh,
    /// a store that cannot be read.
    pub async fn access_token_for(&self, key: &TokenKey) -> Result<crate::AccessToken, Error> {
        let ticket = self.inner.cache.lease(key).await?;
        Ok(ticket.lease.tokens.access_token().clone())
    }

    fn authorize(&self, request: &mut Request, key: &TokenKey, lease: &Lease) -> Result<(), Error> {
        let value = lease.header.clone().map_err(|problem| Error::InvalidAccessToken { key: key.clone(), problem })?;
        request.headers_mut().insert(AUTHORIZATION, value);
        Ok(())
    }
}

// Written out rather than with `#[async_trait]`: what can be decided without waiting is decided
// before any future exists. A request that passes through gets the next middleware's future as
// it is, and a request with a fresh token gets the small future of `TokenRefresh::send`. That
// future is one allocation per request, so it stays within the allocator's per-thread cache
// (`tests/all/footprint.rs`). A request that must wait for a token gets one larger future that
// waits and then sends; a key's first load and the handling of a 401 are boxed apart, allocated
// only when needed.
impl Middleware for TokenRefresh {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Sending<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        // Most requests have no headers of their own yet: no lookup (which hashes the name) then.
        let headers = request.headers();
        if extensions.get::<SkipAuth>().is_some() || (!headers.is_empty() && headers.contains_key(AUTHORIZATION)) {
            return next.run(request, extensions);
        }
        if crate::cache::in_refresh() {
            // A token source calling its token endpoint through this very layer: the request
            // must not wait for the refresh it is part of.
            tracing::debug!("request from inside a refresh passed through without a token");
            return next.run(request, extensions);
        }
        if let Some(why) = self.inner.origins.refuses(request.url()) {
            tracing::debug!(url = %request.url().origin().ascii_serialization(), why, "no token attached");
            return next.run(request, extensions);
        }
        self.inner.stats.count(Event::Request);
        let key = extensions.get::<TokenKey>();
        if let Some((header, sent)) = self.inner.cache.lease_ready(key) {
            return Box::pin(self.send(request, header, sent, extensions, next));
        }
        let key = key.cloned().unwrap_or_default();
        // One allocation on this path too: the wait and the send share it. A request that waited
        // for a flight goes out in its window (see `cache::flight`).
        Box::pin(async move {
            let (header, sent, pass) = self.inner.cache.lease(&key).await?.into_parts();
            let header = header.map_err(|problem| Error::InvalidAccessToken { key, problem })?;
            paced(pass, std::pin::pin!(self.send(request, header, sent, extensions, next))).await
        })
    }
}

type Sending<'a> = Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'a>>;

impl TokenRefresh {
    /// Sends the request with `header`; an answer that may say the token was rejected goes on in
    /// [`Self::after_rejection`].
    ///
    /// Not an `async fn`, which would keep a second copy of each argument in its future.
    fn send<'a>(
        &'a self,
        mut request: Request,
        header: HeaderValue,
        sent: Sent<'a>,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> impl Future<Output = reqwest_middleware::Result<Response>> + Send + 'a {
        // A body that cannot be cloned (a stream) is sent once; see contract point 11.
        let kept = Kept::of(&request);
        // `handle` passed on any request that has an `Authorization` of its own, so there is none
        // to replace: an append, which skips the replacing.
        request.headers_mut().append(AUTHORIZATION, header);
        async move {
            let response = next.clone().run(request, extensions).await?;
            if !self.may_reject(&response) {
                self.inner.cache.accepted(&sent, sent.generation());
                return Ok(response);
            }
            Box::pin(self.after_rejection(response, kept, sent, extensions, next)).await
        }
    }

    /// Whether an answer may say the token was rejected, and is worth reading for it: a 401, or
    /// with a [`token_rejected_when`](TokenRefreshBuilder::token_rejected_when) rule, any answer
    /// whose body may fit in [`CLASSIFY_BODY_LIMIT`] (a rejection is a short error document; a
    /// long body is data, handed to the caller without being held back).
    fn may_reject(&self, response: &Response) -> bool {
        response.status() == StatusCode::UNAUTHORIZED
            || (self.inner.rejected_when.is_some()
                && response.content_length().is_none_or(|length| length <= CLASSIFY_BODY_LIMIT as u64))
    }

    /// Reads whether `response` rejects the token it was sent with (`key`'s `generation`), and
    /// counts it if it does; `from_its_origin` is whether the answer came from the origin the
    /// token was sent to.
    /// Returns an equivalent answer and whether to refresh: a 401 refreshes when
    /// [`RefreshOn`] accepts it, another answer when the rule says the token was rejected.
    ///
    /// Only the token's own answers count (contract point 19): after a redirect to another
    /// origin, reqwest no longer sent the token, so what that origin answers says nothing about
    /// it. Such an answer is handed on untouched, its body unread.
    async fn rejects(
        &self,
        response: Response,
        from_its_origin: bool,
        key: &TokenKey,
        generation: u64,
    ) -> (Response, bool) {
        if !from_its_origin {
            tracing::debug!(
                key = %key,
                generation,
                status = %response.status(),
                "the answer came from another origin, after a redirect that dropped the token"
            );
            return (response, false);
        }
        let timeout = self.inner.classify_timeout;
        if response.status() == StatusCode::UNAUTHORIZED {
            self.inner.stats.count(Event::Rejection);
            let (response, rejection) = classify(response, timeout).await;
            let refresh = self.inner.refresh_on.accepts(&rejection);
            tracing::debug!(key = %key, generation, ?rejection, refresh, "401");
            return (response, refresh);
        }
        let Some(rule) = &self.inner.rejected_when else { return (response, false) };
        let status = response.status();
        let Peeked { response, head, stalled } = peek_body(response, CLASSIFY_BODY_LIMIT, timeout).await;
        if stalled {
            tracing::debug!(key = %key, generation, %status, read = head.len(), "the body stalled; the rule sees what arrived");
        }
        let rejected = rule(status, &head[..head.len().min(CLASSIFY_BODY_LIMIT)]);
        if rejected {
            self.inner.stats.count(Event::Rejection);
            tracing::debug!(key = %key, generation, %status, "the answer says the token was rejected");
        }
        (response, rejected)
    }

    /// An answer that may reject the token: if it does, get a newer token (refreshing once for
    /// everyone) and send the request again with it, once.
    async fn after_rejection(
        &self,
        response: Response,
        kept: Kept,
        sent: Sent<'_>,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let from_its_origin = kept.same_origin(response.url());
        let (response, refresh) = self.rejects(response, from_its_origin, sent.key(), sent.generation()).await;
        if !refresh {
            if response.status() != StatusCode::UNAUTHORIZED {
                self.inner.cache.accepted(&sent, sent.generation());
            }
            return Ok(response);
        }
        if self.inner.cache.refresh_held_back(&sent) {
            return Ok(response);
        }
        let Some(mut retry) = kept.into_retry() else {
            // The body is gone; the refresh still happens, so that the caller's own retry works.
            let _ = self.inner.cache.renew(&sent, response.version()).await;
            return Ok(response);
        };
        // The rejected answer is not needed any more. Its body is read to its end while the
        // refresh runs, so that its connection is free for the retry: an HTTP/1.1 connection
        // whose answer was dropped unread is closed, and an HTTP/2 stream reset.
        let over = response.version();
        let (renewed, ()) =
            tokio::join!(self.inner.cache.renew(&sent, over), discard(response, self.inner.classify_timeout));
        let (renewed, pass) = renewed?;
        self.authorize(&mut retry, sent.key(), &renewed)?;
        self.inner.stats.count(Event::Retry);
        let sent_to = retry.url().clone();
        let mut retried = next.run(retry, extensions);
        let response = paced(pass, retried.as_mut()).await?;
        // One retry, no loop: a second rejection goes back as it came, counted.
        if !self.may_reject(&response) {
            self.inner.cache.accepted(&sent, renewed.generation);
            return Ok(response);
        }
        let from_its_origin = crate::origin::same_origin(&sent_to, response.url());
        let (response, rejected) = self.rejects(response, from_its_origin, sent.key(), renewed.generation).await;
        if !rejected && response.status() != StatusCode::UNAUTHORIZED {
            self.inner.cache.accepted(&sent, renewed.generation);
        }
        Ok(response)
    }
}

/// How much of a rejected answer's body the layer reads to let its connection go on: 64 KiB. A
/// longer one is dropped unread (its connection closed, or its stream reset): reading it would
/// cost more than a new connection.
const DISCARD_LIMIT: usize = 64 * 1024;

/// Reads what is left of `response`'s body, up to [`DISCARD_LIMIT`] and for at most `timeout`,
/// and lets it go.
async fn discard(mut response: Response, timeout: Duration) {
    let read_to_end = async {
        let mut read = 0;
        while read <= DISCARD_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read_to_end).await;
}

/// Whether a 401 rejects the token. The headers are read first; the body only when they name no
/// error, and for at most `timeout`: a body that stalls is judged by what arrived (see
/// [`CLASSIFY_BODY_TIMEOUT`]).
async fn classify(response: Response, timeout: Duration) -> (Response, Rejection) {
    let from_headers = challenge::classify_unauthorized(response.headers(), &[]);
    if matches!(from_headers, Rejection::InvalidToken | Rejection::OtherError(_)) {
        return (response, from_headers);
    }
    let Peeked { response, head, stalled } = peek_body(response, CLASSIFY_BODY_LIMIT, timeout).await;
    // A peek may read past the limit (a whole chunk); what is judged stops at it, as documented.
    let rejection = challenge::classify_unauthorized(response.headers(), &head[..head.len().min(CLASSIFY_BODY_LIMIT)]);
    if stalled {
        tracing::debug!(read = head.len(), ?rejection, "the 401's body stalled; classified from what arrived");
    }
    (response, rejection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::source::RefreshTokenGrant;
    use crate::token::TokenSet;

    #[test]
    fn the_classify_limits_are_what_their_docs_say() {
        assert_eq!(CLASSIFY_BODY_LIMIT, 4_096, "4 KiB");
        assert_eq!(CLASSIFY_BODY_TIMEOUT, Duration::from_secs(2));
    }

    #[test]
    fn middleware_is_send_sync_and_cheap_to_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<TokenRefresh>();
    }

    #[test]
    fn build_rejects_bad_origins_and_bad_initial_tokens() {
        let grant = || RefreshTokenGrant::new("https://p.example/token").api_origin("https://api.p.example");
        let err = TokenRefresh::builder(grant()).allow_origin("not a url").build().unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        let err = TokenRefresh::builder(grant().api_origin("data:text/plain,x")).build().unwrap_err();
        assert!(err.to_string().contains("has no host"), "a source's origin is checked too: {err}");
        let err = TokenRefresh::builder(grant()).initial_tokens(TokenSet::new("a\r\nb")).build().unwrap_err();
        assert!(err.to_string().contains("not visible ASCII"), "{err}");
        let err = TokenRefresh::builder(grant())
            .min_backoff(Duration::from_secs(10))
            .max_backoff(Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }

    #[test]
    fn refresh_on_decides_which_401s_refresh() {
        assert!(RefreshOn::InvalidToken.accepts(&Rejection::InvalidToken));
        assert!(!RefreshOn::InvalidToken.accepts(&Rejection::NoDetail));
        assert!(RefreshOn::InvalidTokenOrNoDetail.accepts(&Rejection::NoDetail));
        assert!(!RefreshOn::InvalidTokenOrNoDetail.accepts(&Rejection::OtherError("insufficient_scope".into())));
        assert!(!RefreshOn::InvalidTokenOrNoDetail.accepts(&Rejection::OtherScheme));
    }
}

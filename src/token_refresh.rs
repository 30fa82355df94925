//! [`TokenRefresh`]: the value every front end shares (the reqwest middleware, and with the
//! `tower` feature the tower layer). It holds the per-key cache, which origins get the token,
//! and which answers reject it; clones share all of it, so a reqwest client and a tower stack
//! given clones of one value refresh once between them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::builder::TokenRefreshBuilder;
use crate::cache::{CacheConfig, TokenCache, TokenState};
use crate::challenge::RefreshOn;
use crate::error::Error;
use crate::key::TokenKey;
use crate::origin::OriginPolicy;
use crate::source::{HeaderRule, RejectionRule, TokenSource};
use crate::stats::{Counters, Stats};
use crate::token::TokenSet;

/// The layer: attaches the token, refreshes it once when it dies, retries.
///
/// Cheap to clone; clones share tokens, single flights and counters. Build it with
/// [`TokenRefresh::builder`] and add it to a `reqwest_middleware::ClientBuilder`, or (feature
/// `tower`) wrap a tower service with [`TokenRefresh::layer`]; see the crate docs for the whole
/// picture.
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

/// What the clones share. The front ends read it directly; the builder is the one writer.
pub(crate) struct Inner {
    pub(crate) cache: TokenCache,
    pub(crate) origins: OriginPolicy,
    pub(crate) refresh_on: RefreshOn,
    pub(crate) rejected_when: Option<RejectionRule>,
    pub(crate) rejected_by_headers: Option<HeaderRule>,
    pub(crate) classify_timeout: Duration,
    pub(crate) stats: Arc<Counters>,
    /// The `DPoP-Nonce` each origin last sent (feature `dpop`): the grant's own memory, so that
    /// its token requests and the API requests share it, or the layer's when the grant does no
    /// DPoP (tokens installed bound to a key are still sent with proofs).
    #[cfg(feature = "dpop")]
    pub(crate) dpop_nonces: crate::dpop::DpopNonces,
}

impl fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefresh")
            .field("origins", &self.inner.origins)
            .field("refresh_on", &self.inner.refresh_on)
            .field("token_rejected_when", &self.inner.rejected_when.as_ref().map(|_| "a rule"))
            .field("token_rejected_by_headers", &self.inner.rejected_by_headers.as_ref().map(|_| "a rule"))
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
        rejected_by_headers: Option<HeaderRule>,
        classify_timeout: Duration,
    ) -> Self {
        let stats = Arc::new(Counters::named(cache.name.clone()));
        #[cfg(feature = "dpop")]
        let dpop_nonces = cache.source.resource_server().dpop_nonces().cloned().unwrap_or_default();
        let cache = TokenCache::new(cache, stats.clone());
        let inner = Inner {
            cache,
            origins,
            refresh_on,
            rejected_when,
            rejected_by_headers,
            classify_timeout,
            stats,
            #[cfg(feature = "dpop")]
            dpop_nonces,
        };
        TokenRefresh { inner: Arc::new(inner) }
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::source::RefreshTokenGrant;

    #[test]
    fn the_layer_is_send_sync_and_cheap_to_clone() {
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
}

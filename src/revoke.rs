//! [`TokenRefresh::revoke`]: revoking a key's tokens at the provider (RFC 7009) and forgetting
//! them, in memory and in the store. The protocol is the cache's (`cache/persist.rs`), the
//! transition the key's state machine's (`cache/slot.rs`); this file is the public entry.

use crate::error::Error;
use crate::key::TokenKey;
use crate::token_refresh::TokenRefresh;

impl TokenRefresh {
    /// Revokes the default key's tokens; see [`revoke_for`](Self::revoke_for).
    ///
    /// # Errors
    ///
    /// As [`revoke_for`](Self::revoke_for).
    pub async fn revoke(&self) -> Result<(), Error> {
        self.revoke_for(&TokenKey::default()).await
    }

    /// Revokes `key`'s tokens at the provider (RFC 7009), removes them from the store, and leaves
    /// the key needing a new login: for a user who logs out, or disconnects the provider.
    ///
    /// Under the store's lock (the one a refresh takes, so a refresh of the key in this process
    /// or another runs wholly before or after), the layer calls the grant's revocation endpoint
    /// ([`RefreshTokenGrant::revocation_url`](crate::RefreshTokenGrant::revocation_url), set by
    /// discovery from the server's metadata) with the refresh token of the newest set
    /// (`token_type_hint=refresh_token`; a set without one revokes its access token), authenticated
    /// like a token call. Once the provider answers 200, the tokens are removed from the store
    /// ([`TokenStore::remove`](crate::TokenStore::remove)) and the key goes to
    /// [`TokenState::ReauthorizationRequired`](crate::TokenState::ReauthorizationRequired) with
    /// [`RefreshError::Revoked`](crate::RefreshError::Revoked) as its reason (its hook fires,
    /// once): its requests fail fast, with no network call, until
    /// [`set_tokens_for`](Self::set_tokens_for) installs new ones. A refresh that was running
    /// does not bring the revoked tokens back, and neither does another process sharing the
    /// store: the removal keeps the key's revision, so a save of an older set is refused and
    /// that process, too, treats the key as revoked.
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use reqwest_token_refresh::testkit::MockProvider;
    /// use reqwest_token_refresh::{Error, RefreshError, RefreshTokenGrant, TokenRefresh, TokenState};
    ///
    /// let provider = MockProvider::start().await;
    /// let grant = RefreshTokenGrant::new(provider.token_url()).revocation_url(provider.revocation_url());
    /// let auth = TokenRefresh::builder(grant)
    ///     .initial_tokens(provider.issue_tokens())
    ///     .allow_origin(provider.uri())
    ///     .build()?;
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(auth.clone())
    ///     .build();
    /// assert_eq!(client.get(provider.api_url("v1/me")).send().await?.status(), 200);
    ///
    /// // The user logs out.
    /// auth.revoke().await?;
    /// assert_eq!(provider.stats().tokens_revoked, 1);
    /// assert!(auth.tokens().is_none());
    /// assert!(matches!(
    ///     auth.state(),
    ///     TokenState::ReauthorizationRequired { reason: RefreshError::Revoked, .. }
    /// ));
    ///
    /// // Requests fail fast: no call reaches the provider.
    /// let calls = provider.stats().api_calls;
    /// let err = client.get(provider.api_url("v1/me")).send().await.unwrap_err();
    /// assert!(Error::from_middleware(&err).is_some_and(Error::is_reauthorization_required));
    /// assert_eq!(provider.stats().api_calls, calls);
    ///
    /// // The user logs in again.
    /// auth.set_tokens(provider.issue_tokens()).await?;
    /// assert_eq!(client.get(provider.api_url("v1/me")).send().await?.status(), 200);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::Revocation`] when the provider did not revoke: an error answer (RFC 7009
    ///   §2.2.1 `unsupported_token_type`, a 5xx, a 503 whose `Retry-After` is in
    ///   [`Error::retry_after`]), no answer within the grant's timeout, or no revocation endpoint.
    ///   Nothing changed: the tokens are still in memory and in the store, and the key works.
    /// - [`Error::Store`] when the store's lock could not be taken or the store read (nothing
    ///   changed either), or when the tokens were revoked but removing them from the store failed:
    ///   the key is revoked in memory all the same, and a second `revoke` removes them (a
    ///   provider answers 200 for a token already revoked).
    pub async fn revoke_for(&self, key: &TokenKey) -> Result<(), Error> {
        self.inner.cache.revoke(key).await
    }
}

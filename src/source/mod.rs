//! Where new tokens come from: the [`TokenSource`] trait and the OAuth 2.0 grants that implement it.

#[cfg(feature = "private-key-jwt")]
mod client_assertion;
mod client_credentials;
pub(crate) mod client_metadata;
mod discovery;
#[cfg(feature = "dpop")]
pub(crate) mod dpop;
mod endpoint;
mod login;
mod protected_resource;
pub mod providers;
mod refresh_token;
mod registration;
mod resource_server;
pub(crate) mod response;
mod revocation;
mod withings_signature;

use std::fmt;

use async_trait::async_trait;

use crate::error::RefreshError;
use crate::token::TokenSet;

#[cfg(feature = "private-key-jwt")]
pub use client_assertion::{
    CLIENT_ASSERTION_TYPE, ClientAssertionKey, ClientKeyError, DEFAULT_CLIENT_ASSERTION_LIFETIME, SigningAlgorithm,
};
pub use client_credentials::ClientCredentials;
pub use client_metadata::{ClientMetadataDocument, ClientMetadataError};
pub use discovery::{Discovery, DiscoveryError, ServerMetadata};
pub use endpoint::{BodyEncoding, ClientAuth, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TOKEN_TIMEOUT};
pub use login::{Login, LoginError, PendingLogin};
pub use protected_resource::{ProtectedResource, ResourceMetadata};
pub use refresh_token::RefreshTokenGrant;
pub use registration::{DynamicRegistration, RegistrationError};
pub use resource_server::ResourceServer;
pub(crate) use resource_server::{HeaderRule, RejectionRule};

/// Gets a new token set.
///
/// Implemented by [`RefreshTokenGrant`] and [`ClientCredentials`]; implement it yourself for
/// anything else (a signed JWT assertion, a vault, another service). The layer calls it from a
/// single flight: at most one call per token key at a time, in a task of its own.
///
/// A source may also say which API its tokens are for ([`resource_server`](Self::resource_server)),
/// so that a layer built on it needs no more configuration to send them there and nowhere else.
///
/// ```
/// use async_trait::async_trait;
/// use reqwest_token_refresh::{RefreshError, ResourceServer, TokenRefresh, TokenSet, TokenSource};
///
/// #[derive(Debug)]
/// struct FromVault;
///
/// #[async_trait]
/// impl TokenSource for FromVault {
///     async fn fetch(&self, _current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
///         Ok(TokenSet::new("token-from-vault"))
///     }
///
///     fn resource_server(&self) -> ResourceServer {
///         ResourceServer::new().origin("https://api.example")
///     }
/// }
///
/// let auth = TokenRefresh::builder(FromVault).build()?;
/// # Ok::<(), reqwest_token_refresh::Error>(())
/// ```
#[async_trait]
pub trait TokenSource: fmt::Debug + Send + Sync + 'static {
    /// Fetches a new token set. `current` is the set being replaced, if any (its refresh token is
    /// what a refresh-token grant spends).
    ///
    /// Return [`RefreshError::Protocol`] when the server refused (the layer decides whether that
    /// is terminal), [`RefreshError::NoRefreshToken`] when a token cannot be had without user
    /// interaction, and a transport or other error for anything that may pass.
    async fn fetch(&self, current: Option<&TokenSet>) -> Result<TokenSet, RefreshError>;

    /// What this source knows of the API its tokens are for: the origins that may receive them
    /// and, for an API that rejects a token without a 401, its rule. A layer built on the source
    /// starts from it (see [`ResourceServer`]). The default knows nothing, so the layer's builder
    /// must name the origins itself
    /// ([`allow_origin`](crate::TokenRefreshBuilder::allow_origin)). A source that wraps another
    /// (to log its calls, say) should return the inner source's.
    fn resource_server(&self) -> ResourceServer {
        ResourceServer::default()
    }

    /// Revokes `tokens` at the provider (RFC 7009), for
    /// [`TokenRefresh::revoke`](crate::TokenRefresh::revoke): their refresh token, or the access
    /// token of a set without one. `Ok` once the provider revoked them (or already held them
    /// invalid); any error leaves the layer's tokens as they were.
    ///
    /// [`RefreshTokenGrant`] and [`ClientCredentials`] call their
    /// [`revocation_url`](RefreshTokenGrant::revocation_url). The default cannot revoke and
    /// says so with [`RefreshError::Config`]; a source that wraps another should call the inner
    /// source's.
    async fn revoke(&self, tokens: &TokenSet) -> Result<(), RefreshError> {
        let _ = tokens;
        Err(RefreshError::Config("this token source cannot revoke tokens".into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flight_outlasts_the_token_call_it_contains() {
        // The flight's deadline must leave the token call its whole timeout, and time for the
        // store's lock, read and save around it.
        assert!(
            crate::policy::DEFAULT_FLIGHT_DEADLINE >= super::DEFAULT_TOKEN_TIMEOUT + std::time::Duration::from_secs(10)
        );
    }

    use std::sync::Arc;

    use super::*;

    #[test]
    fn token_source_is_object_safe() {
        let sources: Vec<Arc<dyn TokenSource>> = vec![
            Arc::new(RefreshTokenGrant::new("https://provider.example/token")),
            Arc::new(ClientCredentials::new("https://provider.example/token")),
        ];
        assert_eq!(sources.len(), 2);
    }
}

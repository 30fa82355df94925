//! [`RefreshTokenGrant`]: RFC 6749 §6.

use async_trait::async_trait;

use super::TokenSource;
use super::endpoint::{PkceAdvertised, Scoped, TokenEndpoint, endpoint_options};
use super::login::{Login, LoginError};
use super::resource_server::{ResourceServer, resource_server_options};
use crate::error::RefreshError;
use crate::token::TokenSet;

/// Refreshes with the refresh-token grant (RFC 6749 §6): posts `grant_type=refresh_token` and the
/// current refresh token to the token endpoint.
///
/// When the answer carries no new refresh token, the old one is kept (RFC 6749 §6). A refresh
/// token is spent by the call: on providers that rotate (Kroger, Withings) the old one is dead as
/// soon as the answer is issued, which is why the layer saves the new set before using it.
///
/// ```
/// use reqwest_token_refresh::{ClientAuth, RefreshTokenGrant};
///
/// // WHOOP: client credentials in the form body, `scope=offline` to get a new refresh token,
/// // and the tokens are for WHOOP's API.
/// let whoop = RefreshTokenGrant::new("https://api.prod.whoop.com/oauth/oauth2/token")
///     .client_id("id")
///     .client_secret("secret")
///     .client_auth(ClientAuth::RequestBody)
///     .scope("offline")
///     .api_origin("https://api.prod.whoop.com");
/// ```
#[derive(Debug, Clone)]
pub struct RefreshTokenGrant {
    endpoint: TokenEndpoint,
    resource_server: ResourceServer,
}

impl RefreshTokenGrant {
    /// A refresh-token grant against the token endpoint at `token_url`.
    pub fn new(token_url: impl Into<String>) -> Self {
        Self { endpoint: TokenEndpoint::new(token_url), resource_server: ResourceServer::default() }
    }

    endpoint_options!();
    resource_server_options!();
    #[cfg(feature = "dpop")]
    super::dpop::dpop_options!();

    /// Sets where users authorize this client (the provider's authorization endpoint), for
    /// [`login`](Self::login). The provider presets set it.
    #[must_use = "returns the changed grant; on its own the call changes nothing"]
    pub fn authorize_url(mut self, authorize_url: impl Into<String>) -> Self {
        self.endpoint.authorize_url = Some(authorize_url.into());
        self
    }

    /// Records what the authorization server's metadata said about PKCE, which
    /// [`login`](Self::login) checks.
    pub(super) fn pkce_advertised(mut self, pkce: PkceAdvertised) -> Self {
        self.endpoint.pkce = Some(pkce);
        self
    }

    /// An authorization-code login (with PKCE and `state`) that sends users back to
    /// `redirect_uri` and exchanges their code the way this grant refreshes: same token URL,
    /// client authentication, encoding, extra fields and response mapping. Its scopes start as
    /// this grant's.
    ///
    /// # Errors
    ///
    /// [`LoginError::Config`] when no [`authorize_url`](Self::authorize_url) is set, or it or
    /// `redirect_uri` does not parse as a URL; [`LoginError::PkceUnsupported`] for a grant made
    /// from metadata that does not list PKCE with `S256` (see
    /// [`ServerMetadata::refresh_token_grant`](crate::ServerMetadata::refresh_token_grant) and
    /// [`ResourceMetadata::refresh_token_grant`](crate::ResourceMetadata::refresh_token_grant)).
    pub fn login(&self, redirect_uri: impl Into<String>) -> Result<Login, LoginError> {
        Login::new(&self.endpoint, redirect_uri.into())
    }
}

#[async_trait]
impl TokenSource for RefreshTokenGrant {
    async fn fetch(&self, current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
        let refresh_token = current.and_then(TokenSet::refresh_token).ok_or(RefreshError::NoRefreshToken)?;
        let grant = [("grant_type", "refresh_token"), ("refresh_token", refresh_token.secret())];
        let tokens = self.endpoint.exchange(&grant, current, Scoped::Yes).await?;
        Ok(tokens.inherit_refresh_token(current))
    }

    async fn revoke(&self, tokens: &TokenSet) -> Result<(), RefreshError> {
        self.endpoint.revoke(tokens).await
    }

    fn resource_server(&self) -> ResourceServer {
        self.resource_server.clone()
    }
}

//! [`ClientCredentials`]: RFC 6749 §4.4.

use async_trait::async_trait;

use super::TokenSource;
use super::endpoint::{Scoped, TokenEndpoint, endpoint_options};
use super::resource_server::{ResourceServer, resource_server_options};
use crate::error::RefreshError;
use crate::token::TokenSet;

/// Gets tokens with the client-credentials grant (RFC 6749 §4.4): a service acting as itself.
///
/// There is no refresh token: an expired or rejected token is simply replaced by a new one, and
/// no initial tokens are needed.
///
/// ```
/// use reqwest_token_refresh::{BodyEncoding, ClientAuth, ClientCredentials};
///
/// // The WHOOP Partner API: a JSON body with the client credentials in it.
/// let partner = ClientCredentials::new("https://api.prod.whoop.com/oauth/oauth2/token")
///     .client_id("id")
///     .client_secret("secret")
///     .client_auth(ClientAuth::RequestBody)
///     .encoding(BodyEncoding::Json)
///     .scope("read:partner")
///     .api_origin("https://api.prod.whoop.com");
/// ```
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    endpoint: TokenEndpoint,
    resource_server: ResourceServer,
}

impl ClientCredentials {
    /// A client-credentials grant against the token endpoint at `token_url`.
    pub fn new(token_url: impl Into<String>) -> Self {
        Self { endpoint: TokenEndpoint::new(token_url), resource_server: ResourceServer::default() }
    }

    endpoint_options!();
    resource_server_options!();
    #[cfg(feature = "dpop")]
    super::dpop::dpop_options!();
}

#[async_trait]
impl TokenSource for ClientCredentials {
    async fn fetch(&self, current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
        self.endpoint.exchange(&[("grant_type", "client_credentials")], current, Scoped::Yes).await
    }

    async fn revoke(&self, tokens: &TokenSet) -> Result<(), RefreshError> {
        self.endpoint.revoke(tokens).await
    }

    fn resource_server(&self) -> ResourceServer {
        self.resource_server.clone()
    }
}

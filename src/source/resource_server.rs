//! [`ResourceServer`]: what a token source knows of the API its tokens are for, which a layer
//! built on the source starts from.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

/// A rule that finds a rejected token in an answer that is not a 401; see
/// [`TokenRefreshBuilder::token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when).
pub(crate) type RejectionRule = Arc<dyn Fn(StatusCode, &[u8]) -> bool + Send + Sync>;

/// A rule that reads only an answer's status and headers (a gRPC status, say), never its body.
pub(crate) type HeaderRule = Arc<dyn Fn(StatusCode, &http::HeaderMap) -> bool + Send + Sync>;

/// What a [`TokenSource`](crate::TokenSource) knows of the API its tokens are for (the resource
/// server, in RFC 6749's words): the origins that may receive the tokens, and, for an API that
/// rejects a token without a 401, how to tell.
///
/// A layer built on the source starts from it ([`TokenSource::resource_server`](crate::TokenSource::resource_server)):
/// the layer builder's [`allow_origin`](crate::TokenRefreshBuilder::allow_origin) adds origins to
/// these, and its [`token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when)
/// replaces the rule. The [`providers`](crate::providers) presets fill it in; a grant of your own
/// gets it with `api_origin(..)` and `token_rejected_when(..)`.
///
/// ```
/// use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh, TokenSource, providers};
///
/// assert_eq!(providers::withings("id", "secret").resource_server().origins(), [providers::WITHINGS_API_ORIGIN]);
///
/// let grant = RefreshTokenGrant::new("https://login.example/oauth/token").api_origin("https://api.example");
/// // Complete: the token goes to https://api.example and nowhere else.
/// let auth = TokenRefresh::builder(grant).build()?;
/// # Ok::<(), reqwest_token_refresh::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ResourceServer {
    origins: Vec<String>,
    rejected_when: Option<RejectionRule>,
    /// The nonces a DPoP grant's token endpoint was sent, for the layer's API requests to add
    /// theirs to (one memory per layer, RFC 9449 §8 and §9).
    #[cfg(feature = "dpop")]
    dpop_nonces: Option<crate::dpop::DpopNonces>,
}

impl ResourceServer {
    /// Knows nothing yet: no origin, no rule (the same as [`ResourceServer::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an origin (scheme, host and port, such as `https://api.example`) that may receive the
    /// tokens. It is checked when the layer is built.
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Sets how the API says a token was rejected in an answer that is not a 401; see
    /// [`TokenRefreshBuilder::token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when).
    #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
    pub fn token_rejected_when(mut self, rule: impl Fn(StatusCode, &[u8]) -> bool + Send + Sync + 'static) -> Self {
        self.rejected_when = Some(Arc::new(rule));
        self
    }

    /// The origins that may receive the tokens, as given.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// Shares a DPoP grant's nonce memory with the layer built on it.
    #[cfg(feature = "dpop")]
    pub(crate) fn with_dpop_nonces(mut self, nonces: crate::dpop::DpopNonces) -> Self {
        self.dpop_nonces = Some(nonces);
        self
    }

    /// The nonce memory of the grant, when it does DPoP: the one the layer's API requests use.
    #[cfg(feature = "dpop")]
    pub(crate) fn dpop_nonces(&self) -> Option<&crate::dpop::DpopNonces> {
        self.dpop_nonces.as_ref()
    }

    pub(crate) fn into_parts(self) -> (Vec<String>, Option<RejectionRule>) {
        (self.origins, self.rejected_when)
    }
}

impl fmt::Debug for ResourceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceServer")
            .field("origins", &self.origins)
            .field("token_rejected_when", &self.rejected_when.as_ref().map(|_| "a rule"))
            .finish_non_exhaustive()
    }
}

/// Builder methods shared by every grant that holds a [`ResourceServer`] in
/// `self.resource_server`; the grant's [`TokenSource::resource_server`](crate::TokenSource::resource_server)
/// returns it.
macro_rules! resource_server_options {
    () => {
        /// Adds an origin of the API this grant's tokens are for (scheme, host and port, such as
        /// `https://api.example`). A layer built on this grant sends the token to these origins
        /// and to those its own builder adds with
        /// [`allow_origin`](crate::TokenRefreshBuilder::allow_origin), and to no other. The
        /// provider presets set their provider's; add one to point a preset at a test server.
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn api_origin(mut self, origin: impl Into<String>) -> Self {
            self.resource_server = self.resource_server.origin(origin);
            self
        }

        /// Sets how this grant's API says a token was rejected in an answer that is not a 401
        /// (Withings' HTTP 200 with `"status":401`); a layer built on this grant uses it unless
        /// its builder sets its own with
        /// [`token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when), which says
        /// which answers the rule sees.
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn token_rejected_when(
            mut self,
            rule: impl Fn(http::StatusCode, &[u8]) -> bool + Send + Sync + 'static,
        ) -> Self {
            self.resource_server = self.resource_server.token_rejected_when(rule);
            self
        }
    };
}
pub(crate) use resource_server_options;

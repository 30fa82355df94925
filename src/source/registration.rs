//! Dynamic client registration (RFC 7591 §3): [`DynamicRegistration`] posts a client's metadata
//! to an authorization server's registration endpoint and reads the [`RegisteredClient`] it
//! answers with, bounded in time and size like a metadata fetch. The whole flow, and what to do
//! when a registration ends, is in [`DynamicRegistration`]'s documentation.

use std::time::{Duration, SystemTime};

use http::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Map, Value};
use url::Url;

use super::ServerMetadata;
use super::discovery::{fetch_bounds, is_timeout, secure};
use super::endpoint::{CappedAnswer, TokenEndpoint};
use crate::error::{Error, RefreshError};
use crate::registered_client::RegisteredClient;
use crate::token::TokenSet;

/// The grant types client metadata names unless told otherwise: `authorization_code` and
/// `refresh_token`, a client that logs users in and keeps their tokens fresh.
pub(super) const DEFAULT_GRANT_TYPES: &[&str] = &["authorization_code", "refresh_token"];

/// The response types client metadata names: `code`, the authorization-code flow's.
const RESPONSE_TYPES: &[&str] = &["code"];

/// Client metadata (RFC 7591 §2) as a client describes itself: what a registration posts
/// ([`DynamicRegistration`]) and what a client metadata document serves
/// ([`ClientMetadataDocument`](crate::ClientMetadataDocument)), set through
/// [`client_metadata_setters!`].
#[derive(Debug, Clone)]
pub(super) struct ClientMetadata {
    pub(super) redirect_uris: Vec<String>,
    pub(super) client_name: Option<String>,
    pub(super) grant_types: Vec<String>,
    pub(super) token_endpoint_auth_method: Option<String>,
    pub(super) scopes: Vec<String>,
    pub(super) fields: Vec<(String, Value)>,
}

impl ClientMetadata {
    /// The default grant types, no redirect URI yet, and `token_endpoint_auth_method` if given.
    pub(super) fn new(token_endpoint_auth_method: Option<&str>) -> Self {
        Self {
            redirect_uris: Vec::new(),
            client_name: None,
            grant_types: DEFAULT_GRANT_TYPES.iter().map(|&g| g.to_owned()).collect(),
            token_endpoint_auth_method: token_endpoint_auth_method.map(str::to_owned),
            scopes: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// The members: those set, `response_types` `code`, then the [fields](Self::fields) over them.
    pub(super) fn members(&self) -> Map<String, Value> {
        let mut members = Map::new();
        members.insert("redirect_uris".into(), self.redirect_uris.clone().into());
        if let Some(name) = &self.client_name {
            members.insert("client_name".into(), name.clone().into());
        }
        members.insert("grant_types".into(), self.grant_types.clone().into());
        members
            .insert("response_types".into(), RESPONSE_TYPES.iter().map(|&r| r.to_owned()).collect::<Vec<_>>().into());
        if let Some(method) = &self.token_endpoint_auth_method {
            members.insert("token_endpoint_auth_method".into(), method.clone().into());
        }
        if !self.scopes.is_empty() {
            members.insert("scope".into(), self.scopes.join(" ").into());
        }
        for (name, value) in &self.fields {
            members.insert(name.clone(), value.clone());
        }
        members
    }
}

/// The setters of [`ClientMetadata`], for a builder that keeps it in `self.metadata`:
/// [`DynamicRegistration`] and [`ClientMetadataDocument`](crate::ClientMetadataDocument). The
/// literals given are more documentation for `field`: what it may not set there.
macro_rules! client_metadata_setters {
    ($($field_doc:literal)*) => {
        /// Adds a redirect URI (`redirect_uris`): where a login sends the user back, an absolute
        /// URL without a fragment (a loopback one, `http://127.0.0.1:PORT/callback`, for a native
        /// app). The server takes a login only to a redirect URI listed.
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
            self.metadata.redirect_uris.push(uri.into());
            self
        }

        /// Sets the name shown to users when they log in (`client_name`).
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn client_name(mut self, name: impl Into<String>) -> Self {
            self.metadata.client_name = Some(name.into());
            self
        }

        /// Replaces the grant types named (`grant_types`; default `authorization_code` and
        /// `refresh_token`).
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn grant_types<I, S>(mut self, grant_types: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.metadata.grant_types = grant_types.into_iter().map(Into::into).collect();
            self
        }

        /// Adds a scope the client may ask for (`scope`, space-separated).
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn scope(mut self, scope: impl Into<String>) -> Self {
            self.metadata.scopes.push(scope.into());
            self
        }

        /// Sets any other member of the client metadata (RFC 7591 §2 names: `client_uri`,
        /// `logo_uri`, `contacts`, `software_id`, `software_version`, ...), or replaces one of
        /// those above.
        $(#[doc = $field_doc])*
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn field(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
            self.metadata.fields.push((name.into(), value));
            self
        }
    };
}
pub(super) use client_metadata_setters;

/// The most of a server's `error_description` an error keeps: 256 characters.
const MAX_DESCRIPTION_CHARS: usize = 256;

/// Why a client could not be registered. No variant holds a secret: a registration request
/// carries none, and an answer's secret is never quoted.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// The server's metadata names no `registration_endpoint`: it does not take dynamic
    /// registrations, and the client needs credentials from elsewhere.
    #[error("the authorization server {issuer:?} has no registration endpoint")]
    NoRegistrationEndpoint {
        /// The server's issuer identifier.
        issuer: String,
    },
    /// The registration endpoint is not a URL, or not `https` (plain `http` is allowed to
    /// loopback only). Nothing was sent.
    #[error("the registration endpoint {url:?} cannot be used: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client metadata to register cannot be right (a redirect URI that is not an absolute
    /// URL, or none for a client that logs users in). Nothing was sent.
    #[error("the client metadata cannot be registered: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// The registration endpoint could not be reached, or its answer not read.
    #[error("the registration endpoint {url} could not be reached")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// Why.
        #[source]
        source: RefreshError,
    },
    /// The registration endpoint did not answer in time (the
    /// [timeout](DynamicRegistration::timeout) covers the whole exchange, the last byte of the
    /// body included).
    #[error("the registration endpoint {url} did not answer within {after:?}")]
    TimedOut {
        /// The endpoint.
        url: String,
        /// The timeout it had.
        after: Duration,
    },
    /// The answer was larger than the [limit](DynamicRegistration::max_response_bytes); it was
    /// not read past it.
    #[error("the answer of the registration endpoint {url} is larger than {limit} bytes")]
    TooLarge {
        /// The endpoint.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The server refused a redirect URI (RFC 7591 §3.2.2 `invalid_redirect_uri`).
    #[error("the server refused a redirect URI{}", describe(.description.as_deref()))]
    InvalidRedirectUri {
        /// The server's `error_description`, if any (capped).
        description: Option<String>,
    },
    /// The server refused a member of the client metadata (RFC 7591 §3.2.2
    /// `invalid_client_metadata`): a grant type, a method, a scope it does not allow.
    #[error("the server refused the client metadata{}", describe(.description.as_deref()))]
    InvalidClientMetadata {
        /// The server's `error_description`, if any (capped).
        description: Option<String>,
    },
    /// The server answered with another error: another RFC 7591 code
    /// (`invalid_software_statement`, ...), a `401` of a server that wants an initial access
    /// token, a `5xx`, a redirect.
    #[error("the registration endpoint answered {status}{}{}", .error.as_deref().map(|e| format!(": {e}")).unwrap_or_default(), describe(.description.as_deref()))]
    Refused {
        /// The HTTP status.
        status: http::StatusCode,
        /// The error code, when the body was an error response.
        error: Option<String>,
        /// Its `error_description`, if any (capped).
        description: Option<String>,
    },
    /// The server answered with success, but not with a registration (RFC 7591 §3.2.1): not a
    /// JSON object, no `client_id`, a member of the wrong type.
    #[error("the registration endpoint sent an unusable answer ({status}): {reason}")]
    InvalidResponse {
        /// The HTTP status.
        status: http::StatusCode,
        /// What is wrong with it (names a member, never its value).
        reason: String,
    },
}

fn describe(description: Option<&str>) -> String {
    description.map(|d| format!(" ({d})")).unwrap_or_default()
}

/// A dynamic client registration request (RFC 7591 §3.1): the client's metadata, posted as JSON
/// to a registration endpoint by [`register`](Self::register).
///
/// By default it asks for the `authorization_code` and `refresh_token` grant types and the
/// `code` response type; add the redirect URIs and, as you like, a name, scopes, the
/// authentication method and any other member of RFC 7591 §2 ([`field`](Self::field)). The call
/// goes through the same kind of client as token calls (no redirects followed, nothing of this
/// layer in between), bounded by [`timeout`](Self::timeout) from connection to last byte and by
/// [`max_response_bytes`](Self::max_response_bytes) in size, to an `https` endpoint (or `http` to
/// loopback).
///
/// ```no_run
/// use reqwest_token_refresh::DynamicRegistration;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = DynamicRegistration::new("https://auth.example/register")
///     .client_name("my agent")
///     .redirect_uri("http://127.0.0.1:33418/callback")
///     .scope("mcp:tools")
///     .register()
///     .await?;
/// println!("registered as {}", client.client_id());
/// # Ok(()) }
/// ```
///
/// # Register, log in, keep the client with the tokens
///
/// A client that meets an authorization server for the first time (an MCP client finding a
/// server's authorization server from its 401, say) has no credentials there. It registers,
/// logs its user in as the client it got, and keeps the registration with the tokens: the
/// grant's [`registered_client`](crate::RefreshTokenGrant::registered_client) makes the login's
/// tokens carry it ([`TokenSet::client`]), every store saves the two together, and every refresh
/// of the set authenticates as that client, in this process or a later one.
///
/// # When a registration ends
///
/// A registration can end: its secret expires (`client_secret_expires_at`), or the server forgets
/// or revokes the client and answers `invalid_client`. Either way the layer stops with
/// [`Error::ClientRejected`] (an expired secret is not even sent:
/// [`RefreshError::RegistrationExpired`]) and no request for that key is sent until new tokens
/// are installed. The tokens were issued to the old client, so a new registration needs a new
/// login: [`DynamicRegistration::renew`] registers again when the error or the stored
/// registration says so, and the application logs the user in with the new client and installs
/// the tokens with [`TokenRefresh::set_tokens`](crate::TokenRefresh::set_tokens). The same call
/// makes the first registration: with no tokens yet there is no registration to keep.
///
/// ```no_run
/// use reqwest_token_refresh::{DynamicRegistration, Error, ServerMetadata, TokenRefresh};
///
/// # async fn run(auth: TokenRefresh, failed: Error) -> Result<(), Box<dyn std::error::Error>> {
/// let metadata = ServerMetadata::discover("https://auth.mcp.example").await?;
/// let registration = DynamicRegistration::from_metadata(&metadata)?
///     .client_name("my editor")
///     .redirect_uri("http://127.0.0.1:33418/callback");
/// // A request failed with `failed` (`Error::from_middleware(&err)`, say).
/// if let Some(client) = registration.renew(auth.tokens().as_ref(), Some(&failed)).await? {
///     let grant = metadata.refresh_token_grant().registered_client(client);
///     let login = grant.login("http://127.0.0.1:33418/callback")?;
///     let (url, pending) = login.start()?;
///     // Send the user to `url`; `callback` is the URL their browser comes back with.
/// #   let callback = url.to_string();
///     auth.set_tokens(login.exchange(&pending, &callback).await?).await?; // saved with the client
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DynamicRegistration {
    url: String,
    /// Only its client, timeout, answer cap and clock are used: the bounded call of token calls.
    endpoint: TokenEndpoint,
    metadata: ClientMetadata,
}

impl DynamicRegistration {
    /// A registration at `registration_endpoint`, asking for the default grant types, without
    /// redirect URIs yet and with the server's default authentication method.
    pub fn new(registration_endpoint: impl Into<String>) -> Self {
        let url = registration_endpoint.into();
        Self { endpoint: TokenEndpoint::new(url.clone()), url, metadata: ClientMetadata::new(None) }
    }

    /// A registration at the server's `registration_endpoint`, asking for the authentication
    /// method [`ServerMetadata::refresh_token_grant`] would use: `client_secret_basic` if the
    /// token endpoint takes it, else `client_secret_post`, else `none` (a public client) if it
    /// takes that, else the server's default.
    ///
    /// # Errors
    ///
    /// [`RegistrationError::NoRegistrationEndpoint`] when the metadata names none.
    pub fn from_metadata(metadata: &ServerMetadata) -> Result<Self, RegistrationError> {
        let Some(url) = metadata.registration_endpoint() else {
            return Err(RegistrationError::NoRegistrationEndpoint { issuer: metadata.issuer().to_owned() });
        };
        let supported = metadata.token_endpoint_auth_methods_supported();
        let method = ["client_secret_basic", "client_secret_post", "none"]
            .into_iter()
            .find(|method| supported.iter().any(|s| s == method));
        let registration = Self::new(url);
        Ok(match method {
            Some(method) => registration.token_endpoint_auth_method(method),
            None => registration,
        })
    }

    client_metadata_setters!();

    /// Sets how the client will authenticate at the token endpoint
    /// (`token_endpoint_auth_method`: `client_secret_basic`, `client_secret_post`, `none`);
    /// default: the server's (RFC 7591 §2: `client_secret_basic`).
    #[must_use = "returns the changed registration; on its own the call changes nothing"]
    pub fn token_endpoint_auth_method(mut self, method: impl Into<String>) -> Self {
        self.metadata.token_endpoint_auth_method = Some(method.into());
        self
    }

    fetch_bounds!();

    /// The client metadata as posted.
    fn body(&self) -> Value {
        Value::Object(self.metadata.members())
    }

    /// The endpoint, if it may be one, and the metadata, if it can be right.
    fn check(&self) -> Result<Url, RegistrationError> {
        let refuse = |reason: &str| RegistrationError::InvalidEndpoint { url: self.url.clone(), reason: reason.into() };
        let url = Url::parse(&self.url).map_err(|e| refuse(&format!("not a URL ({e})")))?;
        if !secure(&url) {
            return Err(refuse("not https (plain http is allowed to loopback only)"));
        }
        let invalid = |reason: String| RegistrationError::InvalidRequest { reason };
        for uri in &self.metadata.redirect_uris {
            let parsed = Url::parse(uri)
                .map_err(|e| invalid(format!("the redirect URI {uri:?} is not an absolute URL ({e})")))?;
            if parsed.fragment().is_some() {
                return Err(invalid(format!("the redirect URI {uri:?} has a fragment (RFC 6749 §3.1.2)")));
            }
        }
        if self.metadata.redirect_uris.is_empty() && self.metadata.grant_types.iter().any(|g| g == "authorization_code")
        {
            return Err(invalid("a client that logs users in needs a redirect URI".into()));
        }
        Ok(url)
    }

    /// Registers the client: posts its metadata and reads the server's answer (RFC 7591 §3.2.1).
    /// Give the result to the grant
    /// ([`registered_client`](crate::RefreshTokenGrant::registered_client)) and log in with it.
    ///
    /// # Errors
    ///
    /// Before anything is sent: [`RegistrationError::InvalidEndpoint`],
    /// [`InvalidRequest`](RegistrationError::InvalidRequest). When the call fails:
    /// [`Unreachable`](RegistrationError::Unreachable), [`TimedOut`](RegistrationError::TimedOut)
    /// (an answer that stalls or never ends included), [`TooLarge`](RegistrationError::TooLarge).
    /// When the server refuses: [`InvalidRedirectUri`](RegistrationError::InvalidRedirectUri),
    /// [`InvalidClientMetadata`](RegistrationError::InvalidClientMetadata),
    /// [`Refused`](RegistrationError::Refused); and for a success that is no registration,
    /// [`InvalidResponse`](RegistrationError::InvalidResponse).
    pub async fn register(&self) -> Result<RegisteredClient, RegistrationError> {
        let url = self.check()?;
        let shown = self.url.clone();
        let unreachable = |source: RefreshError| match &source {
            RefreshError::Transport(cause) if is_timeout(cause.as_ref()) => {
                RegistrationError::TimedOut { url: shown.clone(), after: self.endpoint.timeout }
            }
            _ => RegistrationError::Unreachable { url: shown.clone(), source },
        };
        let request = self
            .endpoint
            .request(http::Method::POST, url)
            .map_err(unreachable)?
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(self.body().to_string());
        let CappedAnswer { status, body, cut, .. } = self.endpoint.send_capped(request).await.map_err(unreachable)?;
        if cut {
            return Err(RegistrationError::TooLarge { url: self.url.clone(), limit: self.endpoint.max_response_bytes });
        }
        if status.is_success() {
            let document = serde_json::from_slice::<Value>(&body)
                .map_err(|_| RegistrationError::InvalidResponse { status, reason: "the answer is not JSON".into() })?;
            return RegisteredClient::from_response(
                document,
                &self.url,
                self.metadata.token_endpoint_auth_method.as_deref(),
            )
            .map_err(|reason| RegistrationError::InvalidResponse { status, reason });
        }
        Err(refusal(status, &body))
    }

    /// Registers again when the client must be renewed, and says so; `Ok(None)` when the
    /// registration `tokens` carry is still good, and the application keeps its tokens.
    ///
    /// A registration must be renewed when there is none (`tokens` is `None` or carries no
    /// [client](TokenSet::client)), when its secret has expired, or when `error` is the layer's
    /// [`Error::ClientRejected`]: the token endpoint answered `invalid_client` or
    /// `unauthorized_client` for it, or would have been sent an expired secret
    /// ([`RefreshError::RegistrationExpired`]). The tokens belong to the old client, so a new
    /// one needs a new login; install its tokens with
    /// [`TokenRefresh::set_tokens`](crate::TokenRefresh::set_tokens), which ends the key's
    /// terminal state.
    ///
    /// # Errors
    ///
    /// As [`register`](Self::register).
    pub async fn renew(
        &self,
        tokens: Option<&TokenSet>,
        error: Option<&Error>,
    ) -> Result<Option<RegisteredClient>, RegistrationError> {
        if !must_renew(tokens.and_then(TokenSet::client), error, self.endpoint.now()) {
            return Ok(None);
        }
        self.register().await.map(Some)
    }
}

/// Whether a registration must be renewed; see [`DynamicRegistration::renew`].
fn must_renew(client: Option<&RegisteredClient>, error: Option<&Error>, now: SystemTime) -> bool {
    let rejected = matches!(error, Some(Error::ClientRejected { .. }));
    client.is_none_or(|client| rejected || client.secret_expired_at(now))
}

/// A registration endpoint's error answer, typed by its RFC 7591 §3.2.2 code.
fn refusal(status: http::StatusCode, body: &[u8]) -> RegistrationError {
    let object = serde_json::from_slice::<Value>(body).ok();
    let text = |name: &str| {
        object
            .as_ref()
            .and_then(|o| o.get(name))
            .and_then(Value::as_str)
            .map(|s| s.chars().take(MAX_DESCRIPTION_CHARS).collect::<String>())
    };
    let description = text("error_description");
    match text("error").as_deref() {
        Some("invalid_redirect_uri") => RegistrationError::InvalidRedirectUri { description },
        Some("invalid_client_metadata") => RegistrationError::InvalidClientMetadata { description },
        error => RegistrationError::Refused { status, error: error.map(str::to_owned), description },
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use serde_json::json;

    use super::*;
    use crate::TokenKey;

    #[test]
    fn the_defaults_are_what_their_docs_say() {
        assert_eq!(DEFAULT_GRANT_TYPES, ["authorization_code", "refresh_token"]);
        assert_eq!(RESPONSE_TYPES, ["code"]);
        assert_eq!(MAX_DESCRIPTION_CHARS, 256);
    }

    #[test]
    fn the_body_is_rfc_7591_client_metadata_and_fields_win() {
        let body = DynamicRegistration::new("https://as.example/register")
            .redirect_uri("http://127.0.0.1:8080/cb")
            .client_name("agent")
            .scope("read")
            .scope("write")
            .token_endpoint_auth_method("client_secret_post")
            .field("software_id", json!("4NRB1-0XZABZI9E6-5SM3R"))
            .field("client_name", json!("renamed"))
            .body();
        assert_eq!(
            body,
            json!({
                "redirect_uris": ["http://127.0.0.1:8080/cb"],
                "client_name": "renamed",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_post",
                "scope": "read write",
                "software_id": "4NRB1-0XZABZI9E6-5SM3R",
            })
        );
    }

    #[test]
    fn an_endpoint_or_metadata_that_cannot_be_right_is_refused_before_sending() {
        let check = |registration: DynamicRegistration| registration.check();
        let ok = DynamicRegistration::new("https://as.example/register").redirect_uri("https://app.example/cb");
        assert!(check(ok.clone()).is_ok());
        assert!(check(ok.clone().grant_types(["client_credentials"])).is_ok());
        for endpoint in ["http://as.example/register", "ftp://as.example", "register"] {
            let registration = DynamicRegistration::new(endpoint).redirect_uri("https://app.example/cb");
            assert!(matches!(check(registration), Err(RegistrationError::InvalidEndpoint { .. })), "{endpoint}");
        }
        assert!(
            check(DynamicRegistration::new("http://127.0.0.1:9/register").redirect_uri("https://a.example/cb")).is_ok()
        );
        for uri in ["/callback", "app.example/cb", "https://app.example/cb#x"] {
            let registration = ok.clone().redirect_uri(uri);
            assert!(matches!(check(registration), Err(RegistrationError::InvalidRequest { .. })), "{uri}");
        }
        let no_redirect = DynamicRegistration::new("https://as.example/register");
        assert!(matches!(check(no_redirect), Err(RegistrationError::InvalidRequest { .. })));
    }

    #[test]
    fn error_answers_are_typed_by_their_rfc_7591_code() {
        let refused = |body: &str| refusal(http::StatusCode::BAD_REQUEST, body.as_bytes());
        let redirect = refused(r#"{"error":"invalid_redirect_uri","error_description":"not https"}"#);
        assert!(
            matches!(&redirect, RegistrationError::InvalidRedirectUri { description: Some(d) } if d == "not https")
        );
        assert!(matches!(
            refused(r#"{"error":"invalid_client_metadata"}"#),
            RegistrationError::InvalidClientMetadata { description: None }
        ));
        let other = refused(r#"{"error":"invalid_software_statement"}"#);
        assert!(
            matches!(&other, RegistrationError::Refused { error: Some(e), .. } if e == "invalid_software_statement")
        );
        assert!(matches!(
            refused("<html>oops</html>"),
            RegistrationError::Refused { error: None, description: None, .. }
        ));
        let long = format!(r#"{{"error":"invalid_client_metadata","error_description":"{}"}}"#, "x".repeat(10_000));
        let RegistrationError::InvalidClientMetadata { description: Some(d) } = refused(&long) else { panic!() };
        assert_eq!(d.chars().count(), MAX_DESCRIPTION_CHARS);
        assert_eq!(redirect.to_string(), "the server refused a redirect URI (not https)");
    }

    #[test]
    fn a_registration_is_renewed_when_missing_expired_or_rejected() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let good =
            RegisteredClient::new("c").with_client_secret("s-1").with_secret_expires_at(now + Duration::from_secs(1));
        let expired = good.clone().with_secret_expires_at(now);
        let rejected = Error::ClientRejected {
            key: TokenKey::default(),
            reason: RefreshError::protocol(http::StatusCode::UNAUTHORIZED, crate::OAuthError::new("invalid_client")),
        };
        let transient = Error::Refresh { key: TokenKey::default(), source: RefreshError::Aborted };
        assert!(must_renew(None, None, now));
        assert!(!must_renew(Some(&good), None, now));
        assert!(!must_renew(Some(&good), Some(&transient), now));
        assert!(must_renew(Some(&good), Some(&rejected), now));
        assert!(must_renew(Some(&expired), None, now));
    }
}

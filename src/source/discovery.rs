//! Discovery: an authorization server's metadata read from its issuer URL (RFC 8414, falling
//! back to OpenID Connect Discovery 1.0), checked, and made into a grant ([`Discovery`],
//! [`ServerMetadata`]). The bounded fetch of a metadata document ([`fetch_json`]) is here too,
//! shared with the protected resource metadata of RFC 9728
//! ([`ProtectedResource`](super::ProtectedResource)).
//!
//! # Redirects
//!
//! A metadata document decides where tokens and credentials go, so the fetch follows a
//! redirect only within the origin it asked ([`MAX_REDIRECTS`] of them at most, each hop
//! bounded like a fetch): a well-known path that moved on its own server is still that server's
//! answer, while a redirect to another origin would let that origin speak for this one, and is
//! refused ([`DiscoveryError::CrossOriginRedirect`]).

use std::error::Error as StdError;
use std::time::Duration;

use http::header::{ACCEPT, LOCATION};
use serde_json::Value;
use url::Url;

use super::endpoint::{CappedAnswer, PkceAdvertised, TokenEndpoint};
use super::{ClientAuth, ClientCredentials, RefreshTokenGrant};
use crate::error::RefreshError;

/// The RFC 8414 §3 well-known suffix.
const OAUTH_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";
/// The OpenID Connect Discovery 1.0 §4 well-known suffix.
const OPENID_WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// How many redirects within its own origin one metadata fetch follows: 3.
pub(super) const MAX_REDIRECTS: usize = 3;

/// Why an issuer's metadata could not be had or used. No variant holds a secret: discovery sends
/// none.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The issuer is not a URL an authorization server may have (RFC 8414 §2): not `https`
    /// (plain `http` is allowed to loopback only), or with a query or fragment.
    #[error("the issuer {issuer:?} cannot be used: {reason}")]
    InvalidIssuer {
        /// The issuer as given.
        issuer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A metadata URL could not be reached or its answer not read.
    #[error("the metadata at {url} could not be fetched")]
    Unreachable {
        /// The URL fetched.
        url: String,
        /// Why.
        #[source]
        source: RefreshError,
    },
    /// A metadata URL did not answer in time (the [timeout](Discovery::timeout) covers the whole
    /// exchange, the last byte of the body included).
    #[error("the metadata at {url} did not arrive within {after:?}")]
    TimedOut {
        /// The URL fetched.
        url: String,
        /// The timeout it had.
        after: Duration,
    },
    /// A metadata document was larger than the [limit](Discovery::max_response_bytes); it was
    /// not read past it.
    #[error("the metadata at {url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL fetched.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// Neither well-known location served a metadata document.
    #[error("no metadata document at {}", .tried.join(" or "))]
    NotFound {
        /// The URLs tried, in order.
        tried: Vec<String>,
        /// The last one's HTTP status.
        status: http::StatusCode,
    },
    /// The document is JSON but not usable metadata (no `token_endpoint`, a field of the wrong
    /// type, an endpoint that is not a URL).
    #[error("the metadata at {url} is not usable: {reason}")]
    Invalid {
        /// The URL fetched.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The document names another issuer than the one asked for. RFC 8414 §3.3: the `issuer` in
    /// the document must be identical to the issuer the URL was made from, or the metadata must
    /// not be used (it could send tokens and credentials to an impostor).
    #[error("the metadata names issuer {found:?}, not {expected:?}: refused")]
    IssuerMismatch {
        /// The issuer asked for.
        expected: String,
        /// The issuer the document names.
        found: String,
    },
    /// An endpoint in the document is plain `http` to a host that is not loopback: tokens and
    /// credentials would travel in clear.
    #[error("the metadata's {name} {url:?} is not https: refused")]
    InsecureEndpoint {
        /// Which endpoint (`token_endpoint`, ...).
        name: String,
        /// Its URL.
        url: String,
    },
    /// The protected resource's URL cannot be one (RFC 9728 §1.2, RFC 8707 §2): not `https`
    /// (plain `http` is allowed to loopback only), or not an absolute URL, or with a fragment.
    #[error("the resource {resource:?} cannot be used: {reason}")]
    InvalidResource {
        /// The resource as given.
        resource: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `resource_metadata` URL of a 401's challenge (RFC 9728 §5.1) cannot be fetched
    /// safely: not a URL, or not `https` (plain `http` is allowed to loopback only).
    #[error("the resource metadata URL {url:?} cannot be used: {reason}")]
    InvalidMetadataUrl {
        /// The URL as the challenge gave it.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The protected resource metadata is for another resource. RFC 9728 §3.3: its `resource`
    /// must be the resource asked for (the URL the client sent its request to), or the document
    /// must not be used: it could send the client's tokens to another server's authorization
    /// server.
    #[error("the metadata is for resource {found:?}, not {expected:?}: refused")]
    ResourceMismatch {
        /// The resource asked for.
        expected: String,
        /// The resource the document names.
        found: String,
    },
    /// A metadata URL redirected to another origin: refused, since that origin would speak for
    /// this one (see [`Discovery`]'s redirect rule).
    #[error("the metadata at {url} redirects to {location}, another origin: refused")]
    CrossOriginRedirect {
        /// The URL fetched.
        url: String,
        /// Where it redirected.
        location: String,
    },
}

/// Fetches an issuer's metadata; [`ServerMetadata::discover`] with the default bounds.
///
/// The document is looked for where RFC 8414 §3.1 puts it, the well-known segment between the
/// host and the issuer's path (`https://idp.example/tenant` →
/// `https://idp.example/.well-known/oauth-authorization-server/tenant`), then, each time the
/// location has none (an error status, or a body that is not a JSON object), at the OpenID
/// Connect locations, in the order the MCP authorization specification lists:
/// `https://idp.example/.well-known/openid-configuration/tenant` (RFC 8414 §5's form), then
/// appended to the issuer as OpenID Connect Discovery §4 puts it
/// (`https://idp.example/tenant/.well-known/openid-configuration`). An issuer without a path has
/// two locations, `/.well-known/oauth-authorization-server` and
/// `/.well-known/openid-configuration`.
///
/// Each fetch goes through the same kind of client as token calls and is bounded like them: in
/// time by [`timeout`](Self::timeout), in size by
/// [`max_response_bytes`](Self::max_response_bytes). It follows up to 3
/// redirects within the origin it asked (each hop a fetch of its own) and refuses one to another
/// origin ([`DiscoveryError::CrossOriginRedirect`]), so discovery takes at most
/// 3 locations × 4 hops × the timeout.
///
/// ```no_run
/// use std::time::Duration;
/// use reqwest_token_refresh::{Discovery, TokenRefresh};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let metadata = Discovery::new("https://login.example/tenant-7").timeout(Duration::from_secs(5)).fetch().await?;
/// let grant = metadata.refresh_token_grant().client_id("id").client_secret("secret");
/// let auth = TokenRefresh::builder(grant).allow_origin("https://api.example").build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Discovery {
    issuer: String,
    /// Only its client, timeout and answer cap are used: the bounded fetch of token calls.
    endpoint: TokenEndpoint,
}

impl Discovery {
    /// Discovery of the authorization server whose issuer identifier is `issuer`.
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        Self { endpoint: TokenEndpoint::new(issuer.clone()), issuer }
    }

    /// Discovery of `issuer` with the bounds and client of `endpoint` (a protected resource's).
    pub(super) fn with_endpoint(issuer: impl Into<String>, endpoint: TokenEndpoint) -> Self {
        Self { issuer: issuer.into(), endpoint }
    }

    fetch_bounds!();

    /// Fetches and checks the metadata.
    ///
    /// # Errors
    ///
    /// [`DiscoveryError::InvalidIssuer`] before any fetch for an issuer that is not `https` (or
    /// `http` to loopback), or has a query or fragment; [`DiscoveryError::Unreachable`],
    /// [`TimedOut`](DiscoveryError::TimedOut) or [`TooLarge`](DiscoveryError::TooLarge) when a
    /// fetch fails; [`NotFound`](DiscoveryError::NotFound) when neither location has a document;
    /// [`Invalid`](DiscoveryError::Invalid), [`IssuerMismatch`](DiscoveryError::IssuerMismatch)
    /// or [`InsecureEndpoint`](DiscoveryError::InsecureEndpoint) for a document that cannot be
    /// trusted.
    pub async fn fetch(&self) -> Result<ServerMetadata, DiscoveryError> {
        let issuer = parse_issuer(&self.issuer)?;
        let (document, at) = fetch_first(&self.endpoint, metadata_urls(&issuer)).await?;
        ServerMetadata::from_document(&self.issuer, at.as_str(), document)
    }
}

/// The first of `urls` that has a JSON document, fetched in order with [`fetch_json`], and where
/// it was found; [`DiscoveryError::NotFound`] naming every location tried when none has one.
pub(super) async fn fetch_first(
    endpoint: &TokenEndpoint,
    urls: impl IntoIterator<Item = Url>,
) -> Result<(Value, Url), DiscoveryError> {
    let mut tried = Vec::new();
    let mut last_status = http::StatusCode::NOT_FOUND;
    for url in urls {
        tried.push(url.to_string());
        match fetch_json(endpoint, url).await? {
            Fetched::Document(document, at) => return Ok((document, at)),
            Fetched::Nothing(status) => last_status = status,
        }
    }
    Err(DiscoveryError::NotFound { tried, status: last_status })
}

/// The bounds of a metadata fetch or a registration call, as builder methods of a type that holds
/// its [`TokenEndpoint`] in `self.endpoint`: [`Discovery`],
/// [`ProtectedResource`](crate::ProtectedResource) and
/// [`DynamicRegistration`](crate::DynamicRegistration).
macro_rules! fetch_bounds {
    () => {
        /// Sets how long each call may take, connection to last byte. Default: 30 seconds
        /// ([`DEFAULT_TOKEN_TIMEOUT`](crate::DEFAULT_TOKEN_TIMEOUT)), as for a token call.
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.endpoint.timeout = timeout;
            self
        }

        /// Sets the largest answer read, of each call. Default: 64 KiB
        /// ([`DEFAULT_MAX_RESPONSE_BYTES`](crate::DEFAULT_MAX_RESPONSE_BYTES)); real ones are a
        /// few KiB.
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn max_response_bytes(mut self, limit: usize) -> Self {
            self.endpoint.max_response_bytes = limit;
            self
        }

        /// Calls through this client instead of the crate's own (which follows no redirects by
        /// itself; give yours the same policy, or the redirect rule cannot hold).
        #[must_use = "a builder method returns the changed builder; on its own the call changes nothing"]
        pub fn http_client(mut self, client: reqwest::Client) -> Self {
            self.endpoint.http = Some(client);
            self
        }
    };
}
pub(super) use fetch_bounds;

/// What one metadata location had.
pub(super) enum Fetched {
    /// A JSON object, and where it was found (after same-origin redirects).
    Document(Value, Url),
    /// No document at this location: the status it answered with.
    Nothing(http::StatusCode),
}

/// Fetches `url` through `endpoint`'s client with its bounds, following up to [`MAX_REDIRECTS`]
/// redirects within its origin. A location answers nothing when its status is an error, when it
/// redirects without a usable `Location` (or too many times), or when its body is not a JSON
/// object: a catch-all page (`200` with HTML) is as good as a 404 here, so the caller looks in
/// the next place.
pub(super) async fn fetch_json(endpoint: &TokenEndpoint, url: Url) -> Result<Fetched, DiscoveryError> {
    let mut at = url;
    let mut status = http::StatusCode::NOT_FOUND;
    for _ in 0..=MAX_REDIRECTS {
        let shown = at.to_string();
        let unreachable = |source: RefreshError| match &source {
            RefreshError::Transport(cause) if is_timeout(cause.as_ref()) => {
                DiscoveryError::TimedOut { url: shown.clone(), after: endpoint.timeout }
            }
            _ => DiscoveryError::Unreachable { url: shown.clone(), source },
        };
        let request =
            endpoint.request(http::Method::GET, at.clone()).map_err(unreachable)?.header(ACCEPT, "application/json");
        let CappedAnswer { status: answered, headers, body, cut } =
            endpoint.send_capped(request).await.map_err(unreachable)?;
        status = answered;
        if status.is_redirection() {
            let next = headers.get(LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| at.join(l).ok());
            let Some(next) = next else { return Ok(Fetched::Nothing(status)) };
            if !crate::origin::same_origin(&at, &next) {
                return Err(DiscoveryError::CrossOriginRedirect { url: shown, location: next.to_string() });
            }
            at = next;
            continue;
        }
        if !status.is_success() {
            return Ok(Fetched::Nothing(status));
        }
        if cut {
            return Err(DiscoveryError::TooLarge { url: shown, limit: endpoint.max_response_bytes });
        }
        return match serde_json::from_slice::<Value>(&body) {
            Ok(document @ Value::Object(_)) => Ok(Fetched::Document(document, at)),
            _ => Ok(Fetched::Nothing(status)),
        };
    }
    Ok(Fetched::Nothing(status))
}

/// Whether a transport failure is reqwest's timeout.
pub(super) fn is_timeout(cause: &(dyn StdError + Send + Sync + 'static)) -> bool {
    let mut next: Option<&(dyn StdError + 'static)> = Some(cause);
    while let Some(error) = next {
        if error.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_timeout) {
            return true;
        }
        next = error.source();
    }
    false
}

/// An authorization server's metadata (RFC 8414 §2), checked: its issuer is the one asked for and
/// its endpoints are `https` (or loopback). From [`Discovery::fetch`] or
/// [`ServerMetadata::discover`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServerMetadata {
    issuer: String,
    url: String,
    token_endpoint: String,
    authorization_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    registration_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Vec<String>,
    dpop_signing_alg_values_supported: Vec<String>,
    /// `None`: the document does not list them.
    code_challenge_methods_supported: Option<Vec<String>>,
    client_id_metadata_document_supported: bool,
    document: Value,
}

impl ServerMetadata {
    /// Fetches `issuer`'s metadata with the default bounds (30 seconds, 64 KiB a fetch); see
    /// [`Discovery`] to change them.
    ///
    /// # Errors
    ///
    /// As [`Discovery::fetch`].
    pub async fn discover(issuer: impl Into<String>) -> Result<Self, DiscoveryError> {
        Discovery::new(issuer).fetch().await
    }

    fn from_document(issuer: &str, url: &str, document: Value) -> Result<Self, DiscoveryError> {
        let invalid = |reason: String| DiscoveryError::Invalid { url: url.to_owned(), reason };
        let found = match document.get("issuer") {
            Some(Value::String(found)) => found,
            Some(_) => return Err(invalid("`issuer` is not a string".into())),
            None => return Err(invalid("the document has no `issuer`".into())),
        };
        if found != issuer {
            return Err(DiscoveryError::IssuerMismatch { expected: issuer.to_owned(), found: found.clone() });
        }
        let endpoint = |name: &str| -> Result<Option<String>, DiscoveryError> {
            match document.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(value)) => {
                    let parsed = Url::parse(value).map_err(|e| invalid(format!("`{name}` is not a URL: {e}")))?;
                    if !secure(&parsed) {
                        return Err(DiscoveryError::InsecureEndpoint { name: name.to_owned(), url: value.clone() });
                    }
                    Ok(Some(value.clone()))
                }
                Some(_) => Err(invalid(format!("`{name}` is not a string"))),
            }
        };
        let strings = |name: &str| -> Result<Option<Vec<String>>, DiscoveryError> {
            match document.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(values)) => values
                    .iter()
                    .map(|value| value.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .map(Some)
                    .ok_or_else(|| invalid(format!("`{name}` is not an array of strings"))),
                Some(_) => Err(invalid(format!("`{name}` is not an array of strings"))),
            }
        };
        let client_id_metadata_document_supported = match document.get("client_id_metadata_document_supported") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(supported)) => *supported,
            Some(_) => return Err(invalid("`client_id_metadata_document_supported` is not a boolean".into())),
        };
        let token_endpoint =
            endpoint("token_endpoint")?.ok_or_else(|| invalid("the document has no `token_endpoint`".into()))?;
        Ok(Self {
            issuer: issuer.to_owned(),
            url: url.to_owned(),
            token_endpoint,
            authorization_endpoint: endpoint("authorization_endpoint")?,
            revocation_endpoint: endpoint("revocation_endpoint")?,
            registration_endpoint: endpoint("registration_endpoint")?,
            // RFC 8414 §2: "If omitted, the default is client_secret_basic".
            token_endpoint_auth_methods_supported: strings("token_endpoint_auth_methods_supported")?
                .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]),
            dpop_signing_alg_values_supported: strings("dpop_signing_alg_values_supported")?.unwrap_or_default(),
            code_challenge_methods_supported: strings("code_challenge_methods_supported")?,
            client_id_metadata_document_supported,
            document,
        })
    }

    /// The issuer identifier, identical to the one asked for.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where the document was found.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The authorization endpoint, where users log in, if the server has one.
    pub fn authorization_endpoint(&self) -> Option<&str> {
        self.authorization_endpoint.as_deref()
    }

    /// The token revocation endpoint (RFC 7009), if the server has one.
    pub fn revocation_endpoint(&self) -> Option<&str> {
        self.revocation_endpoint.as_deref()
    }

    /// The dynamic client registration endpoint (RFC 7591 §3), if the server has one: where
    /// [`DynamicRegistration::from_metadata`](crate::DynamicRegistration::from_metadata)
    /// registers. Checked like the other endpoints (`https`, or `http` to loopback).
    pub fn registration_endpoint(&self) -> Option<&str> {
        self.registration_endpoint.as_deref()
    }

    /// The client authentication methods the token endpoint takes (`client_secret_basic`,
    /// `client_secret_post`, `private_key_jwt`, ...); `["client_secret_basic"]` when the document
    /// does not say, as RFC 8414 §2 has it.
    pub fn token_endpoint_auth_methods_supported(&self) -> &[String] {
        &self.token_endpoint_auth_methods_supported
    }

    /// The JWS algorithms the server takes in DPoP proofs (RFC 9449 §5.1); empty when it does
    /// not say (it may not support DPoP).
    pub fn dpop_signing_alg_values_supported(&self) -> &[String] {
        &self.dpop_signing_alg_values_supported
    }

    /// The PKCE code challenge methods the server supports (`code_challenge_methods_supported`,
    /// RFC 8414 §2: `S256`, `plain`); `None` when the document does not list them, which RFC
    /// 8414 reads as no PKCE support.
    pub fn code_challenge_methods_supported(&self) -> Option<&[String]> {
        self.code_challenge_methods_supported.as_deref()
    }

    /// Whether the server takes clients identified by the URL of their metadata document
    /// (`client_id_metadata_document_supported`; see
    /// [`ClientMetadataDocument`](crate::ClientMetadataDocument)); `false` when it does not say.
    pub fn client_id_metadata_document_supported(&self) -> bool {
        self.client_id_metadata_document_supported
    }

    /// The whole document, for members this type does not name.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// A refresh-token grant against this server's token endpoint, with its authorization
    /// endpoint for [`login`](RefreshTokenGrant::login), its revocation endpoint (RFC 7009) for
    /// [`TokenRefresh::revoke`](crate::TokenRefresh::revoke), and the client secret sent as the server
    /// prefers: HTTP Basic if it takes `client_secret_basic`, else in the body if it takes
    /// `client_secret_post`, else HTTP Basic (set [`client_auth`](RefreshTokenGrant::client_auth)
    /// yourself for `private_key_jwt`). Add the client id and secret, and where the tokens go.
    ///
    /// When the document lists [`code_challenge_methods_supported`](Self::code_challenge_methods_supported),
    /// the grant remembers them: a list without `S256`, the one method this crate uses, makes
    /// [`login`](RefreshTokenGrant::login) fail with [`LoginError::PkceUnsupported`](crate::LoginError::PkceUnsupported)
    /// rather than send the user to a login the server cannot complete. A document that lists
    /// none leaves the login alone here (many servers support PKCE without saying so); the MCP
    /// path, [`ResourceMetadata::refresh_token_grant`](crate::ResourceMetadata::refresh_token_grant),
    /// refuses it, as the MCP authorization specification requires.
    pub fn refresh_token_grant(&self) -> RefreshTokenGrant {
        let mut grant = RefreshTokenGrant::new(&self.token_endpoint).client_auth(self.secret_auth());
        if let Some(methods) = &self.code_challenge_methods_supported {
            grant = grant.pkce_advertised(PkceAdvertised::Listed(methods.clone()));
        }
        if let Some(authorize_url) = &self.authorization_endpoint {
            grant = grant.authorize_url(authorize_url);
        }
        match &self.revocation_endpoint {
            Some(revocation_url) => grant.revocation_url(revocation_url),
            None => grant,
        }
    }

    /// A client-credentials grant against this server's token endpoint (and its revocation
    /// endpoint), the client secret sent as in [`refresh_token_grant`](Self::refresh_token_grant).
    pub fn client_credentials(&self) -> ClientCredentials {
        let grant = ClientCredentials::new(&self.token_endpoint).client_auth(self.secret_auth());
        match &self.revocation_endpoint {
            Some(revocation_url) => grant.revocation_url(revocation_url),
            None => grant,
        }
    }

    pub(super) fn secret_auth(&self) -> ClientAuth {
        let supports = |method: &str| self.token_endpoint_auth_methods_supported.iter().any(|m| m == method);
        if !supports("client_secret_basic") && supports("client_secret_post") {
            ClientAuth::RequestBody
        } else {
            ClientAuth::Basic
        }
    }
}

/// The issuer as a URL, if it may be one (RFC 8414 §2: `https`, no query, no fragment; plain
/// `http` only to loopback, for tests and local servers).
fn parse_issuer(issuer: &str) -> Result<Url, DiscoveryError> {
    let refuse = |reason: &str| DiscoveryError::InvalidIssuer { issuer: issuer.to_owned(), reason: reason.to_owned() };
    let url = Url::parse(issuer).map_err(|e| refuse(&format!("not a URL ({e})")))?;
    if !secure(&url) {
        return Err(refuse("not https (plain http is allowed to loopback only)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("an issuer has no query or fragment"));
    }
    Ok(url)
}

/// `https`, or `http` to a loopback host.
pub(super) fn secure(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => crate::origin::is_loopback(url),
        _ => false,
    }
}

/// Where the metadata may be, in the order the MCP authorization specification lists: RFC 8414
/// §3.1 (the well-known segment between host and path), then for an issuer with a path the
/// OpenID suffix there too (RFC 8414 §5), then OpenID Connect Discovery §4 (appended to the
/// issuer). Without a path the last two are one.
fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let at = |path: String| {
        let mut url = issuer.clone();
        url.set_path(&path);
        url
    };
    let mut urls = vec![at(format!("{OAUTH_WELL_KNOWN}{path}"))];
    if !path.is_empty() {
        urls.push(at(format!("{OPENID_WELL_KNOWN}{path}")));
    }
    urls.push(at(format!("{path}{OPENID_WELL_KNOWN}")));
    urls
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn urls(issuer: &str) -> Vec<String> {
        metadata_urls(&parse_issuer(issuer).unwrap()).iter().map(Url::to_string).collect()
    }

    #[test]
    fn the_well_known_segment_goes_between_host_and_path_then_after_the_issuer() {
        assert_eq!(
            urls("https://idp.example"),
            [
                "https://idp.example/.well-known/oauth-authorization-server",
                "https://idp.example/.well-known/openid-configuration"
            ]
        );
        // RFC 8414 §3.1's own example, with the MCP specification's order for an issuer with a
        // path: the OpenID suffix inserted (RFC 8414 §5), then appended.
        assert_eq!(
            urls("https://example.com/issuer1"),
            [
                "https://example.com/.well-known/oauth-authorization-server/issuer1",
                "https://example.com/.well-known/openid-configuration/issuer1",
                "https://example.com/issuer1/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            urls("https://idp.example:8443/realms/a/"),
            [
                "https://idp.example:8443/.well-known/oauth-authorization-server/realms/a",
                "https://idp.example:8443/.well-known/openid-configuration/realms/a",
                "https://idp.example:8443/realms/a/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn the_redirect_limit_is_what_its_doc_says() {
        assert_eq!(MAX_REDIRECTS, 3);
    }

    #[test]
    fn only_https_and_loopback_issuers_without_query_or_fragment_are_used() {
        for good in ["https://idp.example", "http://127.0.0.1:8080", "http://[::1]/x", "http://localhost/realm"] {
            assert!(parse_issuer(good).is_ok(), "{good}");
        }
        for bad in [
            "http://idp.example",
            "http://10.0.0.1",
            "https://idp.example?tenant=a",
            "https://idp.example#top",
            "ftp://idp.example",
            "idp.example",
        ] {
            assert!(matches!(parse_issuer(bad), Err(DiscoveryError::InvalidIssuer { .. })), "{bad}");
        }
    }

    #[test]
    fn a_document_is_read_with_rfc_8414s_defaults() {
        let document = json!({"issuer": "https://idp.example", "token_endpoint": "https://idp.example/token"});
        let metadata = ServerMetadata::from_document("https://idp.example", "u", document).unwrap();
        assert_eq!(metadata.token_endpoint_auth_methods_supported(), ["client_secret_basic"]);
        assert!(metadata.dpop_signing_alg_values_supported().is_empty());
        assert_eq!((metadata.authorization_endpoint(), metadata.revocation_endpoint()), (None, None));
        assert_eq!(metadata.registration_endpoint(), None);
        assert_eq!(metadata.secret_auth(), ClientAuth::Basic);
    }

    #[test]
    fn pkce_methods_and_client_metadata_document_support_are_read_as_listed() {
        let read = |extra: Value| {
            let mut document = json!({"issuer": "https://i", "token_endpoint": "https://i/t", "authorization_endpoint": "https://i/a"});
            document.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            ServerMetadata::from_document("https://i", "u", document)
        };
        let absent = read(json!({})).unwrap();
        assert_eq!(absent.code_challenge_methods_supported(), None, "absent is not an empty list");
        assert!(!absent.client_id_metadata_document_supported());
        assert_eq!(absent.refresh_token_grant().login("https://app.example/cb").err().map(|e| e.to_string()), None);
        let listed = read(json!({
            "code_challenge_methods_supported": ["plain", "S256"],
            "client_id_metadata_document_supported": true,
        }))
        .unwrap();
        assert_eq!(listed.code_challenge_methods_supported(), Some(&["plain".to_owned(), "S256".to_owned()][..]));
        assert!(listed.client_id_metadata_document_supported());
        assert!(listed.refresh_token_grant().login("https://app.example/cb").is_ok());
        let without_s256 = read(json!({"code_challenge_methods_supported": ["plain"]})).unwrap();
        assert!(matches!(
            without_s256.refresh_token_grant().login("https://app.example/cb"),
            Err(crate::LoginError::PkceUnsupported { methods: Some(_) })
        ));
        assert!(matches!(
            read(json!({"client_id_metadata_document_supported": "yes"})),
            Err(DiscoveryError::Invalid { .. })
        ));
        assert!(matches!(
            read(json!({"code_challenge_methods_supported": "S256"})),
            Err(DiscoveryError::Invalid { .. })
        ));
    }

    #[test]
    fn the_secret_goes_where_the_server_takes_it() {
        let with = |methods: Value| {
            let document = json!({"issuer": "https://i", "token_endpoint": "https://i/t", "token_endpoint_auth_methods_supported": methods});
            ServerMetadata::from_document("https://i", "u", document).unwrap().secret_auth()
        };
        assert_eq!(with(json!(["client_secret_post"])), ClientAuth::RequestBody);
        assert_eq!(with(json!(["client_secret_post", "client_secret_basic"])), ClientAuth::Basic);
        assert_eq!(with(json!(["private_key_jwt"])), ClientAuth::Basic);
    }

    #[test]
    fn a_document_that_cannot_be_trusted_or_used_is_refused_with_the_reason() {
        let read = |document: Value| ServerMetadata::from_document("https://idp.example", "u", document);
        let mismatch = read(json!({"issuer": "https://idp.example/", "token_endpoint": "https://idp.example/t"}));
        assert!(
            matches!(&mismatch, Err(DiscoveryError::IssuerMismatch { found, .. }) if found == "https://idp.example/"),
            "identical means identical, a trailing slash too: {mismatch:?}"
        );
        assert!(matches!(
            read(json!({"token_endpoint": "https://idp.example/t"})),
            Err(DiscoveryError::Invalid { .. })
        ));
        assert!(matches!(read(json!({"issuer": "https://idp.example"})), Err(DiscoveryError::Invalid { .. })));
        let insecure = read(json!({"issuer": "https://idp.example", "token_endpoint": "http://idp.example/t"}));
        assert!(matches!(&insecure, Err(DiscoveryError::InsecureEndpoint { name, .. }) if name == "token_endpoint"));
        let insecure = read(json!({
            "issuer": "https://idp.example",
            "token_endpoint": "https://idp.example/t",
            "registration_endpoint": "http://idp.example/register",
        }));
        assert!(
            matches!(&insecure, Err(DiscoveryError::InsecureEndpoint { name, .. }) if name == "registration_endpoint")
        );
        let wrong_type = read(json!({
            "issuer": "https://idp.example",
            "token_endpoint": "https://idp.example/t",
            "token_endpoint_auth_methods_supported": "client_secret_basic",
        }));
        assert!(matches!(wrong_type, Err(DiscoveryError::Invalid { .. })));
    }
}

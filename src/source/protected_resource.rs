//! Protected resource metadata (RFC 9728): from a resource server's URL, or the 401 it answered
//! with, to the authorization server that issues its tokens, checked at each step
//! ([`ProtectedResource`], [`ResourceMetadata`]).
//!
//! This is how an MCP client that knows nothing but a server's URL finds where to log in: the
//! server's first 401 names its metadata document in `WWW-Authenticate`
//! (`Bearer resource_metadata="https://mcp.example/.well-known/oauth-protected-resource/mcp"`,
//! RFC 9728 §5.1), the document names the authorization servers (`authorization_servers`), and
//! the first of them is discovered as [`Discovery`] does (RFC 8414, then OpenID Connect). A 401
//! without `resource_metadata` falls back to the well-known locations the MCP authorization
//! specification lists: `/.well-known/oauth-protected-resource` inserted before the resource's
//! path, then at the root of its origin.
//!
//! What each step checks, and why, is on [`ProtectedResource`], the public face of this file.

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;
use serde_json::Value;
use url::Url;

use super::discovery::{fetch_bounds, fetch_first, secure};
use super::endpoint::{PkceAdvertised, TokenEndpoint};
use super::{ClientCredentials, Discovery, DiscoveryError, RefreshTokenGrant, ServerMetadata};
use crate::challenge::parse_challenges;

/// RFC 9728 §3's well-known suffix.
const PROTECTED_RESOURCE_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Fetches a protected resource's metadata (RFC 9728) and then its authorization server's, as
/// an MCP client does from a server's first 401; [`ResourceMetadata::discover`] and
/// [`ResourceMetadata::from_challenge`] do the same with the default bounds.
///
/// The 401's `WWW-Authenticate` names the metadata document (`resource_metadata`, RFC 9728
/// §5.1, in a challenge of any scheme); without it, the document is looked for at the
/// well-known locations the MCP authorization specification lists, the suffix
/// `/.well-known/oauth-protected-resource` inserted before the resource's path, then at the
/// root of its origin. The document names the authorization servers; the first is discovered as
/// [`Discovery`] does.
///
/// # What is checked, and why
///
/// Each step could hand the client's tokens to someone else, so each is checked before it is
/// used. The resource must be `https` (plain `http` to loopback only); the document's `resource`
/// must be the resource asked for (RFC 9728 §3.3: the URL the client sent its request to,
/// compared as URLs, so `https://mcp.example` and `https://mcp.example/` are one, `/mcp` and
/// `/mcp/` two), else [`DiscoveryError::ResourceMismatch`]; a `resource_metadata` URL must be
/// `https` too; the authorization server's metadata must name the issuer the resource listed
/// ([`DiscoveryError::IssuerMismatch`]). Every fetch has [`Discovery`]'s bounds: time, size,
/// and redirects followed within the origin only.
///
/// The grants made from the result ([`ResourceMetadata::refresh_token_grant`]) carry the
/// resource as an RFC 8707 resource indicator on every token request and on a login's
/// authorize URL, as the MCP specification requires, and send the tokens to the resource's
/// origin and nowhere else.
///
/// ```no_run
/// use reqwest_token_refresh::{ProtectedResource, TokenRefresh};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mcp = "https://mcp.example/mcp";
/// let first = reqwest::Client::new().post(mcp).send().await?;
/// assert_eq!(first.status(), 401);
/// let metadata = ProtectedResource::new(mcp).challenge(first.headers()).fetch().await?;
/// println!("log in at {:?}", metadata.authorization_server().authorization_endpoint());
/// // The token goes to https://mcp.example only, and each token request names the resource.
/// let grant = metadata.refresh_token_grant().client_id("registered-client");
/// let login = grant.login("http://127.0.0.1:8976/callback")?;
/// let auth = TokenRefresh::builder(grant).build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ProtectedResource {
    resource: String,
    /// What the 401 said, once [`challenge`](Self::challenge) read it.
    challenged: Challenged,
    /// Only its client, timeout and answer cap are used, for every fetch: [`Discovery`]'s.
    endpoint: TokenEndpoint,
}

/// What a 401's `WWW-Authenticate` says about discovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Challenged {
    /// `resource_metadata` (RFC 9728 §5.1), from whichever challenge has it.
    metadata_url: Option<String>,
    /// `scope` of that challenge (or of the first `Bearer` one): the scopes the resource wants
    /// for this request (RFC 6750 §3).
    scope: Option<String>,
}

impl Challenged {
    /// Reads every `WWW-Authenticate` value of `headers`: the first challenge, of any scheme
    /// (`Bearer`, `DPoP`), with a `resource_metadata` gives it and its `scope`; without one, the
    /// first `Bearer` challenge's `scope`.
    fn read(headers: &HeaderMap) -> Self {
        let challenges: Vec<_> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let param = |params: &[(String, String)], name: &str| {
            params.iter().find(|(param, _)| param == name).map(|(_, value)| value.clone())
        };
        if let Some(challenge) = challenges.iter().find(|c| param(&c.params, "resource_metadata").is_some()) {
            let params = &challenge.params;
            return Self { metadata_url: param(params, "resource_metadata"), scope: param(params, "scope") };
        }
        let scope = challenges.iter().find(|c| c.scheme == "bearer").and_then(|c| param(&c.params, "scope"));
        Self { metadata_url: None, scope }
    }
}

impl ProtectedResource {
    /// Discovery for the protected resource at `resource`: the URL its API (an MCP server's
    /// endpoint, say) is called at, which its metadata must name.
    pub fn new(resource: impl Into<String>) -> Self {
        let resource = resource.into();
        Self { endpoint: TokenEndpoint::new(resource.clone()), resource, challenged: Challenged::default() }
    }

    /// Reads the `WWW-Authenticate` headers of the resource's 401: the `resource_metadata` URL
    /// of any challenge (RFC 9728 §5.1) is fetched instead of the well-known locations, and the
    /// challenge's `scope` becomes the scopes the grants ask for
    /// ([`ResourceMetadata::challenge_scope`]). Headers without one leave the well-known
    /// locations.
    #[must_use = "returns the changed discovery; on its own the call changes nothing"]
    pub fn challenge(mut self, headers: &HeaderMap) -> Self {
        self.challenged = Challenged::read(headers);
        self
    }

    fetch_bounds!();

    /// Fetches and checks the protected resource's metadata, then its first authorization
    /// server's.
    ///
    /// The resource's metadata is fetched from the challenge's `resource_metadata` if
    /// [`challenge`](Self::challenge) found one, else from
    /// `/.well-known/oauth-protected-resource` followed by the resource's path (and query), and
    /// if that has no document, from `/.well-known/oauth-protected-resource` at the resource's
    /// origin. Each fetch and each authorization-server location is bounded as in
    /// [`Discovery`]: with every redirect a fetch of its own, at most 2 locations for the
    /// resource and 3 for its authorization server, each up to 4 fetches of at most the
    /// [timeout](Self::timeout).
    ///
    /// # Errors
    ///
    /// Before any fetch: [`DiscoveryError::InvalidResource`] for a resource that is not `https`
    /// (or `http` to loopback), not an absolute URL, or has a fragment;
    /// [`InvalidMetadataUrl`](DiscoveryError::InvalidMetadataUrl) for a challenge's
    /// `resource_metadata` that is not a URL or not `https` (or loopback). Then
    /// [`Unreachable`](DiscoveryError::Unreachable), [`TimedOut`](DiscoveryError::TimedOut),
    /// [`TooLarge`](DiscoveryError::TooLarge) or
    /// [`CrossOriginRedirect`](DiscoveryError::CrossOriginRedirect) when a fetch fails;
    /// [`NotFound`](DiscoveryError::NotFound) when no location has a document;
    /// [`ResourceMismatch`](DiscoveryError::ResourceMismatch) for a document about another
    /// resource, [`Invalid`](DiscoveryError::Invalid) for one that names no authorization
    /// server or has a member of the wrong type; and the errors of [`Discovery::fetch`] for the
    /// authorization server (an [`IssuerMismatch`](DiscoveryError::IssuerMismatch) among them).
    pub async fn fetch(&self) -> Result<ResourceMetadata, DiscoveryError> {
        let resource = parse_resource(&self.resource)?;
        let urls = match &self.challenged.metadata_url {
            Some(url) => vec![parse_metadata_url(url)?],
            None => well_known_urls(&resource),
        };
        let (document, at) = fetch_first(&self.endpoint, urls).await?;
        self.read(&resource, at, document).await
    }

    /// The document found at `at`, checked, and its first authorization server discovered.
    async fn read(&self, resource: &Url, at: Url, document: Value) -> Result<ResourceMetadata, DiscoveryError> {
        let parts = DocumentParts::read(&self.resource, resource, at.as_str(), &document)?;
        let issuer = parts.authorization_servers.first().cloned().ok_or_else(|| DiscoveryError::Invalid {
            url: at.to_string(),
            reason: "the document names no authorization server (`authorization_servers`)".into(),
        })?;
        let authorization_server = Discovery::with_endpoint(issuer, self.endpoint.clone()).fetch().await?;
        Ok(ResourceMetadata {
            resource: parts.resource,
            url: at.to_string(),
            authorization_servers: parts.authorization_servers,
            scopes_supported: parts.scopes_supported,
            bearer_methods_supported: parts.bearer_methods_supported,
            challenge_scope: self.challenged.scope.clone(),
            document,
            authorization_server,
        })
    }
}

/// A document's members this crate reads, checked.
#[derive(Debug)]
struct DocumentParts {
    resource: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
    bearer_methods_supported: Vec<String>,
}

impl DocumentParts {
    /// Reads `document`, found at `url`, as the metadata of `expected` (as given, and parsed).
    fn read(expected: &str, parsed: &Url, url: &str, document: &Value) -> Result<Self, DiscoveryError> {
        let invalid = |reason: String| DiscoveryError::Invalid { url: url.to_owned(), reason };
        let found = match document.get("resource") {
            Some(Value::String(found)) => found,
            Some(_) => return Err(invalid("`resource` is not a string".into())),
            None => return Err(invalid("the document has no `resource`".into())),
        };
        // Compared as URLs: what differs only in how a URL may be written (case of the scheme
        // and host, a default port, an empty path) is one resource; anything else is another.
        if Url::parse(found).ok().as_ref() != Some(parsed) {
            return Err(DiscoveryError::ResourceMismatch { expected: expected.to_owned(), found: found.clone() });
        }
        let strings = |name: &str| -> Result<Vec<String>, DiscoveryError> {
            match document.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(values)) => values
                    .iter()
                    .map(|value| value.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid(format!("`{name}` is not an array of strings"))),
                Some(_) => Err(invalid(format!("`{name}` is not an array of strings"))),
            }
        };
        Ok(Self {
            resource: found.clone(),
            authorization_servers: strings("authorization_servers")?,
            scopes_supported: strings("scopes_supported")?,
            bearer_methods_supported: strings("bearer_methods_supported")?,
        })
    }
}

/// A protected resource's metadata (RFC 9728 §2), checked, with its authorization server's
/// ([`ServerMetadata`]); from [`ProtectedResource::fetch`], [`ResourceMetadata::discover`] or
/// [`ResourceMetadata::from_challenge`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceMetadata {
    resource: String,
    url: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
    bearer_methods_supported: Vec<String>,
    challenge_scope: Option<String>,
    document: Value,
    authorization_server: ServerMetadata,
}

impl ResourceMetadata {
    /// Discovers the protected resource at `resource` from its well-known locations, with the
    /// default bounds; see [`ProtectedResource`] to change them.
    ///
    /// # Errors
    ///
    /// As [`ProtectedResource::fetch`].
    pub async fn discover(resource: impl Into<String>) -> Result<Self, DiscoveryError> {
        ProtectedResource::new(resource).fetch().await
    }

    /// Discovers the protected resource at `resource` from the headers of the 401 it answered
    /// with (its `resource_metadata`, else the well-known locations), with the default bounds.
    ///
    /// # Errors
    ///
    /// As [`ProtectedResource::fetch`].
    pub async fn from_challenge(resource: impl Into<String>, headers: &HeaderMap) -> Result<Self, DiscoveryError> {
        ProtectedResource::new(resource).challenge(headers).fetch().await
    }

    /// The resource identifier, as the document names it (the resource asked for): what the
    /// grants send as their RFC 8707 `resource`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Where the document was found.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The issuers of the authorization servers the resource takes tokens from, as listed; the
    /// first is the one discovered. Give another to [`Discovery`] to use it instead.
    pub fn authorization_servers(&self) -> &[String] {
        &self.authorization_servers
    }

    /// The scopes the resource says it uses (`scopes_supported`); empty when it does not say.
    pub fn scopes_supported(&self) -> &[String] {
        &self.scopes_supported
    }

    /// How the resource takes a bearer token (`header`, `body`, `query`; RFC 9728 §2); empty
    /// when it does not say. The layer sends it in the `Authorization` header.
    pub fn bearer_methods_supported(&self) -> &[String] {
        &self.bearer_methods_supported
    }

    /// The `scope` of the 401's challenge, if it had one: what the resource wants for the
    /// request it refused.
    pub fn challenge_scope(&self) -> Option<&str> {
        self.challenge_scope.as_deref()
    }

    /// The whole document, for members this type does not name.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The metadata of the authorization server discovered (the first of
    /// [`authorization_servers`](Self::authorization_servers)), its issuer checked.
    pub fn authorization_server(&self) -> &ServerMetadata {
        &self.authorization_server
    }

    /// A refresh-token grant for this resource: the authorization server's
    /// ([`ServerMetadata::refresh_token_grant`]: its token, authorization and revocation
    /// endpoints, the client secret sent as it prefers), with the resource as its resource
    /// indicator (RFC 8707, on every token request and a login's authorize URL), the
    /// resource's origin as where the tokens go, and the scopes the MCP specification's scope
    /// selection picks: the challenge's `scope` if it had one, else every scope in
    /// `scopes_supported`, else none. Add the client id (and secret).
    ///
    /// The MCP authorization specification requires a client to check the authorization
    /// server's PKCE support in its metadata and to refuse to proceed without it: a
    /// [`login`](RefreshTokenGrant::login) from this grant fails with
    /// [`LoginError::PkceUnsupported`](crate::LoginError::PkceUnsupported) when the metadata has
    /// no `code_challenge_methods_supported`, or one without `S256`. Refreshes are not affected.
    pub fn refresh_token_grant(&self) -> RefreshTokenGrant {
        let mut grant =
            self.authorization_server.refresh_token_grant().resource(&self.resource).api_origin(self.origin());
        if self.authorization_server.code_challenge_methods_supported().is_none() {
            grant = grant.pkce_advertised(PkceAdvertised::Absent);
        }
        for scope in self.scopes() {
            grant = grant.scope(scope);
        }
        grant
    }

    /// A client-credentials grant for this resource, set up as
    /// [`refresh_token_grant`](Self::refresh_token_grant) is.
    pub fn client_credentials(&self) -> ClientCredentials {
        let mut grant =
            self.authorization_server.client_credentials().resource(&self.resource).api_origin(self.origin());
        for scope in self.scopes() {
            grant = grant.scope(scope);
        }
        grant
    }

    /// The resource's origin; the resource was checked to be a URL with one.
    fn origin(&self) -> String {
        Url::parse(&self.resource).map(|url| url.origin().ascii_serialization()).unwrap_or_default()
    }

    fn scopes(&self) -> Vec<&str> {
        match &self.challenge_scope {
            Some(scope) => scope.split_ascii_whitespace().collect(),
            None => self.scopes_supported.iter().map(String::as_str).collect(),
        }
    }
}

/// The resource as a URL, if it may be one: absolute, `https` (plain `http` only to loopback),
/// no fragment (RFC 8707 §2, RFC 9728 §1.2).
fn parse_resource(resource: &str) -> Result<Url, DiscoveryError> {
    let refuse =
        |reason: &str| DiscoveryError::InvalidResource { resource: resource.to_owned(), reason: reason.to_owned() };
    let url = Url::parse(resource).map_err(|e| refuse(&format!("not an absolute URL ({e})")))?;
    if !secure(&url) {
        return Err(refuse("not https (plain http is allowed to loopback only)"));
    }
    if url.fragment().is_some() {
        return Err(refuse("a resource identifier has no fragment"));
    }
    Ok(url)
}

/// A challenge's `resource_metadata`, if it may be fetched: `https`, or `http` to loopback.
fn parse_metadata_url(url: &str) -> Result<Url, DiscoveryError> {
    let refuse = |reason: String| DiscoveryError::InvalidMetadataUrl { url: url.to_owned(), reason };
    let parsed = Url::parse(url).map_err(|e| refuse(format!("not an absolute URL ({e})")))?;
    if !secure(&parsed) {
        return Err(refuse("not https (plain http is allowed to loopback only)".into()));
    }
    Ok(parsed)
}

/// Where a resource's metadata may be, in the order tried (RFC 9728 §3.1, and the MCP
/// specification's fallback): the well-known suffix inserted between the host and the path (the
/// query kept), then at the origin's root. A resource without path or query has the one.
fn well_known_urls(resource: &Url) -> Vec<Url> {
    let path = resource.path().trim_end_matches('/');
    let mut inserted = resource.clone();
    inserted.set_path(&format!("{PROTECTED_RESOURCE_WELL_KNOWN}{path}"));
    let mut root = resource.clone();
    root.set_path(PROTECTED_RESOURCE_WELL_KNOWN);
    root.set_query(None);
    if inserted == root { vec![root] } else { vec![inserted, root] }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn urls(resource: &str) -> Vec<String> {
        well_known_urls(&parse_resource(resource).unwrap()).iter().map(Url::to_string).collect()
    }

    #[test]
    fn the_well_known_suffix_goes_before_the_path_then_at_the_root() {
        // The MCP specification's own example.
        assert_eq!(
            urls("https://example.com/public/mcp"),
            [
                "https://example.com/.well-known/oauth-protected-resource/public/mcp",
                "https://example.com/.well-known/oauth-protected-resource"
            ]
        );
        // RFC 9728 §3.1: a terminating slash goes, a query stays.
        assert_eq!(
            urls("https://example.com/resource1/?tenant=a"),
            [
                "https://example.com/.well-known/oauth-protected-resource/resource1?tenant=a",
                "https://example.com/.well-known/oauth-protected-resource"
            ]
        );
        assert_eq!(urls("https://example.com"), ["https://example.com/.well-known/oauth-protected-resource"]);
        assert_eq!(urls("http://127.0.0.1:8080/"), ["http://127.0.0.1:8080/.well-known/oauth-protected-resource"]);
    }

    #[test]
    fn only_https_and_loopback_resources_without_a_fragment_are_used() {
        for good in ["https://mcp.example/mcp", "http://127.0.0.1:3000/mcp", "http://[::1]/", "http://localhost/mcp"] {
            assert!(parse_resource(good).is_ok(), "{good}");
        }
        for bad in ["http://mcp.example/mcp", "http://10.0.0.1/mcp", "https://mcp.example/mcp#top", "mcp.example", ""] {
            assert!(matches!(parse_resource(bad), Err(DiscoveryError::InvalidResource { .. })), "{bad}");
        }
        assert!(parse_metadata_url("https://mcp.example/.well-known/oauth-protected-resource").is_ok());
        for bad in ["http://mcp.example/.well-known/oauth-protected-resource", "/relative", "ftp://mcp.example/x"] {
            assert!(matches!(parse_metadata_url(bad), Err(DiscoveryError::InvalidMetadataUrl { .. })), "{bad}");
        }
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn resource_metadata_is_read_from_any_challenge_of_any_header() {
        let url = "https://mcp.example/.well-known/oauth-protected-resource/mcp";
        let read = |values: &[&str]| Challenged::read(&headers(values));
        assert_eq!(
            read(&[&format!(r#"Bearer resource_metadata="{url}", scope="files:read files:write""#)]),
            Challenged { metadata_url: Some(url.into()), scope: Some("files:read files:write".into()) }
        );
        // Another scheme's challenge, in a second header, after a Bearer one without it.
        assert_eq!(
            read(&[
                r#"Basic realm="x""#,
                &format!(r#"Bearer realm="mcp", DPoP algs="ES256", resource_metadata="{url}""#)
            ]),
            Challenged { metadata_url: Some(url.into()), scope: None }
        );
        assert_eq!(
            read(&[r#"Bearer error="insufficient_scope", scope="admin""#]),
            Challenged { metadata_url: None, scope: Some("admin".into()) }
        );
        assert_eq!(read(&[]), Challenged::default());
        assert_eq!(read(&["garbage ,,, = \""]), Challenged::default());
    }

    #[test]
    fn a_document_must_be_about_the_resource_asked_for() {
        let expected = "https://mcp.example/mcp";
        let parsed = parse_resource(expected).unwrap();
        let read = |document: Value| DocumentParts::read(expected, &parsed, "u", &document);
        let ok = read(json!({
            "resource": "HTTPS://MCP.example:443/mcp",
            "authorization_servers": ["https://as.example"],
            "bearer_methods_supported": ["header"],
        }))
        .unwrap();
        assert_eq!(ok.resource, "HTTPS://MCP.example:443/mcp", "the same URL, written otherwise");
        assert_eq!(ok.authorization_servers, ["https://as.example"]);
        assert!(ok.scopes_supported.is_empty());
        for other in ["https://mcp.example/mcp/", "https://mcp.example", "https://evil.example/mcp", "not a url"] {
            let refused = read(json!({"resource": other, "authorization_servers": ["https://as.example"]}));
            assert!(
                matches!(&refused, Err(DiscoveryError::ResourceMismatch { found, .. }) if found == other),
                "{other}: {refused:?}"
            );
        }
        assert!(matches!(read(json!({"authorization_servers": []})), Err(DiscoveryError::Invalid { .. })));
        assert!(matches!(read(json!({"resource": 7})), Err(DiscoveryError::Invalid { .. })));
        let wrong_type = read(json!({"resource": expected, "authorization_servers": "https://as.example"}));
        assert!(matches!(wrong_type, Err(DiscoveryError::Invalid { .. })), "{wrong_type:?}");
    }
}

//! OAuth Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, as the MCP
//! authorization specification uses them): a client whose `client_id` is the `https` URL of a
//! JSON document describing it, which the authorization server fetches instead of registering
//! the client ([`ClientMetadataDocument`]).
//!
//! The client's side is small: the document to host at the URL, checked against the draft's
//! rules before anything is served or sent, and the [`RegisteredClient`] to log in as. No
//! request is made here: the authorization server fetches the document when the user arrives at
//! its authorization endpoint.

use serde_json::{Map, Value};
use url::Url;

use super::discovery::secure;
use super::registration::{ClientMetadata, client_metadata_setters};
use crate::registered_client::RegisteredClient;

/// The `token_endpoint_auth_methods` a document must not name (§4.1 of the draft): every method
/// built on a shared secret, since the client and the server never shared one.
const SHARED_SECRET_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "client_secret_jwt"];

/// Why a client metadata document cannot be made. Neither variant holds a secret: a document
/// holds none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientMetadataError {
    /// The client id cannot be a client identifier URL (§3 of the draft): not `https` (plain
    /// `http` is allowed to loopback only, for tests), no path, a `.` or `..` path segment, a
    /// fragment, or a user name or password.
    #[error("the client id {client_id:?} cannot be a client metadata document's URL: {reason}")]
    InvalidClientId {
        /// The client id as given.
        client_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The metadata cannot describe a client that logs users in without a shared secret: no
    /// redirect URI, one that is not an absolute URL without a fragment, a
    /// [`field`](ClientMetadataDocument::field) that sets a secret, a secret-based
    /// `token_endpoint_auth_method` or another `client_id`.
    #[error("the client metadata is not usable: {reason}")]
    InvalidMetadata {
        /// What is wrong with it.
        reason: String,
    },
}

/// A client identified by the URL of its own metadata document (OAuth Client ID Metadata
/// Document, the MCP authorization specification's preferred way for a client to be known to
/// an authorization server it has never met).
///
/// The client hosts [`document`](Self::document) at its `client_id` URL; the authorization
/// server fetches it when a login names that `client_id`, checks that the document's
/// `client_id` is the URL and that the login's redirect URI is listed, and treats the client as
/// registered with it. The client is public (`token_endpoint_auth_method` `none`, no secret):
/// the code exchange and every refresh name it by its URL, with PKCE proving the login.
/// Whether a server takes such clients is in its metadata:
/// [`ServerMetadata::client_id_metadata_document_supported`](crate::ServerMetadata::client_id_metadata_document_supported).
///
/// The URL follows the draft's rules, checked by [`document`](Self::document) and
/// [`client`](Self::client): `https` (plain `http` to loopback only, for tests), with a path,
/// no `.` or `..` segment, no fragment, no user name or password. A query is allowed (the draft
/// advises against one). The `client_id` is the URL exactly as given, since the server compares
/// the document's as a string.
///
/// ```
/// use reqwest_token_refresh::{ClientMetadataDocument, RefreshTokenGrant};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let me = ClientMetadataDocument::new("https://agent.example/oauth/client.json")
///     .client_name("Example agent")
///     .redirect_uri("http://127.0.0.1:8976/callback");
///
/// // Serve this at https://agent.example/oauth/client.json, as application/json.
/// let document = me.document()?;
/// assert_eq!(document["client_id"], "https://agent.example/oauth/client.json");
/// assert_eq!(document["token_endpoint_auth_method"], "none");
///
/// // Log in as that client; a grant from `ServerMetadata` or `ResourceMetadata` alike.
/// let grant = RefreshTokenGrant::new("https://as.example/token")
///     .authorize_url("https://as.example/authorize")
///     .registered_client(me.client()?);
/// let (url, _pending) = grant.login("http://127.0.0.1:8976/callback")?.start()?;
/// assert!(url.as_str().contains("client_id=https%3A%2F%2Fagent.example%2Foauth%2Fclient.json"));
///
/// // A URL that breaks the draft's rules is refused before anything is served or sent.
/// assert!(ClientMetadataDocument::new("http://agent.example/client.json").client().is_err());
/// # Ok(()) }
/// # run().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ClientMetadataDocument {
    client_id: String,
    metadata: ClientMetadata,
}

impl ClientMetadataDocument {
    /// The document of the client identified by `client_id`, the URL it is served at.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self { client_id: client_id.into(), metadata: ClientMetadata::new(Some("none")) }
    }

    client_metadata_setters!(
        ""
        "Here `private_key_jwt` with a `jwks_uri` is a `token_endpoint_auth_method` for a client"
        "that proves itself with a key. A secret (`client_secret`, `client_secret_expires_at`), a"
        "secret-based `token_endpoint_auth_method` or another `client_id` makes the document"
        "invalid; so does having no redirect URI at all."
    );

    /// The client id: the document's URL, as given.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The JSON document to serve at the [client id](Self::client_id) URL (as
    /// `application/json`): the client metadata, with `client_id` the URL and
    /// `token_endpoint_auth_method` `none` unless a [`field`](Self::field) names another.
    ///
    /// # Errors
    ///
    /// [`ClientMetadataError::InvalidClientId`] for a URL the draft's rules refuse;
    /// [`ClientMetadataError::InvalidMetadata`] for metadata that cannot describe this client.
    pub fn document(&self) -> Result<Value, ClientMetadataError> {
        self.members().map(Value::Object)
    }

    /// The document's members, checked.
    fn members(&self) -> Result<Map<String, Value>, ClientMetadataError> {
        check_client_id(&self.client_id)
            .map_err(|reason| ClientMetadataError::InvalidClientId { client_id: self.client_id.clone(), reason })?;
        let invalid = |reason: String| ClientMetadataError::InvalidMetadata { reason };
        if self.metadata.redirect_uris.is_empty() {
            return Err(invalid("a client that logs users in needs a redirect URI".into()));
        }
        // The fields come last, over the URL too: one naming another `client_id` is refused below.
        let mut document = Map::new();
        document.insert("client_id".into(), self.client_id.clone().into());
        document.extend(self.metadata.members());
        check_members(&document, &self.client_id).map_err(invalid)?;
        Ok(document)
    }

    /// The client to log in as
    /// ([`RefreshTokenGrant::registered_client`](crate::RefreshTokenGrant::registered_client)):
    /// the URL as its id, no secret, the document's `token_endpoint_auth_method` (`none`, so the
    /// id goes in the body of every token request), and the rest of the document as its
    /// [metadata](RegisteredClient::metadata). The tokens a login gets carry it, as they carry
    /// a dynamically registered client, so a later process refreshes as this client too.
    ///
    /// # Errors
    ///
    /// As [`document`](Self::document).
    pub fn client(&self) -> Result<RegisteredClient, ClientMetadataError> {
        let mut metadata = self.members()?;
        metadata.remove("client_id");
        let method = match metadata.remove("token_endpoint_auth_method") {
            Some(Value::String(method)) => method,
            _ => "none".to_owned(),
        };
        Ok(RegisteredClient::new(&self.client_id).with_token_endpoint_auth_method(method).with_metadata(metadata))
    }
}

/// Whether `client_id` may be a client identifier URL (§3 of the draft): `https` (plain `http`
/// to loopback only, as everywhere in this crate), a path other than `/`, no `.` or `..`
/// segment, no fragment, no user name or password, written as it parses; the rule it breaks
/// when not. The mock
/// provider checks the `client_id`s it is sent with this too.
pub(crate) fn check_client_id(client_id: &str) -> Result<(), String> {
    let url = Url::parse(client_id).map_err(|e| format!("not an absolute URL ({e})"))?;
    if !secure(&url) {
        return Err("not https (plain http is allowed to loopback only)".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a client identifier URL has no user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("a client identifier URL has no fragment".into());
    }
    // The parsed URL has its dot segments resolved away: they are looked for in the URL as
    // written, where the server that fetches it would see them.
    let raw_path = raw_path(client_id);
    if raw_path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    }) {
        return Err("a client identifier URL has no `.` or `..` path segment".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("a client identifier URL has a path (the document's own)".into());
    }
    // What the parser rewrites (a `\` read as `/`, tabs and newlines dropped, a host's case) the
    // server would fetch rewritten, and compare the document's `client_id` with the string as
    // sent: only a URL written as it parses names one document.
    if url.as_str() != client_id {
        return Err(format!(
            "a client identifier URL is written as it parses ({url}): no `\\`, tab, newline or upper-case host"
        ));
    }
    Ok(())
}

/// The path of `url` as written: after the authority, up to a query or fragment.
fn raw_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path_and_more = after_scheme.find(['/', '?', '#']).map_or("", |at| &after_scheme[at..]);
    let end = path_and_more.find(['?', '#']).unwrap_or(path_and_more.len());
    &path_and_more[..end]
}

/// Whether `document` may be the metadata document of `client_id` as a client without a shared
/// secret (§4.1 of the draft): a JSON object whose `client_id` is `client_id`, compared as
/// strings; `redirect_uris` a non-empty array of absolute URLs without fragments; no
/// `client_secret` or `client_secret_expires_at`; no secret-based `token_endpoint_auth_method`.
/// The reason when not. The mock provider checks the documents it fetches with this too.
pub(crate) fn check_document(document: &Value, client_id: &str) -> Result<Vec<String>, String> {
    match document {
        Value::Object(members) => check_members(members, client_id),
        _ => Err("the document is not a JSON object".into()),
    }
}

/// [`check_document`] for a document known to be an object: its redirect URIs when it passes.
fn check_members(document: &Map<String, Value>, client_id: &str) -> Result<Vec<String>, String> {
    match document.get("client_id") {
        Some(Value::String(found)) if found == client_id => {}
        Some(Value::String(_)) => return Err("the document's client_id is not its URL".into()),
        Some(_) => return Err("the document's client_id is not a string".into()),
        None => return Err("the document has no client_id".into()),
    }
    for name in ["client_secret", "client_secret_expires_at"] {
        if document.contains_key(name) {
            return Err(format!("a client metadata document has no {name}: the server shares no secret with it"));
        }
    }
    match document.get("token_endpoint_auth_method") {
        None => {}
        Some(Value::String(method)) if SHARED_SECRET_METHODS.contains(&method.as_str()) => {
            return Err(format!("token_endpoint_auth_method {method:?} needs a shared secret, which there is not"));
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err("token_endpoint_auth_method is not a string".into()),
    }
    let uris: Vec<String> = match document.get("redirect_uris") {
        Some(Value::Array(values)) => values
            .iter()
            .map(|value| value.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("redirect_uris is not an array of strings")?,
        Some(_) => return Err("redirect_uris is not an array of strings".into()),
        None => return Err("the document has no redirect_uris".into()),
    };
    if uris.is_empty() {
        return Err("the document's redirect_uris is empty".into());
    }
    for uri in &uris {
        let absolute = Url::parse(uri).is_ok_and(|url| url.fragment().is_none());
        if !absolute {
            return Err(format!("the redirect URI {uri:?} is not an absolute URL without a fragment"));
        }
    }
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const URL: &str = "https://agent.example/oauth/client.json";

    #[test]
    fn the_constants_are_what_their_docs_say() {
        assert_eq!(super::super::registration::DEFAULT_GRANT_TYPES, ["authorization_code", "refresh_token"]);
        assert_eq!(SHARED_SECRET_METHODS, ["client_secret_basic", "client_secret_post", "client_secret_jwt"]);
    }

    #[test]
    fn the_document_is_rfc_7591_metadata_whose_client_id_is_its_url_and_fields_win() {
        assert_eq!(ClientMetadataDocument::new(URL).client_id(), URL);
        let document = ClientMetadataDocument::new(URL)
            .client_name("agent")
            .redirect_uri("http://127.0.0.1:8976/callback")
            .scope("read")
            .scope("write")
            .field("client_uri", json!("https://agent.example"))
            .field("client_name", json!("renamed"))
            .document()
            .unwrap();
        assert_eq!(
            document,
            json!({
                "client_id": URL,
                "client_name": "renamed",
                "redirect_uris": ["http://127.0.0.1:8976/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "scope": "read write",
                "client_uri": "https://agent.example",
            })
        );
    }

    #[test]
    fn the_client_is_public_named_by_the_url_with_the_document_as_metadata() {
        let me = ClientMetadataDocument::new(URL).redirect_uri("https://agent.example/cb");
        let client = me.client().unwrap();
        assert_eq!(client.client_id(), URL);
        assert!(client.client_secret().is_none());
        assert_eq!(client.token_endpoint_auth_method(), "none");
        assert_eq!(client.metadata()["redirect_uris"], json!(["https://agent.example/cb"]));
        assert!(!client.metadata().contains_key("client_id"));
        let keyed = me.field("token_endpoint_auth_method", json!("private_key_jwt")).client().unwrap();
        assert_eq!(keyed.token_endpoint_auth_method(), "private_key_jwt");
    }

    #[test]
    fn urls_the_draft_refuses_are_refused_with_the_rule_they_break() {
        for good in [
            URL,
            "https://agent.example:8443/c",
            "https://agent.example/c?v=2",
            "http://127.0.0.1:9000/client.json",
            "http://localhost/c.json",
            "https://agent.example/a.b/..c/client.json",
        ] {
            assert!(check_client_id(good).is_ok(), "{good}");
        }
        for (bad, rule) in [
            ("http://agent.example/client.json", "not https"),
            ("ftp://agent.example/client.json", "not https"),
            ("agent.example/client.json", "not an absolute URL"),
            ("https://agent.example", "has a path"),
            ("https://agent.example/", "has a path"),
            ("https://agent.example/?x=1", "has a path"),
            ("https://agent.example/oauth/client.json#me", "fragment"),
            ("https://me@agent.example/client.json", "user name"),
            ("https://me:pw@agent.example/client.json", "user name"),
            ("https://agent.example/oauth/../client.json", "path segment"),
            ("https://agent.example/./client.json", "path segment"),
            ("https://agent.example/oauth/%2E%2e/client.json", "path segment"),
            ("https://agent.example/oauth/..", "path segment"),
            ("https://agent.example/oauth\\..\\client.json", "written as it parses"),
            ("https://agent.example/oauth/.\t./client.json", "written as it parses"),
            ("https://agent.example/oauth/client\n.json", "written as it parses"),
            ("https://Agent.Example/client.json", "written as it parses"),
        ] {
            let refused = ClientMetadataDocument::new(bad).redirect_uri("https://agent.example/cb").client();
            match refused {
                Err(ClientMetadataError::InvalidClientId { client_id, reason }) => {
                    assert_eq!(client_id, bad);
                    assert!(reason.contains(rule), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn metadata_that_needs_a_secret_or_names_another_client_is_refused() {
        let me = ClientMetadataDocument::new(URL).redirect_uri("https://agent.example/cb");
        let invalid = |document: ClientMetadataDocument| match document.document() {
            Err(ClientMetadataError::InvalidMetadata { reason }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(invalid(ClientMetadataDocument::new(URL)).contains("redirect URI"));
        assert!(invalid(me.clone().redirect_uri("/callback")).contains("\"/callback\""));
        assert!(invalid(me.clone().redirect_uri("https://agent.example/cb#x")).contains("fragment"));
        assert!(invalid(me.clone().field("client_secret", json!("s"))).contains("client_secret"));
        assert!(invalid(me.clone().field("client_secret_expires_at", json!(0))).contains("client_secret_expires_at"));
        for method in SHARED_SECRET_METHODS {
            let reason = invalid(me.clone().field("token_endpoint_auth_method", json!(method)));
            assert!(reason.contains(method), "{reason}");
        }
        assert!(invalid(me.clone().field("client_id", json!("https://other.example/c"))).contains("not its URL"));
        assert!(invalid(me.field("redirect_uris", json!("https://agent.example/cb"))).contains("array of strings"));
    }

    #[test]
    fn a_fetched_document_is_checked_against_the_url_it_came_from() {
        let document = json!({"client_id": URL, "redirect_uris": ["https://agent.example/cb"]});
        assert_eq!(check_document(&document, URL).unwrap(), ["https://agent.example/cb"]);
        let other_url = "https://agent.example/oauth/client.json/";
        assert!(check_document(&document, other_url).unwrap_err().contains("not its URL"), "compared as strings");
        assert!(check_document(&json!([URL]), URL).unwrap_err().contains("JSON object"));
        assert!(check_document(&json!({"client_id": URL}), URL).unwrap_err().contains("no redirect_uris"));
        assert!(check_document(&json!({"client_id": URL, "redirect_uris": []}), URL).unwrap_err().contains("empty"));
        assert!(
            check_document(&json!({"redirect_uris": ["https://a.example/cb"]}), URL)
                .unwrap_err()
                .contains("no client_id")
        );
    }

    #[test]
    fn the_raw_path_is_what_follows_the_authority() {
        assert_eq!(raw_path("https://a.example/x/../y?q#f"), "/x/../y");
        assert_eq!(raw_path("https://a.example?q"), "");
        assert_eq!(raw_path("https://a.example"), "");
    }
}

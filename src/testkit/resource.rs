//! The mock's API as a protected resource (RFC 9728) and its resource-indicator checks (RFC
//! 8707): the metadata document it serves, the `resource_metadata` its 401 names, and the
//! `invalid_target` that a token or authorization request without the resource gets.
//!
//! The resource identifier is `{uri}{path}` ([`MockProvider::resource`]), the path `/api` unless
//! [`MockProviderBuilder::protected_resource`] names another (an MCP endpoint such as
//! `/api/mcp`, which the mock's API serves like any path under `/api/`).

use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

use super::Shared;
use super::grants::State;
use super::wire::{Endpoint, OAuthError};
#[cfg(doc)]
use super::{MockProvider, MockProviderBuilder};

/// RFC 9728 §3's well-known suffix.
pub(super) const PROTECTED_RESOURCE_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";
/// The resource's path unless the builder names another: the mock's API.
pub(super) const DEFAULT_RESOURCE_PATH: &str = "/api";

/// The protected resource's settings.
#[derive(Debug, Clone)]
pub(super) struct ResourceConfig {
    /// The resource identifier's path, from the server's root.
    pub(super) path: String,
    /// Whether the metadata is served and the API's 401 names it.
    pub(super) metadata: bool,
    /// Whether token and authorization requests must carry the resource.
    pub(super) required: bool,
    /// Members set on or added to the metadata document.
    pub(super) fields: Vec<(String, Value)>,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        Self { path: DEFAULT_RESOURCE_PATH.to_owned(), metadata: false, required: false, fields: Vec::new() }
    }
}

impl Shared {
    /// The resource identifier, `{issuer}{path}`.
    pub(super) fn resource(&self) -> String {
        format!("{}{}", self.config.issuer, self.config.resource.path)
    }

    /// Where the metadata is: the well-known suffix inserted before the resource's path.
    pub(super) fn resource_metadata_url(&self) -> String {
        format!("{}{PROTECTED_RESOURCE_WELL_KNOWN}{}", self.config.issuer, self.config.resource.path)
    }

    /// The `resource_metadata` the API's 401 names, when the metadata is served.
    pub(super) fn challenge_metadata_url(&self) -> Option<String> {
        self.config.resource.metadata.then(|| self.resource_metadata_url())
    }

    /// The document (RFC 9728 §2): the resource, the mock as its authorization server, the
    /// bearer method it takes, then the fields a test set.
    fn resource_metadata(&self) -> Value {
        let mut document = json!({
            "resource": self.resource(),
            "authorization_servers": [self.config.issuer],
            "bearer_methods_supported": ["header"],
        });
        for (name, value) in &self.config.resource.fields {
            document[name.as_str()] = value.clone();
        }
        document
    }

    /// Counts a request that carries `resources`.
    pub(super) fn count_resources(state: &mut State, resources: &[String]) {
        if !resources.is_empty() {
            state.stats.resource_indicators += 1;
        }
    }

    /// RFC 8707 §2: with resource indicators required, a request must name the resource, and
    /// nothing else; `Err` is the `invalid_target` to answer, counted.
    pub(super) fn check_target(&self, state: &mut State, resources: &[String]) -> Result<(), OAuthError> {
        if !self.config.resource.required {
            return Ok(());
        }
        let expected = self.resource();
        let description = match resources {
            [] => "the resource parameter is required".to_owned(),
            [one] if *one == expected => return Ok(()),
            _ => format!("the only resource here is {expected}"),
        };
        state.stats.invalid_targets += 1;
        Err(OAuthError::new(400, "invalid_target", description))
    }

    /// [`check_target`](Self::check_target) for an authorization request, before a code is
    /// issued; counted like a token call's.
    pub(super) fn check_authorization_target(&self, resources: &[String]) -> Result<(), OAuthError> {
        let mut state = self.state.lock();
        Self::count_resources(&mut state, resources);
        self.check_target(&mut state, resources)
    }
}

/// Every `resource` of a token request: repeated in a form body (RFC 8707 §2), a string or an
/// array of strings in a JSON one.
pub(super) fn token_resources(request: &Request) -> Vec<String> {
    if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&request.body) {
        return match object.get("resource") {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
    }
    form_urlencoded::parse(&request.body).filter(|(name, _)| name == "resource").map(|(_, v)| v.into_owned()).collect()
}

/// The metadata document, `GET` at the well-known path made from the resource, and at the root.
pub(super) struct ResourceMetadataEndpoint(pub(super) Endpoint);

impl Respond for ResourceMetadataEndpoint {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let shared = &self.0.shared;
        shared.state.lock().stats.resource_metadata_served += 1;
        ResponseTemplate::new(200)
            .set_body_raw(shared.resource_metadata().to_string(), "application/json")
            .set_delay(self.0.latency)
    }
}

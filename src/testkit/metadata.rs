//! The mock's metadata document (RFC 8414 §2, OpenID Connect Discovery 1.0 §3): what it serves at
//! both well-known paths, so that a client can be built from the issuer alone.

use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

use super::wire::Endpoint;
use super::{Dialect, Shared};

/// RFC 8414 §3's well-known path, for an issuer without a path.
pub(super) const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// OpenID Connect Discovery 1.0 §4's.
pub(super) const OPENID_METADATA_PATH: &str = "/.well-known/openid-configuration";

impl Shared {
    /// The document: the mock's own endpoints and methods, then the fields a test set.
    fn metadata(&self) -> Value {
        let config = &self.config;
        let dialect = config.dialect;
        let mut methods: Vec<&str> = match dialect {
            Dialect::Standard => vec!["client_secret_basic", "client_secret_post"],
            Dialect::Kroger => vec!["client_secret_basic"],
            Dialect::Whoop | Dialect::WhoopPartner | Dialect::Withings => vec!["client_secret_post"],
        };
        #[cfg(feature = "private-key-jwt")]
        if dialect == Dialect::Standard && !config.client_keys.is_empty() {
            methods.push("private_key_jwt");
        }
        if dialect == Dialect::Standard && (config.client.is_none() || config.registration.is_some()) {
            methods.push("none");
        }
        let mut document = json!({
            "issuer": config.issuer,
            "authorization_endpoint": format!("{}{}", config.issuer, dialect.authorize_path()),
            "token_endpoint": format!("{}{}", config.issuer, dialect.token_path()),
            "token_endpoint_auth_methods_supported": methods,
            "grant_types_supported": dialect.grant_types(),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        });
        if dialect == Dialect::Standard {
            document["revocation_endpoint"] = format!("{}{}", config.issuer, super::revocation::REVOCATION_PATH).into();
        }
        if config.registration.is_some() {
            document["registration_endpoint"] =
                format!("{}{}", config.issuer, super::registration::REGISTRATION_PATH).into();
        }
        #[cfg(feature = "dpop")]
        if config.dpop.is_some() {
            document["dpop_signing_alg_values_supported"] = json!(["ES256"]);
        }
        if config.client_id_metadata_documents {
            document["client_id_metadata_document_supported"] = true.into();
        }
        for (name, value) in &config.metadata_fields {
            match (value, document.as_object_mut()) {
                (Value::Null, Some(members)) => {
                    members.remove(name);
                }
                _ => document[name.as_str()] = value.clone(),
            }
        }
        document
    }
}

/// The metadata document, `GET` at both well-known paths.
pub(super) struct MetadataEndpoint(pub(super) Endpoint);

impl Respond for MetadataEndpoint {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200)
            .set_body_raw(self.0.shared.metadata().to_string(), "application/json")
            .set_delay(self.0.latency)
    }
}

//! The mock's registration endpoint (RFC 7591 §3), served once
//! [`MockProviderBuilder::dynamic_registration`] turns it on, and the ledger of the clients it
//! registered. The token endpoint, the revocation endpoint and the authorization endpoint look a
//! client up here before the builder's own client ([`Shared::check_registered`]): one client
//! check, whichever way the client came to exist.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

#[cfg(doc)]
use super::MockProviderBuilder;
use super::Shared;
use super::wire::{Endpoint, OAuthError};

/// Where the mock serves it: `/register`.
pub(super) const REGISTRATION_PATH: &str = "/register";

/// The token endpoint authentication methods the mock registers (RFC 7591 §2):
/// `client_secret_basic`, `client_secret_post` and `none`.
const AUTH_METHODS: &[&str] = &["client_secret_basic", "client_secret_post", "none"];

/// Dynamic registration, when turned on.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RegistrationConfig {
    /// How long a registered secret is good for; `None`: forever (`client_secret_expires_at` 0).
    pub(super) secret_lifetime: Option<Duration>,
}

/// One registered client.
pub(super) struct RegisteredRecord {
    /// `None` for a public client (`none`).
    secret: Option<String>,
    /// `None`: never.
    secret_expires_at: Option<SystemTime>,
    method: String,
    pub(super) redirect_uris: Vec<String>,
    revoked: bool,
}

/// The registered clients, by client id.
#[derive(Default)]
pub(super) struct Registrations {
    pub(super) clients: HashMap<String, RegisteredRecord>,
    serial: u64,
}

impl Registrations {
    /// Revokes `client_id`'s registration; whether it was a live one.
    pub(super) fn revoke(&mut self, client_id: &str) -> bool {
        match self.clients.get_mut(client_id) {
            Some(record) if !record.revoked => {
                record.revoked = true;
                true
            }
            _ => false,
        }
    }
}

/// How a client presented its credentials, for the method check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presented {
    /// HTTP Basic.
    Basic,
    /// `client_secret` in the body.
    Body,
    /// `client_id` alone in the body.
    IdOnly,
    /// As the dialect requires, whichever way: the method is not checked.
    DialectsWay,
}

impl Shared {
    /// Whether the mock registers clients dynamically.
    pub(super) fn registers_clients(&self) -> bool {
        self.config.registration.is_some()
    }

    /// Checks `id`'s credentials against its registration: `None` when `id` was not registered
    /// (the builder's own client may still be it), else whether it may use the token endpoint:
    /// a live registration, the registered method, the registered secret, not expired.
    pub(super) fn check_registered(
        &self,
        id: &str,
        secret: Option<&str>,
        presented: Presented,
    ) -> Option<Result<(), OAuthError>> {
        let now = self.config.clock.now();
        let state = self.state.lock();
        let record = state.registrations.clients.get(id)?;
        let refuse = |description: &str| Some(Err(OAuthError::invalid_client(description)));
        if record.revoked {
            return refuse("the client's registration was revoked");
        }
        let method_used = match presented {
            Presented::Basic => "client_secret_basic",
            Presented::Body => "client_secret_post",
            Presented::IdOnly => "none",
            Presented::DialectsWay => record.method.as_str(),
        };
        if method_used != record.method {
            return refuse(&format!("the client is registered for {}, not {method_used}", record.method));
        }
        if record.secret.as_deref() != secret {
            return refuse("unknown client or wrong client secret");
        }
        if record.secret_expires_at.is_some_and(|at| now >= at) {
            return refuse("the client secret has expired");
        }
        Some(Ok(()))
    }

    /// The redirect URIs `id` registered, if it is a live registered client.
    pub(super) fn registered_redirect_uris(&self, id: &str) -> Option<Vec<String>> {
        let state = self.state.lock();
        state.registrations.clients.get(id).filter(|record| !record.revoked).map(|record| record.redirect_uris.clone())
    }

    /// Registers a client from its metadata (RFC 7591 §3.1), or says why not (§3.2.2).
    fn register(&self, request: &Request) -> Result<Value, OAuthError> {
        let invalid_metadata = |description: &str| OAuthError::new(400, "invalid_client_metadata", description);
        let Ok(Value::Object(mut metadata)) = serde_json::from_slice::<Value>(&request.body) else {
            return Err(invalid_metadata("the client metadata is not a JSON object"));
        };
        let strings = |value: Option<&Value>, name: &str| -> Result<Option<Vec<String>>, OAuthError> {
            match value {
                None => Ok(None),
                Some(Value::Array(values)) => values
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .map(Some)
                    .ok_or_else(|| invalid_metadata(&format!("{name} is not an array of strings"))),
                Some(_) => Err(invalid_metadata(&format!("{name} is not an array of strings"))),
            }
        };
        // RFC 7591 §2: `authorization_code` when omitted.
        let grant_types = strings(metadata.get("grant_types"), "grant_types")?
            .unwrap_or_else(|| vec!["authorization_code".to_owned()]);
        let supported = self.config.dialect.grant_types();
        if let Some(unknown) = grant_types.iter().find(|g| !supported.contains(&g.as_str())) {
            return Err(invalid_metadata(&format!("the grant type {unknown:?} is not supported")));
        }
        if let Some(types) = strings(metadata.get("response_types"), "response_types")?
            && types.iter().any(|t| t != "code")
        {
            return Err(invalid_metadata("only the response type code is supported"));
        }
        let method = match metadata.get("token_endpoint_auth_method") {
            None => "client_secret_basic".to_owned(),
            Some(Value::String(method)) if AUTH_METHODS.contains(&method.as_str()) => method.clone(),
            Some(_) => return Err(invalid_metadata("token_endpoint_auth_method is not one the mock supports")),
        };
        let invalid_redirect = |description: &str| OAuthError::new(400, "invalid_redirect_uri", description);
        let redirect_uris = match strings(metadata.get("redirect_uris"), "redirect_uris") {
            Ok(uris) => uris.unwrap_or_default(),
            Err(_) => return Err(invalid_redirect("redirect_uris is not an array of strings")),
        };
        if redirect_uris.is_empty() && grant_types.iter().any(|g| g == "authorization_code") {
            return Err(invalid_redirect("redirect_uris is required for the authorization_code grant"));
        }
        for uri in &redirect_uris {
            if url::Url::parse(uri).map_or(true, |url| url.fragment().is_some()) {
                return Err(invalid_redirect(&format!("{uri:?} is not an absolute URL without a fragment")));
            }
        }

        let now = self.config.clock.now();
        let seconds = |at: SystemTime| at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut state = self.state.lock();
        state.registrations.serial += 1;
        let name = format!("{}-{}", self.config.token_prefix, state.registrations.serial);
        let client_id = format!("dcr-{name}");
        let secret = (method != "none").then(|| format!("dcr-secret-{name}"));
        let secret_expires_at =
            self.config.registration.and_then(|r| r.secret_lifetime).and_then(|lifetime| now.checked_add(lifetime));
        metadata.insert("client_id".into(), client_id.clone().into());
        if let Some(secret) = &secret {
            metadata.insert("client_secret".into(), secret.clone().into());
            metadata.insert("client_secret_expires_at".into(), secret_expires_at.map_or(0, seconds).into());
        }
        metadata.insert("client_id_issued_at".into(), seconds(now).into());
        metadata.insert("token_endpoint_auth_method".into(), method.clone().into());
        metadata.insert("grant_types".into(), grant_types.into());
        metadata.insert("redirect_uris".into(), redirect_uris.clone().into());
        let record = RegisteredRecord { secret, secret_expires_at, method, redirect_uris, revoked: false };
        state.registrations.clients.insert(client_id, record);
        state.stats.registrations += 1;
        Ok(Value::Object(metadata))
    }
}

/// The registration endpoint, `POST` at [`REGISTRATION_PATH`]: `201` with the registration, or
/// `400` with an RFC 7591 §3.2.2 error.
pub(super) struct RegistrationEndpoint(pub(super) Endpoint);

impl Respond for RegistrationEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let template = match self.0.shared.register(request) {
            Ok(registered) => ResponseTemplate::new(201).set_body_raw(registered.to_string(), "application/json"),
            Err(OAuthError { status, code, description }) => {
                let mut body = Map::new();
                body.insert("error".into(), code.into());
                body.insert("error_description".into(), description.into());
                ResponseTemplate::new(status).set_body_raw(json!(body).to_string(), "application/json")
            }
        };
        // RFC 7591 §3.2.1: the answer carries a secret, and must not be cached.
        template.insert_header("cache-control", "no-store").set_delay(self.0.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_what_their_docs_say() {
        assert_eq!(REGISTRATION_PATH, "/register");
        assert_eq!(AUTH_METHODS, ["client_secret_basic", "client_secret_post", "none"]);
    }

    #[test]
    fn a_registration_is_revoked_once_and_an_unknown_one_not_at_all() {
        let mut registrations = Registrations::default();
        let record = RegisteredRecord {
            secret: None,
            secret_expires_at: None,
            method: "none".into(),
            redirect_uris: Vec::new(),
            revoked: false,
        };
        registrations.clients.insert("c".into(), record);
        assert!(registrations.revoke("c"));
        assert!(!registrations.revoke("c"));
        assert!(!registrations.revoke("unknown"));
    }
}

//! The providers' dialects: what [`Dialect`] changes about the mock, and nothing else.
//!
//! Each dialect's token endpoint path, the grants and body formats it accepts, how it wants
//! client credentials, the shape and field order of its token and error answers (Withings'
//! `{"status":...,"body":...}` envelope, Kroger's plain-text refusal), and how its API turns down
//! a token.

use std::collections::HashMap;
use std::time::Duration;

use http::header;
use serde_json::{Value, json};
use wiremock::{Request, ResponseTemplate};

use super::Shared;
use super::grants::{Minted, OneTime};
use super::registration::Presented;
use super::wire::{OAuthError, Reply, basic_credentials, ordered_json};
#[cfg(doc)]
use super::{MockProvider, MockProviderBuilder};

/// The token endpoint of [`Dialect::Standard`].
pub(super) const TOKEN_PATH: &str = "/oauth/token";
/// The authorization endpoint of [`Dialect::Standard`].
pub(super) const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// Kroger's answer to a spent or unknown refresh token, as plain text.
const KROGER_INVALID_REFRESH_TOKEN: &str = "Missing/Invalid Refresh Token";
/// Withings' data API's answer to a rejected access token (with HTTP 200).
pub(super) const WITHINGS_INVALID_TOKEN: &str = r#"{"status":401,"body":{},"error":"XRequestID: Not provided invalid_token: The access token provided is invalid"}"#;
/// Kroger's API 401 body, byte for byte as documented (fields in this order).
const KROGER_INVALID_TOKEN: &str =
    r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#;

/// Which provider's habits a [`MockProvider`] reproduces; chosen with
/// [`MockProviderBuilder::dialect`] (default [`Standard`](Dialect::Standard)).
///
/// A dialect decides the token endpoint's path, which requests it accepts and how client
/// credentials are sent, the shape of its answers, and the API's 401. It follows what the provider
/// documents; where a document is silent (error answers, mostly), the mock answers as the RFCs do.
/// In every dialect but `Standard` the token endpoint insists on the provider's way of sending
/// client credentials, even when no credentials were configured (then any id and secret pass).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// RFC 6749 and RFC 6750: token endpoint `/oauth/token`; form or JSON bodies; the
    /// `refresh_token` and `client_credentials` grants; client credentials (when configured) by
    /// HTTP Basic or in the body; errors `{"error":...,"error_description":...}`; the API's 401
    /// with `WWW-Authenticate: Bearer realm="mock", error="invalid_token", ...` and a JSON body.
    #[default]
    Standard,
    /// WHOOP's user OAuth: token endpoint `/oauth/oauth2/token`; a form body with
    /// `grant_type=refresh_token`, `refresh_token`, and `client_id` and `client_secret` (HTTP Basic
    /// is refused with `401 invalid_client`). A new refresh token comes back only if the request's
    /// space-separated `scope` has `offline`; without it the answer has no `refresh_token` and the
    /// one presented stays valid. Answers `{access_token, refresh_token?, expires_in, scope,
    /// token_type: "bearer"}`; errors as in `Standard`. The API's 401 is bare: no
    /// `WWW-Authenticate`, an empty body.
    Whoop,
    /// WHOOP's Partner API: token endpoint `/developer/v2/partner/token`; only
    /// `grant_type=client_credentials`, as a JSON body (`application/json`; a form body gets
    /// `400`) with `client_id`, `client_secret` and `scope`. Answers `{access_token,
    /// token_type: "bearer", expires_in}`, no refresh token; wrong credentials get
    /// `401 {"error":"invalid_client"}`. The API's 401 is bare. [`MockProvider::issue_tokens`]
    /// gives an access token only, as this grant would.
    WhoopPartner,
    /// Kroger: token endpoint `/v1/connect/oauth2/token`; client credentials only by HTTP Basic
    /// (RFC 6749 §2.3.1; a `client_secret` in the body gets `401 invalid_client`); a form body
    /// with `grant_type=refresh_token&refresh_token=...`. Refresh tokens are single-use; a spent,
    /// unknown or missing one gets `400` with the `text/plain` body `Missing/Invalid Refresh
    /// Token` instead of OAuth JSON. Answers `{refresh_token, expires_in, access_token,
    /// token_type: "bearer"}`. The API's 401 is
    /// `{"error_description":"The access token is invalid or has expired","error":"invalid_token"}`
    /// without `WWW-Authenticate`.
    Kroger,
    /// Withings: token endpoint `/v2/oauth2`; a form body with `action=requesttoken`,
    /// `grant_type=refresh_token`, `refresh_token`, `client_id` and `client_secret`. Every answer
    /// is HTTP `200` with an envelope: `{"status":0,"body":{"userid",...,"access_token",
    /// "refresh_token","expires_in":10800,"scope":"user.metrics","csrf_token","token_type":
    /// "Bearer"}}`, or `{"status":503,"body":{},"error":"Invalid Params: ..."}` (503 is Withings'
    /// status for invalid parameters: `Invalid Params: invalid refresh_token` for a spent or unknown
    /// refresh token, `Invalid Params: action` without `action=requesttoken`). Access tokens last
    /// 3 hours; every refresh rotates, with
    /// [`previous_refresh_token_grace`](MockProviderBuilder::previous_refresh_token_grace) on. The
    /// API answers in the same envelope, always HTTP `200`: `{"status":0,"body":{}}`, or for a
    /// rejected access token `{"status":401,"body":{},"error":"XRequestID: Not provided
    /// invalid_token: The access token provided is invalid"}` (see
    /// [`providers::withings_token_rejected`](crate::providers::withings_token_rejected)).
    Withings,
}

impl Dialect {
    pub(super) fn token_path(self) -> &'static str {
        match self {
            Dialect::Standard => TOKEN_PATH,
            Dialect::Whoop => "/oauth/oauth2/token",
            Dialect::WhoopPartner => "/developer/v2/partner/token",
            Dialect::Kroger => "/v1/connect/oauth2/token",
            Dialect::Withings => "/v2/oauth2",
        }
    }

    /// Where users authorize: the provider's authorization endpoint's path.
    pub(super) fn authorize_path(self) -> &'static str {
        match self {
            Dialect::Standard | Dialect::WhoopPartner => AUTHORIZE_PATH,
            Dialect::Whoop => "/oauth/oauth2/auth",
            Dialect::Kroger => "/v1/connect/oauth2/authorize",
            Dialect::Withings => "/oauth2_user/authorize2",
        }
    }

    /// How long an authorization code may wait for its exchange: Withings documents 30 seconds;
    /// RFC 6749 §4.1.2 recommends at most 10 minutes.
    pub(super) fn code_lifetime(self) -> Duration {
        match self {
            Dialect::Withings => Duration::from_secs(30),
            _ => Duration::from_secs(10 * 60),
        }
    }

    pub(super) fn default_access_token_lifetime(self) -> Duration {
        match self {
            Dialect::Withings => Duration::from_secs(3 * 60 * 60),
            _ => Duration::from_secs(60 * 60),
        }
    }

    pub(super) fn token_type(self) -> &'static str {
        match self {
            Dialect::Standard | Dialect::Withings => "Bearer",
            Dialect::Whoop | Dialect::WhoopPartner | Dialect::Kroger => "bearer",
        }
    }

    /// What [`MockProvider::issue_tokens`] grants: WHOOP issues refresh tokens only to `offline`.
    pub(super) fn granted_scope(self) -> Option<&'static str> {
        match self {
            Dialect::Whoop => Some("offline"),
            Dialect::Withings => Some("user.metrics"),
            _ => None,
        }
    }

    pub(super) fn grant_types(self) -> &'static [&'static str] {
        match self {
            Dialect::Standard => &["authorization_code", "refresh_token", "client_credentials"],
            Dialect::WhoopPartner => &["client_credentials"],
            Dialect::Whoop | Dialect::Kroger | Dialect::Withings => &["authorization_code", "refresh_token"],
        }
    }

    pub(super) fn accepts_form(self) -> bool {
        self != Dialect::WhoopPartner
    }

    pub(super) fn accepts_json(self) -> bool {
        matches!(self, Dialect::Standard | Dialect::WhoopPartner)
    }

    /// The API's answer to a request whose bearer token was accepted (`Ok`), missing
    /// (`Err(None)`), or rejected for this reason (`Err(Some(..))`); a `401` names the protected
    /// resource metadata at `resource_metadata` when there is one (RFC 9728 §5.1).
    pub(super) fn api_answer(
        self,
        verdict: Result<(), Option<&str>>,
        resource_metadata: Option<&str>,
    ) -> ResponseTemplate {
        // The URL is the mock's own, `http://127.0.0.1:PORT/...`: no quote to escape.
        let metadata = resource_metadata.map(|url| format!(", resource_metadata=\"{url}\"")).unwrap_or_default();
        let template = match (verdict, self) {
            (Ok(()), Dialect::Withings) => {
                return ResponseTemplate::new(200).set_body_raw(r#"{"status":0,"body":{}}"#, "application/json");
            }
            (Ok(()), _) => return ResponseTemplate::new(200).set_body_json(json!({"ok": true})),
            (Err(None), Dialect::Standard) => {
                let challenge = format!("Bearer realm=\"mock\"{metadata}");
                return ResponseTemplate::new(401).insert_header(header::WWW_AUTHENTICATE, challenge.as_str());
            }
            (Err(Some(description)), Dialect::Standard) => {
                // The descriptions are fixed strings without quotes: safe inside the header.
                let challenge = format!(
                    "Bearer realm=\"mock\", error=\"invalid_token\", error_description=\"{description}\"{metadata}"
                );
                return ResponseTemplate::new(401)
                    .insert_header(header::WWW_AUTHENTICATE, challenge.as_str())
                    .set_body_json(json!({"error": "invalid_token", "error_description": description}));
            }
            // Kroger documents one body for every rejected token, and no challenge.
            (Err(_), Dialect::Kroger) => {
                ResponseTemplate::new(401).set_body_raw(KROGER_INVALID_TOKEN, "application/json")
            }
            // "WHOOP will return a 401 Unauthorized response": that, and nothing more.
            (Err(_), Dialect::Whoop | Dialect::WhoopPartner) => ResponseTemplate::new(401),
            // Withings answers everything with HTTP 200 and the outcome in `status`.
            (Err(_), Dialect::Withings) => {
                return ResponseTemplate::new(200).set_body_raw(WITHINGS_INVALID_TOKEN, "application/json");
            }
        };
        // A dialect whose 401 has no challenge gets one for the metadata alone.
        match resource_metadata {
            Some(url) => {
                let challenge = format!("Bearer resource_metadata=\"{url}\"");
                template.insert_header(header::WWW_AUTHENTICATE, challenge.as_str())
            }
            None => template,
        }
    }
}

// The token endpoint as the configured dialect speaks it: client authentication, then answers.
impl Shared {
    /// A successful token answer, in the dialect's shape and field order.
    pub(super) fn tokens_reply(&self, minted: &Minted, scope: Option<String>) -> Reply {
        let dialect = self.config.dialect;
        let access = Some(("access_token", Value::from(minted.access.as_str())));
        let refresh = minted.refresh.as_deref().map(|refresh| ("refresh_token", Value::from(refresh)));
        // A lifetime too long for the clock to hold made a token that never expires: say none.
        let expires_in =
            minted.expires_at.map(|_| ("expires_in", Value::from(self.config.access_token_lifetime.as_secs())));
        // RFC 9449 §5: a token bound to a DPoP key is of type `DPoP`.
        let token_type = if minted.jkt.is_some() { "DPoP" } else { dialect.token_type() };
        let token_type = Some(("token_type", Value::from(token_type)));
        let always_scope = Some(("scope", Value::from(scope.clone().unwrap_or_default())));
        let scope = scope.map(|scope| ("scope", Value::from(scope)));
        let fields = match dialect {
            // The order of RFC 6749 §5.1's example.
            Dialect::Standard => vec![access, token_type, expires_in, refresh, scope],
            Dialect::Whoop => vec![access, refresh, expires_in, always_scope, token_type],
            Dialect::WhoopPartner => vec![access, token_type, expires_in],
            Dialect::Kroger => vec![refresh, expires_in, access, token_type],
            Dialect::Withings => {
                // Withings' user id is a number in a string; the family stands in for the user.
                let userid = Some(("userid", Value::from((1_000_000 + minted.family).to_string())));
                let csrf = Some(("csrf_token", Value::from(minted.access.replacen("at-", "csrf-", 1))));
                vec![userid, access, refresh, expires_in, always_scope, csrf, token_type]
            }
        };
        let body = ordered_json(&fields.into_iter().flatten().collect::<Vec<_>>());
        match dialect {
            Dialect::Withings => Reply::json(200, format!(r#"{{"status":0,"body":{body}}}"#)),
            _ => Reply::json(200, body),
        }
    }

    /// `error` as the dialect answers it.
    pub(super) fn error_reply(&self, error: OAuthError) -> Reply {
        let OAuthError { status, code, description } = error;
        match (self.config.dialect, code) {
            // Withings: always 200, and 503 is its status for invalid parameters.
            (Dialect::Withings, "invalid_grant") => Reply::withings_error(503, "Invalid Params: invalid refresh_token"),
            (Dialect::Withings, "invalid_client") => {
                Reply::withings_error(503, "Invalid Params: invalid client_id or client_secret")
            }
            (Dialect::Withings, "unsupported_grant_type") => {
                Reply::withings_error(503, "Invalid Params: invalid grant_type")
            }
            (Dialect::Withings, _) => Reply::withings_error(503, &format!("Invalid Params: {description}")),
            (Dialect::Kroger, "invalid_grant") => Reply::Raw {
                status: 400,
                content_type: "text/plain".to_owned(),
                body: KROGER_INVALID_REFRESH_TOKEN.into(),
            },
            (Dialect::WhoopPartner, "invalid_client") => Reply::json(401, json!({"error": code}).to_string()),
            _ => {
                let body = ordered_json(&[("error", code.into()), ("error_description", description.into())]);
                // A Basic challenge only where Basic is how clients authenticate.
                let basic = matches!(self.config.dialect, Dialect::Standard | Dialect::Kroger);
                let challenge = (basic && code == "invalid_client" && status == 401).then_some("Basic realm=\"mock\"");
                Reply::Json { status, body, challenge, retry_after: None }
            }
        }
    }

    /// Withings routes on `action` before anything else.
    pub(super) fn check_action(&self, params: &HashMap<String, String>) -> Result<(), OAuthError> {
        match self.config.dialect {
            Dialect::Withings if params.get("action").is_none_or(|action| action != "requesttoken") => {
                Err(OAuthError::invalid_request("action"))
            }
            _ => Ok(()),
        }
    }

    /// Checks the client's credentials. `Ok(Some(..))` for a client assertion or a Withings
    /// signature, whose `jti` or nonce the caller must still find unused.
    pub(super) fn authenticate_client(
        &self,
        request: &Request,
        params: &HashMap<String, String>,
    ) -> Result<Option<OneTime>, OAuthError> {
        let headers = &request.headers;
        if params.contains_key("client_assertion") || params.contains_key("client_assertion_type") {
            return self.client_assertion(request, params).map(|jti| Some(OneTime::AssertionId(jti)));
        }
        if self.config.dialect == Dialect::Withings && params.contains_key("signature") {
            return self.verify_withings_signature(params).map(|nonce| Some(OneTime::Nonce(nonce)));
        }
        let in_body = || match (params.get("client_id"), params.get("client_secret")) {
            (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
            _ => Err(OAuthError::invalid_client("client_id and client_secret are required in the body")),
        };
        // A client named by its metadata document's URL is public whatever the dialect.
        if let Some(id) = params.get("client_id").filter(|id| self.is_document_client(id)) {
            let sent_a_secret = params.contains_key("client_secret") || !matches!(basic_credentials(headers), Ok(None));
            return self.check_document_client(id, sent_a_secret).map(|()| None);
        }
        let mut presented = Presented::DialectsWay;
        let (id, secret) = match self.config.dialect {
            Dialect::Standard => {
                if self.config.client.is_none() && !self.has_client_keys() && !self.registers_clients() {
                    return Ok(None);
                }
                match basic_credentials(headers).map_err(OAuthError::invalid_client)? {
                    Some(_) if params.contains_key("client_secret") => {
                        let description = "HTTP Basic and client_secret: RFC 6749 §2.3 allows one method";
                        return Err(OAuthError::invalid_request(description));
                    }
                    Some(basic) => {
                        presented = Presented::Basic;
                        basic
                    }
                    // A public client registered with `none` names itself and proves nothing.
                    None if self.registers_clients() && !params.contains_key("client_secret") => {
                        let Some(id) = params.get("client_id") else {
                            return Err(OAuthError::invalid_client("client authentication is required"));
                        };
                        return match self.check_registered(id, None, Presented::IdOnly) {
                            Some(verdict) => verdict.map(|()| None),
                            None => Err(OAuthError::invalid_client("unknown client or wrong client secret")),
                        };
                    }
                    None => {
                        presented = Presented::Body;
                        in_body().map_err(|_| OAuthError::invalid_client("client authentication is required"))?
                    }
                }
            }
            Dialect::Whoop | Dialect::WhoopPartner => {
                if !matches!(basic_credentials(headers), Ok(None)) {
                    let description = "HTTP Basic is not accepted: send client_id and client_secret in the body";
                    return Err(OAuthError::invalid_client(description));
                }
                in_body()?
            }
            // Withings reads its parameters only; an Authorization header goes unnoticed.
            Dialect::Withings => in_body()?,
            Dialect::Kroger => {
                if params.contains_key("client_secret") {
                    return Err(OAuthError::invalid_client("the client secret is accepted with HTTP Basic only"));
                }
                let basic = basic_credentials(headers).map_err(OAuthError::invalid_client)?;
                basic.ok_or_else(|| OAuthError::invalid_client("HTTP Basic client authentication is required"))?
            }
        };
        // A registered client first: one check, whichever way the client came to exist.
        if let Some(verdict) = self.check_registered(&id, Some(&secret), presented) {
            return verdict.map(|()| None);
        }
        match &self.config.client {
            Some((expected_id, expected_secret)) if id != *expected_id || secret != expected_secret.secret() => {
                Err(OAuthError::invalid_client("unknown client or wrong client secret"))
            }
            None if self.has_client_keys() => {
                Err(OAuthError::invalid_client("this client authenticates with private_key_jwt, not a secret"))
            }
            None if self.registers_clients() => {
                Err(OAuthError::invalid_client("unknown client or wrong client secret"))
            }
            _ => Ok(None),
        }
    }

    fn has_client_keys(&self) -> bool {
        #[cfg(feature = "private-key-jwt")]
        return !self.config.client_keys.is_empty();
        #[cfg(not(feature = "private-key-jwt"))]
        false
    }

    /// A client assertion, checked by the mock's `private_key_jwt` (see
    /// [`MockProviderBuilder::client_key`]); only the standard dialect takes one.
    fn client_assertion(&self, request: &Request, params: &HashMap<String, String>) -> Result<String, OAuthError> {
        if self.config.dialect != Dialect::Standard {
            return Err(OAuthError::invalid_client("this provider does not accept client assertions"));
        }
        #[cfg(feature = "private-key-jwt")]
        return self.verify_client_assertion(request, params);
        #[cfg(not(feature = "private-key-jwt"))]
        {
            let _ = (request, params);
            Err(OAuthError::new(400, "invalid_client", "no client key is registered (feature private-key-jwt)"))
        }
    }
}

impl Reply {
    /// A Withings envelope: HTTP 200 whatever happened, the outcome in `status`.
    fn withings_error(status: u16, error: &str) -> Self {
        Reply::json(200, ordered_json(&[("status", status.into()), ("body", json!({})), ("error", error.into())]))
    }
}

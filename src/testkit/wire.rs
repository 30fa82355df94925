//! HTTP on the mock's side of the wire: reading token requests (form or JSON bodies, HTTP Basic
//! credentials), building answers, and the wiremock responders for the token endpoint and the API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

use super::grants::Authorization;
use super::{Dialect, Fault, Shared};

/// How long [`Fault::LoseAnswer`] holds an answer back: far longer than any test waits.
pub(super) const LOST_ANSWER_DELAY: Duration = Duration::from_secs(60 * 60);

/// An OAuth 2.0 error response (RFC 6749 §5.2), before the dialect shapes it.
pub(super) struct OAuthError {
    pub(super) status: u16,
    pub(super) code: &'static str,
    pub(super) description: String,
}

impl OAuthError {
    pub(super) fn new(status: u16, code: &'static str, description: impl Into<String>) -> Self {
        Self { status, code, description: description.into() }
    }

    pub(super) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", description)
    }

    pub(super) fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", description)
    }
}

/// What the token endpoint answers; made into a response after the lock is released.
pub(super) enum Reply {
    /// A JSON body, already serialised so that fields keep the provider's order; never cached
    /// (RFC 6749 §5.1).
    Json {
        status: u16,
        body: String,
        /// `WWW-Authenticate`.
        challenge: Option<&'static str>,
        /// `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    /// Any other body, sent as is; an empty content type sends no `Content-Type`.
    Raw { status: u16, content_type: String, body: Vec<u8> },
}

/// Never panics: wiremock would, on a bad status or header, and a panicking responder hangs the
/// test. Statuses and content types of faults were checked when injected; this falls back anyway.
fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Serialises `fields` as a JSON object in this order (a `serde_json` object would sort them).
pub(super) fn ordered_json(fields: &[(&str, Value)]) -> String {
    let members: Vec<String> = fields.iter().map(|(name, value)| format!("{}:{value}", Value::from(*name))).collect();
    format!("{{{}}}", members.join(","))
}

impl Reply {
    pub(super) fn json(status: u16, body: String) -> Self {
        Reply::Json { status, body, challenge: None, retry_after: None }
    }

    pub(super) fn fault(fault: Fault) -> Self {
        match fault {
            Fault::Status(code) => Reply::json(code, json!({"error": "server_error"}).to_string()),
            Fault::RateLimited { retry_after } => {
                let seconds = retry_after.as_secs().saturating_add(u64::from(retry_after.subsec_nanos() > 0));
                let body = json!({"error": "rate_limited"}).to_string();
                Reply::Json { status: 429, body, challenge: None, retry_after: Some(seconds) }
            }
            Fault::Body { status, content_type, body } => Reply::Raw { status, content_type, body },
            // Handled before a reply is made, as the call is (or is refused by) the dialect.
            Fault::InvalidGrant | Fault::LoseAnswer => Reply::json(500, json!({"error": "server_error"}).to_string()),
        }
    }

    pub(super) fn into_template(self) -> ResponseTemplate {
        match self {
            Reply::Json { status, body, challenge, retry_after } => {
                let mut template = ResponseTemplate::new(status_code(status))
                    .insert_header(header::CACHE_CONTROL, "no-store")
                    .set_body_raw(body, "application/json");
                if let Some(challenge) = challenge {
                    template = template.insert_header(header::WWW_AUTHENTICATE, challenge);
                }
                if let Some(seconds) = retry_after {
                    template = template.insert_header(header::RETRY_AFTER, seconds.to_string().as_str());
                }
                template
            }
            Reply::Raw { status, mut content_type, body } => {
                if HeaderValue::from_str(&content_type).is_err() {
                    content_type.clear();
                }
                ResponseTemplate::new(status_code(status)).set_body_raw(body, &content_type)
            }
        }
    }
}

/// A responder's shared state and the delay of its answers.
pub(super) struct Endpoint {
    pub(super) shared: Arc<Shared>,
    pub(super) latency: Duration,
}

/// The token endpoint, `POST` at the dialect's path.
pub(super) struct TokenEndpoint(pub(super) Endpoint);

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (reply, lost, dpop_nonce) = self.0.shared.token_call(request);
        // wiremock sleeps after releasing its own locks, so a held-back answer blocks nothing else.
        let delay = if lost { LOST_ANSWER_DELAY.max(self.0.latency) } else { self.0.latency };
        let template = reply.into_template().set_delay(delay);
        #[cfg(feature = "dpop")]
        let template = super::dpop::with_nonce(template, dpop_nonce);
        #[cfg(not(feature = "dpop"))]
        let _: Option<String> = dpop_nonce;
        template
    }
}

/// The token request's parameters, from a body the dialect accepts (form or JSON); none may repeat
/// (RFC 6749 §3.2).
pub(super) fn token_params(request: &Request, dialect: Dialect) -> Result<HashMap<String, String>, OAuthError> {
    let content_type = request.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media_type = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let pairs: Vec<(String, String)> = match media_type.as_str() {
        "application/x-www-form-urlencoded" if dialect.accepts_form() => {
            form_urlencoded::parse(&request.body).into_owned().collect()
        }
        "application/json" if dialect.accepts_json() => {
            let Ok(Value::Object(object)) = serde_json::from_slice(&request.body) else {
                return Err(OAuthError::invalid_request("the body is not a JSON object"));
            };
            let mut pairs = Vec::with_capacity(object.len());
            for (name, value) in object {
                match value {
                    Value::String(value) => pairs.push((name, value)),
                    // Several resource indicators (RFC 8707 §2); read by `token_resources`.
                    Value::Array(_) if name == "resource" => {}
                    // `"scope": null` from a serialised `Option` is the same as leaving it out.
                    Value::Null => {}
                    _ => {
                        return Err(OAuthError::invalid_request(format!("{name} is not a string")));
                    }
                }
            }
            pairs
        }
        other => {
            return Err(OAuthError::invalid_request(format!("unsupported Content-Type {other:?}")));
        }
    };
    let mut params = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        // RFC 8707 §2 lets `resource` repeat; `token_resources` reads every one.
        if name == "resource" && params.contains_key(&name) {
            continue;
        }
        if params.contains_key(&name) {
            return Err(OAuthError::invalid_request(format!("parameter {name} is repeated")));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// HTTP Basic client credentials, decoded per RFC 6749 §2.3.1; `None` without an
/// `Authorization: Basic` header.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, &'static str> {
    const MALFORMED: &str = "malformed HTTP Basic credentials";
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let (scheme, encoded) = value.to_str().map_err(|_| MALFORMED)?.split_once(' ').unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = BASE64.decode(encoded.trim()).ok().and_then(|d| String::from_utf8(d).ok());
    let (id, secret) = decoded.as_deref().and_then(|d| d.split_once(':')).ok_or(MALFORMED)?;
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) => Ok(Some((id, secret))),
        _ => Err(MALFORMED),
    }
}

/// Decodes one form-urlencoded component (`+` is a space, `%XX` a byte); `None` if the result is
/// not UTF-8. A `%` without two hex digits after it is kept, as browsers do.
fn form_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match (byte, hex(i + 1), hex(i + 2)) {
            (b'+', ..) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.extend(u8::try_from(high * 16 + low).ok());
                i += 2;
            }
            _ => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl Shared {
    /// Whether the API accepts `bearer` (`None`: no credentials), counted as a call to it: why
    /// not, when the token is known to be bad, and `Err(None)` when there was no token at all.
    pub(super) fn admit(&self, bearer: Option<&str>) -> Result<(), Option<&'static str>> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.stats.api_calls += 1;
        let verdict = match bearer {
            None => Err(None),
            Some(token) => state.admit(token, now).map_err(Some),
        };
        match verdict {
            Ok(()) => state.stats.api_ok += 1,
            Err(_) => state.stats.api_unauthorized += 1,
        }
        verdict
    }
}

/// The protected API, any method under `/api/`.
pub(super) struct ApiEndpoint(pub(super) Endpoint);

impl Respond for ApiEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        #[cfg(feature = "dpop")]
        if let Some(template) = self.0.shared.dpop_api_answer(request) {
            return template.set_delay(self.0.latency);
        }
        // RFC 6750 §3.1: no header, or another scheme, means no credentials at all.
        let bearer = request.headers.get(header::AUTHORIZATION).and_then(|value| match value.to_str() {
            // Not visible ASCII: credentials, garbled ones, so they get invalid_token.
            Err(_) => Some(String::new()),
            Ok(value) => {
                let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
            }
        });
        let verdict = self.0.shared.admit(bearer.as_deref());
        let shared = &self.0.shared;
        if verdict.is_ok() && shared.config.mcp && request.url.path() == super::mcp::MCP_PATH {
            return shared.mcp_answer(request).set_delay(self.0.latency);
        }
        let resource_metadata = shared.challenge_metadata_url();
        let template = shared.config.dialect.api_answer(verdict, resource_metadata.as_deref());
        template.set_delay(self.0.latency)
    }
}

/// The authorization endpoint, `GET` at the dialect's path. The user approves at once: a valid
/// request is redirected back with a code (RFC 6749 §4.1.2), and PKCE with `S256` is required.
pub(super) struct AuthorizeEndpoint(pub(super) Endpoint);

impl Respond for AuthorizeEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let config = &self.0.shared.config;
        let mut params = HashMap::new();
        for (name, value) in request.url.query_pairs() {
            // RFC 8707 §2 lets `resource` repeat; read apart below.
            if name == "resource" {
                continue;
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                return authorize_page(&format!("parameter {name} is repeated"));
            }
        }
        // RFC 6749 §4.1.2.1: a bad client or redirect URI is told to the user, never redirected.
        let Some(redirect_uri) = params.get("redirect_uri").filter(|uri| url::Url::parse(uri).is_ok()) else {
            return authorize_page("redirect_uri is missing or not an absolute URL");
        };
        let client_id = params.get("client_id");
        // A client registered by its metadata document (fetched now if not known yet) or at the
        // registration endpoint: one redirect URI check, whichever way the client came to exist.
        let registered = match client_id {
            Some(id) if self.0.shared.is_document_client(id) => match self.0.shared.document_redirect_uris(id) {
                Ok(uris) => Some(uris),
                Err(why) => return authorize_page(&why),
            },
            Some(id) => self.0.shared.registered_redirect_uris(id),
            None => None,
        };
        match registered {
            // A registered client comes back only to a redirect URI it registered (RFC 7591 §2).
            Some(uris) if !uris.contains(redirect_uri) => {
                return authorize_page("redirect_uri is not registered for this client");
            }
            Some(_) => {}
            None => {
                let known = config.client.as_ref().is_some_and(|(id, _)| client_id == Some(id));
                if (config.client.is_some() || self.0.shared.registers_clients()) && !known {
                    return authorize_page("unknown client_id");
                }
            }
        }
        let state = params.get("state").cloned();
        let back = |answer: &[(&str, &str)]| {
            let mut url = url::Url::parse(redirect_uri).expect("checked above");
            url.query_pairs_mut().extend_pairs(answer).extend_pairs(state.as_deref().map(|s| ("state", s)));
            ResponseTemplate::new(302).insert_header(header::LOCATION, url.as_str()).set_delay(self.0.latency)
        };
        if params.get("response_type").map(String::as_str) != Some("code") {
            return back(&[("error", "unsupported_response_type")]);
        }
        let resources: Vec<String> =
            request.url.query_pairs().filter(|(name, _)| name == "resource").map(|(_, v)| v.into_owned()).collect();
        if let Err(refused) = self.0.shared.check_authorization_target(&resources) {
            return back(&[("error", refused.code), ("error_description", &refused.description)]);
        }
        let code_challenge = match (params.get("code_challenge"), params.get("code_challenge_method")) {
            (Some(challenge), Some(method)) if method == "S256" && challenge.len() == 43 => challenge.clone(),
            (Some(_), _) => {
                return back(&[
                    ("error", "invalid_request"),
                    ("error_description", "code_challenge_method must be S256"),
                ]);
            }
            (None, _) => {
                return back(&[("error", "invalid_request"), ("error_description", "code_challenge is required")]);
            }
        };
        let authorization = Authorization {
            client_id: client_id.cloned(),
            redirect_uri: redirect_uri.clone(),
            code_challenge,
            scope: params.get("scope").cloned(),
        };
        let code = self.0.shared.authorize(authorization);
        back(&[("code", &code)])
    }
}

fn authorize_page(description: &str) -> ResponseTemplate {
    let body = json!({"error": "invalid_request", "error_description": description}).to_string();
    ResponseTemplate::new(400).set_body_raw(body, "application/json")
}

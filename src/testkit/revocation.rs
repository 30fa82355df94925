//! The mock's revocation endpoint (RFC 7009), served in [`Dialect::Standard`]: it authenticates
//! the client as the token endpoint does, and revokes a refresh token's whole family (so a later
//! refresh with it gets `invalid_grant` and the API refuses its access tokens) or one access
//! token. Faults injected with `MockProvider::fail_next_revocation_calls` answer first.

use http::header;
use serde_json::json;
use wiremock::{Request, Respond, ResponseTemplate};

use super::grants::OneTime;
use super::wire::{Endpoint, LOST_ANSWER_DELAY, OAuthError, Reply, token_params};
use super::{Dialect, Fault, Shared};

/// Where the standard dialect serves it.
pub(super) const REVOCATION_PATH: &str = "/oauth/revoke";

impl Shared {
    /// Handles a revocation; `true` with the reply when the answer is to be lost.
    fn revocation_call(&self, request: &Request) -> (Reply, bool) {
        let checked = revocation_params(request).and_then(|params| {
            let once = self.authenticate_client(request, &params)?;
            Ok((params, once))
        });
        let now = self.config.clock.now();

        let mut state = self.state.lock();
        state.stats.revocation_calls += 1;
        if matches!(&checked, Err(error) if error.code == "invalid_client") {
            state.stats.invalid_clients += 1;
        }
        state.revocation_requests.push(request.clone());
        let lost = match state.revocation_faults.pop_front() {
            None => false,
            Some(Fault::LoseAnswer) => {
                state.stats.answers_lost += 1;
                true
            }
            Some(fault) => return (Reply::fault(fault), false),
        };
        let params = checked.and_then(|(params, once)| match once {
            Some(OneTime::AssertionId(jti)) => match state.assertion_ids.insert(jti) {
                true => Ok(params),
                false => Err(OAuthError::new(400, "invalid_client", "the client assertion's jti was already used")),
            },
            Some(OneTime::Nonce(nonce)) => state.spend_nonce(&nonce, now).map(|()| params),
            None => Ok(params),
        });
        let params = match params {
            Ok(params) => params,
            Err(error) => return (self.error_reply(error), lost),
        };
        let Some(token) = params.get("token") else {
            return (self.error_reply(OAuthError::invalid_request("token is missing")), lost);
        };
        // RFC 7009 §2.1: the hint only speeds the search up; a token is looked for as either kind.
        // §2.2: an unknown or already invalid token is answered 200 as well.
        if state.revoke_token(token) {
            state.stats.tokens_revoked += 1;
        }
        (Reply::json(200, json!({}).to_string()), lost)
    }
}

/// A revocation request's parameters: a form body (RFC 7009 §2.1), none repeated.
fn revocation_params(request: &Request) -> Result<std::collections::HashMap<String, String>, OAuthError> {
    let content_type = request.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media_type != "application/x-www-form-urlencoded" {
        return Err(OAuthError::invalid_request(format!("a revocation is a form body, not {media_type:?}")));
    }
    token_params(request, Dialect::Standard)
}

/// The revocation endpoint, `POST` at [`REVOCATION_PATH`].
pub(super) struct RevocationEndpoint(pub(super) Endpoint);

impl Respond for RevocationEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (reply, lost) = self.0.shared.revocation_call(request);
        let delay = if lost { LOST_ANSWER_DELAY.max(self.0.latency) } else { self.0.latency };
        reply.into_template().set_delay(delay)
    }
}

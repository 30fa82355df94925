//! Ready-made token sources for the providers in the crate's test suite, each set up the way its
//! own documentation says.
//!
//! Each preset is complete: it knows its provider's token endpoint, its API's origin (the only
//! origin a layer built on it sends the token to) and, for Withings, how its API rejects a token
//! without a 401. Every function returns an ordinary [`RefreshTokenGrant`] or
//! [`ClientCredentials`], so anything can still be changed: `.token_url(..)` and
//! `.api_origin(..)` to point it at a test server, `.scope(..)` for more scopes, `.timeout(..)`.
//!
//! ```
//! use reqwest_token_refresh::{TokenRefresh, providers};
//!
//! // The token goes to https://api.kroger.com only.
//! let auth = TokenRefresh::builder(providers::kroger("client-id", "client-secret")).build()?;
//! # Ok::<(), reqwest_token_refresh::Error>(())
//! ```

use serde_json::Value;

use super::{ClientCredentials, RefreshTokenGrant};
use crate::error::OAuthError;
use crate::token::ClientSecret;

pub use super::withings_signature::{WITHINGS_SIGNATURE_URL, WithingsSignature};

/// WHOOP's token endpoint (user OAuth).
pub const WHOOP_TOKEN_URL: &str = "https://api.prod.whoop.com/oauth/oauth2/token";
/// WHOOP's Partner API token endpoint (client credentials).
pub const WHOOP_PARTNER_TOKEN_URL: &str = "https://api.prod.whoop.com/developer/v2/partner/token";
/// Kroger's token endpoint.
pub const KROGER_TOKEN_URL: &str = "https://api.kroger.com/v1/connect/oauth2/token";
/// Withings' token endpoint (the `requesttoken` action).
pub const WITHINGS_TOKEN_URL: &str = "https://wbsapi.withings.net/v2/oauth2";
/// The origin of WHOOP's API (user OAuth), `https://api.prod.whoop.com`: where [`whoop`]'s
/// tokens go.
pub const WHOOP_API_ORIGIN: &str = "https://api.prod.whoop.com";
/// The origin of WHOOP's Partner API, `https://api.prod.whoop.com`: where [`whoop_partner`]'s
/// tokens go.
pub const WHOOP_PARTNER_API_ORIGIN: &str = "https://api.prod.whoop.com";
/// The origin of Kroger's API, `https://api.kroger.com`: where [`kroger`]'s tokens go.
pub const KROGER_API_ORIGIN: &str = "https://api.kroger.com";
/// The origin of Withings' data API, `https://wbsapi.withings.net`: where [`withings`]'s tokens
/// go.
pub const WITHINGS_API_ORIGIN: &str = "https://wbsapi.withings.net";
/// WHOOP's authorization endpoint, where users grant access ([`RefreshTokenGrant::login`]).
pub const WHOOP_AUTHORIZE_URL: &str = "https://api.prod.whoop.com/oauth/oauth2/auth";
/// Kroger's authorization endpoint.
pub const KROGER_AUTHORIZE_URL: &str = "https://api.kroger.com/v1/connect/oauth2/authorize";
/// Withings' authorization endpoint. Its codes are valid for 30 seconds: exchange at once.
pub const WITHINGS_AUTHORIZE_URL: &str = "https://account.withings.com/oauth2_user/authorize2";

/// WHOOP (user OAuth): a form body carrying `client_id` and `client_secret`, and `scope=offline`,
/// without which WHOOP returns no new refresh token. The token goes to [`WHOOP_API_ORIGIN`].
pub fn whoop(client_id: impl Into<String>, client_secret: impl Into<ClientSecret>) -> RefreshTokenGrant {
    RefreshTokenGrant::new(WHOOP_TOKEN_URL)
        .client_id(client_id)
        .client_secret(client_secret)
        .client_auth(crate::ClientAuth::RequestBody)
        .scope("offline")
        .authorize_url(WHOOP_AUTHORIZE_URL)
        .api_origin(WHOOP_API_ORIGIN)
}

/// The WHOOP Partner API: the client-credentials grant as a JSON body with the credentials and
/// the `whoop-partner/token` scope in it. No refresh token; a 401 simply fetches a new token. The
/// token goes to [`WHOOP_PARTNER_API_ORIGIN`].
pub fn whoop_partner(client_id: impl Into<String>, client_secret: impl Into<ClientSecret>) -> ClientCredentials {
    ClientCredentials::new(WHOOP_PARTNER_TOKEN_URL)
        .client_id(client_id)
        .client_secret(client_secret)
        .client_auth(crate::ClientAuth::RequestBody)
        .encoding(crate::BodyEncoding::Json)
        .scope("whoop-partner/token")
        .api_origin(WHOOP_PARTNER_API_ORIGIN)
}

/// Kroger: the client id and secret in HTTP Basic, a form body. Refresh tokens are single-use; a
/// spent one is answered with a plain-text 400, which the layer treats as terminal. The token
/// goes to [`KROGER_API_ORIGIN`].
pub fn kroger(client_id: impl Into<String>, client_secret: impl Into<ClientSecret>) -> RefreshTokenGrant {
    RefreshTokenGrant::new(KROGER_TOKEN_URL)
        .client_id(client_id)
        .client_secret(client_secret)
        .authorize_url(KROGER_AUTHORIZE_URL)
        .api_origin(KROGER_API_ORIGIN)
}

/// Withings: `action=requesttoken` and the credentials in the form body; every answer is an HTTP
/// 200 whose `status` field says how it went, with the token response inside `body`. Every
/// refresh rotates the refresh token. The token goes to [`WITHINGS_API_ORIGIN`], whose answers
/// are judged by [`withings_token_rejected`] too: its API rejects a token with HTTP 200 and
/// `"status":401`, which refreshes the token like a 401 would. [`withings_signed`] is the same
/// with signed token calls, which send no client secret.
pub fn withings(client_id: impl Into<String>, client_secret: impl Into<ClientSecret>) -> RefreshTokenGrant {
    RefreshTokenGrant::new(WITHINGS_TOKEN_URL)
        .client_id(client_id)
        .client_secret(client_secret)
        .client_auth(crate::ClientAuth::RequestBody)
        .param("action", "requesttoken")
        .map_response(withings_envelope)
        .authorize_url(WITHINGS_AUTHORIZE_URL)
        .scope_delimiter(",")
        .api_origin(WITHINGS_API_ORIGIN)
        .token_rejected_when(withings_token_rejected)
}

/// Withings with signed token calls: the [`withings`] preset, but instead of sending the client
/// secret, each token call (a refresh, a login's code exchange) first gets a one-time nonce from
/// Withings' signature service ([`WITHINGS_SIGNATURE_URL`]) and carries it with an HMAC-SHA256
/// `signature` keyed by the secret ([`WithingsSignature`] quotes Withings' rules). The secret never
/// leaves the process. Point the nonce service elsewhere with
/// `.client_auth(ClientAuth::WithingsSignature(WithingsSignature::new(url)))`.
pub fn withings_signed(client_id: impl Into<String>, client_secret: impl Into<ClientSecret>) -> RefreshTokenGrant {
    withings(client_id, client_secret).client_auth(crate::ClientAuth::WithingsSignature(WithingsSignature::default()))
}

/// Unwraps Withings' `{"status":0,"body":{...}}` envelope, and turns a non-zero `status` into an
/// OAuth error: an invalid refresh token into `invalid_grant` (terminal), status 601 ("too many
/// requests") into `slow_down` (transient), anything else into `withings_status_<n>`.
pub fn withings_envelope(answer: Value) -> Result<Value, OAuthError> {
    let Some(status) = answer.get("status") else {
        // Not enveloped: read it as a plain token response.
        return Ok(answer);
    };
    let text = answer.get("error").and_then(Value::as_str).unwrap_or_default();
    match status.as_i64() {
        Some(0) => match answer.get("body") {
            Some(body @ Value::Object(_)) => Ok(body.clone()),
            _ => Err(OAuthError::new("invalid_response").with_description("Withings status 0 without a body object")),
        },
        Some(code) => {
            let error = if text.contains("refresh_token") {
                "invalid_grant".to_owned()
            } else if code == 601 {
                "slow_down".to_owned()
            } else {
                format!("withings_status_{code}")
            };
            Err(OAuthError::new(error).with_description(format!("Withings status {code}: {text}")))
        }
        None => Err(OAuthError::new("invalid_response").with_description("Withings `status` is not a number")),
    }
}

/// Whether a Withings data-API answer says the access token was rejected. Withings answers an
/// invalid or expired access token with HTTP 200 and `{"status":401,"body":{},"error":"...
/// invalid_token: ..."}` rather than a 401. The [`withings`] preset carries this rule, so that
/// such answers refresh the token like a 401 would; give it to
/// [`token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when) for a Withings grant
/// of your own, or to combine it with a rule of yours.
pub fn withings_token_rejected(status: http::StatusCode, body: &[u8]) -> bool {
    if status != http::StatusCode::OK {
        return false;
    }
    // A rejection is a small JSON object; anything that does not parse (a longer body cut at the
    // peek limit, another format) is not one.
    let Ok(answer) = serde_json::from_slice::<Value>(body) else { return false };
    answer.get("status").and_then(Value::as_i64) == Some(401)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn withings_success_envelope_is_unwrapped() {
        let body = json!({"access_token": "a", "refresh_token": "r", "userid": "42"});
        assert_eq!(withings_envelope(json!({"status": 0, "body": body.clone()})), Ok(body));
    }

    #[test]
    fn withings_invalid_refresh_token_is_invalid_grant() {
        let err =
            withings_envelope(json!({"status": 503, "body": {}, "error": "Invalid Params: invalid refresh_token"}))
                .unwrap_err();
        assert_eq!(err.error, "invalid_grant");
        assert_eq!(
            err.error_description.as_deref(),
            Some("Withings status 503: Invalid Params: invalid refresh_token")
        );
    }

    #[test]
    fn withings_rate_limit_is_retryable_and_other_codes_keep_their_number() {
        assert_eq!(withings_envelope(json!({"status": 601, "body": {}})).unwrap_err().error, "slow_down");
        assert_eq!(withings_envelope(json!({"status": 2554, "body": {}})).unwrap_err().error, "withings_status_2554");
        assert!(withings_envelope(json!({"status": "0"})).is_err());
        assert!(withings_envelope(json!({"status": 0})).is_err());
    }

    #[test]
    fn withings_status_401_in_a_200_is_a_rejected_token_and_nothing_else_is() {
        let ok = http::StatusCode::OK;
        let rejected = br#"{"status":401,"body":{},"error":"XRequestID: Not provided invalid_token: The access token provided is invalid"}"#;
        assert!(withings_token_rejected(ok, rejected));
        assert!(withings_token_rejected(ok, br#" { "body": {}, "status": 401 } "#));
        assert!(!withings_token_rejected(http::StatusCode::BAD_GATEWAY, rejected));
        for other in [
            &br#"{"status":0,"body":{"measuregrps":[]}}"#[..],
            br#"{"status":"401"}"#,
            br#"{"status":503,"body":{},"error":"Invalid Params"}"#,
            br#"[{"status":401}]"#,
            br#"{"status":401"#,
            b"status 401",
            b"",
        ] {
            assert!(!withings_token_rejected(ok, other), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn an_answer_without_an_envelope_passes_as_is() {
        let plain = json!({"access_token": "a"});
        assert_eq!(withings_envelope(plain.clone()), Ok(plain));
    }

    #[test]
    fn each_preset_sends_its_token_to_its_own_api_only() {
        use crate::TokenSource;
        assert_eq!(whoop("id", "s").resource_server().origins(), ["https://api.prod.whoop.com"]);
        assert_eq!(whoop_partner("id", "s").resource_server().origins(), ["https://api.prod.whoop.com"]);
        assert_eq!(kroger("id", "s").resource_server().origins(), ["https://api.kroger.com"]);
        assert_eq!(withings("id", "s").resource_server().origins(), ["https://wbsapi.withings.net"]);
    }

    #[test]
    fn only_the_withings_preset_carries_a_rejection_rule_and_it_is_withings_own() {
        use crate::TokenSource;
        let rejected = br#"{"status":401,"body":{},"error":"invalid_token"}"#;
        let (_, rule) = withings("id", "s").resource_server().into_parts();
        let rule = rule.expect("the Withings preset carries its API's rule");
        assert!(rule(http::StatusCode::OK, rejected));
        assert!(!rule(http::StatusCode::OK, br#"{"status":0,"body":{}}"#));
        for other in [whoop("id", "s").resource_server(), kroger("id", "s").resource_server()] {
            assert!(other.into_parts().1.is_none());
        }
        assert!(whoop_partner("id", "s").resource_server().into_parts().1.is_none());
    }

    #[test]
    fn presets_point_at_the_real_endpoints() {
        for shown in [
            format!("{:?}", whoop("id", "s")),
            format!("{:?}", kroger("id", "s")),
            format!("{:?}", withings("id", "s")),
            format!("{:?}", whoop_partner("id", "s")),
        ] {
            assert!(shown.contains("https://"), "{shown}");
        }
    }
}

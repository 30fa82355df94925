//! Withings' signed requests: a token call that proves the client secret with an HMAC over a
//! one-time nonce instead of sending it ([`WithingsSignature`]).
//!
//! Withings' rules, as its developer guide ("Learn how to sign requests") and its Signature v2 -
//! Getnonce reference publish them:
//!
//! > 1. Prepare the following parameters: `action`: `getnonce`. `client_id`: Your unique client
//! >    identifier. `timestamp`: A UNIX timestamp of the current time.
//! > 2. Concatenate the parameter values in the following order: `action`, `client_id`, and
//! >    `timestamp`, separating them with commas (`,`).
//! > 3. Use the HMAC SHA-256 algorithm to hash this concatenated string. The secret key for the
//! >    HMAC function is your client secret.
//! > 4. Send the request to the getnonce API endpoint, appending the generated hash as the
//! >    `signature`.
//!
//! > A nonce is a random token that is generated and stored in Withings server with 30 minutes of
//! > validity. [...] Withings can check that the nonce token is still valid and was never used
//! > before.
//!
//! and, for the call itself:
//!
//! > The signature consists of the following parameters: `action`, `client_id`, `nonce`. [...]
//! > Sort the values alphabetically by key name: action -> client_id -> nonce. Generate a string by
//! > concatenating values separated by a comma [...] `value1,value2,value3`. Apply an HMAC hashing
//! > function on the string using the algorithm sha256 and your partner's `client_secret` as a
//! > secret key. Add the hash string in the parameters under the `signature` key.
//!
//! Their PHP example signs with `hash_hmac('sha256', ...)` and their JavaScript one with
//! `hmac.digest("hex")`: the signature is the HMAC's lowercase hex. The token call's `action` is
//! `requesttoken`, as in the Withings seed document's snippet, whose parameters are `action`,
//! `client_id`, `redirect_uri`, `code`, `grant_type`, `nonce` and then `signature`: no
//! `client_secret`.

use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use sha2::Sha256;

use super::endpoint::{CappedAnswer, TokenEndpoint};
use super::providers::withings_envelope;
use super::response;
use crate::error::{OAuthError, RefreshError};
use crate::token::ClientSecret;

/// Withings' signature service, where nonces come from: `https://wbsapi.withings.net/v2/signature`.
pub const WITHINGS_SIGNATURE_URL: &str = "https://wbsapi.withings.net/v2/signature";

/// Withings' signed token calls, for [`ClientAuth::WithingsSignature`](crate::ClientAuth::WithingsSignature):
/// before each token call, a nonce from Withings' signature service (`action=getnonce`, signed
/// over `action,client_id,timestamp`), then the token call with `client_id`, `nonce` and an
/// HMAC-SHA256 `signature` over `action,client_id,nonce`, keyed by the client secret, which itself
/// is never sent. [`providers::withings_signed`](crate::providers::withings_signed) is the
/// Withings preset with this on.
///
/// ```
/// use reqwest_token_refresh::providers::{self, WithingsSignature};
/// use reqwest_token_refresh::ClientAuth;
///
/// let grant = providers::withings("client-id", "client-secret")
///     .client_auth(ClientAuth::WithingsSignature(WithingsSignature::default()));
/// // The same as the preset:
/// assert_eq!(format!("{grant:?}"), format!("{:?}", providers::withings_signed("client-id", "client-secret")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithingsSignature {
    nonce_url: String,
}

impl Default for WithingsSignature {
    /// Nonces from [`WITHINGS_SIGNATURE_URL`].
    fn default() -> Self {
        Self::new(WITHINGS_SIGNATURE_URL)
    }
}

impl WithingsSignature {
    /// Nonces from the signature service at `nonce_url` (a test server's, say).
    pub fn new(nonce_url: impl Into<String>) -> Self {
        Self { nonce_url: nonce_url.into() }
    }

    /// Where nonces come from.
    pub fn nonce_url(&self) -> &str {
        &self.nonce_url
    }

    /// Gets a nonce for the call whose `action` is `action`, and signs that call: the
    /// `(nonce, signature)` to send. Both calls go through `endpoint`'s client, bounded by its
    /// timeout and answer cap.
    pub(crate) async fn sign_call(
        &self,
        endpoint: &TokenEndpoint,
        client_id: &str,
        secret: &ClientSecret,
        action: &str,
        timestamp: u64,
    ) -> Result<(String, String), RefreshError> {
        let url = reqwest::Url::parse(&self.nonce_url).map_err(|e| {
            RefreshError::Config(format!("the Withings signature URL {:?} does not parse: {e}", self.nonce_url))
        })?;
        let timestamp = timestamp.to_string();
        let signed = [("action", "getnonce"), ("client_id", client_id), ("timestamp", timestamp.as_str())];
        let nonce_signature = signature(secret, &signed);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(signed)
            .append_pair("signature", &nonce_signature)
            .finish();
        let request = endpoint
            .request(http::Method::POST, url)?
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(body);
        let nonce = nonce_from(endpoint.send_capped(request).await?, endpoint).map_err(|mut err| {
            err.redact(&[nonce_signature.as_str()]);
            err
        })?;
        let call_signature = signature(secret, &[("action", action), ("client_id", client_id), ("nonce", &nonce)]);
        Ok((nonce, call_signature))
    }
}

/// Withings' signature: the HMAC-SHA256, keyed by the client secret, of the values of `params`
/// sorted by name and joined with commas, in lowercase hex.
pub(crate) fn signature(secret: &ClientSecret, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_by_key(|(name, _)| *name);
    let message = sorted.iter().map(|(_, value)| *value).collect::<Vec<_>>().join(",");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.secret().as_bytes()).expect("HMAC takes a key of any length");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The nonce in the signature service's answer, `{"status":0,"body":{"nonce":"..."}}`.
fn nonce_from(answer: CappedAnswer, endpoint: &TokenEndpoint) -> Result<String, RefreshError> {
    let CappedAnswer { status, headers, body, cut } = answer;
    if !status.is_success() {
        return Err(response::parse_failure(status, &headers, &body, endpoint.now()));
    }
    let unusable = |reason: String| RefreshError::InvalidResponse {
        status,
        reason,
        body: response::excerpt(&body),
        rotated_refresh_token: None,
    };
    if cut {
        return Err(unusable(format!(
            "the signature service's answer is larger than {} bytes",
            endpoint.max_response_bytes
        )));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| unusable(format!("the signature service's answer is not JSON: {e}")))?;
    match withings_envelope(value) {
        Ok(body) => match body.get("nonce").and_then(Value::as_str) {
            Some(nonce) if !nonce.is_empty() => Ok(nonce.to_owned()),
            _ => Err(unusable("the signature service's answer has no nonce".into())),
        },
        Err(error) => {
            // A refused signature means the client id or secret is wrong, for every call to come:
            // the client's fault, terminal. Anything else (a rate limit, an outage) may pass.
            let description = error.error_description.as_deref().unwrap_or_default();
            let error = if description.contains("signature") || description.contains("client_id") {
                OAuthError::new("invalid_client").with_description(description)
            } else {
                error
            };
            Err(RefreshError::protocol(status, error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example: the expected values were computed apart from this code, with
    /// `printf '%s' 'requesttoken,a1b2c3d4e5,7c8f1a2e-nonce-30min' | openssl dgst -sha256 -hmac
    /// 'shh-withings-secret'` and the same for `getnonce,a1b2c3d4e5,1700000000`.
    #[test]
    fn the_signature_is_the_worked_example_computed_with_openssl() {
        let secret = ClientSecret::new("shh-withings-secret");
        let call = [("nonce", "7c8f1a2e-nonce-30min"), ("client_id", "a1b2c3d4e5"), ("action", "requesttoken")];
        assert_eq!(signature(&secret, &call), "1949dc7c6071f1b405eac117919fee25a0864837b5196aed545e12528a9c5ad2");
        let nonce = [("timestamp", "1700000000"), ("action", "getnonce"), ("client_id", "a1b2c3d4e5")];
        assert_eq!(signature(&secret, &nonce), "cef7e459d3902658e8cd10f55444df1746b8f4009f47167c74299879b38a5576");
    }

    #[test]
    fn the_values_are_signed_in_the_order_of_their_names_whatever_order_they_come_in() {
        let secret = ClientSecret::new("k");
        let a = signature(&secret, &[("action", "x"), ("client_id", "y"), ("nonce", "z")]);
        let b = signature(&secret, &[("nonce", "z"), ("action", "x"), ("client_id", "y")]);
        assert_eq!(a, b);
        assert_ne!(a, signature(&secret, &[("action", "y"), ("client_id", "x"), ("nonce", "z")]));
        assert_ne!(a, signature(&ClientSecret::new("other"), &[("action", "x"), ("client_id", "y"), ("nonce", "z")]));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
    }

    #[test]
    fn the_default_service_is_withings_own() {
        assert_eq!(WithingsSignature::default().nonce_url(), "https://wbsapi.withings.net/v2/signature");
    }
}

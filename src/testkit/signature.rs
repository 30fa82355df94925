//! The mock's Withings signature service (`POST /v2/signature`, `action=getnonce`) and its check
//! of a signed token call, as Withings publishes them (see
//! [`WithingsSignature`](crate::providers::WithingsSignature) for the quoted rules): a nonce is
//! issued to a correctly signed `getnonce` and lives 30 minutes; a token call carrying `signature`
//! must carry a live, never-used nonce and the HMAC-SHA256, keyed by the client secret, of
//! `action,client_id,nonce`. Spending the nonce needs the ledger, so it happens under the lock, in
//! [`Shared::token_call`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::json;
use sha2::Sha256;
use wiremock::{Request, Respond, ResponseTemplate};

use super::Shared;
use super::grants::State;
use super::wire::{Endpoint, OAuthError, Reply, token_params};

/// The path of Withings' signature service.
pub(super) const SIGNATURE_PATH: &str = "/v2/signature";
/// How long a nonce stays usable: "generated and stored in Withings server with 30 minutes of
/// validity".
pub(super) const NONCE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// How far a `getnonce` timestamp may be from the provider's clock. Withings documents no window;
/// the mock's ten minutes make a client that sends a stale or made-up timestamp fail.
const TIMESTAMP_WINDOW_SECS: u64 = 10 * 60;

/// Whether `signature` (hex) is the HMAC-SHA256 of `message` keyed by `secret`; compared in
/// constant time.
fn signed(secret: &str, message: &str, signature: &str) -> bool {
    let Some(bytes) = decode_hex(signature) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(message.as_bytes());
    mac.verify_slice(&bytes).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok()).collect()
}

/// An "Invalid Params" refusal, which the Withings dialect answers in its envelope (status 503).
fn invalid(description: &str) -> OAuthError {
    OAuthError::invalid_request(description)
}

impl Shared {
    /// The client secret a signature is checked with: the registered one, or, with no client
    /// registered, none to check (any signature passes, as any secret does).
    fn signing_secret(&self, client_id: &str) -> Result<Option<&str>, OAuthError> {
        match &self.config.client {
            Some((id, _)) if id != client_id => Err(invalid("invalid client_id")),
            Some((_, secret)) => Ok(Some(secret.secret())),
            None => Ok(None),
        }
    }

    /// A `getnonce` call: a new nonce for a correctly signed request.
    fn nonce_call(&self, request: &Request) -> Reply {
        let checked = token_params(request, self.config.dialect).and_then(|params| {
            let get = |name: &str| params.get(name).ok_or_else(|| invalid(&format!("{name} is missing")));
            if get("action")? != "getnonce" {
                return Err(invalid("action"));
            }
            let (client_id, timestamp, signature) = (get("client_id")?, get("timestamp")?, get("signature")?);
            let now = self.config.clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
            match timestamp.parse::<u64>() {
                Ok(at) if at.abs_diff(now) <= TIMESTAMP_WINDOW_SECS => {}
                _ => return Err(invalid("timestamp")),
            }
            if let Some(secret) = self.signing_secret(client_id)?
                && !signed(secret, &format!("getnonce,{client_id},{timestamp}"), signature)
            {
                return Err(invalid("invalid signature"));
            }
            Ok(())
        });
        if let Err(error) = checked {
            return self.error_reply(error);
        }
        let mut state = self.state.lock();
        state.stats.nonces_issued += 1;
        let nonce = format!("nonce-{}-{}", self.config.token_prefix, state.stats.nonces_issued);
        state.nonces.insert(nonce.clone(), self.config.clock.now());
        Reply::json(200, json!({"status": 0, "body": {"nonce": nonce}}).to_string())
    }

    /// Checks a signed token call, all but its nonce's freshness: `Ok` carries the nonce to
    /// spend.
    pub(super) fn verify_withings_signature(&self, params: &HashMap<String, String>) -> Result<String, OAuthError> {
        if params.contains_key("client_secret") {
            return Err(invalid("client_secret and signature: send one"));
        }
        let get = |name: &str| params.get(name).ok_or_else(|| invalid(&format!("{name} is missing")));
        let (action, client_id, nonce, signature) =
            (get("action")?, get("client_id")?, get("nonce")?, get("signature")?);
        if let Some(secret) = self.signing_secret(client_id)?
            && !signed(secret, &format!("{action},{client_id},{nonce}"), signature)
        {
            return Err(invalid("invalid signature"));
        }
        Ok(nonce.clone())
    }
}

impl State {
    /// Spends `nonce`: it must have been issued, not used, and be under 30 minutes old.
    pub(super) fn spend_nonce(&mut self, nonce: &str, now: SystemTime) -> Result<(), OAuthError> {
        match self.nonces.remove(nonce) {
            Some(issued) if now.duration_since(issued).unwrap_or_default() < NONCE_LIFETIME => Ok(()),
            Some(_) => Err(invalid("nonce expired")),
            None => Err(invalid("invalid nonce")),
        }
    }
}

/// The signature service, `POST` at [`SIGNATURE_PATH`] in the Withings dialect.
pub(super) struct SignatureEndpoint(pub(super) Endpoint);

impl Respond for SignatureEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.shared.nonce_call(request).into_template().set_delay(self.0.latency)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::ManualClock;
    use crate::testkit::{Dialect, MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};

    fn hex_hmac(message: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(MOCK_CLIENT_SECRET.as_bytes()).unwrap();
        mac.update(message.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    async fn post(url: String, fields: &[(&str, &str)]) -> Value {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let request = reqwest::Client::new().post(url).header("content-type", "application/x-www-form-urlencoded");
        let answer = tokio::time::timeout(Duration::from_secs(10), request.body(body).send()).await.unwrap().unwrap();
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    }

    async fn get_nonce(provider: &MockProvider, timestamp: u64, signature: Option<&str>) -> Value {
        let timestamp = timestamp.to_string();
        let signed = hex_hmac(&format!("getnonce,{MOCK_CLIENT_ID},{timestamp}"));
        let fields = [
            ("action", "getnonce"),
            ("client_id", MOCK_CLIENT_ID),
            ("timestamp", timestamp.as_str()),
            ("signature", signature.unwrap_or(&signed)),
        ];
        post(provider.signature_url(), &fields).await
    }

    async fn signed_refresh(provider: &MockProvider, refresh_token: &str, nonce: &str) -> Value {
        let signature = hex_hmac(&format!("requesttoken,{MOCK_CLIENT_ID},{nonce}"));
        let fields = [
            ("action", "requesttoken"),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", MOCK_CLIENT_ID),
            ("nonce", nonce),
            ("signature", signature.as_str()),
        ];
        post(provider.token_url(), &fields).await
    }

    #[tokio::test]
    async fn a_nonce_needs_a_signed_request_with_a_current_timestamp_and_works_once_within_30_minutes() {
        let clock = ManualClock::starting_now();
        let provider = MockProvider::builder()
            .dialect(Dialect::Withings)
            .client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
            .clock(clock.clone())
            .start()
            .await;
        let now = crate::Clock::now(&clock).duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();

        let stale = get_nonce(&provider, now - 3_600, None).await;
        assert_eq!((stale["status"].as_i64(), stale["error"].as_str()), (Some(503), Some("Invalid Params: timestamp")));
        let forged = get_nonce(&provider, now, Some(&"0".repeat(64))).await;
        assert_eq!(forged["error"], "Invalid Params: invalid signature");
        assert_eq!(provider.stats().nonces_issued, 0);

        let nonce = get_nonce(&provider, now, None).await["body"]["nonce"].as_str().unwrap().to_owned();
        let tokens = provider.issue_tokens();
        let refresh_token = tokens.refresh_token().unwrap().secret();
        let answer = signed_refresh(&provider, refresh_token, &nonce).await;
        assert_eq!(answer["status"], 0, "{answer}");
        let again = signed_refresh(&provider, answer["body"]["refresh_token"].as_str().unwrap(), &nonce).await;
        assert_eq!(again["error"], "Invalid Params: invalid nonce", "a nonce works once");

        let late = get_nonce(&provider, now, None).await["body"]["nonce"].as_str().unwrap().to_owned();
        clock.advance(NONCE_LIFETIME);
        let expired = signed_refresh(&provider, answer["body"]["refresh_token"].as_str().unwrap(), &late).await;
        assert_eq!(expired["error"], "Invalid Params: nonce expired");
        assert_eq!(provider.stats().tokens_issued, 1);
    }

    #[test]
    fn the_mock_checks_the_worked_example_that_openssl_computed() {
        // `printf '%s' 'requesttoken,a1b2c3d4e5,7c8f1a2e-nonce-30min' | openssl dgst -sha256 -hmac 'shh-withings-secret'`
        let expected = "1949dc7c6071f1b405eac117919fee25a0864837b5196aed545e12528a9c5ad2";
        assert!(signed("shh-withings-secret", "requesttoken,a1b2c3d4e5,7c8f1a2e-nonce-30min", expected));
        assert!(!signed("shh-withings-secret", "requesttoken,a1b2c3d4e5,7c8f1a2e-nonce-30mim", expected));
        assert!(!signed("other-secret", "requesttoken,a1b2c3d4e5,7c8f1a2e-nonce-30min", expected));
        assert!(!signed("shh-withings-secret", "requesttoken,a1b2c3d4e5,7c8f1a2e-nonce-30min", &expected[..62]));
        assert!(!signed("shh-withings-secret", "x", "zz"));
    }
}

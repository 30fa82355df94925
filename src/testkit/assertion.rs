//! The mock's side of `private_key_jwt` (RFC 7523 §3, OpenID Connect Core §9): the public keys
//! clients register ([`MockProviderBuilder::client_key`]) and the checks a client assertion must
//! pass: its type, a signature by a key registered for its issuer, `iss` = `sub` = the client,
//! `aud` the token endpoint, `exp` not passed, `iat` not in the future, a short life, and a `jti`
//! never seen before (that last one in [`State`](super::grants::State), under the lock).

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header;
use p256::ecdsa::signature::Verifier as _;
use rsa::sha2::Sha256;
use serde_json::Value;
use wiremock::Request;

#[cfg(doc)]
use super::MockProviderBuilder;
use super::Shared;
use super::wire::OAuthError;
use crate::CLIENT_ASSERTION_TYPE;
use crate::jws;

/// How far in the future an assertion's `iat` may be: the client's clock may run a little ahead.
const CLOCK_SKEW_SECS: u64 = 60;
/// The longest `exp - iat` accepted: assertions are meant to be short-lived (RFC 7523 §3 lets the
/// server limit it); a client that signs one for an hour is doing it wrong.
const MAX_LIFETIME_SECS: u64 = 10 * 60;

/// A public key registered for a client.
#[derive(Clone)]
pub(super) struct ClientKey {
    client_id: String,
    kid: Option<String>,
    key: PublicKey,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("client_id", &self.client_id)
            .field("kid", &self.kid)
            .field("alg", &self.key.alg())
            .finish()
    }
}

#[derive(Clone)]
enum PublicKey {
    Es256(p256::ecdsa::VerifyingKey),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
}

impl PublicKey {
    fn alg(&self) -> &'static str {
        match self {
            PublicKey::Es256(_) => "ES256",
            PublicKey::Rs256(_) => "RS256",
        }
    }

    fn verifies(&self, input: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Es256(key) => jws::es256_verifies(key, input, signature),
            PublicKey::Rs256(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|signature| key.verify(input, &signature).is_ok()),
        }
    }
}

impl ClientKey {
    /// A client's public key from its JWK (RFC 7517): an EC P-256 or RSA key.
    pub(super) fn from_jwk(client_id: &str, jwk: &Value) -> Result<Self, String> {
        let member = |name: &str| -> Result<Vec<u8>, String> {
            let text = jwk[name].as_str().ok_or_else(|| format!("the JWK has no {name:?}"))?;
            URL_SAFE_NO_PAD.decode(text).map_err(|e| format!("the JWK's {name:?} is not base64url: {e}"))
        };
        let key = match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
            (Some("EC"), Some("P-256")) => PublicKey::Es256(jws::es256_key_from_jwk(jwk)?),
            (Some("RSA"), _) => {
                let n = rsa::BoxedUint::from_be_slice_vartime(&member("n")?);
                let e = rsa::BoxedUint::from_be_slice_vartime(&member("e")?);
                let key = rsa::PublicKey::new(n, e).map_err(|e| format!("not an RSA public key: {e}"))?;
                PublicKey::Rs256(rsa::pkcs1v15::VerifyingKey::new(key))
            }
            (kty, crv) => return Err(format!("unsupported JWK: kty {kty:?}, crv {crv:?}")),
        };
        let kid = jwk["kid"].as_str().map(str::to_owned);
        Ok(Self { client_id: client_id.to_owned(), kid, key })
    }
}

fn invalid_client(description: impl Into<String>) -> OAuthError {
    // RFC 6749 §5.2 keeps 401 for a client that tried HTTP authentication; this one did not.
    OAuthError::new(400, "invalid_client", description)
}

impl Shared {
    /// Checks the request's client assertion, all but its `jti`'s novelty, which needs the
    /// ledger: `Ok` carries the `jti` to spend.
    pub(super) fn verify_client_assertion(
        &self,
        request: &Request,
        params: &HashMap<String, String>,
    ) -> Result<String, OAuthError> {
        if params.contains_key("client_secret") || request.headers.contains_key(header::AUTHORIZATION) {
            let description = "a client assertion and a client secret: RFC 6749 §2.3 allows one method";
            return Err(OAuthError::invalid_request(description));
        }
        if params.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE) {
            return Err(invalid_client(format!("client_assertion_type must be {CLIENT_ASSERTION_TYPE}")));
        }
        let assertion = params.get("client_assertion").ok_or_else(|| invalid_client("client_assertion is missing"))?;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err(invalid_client("the client assertion is not a signed JWT (three parts)"));
        };
        let json = |part: &str, what: &str| -> Result<Value, OAuthError> {
            let bytes =
                URL_SAFE_NO_PAD.decode(part).map_err(|_| invalid_client(format!("the {what} is not base64url")))?;
            serde_json::from_slice(&bytes).map_err(|_| invalid_client(format!("the {what} is not JSON")))
        };
        let (header_json, claims) = (json(header, "JWT header")?, json(claims, "JWT claims")?);
        let signature =
            URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid_client("the signature is not base64url"))?;

        let alg = header_json["alg"].as_str().unwrap_or_default();
        let kid = header_json["kid"].as_str();
        let issuer = claims["iss"].as_str().ok_or_else(|| invalid_client("the assertion has no iss"))?;
        let candidates: Vec<&ClientKey> = self
            .config
            .client_keys
            .iter()
            .filter(|key| {
                key.client_id == issuer && key.key.alg() == alg && (kid.is_none() || key.kid.as_deref() == kid)
            })
            .collect();
        if candidates.is_empty() {
            return Err(invalid_client(format!("no {alg:?} key with kid {kid:?} is registered for client {issuer:?}")));
        }
        let input = format!("{header}.{}", parts[1]);
        if !candidates.iter().any(|key| key.key.verifies(input.as_bytes(), &signature)) {
            return Err(invalid_client("the client assertion's signature does not verify with the client's key"));
        }

        if claims["sub"].as_str() != Some(issuer) {
            return Err(invalid_client("the assertion's sub must be the client id, as its iss is"));
        }
        if params.get("client_id").is_some_and(|id| id != issuer) {
            return Err(invalid_client("client_id is not the assertion's issuer"));
        }
        let endpoint = format!("{}{}", self.config.issuer, self.config.dialect.token_path());
        let audience_ok = match &claims["aud"] {
            Value::String(aud) => *aud == endpoint,
            Value::Array(auds) => auds.iter().any(|aud| aud.as_str() == Some(endpoint.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(invalid_client(format!("the assertion's aud must be the token endpoint, {endpoint}")));
        }
        let now = self.config.clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
            return Err(invalid_client("the assertion needs a numeric iat and exp"));
        };
        if exp <= now {
            return Err(invalid_client("the client assertion has expired"));
        }
        if iat > now + CLOCK_SKEW_SECS {
            return Err(invalid_client("the client assertion's iat is in the future"));
        }
        if exp.saturating_sub(iat) > MAX_LIFETIME_SECS {
            return Err(invalid_client(format!("a client assertion may live {MAX_LIFETIME_SECS} s at most")));
        }
        match claims["jti"].as_str() {
            Some(jti) if !jti.is_empty() => Ok(jti.to_owned()),
            _ => Err(invalid_client("the client assertion has no jti")),
        }
    }
}

//! Compact JWS (RFC 7515 §7.1) as this crate signs and reads it: the `header.claims.signature`
//! form, ES256 signatures in JWS's fixed-size `r || s` encoding (RFC 7518 §3.4), a P-256 public
//! key as a JWK (RFC 7518 §6.2) and back, and random `jti` values. Written once for the two
//! things that sign JWTs, `private_key_jwt` client assertions and DPoP proofs, and for the mock
//! provider that checks both.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Random bytes in a `jti`: 128 bits, 22 characters once encoded.
const JTI_BYTES: usize = 16;

/// `header.claims.signature`, each base64url without padding; `sign` signs the ASCII of
/// `header.claims` and returns the signature's bytes, or why it could not.
pub(crate) fn compact<E>(
    header: &Value,
    claims: &Value,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<String, E> {
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// An ES256 signature of `input`, as JWS wants it: the fixed-size `r || s`, not DER. Never
/// fails (RFC 6979's deterministic nonce); a `Result` for [`compact`]. (DPoP proofs are signed
/// by ring: `DpopKey::sign`.)
#[cfg(any(test, feature = "private-key-jwt"))]
pub(crate) fn es256_sign(key: &p256::ecdsa::SigningKey, input: &[u8]) -> Result<Vec<u8>, std::convert::Infallible> {
    use p256::ecdsa::signature::Signer as _;
    let signature: p256::ecdsa::Signature = key.sign(input);
    Ok(signature.to_bytes().to_vec())
}

/// The public JWK of a P-256 key: `kty`, `crv`, `x`, `y`, nothing else.
pub(crate) fn es256_public_jwk(key: &p256::ecdsa::VerifyingKey) -> Value {
    let point = key.to_sec1_point(false);
    let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c));
    json!({"kty": "EC", "crv": "P-256", "x": coordinate(point.x()), "y": coordinate(point.y())})
}

/// A P-256 public key from its JWK's `x` and `y`; the error says what is wrong, for a mock's
/// answer or a registration's panic.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn es256_key_from_jwk(jwk: &Value) -> Result<p256::ecdsa::VerifyingKey, String> {
    if jwk["kty"].as_str() != Some("EC") || jwk["crv"].as_str() != Some("P-256") {
        return Err(format!("not a P-256 key: kty {:?}, crv {:?}", jwk["kty"], jwk["crv"]));
    }
    let coordinate = |name: &str| -> Result<Vec<u8>, String> {
        let text = jwk[name].as_str().ok_or_else(|| format!("the JWK has no {name:?}"))?;
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|e| format!("the JWK's {name:?} is not base64url: {e}"))?;
        if bytes.len() != 32 {
            return Err(format!("a P-256 JWK's {name:?} is 32 bytes, not {}", bytes.len()));
        }
        Ok(bytes)
    };
    let mut sec1 = vec![0x04];
    sec1.extend(coordinate("x")?);
    sec1.extend(coordinate("y")?);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|e| format!("x and y are not a point of P-256: {e}"))
}

/// A random `jti`: 128 bits, base64url.
pub(crate) fn random_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; JTI_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A compact JWS taken apart, for the side that checks it (the mock provider's DPoP checks).
#[cfg(any(test, all(feature = "testkit", feature = "dpop")))]
pub(crate) struct Parsed<'a> {
    pub(crate) header: Value,
    pub(crate) claims: Value,
    /// `header.claims` as sent: what the signature is over.
    pub(crate) signing_input: &'a str,
    pub(crate) signature: Vec<u8>,
}

/// Splits and decodes a compact JWS: three base64url parts, the first two JSON objects. The
/// signature is not checked here; the error names the part at fault.
#[cfg(any(test, all(feature = "testkit", feature = "dpop")))]
pub(crate) fn parse(jws: &str) -> Result<Parsed<'_>, &'static str> {
    let mut parts = jws.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS (three parts)");
    };
    let object = |part: &str, what: &'static str| -> Result<Value, &'static str> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| what)?;
        match serde_json::from_slice(&bytes) {
            Ok(value @ Value::Object(_)) => Ok(value),
            _ => Err(what),
        }
    };
    let header_value = object(header, "the JWS header is not a base64url JSON object")?;
    let claims_value = object(claims, "the JWS claims are not a base64url JSON object")?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "the JWS signature is not base64url")?;
    let signing_input = &jws[..header.len() + 1 + claims.len()];
    Ok(Parsed { header: header_value, claims: claims_value, signing_input, signature })
}

/// Whether `signature` (JWS `r || s`) is an ES256 signature of `input` by `key`.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn es256_verifies(key: &p256::ecdsa::VerifyingKey, input: &[u8], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier as _;
    p256::ecdsa::Signature::from_slice(signature).is_ok_and(|signature| key.verify(input, &signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> p256::ecdsa::SigningKey {
        use p256::pkcs8::DecodePrivateKey as _;
        p256::ecdsa::SigningKey::from_pkcs8_pem(include_str!("../tests/keys/es256.pem")).unwrap()
    }

    #[test]
    fn a_compact_es256_jws_verifies_with_the_jwk_it_publishes() {
        let key = key();
        let Ok(jws) = compact(&json!({"alg": "ES256"}), &json!({"n": 1}), |input| es256_sign(&key, input));
        let public = es256_key_from_jwk(&es256_public_jwk(key.verifying_key())).unwrap();
        let parsed = parse(&jws).unwrap();
        assert_eq!(parsed.header, json!({"alg": "ES256"}));
        assert_eq!(parsed.claims, json!({"n": 1}));
        assert_eq!(parsed.signature.len(), 64, "r || s, not DER");
        assert!(es256_verifies(&public, parsed.signing_input.as_bytes(), &parsed.signature));
        assert!(!es256_verifies(&public, b"another input", &parsed.signature));
    }

    #[test]
    fn malformed_jws_and_jwks_are_refused_with_the_reason() {
        assert!(parse("a.b").is_err());
        assert!(parse("a.b.c.d").is_err());
        assert!(parse("!!.e30.AA").is_err());
        assert!(parse("e30.W10.AA").is_err(), "claims must be an object");
        let mut jwk = es256_public_jwk(key().verifying_key());
        jwk["x"] = "AAAA".into();
        assert!(es256_key_from_jwk(&jwk).unwrap_err().contains("32 bytes"));
        assert!(es256_key_from_jwk(&json!({"kty": "RSA"})).is_err());
    }

    #[test]
    fn ids_are_22_characters_and_differ() {
        let (a, b) = (random_id().unwrap(), random_id().unwrap());
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
    }
}

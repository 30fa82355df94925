//! DPoP proofs (RFC 9449 §4.2): the JWT a request carries in its `DPoP` header, signed with the
//! client's [`DpopKey`] for that one request.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use url::Url;

use super::DpopError;
use super::key::{DPOP_ALGORITHM, DpopKey};
use crate::jws;
use crate::token::AccessToken;

/// The `typ` of a DPoP proof's header (RFC 9449 §4.2).
pub(crate) const PROOF_TYPE: &str = "dpop+jwt";

/// What one proof is for: the request's method and URL, and on a request to a resource server
/// the access token it presents.
#[derive(Clone, Copy)]
pub(crate) struct ProofFor<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) url: &'a Url,
    /// Hashed into `ath`; `None` on token requests, which present no access token.
    pub(crate) access_token: Option<&'a AccessToken>,
    /// The server's latest `DPoP-Nonce`, if it gave one.
    pub(crate) nonce: Option<&'a str>,
}

impl DpopKey {
    /// A proof for one request: header `typ` `dpop+jwt`, `alg` `ES256` and the public `jwk`;
    /// claims a random `jti`, `htm`, `htu` (the URL without query and fragment), `iat` (whole
    /// seconds of `now`), and `ath` and `nonce` when there are ones.
    pub(crate) fn proof(&self, request: ProofFor<'_>, now: SystemTime) -> Result<String, DpopError> {
        let header = json!({"typ": PROOF_TYPE, "alg": DPOP_ALGORITHM, "jwk": self.public_jwk()});
        let jti = jws::random_id().map_err(|e| DpopError::Proof(format!("no random bytes for a jti: {e}")))?;
        let iat = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut claims = json!({
            "jti": jti,
            "htm": request.method.as_str(),
            "htu": htu(request.url),
            "iat": iat,
        });
        if let Some(token) = request.access_token {
            claims["ath"] = ath(token.secret()).into();
        }
        if let Some(nonce) = request.nonce {
            claims["nonce"] = nonce.into();
        }
        jws::compact(&header, &claims, |input| self.sign(input))
    }
}

/// The `htu` of a request to `url` (RFC 9449 §4.2): its URI without query and fragment, and
/// without user info, which a request never sends in its target and which could be a
/// credential. The `url` crate has already normalized what RFC 3986 §6.2.2 and §6.2.3 say to
/// (case of scheme and host, a default port, an empty path as `/`), so the server compares like
/// with like.
pub(crate) fn htu(url: &Url) -> String {
    let mut target = url.clone();
    target.set_query(None);
    target.set_fragment(None);
    // Fails only for URLs that cannot have user info (`data:`), which then have none.
    let _ = target.set_username("");
    let _ = target.set_password(None);
    target.into()
}

/// The `ath` of an access token (RFC 9449 §4.2): the base64url SHA-256 of its ASCII.
pub(crate) fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn decode(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn ath_is_rfc_9449s_example() {
        // RFC 9449 §7.1: the access token of its example request, and the `ath` of its proof.
        assert_eq!(ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"), "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
    }

    #[test]
    fn htu_drops_query_fragment_and_user_info_and_normalizes() {
        let cases = [
            ("https://server.example.com/token", "https://server.example.com/token"),
            ("https://server.example.com/token?x=1&y=2", "https://server.example.com/token"),
            ("https://server.example.com/a/b#frag", "https://server.example.com/a/b"),
            ("https://user:pass@server.example.com/token", "https://server.example.com/token"),
            ("HTTPS://Server.EXAMPLE.com:443/Path", "https://server.example.com/Path"),
            ("https://server.example.com", "https://server.example.com/"),
            ("http://127.0.0.1:8080/api/v1/me?page=2", "http://127.0.0.1:8080/api/v1/me"),
            ("https://server.example.com/a/../b/./c", "https://server.example.com/b/c"),
        ];
        for (url, expected) in cases {
            assert_eq!(htu(&Url::parse(url).unwrap()), expected, "{url}");
        }
    }

    #[test]
    fn a_proof_has_rfc_9449s_header_and_claims_and_verifies_with_its_jwk() {
        let key = DpopKey::from_pkcs8_pem(include_str!("../../tests/keys/es256.pem")).unwrap();
        let url = Url::parse("https://resource.example.org/protectedresource?q=1#f").unwrap();
        let token = AccessToken::new("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU");
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_562_262_618_900);
        let request =
            ProofFor { method: &http::Method::GET, url: &url, access_token: Some(&token), nonce: Some("eyJ7S_zG") };
        let proof = key.proof(request, now).unwrap();

        let parsed = jws::parse(&proof).unwrap();
        assert_eq!(parsed.header["typ"], "dpop+jwt");
        assert_eq!(parsed.header["alg"], "ES256");
        assert_eq!(&parsed.header["jwk"], key.public_jwk());
        assert!(parsed.header["jwk"].get("d").is_none(), "the public key only");
        let claims = decode(proof.split('.').nth(1).unwrap());
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://resource.example.org/protectedresource");
        assert_eq!(claims["iat"], 1_562_262_618);
        assert_eq!(claims["ath"], "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
        assert_eq!(claims["nonce"], "eyJ7S_zG");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);

        let public = jws::es256_key_from_jwk(&parsed.header["jwk"]).unwrap();
        assert!(jws::es256_verifies(&public, parsed.signing_input.as_bytes(), &parsed.signature));
        let other = DpopKey::generate().unwrap();
        let other_public = jws::es256_key_from_jwk(other.public_jwk()).unwrap();
        assert!(!jws::es256_verifies(&other_public, parsed.signing_input.as_bytes(), &parsed.signature));
    }

    #[test]
    fn a_token_request_proof_has_no_ath_or_nonce_and_every_proof_its_own_jti() {
        let key = DpopKey::generate().unwrap();
        let url = Url::parse("https://server.example.com/token").unwrap();
        let request = ProofFor { method: &http::Method::POST, url: &url, access_token: None, nonce: None };
        let now = SystemTime::now();
        let (a, b) = (key.proof(request, now).unwrap(), key.proof(request, now).unwrap());
        let (a, b) = (decode(a.split('.').nth(1).unwrap()), decode(b.split('.').nth(1).unwrap()));
        assert!(a.get("ath").is_none() && a.get("nonce").is_none(), "{a}");
        assert_eq!(a["htm"], "POST");
        assert_ne!(a["jti"], b["jti"]);
    }
}

//! A request to a resource server with a DPoP-bound token (RFC 9449 §7): its `Authorization:
//! DPoP <token>` and `DPoP: <proof>` headers, and the server's demand for a nonce (§9), which
//! the request is retried once to meet.
//!
//! How the layer uses these on each API request, with the key of the token set it sends
//! (`TokenSet::dpop_key`) and the layer's one [`DpopNonces`]:
//!
//! 1. `authorization(token)` once per token (`Credential::of`), and `api_proof(key, method, url,
//!    token, nonces, now)` for each request: its `Authorization` and `DPoP` headers.
//! 2. On every answer: `nonces.observe(url, answer.headers())`.
//! 3. If `nonce_demanded(status, headers)` is `Some`, send the request once more with headers
//!    made afresh by step 1 (the nonce is now remembered; a proof is never sent twice); a
//!    second demand goes back to the caller. A retry after a refresh makes its headers afresh
//!    too, with the new token.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use url::Url;

use super::nonce::{DpopNonces, nonce_in};
use super::proof::ProofFor;
use super::{DPOP_SCHEME, DpopError, DpopKey};
use crate::challenge;
use crate::token::{self, AccessToken, HeaderProblem};

/// The `error` of a resource server's (and of a token endpoint's) demand for a nonce.
pub(crate) const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// The `DPoP` request header, which carries the proof.
pub(crate) const DPOP_HEADER: HeaderName = HeaderName::from_static("dpop");

/// `Authorization: DPoP <token>` (§7.1), marked sensitive (HTTP/2 does not index it; `Debug` of
/// a header map hides it). Made once per token, when it is published.
pub(crate) fn authorization(token: &AccessToken) -> Result<HeaderValue, HeaderProblem> {
    token::check_header_safe(token.secret())?;
    let mut value = HeaderValue::try_from(format!("{DPOP_SCHEME} {}", token.secret()))
        .map_err(|_| HeaderProblem::IllegalByte { position: 0 })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The `DPoP` header of one request by `method` to `url` with `token`, signed by `key`: a fresh
/// proof with `ath` and the nonce `url`'s origin last sent, if any. Marked sensitive: a proof is
/// good for its request alone, but for a minute or so it is one.
pub(crate) fn api_proof(
    key: &DpopKey,
    method: &http::Method,
    url: &Url,
    token: &AccessToken,
    nonces: &DpopNonces,
    now: SystemTime,
) -> Result<HeaderValue, DpopError> {
    let nonce = nonces.get(url);
    let request = ProofFor { method, url, access_token: Some(token), nonce: nonce.as_deref() };
    let proof = key.proof(request, now)?;
    // A proof is base64url parts joined by dots: visible ASCII.
    let mut value =
        HeaderValue::try_from(proof).map_err(|_| DpopError::Proof("the proof is not a header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The nonce a resource server demands (RFC 9449 §9): a 401 with a `DPoP` challenge whose
/// `error` is `use_dpop_nonce`, and a usable `DPoP-Nonce`. `None` for any other answer, and for
/// a demand without a nonce to meet it (retrying would only get the same answer).
pub(crate) fn nonce_demanded(status: StatusCode, headers: &HeaderMap) -> Option<String> {
    if status != StatusCode::UNAUTHORIZED {
        return None;
    }
    let demanded = challenge::challenge_errors(headers, "dpop").iter().any(|error| error == USE_DPOP_NONCE);
    if demanded { nonce_in(headers) } else { None }
}

#[cfg(test)]
mod tests {
    use http::header::WWW_AUTHENTICATE;

    use super::*;
    use crate::jws;

    fn answer(challenge: Option<&str>, nonce: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(challenge) = challenge {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(challenge).unwrap());
        }
        if let Some(nonce) = nonce {
            headers.insert(super::super::nonce::DPOP_NONCE, HeaderValue::from_str(nonce).unwrap());
        }
        headers
    }

    #[test]
    fn api_headers_carry_the_token_by_the_dpop_scheme_and_a_proof_with_ath_and_the_nonce() {
        let key = DpopKey::generate().unwrap();
        let nonces = DpopNonces::default();
        let url = Url::parse("https://api.example/v1/me?page=2").unwrap();
        nonces.observe(&url, &answer(None, Some("n-7")));
        let token = AccessToken::new("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU");
        let authorization = authorization(&token).unwrap();
        let proof = api_proof(&key, &http::Method::DELETE, &url, &token, &nonces, SystemTime::now()).unwrap();
        assert_eq!(authorization, "DPoP Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU");
        assert!(authorization.is_sensitive() && proof.is_sensitive());
        let parsed = jws::parse(proof.to_str().unwrap()).unwrap();
        assert_eq!(parsed.claims["htm"], "DELETE");
        assert_eq!(parsed.claims["htu"], "https://api.example/v1/me");
        assert_eq!(parsed.claims["ath"], "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
        assert_eq!(parsed.claims["nonce"], "n-7");
        assert!(!format!("{authorization:?} {proof:?}").contains("Kz~8"), "sensitive values are not shown");
        let again = api_proof(&key, &http::Method::DELETE, &url, &token, &nonces, SystemTime::now()).unwrap();
        let again = jws::parse(again.to_str().unwrap()).unwrap();
        assert_ne!(again.claims["jti"], parsed.claims["jti"], "a proof is made for one request");
        assert_eq!(DPOP_HEADER, "dpop");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused() {
        assert_eq!(authorization(&AccessToken::new("a b")).unwrap_err(), HeaderProblem::IllegalByte { position: 1 });
    }

    #[test]
    fn a_nonce_is_demanded_by_a_401_dpop_challenge_with_use_dpop_nonce_and_a_nonce() {
        let unauthorized = StatusCode::UNAUTHORIZED;
        let demand = r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#;
        assert_eq!(nonce_demanded(unauthorized, &answer(Some(demand), Some("eyJ7S_zG"))), Some("eyJ7S_zG".into()));
        // Among other challenges, in any case of the scheme.
        let mixed = r#"Bearer realm="x", dpop algs="ES256", error="use_dpop_nonce""#;
        assert_eq!(nonce_demanded(unauthorized, &answer(Some(mixed), Some("n"))), Some("n".into()));
        assert_eq!(nonce_demanded(unauthorized, &answer(Some(demand), None)), None, "nothing to meet it with");
        assert_eq!(nonce_demanded(StatusCode::BAD_REQUEST, &answer(Some(demand), Some("n"))), None);
        let other = r#"DPoP error="invalid_token""#;
        assert_eq!(nonce_demanded(unauthorized, &answer(Some(other), Some("n"))), None);
        let bearer = r#"Bearer error="use_dpop_nonce""#;
        assert_eq!(nonce_demanded(unauthorized, &answer(Some(bearer), Some("n"))), None, "not a DPoP challenge");
    }
}

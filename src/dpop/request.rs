//! A request to a resource server with a DPoP-bound token (RFC 9449 §7): its `Authorization:
//! DPoP <token>` and `DPoP: <proof>` headers, and the server's demand for a nonce (§9), which
//! the request is retried once to meet.
//!
//! How the layer uses these on each API request, with the key of the token set it sends
//! (`TokenSet::dpop_key`) and the layer's one [`DpopNonces`]:
//!
//! 1. `api_request_headers(key, method, url, token, nonces, now)`: set both headers.
//! 2. On every answer: `nonces.observe(url, answer.headers())`.
//! 3. If `nonce_demanded(status, headers)` is `Some`, send the request once more with headers
//!    made afresh by step 1 (the nonce is now remembered; a proof is never sent twice); a
//!    second demand goes back to the caller. A retry after a refresh makes its headers afresh
//!    too, with the new token.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, StatusCode};
use url::Url;

use super::nonce::{DpopNonces, nonce_in};
use super::proof::ProofFor;
use super::{DPOP_SCHEME, DpopError, DpopKey};
use crate::challenge;
use crate::token::{self, AccessToken, HeaderProblem};

/// The `error` of a resource server's (and of a token endpoint's) demand for a nonce.
pub(crate) const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// The two headers a request with a DPoP-bound token carries, both marked sensitive (HTTP/2
/// does not index them; `Debug` of a header map hides them).
#[derive(Debug)]
pub(crate) struct DpopHeaders {
    /// `Authorization: DPoP <token>`.
    pub(crate) authorization: HeaderValue,
    /// `DPoP: <proof>`.
    pub(crate) proof: HeaderValue,
}

/// Why the headers could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadersProblem {
    /// The access token cannot go in a header.
    Token(HeaderProblem),
    /// No proof could be made.
    Proof(DpopError),
}

/// The headers of one request to `url` with `token`, bound to `key`: a fresh proof with `ath`
/// and the nonce `url`'s origin last sent, if any.
pub(crate) fn api_request_headers(
    key: &DpopKey,
    method: &http::Method,
    url: &Url,
    token: &AccessToken,
    nonces: &DpopNonces,
    now: SystemTime,
) -> Result<DpopHeaders, HeadersProblem> {
    token::check_header_safe(token.secret()).map_err(HeadersProblem::Token)?;
    let nonce = nonces.get(url);
    let request = ProofFor { method, url, access_token: Some(token), nonce: nonce.as_deref() };
    let proof = key.proof(request, now).map_err(HeadersProblem::Proof)?;
    let sensitive = |text: String| {
        // Both are visible ASCII: a checked token, and base64url with dots.
        let mut value = HeaderValue::try_from(text)
            .map_err(|_| HeadersProblem::Token(HeaderProblem::IllegalByte { position: 0 }))?;
        value.set_sensitive(true);
        Ok(value)
    };
    Ok(DpopHeaders { authorization: sensitive(format!("{DPOP_SCHEME} {}", token.secret()))?, proof: sensitive(proof)? })
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
        let headers =
            api_request_headers(&key, &http::Method::DELETE, &url, &token, &nonces, SystemTime::now()).unwrap();
        assert_eq!(headers.authorization, "DPoP Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU");
        assert!(headers.authorization.is_sensitive() && headers.proof.is_sensitive());
        let proof = jws::parse(headers.proof.to_str().unwrap()).unwrap();
        assert_eq!(proof.claims["htm"], "DELETE");
        assert_eq!(proof.claims["htu"], "https://api.example/v1/me");
        assert_eq!(proof.claims["ath"], "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
        assert_eq!(proof.claims["nonce"], "n-7");
        assert!(!format!("{headers:?}").contains("Kz~8"), "sensitive values are not shown");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_before_any_proof() {
        let key = DpopKey::generate().unwrap();
        let url = Url::parse("https://api.example/").unwrap();
        let problem = api_request_headers(
            &key,
            &http::Method::GET,
            &url,
            &AccessToken::new("a b"),
            &DpopNonces::default(),
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(problem, HeadersProblem::Token(HeaderProblem::IllegalByte { position: 1 }));
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

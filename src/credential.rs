//! What a request carries to use a key's token: its `Authorization` header, made once when the
//! token is published rather than on every request, and for a DPoP-bound token (feature `dpop`)
//! the token set whose key signs a proof for each request (RFC 9449 §7).
//!
//! A bearer credential is the header alone, so the requests of a bearer client pay nothing for
//! DPoP: the proof is asked for per request ([`TokenRefresh::proof`](crate::TokenRefresh)) and is
//! `None` without a bound set.

use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

use crate::error::Error;
use crate::key::TokenKey;
use crate::token::{self, TokenSet};

/// How one published token is sent. Cheap to clone: a shared header, and for DPoP a shared set.
#[derive(Clone)]
pub(crate) struct Credential {
    authorization: HeaderValue,
    /// The DPoP-bound set whose key proves each request, and whose access token each proof's
    /// `ath` hashes; `None` for a bearer token.
    #[cfg(feature = "dpop")]
    pub(crate) bound: Option<std::sync::Arc<TokenSet>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The header is marked sensitive, so its `Debug` hides the token.
        f.debug_struct("Credential").field("scheme", &self.scheme()).finish_non_exhaustive()
    }
}

/// Why a token set cannot be sent. Its text never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsendable {
    /// The access token cannot be a header value: the token endpoint's answer was garbled.
    #[error("{0}")]
    Header(String),
    /// The set is DPoP-bound and its key was lost: only a refresh can say so for good (it fails
    /// terminally with [`DpopError::KeyLost`](crate::DpopError::KeyLost)), so until then the
    /// token is only expired.
    #[cfg(feature = "dpop")]
    #[error("{}", crate::dpop::DpopError::KeyLost)]
    KeyLost,
}

impl Unsendable {
    /// What a request for `key` that got such a set fails with.
    pub(crate) fn into_error(self, key: TokenKey) -> Error {
        match self {
            Unsendable::Header(problem) => Error::InvalidAccessToken { key, problem },
            #[cfg(feature = "dpop")]
            Unsendable::KeyLost => Error::ReauthorizationRequired {
                key,
                reason: crate::RefreshError::Dpop(crate::dpop::DpopError::KeyLost),
            },
        }
    }
}

impl Credential {
    /// How `tokens` are sent: `Authorization: Bearer <token>`, or for a DPoP-bound set with its
    /// key `Authorization: DPoP <token>` with a proof on each request.
    #[cfg(feature = "dpop")]
    pub(crate) fn of(tokens: &std::sync::Arc<TokenSet>) -> Result<Self, Unsendable> {
        if !tokens.is_dpop_bound() {
            return Self::bearer(tokens);
        }
        if tokens.dpop_key().is_none() {
            return Err(Unsendable::KeyLost);
        }
        let authorization = crate::dpop::authorization(tokens.access_token())
            .map_err(|problem| Unsendable::Header(problem.to_string()))?;
        Ok(Self { authorization, bound: Some(tokens.clone()) })
    }

    /// How `tokens` are sent: `Authorization: Bearer <token>`.
    #[cfg(not(feature = "dpop"))]
    pub(crate) fn of(tokens: &std::sync::Arc<TokenSet>) -> Result<Self, Unsendable> {
        Self::bearer(tokens)
    }

    fn bearer(tokens: &TokenSet) -> Result<Self, Unsendable> {
        let authorization =
            token::bearer_header(tokens.access_token()).map_err(|problem| Unsendable::Header(problem.to_string()))?;
        Ok(Self {
            authorization,
            #[cfg(feature = "dpop")]
            bound: None,
        })
    }

    /// The `WWW-Authenticate` scheme (lowercase) whose challenges speak of this token: `bearer`,
    /// or `dpop` for a DPoP-bound one (RFC 9449 §7.1).
    pub(crate) fn scheme(&self) -> &'static str {
        #[cfg(feature = "dpop")]
        if self.bound.is_some() {
            return "dpop";
        }
        "bearer"
    }

    /// Whether each request with this token carries a proof (a DPoP-bound token).
    #[cfg(any(test, feature = "tower"))]
    pub(crate) fn proves(&self) -> bool {
        #[cfg(feature = "dpop")]
        return self.bound.is_some();
        #[cfg(not(feature = "dpop"))]
        false
    }

    /// What a request sent with this credential keeps of it.
    pub(crate) fn sent_with(&self) -> SentWith {
        SentWith {
            #[cfg(feature = "dpop")]
            bound: self.bound.clone(),
        }
    }

    /// Puts the credential on a request's `headers`: its `Authorization`, and the request's
    /// `proof` when it has one. Returns what the request keeps of it; the header itself moves
    /// into the request, which is what every request costs.
    ///
    /// A request reaches the layer without an `Authorization` of its own (it would have passed
    /// through), so appending is enough, and skips the replacing an insert does.
    #[inline]
    pub(crate) fn attach(self, headers: &mut HeaderMap, proof: Option<HeaderValue>) -> SentWith {
        headers.append(AUTHORIZATION, self.authorization);
        #[cfg(feature = "dpop")]
        if let Some(proof) = proof {
            headers.insert(crate::dpop::DPOP_HEADER, proof);
        }
        #[cfg(not(feature = "dpop"))]
        let _ = proof;
        SentWith {
            #[cfg(feature = "dpop")]
            bound: self.bound,
        }
    }
}

/// What a request sent with a [`Credential`] keeps of it, for reading its answer: the scheme its
/// server's challenges use, and for a DPoP-bound token its set, to send the request once more
/// with the same token (a nonce retry). Nothing for a bearer token.
#[derive(Clone, Default)]
pub(crate) struct SentWith {
    #[cfg(feature = "dpop")]
    bound: Option<std::sync::Arc<TokenSet>>,
}

impl SentWith {
    /// See [`Credential::scheme`].
    pub(crate) fn scheme(&self) -> &'static str {
        if self.proves() { "dpop" } else { "bearer" }
    }

    /// See [`Credential::proves`].
    pub(crate) fn proves(&self) -> bool {
        #[cfg(feature = "dpop")]
        return self.bound.is_some();
        #[cfg(not(feature = "dpop"))]
        false
    }

    /// The credential to send the request again with the same token: a DPoP-bound token's, made
    /// again from its set; `None` for a bearer token, which is never sent again unchanged.
    pub(crate) fn again(&self) -> Option<Credential> {
        #[cfg(feature = "dpop")]
        return self.bound.as_ref().and_then(|bound| Credential::of(bound).ok());
        #[cfg(not(feature = "dpop"))]
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_bearer_token_is_sent_by_the_bearer_scheme_without_a_proof() {
        let credential = Credential::of(&Arc::new(TokenSet::new("t-1"))).unwrap();
        assert_eq!(credential.scheme(), "bearer");
        assert!(!credential.proves());
        assert_eq!(format!("{credential:?}"), r#"Credential { scheme: "bearer", .. }"#, "the token is not shown");
        let mut headers = HeaderMap::new();
        let sent = credential.attach(&mut headers, None);
        assert_eq!(headers[AUTHORIZATION], "Bearer t-1");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert_eq!(headers.len(), 1);
        assert_eq!(sent.scheme(), "bearer");
        assert!(sent.again().is_none(), "a bearer token is never sent again unchanged");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_cannot_be_sent() {
        let problem = Credential::of(&Arc::new(TokenSet::new("sekrit tok3n"))).unwrap_err().to_string();
        assert!(problem.contains("position 6") || problem.contains("byte 6"), "{problem}");
        assert!(!problem.contains("sekrit"), "{problem}");
    }

    #[cfg(feature = "dpop")]
    #[test]
    fn a_bound_set_with_its_key_is_sent_by_the_dpop_scheme_with_the_proof_given() {
        let key = crate::DpopKey::generate().unwrap();
        let tokens = Arc::new(TokenSet::new("t-2").with_token_type("DPoP").with_dpop_key(key));
        let credential = Credential::of(&tokens).unwrap();
        assert_eq!(credential.scheme(), "dpop");
        assert!(credential.proves());
        let mut headers = HeaderMap::new();
        let sent = credential.attach(&mut headers, Some(HeaderValue::from_static("proof")));
        assert_eq!(headers[AUTHORIZATION], "DPoP t-2");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert_eq!(headers[crate::dpop::DPOP_HEADER], "proof");
        assert_eq!(sent.scheme(), "dpop");
        let again = sent.again().expect("the same token, again");
        let mut headers = HeaderMap::new();
        again.attach(&mut headers, None);
        assert_eq!(headers[AUTHORIZATION], "DPoP t-2");
    }

    #[cfg(feature = "dpop")]
    #[test]
    fn a_bound_set_whose_key_was_lost_cannot_be_sent() {
        let tokens = Arc::new(TokenSet::new("t-3").with_token_type("DPoP"));
        let problem = Credential::of(&tokens).unwrap_err();
        assert_eq!(problem, Unsendable::KeyLost);
        assert_eq!(problem.to_string(), crate::dpop::DpopError::KeyLost.to_string());
    }
}

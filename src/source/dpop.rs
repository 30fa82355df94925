//! DPoP on token requests (RFC 9449 §5): which key a token request proves possession of, its
//! proof, the token endpoint's demand for a nonce (§8), and the check that what came back is
//! bound. The grants' builder methods for it are here too ([`dpop_options`]).
//!
//! A grant with DPoP on either holds one key for everything ([`DpopKeyChoice::Given`]) or makes
//! a fresh one for each new grant of tokens ([`DpopKeyChoice::Generated`]: each login's code
//! exchange, each client-credentials grant). Either way a refresh proves the key saved with the
//! token set it refreshes, since a bound refresh token works with no other; a bound set with no
//! key saved is [`DpopError::KeyLost`], before anything is sent.

use std::fmt;

use url::Url;

use crate::dpop::{DpopError, DpopKey, DpopNonces, ProofFor};
use crate::error::RefreshError;
use crate::token::TokenSet;

/// The OAuth error of a token endpoint that wants a nonce in the proof (RFC 9449 §8).
const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// Which key a grant's token requests prove.
#[derive(Debug, Clone)]
pub(crate) enum DpopKeyChoice {
    /// The user's key, for every grant of tokens.
    Given(DpopKey),
    /// A fresh key for each new grant of tokens.
    Generated,
}

/// A grant's DPoP setting: its key choice, and the nonces its token endpoint (and the layer's
/// API requests: the grant's [`ResourceServer`](crate::ResourceServer) hands the same memory to
/// the layer) were sent.
#[derive(Clone)]
pub(crate) struct DpopBinding {
    pub(crate) key: DpopKeyChoice,
    pub(crate) nonces: DpopNonces,
}

impl fmt::Debug for DpopBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopBinding").field("key", &self.key).field("nonces", &self.nonces).finish()
    }
}

impl DpopBinding {
    pub(crate) fn new(key: DpopKeyChoice) -> Self {
        Self { key, nonces: DpopNonces::default() }
    }

    /// The key a token request proves: the one saved with `current` (a bound refresh token
    /// works with no other), else the grant's own, else a fresh one, unless the request spends
    /// the refresh token of a bound set whose key was not saved.
    pub(crate) fn key_for(
        &self,
        current: Option<&TokenSet>,
        spends_refresh_token: bool,
    ) -> Result<DpopKey, RefreshError> {
        if let Some(key) = current.and_then(TokenSet::dpop_key) {
            return Ok(key.clone());
        }
        match &self.key {
            DpopKeyChoice::Given(key) => Ok(key.clone()),
            DpopKeyChoice::Generated if spends_refresh_token && current.is_some_and(TokenSet::is_dpop_bound) => {
                Err(RefreshError::Dpop(DpopError::KeyLost))
            }
            DpopKeyChoice::Generated => DpopKey::generate()
                .map_err(|e| RefreshError::Dpop(DpopError::Proof(format!("no key could be generated: {e}")))),
        }
    }

    /// A fresh proof for a `POST` to the token endpoint at `url`, with the nonce it last sent.
    /// Returns the nonce used too, to tell a new one from it.
    pub(crate) fn token_request_proof(
        &self,
        key: &DpopKey,
        url: &Url,
        now: std::time::SystemTime,
    ) -> Result<(String, Option<String>), RefreshError> {
        let nonce = self.nonces.get(url);
        let request = ProofFor { method: &http::Method::POST, url, access_token: None, nonce: nonce.as_deref() };
        let proof = key.proof(request, now).map_err(RefreshError::Dpop)?;
        Ok((proof, nonce))
    }

    /// Whether `answer` is the token endpoint demanding a nonce it has now given (another than
    /// `used`): worth one retry with a fresh proof.
    pub(crate) fn nonce_demanded(
        &self,
        answer: &Result<TokenSet, RefreshError>,
        url: &Url,
        used: Option<&str>,
    ) -> bool {
        let demanded = matches!(answer, Err(err) if err.oauth_error().is_some_and(|e| e.error == USE_DPOP_NONCE));
        demanded && self.nonces.get(url).is_some_and(|nonce| Some(nonce.as_str()) != used)
    }
}

/// The tokens of a DPoP token request, bound to `key`; an error if the server did not bind them
/// (`token_type` other than `DPoP`, RFC 9449 §5).
pub(crate) fn bound(tokens: TokenSet, key: DpopKey) -> Result<TokenSet, RefreshError> {
    if !tokens.is_dpop_bound() {
        let token_type = tokens.token_type().map(str::to_owned);
        return Err(RefreshError::Dpop(DpopError::NotBound { token_type }));
    }
    Ok(tokens.with_dpop_key(key))
}

/// Builder methods of every grant that holds a [`TokenEndpoint`](super::endpoint::TokenEndpoint)
/// in `self.endpoint` and a [`ResourceServer`](crate::ResourceServer) in `self.resource_server`.
macro_rules! dpop_options {
    () => {
        /// Turns DPoP on (RFC 9449; feature `dpop`) with this key: every token request carries
        /// a `DPoP` proof signed with it, and the tokens come back bound to it (`token_type`
        /// `DPoP`; anything else is [`DpopError::NotBound`](crate::DpopError::NotBound)). The
        /// key is saved with the token set, and a refresh proves the key saved with the set it
        /// refreshes. A token endpoint's `use_dpop_nonce` is met with one retry, with its nonce;
        /// the nonces each origin sends are remembered, for the layer's API requests too.
        #[cfg(feature = "dpop")]
        #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn dpop(self, key: $crate::DpopKey) -> Self {
            self.with_dpop($crate::source::dpop::DpopKeyChoice::Given(key))
        }

        /// Turns DPoP on like [`dpop`](Self::dpop), with a fresh key for each new grant of
        /// tokens (a login's code exchange, a client-credentials grant), saved with the tokens
        /// it is for. A refresh proves the key saved with the set it refreshes: a DPoP-bound
        /// set whose key was not saved is [`DpopError::KeyLost`](crate::DpopError::KeyLost),
        /// terminal, since its refresh token works with no other key.
        #[cfg(feature = "dpop")]
        #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn dpop_generated(self) -> Self {
            self.with_dpop($crate::source::dpop::DpopKeyChoice::Generated)
        }

        #[cfg(feature = "dpop")]
        fn with_dpop(mut self, key: $crate::source::dpop::DpopKeyChoice) -> Self {
            let binding = $crate::source::dpop::DpopBinding::new(key);
            self.resource_server = self.resource_server.with_dpop_nonces(binding.nonces.clone());
            self.endpoint.dpop = Some(binding);
            self
        }
    };
}
pub(crate) use dpop_options;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_proves_the_saved_key_and_a_bound_set_without_one_has_lost_it() {
        let saved = DpopKey::generate().unwrap();
        let given = DpopKey::generate().unwrap();
        let bound = TokenSet::new("a").with_refresh_token("r").with_token_type("DPoP");
        let with_key = bound.clone().with_dpop_key(saved.clone());

        let generated = DpopBinding::new(DpopKeyChoice::Generated);
        assert_eq!(generated.key_for(Some(&with_key), true).unwrap(), saved);
        let lost = generated.key_for(Some(&bound), true).unwrap_err();
        assert!(matches!(lost, RefreshError::Dpop(DpopError::KeyLost)), "{lost:?}");
        // A grant that spends no refresh token (client credentials) just gets a new key.
        assert!(generated.key_for(Some(&bound), false).is_ok());
        // A new grant of tokens gets a fresh key each time.
        assert_ne!(generated.key_for(None, false).unwrap(), generated.key_for(None, false).unwrap());
        // A bearer set being moved to DPoP has no key to lose.
        assert!(generated.key_for(Some(&TokenSet::new("a").with_refresh_token("r")), true).is_ok());

        let user = DpopBinding::new(DpopKeyChoice::Given(given.clone()));
        assert_eq!(user.key_for(Some(&with_key), true).unwrap(), saved, "the saved key wins");
        assert_eq!(user.key_for(Some(&bound), true).unwrap(), given, "the user's key is never lost");
        assert_eq!(user.key_for(None, false).unwrap(), given);
    }

    #[test]
    fn only_a_dpop_token_type_is_bound() {
        let key = DpopKey::generate().unwrap();
        let tokens = bound(TokenSet::new("a").with_token_type("DPoP"), key.clone()).unwrap();
        assert_eq!(tokens.dpop_key(), Some(&key));
        let unbound = bound(TokenSet::new("a").with_token_type("Bearer"), key.clone()).unwrap_err();
        assert!(
            matches!(unbound, RefreshError::Dpop(DpopError::NotBound { token_type: Some(ref t) }) if t == "Bearer")
        );
        assert!(matches!(
            bound(TokenSet::new("a"), key),
            Err(RefreshError::Dpop(DpopError::NotBound { token_type: None }))
        ));
    }
}

//! DPoP (RFC 9449; feature `dpop`): sender-constrained tokens. The client holds a key
//! ([`DpopKey`]) and sends, with each token request and each API request, a proof that it holds
//! it: a JWT signed for that request alone (its method and URL, a time, a unique id, and on API
//! requests a hash of the access token). The server binds the tokens it issues to the key's
//! thumbprint, so a stolen token is worthless without the key.
//!
//! This module owns the key and its thumbprint (`key.rs`), the proofs (`proof.rs`), the
//! server-provided nonces remembered per origin (`nonce.rs`), and what a request to a resource
//! server needs: its two headers and the reading of a nonce challenge (`request.rs`). The token
//! requests' side is in [`source::endpoint`](crate::source), which calls these.

mod key;
mod nonce;
mod proof;
// The API requests' side, which the exchange calls (see `request.rs` for how).
mod request;

#[cfg(feature = "testkit")]
pub(crate) use key::ec_thumbprint;
pub use key::{DpopKey, DpopKeyError};
#[cfg(feature = "testkit")]
pub(crate) use nonce::DPOP_NONCE;
pub(crate) use nonce::DpopNonces;
pub(crate) use proof::ProofFor;
#[cfg(feature = "testkit")]
pub(crate) use proof::{PROOF_TYPE, ath, htu};
pub(crate) use request::{DPOP_HEADER, api_proof, authorization, nonce_demanded};

/// The `token_type` of a DPoP-bound access token (RFC 9449 §5), and the `Authorization` scheme
/// it is sent with (§7.1).
pub(crate) const DPOP_SCHEME: &str = "DPoP";

/// Why DPoP could not be done. Part of [`RefreshError`](crate::RefreshError) as
/// [`RefreshError::Dpop`](crate::RefreshError::Dpop).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// The tokens are DPoP-bound (their `token_type` is `DPoP`) but no [`DpopKey`] was saved with
    /// them: a store written without the key, or tokens installed without
    /// [`TokenSet::with_dpop_key`](crate::TokenSet::with_dpop_key). A bound refresh token is
    /// worthless without its key, so the user must authorize again: terminal.
    #[error(
        "the tokens are bound to a DPoP key that was not saved with them (the key is lost): their refresh token cannot be used without it, so the user must authorize again"
    )]
    KeyLost,
    /// The token endpoint was sent a DPoP proof but issued a token that is not DPoP-bound
    /// (`token_type` other than `DPoP`): the server does not do DPoP for this client, and sending
    /// that token as a bearer token would give up what DPoP was asked for. The client's
    /// configuration or the server's is wrong: terminal, the client's fault.
    #[error("a DPoP-bound token was asked for, but the token endpoint issued token_type {}", .token_type.as_deref().map_or("(none)".to_owned(), |t| format!("{t:?}")))]
    NotBound {
        /// The `token_type` the server sent, if any.
        token_type: Option<String>,
    },
    /// No proof could be made (the system's random number generator failed).
    #[error("no DPoP proof could be made: {0}")]
    Proof(String),
}

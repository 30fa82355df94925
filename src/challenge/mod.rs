//! Reading a 401: is the bearer token we sent dead, or is something else wrong?
//!
//! A 401 is only worth a token refresh when the token itself was the problem. Refreshing for any
//! other reason costs a round trip to the token endpoint, and if the request keeps failing, it
//! turns one bad request into a refresh loop. [`classify_unauthorized`] reads the
//! `WWW-Authenticate` challenges and the start of the body and answers with a [`Rejection`]:
//!
//! - **[`Rejection::InvalidToken`]**: RFC 6750 §3 has a resource server that turns down a bearer
//!   token send a `Bearer` challenge, and §3.1 defines `error="invalid_token"` as "expired,
//!   revoked, malformed, or invalid for other reasons", adding that the client MAY ask for a new
//!   token and retry. That is exactly the case a refresh fixes.
//! - **[`Rejection::OtherError`]**: the other RFC 6750 codes (`invalid_request`,
//!   `insufficient_scope`) and anything vendor-specific describe a request that a new token of
//!   the same grant would not fix (a token with the same scope is still short of scope), so the
//!   response is passed through.
//! - **[`Rejection::NoDetail`]**: RFC 6750 §3.1 says a server SHOULD NOT include an error code
//!   when the request carried no authentication at all, and plenty of servers, gateways and
//!   proxies answer an expired token with a bare `401` or a bare `Bearer realm="…"` challenge
//!   too. We did send a token, so the likeliest reading is that it was not accepted. But the
//!   server did not say so, which is why this is a separate answer: the caller decides, and
//!   the default is to refresh.
//! - **[`Rejection::OtherScheme`]**: if every challenge is for some other scheme (`Basic`,
//!   `Negotiate`, `DPoP` from RFC 9449, …), the server is not asking for a bearer token at all, and
//!   a fresh one would be turned down the same way. `DPoP` errors in particular
//!   (`invalid_dpop_proof`, `use_dpop_nonce`) need a new proof, not a new token.
//!
//! The header comes first because it is where RFC 6750 puts the error. Many APIs, Kroger's among
//! them, send no challenge and put an RFC 6749 §5.2-style JSON error in the body instead
//! (`{"error":"invalid_token", ...}`), so the body decides when the header does not.
//!
//! The header's grammar is read in [`www_authenticate`], the JSON error body in [`body`].

mod body;
#[cfg(test)]
mod tests;
mod www_authenticate;

use std::time::Duration;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, StatusCode};

/// How much of a 401's body is read to classify it: 4 KiB (4,096 bytes). Also how much of another
/// answer a [`token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when) rule sees.
pub const CLASSIFY_BODY_LIMIT: usize = 4 * 1024;

/// How long the layer waits for the start of a body it reads to classify an answer (up to
/// [`CLASSIFY_BODY_LIMIT`]), unless set otherwise with
/// [`classify_timeout`](crate::TokenRefreshBuilder::classify_timeout): 2 seconds in all.
///
/// A server that sends a 401's headers and then stalls its body must not hang the request. When
/// the time runs out the answer is classified from its headers and the bytes that did arrive,
/// and handed on at once: the caller reads those bytes, then the rest of the body as the server
/// sends it. A stalled body that names no error counts as a 401 with no error detail (what
/// [`RefreshOn`] decides for those): the layer cannot know what the rest would have said, and a
/// dead token behind a slow proxy must still be refreshed.
pub const CLASSIFY_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// Which 401 answers make the layer refresh the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RefreshOn {
    /// Only a 401 that says the token is invalid: `WWW-Authenticate: Bearer error="invalid_token"`
    /// (RFC 6750 §3.1) or a JSON body `{"error":"invalid_token"}`.
    InvalidToken,
    /// Those, and a 401 with no error detail at all (WHOOP answers an expired token with a bare
    /// 401). The default.
    #[default]
    InvalidTokenOrNoDetail,
}

impl RefreshOn {
    pub(crate) fn accepts(self, rejection: &Rejection) -> bool {
        match rejection {
            Rejection::InvalidToken => true,
            Rejection::NoDetail => self == RefreshOn::InvalidTokenOrNoDetail,
            Rejection::OtherError(_) | Rejection::OtherScheme => false,
        }
    }
}

/// Whether a gRPC answer says the call was not authenticated: `grpc-status: 16`
/// (`UNAUTHENTICATED`) in its headers, which is where a trailers-only answer (a call refused
/// before any message) carries its status. A rule for
/// [`token_rejected_by_headers`](crate::TokenRefreshBuilder::token_rejected_by_headers).
///
/// An answer that streamed messages carries its status in trailers, after the body: the call was
/// accepted, so it says nothing about the token.
pub fn grpc_unauthenticated(_status: StatusCode, headers: &HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|status| status.as_bytes().trim_ascii() == b"16")
}

use body::body_error;
pub(crate) use www_authenticate::parse_challenges;
// Read by the fuzz checks and the property tests only.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use www_authenticate::Challenge;

/// What a 401 says about the bearer token that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// RFC 6750 `error="invalid_token"` in a Bearer challenge, or `{"error":"invalid_token"}` in a
    /// JSON body.
    InvalidToken,
    /// No error detail anywhere: no challenge at all, or a bare `Bearer` / `Bearer realm="x"`
    /// challenge without an `error` param, and a body that names no error.
    NoDetail,
    /// The server named another error (e.g. `invalid_request`, `insufficient_scope`); holds the
    /// code as sent.
    OtherError(String),
    /// Only challenges of other schemes (e.g. `Basic realm="x"`, `DPoP ...`) were sent: the
    /// server is not asking for a bearer token, a refresh cannot help.
    OtherScheme,
}

/// Classifies a 401 from its `WWW-Authenticate` headers and the first bytes of its body (the
/// caller caps the body, at a few KiB, and may pass a truncated prefix). `scheme` (lowercase) is
/// the one the token was sent by: `bearer`, or `dpop` for a DPoP-bound token, whose server says
/// `DPoP error="invalid_token"` (RFC 9449 §7.1) where a bearer server says `Bearer ...`; what
/// is written of `Bearer` below holds for it then.
///
/// See the [module documentation](self) for the reasoning behind each answer. In order:
/// 1. A `Bearer` challenge with an `error` param decides: `invalid_token` (any case) gives
///    [`Rejection::InvalidToken`], any other code gives [`Rejection::OtherError`]. If several
///    `Bearer` challenges disagree, `invalid_token` wins, because a refresh is cheap next to
///    giving up on a request that a refresh would have saved.
/// 2. Otherwise, a JSON object body whose `error` member is a string, or an object with a
///    string `code`, decides in the same way.
/// 3. Otherwise the answer is [`Rejection::OtherScheme`] if challenges were sent and none was
///    `Bearer`, or else [`Rejection::NoDetail`].
pub(crate) fn classify_unauthorized(headers: &HeaderMap, body: &[u8], scheme: &str) -> Rejection {
    let mut saw_challenge = false;
    let mut saw_ours = false;
    let mut other_code: Option<String> = None;

    for value in headers.get_all(WWW_AUTHENTICATE) {
        // `to_str` accepts only visible ASCII, but a realm may be UTF-8 text, so that is tried
        // next. Bytes that are neither could only be partly understood, so the line is skipped
        // rather than guessed at.
        let Some(text) = value.to_str().ok().or_else(|| std::str::from_utf8(value.as_bytes()).ok()) else {
            continue;
        };
        for challenge in parse_challenges(text) {
            saw_challenge = true;
            if challenge.scheme != scheme {
                continue;
            }
            saw_ours = true;
            for code in challenge.params_named("error") {
                match classify_code(code) {
                    // Nothing later can outrank it, so there is no need to read further.
                    Some(Rejection::InvalidToken) => return Rejection::InvalidToken,
                    // The first other code is kept, in case no `invalid_token` turns up.
                    Some(Rejection::OtherError(code)) => {
                        other_code.get_or_insert(code);
                    }
                    _ => {}
                }
            }
        }
    }

    if let Some(code) = other_code {
        return Rejection::OtherError(code);
    }
    if let Some(rejection) = body_error(body).as_deref().and_then(classify_code) {
        return rejection;
    }
    if saw_challenge && !saw_ours { Rejection::OtherScheme } else { Rejection::NoDetail }
}

/// The `error` codes of every `WWW-Authenticate` challenge of `scheme` (lowercase) in
/// `headers`, in the order sent: what a DPoP resource server says in `DPoP error="..."` (RFC 9449
/// §7.1, §9), read with the same lenient grammar as a Bearer challenge.
#[cfg(feature = "dpop")]
pub(crate) fn challenge_errors(headers: &HeaderMap, scheme: &str) -> Vec<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok().or_else(|| std::str::from_utf8(value.as_bytes()).ok()))
        .flat_map(parse_challenges)
        .filter(|challenge| challenge.scheme == scheme)
        .flat_map(|challenge| challenge.params_named("error").map(|code| code.trim().to_owned()).collect::<Vec<_>>())
        .collect()
}

/// Turns an error code into a rejection; `None` for a blank code, which says no more than a
/// missing one.
///
/// RFC 6750 codes are lower case, but servers are not always careful, and reading `INVALID_TOKEN`
/// as "some other error" would leave a dead token in place. Surrounding whitespace is ignored for
/// the same reason, and the code kept for `OtherError` is the trimmed text, case as sent.
fn classify_code(code: &str) -> Option<Rejection> {
    let code = code.trim();
    if code.is_empty() {
        None
    } else if code.eq_ignore_ascii_case("invalid_token") {
        Some(Rejection::InvalidToken)
    } else {
        Some(Rejection::OtherError(code.to_owned()))
    }
}

//! The crate's errors.
//!
//! [`Error`] is what reaches the caller (wrapped in `reqwest_middleware::Error::Middleware`
//! through reqwest, boxed through tower);
//! [`RefreshError`] says why a token endpoint (or any [`TokenSource`](crate::TokenSource)) gave no
//! token; [`StoreError`] says why a [`TokenStore`](crate::TokenStore) failed. All are `Clone`: one
//! refresh's outcome is shared by every request that waited for it.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::key::TokenKey;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the layer reports to the caller.
///
/// It reaches a reqwest caller as `reqwest_middleware::Error::Middleware`, which
/// [`Error::from_middleware`] gets it back out of; a tower caller gets it boxed, and
/// `err.downcast_ref::<Error>()` gets it back.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The refresh token is dead (revoked, expired, already used, or never given): the user must
    /// authorize again. Terminal: every request for this key fails fast with this error, without
    /// a network call, until [`TokenRefresh::set_tokens`](crate::TokenRefresh::set_tokens) installs
    /// new tokens.
    #[error("re-authorization required for token key `{key}`")]
    ReauthorizationRequired {
        /// Whose tokens are dead.
        key: TokenKey,
        /// What the token endpoint (or token source) said.
        #[source]
        reason: RefreshError,
    },
    /// The token endpoint refuses this client (`invalid_client`, `unauthorized_client`): the
    /// client's own credentials or registration are wrong, which no user can fix. Terminal like
    /// [`ReauthorizationRequired`](Self::ReauthorizationRequired) (requests for the key fail fast
    /// until [`set_tokens`](crate::TokenRefresh::set_tokens)), but reported apart, through
    /// [`on_client_rejected`](crate::TokenRefreshBuilder::on_client_rejected), since sending the
    /// user to log in again would not help.
    #[error("the token endpoint refuses this client (token key `{key}`)")]
    ClientRejected {
        /// Whose refresh was refused.
        key: TokenKey,
        /// What the token endpoint said.
        #[source]
        reason: RefreshError,
    },
    /// A refresh failed for a reason that may pass (network, timeout, 5xx, 429, a cool-down).
    /// A later request may succeed.
    #[error("token refresh failed for token key `{key}`")]
    Refresh {
        /// Whose refresh failed.
        key: TokenKey,
        /// Why.
        #[source]
        source: RefreshError,
    },
    /// Reading tokens from the store failed, so the layer has no token to send.
    #[error("token store failed for token key `{key}`")]
    Store {
        /// Whose tokens could not be read.
        key: TokenKey,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// [`TokenRefresh::revoke`](crate::TokenRefresh::revoke) could not revoke the key's tokens at
    /// the provider: its revocation endpoint refused (an RFC 7009 error such as
    /// `unsupported_token_type`, a 5xx, a 503 with `Retry-After`), could not be reached or did
    /// not answer in time, or the token source has none. Nothing changed: the tokens are still
    /// in memory and in the store, and the key still works; call `revoke` again to retry.
    #[error("revoking the tokens of token key `{key}` failed; they are kept")]
    Revocation {
        /// Whose tokens were to be revoked.
        key: TokenKey,
        /// What the revocation endpoint (or the token source) said.
        #[source]
        source: RefreshError,
    },
    /// The access token cannot be sent in an HTTP header (it is empty or holds a control
    /// character, a space or a non-ASCII byte). The request was not sent.
    #[error("the access token for token key `{key}` cannot be sent: {problem}")]
    InvalidAccessToken {
        /// Whose token it is.
        key: TokenKey,
        /// What is wrong with it (never the token itself).
        problem: String,
    },
    /// A request with a DPoP-bound token could not be given its proof (feature `dpop`): the
    /// system's random number generator failed, or the request's URL could not be known. The
    /// request was not sent.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    #[error("no DPoP proof could be made for a request with the token of token key `{key}`")]
    Dpop {
        /// Whose token it is.
        key: TokenKey,
        /// Why.
        #[source]
        source: crate::dpop::DpopError,
    },
    /// The layer was configured wrongly; returned by
    /// [`TokenRefreshBuilder::build`](crate::TokenRefreshBuilder::build).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the user has to authorize again (a dead refresh token).
    pub fn is_reauthorization_required(&self) -> bool {
        matches!(self, Error::ReauthorizationRequired { .. })
    }

    /// How long to wait before a new refresh may be attempted, when the layer knows
    /// (a cool-down after a 429/503 with `Retry-After`, or after a failed refresh); for a failed
    /// [`Revocation`](Self::Revocation), how long its endpoint asked to wait before the next try.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Refresh { source, .. } | Error::Revocation { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

/// An OAuth 2.0 error response (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct OAuthError {
    /// The error code: `invalid_grant`, `invalid_client`, ...
    pub error: String,
    /// The server's human-readable explanation.
    #[serde(default)]
    pub error_description: Option<String>,
    /// A page about the error.
    #[serde(default)]
    pub error_uri: Option<String>,
}

impl OAuthError {
    /// An error response with only a code.
    pub fn new(code: impl Into<String>) -> Self {
        Self { error: code.into(), error_description: None, error_uri: None }
    }

    /// Adds a description.
    #[must_use = "returns the changed error; on its own the call changes nothing"]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.error_description = Some(description.into());
        self
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)?;
        if let Some(description) = &self.error_description {
            write!(f, " ({description})")?;
        }
        Ok(())
    }
}

/// Why a token source produced no token.
///
/// A [`Protocol`](Self::Protocol) error is the server saying no; a
/// [`Transport`](Self::Transport) error is never getting an answer. Which protocol errors are
/// terminal (re-authorization required) is decided by the layer, see
/// [`TokenRefreshBuilder::terminal_error`](crate::TokenRefreshBuilder::terminal_error).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The token endpoint answered with an error status or an OAuth error response.
    #[error("the token endpoint answered {status}{}", describe_protocol(.error.as_deref(), .body))]
    Protocol {
        /// The HTTP status.
        status: StatusCode,
        /// The OAuth error response, when the body was one.
        error: Option<Box<OAuthError>>,
        /// How long the server asked us to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
        /// The start of the body when it was not an OAuth error response (capped, secrets removed).
        body: String,
    },
    /// The token endpoint could not be reached, or the answer could not be read (connection
    /// refused, DNS, TLS, timeout, a dropped connection).
    #[error("the token endpoint could not be reached")]
    Transport(#[source] Arc<dyn StdError + Send + Sync>),
    /// The token endpoint answered with success, but not with a usable token response.
    #[error("the token endpoint sent an unusable token response ({status}): {reason}")]
    InvalidResponse {
        /// The HTTP status.
        status: StatusCode,
        /// What is wrong with it.
        reason: String,
        /// The start of the body (capped; the values of token fields are replaced by `[redacted]`).
        body: String,
        /// A new refresh token the answer carried despite being unusable otherwise. A rotating
        /// provider has already spent the old one, so the layer saves this one rather than lose
        /// the user's authorization.
        rotated_refresh_token: Option<crate::token::RefreshToken>,
    },
    /// The layer is cooling down after the token endpoint asked it to wait (or after failed
    /// refreshes); no token call is made until it ends.
    #[error("token refresh is cooling down; retry in {}s", .retry_after.as_secs_f64().ceil())]
    CoolingDown {
        /// How long until a refresh may be attempted again.
        retry_after: Duration,
    },
    /// There is no refresh token to refresh with (and the source cannot get a token without one).
    #[error("there is no refresh token to refresh with")]
    NoRefreshToken,
    /// The token source is misconfigured (for example, its token URL does not parse).
    #[error("the token source is misconfigured: {0}")]
    Config(String),
    /// The refresh did not finish before its deadline (a token source or store that never
    /// answered); see [`flight_deadline`](crate::TokenRefreshBuilder::flight_deadline).
    #[error("the refresh did not finish within {after:?}")]
    TimedOut {
        /// The deadline it had.
        after: Duration,
    },
    /// The refresh ran in a task that ended without an answer (it panicked, or the runtime shut down).
    #[error("the refresh task ended without an answer")]
    Aborted,
    /// The key's tokens were revoked ([`TokenRefresh::revoke`](crate::TokenRefresh::revoke), by
    /// this layer or by another process sharing its store): the user must authorize again. The
    /// reason of a key in [`TokenState::ReauthorizationRequired`](crate::TokenState) after a
    /// revocation.
    #[error("the tokens were revoked")]
    Revoked,
    /// The set's dynamically registered client has a secret that expired at `expired_at` (its
    /// `client_secret_expires_at`, RFC 7591 §3.2.1): it was not sent, since the server would
    /// refuse it. Terminal, the client's fault ([`Error::ClientRejected`]): register again
    /// ([`DynamicRegistration::renew`](crate::DynamicRegistration::renew)) and log in.
    #[error("the registration of client {client_id:?} expired; register again")]
    RegistrationExpired {
        /// The registered client's id (public).
        client_id: String,
        /// When its secret expired.
        expired_at: std::time::SystemTime,
    },
    /// Any other failure of a user-written token source. Treated as transient.
    #[error("the token source failed")]
    Other(#[source] Arc<dyn StdError + Send + Sync>),
    /// DPoP could not be done (feature `dpop`): the tokens' key is lost
    /// ([`DpopError::KeyLost`](crate::DpopError::KeyLost), terminal: the user must authorize
    /// again), the server issued an unbound token (terminal, the client's fault), or no proof
    /// could be made (transient).
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    #[error("DPoP failed")]
    Dpop(#[source] crate::dpop::DpopError),
}

fn describe_protocol(error: Option<&OAuthError>, body: &str) -> String {
    match error {
        Some(error) => format!(": {error}"),
        None if body.is_empty() => String::new(),
        None => format!(": {body:?}"),
    }
}

impl RefreshError {
    /// A transport failure from any error (for user-written token sources).
    pub fn transport(err: impl StdError + Send + Sync + 'static) -> Self {
        RefreshError::Transport(Arc::new(err))
    }

    /// Any other failure (for user-written token sources); treated as transient.
    pub fn other(err: impl StdError + Send + Sync + 'static) -> Self {
        RefreshError::Other(Arc::new(err))
    }

    /// A protocol error: the server answered `status` with an OAuth error response.
    pub fn protocol(status: StatusCode, error: OAuthError) -> Self {
        RefreshError::Protocol { status, error: Some(Box::new(error)), retry_after: None, body: String::new() }
    }

    /// The OAuth error code, when the server sent one.
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        match self {
            RefreshError::Protocol { error, .. } => error.as_deref(),
            _ => None,
        }
    }

    /// How long the server asked to wait, or how long a cool-down has left.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RefreshError::Protocol { retry_after, .. } => *retry_after,
            RefreshError::CoolingDown { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Replaces every occurrence of each of `secrets` in this error by `[redacted]`: in the OAuth
    /// error's `error`, `error_description` and `error_uri`, in body excerpts, in reasons, and in
    /// the text of a wrapped cause.
    ///
    /// Providers echo what they were sent: Spring Security OAuth's `invalid_grant` says
    /// `Invalid refresh token: <the token>`, and a gateway's error page may quote the whole
    /// request. Each secret is looked for as it is and as it would be spelled in a JSON string
    /// (escaped, also with `\/`), in a form body and in a URL (percent-encoded); the end of a
    /// capped excerpt (`…`) that cuts a secret short is removed too. Secrets shorter than four
    /// characters are not looked for: they cannot be told from ordinary text (a refresh token
    /// `r` is in every word), and no real token or secret is that short.
    ///
    /// The grants of this crate redact what they hold (the refresh token, the client secret, the
    /// access token being replaced, the values of extra parameters) before they return an error,
    /// and the layer redacts the tokens it holds from any token source's errors. Call it yourself
    /// in a [`TokenSource`](crate::TokenSource) of your own on errors built from a server's answer,
    /// with the secrets only your source knows (a signing key, an API key).
    ///
    /// A wrapped cause ([`Transport`](Self::Transport), [`Other`](Self::Other)) that shows a
    /// secret anywhere in its chain is replaced by a copy of its text with the secrets redacted;
    /// it can then no longer be downcast to its original type. One that shows none is kept.
    ///
    /// ```
    /// use http::StatusCode;
    /// use reqwest_token_refresh::{OAuthError, RefreshError};
    ///
    /// let mut err = RefreshError::protocol(
    ///     StatusCode::BAD_REQUEST,
    ///     OAuthError::new("invalid_grant").with_description("Invalid refresh token: rt-123"),
    /// );
    /// err.redact(&["rt-123"]);
    /// assert_eq!(err.to_string(), "the token endpoint answered 400 Bad Request: invalid_grant (Invalid refresh token: [redacted])");
    /// ```
    pub fn redact(&mut self, secrets: &[&str]) {
        let redactor = Redactor::new(secrets);
        if redactor.is_empty() {
            return;
        }
        match self {
            RefreshError::Protocol { error, body, .. } => {
                if let Some(error) = error {
                    redactor.apply(&mut error.error);
                    error.error_description.iter_mut().for_each(|text| redactor.apply(text));
                    error.error_uri.iter_mut().for_each(|text| redactor.apply(text));
                }
                redactor.apply(body);
            }
            RefreshError::InvalidResponse { reason, body, .. } => {
                redactor.apply(reason);
                redactor.apply(body);
            }
            RefreshError::Config(reason) => redactor.apply(reason),
            RefreshError::Transport(cause) | RefreshError::Other(cause) => {
                if redactor.finds_in_chain(cause.as_ref()) {
                    *cause = Arc::new(Redacted::of(cause.as_ref(), &redactor));
                }
            }
            RefreshError::CoolingDown { .. }
            | RefreshError::TimedOut { .. }
            | RefreshError::NoRefreshToken
            | RefreshError::Aborted
            | RefreshError::Revoked
            | RefreshError::RegistrationExpired { .. } => {}
            // Says nothing a server sent but a `token_type`, and nothing of the key.
            #[cfg(feature = "dpop")]
            RefreshError::Dpop(_) => {}
        }
    }
}

/// The shortest secret [`RefreshError::redact`] looks for.
const MIN_SECRET_LEN: usize = 4;

/// What redacted text is replaced by.
const REDACTED: &str = "[redacted]";

/// The character [`crate::source`]'s excerpts end with when they were capped.
const CAPPED: char = '…';

/// Every spelling of a set of secrets, longest first, so that a spelling that contains another
/// (an escaped form holding the plain one) is replaced whole.
struct Redactor {
    spellings: Vec<String>,
}

impl Redactor {
    fn new(secrets: &[&str]) -> Self {
        let mut spellings: Vec<String> =
            secrets.iter().filter(|s| s.chars().count() >= MIN_SECRET_LEN).flat_map(|s| spellings_of(s)).collect();
        spellings.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        spellings.dedup();
        Self { spellings }
    }

    fn is_empty(&self) -> bool {
        self.spellings.is_empty()
    }

    fn finds(&self, text: &str) -> bool {
        self.spellings.iter().any(|spelling| text.contains(spelling.as_str())) || self.cut_short(text).is_some()
    }

    fn finds_in_chain(&self, err: &(dyn StdError + 'static)) -> bool {
        let mut next = Some(err);
        while let Some(err) = next {
            if self.finds(&err.to_string()) || self.finds(&format!("{err:?}")) || self.finds(&format!("{err:#?}")) {
                return true;
            }
            next = err.source();
        }
        false
    }

    fn apply(&self, text: &mut String) {
        for spelling in &self.spellings {
            if text.contains(spelling.as_str()) {
                *text = text.replace(spelling.as_str(), REDACTED);
            }
        }
        if let Some(keep) = self.cut_short(text) {
            text.truncate(keep);
            text.push_str(REDACTED);
            text.push(CAPPED);
        }
    }

    /// Where to cut a capped text whose end is the start of a secret (`...token: rt-12…`): the
    /// length to keep, if it is one.
    fn cut_short(&self, text: &str) -> Option<usize> {
        let stem = text.strip_suffix(CAPPED)?;
        self.spellings
            .iter()
            .filter_map(|spelling| {
                // The longest proper start of the spelling that the stem ends with.
                let ends = spelling.char_indices().skip(1).map(|(end, _)| end);
                ends.filter(|&end| stem.ends_with(&spelling[..end])).last().map(|end| stem.len() - end)
            })
            .min()
    }
}

/// A secret as it is, and as a server may echo it: JSON-escaped (also with `\/`, as PHP
/// writes it), form-urlencoded (`+` for a space) and percent-encoded (`%20`).
fn spellings_of(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json.get(1..json.len().saturating_sub(1)).unwrap_or_default().to_owned();
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent = form.replace('+', "%20");
    let json_slashes = json.replace('/', "\\/");
    [secret.to_owned(), json, json_slashes, form, percent].into_iter().filter(|s| !s.is_empty()).collect()
}

/// A cause whose text showed a secret: a copy of its `Display` and `Debug` (and of its causes'),
/// with the secrets redacted.
struct Redacted {
    display: String,
    debug: String,
    pretty: String,
    source: Option<Box<Redacted>>,
}

impl Redacted {
    fn of(err: &(dyn StdError + 'static), redactor: &Redactor) -> Self {
        let text = |mut text: String| {
            redactor.apply(&mut text);
            text
        };
        Self {
            display: text(err.to_string()),
            debug: text(format!("{err:?}")),
            pretty: text(format!("{err:#?}")),
            source: err.source().map(|source| Box::new(Redacted::of(source, redactor))),
        }
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if f.alternate() { &self.pretty } else { &self.debug })
    }
}

impl StdError for Redacted {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn StdError + 'static))
    }
}

/// Why a [`TokenStore`](crate::TokenStore) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error (a file store's disk is full, a permission is missing, ...).
    #[error("token store I/O failed while {action}")]
    Io {
        /// What the store was doing.
        action: String,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// What the store holds cannot be read as tokens.
    #[error("the token store holds unreadable data: {0}")]
    Corrupt(String),
    /// The cross-process lock could not be taken in time.
    #[error("timed out waiting for the token store's lock")]
    LockTimeout,
    /// The save was refused because the store already holds newer tokens: this process's lock
    /// (lease) expired and another process refreshed meanwhile. The layer adopts the stored tokens
    /// instead of retrying the save.
    #[error("the token store holds newer tokens than the ones being saved")]
    Superseded,
    /// The save (or removal) was refused because the key's tokens were removed from the store
    /// ([`TokenStore::remove`](crate::TokenStore::remove), after a revocation) as `revision`,
    /// since the revision it names. The layer treats the key as revoked instead of saving its
    /// copy again; a save over `revision` itself (new tokens after a new login) lands.
    #[error("the token store's tokens for this key were removed (revoked) as {revision}")]
    Removed {
        /// The revision of the removal.
        revision: crate::store::Revision,
    },
    /// Any other backend failure (a Redis or database error, ...).
    #[error("the token store's backend failed: {0}")]
    Backend(#[source] Arc<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// A backend failure from any error (for user-written stores).
    pub fn backend(err: impl StdError + Send + Sync + 'static) -> Self {
        StoreError::Backend(Arc::new(err))
    }

    /// An I/O failure while doing `action`.
    pub fn io(action: impl Into<String>, err: std::io::Error) -> Self {
        StoreError::Io { action: action.into(), source: Arc::new(err) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_sync_and_static() {
        fn check<T: Send + Sync + 'static + StdError>() {}
        check::<Error>();
        check::<RefreshError>();
        check::<StoreError>();
    }

    #[test]
    fn protocol_error_display_names_code_and_description() {
        let err = RefreshError::protocol(
            StatusCode::BAD_REQUEST,
            OAuthError::new("invalid_grant").with_description("refresh token was revoked"),
        );
        assert_eq!(
            err.to_string(),
            "the token endpoint answered 400 Bad Request: invalid_grant (refresh token was revoked)"
        );
    }

    /// Everything an error shows: `Display` and `Debug` down its `source()` chain.
    fn shown(err: &(dyn StdError + 'static)) -> String {
        let mut text = String::new();
        let mut next = Some(err);
        while let Some(err) = next {
            text.push_str(&format!("{err}\n{err:?}\n{err:#?}\n"));
            next = err.source();
        }
        text
    }

    #[test]
    fn redact_replaces_a_secret_in_every_field_of_a_protocol_error() {
        let mut err = RefreshError::Protocol {
            status: StatusCode::BAD_REQUEST,
            error: Some(Box::new(OAuthError {
                error: "invalid_grant rt-1".into(),
                error_description: Some("Invalid refresh token: rt-1".into()),
                error_uri: Some("https://p.example/e?t=rt-1".into()),
            })),
            retry_after: None,
            body: "echo rt-1 rt-1".into(),
        };
        err.redact(&["rt-1"]);
        let text = shown(&err);
        assert!(!text.contains("rt-1"), "{text}");
        let oauth = err.oauth_error().unwrap();
        assert_eq!(oauth.error_description.as_deref(), Some("Invalid refresh token: [redacted]"));
        assert_eq!(oauth.error_uri.as_deref(), Some("https://p.example/e?t=[redacted]"));
    }

    #[test]
    fn redact_finds_a_secret_as_json_form_and_url_spell_it() {
        let secret = "a/b+c d\"e";
        let json = r#"a\/b+c d\"e and a/b+c d\"e"#;
        let form = "a%2Fb%2Bc+d%22e";
        let url = "a%2Fb%2Bc%20d%22e";
        for text in [json, form, url, secret] {
            let mut err = RefreshError::InvalidResponse {
                status: StatusCode::OK,
                reason: format!("the answer said {text}"),
                body: text.to_owned(),
                rotated_refresh_token: None,
            };
            err.redact(&[secret]);
            let shown = shown(&err);
            for spelling in [secret, "a/b+c", "a\\/b", "a%2Fb", "d%22e", "d\\\"e"] {
                assert!(!shown.contains(spelling), "{spelling} in {shown}");
            }
            assert!(shown.contains("[redacted]"), "{shown}");
        }
    }

    #[test]
    fn redact_removes_the_start_of_a_secret_that_a_capped_excerpt_cut_short() {
        let mut err = RefreshError::Protocol {
            status: StatusCode::BAD_GATEWAY,
            error: None,
            retry_after: None,
            body: "Invalid refresh token: rt-12…".into(),
        };
        err.redact(&["rt-123456"]);
        assert!(err.to_string().contains("token: [redacted]…"), "{err}");
        // A text that was not capped keeps a mere look-alike.
        let mut err = RefreshError::Config("rt-12".into());
        err.redact(&["rt-123456"]);
        assert_eq!(err.to_string(), "the token source is misconfigured: rt-12");
    }

    #[test]
    fn redact_replaces_a_cause_that_shows_a_secret_and_keeps_one_that_does_not() {
        #[derive(Debug, thiserror::Error)]
        #[error("vault said: {0}")]
        struct Vault(String, #[source] std::io::Error);

        let cause = Vault("token sk-9 is sealed".into(), std::io::Error::other("sealed with sk-9"));
        let mut err = RefreshError::other(cause);
        err.redact(&["sk-9"]);
        let text = shown(&err);
        assert!(!text.contains("sk-9"), "{text}");
        assert!(text.contains("vault said: token [redacted] is sealed"), "{text}");
        assert!(text.contains("sealed with [redacted]"), "the cause's own source is redacted too: {text}");

        let mut err = RefreshError::transport(std::io::Error::other("connection reset"));
        err.redact(&["sk-9"]);
        let RefreshError::Transport(cause) = &err else { panic!("{err:?}") };
        assert!(cause.downcast_ref::<std::io::Error>().is_some(), "an innocent cause keeps its type");
    }

    #[test]
    fn redact_ignores_secrets_too_short_to_tell_from_text() {
        let mut err = RefreshError::protocol(StatusCode::BAD_REQUEST, OAuthError::new("invalid_grant"));
        err.redact(&["", "a", "r1", "gra"]);
        assert_eq!(err.oauth_error().unwrap().error, "invalid_grant");
        err.redact(&["alid"]);
        assert_eq!(err.oauth_error().unwrap().error, "inv[redacted]_grant");
    }

    #[test]
    fn cooling_down_says_when_to_retry() {
        let err = Error::Refresh {
            key: TokenKey::default(),
            source: RefreshError::CoolingDown { retry_after: Duration::from_millis(1500) },
        };
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("retry in 2s"));
    }
}

//! The first tokens: the authorization-code grant (RFC 6749 §4.1) with PKCE (RFC 7636) and
//! `state`, built from a [`RefreshTokenGrant`] so the code is exchanged exactly the way the grant
//! refreshes (its client authentication, body encoding, extra fields and response mapping).
//!
//! [`Login`] makes the authorize URL and a [`PendingLogin`] (the `state` and the PKCE verifier, to
//! keep server-side until the user comes back), then checks the callback and exchanges the code.
//! The tokens go into the layer with [`TokenRefresh::set_tokens_for`](crate::TokenRefresh::set_tokens_for),
//! which saves them to the store before any request uses them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use url::Url;

use super::endpoint::{Scoped, TokenEndpoint};
use crate::error::RefreshError;
use crate::token::TokenSet;

/// Random bytes in a `state` and in a PKCE verifier: 256 bits, 43 characters once encoded (RFC
/// 7636 §4.1 asks for 43 to 128).
const RANDOM_BYTES: usize = 32;

/// Why a login could not be started or completed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The grant cannot log users in as configured: no authorize URL, or one that does not parse.
    #[error("the login is misconfigured: {0}")]
    Config(String),
    /// The system's random number generator failed, so no `state` or verifier could be made.
    #[error("no random bytes for the login: {0}")]
    Random(String),
    /// The authorization server's metadata does not say it supports PKCE with `S256`, the one
    /// method this crate uses: it lists `code_challenge_methods_supported` without it, or (on the
    /// MCP path, [`ResourceMetadata::refresh_token_grant`](crate::ResourceMetadata::refresh_token_grant))
    /// does not list them at all, and the MCP authorization specification then requires the
    /// client to refuse to proceed. Nothing was sent.
    #[error(
        "the authorization server's metadata {}: refused, since a login needs PKCE with S256",
        match .methods {
            Some(methods) => format!("lists code_challenge_methods_supported {methods:?} without S256"),
            None => "has no code_challenge_methods_supported, so PKCE support is not known".to_owned(),
        }
    )]
    PkceUnsupported {
        /// `code_challenge_methods_supported` as listed; `None` when the metadata has none.
        methods: Option<Vec<String>>,
    },
    /// The callback's `state` is not the one this login was started with: a forged or replayed
    /// callback (RFC 6749 §10.12), or the answer to another login.
    #[error("the callback's state does not match the login's: refused")]
    StateMismatch,
    /// The authorization server sent the user back with an error (RFC 6749 §4.1.2.1), such as
    /// `access_denied` when the user declined.
    #[error("the authorization was refused: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Denied {
        /// The `error` code.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },
    /// The callback carries neither a `code` nor an `error`.
    #[error("the callback carries no authorization code")]
    MissingCode,
    /// The token endpoint refused the code or could not be reached; secrets redacted.
    #[error("exchanging the authorization code failed")]
    Exchange(#[source] RefreshError),
}

/// What a login keeps between sending the user to the authorize URL and the callback: the
/// `state` it expects back and the PKCE verifier. Serialisable, to keep in the user's server-side
/// session; its `Debug` hides the verifier.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    state: String,
    code_verifier: String,
}

impl PendingLogin {
    /// A pending login from a `state` and a PKCE verifier made elsewhere.
    pub fn from_parts(state: impl Into<String>, code_verifier: impl Into<String>) -> Self {
        Self { state: state.into(), code_verifier: code_verifier.into() }
    }

    /// The `state` the callback must carry; also a handy key for the session that holds this.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The PKCE `code_challenge` sent in the authorize URL: `BASE64URL(SHA-256(verifier))`, the
    /// `S256` method (RFC 7636 §4.2).
    pub fn code_challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.code_verifier.as_bytes()))
    }

    fn generate() -> Result<Self, LoginError> {
        Ok(Self { state: random_token()?, code_verifier: random_token()? })
    }
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin").field("state", &self.state).field("code_verifier", &"[redacted]").finish()
    }
}

fn random_token() -> Result<String, LoginError> {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| LoginError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// An authorization-code login with PKCE for one redirect URI; from
/// [`RefreshTokenGrant::login`](crate::RefreshTokenGrant::login).
///
/// ```
/// use reqwest_token_refresh::{TokenKey, TokenRefresh, providers};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let grant = providers::kroger("client-id", "client-secret");
/// let login = grant.login("https://app.example/kroger/callback")?.scope("profile.compact");
///
/// // 1. Send the user to `url`; keep `pending` in their session.
/// let (url, pending) = login.start()?;
/// assert!(url.as_str().starts_with("https://api.kroger.com/v1/connect/oauth2/authorize?"));
///
/// // 2. On the callback: check it, exchange the code, install the tokens (saved before use).
/// # let callback = format!("https://app.example/kroger/callback?error=access_denied&state={}", pending.state());
/// // let callback = /* the URL the user's browser came back with */;
/// let auth = TokenRefresh::builder(grant).build()?; // the token goes to https://api.kroger.com
/// match login.exchange(&pending, &callback).await {
///     Ok(tokens) => auth.set_tokens_for(&TokenKey::new("user-42"), tokens).await?,
///     Err(err) => eprintln!("login failed: {err}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Login {
    endpoint: TokenEndpoint,
    authorize_url: Url,
    redirect_uri: String,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
}

impl Login {
    pub(super) fn new(endpoint: &TokenEndpoint, redirect_uri: String) -> Result<Self, LoginError> {
        if let Some(pkce) = &endpoint.pkce {
            pkce.check_s256().map_err(|methods| LoginError::PkceUnsupported { methods })?;
        }
        let Some(authorize_url) = &endpoint.authorize_url else {
            return Err(LoginError::Config(
                "the grant has no authorize URL: set one with `RefreshTokenGrant::authorize_url`".into(),
            ));
        };
        let authorize_url = Url::parse(authorize_url)
            .map_err(|e| LoginError::Config(format!("the authorize URL {authorize_url:?} does not parse: {e}")))?;
        Url::parse(&redirect_uri)
            .map_err(|e| LoginError::Config(format!("the redirect URI {redirect_uri:?} does not parse: {e}")))?;
        let scopes = endpoint.scopes.clone();
        Ok(Self { endpoint: endpoint.clone(), authorize_url, redirect_uri, scopes, params: Vec::new() })
    }

    /// Adds a scope to ask the user for, after the grant's own (WHOOP's `offline`, say); joined by
    /// the grant's [scope delimiter](crate::RefreshTokenGrant::scope_delimiter).
    #[must_use = "a builder method returns the changed login"]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds a resource indicator (RFC 8707), after the grant's own
    /// ([`RefreshTokenGrant::resource`](crate::RefreshTokenGrant::resource)): sent as `resource`
    /// on the authorize URL and on the code exchange. Tokens for an MCP server, say, are asked
    /// for with the server's URI, so that they are good for it alone. A refresh sends only the
    /// grant's: give the resource to the grant, which its logins start from, for both.
    #[must_use = "a builder method returns the changed login"]
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.endpoint.resources.push(resource.into());
        self
    }

    /// Adds a parameter to the authorize URL (`prompt=consent`, `access_type=offline`).
    #[must_use = "a builder method returns the changed login"]
    pub fn authorize_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Starts a login: the URL to send the user to, and what to keep until they come back.
    ///
    /// The URL carries `response_type=code`, the client id, the redirect URI, the scopes, the
    /// resource indicators (RFC 8707 §2.1), a fresh random `state` and the PKCE `S256` challenge
    /// of a fresh random verifier.
    ///
    /// # Errors
    ///
    /// [`LoginError::Random`] if the system's random number generator fails;
    /// [`LoginError::Config`] for a resource that is not an absolute URI without a fragment.
    pub fn start(&self) -> Result<(Url, PendingLogin), LoginError> {
        let resources = self.endpoint.checked_resources().map_err(LoginError::Config)?;
        let pending = PendingLogin::generate()?;
        let mut url = self.authorize_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("response_type", "code");
            if let Some(client_id) = self.endpoint.effective_client_id() {
                query.append_pair("client_id", client_id);
            }
            query.append_pair("redirect_uri", &self.redirect_uri);
            if !self.scopes.is_empty() {
                query.append_pair("scope", &self.scopes.join(&self.endpoint.scope_delimiter));
            }
            for resource in resources {
                query.append_pair("resource", resource);
            }
            query.append_pair("state", &pending.state);
            query.append_pair("code_challenge", &pending.code_challenge());
            query.append_pair("code_challenge_method", "S256");
            for (name, value) in &self.params {
                query.append_pair(name, value);
            }
        }
        Ok((url, pending))
    }

    /// Completes a login from its callback: the whole URL the user's browser came back with, or
    /// just its query (`code=...&state=...`). Checks `state`, then exchanges the code with the PKCE
    /// verifier at the token endpoint, as the grant would refresh.
    ///
    /// With a [registered client](crate::RefreshTokenGrant::registered_client) the code is
    /// exchanged as that client, and the tokens carry its registration
    /// ([`TokenSet::client`]), for the store to keep and every refresh to use.
    ///
    /// A code works once; so does a `PendingLogin`: start a new login to try again.
    ///
    /// # Errors
    ///
    /// [`LoginError::StateMismatch`] for a callback this login did not start (checked before
    /// anything else, and nothing is sent), [`LoginError::Denied`] when the user or the server
    /// refused, [`LoginError::MissingCode`], and [`LoginError::Exchange`] when the token endpoint
    /// refused the code (`invalid_grant`: expired, used, or not for this verifier) or could not be
    /// reached.
    pub async fn exchange(&self, pending: &PendingLogin, callback: &str) -> Result<TokenSet, LoginError> {
        let code = Callback::parse(callback).code_for(pending)?;
        let grant = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", pending.code_verifier.as_str()),
        ];
        self.endpoint.exchange(&grant, None, Scoped::No).await.map_err(LoginError::Exchange)
    }
}

/// The parameters a callback came back with.
#[derive(Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    description: Option<String>,
}

impl Callback {
    fn parse(callback: &str) -> Self {
        let query = match Url::parse(callback) {
            Ok(url) => url.query().unwrap_or_default().to_owned(),
            Err(_) => callback.trim_start_matches('?').to_owned(),
        };
        let mut parsed = Callback::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "code" => &mut parsed.code,
                "state" => &mut parsed.state,
                "error" => &mut parsed.error,
                "error_description" => &mut parsed.description,
                _ => continue,
            };
            // RFC 6749 §3.1: a parameter sent twice is an error; keeping the first and refusing a
            // second `state` below comes to the same.
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        parsed
    }

    /// The code, once the callback is known to answer this login.
    fn code_for(self, pending: &PendingLogin) -> Result<String, LoginError> {
        let state = self.state.unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
            return Err(LoginError::StateMismatch);
        }
        if let Some(error) = self.error {
            return Err(LoginError::Denied { error, description: self.description });
        }
        self.code.filter(|code| !code.is_empty()).ok_or(LoginError::MissingCode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_challenge_is_rfc_7636_appendix_b() {
        let pending = PendingLogin::from_parts("s", "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(pending.code_challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn each_login_gets_its_own_43_character_state_and_verifier() {
        let (a, b) = (PendingLogin::generate().unwrap(), PendingLogin::generate().unwrap());
        for value in [&a.state, &a.code_verifier, &b.state, &b.code_verifier] {
            assert_eq!(value.len(), 43);
            assert!(value.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{value}");
        }
        assert_ne!(a.state, b.state);
        assert_ne!(a.code_verifier, b.code_verifier);
        assert_ne!(a.state, a.code_verifier);
    }

    #[test]
    fn debug_hides_the_verifier() {
        let shown = format!("{:?}", PendingLogin::from_parts("the-state", "the-verifier"));
        assert!(shown.contains("the-state") && !shown.contains("the-verifier"), "{shown}");
    }

    #[test]
    fn a_callback_is_read_from_a_url_or_a_query() {
        let pending = PendingLogin::from_parts("st", "v");
        for callback in ["https://app.example/cb?code=c%2B1&state=st", "?state=st&code=c%2B1", "code=c%2B1&state=st"] {
            assert_eq!(Callback::parse(callback).code_for(&pending).unwrap(), "c+1", "{callback}");
        }
    }

    #[test]
    fn the_state_is_checked_before_anything_else() {
        let pending = PendingLogin::from_parts("st", "v");
        for callback in
            ["code=c&state=other", "code=c", "error=access_denied&state=s", "state=st2&code=c", "state=&code=c"]
        {
            assert!(
                matches!(Callback::parse(callback).code_for(&pending), Err(LoginError::StateMismatch)),
                "{callback}"
            );
        }
        // The first `state` counts: a second one cannot replace a wrong first.
        let twice = Callback::parse("state=wrong&state=st&code=c").code_for(&pending);
        assert!(matches!(twice, Err(LoginError::StateMismatch)));
    }

    #[test]
    fn an_error_callback_is_a_denial_and_no_code_is_missing() {
        let pending = PendingLogin::from_parts("st", "v");
        let denied = Callback::parse("error=access_denied&error_description=User+said+no&state=st").code_for(&pending);
        match denied {
            Err(err @ LoginError::Denied { .. }) => {
                assert_eq!(err.to_string(), "the authorization was refused: access_denied (User said no)");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(Callback::parse("state=st").code_for(&pending), Err(LoginError::MissingCode)));
        assert!(matches!(Callback::parse("state=st&code=").code_for(&pending), Err(LoginError::MissingCode)));
    }
}

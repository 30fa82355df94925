//! The tokens themselves: [`TokenSet`], the secret newtypes and the expiry check.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::registered_client::RegisteredClient;

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Its `Debug` prints `[redacted]`; the value is reached only through
        /// [`secret`](Self::secret).
        #[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret value. Every read of a secret goes through here, so it is easy to audit.
            pub fn secret(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    };
}

secret_type!(
    /// An OAuth 2.0 access token.
    AccessToken
);
secret_type!(
    /// An OAuth 2.0 refresh token. Providers that rotate them accept each one exactly once.
    RefreshToken
);
secret_type!(
    /// An OAuth 2.0 client secret.
    ClientSecret
);
secret_type!(
    /// A registration access token (RFC 7591 §3.2.1, RFC 7592): the bearer credential for
    /// reading, changing or deleting a dynamic client registration.
    RegistrationAccessToken
);

/// What a token endpoint issued: an access token and what came with it.
///
/// Expiry is kept as an absolute point in time (`expires_in` from a token response is turned into
/// one when the response arrives), so a `TokenSet` can be persisted and read back after a restart.
/// It serialises with serde for the stores; its `Debug` never shows a secret.
///
/// ```
/// use std::time::Duration;
/// use reqwest_token_refresh::TokenSet;
///
/// let tokens = TokenSet::new("access")
///     .with_refresh_token("refresh")
///     .with_expires_in(Duration::from_secs(3600));
/// assert_eq!(tokens.access_token().secret(), "access");
/// assert!(!format!("{tokens:?}").contains("refresh\""));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSet {
    access_token: AccessToken,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<RefreshToken>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "unix_millis")]
    expires_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_type: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    extra: serde_json::Map<String, serde_json::Value>,
    /// The key the tokens are bound to, saved with them so that a restart refreshes with it.
    #[cfg(feature = "dpop")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_key: Option<crate::dpop::DpopKey>,
    /// The dynamically registered client the tokens were issued to, saved with them so that a
    /// restart refreshes as that client. Boxed: most sets have none, and a set is moved and
    /// cloned on every refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<Box<RegisteredClient>>,
}

impl TokenSet {
    /// Reads a token endpoint's successful answer (RFC 6749 §5.1), for tokens from a login run
    /// elsewhere: `expires_in` counts from now, every other field is kept as
    /// [`extra`](Self::extra). A provider that wraps its answer (Withings) is unwrapped first,
    /// with [`providers::withings_envelope`](crate::providers::withings_envelope) for instance.
    ///
    /// ```
    /// use reqwest_token_refresh::TokenSet;
    ///
    /// let body = br#"{"access_token":"a1","token_type":"Bearer","expires_in":3600,"refresh_token":"r1"}"#;
    /// let tokens = TokenSet::from_token_response(body)?;
    /// assert_eq!(tokens.refresh_token().map(|t| t.secret()), Some("r1"));
    /// # Ok::<(), reqwest_token_refresh::RefreshError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`RefreshError::InvalidResponse`](crate::RefreshError::InvalidResponse) when the body is
    /// not a usable token response; no secret from it appears in the error.
    pub fn from_token_response(body: &[u8]) -> Result<TokenSet, crate::RefreshError> {
        crate::source::response::parse_success(http::StatusCode::OK, body, None, SystemTime::now())
    }

    /// A token set holding only an access token (no refresh token, no known expiry).
    pub fn new(access_token: impl Into<AccessToken>) -> Self {
        Self {
            access_token: access_token.into(),
            refresh_token: None,
            expires_at: None,
            scope: None,
            token_type: None,
            extra: serde_json::Map::new(),
            #[cfg(feature = "dpop")]
            dpop_key: None,
            client: None,
        }
    }

    /// Sets the refresh token.
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_refresh_token(mut self, refresh_token: impl Into<RefreshToken>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Sets the expiry to `expires_in` from now, by the system clock.
    ///
    /// An expiry too far ahead for the platform's clock to represent (`Duration::MAX`, say) is
    /// no known expiry: the token is used until a server rejects it, which is what a lifetime
    /// that long means anyway, and what every store can persist.
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_at = SystemTime::now().checked_add(expires_in);
        self
    }

    /// Sets the expiry to an absolute time.
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the granted scope.
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Sets the token type (normally `Bearer`).
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = Some(token_type.into());
        self
    }

    /// Adds a provider-specific field from the token response (`userid`, `id_token`, ...).
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_extra(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.extra.insert(name.into(), value);
        self
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The refresh token, if the provider issued one.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// When the access token expires, if the provider said.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The granted scope, if the provider said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The token type, if the provider said.
    pub fn token_type(&self) -> Option<&str> {
        self.token_type.as_deref()
    }

    /// Provider-specific fields of the token response that have no field of their own here.
    pub fn extra(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.extra
    }

    /// Binds the set to the DPoP key its tokens were issued for (feature `dpop`): the key
    /// its requests and refreshes must prove possession of. Saved with the set by every store.
    /// A grant with DPoP on sets it on the tokens it gets; set it yourself on tokens from
    /// elsewhere, with the key their `DPoP` proofs were made with.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_dpop_key(mut self, key: crate::dpop::DpopKey) -> Self {
        self.dpop_key = Some(key);
        self
    }

    /// The DPoP key the tokens are bound to, if any (feature `dpop`).
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.dpop_key.as_ref()
    }

    /// Ties the set to the dynamically registered client its tokens were issued to (RFC 7591):
    /// every refresh (and revocation) of the set then authenticates as that client, with its id,
    /// secret and method, instead of the grant's own, and every store saves the registration with
    /// the set, so that a new process refreshes with it too. A grant with a
    /// [registered client](crate::RefreshTokenGrant::registered_client) sets it on the tokens it
    /// gets, from a login or a refresh; set it yourself on tokens from elsewhere.
    #[must_use = "returns the changed token set; on its own the call changes nothing"]
    pub fn with_client(mut self, client: RegisteredClient) -> Self {
        self.client = Some(Box::new(client));
        self
    }

    /// The dynamically registered client the tokens were issued to, if any.
    pub fn client(&self) -> Option<&RegisteredClient> {
        self.client.as_deref()
    }

    /// Whether the server issued these tokens bound to a DPoP key: its `token_type` is `DPoP`
    /// (RFC 9449 §5; compared without case, as RFC 6749 §5.1 has token types), whether or not
    /// the key is still here.
    pub fn is_dpop_bound(&self) -> bool {
        self.token_type.as_deref().is_some_and(|kind| kind.eq_ignore_ascii_case("DPoP"))
    }

    /// Keeps `previous`'s refresh token when this set came without one (RFC 6749 §6: the client
    /// keeps using the old refresh token unless the server issues a new one).
    pub(crate) fn inherit_refresh_token(mut self, previous: Option<&TokenSet>) -> Self {
        if self.refresh_token.is_none() {
            self.refresh_token = previous.and_then(|p| p.refresh_token.clone());
        }
        self
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Extra fields may hold secrets too (an `id_token`), so only their names are shown.
        let extra: Vec<&str> = self.extra.keys().map(String::as_str).collect();
        let mut debug = f.debug_struct("TokenSet");
        debug
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("token_type", &self.token_type)
            .field("extra", &extra);
        #[cfg(feature = "dpop")]
        debug.field("dpop_key", &self.dpop_key);
        debug.field("client", &self.client);
        debug.finish()
    }
}

/// How close a token is to its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Not expiring within the skew window (or no expiry known).
    Fresh,
    /// Still valid, but inside the skew window: refresh before use if possible.
    ExpiresSoon,
    /// Past its expiry.
    Expired,
}

/// The expiry check: a pure function of the expiry, the skew window and the current time.
pub(crate) fn freshness(expires_at: Option<SystemTime>, skew: Duration, now: SystemTime) -> Freshness {
    let Some(expires_at) = expires_at else {
        return Freshness::Fresh;
    };
    if now >= expires_at {
        Freshness::Expired
    } else if now.checked_add(skew).is_none_or(|edge| edge >= expires_at) {
        Freshness::ExpiresSoon
    } else {
        Freshness::Fresh
    }
}

/// The most of the skew window a token allows: half its lifetime as it was fetched (`None` when
/// its expiry is unknown). The window actually used is the configured one, capped at this: without
/// the cap a provider that issues tokens shorter than the window (20 s tokens, 30 s skew) would
/// make every request start a refresh.
pub(crate) fn skew_cap(fetched_at: SystemTime, expires_at: Option<SystemTime>) -> Option<Duration> {
    Some(expires_at?.duration_since(fetched_at).ok()? / 2)
}

/// Why an access token cannot be put in an `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    Empty,
    IllegalByte { position: usize },
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the access token is empty"),
            Self::IllegalByte { position } => write!(
                f,
                "the access token has a byte at position {position} that is not visible ASCII (a control character, space or non-ASCII byte), which an HTTP header cannot carry"
            ),
        }
    }
}

/// Checks that a token can be sent as `Authorization: Bearer <token>`.
///
/// Stricter than what a header allows (no spaces, no obs-text): a bearer token is a b64token
/// (RFC 6750 §2.1) in practice, and a space or a newline in one means the response was garbled.
pub(crate) fn check_header_safe(token: &str) -> Result<(), HeaderProblem> {
    if token.is_empty() {
        return Err(HeaderProblem::Empty);
    }
    match token.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        Some(position) => Err(HeaderProblem::IllegalByte { position }),
        None => Ok(()),
    }
}

/// The `Authorization` header value for a token, marked sensitive so that HTTP/2 HPACK does not
/// index it and `Debug` of the header map hides it.
pub(crate) fn bearer_header(token: &AccessToken) -> Result<HeaderValue, HeaderProblem> {
    check_header_safe(token.secret())?;
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.secret()))
        .map_err(|_| HeaderProblem::IllegalByte { position: 0 })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `Option<SystemTime>` as integer milliseconds since the Unix epoch.
mod unix_millis {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => {
                let millis = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
                s.serialize_u64(u64::try_from(millis).unwrap_or(u64::MAX))
            }
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let millis: Option<u64> = Option::deserialize(d)?;
        Ok(millis.and_then(|m| UNIX_EPOCH.checked_add(Duration::from_millis(m))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: Duration = Duration::from_secs(30);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn secrets_debug_as_redacted() {
        assert_eq!(format!("{:?}", AccessToken::new("a-secret")), "AccessToken([redacted])");
        assert_eq!(format!("{:?}", RefreshToken::new("r-secret")), "RefreshToken([redacted])");
        assert_eq!(format!("{:?}", ClientSecret::new("c-secret")), "ClientSecret([redacted])");
        assert_eq!(format!("{:?}", RegistrationAccessToken::new("t-secret")), "RegistrationAccessToken([redacted])");
    }

    #[test]
    fn token_set_debug_shows_no_secret_not_even_in_extra_fields() {
        let tokens = TokenSet::new("a-secret")
            .with_refresh_token("r-secret")
            .with_scope("offline")
            .with_extra("id_token", serde_json::json!("id-secret"));
        let shown = format!("{tokens:?} {tokens:#?}");
        for secret in ["a-secret", "r-secret", "id-secret"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("offline") && shown.contains("id_token"));
    }

    #[test]
    fn no_expiry_is_always_fresh() {
        assert_eq!(freshness(None, SKEW, at(1_000_000)), Freshness::Fresh);
    }

    #[test]
    fn outside_the_skew_window_is_fresh() {
        assert_eq!(freshness(Some(at(100)), SKEW, at(69)), Freshness::Fresh);
    }

    #[test]
    fn inside_the_skew_window_expires_soon() {
        assert_eq!(freshness(Some(at(100)), SKEW, at(70)), Freshness::ExpiresSoon);
        assert_eq!(freshness(Some(at(100)), SKEW, at(99)), Freshness::ExpiresSoon);
    }

    #[test]
    fn at_or_past_expiry_is_expired() {
        assert_eq!(freshness(Some(at(100)), SKEW, at(100)), Freshness::Expired);
        assert_eq!(freshness(Some(at(100)), SKEW, at(5000)), Freshness::Expired);
    }

    #[test]
    fn zero_skew_refreshes_only_at_expiry() {
        assert_eq!(freshness(Some(at(100)), Duration::ZERO, at(99)), Freshness::Fresh);
        assert_eq!(freshness(Some(at(100)), Duration::ZERO, at(100)), Freshness::Expired);
    }

    #[test]
    fn the_skew_window_is_at_most_half_the_tokens_lifetime() {
        let effective_skew =
            |fetched_at, expires_at| skew_cap(fetched_at, expires_at).map_or(SKEW, |cap| SKEW.min(cap));
        assert_eq!(effective_skew(at(0), Some(at(3600))), SKEW);
        assert_eq!(effective_skew(at(0), Some(at(20))), Duration::from_secs(10));
        assert_eq!(effective_skew(at(0), None), SKEW);
        assert_eq!(skew_cap(at(30), Some(at(20))), None, "fetched after it expired: the whole window");
        // A 20 s token published at 0 is fresh until 10 s, not refreshed on every request.
        let skew = effective_skew(at(0), Some(at(20)));
        assert_eq!(freshness(Some(at(20)), skew, at(5)), Freshness::Fresh);
        assert_eq!(freshness(Some(at(20)), skew, at(10)), Freshness::ExpiresSoon);
    }

    #[test]
    fn expires_in_sets_an_expiry_that_far_from_now() {
        let before = SystemTime::now();
        let expires_at = TokenSet::new("a").with_expires_in(Duration::from_secs(3600)).expires_at().unwrap();
        let after = SystemTime::now();
        assert!(expires_at >= before + Duration::from_secs(3600) && expires_at <= after + Duration::from_secs(3600));
        let now = TokenSet::new("a").with_expires_in(Duration::ZERO).expires_at().unwrap();
        assert!(now >= before && now <= SystemTime::now());
    }

    #[test]
    fn an_expires_in_too_far_to_represent_means_no_known_expiry() {
        for lifetime in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::from_secs(u64::MAX / 2)] {
            let tokens = TokenSet::new("a").with_expires_at(at(100)).with_expires_in(lifetime);
            assert_eq!(tokens.expires_at(), None, "{lifetime:?}");
            assert_eq!(freshness(tokens.expires_at(), SKEW, SystemTime::now()), Freshness::Fresh);
        }
    }

    #[test]
    fn serde_round_trip_keeps_everything() {
        let tokens = TokenSet::new("a")
            .with_refresh_token("r")
            .with_expires_at(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
            .with_scope("read write")
            .with_token_type("Bearer")
            .with_extra("userid", serde_json::json!(42));
        let json = serde_json::to_string(&tokens).unwrap();
        assert!(json.contains("\"expires_at\":1700000000123"), "{json}");
        let back: TokenSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tokens);
    }

    #[cfg(feature = "dpop")]
    #[test]
    fn the_dpop_key_round_trips_with_the_set_and_debug_shows_only_its_thumbprint() {
        let key = crate::dpop::DpopKey::generate().unwrap();
        let tokens = TokenSet::new("a").with_refresh_token("r").with_token_type("DPoP").with_dpop_key(key.clone());
        let json = serde_json::to_string(&tokens).unwrap();
        let back: TokenSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tokens);
        assert_eq!(back.dpop_key(), Some(&key));
        let shown = format!("{tokens:?} {tokens:#?}");
        let stored: serde_json::Value = serde_json::from_str(&json).unwrap();
        let d = stored["dpop_key"]["d"].as_str().unwrap();
        assert!(shown.contains(key.thumbprint()) && !shown.contains(d), "{shown}");
        // A set without a key serializes as before.
        assert!(!serde_json::to_string(&TokenSet::new("a")).unwrap().contains("dpop_key"));
    }

    #[test]
    fn the_registered_client_round_trips_with_the_set_and_debug_shows_no_secret_of_it() {
        let client = RegisteredClient::new("dyn-client-7")
            .with_client_secret("dyn-secret-7")
            .with_secret_expires_at(at(1_700_000_000));
        let tokens = TokenSet::new("a").with_refresh_token("r").with_client(client.clone());
        let json = serde_json::to_string(&tokens).unwrap();
        let back: TokenSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tokens);
        assert_eq!(back.client(), Some(&client));
        let shown = format!("{tokens:?} {tokens:#?}");
        assert!(shown.contains("dyn-client-7") && !shown.contains("dyn-secret-7"), "{shown}");
        // A set without a client serializes as before, and reads back without one.
        assert!(!serde_json::to_string(&TokenSet::new("a")).unwrap().contains("client"));
        assert_eq!(serde_json::from_str::<TokenSet>(r#"{"access_token":"a"}"#).unwrap().client(), None);
    }

    #[test]
    fn a_set_is_dpop_bound_by_its_token_type_in_any_case() {
        assert!(TokenSet::new("a").with_token_type("DPoP").is_dpop_bound());
        assert!(TokenSet::new("a").with_token_type("dpop").is_dpop_bound());
        assert!(!TokenSet::new("a").with_token_type("Bearer").is_dpop_bound());
        assert!(!TokenSet::new("a").is_dpop_bound());
    }

    #[test]
    fn missing_refresh_token_is_inherited_and_a_new_one_wins() {
        let old = TokenSet::new("a1").with_refresh_token("r1");
        let kept = TokenSet::new("a2").inherit_refresh_token(Some(&old));
        assert_eq!(kept.refresh_token().map(RefreshToken::secret), Some("r1"));
        let rotated = TokenSet::new("a3").with_refresh_token("r2").inherit_refresh_token(Some(&old));
        assert_eq!(rotated.refresh_token().map(RefreshToken::secret), Some("r2"));
    }

    #[test]
    fn tokens_with_control_characters_are_rejected_for_headers() {
        assert_eq!(check_header_safe("abc\ndef"), Err(HeaderProblem::IllegalByte { position: 3 }));
        assert_eq!(check_header_safe("a b"), Err(HeaderProblem::IllegalByte { position: 1 }));
        assert_eq!(check_header_safe("é"), Err(HeaderProblem::IllegalByte { position: 0 }));
        assert_eq!(check_header_safe(""), Err(HeaderProblem::Empty));
        assert_eq!(check_header_safe("abc.DEF-_~+/="), Ok(()));
    }

    #[test]
    fn bearer_header_is_sensitive() {
        let value = bearer_header(&AccessToken::new("abc")).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer abc");
    }
}

//! [`TokenKey`]: whose tokens a request uses.

use std::fmt;
use std::sync::Arc;

/// Names whose token set a request uses; put it on a request as an extension.
///
/// A backend that syncs data for many users holds one token set per user, all through one
/// client. Each key has its own token, generation, single flight, cool-down and terminal state:
/// one user's dead refresh token never blocks another user. Code with a single token set never
/// names a key: requests without one use [`TokenKey::default()`].
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use reqwest_token_refresh::TokenKey;
///
/// let response = client
///     .get("https://api.provider.example/v1/sleep")
///     .with_extension(TokenKey::new("user-42"))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey(Arc<str>);

impl TokenKey {
    /// The name of the key used by requests that name none: `default`.
    pub const DEFAULT_NAME: &'static str = "default";

    /// A key with the given name (a user id, an account id, ...).
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The key's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default key.
    pub(crate) fn is_default(&self) -> bool {
        &*self.0 == Self::DEFAULT_NAME
    }
}

impl Default for TokenKey {
    /// The default key. Every request without a key asks for it, so it is built once and shared.
    fn default() -> Self {
        static DEFAULT: std::sync::OnceLock<TokenKey> = std::sync::OnceLock::new();
        DEFAULT.get_or_init(|| Self::new(Self::DEFAULT_NAME)).clone()
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({:?})", &*self.0)
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TokenKey {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for TokenKey {
    fn from(name: String) -> Self {
        Self(Arc::from(name))
    }
}

//! [`RegisteredClient`]: what an authorization server said when it registered this client
//! dynamically (RFC 7591 §3.2.1), kept with the tokens it got.
//!
//! A client registered at run time has no credentials in its configuration: its id and secret
//! exist only in the registration's answer. Lose them and every refresh fails with
//! `invalid_client`, so the registration travels with the [`TokenSet`](crate::TokenSet) it logged
//! in with ([`TokenSet::with_client`](crate::TokenSet::with_client)) and every store saves the
//! two together. Registering over HTTP is [`DynamicRegistration`](crate::DynamicRegistration)'s
//! business; this module only holds the result.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::token::{ClientSecret, RegistrationAccessToken};

/// RFC 7591 §2's default `token_endpoint_auth_method`, when a registration does not name one:
/// `client_secret_basic`.
pub const DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD: &str = "client_secret_basic";

/// A client registered with an authorization server (RFC 7591 §3.2.1): its id, its secret if it
/// has one and until when, how it authenticates at the token endpoint, and how to manage the
/// registration (RFC 7592) if the server offers that.
///
/// From [`DynamicRegistration::register`](crate::DynamicRegistration::register), or made with
/// [`new`](Self::new) for a client registered elsewhere. Attach it to the tokens a login gets
/// ([`RefreshTokenGrant::registered_client`](crate::RefreshTokenGrant::registered_client) does that
/// for a [`Login`](crate::Login)), and every refresh of that set authenticates as this client,
/// whatever the grant says. Serialisable, for the stores; its `Debug` shows neither the secret nor
/// the registration access token.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use reqwest_token_refresh::RegisteredClient;
///
/// let client = RegisteredClient::new("s6BhdRkqt3")
///     .with_client_secret("cf136dc3c1fc93f31185e5885805d")
///     .with_secret_expires_at(SystemTime::now() + Duration::from_secs(3600));
/// assert!(!client.secret_expired_at(SystemTime::now()));
/// assert!(!format!("{client:?}").contains("cf136dc3"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClient {
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<ClientSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "unix_seconds")]
    client_id_issued_at: Option<SystemTime>,
    /// `None`: the secret never expires (RFC 7591's `0`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "unix_seconds")]
    client_secret_expires_at: Option<SystemTime>,
    token_endpoint_auth_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration_access_token: Option<RegistrationAccessToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration_client_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    metadata: Map<String, Value>,
}

impl RegisteredClient {
    /// A registration of `client_id` with no secret (a public client) that authenticates with
    /// [`DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD`] once it has one.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: None,
            client_id_issued_at: None,
            client_secret_expires_at: None,
            token_endpoint_auth_method: DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD.to_owned(),
            registration_access_token: None,
            registration_client_uri: None,
            registration_endpoint: None,
            metadata: Map::new(),
        }
    }

    /// Sets the client secret.
    #[must_use = "returns the changed registration; on its own the call changes nothing"]
    pub fn with_client_secret(mut self, secret: impl Into<ClientSecret>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// Sets when the secret expires (default: never).
    #[must_use = "returns the changed registration; on its own the call changes nothing"]
    pub fn with_secret_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.client_secret_expires_at = Some(expires_at);
        self
    }

    /// Sets how the client authenticates at the token endpoint: `client_secret_basic` (HTTP
    /// Basic), `client_secret_post` (in the body) or `none` (a public client, `client_id` in the
    /// body); any other method leaves the grant's [`ClientAuth`](crate::ClientAuth) in force.
    #[must_use = "returns the changed registration; on its own the call changes nothing"]
    pub fn with_token_endpoint_auth_method(mut self, method: impl Into<String>) -> Self {
        self.token_endpoint_auth_method = method.into();
        self
    }

    /// Sets the client metadata kept beside the registration (a client metadata document's
    /// members, say).
    pub(crate) fn with_metadata(mut self, metadata: Map<String, Value>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Reads a registration's answer (RFC 7591 §3.2.1) from `document`, registered at
    /// `registration_endpoint`; `asked` is the authentication method the request asked for, the
    /// default when the answer names none. The error says which member is wrong, never its value.
    pub(crate) fn from_response(
        document: Value,
        registration_endpoint: &str,
        asked: Option<&str>,
    ) -> Result<Self, String> {
        let Value::Object(mut document) = document else {
            return Err("the answer is not a JSON object".into());
        };
        let mut string = |name: &str| match document.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(_) => Err(format!("`{name}` is not a string")),
        };
        let client_id = string("client_id")?.filter(|id| !id.is_empty()).ok_or("the answer has no `client_id`")?;
        let client_secret = string("client_secret")?.map(ClientSecret::new);
        let token_endpoint_auth_method = string("token_endpoint_auth_method")?
            .or_else(|| asked.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD.to_owned());
        let registration_access_token = string("registration_access_token")?.map(RegistrationAccessToken::new);
        let registration_client_uri = string("registration_client_uri")?;
        let mut seconds = |name: &str| match document.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) => {
                number.as_u64().map(Some).ok_or_else(|| format!("`{name}` is not a whole number of seconds"))
            }
            Some(_) => Err(format!("`{name}` is not a number")),
        };
        let client_id_issued_at = seconds("client_id_issued_at")?.and_then(at_unix_seconds);
        // RFC 7591 §3.2.1: REQUIRED with a secret, `0` when it never expires. Servers that leave
        // it out are read as saying never: the token endpoint will say otherwise if it disagrees.
        let client_secret_expires_at =
            seconds("client_secret_expires_at")?.filter(|&s| s != 0).and_then(at_unix_seconds);
        Ok(Self {
            client_id,
            client_secret,
            client_id_issued_at,
            client_secret_expires_at,
            token_endpoint_auth_method,
            registration_access_token,
            registration_client_uri,
            registration_endpoint: Some(registration_endpoint.to_owned()),
            metadata: document,
        })
    }

    /// The client identifier.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret, if the server issued one (a public client has none).
    pub fn client_secret(&self) -> Option<&ClientSecret> {
        self.client_secret.as_ref()
    }

    /// When the server issued the client id, if it said.
    pub fn client_id_issued_at(&self) -> Option<SystemTime> {
        self.client_id_issued_at
    }

    /// When the secret expires; `None` when it never does (RFC 7591's `0`).
    pub fn client_secret_expires_at(&self) -> Option<SystemTime> {
        self.client_secret_expires_at
    }

    /// Whether the secret has expired at `now`: a client with one must register again, since the
    /// token endpoint will refuse it. A client without a secret never expires this way.
    pub fn secret_expired_at(&self, now: SystemTime) -> bool {
        self.client_secret.is_some() && self.client_secret_expires_at.is_some_and(|expires_at| now >= expires_at)
    }

    /// How the client authenticates at the token endpoint (`client_secret_basic`,
    /// `client_secret_post`, `none`, ...): as the server registered it, else as asked, else
    /// [`DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD`].
    pub fn token_endpoint_auth_method(&self) -> &str {
        &self.token_endpoint_auth_method
    }

    /// The token for managing the registration (RFC 7592), if the server issued one.
    pub fn registration_access_token(&self) -> Option<&RegistrationAccessToken> {
        self.registration_access_token.as_ref()
    }

    /// Where the registration can be managed (RFC 7592), if the server said.
    pub fn registration_client_uri(&self) -> Option<&str> {
        self.registration_client_uri.as_deref()
    }

    /// The registration endpoint the client was registered at, when it came from
    /// [`DynamicRegistration`](crate::DynamicRegistration).
    pub fn registration_endpoint(&self) -> Option<&str> {
        self.registration_endpoint.as_deref()
    }

    /// The rest of the server's answer: the client metadata as registered (`redirect_uris`,
    /// `grant_types`, `client_name`, ...).
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }
}

impl fmt::Debug for RegisteredClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The metadata is the client's public description, but a server may add members of its
        // own: only their names are shown.
        let metadata: Vec<&str> = self.metadata.keys().map(String::as_str).collect();
        f.debug_struct("RegisteredClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_id_issued_at", &self.client_id_issued_at)
            .field("client_secret_expires_at", &self.client_secret_expires_at)
            .field("token_endpoint_auth_method", &self.token_endpoint_auth_method)
            .field("registration_access_token", &self.registration_access_token)
            .field("registration_client_uri", &self.registration_client_uri)
            .field("registration_endpoint", &self.registration_endpoint)
            .field("metadata", &metadata)
            .finish()
    }
}

fn at_unix_seconds(seconds: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// `Option<SystemTime>` as whole seconds since the Unix epoch, as RFC 7591 writes its times.
mod unix_seconds {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => s.serialize_u64(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let seconds: Option<u64> = Option::deserialize(d)?;
        Ok(seconds.and_then(at_unix_seconds))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_default_method_is_what_its_doc_says() {
        assert_eq!(DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD, "client_secret_basic");
    }

    #[test]
    fn rfc_7591s_example_answer_is_read_with_zero_meaning_never() {
        let answer = json!({
            "client_id": "s6BhdRkqt3",
            "client_secret": "cf136dc3c1fc93f31185e5885805d",
            "client_id_issued_at": 2_893_256_800_u64,
            "client_secret_expires_at": 2_893_276_800_u64,
            "redirect_uris": ["https://client.example.org/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "My Example Client",
            "token_endpoint_auth_method": "client_secret_basic",
        });
        let client = RegisteredClient::from_response(answer, "https://server.example/register", None).unwrap();
        assert_eq!(client.client_id(), "s6BhdRkqt3");
        assert_eq!(client.client_secret().map(ClientSecret::secret), Some("cf136dc3c1fc93f31185e5885805d"));
        assert_eq!(client.client_id_issued_at(), Some(at(2_893_256_800)));
        assert_eq!(client.client_secret_expires_at(), Some(at(2_893_276_800)));
        assert!(!client.secret_expired_at(at(2_893_276_799)));
        assert!(client.secret_expired_at(at(2_893_276_800)));
        assert_eq!(client.registration_endpoint(), Some("https://server.example/register"));
        assert_eq!(client.metadata()["client_name"], "My Example Client");
        assert!(!client.metadata().contains_key("client_secret"), "the secret is not kept as metadata");

        let never = json!({"client_id": "a", "client_secret": "b-secret", "client_secret_expires_at": 0});
        let never = RegisteredClient::from_response(never, "u", Some("client_secret_post")).unwrap();
        assert_eq!(never.client_secret_expires_at(), None);
        assert!(!never.secret_expired_at(at(u32::MAX.into())));
        assert_eq!(never.token_endpoint_auth_method(), "client_secret_post", "as asked when not answered");
    }

    #[test]
    fn an_answer_that_is_not_a_registration_says_which_member_is_wrong_and_never_a_value() {
        let read = |answer: Value| RegisteredClient::from_response(answer, "u", None).unwrap_err();
        assert!(read(json!(["client_id"])).contains("not a JSON object"));
        assert!(read(json!({"client_secret": "hush-hush"})).contains("no `client_id`"));
        assert!(read(json!({"client_id": ""})).contains("no `client_id`"));
        assert!(read(json!({"client_id": 7})).contains("`client_id` is not a string"));
        let wrong = read(json!({"client_id": "a", "client_secret": "hush-hush", "client_secret_expires_at": "soon"}));
        assert!(wrong.contains("`client_secret_expires_at`") && !wrong.contains("hush-hush"), "{wrong}");
        assert!(read(json!({"client_id": "a", "client_id_issued_at": -5})).contains("whole number"));
    }

    #[test]
    fn a_public_client_never_expires_and_debug_shows_no_secret() {
        assert!(!RegisteredClient::new("public").with_secret_expires_at(at(0)).secret_expired_at(at(10)));
        let answer = json!({
            "client_id": "id-1",
            "client_secret": "client-secret-1",
            "registration_access_token": "reg-token-1",
            "registration_client_uri": "https://server.example/register/id-1",
        });
        let client = RegisteredClient::from_response(answer, "u", None).unwrap();
        assert_eq!(client.registration_access_token().map(RegistrationAccessToken::secret), Some("reg-token-1"));
        let shown = format!("{client:?} {client:#?}");
        assert!(!shown.contains("client-secret-1") && !shown.contains("reg-token-1"), "{shown}");
        assert!(shown.contains("id-1") && shown.contains("https://server.example/register/id-1"));
    }

    #[test]
    fn serde_round_trip_keeps_everything() {
        let answer = json!({
            "client_id": "id-1",
            "client_secret": "s-1",
            "client_id_issued_at": 1_700_000_000_u64,
            "client_secret_expires_at": 1_700_003_600_u64,
            "registration_access_token": "rat-1",
            "client_name": "app",
        });
        let client = RegisteredClient::from_response(answer, "https://as.example/register", None).unwrap();
        let json = serde_json::to_string(&client).unwrap();
        assert!(json.contains("\"client_secret_expires_at\":1700003600"), "{json}");
        let back: RegisteredClient = serde_json::from_str(&json).unwrap();
        assert_eq!(back, client);
        let bare = serde_json::to_string(&RegisteredClient::new("x")).unwrap();
        assert_eq!(bare, r#"{"client_id":"x","token_endpoint_auth_method":"client_secret_basic"}"#);
    }
}

//! The token endpoint call shared by every grant: client authentication, body encoding, its own
//! HTTP client, a capped read of the answer.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use tracing::Instrument as _;

#[cfg(feature = "private-key-jwt")]
use super::client_assertion::{CLIENT_ASSERTION_TYPE, ClientAssertionKey};
use super::response::{self, ResponseMapper};
use super::withings_signature::WithingsSignature;
use crate::clock::{self, Clock};
use crate::error::RefreshError;
use crate::registered_client::RegisteredClient;
use crate::token::{ClientSecret, TokenSet};

/// How long a token call may take, connection to last byte, unless set otherwise: 30 seconds.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest token-endpoint answer read, unless set otherwise: 64 KiB (65,536 bytes). Real token
/// responses are a few hundred bytes; a bigger answer is an error page or an attack, and is not
/// buffered whole.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
///
/// Not `Copy`: [`PrivateKeyJwt`](Self::PrivateKeyJwt) (feature `private-key-jwt`) holds a key,
/// and a feature must not take a trait away, so no variant is `Copy` whatever the features.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded client id and secret; the method every server must
    /// support, and the default.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as fields of the request body (WHOOP, Withings).
    RequestBody,
    /// `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): no secret is sent; each token
    /// request carries `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
    /// and a `client_assertion`, a JWT signed with this key just for that request (`iss` and
    /// `sub` the client id, `aud` the token URL, a random `jti`, `iat` now, `exp` a
    /// [lifetime](ClientAssertionKey::with_lifetime) later), and `client_id`. Needs a client
    /// id; a client secret, if set, is not sent.
    #[cfg(feature = "private-key-jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
    PrivateKeyJwt(ClientAssertionKey),
    /// Withings' signed requests: before each token call a one-time nonce from Withings'
    /// signature service, then `client_id`, `nonce` and an HMAC-SHA256 `signature` keyed by the
    /// client secret over the call's `action`, the client id and the nonce; the secret itself is
    /// never sent. Needs a client id, a client secret and an `action` parameter
    /// (`action=requesttoken`, which the Withings preset sets); see [`WithingsSignature`] and
    /// [`providers::withings_signed`](crate::providers::withings_signed).
    WithingsSignature(WithingsSignature),
}

/// How one token request proves the client's identity beyond its id, made afresh for each.
pub(super) enum ClientProof {
    /// The client secret (by HTTP Basic or in the body), or nothing for a public client.
    Secret,
    /// A signed JWT (`private_key_jwt`).
    #[cfg(feature = "private-key-jwt")]
    Assertion(String),
    /// A Withings nonce and the signature over it.
    WithingsSignature { nonce: String, signature: String },
}

impl ClientProof {
    /// The parts an error must not show: each proves the client's identity, once.
    pub(super) fn secrets(&self) -> Vec<String> {
        match self {
            ClientProof::Secret => Vec::new(),
            #[cfg(feature = "private-key-jwt")]
            ClientProof::Assertion(assertion) => vec![assertion.clone()],
            ClientProof::WithingsSignature { signature, .. } => vec![signature.clone()],
        }
    }
}

/// How the token request's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BodyEncoding {
    /// `application/x-www-form-urlencoded`, as RFC 6749 specifies; the default.
    #[default]
    Form,
    /// `application/json` (the WHOOP Partner API).
    Json,
}

/// Whether a token request carries the grant's scopes: a refresh or a client-credentials grant
/// asks for them; an authorization-code exchange does not (the scopes went to the authorize URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scoped {
    Yes,
    No,
}

/// What an authorization server's metadata says about PKCE (RFC 8414 §2's
/// `code_challenge_methods_supported`), kept by a grant made from it so that its logins can be
/// refused before the user is sent to a server that cannot complete them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PkceAdvertised {
    /// The methods, as listed.
    Listed(Vec<String>),
    /// No list, where its absence means no PKCE (the MCP path).
    Absent,
}

impl PkceAdvertised {
    /// Whether a login with `S256`, the only method this crate uses, may go ahead; the methods
    /// listed, if any, when not.
    pub(crate) fn check_s256(&self) -> Result<(), Option<Vec<String>>> {
        match self {
            PkceAdvertised::Listed(methods) if methods.iter().any(|m| m == "S256") => Ok(()),
            PkceAdvertised::Listed(methods) => Err(Some(methods.clone())),
            PkceAdvertised::Absent => Err(None),
        }
    }
}

/// Everything about calling one token endpoint, whatever the grant.
#[derive(Clone)]
pub(crate) struct TokenEndpoint {
    pub(crate) url: String,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<ClientSecret>,
    pub(crate) client_auth: ClientAuth,
    /// A dynamically registered client (RFC 7591) that replaces the id, secret and method
    /// above; a token set's own registered client replaces it in turn (see
    /// [`for_client`](Self::for_client)).
    pub(crate) registered: Option<RegisteredClient>,
    pub(crate) scopes: Vec<String>,
    /// What joins several scopes: a space (RFC 6749 §3.3), a comma at Withings.
    pub(crate) scope_delimiter: String,
    /// Where users authorize the client, for [`Login`](crate::Login); a refresh never uses it.
    pub(crate) authorize_url: Option<String>,
    /// What the authorization server's metadata said about PKCE, for a grant made from it;
    /// `None` for a grant configured by hand, whose logins are not checked.
    pub(crate) pkce: Option<PkceAdvertised>,
    /// Where tokens are revoked (RFC 7009), for [`TokenRefresh::revoke`](crate::TokenRefresh::revoke).
    pub(crate) revocation_url: Option<String>,
    pub(crate) params: Vec<(String, String)>,
    /// The resource indicators (RFC 8707) sent on every token request and a login's authorize
    /// URL: the APIs the tokens are for.
    pub(crate) resources: Vec<String>,
    pub(crate) encoding: BodyEncoding,
    pub(crate) mapper: Option<Arc<ResponseMapper>>,
    pub(crate) http: Option<reqwest::Client>,
    pub(crate) timeout: Duration,
    pub(crate) max_response_bytes: usize,
    /// `None`: the clock of the layer that runs the call, else the system clock.
    pub(crate) clock: Option<Arc<dyn Clock>>,
    /// DPoP on token requests, when turned on.
    #[cfg(feature = "dpop")]
    pub(crate) dpop: Option<super::dpop::DpopBinding>,
    own_http: Arc<OnceLock<Result<reqwest::Client, String>>>,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TokenEndpoint");
        debug
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_auth", &self.client_auth)
            .field("registered", &self.registered)
            .field("scopes", &self.scopes)
            .field("authorize_url", &self.authorize_url)
            .field("pkce", &self.pkce)
            .field("revocation_url", &self.revocation_url)
            .field("params", &self.params.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("resources", &self.resources)
            .field("encoding", &self.encoding)
            .field("maps_response", &self.mapper.is_some())
            .field("custom_http_client", &self.http.is_some())
            .field("timeout", &self.timeout);
        #[cfg(feature = "dpop")]
        debug.field("dpop", &self.dpop);
        debug.finish_non_exhaustive()
    }
}

impl TokenEndpoint {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            client_id: None,
            client_secret: None,
            client_auth: ClientAuth::default(),
            registered: None,
            scopes: Vec::new(),
            scope_delimiter: " ".to_owned(),
            authorize_url: None,
            pkce: None,
            revocation_url: None,
            params: Vec::new(),
            resources: Vec::new(),
            encoding: BodyEncoding::default(),
            mapper: None,
            http: None,
            timeout: DEFAULT_TOKEN_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            clock: None,
            #[cfg(feature = "dpop")]
            dpop: None,
            own_http: Arc::new(OnceLock::new()),
        }
    }

    /// Now, by the grant's own clock, else by the clock of the layer whose refresh this is (so a
    /// clock given once, to the layer, decides expiry on both sides), else by the system's.
    pub(crate) fn now(&self) -> std::time::SystemTime {
        match &self.clock {
            Some(clock) => clock.now(),
            None => crate::cache::flight_clock().unwrap_or_else(clock::system).now(),
        }
    }

    /// The client the token call goes through: the user's, or our own, which never passes through
    /// any middleware (so a refresh cannot recurse into this layer) and follows no redirects
    /// (so a client secret or refresh token is never replayed to another host).
    fn http(&self) -> Result<reqwest::Client, RefreshError> {
        if let Some(http) = &self.http {
            return Ok(http.clone());
        }
        self.own_http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("the token endpoint's HTTP client cannot be built: {e}"))
            })
            .clone()
            .map_err(RefreshError::Config)
    }

    /// The endpoint as it authenticates for `current`, the one mechanism by which a client other
    /// than the grant's configured one is used: `current`'s registered client if it has one, else
    /// the grant's [registered client](crate::RefreshTokenGrant::registered_client), else the
    /// grant itself (borrowed, unchanged). A registered client brings its id, its secret (or
    /// none, for a public client) and, when it names one this crate speaks, its method.
    ///
    /// # Errors
    ///
    /// [`RefreshError::RegistrationExpired`] when that client's secret has expired by the
    /// endpoint's clock: it is not sent, since the server would refuse it.
    pub(super) fn for_client(&self, current: Option<&TokenSet>) -> Result<Cow<'_, TokenEndpoint>, RefreshError> {
        let Some(client) = current.and_then(TokenSet::client).or(self.registered.as_ref()) else {
            return Ok(Cow::Borrowed(self));
        };
        if client.secret_expired_at(self.now()) {
            return Err(RefreshError::RegistrationExpired {
                client_id: client.client_id().to_owned(),
                expired_at: client.client_secret_expires_at().unwrap_or(std::time::UNIX_EPOCH),
            });
        }
        let mut endpoint = self.clone();
        endpoint.client_id = Some(client.client_id().to_owned());
        endpoint.client_secret = client.client_secret().cloned();
        if let Some(auth) = registered_auth(client.token_endpoint_auth_method()) {
            endpoint.client_auth = auth;
        }
        endpoint.registered = Some(client.clone());
        Ok(Cow::Owned(endpoint))
    }

    /// The client id a request names: the registered client's, else the grant's.
    pub(super) fn effective_client_id(&self) -> Option<&str> {
        self.registered.as_ref().map(RegisteredClient::client_id).or(self.client_id.as_deref())
    }

    /// Posts a grant and reads the answer, authenticated as the client
    /// [`for_client`](Self::for_client) picks for `current`, the token set being replaced; the
    /// tokens it gets carry that client when it is a registered one. `grant` holds the grant's
    /// own fields, in order. An error has every secret either holds redacted (contract point 20).
    pub(crate) async fn exchange(
        &self,
        grant: &[(&str, &str)],
        current: Option<&TokenSet>,
        scoped: Scoped,
    ) -> Result<TokenSet, RefreshError> {
        let endpoint = self.for_client(current)?;
        let tokens = endpoint.exchange_as_configured(grant, current, scoped).await?;
        Ok(match &endpoint.registered {
            Some(client) => tokens.with_client(client.clone()),
            None => tokens,
        })
    }

    /// [`exchange`](Self::exchange) with this endpoint's own client authentication.
    async fn exchange_as_configured(
        &self,
        grant: &[(&str, &str)],
        current: Option<&TokenSet>,
        scoped: Scoped,
    ) -> Result<TokenSet, RefreshError> {
        let grant_type = grant.iter().find(|(name, _)| *name == "grant_type").map_or("", |(_, value)| *value);
        // The token URL without user info or query, which could hold a credential.
        let endpoint = reqwest::Url::parse(&self.url)
            .map(|url| format!("{}{}", url.origin().ascii_serialization(), url.path()))
            .unwrap_or_default();
        let span = tracing::info_span!(
            "token_call",
            endpoint = %endpoint,
            grant_type,
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let mut proof_secrets = Vec::new();
        let answer = async {
            #[cfg(feature = "dpop")]
            if let Some(binding) = &self.dpop {
                let key = binding.key_for(current, grant_type == "refresh_token")?;
                return self.exchange_with_dpop(grant, scoped, binding, key, &mut proof_secrets).await;
            }
            let proof = self.client_proof().await?;
            proof_secrets = proof.secrets();
            self.exchange_unredacted(grant, scoped, &proof, None).await
        }
        .instrument(span.clone())
        .await;
        span.record("duration_ms", u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        answer.map_err(|mut err| {
            let mut secrets = self.secrets(grant, current);
            secrets.extend(proof_secrets);
            err.redact(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
            err
        })
    }

    /// The call with DPoP (RFC 9449 §5): a fresh proof of `key` in each request, one retry
    /// when the endpoint demands a nonce it has just given (§8), with a fresh client proof too
    /// (a client assertion's `jti` is single-use), and the tokens bound to `key`. What an error
    /// must not show goes into `secrets`.
    #[cfg(feature = "dpop")]
    async fn exchange_with_dpop(
        &self,
        grant: &[(&str, &str)],
        scoped: Scoped,
        binding: &super::dpop::DpopBinding,
        key: crate::dpop::DpopKey,
        secrets: &mut Vec<String>,
    ) -> Result<TokenSet, RefreshError> {
        let url = self.parsed_url()?;
        let mut retried = false;
        loop {
            let proof = self.client_proof().await?;
            secrets.extend(proof.secrets());
            let (dpop, nonce) = binding.token_request_proof(&key, &url, self.now())?;
            secrets.push(dpop.clone());
            let answer = self.exchange_unredacted(grant, scoped, &proof, Some((&dpop, &binding.nonces))).await;
            if !retried && binding.nonce_demanded(&answer, &url, nonce.as_deref()) {
                tracing::debug!("the token endpoint asked for a DPoP nonce; retrying once with it");
                retried = true;
                continue;
            }
            return answer.and_then(|tokens| super::dpop::bound(tokens, key));
        }
    }

    fn parsed_url(&self) -> Result<reqwest::Url, RefreshError> {
        reqwest::Url::parse(&self.url)
            .map_err(|e| RefreshError::Config(format!("the token URL {:?} does not parse: {e}", self.url)))
    }

    /// The resource indicators, each checked as RFC 8707 §2 requires: an absolute URI without a
    /// fragment. An error says which one is not.
    pub(crate) fn checked_resources(&self) -> Result<impl Iterator<Item = &str>, String> {
        for resource in &self.resources {
            check_resource(resource)?;
        }
        Ok(self.resources.iter().map(String::as_str))
    }

    /// What proves the client's identity in this request: made afresh for each one (a client
    /// assertion signed for it, a Withings nonce fetched and signed for it).
    pub(super) async fn client_proof(&self) -> Result<ClientProof, RefreshError> {
        match &self.client_auth {
            ClientAuth::Basic | ClientAuth::RequestBody => Ok(ClientProof::Secret),
            #[cfg(feature = "private-key-jwt")]
            ClientAuth::PrivateKeyJwt(key) => {
                let Some(client_id) = &self.client_id else {
                    return Err(RefreshError::Config(
                        "private_key_jwt needs a client id: it is the assertion's issuer and subject".into(),
                    ));
                };
                key.assertion(client_id, &self.url, self.now()).map(ClientProof::Assertion)
            }
            ClientAuth::WithingsSignature(signing) => {
                let (Some(client_id), Some(secret)) = (&self.client_id, &self.client_secret) else {
                    return Err(RefreshError::Config(
                        "a Withings signature needs a client id and a client secret to sign with".into(),
                    ));
                };
                let Some((_, action)) = self.params.iter().find(|(name, _)| name == "action") else {
                    return Err(RefreshError::Config(
                        "a Withings signature signs the call's `action`: add `.param(\"action\", \"requesttoken\")`"
                            .into(),
                    ));
                };
                let timestamp = self.now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
                let (nonce, signature) = signing.sign_call(self, client_id, secret, action, timestamp).await?;
                Ok(ClientProof::WithingsSignature { nonce, signature })
            }
        }
    }

    /// What must never appear in an error: the grant's values (a refresh token; `grant_type`
    /// is public), the client secret and the Basic credentials made from it, the values of extra
    /// parameters (as in `Debug`: an `assertion` or `client_assertion` is a credential, so an
    /// `audience` quoted in an error is redacted too), and the tokens being replaced. The client
    /// id is public and stays.
    pub(super) fn secrets(&self, grant: &[(&str, &str)], current: Option<&TokenSet>) -> Vec<String> {
        let mut secrets: Vec<String> =
            grant.iter().filter(|(name, _)| *name != "grant_type").map(|(_, value)| (*value).to_owned()).collect();
        if let Some(secret) = &self.client_secret {
            secrets.push(secret.secret().to_owned());
            if let Some(id) = &self.client_id {
                secrets.push(basic_credentials(id, secret));
            }
        }
        secrets.extend(self.params.iter().map(|(_, value)| value.clone()));
        if let Some(current) = current {
            secrets.push(current.access_token().secret().to_owned());
            secrets.extend(current.refresh_token().map(|token| token.secret().to_owned()));
        }
        secrets
    }

    /// The call itself, with the client's `proof` for it, made by the caller so that an error
    /// can be redacted of it, and with DPoP its `DPoP` header and the nonce memory that keeps
    /// the answer's `DPoP-Nonce`.
    async fn exchange_unredacted(
        &self,
        grant: &[(&str, &str)],
        scoped: Scoped,
        proof: &ClientProof,
        dpop: Option<DpopRequest<'_>>,
    ) -> Result<TokenSet, RefreshError> {
        #[cfg(not(feature = "dpop"))]
        let _: Option<DpopRequest<'_>> = dpop;
        let url = self.parsed_url()?;
        let mut fields: Vec<(&str, &str)> = grant.to_vec();
        let scope = self.scopes.join(&self.scope_delimiter);
        if scoped == Scoped::Yes && !scope.is_empty() {
            fields.push(("scope", &scope));
        }
        // RFC 8707 §2.2: on every token request, the code exchange and each refresh included, so
        // that each token is issued for (and only for) the APIs named.
        fields.extend(self.checked_resources().map_err(RefreshError::Config)?.map(|resource| ("resource", resource)));
        let request = self.request(http::Method::POST, url.clone())?.header(ACCEPT, "application/json");
        let request = self.authenticate(request, &mut fields, proof)?;
        fields.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        #[cfg_attr(not(feature = "dpop"), allow(unused_mut))]
        let mut request = with_body(request, &fields, self.encoding);
        #[cfg(feature = "dpop")]
        if let Some((proof, _)) = dpop {
            let mut value = HeaderValue::try_from(proof.as_str())
                .map_err(|_| RefreshError::Config("the DPoP proof cannot form a header".into()))?;
            value.set_sensitive(true);
            request = request.header("dpop", value);
        }

        let CappedAnswer { status, headers, body, cut } = self.send_capped(request).await?;
        // A server's nonce counts whatever the answer (RFC 9449 §8.2): the next proof carries it.
        #[cfg(feature = "dpop")]
        if let Some((_, nonces)) = dpop {
            nonces.observe(&url, &headers);
        }
        tracing::Span::current().record("status", status.as_u16());
        if cut {
            if !status.is_success() {
                // An error is judged by its status and `Retry-After`; the body is only shown.
                return Err(response::parse_failure(status, &headers, &body, self.now()));
            }
            return Err(RefreshError::InvalidResponse {
                status,
                reason: format!("the answer is larger than {} bytes", self.max_response_bytes),
                body: response::excerpt(&body),
                rotated_refresh_token: None,
            });
        }
        let now = self.now();
        if status.is_success() {
            response::parse_success(status, &body, self.mapper.as_deref(), now)
        } else {
            Err(response::parse_failure(status, &headers, &body, now))
        }
    }

    /// Adds the client's authentication to `request`, a call to this endpoint's server (a token
    /// call or a revocation, which authenticate alike: RFC 7009 §2.1), as the grant's
    /// [`ClientAuth`] says: a header, or `fields` of the body.
    pub(super) fn authenticate<'a>(
        &'a self,
        mut request: reqwest::RequestBuilder,
        fields: &mut Vec<(&'a str, &'a str)>,
        proof: &'a ClientProof,
    ) -> Result<reqwest::RequestBuilder, RefreshError> {
        match (&self.client_id, &self.client_secret, &self.client_auth, proof) {
            #[cfg(feature = "private-key-jwt")]
            (Some(id), _, _, ClientProof::Assertion(assertion)) => {
                // RFC 7521 §4.2: the assertion authenticates the client; `client_id` may come
                // along, and servers that look the client up before reading the assertion want it.
                fields.push(("client_id", id));
                fields.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                fields.push(("client_assertion", assertion));
            }
            (Some(id), _, _, ClientProof::WithingsSignature { nonce, signature }) => {
                fields.extend([("client_id", id.as_str()), ("nonce", nonce), ("signature", signature)]);
            }
            (Some(id), Some(secret), ClientAuth::Basic, _) => {
                request = request.header(AUTHORIZATION, basic_auth(id, secret)?);
            }
            (Some(id), secret, _, _) => {
                // A public client (no secret) identifies itself in the body whatever the method.
                fields.push(("client_id", id));
                if let Some(secret) = secret {
                    fields.push(("client_secret", secret.secret()));
                }
            }
            (None, _, _, _) => {}
        }
        Ok(request)
    }

    /// A request through the token client (see [`http`](Self::http)), bounded by the grant's
    /// timeout from connection to last byte. Every call this endpoint makes starts here: the
    /// token call, and the calls that prepare it (a Withings nonce).
    pub(crate) fn request(
        &self,
        method: http::Method,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, RefreshError> {
        Ok(self.http()?.request(method, url).timeout(self.timeout))
    }

    /// Sends `request` and reads its answer to the end or to
    /// [`max_response_bytes`](Self::max_response_bytes), whichever comes first: a larger answer is
    /// cut there, never buffered whole. The request's own timeout bounds an answer that never
    /// ends.
    pub(crate) async fn send_capped(&self, request: reqwest::RequestBuilder) -> Result<CappedAnswer, RefreshError> {
        let mut answer = request.send().await.map_err(transport)?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                body.extend_from_slice(&chunk[..self.max_response_bytes.saturating_sub(body.len())]);
                return Ok(CappedAnswer { status, headers, body, cut: true });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(CappedAnswer { status, headers, body, cut: false })
    }
}

/// `request` with `fields` as its body, encoded as `encoding` says.
pub(super) fn with_body(
    request: reqwest::RequestBuilder,
    fields: &[(&str, &str)],
    encoding: BodyEncoding,
) -> reqwest::RequestBuilder {
    match encoding {
        BodyEncoding::Form => {
            let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
            request.header(CONTENT_TYPE, "application/x-www-form-urlencoded").body(body)
        }
        BodyEncoding::Json => {
            let mut object = serde_json::Map::new();
            for (name, value) in fields {
                // A field sent more than once (several `resource`s, RFC 8707 §2) becomes an
                // array, since a JSON object cannot hold one name twice.
                match object.get_mut(*name) {
                    Some(Value::Array(values)) => values.push(Value::from(*value)),
                    Some(first) => *first = Value::Array(vec![first.take(), Value::from(*value)]),
                    None => {
                        object.insert((*name).to_owned(), Value::from(*value));
                    }
                }
            }
            request.header(CONTENT_TYPE, "application/json").body(Value::Object(object).to_string())
        }
    }
}

/// A token request's DPoP proof and the memory of the nonces its endpoint sends.
#[cfg(feature = "dpop")]
type DpopRequest<'a> = (&'a String, &'a crate::dpop::DpopNonces);
/// Without the feature, nothing: every call passes `None`.
#[cfg(not(feature = "dpop"))]
type DpopRequest<'a> = std::marker::PhantomData<&'a ()>;

/// An answer read by [`TokenEndpoint::send_capped`].
pub(crate) struct CappedAnswer {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: http::HeaderMap,
    /// The body, or its first `max_response_bytes` when `cut`.
    pub(crate) body: Vec<u8>,
    /// Whether the answer was longer than the cap (and `body` is its start).
    pub(crate) cut: bool,
}

fn transport(err: reqwest::Error) -> RefreshError {
    // reqwest's error may carry the token URL, never a secret: the body is not part of it.
    RefreshError::Transport(Arc::new(err.without_url()))
}

/// Whether `resource` may be a resource indicator (RFC 8707 §2): an absolute URI, without a
/// fragment.
pub(crate) fn check_resource(resource: &str) -> Result<(), String> {
    let url = url::Url::parse(resource)
        .map_err(|e| format!("the resource {resource:?} is not an absolute URI ({e}), as RFC 8707 §2 requires"))?;
    if url.fragment().is_some() {
        return Err(format!("the resource {resource:?} has a fragment, which RFC 8707 §2 forbids"));
    }
    Ok(())
}

/// The client authentication a registered `token_endpoint_auth_method` (RFC 7591 §2) means, when
/// it is one of the secret-or-nothing methods; `None` for any other (`private_key_jwt`, ...),
/// which leaves the grant's own [`ClientAuth`] in force.
fn registered_auth(method: &str) -> Option<ClientAuth> {
    match method {
        "client_secret_basic" => Some(ClientAuth::Basic),
        // A public client names itself in the body, as `client_secret_post` does with a secret.
        "client_secret_post" | "none" => Some(ClientAuth::RequestBody),
        _ => None,
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, RFC 6749 §2.3.1; marked sensitive.
fn basic_auth(id: &str, secret: &ClientSecret) -> Result<HeaderValue, RefreshError> {
    let mut value = HeaderValue::try_from(format!("Basic {}", basic_credentials(id, secret)))
        .map_err(|_| RefreshError::Config("the client credentials cannot form a header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// `base64(urlencode(id) ":" urlencode(secret))`: what an `Authorization: Basic` header carries,
/// and so what a server that echoes the request's headers shows.
fn basic_credentials(id: &str, secret: &ClientSecret) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(id), encode(secret.secret()));
    base64::engine::general_purpose::STANDARD.encode(credentials)
}

/// Builder methods shared by every grant that calls a [`TokenEndpoint`] held in `self.endpoint`.
macro_rules! endpoint_options {
    () => {
        /// Replaces the token URL (to point a provider preset at a test server, say).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn token_url(mut self, token_url: impl Into<String>) -> Self {
            self.endpoint.url = token_url.into();
            self
        }

        /// Sets the token revocation endpoint (RFC 7009), which
        /// [`TokenRefresh::revoke`](crate::TokenRefresh::revoke) calls with the same client
        /// authentication as token calls. [`ServerMetadata`](crate::ServerMetadata) sets it from a
        /// `revocation_endpoint` in the server's metadata. Default: none, and `revoke` fails with
        /// [`Error::Revocation`](crate::Error::Revocation), keeping the tokens.
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn revocation_url(mut self, revocation_url: impl Into<String>) -> Self {
            self.endpoint.revocation_url = Some(revocation_url.into());
            self
        }

        /// Sets the client id.
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
            self.endpoint.client_id = Some(client_id.into());
            self
        }

        /// Sets the client secret.
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn client_secret(mut self, client_secret: impl Into<$crate::ClientSecret>) -> Self {
            self.endpoint.client_secret = Some(client_secret.into());
            self
        }

        /// Authenticates as a dynamically registered client (RFC 7591; from
        /// [`DynamicRegistration::register`](crate::DynamicRegistration::register)): its id,
        /// secret and `token_endpoint_auth_method` replace the grant's
        /// [`client_id`](Self::client_id), [`client_secret`](Self::client_secret) and
        /// [`client_auth`](Self::client_auth) (a method other than `client_secret_basic`,
        /// `client_secret_post` or `none` keeps the grant's `client_auth`). The tokens the grant
        /// gets, from a [login](crate::Login)'s code exchange or a token call, carry the
        /// registration ([`TokenSet::client`](crate::TokenSet::client)), so that the store keeps
        /// it with them and a later process, whose grant need not know it, refreshes as this
        /// client. A token set's own registered client wins over this one.
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn registered_client(mut self, client: $crate::RegisteredClient) -> Self {
            self.endpoint.registered = Some(client);
            self
        }

        /// Sets how the client authenticates (default: HTTP Basic with the client id and secret);
        /// see [`ClientAuth`](crate::ClientAuth).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn client_auth(mut self, client_auth: $crate::ClientAuth) -> Self {
            self.endpoint.client_auth = client_auth;
            self
        }

        /// Adds a scope to request; several are joined with the
        /// [scope delimiter](Self::scope_delimiter).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn scope(mut self, scope: impl Into<String>) -> Self {
            self.endpoint.scopes.push(scope.into());
            self
        }

        /// Sets what joins several scopes (default a space, as RFC 6749 §3.3 says; Withings wants
        /// a comma).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn scope_delimiter(mut self, delimiter: impl Into<String>) -> Self {
            self.endpoint.scope_delimiter = delimiter.into();
            self
        }

        /// Adds an extra body field (`action=requesttoken`, `audience=...`).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.endpoint.params.push((name.into(), value.into()));
            self
        }

        /// Adds a resource indicator (RFC 8707): the URI of an API the tokens are for, such as an
        /// MCP server's `https://mcp.example/mcp`. It goes as `resource` on every token request
        /// (each refresh, each client-credentials grant, a [`Login`](crate::Login)'s code
        /// exchange) and on a login's authorize URL, so the authorization server can issue
        /// tokens that only that API accepts; call it again for several. It must be an absolute
        /// URI without a fragment (RFC 8707 §2): a token request with another is refused before
        /// anything is sent ([`RefreshError::Config`](crate::RefreshError::Config)). The grants
        /// of [`ResourceMetadata`](crate::ResourceMetadata) set the protected resource's own.
        /// It is not a secret, and not added to where the tokens may go (see
        /// [`api_origin`](Self::api_origin)).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn resource(mut self, resource: impl Into<String>) -> Self {
            self.endpoint.resources.push(resource.into());
            self
        }

        /// Sets the body encoding (default: form).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn encoding(mut self, encoding: $crate::BodyEncoding) -> Self {
            self.endpoint.encoding = encoding;
            self
        }

        /// Maps a successful answer before it is read as a token response: unwrap a provider's
        /// envelope (`{"status":0,"body":{...}}`), or turn an error carried in a 200 into an
        /// [`OAuthError`](crate::OAuthError).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn map_response<F>(mut self, map: F) -> Self
        where
            F: Fn(serde_json::Value) -> Result<serde_json::Value, $crate::OAuthError> + Send + Sync + 'static,
        {
            self.endpoint.mapper = Some(std::sync::Arc::new(map));
            self
        }

        /// Sends token requests through this client instead of the crate's own.
        ///
        /// The crate's own client follows no redirects; give yours the same policy
        /// (`redirect::Policy::none()`), so a refresh token is never replayed to another host. Never
        /// pass a client that goes through this middleware.
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn http_client(mut self, client: reqwest::Client) -> Self {
            self.endpoint.http = Some(client);
            self
        }

        /// Sets how long a token call may take, connection to last byte.
        ///
        /// Default: 30 seconds ([`DEFAULT_TOKEN_TIMEOUT`](crate::DEFAULT_TOKEN_TIMEOUT)).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.endpoint.timeout = timeout;
            self
        }

        /// Sets the largest answer read.
        ///
        /// Default: 64 KiB ([`DEFAULT_MAX_RESPONSE_BYTES`](crate::DEFAULT_MAX_RESPONSE_BYTES)).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn max_response_bytes(mut self, limit: usize) -> Self {
            self.endpoint.max_response_bytes = limit;
            self
        }

        /// Sets the clock that turns `expires_in` into an absolute expiry. Default: the clock of
        /// the layer the grant serves (its [`clock`](crate::TokenRefreshBuilder::clock)), or the
        /// system clock when called outside one (a [`Login`](crate::Login)'s exchange).
        #[must_use = "returns the changed grant; on its own the call changes nothing"]
        pub fn clock(mut self, clock: impl $crate::Clock) -> Self {
            self.endpoint.clock = Some(std::sync::Arc::new(clock));
            self
        }
    };
}
pub(crate) use endpoint_options;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_what_their_docs_say() {
        assert_eq!(DEFAULT_TOKEN_TIMEOUT, Duration::from_secs(30));
        assert_eq!(DEFAULT_MAX_RESPONSE_BYTES, 65_536, "64 KiB");
    }

    #[test]
    fn basic_auth_form_encodes_the_parts() {
        let value = basic_auth("my id:1", &ClientSecret::new("s&cret é")).unwrap();
        let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my+id%3A1:s%26cret+%C3%A9");
        assert!(value.is_sensitive());
    }

    #[test]
    fn a_field_sent_twice_is_repeated_in_a_form_and_an_array_in_json() {
        let fields = [
            ("grant_type", "client_credentials"),
            ("resource", "https://a.example"),
            ("resource", "https://b.example/x"),
        ];
        let body = |encoding| {
            let request = with_body(reqwest::Client::new().post("http://127.0.0.1:1/token"), &fields, encoding);
            let request = request.build().unwrap();
            String::from_utf8(request.body().unwrap().as_bytes().unwrap().to_vec()).unwrap()
        };
        assert_eq!(
            body(BodyEncoding::Form),
            "grant_type=client_credentials&resource=https%3A%2F%2Fa.example&resource=https%3A%2F%2Fb.example%2Fx"
        );
        let json: Value = serde_json::from_str(&body(BodyEncoding::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"grant_type": "client_credentials", "resource": ["https://a.example", "https://b.example/x"]})
        );
    }

    #[test]
    fn only_a_list_with_s256_lets_a_login_go_ahead() {
        let listed = |methods: &[&str]| PkceAdvertised::Listed(methods.iter().map(|&m| m.to_owned()).collect());
        assert_eq!(listed(&["S256"]).check_s256(), Ok(()));
        assert_eq!(listed(&["plain", "S256"]).check_s256(), Ok(()));
        assert_eq!(listed(&["plain"]).check_s256(), Err(Some(vec!["plain".to_owned()])));
        assert_eq!(listed(&[]).check_s256(), Err(Some(Vec::new())));
        assert_eq!(
            listed(&["s256"]).check_s256(),
            Err(Some(vec!["s256".to_owned()])),
            "method names are case-sensitive"
        );
        assert_eq!(PkceAdvertised::Absent.check_s256(), Err(None));
    }

    #[test]
    fn a_resource_indicator_is_an_absolute_uri_without_a_fragment() {
        for good in ["https://mcp.example/mcp", "https://api.example", "urn:example:resource", "https://a.example/?q=1"]
        {
            assert!(check_resource(good).is_ok(), "{good}");
        }
        for bad in ["/relative", "mcp.example", "", "https://mcp.example/mcp#tools"] {
            assert!(check_resource(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sets_registered_client_wins_over_the_grants_and_an_expired_one_is_not_used() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut grant = TokenEndpoint::new("https://as.example/token");
        grant.client_id = Some("configured".into());
        grant.client_secret = Some(ClientSecret::new("configured-secret"));
        grant.clock = Some(Arc::new(crate::ManualClock::new(now)));
        let used = |endpoint: &TokenEndpoint, current: Option<&TokenSet>| {
            let chosen = endpoint.for_client(current).unwrap();
            let secret = chosen.client_secret.as_ref().map(|s| s.secret().to_owned());
            (chosen.client_id.clone().unwrap_or_default(), secret, chosen.client_auth.clone())
        };
        assert_eq!(
            used(&grant, Some(&TokenSet::new("a"))),
            ("configured".into(), Some("configured-secret".into()), ClientAuth::Basic),
            "no registration: the grant's own credentials"
        );
        let posted = RegisteredClient::new("on-the-grant")
            .with_client_secret("grant-secret")
            .with_token_endpoint_auth_method("client_secret_post");
        let mut registered = grant.clone();
        registered.registered = Some(posted);
        assert_eq!(
            used(&registered, None),
            ("on-the-grant".into(), Some("grant-secret".into()), ClientAuth::RequestBody)
        );
        assert_eq!(registered.effective_client_id(), Some("on-the-grant"));
        let public =
            TokenSet::new("a").with_client(RegisteredClient::new("on-the-set").with_token_endpoint_auth_method("none"));
        assert_eq!(used(&registered, Some(&public)), ("on-the-set".into(), None, ClientAuth::RequestBody));
        let jwt = TokenSet::new("a")
            .with_client(RegisteredClient::new("jwt").with_token_endpoint_auth_method("private_key_jwt"));
        assert_eq!(used(&grant, Some(&jwt)).2, ClientAuth::Basic, "a method this crate does not map keeps the grant's");

        let expired = RegisteredClient::new("old").with_client_secret("old-secret").with_secret_expires_at(now);
        let err = grant.for_client(Some(&TokenSet::new("a").with_client(expired))).unwrap_err();
        assert!(
            matches!(&err, RefreshError::RegistrationExpired { client_id, expired_at } if client_id == "old" && *expired_at == now),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains("old-secret"));
    }

    #[test]
    fn registered_methods_map_to_client_auth() {
        assert_eq!(registered_auth("client_secret_basic"), Some(ClientAuth::Basic));
        assert_eq!(registered_auth("client_secret_post"), Some(ClientAuth::RequestBody));
        assert_eq!(registered_auth("none"), Some(ClientAuth::RequestBody));
        assert_eq!(registered_auth("private_key_jwt"), None);
        assert_eq!(registered_auth("tls_client_auth"), None);
    }

    #[test]
    fn debug_hides_the_client_secret_and_param_values() {
        let mut endpoint = TokenEndpoint::new("https://p.example/token");
        endpoint.client_secret = Some(ClientSecret::new("hush"));
        endpoint.params.push(("assertion".into(), "signed-secret".into()));
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("hush") && !shown.contains("signed-secret"), "{shown}");
    }
}

//! The first tokens: an authorization-code login with PKCE against the mock's authorization
//! endpoint, exchanged in each provider's dialect, installed through the store before use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest_token_refresh::testkit::{Dialect, Fault, MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{
    BodyEncoding, Error, Login, LoginError, MemoryStore, PendingLogin, RefreshError, RefreshTokenGrant, Revision,
    StoreError, StoreGuard, Stored, TokenKey, TokenRefresh, TokenSet, TokenStore, providers,
};
use tokio::sync::Notify;
use tokio::time::timeout;
use wiremock::Request;

use crate::helpers::{StoreExt, client_with, count, storm};

const BOUND: Duration = Duration::from_secs(10);
const REDIRECT: &str = "https://app.example/oauth/callback";

/// The provider's own preset, pointed at the mock.
fn preset(provider: &MockProvider) -> RefreshTokenGrant {
    let grant = match provider.dialect() {
        Dialect::Whoop => providers::whoop(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET),
        Dialect::Kroger => providers::kroger(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET),
        Dialect::Withings => providers::withings(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET),
        _ => RefreshTokenGrant::new("").client_id(MOCK_CLIENT_ID).client_secret(MOCK_CLIENT_SECRET),
    };
    grant.token_url(provider.token_url()).authorize_url(provider.authorize_url()).api_origin(provider.uri())
}

/// Starts a login, has the mock approve it, and returns what the callback brings back.
async fn approved(provider: &MockProvider, login: &Login) -> (PendingLogin, String) {
    let (url, pending) = login.start().unwrap();
    let callback = timeout(BOUND, provider.approve(&url)).await.expect("the authorize endpoint hung");
    (pending, callback)
}

/// The code exchange the mock saw: its form (or JSON) fields.
fn fields(request: &Request) -> Vec<(String, String)> {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&request.body) {
        Ok(object) => object.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned())).collect(),
        Err(_) => form_urlencoded::parse(&request.body).into_owned().collect(),
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn query(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// A full login in `provider`'s dialect with its preset: the authorize URL is right, the code
/// exchange is the grant's own shape, the tokens work against the API and then refresh.
async fn login_then_refresh(provider: MockProvider, grant: RefreshTokenGrant, scopes: &[&str], expected_scope: &str) {
    let login = scopes.iter().fold(grant.login(REDIRECT).unwrap(), |login, scope| login.scope(*scope));
    let (url, pending) = login.start().unwrap();
    assert_eq!(url.as_str().split('?').next(), Some(provider.authorize_url().as_str()));
    assert_eq!(query(&url, "response_type").as_deref(), Some("code"));
    assert_eq!(query(&url, "client_id").as_deref(), Some(MOCK_CLIENT_ID));
    assert_eq!(query(&url, "redirect_uri").as_deref(), Some(REDIRECT));
    assert_eq!(query(&url, "scope").as_deref(), Some(expected_scope));
    assert_eq!(query(&url, "state").as_deref(), Some(pending.state()));
    assert_eq!(query(&url, "code_challenge"), Some(pending.code_challenge()));
    assert_eq!(query(&url, "code_challenge_method").as_deref(), Some("S256"));
    assert!(!url.as_str().contains(MOCK_CLIENT_SECRET), "no secret in the authorize URL: {url}");

    let callback = timeout(BOUND, provider.approve(&url)).await.unwrap();
    assert!(callback.starts_with(REDIRECT), "{callback}");
    let tokens = timeout(BOUND, login.exchange(&pending, &callback)).await.unwrap().expect("the code is exchanged");
    assert!(tokens.refresh_token().is_some(), "a login grants a refresh token");
    assert_eq!(provider.stats().authorizations, 1);

    let exchange = &provider.token_requests()[0];
    let sent = fields(exchange);
    assert_eq!(field(&sent, "grant_type"), Some("authorization_code"));
    assert_eq!(field(&sent, "redirect_uri"), Some(REDIRECT));
    assert!(field(&sent, "code").is_some_and(|code| callback.contains(code)));
    assert_eq!(field(&sent, "code_verifier").map(str::len), Some(43));
    assert_eq!(field(&sent, "scope"), None, "the scopes went to the authorize URL, not to the exchange");

    let mut auth = TokenRefresh::builder(grant);
    if provider.dialect() == Dialect::Withings {
        auth = auth.token_rejected_when(providers::withings_token_rejected);
    }
    let auth = auth.build().unwrap();
    let key = TokenKey::new("user-1");
    timeout(BOUND, auth.set_tokens_for(&key, tokens.clone())).await.unwrap().unwrap();
    let url = provider.api_url("v1/data");
    let client = client_with(&auth);
    assert_eq!(client.get(&url).with_extension(key.clone()).send().await.unwrap().status(), 200);
    provider.expire_access_tokens();
    let _ = client.get(&url).with_extension(key.clone()).send().await.unwrap();
    assert_eq!(provider.stats().tokens_issued, 2, "the login's refresh token refreshes");
    assert_ne!(auth.tokens_for(&key).unwrap().access_token(), tokens.access_token());
}

#[tokio::test]
async fn a_standard_login_exchanges_the_code_with_http_basic_in_a_form() {
    let provider = MockProvider::builder().client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).start().await;
    let grant = preset(&provider);
    login_then_refresh(provider, grant.clone(), &["read", "write"], "read write").await;
}

#[tokio::test]
async fn a_login_whose_grant_speaks_json_exchanges_the_code_as_json() {
    let provider = MockProvider::builder().client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).start().await;
    let grant = preset(&provider).encoding(BodyEncoding::Json);
    login_then_refresh(provider, grant, &["read"], "read").await;
}

#[tokio::test]
async fn a_whoop_login_asks_for_offline_and_sends_the_credentials_in_the_body() {
    let provider = MockProvider::whoop().await;
    let grant = preset(&provider);
    login_then_refresh(provider, grant, &["read:recovery"], "offline read:recovery").await;
}

#[tokio::test]
async fn a_kroger_login_exchanges_the_code_with_http_basic() {
    let provider = MockProvider::kroger().await;
    let grant = preset(&provider);
    login_then_refresh(provider, grant, &["cart.basic:write"], "cart.basic:write").await;
    // The exchange is checked in `login_then_refresh`; Kroger refuses a secret in the body, so a
    // success proves it went by HTTP Basic.
}

#[tokio::test]
async fn a_withings_login_joins_scopes_with_commas_and_unwraps_the_envelope() {
    let provider = MockProvider::withings().await;
    let grant = preset(&provider);
    login_then_refresh(provider, grant, &["user.metrics", "user.activity"], "user.metrics,user.activity").await;
}

#[tokio::test]
async fn the_presets_know_their_providers_authorize_urls() {
    for (grant, url) in [
        (providers::whoop("id", "secret"), providers::WHOOP_AUTHORIZE_URL),
        (providers::kroger("id", "secret"), providers::KROGER_AUTHORIZE_URL),
        (providers::withings("id", "secret"), providers::WITHINGS_AUTHORIZE_URL),
    ] {
        let (start, _) = grant.login(REDIRECT).unwrap().start().unwrap();
        assert!(start.as_str().starts_with(&format!("{url}?")), "{start}");
    }
    let no_url = RefreshTokenGrant::new("https://p.example/token").login(REDIRECT);
    assert!(matches!(no_url, Err(LoginError::Config(_))));
    let bad_redirect = providers::kroger("id", "secret").login("not a url");
    assert!(matches!(bad_redirect, Err(LoginError::Config(_))));
}

#[tokio::test]
async fn a_callback_with_another_state_is_refused_before_any_token_call() {
    let provider = MockProvider::start().await;
    let login = preset(&provider).login(REDIRECT).unwrap();
    let (_, callback) = approved(&provider, &login).await;
    let (_, other) = login.start().unwrap();
    let err = login.exchange(&other, &callback).await.unwrap_err();
    assert!(matches!(err, LoginError::StateMismatch), "{err:?}");
    assert_eq!(provider.stats().token_calls, 0, "a forged callback sends nothing");
}

#[tokio::test]
async fn a_code_works_once_for_its_own_verifier_and_a_second_use_revokes_what_it_granted() {
    let provider = MockProvider::start().await;
    let login = preset(&provider).login(REDIRECT).unwrap();

    // Another verifier with the right state: the code is refused (RFC 7636 §4.6).
    let (pending, callback) = approved(&provider, &login).await;
    let stolen = PendingLogin::from_parts(pending.state(), "x".repeat(43));
    let refused = login.exchange(&stolen, &callback).await.unwrap_err();
    assert!(
        matches!(&refused, LoginError::Exchange(RefreshError::Protocol { error: Some(e), .. }) if e.error == "invalid_grant"),
        "{refused:?}"
    );

    let (pending, callback) = approved(&provider, &login).await;
    let tokens = login.exchange(&pending, &callback).await.unwrap();
    let api = || reqwest::Client::new().get(provider.api_url("me")).bearer_auth(tokens.access_token().secret()).send();
    assert_eq!(api().await.unwrap().status(), 200);
    let again = login.exchange(&pending, &callback).await.unwrap_err();
    assert!(matches!(again, LoginError::Exchange(RefreshError::Protocol { .. })), "{again:?}");
    assert_eq!(api().await.unwrap().status(), 401, "a replayed code revokes the tokens it granted");
}

#[tokio::test]
async fn a_denied_authorization_is_a_typed_error() {
    let provider = MockProvider::start().await;
    let login = preset(&provider).login(REDIRECT).unwrap();
    let (_, pending) = login.start().unwrap();
    let callback =
        format!("{REDIRECT}?error=access_denied&error_description=the+user+declined&state={}", pending.state());
    match login.exchange(&pending, &callback).await {
        Err(LoginError::Denied { error, description }) => {
            assert_eq!(error, "access_denied");
            assert_eq!(description.as_deref(), Some("the user declined"));
        }
        other => panic!("{other:?}"),
    }
    // The mock refuses a login without PKCE by sending the user back with an error.
    let mut plain = provider.authorize_url();
    plain.push_str(&format!("?response_type=code&client_id=c&redirect_uri={REDIRECT}&state=s"));
    let back = provider.approve(&url::Url::parse(&plain).unwrap()).await;
    assert!(back.contains("error=invalid_request"), "{back}");
    assert_eq!(provider.stats().authorizations, 0);
}

#[tokio::test]
async fn a_failed_exchange_shows_no_code_verifier_or_secret_whatever_the_provider_echoes() {
    let provider = MockProvider::builder().client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).start().await;
    let login = preset(&provider).login(REDIRECT).unwrap();
    let (pending, callback) = approved(&provider, &login).await;
    let code = url::Url::parse(&callback).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let verifier = serde_json::to_value(&pending).unwrap()["code_verifier"].as_str().unwrap().to_owned();
    let echo = format!(
        r#"{{"error":"invalid_grant","error_description":"code {code} with verifier {verifier} for {MOCK_CLIENT_SECRET}"}}"#
    );
    provider.fail_next_token_calls(
        1,
        Fault::Body { status: 400, content_type: "application/json".into(), body: echo.into() },
    );
    let err = login.exchange(&pending, &callback).await.unwrap_err();
    let shown = format!("{err} {err:?} {:?}", std::error::Error::source(&err).map(ToString::to_string));
    for secret in [code.as_str(), verifier.as_str(), MOCK_CLIENT_SECRET] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(shown.contains("invalid_grant"), "{shown}");
}

/// A memory store whose saves wait at a gate while `gated` is set.
#[derive(Debug, Clone, Default)]
struct GatedSave {
    inner: MemoryStore,
    gated: Arc<AtomicBool>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

#[async_trait]
impl TokenStore for GatedSave {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.inner.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        if self.gated.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        self.inner.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.inner.remove(key, replaces).await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        crate::helpers::lock_through(self, &self.inner, key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logins_tokens_are_saved_before_any_request_uses_them() {
    let provider = MockProvider::start().await;
    let grant = preset(&provider);
    let login = grant.login(REDIRECT).unwrap();
    let (pending, callback) = approved(&provider, &login).await;
    let tokens = login.exchange(&pending, &callback).await.unwrap();

    let store = GatedSave::default();
    store.gated.store(true, Ordering::SeqCst);
    let auth = TokenRefresh::builder(grant).store(store.clone()).build().unwrap();
    let key = TokenKey::new("user-7");
    let install = tokio::spawn({
        let (auth, key, tokens) = (auth.clone(), key.clone(), tokens.clone());
        async move { auth.set_tokens_for(&key, tokens).await }
    });
    timeout(BOUND, store.entered.notified()).await.expect("the login's tokens are being saved");
    // A request for the key meanwhile finds no tokens it may use yet: none are durable.
    let client = client_with(&auth);
    let early = client.get(provider.api_url("me")).with_extension(key.clone()).send().await;
    assert!(early.is_err(), "{early:?}");
    assert_eq!(provider.stats().api_calls, 0, "no request used the tokens while their save was running");
    store.release.notify_one();
    timeout(BOUND, install).await.unwrap().unwrap().unwrap();
    let after = client.get(provider.api_url("me")).with_extension(key.clone()).send().await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(store.inner.get(&key).await.unwrap().as_ref(), Some(&tokens));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_storm_revocation_and_login_again() {
    let provider = MockProvider::kroger().await;
    let grant = preset(&provider);
    let login = grant.login(REDIRECT).unwrap();
    let store = MemoryStore::new();
    let auth = TokenRefresh::builder(grant).store(store.clone()).build().unwrap();
    let client = client_with(&auth);
    let key = TokenKey::new("shopper");
    let url = provider.api_url("v1/cart");

    let (pending, callback) = approved(&provider, &login).await;
    auth.set_tokens_for(&key, login.exchange(&pending, &callback).await.unwrap()).await.unwrap();
    provider.expire_access_tokens();
    let statuses = storm(&client, &url, 50, Some(key.clone())).await;
    assert_eq!(count(&statuses, 200), 50);
    assert_eq!(provider.stats().token_calls, 2, "the exchange, then one refresh for the storm");

    provider.revoke_all();
    let err = client.get(&url).with_extension(key.clone()).send().await.unwrap_err();
    assert!(matches!(Error::from_middleware(&err), Some(Error::ReauthorizationRequired { .. })), "{err:?}");

    let (pending, callback) = approved(&provider, &login).await;
    auth.set_tokens_for(&key, login.exchange(&pending, &callback).await.unwrap()).await.unwrap();
    assert_eq!(client.get(&url).with_extension(key.clone()).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().authorizations, 2);
    assert_eq!(store.get(&key).await.unwrap(), auth.tokens_for(&key), "the re-login is what the store holds");
}

#[test]
fn a_token_response_from_elsewhere_is_read_into_a_token_set() {
    let body = br#"{"access_token":"a1","token_type":"bearer","expires_in":60,"refresh_token":"r1","user":"u"}"#;
    let tokens = TokenSet::from_token_response(body).unwrap();
    assert_eq!(tokens.access_token().secret(), "a1");
    assert_eq!(tokens.refresh_token().unwrap().secret(), "r1");
    assert!(tokens.expires_at().is_some());
    assert_eq!(tokens.extra().get("user"), Some(&serde_json::json!("u")));
    let err = TokenSet::from_token_response(br#"{"token_type":"bearer","refresh_token":"r-secret"}"#).unwrap_err();
    assert!(matches!(&err, RefreshError::InvalidResponse { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("r-secret"));
}

#[tokio::test]
async fn the_mock_refuses_what_a_real_authorization_server_refuses() {
    let clock = reqwest_token_refresh::ManualClock::new(std::time::SystemTime::now());
    let provider = MockProvider::builder()
        .dialect(Dialect::Withings)
        .client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .clock(clock.clone())
        .start()
        .await;
    let grant = preset(&provider).clock(clock.clone());

    // Told to the user, never redirected (RFC 6749 §4.1.2.1): no redirect URI, another client.
    let authorize = |query: &str| url::Url::parse(&format!("{}?{query}", provider.authorize_url())).unwrap();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for query in [
        "response_type=code&client_id=mock-client",
        "response_type=code&client_id=someone-else&redirect_uri=https%3A%2F%2Fa.example%2F",
        "response_type=code&client_id=mock-client&redirect_uri=relative%2Fpath",
        "response_type=code&client_id=mock-client&client_id=mock-client&redirect_uri=https%3A%2F%2Fa.example%2F",
    ] {
        assert_eq!(browser.get(authorize(query)).send().await.unwrap().status(), 400, "{query}");
    }
    // Redirected back with an error, the state kept: another response type, PKCE `plain`.
    let back = provider
        .approve(&authorize(
            "response_type=token&client_id=mock-client&redirect_uri=https%3A%2F%2Fa.example%2F&state=s1",
        ))
        .await;
    assert_eq!(back, "https://a.example/?error=unsupported_response_type&state=s1");
    let plain = "response_type=code&client_id=mock-client&redirect_uri=https%3A%2F%2Fa.example%2F&code_challenge=abc&code_challenge_method=plain";
    assert!(provider.approve(&authorize(plain)).await.contains("error=invalid_request"));
    assert_eq!(provider.stats().authorizations, 0);

    // A code for another redirect URI is refused.
    let (pending, callback) = approved(&provider, &grant.login(REDIRECT).unwrap()).await;
    let elsewhere = grant.login("https://other.example/callback").unwrap();
    assert!(matches!(elsewhere.exchange(&pending, &callback).await, Err(LoginError::Exchange(_))));

    // Withings' codes live 30 seconds.
    let login = grant.login(REDIRECT).unwrap();
    let (pending, callback) = approved(&provider, &login).await;
    clock.advance(Duration::from_secs(30));
    let late = login.exchange(&pending, &callback).await.unwrap_err();
    assert!(
        matches!(&late, LoginError::Exchange(RefreshError::Protocol { error: Some(e), .. }) if e.error == "invalid_grant"),
        "{late:?}"
    );
    let (pending, callback) = approved(&provider, &login).await;
    clock.advance(Duration::from_secs(29));
    assert!(login.exchange(&pending, &callback).await.is_ok(), "a code exchanged within its 30 seconds works");
    assert_eq!(provider.stats().authorizations, 3);
}

//! Revocation (RFC 7009): `TokenRefresh::revoke` revokes at the provider, removes the key's tokens
//! from the store and leaves the key failing fast until `set_tokens`; a revocation endpoint that
//! fails leaves everything as it was, with a typed error; no refresh in flight and no replica
//! sharing the store brings the revoked tokens back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest_token_refresh::testkit::{Fault, MockProvider};
use reqwest_token_refresh::{
    ClientAuth, ClientCredentials, Error, FileStore, MemoryStore, RefreshError, Revision, ServerMetadata, StoreError,
    StoreGuard, Stored, TokenKey, TokenRefresh, TokenSet, TokenState, TokenStore,
};
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{StoreExt, client_with, counter, eventually, grant, replay_token_request};

/// Far more than a revocation takes on a loaded machine; far less than forever.
const BOUND: Duration = Duration::from_secs(30);

/// A provider that requires client authentication, as real ones do at both endpoints.
async fn provider() -> MockProvider {
    MockProvider::builder().client_credentials("client", "secret").start().await
}

/// A layer on `provider` that can revoke, starting from `tokens`.
fn revoking(provider: &MockProvider, tokens: TokenSet) -> reqwest_token_refresh::TokenRefreshBuilder {
    TokenRefresh::builder(grant(provider).revocation_url(provider.revocation_url())).initial_tokens(tokens)
}

/// A fresh directory of this test's own.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rtr-revoke-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The form fields of a request the mock received.
fn form(request: &wiremock::Request) -> HashMap<String, String> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

/// What an error shows: `Display` and `Debug` down its `source()` chain.
fn shown(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(err);
    while let Some(err) = next {
        text.push_str(&format!("{err} | {err:?} | {err:#?}\n"));
        next = err.source();
    }
    text
}

#[tokio::test]
async fn revoke_then_a_request_fails_fast_with_no_network_call() {
    let provider = provider().await;
    let (fired, hook_calls) = counter();
    let auth = revoking(&provider, provider.issue_tokens())
        .on_reauthorization_required(move |key, reason| {
            assert_eq!(key, &TokenKey::default());
            assert!(matches!(reason, RefreshError::Revoked), "{reason}");
            fired.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("v1/me");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    timeout(BOUND, auth.revoke()).await.expect("bounded").expect("revoked");
    assert_eq!(provider.stats().revocation_calls, 1);
    assert_eq!(provider.stats().tokens_revoked, 1);
    assert!(auth.tokens().is_none(), "the tokens are gone from memory");
    assert!(matches!(auth.state(), TokenState::ReauthorizationRequired { reason: RefreshError::Revoked }));
    assert_eq!(hook_calls(), 1, "the terminal hook fires once");

    let before = (provider.stats(), provider.server().received_requests().await.unwrap_or_default().len());
    let fail_fast = auth.stats().fail_fast;
    for _ in 0..10 {
        let err = client.get(&url).send().await.unwrap_err();
        match Error::from_middleware(&err) {
            Some(Error::ReauthorizationRequired { reason: RefreshError::Revoked, .. }) => {}
            other => panic!("expected the revoked key's terminal error, got {other:?}"),
        }
    }
    let after = (provider.stats(), provider.server().received_requests().await.unwrap_or_default().len());
    assert_eq!(after, before, "no request reached the provider or its API");
    assert_eq!(auth.stats().fail_fast - fail_fast, 10);
    assert_eq!(hook_calls(), 1);
}

#[tokio::test]
async fn the_provider_really_revoked_the_refresh_token_and_its_access_tokens() {
    let provider = provider().await;
    let tokens = provider.issue_tokens();
    let auth = revoking(&provider, tokens.clone()).build().unwrap();
    timeout(BOUND, auth.revoke()).await.unwrap().unwrap();

    // The request, as RFC 7009 §2.1 has it, authenticated like a token call (HTTP Basic here).
    let sent = provider.revocation_requests();
    assert_eq!(sent.len(), 1);
    let fields = form(&sent[0]);
    assert_eq!(fields.get("token").map(String::as_str), tokens.refresh_token().map(|r| r.secret()));
    assert_eq!(fields.get("token_type_hint").map(String::as_str), Some("refresh_token"));
    assert!(sent[0].headers.get("authorization").is_some_and(|v| v.to_str().unwrap().starts_with("Basic ")));
    assert!(!fields.contains_key("client_secret"), "one client authentication method");

    // A refresh with the old refresh token: refused. The old access token: refused by the API.
    let refresh_token = tokens.refresh_token().unwrap().secret();
    let replay = replay_token_request(
        &provider,
        format!("grant_type=refresh_token&refresh_token={refresh_token}&client_id=client&client_secret=secret").into(),
    )
    .await;
    assert_eq!(replay.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&replay.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_grant");
    let api = reqwest::Client::new().get(provider.api_url("v1/me")).bearer_auth(tokens.access_token().secret());
    assert_eq!(timeout(BOUND, api.send()).await.unwrap().unwrap().status(), 401);
}

#[tokio::test]
async fn a_client_that_sends_its_secret_in_the_body_revokes_that_way() {
    let provider = provider().await;
    let grant = grant(&provider).client_auth(ClientAuth::RequestBody).revocation_url(provider.revocation_url());
    let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_tokens()).build().unwrap();
    timeout(BOUND, auth.revoke()).await.unwrap().unwrap();
    let sent = provider.revocation_requests();
    let fields = form(&sent[0]);
    assert_eq!((fields["client_id"].as_str(), fields["client_secret"].as_str()), ("client", "secret"));
    assert!(sent[0].headers.get("authorization").is_none());
    assert_eq!(provider.stats().tokens_revoked, 1);
}

#[tokio::test]
async fn revoking_a_set_without_a_refresh_token_revokes_its_access_token() {
    let provider = provider().await;
    let grant = ClientCredentials::new(provider.token_url())
        .client_id("client")
        .client_secret("secret")
        .api_origin(provider.uri())
        .revocation_url(provider.revocation_url());
    let auth = TokenRefresh::builder(grant).build().unwrap();
    let client = client_with(&auth);
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);
    let access = auth.tokens().expect("fetched").access_token().secret().to_owned();

    timeout(BOUND, auth.revoke()).await.unwrap().unwrap();
    let fields = form(&provider.revocation_requests()[0]);
    assert_eq!((fields["token"].as_str(), fields["token_type_hint"].as_str()), (access.as_str(), "access_token"));
    let api = reqwest::Client::new().get(provider.api_url("v1/me")).bearer_auth(&access);
    assert_eq!(timeout(BOUND, api.send()).await.unwrap().unwrap().status(), 401, "the provider revoked it");
    assert!(client.get(provider.api_url("v1/me")).send().await.is_err(), "and the layer holds it no more");
}

#[tokio::test]
async fn revoke_removes_the_keys_tokens_from_the_file_store() {
    let path = temp_dir("file-store").join("tokens.json");
    let provider = provider().await;
    let (alice, bob) = (TokenKey::new("alice"), TokenKey::new("bob"));
    let store = FileStore::new(&path);
    store.put(&alice, &provider.issue_tokens()).await.unwrap();
    store.put(&bob, &provider.issue_tokens()).await.unwrap();
    let alices = store.get(&alice).await.unwrap().unwrap();
    let auth = TokenRefresh::builder(grant(&provider).revocation_url(provider.revocation_url()))
        .store(FileStore::new(&path))
        .build()
        .unwrap();
    let client = client_with(&auth);

    timeout(BOUND, auth.revoke_for(&alice)).await.unwrap().unwrap();

    // Read back by another store on the same file, as another process would.
    let reread = FileStore::new(&path);
    assert!(reread.load(&alice).await.unwrap().is_none(), "the store no longer holds the key's tokens");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(alices.refresh_token().unwrap().secret()), "the revoked refresh token left the file");
    assert!(!text.contains(alices.access_token().secret()));
    assert!(reread.load(&bob).await.unwrap().is_some(), "other keys keep theirs");
    let bobs = client.get(provider.api_url("v1/me")).with_extension(bob.clone()).send().await.unwrap();
    assert_eq!(bobs.status(), 200, "and keep working");
    assert!(auth.state_for(&alice).is_reauthorization_required());
}

#[tokio::test]
async fn set_tokens_after_revoke_makes_the_key_work_again() {
    let provider = provider().await;
    let store = MemoryStore::new();
    let auth = revoking(&provider, provider.issue_tokens()).store(store.clone()).build().unwrap();
    let client = client_with(&auth);
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);
    timeout(BOUND, auth.revoke()).await.unwrap().unwrap();
    assert!(client.get(provider.api_url("v1/me")).send().await.is_err());

    let fresh = provider.issue_tokens();
    timeout(BOUND, auth.set_tokens(fresh.clone())).await.unwrap().unwrap();
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);
    let stored = store.load(&TokenKey::default()).await.unwrap().expect("saved over the removal");
    assert_eq!(stored.tokens.access_token(), fresh.access_token());
    assert_eq!(stored.revision, Revision::new(3), "seed, removal, the new login");
    assert!(matches!(auth.state(), TokenState::Ready { .. }));
}

#[tokio::test]
async fn a_failing_revocation_endpoint_keeps_the_tokens_and_the_key_working() {
    let provider = provider().await;
    // An endpoint that never answers in time, mounted over the mock's for the one case.
    let hung = Mock::given(method("POST"))
        .and(path("/oauth/revoke"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3600)))
        .up_to_n_times(1);
    let unsupported = Fault::Body {
        status: 400,
        content_type: "application/json".into(),
        body: br#"{"error":"unsupported_token_type"}"#.to_vec(),
    };
    let store = MemoryStore::new();
    let tokens = provider.issue_tokens();
    let auth = TokenRefresh::builder(
        grant(&provider).revocation_url(provider.revocation_url()).timeout(Duration::from_millis(300)),
    )
    .initial_tokens(tokens.clone())
    .store(store.clone())
    .build()
    .unwrap();
    let client = client_with(&auth);
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);
    let stored_before = store.load(&TokenKey::default()).await.unwrap();

    let check = |err: &Error, what: &str| {
        assert!(matches!(err, Error::Revocation { .. }), "{what}: {err:?}");
    };
    provider.fail_next_revocation_calls(1, Fault::Status(500));
    let err = timeout(BOUND, auth.revoke()).await.unwrap().unwrap_err();
    check(&err, "500");
    assert!(matches!(&err, Error::Revocation { source: RefreshError::Protocol { status, .. }, .. } if *status == 500));

    provider.fail_next_revocation_calls(1, Fault::RateLimited { retry_after: Duration::from_secs(7) });
    let err = timeout(BOUND, auth.revoke()).await.unwrap().unwrap_err();
    check(&err, "429");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "the server's Retry-After reaches the caller");

    provider.fail_next_revocation_calls(1, unsupported);
    let err = timeout(BOUND, auth.revoke()).await.unwrap().unwrap_err();
    match &err {
        Error::Revocation { source, .. } => {
            assert_eq!(source.oauth_error().map(|e| e.error.as_str()), Some("unsupported_token_type"))
        }
        other => panic!("{other:?}"),
    }

    hung.mount(provider.server()).await;
    let err = timeout(BOUND, auth.revoke()).await.expect("the grant's timeout ends the wait").unwrap_err();
    check(&err, "timeout");
    assert!(matches!(&err, Error::Revocation { source: RefreshError::Transport(_), .. }), "{err:?}");

    let dead_port = TokenRefresh::builder(grant(&provider).revocation_url("http://127.0.0.1:1/oauth/revoke"))
        .initial_tokens(tokens.clone())
        .build()
        .unwrap();
    assert_eq!(client_with(&dead_port).get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);
    let err = timeout(BOUND, dead_port.revoke()).await.unwrap().unwrap_err();
    check(&err, "dead port");
    assert!(matches!(&err, Error::Revocation { source: RefreshError::Transport(_), .. }), "{err:?}");
    assert_eq!(dead_port.tokens().map(|t| t.access_token().clone()), Some(tokens.access_token().clone()));

    assert_eq!(provider.stats().tokens_revoked, 0, "nothing was revoked");
    assert_eq!(auth.tokens().map(|t| t.access_token().clone()), Some(tokens.access_token().clone()), "in memory");
    assert_eq!(store.load(&TokenKey::default()).await.unwrap(), stored_before, "and in the store");
    assert!(matches!(auth.state(), TokenState::Ready { .. }));
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200, "the key still works");
    provider.expire_access_tokens();
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200, "and refreshes");

    // A grant with no revocation endpoint: a typed error too, and nothing sent.
    let without = TokenRefresh::builder(grant(&provider)).initial_tokens(provider.issue_tokens()).build().unwrap();
    let calls = provider.stats().revocation_calls;
    let err = timeout(BOUND, without.revoke()).await.unwrap().unwrap_err();
    assert!(matches!(&err, Error::Revocation { source: RefreshError::Config(_), .. }), "{err:?}");
    assert_eq!(provider.stats().revocation_calls, calls);
    let response = client_with(&without).get(provider.api_url("v1/me")).send().await.unwrap();
    assert_eq!(response.status(), 200, "and the key works");
}

#[tokio::test]
async fn a_failed_revocation_never_shows_the_client_secret_or_the_tokens() {
    let provider = MockProvider::builder().client_credentials("client", "s3cret-client-value").start().await;
    let tokens = provider.issue_tokens();
    let (access, refresh) =
        (tokens.access_token().secret().to_owned(), tokens.refresh_token().unwrap().secret().to_owned());
    let basic = base64_basic("client", "s3cret-client-value");
    // A provider that echoes what it was sent, as gateways do.
    let echo = serde_json::json!({
        "error": "invalid_request",
        "error_description": format!("cannot revoke {refresh} (access {access}) for s3cret-client-value, Basic {basic}"),
        "error_uri": format!("https://p.example/why?token={refresh}"),
    });
    Mock::given(method("POST"))
        .and(path("/oauth/revoke"))
        .respond_with(ResponseTemplate::new(400).set_body_json(echo))
        .mount(provider.server())
        .await;
    let grant = grant(&provider).client_secret("s3cret-client-value").revocation_url(provider.revocation_url());
    let auth = TokenRefresh::builder(grant).initial_tokens(tokens).build().unwrap();

    let err = timeout(BOUND, auth.revoke()).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Revocation { .. }), "{err:?}");
    let text = shown(&err);
    for secret in [access.as_str(), refresh.as_str(), "s3cret-client-value", basic.as_str()] {
        assert!(!text.contains(secret), "{secret} shown in {text}");
    }
    assert!(text.contains("[redacted]"), "{text}");
}

fn base64_basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_during_a_refresh_in_flight_does_not_bring_the_tokens_back() {
    let provider = MockProvider::builder()
        .client_credentials("client", "secret")
        .token_latency(Duration::from_millis(300))
        .start()
        .await;
    let store = MemoryStore::new();
    let auth = revoking(&provider, provider.issue_tokens()).store(store.clone()).build().unwrap();
    let client = client_with(&auth);
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);

    provider.expire_access_tokens();
    let request = crate::helpers::spawn_get(&client, provider.api_url("v1/me"));
    eventually("the refresh is running", || matches!(auth.state(), TokenState::Refreshing { .. })).await;
    timeout(BOUND, auth.revoke()).await.unwrap().unwrap();
    // The request that started the refresh ends one way or the other, within its bound.
    let _ = timeout(BOUND, request).await.expect("the request ends");

    // The refresh's tokens were the newest when the revocation ran: those were revoked.
    assert_eq!(provider.stats().tokens_issued, 1, "the refresh ran");
    assert_eq!(provider.stats().tokens_revoked, 1);
    let refreshed_token = form(&provider.revocation_requests()[0])["token"].clone();
    let replay = replay_token_request(
        &provider,
        format!("grant_type=refresh_token&refresh_token={refreshed_token}&client_id=client&client_secret=secret")
            .into(),
    )
    .await;
    assert_eq!(replay.status(), 400, "the refreshed refresh token is dead at the provider");

    // Nothing came back, in memory or in the store, now or after the flight's answer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(auth.tokens().is_none());
    assert!(matches!(auth.state(), TokenState::ReauthorizationRequired { reason: RefreshError::Revoked }));
    assert!(store.load(&TokenKey::default()).await.unwrap().is_none());
    assert!(client.get(provider.api_url("v1/me")).send().await.is_err());
}

#[tokio::test]
async fn discovery_fills_the_revocation_endpoint_from_the_mocks_metadata() {
    let provider = provider().await;
    let metadata = timeout(BOUND, ServerMetadata::discover(provider.issuer())).await.unwrap().unwrap();
    assert_eq!(metadata.revocation_endpoint(), Some(provider.revocation_url().as_str()));
    let grant = metadata.refresh_token_grant().client_id("client").client_secret("secret").api_origin(provider.uri());
    assert!(format!("{grant:?}").contains(&provider.revocation_url()), "the grant took it: {grant:?}");
    let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_tokens()).build().unwrap();
    timeout(BOUND, auth.revoke()).await.unwrap().unwrap();
    assert_eq!(provider.stats().tokens_revoked, 1);
    assert!(auth.state().is_reauthorization_required());
}

#[tokio::test]
async fn a_replica_sharing_the_store_does_not_bring_revoked_tokens_back() {
    let path = temp_dir("replica").join("tokens.json");
    let provider = provider().await;
    FileStore::new(&path).put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap();
    let replica = |_: ()| {
        TokenRefresh::builder(grant(&provider).revocation_url(provider.revocation_url()))
            .store(FileStore::new(&path))
            .build()
            .unwrap()
    };
    let (here, there) = (replica(()), replica(()));
    let there_client = client_with(&there);
    assert_eq!(there_client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200, "loaded");

    timeout(BOUND, here.revoke()).await.unwrap().unwrap();

    // The other replica's token is dead at the provider: its refresh, from the store (empty) or
    // from its copy (revoked), ends needing a login, and writes nothing back.
    let err = there_client.get(provider.api_url("v1/me")).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).is_some_and(Error::is_reauthorization_required), "{err:?}");
    assert!(there.state().is_reauthorization_required());
    assert!(FileStore::new(&path).load(&TokenKey::default()).await.unwrap().is_none());
}

/// A store over a shared memory store whose saves fail while `failing` is set: a replica whose
/// store is out for a while.
#[derive(Debug, Clone)]
struct Outage {
    inner: MemoryStore,
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl TokenStore for Outage {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.inner.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::io("writing tokens", std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
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
async fn a_replicas_pending_save_retry_does_not_save_a_revoked_set_over_the_removal() {
    let provider = provider().await;
    let shared = MemoryStore::new();
    shared.put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let there = TokenRefresh::builder(grant(&provider))
        .store(Outage { inner: shared.clone(), failing: failing.clone() })
        .min_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
        .build()
        .unwrap();
    let here = TokenRefresh::builder(grant(&provider).revocation_url(provider.revocation_url()))
        .store(shared.clone())
        .build()
        .unwrap();
    let there_client = client_with(&there);
    assert_eq!(there_client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);

    // The other replica refreshes while its store is out: the new set is used from memory, and
    // its save retried.
    failing.store(true, Ordering::SeqCst);
    provider.expire_access_tokens();
    assert_eq!(there_client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);
    assert!(there.stats().store_failures > 0);

    // This replica revokes what the store holds (the older set: its family is the same grant).
    timeout(BOUND, here.revoke()).await.unwrap().unwrap();
    assert!(shared.load(&TokenKey::default()).await.unwrap().is_none());

    // The store comes back: the retry finds the removal and gives up, going terminal itself.
    failing.store(false, Ordering::SeqCst);
    eventually("the other replica learns of the revocation", || {
        matches!(there.state(), TokenState::ReauthorizationRequired { reason: RefreshError::Revoked })
    })
    .await;
    assert!(shared.load(&TokenKey::default()).await.unwrap().is_none(), "the revoked set was not saved back");
    assert!(there.tokens().is_none());
    assert!(there_client.get(provider.api_url("v1/me")).send().await.is_err());
}

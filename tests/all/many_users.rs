//! Many users through one client (contract point 17 at scale): each key refreshes once per
//! expiry, loads from the store once, and survives eviction from a bounded cache.

use std::sync::atomic::Ordering;

use futures::future::join_all;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{MemoryStore, TokenKey, TokenRefresh, TokenSet};

use crate::helpers::StoreExt;
use crate::helpers::{CountingStore, client_with, grant};

/// Sends `per_user` concurrent requests for every user at once; returns how many succeeded.
async fn storm_across(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
    users: &[TokenKey],
    per_user: usize,
) -> usize {
    let requests = users.iter().flat_map(|user| {
        (0..per_user).map(move |_| {
            let request = client.get(url).with_extension(user.clone());
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        })
    });
    join_all(requests).await.into_iter().filter(|ok| *ok).count()
}

async fn seeded_store(provider: &MockProvider, users: &[TokenKey]) -> CountingStore {
    let store = CountingStore::default();
    for user in users {
        store.tokens.put(user, &provider.issue_tokens()).await.unwrap();
    }
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_across_1000_users_makes_1000_token_calls_and_loads_each_user_once() {
    let provider = MockProvider::start().await;
    let users: Vec<TokenKey> = (0..1000).map(|i| TokenKey::new(format!("user-{i}"))).collect();
    let store = seeded_store(&provider, &users).await;
    provider.expire_access_tokens();
    let auth = TokenRefresh::builder(grant(&provider)).store(store.clone()).build().unwrap();

    let ok = storm_across(&client_with(&auth), &provider.api_url("me"), &users, 5).await;

    assert_eq!(ok, 5000);
    assert_eq!(provider.stats().token_calls, 1000, "one token call per user");
    assert_eq!(provider.stats().reuse_detected, 0);
    // One load per user on first use (bursts of 5 share it), plus the re-read under the lock in
    // each user's single refresh.
    assert_eq!(store.loads.load(Ordering::SeqCst), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_smaller_than_the_working_set_still_refreshes_once_per_user_per_expiry() {
    let provider = MockProvider::start().await;
    let users: Vec<TokenKey> = (0..600).map(|i| TokenKey::new(format!("user-{i}"))).collect();
    let store = seeded_store(&provider, &users).await;
    let auth = TokenRefresh::builder(grant(&provider)).store(store.clone()).max_cached_keys(100).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    for round in 1..=2u64 {
        provider.expire_access_tokens();
        // Fifty users at a time, so that earlier ones go idle and are evicted as others arrive,
        // and come back from the store in the next round.
        let mut ok = 0;
        for batch in users.chunks(50) {
            ok += storm_across(&client, &url, batch, 3).await;
            assert!(auth.cached_keys() <= 100 + 16 + 50, "the cache stays bounded: {}", auth.cached_keys());
        }
        assert_eq!(ok, 1800, "round {round}");
        assert_eq!(provider.stats().token_calls, 600 * round, "one token call per user per expiry, round {round}");
    }
    assert_eq!(provider.stats().reuse_detected, 0, "an evicted user's rotated token was never lost");
    let evicted_and_reloaded = store.loads.load(Ordering::SeqCst);
    assert!(evicted_and_reloaded > 2 * 600, "users were evicted and loaded again: {evicted_and_reloaded} loads");
    // Keys in use during a storm are pinned; once idle they make room for the next new key.
    let newcomer = TokenKey::new("newcomer");
    store.tokens.put(&newcomer, &provider.issue_tokens()).await.unwrap();
    assert_eq!(client.get(&url).with_extension(newcomer).send().await.unwrap().status(), 200);
    assert!(auth.cached_keys() <= 100 + 16 + 1, "idle keys were evicted near the capacity: {}", auth.cached_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_key_beside_a_busy_default_key_carries_its_own_token_never_the_defaults() {
    use wiremock::matchers::{header, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    for (token, whose) in [("default-access", "default"), ("user-access", "user-7"), ("other-access", "user-8")] {
        Mock::given(path("/api"))
            .and(header("authorization", format!("Bearer {token}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_string(whose))
            .mount(&server)
            .await;
    }
    let store = MemoryStore::new();
    store.put(&TokenKey::new("user-7"), &TokenSet::new("user-access")).await.unwrap();
    let auth = TokenRefresh::builder(reqwest_token_refresh::RefreshTokenGrant::new(format!("{}/token", server.uri())))
        .initial_tokens(TokenSet::new("default-access"))
        .store(store.clone())
        .allow_origin(server.uri())
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = format!("{}/api", server.uri());
    let whose = |key: Option<&str>| {
        let mut request = client.get(&url);
        if let Some(key) = key {
            request = request.with_extension(TokenKey::new(key));
        }
        async move { request.send().await.unwrap().text().await.unwrap() }
    };

    // The default key is loaded and its token ready: the fast path knows it.
    assert_eq!(whose(None).await, "default");
    assert_eq!(whose(None).await, "default");
    // A user key, first and again (its token ready on the fast path too), never gets the default's.
    assert_eq!(whose(Some("user-7")).await, "user-7");
    assert_eq!(whose(Some("user-7")).await, "user-7");
    auth.set_tokens_for(&TokenKey::new("user-8"), TokenSet::new("other-access")).await.unwrap();
    assert_eq!(whose(Some("user-8")).await, "user-8");
    assert_eq!(whose(None).await, "default");
    // And the default's initial tokens were never seeded into the users' keys.
    assert_eq!(store.get(&TokenKey::new("user-7")).await.unwrap().unwrap().access_token().secret(), "user-access");
    assert_eq!(auth.tokens_for(&TokenKey::new("user-7")).unwrap().access_token().secret(), "user-access");
}

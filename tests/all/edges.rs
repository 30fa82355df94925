//! The edges the per-key state machine and the one store protocol close: an overtaken refresh that
//! must not spend the tokens a user just installed, a token source that never answers, a dead key
//! that picks up tokens another replica saved, an evicted key that keeps its cool-down, a wall
//! clock stepped back, short-lived tokens through a shared store, a retried save that lands late,
//! and an API that rejects every token. Every wait is bounded.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use reqwest_token_refresh::testkit::{Fault, MockProvider};
use reqwest_token_refresh::{
    Error, FileStore, ManualClock, MemoryStore, RefreshError, Revision, StoreError, StoreGuard, Stored, TokenKey,
    TokenRefresh, TokenSet, TokenSource, TokenState, TokenStore,
};
use tokio::time::timeout;
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{CountingStore, StoreExt, client_with, count, eventually, grant, layer, spawn_get, storm};

const BOUND: Duration = Duration::from_secs(10);

fn key() -> TokenKey {
    TokenKey::default()
}

/// The refresh tokens the provider was shown, in order.
fn presented_refresh_tokens(provider: &MockProvider) -> Vec<String> {
    provider
        .token_requests()
        .iter()
        .filter_map(|request| {
            form_urlencoded::parse(&request.body)
                .find(|(name, _)| name == "refresh_token")
                .map(|(_, value)| value.into_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_overtaken_by_set_tokens_while_waiting_for_the_lock_never_spends_the_users_new_refresh_token() {
    let provider = MockProvider::start().await;
    let store = MemoryStore::new();
    store.put(&key(), &provider.issue_expired_tokens()).await.unwrap();
    let auth = layer(&provider, provider.issue_expired_tokens()).store(store.clone()).build().unwrap();
    let client = client_with(&auth);

    // Another process holds the store's lock (a slow save): the refresh the request starts waits.
    let mut other = store.lock(&key()).await.unwrap().unwrap();
    let request = spawn_get(&client, provider.api_url("me"));
    eventually("the refresh waits for the lock", || matches!(auth.state(), TokenState::Refreshing { .. })).await;

    // The user authorizes again meanwhile: set_tokens does not wait for the lock.
    let user = provider.issue_tokens();
    timeout(BOUND, auth.set_tokens(user.clone())).await.expect("set_tokens waited behind the lock").unwrap();
    let read = other.load().await.unwrap().unwrap();
    assert_eq!(read.tokens, user, "the user's tokens are in the store before the refresh runs");
    other.unlock().await.unwrap();

    assert_eq!(timeout(BOUND, request).await.expect("request hung").unwrap().unwrap(), 200);
    assert_eq!(provider.stats().token_calls, 0, "the refresh adopted the user's tokens instead of spending them");
    let user_refresh = user.refresh_token().unwrap().secret().to_owned();
    assert!(!presented_refresh_tokens(&provider).contains(&user_refresh));
    assert_eq!(auth.tokens().as_ref(), Some(&user));
    assert_eq!(store.get(&key()).await.unwrap().as_ref(), Some(&user));

    // Still logged in: the next expiry refreshes with the user's refresh token, once, and works.
    provider.expire_access_tokens();
    assert_eq!(client.get(provider.api_url("me")).send().await.unwrap().status(), 200);
    assert_eq!(presented_refresh_tokens(&provider), [user_refresh]);
    assert_eq!(provider.stats().reuse_detected, 0);
}

/// A token source that never answers, counting its calls.
#[derive(Debug, Default)]
struct Hangs(AtomicUsize);

#[async_trait]
impl TokenSource for Hangs {
    async fn fetch(&self, _current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        pending().await
    }
}

/// A token source that calls its token endpoint through a client wrapped in the very layer it
/// serves, on an origin that layer sends tokens to (the mock's token endpoint and API share one).
#[derive(Debug, Default)]
struct ThroughItsOwnLayer {
    client: std::sync::OnceLock<reqwest_middleware::ClientWithMiddleware>,
    token_url: String,
}

#[async_trait]
impl TokenSource for ThroughItsOwnLayer {
    async fn fetch(&self, current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
        let refresh = current.and_then(TokenSet::refresh_token).map(|token| token.secret().to_owned());
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", &refresh.unwrap_or_default())
            .append_pair("client_id", "client")
            .append_pair("client_secret", "secret")
            .finish();
        let client = self.client.get().expect("set once the layer is built");
        let response = client
            .post(&self.token_url)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|err| RefreshError::Transport(Arc::new(err)))?;
        let body = response.bytes().await.map_err(|err| RefreshError::Transport(Arc::new(err)))?;
        TokenSet::from_token_response(&body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_source_that_calls_through_its_own_layer_is_not_made_to_wait_for_its_own_refresh() {
    let provider = MockProvider::start().await;
    let source = Arc::new(ThroughItsOwnLayer { token_url: provider.token_url(), ..Default::default() });
    let auth = TokenRefresh::builder_arc(source.clone())
        .initial_tokens(provider.issue_expired_tokens())
        .allow_origin(provider.uri())
        .flight_deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    source.client.set(client_with(&auth)).unwrap();

    let response = timeout(BOUND, client_with(&auth).get(provider.api_url("me")).send()).await.expect("hung");
    assert_eq!(response.unwrap().status(), 200, "the refresh's own token call went out, untouched");
    assert_eq!(provider.stats().token_calls, 1);
    let call = provider.token_requests().pop().expect("a token call");
    assert!(call.headers.get("authorization").is_none(), "no bearer token on the token call: {:?}", call.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_source_that_never_answers_ends_at_the_flight_deadline_and_a_valid_token_still_goes_out() {
    let provider = MockProvider::start().await;
    let source = Arc::new(Hangs::default());
    // Valid for 10 s more: inside the 30 s skew window, so requests try to refresh first.
    let tokens = provider.issue_tokens().with_expires_at(SystemTime::now() + Duration::from_secs(10));
    let auth = TokenRefresh::builder_arc(source.clone())
        .initial_tokens(tokens)
        .allow_origin(provider.uri())
        .flight_deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = client_with(&auth);

    let started = Instant::now();
    let status = timeout(BOUND, client.get(provider.api_url("me")).send()).await.expect("the request hung");
    assert_eq!(status.unwrap().status(), 200, "the still-valid token went out");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(source.0.load(Ordering::SeqCst), 1);
    match auth.state() {
        TokenState::CoolingDown { .. } => {}
        other => panic!("a hung flight ends; the key cools down instead of refreshing forever: {other:?}"),
    }

    // A key whose token is past its expiry gets the typed error, within the deadline.
    let key = TokenKey::new("expired");
    timeout(BOUND, auth.set_tokens_for(&key, provider.issue_expired_tokens())).await.expect("hung").unwrap();
    let started = Instant::now();
    let err = timeout(BOUND, auth.access_token_for(&key)).await.expect("hung").unwrap_err();
    assert!(
        matches!(&err, Error::Refresh { source: RefreshError::TimedOut { after }, .. } if *after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // set_tokens never waits behind a hung flight.
    let hung = TokenKey::new("hung");
    timeout(BOUND, auth.set_tokens_for(&hung, provider.issue_expired_tokens())).await.expect("hung").unwrap();
    let waiting = tokio::spawn({
        let auth = auth.clone();
        let hung = hung.clone();
        async move { timeout(BOUND, auth.access_token_for(&hung)).await.expect("hung") }
    });
    eventually("the flight runs", || matches!(auth.state_for(&hung), TokenState::Refreshing { .. })).await;
    let fresh = provider.issue_tokens();
    timeout(Duration::from_millis(200), auth.set_tokens_for(&hung, fresh.clone()))
        .await
        .expect("set_tokens hung")
        .unwrap();
    let got = timeout(BOUND, waiting).await.unwrap().unwrap().expect("the waiter takes the installed token");
    assert_eq!(got.secret(), fresh.access_token().secret());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_key_picks_up_the_tokens_a_user_installed_through_another_replica() {
    let provider = MockProvider::start().await;
    let store = MemoryStore::new();
    let replica = |store: &MemoryStore| {
        layer(&provider, provider.issue_tokens())
            .store(store.clone())
            .terminal_recheck(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    let (a, b) = (replica(&store), replica(&store));
    let (client_a, client_b) = (client_with(&a), client_with(&b));
    let url = provider.api_url("me");
    assert_eq!(client_a.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(client_b.get(&url).send().await.unwrap().status(), 200);

    // The grant dies: both replicas go terminal.
    provider.revoke_all();
    provider.expire_access_tokens();
    for client in [&client_a, &client_b] {
        let err = client.get(&url).send().await.unwrap_err();
        assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
    }
    assert!(a.state().is_reauthorization_required() && b.state().is_reauthorization_required());

    // The user authorizes again through replica A.
    timeout(BOUND, a.set_tokens(provider.issue_tokens())).await.expect("hung").unwrap();
    assert_eq!(client_a.get(&url).send().await.unwrap().status(), 200);

    // Replica B looks at the store again within the recheck interval and uses them.
    let calls = provider.stats().token_calls;
    let mut recovered = false;
    for _ in 0..50 {
        match client_b.get(&url).send().await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                recovered = true;
                break;
            }
            Err(err) => assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "replica B never picked up the tokens replica A saved");
    assert_eq!(b.tokens(), a.tokens());
    assert_eq!(provider.stats().token_calls, calls, "picked up from the store, no token call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_key_keeps_its_cool_down() {
    let provider = MockProvider::start().await;
    let store = MemoryStore::new();
    let users: Vec<TokenKey> = (0..6).map(|i| TokenKey::new(format!("user-{i}"))).collect();
    for user in &users {
        store.put(user, &provider.issue_expired_tokens()).await.unwrap();
    }
    let auth = TokenRefresh::builder(grant(&provider)).store(store.clone()).max_cached_keys(2).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    provider.fail_next_token_calls(1, Fault::RateLimited { retry_after: Duration::from_secs(600) });
    let cooling = &users[0];
    let err = client.get(&url).with_extension(cooling.clone()).send().await.unwrap_err();
    assert!(matches!(Error::from_middleware(&err), Some(Error::Refresh { .. })), "{err:?}");
    assert!(matches!(auth.state_for(cooling), TokenState::CoolingDown { .. }));

    // Other users push it out of memory.
    for user in &users[1..] {
        assert_eq!(client.get(&url).with_extension(user.clone()).send().await.unwrap().status(), 200);
    }
    assert!(auth.cached_keys() <= 2, "{}", auth.cached_keys());
    assert!(matches!(auth.state_for(cooling), TokenState::Empty), "evicted: {:?}", auth.state_for(cooling));
    let calls = provider.stats().token_calls;

    // Its next request still honours the provider's Retry-After: no token call.
    let err = client.get(&url).with_extension(cooling.clone()).send().await.unwrap_err();
    match Error::from_middleware(&err) {
        Some(Error::Refresh { source: RefreshError::CoolingDown { retry_after }, .. }) => {
            assert!(*retry_after > Duration::from_secs(590), "{retry_after:?}")
        }
        other => panic!("expected the cool-down, got {other:?}"),
    }
    assert_eq!(provider.stats().token_calls, calls, "no token call during the remembered cool-down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_keys_stay_within_max_cached_keys_dead_and_never_loaded_ones_included() {
    let provider = MockProvider::start().await;
    let (dead, dead_events) = crate::helpers::counter();
    let auth = TokenRefresh::builder(grant(&provider))
        .max_cached_keys(1_000)
        .on_reauthorization_required(move |_, _| {
            dead.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    // Users whose tokens the store does not have (benches/many_keys.rs takes 100,000 through the
    // middleware and reports the cost per batch): each is loaded, found empty, and is dead.
    for i in 0..20_000 {
        let err = auth.access_token_for(&TokenKey::new(format!("user-{i}"))).await.unwrap_err();
        assert!(err.is_reauthorization_required(), "{err:?}");
        if i % 2_000 == 0 {
            assert!(auth.cached_keys() <= 1_000, "{} keys held after {i}", auth.cached_keys());
        }
    }
    assert!(auth.cached_keys() <= 1_000, "{}", auth.cached_keys());
    assert!(auth.cached_keys() >= 900, "the bound is used, not emptied: {}", auth.cached_keys());
    assert_eq!(dead_events(), 20_000, "one terminal event per key");
    // A dead key evicted and asked for again is still dead, with no second event.
    let err = timeout(BOUND, auth.access_token_for(&TokenKey::new("user-19999"))).await.expect("hung").unwrap_err();
    assert!(err.is_reauthorization_required());
    let err = timeout(BOUND, auth.access_token_for(&TokenKey::new("user-18999"))).await.expect("hung").unwrap_err();
    assert!(err.is_reauthorization_required());
    assert_eq!(dead_events(), 20_000, "a remembered dead key does not fire its hook again");
    assert_eq!(provider.stats().token_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_stepped_back_a_day_cannot_stretch_a_cool_down() {
    let clock = ManualClock::starting_now();
    let provider = MockProvider::builder().clock(clock.clone()).start().await;
    // Expired however far back the clock goes.
    let expired = provider.issue_expired_tokens().with_expires_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    let auth = TokenRefresh::builder(grant(&provider).clock(clock.clone()))
        .initial_tokens(expired)
        .clock(clock.clone())
        .build()
        .unwrap();
    provider.fail_next_token_calls(1, Fault::RateLimited { retry_after: Duration::from_secs(2) });
    let err = timeout(BOUND, auth.access_token_for(&key())).await.expect("hung").unwrap_err();
    assert!(matches!(err, Error::Refresh { .. }), "{err:?}");

    clock.set(clock_now(&clock) - Duration::from_secs(24 * 60 * 60));
    match auth.state() {
        TokenState::CoolingDown { retry_after, .. } => {
            assert!(retry_after <= Duration::from_secs(2), "stretched to {retry_after:?}")
        }
        other => panic!("expected a cool-down, got {other:?}"),
    }
    let err = timeout(BOUND, auth.access_token_for(&key())).await.expect("hung").unwrap_err();
    assert!(err.retry_after().is_some_and(|wait| wait <= Duration::from_secs(2)), "{err:?}");
    // By the monotonic clock it ends on time.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    timeout(BOUND, auth.access_token_for(&key())).await.unwrap().expect("refreshed after the cool-down");
    assert_eq!(provider.stats().token_calls, 2);
}

fn clock_now(clock: &ManualClock) -> SystemTime {
    reqwest_token_refresh::Clock::now(clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_sharing_a_store_refresh_twenty_second_tokens_once() {
    let provider = MockProvider::builder()
        .access_token_lifetime(Duration::from_secs(20))
        .token_latency(Duration::from_millis(100))
        .start()
        .await;
    let store = MemoryStore::new();
    store.put(&key(), &provider.issue_tokens()).await.unwrap();
    // The default 30 s skew: the stored 20 s token is due at once.
    let a = layer(&provider, provider.issue_tokens()).store(store.clone()).build().unwrap();
    let b = layer(&provider, provider.issue_tokens()).store(store.clone()).build().unwrap();
    let (client_a, client_b) = (client_with(&a), client_with(&b));
    let url = provider.api_url("me");

    let (statuses_a, statuses_b) = tokio::join!(storm(&client_a, &url, 20, None), storm(&client_b, &url, 20, None));
    assert_eq!(count(&statuses_a, 200) + count(&statuses_b, 200), 40);
    assert_eq!(provider.stats().token_calls, 1, "one layer refreshed, the other adopted");
    assert_eq!(a.stats().adopted + b.stats().adopted, 1);
    // And the adopted 20 s token is not refreshed again on the next requests.
    let (statuses_a, statuses_b) = tokio::join!(storm(&client_a, &url, 20, None), storm(&client_b, &url, 20, None));
    assert_eq!(count(&statuses_a, 200) + count(&statuses_b, 200), 40);
    assert_eq!(provider.stats().token_calls, 1);
}

/// A store over another whose saves fail while `failing` is above zero (counting down).
#[derive(Debug, Clone)]
struct FailingSaves<S> {
    inner: S,
    failing: Arc<AtomicUsize>,
}

#[async_trait]
impl<S: TokenStore + Clone> TokenStore for FailingSaves<S> {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.inner.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        if self.failing.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::io("writing tokens", std::io::Error::from_raw_os_error(28)));
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

/// Replica A's save fails; replica B refreshes and saves; A's retried save lands late and must
/// not overwrite B's newer set: A adopts it.
async fn a_late_retried_save_leaves_the_newer_set(store_a: impl TokenStore + Clone, store_b: impl TokenStore + Clone) {
    let provider = MockProvider::builder().rotate_refresh_tokens(false).start().await;
    store_b.put(&key(), &provider.issue_expired_tokens()).await.unwrap();
    let failing = Arc::new(AtomicUsize::new(0));
    let a = layer(&provider, provider.issue_expired_tokens())
        .store(FailingSaves { inner: store_a, failing: failing.clone() })
        .min_backoff(Duration::from_millis(300))
        .max_backoff(Duration::from_millis(300))
        .build()
        .unwrap();
    let b = layer(&provider, provider.issue_expired_tokens()).store(store_b.clone()).build().unwrap();
    let url = provider.api_url("me");

    // The save fails, and so do the two tries A makes again before letting the lock go.
    failing.store(3, Ordering::SeqCst);
    assert_eq!(client_with(&a).get(&url).send().await.unwrap().status(), 200, "A's tokens are used unsaved");
    let unsaved = a.tokens().unwrap();
    assert_ne!(store_b.get(&key()).await.unwrap().as_ref(), Some(&unsaved));
    // Before A's retry (300 ms later), B refreshes from what the store holds and saves.
    assert_eq!(client_with(&b).get(&url).send().await.unwrap().status(), 200);
    let newer = b.tokens().unwrap();
    let stored = store_b.get(&key()).await.unwrap().unwrap();
    assert_eq!(stored.access_token(), newer.access_token());

    let access = |tokens: Option<TokenSet>| tokens.map(|tokens| tokens.access_token().secret().to_owned());
    let newer = access(Some(newer));
    eventually("A adopted B's set after its retried save was refused", || access(a.tokens()) == newer).await;
    assert_eq!(access(store_b.get(&key()).await.unwrap()), newer, "the newer set stays");
    assert!(a.stats().adopted >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_memory_a_late_retried_save_leaves_the_newer_set() {
    let store = MemoryStore::new();
    a_late_retried_save_leaves_the_newer_set(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_file_a_late_retried_save_leaves_the_newer_set() {
    let dir = std::env::temp_dir().join(format!("rtr-edges-late-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.json");
    a_late_retried_save_leaves_the_newer_set(FileStore::new(&path), FileStore::new(&path)).await;
}

/// A provider whose `/reject` route answers every token with 401 `invalid_token`.
async fn always_rejecting() -> MockProvider {
    let provider = MockProvider::start().await;
    Mock::given(path("/reject"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .with_priority(1)
        .mount(provider.server())
        .await;
    provider
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_rejects_every_token_costs_one_token_call_for_twenty_sequential_requests() {
    let provider = always_rejecting().await;
    let auth = layer(&provider, provider.issue_tokens()).build().unwrap();
    let client = client_with(&auth);
    let url = format!("{}/reject", provider.uri());
    for _ in 0..20 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 401, "the rejection goes back as it came");
    }
    assert_eq!(provider.stats().token_calls, 1, "the token minted a moment ago is not replaced again at once");
    assert_eq!(auth.stats().refreshes_held_back, 19);
    assert_eq!(auth.stats().retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_rejects_every_token_costs_one_token_call_for_thirty_concurrent_requests() {
    let provider = MockProvider::builder().token_latency(Duration::from_millis(100)).start().await;
    Mock::given(path("/reject"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .with_priority(1)
        .mount(provider.server())
        .await;
    let auth = layer(&provider, provider.issue_tokens()).build().unwrap();
    let client = client_with(&auth);
    let url = format!("{}/reject", provider.uri());
    // Some of the thirty start while the first refresh runs.
    let first = storm(&client, &url, 15, None);
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        storm(&client, &url, 15, None).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(count(&first, 401) + count(&second, 401), 30);
    assert_eq!(provider.stats().token_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_was_accepted_and_then_rejected_is_refreshed_however_young() {
    let provider = MockProvider::start().await;
    let auth = layer(&provider, provider.issue_expired_tokens()).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    // Revoked right after it was accepted (a password change): that is no reason to hold back.
    provider.expire_access_tokens();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 2);
    assert_eq!(auth.stats().refreshes_held_back, 0);
}

/// The Withings preset over the mock's Withings dialect, with Withings' rejection rule.
fn withings_layer(provider: &MockProvider) -> TokenRefresh {
    let grant = reqwest_token_refresh::providers::withings(
        reqwest_token_refresh::testkit::MOCK_CLIENT_ID,
        reqwest_token_refresh::testkit::MOCK_CLIENT_SECRET,
    )
    .token_url(provider.token_url());
    TokenRefresh::builder(grant)
        .initial_tokens(provider.issue_tokens())
        .allow_origin(provider.uri())
        .token_rejected_when(reqwest_token_refresh::providers::withings_token_rejected)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_retry_a_rejection_rule_lets_through_counts_as_accepted() {
    // Withings: every answer is a 200, and a rule tells a rejection from an acceptance.
    let provider = MockProvider::withings().await;
    let auth = withings_layer(&provider);
    let client = client_with(&auth);
    let url = provider.api_url("measure");
    // Rejected, refreshed, and the retry with the new token let through by the rule...
    provider.expire_access_tokens();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    // ...so when that token is rejected in turn, however young, it is refreshed, not held back.
    provider.expire_access_tokens();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 2);
    assert_eq!(auth.stats().refreshes_held_back, 0);
    assert_eq!(provider.stats().api_ok, 2, "both retries were let through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_a_rejection_rule_rejects_again_is_not_an_acceptance() {
    // Withings' envelope on a route that rejects every token: 200 with `"status":401`.
    let provider = MockProvider::withings().await;
    Mock::given(path("/reject"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status":401,"body":{},"error":"invalid_token"}"#))
        .with_priority(1)
        .mount(provider.server())
        .await;
    let auth = withings_layer(&provider);
    let client = client_with(&auth);
    let url = format!("{}/reject", provider.uri());
    for _ in 0..20 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200, "the rejection goes back as it came");
    }
    // The retry's answer was a rejection too: the new token was never accepted, so it is held back.
    assert_eq!(provider.stats().token_calls, 1);
    assert_eq!(auth.stats().refreshes_held_back, 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_retry_whose_set_was_replaced_meanwhile_stops_and_the_new_set_is_saved_once() {
    let provider = MockProvider::start().await;
    let store = Flaky::default();
    store.inner.put(&key(), &provider.issue_expired_tokens()).await.unwrap();
    let auth = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .min_backoff(Duration::from_millis(300))
        .max_backoff(Duration::from_millis(300))
        .build()
        .unwrap();
    // The refresh's save fails, under the lock three times (its retry then waits 300 ms); then the
    // user authorizes again and that save fails too (its own retry, a moment later).
    store.failing_saves.store(4, Ordering::SeqCst);
    assert_eq!(client_with(&auth).get(provider.api_url("me")).send().await.unwrap().status(), 200);
    let user = provider.issue_tokens();
    timeout(BOUND, auth.set_tokens(user.clone())).await.expect("hung").unwrap_err();
    assert_eq!(store.failing_saves.load(Ordering::SeqCst), 0);

    // The first retry finds its set replaced and stops; the second saves the user's set, once.
    let saved = async {
        while store.inner.get(&key()).await.unwrap().unwrap().access_token() != user.access_token() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(BOUND, saved).await.expect("the user's tokens reach the store");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stored = store.inner.load(&key()).await.unwrap().unwrap();
    assert_eq!(stored.revision, Revision::new(2), "seeded, then the user's set saved once and nothing more");
}

/// A store over memory whose lock is released but reports that releasing it failed (a lock whose
/// connection went away while it was held).
#[derive(Debug, Clone, Default)]
struct UnlockFails(MemoryStore);

#[derive(Debug)]
struct UnlockFailsGuard<'a>(Box<dyn StoreGuard + 'a>);

#[async_trait]
impl StoreGuard for UnlockFailsGuard<'_> {
    async fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.0.load().await
    }

    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.save(tokens, replaces).await
    }

    async fn remove(&mut self, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.remove(replaces).await
    }

    async fn unlock(self: Box<Self>) -> Result<(), StoreError> {
        self.0.unlock().await?;
        Err(StoreError::io("releasing the lock", std::io::Error::from(std::io::ErrorKind::ConnectionReset)))
    }
}

#[async_trait]
impl TokenStore for UnlockFails {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.0.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.remove(key, replaces).await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        let held = self.0.lock(key).await?.expect("the memory store locks");
        Ok(Some(Box::new(UnlockFailsGuard(held))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_release_fails_is_reported_once_and_the_refresh_stands() {
    let provider = MockProvider::start().await;
    let store = UnlockFails::default();
    store.0.put(&key(), &provider.issue_expired_tokens()).await.unwrap();
    let reported = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let auth = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .on_store_error({
            let reported = reported.clone();
            move |_, err| reported.lock().push(err.to_string())
        })
        .build()
        .unwrap();
    assert_eq!(client_with(&auth).get(provider.api_url("me")).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    let reported = reported.lock().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(reported[0].contains("releasing the lock"), "{reported:?}");
    assert_eq!(auth.stats().store_failures, 1);
    // The refresh's tokens were saved before the release failed.
    assert_eq!(store.0.get(&key()).await.unwrap().unwrap().access_token(), auth.tokens().unwrap().access_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_key_fails_fast_between_its_looks_at_the_store() {
    let provider = MockProvider::start().await;
    let store = CountingStore::default();
    let auth = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .terminal_recheck(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    provider.revoke_all();
    provider.expire_access_tokens();
    let err = client.get(&url).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
    let (reads, calls) = (store.loads.load(Ordering::SeqCst), provider.stats().token_calls);

    for _ in 0..50 {
        let err = client.get(&url).send().await.unwrap_err();
        assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), reads, "no store read before the interval has passed");
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..50 {
        let err = client.get(&url).send().await.unwrap_err();
        assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), reads + 1, "one look per interval, however many requests");
    assert_eq!(provider.stats().token_calls, calls, "a dead grant is never tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_the_key_still_takes_new_tokens_and_the_layer_uses_them() {
    let provider = MockProvider::start().await;
    let dir = std::env::temp_dir().join(format!("rtr-edges-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.json");
    let store = FileStore::new(&path);
    let auth = layer(&provider, provider.issue_expired_tokens()).store(store.clone()).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    for _ in 0..3 {
        provider.expire_access_tokens();
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert!(store.load(&key()).await.unwrap().unwrap().revision > Revision::new(2));

    // The file is deleted (by hand, or a fresh volume): revisions start again at 1.
    std::fs::remove_file(&path).unwrap();
    provider.expire_access_tokens();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let stored = store.get(&key()).await.unwrap().expect("the new set was saved into the empty store");
    assert_eq!(auth.tokens().unwrap().access_token(), stored.access_token(), "and it is the one in use");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    // set_tokens into a store that lost the key again: the user's tokens are the ones in use.
    std::fs::remove_file(&path).unwrap();
    let user = provider.issue_tokens();
    timeout(BOUND, auth.set_tokens(user.clone())).await.expect("hung").unwrap();
    assert_eq!(auth.tokens().unwrap().access_token(), user.access_token());
    assert_eq!(store.get(&key()).await.unwrap().unwrap().access_token(), user.access_token());
}

/// A store over memory whose next `failing_reads` reads and `failing_saves` saves fail; with
/// `lockless`, one without a lock (the trait's default).
#[derive(Debug, Clone, Default)]
struct Flaky {
    inner: MemoryStore,
    failing_reads: Arc<AtomicUsize>,
    failing_saves: Arc<AtomicUsize>,
    lockless: bool,
}

fn take(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

#[async_trait]
impl TokenStore for Flaky {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        if take(&self.failing_reads) {
            return Err(StoreError::io("reading tokens", std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        }
        self.inner.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        if take(&self.failing_saves) {
            return Err(StoreError::io("writing tokens", std::io::Error::from_raw_os_error(28)));
        }
        self.inner.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.inner.remove(key, replaces).await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        if self.lockless {
            return Ok(None);
        }
        crate::helpers::lock_through(self, &self.inner, key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_fails_once_under_the_lock_is_retried_instead_of_refreshing_from_a_stale_memory() {
    let provider = MockProvider::start().await;
    let store = Flaky::default();
    store.inner.put(&key(), &provider.issue_tokens()).await.unwrap();
    let replica = || {
        layer(&provider, provider.issue_tokens())
            .store(store.clone())
            .min_backoff(Duration::from_millis(20))
            .build()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    let url = provider.api_url("me");
    for auth in [&a, &b] {
        assert_eq!(client_with(auth).get(&url).send().await.unwrap().status(), 200);
    }
    // A refreshes and saves; B still holds the set whose refresh token that rotation spent.
    provider.expire_access_tokens();
    assert_eq!(client_with(&a).get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 1);

    // B's token is rejected, and its read under the lock fails once: read again, it finds A's set.
    store.failing_reads.store(1, Ordering::SeqCst);
    assert_eq!(client_with(&b).get(&url).send().await.unwrap().status(), 200);
    let stats = provider.stats();
    assert_eq!((stats.reuse_detected, stats.invalid_grants), (0, 0), "B never presented the spent token: {stats:?}");
    assert_eq!(stats.token_calls, 1, "B adopted A's refresh");
    assert_eq!(store.failing_reads.load(Ordering::SeqCst), 0, "the read did fail");
    assert_eq!(b.tokens().unwrap().access_token(), a.tokens().unwrap().access_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_keeps_failing_under_the_lock_is_tried_three_times_then_the_refresh_goes_on() {
    let provider = MockProvider::start().await;
    let store = Flaky::default();
    store.inner.put(&key(), &provider.issue_tokens()).await.unwrap();
    // The save retry after the last part waits 200 ms: time enough to count the tries before it.
    let auth = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .min_backoff(Duration::from_millis(200))
        .max_backoff(Duration::from_millis(400))
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    // Every read fails: under the lock, three tries, then the refresh goes on from memory (an
    // outage must not stop the key), and its save lands.
    provider.expire_access_tokens();
    store.failing_reads.store(100, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(100 - store.failing_reads.swap(0, Ordering::SeqCst), 3, "one read and two more tries");
    assert!(started.elapsed() >= Duration::from_millis(600), "after the backoff: 200 ms, then 400 ms");
    assert_eq!(provider.stats().token_calls, 1);

    // Every save fails: three tries under the lock, then the new tokens are used unsaved.
    provider.expire_access_tokens();
    store.failing_saves.store(100, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(100 - store.failing_saves.swap(0, Ordering::SeqCst), 3, "one save and two more tries");
    assert!(started.elapsed() >= Duration::from_millis(600), "after the backoff: 200 ms, then 400 ms");
    assert_eq!(provider.stats().token_calls, 2);

    // Without a lock there is no other process to keep out: one try each, as before.
    let store = Flaky { lockless: true, ..Flaky::default() };
    store.inner.put(&key(), &provider.issue_tokens()).await.unwrap();
    let auth = layer(&provider, provider.issue_tokens()).store(store.clone()).build().unwrap();
    let client = client_with(&auth);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    provider.expire_access_tokens();
    store.failing_reads.store(100, Ordering::SeqCst);
    store.failing_saves.store(100, Ordering::SeqCst);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let (reads, saves) = (store.failing_reads.swap(0, Ordering::SeqCst), store.failing_saves.swap(0, Ordering::SeqCst));
    assert_eq!((100 - reads, 100 - saves), (1, 1), "the refresh's read and its save, once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_set_while_the_store_is_away_win_over_what_another_replica_saves_meanwhile() {
    let provider = MockProvider::start().await;
    let store = Flaky::default();
    store.inner.put(&key(), &provider.issue_tokens()).await.unwrap();
    let a = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .min_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(client_with(&a).get(provider.api_url("me")).send().await.unwrap().status(), 200);

    // The user authorizes again through replica A while the store cannot be read.
    store.failing_reads.store(1, Ordering::SeqCst);
    let user = provider.issue_tokens();
    let err = timeout(BOUND, a.set_tokens(user.clone())).await.expect("hung").unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(a.tokens().unwrap().access_token(), user.access_token(), "in use anyway");
    // Before A's retry, replica B saves a set of the old grant.
    store.inner.put(&key(), &provider.issue_tokens()).await.unwrap();

    eventually("the user's tokens are saved", || {
        futures::executor::block_on(store.inner.get(&key()))
            .unwrap()
            .is_some_and(|t| t.access_token() == user.access_token())
    })
    .await;
    assert_eq!(a.tokens().unwrap().access_token(), user.access_token(), "not displaced by B's older grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_store_error_hook_never_costs_a_rotated_refresh_token() {
    let provider = MockProvider::start().await;
    let store = Flaky::default();
    let auth = layer(&provider, provider.issue_expired_tokens())
        .store(store.clone())
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(50))
        .on_store_error(|_, _| panic!("a hook with a bug"))
        .build()
        .unwrap();
    store.failing_saves.store(1, Ordering::SeqCst);
    let status = timeout(BOUND, client_with(&auth).get(provider.api_url("me")).send()).await.unwrap().unwrap().status();
    assert_eq!(status, 200, "the rotated tokens are used although their first save failed");
    let in_use = auth.tokens().unwrap();
    eventually("the rotated tokens reach the store", || {
        futures::executor::block_on(store.inner.get(&key()))
            .unwrap()
            .is_some_and(|t| t.access_token() == in_use.access_token())
    })
    .await;
    provider.expire_access_tokens();
    assert_eq!(client_with(&auth).get(provider.api_url("me")).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().reuse_detected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hold_back_after_a_fresh_token_is_rejected_counts_each_token_once_and_doubles_for_the_next() {
    let provider = always_rejecting().await;
    let auth =
        layer(&provider, provider.issue_tokens()).min_refresh_interval(Duration::from_millis(500)).build().unwrap();
    let client = client_with(&auth);
    let url = format!("{}/reject", provider.uri());
    let send = || async { assert_eq!(client.get(&url).send().await.unwrap().status(), 401) };

    send().await; // the loaded token is rejected: one refresh, and its token is rejected too
    assert_eq!(provider.stats().token_calls, 1);
    for _ in 0..5 {
        send().await; // the same young token, rejected again: held back, counted once
    }
    assert_eq!(provider.stats().token_calls, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    send().await; // past 500 ms: the next refresh is allowed
    assert_eq!(provider.stats().token_calls, 2, "one token rejected five times holds back once, not five times over");

    send().await; // the new token is rejected at once too: now held back for 1,000 ms
    tokio::time::sleep(Duration::from_millis(700)).await;
    send().await;
    assert_eq!(provider.stats().token_calls, 2, "the second hold-back is twice as long");
    tokio::time::sleep(Duration::from_millis(500)).await;
    send().await;
    assert_eq!(provider.stats().token_calls, 3);
}

/// A route on `provider` that answers `stale` with 401 `invalid_token` and any other token with
/// `answer`.
async fn rejecting_only(provider: &MockProvider, route: &str, stale: &TokenSet, answer: ResponseTemplate) {
    let stale = format!("Bearer {}", stale.access_token().secret());
    Mock::given(path(route))
        .and(wiremock::matchers::header("authorization", stale.as_str()))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .with_priority(1)
        .mount(provider.server())
        .await;
    Mock::given(path(route)).respond_with(answer).with_priority(2).mount(provider.server()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_the_request_as_first_sent_with_a_new_token() {
    let provider = MockProvider::start().await;
    let stale = provider.issue_tokens();
    rejecting_only(&provider, "/v1/items/7", &stale, ResponseTemplate::new(200)).await;
    let auth = layer(&provider, stale).build().unwrap();
    let request = client_with(&auth)
        .put(format!("{}/v1/items/7?fields=a,b", provider.uri()))
        .header("x-trace", "one")
        .header("x-trace", "two")
        .header("content-type", "application/json")
        .body(r#"{"name":"seven"}"#)
        .send();
    assert_eq!(timeout(BOUND, request).await.expect("bounded").unwrap().status(), 200);

    let received = timeout(BOUND, provider.server().received_requests()).await.expect("bounded").unwrap();
    let sent: Vec<_> = received.iter().filter(|r| r.url.path() == "/v1/items/7").collect();
    assert_eq!(sent.len(), 2, "the first attempt and one retry");
    let (first, retry) = (sent[0], sent[1]);
    assert_eq!(retry.method, first.method);
    assert_eq!(retry.url, first.url, "the query too");
    assert_eq!(retry.body, first.body);
    for name in ["x-trace", "content-type"] {
        let values = |r: &wiremock::Request| r.headers.get_all(name).iter().cloned().collect::<Vec<_>>();
        assert_eq!(values(retry), values(first), "{name}");
    }
    assert_ne!(retry.headers.get("authorization"), first.headers.get("authorization"), "with the new token");
    assert_eq!(auth.stats().retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_keeps_the_requests_own_timeout() {
    let provider = MockProvider::start().await;
    let stale = provider.issue_tokens();
    let hung = ResponseTemplate::new(200).set_delay(Duration::from_secs(60));
    rejecting_only(&provider, "/v1/slow", &stale, hung).await;
    let auth = layer(&provider, stale).build().unwrap();
    let started = Instant::now();
    let request =
        client_with(&auth).get(format!("{}/v1/slow", provider.uri())).timeout(Duration::from_millis(300)).send();
    let err = timeout(BOUND, request).await.expect("the retry ends at the request's timeout, not the server's delay");
    let err = err.expect_err("the retry timed out");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(auth.stats().retries, 1, "the retry was sent, and timed out");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

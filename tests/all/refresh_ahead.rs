//! Refresh ahead: keys in use get their next token in the background before their skew window
//! opens, once each, and no request waits for it; dormant keys cost nothing; replicas sharing a
//! store refresh a key once between them; a failure leaves the key to the on-demand path; the
//! layer dropped, its timer ends.
//!
//! Time is driven: the layer, its grant and the provider read one `ManualClock`, and the tests
//! move tokio's timer by the same amount ([`jump`]), so the layer's timer task wakes as it would
//! have in real time. Between jumps tokio's clock runs as usual, since the requests go over real
//! loopback HTTP (a paused clock would fire every request's timeouts while it waits on a socket).

use std::time::Duration;

use futures::StreamExt as _;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::testkit::{Fault, MockProvider};
use reqwest_token_refresh::{
    ManualClock, MemoryStore, RefreshAhead, Revision, TokenKey, TokenRefresh, TokenSet, TokenState, TokenStore,
};

use crate::helpers::{client_with, grant};

const MINUTE: Duration = Duration::from_secs(60);
/// The provider's token lifetime in these tests. With the default 30 s skew and 60 s spread, a
/// token issued at `t` is due for its refresh ahead between `t + 58:30` and `t + 59:00`; its skew
/// window opens at `t + 59:30`.
const LIFETIME: Duration = Duration::from_secs(3600);

/// Moves the layer's wall clock and tokio's timer forward by `by` at once, then lets the tasks
/// whose timers came due run. Called with no token call in flight: one would see its timeout
/// pass, as in a process frozen that long mid-call (and, the provider having rotated its refresh
/// token, the next refresh would present a spent one).
async fn jump(clock: &ManualClock, by: Duration) {
    clock.advance(by);
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
    tokio::task::yield_now().await;
}

/// A provider of hour-long tokens on `clock`.
async fn provider_on(clock: &ManualClock) -> MockProvider {
    MockProvider::builder().access_token_lifetime(LIFETIME).clock(clock.clone()).start().await
}

/// A layer on `clock` with refresh ahead (default options), over `store`.
fn layer_on(provider: &MockProvider, clock: &ManualClock, store: &MemoryStore) -> TokenRefresh {
    TokenRefresh::builder(grant(provider).clock(clock.clone()))
        .clock(clock.clone())
        .store(store.clone())
        .refresh_ahead(RefreshAhead::new())
        .build()
        .unwrap()
}

fn keys(prefix: &str, n: usize) -> Vec<TokenKey> {
    (0..n).map(|i| TokenKey::new(format!("{prefix}-{i}"))).collect()
}

/// One request per key, 64 at a time; the statuses (0: failed in the middleware), by key order.
async fn round(client: &ClientWithMiddleware, url: &str, keys: &[TokenKey]) -> Vec<u16> {
    let requests = keys.iter().map(|key| {
        let request = client.get(url).with_extension(key.clone());
        async move { request.send().await.map_or(0, |response| response.status().as_u16()) }
    });
    let all = futures::stream::iter(requests).buffered(64).collect();
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("a round of requests ends")
}

fn all_ok(statuses: &[u16]) -> bool {
    statuses.iter().all(|status| *status == 200)
}

/// Waits (bounded, in real time) until no key of `auth` in `keys` is refreshing and `done` holds.
async fn settled(auth: &TokenRefresh, keys: &[TokenKey], mut done: impl FnMut() -> bool) {
    let quiet = async {
        loop {
            let refreshing = keys.iter().any(|key| matches!(auth.state_for(key), TokenState::Refreshing { .. }));
            if !refreshing && done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), quiet).await.expect("the background refreshes end");
}

fn generation(auth: &TokenRefresh, key: &TokenKey) -> u64 {
    match auth.state_for(key) {
        TokenState::Ready { generation, .. } => generation,
        other => panic!("{key} is not ready: {other:?}"),
    }
}

#[tokio::test]
async fn a_thousand_keys_in_use_are_refreshed_once_each_before_expiry_and_no_request_waits() {
    let clock = ManualClock::starting_now();
    let provider = provider_on(&clock).await;
    let auth = layer_on(&provider, &clock, &MemoryStore::new());
    let client = client_with(&auth);
    let url = provider.api_url("v1/me");
    let users = keys("user", 1_000);
    for user in &users {
        auth.set_tokens_for(user, provider.issue_tokens()).await.unwrap();
    }

    // In use all along: a request per user now, ten minutes before the refreshes are due, and
    // on the way through them (at 58:30 and 59:00: the refreshes run while these are sent).
    assert!(all_ok(&round(&client, &url, &users).await));
    jump(&clock, 48 * MINUTE).await;
    assert!(all_ok(&round(&client, &url, &users).await));
    jump(&clock, 10 * MINUTE + Duration::from_secs(30)).await;
    assert!(all_ok(&round(&client, &url, &users).await));
    jump(&clock, Duration::from_secs(30)).await;
    assert!(all_ok(&round(&client, &url, &users).await));
    // Every refresh was due by 59:00; by 59:30, when the skew windows open, they are done.
    settled(&auth, &users, || auth.stats().refreshes_ahead == 1_000).await;
    assert_eq!(provider.stats().token_calls, 1_000, "one refresh per user, all before the skew window");
    jump(&clock, Duration::from_secs(30)).await;
    assert!(all_ok(&round(&client, &url, &users).await));

    // Past the old tokens' expiry: everybody has the new one already.
    jump(&clock, MINUTE).await;
    assert!(all_ok(&round(&client, &url, &users).await));

    let stats = auth.stats();
    assert_eq!(stats.waited, 0, "no request waited for a refresh");
    assert_eq!((stats.refreshes, stats.refreshes_ahead, stats.refresh_failures), (1_000, 1_000, 0));
    assert_eq!(stats.unauthorized, 0, "no request went out with an expired token");
    assert_eq!(provider.stats().api_unauthorized, 0);
    assert_eq!(provider.stats().reuse_detected, 0);
    assert!(users.iter().all(|user| generation(&auth, user) == 2), "each user's token replaced once");
}

#[tokio::test]
async fn without_refresh_ahead_the_requests_across_an_expiry_wait_for_their_refresh() {
    // The same day for ten users, on demand: what `waited` counts when nothing refreshes ahead.
    let clock = ManualClock::starting_now();
    let provider = provider_on(&clock).await;
    let auth = TokenRefresh::builder(grant(&provider).clock(clock.clone())).clock(clock.clone()).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("v1/me");
    let users = keys("user", 10);
    for user in &users {
        auth.set_tokens_for(user, provider.issue_tokens()).await.unwrap();
    }
    assert!(all_ok(&round(&client, &url, &users).await));
    jump(&clock, 59 * MINUTE + Duration::from_secs(30)).await;
    assert!(all_ok(&round(&client, &url, &users).await));
    jump(&clock, MINUTE).await;
    assert!(all_ok(&round(&client, &url, &users).await));

    let stats = auth.stats();
    assert_eq!((stats.refreshes, stats.refreshes_ahead), (10, 0));
    assert_eq!(stats.waited, 10, "each user's first request in the skew window waited for its refresh");
}

#[tokio::test]
async fn a_hundred_thousand_dormant_keys_cause_no_refresh() {
    let clock = ManualClock::starting_now();
    let provider = provider_on(&clock).await;
    let auth = layer_on(&provider, &clock, &MemoryStore::new());
    let client = client_with(&auth);
    let url = provider.api_url("v1/me");
    // 100,000 users whose tokens the layer holds but nobody uses; 1,000 who made one request an
    // hour ago; one still active.
    let expires_at = reqwest_token_refresh::Clock::now(&clock) + LIFETIME;
    for user in keys("dormant", 100_000) {
        let tokens = TokenSet::new(format!("a-{user}")).with_refresh_token("r").with_expires_at(expires_at);
        auth.set_tokens_for(&user, tokens).await.unwrap();
    }
    let once = keys("once", 1_000);
    let active = keys("active", 1);
    for user in once.iter().chain(&active) {
        auth.set_tokens_for(user, provider.issue_tokens()).await.unwrap();
    }
    assert!(all_ok(&round(&client, &url, &once).await));
    assert!(all_ok(&round(&client, &url, &active).await));

    jump(&clock, 50 * MINUTE).await;
    assert!(all_ok(&round(&client, &url, &active).await));
    // Every refresh due, then every token expired.
    jump(&clock, 9 * MINUTE + Duration::from_secs(30)).await;
    settled(&auth, &active, || auth.stats().refreshes_ahead >= 1).await;
    jump(&clock, MINUTE).await;
    assert!(all_ok(&round(&client, &url, &active).await));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stats = auth.stats();
    assert_eq!(stats.refreshes_ahead, 1, "only the active user was refreshed ahead");
    assert_eq!(provider.stats().token_calls, 1, "the dormant users cost no token call");
    assert_eq!(stats.waited, 0);
    assert_eq!(auth.cached_keys(), 101_001);
    assert_eq!(generation(&auth, &TokenKey::new("dormant-0")), 1, "left as they were");
}

/// A round on each replica's client at once; whether every request was answered 200.
async fn both(clients: &[ClientWithMiddleware; 2], url: &str, keys: &[TokenKey]) -> bool {
    let (a, b) = tokio::join!(round(&clients[0], url, keys), round(&clients[1], url, keys));
    all_ok(&a) && all_ok(&b)
}

#[tokio::test]
async fn two_replicas_sharing_a_store_refresh_each_key_once() {
    let clock = ManualClock::starting_now();
    let provider = provider_on(&clock).await;
    let store = MemoryStore::new();
    let users = keys("user", 100);
    for user in &users {
        store.save(user, &provider.issue_tokens(), Revision::NONE).await.unwrap();
    }
    let replicas = [layer_on(&provider, &clock, &store), layer_on(&provider, &clock, &store)];
    let clients = replicas.each_ref().map(client_with);
    let url = provider.api_url("v1/me");
    // Each replica loads each user from the store on its first request (those wait: the load).
    assert!(both(&clients, &url, &users).await);
    let loaded = replicas.each_ref().map(|replica| replica.stats().waited);
    assert_eq!(loaded, [100, 100]);

    jump(&clock, 58 * MINUTE + Duration::from_secs(30)).await;
    assert!(both(&clients, &url, &users).await);
    // 59:00: every refresh is due, in both replicas at once; requests go on meanwhile.
    jump(&clock, Duration::from_secs(30)).await;
    assert!(both(&clients, &url, &users).await);
    for replica in &replicas {
        settled(replica, &users, || replica.stats().refreshes_ahead == 100).await;
    }
    // The skew windows open, then the old tokens expire.
    jump(&clock, Duration::from_secs(30)).await;
    assert!(both(&clients, &url, &users).await);
    jump(&clock, MINUTE).await;
    assert!(both(&clients, &url, &users).await);

    assert_eq!(provider.stats().token_calls, 100, "each user refreshed once between the two");
    assert_eq!(provider.stats().reuse_detected, 0, "no refresh token presented twice");
    let [a, b] = replicas.each_ref().map(TokenRefresh::stats);
    assert_eq!(a.refreshes + b.refreshes, 100);
    assert_eq!(a.adopted + b.adopted, 100, "the later replica adopted what the first saved");
    assert_eq!((a.waited, b.waited), (100, 100), "no request waited after the first load");
    assert_eq!(a.unauthorized + b.unauthorized, 0);
}

#[tokio::test]
async fn a_failed_refresh_ahead_leaves_the_key_to_the_on_demand_path() {
    let clock = ManualClock::starting_now();
    let provider = provider_on(&clock).await;
    // A twenty-second cool-down on the layer's clock, which only the test moves: it lasts until
    // the test ends it, however slowly the machine runs.
    let auth = TokenRefresh::builder(grant(&provider).clock(clock.clone()))
        .clock(clock.clone())
        .min_backoff(Duration::from_secs(20))
        .refresh_ahead(RefreshAhead::new())
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("v1/me");
    let user = keys("user", 1);
    auth.set_tokens_for(&user[0], provider.issue_tokens()).await.unwrap();
    assert!(all_ok(&round(&client, &url, &user).await));

    jump(&clock, 50 * MINUTE).await;
    assert!(all_ok(&round(&client, &url, &user).await));

    // The refresh is due by 59:00; it fails. At 59:30 the skew window opens.
    provider.fail_next_token_calls(1, Fault::Status(503));
    jump(&clock, 9 * MINUTE).await;
    settled(&auth, &user, || auth.stats().refresh_failures == 1).await;
    assert!(matches!(auth.state_for(&user[0]), TokenState::CoolingDown { .. }), "{:?}", auth.state_for(&user[0]));
    // The token is still good: while the key cools down it is sent at once.
    assert!(all_ok(&round(&client, &url, &user).await));
    assert_eq!(auth.stats().waited, 0);

    // In the skew window, the cool-down over, the ordinary path refreshes it.
    jump(&clock, Duration::from_secs(30)).await;
    assert!(all_ok(&round(&client, &url, &user).await));
    let stats = auth.stats();
    assert_eq!((stats.refreshes, stats.refresh_failures, stats.refreshes_ahead), (2, 1, 1));
    assert_eq!(stats.waited, 1, "the request that found the token in its window waited, as without refresh ahead");
    assert_eq!(generation(&auth, &user[0]), 2);
    assert_eq!(provider.stats().api_unauthorized, 0);
}

#[tokio::test]
async fn dropping_every_handle_of_the_layer_ends_its_timer_task() {
    let clock = ManualClock::starting_now();
    let provider = provider_on(&clock).await;
    let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = alive();
    let auth = layer_on(&provider, &clock, &MemoryStore::new());
    let user = keys("user", 1);
    auth.set_tokens_for(&user[0], provider.issue_tokens()).await.unwrap();
    {
        let client = client_with(&auth);
        assert!(all_ok(&round(&client, &provider.api_url("v1/me"), &user).await));
    }
    let clone = auth.clone();
    // Once the client and its connections are gone, the layer's timer is the one task left.
    crate::helpers::eventually("only the timer task is left", || alive() == before + 1).await;
    drop(auth);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(alive(), before + 1, "a clone of the layer keeps it running");
    drop(clone);
    crate::helpers::eventually("the timer task has ended", || alive() == before).await;
}

#![cfg(feature = "redis")]
//! `RedisStore` against a real `redis-server` (started per test, see `redis_server.rs`): replicas
//! sharing one refresh, lease expiry, fencing, `invalid_grant` after another replica rotated, and
//! Redis dying mid-storm.
//!
//! The "replicas" are separate `TokenRefresh` layers in one process, each with its own
//! `RedisStore` (its own connection and lease bookkeeping), exactly as separate processes would
//! have. Without `redis-server` on the PATH these tests fail and say how to install it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{Error, RedisStore, Revision, StoreError, TokenKey, TokenRefresh, TokenSet, TokenStore};

use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, layer, storm};
use crate::redis_server::RedisServer;

fn key() -> TokenKey {
    TokenKey::default()
}

fn access(tokens: &TokenSet) -> &str {
    tokens.access_token().secret()
}

async fn stored(store: &RedisStore) -> Option<TokenSet> {
    store.get(&key()).await.unwrap()
}

/// Waits (bounded, asynchronously) until `check` holds.
async fn until<F: Future<Output = bool>>(what: &str, timeout: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting until {what}");
}

// ---------------------------------------------------------------------------------------------
// Replicas through the layer
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_replicas_with_one_expired_token_make_one_token_call() {
    let redis = RedisServer::start();
    // A token call slow enough that every replica is waiting for the lease when it ends.
    let provider = MockProvider::builder().token_latency(Duration::from_millis(200)).start().await;
    let tokens = provider.issue_expired_tokens();
    // The tokens are already in Redis, as in a deployment that has run before.
    RedisStore::new(redis.url()).unwrap().put(&key(), &tokens).await.unwrap();
    let replicas: Vec<TokenRefresh> = (0..4)
        .map(|_| layer(&provider, tokens.clone()).store(RedisStore::new(redis.url()).unwrap()).build().unwrap())
        .collect();
    let clients: Vec<_> = replicas.iter().map(client_with).collect();
    let url = provider.api_url("me");

    let statuses: Vec<u16> = join_all(clients.iter().map(|client| storm(client, &url, 200, None))).await.concat();

    assert_eq!(count(&statuses, 200), 800, "every request succeeds");
    assert_eq!(provider.stats().token_calls, 1, "one token call across the four replicas");
    assert_eq!(replicas.iter().map(|r| r.stats().refreshes).sum::<u64>(), 1);
    assert_eq!(replicas.iter().map(|r| r.stats().adopted).sum::<u64>(), 3, "the other three adopted it");
    let saved = stored(&RedisStore::new(redis.url()).unwrap()).await.unwrap();
    for replica in &replicas {
        assert_eq!(access(&replica.tokens().unwrap()), access(&saved));
    }
    assert_eq!(provider.stats().invalid_grants, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_replicas_seeding_an_empty_store_make_one_token_call() {
    // Every replica finds the store empty and wants to seed it with its initial tokens. Were a
    // seed to land after another replica's refresh, it would put spent tokens back, the next
    // refresh would reuse a spent refresh token and the provider would revoke the family. Seeding
    // under the store's lock, after a re-read, prevents it.
    for round in 0..20 {
        let redis = RedisServer::start();
        let provider = MockProvider::start().await;
        let tokens = provider.issue_expired_tokens();
        let replicas: Vec<TokenRefresh> = (0..4)
            .map(|_| layer(&provider, tokens.clone()).store(RedisStore::new(redis.url()).unwrap()).build().unwrap())
            .collect();
        let clients: Vec<_> = replicas.iter().map(client_with).collect();
        let url = provider.api_url("me");
        let statuses: Vec<u16> = join_all(clients.iter().map(|client| storm(client, &url, 200, None))).await.concat();
        let stats = provider.stats();
        assert_eq!((count(&statuses, 200), stats.token_calls), (800, 1), "round {round}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_delays_others_by_at_most_the_lease_then_one_refreshes() {
    let redis = RedisServer::start();
    let provider = MockProvider::start().await;
    let tokens = provider.issue_expired_tokens();
    let lease = Duration::from_millis(1500);
    // A replica took the lease and died: nobody will release it.
    let lock_key = RedisStore::new(redis.url()).unwrap().lock_key(&key());
    let mut raw = redis.connection().await;
    let taken: Option<String> = redis::cmd("SET")
        .arg(&lock_key)
        .arg("a-replica-that-died")
        .arg("NX")
        .arg("PX")
        .arg(lease.as_millis() as u64)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(taken.is_some());
    let started = Instant::now();
    let replicas: Vec<TokenRefresh> = (0..2)
        .map(|_| layer(&provider, tokens.clone()).store(RedisStore::new(redis.url()).unwrap()).build().unwrap())
        .collect();
    let clients: Vec<_> = replicas.iter().map(client_with).collect();
    let url = provider.api_url("me");

    let statuses: Vec<u16> = join_all(clients.iter().map(|client| storm(client, &url, 50, None))).await.concat();
    let waited = started.elapsed();

    assert_eq!(count(&statuses, 200), 100);
    assert_eq!(provider.stats().token_calls, 1, "the next holder refreshed once; the other adopted");
    assert!(waited >= lease - Duration::from_millis(200), "the dead holder's lease was respected: {waited:?}");
    assert!(
        waited < lease + Duration::from_secs(1),
        "delayed by at most the lease (plus a poll and the refresh): {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_lease_expires_and_the_next_lock_waits_at_most_the_lease() {
    let redis = RedisServer::start();
    let lease = Duration::from_millis(700);
    let leaky = RedisStore::new(redis.url()).unwrap().lease_ttl(lease);
    let other = RedisStore::new(redis.url()).unwrap();
    std::mem::forget(leaky.lock(&key()).await.unwrap().unwrap());

    let started = Instant::now();
    let next = other.lock(&key()).await.unwrap().unwrap();
    let waited = started.elapsed();

    assert!(waited >= lease - Duration::from_millis(100), "{waited:?}");
    assert!(waited < lease + Duration::from_millis(300), "{waited:?}");
    next.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_flight_adopts_the_tokens_saved_while_its_lease_had_expired() {
    let redis = RedisServer::start();
    // The token call outlasts the lease.
    let provider = MockProvider::builder().token_latency(Duration::from_millis(800)).start().await;
    let expired = provider.issue_expired_tokens();
    let seed = RedisStore::new(redis.url()).unwrap();
    seed.put(&key(), &expired).await.unwrap();
    let auth = layer(&provider, expired.clone())
        .store(RedisStore::new(redis.url()).unwrap().lease_ttl(Duration::from_millis(200)))
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    let stale = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Meanwhile, with the first flight's lease expired, another replica installs newer tokens.
    let newer = provider.issue_tokens();
    let other = RedisStore::new(redis.url()).unwrap();
    let lease = other.lock(&key()).await.unwrap().expect("the first lease has expired");
    assert_eq!(access(&other.get(&key()).await.unwrap().unwrap()), access(&expired), "not saved yet");
    other.put(&key(), &newer).await.unwrap();
    lease.unlock().await.unwrap();

    assert_eq!(stale.await.unwrap().unwrap(), 200, "the stale flight's request succeeds with the adopted tokens");
    assert_eq!(provider.stats().token_calls, 1);
    assert_eq!(access(&stored(&seed).await.unwrap()), access(&newer), "the newer tokens stay in the store");
    assert_eq!(access(&auth.tokens().unwrap()), access(&newer), "the stale flight adopted them");
    assert_eq!(auth.stats().adopted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_after_another_replica_rotated_is_adopted_not_terminal() {
    let redis = RedisServer::start();
    // Rotation, but a reused refresh token is only refused, not punished by revoking the family;
    // the token call outlasts the lease, so the second replica refreshes with the spent token.
    let provider =
        MockProvider::builder().reuse_revokes_family(false).token_latency(Duration::from_millis(800)).start().await;
    let tokens = provider.issue_tokens();
    RedisStore::new(redis.url()).unwrap().put(&key(), &tokens).await.unwrap();
    let replica = || {
        layer(&provider, tokens.clone())
            .store(RedisStore::new(redis.url()).unwrap().lease_ttl(Duration::from_millis(200)))
            .build()
            .unwrap()
    };
    let (first, second) = (replica(), replica());
    let (a, b) = (client_with(&first), client_with(&second));
    let url = provider.api_url("me");
    assert_eq!(a.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(b.get(&url).send().await.unwrap().status(), 200);
    provider.expire_access_tokens();

    let rotating = tokio::spawn({
        let (a, url) = (a.clone(), url.clone());
        async move { a.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The second replica still holds the refresh token the first one has just spent.
    let late = b.get(&url).send().await.map(|r| r.status().as_u16());

    assert_eq!(rotating.await.unwrap().unwrap(), 200);
    assert_eq!(late.unwrap(), 200, "the second replica adopted the rotated tokens");
    assert!(!second.state().is_reauthorization_required(), "{:?}", second.state());
    assert_eq!(provider.stats().invalid_grants, 1, "the stale refresh token was refused once");
    assert_eq!(provider.stats().token_calls, 2);
    assert_eq!(access(&first.tokens().unwrap()), access(&second.tokens().unwrap()));
    let saved = stored(&RedisStore::new(redis.url()).unwrap()).await.unwrap();
    assert_eq!(access(&saved), access(&first.tokens().unwrap()));
    assert_eq!(second.stats().adopted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_storm_keeps_valid_tokens_working_and_saves_them_once_back() {
    let mut redis = RedisServer::start();
    let provider = MockProvider::builder().token_latency(Duration::from_millis(600)).start().await;
    let store = RedisStore::new(redis.url()).unwrap().command_timeout(Duration::from_millis(500));
    store.put(&key(), &provider.issue_tokens()).await.unwrap();
    let errors = Arc::new(parking_lot::Mutex::new(Vec::<StoreError>::new()));
    let auth = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(200))
        .on_store_error({
            let errors = errors.clone();
            move |_, err| errors.lock().push(err.clone())
        })
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    // Redis dies while the refresh is in its token call, holding the lease.
    provider.expire_access_tokens();
    let storming = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { storm(&client, &url, 100, None).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    redis.kill();
    let statuses = storming.await.unwrap();
    assert_eq!(count(&statuses, 200), 100, "the new tokens are used although they could not be saved");
    assert!(!errors.lock().is_empty() && auth.stats().store_failures >= 1);
    assert!(errors.lock().iter().all(|err| matches!(err, StoreError::Backend(_))), "{:?}", errors.lock());
    let in_use = auth.tokens().unwrap();

    // Redis down: a still-valid token keeps working.
    let statuses = storm(&client, &url, 50, None).await;
    assert_eq!(count(&statuses, 200), 50);

    // A refresh that needs the lock fails with a typed error, quickly.
    provider.expire_access_tokens();
    let started = Instant::now();
    let err = client.get(&url).send().await.unwrap_err();
    match Error::from_middleware(&err) {
        Some(Error::Store { source: StoreError::Backend(_), .. }) => {}
        other => panic!("expected a store backend error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Redis is back (empty: nothing was persisted). The retried save lands...
    redis.restart();
    until("the retried save reached Redis", Duration::from_secs(10), || async {
        store.get(&key()).await.ok().flatten().is_some_and(|saved| access(&saved) == access(&in_use))
    })
    .await;
    // ...and the next refresh works again.
    until("a refresh succeeded after Redis came back", Duration::from_secs(10), || async {
        client.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let saved = stored(&store).await.unwrap();
    assert_eq!(access(&saved), access(&auth.tokens().unwrap()), "the refreshed tokens were saved");
    assert_ne!(access(&saved), access(&in_use));
    assert_eq!(provider.stats().token_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tokens_goes_to_redis() {
    let redis = RedisServer::start();
    let provider = MockProvider::start().await;
    let store = RedisStore::new(redis.url()).unwrap();
    let auth = TokenRefresh::builder(crate::helpers::grant(&provider)).store(store.clone()).build().unwrap();
    let tokens = provider.issue_tokens();
    auth.set_tokens(tokens.clone()).await.unwrap();
    let saved = stored(&store).await.unwrap();
    assert_eq!((access(&saved), saved.refresh_token()), (access(&tokens), tokens.refresh_token()));
    assert_eq!(client_with(&auth).get(provider.api_url("me")).send().await.unwrap().status(), 200);
}

// ---------------------------------------------------------------------------------------------
// The store on its own: layout, lease, fencing, faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_one_json_value_with_a_generation_that_grows_with_each_save() {
    let redis = RedisServer::start();
    let store = RedisStore::new(redis.url()).unwrap().key_prefix("test:");
    assert_eq!(store.get(&key()).await.unwrap(), None);
    let first = TokenSet::new("a1").with_refresh_token("r1").with_expires_in(Duration::from_secs(60));
    let second = TokenSet::new("a2").with_refresh_token("r2").with_scope("read write");
    store.put(&key(), &first).await.unwrap();
    store.put(&key(), &second).await.unwrap();

    let mut raw = redis.connection().await;
    let value: String = redis::cmd("GET").arg("test:tokens:default").query_async(&mut raw).await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(value["generation"], 2);
    assert_eq!(value["tokens"], serde_json::to_value(&second).unwrap());
    assert_eq!(store.get(&key()).await.unwrap(), Some(second));
    assert_eq!(store.get(&TokenKey::new("someone-else")).await.unwrap(), None);
}

#[tokio::test]
async fn unlock_releases_at_once_and_never_someone_elses_lease() {
    let redis = RedisServer::start();
    let a = RedisStore::new(redis.url()).unwrap().lease_ttl(Duration::from_millis(200));
    let b = RedisStore::new(redis.url()).unwrap();
    let lock_key = a.lock_key(&key());
    let mut raw = redis.connection().await;

    let held = a.lock(&key()).await.unwrap().unwrap();
    held.unlock().await.unwrap();
    let started = Instant::now();
    b.lock(&key()).await.unwrap().unwrap().unlock().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(100), "released at once");

    // A holder whose lease expired and passed to another must not release the other's.
    let stale = a.lock(&key()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let current = b.lock(&key()).await.unwrap().unwrap();
    stale.unlock().await.unwrap();
    let owner: Option<String> = redis::cmd("GET").arg(&lock_key).query_async(&mut raw).await.unwrap();
    assert!(owner.is_some(), "the current holder's lease survives the stale holder's unlock");
    current.unlock().await.unwrap();
    let owner: Option<String> = redis::cmd("GET").arg(&lock_key).query_async(&mut raw).await.unwrap();
    assert_eq!(owner, None);

    // A dropped guard is released in the background.
    drop(a.lock(&key()).await.unwrap());
    let started = Instant::now();
    b.lock(&key()).await.unwrap().unwrap().unlock().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(150), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_lease_held_past_the_lock_timeout_gives_lock_timeout() {
    let redis = RedisServer::start();
    let a = RedisStore::new(redis.url()).unwrap();
    let b = RedisStore::new(redis.url()).unwrap().lock_timeout(Duration::from_millis(300));
    let held = a.lock(&key()).await.unwrap().unwrap();
    let started = Instant::now();
    let err = b.lock(&key()).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300) && started.elapsed() < Duration::from_secs(1));
    // Other keys are not blocked.
    b.lock(&TokenKey::new("other")).await.unwrap().unwrap().unlock().await.unwrap();
    held.unlock().await.unwrap();
}

#[tokio::test]
async fn a_stale_holders_save_is_superseded_and_the_newer_tokens_stay() {
    let redis = RedisServer::start();
    let a = RedisStore::new(redis.url()).unwrap().lease_ttl(Duration::from_millis(200));
    let b = RedisStore::new(redis.url()).unwrap();
    a.put(&key(), &TokenSet::new("t0").with_refresh_token("r0")).await.unwrap();

    let mut stale = a.lock(&key()).await.unwrap().unwrap();
    let read = stale.load().await.unwrap().unwrap();
    assert_eq!(access(&read.tokens), "t0");
    tokio::time::sleep(Duration::from_millis(300)).await; // the lease expires mid-refresh
    let mut current = b.lock(&key()).await.unwrap().unwrap();
    let newer = current.load().await.unwrap().unwrap();
    current.save(&TokenSet::new("t-newer").with_refresh_token("r-newer"), newer.revision).await.unwrap();
    current.unlock().await.unwrap();

    let err = stale.save(&TokenSet::new("t-stale").with_refresh_token("r-stale"), read.revision).await.unwrap_err();
    assert!(matches!(err, StoreError::Superseded), "{err:?}");
    assert_eq!(access(&a.get(&key()).await.unwrap().unwrap()), "t-newer", "the newer token stays");
    stale.unlock().await.unwrap();
}

#[tokio::test]
async fn the_generation_decides_not_the_lease_a_lapsed_holder_saves_when_nothing_newer_was_stored() {
    // A holder whose lease lapsed during a slow token call holds the only valid refresh token
    // (the provider spent the old one): its save lands. The replica that took the lease over
    // read before that save, so its own save is the one rejected.
    let redis = RedisServer::start();
    let a = RedisStore::new(redis.url()).unwrap().lease_ttl(Duration::from_millis(200));
    let b = RedisStore::new(redis.url()).unwrap();
    a.put(&key(), &TokenSet::new("t0")).await.unwrap();

    let mut lapsed = a.lock(&key()).await.unwrap().unwrap();
    let lapsed_read = lapsed.load().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut current = b.lock(&key()).await.unwrap().unwrap();
    let current_read = current.load().await.unwrap().unwrap();
    assert_eq!(access(&current_read.tokens), "t0");

    let saved = lapsed.save(&TokenSet::new("t-lapsed"), lapsed_read.revision).await.unwrap();
    assert_eq!(saved, lapsed_read.revision.next());
    let err = current.save(&TokenSet::new("t-current"), current_read.revision).await.unwrap_err();
    assert!(matches!(err, StoreError::Superseded), "{err:?}");
    assert_eq!(access(&b.get(&key()).await.unwrap().unwrap()), "t-lapsed");
    current.unlock().await.unwrap();
    lapsed.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_from_any_task_is_fenced_by_the_revision_it_names_not_by_who_holds_the_lease() {
    let redis = RedisServer::start();
    let shared = RedisStore::new(redis.url()).unwrap();
    shared.put(&key(), &TokenSet::new("t0")).await.unwrap();

    let mut held = shared.lock(&key()).await.unwrap().unwrap();
    let read = held.load().await.unwrap().unwrap();
    // Another task saving through the same store over the same revision (another layer, a save
    // moved into a task of its own): the store does not guess who holds the lease; it lands.
    let other_task = tokio::spawn({
        let shared = shared.clone();
        async move { shared.save(&key(), &TokenSet::new("t-other-task"), read.revision).await }
    });
    other_task.await.unwrap().unwrap();
    // The holder's save over the same revision is now late, and is rejected.
    let err = held.save(&TokenSet::new("t-holder"), read.revision).await.unwrap_err();
    assert!(matches!(err, StoreError::Superseded), "{err:?}");
    assert_eq!(access(&shared.get(&key()).await.unwrap().unwrap()), "t-other-task");
    held.unlock().await.unwrap();
}

#[tokio::test]
async fn a_removal_leaves_no_tokens_keeps_the_generation_and_refuses_a_save_older_than_it() {
    let redis = RedisServer::start();
    let a = RedisStore::new(redis.url()).unwrap().key_prefix("test:");
    let b = RedisStore::new(redis.url()).unwrap().key_prefix("test:");
    let first = a.put(&key(), &TokenSet::new("t0").with_refresh_token("r0")).await.unwrap();
    let mut lease = b.lock(&key()).await.unwrap().unwrap();
    assert!(matches!(lease.remove(Revision::NONE).await, Err(StoreError::Superseded)), "fenced like a save");
    let removed = lease.remove(first).await.unwrap();
    lease.unlock().await.unwrap();
    assert_eq!(removed, first.next());

    let mut raw = redis.connection().await;
    let value: String = redis::cmd("GET").arg("test:tokens:default").query_async(&mut raw).await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&value).unwrap(),
        serde_json::json!({"generation": 2, "tokens": null})
    );
    assert_eq!(a.load(&key()).await.unwrap(), None, "no tokens for any replica");
    // A replica's save retried over the revoked set's generation, or a seed over nothing: refused.
    for late in [first, Revision::NONE] {
        let err = a.save(&key(), &TokenSet::new("t0").with_refresh_token("r0"), late).await.unwrap_err();
        assert!(matches!(err, StoreError::Removed { revision } if revision == removed), "{err:?}");
    }
    assert!(matches!(a.remove(&key(), first).await, Err(StoreError::Removed { .. })));
    // New tokens after a new login go over the removal.
    a.save(&key(), &TokenSet::new("t-login"), removed).await.unwrap();
    assert_eq!(stored(&a).await.map(|t| access(&t).to_owned()), Some("t-login".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_by_one_replica_needs_a_login_in_every_replica() {
    let redis = RedisServer::start();
    let provider = MockProvider::start().await;
    RedisStore::new(redis.url()).unwrap().put(&key(), &provider.issue_tokens()).await.unwrap();
    let replica = || {
        TokenRefresh::builder(crate::helpers::grant(&provider).revocation_url(provider.revocation_url()))
            .store(RedisStore::new(redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (here, there) = (replica(), replica());
    let there_client = client_with(&there);
    assert_eq!(there_client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200);

    tokio::time::timeout(Duration::from_secs(30), here.revoke()).await.unwrap().unwrap();
    assert_eq!(stored(&RedisStore::new(redis.url()).unwrap()).await, None);
    let err = there_client.get(provider.api_url("v1/me")).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).is_some_and(Error::is_reauthorization_required), "{err:?}");
    assert_eq!(stored(&RedisStore::new(redis.url()).unwrap()).await, None, "nothing was saved back");
}

#[tokio::test]
async fn a_save_retried_after_an_outage_never_overwrites_a_newer_set() {
    let redis = RedisServer::start();
    let a = RedisStore::new(redis.url()).unwrap();
    let b = RedisStore::new(redis.url()).unwrap();
    let first = a.put(&key(), &TokenSet::new("t0")).await.unwrap();
    // Replica A's save of t1 over `first` failed (Redis was away); meanwhile replica B saved.
    b.put(&key(), &TokenSet::new("t-b").with_refresh_token("r-b")).await.unwrap();
    // A's retry names the revision its set rests on: refused, nothing written.
    let err = a.save(&key(), &TokenSet::new("t1"), first).await.unwrap_err();
    assert!(matches!(err, StoreError::Superseded), "{err:?}");
    let stored = a.load(&key()).await.unwrap().unwrap();
    assert_eq!((access(&stored.tokens), stored.revision), ("t-b", first.next()));
}

#[tokio::test]
async fn a_corrupt_value_is_a_typed_error_and_is_never_overwritten() {
    let redis = RedisServer::start();
    let store = RedisStore::new(redis.url()).unwrap();
    let name = store.tokens_key(&key());
    let mut raw = redis.connection().await;
    let _: () = redis::cmd("SET").arg(&name).arg("{\"access_token\": \"not ours").query_async(&mut raw).await.unwrap();

    let err = store.get(&key()).await.unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(message) if message.contains(&name)), "{err:?}");
    assert!(!format!("{err:?}").contains("not ours"), "the content is not echoed: {err:?}");
    let err = store.put(&key(), &TokenSet::new("t")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(message) if message.contains(&name)), "{err:?}");
    let value: String = redis::cmd("GET").arg(&name).query_async(&mut raw).await.unwrap();
    assert_eq!(value, "{\"access_token\": \"not ours");
}

#[tokio::test]
async fn with_redis_down_every_operation_is_a_quick_backend_error() {
    let mut redis = RedisServer::start();
    let store = RedisStore::new(redis.url()).unwrap().command_timeout(Duration::from_millis(500));
    store.ping().await.unwrap();
    redis.kill();

    let started = Instant::now();
    let errors = [
        store.ping().await.unwrap_err(),
        store.get(&key()).await.unwrap_err(),
        store.put(&key(), &TokenSet::new("t")).await.unwrap_err(),
        store.lock(&key()).await.unwrap_err(),
    ];
    for err in &errors {
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(std::error::Error::source(err).is_some_and(|s| s.to_string().starts_with("redis: ")), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());

    // The same store works again once Redis is back.
    redis.restart();
    until("Redis answers again", Duration::from_secs(10), || async { store.ping().await.is_ok() }).await;
    store.put(&key(), &TokenSet::new("t")).await.unwrap();
    assert_eq!(access(&store.get(&key()).await.unwrap().unwrap()), "t");
}

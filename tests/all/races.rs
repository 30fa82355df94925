//! Interleavings that once broke the contract (points 2, 4, 14 and 15): first load against
//! `set_tokens`, a flight overtaken by `set_tokens`, a failed save followed by `invalid_grant`, a
//! stale 401 after a salvaged refresh, a store that cannot be locked. Every wait is bounded, so a
//! hang shows up as a failure, and every ordering is forced with gates, never decided by sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest_token_refresh::testkit::{Fault, MockProvider};
use reqwest_token_refresh::{
    Error, MemoryStore, RefreshError, RefreshTokenGrant, Revision, StoreError, StoreGuard, Stored, TokenKey,
    TokenRefresh, TokenSet, TokenSource, TokenState, TokenStore,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::StoreExt;
use crate::helpers::{Lockless, client_with, counter, eventually, grant, layer, spawn_get};

const BOUND: Duration = Duration::from_secs(10);

fn stored(store: &MemoryStore) -> Option<TokenSet> {
    futures::executor::block_on(store.get(&TokenKey::default())).unwrap()
}

/// A store over memory (with its lock) whose saves fail while `fail_all` is set, and whose next
/// `fail_next` saves fail.
#[derive(Debug, Clone, Default)]
struct FlakyStore {
    tokens: MemoryStore,
    fail_all: Arc<AtomicBool>,
    fail_next: Arc<AtomicUsize>,
}

#[async_trait]
impl TokenStore for FlakyStore {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.tokens.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        let once = self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if once || self.fail_all.load(Ordering::SeqCst) {
            return Err(StoreError::io("writing tokens", std::io::Error::from_raw_os_error(28)));
        }
        self.tokens.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.tokens.remove(key, replaces).await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        crate::helpers::lock_through(self, &self.tokens, key).await
    }
}

// ---------------------------------------------------------------------------------------------
// Bug 1: cache.rs ensure_loaded — a failed seed save of the initial tokens is "retried" by a task
// that exits at once, because `state.unsaved` is never set; the failure is silently dropped.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_seed_save_of_initial_tokens_is_retried_until_saved() {
    let provider = MockProvider::start().await;
    let initial = provider.issue_tokens();
    let store = FlakyStore::default();
    store.fail_next.store(1, Ordering::SeqCst);
    let (errors, store_errors) = counter();
    let auth = layer(&provider, initial.clone())
        .store(store.clone())
        .min_backoff(Duration::from_millis(20))
        .on_store_error(move |_, _| {
            errors.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let client = client_with(&auth);

    let status = timeout(BOUND, client.get(provider.api_url("me")).send()).await.unwrap().unwrap().status();
    assert_eq!(status, 200);
    assert_eq!(store_errors(), 1, "the failed seed save is reported");
    assert_eq!(store.fail_next.load(Ordering::SeqCst), 0);

    // Contract 4: "saving is retried; it is never silently dropped". The store works again, so a
    // retry would succeed at once.
    eventually("the initial tokens were saved by the retry", || stored(&store.tokens).as_ref() == Some(&initial)).await;
}

// ---------------------------------------------------------------------------------------------
// Bug 2: cache.rs ensure_loaded vs set_tokens — ensure_loaded read an empty store, then
// set_tokens saved the user's new tokens; ensure_loaded then seeds the store with the stale
// initial tokens (it saves before checking `generation == 0`), overwriting the user's tokens.
// ---------------------------------------------------------------------------------------------

/// A store over memory whose first `load` reads, then waits at a gate before answering.
#[derive(Debug, Clone, Default)]
struct GatedLoad {
    tokens: MemoryStore,
    gate_armed: Arc<AtomicBool>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

#[async_trait]
impl TokenStore for GatedLoad {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        let read = self.tokens.load(key).await;
        if self.gate_armed.swap(false, Ordering::SeqCst) {
            // The store has been read; the answer travels back slowly (a network round trip).
            self.entered.notify_one();
            self.release.notified().await;
        }
        read
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.tokens.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.tokens.remove(key, replaces).await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        crate::helpers::lock_through(self, &self.tokens, key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tokens_during_first_load_is_not_overwritten_by_initial_tokens() {
    let provider = MockProvider::start().await;
    let initial = provider.issue_tokens();
    let user = provider.issue_tokens();
    let store = GatedLoad::default();
    store.gate_armed.store(true, Ordering::SeqCst);
    let auth = layer(&provider, initial.clone()).store(store.clone()).build().unwrap();
    let client = client_with(&auth);

    // A first request starts loading the (empty) store...
    let first = spawn_get(&client, provider.api_url("me"));
    timeout(BOUND, store.entered.notified()).await.expect("the first load started");
    // ...while the user re-authorizes.
    timeout(BOUND, auth.set_tokens(user.clone())).await.expect("set_tokens hung").unwrap();
    assert_eq!(stored(&store.tokens).as_ref(), Some(&user));
    store.release.notify_one();
    assert_eq!(timeout(BOUND, first).await.expect("request hung").unwrap().unwrap(), 200);

    assert_eq!(auth.tokens().as_ref(), Some(&user), "memory holds the user's tokens");
    assert_eq!(
        stored(&store.tokens).as_ref().map(|t| t.access_token().secret().to_owned()),
        Some(user.access_token().secret().to_owned()),
        "the store must hold what set_tokens saved, not the initial tokens (a restart would bring them back, \
         and the next refresh adopts them as 'newer')"
    );
}

// ---------------------------------------------------------------------------------------------
// Bug 3: cache.rs fly vs set_tokens with a store without a lock — set_tokens overtakes a running
// flight ("its result will not replace these tokens"), but the flight still saves its result to
// the store afterwards: memory holds the user's tokens, the store the flight's.
// ---------------------------------------------------------------------------------------------

/// A refresh-token grant that waits at a gate before calling the token endpoint.
#[derive(Debug)]
struct GatedSource {
    inner: RefreshTokenGrant,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

#[async_trait]
impl TokenSource for GatedSource {
    async fn fetch(&self, current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
        self.entered.notify_one();
        self.release.notified().await;
        self.inner.fetch(current).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overtaken_flight_does_not_overwrite_set_tokens_in_the_store() {
    let provider = MockProvider::start().await;
    let expired = provider.issue_expired_tokens();
    let user = provider.issue_tokens();
    let store = Lockless::default();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let source = GatedSource { inner: grant(&provider), entered: entered.clone(), release: release.clone() };
    let auth = TokenRefresh::builder(source)
        .initial_tokens(expired)
        .store(store.clone())
        .allow_origin(provider.uri())
        .build()
        .unwrap();
    let client = client_with(&auth);

    let starter = spawn_get(&client, provider.api_url("me"));
    timeout(BOUND, entered.notified()).await.expect("the flight started");
    timeout(BOUND, auth.set_tokens(user.clone())).await.expect("set_tokens hung").unwrap();
    assert_eq!(stored(&store.0).as_ref(), Some(&user));
    release.notify_one();
    assert_eq!(timeout(BOUND, starter).await.expect("request hung").unwrap().unwrap(), 200);
    // The request may come back with the user's tokens before the flight's own token call lands:
    // the store is judged only once the flight has ended, when its save would have happened.
    eventually("the overtaken flight made its token call and ended", || {
        provider.stats().token_calls == 1 && !matches!(auth.state(), TokenState::Refreshing { .. })
    })
    .await;
    assert_eq!(provider.stats().token_calls, 1);

    assert_eq!(auth.tokens().as_ref(), Some(&user), "memory holds the user's tokens");
    assert_eq!(
        stored(&store.0).as_ref().map(|t| t.access_token().secret().to_owned()),
        Some(user.access_token().secret().to_owned()),
        "the overtaken flight overwrote the tokens set_tokens saved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_an_overtaken_flight_take_the_tokens_set_tokens_installed() {
    let provider = MockProvider::start().await;
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let source = GatedSource { inner: grant(&provider), entered: entered.clone(), release: release.clone() };
    let auth = TokenRefresh::builder(source)
        .initial_tokens(provider.issue_expired_tokens())
        .store(Lockless::default())
        .allow_origin(provider.uri())
        .build()
        .unwrap();
    let client = client_with(&auth);
    let waiting = spawn_get(&client, provider.api_url("me"));
    timeout(BOUND, entered.notified()).await.expect("the flight started");

    let user = provider.issue_tokens();
    timeout(BOUND, auth.set_tokens(user.clone())).await.expect("set_tokens hung").unwrap();
    // The flight is still held at its gate: the waiting request was answered by set_tokens.
    assert_eq!(
        timeout(BOUND, waiting).await.expect("the waiting request stayed on the overtaken flight").unwrap().unwrap(),
        200
    );
    assert_eq!(provider.stats().token_calls, 0);
    release.notify_one();
    assert_eq!(auth.tokens().as_ref(), Some(&user));
}

// ---------------------------------------------------------------------------------------------
// Bug 4: cache.rs produce, terminal branch — "check before declaring death" re-reads the store
// even when our own last save failed (trust_store == false), so it adopts the *older* set in the
// store, resurrecting a refresh token that was rotated away; the next refresh spends it again.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_after_a_failed_save_does_not_resurrect_the_older_stored_set() {
    let provider = MockProvider::start().await;
    let s1 = provider.issue_tokens();
    let store = FlakyStore::default();
    let auth = layer(&provider, s1.clone()).store(store.clone()).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    let send = || timeout(BOUND, client.get(&url).send());

    assert_eq!(send().await.unwrap().unwrap().status(), 200, "seeds the store with s1");
    // The disk fills up; the next refresh rotates s1 -> s2, used from memory, unsaved.
    store.fail_all.store(true, Ordering::SeqCst);
    provider.expire_access_tokens();
    assert_eq!(send().await.unwrap().unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    let s2 = auth.tokens().unwrap();
    assert_ne!(s2.refresh_token(), s1.refresh_token());
    assert_eq!(stored(&store.tokens).as_ref(), Some(&s1), "the store still holds the older s1");

    // s2's refresh token is now refused for good.
    provider.fail_next_token_calls(1, Fault::InvalidGrant);
    provider.expire_access_tokens();
    let first = send().await.unwrap();
    let second = send().await.unwrap();

    assert_eq!(
        provider.stats().reuse_detected,
        0,
        "s1's refresh token, rotated away, was spent a second time (tokens now: {:?})",
        auth.tokens()
    );
    let first = first.expect_err("the dead grant must be reported, not a 401 from a resurrected token");
    assert!(Error::from_middleware(&first).is_some_and(Error::is_reauthorization_required), "{first}");
    assert!(second.is_err());
}

// ---------------------------------------------------------------------------------------------
// Bug 5: cache.rs renew + salvage — a garbled token answer that carried a new refresh token is
// published as a new generation holding the *old, rejected* access token (marked expired, but not
// `unusable`). A stale 401 for the previous generation is then "retried with g+1", i.e. with the
// very token the server just rejected, instead of getting the typed cool-down error.
// ---------------------------------------------------------------------------------------------

/// A bare-bones HTTP/1.1 server on loopback that answers every request `401` (no detail), holds
/// the first request until released, and records each request's `Authorization` header.
async fn gated_401_server(
    arrived: Arc<Notify>,
    release: Arc<Notify>,
) -> (String, Arc<parking_lot::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let first = Arc::new(AtomicBool::new(true));
    tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (seen, first, arrived, release) = (seen.clone(), first.clone(), arrived.clone(), release.clone());
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    loop {
                        let mut authorization = String::new();
                        let mut got_any = false;
                        while let Ok(Some(line)) = lines.next_line().await {
                            got_any = true;
                            if line.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':')
                                && name.eq_ignore_ascii_case("authorization")
                            {
                                authorization = value.trim().to_owned();
                            }
                        }
                        if !got_any {
                            return;
                        }
                        seen.lock().push(authorization);
                        if first.swap(false, Ordering::SeqCst) {
                            arrived.notify_one();
                            release.notified().await;
                        }
                        let answer = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_401_is_not_retried_with_the_salvaged_copy_of_the_rejected_token() {
    // Token endpoint: a garbled answer (empty access token) that carries a new refresh token.
    let token_server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "", "refresh_token": "rt-2", "expires_in": 3600
        })))
        .mount(&token_server)
        .await;
    let api = MockServer::start().await;
    Mock::given(path("/api")).respond_with(ResponseTemplate::new(401)).mount(&api).await;
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (slow_api, seen) = gated_401_server(arrived.clone(), release.clone()).await;

    let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", token_server.uri())))
        .initial_tokens(TokenSet::new("a1").with_refresh_token("rt-1"))
        .allow_origin(api.uri())
        .allow_origin(url::Url::parse(&slow_api).unwrap().origin().ascii_serialization())
        .min_backoff(Duration::from_secs(60))
        .max_backoff(Duration::from_secs(60))
        .build()
        .unwrap();
    let client = client_with(&auth);

    // R2 is sent with generation 1 ("a1") and its answer is held back.
    let r2 = tokio::spawn({
        let client = client.clone();
        async move { client.get(slow_api).send().await.map(|r| r.status().as_u16()) }
    });
    timeout(BOUND, arrived.notified()).await.expect("R2 reached the API");

    // R1 gets a 401 for "a1"; its refresh salvages rt-2 and fails transiently.
    let r1 = timeout(BOUND, client.get(format!("{}/api", api.uri())).send()).await.unwrap();
    assert!(r1.is_err(), "the garbled answer fails the refresh: {r1:?}");
    assert_eq!(token_server.received_requests().await.unwrap().len(), 1);

    // Now R2's 401 for "a1" (generation 1) arrives.
    release.notify_one();
    let r2 = timeout(BOUND, r2).await.expect("R2 hung").unwrap();

    assert_eq!(
        seen.lock().clone(),
        vec!["Bearer a1".to_owned()],
        "R2 was retried with the access token the server had just rejected (R2 got {r2:?})"
    );
    let err = r2.expect_err("R2 needs a new token during a cool-down: a typed transient error");
    assert!(Error::from_middleware(&err).and_then(Error::retry_after).is_some(), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Bug 6: cache.rs set_tokens — a failure to take the store's lock returns `Error::Store` before
// anything is installed, while the documented meaning of `Error::Store` from `set_tokens` is
// "saving failed — the tokens are in use anyway and the save is retried". The caller cannot tell
// the two apart, and the tokens (passed by value) are dropped: a terminal key stays terminal.
// ---------------------------------------------------------------------------------------------

/// A store over memory whose lock cannot be taken (a busy Redis lease, say).
#[derive(Debug, Clone, Default)]
struct LockTimesOut(MemoryStore);

#[async_trait]
impl TokenStore for LockTimesOut {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.0.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.remove(key, replaces).await
    }

    async fn lock(&self, _key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        Err(StoreError::LockTimeout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tokens_store_error_means_the_tokens_are_in_use() {
    let provider = MockProvider::start().await;
    let user = provider.issue_tokens();
    let auth = TokenRefresh::builder(grant(&provider)).store(LockTimesOut::default()).build().unwrap();

    let result = timeout(BOUND, auth.set_tokens(user.clone())).await.expect("set_tokens hung");
    if let Err(err) = &result {
        assert!(matches!(err, Error::Store { .. }), "{err}");
        // Documented: "Error::Store if saving failed — the tokens are in use anyway".
        assert_eq!(auth.tokens().as_ref(), Some(&user), "Error::Store returned, yet the tokens were not installed");
    }
    let status = timeout(BOUND, client_with(&auth).get(provider.api_url("me")).send()).await.unwrap();
    assert_eq!(status.unwrap().status(), 200);
}

/// A memory store without a lock whose saves fail while `fail` is set.
#[derive(Debug, Clone, Default)]
struct FlakyLockless {
    tokens: MemoryStore,
    fail: Arc<AtomicBool>,
}

#[async_trait]
impl TokenStore for FlakyLockless {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.tokens.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::io("writing tokens", std::io::Error::from_raw_os_error(28)));
        }
        self.tokens.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.tokens.remove(key, replaces).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_own_old_set_was_saved_meanwhile_by_the_save_retry_saves_over_it() {
    let provider = MockProvider::start().await;
    let old = provider.issue_expired_tokens();
    let store = FlakyLockless::default();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let source = GatedSource { inner: grant(&provider), entered: entered.clone(), release: release.clone() };
    let auth = TokenRefresh::builder(source)
        .store(store.clone())
        .allow_origin(provider.uri())
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(50))
        .build()
        .unwrap();
    let client = client_with(&auth);

    // The user's tokens are in use but not saved (the disk was full); a retry is on its way.
    store.fail.store(true, Ordering::SeqCst);
    let unsaved = timeout(BOUND, auth.set_tokens(old.clone())).await.expect("set_tokens hung");
    assert!(matches!(unsaved, Err(Error::Store { .. })), "{unsaved:?}");
    // A refresh starts from them, and while it fetches, the retry saves them.
    let request = spawn_get(&client, provider.api_url("me"));
    timeout(BOUND, entered.notified()).await.expect("the refresh started");
    store.fail.store(false, Ordering::SeqCst);
    eventually("the save retry saved the old set", || stored(&store.tokens).as_ref() == Some(&old)).await;
    release.notify_one();
    assert_eq!(timeout(BOUND, request).await.expect("request hung").unwrap().unwrap(), 200);

    // The old set in the store is the one the refresh replaces, not a newer one to adopt.
    let new = auth.tokens().expect("tokens in memory");
    assert_ne!(new.refresh_token(), old.refresh_token(), "the refreshed set is in use");
    assert_eq!(stored(&store.tokens).as_ref(), Some(&new), "and saved over the old one");
    provider.expire_access_tokens();
    release.notify_one();
    assert_eq!(client.get(provider.api_url("me")).send().await.unwrap().status(), 200);
    assert_eq!((provider.stats().token_calls, provider.stats().reuse_detected), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_set_saved_on_retry_stays_the_same_tokens_not_an_adoption() {
    let provider = MockProvider::start().await;
    let store = FlakyStore::default();
    let (refreshed, hooks) = counter();
    let auth = TokenRefresh::builder(grant(&provider))
        .store(store.clone())
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(50))
        .on_refresh(move |_, _| {
            refreshed.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    store.fail_all.store(true, Ordering::SeqCst);
    let user = provider.issue_tokens();
    let unsaved = timeout(BOUND, auth.set_tokens(user.clone())).await.expect("set_tokens hung");
    assert!(matches!(unsaved, Err(Error::Store { .. })), "{unsaved:?}");
    store.fail_all.store(false, Ordering::SeqCst);
    eventually("the retry saved the user's tokens", || stored(&store.tokens).as_ref() == Some(&user)).await;
    // The retry's answer is applied right after its save: give it time to (wrongly) count as an
    // adoption of newer tokens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(auth.state(), TokenState::Ready { generation: 1, .. }), "{:?}", auth.state());
    assert_eq!((auth.stats().adopted, hooks()), (0, 0), "the user's own tokens, saved late, are not new tokens");
    assert_eq!(auth.tokens().as_ref(), Some(&user));
}

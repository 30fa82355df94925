//! Contract point 4: a new refresh token is saved before it is used; a failed save is reported
//! and retried, and the tokens stay in use from memory meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{MemoryStore, Revision, StoreError, StoreGuard, Stored, TokenKey, TokenSet, TokenStore};

use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, counter, eventually, layer, storm};

/// A store over memory whose next `failures` saves fail as a full disk would. Stands in for a
/// durable store on a volume that has run out of space.
#[derive(Debug, Clone, Default)]
struct FullDisk {
    tokens: MemoryStore,
    failures: Arc<AtomicUsize>,
}

#[async_trait]
impl TokenStore for FullDisk {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.tokens.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        let failing = self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_keeps_the_new_tokens_in_use_reports_it_and_retries_until_saved() {
    let provider = MockProvider::start().await;
    let store = FullDisk::default();
    let (errors, store_errors) = counter();
    let auth = layer(&provider, provider.issue_tokens())
        .store(store.clone())
        .min_backoff(Duration::from_millis(20))
        .on_store_error(move |_, err| {
            assert!(err.to_string().contains("writing tokens"));
            errors.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200, "seeds the store");

    store.failures.store(3, Ordering::SeqCst);
    provider.expire_access_tokens();
    let statuses = storm(&client, &url, 50, None).await;

    assert_eq!(count(&statuses, 200), 50, "the new tokens are used even though saving them failed");
    assert_eq!(provider.stats().token_calls, 1);
    let in_use = auth.tokens().unwrap();
    eventually("the save has been retried until it succeeded", || store.failures.load(Ordering::SeqCst) == 0).await;
    eventually("the rotated refresh token is in the store", || {
        futures::executor::block_on(store.tokens.get(&TokenKey::default())).unwrap().as_ref() == Some(&in_use)
    })
    .await;
    assert_eq!(store_errors(), 3, "every failed save was reported");
    assert_eq!(auth.stats().store_failures, 3);
}

#[tokio::test]
async fn new_tokens_are_in_the_store_before_any_request_uses_them() {
    let provider = MockProvider::start().await;
    let store = MemoryStore::new();
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    let seen_in_store = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let auth = layer(&provider, tokens)
        .store(store.clone())
        .on_refresh({
            let (store, seen) = (store.clone(), seen_in_store.clone());
            move |key, tokens| {
                // Runs as the tokens are published, before any waiting request is released.
                let stored = futures::executor::block_on(store.load(key)).unwrap();
                seen.lock().push(stored.map(|stored| stored.tokens).as_ref() == Some(tokens));
            }
        })
        .build()
        .unwrap();

    assert_eq!(client_with(&auth).get(provider.api_url("me")).send().await.unwrap().status(), 200);
    assert_eq!(*seen_in_store.lock(), vec![true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_fails_once_under_the_lock_is_retried_before_another_replica_may_refresh() {
    // Replicas A and B share one store; its next save fails (a connection reset, a pool briefly
    // exhausted). A refresh that released the lock with its rotation unsaved would let the other
    // replica spend the refresh token the rotation had just killed: the provider detects the reuse
    // and revokes the whole grant, for both.
    let provider = MockProvider::builder().token_latency(Duration::from_millis(50)).start().await;
    let store = FullDisk::default();
    store.tokens.put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap();
    provider.expire_access_tokens();
    let replica = || {
        layer(&provider, provider.issue_tokens())
            .store(store.clone())
            .min_backoff(Duration::from_millis(20))
            .build()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    store.failures.store(1, Ordering::SeqCst);

    let url = provider.api_url("me");
    let (client_a, client_b) = (client_with(&a), client_with(&b));
    let (from_a, from_b) = tokio::join!(storm(&client_a, &url, 20, None), storm(&client_b, &url, 20, None));
    assert_eq!((count(&from_a, 200), count(&from_b, 200)), (20, 20));
    let stats = provider.stats();
    assert_eq!((stats.reuse_detected, stats.invalid_grants), (0, 0), "no spent refresh token presented: {stats:?}");
    assert_eq!(stats.token_calls, 1, "one refresh between the replicas");
    assert_eq!(store.failures.load(Ordering::SeqCst), 0, "the failure happened");
    assert_eq!(a.stats().store_failures + b.stats().store_failures, 1, "and was reported");
}

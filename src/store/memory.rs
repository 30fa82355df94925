//! [`MemoryStore`]: tokens in this process's memory.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{StoreLock, TokenStore};
use crate::error::StoreError;
use crate::key::TokenKey;
use crate::token::TokenSet;

/// Keeps tokens in memory; the default store.
///
/// Nothing survives a restart. Clones share one map and one lock per key, so several
/// [`TokenRefresh`](crate::TokenRefresh) layers in one process that are given clones of the same
/// `MemoryStore` refresh once between them, like processes sharing a durable store.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: Mutex<HashMap<TokenKey, TokenSet>>,
    locks: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn load(&self, key: &TokenKey) -> Result<Option<TokenSet>, StoreError> {
        Ok(self.inner.tokens.lock().get(key).cloned())
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet) -> Result<(), StoreError> {
        self.inner.tokens.lock().insert(key.clone(), tokens.clone());
        Ok(())
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreLock>>, StoreError> {
        let lock = self.inner.locks.lock().entry(key.clone()).or_default().clone();
        Ok(Some(Box::new(MemoryLock { _guard: lock.lock_owned().await })))
    }
}

#[derive(Debug)]
struct MemoryLock {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl StoreLock for MemoryLock {
    async fn unlock(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_share_tokens_and_locks() {
        let a = MemoryStore::new();
        let b = a.clone();
        let key = TokenKey::new("u");
        a.save(&key, &TokenSet::new("t")).await.unwrap();
        assert_eq!(b.load(&key).await.unwrap().unwrap().access_token().secret(), "t");

        let held = a.lock(&key).await.unwrap().unwrap();
        let waiting = tokio::spawn(async move { b.lock(&TokenKey::new("u")).await.map(|l| l.is_some()) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the second lock must wait for the first");
        held.unlock().await.unwrap();
        assert!(waiting.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn keys_are_independent() {
        let store = MemoryStore::new();
        store.save(&TokenKey::new("a"), &TokenSet::new("ta")).await.unwrap();
        assert!(store.load(&TokenKey::new("b")).await.unwrap().is_none());
        let _a = store.lock(&TokenKey::new("a")).await.unwrap();
        // A held lock on one key never blocks another key.
        let _b = store.lock(&TokenKey::new("b")).await.unwrap();
    }
}

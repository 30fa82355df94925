//! [`MemoryStore`]: tokens in this process's memory.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Held, Revision, StoreGuard, Stored, TokenStore};
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
    /// Per key, its revision and the tokens saved as it; `None` once removed (a tombstone, so
    /// that the revision goes on counting and no older set is saved over the removal).
    tokens: Mutex<HashMap<TokenKey, (Revision, Option<TokenSet>)>>,
    locks: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `tokens` for `key` (`None`: removes them) over `replaces`; see [`Held::write_over`].
    fn write(&self, key: &TokenKey, tokens: Option<&TokenSet>, replaces: Revision) -> Result<Revision, StoreError> {
        let mut map = self.inner.tokens.lock();
        let held = match map.get(key) {
            None => Held::Nothing,
            Some((revision, Some(_))) => Held::Tokens(*revision),
            Some((revision, None)) => Held::Removed(*revision),
        };
        let revision = held.write_over(replaces)?;
        map.insert(key.clone(), (revision, tokens.cloned()));
        Ok(revision)
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        let map = self.inner.tokens.lock();
        Ok(map.get(key).and_then(|(revision, tokens)| Some(Stored::new(tokens.clone()?, *revision))))
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.write(key, Some(tokens), replaces)
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.write(key, None, replaces)
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        let lock = self.inner.locks.lock().entry(key.clone()).or_default().clone();
        let held = lock.lock_owned().await;
        Ok(Some(Box::new(MemoryGuard { store: self, key: key.clone(), _held: held })))
    }
}

/// A held per-key lock of a [`MemoryStore`].
#[derive(Debug)]
struct MemoryGuard<'a> {
    store: &'a MemoryStore,
    key: TokenKey,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl StoreGuard for MemoryGuard<'_> {
    async fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.store.load(&self.key).await
    }

    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.save(&self.key, tokens, replaces).await
    }

    async fn remove(&mut self, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.remove(&self.key, replaces).await
    }

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
        a.save(&key, &TokenSet::new("t"), Revision::NONE).await.unwrap();
        assert_eq!(b.load(&key).await.unwrap().unwrap().tokens.access_token().secret(), "t");

        let held = a.lock(&key).await.unwrap().unwrap();
        let waiting = tokio::spawn(async move { b.lock(&TokenKey::new("u")).await.map(|l| l.is_some()) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the second lock must wait for the first");
        held.unlock().await.unwrap();
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_save_over_an_older_revision_is_refused_and_writes_nothing() {
        let store = MemoryStore::new();
        let key = TokenKey::new("u");
        let first = store.save(&key, &TokenSet::new("t1"), Revision::NONE).await.unwrap();
        assert_eq!(first, Revision::new(1));
        let second = store.save(&key, &TokenSet::new("t2"), first).await.unwrap();
        assert_eq!(second, Revision::new(2));
        let late = store.save(&key, &TokenSet::new("late"), first).await.unwrap_err();
        assert!(matches!(late, StoreError::Superseded), "{late:?}");
        let stored = store.load(&key).await.unwrap().unwrap();
        assert_eq!((stored.tokens.access_token().secret(), stored.revision), ("t2", second));
    }

    #[tokio::test]
    async fn saves_under_the_guard_are_fenced_too() {
        let store = MemoryStore::new();
        let key = TokenKey::new("u");
        store.save(&key, &TokenSet::new("t1"), Revision::NONE).await.unwrap();
        let mut guard = store.lock(&key).await.unwrap().unwrap();
        let read = guard.load().await.unwrap().unwrap();
        assert!(matches!(guard.save(&TokenSet::new("x"), Revision::NONE).await, Err(StoreError::Superseded)));
        assert_eq!(guard.save(&TokenSet::new("t2"), read.revision).await.unwrap(), Revision::new(2));
        guard.unlock().await.unwrap();
    }

    #[tokio::test]
    async fn a_removal_keeps_the_revision_so_no_older_set_comes_back() {
        let store = MemoryStore::new();
        let key = TokenKey::new("u");
        let first = store.save(&key, &TokenSet::new("t1"), Revision::NONE).await.unwrap();
        let late = store.remove(&key, Revision::NONE).await.unwrap_err();
        assert!(matches!(late, StoreError::Superseded), "a removal is fenced like a save: {late:?}");
        let mut guard = store.lock(&key).await.unwrap().unwrap();
        let removed = guard.remove(first).await.unwrap();
        guard.unlock().await.unwrap();
        assert_eq!(removed, Revision::new(2));
        assert!(store.load(&key).await.unwrap().is_none(), "no tokens after the removal");
        for stale in [first, Revision::NONE] {
            let refused = store.save(&key, &TokenSet::new("t1"), stale).await.unwrap_err();
            assert!(matches!(refused, StoreError::Removed { revision } if revision == removed), "{refused:?}");
        }
        assert!(matches!(store.remove(&key, first).await, Err(StoreError::Removed { .. })));
        let after_login = store.save(&key, &TokenSet::new("t2"), removed).await.unwrap();
        assert_eq!(after_login, Revision::new(3));
        assert_eq!(store.load(&key).await.unwrap().unwrap().tokens.access_token().secret(), "t2");
    }

    #[tokio::test]
    async fn keys_are_independent() {
        let store = MemoryStore::new();
        store.save(&TokenKey::new("a"), &TokenSet::new("ta"), Revision::NONE).await.unwrap();
        assert!(store.load(&TokenKey::new("b")).await.unwrap().is_none());
        let _a = store.lock(&TokenKey::new("a")).await.unwrap();
        // A held lock on one key never blocks another key.
        let _b = store.lock(&TokenKey::new("b")).await.unwrap();
    }
}

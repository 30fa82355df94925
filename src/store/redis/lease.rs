//! Taking and releasing a key's lease: the `SET NX PX` loop that takes it, [`RedisGuard`] that
//! holds it and saves under it, the release in place or in the background, and the random owner
//! ids that tell holders apart.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::RedisStore;
use super::scripts::RELEASE;
use crate::error::StoreError;
use crate::key::TokenKey;
use crate::store::{Revision, StoreGuard, Stored, TokenStore};
use crate::token::TokenSet;

impl RedisStore {
    /// Takes `key`'s lease, polling until it is free or the lock timeout has passed; see
    /// [`TokenStore::lock`].
    pub(super) async fn take_lease(&self, key: &TokenKey) -> Result<RedisGuard<'_>, StoreError> {
        let lock_key = self.lock_key(key);
        let owner: Arc<str> = Arc::from(owner_id());
        let ttl_ms = u64::try_from(self.options.lease_ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        // A timeout too long to represent has no deadline of its own (the layer's flight deadline
        // still ends the wait).
        let deadline = tokio::time::Instant::now().checked_add(self.options.lock_timeout);
        let mut conn = self.connection()?;
        // Until the lease is handed out, a failure or a cancellation releases whatever a `SET`
        // that went through may have taken.
        let mut pending = PendingLease { store: self, lock_key: &lock_key, owner: &owner, armed: true };
        loop {
            let taken: Option<String> = self
                .run(
                    "taking the lock",
                    redis::cmd("SET")
                        .arg(&lock_key)
                        .arg(&*owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn),
                )
                .await?;
            if taken.is_some() {
                break;
            }
            let now = tokio::time::Instant::now();
            let pause = match deadline {
                Some(deadline) if now >= deadline => {
                    pending.armed = false;
                    tracing::warn!(key = %key, timeout = ?self.options.lock_timeout, "timed out waiting for another replica's lease");
                    return Err(StoreError::LockTimeout);
                }
                Some(deadline) => self.options.poll_interval.min(deadline - now),
                None => self.options.poll_interval,
            };
            tokio::time::sleep(pause).await;
        }
        pending.armed = false;
        drop(pending);
        Ok(RedisGuard { store: self, key: key.clone(), lock_key, owner, released: false })
    }

    /// Deletes the lease at `lock_key` if `owner` still holds it; `true` if it did.
    async fn release(&self, lock_key: &str, owner: &str) -> Result<bool, StoreError> {
        let mut conn = self.connection()?;
        let mut invocation = RELEASE.prepare_invoke();
        invocation.key(lock_key).arg(owner);
        let released: i64 = self.run("releasing the lock", invocation.invoke_async(&mut conn)).await?;
        Ok(released == 1)
    }

    /// Releases in the background, where a lease cannot be released in place (a dropped guard, a
    /// cancelled or failed `lock`). Without a runtime, the lease simply expires.
    fn release_in_background(&self, lock_key: String, owner: Arc<str>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            runtime.spawn(async move {
                if let Err(err) = store.release(&lock_key, &owner).await {
                    tracing::debug!(lock = %lock_key, error = %err, "releasing an abandoned lease failed; it will expire");
                }
            });
        }
    }
}

/// Releases a lease `lock` may have taken when it fails or is cancelled.
struct PendingLease<'a> {
    store: &'a RedisStore,
    lock_key: &'a str,
    owner: &'a Arc<str>,
    armed: bool,
}

impl Drop for PendingLease<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.release_in_background(self.lock_key.to_owned(), self.owner.clone());
        }
    }
}

/// A held lease; see [`TokenStore::lock`]. Saves through it name its owner id.
pub(super) struct RedisGuard<'a> {
    store: &'a RedisStore,
    key: TokenKey,
    lock_key: String,
    owner: Arc<str>,
    released: bool,
}

impl fmt::Debug for RedisGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGuard").field("lock_key", &self.lock_key).field("owner", &self.owner).finish()
    }
}

#[async_trait]
impl StoreGuard for RedisGuard<'_> {
    async fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.store.load(&self.key).await
    }

    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.save_fenced(&self.key, Some(tokens), replaces, Some(&self.owner)).await
    }

    async fn remove(&mut self, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.save_fenced(&self.key, None, replaces, Some(&self.owner)).await
    }

    async fn unlock(mut self: Box<Self>) -> Result<(), StoreError> {
        self.released = true;
        if !self.store.release(&self.lock_key, &self.owner).await? {
            tracing::warn!(
                key = %self.key,
                "the lease had expired before it was released; another replica may have refreshed meanwhile (raise lease_ttl if refreshes take this long)"
            );
        }
        Ok(())
    }
}

impl Drop for RedisGuard<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.store.release_in_background(std::mem::take(&mut self.lock_key), self.owner.clone());
        }
    }
}

/// A random lease owner id, unique across processes and machines.
fn owner_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let pid = std::process::id();
    // `RandomState` keys come from the OS's randomness; two of them give 128 random bits.
    let random = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u64(count);
        hasher.write_u128(nanos);
        hasher.write_u32(pid);
        hasher.finish()
    };
    format!("{:016x}{:016x}-{pid}-{count}", random(1), random(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| owner_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}

//! Where tokens live between refreshes: the [`TokenStore`] trait and [`MemoryStore`].

mod file;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::key::TokenKey;
use crate::token::TokenSet;

pub use file::{DEFAULT_FILE_LOCK_TIMEOUT, FileStore};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;

/// Keeps token sets, per [`TokenKey`], and optionally lets processes share one refresh.
///
/// The layer saves every new token set **before** any request uses it: with providers that
/// rotate refresh tokens, the new refresh token is the only one that works, and a crash between
/// using the access token and saving it would lose the user's authorization for good.
///
/// A store that several processes or replicas share should implement [`lock`](Self::lock): the
/// layer takes that lock around a refresh, re-reads the store under it, and adopts what another
/// process already saved instead of spending the refresh token a second time.
#[async_trait]
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// Reads the token set saved for `key`, if any.
    async fn load(&self, key: &TokenKey) -> Result<Option<TokenSet>, StoreError>;

    /// Saves the token set for `key`, durably: when this returns `Ok`, a restart reads it back.
    async fn save(&self, key: &TokenKey, tokens: &TokenSet) -> Result<(), StoreError>;

    /// Takes this store's lock for `key`, held while one refresh runs, so that processes sharing
    /// the store refresh once between them. Waits until the lock is free (or fails with
    /// [`StoreError::LockTimeout`]).
    ///
    /// The default takes no lock (`Ok(None)`): the layer's in-process single flight is then the
    /// only one.
    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreLock>>, StoreError> {
        let _ = key;
        Ok(None)
    }
}

/// A held [`TokenStore::lock`]. Dropping it must release it too (a lease may simply expire), but
/// the layer calls [`unlock`](Self::unlock) so that a failure to release can be reported.
#[async_trait]
pub trait StoreLock: fmt::Debug + Send + Sync {
    /// Releases the lock.
    async fn unlock(self: Box<Self>) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn token_store_is_object_safe() {
        let store: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
        let _ = format!("{store:?}");
    }
}

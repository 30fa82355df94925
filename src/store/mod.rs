//! Where tokens live between refreshes: the [`TokenStore`] trait, its lock's [`StoreGuard`], and
//! the [`Revision`] every save names so that no save overwrites a newer one.

mod file;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;

pub use async_trait::async_trait;

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

/// Which save of a key's tokens a store holds: 0 before the first, then one more with every save.
///
/// A save names the revision it replaces (compare-and-set): if the store holds another one,
/// somebody saved in between and the save is refused with [`StoreError::Superseded`], so a late
/// save (a replica that lost its lock, a save retried after an outage) never overwrites a newer
/// set. Revisions belong to the store, not to a process: every replica sharing it sees the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(u64);

impl Revision {
    /// The revision of a key with no tokens saved.
    pub const NONE: Revision = Revision(0);

    /// A revision from the number a store keeps.
    pub const fn new(number: u64) -> Self {
        Revision(number)
    }

    /// The number a store keeps.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The revision a successful save over this one creates.
    #[must_use]
    pub const fn next(self) -> Revision {
        Revision(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A key's tokens as a store holds them: the set, and the revision of that save.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stored {
    /// The saved tokens.
    pub tokens: TokenSet,
    /// Which save this is.
    pub revision: Revision,
}

impl Stored {
    /// Tokens as saved at `revision`.
    pub fn new(tokens: TokenSet, revision: Revision) -> Self {
        Self { tokens, revision }
    }
}

/// Keeps token sets, per [`TokenKey`], and optionally lets processes share one refresh.
///
/// The layer saves every new token set **before** any request uses it: with providers that
/// rotate refresh tokens, the new refresh token is the only one that works, and a crash between
/// using the access token and saving it would lose the user's authorization for good.
///
/// Every save is a compare-and-set on the key's [`Revision`]. A store that several processes or
/// replicas share should also implement [`lock`](Self::lock): the layer takes that lock around a
/// refresh and makes the re-read and the save through the [`StoreGuard`] it returns, so it adopts
/// what another process already saved instead of spending the refresh token a second time.
///
/// # Writing a store
///
/// A complete store that keeps tokens in a map (a database table works the same way: a
/// `revision` column, and an `UPDATE ... WHERE revision = $replaces`):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use reqwest_token_refresh::{async_trait, Revision, StoreError, Stored, TokenKey, TokenSet, TokenStore};
///
/// /// Per key: the revision, and the tokens saved as it (`None`: removed, a tombstone).
/// #[derive(Debug, Default)]
/// struct MapStore(Mutex<HashMap<TokenKey, (Revision, Option<TokenSet>)>>);
///
/// impl MapStore {
///     /// Writes `tokens` (or a removal) for `key` if its revision is still `replaces`.
///     fn write(&self, key: &TokenKey, tokens: Option<&TokenSet>, replaces: Revision) -> Result<Revision, StoreError> {
///         let mut map = self.0.lock().unwrap();
///         match map.get(key) {
///             Some((revision, None)) if *revision != replaces => {
///                 return Err(StoreError::Removed { revision: *revision });
///             }
///             Some((revision, Some(_))) if *revision != replaces => return Err(StoreError::Superseded),
///             None if replaces != Revision::NONE => return Err(StoreError::Superseded),
///             _ => {}
///         }
///         let revision = replaces.next();
///         map.insert(key.clone(), (revision, tokens.cloned()));
///         Ok(revision)
///     }
/// }
///
/// #[async_trait]
/// impl TokenStore for MapStore {
///     async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
///         let map = self.0.lock().unwrap();
///         Ok(map.get(key).and_then(|(revision, tokens)| Some(Stored::new(tokens.clone()?, *revision))))
///     }
///
///     async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
///         self.write(key, Some(tokens), replaces)
///     }
///
///     async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
///         self.write(key, None, replaces)
///     }
///     // No `lock`: the layer's single flight is per process, and the revision still keeps a late
///     // save from overwriting a newer one.
/// }
///
/// # async fn run() -> Result<(), StoreError> {
/// let store = MapStore::default();
/// let key = TokenKey::new("user-42");
/// let first = store.save(&key, &TokenSet::new("a1"), Revision::NONE).await?;
/// assert!(matches!(store.save(&key, &TokenSet::new("late"), Revision::NONE).await, Err(StoreError::Superseded)));
/// let second = store.save(&key, &TokenSet::new("a2"), first).await?;
/// // Revoked: the tokens go, the revision stays, and the old set cannot come back.
/// let removed = store.remove(&key, second).await?;
/// assert!(store.load(&key).await?.is_none());
/// assert!(matches!(store.save(&key, &TokenSet::new("a2"), second).await, Err(StoreError::Removed { .. })));
/// store.save(&key, &TokenSet::new("after-login"), removed).await?;
/// # Ok(()) }
/// # tokio_test_block_on(run()).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[async_trait]
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// Reads the token set saved for `key` and its revision, if any.
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError>;

    /// Saves the token set for `key` if the key's revision is still `replaces`
    /// ([`Revision::NONE`]: nothing is saved yet), durably: when this returns the new revision, a
    /// restart reads the set back. Otherwise it writes nothing and fails with
    /// [`StoreError::Superseded`].
    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError>;

    /// Removes the token set for `key` (after [`TokenRefresh::revoke`](crate::TokenRefresh::revoke)
    /// revoked it) if the key's revision is still `replaces`, durably, and returns the revision
    /// of the removal.
    ///
    /// A removal is not forgetting: the store keeps the key's revision, with no tokens (a
    /// tombstone), and the revision goes on counting from it. [`load`](Self::load) then finds no
    /// tokens, and a save over any other revision fails with [`StoreError::Removed`] naming the
    /// removal's, so that a replica still holding the revoked set (a save retried after an
    /// outage, a refresh that started before the revocation) cannot write it back. A save over
    /// the removal's revision lands: new tokens after a new login.
    ///
    /// Fails, removing nothing, with [`StoreError::Superseded`] when the key holds tokens saved as
    /// another revision, and with [`StoreError::Removed`] when it was removed already (as another
    /// revision).
    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError>;

    /// Takes this store's lock for `key`, held while one refresh runs, so that processes sharing
    /// the store refresh once between them. Waits until the lock is free (or fails with
    /// [`StoreError::LockTimeout`]). The re-read and the save made under the lock go through the
    /// returned guard.
    ///
    /// The default takes no lock (`Ok(None)`): the layer's in-process single flight is then the
    /// only one, and saves still go through [`save`](Self::save)'s compare-and-set.
    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        let _ = key;
        Ok(None)
    }
}

/// A held [`TokenStore::lock`] for one key, and the store operations that are only valid while it
/// is held.
///
/// Dropping it must release it too (a lease may simply expire), but the layer calls
/// [`unlock`](Self::unlock) so that a failure to release can be reported.
#[async_trait]
pub trait StoreGuard: fmt::Debug + Send {
    /// Reads the key's tokens under the lock: what another holder saved before it let go.
    async fn load(&mut self) -> Result<Option<Stored>, StoreError>;

    /// Saves the key's tokens under the lock, as [`TokenStore::save`] does: only over `replaces`.
    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError>;

    /// Removes the key's tokens under the lock, as [`TokenStore::remove`] does: only over
    /// `replaces`, leaving the key's revision behind.
    async fn remove(&mut self, replaces: Revision) -> Result<Revision, StoreError>;

    /// Releases the lock.
    async fn unlock(self: Box<Self>) -> Result<(), StoreError>;
}

/// What a store holds for a key, as far as the compare-and-set goes: nothing ever saved, tokens
/// saved as a revision, or a removal (a tombstone) as a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    Nothing,
    Tokens(Revision),
    Removed(Revision),
}

impl Held {
    /// The compare-and-set of a save or a removal over `replaces`: the revision it writes, or why
    /// it writes nothing. The one rule every store in this crate keeps (Redis and PostgreSQL keep
    /// it in their script and statements, in the same words).
    pub(crate) fn write_over(self, replaces: Revision) -> Result<Revision, StoreError> {
        match self {
            Held::Nothing if replaces == Revision::NONE => Ok(replaces.next()),
            Held::Tokens(revision) | Held::Removed(revision) if revision == replaces => Ok(replaces.next()),
            Held::Removed(revision) => Err(StoreError::Removed { revision }),
            Held::Nothing | Held::Tokens(_) => Err(StoreError::Superseded),
        }
    }
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

    #[test]
    fn a_write_lands_only_over_the_revision_held_and_a_removal_is_named_when_it_does_not() {
        let (r1, r2) = (Revision::new(1), Revision::new(2));
        assert_eq!(Held::Nothing.write_over(Revision::NONE).unwrap(), r1);
        assert!(matches!(Held::Nothing.write_over(r1), Err(StoreError::Superseded)), "a store that lost the key");
        assert_eq!(Held::Tokens(r1).write_over(r1).unwrap(), r2);
        assert!(matches!(Held::Tokens(r2).write_over(r1), Err(StoreError::Superseded)));
        assert_eq!(Held::Removed(r2).write_over(r2).unwrap(), Revision::new(3), "new tokens after a new login");
        for late in [Revision::NONE, r1] {
            assert!(
                matches!(Held::Removed(r2).write_over(late), Err(StoreError::Removed { revision }) if revision == r2),
                "a removal is never written over by a set older than it"
            );
        }
    }

    #[test]
    fn revisions_count_saves() {
        assert_eq!(Revision::NONE.next(), Revision::new(1));
        assert_eq!(Revision::new(41).next().get(), 42);
        assert_eq!(Revision::new(u64::MAX).next(), Revision::new(u64::MAX));
        assert!(Revision::new(2) > Revision::new(1));
        assert_eq!(Revision::new(7).to_string(), "r7");
    }
}

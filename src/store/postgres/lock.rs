//! Per-key advisory locks: taking one in a transaction on a connection of its own, [`Locks`] (the
//! lock connections and their limit), [`PostgresGuard`] that holds a lock and loads and saves
//! under it, and [`lock_id`], the stable id a key locks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::PostgresStore;
use super::connection::{PostgresError, Session};
use crate::error::StoreError;
use crate::key::TokenKey;
use crate::store::{Revision, StoreGuard, Stored, TokenStore};
use crate::token::TokenSet;

impl PostgresStore {
    /// Takes `key`'s advisory lock on a connection of its own; see [`TokenStore::lock`].
    pub(super) async fn take_lock(&self, key: &TokenKey) -> Result<PostgresGuard<'_>, StoreError> {
        let settings = &self.settings;
        // A timeout too long to represent is cut to a day: the layer's flight deadline ends the
        // wait long before.
        let deadline =
            Instant::now().checked_add(settings.lock_timeout).unwrap_or_else(super::connection::far_deadline);
        let permit = match tokio::time::timeout_at(deadline, self.locks.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a timeout is the only way out.
            Ok(Err(_)) | Err(_) => return Err(StoreError::LockTimeout),
        };
        let id = self.lock_id(key);
        let action = || format!("taking the refresh lock of key `{key}`");
        let mut retried = false;
        loop {
            // Waiting for a free connection counts against the lock timeout too.
            let Some((session, reused)) = self.connections.session(self.locks.take_idle(), deadline).await? else {
                return Err(StoreError::LockTimeout);
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let _ = self.locks.put_back(session, settings.query_timeout).await;
                return Err(StoreError::LockTimeout);
            }
            // Integer settings are in milliseconds; 0 would mean "no limit". `SET LOCAL` ends with
            // the transaction, so a pool's connection goes back with its own settings.
            let wait_ms = remaining.as_millis().max(1);
            let hold_ms = settings.lock_hold_limit.as_millis().max(1);
            let begin = format!(
                "BEGIN; SET LOCAL lock_timeout = {wait_ms}; \
                 SET LOCAL idle_in_transaction_session_timeout = {hold_ms}; \
                 SELECT pg_advisory_xact_lock({id})"
            );
            let taken = session.batch_execute(&begin);
            match tokio::time::timeout(remaining.saturating_add(settings.query_timeout), taken).await {
                Ok(Ok(())) => {
                    return Ok(PostgresGuard {
                        store: self,
                        key: key.clone(),
                        id,
                        session: Some(session),
                        _permit: permit,
                    });
                }
                Ok(Err(err)) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    let _ = self.locks.put_back(session, settings.query_timeout).await;
                    return Err(StoreError::LockTimeout);
                }
                // A kept connection that PostgreSQL closed meanwhile (a restart): try a new one.
                Ok(Err(err)) if err.is_closed() && session.kept(reused) && !retried => retried = true,
                Ok(Err(err)) => {
                    let _ = self.locks.put_back(session, settings.query_timeout).await;
                    return Err(PostgresError::new(action(), &err).into_store());
                }
                // The connection is closed, which ends its session and any wait on the server.
                Err(_) => return Err(PostgresError::timed_out(action()).into_store()),
            }
        }
    }
}

/// The locks one store value (and its clones) holds, and the connections they use.
pub(super) struct Locks {
    permits: Arc<Semaphore>,
    /// The store's own lock connections between two locks (their transaction ended, so they hold
    /// nothing). A pool's go back to the pool instead.
    idle: Mutex<Vec<Client>>,
    max_idle: usize,
}

impl Locks {
    pub(super) fn new(connections: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(connections)), idle: Mutex::new(Vec::new()), max_idle: connections }
    }

    fn take_idle(&self) -> Option<Client> {
        let mut idle = self.idle.lock();
        while let Some(client) = idle.pop() {
            if !client.is_closed() {
                return Some(client);
            }
        }
        None
    }

    /// Ends whatever transaction `session` is in and keeps its connection for the next lock (or
    /// hands it back to the pool); closes it (which releases anything its session held) if that
    /// fails. The error is `None` when PostgreSQL did not answer in time.
    async fn put_back(&self, session: Session, timeout: Duration) -> Result<(), Option<tokio_postgres::Error>> {
        match tokio::time::timeout(timeout, session.batch_execute("ROLLBACK")).await {
            Ok(Ok(())) => {
                if let Some(client) = session.release() {
                    let mut idle = self.idle.lock();
                    if idle.len() < self.max_idle {
                        idle.push(client);
                    }
                }
                Ok(())
            }
            Ok(Err(err)) => Err(Some(err)),
            Err(_) => Err(None),
        }
    }
}

/// A held per-key advisory lock: an open transaction on a connection of its own. Loads and saves
/// under it go through the store's query connections (they commit at once) and are fenced by the
/// revision they name.
pub(super) struct PostgresGuard<'a> {
    store: &'a PostgresStore,
    key: TokenKey,
    id: i64,
    /// `None` once released.
    session: Option<Session>,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for PostgresGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresGuard").field("key", &self.key).field("lock_id", &self.id).finish()
    }
}

#[async_trait]
impl StoreGuard for PostgresGuard<'_> {
    async fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        // A statement of its own on a query connection, started after the lock was granted, so
        // it sees what the previous holder committed.
        self.store.load(&self.key).await
    }

    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.save(&self.key, tokens, replaces).await
    }

    async fn remove(&mut self, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.remove(&self.key, replaces).await
    }

    async fn unlock(mut self: Box<Self>) -> Result<(), StoreError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        // Rolling back ends the transaction and with it the advisory lock (nothing was written in
        // it: saves go through query connections and commit at once).
        let query_timeout = self.store.settings.query_timeout;
        self.store.locks.put_back(session, query_timeout).await.map_err(|err| {
            let action = format!(
                "releasing the refresh lock of key `{}` (the lock went with its connection: it was held past the \
                 lock-hold limit, or PostgreSQL went away)",
                self.key
            );
            match err {
                Some(err) => PostgresError::new(action, &err),
                None => PostgresError::timed_out(action),
            }
            .into_store()
        })
    }
}

impl Drop for PostgresGuard<'_> {
    fn drop(&mut self) {
        // Not released with `unlock` (the refresh was cancelled or panicked): dropping the session
        // closes its connection (a pool's too: it is not handed back), and the server releases the
        // lock with the session.
        drop(self.session.take());
    }
}

/// The advisory lock id of `key` in `table`: FNV-1a over both, then the SplitMix64 finaliser so
/// that similar keys spread over the whole range. Stable: changing it would let two versions of
/// this crate refresh the same key at once.
pub(super) fn lock_id(table: &str, key: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in b"reqwest-token-refresh\0".iter().chain(table.as_bytes()).chain(b"\0").chain(key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids_are_stable_and_depend_on_table_and_key() {
        // Fixed forever: replicas running different versions must lock the same ids.
        assert_eq!(lock_id("reqwest_token_refresh_tokens", "default"), 7_604_361_922_675_167_838);
        assert_eq!(lock_id("reqwest_token_refresh_tokens", "user-42"), -5_014_997_502_286_213_222);
        assert_ne!(lock_id("t", "a"), lock_id("t", "b"));
        assert_ne!(lock_id("t1", "a"), lock_id("t2", "a"));
        assert_ne!(lock_id("t", "ab"), lock_id("ta", "b"), "the separator keeps table and key apart");
        let ids: std::collections::HashSet<i64> = (0..10_000).map(|i| lock_id("t", &format!("user-{i}"))).collect();
        assert_eq!(ids.len(), 10_000);
    }
}

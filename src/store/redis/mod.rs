//! [`RedisStore`]: tokens in Redis, with a lease lock so that the replicas of a service share one
//! refresh.
//!
//! This file holds the store, its options and its [`TokenStore`] impl. The lease is in `lease`,
//! the Lua scripts in `scripts`, the connection and Redis failures in `connection`.
//!
//! # Layout
//!
//! Each [`TokenKey`] has two Redis keys (with the default prefix):
//!
//! - `reqwest-token-refresh:tokens:<key>` holds the token set as JSON,
//!   `{"generation": n, "tokens": {...}}`. The generation starts at 1 and grows by one with every
//!   save. A removal (after a revocation) writes `"tokens": null` and bumps the generation: the
//!   key reads as no tokens, and no save older than the removal lands over it.
//! - `reqwest-token-refresh:lock:<key>` exists while one replica refreshes that key's tokens. Its
//!   value is the holder's random owner id, and it expires on its own after the lease time.
//!
//! # The lease
//!
//! [`TokenStore::lock`] takes the lease with `SET <lock key> <owner id> NX PX <lease ttl>`. A
//! replica that finds it taken polls until it is free (every
//! [`poll_interval`](RedisStore::poll_interval)) or gives up with [`StoreError::LockTimeout`]
//! after [`lock_timeout`](RedisStore::lock_timeout). The layer re-reads the tokens once it holds
//! the lease, so every replica but the first adopts the tokens the first one saved instead of
//! spending the refresh token again. The lease is released with a Lua compare-and-delete, so a
//! holder never deletes a lease that has already passed to someone else. A holder that dies never
//! releases it: the lease expires and the next replica takes over.
//!
//! The lease time must be longer than a refresh can take (the token call's timeout,
//! [`DEFAULT_TOKEN_TIMEOUT`](crate::DEFAULT_TOKEN_TIMEOUT) by default, plus two Redis round trips).
//! If a refresh outlasts its lease, a second replica may start another refresh with the same refresh
//! token. A provider that rotates refresh tokens then refuses one of the two, and one that detects
//! reuse revokes both. The fencing below keeps the store consistent when that happens, but it
//! cannot undo a second token call.
//!
//! # Fencing
//!
//! A lease with a time limit cannot, on its own, stop a holder that has lost it from writing: the
//! holder may be paused (a slow token endpoint, a stalled VM) past the lease time and resume
//! without knowing. Saves are therefore checked inside Redis, atomically, by a Lua script.
//!
//! **Every save is a compare-and-set** on the generation, which is the key's
//! [`Revision`](crate::Revision): it succeeds only if the stored generation is still the one the
//! saver read. If another replica saved in the meantime (after this lease expired, or a user
//! installed new tokens with [`TokenRefresh::set_tokens`](crate::TokenRefresh::set_tokens)), the
//! save returns [`StoreError::Superseded`] and writes nothing, and the layer adopts the stored
//! tokens instead. A stale holder therefore never overwrites a newer token, and neither does a save
//! retried after an outage.
//!
//! **A lease that is no longer held does not by itself reject the save**; the generation decides.
//! Take a holder whose lease expired during a slow token call, where nobody has saved anything
//! since. Its new token set is then the only valid one: the provider has already spent the old
//! refresh token. Rejecting the save would make the layer adopt the stored, spent set, and every
//! replica would lose the user's authorization. The save therefore lands, and a warning is logged.
//! A replica that took over the lease meanwhile either fails its own refresh with `invalid_grant`
//! (the layer re-reads the store before declaring the grant dead and adopts this save) or, with a
//! provider that still accepted the old refresh token, has its own save rejected by the generation
//! check and adopts this one. The lease only prevents duplicate token calls.
//!
//! Saves under the lease go through the lease's [`StoreGuard`](crate::StoreGuard), which carries the
//! owner id, so the store never has to guess whether a save is its holder's.
//!
//! # When Redis is down
//!
//! Every Redis command is bounded by [`command_timeout`](RedisStore::command_timeout). A failure
//! is returned as [`StoreError::Backend`]; nothing panics. The connection is a
//! [`redis::aio::ConnectionManager`], which reconnects when Redis is back. The layer keeps using a
//! still-valid access token and needs Redis only to refresh. A refresh that cannot take the lock
//! fails with that error, and the layer waits out a backoff before the next attempt. New tokens
//! whose save failed are used from memory and saved again until the save lands.

mod connection;
mod lease;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Client;
use serde::Deserialize;

use self::connection::{Shared, failure, failure_message};
use self::scripts::SAVE;
use super::{Revision, StoreGuard, Stored, TokenStore};
use crate::error::StoreError;
use crate::key::TokenKey;
use crate::token::TokenSet;

/// Keeps tokens in Redis, with a lease lock and a fencing check, so that the replicas of a service
/// share one refresh (feature `redis`).
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use reqwest_token_refresh::{RedisStore, RefreshTokenGrant, TokenRefresh};
///
/// let store = RedisStore::new("redis://:password@redis.internal:6379/0")?
///     .key_prefix("my-service:oauth:")
///     .lease_ttl(Duration::from_secs(45));
/// let auth = TokenRefresh::builder(RefreshTokenGrant::new("https://provider.example/oauth/token"))
///     .allow_origin("https://api.provider.example")
///     .store(store)
///     .build()?;
/// # Ok(()) }
/// ```
///
/// # Layout
///
/// [`tokens_key`](Self::tokens_key) (`<prefix>tokens:<key>`) holds a key's tokens as
/// `{"generation": n, "tokens": {...}}`; the generation grows by one with every save.
/// [`lock_key`](Self::lock_key) (`<prefix>lock:<key>`) exists while a replica refreshes that key.
///
/// # One refresh across replicas
///
/// A refresh holds a lease: `SET <lock key> <random owner id> NX PX <lease ttl>`. Other replicas
/// poll until it is free, then re-read the tokens and adopt the ones the holder saved. The holder
/// releases the lease with a Lua compare-and-delete. A holder that dies leaves the lease to expire
/// after [`lease_ttl`](Self::lease_ttl), which must be longer than a refresh can take.
///
/// # Fencing
///
/// The generation is the key's [`Revision`]: every save succeeds only if the stored generation is
/// still the one it names, inside Redis, atomically (a Lua script). Otherwise it returns
/// [`StoreError::Superseded`] and the layer adopts the stored tokens. This covers a holder whose
/// lease expired while another replica saved, a user who installed new tokens meanwhile, and a
/// save retried after an outage. The generation decides, not the lease: a holder whose lease
/// lapsed still saves if nothing newer was stored, because its tokens are then the only valid
/// ones (the provider has already spent the old refresh token). The source of this module explains
/// the reasoning in detail.
///
/// # Operation
///
/// The connection is opened on first use, from within the tokio runtime that uses the store, and
/// is re-established when Redis comes back after an outage. Set the options before the first use.
/// Clones share one connection. With Redis down, every operation fails within
/// [`command_timeout`](Self::command_timeout) with [`StoreError::Backend`]. The layer keeps using
/// a still-valid token, and saves new tokens again until the save lands.
///
/// The tokens are stored as plain JSON: protect the Redis server as you would a database of
/// credentials (ACLs, a password, TLS — `rediss://` URLs need one of the `redis` crate's TLS
/// features, such as `tokio-rustls-comp`, enabled in your own `Cargo.toml`). The `Debug` output
/// shows the server's address without its password. Use a single Redis server or primary. Redis
/// Cluster is not supported. Replication is asynchronous, so a failover can lose the latest lease or
/// save, as with any lock kept in Redis.
#[derive(Clone)]
pub struct RedisStore {
    options: Options,
    shared: Arc<Shared>,
}

#[derive(Debug, Clone)]
struct Options {
    prefix: String,
    lease_ttl: Duration,
    lock_timeout: Duration,
    poll_interval: Duration,
    command_timeout: Duration,
}

/// What the tokens key holds; `"tokens": null` once removed (the generation stays, so that no
/// older set is saved over the removal).
#[derive(Deserialize)]
struct StoredJson {
    generation: u64,
    tokens: Option<TokenSet>,
}

impl RedisStore {
    /// The prefix of every Redis key this store uses, unless set otherwise:
    /// `reqwest-token-refresh:`.
    pub const DEFAULT_KEY_PREFIX: &'static str = "reqwest-token-refresh:";
    /// How long a lease lasts if its holder never releases it, unless set otherwise: 45 seconds,
    /// longer than the token call's default timeout
    /// ([`DEFAULT_TOKEN_TIMEOUT`](crate::DEFAULT_TOKEN_TIMEOUT), 30 seconds) and as long as the
    /// layer's default flight deadline ([`DEFAULT_FLIGHT_DEADLINE`](crate::DEFAULT_FLIGHT_DEADLINE)).
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(45);
    /// How long [`TokenStore::lock`] waits for another replica's lease, unless set otherwise: 60
    /// seconds, longer than the lease, so that a dead holder's lease expires before waiters give
    /// up.
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
    /// How often a replica waiting for the lease tries again, unless set otherwise: every 50
    /// milliseconds.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);
    /// How long one Redis command (or a connection attempt) may take, unless set otherwise: 2
    /// seconds.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

    /// A store on the Redis server at `url` (`redis://[user][:password@]host[:port][/db]`, or
    /// `unix:///path/to/redis.sock`).
    ///
    /// No connection is made yet: this only checks the URL. The first store operation connects,
    /// and a server that is down then gives [`StoreError::Backend`]; [`ping`](Self::ping) checks
    /// the connection up front.
    pub fn new(url: impl AsRef<str>) -> Result<Self, StoreError> {
        let client = Client::open(url.as_ref()).map_err(|err| failure("parsing the Redis URL", err))?;
        Ok(Self::from_client(client))
    }

    /// A store using a `redis` client built elsewhere (for TLS settings, say).
    pub fn from_client(client: Client) -> Self {
        Self {
            options: Options {
                prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
                lease_ttl: Self::DEFAULT_LEASE_TTL,
                lock_timeout: Self::DEFAULT_LOCK_TIMEOUT,
                poll_interval: Self::DEFAULT_POLL_INTERVAL,
                command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            },
            shared: Arc::new(Shared::new(client)),
        }
    }

    /// Sets the prefix of every Redis key this store uses. Services that share one Redis but not
    /// their tokens need different prefixes.
    ///
    /// Default: `reqwest-token-refresh:` ([`DEFAULT_KEY_PREFIX`](Self::DEFAULT_KEY_PREFIX)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options.prefix = prefix.into();
        self
    }

    /// Sets how long a lease lasts if its holder never releases it (at least 1 ms). Make it longer
    /// than a refresh can take, the token call's timeout included: a refresh that outlasts its
    /// lease lets a second replica refresh at the same time.
    ///
    /// Default: 45 seconds ([`DEFAULT_LEASE_TTL`](Self::DEFAULT_LEASE_TTL)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.options.lease_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Sets how long [`TokenStore::lock`] waits for another replica's lease before it fails with
    /// [`StoreError::LockTimeout`].
    ///
    /// Default: 60 seconds ([`DEFAULT_LOCK_TIMEOUT`](Self::DEFAULT_LOCK_TIMEOUT)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.options.lock_timeout = timeout;
        self
    }

    /// Sets how often a replica waiting for the lease tries to take it (at least 1 ms).
    ///
    /// Default: every 50 milliseconds ([`DEFAULT_POLL_INTERVAL`](Self::DEFAULT_POLL_INTERVAL)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.options.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets how long one Redis command, or one attempt to connect, may take before it fails with
    /// [`StoreError::Backend`]. Takes effect if set before the store is first used.
    ///
    /// Default: 2 seconds ([`DEFAULT_COMMAND_TIMEOUT`](Self::DEFAULT_COMMAND_TIMEOUT)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.command_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The Redis key that holds `key`'s tokens: `<prefix>tokens:<key>`.
    pub fn tokens_key(&self, key: &TokenKey) -> String {
        format!("{}tokens:{}", self.options.prefix, key.as_str())
    }

    /// The Redis key of `key`'s lease: `<prefix>lock:<key>`.
    pub fn lock_key(&self, key: &TokenKey) -> String {
        format!("{}lock:{}", self.options.prefix, key.as_str())
    }

    /// Checks that Redis answers (connecting if need be); for a readiness check at start-up.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection()?;
        let _: String = self.run("pinging Redis", redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}

impl RedisStore {
    /// Saves `tokens` (`None`: removes them) over generation `replaces`, as the holder of lease
    /// `owner` if there is one.
    async fn save_fenced(
        &self,
        key: &TokenKey,
        tokens: Option<&TokenSet>,
        replaces: Revision,
        owner: Option<&str>,
    ) -> Result<Revision, StoreError> {
        let name = self.tokens_key(key);
        let json = match tokens {
            Some(tokens) => serde_json::to_string(tokens)
                .map_err(|err| failure_message("encoding tokens", format!("{:?} error", err.classify())))?,
            // The script writes a removal for an empty set.
            None => String::new(),
        };
        let mut conn = self.connection()?;
        let mut invocation = SAVE.prepare_invoke();
        invocation.key(&name).key(self.lock_key(key)).arg(json).arg(replaces.get()).arg(owner.unwrap_or_default());
        let (status, generation, held): (i64, u64, i64) =
            self.run("saving tokens", invocation.invoke_async(&mut conn)).await?;
        match status {
            1 => {
                if owner.is_some() && held == 0 {
                    tracing::warn!(
                        key = %key,
                        generation,
                        "the lease expired before the new tokens were saved; saved anyway, since nothing newer was stored (raise lease_ttl if refreshes take this long)"
                    );
                }
                Ok(Revision::new(generation))
            }
            0 => {
                tracing::debug!(
                    key = %key,
                    expected = replaces.get(),
                    stored = generation,
                    lease_held = held == 1,
                    "save refused: another replica saved newer tokens since this one read them"
                );
                Err(StoreError::Superseded)
            }
            2 => {
                tracing::debug!(key = %key, expected = replaces.get(), removed = generation, "write refused: the key's tokens were removed");
                Err(StoreError::Removed { revision: Revision::new(generation) })
            }
            _ => Err(StoreError::Corrupt(format!(
                "redis key `{name}` does not hold this store's {{\"generation\", \"tokens\"}} JSON; it was not overwritten"
            ))),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.shared.address)
            .field("key_prefix", &self.options.prefix)
            .field("lease_ttl", &self.options.lease_ttl)
            .field("lock_timeout", &self.options.lock_timeout)
            .field("poll_interval", &self.options.poll_interval)
            .field("command_timeout", &self.options.command_timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        let name = self.tokens_key(key);
        let mut conn = self.connection()?;
        let raw: Option<Vec<u8>> =
            self.run("reading tokens", redis::cmd("GET").arg(&name).query_async(&mut conn)).await?;
        let Some(raw) = raw else { return Ok(None) };
        let stored: StoredJson = serde_json::from_slice(&raw).map_err(|err| corrupt(&name, &err))?;
        Ok(stored.tokens.map(|tokens| Stored::new(tokens, Revision::new(stored.generation))))
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.save_fenced(key, Some(tokens), replaces, None).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.save_fenced(key, None, replaces, None).await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        Ok(Some(Box::new(self.take_lease(key).await?)))
    }
}

/// An unreadable stored value; the message names the key and where parsing stopped, never the
/// content (it may hold tokens).
fn corrupt(name: &str, err: &serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!(
        "redis key `{name}` is not this store's token JSON ({:?} error at line {} column {})",
        err.classify(),
        err.line(),
        err.column()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_defaults_are_what_their_docs_say() {
        assert_eq!(RedisStore::DEFAULT_KEY_PREFIX, "reqwest-token-refresh:");
        assert_eq!(RedisStore::DEFAULT_LEASE_TTL, Duration::from_secs(45));
        assert_eq!(RedisStore::DEFAULT_LEASE_TTL, crate::DEFAULT_FLIGHT_DEADLINE, "as long as a refresh may take");
        assert_eq!(RedisStore::DEFAULT_LOCK_TIMEOUT, Duration::from_secs(60));
        assert_eq!(RedisStore::DEFAULT_POLL_INTERVAL, Duration::from_millis(50));
        assert_eq!(RedisStore::DEFAULT_COMMAND_TIMEOUT, Duration::from_secs(2));
    }

    #[test]
    fn keys_are_named_after_the_prefix_and_the_token_key() {
        let store = RedisStore::new("redis://127.0.0.1:6379").unwrap();
        let key = TokenKey::new("user-42");
        assert_eq!(store.tokens_key(&key), "reqwest-token-refresh:tokens:user-42");
        assert_eq!(store.lock_key(&key), "reqwest-token-refresh:lock:user-42");
        assert_eq!(store.tokens_key(&TokenKey::default()), "reqwest-token-refresh:tokens:default");

        let store = store.key_prefix("svc:");
        assert_eq!(store.tokens_key(&key), "svc:tokens:user-42");
        assert_eq!(store.lock_key(&key), "svc:lock:user-42");
    }

    #[test]
    fn no_token_key_maps_onto_another_keys_lock_or_tokens() {
        // The kind comes right after the prefix, so a key that looks like another's Redis key
        // stays apart from it.
        let store = RedisStore::new("redis://127.0.0.1").unwrap();
        let tricky = TokenKey::new("lock:user");
        let plain = TokenKey::new("user");
        let names =
            [store.tokens_key(&tricky), store.lock_key(&tricky), store.tokens_key(&plain), store.lock_key(&plain)];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn debug_hides_the_password() {
        for url in [
            "redis://:hunter2@redis.internal:6380/3",
            "redis://svc:hunter2@redis.internal:6380/3",
            "unix:///run/redis.sock?db=2&pass=hunter2",
        ] {
            let store = RedisStore::new(url).unwrap();
            let debug = format!("{store:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(debug.contains("[redacted]"), "{debug}");
        }
        let store = RedisStore::new("redis://svc:hunter2@redis.internal:6380/3").unwrap();
        assert!(format!("{store:?}").contains("redis://svc:[redacted]@redis.internal:6380/3"));
        let store = RedisStore::new("redis://127.0.0.1").unwrap();
        let debug = format!("{store:?}");
        assert!(debug.contains("redis://127.0.0.1:6379/0") && !debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn a_bad_url_is_a_typed_error_that_does_not_echo_it() {
        let err = RedisStore::new("http://:hunter2@example.com").unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        let mut text = format!("{err} {err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            text.push_str(&format!(" {inner} {inner:?}"));
            source = inner.source();
        }
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn corrupt_values_are_described_without_their_content() {
        let err = serde_json::from_slice::<StoredJson>(br#"{"generation":1,"tokens":{"access_token":42}}"#)
            .map(|_| ())
            .unwrap_err();
        let message = corrupt("p:tokens:u", &err).to_string();
        assert!(message.contains("p:tokens:u") && !message.contains("42"), "{message}");
    }
}

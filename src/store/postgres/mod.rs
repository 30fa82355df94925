//! [`PostgresStore`]: tokens in PostgreSQL, one row per key, an advisory lock per key. How it
//! works is documented on the type.
//!
//! This file holds the store, its options and its [`TokenStore`] impl. Where connections come from and
//! PostgreSQL failures are in `connection`, the advisory locks in `lock`, the statements in `sql`.

mod connection;
mod lock;
mod sql;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::Type;
use tokio_postgres::{Config, NoTls, Socket};

use self::connection::{Connections, PostgresError, SharedConnection};
use self::lock::{Locks, lock_id};
use self::sql::Sql;
use super::{Revision, StoreGuard, Stored, TokenStore};
use crate::error::StoreError;
use crate::key::TokenKey;
use crate::policy::DEFAULT_FLIGHT_DEADLINE;
use crate::token::TokenSet;

/// The connect timeout used when the connection string sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps tokens in PostgreSQL: one row per key, a per-key advisory lock so that replicas share one
/// refresh per user, and a generation column that fences off stale writers.
///
/// For services that keep their users' tokens in the database they already run. Requires the
/// `postgres` feature. Create the table once with [`setup`](Self::setup) (idempotent), or create
/// it yourself as shown under [Schema](#schema).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use reqwest_token_refresh::{PostgresStore, RefreshTokenGrant, TokenKey, TokenRefresh};
///
/// let store = PostgresStore::connect("host=db.internal user=sync dbname=sync").await?;
/// store.setup().await?; // CREATE TABLE IF NOT EXISTS reqwest_token_refresh_tokens (...)
///
/// let auth = TokenRefresh::builder(RefreshTokenGrant::new("https://provider.example/oauth/token"))
///     .allow_origin("https://api.provider.example")
///     .store(store)
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.clone())
///     .build();
///
/// // After user 42 authorized: their tokens go to the table, then every replica uses them.
/// # let tokens_from_the_authorization_code_flow = reqwest_token_refresh::TokenSet::new("a");
/// auth.set_tokens_for(&TokenKey::new("user-42"), tokens_from_the_authorization_code_flow).await?;
/// let response = client
///     .get("https://api.provider.example/v1/sleep")
///     .with_extension(TokenKey::new("user-42"))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
///
/// Tokens are stored as they are (JSON in a `jsonb` column): protect the table like any other
/// credential store. `Debug` shows where the store connects, never the password.
///
/// # Schema
///
/// [`setup`](Self::setup) creates the table if it does not exist (the default name is
/// [`DEFAULT_TABLE`](Self::DEFAULT_TABLE)):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS reqwest_token_refresh_tokens (
///     key        text        PRIMARY KEY,
///     tokens     jsonb       NOT NULL,  -- the TokenSet, as serde writes it; JSON null once removed
///     generation bigint      NOT NULL,  -- bumped by every save: the fence
///     updated_at timestamptz NOT NULL DEFAULT now()
/// )
/// ```
///
/// # One refresh across replicas
///
/// [`TokenStore::lock`] takes a transaction-level advisory lock,
/// `pg_advisory_xact_lock(<lock id of the key>)`, in a transaction of its own on a connection of
/// its own, and holds it (the transaction stays open, idle) until the layer has re-read the row,
/// called the token endpoint and saved; [`StoreGuard::unlock`](crate::StoreGuard::unlock) rolls the transaction back, which
/// releases the lock. A dedicated session per held lock matters: advisory locks are re-entrant
/// within one session, so two refreshes sharing a connection would both "get" the lock. If the
/// process dies, its connection closes and the server releases the lock.
///
/// The lock id is a stable 64-bit hash of the table name and the key
/// ([`lock_id`](Self::lock_id), to find a lock in `pg_locks`). Two keys whose ids collide are
/// harmless: their refreshes merely wait for each other.
///
/// A held lock never outlives the token call by much: the lock's transaction is started with
/// `idle_in_transaction_session_timeout` set to the lock-hold limit
/// ([`lock_hold_limit`](Self::lock_hold_limit), by default the layer's flight deadline plus a
/// query timeout), so a holder that hangs (or whose token call outlives its timeout) loses its session
/// and its lock; the server enforces it, not the holder. Waiting for the lock is bounded by
/// [`lock_timeout`](Self::lock_timeout); running out gives [`StoreError::LockTimeout`].
///
/// A key whose tokens were removed ([`TokenStore::remove`], after a revocation) keeps its row,
/// with `tokens` the JSON `null` and its generation bumped: it reads as no tokens, and a save
/// over an older generation is refused with [`StoreError::Removed`].
///
/// # Fencing
///
/// A lock that can expire needs a fence. When the lock is lost (the hold limit passed, or the
/// lock's connection broke) another replica may take it, refresh and save while the first one is
/// still on its way to saving. Without a fence the first replica would then overwrite the newer
/// set with an older one, and the refresh token it writes may already have been rotated away.
///
/// So every save bumps the row's `generation`, which is the key's [`Revision`], and every save
/// is conditional on the generation it names:
///
/// ```sql
/// UPDATE ... SET tokens = $2, generation = generation + 1 WHERE key = $1 AND generation = $replaces
/// -- or, when there was no row: INSERT ... ON CONFLICT (key) DO NOTHING
/// ```
///
/// If no row was written, somebody saved in between, and the save fails with
/// [`StoreError::Superseded`]: the layer then adopts the stored (newer) tokens instead of
/// overwriting them. That holds for saves under the lock and without it alike (seeding from the
/// initial tokens, [`set_tokens`](crate::TokenRefresh::set_tokens), retries of a failed save).
/// Saves under the lock go through the lock's [`StoreGuard`](crate::StoreGuard) on a query
/// connection, not the lock's, so they commit at once: the lock's own transaction writes nothing.
///
/// # Connections
///
/// Made with [`connect`](Self::connect), the store has connections of its own: loads and saves go
/// through one shared connection (tokio-postgres pipelines concurrent queries on it), and held
/// locks use connections of their own, at most
/// [`max_lock_connections`](Self::max_lock_connections) at once, kept open between refreshes. Per
/// store value (and its clones) that is at most 1 + 10 connections by default.
///
/// Made with [`from_pool`](Self::from_pool) (feature `deadpool-postgres`), it has none of its
/// own: each load and save checks one of the pool's connections out for its statement, and each
/// held lock one for as long as it is held, at most half the pool by default. Several stores (a
/// table per provider) share the pool and its limit.
///
/// Either way, when PostgreSQL is unreachable every call fails with [`StoreError::Backend`]
/// (never a panic) and the next call connects again; a query that gets no answer within the query
/// timeout fails the same way and its connection is replaced.
#[derive(Clone)]
pub struct PostgresStore {
    settings: Arc<Settings>,
    connections: Arc<Connections>,
    locks: Arc<Locks>,
}

/// What the builder methods set, and the SQL that follows from the table name.
#[derive(Debug, Clone)]
struct Settings {
    table: String,
    lock_timeout: Duration,
    lock_hold_limit: Duration,
    max_lock_connections: usize,
    query_timeout: Duration,
    sql: Sql,
}

impl PostgresStore {
    /// The table used unless [`table`](Self::table) names another:
    /// `reqwest_token_refresh_tokens`, in the connection's default schema.
    pub const DEFAULT_TABLE: &'static str = "reqwest_token_refresh_tokens";
    /// How long [`TokenStore::lock`] waits for another replica's refresh (and for a free lock
    /// connection), unless set otherwise: 60 seconds.
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long one store query may take before it fails and its connection is replaced, unless
    /// set otherwise: 10 seconds.
    pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long a held lock may stay idle before the server ends its session, unless set
    /// otherwise: 55 seconds, the layer's default flight deadline
    /// ([`DEFAULT_FLIGHT_DEADLINE`](crate::DEFAULT_FLIGHT_DEADLINE), 45 seconds: the token call's
    /// timeout and the store's lock, read and save) plus one query timeout (10 seconds). A refresh
    /// never holds the lock longer than its flight lasts, so a lock held past this belongs to a
    /// holder that hung.
    pub const DEFAULT_LOCK_HOLD_LIMIT: Duration = DEFAULT_FLIGHT_DEADLINE.saturating_add(Self::DEFAULT_QUERY_TIMEOUT);
    /// How many locks one store holds at once (each on its own connection), unless set otherwise:
    /// 10.
    pub const DEFAULT_MAX_LOCK_CONNECTIONS: usize = 10;

    /// Connects to PostgreSQL without TLS; `config` is a tokio-postgres connection string, either
    /// `host=localhost user=app dbname=app` or `postgresql://app@localhost/app`.
    ///
    /// A `connect_timeout` of 10 s and an `application_name` of `reqwest-token-refresh` are added
    /// when the string sets none. The connection is made now, so that a wrong address or password
    /// shows up at start-up; later, a lost connection is made again on the next call.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the string does not parse or the server cannot be reached.
    pub async fn connect(config: &str) -> Result<Self, StoreError> {
        Self::connect_with_tls(config, NoTls).await
    }

    /// Like [`connect`](Self::connect), with a TLS connector for tokio-postgres (from
    /// `postgres-native-tls`, `postgres-openssl` or `tokio-postgres-rustls`), used for every
    /// connection the store makes.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with_tls<T>(config: &str, tls: T) -> Result<Self, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let mut parsed = Config::from_str(config)
            .map_err(|err| PostgresError::new("parsing the PostgreSQL connection string", &err).into_store())?;
        if parsed.get_connect_timeout().is_none() {
            parsed.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if parsed.get_application_name().is_none() {
            parsed.application_name("reqwest-token-refresh");
        }
        let store = Self::new(Connections::Own(SharedConnection::new(parsed, tls)), Self::DEFAULT_MAX_LOCK_CONNECTIONS);
        store.connections.check(store.settings.query_timeout).await?;
        Ok(store)
    }

    /// Keeps tokens in PostgreSQL through the service's own `deadpool-postgres` pool (version
    /// 0.14) instead of connections of the store's own. Requires the `deadpool-postgres` feature.
    ///
    /// Each load and save checks a connection out for one statement; each held lock keeps one
    /// for as long as it is held (a refresh: the token call and the save), so that a pool of at
    /// most `P` connections serves the service's own queries, up to
    /// [`max_lock_connections`](Self::max_lock_connections) held locks, and one statement per held
    /// lock. The store starts with `max_lock_connections` at half the pool (at most 10, at least
    /// 1), which leaves the other half to everything else; a pool of one connection is refused,
    /// since a held lock and the save under it need two. A lock's connection goes back to the pool
    /// only once its transaction has been rolled back; one whose lock was abandoned (a cancelled
    /// refresh) is closed instead, so no pooled connection ever carries a lock or a transaction.
    ///
    /// One connection is checked out now, so that a wrong address or password shows up at
    /// start-up. Waiting for a free connection is bounded by the query timeout (a lock's, by the
    /// lock timeout), whatever the pool's own timeouts say.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use reqwest_token_refresh::PostgresStore;
    ///
    /// let mut config = deadpool_postgres::Config::new();
    /// config.url = Some("postgresql://sync@db.internal/sync".to_owned());
    /// let pool = config.create_pool(Some(deadpool_postgres::Runtime::Tokio1), tokio_postgres::NoTls)?;
    ///
    /// // The same pool the service queries with; the store holds at most 8 of its 16 for locks.
    /// let store = PostgresStore::from_pool(pool.clone()).await?.table("oauth.withings_tokens");
    /// store.setup().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the pool has room for fewer than two connections, or no
    /// connection can be had from it (the server cannot be reached, the pool stays exhausted for
    /// the query timeout).
    #[cfg(feature = "deadpool-postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "deadpool-postgres")))]
    pub async fn from_pool(pool: deadpool_postgres::Pool) -> Result<Self, StoreError> {
        let size = pool.status().max_size;
        if size < 2 {
            return Err(StoreError::backend(PostgresError::message(&format!(
                "a pool of at most {size} connection cannot hold a refresh lock and save under it: \
                 give it 2 connections or more"
            ))));
        }
        let store = Self::new(Connections::Pool(pool), (size / 2).min(Self::DEFAULT_MAX_LOCK_CONNECTIONS));
        store.connections.check(store.settings.query_timeout).await?;
        Ok(store)
    }

    fn new(connections: Connections, max_lock_connections: usize) -> Self {
        let settings = Settings {
            table: Self::DEFAULT_TABLE.to_owned(),
            lock_timeout: Self::DEFAULT_LOCK_TIMEOUT,
            lock_hold_limit: Self::DEFAULT_LOCK_HOLD_LIMIT,
            max_lock_connections,
            query_timeout: Self::DEFAULT_QUERY_TIMEOUT,
            sql: Sql::for_table(Self::DEFAULT_TABLE),
        };
        Self {
            locks: Arc::new(Locks::new(settings.max_lock_connections)),
            settings: Arc::new(settings),
            connections: Arc::new(connections),
        }
    }

    /// Keeps tokens in this table; `schema.table` names a schema too (split at the first dot).
    /// Both parts are quoted as identifiers, so the name is taken literally, case included.
    ///
    /// Default: `reqwest_token_refresh_tokens` ([`DEFAULT_TABLE`](Self::DEFAULT_TABLE)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn table(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.map(|settings| {
            settings.sql = Sql::for_table(&name);
            settings.table = name;
        })
    }

    /// How long [`TokenStore::lock`] waits for the lock, which another replica holds while it
    /// refreshes; it includes waiting for a free lock connection. Keep it above the lock-hold
    /// limit, or waiters give up on refreshes that are still allowed to finish.
    ///
    /// Default: 60 seconds ([`DEFAULT_LOCK_TIMEOUT`](Self::DEFAULT_LOCK_TIMEOUT)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn lock_timeout(self, timeout: Duration) -> Self {
        self.map(|settings| settings.lock_timeout = timeout)
    }

    /// How long a held lock may sit idle while the token endpoint is called before the server ends
    /// the lock's session, releasing the lock; set as the lock transaction's
    /// `idle_in_transaction_session_timeout`. Keep it above your token source's timeout: a lock
    /// lost during a token call lets another replica spend the same refresh token. The
    /// [fence](Self#fencing) keeps a holder that lost its lock from overwriting newer tokens.
    ///
    /// Default: 55 seconds ([`DEFAULT_LOCK_HOLD_LIMIT`](Self::DEFAULT_LOCK_HOLD_LIMIT)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn lock_hold_limit(self, limit: Duration) -> Self {
        self.map(|settings| settings.lock_hold_limit = limit)
    }

    /// How many locks this store (with its clones) holds at once, each on its own connection (at
    /// least 1). Refreshes beyond it wait for a free connection; count these connections, plus
    /// one, per replica against the server's `max_connections`. On a pool
    /// ([`from_pool`](Self::from_pool)) the locks' connections are the pool's, and the number is
    /// capped at one less than the pool's size, so that held locks alone never take every connection
    /// their saves need.
    ///
    /// Default: 10 ([`DEFAULT_MAX_LOCK_CONNECTIONS`](Self::DEFAULT_MAX_LOCK_CONNECTIONS)); on a
    /// pool, half its size, at most 10.
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn max_lock_connections(self, connections: usize) -> Self {
        let most = self.connections.most_locks();
        self.map(|settings| settings.max_lock_connections = connections.clamp(1, most))
    }

    /// How long a load, a save or releasing a lock may take before it fails with
    /// [`StoreError::Backend`] and its connection is replaced.
    ///
    /// Default: 10 seconds ([`DEFAULT_QUERY_TIMEOUT`](Self::DEFAULT_QUERY_TIMEOUT)).
    #[must_use = "returns the changed store; on its own the call changes nothing"]
    pub fn query_timeout(self, timeout: Duration) -> Self {
        self.map(|settings| settings.query_timeout = timeout)
    }

    /// The table's name, as given to [`table`](Self::table).
    pub fn table_name(&self) -> &str {
        &self.settings.table
    }

    /// The advisory lock id that [`TokenStore::lock`] takes for `key`: a stable 64-bit hash
    /// (FNV-1a, then a 64-bit finaliser) of the table name and the key, the same in every process
    /// and version of this crate. Look for it in `pg_locks` as `(classid::bigint << 32) | objid`
    /// with `objsubid = 1`.
    pub fn lock_id(&self, key: &TokenKey) -> i64 {
        lock_id(&self.settings.table, key.as_str())
    }

    /// Creates the table if it does not exist yet (see the [schema](Self#schema)), and for a
    /// `schema.table` name the schema too, if no schema of that name exists. Idempotent, and safe
    /// when several replicas run it at once (it runs under an advisory lock of its own). An
    /// existing table is left as it is, whatever its columns.
    ///
    /// Several providers share a database with a table each (`oauth.withings_tokens`,
    /// `oauth.whoop_tokens`): their keys, revisions and locks are independent.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when PostgreSQL cannot be reached or refuses (the user may not
    /// create tables or the schema: the error says what to create).
    pub async fn setup(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now()
            .checked_add(self.settings.query_timeout)
            .unwrap_or_else(connection::far_deadline);
        let Some((session, _)) = self.connections.session(None, deadline).await? else {
            return Err(PostgresError::message("creating the table: no connection came free within the query timeout")
                .into_store());
        };
        let id = lock_id(&self.settings.table, "\0setup");
        let sql = &self.settings.sql;
        // Setups of two tables in one new schema would race to create it: its own lock first.
        let schema = match (sql.create_schema.as_deref(), self.settings.table.split_once('.')) {
            (Some(create), Some((schema, _))) => {
                format!("SELECT pg_advisory_xact_lock({}); {create}; ", lock_id(schema, "\0schema"))
            }
            _ => String::new(),
        };
        let batch = format!("BEGIN; SELECT pg_advisory_xact_lock({id}); {schema}{}; COMMIT", sql.create);
        let action = || match self.settings.table.split_once('.') {
            Some((schema, _)) => format!(
                "creating the table {} and, if missing, its schema (a role that may not create it needs \
                 `CREATE SCHEMA \"{schema}\"` run for it first)",
                self.settings.table
            ),
            None => format!("creating the table {}", self.settings.table),
        };
        match tokio::time::timeout(self.settings.query_timeout, session.batch_execute(&batch)).await {
            Ok(Ok(())) => {
                // Committed: a pool's connection goes back to the pool, the store's own closes.
                drop(session.release());
                Ok(())
            }
            Ok(Err(err)) => Err(PostgresError::new(action(), &err).into_store()),
            Err(_) => Err(PostgresError::timed_out(action()).into_store()),
        }
        // On failure the session's connection closes here (a pool's is not handed back),
        // rolling back whatever did not commit.
    }

    fn map(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = (*self.settings).clone();
        change(&mut settings);
        // The lock connections belong to one table and one limit: a changed setting starts anew.
        self.locks = Arc::new(Locks::new(settings.max_lock_connections));
        self.settings = Arc::new(settings);
        self
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.settings;
        f.debug_struct("PostgresStore")
            .field("connections", &self.connections.describe())
            .field("table", &settings.table)
            .field("lock_timeout", &settings.lock_timeout)
            .field("lock_hold_limit", &settings.lock_hold_limit)
            .field("max_lock_connections", &settings.max_lock_connections)
            .field("query_timeout", &settings.query_timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenStore for PostgresStore {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        let sql = &self.settings.sql.load;
        let name = key.as_str();
        let row = self
            .run(
                || format!("loading the tokens of key `{key}`"),
                |client| async move { client.query_typed_opt(sql, &[(&name, Type::TEXT)]).await },
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let json: String = row.try_get(0).map_err(|err| self.corrupt(key, &err))?;
        let generation: i64 = row.try_get(1).map_err(|err| self.corrupt(key, &err))?;
        if json == REMOVED {
            return Ok(None);
        }
        let tokens = serde_json::from_str(&json).map_err(|err| self.corrupt(key, &err))?;
        Ok(Some(Stored::new(tokens, revision_of(generation))))
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        let json = serde_json::to_string(tokens)
            .map_err(|err| StoreError::Corrupt(format!("tokens cannot be written as JSON: {err}")))?;
        self.write(key, &json, replaces, "saving").await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.write(key, REMOVED, replaces, "removing").await
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        Ok(Some(Box::new(self.take_lock(key).await?)))
    }
}

/// What a removed key's `tokens` column holds: the JSON `null` (not SQL `NULL`, so that the
/// column stays `NOT NULL` and existing tables need no change). The row, and with it the
/// generation, stays: no save older than the removal can land over it.
const REMOVED: &str = "null";

impl PostgresStore {
    /// The fenced write of a save (`json`: the token set) or a removal ([`REMOVED`]) over
    /// `replaces`: an insert when there was no row, else an update on the generation named.
    async fn write(&self, key: &TokenKey, json: &str, replaces: Revision, doing: &str) -> Result<Revision, StoreError> {
        let name = key.as_str();
        let action = || format!("{doing} the tokens of key `{key}`");
        let row = if replaces == Revision::NONE {
            let sql = &self.settings.sql.insert_fenced;
            self.run(action, |client| async move {
                client.query_typed_opt(sql, &[(&name, Type::TEXT), (&json, Type::TEXT)]).await
            })
            .await?
        } else {
            let sql = &self.settings.sql.update_fenced;
            let expected = i64::try_from(replaces.get()).unwrap_or(i64::MAX);
            self.run(action, |client| async move {
                client.query_typed_opt(sql, &[(&name, Type::TEXT), (&json, Type::TEXT), (&expected, Type::INT8)]).await
            })
            .await?
        };
        if let Some(row) = row {
            let written: i64 = row.try_get(0).map_err(|err| self.corrupt(key, &err))?;
            return Ok(revision_of(written));
        }
        // Refused: the row holds another generation. Whether it is a removal is asked apart; a
        // removal landing in between is then reported, which is as true by the time it is.
        let sql = &self.settings.sql.removed_generation;
        let removed =
            self.run(action, |client| async move { client.query_typed_opt(sql, &[(&name, Type::TEXT)]).await }).await?;
        match removed {
            Some(row) => {
                let generation: i64 = row.try_get(0).map_err(|err| self.corrupt(key, &err))?;
                tracing::debug!(key = %key, %replaces, "write refused: the key's tokens were removed");
                Err(StoreError::Removed { revision: revision_of(generation) })
            }
            None => {
                tracing::debug!(key = %key, %replaces, "write refused: another process saved newer tokens since this one read them");
                Err(StoreError::Superseded)
            }
        }
    }

    fn corrupt(&self, key: &TokenKey, err: &dyn fmt::Display) -> StoreError {
        StoreError::Corrupt(format!(
            "the row of key `{key}` in {} cannot be read as tokens: {err}",
            self.settings.table
        ))
    }
}

/// A stored generation as a revision (a negative one, written by hand, reads as none).
fn revision_of(generation: i64) -> Revision {
    Revision::new(u64::try_from(generation).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_defaults_are_what_their_docs_say() {
        assert_eq!(PostgresStore::DEFAULT_TABLE, "reqwest_token_refresh_tokens");
        assert_eq!(PostgresStore::DEFAULT_LOCK_TIMEOUT, Duration::from_secs(60));
        assert_eq!(PostgresStore::DEFAULT_QUERY_TIMEOUT, Duration::from_secs(10));
        assert_eq!(PostgresStore::DEFAULT_LOCK_HOLD_LIMIT, Duration::from_secs(55));
        assert_eq!(PostgresStore::DEFAULT_MAX_LOCK_CONNECTIONS, 10);
    }
}

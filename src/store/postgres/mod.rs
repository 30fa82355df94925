//! [`PostgresStore`]: tokens in PostgreSQL, one row per key, an advisory lock per key. How it
//! works is documented on the type.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls, Socket};

use super::{Revision, StoreGuard, Stored, TokenStore};
use crate::error::StoreError;
use crate::key::TokenKey;
use crate::source::DEFAULT_TOKEN_TIMEOUT;
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
///     tokens     jsonb       NOT NULL,  -- the TokenSet, as serde writes it
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
/// ([`lock_hold_limit`](Self::lock_hold_limit), by default the token timeout plus two query
/// timeouts), so a holder that hangs (or whose token call outlives its timeout) loses its session
/// and its lock; the server enforces it, not the holder. Waiting for the lock is bounded by
/// [`lock_timeout`](Self::lock_timeout); running out gives [`StoreError::LockTimeout`].
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
/// Saves under the lock go through the lock's [`StoreGuard`](crate::StoreGuard) on the shared
/// connection, so they commit at once: the lock's own transaction writes nothing.
///
/// # Connections
///
/// Loads and saves go through one shared connection (tokio-postgres pipelines concurrent queries on
/// it). Held locks use connections of their own, at most
/// [`max_lock_connections`](Self::max_lock_connections) at once, kept open between
/// refreshes. When PostgreSQL is unreachable every call fails with [`StoreError::Backend`]
/// (never a panic) and the next call connects again; a query that gets no answer within the query
/// timeout fails the same way and its connection is replaced.
#[derive(Clone)]
pub struct PostgresStore {
    settings: Arc<Settings>,
    connection: Arc<SharedConnection>,
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

#[derive(Debug, Clone)]
struct Sql {
    create: String,
    load: String,
    update_fenced: String,
    insert_fenced: String,
}

impl Sql {
    fn for_table(table: &str) -> Self {
        let t = quote_table(table);
        Self {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 key text PRIMARY KEY, \
                 tokens jsonb NOT NULL, \
                 generation bigint NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now())"
            ),
            load: format!("SELECT tokens::text, generation FROM {t} WHERE key = $1"),
            update_fenced: format!(
                "UPDATE {t} SET tokens = $2::jsonb, generation = generation + 1, updated_at = now() \
                 WHERE key = $1 AND generation = $3 RETURNING generation"
            ),
            insert_fenced: format!(
                "INSERT INTO {t} (key, tokens, generation, updated_at) VALUES ($1, $2::jsonb, 1, now()) \
                 ON CONFLICT (key) DO NOTHING RETURNING generation"
            ),
        }
    }
}

/// `name` or `schema.name`, each part quoted as an SQL identifier.
fn quote_table(table: &str) -> String {
    let quote = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", quote(schema), quote(name)),
        None => quote(table),
    }
}

impl PostgresStore {
    /// The table used unless [`table`](Self::table) names another.
    pub const DEFAULT_TABLE: &'static str = "reqwest_token_refresh_tokens";
    /// How long [`TokenStore::lock`] waits for another replica's refresh (and for a free lock
    /// connection), unless set otherwise.
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long one store query may take before it fails and its connection is replaced, unless
    /// set otherwise.
    pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long a held lock may stay idle before the server ends its session, unless set
    /// otherwise: the default token timeout ([`DEFAULT_TOKEN_TIMEOUT`](crate::DEFAULT_TOKEN_TIMEOUT))
    /// plus two query timeouts (the re-read before the token call and the save after it).
    pub const DEFAULT_LOCK_HOLD_LIMIT: Duration =
        DEFAULT_TOKEN_TIMEOUT.saturating_add(Self::DEFAULT_QUERY_TIMEOUT).saturating_add(Self::DEFAULT_QUERY_TIMEOUT);
    /// How many locks one store holds at once (each on its own connection), unless set otherwise.
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
        let endpoint = describe(&parsed);
        let connect: Connector = Arc::new(move || {
            let (config, tls) = (parsed.clone(), tls.clone());
            Box::pin(async move {
                let (client, connection) = config.connect(tls).await?;
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "a PostgreSQL connection of the token store ended");
                    }
                });
                Ok(client)
            })
        });
        let settings = Settings {
            table: Self::DEFAULT_TABLE.to_owned(),
            lock_timeout: Self::DEFAULT_LOCK_TIMEOUT,
            lock_hold_limit: Self::DEFAULT_LOCK_HOLD_LIMIT,
            max_lock_connections: Self::DEFAULT_MAX_LOCK_CONNECTIONS,
            query_timeout: Self::DEFAULT_QUERY_TIMEOUT,
            sql: Sql::for_table(Self::DEFAULT_TABLE),
        };
        let store = Self {
            locks: Arc::new(Locks::new(settings.max_lock_connections)),
            settings: Arc::new(settings),
            connection: Arc::new(SharedConnection {
                connect,
                endpoint,
                state: Mutex::new(ConnectionState::default()),
                connecting: tokio::sync::Mutex::new(()),
            }),
        };
        store.connection.client().await?;
        Ok(store)
    }

    /// Keeps tokens in this table (default [`DEFAULT_TABLE`](Self::DEFAULT_TABLE)); `schema.table`
    /// names a schema too (split at the first dot). Both parts are quoted as identifiers, so the
    /// name is taken literally, case included.
    pub fn table(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.map(|settings| {
            settings.sql = Sql::for_table(&name);
            settings.table = name;
        })
    }

    /// How long [`TokenStore::lock`] waits for the lock, which another replica holds while it
    /// refreshes (default [`DEFAULT_LOCK_TIMEOUT`](Self::DEFAULT_LOCK_TIMEOUT)); it includes
    /// waiting for a free lock connection. Keep it above the lock-hold limit, or waiters give up
    /// on refreshes that are still allowed to finish.
    pub fn lock_timeout(self, timeout: Duration) -> Self {
        self.map(|settings| settings.lock_timeout = timeout)
    }

    /// How long a held lock may sit idle while the token endpoint is called before the server ends
    /// the lock's session, releasing the lock (default
    /// [`DEFAULT_LOCK_HOLD_LIMIT`](Self::DEFAULT_LOCK_HOLD_LIMIT)); set as the lock transaction's
    /// `idle_in_transaction_session_timeout`. Keep it above your token source's timeout: a lock
    /// lost during a token call lets another replica spend the same refresh token. The
    /// [fence](Self#fencing) keeps a holder that lost its lock from overwriting newer tokens.
    pub fn lock_hold_limit(self, limit: Duration) -> Self {
        self.map(|settings| settings.lock_hold_limit = limit)
    }

    /// How many locks this store (with its clones) holds at once, each on its own connection
    /// (default [`DEFAULT_MAX_LOCK_CONNECTIONS`](Self::DEFAULT_MAX_LOCK_CONNECTIONS); at least 1).
    /// Refreshes beyond it wait for a free connection; count these connections, plus one, per
    /// replica against the server's `max_connections`.
    pub fn max_lock_connections(self, connections: usize) -> Self {
        self.map(|settings| settings.max_lock_connections = connections.max(1))
    }

    /// How long a load, a save or releasing a lock may take before it fails with
    /// [`StoreError::Backend`] and its connection is replaced (default
    /// [`DEFAULT_QUERY_TIMEOUT`](Self::DEFAULT_QUERY_TIMEOUT)).
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

    /// Creates the table if it does not exist yet (see the [schema](Self#schema)). Idempotent,
    /// and safe when several replicas run it at once (it runs under an advisory lock of its own).
    /// An existing table is left as it is, whatever its columns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when PostgreSQL cannot be reached or refuses (the user may not
    /// create tables: then create the table yourself).
    pub async fn setup(&self) -> Result<(), StoreError> {
        let client = self.connection.connect_new().await?;
        let id = lock_id(&self.settings.table, "\0setup");
        let batch = format!("BEGIN; SELECT pg_advisory_xact_lock({id}); {}; COMMIT", self.settings.sql.create);
        let action = || format!("creating the table {}", self.settings.table);
        match tokio::time::timeout(self.settings.query_timeout, client.batch_execute(&batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(PostgresError::new(action(), &err).into_store()),
            Err(_) => Err(PostgresError::timed_out(action()).into_store()),
        }
        // The dedicated connection closes here, rolling back whatever did not commit.
    }

    fn map(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = (*self.settings).clone();
        change(&mut settings);
        // Locks and the generations remembered under them belong to one table and one limit.
        self.locks = Arc::new(Locks::new(settings.max_lock_connections));
        self.settings = Arc::new(settings);
        self
    }

    /// Runs one query on the shared connection, within the query timeout. A query that fails
    /// because a connection kept from earlier turned out to be closed (PostgreSQL restarted) is
    /// tried once more on a new connection.
    async fn run<T, F, Fut>(&self, action: impl Fn() -> String, query: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let mut retried = false;
        loop {
            let (client, fresh) = self.connection.client().await?;
            match tokio::time::timeout(self.settings.query_timeout, query(client.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) if err.is_closed() => {
                    self.connection.discard(&client);
                    if fresh || retried {
                        return Err(PostgresError::new(action(), &err).into_store());
                    }
                    retried = true;
                }
                Ok(Err(err)) => return Err(PostgresError::new(action(), &err).into_store()),
                Err(_) => {
                    // No answer: the server or the network hangs. A new connection is the only
                    // way to know more.
                    self.connection.discard(&client);
                    return Err(PostgresError::timed_out(action()).into_store());
                }
            }
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.settings;
        f.debug_struct("PostgresStore")
            .field("endpoint", &self.connection.endpoint)
            .field("table", &settings.table)
            .field("lock_timeout", &settings.lock_timeout)
            .field("lock_hold_limit", &settings.lock_hold_limit)
            .field("max_lock_connections", &settings.max_lock_connections)
            .field("query_timeout", &settings.query_timeout)
            .finish_non_exhaustive()
    }
}

/// Where a configuration connects, for `Debug` and errors: hosts, ports, database and user, never
/// the password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut out = format!("host={}", if hosts.is_empty() { "(default)".to_owned() } else { hosts.join(",") });
    if !ports.is_empty() {
        out.push_str(&format!(" port={}", ports.join(",")));
    }
    if let Some(dbname) = config.get_dbname() {
        out.push_str(&format!(" dbname={dbname}"));
    }
    if let Some(user) = config.get_user() {
        out.push_str(&format!(" user={user}"));
    }
    out
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
        let tokens = serde_json::from_str(&json).map_err(|err| self.corrupt(key, &err))?;
        Ok(Some(Stored::new(tokens, revision_of(generation))))
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        let json = serde_json::to_string(tokens)
            .map_err(|err| StoreError::Corrupt(format!("tokens cannot be written as JSON: {err}")))?;
        let (name, json) = (key.as_str(), json.as_str());
        let action = || format!("saving the tokens of key `{key}`");
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
        let Some(row) = row else {
            tracing::debug!(key = %key, %replaces, "save refused: another process saved newer tokens since this one read them");
            return Err(StoreError::Superseded);
        };
        let written: i64 = row.try_get(0).map_err(|err| self.corrupt(key, &err))?;
        Ok(revision_of(written))
    }

    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        let settings = &self.settings;
        // A timeout too long to represent is cut to a day: the layer's flight deadline ends the
        // wait long before.
        let deadline = Instant::now()
            .checked_add(settings.lock_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 60 * 60));
        let permit = match tokio::time::timeout_at(deadline, self.locks.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a timeout is the only way out.
            Ok(Err(_)) | Err(_) => return Err(StoreError::LockTimeout),
        };
        let id = self.lock_id(key);
        let action = || format!("taking the refresh lock of key `{key}`");
        let mut retried = false;
        loop {
            let (client, reused) = match self.locks.take_idle() {
                Some(client) => (client, true),
                None => (self.connection.connect_new().await?, false),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let _ = self.locks.put_back(client, settings.query_timeout).await;
                return Err(StoreError::LockTimeout);
            }
            // Integer settings are in milliseconds; 0 would mean "no limit".
            let wait_ms = remaining.as_millis().max(1);
            let hold_ms = settings.lock_hold_limit.as_millis().max(1);
            let begin = format!(
                "BEGIN; SET LOCAL lock_timeout = {wait_ms}; \
                 SET LOCAL idle_in_transaction_session_timeout = {hold_ms}; \
                 SELECT pg_advisory_xact_lock({id})"
            );
            let taken = client.batch_execute(&begin);
            match tokio::time::timeout(remaining.saturating_add(settings.query_timeout), taken).await {
                Ok(Ok(())) => {
                    return Ok(Some(Box::new(PostgresGuard {
                        store: self,
                        key: key.clone(),
                        id,
                        client: Some(client),
                        _permit: permit,
                    })));
                }
                Ok(Err(err)) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    let _ = self.locks.put_back(client, settings.query_timeout).await;
                    return Err(StoreError::LockTimeout);
                }
                // A kept connection that PostgreSQL closed meanwhile (a restart): try a new one.
                Ok(Err(err)) if err.is_closed() && reused && !retried => retried = true,
                Ok(Err(err)) => {
                    let _ = self.locks.put_back(client, settings.query_timeout).await;
                    return Err(PostgresError::new(action(), &err).into_store());
                }
                // The connection is dropped, which ends its session and any wait on the server.
                Err(_) => return Err(PostgresError::timed_out(action()).into_store()),
            }
        }
    }
}

impl PostgresStore {
    fn corrupt(&self, key: &TokenKey, err: &dyn fmt::Display) -> StoreError {
        StoreError::Corrupt(format!(
            "the row of key `{key}` in {} cannot be read as tokens: {err}",
            self.settings.table
        ))
    }
}

/// Makes one new connection (its driver task spawned).
type Connector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Client, tokio_postgres::Error>> + Send>> + Send + Sync>;

/// The connection loads and saves share, made again when it is lost.
struct SharedConnection {
    connect: Connector,
    /// Where it connects (no password), for `Debug`.
    endpoint: String,
    state: Mutex<ConnectionState>,
    /// One connection attempt at a time; callers that waited for an attempt share its outcome.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct ConnectionState {
    client: Option<Arc<Client>>,
    attempts: u64,
    last_error: Option<StoreError>,
}

impl SharedConnection {
    /// The shared client, connecting first when there is none or it was closed; and whether it is
    /// new.
    async fn client(&self) -> Result<(Arc<Client>, bool), StoreError> {
        let seen = {
            let state = self.state.lock();
            if let Some(client) = state.client.as_ref().filter(|client| !client.is_closed()) {
                return Ok((client.clone(), false));
            }
            state.attempts
        };
        let _connecting = self.connecting.lock().await;
        {
            let state = self.state.lock();
            if let Some(client) = state.client.as_ref().filter(|client| !client.is_closed()) {
                return Ok((client.clone(), false));
            }
            // Someone tried while this caller waited, and failed: a thousand callers must not
            // make a thousand attempts against a server that is down.
            if state.attempts != seen
                && let Some(err) = &state.last_error
            {
                return Err(err.clone());
            }
        }
        let connected = self.connect_new().await;
        let mut state = self.state.lock();
        state.attempts += 1;
        match connected {
            Ok(client) => {
                let client = Arc::new(client);
                state.client = Some(client.clone());
                state.last_error = None;
                Ok((client, true))
            }
            Err(err) => {
                state.client = None;
                state.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// A new connection of its own (for a lock, or for `setup`).
    async fn connect_new(&self) -> Result<Client, StoreError> {
        (self.connect)().await.map_err(|err| {
            PostgresError::new(format!("connecting to PostgreSQL ({})", self.endpoint), &err).into_store()
        })
    }

    /// Forgets `client` if it is still the shared one, so that the next call connects anew.
    fn discard(&self, client: &Arc<Client>) {
        let mut state = self.state.lock();
        if state.client.as_ref().is_some_and(|current| Arc::ptr_eq(current, client)) {
            state.client = None;
        }
    }
}

/// The locks one store value (and its clones) holds, and the connections they use.
struct Locks {
    permits: Arc<Semaphore>,
    /// Lock connections between two locks (their transaction ended, so they hold nothing).
    idle: Mutex<Vec<Client>>,
    max_idle: usize,
}

impl Locks {
    fn new(connections: usize) -> Self {
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

    /// Ends whatever transaction `client` is in and keeps it for the next lock; drops it (closing
    /// the session, which releases anything it held) if that fails.
    /// The error is `None` when PostgreSQL did not answer in time.
    async fn put_back(&self, client: Client, timeout: Duration) -> Result<(), Option<tokio_postgres::Error>> {
        match tokio::time::timeout(timeout, client.batch_execute("ROLLBACK")).await {
            Ok(Ok(())) => {
                let mut idle = self.idle.lock();
                if idle.len() < self.max_idle {
                    idle.push(client);
                }
                Ok(())
            }
            Ok(Err(err)) => Err(Some(err)),
            Err(_) => Err(None),
        }
    }
}

/// A held per-key advisory lock: an open transaction on a connection of its own. Loads and saves
/// under it go through the store's shared connection (they commit at once) and are fenced by the
/// revision they name.
struct PostgresGuard<'a> {
    store: &'a PostgresStore,
    key: TokenKey,
    id: i64,
    /// `None` once released.
    client: Option<Client>,
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
        // A statement of its own on the shared connection, started after the lock was granted, so
        // it sees what the previous holder committed.
        self.store.load(&self.key).await
    }

    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.store.save(&self.key, tokens, replaces).await
    }

    async fn unlock(mut self: Box<Self>) -> Result<(), StoreError> {
        let Some(client) = self.client.take() else { return Ok(()) };
        // Rolling back ends the transaction and with it the advisory lock (nothing was written in
        // it: saves go through the shared connection and commit at once).
        let query_timeout = self.store.settings.query_timeout;
        self.store.locks.put_back(client, query_timeout).await.map_err(|err| {
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
        // Not released with `unlock` (the refresh was cancelled or panicked): dropping the client
        // closes the connection, and the server releases the lock with the session.
        drop(self.client.take());
    }
}

/// A stored generation as a revision (a negative one, written by hand, reads as none).
fn revision_of(generation: i64) -> Revision {
    Revision::new(u64::try_from(generation).unwrap_or(0))
}

/// The advisory lock id of `key` in `table`: FNV-1a over both, then the SplitMix64 finaliser so
/// that similar keys spread over the whole range. Stable: changing it would let two versions of
/// this crate refresh the same key at once.
fn lock_id(table: &str, key: &str) -> i64 {
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

/// A PostgreSQL failure, saying what the store was doing. Its message is tokio-postgres's (for a
/// server error: severity, message, detail), which never holds the connection password.
#[derive(Debug)]
struct PostgresError {
    message: String,
}

impl PostgresError {
    fn new(action: impl Into<String>, err: &tokio_postgres::Error) -> Self {
        // tokio-postgres says only "db error" or "error connecting to server"; the server's
        // message (severity, message, detail) and the I/O error are its sources.
        let mut message = format!("{}: {err}", action.into());
        let mut source = StdError::source(err);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message = message.replace('\n', "; ");
        if err.code() == Some(&SqlState::UNDEFINED_TABLE) {
            message.push_str(" (create the table once with PostgresStore::setup)");
        }
        Self { message }
    }

    fn timed_out(action: impl Into<String>) -> Self {
        Self { message: format!("{}: PostgreSQL did not answer in time", action.into()) }
    }

    fn into_store(self) -> StoreError {
        StoreError::backend(self)
    }
}

impl fmt::Display for PostgresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for PostgresError {}

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

    #[test]
    fn table_names_are_quoted_identifiers() {
        assert_eq!(quote_table("tokens"), "\"tokens\"");
        assert_eq!(quote_table("auth.Tokens"), "\"auth\".\"Tokens\"");
        assert_eq!(quote_table("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn the_endpoint_never_shows_the_password() {
        let config = Config::from_str("host=db.internal port=6432 user=app password=hunter2 dbname=tokens").unwrap();
        let described = describe(&config);
        assert_eq!(described, "host=db.internal port=6432 dbname=tokens user=app");
        let config = Config::from_str("postgresql://app:hunter2@db.internal/tokens").unwrap();
        assert!(!describe(&config).contains("hunter2"));
    }
}

//! Where the store's connections come from ([`Connections`]: its own, or the service's
//! `deadpool-postgres` pool), the connection loads and saves share when they are its own, running a
//! query within the query timeout, the [`Session`] a lock or `setup` holds; and [`PostgresError`],
//! how a PostgreSQL failure reads, never with the password.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, Socket};

use super::PostgresStore;
use crate::error::StoreError;

/// Where the store's connections come from.
pub(super) enum Connections {
    /// Its own: one connection that loads and saves share, and new ones for locks and `setup`.
    Own(SharedConnection),
    /// The service's pool: each query checks a connection out for its duration, each held lock for
    /// as long as it is held.
    #[cfg(feature = "deadpool-postgres")]
    Pool(deadpool_postgres::Pool),
}

/// A connection a query runs on.
#[allow(clippy::large_enum_variant, reason = "it lives in an `Arc` for the query's duration")]
pub(super) enum QueryConnection {
    Shared(Arc<Client>),
    #[cfg(feature = "deadpool-postgres")]
    Pooled(deadpool_postgres::Object),
}

impl Deref for QueryConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        match self {
            Self::Shared(client) => client,
            #[cfg(feature = "deadpool-postgres")]
            Self::Pooled(object) => object,
        }
    }
}

/// A connection held for a session of its own: a lock's transaction, or `setup`'s. Dropped without
/// [`release`](Session::release) it is closed, never handed back: an open transaction (and the
/// advisory lock in it) must not go back to a pool.
pub(super) struct Session {
    /// `None` only once released.
    connection: Option<SessionConnection>,
}

enum SessionConnection {
    Own(Client),
    #[cfg(feature = "deadpool-postgres")]
    Pooled(deadpool_postgres::Object),
}

impl Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        match self.connection.as_ref().expect("a session's connection is only taken when it ends") {
            SessionConnection::Own(client) => client,
            #[cfg(feature = "deadpool-postgres")]
            SessionConnection::Pooled(object) => object,
        }
    }
}

impl Session {
    fn own(client: Client) -> Self {
        Self { connection: Some(SessionConnection::Own(client)) }
    }

    /// Ends the session with its transaction over: the store's own connection comes back for
    /// reuse, a pool's goes back to the pool.
    pub(super) fn release(mut self) -> Option<Client> {
        match self.connection.take()? {
            SessionConnection::Own(client) => Some(client),
            #[cfg(feature = "deadpool-postgres")]
            SessionConnection::Pooled(object) => {
                drop(object);
                None
            }
        }
    }

    /// Whether the connection may be one PostgreSQL has closed since it was last used: a pool's
    /// always may.
    pub(super) fn kept(&self, reused: bool) -> bool {
        match self.connection {
            Some(SessionConnection::Own(_)) | None => reused,
            #[cfg(feature = "deadpool-postgres")]
            Some(SessionConnection::Pooled(_)) => true,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        #[cfg(feature = "deadpool-postgres")]
        if let Some(SessionConnection::Pooled(object)) = self.connection.take() {
            // Detached from the pool and dropped: the connection closes, and the server ends
            // its transaction and releases its locks.
            drop(deadpool_postgres::Object::take(object));
        }
        // The store's own connection closes as it is dropped.
    }
}

impl Connections {
    /// Where the store connects, for `Debug`: hosts, ports, database and user (never the
    /// password), or the pool's size.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Own(shared) => shared.endpoint.clone(),
            #[cfg(feature = "deadpool-postgres")]
            Self::Pool(pool) => format!("a deadpool-postgres pool of at most {} connections", pool.status().max_size),
        }
    }

    /// How many locks may hold a connection at once: on a pool, one less than its size, so that
    /// held locks alone never take every connection their saves need.
    pub(super) fn most_locks(&self) -> usize {
        match self {
            Self::Own(_) => usize::MAX,
            #[cfg(feature = "deadpool-postgres")]
            Self::Pool(pool) => pool.status().max_size.saturating_sub(1).max(1),
        }
    }

    /// A connection for a query, and whether it was made just now (a failure on it is then not a
    /// stale connection's).
    async fn for_query(&self, timeout: Duration) -> Result<(Arc<QueryConnection>, bool), StoreError> {
        match self {
            Self::Own(shared) => match tokio::time::timeout(timeout, shared.client()).await {
                Ok(connected) => connected.map(|(client, fresh)| (Arc::new(QueryConnection::Shared(client)), fresh)),
                Err(_) => {
                    Err(PostgresError::timed_out(format!("connecting to PostgreSQL ({})", shared.endpoint))
                        .into_store())
                }
            },
            #[cfg(feature = "deadpool-postgres")]
            Self::Pool(pool) => {
                let deadline = Instant::now().checked_add(timeout).unwrap_or_else(far_deadline);
                let object = from_pool(pool, deadline).await?.ok_or_else(|| {
                    PostgresError::message(
                        "waiting for a connection from the pool: none came free within the query timeout",
                    )
                    .into_store()
                })?;
                Ok((Arc::new(QueryConnection::Pooled(object)), false))
            }
        }
    }

    /// A connection for a session of its own, waiting until `deadline` at most (`Ok(None)` when
    /// none came by then), and whether it was kept from an earlier session. Takes one of `idle`
    /// first when the connections are the store's own.
    pub(super) async fn session(
        &self,
        idle: Option<Client>,
        deadline: Instant,
    ) -> Result<Option<(Session, bool)>, StoreError> {
        match self {
            Self::Own(shared) => match idle {
                Some(client) => Ok(Some((Session::own(client), true))),
                None => match tokio::time::timeout_at(deadline, shared.connect_new()).await {
                    Ok(connected) => Ok(Some((Session::own(connected?), false))),
                    Err(_) => Ok(None),
                },
            },
            #[cfg(feature = "deadpool-postgres")]
            Self::Pool(pool) => Ok(from_pool(pool, deadline)
                .await?
                .map(|object| (Session { connection: Some(SessionConnection::Pooled(object)) }, true))),
        }
    }

    /// Makes sure a connection can be had: at start-up, so that a wrong address or password shows
    /// then.
    pub(super) async fn check(&self, timeout: Duration) -> Result<(), StoreError> {
        self.for_query(timeout).await.map(drop)
    }

    /// Forgets a connection a query found closed or hung, so that the next query does not use it.
    fn discard(&self, connection: Arc<QueryConnection>) {
        match (self, &*connection) {
            (Self::Own(shared), QueryConnection::Shared(client)) => shared.discard(client),
            #[cfg(feature = "deadpool-postgres")]
            (_, QueryConnection::Pooled(_)) => {
                // The query is over, so this is the only reference left.
                if let Ok(QueryConnection::Pooled(object)) = Arc::try_unwrap(connection) {
                    drop(deadpool_postgres::Object::take(object));
                }
            }
            #[cfg(feature = "deadpool-postgres")]
            (Self::Pool(_), QueryConnection::Shared(_)) => {}
        }
    }
}

/// A deadline far enough away to mean "none", for a timeout too long to represent.
pub(super) fn far_deadline() -> Instant {
    Instant::now() + Duration::from_secs(24 * 60 * 60)
}

/// A connection from `pool`, waiting until `deadline` at most (`Ok(None)` when none came free).
#[cfg(feature = "deadpool-postgres")]
async fn from_pool(
    pool: &deadpool_postgres::Pool,
    deadline: Instant,
) -> Result<Option<deadpool_postgres::Object>, StoreError> {
    match tokio::time::timeout_at(deadline, pool.get()).await {
        Ok(Ok(object)) => Ok(Some(object)),
        Ok(Err(deadpool_postgres::PoolError::Backend(err))) => {
            Err(PostgresError::new("connecting to PostgreSQL through the pool", &err).into_store())
        }
        Ok(Err(err)) => Err(PostgresError::chain("taking a connection from the pool", &err).into_store()),
        Err(_) => Ok(None),
    }
}

/// Makes one new connection (its driver task spawned).
type Connector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Client, tokio_postgres::Error>> + Send>> + Send + Sync>;

/// The connection loads and saves share, made again when it is lost.
pub(super) struct SharedConnection {
    connect: Connector,
    /// Where it connects (no password), for `Debug`.
    pub(super) endpoint: String,
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
    /// Connections to `config` (each with `tls`), none made yet.
    pub(super) fn new<T>(config: Config, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let endpoint = describe(&config);
        let connect: Connector = Arc::new(move || {
            let (config, tls) = (config.clone(), tls.clone());
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
        Self {
            connect,
            endpoint,
            state: Mutex::new(ConnectionState::default()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The shared client, connecting first when there is none or it was closed; and whether it is
    /// new.
    pub(super) async fn client(&self) -> Result<(Arc<Client>, bool), StoreError> {
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
    pub(super) async fn connect_new(&self) -> Result<Client, StoreError> {
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

impl PostgresStore {
    /// Runs one query within the query timeout, on the shared connection or on one from the pool.
    /// A query that fails because a connection kept from earlier turned out to be closed
    /// (PostgreSQL restarted) is tried once more on a new connection.
    pub(super) async fn run<T, F, Fut>(&self, action: impl Fn() -> String, query: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<QueryConnection>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let timeout = self.settings.query_timeout;
        let mut retried = false;
        loop {
            let (connection, fresh) = self.connections.for_query(timeout).await?;
            match tokio::time::timeout(timeout, query(connection.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) if err.is_closed() => {
                    self.connections.discard(connection);
                    if fresh || retried {
                        return Err(PostgresError::new(action(), &err).into_store());
                    }
                    retried = true;
                }
                Ok(Err(err)) => return Err(PostgresError::new(action(), &err).into_store()),
                Err(_) => {
                    // No answer: the server or the network hangs. A new connection is the only
                    // way to know more.
                    self.connections.discard(connection);
                    return Err(PostgresError::timed_out(action()).into_store());
                }
            }
        }
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

/// A PostgreSQL failure, saying what the store was doing. Its message is tokio-postgres's (for a
/// server error: severity, message, detail), which never holds the connection password.
#[derive(Debug)]
pub(super) struct PostgresError {
    message: String,
}

impl PostgresError {
    pub(super) fn new(action: impl Into<String>, err: &tokio_postgres::Error) -> Self {
        // tokio-postgres says only "db error" or "error connecting to server"; the server's
        // message (severity, message, detail) and the I/O error are its sources.
        let mut this = Self::chain(action, err);
        if err.code() == Some(&SqlState::UNDEFINED_TABLE) {
            this.message.push_str(" (create the table once with PostgresStore::setup)");
        }
        this
    }

    /// `action`, then `err` and each of its sources, on one line.
    pub(super) fn chain(action: impl Into<String>, err: &(dyn StdError + 'static)) -> Self {
        let mut message = format!("{}: {err}", action.into());
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Self { message: message.replace('\n', "; ") }
    }

    /// A failure that is only what the store says of it.
    pub(super) fn message(message: &str) -> Self {
        Self { message: message.to_owned() }
    }

    pub(super) fn timed_out(action: impl Into<String>) -> Self {
        Self { message: format!("{}: PostgreSQL did not answer in time", action.into()) }
    }

    pub(super) fn into_store(self) -> StoreError {
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
    use std::str::FromStr;

    #[test]
    fn the_endpoint_never_shows_the_password() {
        let config = Config::from_str("host=db.internal port=6432 user=app password=hunter2 dbname=tokens").unwrap();
        let described = describe(&config);
        assert_eq!(described, "host=db.internal port=6432 dbname=tokens user=app");
        let config = Config::from_str("postgresql://app:hunter2@db.internal/tokens").unwrap();
        assert!(!describe(&config).contains("hunter2"));
    }
}

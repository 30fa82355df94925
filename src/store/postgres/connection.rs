//! The connection loads and saves share, made again when it is lost; running a query on it within
//! the query timeout; and [`PostgresError`], how a PostgreSQL failure reads, never with the
//! password.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, Socket};

use super::PostgresStore;
use crate::error::StoreError;

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
    /// Runs one query on the shared connection, within the query timeout. A query that fails
    /// because a connection kept from earlier turned out to be closed (PostgreSQL restarted) is
    /// tried once more on a new connection.
    pub(super) async fn run<T, F, Fut>(&self, action: impl Fn() -> String, query: F) -> Result<T, StoreError>
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

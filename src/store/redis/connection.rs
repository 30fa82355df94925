//! The connection to Redis: opened on first use inside the runtime, re-established by the
//! [`ConnectionManager`] after an outage, every command bounded by the command timeout; and how a
//! Redis failure becomes [`StoreError::Backend`] without showing a password.

use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, ConnectionInfo, RedisError};

use super::RedisStore;
use crate::error::StoreError;

pub(super) struct Shared {
    client: Client,
    /// The server's address, with any password replaced.
    pub(super) address: String,
    /// Created on first use, inside the runtime (it spawns a task).
    manager: Mutex<Option<ConnectionManager>>,
}

impl Shared {
    pub(super) fn new(client: Client) -> Self {
        let address = describe(client.get_connection_info());
        Self { client, address, manager: Mutex::new(None) }
    }
}

impl RedisStore {
    pub(super) fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut manager = self.shared.manager.lock();
        if let Some(manager) = &*manager {
            return Ok(manager.clone());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(failure_message("connecting to Redis", "RedisStore must be used inside a tokio runtime"));
        }
        let timeout = self.options.command_timeout;
        // Few, quick reconnection attempts: when Redis is down, a store operation should fail fast
        // (the layer backs off and retries), not hang while the manager retries for seconds.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let created = ConnectionManager::new_lazy_with_config(self.shared.client.clone(), config)
            .map_err(|err| failure("connecting to Redis", err))?;
        *manager = Some(created.clone());
        Ok(created)
    }

    /// Runs one Redis operation within the command timeout.
    pub(super) async fn run<T>(
        &self,
        action: &'static str,
        operation: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.command_timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(failure(action, err)),
            Err(_) => Err(failure_message(action, format!("timed out after {:?}", self.options.command_timeout))),
        }
    }
}

/// The server's address for `Debug`, with any password replaced.
fn describe(info: &ConnectionInfo) -> String {
    let settings = info.redis_settings();
    let credentials = match (settings.username(), settings.password()) {
        (Some(user), Some(_)) => format!("{user}:[redacted]@"),
        (None, Some(_)) => ":[redacted]@".to_owned(),
        (Some(user), None) => format!("{user}@"),
        (None, None) => String::new(),
    };
    let db = settings.db();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("redis://{credentials}{host}:{port}/{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{credentials}{host}:{port}/{db}"),
        ConnectionAddr::Unix(path) => format!("unix://{credentials}{}?db={db}", path.display()),
        other => format!("{credentials}{other}/{db}"),
    }
}

/// A Redis failure, for [`StoreError::Backend`].
#[derive(Debug)]
struct RedisFailure {
    action: &'static str,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    Redis(RedisError),
    Message(String),
}

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Detail::Redis(_) => write!(f, "redis: {} failed", self.action),
            Detail::Message(message) => write!(f, "redis: {} failed: {message}", self.action),
        }
    }
}

impl std::error::Error for RedisFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.detail {
            Detail::Redis(err) => Some(err),
            Detail::Message(_) => None,
        }
    }
}

pub(super) fn failure(action: &'static str, err: RedisError) -> StoreError {
    StoreError::backend(RedisFailure { action, detail: Detail::Redis(err) })
}

pub(super) fn failure_message(action: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::backend(RedisFailure { action, detail: Detail::Message(message.into()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::TokenKey;
    use crate::store::TokenStore;

    #[test]
    fn outside_a_runtime_operations_fail_without_panicking() {
        let store = RedisStore::new("redis://127.0.0.1:1").unwrap();
        let err = futures_lite_block_on(store.load(&TokenKey::default())).unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    }

    /// Polls a future to completion on this thread, with no tokio runtime.
    fn futures_lite_block_on<F: Future>(future: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            std::thread::yield_now();
        }
    }
}

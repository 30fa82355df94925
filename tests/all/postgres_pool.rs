//! `PostgresStore::from_pool` on what only a pool has: the service's own queries beside the store's,
//! a fixed number of connections, locks that must never go back to the pool still held. (The store
//! tests themselves run on a pool too: `postgres_store_on_a_pool`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{PostgresStore, Revision, StoreError, TokenKey, TokenRefresh, TokenSet, TokenStore};
use tokio_postgres::NoTls;

use crate::helpers::{StoreExt, client_with, grant};
use crate::postgres_server::PgServer;

/// The application name the pool's connections carry, to count them in `pg_stat_activity`.
const POOL_APP: &str = "service-pool";

fn pool(server: &PgServer, size: usize) -> deadpool_postgres::Pool {
    let config = format!("{} application_name={POOL_APP}", server.config());
    let manager = deadpool_postgres::Manager::new(config.parse().unwrap(), NoTls);
    deadpool_postgres::Pool::builder(manager).max_size(size).build().unwrap()
}

/// A connection outside the pool, to look at the server as a person would.
async fn admin(server: &PgServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.config(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Client connections by application name: (the pool's, any other but this admin one).
async fn connections(admin: &tokio_postgres::Client) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE application_name = $1), \
                    count(*) FILTER (WHERE application_name <> $1 AND pid <> pg_backend_pid()) \
             FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[&POOL_APP],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_through_the_services_pool_stays_within_it_beside_the_services_own_queries() {
    let server = PgServer::start().await;
    let admin = admin(&server).await;
    let provider = MockProvider::start().await;
    let pool = pool(&server, 8);
    let store = PostgresStore::from_pool(pool.clone()).await.unwrap();
    assert!(format!("{store:?}").contains("max_lock_connections: 4"), "half the pool: {store:?}");
    store.setup().await.unwrap();
    let users: Vec<TokenKey> = (0..200).map(|i| TokenKey::new(format!("user-{i}"))).collect();
    for user in &users {
        store.put(user, &provider.issue_tokens()).await.unwrap();
    }
    provider.expire_access_tokens();
    let auth = TokenRefresh::builder(grant(&provider)).store(store.clone()).build().unwrap();
    let client = client_with(&auth);

    // While the storm runs: the service's own queries through the same pool, and a watch on how
    // many connections exist.
    let storming = Arc::new(AtomicBool::new(true));
    let most = Arc::new(AtomicI64::new(0));
    let watch = tokio::spawn({
        let (storming, most) = (storming.clone(), most.clone());
        async move {
            let mut others = 0;
            while storming.load(Ordering::SeqCst) {
                let (pooled, other) = connections(&admin).await;
                most.fetch_max(pooled, Ordering::SeqCst);
                others = others.max(other);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            others
        }
    });
    let service = tokio::spawn({
        let (pool, storming) = (pool.clone(), storming.clone());
        async move {
            let mut answered = 0;
            while storming.load(Ordering::SeqCst) {
                let connection = tokio::time::timeout(Duration::from_secs(30), pool.get())
                    .await
                    .expect("the service got a connection within 30 s")
                    .expect("the service gets a connection from its pool");
                let row = connection.query_one("SELECT 41 + 1", &[]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), 42);
                answered += 1;
            }
            answered
        }
    });
    let requests = users.iter().flat_map(|user| {
        (0..3).map(|_| {
            let request = client.get(provider.api_url("me")).with_extension(user.clone());
            async move { request.send().await.map(|response| response.status().as_u16()) }
        })
    });
    let outcomes = join_all(requests).await;
    storming.store(false, Ordering::SeqCst);
    let (answered, others) = (service.await.unwrap(), watch.await.unwrap());

    assert!(
        outcomes.iter().all(|outcome| matches!(outcome, Ok(200))),
        "{:?}",
        outcomes.iter().find(|o| !matches!(o, Ok(200)))
    );
    assert_eq!(provider.stats().token_calls, 200, "one token call per user");
    assert_eq!(auth.stats().store_failures, 0);
    assert!(answered > 0, "the service's own queries went on during the storm");
    let most = most.load(Ordering::SeqCst);
    assert!((1..=8).contains(&most), "never more connections than the pool's 8: {most}");
    assert_eq!(others, 0, "the store opened no connection of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_goes_back_to_the_pool_clean_and_an_abandoned_one_never_goes_back() {
    let server = PgServer::start().await;
    let admin = admin(&server).await;
    let pool = pool(&server, 2);
    let store = PostgresStore::from_pool(pool.clone()).await.unwrap();
    store.setup().await.unwrap();
    let key = TokenKey::new("user-1");
    let advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'";

    // Released: the lock is gone and the connection comes back to the pool without the lock's
    // transaction or its settings.
    let mut lock = store.lock(&key).await.unwrap().unwrap();
    assert!(lock.load().await.unwrap().is_none(), "a query beside the held lock, on the pool's other connection");
    assert_eq!(admin.query_one(advisory, &[]).await.unwrap().get::<_, i64>(0), 1);
    lock.unlock().await.unwrap();
    assert_eq!(admin.query_one(advisory, &[]).await.unwrap().get::<_, i64>(0), 0);
    let pids: Vec<i32> = {
        let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        for connection in [&a, &b] {
            let row = connection
                .query_one(
                    "SELECT current_setting('idle_in_transaction_session_timeout'), current_setting('lock_timeout')",
                    &[],
                )
                .await
                .unwrap();
            let (idle, wait): (String, String) = (row.get(0), row.get(1));
            assert_eq!((idle.as_str(), wait.as_str()), ("0", "0"), "the lock's settings ended with it");
            // Outside a transaction block, a savepoint is refused.
            let err = connection.batch_execute("SAVEPOINT probe").await.unwrap_err();
            assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::NO_ACTIVE_SQL_TRANSACTION), "{err}");
        }
        let pids = [&a, &b].map(|c| c.query_one("SELECT pg_backend_pid()", &[]));
        join_all(pids).await.into_iter().map(|row| row.unwrap().get(0)).collect()
    };
    assert_eq!(pool.status().size, 2);

    // Dropped mid-refresh (a cancelled flight): its connection is closed, not handed back with the
    // lock still held; the server releases the lock with the session.
    let abandoned = store.lock(&key).await.unwrap().unwrap();
    drop(abandoned);
    let released = async {
        while admin.query_one(advisory, &[]).await.unwrap().get::<_, i64>(0) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), released).await.expect("the abandoned lock's session ended");
    let gone: i64 =
        admin.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids]).await.unwrap().get(0);
    assert_eq!(gone, 1, "one of the two pooled sessions was closed, the other kept");
    assert_eq!(pool.status().size, 1, "the pool no longer counts the closed connection");
    // The pool makes a new one, and the key can be locked again at once.
    store.lock(&key).await.unwrap().unwrap().unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_never_take_the_whole_pool_and_a_pool_too_small_is_refused() {
    let server = PgServer::start().await;

    let err = PostgresStore::from_pool(pool(&server, 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let message = std::error::Error::source(&err).unwrap().to_string();
    assert!(message.contains("2 connections or more"), "{message}");

    let pool = pool(&server, 4);
    let store = PostgresStore::from_pool(pool.clone())
        .await
        .unwrap()
        .max_lock_connections(100)
        .lock_timeout(Duration::from_millis(300))
        .query_timeout(Duration::from_millis(500));
    assert!(format!("{store:?}").contains("max_lock_connections: 3"), "capped below the pool: {store:?}");
    store.setup().await.unwrap();
    let keys: Vec<TokenKey> = (0..4).map(|i| TokenKey::new(format!("user-{i}"))).collect();
    let mut held = Vec::new();
    for key in &keys[..3] {
        held.push(store.lock(key).await.unwrap().unwrap());
    }
    // A fourth lock waits for one of the three, up to the lock timeout; the fourth connection
    // stays free for saves.
    let err = store.lock(&keys[3]).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout), "{err:?}");
    for (lock, key) in held.iter_mut().zip(&keys) {
        lock.save(&TokenSet::new(key.as_str()), Revision::NONE).await.unwrap();
    }

    // A pool the service has exhausted: the store's query waits no longer than its query timeout.
    let service = pool.get().await.unwrap();
    let started = std::time::Instant::now();
    let err = store.load(&keys[0]).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(std::error::Error::source(&err).unwrap().to_string().contains("pool"), "{err}");
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(5), "waited {waited:?}");
    drop(service);
    for lock in held {
        lock.unlock().await.unwrap();
    }
    assert_eq!(store.get(&keys[1]).await.unwrap().unwrap().access_token().secret(), "user-1");
}

#![cfg(feature = "postgres")]
//! `PostgresStore` against a real PostgreSQL server: a throwaway cluster per test
//! (`postgres_server::PgServer`). Many users through one client, replicas sharing one refresh per
//! user across processes, the generation fence, and PostgreSQL going away mid-storm.
//!
//! `main.rs` mounts this file twice: as `postgres_store`, where every store opens connections of
//! its own, and (with the `deadpool-postgres` feature) as `postgres_store_on_a_pool`, where every
//! store runs on a deadpool-postgres pool. [`open`] is the only difference.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use parking_lot::Mutex;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    Error, PostgresStore, RefreshError, RefreshTokenGrant, Revision, StoreError, TokenKey, TokenRefresh, TokenSet,
    TokenState, TokenStore,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;

use async_trait::async_trait;
use reqwest_middleware::{ClientBuilder, Middleware, Next};

use crate::helpers::StoreExt;
use crate::helpers::{client_with, grant};
use crate::postgres_server::{PgServer, Timer};

/// The pool each store gets in the pool copy of these tests: four child processes with a pool each,
/// and the parent's, stay within the test cluster's 100 connections.
#[cfg(feature = "deadpool-postgres")]
const POOL_SIZE: usize = 12;

/// Whether this copy of the tests runs its stores on a pool.
fn on_a_pool() -> bool {
    module_path!().ends_with("on_a_pool")
}

/// A store on `config`, made the way this copy of the tests makes them.
async fn open(config: &str) -> Result<PostgresStore, StoreError> {
    #[cfg(feature = "deadpool-postgres")]
    if on_a_pool() {
        let manager = deadpool_postgres::Manager::new(config.parse().expect("a connection string"), NoTls);
        let pool = deadpool_postgres::Pool::builder(manager).max_size(POOL_SIZE).build().expect("a pool");
        return PostgresStore::from_pool(pool).await;
    }
    PostgresStore::connect(config).await
}

/// What one request ended with: its status, or the middleware's error.
type Outcome = Result<u16, reqwest_middleware::Error>;

/// Sends `per_user` concurrent requests for every user at once.
async fn storm_users(client: &ClientWithMiddleware, url: &str, users: &[TokenKey], per_user: usize) -> Vec<Outcome> {
    let requests = users.iter().flat_map(|user| {
        (0..per_user).map(move |_| {
            let request = client.get(url).with_extension(user.clone());
            async move { request.send().await.map(|response| response.status().as_u16()) }
        })
    });
    join_all(requests).await
}

/// Lets at most this many requests through to the network at once (each holds a socket until its
/// response is dropped). Placed inside the token layer, so the layer still sees the whole storm at
/// once, all tokens expired; it only keeps these tests within the file descriptors the test
/// process may open (20,000 here) when they run alongside `many_users`' in-memory storm of 5,000
/// unthrottled requests: every request takes two, the client's socket and the mock server's.
#[derive(Debug, Clone)]
struct SendLimit(Arc<tokio::sync::Semaphore>);

#[async_trait]
impl Middleware for SendLimit {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let _sending = self.0.acquire().await.expect("never closed");
        next.run(request, extensions).await
    }
}

/// A client with the layer in it, and at most `limit` requests on the network at once.
fn limited_client_with(auth: &TokenRefresh, limit: usize) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .with(SendLimit(Arc::new(tokio::sync::Semaphore::new(limit))))
        .build()
}

fn ok_count(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|outcome| matches!(outcome, Ok(200))).count()
}

fn users(n: usize) -> Vec<TokenKey> {
    (0..n).map(|i| TokenKey::new(format!("user-{i}"))).collect()
}

/// A store on `server` with its table set up.
async fn store_on(server: &PgServer) -> PostgresStore {
    let store = open(&server.config()).await.expect("connecting to the test cluster");
    store.setup().await.expect("creating the table");
    store
}

/// Saves fresh tokens from `provider` for every user, all at once.
async fn seed(store: &PostgresStore, provider: &MockProvider, users: &[TokenKey]) {
    let saves = users.iter().map(|user| {
        let tokens = provider.issue_tokens();
        async move { store.put(user, &tokens).await }
    });
    for saved in join_all(saves).await {
        saved.expect("seeding a user");
    }
}

/// A plain SQL connection, to look at the table as a person would.
async fn sql(server: &PgServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.config(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn generations(server: &PgServer) -> Vec<(String, i64)> {
    let rows = sql(server)
        .await
        .query("SELECT key, generation FROM reqwest_token_refresh_tokens ORDER BY key", &[])
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

fn refresh_secret(tokens: &TokenSet) -> &str {
    tokens.refresh_token().expect("a refresh token").secret()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_idempotent_and_creates_the_documented_table() {
    let server = PgServer::start().await;
    let config = server.config();
    let stores: Vec<PostgresStore> =
        join_all((0..4).map(|_| open(&config))).await.into_iter().map(Result::unwrap).collect();

    // Before setup, a store says what is missing.
    let err = stores[0].get(&TokenKey::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let message = std::error::Error::source(&err).unwrap().to_string();
    assert!(message.contains("PostgresStore::setup"), "{message}");

    // Replicas starting together all run setup at once, and again on their next start.
    for result in join_all(stores.iter().map(PostgresStore::setup)).await {
        result.unwrap();
    }
    stores[1].setup().await.unwrap();

    let columns: Vec<(String, String, String)> = sql(&server)
        .await
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
             WHERE table_name = 'reqwest_token_refresh_tokens' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let expected = [
        ("key", "text", "NO"),
        ("tokens", "jsonb", "NO"),
        ("generation", "bigint", "NO"),
        ("updated_at", "timestamp with time zone", "NO"),
    ];
    let columns: Vec<(&str, &str, &str)> =
        columns.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())).collect();
    assert_eq!(columns, expected);

    // One row per key; the tokens readable as JSON by anyone with SQL.
    let key = TokenKey::new("user-1");
    let tokens = TokenSet::new("access-1").with_refresh_token("refresh-1").with_expires_in(Duration::from_secs(3600));
    stores[2].put(&key, &tokens).await.unwrap();
    stores[2].put(&key, &tokens).await.unwrap();
    let loaded = stores[3].get(&key).await.unwrap().unwrap();
    assert_eq!(loaded.access_token().secret(), "access-1");
    assert_eq!(refresh_secret(&loaded), "refresh-1");
    let row = sql(&server)
        .await
        .query_one(
            "SELECT tokens->>'access_token', generation FROM reqwest_token_refresh_tokens WHERE key = 'user-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i64>(1)), ("access-1".to_owned(), 2));

    // Another table, in another schema, is just as independent.
    sql(&server).await.batch_execute("CREATE SCHEMA auth").await.unwrap();
    let other = open(&server.config()).await.unwrap().table("auth.Tokens");
    other.setup().await.unwrap();
    assert!(other.get(&key).await.unwrap().is_none());
    assert_ne!(other.lock_id(&key), stores[0].lock_id(&key), "lock ids are per table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_share_a_database_with_a_table_each_in_a_schema_setup_creates() {
    let server = PgServer::start().await;
    let connect = |table: &'static str| {
        let config = server.config();
        async move { open(&config).await.unwrap().table(table) }
    };
    let (withings, whoop) = (connect("oauth.withings_tokens").await, connect("oauth.whoop_tokens").await);
    // A fresh database: no `oauth` schema yet. Both setups at once, each creating what is missing.
    let (a, b) = tokio::join!(withings.setup(), whoop.setup());
    a.unwrap();
    b.unwrap();
    withings.setup().await.unwrap();

    let key = TokenKey::new("user-1");
    withings.put(&key, &TokenSet::new("withings-access")).await.unwrap();
    whoop.put(&key, &TokenSet::new("whoop-access")).await.unwrap();
    assert_eq!(withings.get(&key).await.unwrap().unwrap().access_token().secret(), "withings-access");
    assert_eq!(whoop.get(&key).await.unwrap().unwrap().access_token().secret(), "whoop-access");
    assert_ne!(withings.lock_id(&key), whoop.lock_id(&key), "one user's two refreshes do not wait for each other");
    let guard = withings.lock(&key).await.unwrap().expect("a lock");
    let other = tokio::time::timeout(Duration::from_secs(10), whoop.lock(&key)).await.expect("not held by withings");
    drop(other.unwrap());
    guard.unlock().await.unwrap();
    let tables: i64 = sql(&server)
        .await
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'oauth'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_without_the_right_to_create_a_schema_says_what_to_create() {
    let server = PgServer::start().await;
    let admin = sql(&server).await;
    admin
        .batch_execute(
            "CREATE ROLE limited LOGIN PASSWORD 'limited-pw'; \
             REVOKE CREATE ON DATABASE postgres FROM PUBLIC; REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        )
        .await
        .unwrap();
    let limited = server.config().replace("user=postgres", "user=limited password=limited-pw");
    let store = open(&limited).await.unwrap().table("oauth.tokens");
    let err = store.setup().await.unwrap_err().to_string();
    assert!(err.contains("CREATE SCHEMA \"oauth\""), "{err}");
    // Once the schema (and the right to use it) is given, the same role's setup creates the table.
    admin.batch_execute("CREATE SCHEMA oauth AUTHORIZATION limited").await.unwrap();
    store.setup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_and_errors_never_show_the_password() {
    let server = PgServer::start().await;
    // The cluster trusts every local connection, so the password is accepted and ignored.
    let store = open(&format!("{} password=hunter2-secret", server.config())).await.unwrap();
    let debug = format!("{store:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let connects_to = if on_a_pool() { "deadpool-postgres pool" } else { "127.0.0.1" };
    assert!(debug.contains(connects_to) && debug.contains("reqwest_token_refresh_tokens"), "{debug}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = open(&format!("postgresql://app:hunter2-secret@127.0.0.1:{port}/app")).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let report = format!("{err:?} {}", std::error::Error::source(&err).unwrap());
    assert!(!report.contains("hunter2"), "{report}");
    assert!(report.contains("connecting to PostgreSQL"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_excludes_other_replicas_per_key_and_times_out() {
    let server = PgServer::start().await;
    let a = store_on(&server).await;
    let b = open(&server.config()).await.unwrap().lock_timeout(Duration::from_millis(300));
    let (key, other) = (TokenKey::new("user-1"), TokenKey::new("user-2"));

    let held = a.lock(&key).await.unwrap().expect("PostgresStore has a lock");
    let started = std::time::Instant::now();
    let err = b.lock(&key).await.unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout), "{err:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "waited {waited:?}");

    // Another key is not held up, and neither is the same key in another table.
    b.lock(&other).await.unwrap().unwrap().unlock().await.unwrap();
    let elsewhere = open(&server.config()).await.unwrap().table("other_tokens");
    elsewhere.setup().await.unwrap();
    elsewhere.lock(&key).await.unwrap().unwrap().unlock().await.unwrap();

    // The waiter gets the lock as soon as the holder lets go.
    let b2 = b.clone().lock_timeout(Duration::from_secs(10));
    let waiter = tokio::spawn(async move { b2.lock(&TokenKey::new("user-1")).await.map(|lock| lock.is_some()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the second replica waits for the first");
    held.unlock().await.unwrap();
    assert!(waiter.await.unwrap().unwrap());

    // A lock that is dropped instead of released (a cancelled refresh) goes with its connection.
    let dropped = a.lock(&other).await.unwrap().unwrap();
    drop(dropped);
    let patient = b.clone().lock_timeout(Duration::from_secs(5));
    let relocked = patient.lock(&other).await.unwrap().unwrap();
    relocked.unlock().await.unwrap();

    // The lock shows in pg_locks under the documented id.
    let held = a.lock(&key).await.unwrap().unwrap();
    let ids: Vec<i64> = sql(&server)
        .await
        .query(
            "SELECT ((classid::bigint << 32) | objid::bigint) FROM pg_locks \
             WHERE locktype = 'advisory' AND objsubid = 1 AND granted",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, vec![a.lock_id(&key)]);
    held.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_holding_an_old_generation_is_superseded_and_the_newer_tokens_stay() {
    let server = PgServer::start().await;
    let key = TokenKey::new("user-1");
    let old = TokenSet::new("access-0").with_refresh_token("refresh-0");
    // Replica A may hold its lock for 300 ms only; replica B is patient.
    let a = store_on(&server).await.lock_hold_limit(Duration::from_millis(300));
    let b = open(&server.config()).await.unwrap().lock_timeout(Duration::from_secs(5));
    a.put(&key, &old).await.unwrap();

    // A takes the lock and reads generation 1, then stalls (a slow token call) past its hold
    // limit: the server ends A's lock session.
    let mut a_lock = a.lock(&key).await.unwrap().unwrap();
    let a_read = a_lock.load().await.unwrap().unwrap();
    assert_eq!((refresh_secret(&a_read.tokens), a_read.revision), ("refresh-0", Revision::new(1)));
    tokio::time::sleep(Duration::from_millis(800)).await;

    // B gets the lock, refreshes and saves generation 2.
    let mut b_lock = b.lock(&key).await.expect("A's lock was released by the hold limit").unwrap();
    let b_read = b_lock.load().await.unwrap().unwrap();
    assert_eq!(refresh_secret(&b_read.tokens), "refresh-0");
    b_lock.save(&TokenSet::new("access-b").with_refresh_token("refresh-b"), b_read.revision).await.unwrap();
    b_lock.unlock().await.unwrap();

    // A finally comes back with what it fetched from generation 1: refused.
    let late = TokenSet::new("access-a").with_refresh_token("refresh-a");
    let err = a_lock.save(&late, a_read.revision).await.unwrap_err();
    assert!(matches!(err, StoreError::Superseded), "{err:?}");
    let err = a_lock.unlock().await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "releasing a lock the server ended is reported: {err:?}");
    assert_eq!(refresh_secret(&a.get(&key).await.unwrap().unwrap()), "refresh-b", "the newer tokens stay");
    assert_eq!(generations(&server).await, vec![("user-1".to_owned(), 2)]);

    // The same fence catches a write without the lock (set_tokens after the user authorized
    // again) that lands between a holder's read and its save, also when there was no row yet.
    for (name, seeded) in [("user-2", true), ("user-3", false)] {
        let key = TokenKey::new(name);
        if seeded {
            b.put(&key, &old).await.unwrap();
        }
        let mut lock = a.lock(&key).await.unwrap().unwrap();
        let read = lock.load().await.unwrap().map_or(Revision::NONE, |stored| stored.revision);
        b.put(&key, &TokenSet::new("access-user").with_refresh_token("refresh-user")).await.unwrap();
        let err = lock.save(&late, read).await.unwrap_err();
        assert!(matches!(err, StoreError::Superseded), "{name}: {err:?}");
        lock.unlock().await.unwrap();
        assert_eq!(refresh_secret(&b.get(&key).await.unwrap().unwrap()), "refresh-user", "{name}");
    }

    // A holder that is not overtaken saves as often as it needs to, each save over the last; a
    // save retried after an outage over a revision that has moved on is refused.
    let key = TokenKey::new("user-4");
    let mut lock = a.lock(&key).await.unwrap().unwrap();
    let first = lock.save(&TokenSet::new("first").with_refresh_token("r1"), Revision::NONE).await.unwrap();
    let second = lock.save(&TokenSet::new("second").with_refresh_token("r2"), first).await.unwrap();
    lock.unlock().await.unwrap();
    a.save(&key, &TokenSet::new("third").with_refresh_token("r3"), second).await.unwrap();
    let err = a.save(&key, &TokenSet::new("retried").with_refresh_token("r-old"), first).await.unwrap_err();
    assert!(matches!(err, StoreError::Superseded), "{err:?}");
    assert_eq!(refresh_secret(&b.get(&key).await.unwrap().unwrap()), "r3");
    assert!(generations(&server).await.contains(&("user-4".to_owned(), 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_row_keeps_its_generation_reads_as_no_tokens_and_refuses_older_saves() {
    let server = PgServer::start().await;
    let key = TokenKey::new("user-1");
    let a = store_on(&server).await;
    let b = open(&server.config()).await.unwrap();
    let first = a.put(&key, &TokenSet::new("access-0").with_refresh_token("refresh-0")).await.unwrap();
    let mut lock = b.lock(&key).await.unwrap().unwrap();
    assert!(matches!(lock.remove(Revision::NONE).await, Err(StoreError::Superseded)), "fenced like a save");
    let removed = lock.remove(first).await.unwrap();
    lock.unlock().await.unwrap();
    assert_eq!(removed, Revision::new(2));

    let row = sql(&server)
        .await
        .query_one("SELECT tokens::text, generation FROM reqwest_token_refresh_tokens WHERE key = 'user-1'", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i64>(1)), ("null".to_owned(), 2), "the row stays, its tokens go");
    assert_eq!(a.load(&key).await.unwrap(), None);
    // A late save over the revoked set's generation (an update) or over nothing (an insert): refused.
    for late in [first, Revision::NONE] {
        let err = a.save(&key, &TokenSet::new("access-0").with_refresh_token("refresh-0"), late).await.unwrap_err();
        assert!(matches!(err, StoreError::Removed { revision } if revision == removed), "{late}: {err:?}");
    }
    let err = a.remove(&key, first).await.unwrap_err();
    assert!(matches!(err, StoreError::Removed { .. }), "{err:?}");
    // A removal over nothing leaves a row too; new tokens go over a removal.
    assert_eq!(a.remove(&TokenKey::new("user-2"), Revision::NONE).await.unwrap(), Revision::new(1));
    a.save(&key, &TokenSet::new("access-login").with_refresh_token("refresh-login"), removed).await.unwrap();
    assert_eq!(refresh_secret(&b.get(&key).await.unwrap().unwrap()), "refresh-login");
    assert_eq!(generations(&server).await, vec![("user-1".to_owned(), 3), ("user-2".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_with_postgres_removes_the_users_row_tokens_and_no_replica_brings_them_back() {
    let server = PgServer::start().await;
    let provider = MockProvider::start().await;
    let (alice, bob) = (TokenKey::new("alice"), TokenKey::new("bob"));
    seed(&store_on(&server).await, &provider, &[alice.clone(), bob.clone()]).await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = open(&server.config()).await.unwrap();
        let grant = grant(&provider).revocation_url(provider.revocation_url());
        replicas.push(TokenRefresh::builder(grant).store(store).build().unwrap());
    }
    let there = client_with(&replicas[1]);
    let get = |key: &TokenKey| there.get(provider.api_url("v1/me")).with_extension(key.clone()).send();
    assert_eq!(get(&alice).await.unwrap().status(), 200);

    tokio::time::timeout(Duration::from_secs(30), replicas[0].revoke_for(&alice)).await.unwrap().unwrap();
    let reread = open(&server.config()).await.unwrap();
    assert_eq!(reread.load(&alice).await.unwrap(), None);
    let err = get(&alice).await.unwrap_err();
    assert!(Error::from_middleware(&err).is_some_and(Error::is_reauthorization_required), "{err:?}");
    assert_eq!(reread.load(&alice).await.unwrap(), None, "nothing was saved back");
    assert_eq!(get(&bob).await.unwrap().status(), 200, "another user is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_whose_lock_ran_out_adopts_the_newer_tokens_instead_of_overwriting_them() {
    let server = PgServer::start().await;
    // A slow token endpoint, and replica A may hold its lock for 200 ms only.
    let provider = MockProvider::builder().token_latency(Duration::from_millis(1000)).start().await;
    let key = TokenKey::new("user-1");
    let store_a = store_on(&server).await.lock_hold_limit(Duration::from_millis(200));
    store_a.put(&key, &provider.issue_tokens()).await.unwrap();
    provider.expire_access_tokens();
    let a = TokenRefresh::builder(grant(&provider)).store(store_a.clone()).build().unwrap();
    let b = TokenRefresh::builder(grant(&provider)).store(open(&server.config()).await.unwrap()).build().unwrap();

    // A's request gets 401 and A starts refreshing, under the lock.
    let request = tokio::spawn({
        let (client, url, key) = (client_with(&a), provider.api_url("me"), key.clone());
        async move { client.get(&url).with_extension(key).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A's lock is gone by now; the user authorizes again through replica B, which saves.
    let consented = provider.issue_tokens();
    b.set_tokens_for(&key, consented.clone()).await.unwrap();

    // A's refresh comes back with tokens fetched from the older generation: the fence refuses
    // them, and A adopts B's instead of overwriting them.
    assert_eq!(request.await.unwrap().unwrap(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    let adopted = a.tokens_for(&key).unwrap();
    assert_eq!(adopted.access_token().secret(), consented.access_token().secret());
    assert_eq!(refresh_secret(&store_a.get(&key).await.unwrap().unwrap()), refresh_secret(&consented));
    assert_eq!(a.stats().store_failures, 1, "releasing the lost lock was reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_across_1000_users_with_postgres_makes_1000_token_calls() {
    let timer = Timer::start("postgres 1,000-user storm");
    let server = PgServer::start().await;
    let provider = MockProvider::start().await;
    let users = users(1000);
    let store = store_on(&server).await;
    seed(&store, &provider, &users).await;
    provider.expire_access_tokens();
    timer.lap("cluster started and 1,000 users seeded");
    let auth = TokenRefresh::builder(grant(&provider)).store(store.clone()).build().unwrap();

    let outcomes = storm_users(&limited_client_with(&auth, 500), &provider.api_url("me"), &users, 5).await;
    let storm = timer.lap("5,000 requests, all with expired tokens");

    assert_eq!(ok_count(&outcomes), 5000, "{:?}", outcomes.iter().find(|o| !matches!(o, Ok(200))));
    let stats = provider.stats();
    assert_eq!(stats.token_calls, 1000, "one token call per user");
    assert_eq!(stats.reuse_detected, 0);
    assert_eq!(auth.stats().store_failures, 0);
    // Every user's row was written twice: seeded, then refreshed once.
    let rows = generations(&server).await;
    assert_eq!(rows.len(), 1000);
    assert!(rows.iter().all(|(_, generation)| *generation == 2), "{:?}", rows.iter().find(|(_, g)| *g != 2));
    eprintln!("1,000 users x 5 requests through PostgresStore: {storm:?}, {} token calls", stats.token_calls);
}

/// A child process's brief for the cross-process storm.
#[derive(Debug, Serialize, Deserialize)]
struct ChildJob {
    config: String,
    token_url: String,
    api_url: String,
    users: usize,
    per_user: usize,
    start_at_ms: u128,
}

const CHILD_ENV: &str = "RTR_PG_CHILD";

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// The child's side: its own layer over its own `PostgresStore`, `per_user` concurrent requests
/// for each of `users` users at `start_at_ms`; prints `RESULT <ok> <failed>`. Run only as a child
/// process, by the test below (this same binary, `--ignored --exact <this module>::postgres_child`).
#[test]
#[ignore = "the body of the child processes that the cross-process PostgreSQL test starts"]
fn postgres_child() {
    let job: ChildJob = serde_json::from_str(
        &std::env::var(CHILD_ENV).expect("RTR_PG_CHILD: this test runs only as a child of the PostgreSQL tests"),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let store = open(&job.config).await.unwrap();
        let api_origin = url::Url::parse(&job.api_url).unwrap().origin().ascii_serialization();
        let grant =
            RefreshTokenGrant::new(&job.token_url).client_id("client").client_secret("secret").api_origin(api_origin);
        let auth = TokenRefresh::builder(grant).store(store).build().unwrap();
        // The mock provider's server is in the parent process, which runs other tests meanwhile.
        let client = limited_client_with(&auth, 100);
        let users = users(job.users);
        tokio::time::sleep(Duration::from_millis(job.start_at_ms.saturating_sub(unix_ms()) as u64)).await;
        let outcomes = storm_users(&client, &job.api_url, &users, job.per_user).await;
        for failure in outcomes.iter().filter(|outcome| !matches!(outcome, Ok(200))).take(5) {
            eprintln!("a request failed: {failure:?}");
        }
        let ok = ok_count(&outcomes);
        println!("RESULT {ok} {}", outcomes.len() - ok);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_sharing_a_postgres_store_make_one_token_call_per_user() {
    let timer = Timer::start("postgres 4 processes x 250 users");
    let server = PgServer::start().await;
    let provider = MockProvider::start().await;
    let users = users(250);
    let store = store_on(&server).await;
    seed(&store, &provider, &users).await;
    provider.expire_access_tokens();

    let job = ChildJob {
        config: server.config(),
        token_url: provider.token_url(),
        api_url: provider.api_url("me"),
        users: users.len(),
        per_user: 2,
        // Time for the children to start and connect; if one is late it only overlaps less.
        start_at_ms: unix_ms() + 1000,
    };
    let brief = serde_json::to_string(&job).unwrap();
    // This copy's child: `postgres_store::postgres_child` or `postgres_store_on_a_pool::…`.
    let child = format!("{}::postgres_child", module_path!().split_once("::").expect("in the test crate").1);
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", &child, "--nocapture", "--test-threads", "1"])
                .env(CHILD_ENV, &brief)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("a child process")
        })
        .collect();
    let results: Vec<(usize, usize)> =
        tokio::task::spawn_blocking(move || children.into_iter().map(crate::processes::storm_result).collect())
            .await
            .unwrap();
    let took = timer.lap("4 processes x 250 users x 2 requests");

    let (ok, failed) = results.iter().fold((0, 0), |(ok, failed), (o, f)| (ok + o, failed + f));
    assert_eq!((ok, failed), (2000, 0), "per process: {results:?}");
    let stats = provider.stats();
    assert_eq!(stats.token_calls, 250, "one token call per user across four processes");
    assert_eq!(stats.reuse_detected, 0);
    assert!(generations(&server).await.iter().all(|(_, generation)| *generation == 2));
    eprintln!("4 processes, 250 users, 2,000 requests: {took:?} including process start-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_invalid_grant_leaves_every_other_user_untouched() {
    let server = PgServer::start().await;
    let provider = MockProvider::start().await;
    let users = users(100);
    let store = store_on(&server).await;
    // user-13's grant is dead: the provider knows neither token.
    let dead = TokenKey::new("user-13");
    let alive: Vec<TokenKey> = users.iter().filter(|user| **user != dead).cloned().collect();
    seed(&store, &provider, &alive).await;
    store.put(&dead, &TokenSet::new("revoked-access").with_refresh_token("revoked-refresh")).await.unwrap();
    provider.expire_access_tokens();
    let told = Arc::new(Mutex::new(Vec::new()));
    let auth = TokenRefresh::builder(grant(&provider))
        .store(store.clone())
        .on_reauthorization_required({
            let told = told.clone();
            move |key, _reason| told.lock().push(key.clone())
        })
        .build()
        .unwrap();
    let client = client_with(&auth);

    let outcomes = storm_users(&client, &provider.api_url("me"), &users, 5).await;

    for (user, outcomes) in users.iter().zip(outcomes.chunks(5)) {
        for outcome in outcomes {
            if *user == dead {
                let err = outcome.as_ref().expect_err("the dead user's requests fail");
                match Error::from_middleware(err) {
                    Some(Error::ReauthorizationRequired { key, .. }) => assert_eq!(key, &dead),
                    other => panic!("expected ReauthorizationRequired, got {other:?}"),
                }
            } else {
                assert!(matches!(outcome, Ok(200)), "{user}: {outcome:?}");
            }
        }
    }
    assert_eq!(*told.lock(), vec![dead.clone()], "the hook fired once, naming the user");
    assert_eq!(provider.stats().token_calls, 100, "one per user, the dead one included");
    assert!(matches!(auth.state_for(&dead), TokenState::ReauthorizationRequired { .. }));
    assert!(
        users.iter().filter(|user| **user != dead).all(|user| matches!(auth.state_for(user), TokenState::Ready { .. }))
    );
    // Later requests for the dead user fail fast, without a token call; the store keeps its row.
    let again = storm_users(&client, &provider.api_url("me"), std::slice::from_ref(&dead), 3).await;
    assert_eq!(ok_count(&again), 0);
    assert_eq!(provider.stats().token_calls, 100);
    assert_eq!(told.lock().len(), 1);
    let rows = generations(&server).await;
    assert!(rows.contains(&("user-13".to_owned(), 1)), "the dead user's row was not touched");
    assert_eq!(rows.iter().filter(|(_, generation)| *generation == 2).count(), 99, "every other user refreshed once");
    assert_eq!(refresh_secret(&store.get(&dead).await.unwrap().unwrap()), "revoked-refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_storm_gives_typed_transient_errors_and_loses_no_token() {
    let timer = Timer::start("postgres stopped mid-storm");
    let mut server = PgServer::start().await;
    // Slow token calls and few lock connections: the storm takes a couple of seconds, and stopping
    // the server once the first refreshes are done catches refreshes at every stage.
    let provider = MockProvider::builder().token_latency(Duration::from_millis(100)).start().await;
    let users = users(200);
    let connect = |server: &PgServer| {
        let config = server.config();
        async move {
            open(&config)
                .await
                .unwrap()
                .max_lock_connections(20)
                .query_timeout(Duration::from_secs(2))
                .lock_timeout(Duration::from_secs(10))
        }
    };
    let store = connect(&server).await;
    store.setup().await.unwrap();
    seed(&store, &provider, &users).await;
    provider.expire_access_tokens();
    let auth = TokenRefresh::builder(grant(&provider))
        .store(store.clone())
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    let storm = tokio::spawn({
        let (client, url, users) = (client.clone(), url.clone(), users.clone());
        async move { storm_users(&client, &url, &users, 2).await }
    });
    let first_refreshes = async {
        while provider.stats().token_calls < 30 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), first_refreshes).await.expect("the storm got going");
    server.stop().await;
    timer.lap("PostgreSQL stopped");
    let outcomes = storm.await.expect("no panic");
    timer.lap("storm over");

    let ok = ok_count(&outcomes);
    let mut store_errors = 0;
    for outcome in &outcomes {
        match outcome {
            Ok(status) => assert_eq!(*status, 200),
            Err(err) => match Error::from_middleware(err) {
                Some(Error::Store { source: StoreError::Backend(_) | StoreError::LockTimeout, .. }) => {
                    store_errors += 1
                }
                Some(Error::Refresh { source: RefreshError::CoolingDown { .. }, .. }) => {}
                other => panic!("not a typed transient error: {other:?} ({err})"),
            },
        }
    }
    eprintln!(
        "with PostgreSQL stopped mid-storm: {ok} of {} requests succeeded, {store_errors} store errors, \
         {} store failures reported, {} token calls",
        outcomes.len(),
        auth.stats().store_failures,
        provider.stats().token_calls
    );
    assert!(ok > 0 && ok < outcomes.len(), "the stop landed mid-storm: {ok} ok");
    assert!(store_errors > 0);
    let refreshed_before_the_stop = provider.stats().token_calls;

    server.restart().await;
    timer.lap("PostgreSQL back");

    // Tokens fetched while PostgreSQL was down were used from memory; their saves are retried
    // until the store holds what memory holds, for every user.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut behind = 0;
        for user in &users {
            let Some(memory) = auth.tokens_for(user) else { continue };
            match store.get(user).await {
                Ok(Some(stored)) if refresh_secret(&stored) == refresh_secret(&memory) => {}
                _ => behind += 1,
            }
        }
        if behind == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{behind} users' tokens never reached the store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timer.lap("every retried save landed");

    // The layer reconnects: users whose refresh failed refresh now; nobody spends a stale token.
    let outcomes = storm_users(&client, &url, &users, 2).await;
    assert_eq!(ok_count(&outcomes), 400, "{:?}", outcomes.iter().find(|o| !matches!(o, Ok(200))));
    assert_eq!(provider.stats().token_calls, 200, "{refreshed_before_the_stop} users had refreshed before the stop");

    // And the store alone is enough: a restarted service (a new store and layer) whose tokens
    // expire refreshes every user from what the store holds, without a spent refresh token.
    let restarted = TokenRefresh::builder(grant(&provider)).store(connect(&server).await).build().unwrap();
    provider.expire_access_tokens();
    let outcomes = storm_users(&client_with(&restarted), &url, &users, 1).await;
    assert_eq!(ok_count(&outcomes), 200, "{:?}", outcomes.iter().find(|o| !matches!(o, Ok(200))));
    let stats = provider.stats();
    assert_eq!(stats.token_calls, 400);
    assert_eq!((stats.reuse_detected, stats.invalid_grants), (0, 0), "no token was lost: {stats:?}");
    timer.lap("all users recovered");
}

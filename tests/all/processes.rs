//! Real child processes sharing one durable store (contract points 1 and 4 across processes).
//!
//! The children are this test binary itself, started with `--ignored --exact
//! processes::child_process` and a JSON job in the `RTR_CHILD` environment variable: each one
//! builds its own layer over the shared store and does what the job says.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    FileStore, ManualClock, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet, TokenSource, TokenStore,
};
use serde::{Deserialize, Serialize};

use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, storm};

/// Where the children keep their tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StoreSpec {
    /// A `FileStore` at this path.
    File(PathBuf),
    /// A `RedisStore` at this URL.
    #[cfg(feature = "redis")]
    Redis(String),
    /// A `PostgresStore` with this connection string.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl StoreSpec {
    pub async fn open(&self) -> std::sync::Arc<dyn TokenStore> {
        match self {
            StoreSpec::File(path) => std::sync::Arc::new(FileStore::new(path)),
            #[cfg(feature = "redis")]
            StoreSpec::Redis(url) => std::sync::Arc::new(reqwest_token_refresh::RedisStore::new(url.as_str()).unwrap()),
            #[cfg(feature = "postgres")]
            StoreSpec::Postgres(config) => {
                std::sync::Arc::new(reqwest_token_refresh::PostgresStore::connect(config).await.unwrap())
            }
        }
    }
}

/// What a child does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Job {
    /// Waits until `start_at_ms` (Unix time), sends `requests` concurrent GETs to `api_url`, and
    /// prints `RESULT <ok> <failed>`.
    Storm { requests: usize, start_at_ms: u128 },
    /// Refreshes and uses the token in a loop, with a driven clock that expires it each time,
    /// until it is killed.
    RotateForever,
}

/// A child's whole brief.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    pub store: StoreSpec,
    pub token_url: String,
    pub api_url: String,
    pub job: Job,
}

/// Starts a child process on `spec`.
pub fn spawn_child(spec: &ChildSpec) -> std::process::Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--ignored", "--exact", "processes::child_process", "--nocapture", "--test-threads", "1"])
        .env("RTR_CHILD", serde_json::to_string(spec).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a child process")
}

/// The `(ok, failed)` counts a storm child printed.
pub fn storm_result(child: std::process::Child) -> (usize, usize) {
    let output = child.wait_with_output().expect("the child's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The test harness may print its own words before ours on the same line.
    let line = stdout
        .lines()
        .find_map(|line| line.split_once("RESULT ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("child printed no result:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    let mut numbers = line.split(' ').map(|n| n.parse::<usize>().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// The child's side. Run only as a child process, by the tests in this module.
#[test]
#[ignore = "the body of the child processes that the cross-process tests start"]
fn child_process() {
    let spec: ChildSpec = serde_json::from_str(
        &std::env::var("RTR_CHILD").expect("RTR_CHILD: this test runs only as a child of the cross-process tests"),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let store = spec.store.open().await;
        let clock = ManualClock::starting_now();
        let grant = RefreshTokenGrant::new(&spec.token_url).client_id("client").client_secret("secret");
        let (grant, builder_clock) = match spec.job {
            Job::RotateForever => (grant.clock(clock.clone()), Some(clock.clone())),
            Job::Storm { .. } => (grant, None),
        };
        let mut builder = TokenRefresh::builder(grant).store_arc(store);
        if let Some(clock) = builder_clock {
            builder = builder.clock(clock);
        }
        let auth = builder.build().unwrap();
        let client = client_with(&auth);
        match spec.job {
            Job::Storm { requests, start_at_ms } => {
                let wait = start_at_ms.saturating_sub(unix_ms());
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                let statuses = storm(&client, &spec.api_url, requests, None).await;
                let ok = count(&statuses, 200);
                println!("RESULT {ok} {}", requests - ok);
            }
            Job::RotateForever => loop {
                // Past the token's expiry on the layer's clock: the next request refreshes first
                // (saving the rotated token), then uses the new token at the API.
                clock.advance(Duration::from_secs(24 * 3600));
                let status = client.get(&spec.api_url).send().await.map(|r| r.status().as_u16());
                assert_eq!(status.ok(), Some(200), "a rotation failed in the child");
            },
        }
    });
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rtr-{name}-{}-{}", std::process::id(), unix_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Four processes, 200 concurrent requests each, one expired token in one shared store.
pub async fn four_process_storm(provider: &MockProvider, store: StoreSpec) -> (usize, usize) {
    let start_at_ms = unix_ms() + 1500;
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn_child(&ChildSpec {
                store: store.clone(),
                token_url: provider.token_url(),
                api_url: provider.api_url("me"),
                job: Job::Storm { requests: 200, start_at_ms },
            })
        })
        .collect();
    let results: Vec<_> =
        tokio::task::spawn_blocking(move || children.into_iter().map(storm_result).collect()).await.unwrap();
    results.iter().fold((0, 0), |(ok, failed), (o, f)| (ok + o, failed + f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_sharing_a_file_store_make_one_token_call_for_800_requests() {
    let provider = MockProvider::start().await;
    let dir = temp_dir("file-storm");
    let path = dir.join("tokens.json");
    FileStore::new(&path).put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap();
    provider.expire_access_tokens();

    let (ok, failed) = four_process_storm(&provider, StoreSpec::File(path.clone())).await;

    assert_eq!((ok, failed), (800, 0));
    assert_eq!(provider.stats().token_calls, 1, "one token call across four processes");
    assert_eq!(provider.stats().reuse_detected, 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// A tiny deterministic generator for kill delays, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

pub const KILLS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_at_random_points_during_refresh_and_save_never_loses_the_grant() {
    // Rotating refresh tokens, with the previous one valid until the new access token is used
    // (Withings' rule): exactly the window in which a crash between "provider rotated" and
    // "saved" must not lose the user.
    let provider = MockProvider::builder().previous_refresh_token_grace(true).start().await;
    let dir = temp_dir("kill");
    let path = dir.join("tokens.json");
    let store = FileStore::new(&path);
    store.put(&TokenKey::default(), &provider.issue_tokens()).await.unwrap();
    let grant = RefreshTokenGrant::new(provider.token_url()).client_id("client").client_secret("secret");
    let spec = ChildSpec {
        store: StoreSpec::File(path.clone()),
        token_url: provider.token_url(),
        api_url: provider.api_url("me"),
        job: Job::RotateForever,
    };
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ unix_ms() as u64);
    let seed = random.0;
    let api = reqwest::Client::new();

    for kill in 0..KILLS {
        let mut child = spawn_child(&spec);
        tokio::time::sleep(Duration::from_millis(20 + random.below(120))).await;
        child.kill().unwrap();
        child.wait().unwrap();

        // Whatever the child was doing, the stored set must still refresh.
        let stored: TokenSet = store.get(&TokenKey::default()).await.unwrap().expect("tokens in the store");
        let fresh = grant
            .fetch(Some(&stored))
            .await
            .unwrap_or_else(|err| panic!("kill {kill} (seed {seed:#x}) left a set that no longer refreshes: {err}"));
        store.put(&TokenKey::default(), &fresh).await.unwrap();
        let status = api.get(provider.api_url("me")).bearer_auth(fresh.access_token().secret()).send().await.unwrap();
        assert_eq!(status.status(), 200, "kill {kill}: the recovered token works");
    }
    let stats = provider.stats();
    assert_eq!(stats.reuse_detected, 0, "no rotated-away refresh token was ever spent: {stats:?}");
    println!("{KILLS} kills, {} token calls in all, every stored set refreshed afterwards", stats.token_calls);
    let _ = std::fs::remove_dir_all(dir);
}

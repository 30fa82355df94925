//! Real child processes sharing one durable store (contract points 1 and 4 across processes).
//!
//! The children are this test binary itself, started with `--ignored --exact
//! processes::child_process` and a JSON job in the `RTR_CHILD` environment variable: each one
//! builds its own layer over the shared store and does what the job says.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    DynamicRegistration, FileStore, ManualClock, RefreshTokenGrant, ResourceMetadata, TokenKey, TokenRefresh, TokenSet,
    TokenSource, TokenStore,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::{LevelFilter, Targets};

use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, storm};
use crate::mcp_session::{echo, echoed, open_session, rpc};

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
    /// An MCP client process: finds the authorization server from `api_url` (an MCP endpoint) by
    /// its protected resource metadata, its grant naming no client (the stored set's registered
    /// client is used), and opens a session. Then it creates a file named by its process id in
    /// `barrier`, waits (at most [`BARRIER_TIMEOUT`]) for the parent's file `go` there, makes
    /// `calls` concurrent tool calls in that session, and prints `RESULT <ok> <failed>`.
    McpSession { calls: usize, barrier: PathBuf },
}

/// Whether a child's grant does DPoP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dpop {
    /// Bearer tokens.
    #[default]
    Off,
    /// DPoP with a key generated for each new grant: a refresh proves the key saved with the
    /// stored set.
    Generated,
}

/// A child's whole brief.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    pub store: StoreSpec,
    pub token_url: String,
    pub api_url: String,
    pub job: Job,
    #[serde(default)]
    pub dpop: Dpop,
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

/// The longest a storm child may run before it is killed and its test fails.
const STORM_CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest a killed child may take to die and close its pipes.
const KILLED_CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// A running child whose stdout and stderr are drained by threads as it writes, so that a full
/// pipe never stalls it (a stalled child would skew what the kill tests measure).
pub struct WatchedChild {
    child: std::process::Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
}

/// What a child printed, and how it ended.
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl WatchedChild {
    pub fn new(mut child: std::process::Child) -> Self {
        fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
            let (sender, receiver) = mpsc::channel();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                let _ = sender.send(bytes);
            });
            receiver
        }
        let stdout = drain(child.stdout.take().expect("a piped stdout"));
        let stderr = drain(child.stderr.take().expect("a piped stderr"));
        WatchedChild { child, stdout, stderr }
    }

    /// Waits for the child to exit by itself; one still running after `timeout` is killed and the
    /// test fails, showing what it printed.
    pub fn finish(mut self, timeout: Duration) -> ChildOutput {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().expect("the child's status").is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let output = self.collect();
                panic!(
                    "a child process was still running after {timeout:?} and was killed\n\
                     stdout:\n{}\nstderr:\n{}",
                    output.stdout, output.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.collect()
    }

    /// SIGKILLs the child, which must still be running (one that exited by itself failed), and
    /// collects what it printed until then.
    pub fn kill(mut self) -> ChildOutput {
        if let Some(status) = self.child.try_wait().expect("the child's status") {
            let output = self.collect();
            panic!("the child exited by itself ({status}) before it was killed\nstderr:\n{}", output.stderr);
        }
        self.child.kill().expect("SIGKILL to the child");
        self.collect()
    }

    /// Reaps the child (bounded) and gathers its pipes, which close when it dies.
    fn collect(mut self) -> ChildOutput {
        let deadline = Instant::now() + KILLED_CHILD_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                break status;
            }
            assert!(Instant::now() < deadline, "a child process did not die within {KILLED_CHILD_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(1));
        };
        let read = |pipe: &mpsc::Receiver<Vec<u8>>| {
            let left = deadline.saturating_duration_since(Instant::now());
            let bytes = pipe.recv_timeout(left).unwrap_or_else(|_| {
                panic!("a dead child's pipe stayed open for {KILLED_CHILD_TIMEOUT:?} (a grandchild holding it?)")
            });
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let stdout = read(&self.stdout);
        let stderr = read(&self.stderr);
        ChildOutput { status, stdout, stderr }
    }
}

/// The `(ok, failed)` counts a storm child printed.
pub fn storm_result(child: std::process::Child) -> (usize, usize) {
    let output = WatchedChild::new(child).finish(STORM_CHILD_TIMEOUT);
    let stdout = &output.stdout;
    // The test harness may print its own words before ours on the same line.
    let line = stdout
        .lines()
        .find_map(|line| line.split_once("RESULT ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("child ({}) printed no result:\n{stdout}\n{}", output.status, output.stderr));
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
    if let Job::RotateForever = spec.job {
        // The parent reads every save's rotation-to-durable window from these lines.
        use tracing_subscriber::prelude::*;
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr))
            .with(Targets::new().with_target(PERSIST_TARGET, LevelFilter::DEBUG))
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let store = spec.store.open().await;
        if let Job::McpSession { calls, barrier } = &spec.job {
            return mcp_child(store, &spec.api_url, *calls, barrier).await;
        }
        let clock = ManualClock::starting_now();
        let api_origin = url::Url::parse(&spec.api_url).unwrap().origin().ascii_serialization();
        let grant =
            RefreshTokenGrant::new(&spec.token_url).client_id("client").client_secret("secret").api_origin(api_origin);
        let grant = match spec.dpop {
            Dpop::Off => grant,
            #[cfg(feature = "dpop")]
            Dpop::Generated => grant.dpop_generated(),
            #[cfg(not(feature = "dpop"))]
            Dpop::Generated => panic!("a DPoP child needs the dpop feature"),
        };
        let (grant, builder_clock) = match spec.job {
            Job::RotateForever => (grant.clock(clock.clone()), Some(clock.clone())),
            Job::Storm { .. } | Job::McpSession { .. } => (grant, None),
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
            Job::McpSession { .. } => unreachable!("run by mcp_child"),
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

/// The longest either side of the [`Job::McpSession`] barrier waits for the other.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits, polling, until `ready` holds; panics after [`BARRIER_TIMEOUT`] naming `what`.
async fn barrier_wait(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + BARRIER_TIMEOUT;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not happen within {BARRIER_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The [`Job::McpSession`] child.
async fn mcp_child(store: std::sync::Arc<dyn TokenStore>, url: &str, calls: usize, barrier: &std::path::Path) {
    let resource = ResourceMetadata::discover(url).await.expect("the MCP server's metadata");
    let auth = TokenRefresh::builder(resource.refresh_token_grant()).store_arc(store).build().unwrap();
    let client = client_with(&auth);
    let session = open_session(&client, url).await;
    std::fs::write(barrier.join(std::process::id().to_string()), session.as_bytes()).unwrap();
    barrier_wait("the parent's go", || barrier.join("go").exists()).await;
    let calls = (0..calls).map(|i| {
        let (client, session) = (&client, &session);
        async move {
            let text = format!("call {i} of {}", std::process::id());
            let answer = rpc(client, url, Some(session), &echo(i as u64, &text)).await;
            answer.is_ok_and(|answer| answer.status == 200 && echoed(&answer) == Some(text.as_str()))
        }
    });
    let answers = futures::future::join_all(calls).await;
    let ok = answers.iter().filter(|ok| **ok).count();
    println!("RESULT {ok} {}", answers.len() - ok);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rtr-{name}-{}-{}", std::process::id(), unix_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Four processes, 200 concurrent requests each, one expired token in one shared store.
pub async fn four_process_storm(provider: &MockProvider, store: StoreSpec) -> (usize, usize) {
    four_process_storm_with(provider, store, Dpop::Off).await
}

/// [`four_process_storm`], with the children's grants doing `dpop`.
pub async fn four_process_storm_with(provider: &MockProvider, store: StoreSpec, dpop: Dpop) -> (usize, usize) {
    let start_at_ms = unix_ms() + 1500;
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn_child(&ChildSpec {
                store: store.clone(),
                token_url: provider.token_url(),
                api_url: provider.api_url("me"),
                job: Job::Storm { requests: 200, start_at_ms },
                dpop,
            })
        })
        .collect();
    let results: Vec<_> =
        tokio::task::spawn_blocking(move || children.into_iter().map(storm_result).collect()).await.unwrap();
    results.iter().fold((0, 0), |(ok, failed), (o, f)| (ok + o, failed + f))
}

/// Four MCP client processes on one machine (one a workspace), one `FileStore`, one registered
/// client and its login in it: the token expires while their sessions are open, and 50 tool
/// calls each then go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mcp_client_processes_sharing_a_file_store_refresh_once_between_them_in_their_sessions() {
    const REDIRECT: &str = "http://127.0.0.1:33418/callback";
    let provider =
        MockProvider::builder().mcp_server().dynamic_registration().require_resource_indicator(true).start().await;
    let resource = ResourceMetadata::discover(provider.mcp_url()).await.unwrap();
    let registration = DynamicRegistration::from_metadata(resource.authorization_server()).unwrap();
    let client = registration.redirect_uri(REDIRECT).register().await.unwrap();
    let login = resource.refresh_token_grant().registered_client(client.clone()).login(REDIRECT).unwrap();
    let (authorize, pending) = login.start().unwrap();
    let tokens = login.exchange(&pending, &provider.approve(&authorize).await).await.unwrap();
    let dir = temp_dir("mcp-sessions");
    let path = dir.join("tokens.json");
    FileStore::new(&path).put(&TokenKey::default(), &tokens).await.unwrap();
    let before = provider.stats();

    let barrier = dir.join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn_child(&ChildSpec {
                store: StoreSpec::File(path.clone()),
                token_url: provider.token_url(),
                api_url: provider.mcp_url(),
                job: Job::McpSession { calls: 50, barrier: barrier.clone() },
                dpop: Dpop::Off,
            })
        })
        .collect();
    let results = tokio::task::spawn_blocking(move || children.into_iter().map(storm_result).collect::<Vec<_>>());
    // Every session open with the token it started with, then the token expires, then the calls.
    let sessions = || std::fs::read_dir(&barrier).map_or(0, |entries| entries.count());
    barrier_wait("four open sessions", || sessions() == 4).await;
    assert_eq!(provider.stats().token_calls, before.token_calls, "the sessions opened on the stored token");
    provider.expire_access_tokens();
    std::fs::write(barrier.join("go"), b"").unwrap();
    let results = results.await.unwrap();

    let (ok, failed) = results.iter().fold((0, 0), |(ok, failed), (o, f)| (ok + o, failed + f));
    assert_eq!((ok, failed), (200, 0));
    let stats = provider.stats();
    assert_eq!(stats.token_calls - before.token_calls, 1, "one refresh between the four: {stats:?}");
    assert_eq!(stats.mcp_sessions, 4, "one session a process, none dropped");
    assert_eq!((stats.registrations, stats.invalid_clients, stats.invalid_targets), (1, 0, 0));
    assert!(stats.api_unauthorized >= 4, "each process met the expiry mid-session: {stats:?}");
    let stored = FileStore::new(&path).get(&TokenKey::default()).await.unwrap().unwrap();
    assert_eq!(stored.client().map(|c| c.client_id()), Some(client.client_id()), "the registration stays stored");
    let _ = std::fs::remove_dir_all(&dir);
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

/// How many children the kill tests kill when `RTR_KILLS` is not set (CI keeps it).
pub const DEFAULT_KILLS: usize = 50;

/// `RTR_KILLS`, or [`DEFAULT_KILLS`].
fn kills() -> usize {
    match std::env::var("RTR_KILLS") {
        Ok(kills) => kills.trim().parse().unwrap_or_else(|_| panic!("RTR_KILLS={kills:?}: not a number of kills")),
        Err(_) => DEFAULT_KILLS,
    }
}

/// The target of the layer's `"new tokens durable"` event.
const PERSIST_TARGET: &str = "reqwest_token_refresh::cache::persist";

/// The `rotation_to_durable_us` of every `"new tokens durable"` line a child wrote in full (a
/// line cut short by the kill is not counted).
fn durable_windows(stderr: &str) -> impl Iterator<Item = u64> + '_ {
    stderr.split_inclusive('\n').filter(|line| line.ends_with('\n') && line.contains("new tokens durable")).filter_map(
        |line| {
            let (_, rest) = line.split_once("rotation_to_durable_us=")?;
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            rest[..digits].parse().ok()
        },
    )
}

/// How the provider treats a refresh token it has rotated away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rotation {
    /// Withings: the previous refresh token stays valid until the new access token is used.
    Grace,
    /// Kroger: single use; presenting a spent one is answered 400 `invalid_grant` (and revokes
    /// the family).
    SingleUse,
}

/// What a run of kills found.
struct KillRun {
    kills: usize,
    seed: u64,
    /// The kills after which the stored set no longer refreshed.
    lost: Vec<usize>,
    /// The kills that found the child between a token call and its logged durable save (the
    /// provider had answered, or was answering, a refresh the store did not yet hold).
    in_window: Vec<usize>,
    /// Every child save's rotation-to-durable window, in microseconds.
    windows_us: Vec<u64>,
    stats: reqwest_token_refresh::testkit::ProviderStats,
    took: Duration,
}

impl KillRun {
    fn report(&self, rotation: Rotation) {
        let mut windows = self.windows_us.clone();
        windows.sort_unstable();
        // Nearest rank: the smallest value with at least q of the values at or below it.
        let rank = |q: f64| windows.get(((q * windows.len() as f64).ceil() as usize).saturating_sub(1)).copied();
        let show = |value: Option<u64>| value.map_or("-".to_owned(), |us| format!("{us} µs"));
        println!(
            "{rotation:?}: {} kills in {:.1?} (seed {:#x}): {} lost grants, {} kills between a token call and its \
             durable save; {} child saves, rotation-to-durable \
             window median {}, p99 {}, max {}; provider: {} token calls, {} reuse detected, {} grace refreshes",
            self.kills,
            self.took,
            self.seed,
            self.lost.len(),
            self.in_window.len(),
            windows.len(),
            show(rank(0.5)),
            show(rank(0.99)),
            show(windows.last().copied()),
            self.stats.token_calls,
            self.stats.reuse_detected,
            self.stats.grace_refreshes,
        );
    }
}

/// How long the parent lets the provider finish a killed child's last request.
const SETTLE: Duration = Duration::from_millis(20);

/// Bounds one of the parent's own calls (to the store or the provider).
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"))
}

/// Starts a child that rotates tokens in a loop, SIGKILLs it at a random point 20 to 140 ms
/// later, and checks that the stored set still refreshes, `kills()` times; a set that does not
/// (the grant is lost) is counted and replaced by a fresh authorization, so that every kill is
/// measured.
async fn kill_children_while_rotating(rotation: Rotation) -> KillRun {
    let provider = MockProvider::builder()
        .rotate_refresh_tokens(true)
        .reuse_revokes_family(true)
        .previous_refresh_token_grace(rotation == Rotation::Grace)
        .start()
        .await;
    let dir = temp_dir(&format!("kill-{rotation:?}"));
    let path = dir.join("tokens.json");
    let store = FileStore::new(&path);
    let key = TokenKey::default();
    bounded("seeding the store", store.put(&key, &provider.issue_tokens())).await.unwrap();
    let grant = RefreshTokenGrant::new(provider.token_url()).client_id("client").client_secret("secret");
    let spec = ChildSpec {
        store: StoreSpec::File(path.clone()),
        token_url: provider.token_url(),
        api_url: provider.api_url("me"),
        job: Job::RotateForever,
        dpop: Dpop::Off,
    };
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ unix_ms() as u64);
    let seed = random.0;
    let api = reqwest::Client::new();
    let kills = kills();
    let started = Instant::now();
    let (mut lost, mut in_window, mut windows_us) = (Vec::new(), Vec::new(), Vec::new());

    for kill in 0..kills {
        let calls_before = provider.stats().token_calls;
        let child = WatchedChild::new(spawn_child(&spec));
        tokio::time::sleep(Duration::from_millis(20 + random.below(120))).await;
        let output = tokio::task::spawn_blocking(move || child.kill()).await.unwrap();
        // A token request the child sent just before it died may still be in the provider's hands
        // (it is answered into a closed socket); let it land before the parent reads the store.
        tokio::time::sleep(SETTLE).await;
        let saves = windows_us.len();
        windows_us.extend(durable_windows(&output.stderr));
        let child_calls = provider.stats().token_calls - calls_before;
        if child_calls > (windows_us.len() - saves) as u64 {
            in_window.push(kill);
        }

        // Whatever the child was doing, the stored set must still refresh.
        let stored: TokenSet =
            bounded("reading the store", store.get(&key)).await.unwrap().expect("tokens in the store");
        match bounded("the parent's refresh", grant.fetch(Some(&stored))).await {
            Ok(fresh) => {
                bounded("saving the parent's refresh", store.put(&key, &fresh)).await.unwrap();
                let answer = bounded(
                    "an API call",
                    api.get(provider.api_url("me")).bearer_auth(fresh.access_token().secret()).send(),
                )
                .await
                .unwrap();
                assert_eq!(answer.status(), 200, "kill {kill} (seed {seed:#x}): the recovered token works");
            }
            Err(err) if err.oauth_error().is_some_and(|oauth| oauth.error == "invalid_grant") => {
                // The grant is lost; the user would authorize again.
                lost.push(kill);
                bounded("re-seeding the store", store.put(&key, &provider.issue_tokens())).await.unwrap();
            }
            Err(err) => {
                panic!("kill {kill} (seed {seed:#x}): the parent's refresh failed, not for a lost grant: {err}")
            }
        }
    }
    let run = KillRun { kills, seed, lost, in_window, windows_us, stats: provider.stats(), took: started.elapsed() };
    run.report(rotation);
    assert!(!run.windows_us.is_empty(), "no child ever saved a rotated set: the children never got to rotate");
    let _ = std::fs::remove_dir_all(dir);
    run
}

/// SIGKILLs a child process at random points while it refreshes and saves rotated tokens to a
/// `FileStore`, against a provider whose rotated-away refresh token stays valid until the new
/// access token is used (Withings' rule): a crash between "the provider rotated" and "saved" then
/// leaves a stored set that still refreshes, so no kill may lose the grant. Any loss here is the
/// layer's: a new access token used before its refresh token was durable, or an older set saved
/// over a newer one.
///
/// `RTR_KILLS` sets how many children are killed (default [`DEFAULT_KILLS`], about 10 s; CI keeps
/// it). `--nocapture` shows the lost grants and the rotation-to-durable window (median, p99) over
/// every save the children made; README.md's "Nothing lost: what a crash can cost" has a 1,000-kill
/// run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_at_random_points_during_refresh_and_save_never_loses_the_grant() {
    let run = kill_children_while_rotating(Rotation::Grace).await;
    assert!(
        run.lost.is_empty(),
        "kills {:?} (seed {:#x}) left a stored set that no longer refreshes, with a provider grace that covers every \
         crash",
        run.lost,
        run.seed
    );
    assert_eq!(run.stats.reuse_detected, 0, "no rotated-away refresh token was ever spent: {:?}", run.stats);
}

/// The same kills against single-use refresh tokens (Kroger's rule: a spent one is answered 400
/// `invalid_grant`). A crash after the provider rotated but before the save was durable loses the
/// grant (no client can save a token it has not yet received), so this measures how often that
/// happens rather than forbidding it: it checks that every loss came from a kill that found the
/// child with a token call made and its save not yet durable, and that each is exactly one spent
/// refresh token presented again (the one the crash left in the store). How many kills land in
/// that window depends on the machine (mostly on how long its fsyncs take), so no share is
/// asserted; `--nocapture` shows it.
///
/// `RTR_KILLS` as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_at_random_points_with_single_use_refresh_tokens_loses_the_grant_only_between_rotation_and_save()
{
    let run = kill_children_while_rotating(Rotation::SingleUse).await;
    let outside: Vec<_> = run.lost.iter().filter(|kill| !run.in_window.contains(kill)).collect();
    assert!(
        outside.is_empty(),
        "kills {outside:?} (seed {:#x}) lost the grant although the child had no rotation pending: a saved set was \
         lost or overwritten",
        run.seed
    );
    assert_eq!(
        run.stats.reuse_detected,
        run.lost.len() as u64,
        "every lost grant is one rotated-away refresh token presented again (the parent's), and nothing else \
         spends one: {:?}",
        run.stats
    );
}

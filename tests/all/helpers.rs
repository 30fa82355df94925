//! What the integration tests share: building a client around the layer and firing storms.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    RefreshTokenGrant, Revision, StoreError, StoreGuard, Stored, TokenKey, TokenRefresh, TokenRefreshBuilder, TokenSet,
    TokenStore,
};

/// How long any one request through [`client_with`]'s client may take, the layer's waits included:
/// far more than any takes on a loaded machine (a 1,000-user storm on two busy cores), far less
/// than forever.
pub const REQUEST_BOUND: Duration = Duration::from_secs(120);

/// A client with the layer in it, behind [`Bounded`]: a request that hangs fails its test.
pub fn client_with(auth: &TokenRefresh) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(Bounded).with(auth.clone()).build()
}

/// The outermost middleware of the tests' clients: a request that takes longer than
/// [`REQUEST_BOUND`] (a flight that never ends, a lock never released) panics with what hung
/// instead of leaving the test to run until something outside kills it.
#[derive(Debug, Clone, Copy)]
pub struct Bounded;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Bounded {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let what = format!("{} {}", request.method(), request.url());
        match tokio::time::timeout(REQUEST_BOUND, next.run(request, extensions)).await {
            Ok(outcome) => outcome,
            Err(_) => panic!("{what} took longer than {REQUEST_BOUND:?} through the layer: it hung"),
        }
    }
}

/// A refresh-token grant against the mock provider's token endpoint, for the provider's API
/// (the mock serves both, on one origin): a layer built on it sends the token there only.
pub fn grant(provider: &MockProvider) -> RefreshTokenGrant {
    RefreshTokenGrant::new(provider.token_url()).client_id("client").client_secret("secret").api_origin(provider.uri())
}

/// A layer builder for the mock provider, starting from `tokens`.
pub fn layer(provider: &MockProvider, tokens: TokenSet) -> TokenRefreshBuilder {
    TokenRefresh::builder(grant(provider)).initial_tokens(tokens)
}

/// Drops a wiremock server on a thread of its own. Its `Drop` blocks on an async lock with
/// `futures::executor::block_on`; dropped in a tokio task that a storm has left without
/// cooperative-scheduling budget, every poll of that lock yields and wakes itself, and the thread
/// spins forever (see `MockProvider`'s `Drop`, which does the same).
pub fn drop_apart(server: wiremock::MockServer) {
    std::thread::spawn(move || drop(server)).join().expect("the server's checks pass");
}

/// Sends a captured form-encoded token request to the mock provider's token endpoint again, byte
/// for byte, as an attacker who captured it would; the provider's answer.
pub async fn replay_token_request(provider: &MockProvider, body: Vec<u8>) -> reqwest::Response {
    let replay = reqwest::Client::new()
        .post(provider.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send();
    tokio::time::timeout(Duration::from_secs(10), replay).await.expect("the provider answers").unwrap()
}

/// Sends `n` concurrent GETs to `url` (optionally as `key`) and returns their statuses; a request
/// that failed in the middleware counts as status 0.
pub async fn storm(client: &ClientWithMiddleware, url: &str, n: usize, key: Option<TokenKey>) -> Vec<u16> {
    let requests = (0..n).map(|_| {
        let mut request = client.get(url);
        if let Some(key) = &key {
            request = request.with_extension(key.clone());
        }
        async move {
            match request.send().await {
                Ok(response) => response.status().as_u16(),
                Err(_) => 0,
            }
        }
    });
    join_all(requests).await
}

/// Sends one GET to `url` in a task of its own, for a test to act while it is under way; the
/// task answers the status.
pub fn spawn_get(
    client: &ClientWithMiddleware,
    url: impl Into<String>,
) -> tokio::task::JoinHandle<reqwest_middleware::Result<u16>> {
    let request = client.get(url.into());
    tokio::spawn(async move { request.send().await.map(|response| response.status().as_u16()) })
}

/// How many of `statuses` equal `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Waits (bounded) until `condition` holds; for background work such as a retried save.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A counter a hook can bump.
pub fn counter() -> (Arc<std::sync::atomic::AtomicUsize>, impl Fn() -> usize) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let read = {
        let count = count.clone();
        move || count.load(std::sync::atomic::Ordering::SeqCst)
    };
    (count, read)
}

/// Mounts `/api` on `server`: 200 for `Bearer <token>`, a bare 401 for anything else.
pub async fn mount_api_accepting(server: &wiremock::MockServer, token: &str) {
    use wiremock::matchers::{header, path};
    use wiremock::{Mock, ResponseTemplate};
    Mock::given(path("/api"))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(ResponseTemplate::new(200))
        .mount(server)
        .await;
    Mock::given(path("/api")).respond_with(ResponseTemplate::new(401)).mount(server).await;
}

/// A provider, a layer (default options) and a client that all run on one driven clock.
pub async fn on_a_driven_clock(
    provider: reqwest_token_refresh::testkit::MockProviderBuilder,
) -> (reqwest_token_refresh::ManualClock, MockProvider, TokenRefresh, ClientWithMiddleware) {
    let clock = reqwest_token_refresh::ManualClock::starting_now();
    let provider = provider.clock(clock.clone()).start().await;
    let auth = TokenRefresh::builder(grant(&provider).clock(clock.clone()))
        .initial_tokens(provider.issue_tokens())
        .clock(clock.clone())
        .build()
        .unwrap();
    let client = client_with(&auth);
    (clock, provider, auth, client)
}

/// A store over memory without a cross-process lock (the trait's default), as a user might write
/// one over their own storage: it lets layers race, and lets `set_tokens` overtake a refresh.
#[derive(Debug, Clone, Default)]
pub struct Lockless(pub reqwest_token_refresh::MemoryStore);

#[async_trait::async_trait]
impl TokenStore for Lockless {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.0.load(key).await
    }

    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.0.remove(key, replaces).await
    }
}

/// A test store's lock: `inner`'s real lock held, with the load and the save made under it going
/// through the test store (`through`), so that the faults it injects apply under the lock too.
pub async fn lock_through<'a>(
    through: &'a dyn TokenStore,
    inner: &'a dyn TokenStore,
    key: &TokenKey,
) -> Result<Option<Box<dyn StoreGuard + 'a>>, StoreError> {
    let Some(held) = inner.lock(key).await? else { return Ok(None) };
    Ok(Some(Box::new(LockThrough { through, key: key.clone(), held })))
}

#[derive(Debug)]
struct LockThrough<'a> {
    through: &'a dyn TokenStore,
    key: TokenKey,
    held: Box<dyn StoreGuard + 'a>,
}

#[async_trait::async_trait]
impl StoreGuard for LockThrough<'_> {
    async fn load(&mut self) -> Result<Option<Stored>, StoreError> {
        self.through.load(&self.key).await
    }

    async fn save(&mut self, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.through.save(&self.key, tokens, replaces).await
    }

    async fn remove(&mut self, replaces: Revision) -> Result<Revision, StoreError> {
        self.through.remove(&self.key, replaces).await
    }

    async fn unlock(self: Box<Self>) -> Result<(), StoreError> {
        self.held.unlock().await
    }
}

/// Test-side shorthands for a store: what another process would do to it.
#[async_trait::async_trait]
pub trait StoreExt {
    /// Saves `tokens` over whatever the store holds for `key` (as another process that just
    /// refreshed would), returning the new revision.
    async fn put(&self, key: &TokenKey, tokens: &TokenSet) -> Result<Revision, StoreError>;
    /// The tokens stored for `key`, without their revision.
    async fn get(&self, key: &TokenKey) -> Result<Option<TokenSet>, StoreError>;
}

#[async_trait::async_trait]
impl<S: TokenStore + ?Sized> StoreExt for S {
    async fn put(&self, key: &TokenKey, tokens: &TokenSet) -> Result<Revision, StoreError> {
        let replaces = self.load(key).await?.map_or(Revision::NONE, |stored| stored.revision);
        self.save(key, tokens, replaces).await
    }

    async fn get(&self, key: &TokenKey) -> Result<Option<TokenSet>, StoreError> {
        Ok(self.load(key).await?.map(|stored| stored.tokens))
    }
}

/// A memory store that counts its loads: what a database would see.
#[derive(Debug, Clone, Default)]
pub struct CountingStore {
    pub tokens: reqwest_token_refresh::MemoryStore,
    pub loads: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl TokenStore for CountingStore {
    async fn load(&self, key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.tokens.load(key).await
    }
    async fn save(&self, key: &TokenKey, tokens: &TokenSet, replaces: Revision) -> Result<Revision, StoreError> {
        self.tokens.save(key, tokens, replaces).await
    }

    async fn remove(&self, key: &TokenKey, replaces: Revision) -> Result<Revision, StoreError> {
        self.tokens.remove(key, replaces).await
    }
    async fn lock(&self, key: &TokenKey) -> Result<Option<Box<dyn StoreGuard + '_>>, StoreError> {
        crate::helpers::lock_through(self, &self.tokens, key).await
    }
}

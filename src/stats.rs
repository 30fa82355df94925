//! Counters of what the layer did, for dashboards and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the layer's counters, over all token keys, since it was built; from
/// [`TokenRefresh::stats`](crate::TokenRefresh::stats).
///
/// After a storm of requests whose token the API stopped accepting, one refresh served them all:
///
/// ```
/// # #[cfg(feature = "testkit")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::future::join_all;
/// use reqwest_token_refresh::testkit::MockProvider;
/// use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh};
///
/// let provider = MockProvider::start().await;
/// let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()))
///     .initial_tokens(provider.issue_tokens())
///     .allow_origin(provider.uri())
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.clone())
///     .build();
///
/// provider.expire_access_tokens();
/// let storm = (0..10).map(|_| client.get(provider.api_url("v1/me")).send());
/// for response in join_all(storm).await {
///     assert_eq!(response?.status(), 200);
/// }
///
/// let stats = auth.stats();
/// assert_eq!(stats.requests, 10);
/// assert_eq!(stats.refreshes, 1, "one token call for the whole storm");
/// assert_eq!(stats.refresh_failures, 0);
/// println!("{} answers were 401s; {} requests were sent again", stats.unauthorized, stats.retries);
/// # Ok(()) }
/// # #[cfg(not(feature = "testkit"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests that went through the layer with a token attached.
    pub requests: u64,
    /// 401 answers seen on those requests (before and after retries), and answers that
    /// [`token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when)'s rule found
    /// rejecting the token.
    pub unauthorized: u64,
    /// Calls to the token source (token endpoint calls).
    pub refreshes: u64,
    /// Refreshes that failed, transiently or terminally.
    pub refresh_failures: u64,
    /// Requests sent a second time with a new token after a 401.
    pub retries: u64,
    /// Requests failed without a network call: re-authorization required, or a cool-down with no
    /// usable token.
    pub fail_fast: u64,
    /// Token-store saves or reads that failed.
    pub store_failures: u64,
    /// Token sets adopted from the store because another process or layer refreshed first.
    pub adopted: u64,
    /// Rejections of a token fetched moments before that were not answered with another refresh
    /// (see [`min_refresh_interval`](crate::TokenRefreshBuilder::min_refresh_interval)).
    pub refreshes_held_back: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) fail_fast: AtomicU64,
    pub(crate) store_failures: AtomicU64,
    pub(crate) adopted: AtomicU64,
    pub(crate) refreshes_held_back: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            requests: read(&self.requests),
            unauthorized: read(&self.unauthorized),
            refreshes: read(&self.refreshes),
            refresh_failures: read(&self.refresh_failures),
            retries: read(&self.retries),
            fail_fast: read(&self.fail_fast),
            store_failures: read(&self.store_failures),
            adopted: read(&self.adopted),
            refreshes_held_back: read(&self.refreshes_held_back),
        }
    }
}

//! What the layer did, counted: [`Stats`] for a snapshot in code, and, with the `metrics` feature,
//! the same events on the [`metrics`](https://docs.rs/metrics) facade for a dashboard.
//!
//! Every event goes through [`Counters::count`] (or [`Counters::refreshed`] and
//! [`Counters::waiting`]), so the snapshot and the metrics can never disagree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
///
/// # Spans
///
/// Each load, refresh or recheck of a key runs in a `token_refresh` span (fields `layer`, `key`,
/// `intent`, and for a refresh `outcome` and `duration_ms`), a child of the span of the request
/// that started it, so it shows inside that request's trace even though it runs in a task of its
/// own and may outlive the request. The token call inside it has a `token_call` span (`endpoint`,
/// without user info or query; `grant_type`; the answer's `status`; `duration_ms`).
///
/// # Metrics
///
/// With the `metrics` feature, whatever recorder the service installed (Prometheus, OpenTelemetry,
/// StatsD exporters) receives these, each labelled `layer` with the builder's
/// [`name`](crate::TokenRefreshBuilder::name) (`default` if none). Names follow OpenTelemetry's
/// style: dot-separated, lower case, the unit not in the name.
///
/// | name | kind | labels | what it counts |
/// | --- | --- | --- | --- |
/// | `token_refresh.requests` | counter | `layer` | requests sent with a token ([`Stats::requests`]) |
/// | `token_refresh.rejections` | counter | `layer` | answers that rejected the token: a 401, or a rule's match ([`Stats::unauthorized`]) |
/// | `token_refresh.refreshes` | counter | `layer`, `outcome` | token calls, by `outcome`: `ok`, `transient`, `terminal` (the user must authorize again), `client_error` (the client's credentials or registration) ([`Stats::refreshes`]) |
/// | `token_refresh.refresh.duration` | histogram, seconds | `layer`, `outcome` | a refresh from its start (the store's lock included) to its new tokens saved, or its failure |
/// | `token_refresh.retries` | counter | `layer` | requests sent again with a new token ([`Stats::retries`]) |
/// | `token_refresh.fail_fast` | counter | `layer` | requests failed with no network call ([`Stats::fail_fast`]) |
/// | `token_refresh.store.failures` | counter | `layer` | store reads and saves that failed ([`Stats::store_failures`]) |
/// | `token_refresh.adopted` | counter | `layer` | token sets adopted from the store ([`Stats::adopted`]) |
/// | `token_refresh.held_back` | counter | `layer` | rejections of a just-fetched token not answered with a refresh ([`Stats::refreshes_held_back`]) |
/// | `token_refresh.waited` | counter | `layer` | requests that waited for a load or refresh of their key before they were sent ([`Stats::waited`]) |
/// | `token_refresh.refreshes_ahead` | counter | `layer` | refreshes started ahead of expiry, in the background ([`Stats::refreshes_ahead`]) |
/// | `token_refresh.nonce_retries` | counter | `layer` | requests sent again to meet a DPoP nonce demand ([`Stats::nonce_retries`]) |
/// | `token_refresh.waiting` | gauge | `layer` | requests waiting right now for a load or refresh of their key |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests that went through the layer with a token attached.
    pub requests: u64,
    /// 401 answers seen on those requests (before and after retries), and answers that
    /// [`token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when)'s rule found
    /// rejecting the token. A DPoP nonce demand (a 401 that asks for a new proof, not a new
    /// token) that the layer meets is counted in [`nonce_retries`](Self::nonce_retries) instead;
    /// one it hands back (a second demand, or a request whose body was sent once) is counted
    /// here.
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
    /// Requests that waited for a load or refresh of their key's tokens before they could be sent
    /// (a key's first load, a token past or inside its skew window, a token a server rejected
    /// while its refresh runs). Retries after a rejection are counted in [`retries`](Self::retries),
    /// not here. With [`refresh_ahead`](crate::TokenRefreshBuilder::refresh_ahead), keys in use
    /// stop adding to it once loaded.
    pub waited: u64,
    /// Refreshes started in the background before a token's skew window opened
    /// ([`refresh_ahead`](crate::TokenRefreshBuilder::refresh_ahead)); each is also one of
    /// [`refreshes`](Self::refreshes) if it made a token call (it may adopt a set another process
    /// saved instead).
    pub refreshes_ahead: u64,
    /// Requests sent again, with the same token, because the server demanded a DPoP nonce
    /// (`401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"`, RFC 9449 §9): one extra
    /// round trip each (feature `dpop`; always 0 without DPoP-bound tokens).
    pub nonce_retries: u64,
}

/// Something the layer did that is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Request,
    /// A call to the token source is about to be made (its outcome: [`Counters::refreshed`]).
    TokenCall,
    /// A refresh failed, in the token call or around it (the store's lock, say).
    RefreshFailure,
    Rejection,
    Retry,
    FailFast,
    StoreFailure,
    Adopted,
    HeldBack,
    /// A request waited for its key's load or refresh before it could be sent.
    Waited,
    /// Refresh ahead started a refresh in the background.
    RefreshAhead,
    /// A request went again to meet a DPoP nonce demand.
    NonceRetry,
}

/// How a token call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshOutcome {
    Ok,
    Transient,
    Terminal,
    ClientError,
}

impl RefreshOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Ok => "ok",
            RefreshOutcome::Transient => "transient",
            RefreshOutcome::Terminal => "terminal",
            RefreshOutcome::ClientError => "client_error",
        }
    }
}

/// The layer's counters, shared by its middleware and cache.
#[derive(Debug)]
pub(crate) struct Counters {
    /// The layer's name, for spans and metrics.
    name: Option<Arc<str>>,
    requests: AtomicU64,
    unauthorized: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    retries: AtomicU64,
    fail_fast: AtomicU64,
    store_failures: AtomicU64,
    adopted: AtomicU64,
    refreshes_held_back: AtomicU64,
    waited: AtomicU64,
    refreshes_ahead: AtomicU64,
    nonce_retries: AtomicU64,
    #[cfg(feature = "metrics")]
    metrics: Metrics,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::named(None)
    }
}

/// The metrics' keys, built once with the layer's label: an event is then one lookup in the
/// recorder (the key's hash is cached in it), not a key and its label vector built per request.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Metrics {
    label: metrics::SharedString,
    /// By [`Event`] (see [`Event::metric`]); `None` for the events counted by outcome instead.
    counters: [Option<metrics::Key>; Event::COUNT],
    waiting: metrics::Key,
}

#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(label: metrics::SharedString) -> Self {
        let key =
            |name: &'static str| metrics::Key::from_parts(name, vec![metrics::Label::new("layer", label.clone())]);
        Metrics {
            counters: Event::ALL.map(|event| event.metric().map(key)),
            waiting: key("token_refresh.waiting"),
            label,
        }
    }
}

#[cfg(feature = "metrics")]
impl Event {
    const COUNT: usize = Event::ALL.len();
    const ALL: [Event; 12] = [
        Event::Request,
        Event::TokenCall,
        Event::RefreshFailure,
        Event::Rejection,
        Event::Retry,
        Event::FailFast,
        Event::StoreFailure,
        Event::Adopted,
        Event::HeldBack,
        Event::Waited,
        Event::RefreshAhead,
        Event::NonceRetry,
    ];

    /// The counter this event increments on the metrics facade; `None` for the token calls and
    /// their failures, counted by outcome in [`Counters::refreshed`].
    fn metric(self) -> Option<&'static str> {
        match self {
            Event::Request => Some("token_refresh.requests"),
            Event::TokenCall | Event::RefreshFailure => None,
            Event::Rejection => Some("token_refresh.rejections"),
            Event::Retry => Some("token_refresh.retries"),
            Event::FailFast => Some("token_refresh.fail_fast"),
            Event::StoreFailure => Some("token_refresh.store.failures"),
            Event::Adopted => Some("token_refresh.adopted"),
            Event::HeldBack => Some("token_refresh.held_back"),
            Event::Waited => Some("token_refresh.waited"),
            Event::RefreshAhead => Some("token_refresh.refreshes_ahead"),
            Event::NonceRetry => Some("token_refresh.nonce_retries"),
        }
    }
}

/// A request waiting for a load or refresh, on the `waiting` gauge until dropped.
pub(crate) struct Waiting<'a> {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    counters: &'a Counters,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::with_recorder(|recorder| {
            recorder.register_gauge(&self.counters.metrics.waiting, &METADATA).decrement(1.0);
        });
    }
}

impl Counters {
    /// Counters for a layer called `name` (`default` in metrics when `None`).
    pub(crate) fn named(name: Option<String>) -> Self {
        let name: Option<Arc<str>> = name.map(Arc::from);
        Counters {
            #[cfg(feature = "metrics")]
            metrics: Metrics::new(match &name {
                Some(name) => name.clone().into(),
                None => metrics::SharedString::const_str("default"),
            }),
            name,
            requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            refresh_failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            fail_fast: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
            refreshes_held_back: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            refreshes_ahead: AtomicU64::new(0),
            nonce_retries: AtomicU64::new(0),
        }
    }

    /// The layer's name as its spans show it.
    pub(crate) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("default")
    }

    /// Counts one `event`, in the snapshot and on the metrics facade.
    pub(crate) fn count(&self, event: Event) {
        let counter = match event {
            Event::Request => &self.requests,
            // Counted by outcome once it is known, in `refreshed`.
            Event::TokenCall => &self.refreshes,
            Event::RefreshFailure => &self.refresh_failures,
            Event::Rejection => &self.unauthorized,
            Event::Retry => &self.retries,
            Event::FailFast => &self.fail_fast,
            Event::StoreFailure => &self.store_failures,
            Event::Adopted => &self.adopted,
            Event::HeldBack => &self.refreshes_held_back,
            Event::Waited => &self.waited,
            Event::RefreshAhead => &self.refreshes_ahead,
            Event::NonceRetry => &self.nonce_retries,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(key) = &self.metrics.counters[event as usize] {
            metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(1));
        }
    }

    /// A refresh ended with `outcome` after `took`: the metrics' refresh counter and histogram.
    pub(crate) fn refreshed(&self, outcome: RefreshOutcome, took: Duration) {
        #[cfg(not(feature = "metrics"))]
        let _ = (outcome, took);
        #[cfg(feature = "metrics")]
        {
            let label = self.metrics.label.clone();
            let outcome = metrics::SharedString::const_str(outcome.as_str());
            metrics::counter!("token_refresh.refreshes", "layer" => label.clone(), "outcome" => outcome.clone())
                .increment(1);
            metrics::histogram!("token_refresh.refresh.duration", "layer" => label, "outcome" => outcome)
                .record(took.as_secs_f64());
        }
    }

    /// A request starts waiting for its key's load or refresh; it stops when the guard drops.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        #[cfg(feature = "metrics")]
        metrics::with_recorder(|recorder| recorder.register_gauge(&self.metrics.waiting, &METADATA).increment(1.0));
        Waiting { counters: self }
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
            waited: read(&self.waited),
            refreshes_ahead: read(&self.refreshes_ahead),
            nonce_retries: read(&self.nonce_retries),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "metrics")]
    #[test]
    fn every_event_has_its_place_in_the_metrics_keys() {
        for (place, event) in super::Event::ALL.into_iter().enumerate() {
            assert_eq!(event as usize, place, "{event:?}");
        }
    }
}

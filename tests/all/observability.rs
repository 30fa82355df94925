//! What an operator sees: the refresh's span inside the caller's trace, the token call's span
//! inside it, and every documented metric moving (read with `metrics-util`'s debugging recorder).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use reqwest_token_refresh::testkit::{Fault, MockProvider};
use reqwest_token_refresh::{
    RefreshTokenGrant, Revision, StoreError, Stored, TokenKey, TokenRefresh, TokenSet, TokenStore,
};
use tracing::Instrument as _;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{client_with, count, eventually, grant, storm};

/// A span as the test saw it: its name, its parent's id, its fields as recorded.
#[derive(Debug, Clone)]
struct SeenSpan {
    id: u64,
    name: &'static str,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SeenSpan>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx.span(id).and_then(|span| span.parent()).map(|parent| parent.id().into_u64());
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let seen = SeenSpan { id: id.into_u64(), name: attrs.metadata().name(), parent, fields };
        self.0.lock().unwrap().push(seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(span) = spans.iter_mut().find(|span| span.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<SeenSpan> {
        self.0.lock().unwrap().iter().filter(|span| span.name == name).cloned().collect()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_refresh_and_its_token_call_are_spans_inside_the_callers_trace() {
    // Spans of this crate are wanted by every subscriber in the process (see `secrets.rs` for
    // why a scoped subscriber alone can miss call sites another thread cached as unwanted).
    crate::secrets::want_this_crates_events_everywhere();
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let provider = MockProvider::start().await;
    let auth =
        TokenRefresh::builder(grant(&provider)).initial_tokens(provider.issue_tokens()).name("spans").build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    provider.expire_access_tokens();
    let caller = tracing::info_span!("caller_request");
    let statuses = storm(&client, &url, 20, None).instrument(caller).await;
    assert_eq!(count(&statuses, 200), 20);

    let callers = spans.named("caller_request");
    let refreshes: Vec<_> = spans
        .named("token_refresh")
        .into_iter()
        .filter(|s| s.fields.get("intent").map(String::as_str) == Some("refresh"))
        .collect();
    assert_eq!(refreshes.len(), 1, "one refresh span for the storm: {refreshes:?}");
    let refresh = &refreshes[0];
    assert_eq!(refresh.parent, Some(callers[0].id), "the refresh is inside the caller's trace");
    assert_eq!(refresh.fields.get("layer").map(String::as_str), Some("spans"));
    assert_eq!(refresh.fields.get("key").map(String::as_str), Some("default"));
    assert_eq!(refresh.fields.get("outcome").map(String::as_str), Some("ok"));
    assert!(refresh.fields.get("duration_ms").is_some_and(|ms| ms.parse::<u64>().is_ok()), "{refresh:?}");

    let calls = spans.named("token_call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.parent, Some(refresh.id), "the token call is inside the refresh");
    assert_eq!(call.fields.get("status").map(String::as_str), Some("200"));
    assert_eq!(call.fields.get("grant_type").map(String::as_str), Some("refresh_token"));
    assert_eq!(call.fields.get("endpoint"), Some(&provider.token_url()));
    assert!(call.fields.contains_key("duration_ms"));
}

/// The process's one metrics recorder (a debugging one), installed on first use.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other metrics recorder in the test binary");
        snapshotter
    })
}

/// What the recorder got, by `layer` label and metric, summed over snapshots (a snapshot drains
/// counters, gauges and histograms, so what it shows is the change since the last).
#[derive(Debug, Default)]
struct Seen {
    counters: BTreeMap<(String, String), u64>,
    gauges: BTreeMap<(String, String), f64>,
    histograms: BTreeMap<(String, String), usize>,
}

impl Seen {
    fn take(&mut self) {
        for (key, _, _, value) in snapshotter().snapshot().into_vec() {
            let key = key.key();
            let labels: BTreeMap<_, _> = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            let Some(layer) = labels.get("layer").cloned() else { continue };
            let name = match labels.get("outcome") {
                Some(outcome) => format!("{}{{{outcome}}}", key.name()),
                None => key.name().to_owned(),
            };
            let at = (layer, name);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(at).or_default() += n,
                DebugValue::Gauge(v) => *self.gauges.entry(at).or_default() += v.0,
                DebugValue::Histogram(samples) => *self.histograms.entry(at).or_default() += samples.len(),
            }
        }
    }

    fn counter(&self, layer: &str, name: &str) -> u64 {
        self.counters.get(&(layer.to_owned(), name.to_owned())).copied().unwrap_or(0)
    }

    fn gauge(&self, layer: &str, name: &str) -> f64 {
        self.gauges.get(&(layer.to_owned(), name.to_owned())).copied().unwrap_or(0.0)
    }

    fn samples(&self, layer: &str, name: &str) -> usize {
        self.histograms.get(&(layer.to_owned(), name.to_owned())).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_moves_and_agrees_with_stats() {
    snapshotter();
    let mut seen = Seen::default();

    // A storm of 20 requests whose token the API rejects, while the token call takes a while:
    // 20 rejections, 20 waiting, one refresh, 20 retries.
    let provider = MockProvider::builder().token_latency(Duration::from_millis(500)).start().await;
    let auth =
        TokenRefresh::builder(grant(&provider)).initial_tokens(provider.issue_tokens()).name("storm").build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    provider.expire_access_tokens();
    let storm = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { storm(&client, &url, 20, None).await }
    });
    let mut peak = 0.0_f64;
    eventually("20 requests wait for the refresh", || {
        seen.take();
        peak = peak.max(seen.gauge("storm", "token_refresh.waiting"));
        peak >= 20.0
    })
    .await;
    assert_eq!(count(&tokio::time::timeout(Duration::from_secs(10), storm).await.unwrap().unwrap(), 200), 20);
    seen.take();
    let stats = auth.stats();
    assert_eq!((stats.requests, stats.unauthorized, stats.refreshes, stats.retries), (21, 20, 1, 20), "{stats:?}");
    assert_eq!(seen.counter("storm", "token_refresh.requests"), 21);
    assert_eq!(seen.counter("storm", "token_refresh.rejections"), 20);
    assert_eq!(seen.counter("storm", "token_refresh.refreshes{ok}"), 1);
    assert_eq!(seen.samples("storm", "token_refresh.refresh.duration{ok}"), 1);
    assert_eq!(seen.counter("storm", "token_refresh.retries"), 20);
    assert_eq!(seen.gauge("storm", "token_refresh.waiting"), 0.0, "nobody waits once it is over");

    // A transient failure, then a dead grant and a request failed fast.
    provider.fail_next_token_calls(1, Fault::Status(503));
    provider.expire_access_tokens();
    assert!(client.get(&url).send().await.is_err());
    let auth =
        TokenRefresh::builder(grant(&provider)).initial_tokens(provider.issue_tokens()).name("dead").build().unwrap();
    let dead = client_with(&auth);
    provider.revoke_all();
    provider.expire_access_tokens();
    assert!(dead.get(&url).send().await.is_err());
    assert!(dead.get(&url).send().await.is_err());
    seen.take();
    assert_eq!(seen.counter("storm", "token_refresh.refreshes{transient}"), 1);
    assert_eq!(seen.samples("storm", "token_refresh.refresh.duration{transient}"), 1);
    assert_eq!(seen.counter("dead", "token_refresh.refreshes{terminal}"), 1);
    assert_eq!(seen.counter("dead", "token_refresh.fail_fast"), auth.stats().fail_fast);
    assert!(auth.stats().fail_fast >= 1);

    // The client's own credentials refused.
    let strict = MockProvider::builder().client_credentials("client", "secret").start().await;
    let wrong =
        RefreshTokenGrant::new(strict.token_url()).client_id("client").client_secret("wrong").api_origin(strict.uri());
    let auth =
        TokenRefresh::builder(wrong).initial_tokens(strict.issue_expired_tokens()).name("client").build().unwrap();
    assert!(client_with(&auth).get(strict.api_url("me")).send().await.is_err());
    seen.take();
    assert_eq!(seen.counter("client", "token_refresh.refreshes{client_error}"), 1);

    // An API that rejects even a fresh token: one refresh, then a hold-back.
    let provider = MockProvider::start().await;
    Mock::given(path("/api/always-401")).respond_with(ResponseTemplate::new(401)).mount(provider.server()).await;
    let auth =
        TokenRefresh::builder(grant(&provider)).initial_tokens(provider.issue_tokens()).name("held").build().unwrap();
    let held = client_with(&auth);
    for _ in 0..2 {
        assert_eq!(held.get(provider.api_url("always-401")).send().await.unwrap().status(), 401);
    }
    seen.take();
    assert_eq!(seen.counter("held", "token_refresh.held_back"), 1);
    assert_eq!(auth.stats().refreshes_held_back, 1);

    // Tokens another process saved are adopted; a store that fails is counted.
    let store = reqwest_token_refresh::MemoryStore::new();
    let auth = TokenRefresh::builder(grant(&provider))
        .initial_tokens(provider.issue_tokens())
        .store(store.clone())
        .name("shared")
        .build()
        .unwrap();
    let shared = client_with(&auth);
    assert_eq!(shared.get(provider.api_url("me")).send().await.unwrap().status(), 200);
    provider.expire_access_tokens();
    let stored = store.load(&TokenKey::default()).await.unwrap().unwrap();
    store.save(&TokenKey::default(), &provider.issue_tokens(), stored.revision).await.unwrap();
    assert_eq!(shared.get(provider.api_url("me")).send().await.unwrap().status(), 200);
    let failing = FullDisk;
    let auth = TokenRefresh::builder(grant(&provider)).store(failing).name("broken").build().unwrap();
    assert!(auth.set_tokens(provider.issue_tokens()).await.is_err());
    seen.take();
    assert_eq!(seen.counter("shared", "token_refresh.adopted"), 1);
    assert!(seen.counter("broken", "token_refresh.store.failures") >= 1, "{seen:?}");
    assert_eq!(seen.counter("broken", "token_refresh.store.failures"), auth.stats().store_failures);
}

/// A store on a full disk: reads find nothing, saves fail.
#[derive(Debug)]
struct FullDisk;

#[async_trait]
impl TokenStore for FullDisk {
    async fn load(&self, _key: &TokenKey) -> Result<Option<Stored>, StoreError> {
        Ok(None)
    }

    async fn save(&self, _key: &TokenKey, _tokens: &TokenSet, _replaces: Revision) -> Result<Revision, StoreError> {
        Err(StoreError::io("writing tokens", std::io::Error::from_raw_os_error(28)))
    }

    async fn remove(&self, _key: &TokenKey, _replaces: Revision) -> Result<Revision, StoreError> {
        Err(StoreError::io("writing tokens", std::io::Error::from_raw_os_error(28)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_hook_writes_to_a_store_as_keys_refresh_and_die() {
    let provider = MockProvider::start().await;
    // What the service keeps of its users: the tokens last seen, and who must reconnect.
    let (audit, reconnect) = (reqwest_token_refresh::MemoryStore::new(), reqwest_token_refresh::MemoryStore::new());
    let auth = TokenRefresh::builder(grant(&provider))
        .initial_tokens(provider.issue_tokens())
        .on_event({
            let (audit, reconnect) = (audit.clone(), reconnect.clone());
            move |event| {
                let (audit, reconnect) = (audit.clone(), reconnect.clone());
                async move {
                    match event {
                        reqwest_token_refresh::TokenEvent::Refreshed { key, tokens } => {
                            let revision = audit.load(&key).await.unwrap().map_or(Revision::NONE, |s| s.revision);
                            audit.save(&key, &tokens, revision).await.unwrap();
                        }
                        reqwest_token_refresh::TokenEvent::ReauthorizationRequired { key, .. } => {
                            reconnect.save(&key, &TokenSet::new("must-reconnect"), Revision::NONE).await.unwrap();
                        }
                        _ => {}
                    }
                }
            }
        })
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    provider.expire_access_tokens();
    assert_eq!(count(&storm(&client, &url, 10, None).await, 200), 10);
    let key = TokenKey::default();
    let audited = || futures::executor::block_on(audit.load(&key)).unwrap().map(|s| s.tokens);
    eventually("the hook saved the refreshed tokens", || audited() == auth.tokens()).await;

    provider.revoke_all();
    provider.expire_access_tokens();
    assert!(client.get(&url).send().await.is_err());
    let marked = || futures::executor::block_on(reconnect.load(&key)).unwrap().map(|s| s.tokens);
    eventually("the hook marked the user", || marked() == Some(TokenSet::new("must-reconnect"))).await;

    // A store failure is an event too.
    let (seen, read) = crate::helpers::counter();
    let broken = TokenRefresh::builder(grant(&provider))
        .store(FullDisk)
        .on_event(move |event| {
            let seen = seen.clone();
            async move {
                if matches!(event, reqwest_token_refresh::TokenEvent::StoreFailed { .. }) {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
        .build()
        .unwrap();
    assert!(broken.set_tokens(provider.issue_tokens()).await.is_err());
    eventually("the hook heard of the store failure", || read() >= 1).await;
}

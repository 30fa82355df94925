//! Contract point 9, secrets stay secret: across a whole scenario (a refresh, a transient 500, a
//! dead refresh token, `set_tokens`), no access token, refresh token or client secret appears in
//! the crate's `tracing` output at TRACE level, in any `Debug` of the layer, grant, store, state or
//! tokens, or in any error's `Display` / `Debug` down its `source()` chain.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use reqwest_token_refresh::{
    ClientCredentials, Error, ManualClock, MemoryStore, RefreshTokenGrant, TokenRefresh, TokenSet,
};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use wiremock::matchers::{body_string_contains, header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::client_with;

/// Every secret in the scenario. They share no prefix, so each is searched for on its own.
const SECRETS: &[&str] = &[
    "SECRET-ACCESS-1",
    "SECRET-ACCESS-2",
    "SECRET-ACCESS-4",
    "SECRET-REFRESH-1",
    "SECRET-REFRESH-2",
    "SECRET-REFRESH-4",
    "SECRET-ID-TOKEN",
    "SECRET-CLIENT-1",
    "SECRET-PARAM-1",
];

/// A `tracing` writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

/// Installs, once per process, a global subscriber that wants every event and span of this crate
/// (and writes them nowhere).
///
/// `tracing` caches per call site whether any subscriber wants its events, for the whole process.
/// Tests on other threads hit this crate's call sites with no subscriber at all, and a scoped
/// subscriber installed by a test may then miss an event whose interest was cached as "never" in
/// between. The global one keeps that interest at "always".
pub fn want_this_crates_events_everywhere() {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let sink = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .with(Targets::new().with_target("reqwest_token_refresh", Level::TRACE));
        let _ = tracing::subscriber::set_global_default(sink);
    });
}

/// Captures this crate's `tracing` events at TRACE level, on this thread, until the guard drops.
/// With a current-thread runtime that covers the refresh tasks the layer spawns too.
fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    want_this_crates_events_everywhere();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer({
                    let captured = captured.clone();
                    move || captured.clone()
                })
                .with_ansi(false)
                .with_target(true),
        )
        // wiremock logs request bodies under its own targets; what is checked here is this crate.
        .with(Targets::new().with_target("reqwest_token_refresh", Level::TRACE));
    (captured, tracing::subscriber::set_default(subscriber))
}

/// Collects every text the scenario produces, and checks none holds a secret.
#[derive(Default)]
struct Shown(Vec<(String, String)>);

impl Shown {
    fn debug(&mut self, what: &str, value: &impl std::fmt::Debug) {
        self.0.push((what.to_owned(), format!("{value:?}\n{value:#?}")));
    }

    fn error(&mut self, what: &str, err: &(dyn std::error::Error + 'static)) {
        let mut next = Some(err);
        let mut depth = 0;
        while let Some(err) = next {
            self.0.push((format!("{what} (source {depth})"), format!("{err}\n{err:?}\n{err:#?}")));
            next = err.source();
            depth += 1;
        }
    }

    fn assert_no_secret(&self) {
        for (what, text) in &self.0 {
            for secret in SECRETS {
                assert!(!text.contains(secret), "{secret} leaked in {what}:\n{text}");
            }
        }
    }
}

fn dead_token_401() -> ResponseTemplate {
    ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#)
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_reaches_logs_debug_output_or_errors_across_refresh_failure_and_reauthorization() {
    let (captured, _guard) = capture_logs();

    let server = MockServer::start().await;
    // /api/one accepts the first refreshed token; /api/two and /api/three reject everything.
    Mock::given(path("/api/one"))
        .and(header("authorization", "Bearer SECRET-ACCESS-2"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(path("/api/four"))
        .and(header("authorization", "Bearer SECRET-ACCESS-4"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(path("/api/one")).respond_with(dead_token_401()).mount(&server).await;
    Mock::given(path("/api/two")).respond_with(dead_token_401()).mount(&server).await;
    Mock::given(path("/api/three")).respond_with(dead_token_401()).mount(&server).await;
    // Refresh 1 succeeds; refresh 2 is a transient 500; refresh 3 finds the refresh token dead.
    Mock::given(path("/token"))
        .and(body_string_contains("refresh_token=SECRET-REFRESH-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "SECRET-ACCESS-2",
            "refresh_token": "SECRET-REFRESH-2",
            "id_token": "SECRET-ID-TOKEN",
            "expires_in": 3600,
            "token_type": "Bearer",
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .and(body_string_contains("refresh_token=SECRET-REFRESH-2"))
        .respond_with(ResponseTemplate::new(500).set_body_json(serde_json::json!({"error": "server_error"})))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .and(body_string_contains("refresh_token=SECRET-REFRESH-2"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": "invalid_grant", "error_description": "refresh token revoked"
        })))
        .expect(1)
        .mount(&server)
        .await;

    let clock = ManualClock::new(SystemTime::now());
    let grant = RefreshTokenGrant::new(format!("{}/token", server.uri()))
        .client_id("client")
        .client_secret("SECRET-CLIENT-1")
        .client_auth(reqwest_token_refresh::ClientAuth::RequestBody)
        .param("assertion", "SECRET-PARAM-1")
        .clock(clock.clone());
    let store = MemoryStore::new();
    let initial = TokenSet::new("SECRET-ACCESS-1")
        .with_refresh_token("SECRET-REFRESH-1")
        .with_expires_at(SystemTime::now() + Duration::from_secs(3600));
    let builder = TokenRefresh::builder(grant.clone())
        .initial_tokens(initial.clone())
        .allow_origin(server.uri())
        .store(store.clone())
        .clock(clock.clone())
        // The API here rejects every token it is not told to accept: each request refreshes.
        .min_refresh_interval(Duration::ZERO)
        .on_refresh(|key, tokens| tracing::info!(target: "reqwest_token_refresh::test_hook", %key, ?tokens, "hook"));
    let mut shown = Shown::default();
    shown.debug("the builder", &builder);
    let auth = builder.build().unwrap();
    let client = client_with(&auth);
    let url = |route: &str| format!("{}/api/{route}", server.uri());

    // A refresh that succeeds.
    assert_eq!(client.get(url("one")).send().await.unwrap().status(), 200);
    shown.debug("auth.tokens()", &auth.tokens());
    shown.debug("auth.state() when ready", &auth.state());
    shown.debug("the layer", &auth);

    // A transient 500 from the token endpoint.
    let transient = client.get(url("two")).send().await.unwrap_err();
    assert!(matches!(Error::from_middleware(&transient), Some(Error::Refresh { .. })), "{transient}");
    shown.error("the transient error", &transient);
    shown.debug("auth.state() cooling down", &auth.state());

    // After the cool-down, the refresh token is dead.
    clock.advance(Duration::from_secs(120));
    let terminal = client.get(url("three")).send().await.unwrap_err();
    assert!(Error::from_middleware(&terminal).unwrap().is_reauthorization_required(), "{terminal}");
    shown.error("the terminal error", &terminal);
    shown.error("our terminal error", Error::from_middleware(&terminal).unwrap());
    let fail_fast = client.get(url("three")).send().await.unwrap_err();
    shown.error("the fail-fast error", &fail_fast);
    shown.debug("auth.state() terminal", &auth.state());

    // The user authorizes again.
    auth.set_tokens(TokenSet::new("SECRET-ACCESS-4").with_refresh_token("SECRET-REFRESH-4")).await.unwrap();
    assert_eq!(client.get(url("four")).send().await.unwrap().status(), 200);
    let rejected = auth.set_tokens(TokenSet::new("SECRET-ACCESS-4\n").with_refresh_token("SECRET-REFRESH-4")).await;
    shown.error("set_tokens's error", &rejected.unwrap_err());

    shown.debug("the layer at the end", &auth);
    shown.debug("the grant", &grant);
    shown.debug(
        "a client-credentials source",
        &ClientCredentials::new("https://p.example/token").client_secret("SECRET-CLIENT-1"),
    );
    shown.debug("the store", &store);
    shown.debug("the initial tokens", &initial);
    shown.debug("auth.tokens() at the end", &auth.tokens());
    shown.debug("the stats", &auth.stats());
    shown.assert_no_secret();
    server.verify().await;

    let logs = captured.text();
    // The capture worked: each step of the scenario left a line.
    for expected in ["token refreshed", "refresh failed", "re-authorization required", "tokens set", "hook"] {
        assert!(logs.contains(expected), "no {expected:?} line in the captured logs:\n{logs}");
    }
    assert!(logs.lines().all(|line| line.contains("reqwest_token_refresh")), "only this crate's events:\n{logs}");
    // One token call succeeded: one "token refreshed", not one per set of tokens installed.
    assert_eq!(logs.matches("token refreshed").count(), 1, "{logs}");
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} leaked in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_endpoint_error_page_that_echoes_the_request_puts_no_secret_in_logs_or_errors() {
    let (captured, _guard) = capture_logs();

    let server = MockServer::start().await;
    Mock::given(path("/api")).respond_with(dead_token_401()).mount(&server).await;
    // A gateway's debug page that echoes the request it could not forward, form body included.
    Mock::given(path("/token"))
        .respond_with(|request: &wiremock::Request| {
            let echoed = String::from_utf8_lossy(&request.body).into_owned();
            ResponseTemplate::new(502).set_body_raw(format!("upstream timed out; request was: {echoed}"), "text/plain")
        })
        .expect(1)
        .mount(&server)
        .await;
    let grant = RefreshTokenGrant::new(format!("{}/token", server.uri()))
        .client_id("client")
        .client_secret("SECRET-CLIENT-1")
        .client_auth(reqwest_token_refresh::ClientAuth::RequestBody);
    let auth = TokenRefresh::builder(grant)
        .initial_tokens(TokenSet::new("SECRET-ACCESS-1").with_refresh_token("SECRET-REFRESH-1"))
        .allow_origin(server.uri())
        .build()
        .unwrap();

    let err = client_with(&auth).get(format!("{}/api", server.uri())).send().await.unwrap_err();

    let mut shown = Shown::default();
    shown.error("the transient error", &err);
    shown.debug("auth.state()", &auth.state());
    let logs = captured.text();
    assert!(logs.contains("refresh failed"), "the failure was logged:\n{logs}");
    shown.0.push(("the logs".to_owned(), logs));
    shown.assert_no_secret();
    server.verify().await;
}

/// Contract point 20: what a provider echoes back is redacted wherever it appears.
mod echoed {
    use super::*;

    /// The secrets the layer holds in these scenarios, with who holds them.
    const HELD: &[(&str, &str)] = &[
        ("refresh token", "SECRET-REFRESH-1"),
        ("client secret", "SECRET-CLIENT-1"),
        ("access token", "SECRET-ACCESS-1"),
    ];

    /// Where in its answer the token endpoint echoes a secret.
    #[derive(Debug, Clone, Copy)]
    enum Echo {
        Description,
        Uri,
        ExtraField,
        NotJson,
    }

    impl Echo {
        const ALL: [Echo; 4] = [Echo::Description, Echo::Uri, Echo::ExtraField, Echo::NotJson];

        fn answer(self, status: u16, code: &str, secret: &str) -> ResponseTemplate {
            let json = |body: serde_json::Value| ResponseTemplate::new(status).set_body_json(body);
            match self {
                // Spring Security OAuth's wording.
                Echo::Description => json(serde_json::json!({
                    "error": code, "error_description": format!("Invalid refresh token: {secret}"),
                })),
                Echo::Uri => json(serde_json::json!({
                    "error": code, "error_uri": format!("https://provider.example/errors?presented={secret}"),
                })),
                Echo::ExtraField => json(serde_json::json!({"error": code, "hint": format!("you sent {secret}")})),
                Echo::NotJson => ResponseTemplate::new(status)
                    .set_body_raw(format!("{code}: Invalid refresh token: {secret}"), "text/plain"),
            }
        }

        /// Whether the echo is shown at all (redacted), rather than left out: an unknown field of
        /// an OAuth error is not kept.
        fn is_shown(self) -> bool {
            !matches!(self, Echo::ExtraField)
        }
    }

    /// One scenario: a dead access token, and a token endpoint that answers `status`/`code`
    /// echoing `secret` as `echo` says. Returns everything the layer showed.
    async fn scenario(status: u16, code: &str, secret: &str, echo: Echo) -> Shown {
        let server = MockServer::start().await;
        Mock::given(path("/api")).respond_with(dead_token_401()).mount(&server).await;
        Mock::given(path("/token")).respond_with(echo.answer(status, code, secret)).expect(1).mount(&server).await;
        let grant = RefreshTokenGrant::new(format!("{}/token", server.uri()))
            .client_id("client")
            .client_secret("SECRET-CLIENT-1");
        let auth = TokenRefresh::builder(grant)
            .initial_tokens(TokenSet::new("SECRET-ACCESS-1").with_refresh_token("SECRET-REFRESH-1"))
            .allow_origin(server.uri())
            .on_reauthorization_required(|key, err| {
                tracing::warn!(target: "reqwest_token_refresh::test_hook", %key, %err, ?err, "hook");
            })
            .build()
            .unwrap();
        let client = client_with(&auth);
        let url = format!("{}/api", server.uri());

        let mut shown = Shown::default();
        let bounded = |request| tokio::time::timeout(Duration::from_secs(10), request);
        let first = bounded(client.get(&url).send()).await.expect("bounded").unwrap_err();
        let ours = Error::from_middleware(&first).expect("our error");
        assert_eq!(ours.is_reauthorization_required(), status == 400, "{echo:?}: {ours}");
        if echo.is_shown() {
            let text = format!("{ours:?}");
            assert!(text.contains("[redacted]"), "{echo:?}: the echo is shown, redacted: {text}");
        }
        shown.error("the first error", &first);
        shown.error("our first error", ours);
        shown.debug("auth.state()", &auth.state());
        // The next request fails fast (terminal) or in the cool-down (transient).
        // (Or, in the cool-down, goes out with the old token and comes back with its 401.)
        match bounded(client.get(&url).send()).await.expect("bounded") {
            Err(next) => shown.error("the next error", &next),
            Ok(response) => assert_eq!(response.status(), 401, "{echo:?}"),
        }
        shown.debug("auth.state() after", &auth.state());
        shown.debug("the layer", &auth);
        server.verify().await;
        shown
    }

    async fn no_echoed_secret_is_shown(status: u16, code: &str) {
        let (captured, _guard) = capture_logs();
        for (holder, secret) in HELD {
            for echo in Echo::ALL {
                let mut shown = scenario(status, code, secret, echo).await;
                let logs = std::mem::take(&mut *captured.0.lock());
                let logs = String::from_utf8_lossy(&logs).into_owned();
                assert!(logs.contains("refresh failed") || logs.contains("re-authorization required"), "{logs}");
                shown.0.push((format!("the logs ({holder} in {echo:?}, {status})"), logs));
                for (what, text) in &shown.0 {
                    assert!(
                        !text.contains(secret),
                        "the {holder} echoed in {echo:?} of a {status} leaked in {what}:\n{text}"
                    );
                }
                shown.assert_no_secret();
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_secret_echoed_by_an_invalid_grant_answer_is_shown_in_errors_state_or_logs() {
        no_echoed_secret_is_shown(400, "invalid_grant").await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_secret_echoed_by_a_temporarily_unavailable_answer_is_shown_in_errors_state_or_logs() {
        no_echoed_secret_is_shown(503, "temporarily_unavailable").await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn echoed_basic_credentials_are_not_shown() {
        let (captured, _guard) = capture_logs();
        let server = MockServer::start().await;
        Mock::given(path("/api")).respond_with(dead_token_401()).mount(&server).await;
        // A gateway that quotes the headers of the request it could not forward.
        Mock::given(path("/token"))
            .respond_with(|request: &wiremock::Request| {
                let authorization = request.headers.get("authorization").unwrap().to_str().unwrap().to_owned();
                ResponseTemplate::new(502)
                    .set_body_raw(format!("bad gateway; Authorization: {authorization}"), "text/plain")
            })
            .expect(1)
            .mount(&server)
            .await;
        let grant = RefreshTokenGrant::new(format!("{}/token", server.uri()))
            .client_id("client")
            .client_secret("SECRET-CLIENT-1");
        let auth = TokenRefresh::builder(grant)
            .initial_tokens(TokenSet::new("SECRET-ACCESS-1").with_refresh_token("SECRET-REFRESH-1"))
            .allow_origin(server.uri())
            .build()
            .unwrap();

        let request = client_with(&auth).get(format!("{}/api", server.uri())).send();
        let err = tokio::time::timeout(Duration::from_secs(10), request).await.unwrap().unwrap_err();

        // base64("client:SECRET-CLIENT-1")
        let credentials = "Y2xpZW50OlNFQ1JFVC1DTElFTlQtMQ==";
        let mut shown = Shown::default();
        shown.error("the error", &err);
        shown.debug("auth.state()", &auth.state());
        shown.0.push(("the logs".to_owned(), captured.text()));
        assert!(shown.0[0].1.contains("Authorization: Basic [redacted]"), "{}", shown.0[0].1);
        for (what, text) in &shown.0 {
            assert!(!text.contains(credentials), "the Basic credentials leaked in {what}:\n{text}");
        }
        shown.assert_no_secret();
        server.verify().await;
    }
}

//! The fault matrix (issue 7): each way the token endpoint or the API can misbehave, one named test
//! each, against the mock provider (and a mock mounted on its server where the provider cannot
//! express the fault).
//!
//! Each case pins down three things: what the caller sees (a typed error through
//! `Error::from_middleware`, or the server's own response, byte for byte), how many token calls
//! were made, and that the first request after the fault clears succeeds. Everything runs on one
//! driven `ManualClock` (layer, grant and provider), so cool-downs pass without sleeping: the
//! assertions are on counts and outcomes, never on timings.
//!
//! Token endpoint: connection refused; a hang past the timeout; the answer lost after the tokens
//! were issued and rotated (with and without the provider's grace, and without rotation); 500, 502,
//! 503 (also with `Retry-After` and with a page larger than the read cap); 429 with `Retry-After`
//! in seconds, as a date, as a date in the past, absurdly long; 200 with HTML, with JSON lacking
//! `access_token`, with `expires_in` as a string, zero, negative, 10^12; 10 MiB answers; and a
//! table of further unusable 200 answers. API: 401s with malformed `WWW-Authenticate` headers,
//! several challenges, non-UTF-8 bytes, 1 MiB bodies.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::HeaderValue;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::testkit::{Fault, MockProvider, MockProviderBuilder};
use reqwest_token_refresh::{
    CLASSIFY_BODY_LIMIT, Clock, DEFAULT_MAX_RETRY_AFTER, DEFAULT_MIN_BACKOFF, Error, ManualClock, RefreshError,
    RefreshOn, RefreshTokenGrant, TokenRefresh, TokenRefreshBuilder, TokenSet, TokenSource, TokenState,
};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::client_with;

/// A provider, a layer holding tokens it issued, and a client, all on one driven clock.
struct Rig {
    clock: ManualClock,
    provider: MockProvider,
    auth: TokenRefresh,
    client: ClientWithMiddleware,
}

/// A clock at a whole second, so that an HTTP date (one-second precision) names an exact instant.
fn whole_second_clock() -> ManualClock {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    ManualClock::new(UNIX_EPOCH + Duration::from_secs(now))
}

/// A rig whose layer calls `source` (given the provider and the clock) for tokens.
async fn rig_with_source(
    provider: MockProviderBuilder,
    source: impl FnOnce(&MockProvider, &ManualClock) -> Arc<dyn TokenSource>,
    layer: impl FnOnce(TokenRefreshBuilder) -> TokenRefreshBuilder,
) -> Rig {
    let clock = whole_second_clock();
    let provider = provider.clock(clock.clone()).start().await;
    let builder = TokenRefresh::builder_arc(source(&provider, &clock))
        .initial_tokens(provider.issue_tokens())
        .allow_origin(provider.uri())
        .clock(clock.clone());
    let auth = layer(builder).build().expect("the layer builds");
    let client = client_with(&auth);
    Rig { clock, provider, auth, client }
}

/// A rig whose layer refreshes through a `RefreshTokenGrant` at the provider, set up by `grant`.
async fn rig_with(
    provider: MockProviderBuilder,
    grant: impl FnOnce(RefreshTokenGrant) -> RefreshTokenGrant,
    layer: impl FnOnce(TokenRefreshBuilder) -> TokenRefreshBuilder,
) -> Rig {
    let source = |provider: &MockProvider, clock: &ManualClock| -> Arc<dyn TokenSource> {
        Arc::new(grant(RefreshTokenGrant::new(provider.token_url()).clock(clock.clone())))
    };
    rig_with_source(provider, source, layer).await
}

/// A rig with the defaults: a standard rotating provider, a plain grant, a default layer.
async fn rig() -> Rig {
    rig_with(MockProvider::builder(), |g| g, |l| l).await
}

impl Rig {
    fn url(&self) -> String {
        self.provider.api_url("me")
    }

    async fn get(&self) -> Result<reqwest::Response, reqwest_middleware::Error> {
        self.client.get(self.url()).send().await
    }

    /// Calls to the token source, as the layer counts them (whether or not they reached a server).
    fn token_calls(&self) -> u64 {
        self.auth.stats().refreshes
    }

    /// The path of the provider's token endpoint, to mount a fault of one's own on it.
    fn token_path(&self) -> String {
        reqwest::Url::parse(&self.provider.token_url()).expect("a URL").path().to_owned()
    }

    /// Mounts `answer` on the token endpoint for the next `times` token calls, ahead of the
    /// provider's own handler.
    async fn token_endpoint_answers(&self, answer: ResponseTemplate, times: u64) {
        Mock::given(method("POST"))
            .and(path(self.token_path()))
            .respond_with(answer)
            .up_to_n_times(times)
            .with_priority(1)
            .mount(self.provider.server())
            .await;
    }

    /// Mounts `answer` on the API's `/api/me` for the next `times` requests, ahead of the
    /// provider's own handler.
    async fn api_answers(&self, answer: ResponseTemplate, times: u64) {
        Mock::given(path("/api/me"))
            .respond_with(answer)
            .up_to_n_times(times)
            .with_priority(1)
            .mount(self.provider.server())
            .await;
    }

    /// The next request meets a dead access token, so it needs a token call.
    fn expire(&self) {
        self.provider.expire_access_tokens();
    }

    /// The first request fails with a transient error, which is returned; the layer cools down for
    /// `cool_down` and a request during it fails fast with no token call; once it has passed, the
    /// next request refreshes and succeeds. `token_calls` counts the calls in each step.
    async fn transient_fault(&self, cool_down: Duration) -> Error {
        assert_eq!(self.token_calls(), 0);
        let err = self.get().await.expect_err("the refresh failed, so the request fails");
        let ours = Error::from_middleware(&err).unwrap_or_else(|| panic!("not our error: {err:?}")).clone();
        assert!(matches!(ours, Error::Refresh { .. }), "a transient error: {ours:?}");
        assert_eq!(self.token_calls(), 1, "one token call");
        match self.auth.state() {
            TokenState::CoolingDown { retry_after, .. } => assert_eq!(retry_after, cool_down, "the cool-down"),
            other => panic!("expected a cool-down, got {other:?}"),
        }

        let err = self.get().await.expect_err("still cooling down");
        match Error::from_middleware(&err) {
            Some(Error::Refresh { source: RefreshError::CoolingDown { retry_after }, .. }) => {
                assert_eq!(*retry_after, cool_down)
            }
            other => panic!("expected a cool-down error, got {other:?}"),
        }
        assert_eq!(self.token_calls(), 1, "no token call during the cool-down");

        self.clock.advance(cool_down);
        self.recovers(2).await;
        ours
    }

    /// The next request succeeds, and `token_calls` have been made in all.
    async fn recovers(&self, token_calls: u64) {
        let response = self.get().await.expect("the fault has cleared");
        assert_eq!(response.status(), 200, "the request after the fault succeeds");
        assert_eq!(self.token_calls(), token_calls);
        assert!(matches!(self.auth.state(), TokenState::Ready { .. }), "{:?}", self.auth.state());
    }
}

/// The `RefreshError` inside a transient error.
fn source(err: &Error) -> &RefreshError {
    match err {
        Error::Refresh { source, .. } => source,
        other => panic!("expected Error::Refresh, got {other:?}"),
    }
}

/// The `reqwest::Error` inside a transport error.
fn transport(err: &Error) -> &reqwest::Error {
    match source(err) {
        RefreshError::Transport(inner) => inner.downcast_ref::<reqwest::Error>().expect("a reqwest error"),
        other => panic!("expected a transport error, got {other:?}"),
    }
}

/// `reason` of an `InvalidResponse`, after checking its excerpt is capped.
fn invalid_response(err: &Error) -> &str {
    match source(err) {
        RefreshError::InvalidResponse { reason, body, .. } => {
            assert!(body.chars().count() <= 513, "the excerpt is capped: {} characters", body.chars().count());
            reason
        }
        other => panic!("expected an invalid response, got {other:?}"),
    }
}

/// A raw 200 answer.
fn answer_200(content_type: &str, body: impl Into<Vec<u8>>) -> Fault {
    Fault::Body { status: 200, content_type: content_type.to_owned(), body: body.into() }
}

// --- The token endpoint ---

/// A token source that goes to a port nothing listens on while `down` is set, and to the provider
/// once it is cleared: the token endpoint coming back after refusing connections.
#[derive(Debug)]
struct Refusing {
    down: Arc<AtomicBool>,
    dead: RefreshTokenGrant,
    live: RefreshTokenGrant,
}

#[async_trait]
impl TokenSource for Refusing {
    async fn fetch(&self, current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
        if self.down.load(Ordering::SeqCst) { self.dead.fetch(current).await } else { self.live.fetch(current).await }
    }
}

#[tokio::test]
async fn token_endpoint_refusing_connections_is_transient_and_the_next_refresh_succeeds() {
    let down = Arc::new(AtomicBool::new(true));
    // Bind a port, note it, close it: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let flag = down.clone();
    let source = move |provider: &MockProvider, clock: &ManualClock| -> Arc<dyn TokenSource> {
        Arc::new(Refusing {
            down: flag,
            dead: RefreshTokenGrant::new(format!("http://{closed}/oauth/token")).clock(clock.clone()),
            live: RefreshTokenGrant::new(provider.token_url()).clock(clock.clone()),
        })
    };
    let rig = rig_with_source(MockProvider::builder(), source, |l| l).await;
    rig.expire();

    let err = rig.get().await.unwrap_err();
    let ours = Error::from_middleware(&err).expect("our error");
    assert!(transport(ours).is_connect(), "a connection error: {ours:?}");
    assert!(!rig.auth.state().is_reauthorization_required());
    assert_eq!((rig.token_calls(), rig.provider.stats().token_calls), (1, 0));

    down.store(false, Ordering::SeqCst);
    rig.clock.advance(DEFAULT_MIN_BACKOFF);
    rig.recovers(2).await;
    assert_eq!(rig.provider.stats().token_calls, 1);
}

#[tokio::test]
async fn token_endpoint_hanging_past_the_timeout_is_transient_and_the_next_refresh_succeeds() {
    let rig = rig_with(MockProvider::builder(), |g| g.timeout(Duration::from_millis(300)), |l| l).await;
    rig.token_endpoint_answers(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)), 1).await;
    rig.expire();

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    assert!(transport(&err).is_timeout(), "a timeout: {err:?}");
    assert_eq!(rig.provider.stats().token_calls, 1, "only the call after the hang reached the provider's handler");
}

#[tokio::test]
async fn answer_lost_after_rotation_with_the_providers_grace_the_next_refresh_succeeds() {
    let provider = MockProvider::builder().previous_refresh_token_grace(true);
    let rig = rig_with(provider, |g| g.timeout(Duration::from_millis(300)), |l| l).await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, Fault::LoseAnswer);

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    assert!(transport(&err).is_timeout(), "{err:?}");
    let stats = rig.provider.stats();
    assert_eq!((stats.token_calls, stats.answers_lost, stats.tokens_issued), (2, 1, 2), "{stats:?}");
    assert_eq!(stats.grace_refreshes, 1, "the spent refresh token was honoured once more");
    assert_eq!(stats.reuse_detected, 0);
}

/// Without a grace period the lost answer costs the user's authorization: the provider has
/// spent the refresh token the layer still holds, and sees its second use as replay (RFC 9700
/// §4.14.2). No client can tell a lost answer from one never sent, so the layer does what it can:
/// it reports the loss as transient, and the refused retry as terminal, and stops there.
#[tokio::test]
async fn answer_lost_after_rotation_without_grace_the_user_must_authorize_again() {
    let rig = rig_with(MockProvider::builder(), |g| g.timeout(Duration::from_millis(300)), |l| l).await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, Fault::LoseAnswer);

    let err = rig.get().await.unwrap_err();
    assert!(transport(Error::from_middleware(&err).unwrap()).is_timeout(), "{err:?}");
    assert_eq!(rig.token_calls(), 1);

    rig.clock.advance(DEFAULT_MIN_BACKOFF);
    let err = rig.get().await.unwrap_err();
    match Error::from_middleware(&err) {
        Some(Error::ReauthorizationRequired { reason, .. }) => {
            assert_eq!(reason.oauth_error().map(|e| e.error.as_str()), Some("invalid_grant"), "{reason}")
        }
        other => panic!("expected re-authorization, got {other:?}"),
    }
    let stats = rig.provider.stats();
    assert_eq!((stats.token_calls, stats.reuse_detected, stats.families_revoked), (2, 1, 1), "{stats:?}");

    // Terminal: later requests fail fast, with no token call, until new tokens are installed.
    let err = rig.get().await.unwrap_err();
    assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
    assert_eq!(rig.token_calls(), 2);
    rig.auth.set_tokens(rig.provider.issue_tokens()).await.unwrap();
    rig.recovers(2).await;
}

#[tokio::test]
async fn answer_lost_without_rotation_the_next_refresh_succeeds() {
    let provider = MockProvider::builder().rotate_refresh_tokens(false);
    let rig = rig_with(provider, |g| g.timeout(Duration::from_millis(300)), |l| l).await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, Fault::LoseAnswer);

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    assert!(transport(&err).is_timeout(), "{err:?}");
    assert_eq!(rig.provider.stats().reuse_detected, 0);
}

/// A status fault: a transient `Protocol` error with that status, the minimum backoff, recovery.
async fn status_fault(status: u16) {
    let rig = rig().await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, Fault::Status(status));

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    match source(&err) {
        RefreshError::Protocol { status: got, error, .. } => {
            assert_eq!(got.as_u16(), status);
            assert_eq!(error.as_ref().map(|e| e.error.as_str()), Some("server_error"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.provider.stats().token_calls, 2);
}

#[tokio::test]
async fn token_endpoint_500_is_transient_and_the_next_refresh_succeeds() {
    status_fault(500).await;
}

#[tokio::test]
async fn token_endpoint_502_is_transient_and_the_next_refresh_succeeds() {
    status_fault(502).await;
}

#[tokio::test]
async fn token_endpoint_503_is_transient_and_the_next_refresh_succeeds() {
    status_fault(503).await;
}

#[tokio::test]
async fn token_endpoint_503_with_retry_after_cools_down_that_long() {
    let rig = rig().await;
    let answer = ResponseTemplate::new(503).insert_header("retry-after", "120").set_body_string("down for maintenance");
    rig.token_endpoint_answers(answer, 1).await;
    rig.expire();

    let err = rig.transient_fault(Duration::from_secs(120)).await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(rig.provider.stats().token_calls, 1, "the 503 came from the mounted fault");
}

/// A maintenance page can be large (inline styles, images): larger than the token client reads.
/// The status and `Retry-After` arrive before the body, and still count.
#[tokio::test]
async fn token_endpoint_503_with_retry_after_and_a_page_over_the_read_cap_still_cools_down_that_long() {
    let rig = rig().await;
    let page = format!("<html><body>{}</body></html>", "maintenance ".repeat(20_000));
    assert!(page.len() > reqwest_token_refresh::DEFAULT_MAX_RESPONSE_BYTES);
    let answer = ResponseTemplate::new(503).insert_header("retry-after", "120").set_body_raw(page, "text/html");
    rig.token_endpoint_answers(answer, 1).await;
    rig.expire();

    let err = rig.transient_fault(Duration::from_secs(120)).await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn token_endpoint_429_with_retry_after_in_seconds_cools_down_that_long() {
    let rig = rig().await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, Fault::RateLimited { retry_after: Duration::from_secs(7) });

    let err = rig.transient_fault(Duration::from_secs(7)).await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "the caller is told when to retry");
    match source(&err) {
        RefreshError::Protocol { status, .. } => assert_eq!(status.as_u16(), 429),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn token_endpoint_429_with_retry_after_as_an_http_date_cools_down_until_then() {
    let rig = rig().await;
    let until = httpdate::fmt_http_date(rig.clock.now() + Duration::from_secs(120));
    let answer = ResponseTemplate::new(429)
        .insert_header("retry-after", until.as_str())
        .set_body_raw(json!({"error": "rate_limited"}).to_string(), "application/json");
    rig.token_endpoint_answers(answer, 1).await;
    rig.expire();

    let err = rig.transient_fault(Duration::from_secs(120)).await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn token_endpoint_429_with_retry_after_as_a_date_in_the_past_backs_off_the_minimum() {
    let rig = rig().await;
    let then = httpdate::fmt_http_date(rig.clock.now() - Duration::from_secs(3600));
    let answer = ResponseTemplate::new(429).insert_header("retry-after", then.as_str());
    rig.token_endpoint_answers(answer, 1).await;
    rig.expire();

    rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
}

#[tokio::test]
async fn token_endpoint_429_with_an_unreadable_retry_after_backs_off_the_minimum() {
    let rig = rig().await;
    let answer = ResponseTemplate::new(429).insert_header("retry-after", "soon-ish");
    rig.token_endpoint_answers(answer, 1).await;
    rig.expire();

    rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
}

/// `DEFAULT_MAX_RETRY_AFTER` exists "so a broken header cannot stop refreshes for days"; the
/// caller, who is told when to retry, must be told the capped wait too.
#[tokio::test]
async fn token_endpoint_429_with_an_absurd_retry_after_is_capped_for_the_layer_and_the_caller() {
    let rig = rig().await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, Fault::RateLimited { retry_after: Duration::from_secs(999_999_999) });

    let err = rig.transient_fault(DEFAULT_MAX_RETRY_AFTER).await;
    assert_eq!(err.retry_after(), Some(DEFAULT_MAX_RETRY_AFTER), "the caller is told the wait the layer keeps");
}

#[tokio::test]
async fn token_endpoint_200_with_html_is_a_typed_error_and_the_next_refresh_succeeds() {
    let rig = rig().await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, answer_200("text/html", "<html><h1>Maintenance</h1></html>"));

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    assert!(invalid_response(&err).contains("not JSON"), "{err:?}");
}

#[tokio::test]
async fn token_endpoint_200_with_json_missing_access_token_is_a_typed_error_and_the_next_refresh_succeeds() {
    let rig = rig().await;
    rig.expire();
    let body = json!({"token_type": "bearer", "expires_in": 3600}).to_string();
    rig.provider.fail_next_token_calls(1, answer_200("application/json", body));

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    assert_eq!(invalid_response(&err), "`access_token` is missing");
}

/// A token answer with tokens the provider really issued (so the API accepts them), and the given
/// `expires_in`.
fn issued_answer(provider: &MockProvider, expires_in: serde_json::Value) -> (TokenSet, Fault) {
    let issued = provider.issue_tokens();
    let body = json!({
        "access_token": issued.access_token().secret(),
        "refresh_token": issued.refresh_token().expect("a refresh token").secret(),
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    (issued, answer_200("application/json", body.to_string()))
}

#[tokio::test]
async fn expires_in_as_a_string_is_read_as_seconds() {
    let rig = rig().await;
    rig.expire();
    let (issued, answer) = issued_answer(&rig.provider, json!("3600"));
    rig.provider.fail_next_token_calls(1, answer);

    let response = rig.get().await.expect("the refresh succeeded");
    assert_eq!(response.status(), 200);
    assert_eq!(rig.token_calls(), 1);
    let tokens = rig.auth.tokens().unwrap();
    assert_eq!(tokens.access_token(), issued.access_token());
    let now = rig.clock.now();
    assert_eq!(tokens.expires_at(), Some(now + Duration::from_secs(3600)));
    rig.recovers(1).await;
}

#[tokio::test]
async fn expires_in_zero_means_no_known_expiry_and_the_token_is_used_until_rejected() {
    let rig = rig().await;
    rig.expire();
    let (_, answer) = issued_answer(&rig.provider, json!(0));
    rig.provider.fail_next_token_calls(1, answer);

    assert_eq!(rig.get().await.unwrap().status(), 200);
    assert_eq!(rig.auth.tokens().unwrap().expires_at(), None, "no known expiry");
    for _ in 0..5 {
        assert_eq!(rig.get().await.unwrap().status(), 200);
    }
    assert_eq!(rig.token_calls(), 1, "not a refresh per request");

    // Two hours on, the provider has expired the token: one 401, one refresh, and on.
    rig.clock.advance(Duration::from_secs(2 * 3600));
    rig.recovers(2).await;
}

/// An unusable `expires_in` fails the refresh, but the new refresh token in the answer is kept
/// (the provider may have spent the old one), and the next refresh, after the cool-down, uses it.
async fn unusable_expires_in(expires_in: serde_json::Value, reason: &str) {
    let rig = rig().await;
    rig.expire();
    let (issued, answer) = issued_answer(&rig.provider, expires_in);
    rig.provider.fail_next_token_calls(1, answer);

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    assert!(invalid_response(&err).contains(reason), "{err:?}");
    let last = rig.provider.token_requests().pop().expect("a token request");
    let sent = form_urlencoded::parse(&last.body).find(|(name, _)| name == "refresh_token").map(|(_, v)| v);
    assert_eq!(sent.as_deref(), issued.refresh_token().map(|r| r.secret()), "the next refresh spent the new one");
}

#[tokio::test]
async fn expires_in_negative_is_a_typed_error_and_the_new_refresh_token_is_kept() {
    unusable_expires_in(json!(-60), "negative").await;
}

#[tokio::test]
async fn expires_in_of_10_pow_12_is_a_typed_error_and_the_new_refresh_token_is_kept() {
    unusable_expires_in(json!(1_000_000_000_000_u64), "ten years").await;
}

/// 10 MiB of well-formed start and filler: the token client stops reading at its cap.
fn ten_mib_of_json() -> Vec<u8> {
    let mut body = br#"{"access_token":"SECRET-ACCESS-10MIB","padding":""#.to_vec();
    body.resize(10 * 1024 * 1024, b'a');
    body.extend_from_slice(br#""}"#);
    body
}

#[tokio::test]
async fn token_endpoint_200_with_a_10_mib_body_is_a_typed_error_and_the_next_refresh_succeeds() {
    let rig = rig().await;
    rig.expire();
    rig.provider.fail_next_token_calls(1, answer_200("application/json", ten_mib_of_json()));

    let err = rig.transient_fault(DEFAULT_MIN_BACKOFF).await;
    assert!(invalid_response(&err).contains("larger than"), "{err:?}");
    assert!(!format!("{err:?}").contains("SECRET"));
}

/// Contract point 5: a 400 from a refresh-token grant whose body is not a retryable error is
/// terminal. A body too large to read is not a retryable error.
#[tokio::test]
async fn token_endpoint_400_with_a_10_mib_body_is_terminal() {
    let rig = rig().await;
    rig.expire();
    rig.provider.fail_next_token_calls(
        1,
        Fault::Body { status: 400, content_type: "text/html".into(), body: vec![b'x'; 10 * 1024 * 1024] },
    );

    let err = rig.get().await.unwrap_err();
    let ours = Error::from_middleware(&err).expect("our error");
    assert!(ours.is_reauthorization_required(), "a 400 refusal is terminal: {ours:?}");
    assert_eq!(rig.token_calls(), 1);
    rig.auth.set_tokens(rig.provider.issue_tokens()).await.unwrap();
    rig.recovers(1).await;
}

/// 200 answers that are not usable token responses, each with the start of the reason it must
/// give. Every one is a typed, transient error, and none leaves the layer stuck.
const UNUSABLE_ANSWERS: &[(&str, &str)] = &[
    ("", "not JSON"),
    ("   ", "not JSON"),
    ("null", "not a JSON object"),
    ("[]", "not a JSON object"),
    (r#""access_token""#, "not a JSON object"),
    ("42", "not a JSON object"),
    (r#"{"access_token":null}"#, "`access_token` is not a string"),
    (r#"{"access_token":""}"#, "`access_token` is empty"),
    (r#"{"access_token":42}"#, "`access_token` is not a string"),
    (r#"{"access_token":["a"]}"#, "`access_token` is not a string"),
    (r#"{"access_token":"a","refresh_token":42}"#, "`refresh_token` is not a string"),
    (r#"{"access_token":"a","expires_in":"soon"}"#, "`expires_in` is the string"),
    (r#"{"access_token":"a","expires_in":"inf"}"#, "`expires_in` is not a finite number"),
    (r#"{"access_token":"a","expires_in":"NaN"}"#, "`expires_in` is not a finite number"),
    (r#"{"access_token":"a","expires_in":true}"#, "`expires_in` is not a number"),
    (r#"{"access_token":"a","expires_in":[3600]}"#, "`expires_in` is not a number"),
    (r#"{"access_token":"a","expires_in":{"s":1}}"#, "`expires_in` is not a number"),
    (r#"{"access_token":"a","expires_in":-0.5}"#, "`expires_in` is negative"),
    (r#"{"access_token":"a","expires_in":1e400}"#, "not JSON"),
    (r#"{"access_token":"a","expires_in":3600"#, "not JSON"),
    (r#"{"access_token":"a"}{"access_token":"b"}"#, "not JSON"),
    ("access_token=a&token_type=bearer&expires_in=3600", "not JSON"),
    (r#"callback({"access_token":"a"})"#, "not JSON"),
    // GitHub answers a dead refresh token with 200 and an error body: unusable, and transient
    // unless the grant maps it (`map_response`) to an OAuth error.
    (r#"{"error":"bad_refresh_token","error_description":"expired"}"#, "`access_token` is missing"),
    (r#"{"access_token":"a b"}"#, "position 1"),
    (r#"{"access_token":"a\u0000b"}"#, "position 1"),
    (r#"{"access_token":"caf\u00e9"}"#, "position 3"),
];

#[tokio::test]
async fn unusable_200_answers_are_typed_errors_and_never_stick() {
    let rig = rig().await;
    for (round, (body, reason)) in UNUSABLE_ANSWERS.iter().enumerate() {
        let round = round as u64;
        rig.expire();
        rig.provider.fail_next_token_calls(1, answer_200("application/json", *body));

        let err = rig.get().await.expect_err(body);
        let ours = Error::from_middleware(&err).unwrap_or_else(|| panic!("{body}: not our error: {err:?}"));
        let shown = invalid_response(ours);
        assert!(shown.contains(reason), "{body}: the reason {shown:?} should say {reason:?}");
        assert!(!rig.auth.state().is_reauthorization_required(), "{body}: a garbled answer is not a dead token");
        assert_eq!(rig.token_calls(), 2 * round + 1, "{body}");

        // The backoff starts again at the minimum after each success.
        rig.clock.advance(DEFAULT_MIN_BACKOFF);
        let response = rig.get().await.unwrap_or_else(|e| panic!("{body}: the next refresh failed: {e:?}"));
        assert_eq!(response.status(), 200, "{body}");
        assert_eq!(rig.token_calls(), 2 * round + 2, "{body}");
    }
}

// --- The API's 401s ---

/// What a response looked like to the caller.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    challenges: Vec<Vec<u8>>,
    body: Vec<u8>,
}

async fn seen(response: reqwest::Response) -> Seen {
    let challenges = response.headers().get_all("www-authenticate").iter().map(|v| v.as_bytes().to_vec()).collect();
    Seen { status: response.status().as_u16(), challenges, body: response.bytes().await.unwrap().to_vec() }
}

/// A 401 with these `WWW-Authenticate` lines and this body.
fn unauthorized(lines: &[&[u8]], body: &[u8]) -> ResponseTemplate {
    let mut answer = ResponseTemplate::new(401).set_body_raw(body.to_vec(), "application/octet-stream");
    for line in lines {
        answer = answer.append_header("www-authenticate", HeaderValue::from_bytes(line).expect("a header value"));
    }
    answer
}

/// The API answers the first request (and its retry, if any) with this 401. The caller gets that
/// 401 back exactly as sent: after one refresh and one retry when `refreshes`, untouched and with
/// no token call otherwise. The next request succeeds with no further token call.
async fn api_401(lines: &[&[u8]], body: &[u8], refresh_on: RefreshOn, refreshes: bool) {
    let rig = rig_with(MockProvider::builder(), |g| g, |l| l.refresh_on(refresh_on)).await;
    rig.api_answers(unauthorized(lines, body), if refreshes { 2 } else { 1 }).await;

    let response = rig.get().await.expect("the server's own answer");
    let got = seen(response).await;
    let sent = Seen { status: 401, challenges: lines.iter().map(|l| l.to_vec()).collect(), body: body.to_vec() };
    assert!(got == sent, "the caller sees the 401 as sent (status, challenges, {} body bytes)", body.len());
    let calls = u64::from(refreshes);
    let stats = rig.auth.stats();
    assert_eq!((stats.refreshes, stats.retries), (calls, calls), "{stats:?}");
    assert_eq!(rig.provider.stats().token_calls, calls);

    rig.recovers(calls).await;
}

#[tokio::test]
async fn api_401_with_an_unterminated_quote_still_reads_as_invalid_token() {
    api_401(&[br#"Bearer error="invalid_token"#], b"", RefreshOn::InvalidToken, true).await;
}

#[tokio::test]
async fn api_401_with_an_unterminated_quote_hiding_the_error_is_no_detail() {
    let line: &[u8] = br#"Bearer realm="x, error="insufficient_scope""#;
    api_401(&[line], b"", RefreshOn::InvalidTokenOrNoDetail, true).await;
    api_401(&[line], b"", RefreshOn::InvalidToken, false).await;
}

#[tokio::test]
async fn api_401_with_a_malformed_other_error_passes_through() {
    api_401(&[br#"Bearer error="insufficient_scope"#], b"", RefreshOn::InvalidTokenOrNoDetail, false).await;
}

#[tokio::test]
async fn api_401_with_garbage_glued_to_the_scheme_is_no_detail() {
    for line in
        [&br#"Bearer"invalid_token""#[..], b"Bearer=====", b", ,, ,", br#"error="invalid_token""#, b"@@@ ;;; ==="]
    {
        api_401(&[line], b"", RefreshOn::InvalidTokenOrNoDetail, true).await;
        api_401(&[line], b"", RefreshOn::InvalidToken, false).await;
    }
}

#[tokio::test]
async fn api_401_with_a_parameter_orphaned_by_an_empty_value_still_reads_as_invalid_token() {
    api_401(&[br#"Bearer realm=, error="invalid_token""#], b"", RefreshOn::InvalidToken, true).await;
}

#[tokio::test]
async fn api_401_with_several_challenges_on_one_line_finds_the_bearer_error() {
    let line: &[u8] =
        br#"Basic realm="a", Negotiate abc123==, DPoP algs="ES256 PS256", Bearer realm="b", error="invalid_token""#;
    api_401(&[line], b"", RefreshOn::InvalidToken, true).await;
}

#[tokio::test]
async fn api_401_with_several_challenge_lines_finds_the_bearer_error() {
    let lines: [&[u8]; 3] = [br#"Basic realm="a""#, b"Negotiate", br#"Bearer error="invalid_token""#];
    api_401(&lines, b"", RefreshOn::InvalidToken, true).await;
}

#[tokio::test]
async fn api_401_with_disagreeing_bearer_challenges_refreshes() {
    let lines: [&[u8]; 2] = [br#"Bearer error="insufficient_scope""#, br#"Bearer error="invalid_token""#];
    api_401(&lines, b"", RefreshOn::InvalidToken, true).await;
}

#[tokio::test]
async fn api_401_with_only_other_schemes_passes_through() {
    let lines: [&[u8]; 2] = [br#"Basic realm="a", DPoP error="invalid_token""#, b"Negotiate"];
    api_401(&lines, b"", RefreshOn::InvalidTokenOrNoDetail, false).await;
}

/// A Latin-1 `é` is neither ASCII nor UTF-8: the line cannot be read safely and is skipped, so the
/// 401 says nothing, and the default refreshes on that.
#[tokio::test]
async fn api_401_with_non_utf8_bytes_in_the_challenge_is_no_detail() {
    let line: &[u8] = b"Bearer realm=\"caf\xe9\", error=\"insufficient_scope\"";
    api_401(&[line], b"", RefreshOn::InvalidTokenOrNoDetail, true).await;
    api_401(&[line], b"", RefreshOn::InvalidToken, false).await;
}

#[tokio::test]
async fn api_401_with_non_utf8_bytes_on_one_line_still_reads_the_others() {
    let lines: [&[u8]; 2] =
        [b"Bearer realm=\"caf\xe9\", error=\"insufficient_scope\"", br#"Bearer error="invalid_token""#];
    api_401(&lines, b"", RefreshOn::InvalidToken, true).await;
}

#[tokio::test]
async fn api_401_with_utf8_text_in_the_challenge_is_read() {
    let line = "Bearer realm=\"café\", error=\"insufficient_scope\"".as_bytes();
    api_401(&[line], b"", RefreshOn::InvalidTokenOrNoDetail, false).await;
}

/// 1 MiB of bytes that are not all alike, so a dropped or repeated chunk shows.
fn one_mib() -> Vec<u8> {
    (0..1024 * 1024).map(|i: usize| (i.wrapping_mul(31) ^ (i >> 9)) as u8).collect()
}

#[tokio::test]
async fn api_401_with_a_1_mib_body_and_no_challenge_refreshes_and_returns_the_body_intact() {
    api_401(&[], &one_mib(), RefreshOn::InvalidTokenOrNoDetail, true).await;
}

#[tokio::test]
async fn api_401_with_a_1_mib_body_naming_another_error_passes_through_intact() {
    api_401(&[br#"Bearer error="insufficient_scope""#], &one_mib(), RefreshOn::InvalidTokenOrNoDetail, false).await;
}

/// The cap is 4 KiB, as documented: a JSON error body just under it is read whole and classified,
/// one just over it is not.
#[tokio::test]
async fn api_401_json_error_bodies_are_read_whole_up_to_4_kib() {
    let body = |len: usize| {
        let mut body = br#"{"error":"invalid_token","padding":""#.to_vec();
        body.resize(len - 2, b'p');
        body.extend_from_slice(br#""}"#);
        body
    };
    api_401(&[], &body(4096), RefreshOn::InvalidToken, true).await;
    api_401(&[], &body(4097), RefreshOn::InvalidToken, false).await;
}

/// The classifier reads the first `CLASSIFY_BODY_LIMIT` bytes. A JSON error body longer than that
/// cannot be parsed from its start, so it says nothing: refreshed under the default, passed
/// through under `RefreshOn::InvalidToken`.
#[tokio::test]
async fn api_401_with_a_1_mib_json_error_body_is_read_only_up_to_the_cap() {
    let mut body = br#"{"error":"invalid_token","padding":""#.to_vec();
    body.resize(1024 * 1024, b'p');
    body.extend_from_slice(br#""}"#);
    assert!(body.len() > CLASSIFY_BODY_LIMIT);
    api_401(&[], &body, RefreshOn::InvalidTokenOrNoDetail, true).await;
    api_401(&[], &body, RefreshOn::InvalidToken, false).await;
}

//! Contract points 6, 12 and 14: transient refresh failures are not terminal, back off, honour
//! `Retry-After`, and never stop a still-valid token from being used.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest_token_refresh::testkit::{Fault, MockProvider};
use reqwest_token_refresh::{Error, ManualClock, RefreshError, RefreshTokenGrant, TokenRefresh, TokenSet, TokenState};
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{client_with, eventually, mount_api_accepting, on_a_driven_clock, spawn_get};

fn refresh_error(err: &reqwest_middleware::Error) -> &RefreshError {
    match Error::from_middleware(err) {
        Some(Error::Refresh { source, .. }) => source,
        other => panic!("expected a transient refresh error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_500_from_the_token_endpoint_is_transient_and_the_next_request_refreshes() {
    let (clock, provider, auth, client) = on_a_driven_clock(MockProvider::builder()).await;
    provider.expire_access_tokens();
    provider.fail_next_token_calls(1, Fault::Status(500));
    let url = provider.api_url("me");

    let err = client.get(&url).send().await.unwrap_err();
    match refresh_error(&err) {
        RefreshError::Protocol { status, .. } => assert_eq!(status.as_u16(), 500),
        other => panic!("{other:?}"),
    }
    assert!(matches!(auth.state(), TokenState::CoolingDown { .. }), "{:?}", auth.state());

    clock.advance(Duration::from_secs(1));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200, "the state was not poisoned");
    assert_eq!(provider.stats().token_calls, 2);
    assert!(matches!(auth.state(), TokenState::Ready { generation: 2, .. }), "{:?}", auth.state());
}

#[tokio::test]
async fn a_dead_token_endpoint_is_a_transport_error_not_a_terminal_one() {
    let api = MockServer::start().await;
    Mock::given(path("/api")).respond_with(ResponseTemplate::new(401)).mount(&api).await;
    // A port nothing listens on: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let clock = ManualClock::starting_now();
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("http://{closed}/token")))
        .initial_tokens(TokenSet::new("a").with_refresh_token("r"))
        .allow_origin(api.uri())
        .clock(clock.clone())
        .build()
        .unwrap();
    let client = client_with(&auth);

    let err = client.get(format!("{}/api", api.uri())).send().await.unwrap_err();
    assert!(matches!(refresh_error(&err), RefreshError::Transport(_)), "{err:?}");
    assert!(!auth.state().is_reauthorization_required());
    assert_eq!(auth.stats().refresh_failures, 1);
}

#[tokio::test]
async fn a_token_endpoint_timeout_is_transient_and_the_next_request_refreshes() {
    let server = MockServer::start().await;
    mount_api_accepting(&server, "a2").await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "a2"})))
        .mount(&server)
        .await;
    let clock = ManualClock::starting_now();
    let auth = TokenRefresh::builder(
        RefreshTokenGrant::new(format!("{}/token", server.uri())).timeout(Duration::from_millis(200)),
    )
    .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    .allow_origin(server.uri())
    .clock(clock.clone())
    .build()
    .unwrap();
    let client = client_with(&auth);
    let url = format!("{}/api", server.uri());

    let err = client.get(&url).send().await.unwrap_err();
    assert!(matches!(refresh_error(&err), RefreshError::Transport(_)), "{err:?}");
    clock.advance(Duration::from_secs(1));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_429_with_retry_after_2_means_no_token_call_during_the_cool_down() {
    let (clock, provider, auth, client) = on_a_driven_clock(MockProvider::builder()).await;
    provider.expire_access_tokens();
    provider.fail_next_token_calls(1, Fault::RateLimited { retry_after: Duration::from_secs(2) });
    let url = provider.api_url("me");

    let err = client.get(&url).send().await.unwrap_err();
    assert_eq!(Error::from_middleware(&err).unwrap().retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(provider.stats().token_calls, 1);

    clock.advance(Duration::from_millis(1500));
    for _ in 0..10 {
        let err = client.get(&url).send().await.unwrap_err();
        match refresh_error(&err) {
            RefreshError::CoolingDown { retry_after } => assert_eq!(*retry_after, Duration::from_millis(500)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(provider.stats().token_calls, 1, "no token call during the cool-down");

    clock.advance(Duration::from_millis(600));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 2);
    assert!(auth.stats().fail_fast >= 10);
}

#[tokio::test]
async fn a_still_valid_token_keeps_being_used_when_the_proactive_refresh_is_rate_limited() {
    let (clock, provider, auth, client) = on_a_driven_clock(MockProvider::builder()).await;
    let url = provider.api_url("me");
    // Inside the 30 s skew window, but still valid for the API.
    clock.advance(Duration::from_secs(3600 - 10));
    provider.fail_next_token_calls(1, Fault::RateLimited { retry_after: Duration::from_secs(60) });

    assert_eq!(client.get(&url).send().await.unwrap().status(), 200, "the old token went out");
    for _ in 0..5 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(provider.stats().token_calls, 1, "the cool-down holds: one token call");
    assert_eq!(auth.stats().refreshes, 1);
    assert_eq!(provider.stats().api_ok, 6);
}

#[tokio::test]
async fn consecutive_failures_back_off_exponentially_and_a_success_resets_it() {
    let (clock, provider, auth, client) = on_a_driven_clock(MockProvider::builder()).await;
    provider.expire_access_tokens();
    provider.fail_next_token_calls(3, Fault::Status(503));
    let url = provider.api_url("me");

    for expected in [500u64, 1000, 2000] {
        assert!(client.get(&url).send().await.is_err());
        match auth.state() {
            TokenState::CoolingDown { retry_after, .. } => assert_eq!(retry_after, Duration::from_millis(expected)),
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_millis(expected));
    }
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 4);
    assert!(matches!(auth.state(), TokenState::Ready { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_back_behind_a_failing_refresh_are_sent_with_the_unexpired_token() {
    // One API node answers a valid token 401 once (a lagging replica); the refresh that 401 starts
    // fails. Requests that started meanwhile were held back from the rejected token; when the
    // refresh fails they are sent with it after all, and succeed.
    let server = MockServer::start().await;
    Mock::given(path("/api"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", "Bearer error=\"invalid_token\""))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(503).set_delay(Duration::from_millis(400)))
        .mount(&server)
        .await;
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
        .initial_tokens(TokenSet::new("valid").with_refresh_token("r").with_expires_in(Duration::from_secs(3600)))
        .allow_origin(server.uri())
        .build()
        .unwrap();
    // What the layer was doing when each accepted request reached the API.
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    Mock::given(path("/api"))
        .and(header("authorization", "Bearer valid"))
        .respond_with({
            let (auth, arrivals) = (auth.clone(), arrivals.clone());
            move |_: &wiremock::Request| {
                arrivals.lock().unwrap().push(auth.state());
                ResponseTemplate::new(200)
            }
        })
        .mount(&server)
        .await;
    let client = client_with(&auth);
    let url = format!("{}/api", server.uri());

    let first = spawn_get(&client, &url);
    eventually("the first 401 started the refresh", || matches!(auth.state(), TokenState::Refreshing { .. })).await;
    let held_back = futures::future::join_all((0..10).map(|_| client.get(&url).send())).await;

    for response in held_back {
        assert_eq!(response.expect("sent after the failed refresh").status(), 200);
    }
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 10);
    assert!(
        arrivals.iter().all(|state| matches!(state, TokenState::CoolingDown { .. })),
        "held back until the refresh had failed, then sent: {arrivals:?}"
    );
    let first = first.await.unwrap().expect_err("the request that saw the 401 gets the refresh's failure");
    assert!(!matches!(refresh_error(&first), RefreshError::CoolingDown { .. }), "{first}");
    assert!(matches!(auth.state(), TokenState::CoolingDown { .. }), "{:?}", auth.state());
    assert_eq!(auth.stats().refreshes, 1);
    assert_eq!(auth.stats().unauthorized, 1, "the held-back requests were sent once, with the token, and passed");
}

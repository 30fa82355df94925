//! Contract point 18: no builder panics on an extreme duration; they saturate. `Duration::MAX`
//! and `Duration::ZERO` given to every option that takes a duration (the layer's, the grant's,
//! the mock provider's, `TokenSet::with_expires_in`) build, serve requests, and end in an answer
//! or a typed error, each request within a bounded time.

use std::time::{Duration, SystemTime};

use reqwest_token_refresh::testkit::{Fault, MockProvider};
use reqwest_token_refresh::{Error, RefreshError, TokenRefresh};

use crate::helpers::{client_with, grant};

/// Sends a GET through `client`, bounded: a hang fails the test instead of stalling it.
async fn get(client: &reqwest_middleware::ClientWithMiddleware, url: &str) -> reqwest_middleware::Result<u16> {
    let request = client.get(url).send();
    let response = tokio::time::timeout(Duration::from_secs(10), request).await.expect("the request ends");
    response.map(|response| response.status().as_u16())
}

/// Our error out of a failed request.
fn ours(result: reqwest_middleware::Result<u16>) -> Error {
    let err = result.expect_err("a typed error");
    Error::from_middleware(&err).cloned().unwrap_or_else(|| panic!("our error, not {err}"))
}

#[tokio::test]
async fn every_duration_option_at_its_maximum_builds_serves_and_cools_down_without_panicking() {
    let provider = MockProvider::builder().access_token_lifetime(Duration::MAX).start().await;
    let tokens = provider.issue_tokens().with_expires_in(Duration::MAX);
    assert_eq!(tokens.expires_at(), None, "an expiry past the clock's reach is no known expiry");
    let auth = TokenRefresh::builder(grant(&provider).timeout(Duration::MAX))
        .initial_tokens(tokens)
        .refresh_skew(Duration::MAX)
        .min_backoff(Duration::MAX)
        .max_backoff(Duration::MAX)
        .max_retry_after(Duration::MAX)
        .classify_timeout(Duration::MAX)
        .build()
        .expect("extreme durations are not a misconfiguration");
    let client = client_with(&auth);
    let url = provider.api_url("me");

    assert_eq!(get(&client, &url).await.unwrap(), 200);
    // A dead token is refreshed; the new one, with no `expires_in`, lives for good.
    provider.expire_access_tokens();
    assert_eq!(get(&client, &url).await.unwrap(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    assert_eq!(auth.tokens().unwrap().expires_at(), None);

    // A `Retry-After` as long as a `Duration` goes starts a cool-down, capped and in the future.
    provider.fail_next_token_calls(1, Fault::RateLimited { retry_after: Duration::MAX });
    provider.expire_access_tokens();
    let err = ours(get(&client, &url).await);
    assert!(matches!(err, Error::Refresh { .. }), "{err}");
    let wait = err.retry_after().expect("the error says when to retry");
    assert!(wait > Duration::from_secs(365 * 24 * 60 * 60), "{wait:?}");
    assert_eq!(provider.stats().token_calls, 2);
    // The cool-down holds: no token call, a typed error saying so.
    let err = ours(get(&client, &url).await);
    assert!(
        matches!(&err, Error::Refresh { source: RefreshError::CoolingDown { .. }, .. }),
        "the next request waits out the cool-down: {err:?}"
    );
    assert_eq!(provider.stats().token_calls, 2, "no token call while cooling down");
}

#[tokio::test]
async fn the_flight_deadline_hold_back_and_terminal_recheck_at_their_maximum_refresh_and_go_terminal() {
    let provider = MockProvider::start().await;
    let auth = TokenRefresh::builder(grant(&provider))
        .initial_tokens(provider.issue_tokens())
        .flight_deadline(Duration::MAX)
        .min_refresh_interval(Duration::MAX)
        .terminal_recheck(Duration::MAX)
        .build()
        .expect("extreme durations are not a misconfiguration");
    let client = client_with(&auth);
    let url = provider.api_url("me");

    assert_eq!(get(&client, &url).await.unwrap(), 200);
    // A flight with a deadline too far to reach still runs, saves and answers.
    provider.expire_access_tokens();
    assert_eq!(get(&client, &url).await.unwrap(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    // A dead grant with a recheck too far to reach is terminal, and stays so without a token call.
    provider.revoke_all();
    provider.expire_access_tokens();
    for _ in 0..2 {
        let err = ours(get(&client, &url).await);
        assert!(err.is_reauthorization_required(), "{err:?}");
    }
    assert_eq!(provider.stats().token_calls, 2);
}

#[tokio::test]
async fn every_duration_option_at_zero_builds_and_serves_without_panicking() {
    // Tokens that expire as they are issued, answered with `expires_in: 0` ("no known expiry").
    let provider = MockProvider::builder()
        .access_token_lifetime(Duration::ZERO)
        .token_latency(Duration::ZERO)
        .api_latency(Duration::ZERO)
        .start()
        .await;
    let auth = TokenRefresh::builder(grant(&provider))
        .initial_tokens(provider.issue_tokens().with_expires_in(Duration::ZERO))
        .refresh_skew(Duration::ZERO)
        .min_backoff(Duration::ZERO)
        .max_backoff(Duration::ZERO)
        .max_retry_after(Duration::ZERO)
        .classify_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    // The expired token is refreshed before use; the new one is dead at the provider as issued,
    // so the answer is its 401, after one refresh and no loop.
    assert_eq!(get(&client, &url).await.unwrap(), 401);
    let calls = provider.stats().token_calls;
    assert!((1..=2).contains(&calls), "{calls} token calls");
    assert!(auth.stats().retries <= 1);

    // A token call that may take no time at all fails as a transient error. The token has
    // expired by its own expiry (not just "now", which within the clock's resolution may still
    // count as valid and go out while its refresh fails), so the request must wait for the call.
    // The token endpoint takes a moment to answer: a zero timeout fires at the timer's next tick
    // (about a millisecond), and a loopback token call without latency can beat that.
    let slow = MockProvider::builder().token_latency(Duration::from_millis(500)).start().await;
    let auth = TokenRefresh::builder(grant(&slow).timeout(Duration::ZERO))
        .initial_tokens(slow.issue_expired_tokens())
        .build()
        .unwrap();
    let err = ours(get(&client_with(&auth), &slow.api_url("me")).await);
    assert!(matches!(&err, Error::Refresh { source: RefreshError::Transport(_), .. }), "{err:?}");
}

#[tokio::test]
async fn a_mock_provider_that_never_answers_in_time_ends_in_a_typed_error() {
    let provider = MockProvider::builder().token_latency(Duration::MAX).api_latency(Duration::MAX).start().await;
    let caller_timeout = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();

    // The API never answers: the caller's own timeout ends the request.
    let auth = TokenRefresh::builder(grant(&provider)).initial_tokens(provider.issue_tokens()).build().unwrap();
    let client = reqwest_middleware::ClientBuilder::new(caller_timeout).with(auth).build();
    let err = get(&client, &provider.api_url("me")).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");

    // The token endpoint never answers: the grant's timeout ends the refresh, a transient error.
    let expired = provider.issue_tokens().with_expires_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    let auth = TokenRefresh::builder(grant(&provider).timeout(Duration::from_millis(200)))
        .initial_tokens(expired)
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), auth.access_token_for(&Default::default()))
        .await
        .expect("the refresh ends")
        .unwrap_err();
    assert!(matches!(&err, Error::Refresh { source: RefreshError::Transport(_), .. }), "{err:?}");
}

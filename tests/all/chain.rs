//! The layer in one chain with `reqwest-tracing` and `reqwest-retry`, in the order the README
//! recommends: tracing outermost, then this layer, then the transient-retry layer innermost.
//!
//! Why the retry layer goes inside: every attempt that passes through this layer and comes back
//! 401 asks for a token newer than the one it carried. A retry layer outside would resend an
//! always-401 request through this layer again and again, each time with the newest token, and
//! each time start a new refresh. Inside, its retries reuse the token this layer attached, and a
//! 401 comes back out to this layer once.

use std::time::Duration;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{RetryTransientMiddleware, Retryable, RetryableStrategy};
use reqwest_token_refresh::TokenRefresh;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_tracing::TracingMiddleware;
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{count, layer};

fn fast_retries() -> ExponentialBackoff {
    ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(3)
}

/// The recommended chain.
fn recommended<S: RetryableStrategy + Send + Sync + 'static>(auth: &TokenRefresh, strategy: S) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(auth.clone())
        .with(RetryTransientMiddleware::new_with_policy_and_strategy(fast_retries(), strategy))
        .build()
}

/// A strategy that (wrongly) treats 401 as transient, on top of the default one: the worst case
/// for a layer that refreshes on 401.
struct RetryUnauthorizedToo;

impl RetryableStrategy for RetryUnauthorizedToo {
    fn handle(&self, res: &Result<reqwest::Response, reqwest_middleware::Error>) -> Option<Retryable> {
        match res {
            Ok(response) if response.status() == 401 => Some(Retryable::Transient),
            other => reqwest_retry::DefaultRetryableStrategy.handle(other),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_through_tracing_refresh_and_retry_makes_one_refresh_and_rides_out_503s() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    // The first 30 API calls after the refresh hit a 503 blip the retry layer rides out.
    Mock::given(path("/api/me"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(30)
        .with_priority(1)
        .mount(provider.server())
        .await;
    let auth = layer(&provider, tokens).build().unwrap();
    let client = recommended(&auth, reqwest_retry::DefaultRetryableStrategy);

    let statuses = crate::helpers::storm(&client, &provider.api_url("me"), 100, None).await;

    assert_eq!(count(&statuses, 200), 100, "{statuses:?}");
    assert_eq!(provider.stats().token_calls, 1, "one refresh for the storm, whatever the retry layer does");
}

#[tokio::test]
async fn a_retry_layer_inside_never_turns_a_401_into_several_refreshes() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    // An API that rejects every token, even fresh ones.
    Mock::given(path("/api/me"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .with_priority(1)
        .mount(provider.server())
        .await;
    let auth = layer(&provider, tokens).build().unwrap();
    let client = recommended(&auth, RetryUnauthorizedToo);

    let response = client.get(provider.api_url("me")).send().await.unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(provider.stats().token_calls, 1, "one refresh, even with a retry layer that retries 401s");
    assert_eq!(auth.stats().retries, 1);
}

#[tokio::test]
async fn a_failed_refresh_is_not_retried_by_an_outer_retry_layer() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    provider.fail_next_token_calls(10, reqwest_token_refresh::testkit::Fault::Status(500));
    let auth = layer(&provider, tokens).build().unwrap();
    // Even outside this layer, reqwest-retry's default strategy treats a middleware error as
    // fatal: a failed refresh is reported, not hammered.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(fast_retries()))
        .with(auth.clone())
        .build();

    let err = client.get(provider.api_url("me")).send().await.unwrap_err();

    // reqwest-retry wraps what it passes on in a transparent `RetryError`, which hides the error
    // inside from a source-chain walk: unwrap it first.
    let inner = match &err {
        reqwest_middleware::Error::Middleware(wrapped) => match wrapped.downcast_ref::<reqwest_retry::RetryError>() {
            Some(
                reqwest_retry::RetryError::Error(inner) | reqwest_retry::RetryError::WithRetries { err: inner, .. },
            ) => inner,
            None => &err,
        },
        reqwest_middleware::Error::Reqwest(_) => &err,
    };
    let ours = reqwest_token_refresh::Error::from_middleware(inner).expect("our error inside the retry error");
    assert!(matches!(ours, reqwest_token_refresh::Error::Refresh { .. }), "{ours:?}");
    assert_eq!(provider.stats().token_calls, 1);
}

//! The versions README.md's compatibility table states: reqwest-tracing's `TracingMiddleware`
//! and reqwest-retry's `RetryTransientMiddleware` around this layer, in the README's order, on
//! the reqwest and reqwest-middleware this crate builds with. If a new release of either breaks
//! the chain, this is the test that says so; `chain.rs` has the other orders and strategies.

use std::future::Future;
use std::time::Duration;

use reqwest_middleware::ClientBuilder;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_tracing::TracingMiddleware;
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{REQUEST_BOUND, count, layer, storm};

/// Waits for `future`, failing the test with `what` if it takes longer than [`REQUEST_BOUND`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(REQUEST_BOUND, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} took longer than {REQUEST_BOUND:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_tracing_around_the_layer_retry_a_503_with_the_same_token_and_refresh_once_per_storm() {
    let provider = bounded("starting the mock provider", MockProvider::start()).await;
    let tokens = provider.issue_tokens();
    let auth = layer(&provider, tokens.clone()).build().unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(auth.clone())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder()
                .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
                .build_with_max_retries(3),
        ))
        .build();
    let url = provider.api_url("me");

    // A valid token and a 503 blip: reqwest-retry resends the request, the token stays.
    bounded(
        "mounting the 503s",
        Mock::given(path("/api/me"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .with_priority(1)
            .mount(provider.server()),
    )
    .await;
    let response = bounded("the request through two 503s", client.get(&url).send()).await.unwrap();
    assert_eq!(response.status(), 200, "the third attempt gets through");
    let sent = bounded("reading what the API received", provider.server().received_requests()).await.unwrap();
    let carried: Vec<_> = sent
        .iter()
        .filter(|request| request.url.path() == "/api/me")
        .map(|request| request.headers.get("authorization").map(|value| value.to_str().unwrap().to_owned()))
        .collect();
    let bearer = format!("Bearer {}", tokens.access_token().secret());
    assert_eq!(carried, vec![Some(bearer.clone()), Some(bearer.clone()), Some(bearer)], "three attempts, one token");
    assert_eq!(provider.stats().token_calls, 0, "a 503 is not a reason to refresh");
    assert_eq!(auth.stats().refreshes, 0);
    assert_eq!(auth.stats().requests, 1, "the retries stay inside the layer's request");

    // The token expires under a storm: one token call, and every request succeeds.
    provider.expire_access_tokens();
    let statuses = bounded("the storm", storm(&client, &url, 100, None)).await;

    assert_eq!(count(&statuses, 200), 100, "{statuses:?}");
    assert_eq!(provider.stats().token_calls, 1, "one refresh for the whole storm");
    assert_eq!(auth.stats().refreshes, 1);
}

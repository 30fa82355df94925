//! Contract point 7: dropping requests, even the one that started the refresh, neither cancels
//! the refresh nor strands the other waiters.

use std::time::Duration;

use reqwest_token_refresh::TokenState;
use reqwest_token_refresh::testkit::MockProvider;

use crate::fronts::{self, Client, Front};
use crate::helpers::{client_with, count, eventually, layer, spawn_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_request_that_started_the_refresh_does_not_cancel_it() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let provider = MockProvider::builder().token_latency(Duration::from_millis(300)).start().await;
        let tokens = provider.issue_tokens();
        provider.expire_access_tokens();
        let auth = layer(&provider, tokens).build().unwrap();
        let client = Client::new(front, &auth);
        let url = provider.api_url("me");

        let starter = client.get(&url).spawn();
        eventually("the first request has started the refresh", || provider.stats().token_calls == 1).await;
        starter.abort();
        assert!(starter.await.unwrap_err().is_cancelled());

        let statuses = fronts::storm(&client, &url, 50, None).await;

        assert_eq!(count(&statuses, 200), 50, "every other waiter succeeds: {statuses:?}");
        assert_eq!(provider.stats().token_calls, 1, "no second token call");
        assert_eq!(provider.stats().invalid_grants, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_waiters_were_all_dropped_still_completes_and_is_kept() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let provider = MockProvider::builder().token_latency(Duration::from_millis(200)).start().await;
        let tokens = provider.issue_tokens();
        provider.expire_access_tokens();
        let auth = layer(&provider, tokens.clone()).build().unwrap();
        let client = Client::new(front, &auth);
        let url = provider.api_url("me");

        let waiters: Vec<_> = (0..20).map(|_| client.get(&url).spawn()).collect();
        eventually("the refresh has started", || provider.stats().token_calls == 1).await;
        for waiter in &waiters {
            waiter.abort();
        }

        eventually("the refresh has been published", || {
            matches!(auth.state(), TokenState::Ready { generation: 2, .. })
        })
        .await;
        assert_ne!(auth.tokens().unwrap().refresh_token(), tokens.refresh_token(), "the rotated token is kept");
        assert_eq!(client.get(&url).send().await.unwrap().status, 200);
        assert_eq!(provider.stats().token_calls, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiters_of_a_refresh_whose_runtime_shut_down_fail_and_the_next_request_refreshes() {
    // No rotation: the aborted token call was answered to nobody, and with rotation its new
    // refresh token would be lost with it (the next refresh would present the spent one).
    let provider =
        MockProvider::builder().token_latency(Duration::from_secs(2)).rotate_refresh_tokens(false).start().await;
    let auth = layer(&provider, provider.issue_expired_tokens())
        .min_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(20))
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    // Another runtime's request starts the refresh, so its flight runs there; that runtime then
    // shuts down, dropping the flight before it answers.
    let other = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (starter, starter_url) = (client.clone(), url.clone());
    let other_thread = std::thread::spawn(move || {
        other.block_on(async {
            let _ = tokio::time::timeout(Duration::from_millis(800), starter.get(&starter_url).send()).await;
        });
        drop(other);
    });
    eventually("the other runtime's request has started the refresh", || provider.stats().token_calls == 1).await;
    let waiter = spawn_get(&client, &url);
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("the waiter is not stranded");
    let err = outcome.unwrap().expect_err("its flight ended without an answer");
    let err = reqwest_token_refresh::Error::from_middleware(&err).expect("the layer's error");
    assert!(
        matches!(
            err,
            reqwest_token_refresh::Error::Refresh { source: reqwest_token_refresh::RefreshError::Aborted, .. }
        ),
        "{err}"
    );
    other_thread.join().unwrap();

    // An aborted refresh counts as a transient failure: after its (short) cool-down, the next
    // request refreshes again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "the next request refreshes again");
    assert_eq!(provider.stats().token_calls, 2);
}

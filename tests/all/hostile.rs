//! Callers and servers that misbehave: a token source that calls back into the layer, an API
//! that redirects to another origin, and a storm in which half the callers give up at random
//! points.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{RefreshError, TokenRefresh, TokenSet, TokenSource};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{client_with, layer};

/// A token source that sends its token request through a client that has this very layer in it:
/// the mistake the layer must survive without a deadlock.
#[derive(Debug, Default)]
struct ThroughTheLayer {
    client: OnceLock<ClientWithMiddleware>,
    token_url: String,
}

#[async_trait]
impl TokenSource for ThroughTheLayer {
    async fn fetch(&self, current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
        let refresh_token = current.and_then(TokenSet::refresh_token).ok_or(RefreshError::NoRefreshToken)?;
        let client = self.client.get().expect("the client is set before any request");
        let body = format!("grant_type=refresh_token&refresh_token={}", refresh_token.secret());
        let answer = client
            .post(&self.token_url)
            .basic_auth("client", Some("secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(RefreshError::other)?;
        let bytes = answer.bytes().await.map_err(RefreshError::transport)?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(RefreshError::other)?;
        let access = json["access_token"].as_str().unwrap_or_default();
        let refresh = json["refresh_token"].as_str().unwrap_or_default();
        Ok(TokenSet::new(access).with_refresh_token(refresh))
    }
}

#[tokio::test]
async fn a_token_source_that_calls_through_the_same_layer_does_not_deadlock() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    let source = Arc::new(ThroughTheLayer { client: OnceLock::new(), token_url: provider.token_url() });
    let auth =
        TokenRefresh::builder_arc(source.clone()).initial_tokens(tokens).allow_origin(provider.uri()).build().unwrap();
    let client = client_with(&auth);
    source.client.set(client.clone()).unwrap();

    let response = tokio::time::timeout(Duration::from_secs(10), client.get(provider.api_url("me")).send())
        .await
        .expect("no deadlock: the token request passed through the layer untouched")
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(provider.stats().token_calls, 1);
}

#[tokio::test]
async fn a_redirect_from_the_api_to_another_origin_does_not_carry_the_token() {
    let provider = MockProvider::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(path("/landing")).respond_with(ResponseTemplate::new(200)).mount(&elsewhere).await;
    Mock::given(path("/api/moved"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", format!("{}/landing", elsewhere.uri())))
        .with_priority(1)
        .mount(provider.server())
        .await;
    let auth = layer(&provider, provider.issue_tokens()).build().unwrap();

    let response = client_with(&auth).get(provider.api_url("moved")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let landed = elsewhere.received_requests().await.unwrap();
    assert_eq!(landed.len(), 1);
    assert!(!landed[0].headers.contains_key("authorization"), "the token stayed with its origin");
}

/// A small deterministic generator, so that a failing interleaving can be replayed by seed.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_where_half_the_callers_give_up_at_random_points_refreshes_once_and_leaves_nothing_behind() {
    let provider = MockProvider::builder()
        .token_latency(Duration::from_millis(50))
        .api_latency(Duration::from_millis(5))
        .start()
        .await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    let auth = layer(&provider, tokens).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();

    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut handles = Vec::new();
    for _ in 0..2000 {
        let (client, url) = (client.clone(), url.clone());
        handles.push(tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) }));
    }
    // Cancel a random half, each after a random delay: before sending, while waiting for the
    // refresh, or during the retry.
    let mut cancelled = vec![false; handles.len()];
    let mut order: Vec<usize> = (0..handles.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (xorshift(&mut seed) % (i as u64 + 1)) as usize);
    }
    for &victim in &order[..handles.len() / 2] {
        if xorshift(&mut seed).is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(xorshift(&mut seed) % 3)).await;
        }
        handles[victim].abort();
        cancelled[victim] = true;
    }
    let mut survivors_ok = 0;
    let mut survivors = 0;
    for (handle, was_cancelled) in handles.into_iter().zip(cancelled) {
        match handle.await {
            Ok(result) => {
                survivors += 1;
                assert_eq!(result.ok(), Some(200), "a request that was not cancelled succeeds");
                survivors_ok += 1;
            }
            Err(err) => assert!(err.is_cancelled() && was_cancelled, "only cancelled requests end early: {err}"),
        }
    }

    assert_eq!(survivors_ok, survivors);
    assert!(survivors >= 1000, "at least every request that was not cancelled finished: {survivors}");
    assert_eq!(provider.stats().token_calls, 1, "one refresh, whoever gave up");
    assert_eq!(provider.stats().reuse_detected, 0);
    // Nothing left running once the client is gone: the refresh tasks ended with the refresh,
    // and the connection pool's tasks end with the pool.
    drop(client);
    drop(auth);
    crate::helpers::eventually("every task the storm started has ended", || metrics.num_alive_tasks() <= tasks_before)
        .await;
}

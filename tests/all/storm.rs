//! Contract points 1-3, 12 and 17: one refresh per expiry, generations, one retry, proactive
//! refresh, independent keys.

use std::time::Duration;

use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{Error, ManualClock, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet, TokenState};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fronts::{self, Client, Front};
use crate::helpers::{client_with, count, eventually, grant, layer, on_a_driven_clock, spawn_get, storm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_500_with_a_dead_token_causes_one_refresh() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let provider = MockProvider::start().await;
        let tokens = provider.issue_tokens();
        provider.expire_access_tokens();
        let auth = layer(&provider, tokens).build().unwrap();
        let client = Client::new(front, &auth);

        let statuses = fronts::storm(&client, &provider.api_url("me"), 500, None).await;

        assert_eq!(count(&statuses, 200), 500, "every request succeeds: {statuses:?}");
        assert_eq!(provider.stats().token_calls, 1, "one token call for the whole storm");
        let stats = auth.stats();
        assert_eq!(stats.refreshes, 1);
        assert_eq!(stats.requests, 500);
        assert!(stats.retries <= 500, "each request is retried at most once: {stats:?}");
        assert_eq!(stats.retries, stats.unauthorized, "every 401 was retried once and no retry failed");
        assert_eq!(provider.stats().invalid_grants, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_while_a_rejected_token_is_being_replaced_wait_instead_of_collecting_401s() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let provider = MockProvider::builder().token_latency(Duration::from_millis(300)).start().await;
        let tokens = provider.issue_tokens();
        provider.expire_access_tokens();
        let auth = layer(&provider, tokens).build().unwrap();
        let client = Client::new(front, &auth);
        let url = provider.api_url("me");

        // The first request's 401 starts the refresh; the token still looks fresh by its expiry.
        let first = client.get(&url).spawn();
        eventually("the first 401 started the refresh", || matches!(auth.state(), TokenState::Refreshing { .. })).await;
        let later = fronts::storm(&client, &url, 100, None).await;

        assert_eq!(first.await.unwrap().unwrap().status, 200);
        assert_eq!(count(&later, 200), 100, "{later:?}");
        let seen = provider.stats();
        assert_eq!(seen.api_unauthorized, 1, "only the first request sent the rejected token: {seen:?}");
        assert_eq!(seen.token_calls, 1);
        assert_eq!(auth.stats().retries, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_with_a_token_known_to_be_expired_refreshes_once_before_sending() {
    let provider = MockProvider::start().await;
    let auth = layer(&provider, provider.issue_expired_tokens()).build().unwrap();
    let client = client_with(&auth);

    let statuses = storm(&client, &provider.api_url("me"), 200, None).await;

    assert_eq!(count(&statuses, 200), 200);
    assert_eq!(provider.stats().token_calls, 1);
    assert_eq!(provider.stats().api_unauthorized, 0, "no request went out with the expired token");
}

#[tokio::test]
async fn a_401_that_arrives_after_the_refresh_is_retried_without_a_second_refresh() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let server = MockServer::start().await;
        // The slow request is answered 401 long after the fast one has triggered and finished the
        // refresh: it was sent with generation 1 while generation 2 is published.
        Mock::given(path("/slow"))
            .and(header("authorization", "Bearer old"))
            .respond_with(ResponseTemplate::new(401).set_delay(Duration::from_millis(400)))
            .mount(&server)
            .await;
        Mock::given(path("/fast"))
            .and(header("authorization", "Bearer old"))
            .respond_with(ResponseTemplate::new(401))
            .mount(&server)
            .await;
        Mock::given(header("authorization", "Bearer new"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("refresh_token=r1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "new", "refresh_token": "r2", "expires_in": 3600
            })))
            .expect(1)
            .mount(&server)
            .await;
        let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
            .initial_tokens(TokenSet::new("old").with_refresh_token("r1"))
            .allow_origin(server.uri())
            .build()
            .unwrap();
        let client = Client::new(front, &auth);

        let slow = tokio::spawn({
            let client = client.clone();
            let url = format!("{}/slow", server.uri());
            async move { client.get(url).send().await.map(|r| r.status) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fast = client.get(format!("{}/fast", server.uri())).send().await.unwrap();
        assert_eq!(fast.status, 200);
        assert_eq!(slow.await.unwrap().unwrap(), 200);
        assert_eq!(auth.stats().refreshes, 1);
        assert_eq!(auth.stats().retries, 2);
    }
}

#[tokio::test]
async fn an_api_that_always_answers_401_gets_one_refresh_one_retry_and_no_loop() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let server = MockServer::start().await;
        Mock::given(path("/api"))
            .respond_with(
                ResponseTemplate::new(401)
                    .insert_header("www-authenticate", r#"Bearer error="invalid_token""#)
                    .set_body_string("still no"),
            )
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "a2"})))
            .expect(1)
            .mount(&server)
            .await;
        let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
            .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
            .allow_origin(server.uri())
            .build()
            .unwrap();

        let response = Client::new(front, &auth).get(format!("{}/api", server.uri())).send().await.unwrap();

        assert_eq!(response.status, 401);
        assert_eq!(response.body, "still no", "the second 401 reaches the caller unchanged");
        let stats = auth.stats();
        assert_eq!((stats.refreshes, stats.retries, stats.unauthorized), (1, 1, 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_in_one_storm_get_one_token_call_each() {
    let provider = MockProvider::start().await;
    let auth = TokenRefresh::builder(grant(&provider)).build().unwrap();
    let (alice, bob) = (TokenKey::new("alice"), TokenKey::new("bob"));
    auth.set_tokens_for(&alice, provider.issue_tokens()).await.unwrap();
    auth.set_tokens_for(&bob, provider.issue_tokens()).await.unwrap();
    provider.expire_access_tokens();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    let (a, b) =
        tokio::join!(storm(&client, &url, 150, Some(alice.clone())), storm(&client, &url, 150, Some(bob.clone())));

    assert_eq!(count(&a, 200) + count(&b, 200), 300);
    assert_eq!(provider.stats().token_calls, 2, "one token call per user");
    let alice_tokens = auth.tokens_for(&alice).unwrap();
    let bob_tokens = auth.tokens_for(&bob).unwrap();
    assert_ne!(alice_tokens.access_token(), bob_tokens.access_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_dead_refresh_token_leaves_the_other_users_requests_untouched() {
    let provider = MockProvider::start().await;
    let auth = TokenRefresh::builder(grant(&provider)).build().unwrap();
    let (dead, alive) = (TokenKey::new("dead"), TokenKey::new("alive"));
    auth.set_tokens_for(&dead, TokenSet::new("never-issued").with_refresh_token("never-issued")).await.unwrap();
    auth.set_tokens_for(&alive, provider.issue_tokens()).await.unwrap();
    provider.expire_access_tokens();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    let (d, a) =
        tokio::join!(storm(&client, &url, 100, Some(dead.clone())), storm(&client, &url, 100, Some(alive.clone())));

    assert_eq!(count(&d, 0), 100, "the dead user's requests fail: {d:?}");
    assert_eq!(count(&a, 200), 100, "the other user's requests all succeed: {a:?}");
    assert!(auth.state_for(&dead).is_reauthorization_required());
    assert!(!auth.state_for(&alive).is_reauthorization_required());
    let err = client.get(&url).with_extension(dead).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_inside_the_skew_window_is_refreshed_before_sending_once_for_a_burst() {
    let clock = ManualClock::starting_now();
    let provider =
        MockProvider::builder().clock(clock.clone()).access_token_lifetime(Duration::from_secs(3600)).start().await;
    let tokens = provider.issue_tokens();
    let auth = TokenRefresh::builder(grant(&provider).clock(clock.clone()))
        .initial_tokens(tokens.clone())
        .refresh_skew(Duration::from_secs(60))
        .clock(clock.clone())
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");

    assert_eq!(count(&storm(&client, &url, 20, None).await, 200), 20);
    assert_eq!(provider.stats().token_calls, 0, "a fresh token is used as is");

    clock.advance(Duration::from_secs(3600 - 30));
    let statuses = storm(&client, &url, 100, None).await;

    assert_eq!(count(&statuses, 200), 100);
    assert_eq!(provider.stats().token_calls, 1, "one proactive refresh for the burst");
    assert_eq!(provider.stats().api_unauthorized, 0, "no request needed a 401 to notice");
    assert_ne!(auth.tokens().unwrap().access_token(), tokens.access_token());
}

#[tokio::test]
async fn tokens_shorter_than_the_skew_window_are_not_refreshed_on_every_request() {
    let (clock, provider, _auth, client) =
        on_a_driven_clock(MockProvider::builder().access_token_lifetime(Duration::from_secs(20))).await;
    let url = provider.api_url("me");

    for _ in 0..20 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    // The initial token's lifetime is unknown, so the full 30 s window applies and it is replaced
    // once; the new token's 20 s lifetime is known and caps the window at 10 s.
    assert_eq!(provider.stats().token_calls, 1, "one refresh, not one per request");

    clock.advance(Duration::from_secs(12));
    for _ in 0..20 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(provider.stats().token_calls, 2, "refreshed once in the second half of its life");
}

/// Requests that waited for a refresh go out a window at a time, each keeping its place until its
/// answer is in, but only for a moment: 64 requests to an endpoint that answers after a minute,
/// released first, do not hold back the 8 behind them.
#[tokio::test(flavor = "current_thread")]
async fn requests_released_behind_slow_answers_are_not_held_back_by_them() {
    let provider = MockProvider::start().await;
    let api = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(60)))
        .mount(&api)
        .await;
    Mock::given(path("/fast")).respond_with(ResponseTemplate::new(200)).mount(&api).await;
    let auth = layer(&provider, provider.issue_expired_tokens()).allow_origin(api.uri()).build().unwrap();
    let client = client_with(&auth);

    // On this one-threaded runtime the requests reach the refresh in the order they were spawned,
    // and it releases them in that order: the slow ones first.
    let slow: Vec<_> = (0..64).map(|_| spawn_get(&client, format!("{}/slow", api.uri()))).collect();
    let fast: Vec<_> = (0..8).map(|_| spawn_get(&client, format!("{}/fast", api.uri()))).collect();

    let answered = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(fast)).await;
    let answered = answered.expect("the requests behind the slow ones were held back by them");
    for status in answered {
        assert_eq!(status.unwrap().unwrap(), 200);
    }
    assert_eq!(provider.stats().token_calls, 1);
    for request in &slow {
        assert!(!request.is_finished(), "a slow request is still waiting for its answer");
        request.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reqwest_client_and_a_tower_stack_sharing_one_layer_refresh_once_in_one_storm() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    let auth = layer(&provider, tokens).build().unwrap();
    let (reqwest, tower) = (Client::new(Front::Reqwest, &auth), Client::new(Front::Tower, &auth));
    let url = provider.api_url("me");

    let (through_reqwest, through_tower) =
        tokio::join!(fronts::storm(&reqwest, &url, 200, None), fronts::storm(&tower, &url, 200, None));

    assert_eq!(count(&through_reqwest, 200), 200, "{through_reqwest:?}");
    assert_eq!(count(&through_tower, 200), 200, "{through_tower:?}");
    assert_eq!(provider.stats().token_calls, 1, "one token call between the two front ends");
    assert_eq!(provider.stats().invalid_grants, 0);
    let stats = auth.stats();
    assert_eq!((stats.requests, stats.refreshes), (400, 1), "{stats:?}");
}

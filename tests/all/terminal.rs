//! Contract points 5 and 15: a dead refresh token is terminal, fails fast, fires its hook once,
//! and `set_tokens` brings the layer back; but first the store is re-read.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{Error, MemoryStore, RefreshError, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet};
use wiremock::matchers::{body_string_contains, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fronts::{self, Client, Front};
use crate::helpers::StoreExt;
use crate::helpers::{Lockless, client_with, count, counter, layer, mount_api_accepting};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_fails_waiters_then_fails_fast_until_set_tokens() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let provider = MockProvider::start().await;
        let tokens = provider.issue_tokens();
        provider.expire_access_tokens();
        provider.revoke_all();
        let (fired, hook_calls) = counter();
        let auth = layer(&provider, tokens)
            .on_reauthorization_required(move |key, reason| {
                assert_eq!(key, &TokenKey::default());
                assert_eq!(reason.oauth_error().map(|e| e.error.as_str()), Some("invalid_grant"));
                fired.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .unwrap();
        let client = Client::new(front, &auth);
        let url = provider.api_url("me");

        let statuses = fronts::storm(&client, &url, 50, None).await;
        assert_eq!(count(&statuses, 0), 50, "every waiter gets the terminal error");
        assert_eq!(provider.stats().token_calls, 1);
        assert_eq!(hook_calls(), 1);
        assert!(auth.state().is_reauthorization_required());

        let calls_before = provider.stats();
        let fail_fast_before = auth.stats().fail_fast;
        for _ in 0..20 {
            let err = client.get(&url).send().await.unwrap_err();
            assert!(err.ours && err.reauthorization_required, "{err:?}");
        }
        assert_eq!(provider.stats(), calls_before, "failing fast makes no network call at all");
        assert_eq!(auth.stats().fail_fast - fail_fast_before, 20);
        assert_eq!(hook_calls(), 1, "the hook fires once per terminal event");

        auth.set_tokens(provider.issue_tokens()).await.unwrap();
        assert_eq!(count(&fronts::storm(&client, &url, 10, None).await, 200), 10, "set_tokens brings the layer back");
        assert!(!auth.state().is_reauthorization_required());
    }
}

#[tokio::test]
async fn krogers_plain_text_400_for_a_spent_refresh_token_is_terminal() {
    let server = MockServer::start().await;
    Mock::given(path("/api"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error_description": "The access token is invalid or has expired",
            "error": "invalid_token"
        })))
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_string("Missing/Invalid Refresh Token"))
        .expect(1)
        .mount(&server)
        .await;
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
        .initial_tokens(TokenSet::new("a").with_refresh_token("spent"))
        .allow_origin(server.uri())
        .build()
        .unwrap();
    let client = client_with(&auth);

    for _ in 0..3 {
        let err = client.get(format!("{}/api", server.uri())).send().await.unwrap_err();
        match Error::from_middleware(&err) {
            Some(Error::ReauthorizationRequired { reason: RefreshError::Protocol { status, body, .. }, .. }) => {
                assert_eq!(status.as_u16(), 400);
                assert_eq!(body, "Missing/Invalid Refresh Token");
            }
            other => panic!("expected re-authorization, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_providers_own_terminal_code_can_be_configured() {
    let server = MockServer::start().await;
    Mock::given(path("/api")).respond_with(ResponseTemplate::new(401)).mount(&server).await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({"error": "refresh_token_not_found"})))
        .mount(&server)
        .await;
    let build = |terminal: bool| {
        let mut builder = TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
            .initial_tokens(TokenSet::new("a").with_refresh_token("r"))
            .allow_origin(server.uri());
        if terminal {
            builder = builder.terminal_error("refresh_token_not_found");
        }
        builder.build().unwrap()
    };

    let plain = build(false);
    let err = client_with(&plain).get(format!("{}/api", server.uri())).send().await.unwrap_err();
    assert!(matches!(Error::from_middleware(&err), Some(Error::Refresh { .. })), "a 404 is not terminal by default");

    let configured = build(true);
    let err = client_with(&configured).get(format!("{}/api", server.uri())).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
}

#[tokio::test]
async fn invalid_grant_adopts_tokens_another_process_rotated_instead_of_going_terminal() {
    let server = MockServer::start().await;
    mount_api_accepting(&server, "a2").await;
    // The first refresh to arrive (layer B's) is refused late; the second (layer A's) wins.
    Mock::given(path("/token"))
        .and(body_string_contains("refresh_token=r1"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(serde_json::json!({"error": "invalid_grant"}))
                .set_delay(Duration::from_millis(400)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .and(body_string_contains("refresh_token=r1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "a2", "refresh_token": "r2", "expires_in": 3600
        })))
        .mount(&server)
        .await;
    let store = Lockless::default();
    let make = || {
        TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
            .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
            .store(store.clone())
            .allow_origin(server.uri())
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    let url = format!("{}/api", server.uri());

    let from_b = tokio::spawn({
        let client = client_with(&b);
        let url = url.clone();
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client_with(&a).get(&url).send().await.unwrap().status(), 200);

    assert_eq!(from_b.await.unwrap().unwrap(), 200, "B adopted A's tokens instead of dying");
    assert!(!b.state().is_reauthorization_required());
    assert_eq!(b.stats().adopted, 1);
    assert_eq!(b.tokens().unwrap().refresh_token().unwrap().secret(), "r2");
}

#[tokio::test]
async fn tokens_in_the_store_win_over_initial_tokens() {
    let provider = MockProvider::start().await;
    let store = MemoryStore::new();
    let rotated = provider.issue_tokens();
    store.put(&TokenKey::default(), &rotated).await.unwrap();
    let stale = TokenSet::new("stale-access").with_refresh_token("stale-refresh");
    let auth = layer(&provider, stale).store(store.clone()).build().unwrap();

    let response = client_with(&auth).get(provider.api_url("me")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(auth.tokens().unwrap(), rotated, "the store's tokens were used, not the initial ones");
    assert_eq!(store.get(&TokenKey::default()).await.unwrap().unwrap(), rotated);
    assert_eq!(provider.stats().token_calls, 0);
}

#[tokio::test]
async fn a_missing_refresh_token_means_reauthorization() {
    let provider = MockProvider::start().await;
    provider.expire_access_tokens();
    let auth = layer(&provider, TokenSet::new("only-access")).build().unwrap();
    let err = client_with(&auth).get(provider.api_url("me")).send().await.unwrap_err();
    match Error::from_middleware(&err) {
        Some(Error::ReauthorizationRequired { reason: RefreshError::NoRefreshToken, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(provider.stats().token_calls, 0);
}

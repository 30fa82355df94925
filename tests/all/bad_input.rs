//! Bad input gets a typed, readable error and never a panic (contract points 4, 6 and 9 where they
//! meet malformed token responses): 200 answers that are not JSON, lack `access_token`, have a
//! negative or absurd `expires_in`, are megabytes long, or hold an access token that cannot be
//! sent in a header all give `Error::Refresh { source: RefreshError::InvalidResponse { .. } }`
//! with no token value in its `Display` or `Debug`; a new refresh token that arrives with an
//! unusable answer is saved, not lost; `set_tokens` and `build` refuse unsendable access tokens.

use std::time::{Duration, SystemTime};

use reqwest_token_refresh::{
    Error, ManualClock, MemoryStore, RefreshError, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet,
};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::StoreExt;
use crate::helpers::client_with;

/// Secrets that must never appear in an error's text.
const SECRETS: &[&str] = &["SECRET-ACCESS", "SECRET-REFRESH", "ACCESS-TAIL"];

/// Every `Display` and `Debug` of `err` and of its whole `source()` chain.
fn all_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(err);
    while let Some(err) = next {
        text.push_str(&format!("{err}\n{err:?}\n{err:#?}\n"));
        next = err.source();
    }
    text
}

fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} leaked in:\n{text}");
    }
}

/// Runs one request against an API that rejects `a1`, with a token endpoint that answers
/// `answer`; returns the layer's error and the reason it gives.
async fn refresh_error_for(answer: ResponseTemplate) -> (Error, String) {
    let server = MockServer::start().await;
    Mock::given(path("/api"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path("/token")).respond_with(answer).expect(1).mount(&server).await;
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
        .allow_origin(server.uri())
        .build()
        .unwrap();

    let err = client_with(&auth).get(format!("{}/api", server.uri())).send().await.unwrap_err();

    assert_no_secret(&format!("{err}\n{err:?}"));
    let ours = Error::from_middleware(&err).unwrap_or_else(|| panic!("not our error: {err:?}")).clone();
    assert_no_secret(&all_text(&ours));
    let reason = match &ours {
        Error::Refresh { key, source: RefreshError::InvalidResponse { status, reason, body, .. } } => {
            assert_eq!(key, &TokenKey::default());
            assert_eq!(status.as_u16(), 200);
            assert_no_secret(body);
            reason.clone()
        }
        other => panic!("expected Error::Refresh with InvalidResponse, got {other:?}"),
    };
    assert!(!reason.is_empty() && reason.is_ascii(), "a readable reason: {reason:?}");
    assert!(ours.to_string().contains("token refresh failed"), "{ours}");
    assert!(
        all_text(&ours).contains(&reason),
        "the reason is part of the error chain's text, so logging the error shows it"
    );
    assert!(!auth.state().is_reauthorization_required(), "a garbled answer is not a dead refresh token");
    server.verify().await;
    (ours, reason)
}

fn json_answer(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

#[tokio::test]
async fn a_token_answer_that_is_not_json_is_a_typed_error_without_the_tokens_in_it() {
    // GitHub's token endpoint answers form-encoded unless asked for JSON.
    let body = "access_token=SECRET-ACCESS-FORM&scope=repo&token_type=bearer&refresh_token=SECRET-REFRESH-FORM";
    let (_, reason) =
        refresh_error_for(ResponseTemplate::new(200).set_body_raw(body, "application/x-www-form-urlencoded")).await;
    assert!(reason.contains("not JSON"), "{reason}");
}

#[tokio::test]
async fn an_html_error_page_with_status_200_is_a_typed_error() {
    let (_, reason) =
        refresh_error_for(ResponseTemplate::new(200).set_body_raw("<html><h1>Maintenance</h1></html>", "text/html"))
            .await;
    assert!(reason.contains("not JSON"), "{reason}");
}

#[tokio::test]
async fn a_token_answer_without_access_token_is_a_typed_error() {
    let (_, reason) =
        refresh_error_for(json_answer(r#"{"token_type":"bearer","refresh_token":"SECRET-REFRESH-NOACC"}"#)).await;
    assert!(reason.contains("`access_token` is missing"), "{reason}");
}

#[tokio::test]
async fn a_negative_expires_in_is_a_typed_error() {
    let (_, reason) = refresh_error_for(json_answer(r#"{"access_token":"SECRET-ACCESS-NEG","expires_in":-5}"#)).await;
    assert!(reason.contains("negative"), "{reason}");
}

#[tokio::test]
async fn an_absurd_expires_in_is_a_typed_error() {
    let (_, reason) =
        refresh_error_for(json_answer(r#"{"access_token":"SECRET-ACCESS-HUGE","expires_in":1e12}"#)).await;
    assert!(reason.contains("ten years"), "{reason}");
}

#[tokio::test]
async fn a_megabytes_long_token_answer_is_a_typed_error_without_the_tokens_in_it() {
    // A well-formed start (as a proxy that appends garbage, or a provider that pads, would send),
    // then 2 MiB of filler: the layer stops reading at its cap.
    let mut body = br#"{"access_token":"SECRET-ACCESS-BIG","refresh_token":"SECRET-REFRESH-BIG","padding":""#.to_vec();
    body.extend((0..2 * 1024 * 1024).map(|i| b'a' + (i % 26) as u8));
    body.extend_from_slice(br#""}"#);
    let (_, reason) = refresh_error_for(ResponseTemplate::new(200).set_body_raw(body, "application/json")).await;
    assert!(reason.contains("larger than"), "{reason}");
}

#[tokio::test]
async fn an_access_token_with_a_newline_is_a_typed_error() {
    // JSON-escaped: the parsed token holds a real line feed.
    let (_, reason) =
        refresh_error_for(json_answer(r#"{"access_token":"SECRET-ACCESS\nACCESS-TAIL","expires_in":3600}"#)).await;
    assert!(reason.contains("position 13"), "the reason says where, never what: {reason}");
}

#[tokio::test]
async fn an_access_token_with_a_space_is_a_typed_error() {
    let (_, reason) =
        refresh_error_for(json_answer(r#"{"access_token":"SECRET-ACCESS ACCESS-TAIL","expires_in":3600}"#)).await;
    assert!(reason.contains("position 13"), "{reason}");
}

/// A layer on a [`ManualClock`] with a shared store, holding `a1` / `r1`, whose token endpoint is
/// `server`'s `/token`; and a client for it.
fn clocked_layer(server: &MockServer, store: &MemoryStore, clock: &ManualClock) -> TokenRefresh {
    let grant = RefreshTokenGrant::new(format!("{}/token", server.uri())).clock(clock.clone());
    TokenRefresh::builder(grant)
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
        .store(store.clone())
        .clock(clock.clone())
        .allow_origin(server.uri())
        .build()
        .unwrap()
}

/// Checks that after a refresh whose answer was unusable but carried `r2`, the store and the layer
/// hold `r2`, nothing is called during the cool-down, and after it the next refresh presents `r2`.
async fn assert_new_refresh_token_survives(unusable_answer: &str) {
    let server = MockServer::start().await;
    Mock::given(path("/api"))
        .and(header("authorization", "Bearer a3"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .expect(1)
        .mount(&server)
        .await;
    // A rotating provider: r1 is spent by the first call, whatever the client makes of the answer.
    Mock::given(path("/token"))
        .and(body_string_contains("refresh_token=r1"))
        .respond_with(json_answer(unusable_answer))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .and(body_string_contains("refresh_token=r2"))
        .respond_with(json_answer(r#"{"access_token":"a3","refresh_token":"r3","expires_in":3600}"#))
        .expect(1)
        .mount(&server)
        .await;
    let store = MemoryStore::new();
    let clock = ManualClock::new(SystemTime::now());
    let auth = clocked_layer(&server, &store, &clock);
    let client = client_with(&auth);
    let url = format!("{}/api", server.uri());

    let err = client.get(&url).send().await.unwrap_err();
    match Error::from_middleware(&err) {
        Some(Error::Refresh { source: RefreshError::InvalidResponse { .. }, .. }) => {}
        other => panic!("expected an invalid response, got {other:?}"),
    }
    let stored = store.get(&TokenKey::default()).await.unwrap().expect("something was saved");
    assert_eq!(stored.refresh_token().map(|r| r.secret()), Some("r2"), "the new refresh token was saved");
    assert_eq!(auth.tokens().unwrap().refresh_token().map(|r| r.secret()), Some("r2"));

    // During the cool-down: a typed transient error, no token call.
    let err = client.get(&url).send().await.unwrap_err();
    let ours = Error::from_middleware(&err).expect("our error");
    assert!(ours.retry_after().is_some(), "says when to retry: {ours:?}");
    let token_calls = |requests: &[wiremock::Request]| requests.iter().filter(|r| r.url.path() == "/token").count();
    assert_eq!(token_calls(&server.received_requests().await.unwrap()), 1);

    clock.advance(Duration::from_secs(120));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200, "the next refresh used r2");
    assert_eq!(store.get(&TokenKey::default()).await.unwrap().unwrap().refresh_token().unwrap().secret(), "r3");
    server.verify().await;
}

#[tokio::test]
async fn a_new_refresh_token_that_arrives_with_an_unsendable_access_token_is_saved_and_used_next() {
    assert_new_refresh_token_survives(r#"{"access_token":"bad\ntoken","refresh_token":"r2","expires_in":3600}"#).await;
}

#[tokio::test]
async fn a_new_refresh_token_that_arrives_with_a_negative_expires_in_is_saved_and_used_next() {
    assert_new_refresh_token_survives(r#"{"access_token":"a2","refresh_token":"r2","expires_in":-5}"#).await;
}

#[tokio::test]
async fn a_new_refresh_token_that_arrives_with_an_absurd_expires_in_is_saved_and_used_next() {
    assert_new_refresh_token_survives(r#"{"access_token":"a2","refresh_token":"r2","expires_in":1e12}"#).await;
}

#[tokio::test]
async fn set_tokens_refuses_an_access_token_with_a_newline_and_installs_nothing() {
    let store = MemoryStore::new();
    let auth = TokenRefresh::builder(RefreshTokenGrant::new("http://127.0.0.1:9/token"))
        .store(store.clone())
        .allow_origin("https://api.example")
        .build()
        .unwrap();
    auth.set_tokens(TokenSet::new("good").with_refresh_token("r-good")).await.unwrap();

    let err = auth
        .set_tokens(TokenSet::new("SECRET-ACCESS\nACCESS-TAIL").with_refresh_token("SECRET-REFRESH-X"))
        .await
        .unwrap_err();

    match &err {
        Error::InvalidAccessToken { key, problem } => {
            assert_eq!(key, &TokenKey::default());
            assert!(problem.contains("not visible ASCII"), "{problem}");
        }
        other => panic!("expected InvalidAccessToken, got {other:?}"),
    }
    assert_no_secret(&all_text(&err));
    assert_eq!(auth.tokens().unwrap().access_token().secret(), "good", "the layer still holds the old tokens");
    let stored = store.get(&TokenKey::default()).await.unwrap().unwrap();
    assert_eq!(stored.access_token().secret(), "good", "nothing was saved");
    assert_eq!(stored.refresh_token().unwrap().secret(), "r-good");
}

#[tokio::test]
async fn set_tokens_for_a_new_key_with_an_unsendable_token_leaves_the_key_empty() {
    let auth = TokenRefresh::builder(RefreshTokenGrant::new("http://127.0.0.1:9/token"))
        .allow_origin("https://api.example")
        .build()
        .unwrap();
    let key = TokenKey::new("user-1");
    for bad in ["a\nb", "a b", "", "é"] {
        let err = auth.set_tokens_for(&key, TokenSet::new(bad)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidAccessToken { .. }), "{bad:?}: {err:?}");
    }
    assert!(auth.tokens_for(&key).is_none());
    assert!(matches!(auth.state_for(&key), reqwest_token_refresh::TokenState::Empty));
}

#[test]
fn building_with_an_unsendable_initial_access_token_is_a_config_error() {
    let result = TokenRefresh::builder(RefreshTokenGrant::new("https://provider.example/token"))
        .initial_tokens(TokenSet::new("SECRET-ACCESS\nACCESS-TAIL"))
        .allow_origin("https://api.provider.example")
        .build();
    match result {
        Err(err @ Error::Config(_)) => {
            assert!(err.to_string().contains("initial tokens"), "{err}");
            assert_no_secret(&all_text(&err));
        }
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

//! Withings (`004_…`): `action=requesttoken` and the credentials in the form body, answers in a
//! `{"status":0,"body":{...}}` envelope, a new refresh token on every refresh, and the old one
//! valid only until the new access token is used. Its data API rejects a token with HTTP 200 and
//! `"status":401`, which `providers::withings_token_rejected` recognises; the preset carries it.

use std::time::Duration;

use reqwest_token_refresh::testkit::{Fault, MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{Error, MemoryStore, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet, providers};
use wiremock::matchers::{header, method};

use super::{assert_matches, form, token_requests};
use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, storm};

/// The Withings preset pointed at the mock (its token endpoint, and its API in place of
/// Withings'), as it is otherwise: with the preset's own rejection rule.
fn preset(provider: &MockProvider) -> RefreshTokenGrant {
    providers::withings(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).token_url(provider.token_url()).api_origin(provider.uri())
}

fn withings(provider: &MockProvider, tokens: TokenSet, store: &MemoryStore) -> TokenRefresh {
    TokenRefresh::builder(preset(provider)).initial_tokens(tokens).store(store.clone()).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withings_storm_of_200_refreshes_once_through_the_envelope_and_stores_the_rotation() {
    let provider = MockProvider::withings().await;
    let store = MemoryStore::new();
    let first = provider.issue_tokens();
    let auth = withings(&provider, first.clone(), &store);
    provider.expire_access_tokens();

    let statuses = storm(&client_with(&auth), &provider.api_url("measure"), 200, None).await;

    assert_eq!(count(&statuses, 200), 200);
    let seen = provider.stats();
    assert_eq!(seen.api_ok, 200, "every request got data, not a `status: 401` envelope: {seen:?}");
    assert!(seen.api_unauthorized >= 1, "the expired token was rejected in a 200: {seen:?}");
    assert_eq!(auth.stats().unauthorized, seen.api_unauthorized, "the layer saw each of those rejections");
    let request = &token_requests(&provider, 1)[0];
    assert_matches(
        request,
        &[("POST", &method("POST")), ("a form body", &header("content-type", "application/x-www-form-urlencoded"))],
    );
    let fields = form(request);
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(field("action"), Some("requesttoken"));
    assert_eq!(field("grant_type"), Some("refresh_token"));
    assert_eq!(field("client_id"), Some(MOCK_CLIENT_ID));
    assert_eq!(field("client_secret"), Some(MOCK_CLIENT_SECRET));
    assert_eq!(field("refresh_token"), first.refresh_token().map(|t| t.secret()));

    let stored = store.get(&TokenKey::default()).await.unwrap().unwrap();
    assert_ne!(stored.refresh_token(), first.refresh_token(), "every refresh rotates; the new one is stored");
    assert!(stored.extra().contains_key("userid"), "Withings' own fields are kept: {stored:?}");
}

#[tokio::test]
async fn withings_invalid_refresh_token_in_a_200_envelope_is_terminal() {
    let provider = MockProvider::withings().await;
    let auth = withings(&provider, provider.issue_tokens(), &MemoryStore::new());
    provider.revoke_all();
    provider.expire_access_tokens();

    let err = client_with(&auth).get(provider.api_url("measure")).send().await.unwrap_err();

    match Error::from_middleware(&err) {
        Some(Error::ReauthorizationRequired { reason, .. }) => {
            assert_eq!(reason.oauth_error().map(|e| e.error.as_str()), Some("invalid_grant"), "{reason}");
        }
        other => panic!("expected re-authorization, got {other:?}"),
    }
}

#[tokio::test]
async fn withings_grace_recovers_a_refresh_whose_answer_was_lost() {
    let provider = MockProvider::withings().await;
    let store = MemoryStore::new();
    let first = provider.issue_tokens();
    let grant = preset(&provider).timeout(Duration::from_millis(300));
    let auth = TokenRefresh::builder(grant)
        .initial_tokens(first)
        .store(store.clone())
        .min_backoff(Duration::from_millis(1))
        .build()
        .unwrap();
    let client = client_with(&auth);
    provider.expire_access_tokens();
    // Withings rotates, but the answer never arrives: the layer still holds the old refresh token.
    provider.fail_next_token_calls(1, Fault::LoseAnswer);

    assert!(client.get(provider.api_url("measure")).send().await.is_err(), "the lost answer is a transport error");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let response = client.get(provider.api_url("measure")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["status"], 0, "the old refresh token was still valid: the new access token was never used");
    assert_eq!(provider.stats().token_calls, 2);
    assert_eq!(provider.stats().reuse_detected, 0);
}

#[tokio::test]
async fn the_withings_preset_refreshes_on_a_200_with_status_401_with_no_rule_on_the_builder() {
    let provider = MockProvider::withings().await;
    let auth = TokenRefresh::builder(preset(&provider)).initial_tokens(provider.issue_tokens()).build().unwrap();
    provider.expire_access_tokens();

    let response = client_with(&auth).get(provider.api_url("measure")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["status"], 0, "the rejected token was refreshed and the retry got data: {answer}");
    assert_eq!(provider.stats().token_calls, 1);
    let stats = auth.stats();
    assert_eq!((stats.unauthorized, stats.refreshes, stats.retries), (1, 1, 1), "{stats:?}");
}

#[tokio::test]
async fn a_rule_on_the_builder_replaces_the_presets_and_one_that_finds_nothing_leaves_withings_200s_alone() {
    let provider = MockProvider::withings().await;
    let auth = TokenRefresh::builder(preset(&provider))
        .initial_tokens(provider.issue_tokens())
        .token_rejected_when(|_, _| false)
        .build()
        .unwrap();
    provider.expire_access_tokens();

    let response = client_with(&auth).get(provider.api_url("measure")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["status"], 401, "{answer}");
    assert_eq!(provider.stats().token_calls, 0, "the builder's rule, not the preset's, judged the answer");
    assert_eq!(provider.stats().api_unauthorized, 1, "the token did reach the API");
}

#[tokio::test]
async fn a_large_withings_answer_is_handed_over_without_being_read() {
    // The rule only sees answers that may fit in the peek limit; a long data answer (declared by
    // its length) reaches the caller untouched, and nothing refreshes.
    let server = wiremock::MockServer::start().await;
    let data = format!(r#"{{"status":0,"body":{{"series":"{}"}}}}"#, "x".repeat(64 * 1024));
    wiremock::Mock::given(wiremock::matchers::path("/measure"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_raw(data.clone(), "application/json"))
        .mount(&server)
        .await;
    let auth = TokenRefresh::builder(providers::withings(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET))
        .initial_tokens(TokenSet::new("at").with_expires_in(Duration::from_secs(3600)))
        .allow_origin(server.uri())
        .token_rejected_when(|_, body: &[u8]| panic!("a {}-byte answer was peeked", body.len()))
        .build()
        .unwrap();

    let response = client_with(&auth).get(format!("{}/measure", server.uri())).send().await.unwrap();

    assert_eq!(response.text().await.unwrap(), data);
    assert_eq!(auth.stats().refreshes, 0);
    let received = server.received_requests().await.unwrap();
    assert_eq!(received[0].headers["authorization"], "Bearer at", "the answer was one to the token");
}

#[tokio::test]
async fn a_retry_rejected_again_goes_back_as_it_came_and_both_rejections_are_counted() {
    let server = wiremock::MockServer::start().await;
    let rejection = r#"{"status":401,"body":{},"error":"invalid_token: The access token provided is invalid"}"#;
    wiremock::Mock::given(wiremock::matchers::path("/measure"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_raw(rejection, "application/json"))
        .expect(2)
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::path("/token"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-2", "refresh_token": "rt-2", "expires_in": 10800, "token_type": "Bearer"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let auth = TokenRefresh::builder(reqwest_token_refresh::RefreshTokenGrant::new(format!("{}/token", server.uri())))
        .initial_tokens(TokenSet::new("at-1").with_refresh_token("rt-1").with_expires_in(Duration::from_secs(3600)))
        .allow_origin(server.uri())
        .token_rejected_when(providers::withings_token_rejected)
        .build()
        .unwrap();
    assert!(format!("{auth:?}").contains("token_rejected_when: Some"), "{auth:?}");

    let response = client_with(&auth).get(format!("{}/measure", server.uri())).send().await.unwrap();

    assert_eq!(response.text().await.unwrap(), rejection, "one retry, no loop: the second rejection as it came");
    let stats = auth.stats();
    assert_eq!((stats.refreshes, stats.retries, stats.unauthorized), (1, 1, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withings_token_that_carried_data_and_then_is_rejected_is_refreshed_at_once() {
    let provider = MockProvider::withings().await;
    let auth = withings(&provider, provider.issue_expired_tokens(), &MemoryStore::new());
    let client = client_with(&auth);
    let url = provider.api_url("measure");
    // The first request's retry, with the token just fetched, carries data: that token is good.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 1);
    // Moments later Withings rejects it (the user revoked access): a refresh, not a hold-back.
    provider.revoke_all();
    provider.expire_access_tokens();
    let err = client.get(&url).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required(), "{err:?}");
    assert_eq!(provider.stats().token_calls, 2);
    assert_eq!(auth.stats().refreshes_held_back, 0);
}

//! Kroger (`002_…`): HTTP Basic client authentication, a form body, single-use refresh tokens,
//! 401 `{"error":"invalid_token"}` from the API, a plain-text 400 for a spent refresh token.

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{Error, MemoryStore, RefreshError, TokenKey, TokenRefresh, TokenSet, providers};
use wiremock::matchers::{body_string_contains, header, method, path};

use super::{assert_matches, form, token_requests};
use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, storm};

fn kroger(provider: &MockProvider, tokens: TokenSet, store: &MemoryStore) -> TokenRefresh {
    TokenRefresh::builder(
        providers::kroger(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
            .token_url(provider.token_url())
            .api_origin(provider.uri()),
    )
    .initial_tokens(tokens)
    .store(store.clone())
    .build()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kroger_storm_of_200_refreshes_once_with_basic_auth_and_stores_the_rotated_token() {
    let provider = MockProvider::kroger().await;
    let store = MemoryStore::new();
    let first = provider.issue_tokens();
    let auth = kroger(&provider, first.clone(), &store);
    provider.expire_access_tokens();

    let statuses = storm(&client_with(&auth), &provider.api_url("v1/cart"), 200, None).await;

    assert_eq!(count(&statuses, 200), 200);
    assert!(auth.stats().unauthorized >= 1, "Kroger's JSON 401 was recognised as a dead token");
    let request = &token_requests(&provider, 1)[0];
    let spent = first.refresh_token().unwrap().secret();
    assert_matches(
        request,
        &[
            ("POST", &method("POST")),
            ("the token path", &path(url_path(&provider))),
            ("a form body", &header("content-type", "application/x-www-form-urlencoded")),
            (
                "HTTP Basic of mock-client:mock-secret",
                &header("authorization", "Basic bW9jay1jbGllbnQ6bW9jay1zZWNyZXQ="),
            ),
            ("the refresh grant", &body_string_contains("grant_type=refresh_token")),
            ("the current refresh token", &body_string_contains(format!("refresh_token={spent}").as_str())),
        ],
    );
    assert!(form(request).iter().all(|(name, _)| name != "client_secret"), "no secret in the body");

    let stored = store.get(&TokenKey::default()).await.unwrap().unwrap();
    assert_ne!(stored.refresh_token(), first.refresh_token(), "the rotated refresh token is stored");
    assert_eq!(Some(&stored), auth.tokens().as_ref());
}

#[tokio::test]
async fn krogers_plain_text_400_for_a_spent_refresh_token_is_terminal() {
    let provider = MockProvider::kroger().await;
    let first = provider.issue_tokens();
    provider.expire_access_tokens();
    // Spend the refresh token in one layer, then present it again from a layer that never heard.
    let current = kroger(&provider, first.clone(), &MemoryStore::new());
    assert_eq!(client_with(&current).get(provider.api_url("v1/cart")).send().await.unwrap().status(), 200);
    let stale = kroger(&provider, first, &MemoryStore::new());

    let err = client_with(&stale).get(provider.api_url("v1/cart")).send().await.unwrap_err();

    match Error::from_middleware(&err) {
        Some(Error::ReauthorizationRequired {
            reason: RefreshError::Protocol { status, error: None, body, .. },
            ..
        }) => {
            assert_eq!(status.as_u16(), 400);
            assert!(body.contains("Missing/Invalid Refresh Token"), "{body}");
        }
        other => panic!("expected re-authorization on Kroger's plain-text 400, got {other:?}"),
    }
}

fn url_path(provider: &MockProvider) -> String {
    reqwest::Url::parse(&provider.token_url()).unwrap().path().to_owned()
}

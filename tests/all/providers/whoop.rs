//! WHOOP (`000_…`): `grant_type=refresh_token` as a form body carrying `client_id`,
//! `client_secret`, `scope=offline` and `refresh_token`; a bare 401 from the API.

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{Error, MemoryStore, TokenKey, TokenRefresh, providers};
use wiremock::matchers::{header, method};

use super::{assert_matches, form, token_requests};
use crate::helpers::StoreExt;
use crate::helpers::{client_with, count, storm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoop_storm_of_200_refreshes_once_with_the_documented_form_body_and_stores_the_rotation() {
    let provider = MockProvider::whoop().await;
    let store = MemoryStore::new();
    let first = provider.issue_tokens();
    let auth = TokenRefresh::builder(
        providers::whoop(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).token_url(provider.token_url()).api_origin(provider.uri()),
    )
    .initial_tokens(first.clone())
    .store(store.clone())
    .build()
    .unwrap();
    provider.expire_access_tokens();

    let statuses = storm(&client_with(&auth), &provider.api_url("developer/v2/recovery"), 200, None).await;

    assert_eq!(count(&statuses, 200), 200);
    assert!(auth.stats().unauthorized >= 1, "WHOOP's bare 401 counts as a dead token by default");
    let request = &token_requests(&provider, 1)[0];
    assert_matches(
        request,
        &[("POST", &method("POST")), ("a form body", &header("content-type", "application/x-www-form-urlencoded"))],
    );
    assert!(!request.headers.contains_key("authorization"), "the credentials go in the body, not in Basic");
    let mut fields = form(request);
    fields.sort();
    let spent = first.refresh_token().unwrap().secret().to_owned();
    assert_eq!(
        fields,
        [
            ("client_id".to_owned(), MOCK_CLIENT_ID.to_owned()),
            ("client_secret".to_owned(), MOCK_CLIENT_SECRET.to_owned()),
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), spent),
            ("scope".to_owned(), "offline".to_owned()),
        ]
    );
    let stored = store.get(&TokenKey::default()).await.unwrap().unwrap();
    assert_ne!(stored.refresh_token(), first.refresh_token(), "scope=offline brought a new refresh token, stored");
}

#[tokio::test]
async fn whoops_invalid_grant_for_a_revoked_refresh_token_is_terminal() {
    let provider = MockProvider::whoop().await;
    let auth = TokenRefresh::builder(
        providers::whoop(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).token_url(provider.token_url()).api_origin(provider.uri()),
    )
    .initial_tokens(provider.issue_tokens())
    .build()
    .unwrap();
    provider.revoke_all();
    provider.expire_access_tokens();

    let err = client_with(&auth).get(provider.api_url("developer/v2/recovery")).send().await.unwrap_err();

    let ours = Error::from_middleware(&err).unwrap();
    assert!(ours.is_reauthorization_required(), "{ours}");
    assert_eq!(provider.stats().token_calls, 1);
}

//! The WHOOP Partner API (`001_…`): `grant_type=client_credentials` as a JSON body with
//! `client_id`, `client_secret` and `scope`; no refresh token; a 401 means "get a new token and
//! retry".

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{Error, TokenRefresh, providers};
use wiremock::matchers::{body_json, header, method};

use super::{assert_matches, token_requests};
use crate::helpers::{client_with, count, storm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoop_partner_fetches_once_per_storm_with_the_documented_json_body() {
    let provider = MockProvider::whoop_partner().await;
    let source = providers::whoop_partner(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .token_url(provider.token_url())
        .api_origin(provider.uri());
    let auth = TokenRefresh::builder(source).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("developer/v2/partner/members");

    assert_eq!(count(&storm(&client, &url, 200, None).await, 200), 200, "no token yet: one fetch for all");
    provider.expire_access_tokens();
    assert_eq!(count(&storm(&client, &url, 200, None).await, 200), 200, "expired: one more fetch for all");

    for request in &token_requests(&provider, 2) {
        assert_matches(
            request,
            &[
                ("POST", &method("POST")),
                ("a JSON body", &header("content-type", "application/json")),
                (
                    "the documented fields",
                    &body_json(serde_json::json!({
                        "grant_type": "client_credentials",
                        "client_id": MOCK_CLIENT_ID,
                        "client_secret": MOCK_CLIENT_SECRET,
                        "scope": "whoop-partner/token",
                    })),
                ),
            ],
        );
    }
    assert!(auth.tokens().unwrap().refresh_token().is_none());
}

#[tokio::test]
async fn whoop_partner_invalid_client_is_terminal_and_the_clients_fault_not_the_users() {
    let provider = MockProvider::whoop_partner().await;
    let source = providers::whoop_partner(MOCK_CLIENT_ID, "wrong-secret")
        .token_url(provider.token_url())
        .api_origin(provider.uri());
    let auth = TokenRefresh::builder(source).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("developer/v2/partner/members");

    for _ in 0..3 {
        let err = client.get(&url).send().await.unwrap_err();
        let ours = Error::from_middleware(&err).unwrap();
        assert!(matches!(ours, Error::ClientRejected { .. }), "{ours:?}");
        assert!(!ours.is_reauthorization_required(), "no user can fix a wrong client secret: {ours}");
    }
    assert_eq!(provider.stats().token_calls, 1, "a refused client is not asked again");
    assert!(matches!(auth.state(), reqwest_token_refresh::TokenState::ClientRejected { .. }), "{:?}", auth.state());
}

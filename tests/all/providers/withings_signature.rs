//! Withings' signed token calls (`providers::withings_signed`): a nonce from the signature service
//! (`action=getnonce`), then the token call with `nonce` and an HMAC-SHA256 `signature` instead of
//! the client secret. The worked example's hex signatures were computed apart from the crate with
//! `openssl dgst -sha256 -hmac`.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest_token_refresh::providers::{self, WithingsSignature};
use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{ClientAuth, Error, ManualClock, RefreshTokenGrant, TokenRefresh, TokenSource};
use serde_json::Value;
use sha2::Sha256;
use tokio::time::timeout;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::{form, token_requests};
use crate::helpers::{client_with, count, storm};

const BOUND: Duration = Duration::from_secs(10);

/// The signed preset pointed at the mock: its token endpoint, its signature service, its API.
fn signed(provider: &MockProvider, secret: &str) -> RefreshTokenGrant {
    providers::withings_signed(MOCK_CLIENT_ID, secret)
        .token_url(provider.token_url())
        .client_auth(ClientAuth::WithingsSignature(WithingsSignature::new(provider.signature_url())))
        .api_origin(provider.uri())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// HMAC-SHA256 in lowercase hex, computed here rather than by the crate.
fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_worked_example_signs_the_nonce_request_and_the_token_call_as_openssl_does() {
    // Fixed inputs: client id `a1b2c3d4e5`, secret `shh-withings-secret`, the clock at
    // 1,700,000,000, and a signature service that hands out the nonce `7c8f1a2e-nonce-30min`.
    //   printf '%s' 'getnonce,a1b2c3d4e5,1700000000' | openssl dgst -sha256 -hmac 'shh-withings-secret'
    //   printf '%s' 'requesttoken,a1b2c3d4e5,7c8f1a2e-nonce-30min' | openssl dgst -sha256 -hmac 'shh-withings-secret'
    const NONCE_SIGNATURE: &str = "cef7e459d3902658e8cd10f55444df1746b8f4009f47167c74299879b38a5576";
    const CALL_SIGNATURE: &str = "1949dc7c6071f1b405eac117919fee25a0864837b5196aed545e12528a9c5ad2";
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/signature"))
        .and(body_string_contains(format!("signature={NONCE_SIGNATURE}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"status":0,"body":{"nonce":"7c8f1a2e-nonce-30min"}}"#, "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/oauth2"))
        .and(body_string_contains(format!("signature={CALL_SIGNATURE}")))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"status":0,"body":{"access_token":"at-new","refresh_token":"rt-new","expires_in":10800}}"#,
            "application/json",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let grant = providers::withings_signed("a1b2c3d4e5", "shh-withings-secret")
        .token_url(format!("{}/v2/oauth2", server.uri()))
        .client_auth(ClientAuth::WithingsSignature(WithingsSignature::new(format!("{}/v2/signature", server.uri()))))
        .clock(clock);
    let current = reqwest_token_refresh::TokenSet::new("at-old").with_refresh_token("rt-old");

    let tokens = timeout(BOUND, grant.fetch(Some(&current))).await.unwrap().expect("both signatures match");

    assert_eq!(tokens.access_token().secret(), "at-new");
    let requests = server.received_requests().await.unwrap();
    let nonce_request = form(&requests[0]);
    assert_eq!(
        nonce_request,
        [
            ("action", "getnonce"),
            ("client_id", "a1b2c3d4e5"),
            ("timestamp", "1700000000"),
            ("signature", NONCE_SIGNATURE)
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    let call = form(&requests[1]);
    assert_eq!(field(&call, "action"), Some("requesttoken"));
    assert_eq!(field(&call, "nonce"), Some("7c8f1a2e-nonce-30min"));
    assert_eq!(field(&call, "signature"), Some(CALL_SIGNATURE));
    assert_eq!(field(&call, "client_secret"), None, "the secret is never sent");
    for request in &requests {
        assert!(!String::from_utf8_lossy(&request.body).contains("shh-withings-secret"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_withings_storm_of_200_refreshes_once_with_one_nonce_and_no_secret() {
    let provider = MockProvider::withings().await;
    let first = provider.issue_tokens();
    let auth =
        TokenRefresh::builder(signed(&provider, MOCK_CLIENT_SECRET)).initial_tokens(first.clone()).build().unwrap();
    provider.expire_access_tokens();

    let statuses =
        timeout(BOUND * 6, storm(&client_with(&auth), &provider.api_url("measure"), 200, None)).await.unwrap();

    assert_eq!(count(&statuses, 200), 200);
    let seen = provider.stats();
    assert_eq!((seen.token_calls, seen.nonces_issued, seen.tokens_issued), (1, 1, 1), "{seen:?}");
    let fields = form(&token_requests(&provider, 1)[0]);
    assert_eq!(field(&fields, "action"), Some("requesttoken"));
    assert_eq!(field(&fields, "grant_type"), Some("refresh_token"));
    assert_eq!(field(&fields, "client_id"), Some(MOCK_CLIENT_ID));
    assert_eq!(field(&fields, "client_secret"), None);
    let nonce = field(&fields, "nonce").expect("a nonce");
    let expected = hmac_hex(MOCK_CLIENT_SECRET, &format!("requesttoken,{MOCK_CLIENT_ID},{nonce}"));
    assert_eq!(field(&fields, "signature"), Some(expected.as_str()));
    assert_ne!(auth.tokens().unwrap().refresh_token(), first.refresh_token(), "rotated");

    // The next expiry fetches a nonce of its own: a nonce works once.
    provider.expire_access_tokens();
    assert_eq!(client_with(&auth).get(provider.api_url("measure")).send().await.unwrap().status(), 200);
    let seen = provider.stats();
    assert_eq!((seen.token_calls, seen.nonces_issued), (2, 2), "{seen:?}");
}

#[tokio::test]
async fn a_replayed_signed_token_call_is_refused_for_its_spent_nonce() {
    let provider = MockProvider::withings().await;
    let tokens = provider.issue_tokens();
    let grant = signed(&provider, MOCK_CLIENT_SECRET);
    timeout(BOUND, grant.fetch(Some(&tokens))).await.unwrap().unwrap();

    let captured: Request = token_requests(&provider, 1).remove(0);
    let answer = crate::helpers::replay_token_request(&provider, captured.body.clone()).await;
    let body: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(body["status"], 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nonce"), "{body}");
    assert_eq!(provider.stats().tokens_issued, 1);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_signature_service_as_the_clients_fault() {
    let provider = MockProvider::withings().await;
    let auth = TokenRefresh::builder(signed(&provider, "not-the-secret"))
        .initial_tokens(provider.issue_expired_tokens())
        .build()
        .unwrap();

    let err = timeout(BOUND, client_with(&auth).get(provider.api_url("measure")).send()).await.unwrap().unwrap_err();

    match Error::from_middleware(&err) {
        Some(Error::ClientRejected { reason, .. }) => {
            assert_eq!(reason.oauth_error().map(|e| e.error.as_str()), Some("invalid_client"), "{reason}");
            let shown = format!("{reason} {reason:?}");
            assert!(!shown.contains("not-the-secret"), "{shown}");
        }
        other => panic!("expected ClientRejected, got {other:?}"),
    }
    let seen = provider.stats();
    assert_eq!((seen.nonces_issued, seen.token_calls), (0, 0), "no nonce, so no token call: {seen:?}");
}

#[tokio::test]
async fn a_signed_login_exchanges_its_code_with_a_nonce_as_the_seed_snippet_does() {
    let provider = MockProvider::withings().await;
    let grant = signed(&provider, MOCK_CLIENT_SECRET).authorize_url(provider.authorize_url());
    let login = grant.login("https://app.example/withings/callback").unwrap();
    let (url, pending) = login.start().unwrap();
    let callback = timeout(BOUND, provider.approve(&url)).await.unwrap();

    let tokens = timeout(BOUND, login.exchange(&pending, &callback)).await.unwrap().expect("exchanged");

    assert!(tokens.refresh_token().is_some());
    let fields = form(&token_requests(&provider, 1)[0]);
    assert_eq!(field(&fields, "grant_type"), Some("authorization_code"));
    assert!(field(&fields, "nonce").is_some() && field(&fields, "signature").is_some(), "{fields:?}");
    assert_eq!(field(&fields, "client_secret"), None);
    assert_eq!(provider.stats().nonces_issued, 1);
}

#[tokio::test]
async fn a_signature_without_an_action_to_sign_is_a_configuration_error() {
    let grant = RefreshTokenGrant::new("http://127.0.0.1:9/v2/oauth2")
        .client_id("id")
        .client_secret("secret")
        .client_auth(ClientAuth::WithingsSignature(WithingsSignature::new("http://127.0.0.1:9/v2/signature")));
    let tokens = reqwest_token_refresh::TokenSet::new("a").with_refresh_token("r");
    let err = timeout(BOUND, grant.fetch(Some(&tokens))).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("action"), "{err}");
}

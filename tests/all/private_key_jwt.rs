//! `private_key_jwt` client authentication (RFC 7523, OpenID Connect Core §9) against the mock
//! provider over loopback: ES256 and RS256 keys accepted for every grant (refresh, client
//! credentials, the code exchange), each request signed afresh, a replayed assertion, a wrong key
//! and bad claims refused, and no key in any rendering.
#![cfg(feature = "private-key-jwt")]

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    CLIENT_ASSERTION_TYPE, ClientAssertionKey, ClientAuth, ClientCredentials, Clock, Error, ManualClock, RefreshError,
    RefreshTokenGrant, ServerMetadata, TokenRefresh, TokenSource,
};
use serde_json::Value;
use tokio::time::timeout;
use wiremock::Request;

use crate::helpers::{client_with, storm};

const BOUND: Duration = Duration::from_secs(10);
const CLIENT: &str = "service-7";
const ES256: &str = include_str!("../keys/es256.pem");
const ES256_SEC1: &str = include_str!("../keys/es256-sec1.pem");
const ES256_OTHER: &str = include_str!("../keys/es256-other.pem");
const RS256: &str = include_str!("../keys/rs256.pem");
const RS256_PKCS1: &str = include_str!("../keys/rs256-pkcs1.pem");

fn key(pem: &str) -> ClientAssertionKey {
    ClientAssertionKey::from_pem(pem).expect("a test key")
}

/// A standard mock that knows `CLIENT` by this public key only (no client secret).
async fn provider_for(key: &ClientAssertionKey) -> MockProvider {
    MockProvider::builder().client_key(CLIENT, &key.public_jwk()).start().await
}

fn fields(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The header and claims of a JWT, decoded (not verified: the mock did that).
fn jwt_parts(jwt: &str) -> (Value, Value) {
    let mut parts = jwt.split('.').map(|part| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()));
    (parts.next().unwrap().unwrap(), parts.next().unwrap().unwrap())
}

#[tokio::test]
async fn an_es256_client_assertion_refreshes_a_storm_once_with_no_secret_sent() {
    let signing = key(ES256).with_key_id("es-1");
    let provider = MockProvider::builder()
        .client_key(CLIENT, &key(ES256_OTHER).public_jwk())
        .client_key(CLIENT, &signing.public_jwk())
        .start()
        .await;
    let grant = RefreshTokenGrant::new(provider.token_url())
        .client_id(CLIENT)
        .client_secret("never-sent-secret")
        .client_auth(ClientAuth::PrivateKeyJwt(signing))
        .api_origin(provider.uri());
    let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_expired_tokens()).build().unwrap();

    let statuses = timeout(BOUND * 3, storm(&client_with(&auth), &provider.api_url("v1/me"), 50, None)).await.unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(provider.stats().token_calls, 1);

    let request = &provider.token_requests()[0];
    assert!(request.headers.get("authorization").is_none(), "no HTTP Basic");
    let sent = fields(request);
    assert_eq!(field(&sent, "client_assertion_type"), Some(CLIENT_ASSERTION_TYPE));
    assert_eq!(field(&sent, "client_id"), Some(CLIENT));
    assert_eq!(field(&sent, "client_secret"), None);
    assert!(!String::from_utf8_lossy(&request.body).contains("never-sent-secret"));
    let (header, claims) = jwt_parts(field(&sent, "client_assertion").unwrap());
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "es-1");
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(claims["sub"], CLIENT);
    assert_eq!(claims["aud"].as_str(), Some(provider.token_url().as_str()));
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now) <= 5, "iat {iat} is now ({now})");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 60), "a 60-second assertion");
}

#[tokio::test]
async fn an_rs256_client_assertion_gets_client_credentials_and_each_call_signs_a_new_jti() {
    let signing = key(RS256_PKCS1);
    let provider = provider_for(&key(RS256)).await;
    let grant =
        ClientCredentials::new(provider.token_url()).client_id(CLIENT).client_auth(ClientAuth::PrivateKeyJwt(signing));
    for _ in 0..3 {
        timeout(BOUND, grant.fetch(None)).await.unwrap().expect("RS256 is accepted");
    }
    let ids: Vec<String> = provider
        .token_requests()
        .iter()
        .map(|request| {
            let (header, claims) = jwt_parts(field(&fields(request), "client_assertion").unwrap());
            assert_eq!(header["alg"], "RS256");
            claims["jti"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
    assert_eq!(provider.stats().tokens_issued, 3);
}

#[tokio::test]
async fn a_replayed_client_assertion_is_refused_as_invalid_client() {
    let signing = key(ES256_SEC1);
    let provider = provider_for(&signing).await;
    let grant =
        ClientCredentials::new(provider.token_url()).client_id(CLIENT).client_auth(ClientAuth::PrivateKeyJwt(signing));
    timeout(BOUND, grant.fetch(None)).await.unwrap().unwrap();

    // The same request again, byte for byte, as an attacker who captured it would send it.
    let captured = provider.token_requests()[0].clone();
    let answer = crate::helpers::replay_token_request(&provider, captured.body.clone()).await;
    assert_eq!(answer.status(), 400);
    let body: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].as_str().unwrap().contains("jti"), "{body}");
    assert_eq!(provider.stats().tokens_issued, 1, "the replay got nothing");
}

#[tokio::test]
async fn an_assertion_signed_with_another_key_is_terminal_for_the_client() {
    let provider = provider_for(&key(ES256)).await;
    let grant = RefreshTokenGrant::new(provider.token_url())
        .client_id(CLIENT)
        .client_auth(ClientAuth::PrivateKeyJwt(key(ES256_OTHER)))
        .api_origin(provider.uri());
    let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_expired_tokens()).build().unwrap();
    let err = timeout(BOUND, client_with(&auth).get(provider.api_url("v1/me")).send()).await.unwrap().unwrap_err();
    match Error::from_middleware(&err) {
        Some(Error::ClientRejected { reason, .. }) => {
            let oauth = reason.oauth_error().expect("an OAuth error");
            assert_eq!(oauth.error, "invalid_client");
            assert!(oauth.error_description.as_deref().unwrap_or_default().contains("signature"), "{oauth:?}");
        }
        other => panic!("expected ClientRejected, got {other:?}"),
    }
    assert_eq!(provider.stats().tokens_issued, 0);
    // An RS256 key under the EC key's client is refused too: no RS256 key is registered.
    let rs = ClientCredentials::new(provider.token_url())
        .client_id(CLIENT)
        .client_auth(ClientAuth::PrivateKeyJwt(key(RS256)));
    let err = timeout(BOUND, rs.fetch(None)).await.unwrap().unwrap_err();
    assert_eq!(err.oauth_error().map(|e| e.error.as_str()), Some("invalid_client"), "{err}");
}

#[tokio::test]
async fn the_mock_checks_the_assertions_claims_and_lifetime() {
    let signing = key(ES256);
    let clock = ManualClock::starting_now();
    let provider = MockProvider::builder().client_key(CLIENT, &signing.public_jwk()).clock(clock.clone()).start().await;
    let fetch = |grant: ClientCredentials| async move { timeout(BOUND, grant.fetch(None)).await.unwrap() };
    let refused = |outcome: Result<_, RefreshError>, needle: &str| {
        let err = outcome.expect_err("refused");
        let oauth = err.oauth_error().expect("an OAuth error").clone();
        assert_eq!(oauth.error, "invalid_client", "{err}");
        let description = oauth.error_description.unwrap_or_default();
        assert!(description.contains(needle), "{needle:?} not in {description:?}");
    };
    let base = || ClientCredentials::new(provider.token_url()).client_auth(ClientAuth::PrivateKeyJwt(signing.clone()));

    // Another client id: its iss has no key here.
    refused(fetch(base().client_id("someone-else")).await, "registered");
    // An audience that is not this token endpoint: the grant's URL is the assertion's aud, so
    // a URL with a query posts here but signs for another audience.
    let elsewhere = base().client_id(CLIENT).token_url(format!("{}?tenant=a", provider.token_url()));
    refused(fetch(elsewhere).await, "aud");
    // Signed by a client whose clock is two minutes behind: a 60-second assertion has expired.
    let behind = ManualClock::new(clock.now() - Duration::from_secs(120));
    refused(fetch(base().client_id(CLIENT).clock(behind)).await, "expired");
    // Five minutes ahead: iat is in the future.
    let ahead = ManualClock::new(clock.now() + Duration::from_secs(300));
    refused(fetch(base().client_id(CLIENT).clock(ahead)).await, "future");
    // An hour-long assertion is refused whatever else is right.
    let long = ClientCredentials::new(provider.token_url())
        .client_id(CLIENT)
        .client_auth(ClientAuth::PrivateKeyJwt(signing.clone().with_lifetime(Duration::from_secs(3600))));
    refused(fetch(long).await, "at most");
    assert_eq!(provider.stats().tokens_issued, 0);

    // And a secret is no way in once the client is known by its key.
    let secret = ClientCredentials::new(provider.token_url()).client_id(CLIENT).client_secret("guess");
    let err = fetch(secret).await.unwrap_err();
    assert_eq!(err.oauth_error().map(|e| e.error.as_str()), Some("invalid_client"));
    fetch(base().client_id(CLIENT)).await.expect("the right assertion passes");
}

#[tokio::test]
async fn a_login_exchanges_its_code_with_a_client_assertion() {
    let signing = key(RS256);
    let provider = provider_for(&signing).await;
    let grant = RefreshTokenGrant::new(provider.token_url())
        .client_id(CLIENT)
        .client_auth(ClientAuth::PrivateKeyJwt(signing))
        .authorize_url(provider.authorize_url());
    let login = grant.login("https://app.example/callback").unwrap();
    let (url, pending) = login.start().unwrap();
    let callback = timeout(BOUND, provider.approve(&url)).await.unwrap();
    let tokens = timeout(BOUND, login.exchange(&pending, &callback)).await.unwrap().expect("the code is exchanged");
    assert!(tokens.refresh_token().is_some());
    let sent = fields(&provider.token_requests()[0]);
    assert_eq!(field(&sent, "grant_type"), Some("authorization_code"));
    assert_eq!(field(&sent, "client_assertion_type"), Some(CLIENT_ASSERTION_TYPE));
    // The login's tokens refresh with an assertion of their own.
    let refreshed = timeout(BOUND, grant.fetch(Some(&tokens))).await.unwrap().expect("refreshed");
    assert_ne!(refreshed.access_token(), tokens.access_token());
    assert_eq!(provider.stats().tokens_issued, 2);
}

#[tokio::test]
async fn no_key_and_no_assertion_appear_in_debug_or_errors() {
    let server = wiremock::MockServer::start().await;
    // A server that quotes the whole request body back in its error.
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(|request: &Request| {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            wiremock::ResponseTemplate::new(400)
                .set_body_json(serde_json::json!({"error": "invalid_client", "error_description": body}))
        })
        .mount(&server)
        .await;
    for pem in [ES256, RS256] {
        let grant = ClientCredentials::new(format!("{}/token", server.uri()))
            .client_id(CLIENT)
            .client_auth(ClientAuth::PrivateKeyJwt(key(pem)));
        let err = timeout(BOUND, grant.fetch(None)).await.unwrap().unwrap_err();
        let request = server.received_requests().await.unwrap().pop().unwrap();
        let assertion = field(&fields(&request), "client_assertion").unwrap().to_owned();
        let signature = assertion.rsplit('.').next().unwrap();
        let shown = format!("{err} {err:?} {grant:?} {:?}", ClientAuth::PrivateKeyJwt(key(pem)));
        assert!(!shown.contains(signature), "the assertion leaked: {shown}");
        for line in pem.lines().filter(|line| !line.starts_with("-----")) {
            assert!(!shown.contains(line), "the key leaked: {shown}");
        }
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}

#[tokio::test]
async fn the_mocks_metadata_offers_private_key_jwt_once_a_key_is_registered() {
    let provider = provider_for(&key(ES256)).await;
    let metadata = timeout(BOUND, ServerMetadata::discover(provider.issuer())).await.unwrap().unwrap();
    assert!(metadata.token_endpoint_auth_methods_supported().iter().any(|m| m == "private_key_jwt"));
    let grant = metadata.client_credentials().client_id(CLIENT).client_auth(ClientAuth::PrivateKeyJwt(key(ES256)));
    timeout(BOUND, grant.fetch(None)).await.unwrap().expect("the discovered token endpoint takes the assertion");
    let plain = MockProvider::start().await;
    let metadata = timeout(BOUND, ServerMetadata::discover(plain.issuer())).await.unwrap().unwrap();
    assert!(!metadata.token_endpoint_auth_methods_supported().iter().any(|m| m == "private_key_jwt"));
}

#[tokio::test]
async fn private_key_jwt_without_a_client_id_is_a_configuration_error() {
    let grant = ClientCredentials::new("http://127.0.0.1:9/token").client_auth(ClientAuth::PrivateKeyJwt(key(ES256)));
    let err = timeout(BOUND, grant.fetch(None)).await.unwrap().unwrap_err();
    assert!(matches!(&err, RefreshError::Config(reason) if reason.contains("client id")), "{err}");
}

#[tokio::test]
async fn a_revocation_is_authenticated_with_a_fresh_client_assertion_too() {
    let signing = key(ES256);
    let provider = provider_for(&signing).await;
    let grant = RefreshTokenGrant::new(provider.token_url())
        .client_id(CLIENT)
        .client_auth(ClientAuth::PrivateKeyJwt(signing))
        .api_origin(provider.uri())
        .revocation_url(provider.revocation_url());
    let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_expired_tokens()).build().unwrap();
    let client = client_with(&auth);
    assert_eq!(client.get(provider.api_url("v1/me")).send().await.unwrap().status(), 200, "refreshed");

    timeout(BOUND, auth.revoke()).await.expect("bounded").expect("the mock accepted the assertion");
    assert_eq!(provider.stats().tokens_revoked, 1);
    let sent = fields(&provider.revocation_requests()[0]);
    assert_eq!(field(&sent, "client_assertion_type"), Some(CLIENT_ASSERTION_TYPE));
    assert!(field(&sent, "client_secret").is_none(), "no secret is sent");
    let revocation_assertion = field(&sent, "client_assertion").expect("an assertion").to_owned();
    let refresh_assertion = field(&fields(&provider.token_requests()[0]), "client_assertion").unwrap().to_owned();
    assert_ne!(revocation_assertion, refresh_assertion, "signed for this request alone");
    let (_, claims) = jwt_parts(&revocation_assertion);
    assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some(CLIENT), Some(CLIENT)));
}

//! Unit tests of the mock's DPoP (RFC 9449), through HTTP as a client sees it: each check of a
//! proof at the token endpoint and the API, the binding of tokens to the key, the nonces, and
//! the counters.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use url::Url;

use super::MockProvider;
use crate::dpop::ProofFor;
use crate::{AccessToken, DpopKey, ManualClock, TokenSet};

/// How long any one call to the mock may take.
const BOUND: Duration = Duration::from_secs(10);

/// An answer, read whole.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    json: Value,
}

impl Answer {
    fn error(&self) -> (u16, &str) {
        (self.status, self.json["error"].as_str().unwrap_or_default())
    }

    fn challenge(&self) -> &str {
        self.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn nonce(&self) -> Option<&str> {
        self.headers.get("dpop-nonce").and_then(|v| v.to_str().ok())
    }
}

async fn read(request: reqwest::RequestBuilder) -> Answer {
    let response = tokio::time::timeout(BOUND, request.send()).await.expect("the mock answers in time").unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.bytes().await.expect("a body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Answer { status, headers, json }
}

fn proof(key: &DpopKey, method: &http::Method, url: &str, token: Option<&str>, nonce: Option<&str>) -> String {
    let url = Url::parse(url).unwrap();
    let token = token.map(AccessToken::new);
    let request = ProofFor { method, url: &url, access_token: token.as_ref(), nonce };
    key.proof(request, SystemTime::now()).unwrap()
}

/// A refresh with `refresh_token`, carrying `dpop` as its `DPoP` header if any.
async fn refresh(provider: &MockProvider, refresh_token: &str, dpop: Option<String>) -> Answer {
    let mut request = reqwest::Client::new()
        .post(provider.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=refresh_token&refresh_token={refresh_token}"));
    if let Some(dpop) = dpop {
        request = request.header("dpop", dpop);
    }
    read(request).await
}

/// A GET of the API with `Authorization: {scheme} {token}` and `dpop` as its proof if any.
async fn api(provider: &MockProvider, scheme: &str, token: &str, dpop: Option<String>) -> Answer {
    let mut request =
        reqwest::Client::new().get(provider.api_url("v1/me")).header("authorization", format!("{scheme} {token}"));
    if let Some(dpop) = dpop {
        request = request.header("dpop", dpop);
    }
    read(request).await
}

/// A refresh proof for `provider`'s token endpoint.
fn token_proof(provider: &MockProvider, key: &DpopKey, nonce: Option<&str>) -> String {
    proof(key, &http::Method::POST, &provider.token_url(), None, nonce)
}

/// An API proof for `token` at `provider`'s `v1/me`.
fn api_proof(provider: &MockProvider, key: &DpopKey, token: &str, nonce: Option<&str>) -> String {
    proof(key, &http::Method::GET, &provider.api_url("v1/me"), Some(token), nonce)
}

fn secrets(tokens: &TokenSet) -> (String, String) {
    (tokens.access_token().secret().to_owned(), tokens.refresh_token().unwrap().secret().to_owned())
}

#[tokio::test]
async fn a_refresh_with_a_valid_proof_gets_dpop_tokens_bound_to_its_key() {
    let provider = MockProvider::builder().dpop().start().await;
    let key = DpopKey::generate().unwrap();
    let (_, refresh_token) = secrets(&provider.issue_tokens());

    let answer = refresh(&provider, &refresh_token, Some(token_proof(&provider, &key, None))).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["token_type"], "DPoP");
    let access = answer.json["access_token"].as_str().unwrap().to_owned();
    let rotated = answer.json["refresh_token"].as_str().unwrap().to_owned();

    // The API takes it with a proof of that key, and with nothing else.
    assert_eq!(api(&provider, "DPoP", &access, Some(api_proof(&provider, &key, &access, None))).await.status, 200);
    let other = DpopKey::generate().unwrap();
    let stolen = api(&provider, "DPoP", &access, Some(api_proof(&provider, &other, &access, None))).await;
    assert_eq!(stolen.error(), (401, "invalid_token"));
    assert!(stolen.challenge().starts_with("DPoP "), "{}", stolen.challenge());
    let as_bearer = api(&provider, "Bearer", &access, None).await;
    assert_eq!(as_bearer.error(), (401, "invalid_token"), "a bound token is not a bearer token");

    // The rotated refresh token is bound too: another key's proof cannot spend it.
    let elsewhere = refresh(&provider, &rotated, Some(token_proof(&provider, &other, None))).await;
    assert_eq!(elsewhere.error(), (400, "invalid_grant"));
    let again = refresh(&provider, &rotated, Some(token_proof(&provider, &key, None))).await;
    assert_eq!(again.status, 200, "{}", again.json);

    let stats = provider.stats();
    assert_eq!(stats.dpop_proofs_checked, 5);
    assert_eq!(stats.dpop_jtis, 5);
    assert_eq!((stats.dpop_proofs_rejected, stats.dpop_replays), (0, 0));
}

#[tokio::test]
async fn a_token_request_without_a_valid_proof_is_refused_and_says_why() {
    let provider = MockProvider::builder().dpop().start().await;
    let key = DpopKey::generate().unwrap();
    let (_, refresh_token) = secrets(&provider.issue_tokens());
    let expect_refused = |answer: Answer, why: &str| {
        assert_eq!(answer.error(), (400, "invalid_dpop_proof"), "{why}: {}", answer.json);
        let description = answer.json["error_description"].as_str().unwrap_or_default().to_owned();
        assert!(description.contains(why), "{why}: {description}");
    };

    expect_refused(refresh(&provider, &refresh_token, None).await, "required");
    let wrong_method = proof(&key, &http::Method::GET, &provider.token_url(), None, None);
    expect_refused(refresh(&provider, &refresh_token, Some(wrong_method)).await, "htm");
    let wrong_url = proof(&key, &http::Method::POST, &provider.api_url("token"), None, None);
    expect_refused(refresh(&provider, &refresh_token, Some(wrong_url)).await, "htu");
    let with_ath = proof(&key, &http::Method::POST, &provider.token_url(), Some("at"), None);
    expect_refused(refresh(&provider, &refresh_token, Some(with_ath)).await, "ath");
    let good = token_proof(&provider, &key, None);
    let (input, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", "A".repeat(86));
    expect_refused(refresh(&provider, &refresh_token, Some(forged)).await, "signature");
    expect_refused(refresh(&provider, &refresh_token, Some("not.a.jwt".into())).await, "JWS");

    // A header that is not dpop+jwt, or whose jwk carries the private key.
    let with_header = |header: Value| {
        let claims = json!({"jti": "j-1", "htm": "POST", "htu": provider.token_url(), "iat": now_secs()});
        let Ok(proof) = crate::jws::compact(&header, &claims, |input| crate::jws::es256_sign(key.signing_key(), input));
        proof
    };
    let plain_jwt = with_header(json!({"typ": "JWT", "alg": "ES256", "jwk": key.public_jwk()}));
    expect_refused(refresh(&provider, &refresh_token, Some(plain_jwt)).await, "typ");
    let mut private = key.public_jwk().clone();
    private["d"] = serde_json::to_value(&key).unwrap()["d"].clone();
    let leaky = with_header(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}));
    expect_refused(refresh(&provider, &refresh_token, Some(leaky)).await, "private");

    // The refresh token is untouched by all that: a valid proof still spends it.
    let answer = refresh(&provider, &refresh_token, Some(token_proof(&provider, &key, None))).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(provider.stats().dpop_proofs_rejected, 7);
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_replayed_proof_is_refused_at_the_token_endpoint_and_the_api() {
    let provider = MockProvider::builder().dpop().start().await;
    let key = DpopKey::generate().unwrap();
    let tokens = provider.issue_dpop_tokens(&key);
    let (access, refresh_token) = secrets(&tokens);

    let api_once = api_proof(&provider, &key, &access, None);
    assert_eq!(api(&provider, "DPoP", &access, Some(api_once.clone())).await.status, 200);
    assert_eq!(api(&provider, "DPoP", &access, Some(api_once)).await.error(), (401, "invalid_dpop_proof"));

    let token_once = token_proof(&provider, &key, None);
    assert_eq!(refresh(&provider, &refresh_token, Some(token_once.clone())).await.status, 200);
    let replayed = refresh(&provider, &refresh_token, Some(token_once)).await;
    assert_eq!(replayed.error(), (400, "invalid_dpop_proof"));
    assert_eq!(provider.stats().dpop_replays, 2);
    assert_eq!(provider.stats().reuse_detected, 0, "refused before the refresh token was looked at");
}

#[tokio::test]
async fn the_api_checks_ath_and_a_proofs_age_on_the_providers_clock() {
    let clock = ManualClock::starting_now();
    let provider = MockProvider::builder().dpop().clock(clock.clone()).start().await;
    let key = DpopKey::generate().unwrap();
    let (access, _) = secrets(&provider.issue_dpop_tokens(&key));

    let for_another_token = api_proof(&provider, &key, "another-token", None);
    assert_eq!(api(&provider, "DPoP", &access, Some(for_another_token)).await.error(), (401, "invalid_dpop_proof"));
    let without_ath = proof(&key, &http::Method::GET, &provider.api_url("v1/me"), None, None);
    assert_eq!(api(&provider, "DPoP", &access, Some(without_ath)).await.error(), (401, "invalid_dpop_proof"));
    assert_eq!(api(&provider, "DPoP", &access, None).await.error(), (401, "invalid_dpop_proof"));

    // Proofs are stamped by the system clock here; move the provider's away from it.
    clock.advance(Duration::from_secs(6 * 60));
    let stale = api(&provider, "DPoP", &access, Some(api_proof(&provider, &key, &access, None))).await;
    assert_eq!(stale.error(), (401, "invalid_dpop_proof"));
    assert!(stale.challenge().contains("too old"), "{}", stale.challenge());
    clock.set(SystemTime::now() - Duration::from_secs(2 * 60));
    let early = api(&provider, "DPoP", &access, Some(api_proof(&provider, &key, &access, None))).await;
    assert!(early.challenge().contains("future"), "{}", early.challenge());
    clock.set(SystemTime::now());
    assert_eq!(api(&provider, "DPoP", &access, Some(api_proof(&provider, &key, &access, None))).await.status, 200);
}

#[tokio::test]
async fn nonces_are_demanded_issued_sent_and_rotated() {
    let provider = MockProvider::builder().dpop_nonces(true, true).start().await;
    let key = DpopKey::generate().unwrap();
    let (_, refresh_token) = secrets(&provider.issue_tokens());

    let demanded = refresh(&provider, &refresh_token, Some(token_proof(&provider, &key, None))).await;
    assert_eq!(demanded.error(), (400, "use_dpop_nonce"));
    let nonce = demanded.nonce().expect("the demand carries the nonce").to_owned();
    let answer = refresh(&provider, &refresh_token, Some(token_proof(&provider, &key, Some(&nonce)))).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.nonce(), Some(nonce.as_str()), "every answer carries the current nonce");
    let access = answer.json["access_token"].as_str().unwrap().to_owned();

    // The API shares the origin and so the nonce.
    assert_eq!(
        api(&provider, "DPoP", &access, Some(api_proof(&provider, &key, &access, Some(&nonce)))).await.status,
        200
    );
    let rotated = provider.rotate_dpop_nonce();
    assert_ne!(rotated, nonce);
    let stale = api(&provider, "DPoP", &access, Some(api_proof(&provider, &key, &access, Some(&nonce)))).await;
    assert_eq!(stale.error(), (401, "use_dpop_nonce"));
    assert!(stale.challenge().contains(r#"error="use_dpop_nonce""#), "{}", stale.challenge());
    assert_eq!(stale.nonce(), Some(rotated.as_str()));
    assert_eq!(
        api(&provider, "DPoP", &access, Some(api_proof(&provider, &key, &access, Some(&rotated)))).await.status,
        200
    );

    let stats = provider.stats();
    assert_eq!((stats.dpop_nonces_issued, stats.dpop_nonce_demands), (2, 2));
}

#[tokio::test]
async fn without_dpop_mode_nothing_changes_and_the_metadata_says_when_it_is_on() {
    let plain = MockProvider::start().await;
    let (access, _) = secrets(&plain.issue_tokens());
    assert_eq!(api(&plain, "Bearer", &access, None).await.status, 200);
    let document = |provider: &MockProvider| {
        let url = format!("{}/.well-known/oauth-authorization-server", provider.uri());
        async move { read(reqwest::Client::new().get(url)).await.json }
    };
    assert!(document(&plain).await.get("dpop_signing_alg_values_supported").is_none());
    let dpop = MockProvider::builder().dpop().start().await;
    assert_eq!(document(&dpop).await["dpop_signing_alg_values_supported"], json!(["ES256"]));
    // In DPoP mode an unbound token still works as a bearer token.
    let (access, _) = secrets(&dpop.issue_tokens());
    assert_eq!(api(&dpop, "Bearer", &access, None).await.status, 200);
}

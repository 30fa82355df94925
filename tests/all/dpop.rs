//! DPoP (RFC 9449) on token requests, against the mock provider in DPoP mode over loopback: every
//! token request carries a proof the mock accepts, a token endpoint's nonce costs one round trip
//! and no extra refresh, the key is saved with the tokens and used again after a restart, a lost
//! key is terminal, and the private key shows nowhere.
#![cfg(feature = "dpop")]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    ClientAssertionKey, ClientAuth, ClientCredentials, DpopError, DpopKey, Error, FileStore, ManualClock, RefreshError,
    RefreshTokenGrant, TokenRefresh, TokenSet, TokenSource,
};
use serde_json::Value;
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const BOUND: Duration = Duration::from_secs(10);
/// Past the mock's one-hour access tokens.
const AN_HOUR_LATER: Duration = Duration::from_secs(60 * 60 + 1);
const ES256: &str = include_str!("../keys/es256.pem");

/// `grant` pointed at the mock provider's token endpoint and API, on the test's driven clock.
fn on_clock(provider: &MockProvider, clock: &ManualClock, grant: RefreshTokenGrant) -> RefreshTokenGrant {
    grant.token_url(provider.token_url()).api_origin(provider.uri()).clock(clock.clone())
}

/// A mock provider in DPoP mode on `clock`, its token endpoint demanding nonces if `nonces`.
async fn provider(clock: &ManualClock, nonces: bool) -> MockProvider {
    MockProvider::builder().dpop_nonces(nonces, false).clock(clock.clone()).start().await
}

/// The header and claims of the `DPoP` proof a token request carried.
fn proof_of(request: &Request) -> (Value, Value) {
    let proof = request.headers.get("dpop").expect("a DPoP header").to_str().unwrap();
    let mut parts =
        proof.split('.').map(|part| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// The private scalar of `key` as a store holds it: what must show nowhere else.
fn private_part(key: &DpopKey) -> String {
    serde_json::to_value(key).unwrap()["d"].as_str().unwrap().to_owned()
}

/// Every proof the provider checked was accepted, and each had its own `jti`.
fn every_proof_valid_and_unique(provider: &MockProvider, proofs: u64) {
    let stats = provider.stats();
    assert_eq!(stats.dpop_proofs_checked, proofs, "{stats:?}");
    assert_eq!(stats.dpop_jtis, proofs, "every proof its own jti: {stats:?}");
    assert_eq!((stats.dpop_proofs_rejected, stats.dpop_replays), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_refresh_carries_a_proof_the_provider_accepts_and_the_new_tokens_are_bound_to_the_key() {
    let clock = ManualClock::starting_now();
    let provider = provider(&clock, false).await;
    let key = DpopKey::from_pkcs8_pem(ES256).unwrap();
    let grant = on_clock(&provider, &clock, RefreshTokenGrant::new("").dpop(key.clone()));
    let auth = TokenRefresh::builder(grant)
        .initial_tokens(provider.issue_dpop_tokens(&key))
        .clock(clock.clone())
        .build()
        .unwrap();

    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, auth.access_token()).await.unwrap().expect("the refresh is accepted");
    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, auth.access_token()).await.unwrap().expect("and the next one, with the rotated token");

    assert_eq!(provider.stats().tokens_issued, 2);
    assert_eq!(auth.stats().refreshes, 2);
    every_proof_valid_and_unique(&provider, 2);
    let tokens = auth.tokens().unwrap();
    assert_eq!(tokens.token_type(), Some("DPoP"));
    assert_eq!(tokens.dpop_key(), Some(&key));

    let request = &provider.token_requests()[0];
    let (header, claims) = proof_of(request);
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(&header["jwk"], key.public_jwk());
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], provider.token_url());
    assert!(claims.get("ath").is_none(), "a token request presents no access token");
}

#[tokio::test]
async fn a_nonce_demanded_by_the_token_endpoint_costs_one_round_trip_and_no_extra_refresh() {
    let clock = ManualClock::starting_now();
    let provider = provider(&clock, true).await;
    let key = DpopKey::generate().unwrap();
    let grant = on_clock(&provider, &clock, RefreshTokenGrant::new("").dpop_generated());
    let auth = TokenRefresh::builder(grant)
        .initial_tokens(provider.issue_dpop_tokens(&key))
        .clock(clock.clone())
        .build()
        .unwrap();

    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, auth.access_token()).await.unwrap().expect("the refresh succeeds on its retry");
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.dpop_nonce_demands), (2, 1, 1));
    assert_eq!(auth.stats().refreshes, 1, "one refresh, whatever its round trips");
    assert_eq!(auth.stats().refresh_failures, 0);
    let requests = provider.token_requests();
    assert!(proof_of(&requests[0]).1.get("nonce").is_none(), "no nonce known yet");
    let nonce = proof_of(&requests[1]).1["nonce"].clone();
    assert!(nonce.as_str().is_some_and(|n| n.starts_with("nonce-")), "the retry carries the nonce: {nonce}");
    assert_ne!(proof_of(&requests[0]).1["jti"], proof_of(&requests[1]).1["jti"], "a fresh proof");

    // The nonce is remembered: the next refresh goes through at once.
    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, auth.access_token()).await.unwrap().unwrap();
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.dpop_nonce_demands), (3, 2, 1));

    // A rotated nonce is met the same way, one round trip more.
    provider.rotate_dpop_nonce();
    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, auth.access_token()).await.unwrap().unwrap();
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.dpop_nonce_demands), (5, 3, 2));
    assert_eq!(auth.stats().refreshes, 3);
    every_proof_valid_and_unique(&provider, 5);
    assert_eq!(auth.tokens().unwrap().dpop_key(), Some(&key), "the saved key, not a generated one");
}

#[tokio::test]
async fn a_nonce_retry_signs_a_new_client_assertion_too() {
    let clock = ManualClock::starting_now();
    let client_key = ClientAssertionKey::from_pem(ES256).unwrap();
    let provider = MockProvider::builder()
        .client_key("service", &client_key.public_jwk())
        .dpop_nonces(true, false)
        .clock(clock.clone())
        .start()
        .await;
    let grant = ClientCredentials::new(provider.token_url())
        .client_id("service")
        .client_auth(ClientAuth::PrivateKeyJwt(client_key))
        .clock(clock.clone())
        .dpop_generated();

    let tokens = timeout(BOUND, grant.fetch(None)).await.unwrap().expect("accepted on the retry");
    assert_eq!(tokens.token_type(), Some("DPoP"));
    let first = timeout(BOUND, grant.fetch(None)).await.unwrap().unwrap();
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.dpop_nonce_demands), (3, 2, 1));
    assert_ne!(tokens.dpop_key(), first.dpop_key(), "a fresh key for each new grant of tokens");
    every_proof_valid_and_unique(&provider, 3);
}

#[tokio::test]
async fn a_file_store_restart_refreshes_with_the_key_saved_with_the_tokens() {
    let clock = ManualClock::starting_now();
    let provider = provider(&clock, false).await;
    let dir = std::env::temp_dir().join(format!("rtr-dpop-{}-{}", std::process::id(), line!()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.json");
    let key = DpopKey::generate().unwrap();
    let layer = |initial: Option<TokenSet>| {
        let grant = on_clock(&provider, &clock, RefreshTokenGrant::new("").dpop_generated());
        let builder = TokenRefresh::builder(grant).store(FileStore::new(&path)).clock(clock.clone());
        match initial {
            Some(tokens) => builder.initial_tokens(tokens),
            None => builder,
        }
        .build()
        .unwrap()
    };

    let before = layer(Some(provider.issue_dpop_tokens(&key)));
    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, before.access_token()).await.unwrap().unwrap();
    drop(before);

    let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let saved = file.to_string();
    assert!(saved.contains(&private_part(&key)), "the key is saved with the tokens");
    assert!(saved.contains(key.public_jwk()["x"].as_str().unwrap()));

    // A new process: no initial tokens, a grant that would generate a key for a new grant.
    let after = layer(None);
    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, after.access_token()).await.unwrap().expect("the saved key's proof is accepted");
    assert_eq!(after.tokens().unwrap().dpop_key(), Some(&key));
    let stats = provider.stats();
    assert_eq!((stats.tokens_issued, stats.invalid_grants), (2, 0));
    every_proof_valid_and_unique(&provider, 2);
    let (header, _) = proof_of(&provider.token_requests()[1]);
    assert_eq!(&header["jwk"], key.public_jwk());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_dpop_bound_set_whose_key_is_lost_is_terminal_and_sends_nothing() {
    let clock = ManualClock::starting_now();
    let provider = provider(&clock, false).await;
    // A store written without the key: the set says DPoP, and has none.
    let mut stored = serde_json::to_value(provider.issue_dpop_tokens(&DpopKey::generate().unwrap())).unwrap();
    stored.as_object_mut().unwrap().remove("dpop_key");
    let keyless: TokenSet = serde_json::from_value(stored).unwrap();
    assert!(keyless.is_dpop_bound() && keyless.dpop_key().is_none());

    let grant = on_clock(&provider, &clock, RefreshTokenGrant::new("").dpop_generated());
    let auth = TokenRefresh::builder(grant).initial_tokens(keyless).clock(clock.clone()).build().unwrap();
    clock.advance(AN_HOUR_LATER);
    let err = timeout(BOUND, auth.access_token()).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::ReauthorizationRequired { reason: RefreshError::Dpop(DpopError::KeyLost), .. }),
        "{err:?}"
    );
    let reason = std::error::Error::source(&err).map(|reason| {
        let mut text = reason.to_string();
        if let Some(cause) = reason.source() {
            text.push_str(&format!(": {cause}"));
        }
        text
    });
    assert!(reason.as_deref().is_some_and(|r| r.contains("the key is lost")), "{reason:?}");
    // Fail fast afterwards, like any terminal state.
    assert!(timeout(BOUND, auth.access_token()).await.unwrap().unwrap_err().is_reauthorization_required());
    assert_eq!(provider.stats().token_calls, 0, "nothing was sent");
}

#[tokio::test]
async fn a_token_endpoint_that_answers_with_a_bearer_token_is_refused() {
    let server = MockServer::start().await;
    let body = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-2"}"#;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let grant = RefreshTokenGrant::new(format!("{}/token", server.uri())).dpop(DpopKey::generate().unwrap());
    let current = TokenSet::new("at-0").with_refresh_token("rt-1");
    let err = timeout(BOUND, grant.fetch(Some(&current))).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, RefreshError::Dpop(DpopError::NotBound { token_type: Some(t) }) if t == "Bearer"),
        "{err:?}"
    );
    let requests = server.received_requests().await.unwrap();
    assert!(requests[0].headers.contains_key("dpop"), "the request asked for DPoP");
    drop(grant);
    crate::helpers::drop_apart(server);
}

#[tokio::test]
async fn each_login_with_a_generated_key_gets_its_own_key_and_refreshes_with_it() {
    let provider = MockProvider::builder().dpop().start().await;
    let grant = RefreshTokenGrant::new(provider.token_url()).authorize_url(provider.authorize_url()).dpop_generated();
    let login = grant.login("https://app.example/callback").unwrap();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (url, pending) = login.start().unwrap();
        let callback = timeout(BOUND, provider.approve(&url)).await.unwrap();
        let tokens = timeout(BOUND, login.exchange(&pending, &callback)).await.unwrap().unwrap();
        assert_eq!(tokens.token_type(), Some("DPoP"));
        let key = tokens.dpop_key().expect("the key comes with the tokens").clone();
        let refreshed = timeout(BOUND, grant.fetch(Some(&tokens))).await.unwrap().expect("bound to that key");
        assert_eq!(refreshed.dpop_key(), Some(&key));
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1]);
    every_proof_valid_and_unique(&provider, 4);
}

#[tokio::test]
async fn no_debug_output_or_request_shows_the_private_key() {
    let clock = ManualClock::starting_now();
    let provider = provider(&clock, true).await;
    let key = DpopKey::from_pkcs8_pem(ES256).unwrap();
    let grant = on_clock(&provider, &clock, RefreshTokenGrant::new("").dpop(key.clone()));
    let tokens = provider.issue_dpop_tokens(&key);
    let auth =
        TokenRefresh::builder(grant.clone()).initial_tokens(tokens.clone()).clock(clock.clone()).build().unwrap();
    clock.advance(AN_HOUR_LATER);
    timeout(BOUND, auth.access_token()).await.unwrap().unwrap();

    let private = private_part(&key);
    let shown = format!(
        "{key:?} {key:#?} {tokens:?} {tokens:#?} {grant:?} {auth:?} {provider:?} {:?} {:?}",
        auth.tokens(),
        provider.token_requests()
    );
    assert!(shown.contains(key.thumbprint()), "the thumbprint names the key");
    assert!(!shown.contains(&private), "the private key leaked: {shown}");
    for line in ES256.lines().filter(|line| !line.starts_with("-----")) {
        assert!(!shown.contains(line), "a line of the PEM leaked");
    }
    for request in provider.token_requests() {
        let (header, _) = proof_of(&request);
        assert!(header["jwk"].get("d").is_none(), "a proof carries the public key only");
        let sent = format!("{:?}{}", request.headers, String::from_utf8_lossy(&request.body));
        assert!(!sent.contains(&private));
    }
}

//! DPoP (RFC 9449) on the API requests, through both front ends, against the mock provider in
//! DPoP mode over loopback: each request carries `Authorization: DPoP <token>` and a fresh proof
//! with `ath` (§7), a 401 storm on a bound token refreshes once and every retry proves the new
//! token, a nonce demanded by the API costs one round trip and never a token call (§9), and
//! processes sharing a `FileStore` share the bound tokens and their key.
#![cfg(feature = "dpop")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest_token_refresh::testkit::{MockProvider, ProviderStats};
use reqwest_token_refresh::{DpopKey, FileStore, ManualClock, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::fronts::{Client, Front, storm};
use crate::helpers::{StoreExt, count};

const BOUND: Duration = Duration::from_secs(30);

/// A layer on `provider` in DPoP mode, with `tokens` (bound to `key`) installed.
fn layer(provider: &MockProvider, key: &DpopKey, tokens: TokenSet) -> TokenRefresh {
    let grant = RefreshTokenGrant::new(provider.token_url()).api_origin(provider.uri()).dpop(key.clone());
    TokenRefresh::builder(grant).initial_tokens(tokens).build().unwrap()
}

/// The claims of the `DPoP` proof a request carried.
fn claims_of(request: &Request) -> Value {
    let proof = request.headers.get("dpop").expect("a DPoP header").to_str().unwrap();
    let claims = proof.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap()
}

/// RFC 9449 §4.2's `ath`: the base64url SHA-256 of the access token.
fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Every proof the provider checked was accepted, each with its own `jti`.
fn every_proof_valid_and_unique(stats: &ProviderStats, proofs: u64) {
    assert_eq!(stats.dpop_proofs_checked, proofs, "{stats:?}");
    assert_eq!(stats.dpop_jtis, proofs, "every proof its own jti: {stats:?}");
    assert_eq!((stats.dpop_proofs_rejected, stats.dpop_replays), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_storm_of_500_refreshes_once_and_every_retry_proves_the_new_token() {
    for front in Front::ALL {
        let provider = MockProvider::builder().dpop().start().await;
        let key = DpopKey::generate().unwrap();
        let tokens = provider.issue_dpop_tokens(&key);
        let old = tokens.access_token().secret().to_owned();
        let auth = layer(&provider, &key, tokens);
        let client = Client::new(front, &auth);
        // The provider stops accepting the token; the layer still thinks it good.
        provider.expire_access_tokens();

        let statuses = timeout(BOUND, storm(&client, &provider.api_url("v1/me"), 500, None)).await.unwrap();

        assert_eq!(count(&statuses, 200), 500, "{front:?}: {statuses:?}");
        let stats = provider.stats();
        assert_eq!(stats.token_calls, 1, "{front:?}: one token call for the storm");
        // Each request went with the old token and got a 401 `DPoP error="invalid_token"`, or
        // (sent once the refresh was under way) waited for the new one; each 401 was sent again.
        // Every proof was checked, unique, and accepted; the provider checks each `ath` against
        // the token presented, so each of the 500 answers of 200 came to a proof bound to the new
        // token.
        let rejected = stats.api_unauthorized;
        assert!(rejected >= 1, "{front:?}: {stats:?}");
        assert_eq!((stats.api_ok, stats.api_calls), (500, 500 + rejected), "{front:?}: {stats:?}");
        every_proof_valid_and_unique(&stats, stats.api_calls + 1);
        let ours = auth.stats();
        assert_eq!((ours.refreshes, ours.retries, ours.nonce_retries), (1, rejected, 0), "{front:?}: {ours:?}");
        let new = auth.tokens().unwrap();
        assert_ne!(new.access_token().secret(), old);
        assert_eq!(new.dpop_key(), Some(&key), "the new set is bound to the same key");
        assert_eq!(new.token_type(), Some("DPoP"));
    }
}

#[tokio::test]
async fn a_nonce_demanded_by_the_token_endpoint_and_then_by_the_api_costs_one_round_trip_each() {
    for front in Front::ALL {
        let clock = ManualClock::starting_now();
        let provider = MockProvider::builder().dpop_nonces(true, true).clock(clock.clone()).start().await;
        let key = DpopKey::generate().unwrap();
        let grant = RefreshTokenGrant::new(provider.token_url())
            .api_origin(provider.uri())
            .dpop(key.clone())
            .clock(clock.clone());
        let auth = TokenRefresh::builder(grant)
            .initial_tokens(provider.issue_dpop_tokens(&key))
            .clock(clock.clone())
            .build()
            .unwrap();
        let client = Client::new(front, &auth);
        // Past the token's expiry on both clocks: the request refreshes first. The token endpoint
        // demands a nonce (one round trip); the API shares its origin, so it knows it already.
        clock.advance(Duration::from_secs(3601));
        let answer = client.get(provider.api_url("v1/me")).send().await.unwrap();
        assert_eq!(answer.status, 200, "{front:?}");
        let stats = provider.stats();
        assert_eq!((stats.token_calls, stats.tokens_issued), (2, 1), "{front:?}: the nonce's round trip, one grant");
        assert_eq!((stats.api_calls, stats.dpop_nonce_demands), (1, 1), "{front:?}: {stats:?}");

        // The provider moves to a new nonce: the API demands it, and the request goes once more
        // with it, the same token, and no token call.
        provider.rotate_dpop_nonce();
        let answer = client.get(provider.api_url("v1/me")).send().await.unwrap();
        assert_eq!(answer.status, 200, "{front:?}");
        let stats = provider.stats();
        assert_eq!((stats.token_calls, stats.api_calls, stats.dpop_nonce_demands), (2, 3, 2), "{front:?}: {stats:?}");
        assert_eq!(stats.api_ok, 2);
        every_proof_valid_and_unique(&stats, 2 + 3);
        let ours = auth.stats();
        assert_eq!((ours.refreshes, ours.retries, ours.nonce_retries), (1, 0, 1), "{front:?}: {ours:?}");
        // The next request carries the nonce from the start.
        let answer = client.get(provider.api_url("v1/me")).send().await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(provider.stats().api_calls, 4, "{front:?}: no demand now");
    }
}

#[tokio::test]
async fn a_nonce_demand_then_a_dead_token_gets_one_nonce_retry_one_refresh_and_one_retry() {
    for front in Front::ALL {
        let provider = MockProvider::builder().dpop_nonces(false, true).start().await;
        let key = DpopKey::generate().unwrap();
        let auth = layer(&provider, &key, provider.issue_dpop_tokens(&key));
        let client = Client::new(front, &auth);
        provider.expire_access_tokens();

        let answer = client.get(provider.api_url("v1/me")).send().await.unwrap();

        assert_eq!(answer.status, 200, "{front:?}");
        let stats = provider.stats();
        // Without a nonce; with it, refused as expired; with the new token (and the nonce): 200.
        assert_eq!((stats.api_calls, stats.api_unauthorized, stats.api_ok), (3, 2, 1), "{front:?}: {stats:?}");
        assert_eq!((stats.token_calls, stats.dpop_nonce_demands), (1, 1), "{front:?}");
        let ours = auth.stats();
        assert_eq!((ours.refreshes, ours.retries, ours.nonce_retries), (1, 1, 1), "{front:?}: {ours:?}");
    }
}

/// A resource server that demands a new nonce on every request, counting them.
struct AlwaysANewNonce(Arc<AtomicU64>);

impl Respond for AlwaysANewNonce {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(401)
            .insert_header("www-authenticate", r#"DPoP algs="ES256", error="use_dpop_nonce""#)
            .insert_header("dpop-nonce", format!("n-{n}").as_str())
    }
}

#[tokio::test]
async fn a_second_nonce_demand_goes_back_to_the_caller_without_a_refresh() {
    for front in Front::ALL {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/me"))
            .respond_with(AlwaysANewNonce(Arc::default()))
            .mount(&server)
            .await;
        let key = DpopKey::generate().unwrap();
        let tokens = TokenSet::new("at-1").with_token_type("DPoP").with_dpop_key(key).with_refresh_token("rt-1");
        let grant = RefreshTokenGrant::new(format!("{}/token", server.uri())).api_origin(server.uri());
        let auth = TokenRefresh::builder(grant).initial_tokens(tokens).build().unwrap();
        let client = Client::new(front, &auth);

        let answer = client.get(format!("{}/v1/me", server.uri())).send().await.unwrap();

        assert_eq!(answer.status, 401, "{front:?}: handed back, not looped");
        assert_eq!(answer.headers["dpop-nonce"], "n-2");
        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 2, "{front:?}: the request and one nonce retry, no token call");
        let (first, second) = (claims_of(&requests[0]), claims_of(&requests[1]));
        assert_eq!(first.get("nonce"), None);
        assert_eq!(second["nonce"], "n-1", "the retry meets the first demand");
        assert_ne!(first["jti"], second["jti"]);
        for request in &requests {
            assert_eq!(request.headers["authorization"], "DPoP at-1");
            assert_eq!(claims_of(request)["ath"], ath("at-1"));
            assert_eq!(claims_of(request)["htm"], "GET");
            assert_eq!(claims_of(request)["htu"], format!("{}/v1/me", server.uri()));
        }
        let ours = auth.stats();
        assert_eq!((ours.refreshes, ours.nonce_retries), (0, 1), "{front:?}: {ours:?}");
    }
}

#[tokio::test]
async fn api_requests_carry_the_dpop_scheme_and_a_proof_for_their_own_method_and_url() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let key = DpopKey::generate().unwrap();
    let tokens = TokenSet::new("at-7").with_token_type("DPoP").with_dpop_key(key.clone());
    let grant = RefreshTokenGrant::new(format!("{}/token", server.uri())).api_origin(server.uri());
    let auth = TokenRefresh::builder(grant).initial_tokens(tokens).build().unwrap();
    for front in Front::ALL {
        let client = Client::new(front, &auth);
        let answer = client.get(format!("{}/v1/items?page=2#top", server.uri())).send().await.unwrap();
        assert_eq!(answer.status, 200);
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.headers["authorization"], "DPoP at-7");
        let proof = request.headers["dpop"].to_str().unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(proof.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(&header["jwk"], key.public_jwk());
        let claims = claims_of(request);
        assert_eq!(claims["htu"], format!("{}/v1/items", server.uri()), "no query, no fragment");
        assert_eq!(claims["ath"], ath("at-7"));
        assert!(claims["iat"].is_u64() && claims["jti"].is_string());
    }
    assert_ne!(claims_of(&requests[0])["jti"], claims_of(&requests[1])["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_sharing_a_file_store_with_dpop_bound_rotating_tokens_make_one_token_call() {
    let provider = MockProvider::builder().dpop().start().await;
    let key = DpopKey::generate().unwrap();
    let dir = std::env::temp_dir().join(format!("rtr-dpop-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.json");
    // The set as a DPoP login saved it: bound, with its key.
    let store = FileStore::new(&path);
    store.put(&TokenKey::default(), &provider.issue_dpop_tokens(&key)).await.unwrap();
    provider.expire_access_tokens();

    let (ok, failed) = crate::processes::four_process_storm_with(
        &provider,
        crate::processes::StoreSpec::File(path.clone()),
        crate::processes::Dpop::Generated,
    )
    .await;

    assert_eq!((ok, failed), (800, 0));
    let stats = provider.stats();
    assert_eq!(stats.token_calls, 1, "one token call across four processes: {stats:?}");
    assert_eq!((stats.reuse_detected, stats.dpop_proofs_rejected, stats.dpop_replays), (0, 0, 0), "{stats:?}");
    assert_eq!(stats.api_ok, 800);
    // The rotated set went back to the store with the same key: the processes refreshed with the
    // saved key, not one of their own.
    let saved = store.get(&TokenKey::default()).await.unwrap().unwrap();
    assert_eq!(saved.dpop_key(), Some(&key));
    assert!(saved.is_dpop_bound());
    let _ = std::fs::remove_dir_all(dir);
}

/// Answers the n-th request with the n-th of its answers, and with the last from then on.
struct Script {
    answers: Vec<ResponseTemplate>,
    next: AtomicU64,
}

impl Respond for Script {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.next.fetch_add(1, Ordering::SeqCst) as usize;
        self.answers[n.min(self.answers.len() - 1)].clone()
    }
}

/// A 401 demanding a DPoP nonce, giving `nonce`.
fn demand(nonce: &str) -> ResponseTemplate {
    ResponseTemplate::new(401)
        .insert_header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
        .insert_header("dpop-nonce", nonce)
}

/// A 401 saying the DPoP-bound token is dead.
fn refuse() -> ResponseTemplate {
    ResponseTemplate::new(401).insert_header("www-authenticate", r#"DPoP error="invalid_token""#)
}

/// Makes `server`'s `/token` issue the DPoP-bound access token `at-2`.
async fn issue_at_2(server: &MockServer) {
    let issued = serde_json::json!({"access_token": "at-2", "token_type": "DPoP", "expires_in": 3600});
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(issued))
        .mount(server)
        .await;
}

/// A server whose `/v1/me` answers `script` and whose `/token` issues the DPoP-bound `at-2`, and
/// a layer on it holding the DPoP-bound `at-1` (with a refresh token), both bound to one key.
async fn scripted(script: Vec<ResponseTemplate>) -> (MockServer, TokenRefresh) {
    let server = MockServer::start().await;
    let api = Script { answers: script, next: AtomicU64::new(0) };
    Mock::given(method("GET")).and(path("/v1/me")).respond_with(api).mount(&server).await;
    issue_at_2(&server).await;
    let key = DpopKey::generate().unwrap();
    let tokens = TokenSet::new("at-1").with_token_type("DPoP").with_dpop_key(key.clone()).with_refresh_token("rt");
    let grant = RefreshTokenGrant::new(format!("{}/token", server.uri())).api_origin(server.uri()).dpop(key);
    let auth = TokenRefresh::builder(grant).initial_tokens(tokens).build().unwrap();
    (server, auth)
}

/// The requests `server` got at `/v1/me`.
async fn api_requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap().into_iter().filter(|request| request.url.path() == "/v1/me").collect()
}

#[tokio::test]
async fn a_nonce_demanded_of_the_retry_after_a_refresh_is_met_with_the_new_token() {
    for front in Front::ALL {
        let (server, auth) = scripted(vec![refuse(), demand("n-after"), ResponseTemplate::new(200)]).await;
        let client = Client::new(front, &auth);

        let answer = client.get(format!("{}/v1/me", server.uri())).send().await.unwrap();

        assert_eq!(answer.status, 200, "{front:?}");
        let api = api_requests(&server).await;
        assert_eq!(api.len(), 3, "{front:?}: the dead token, the retry, the retry with the nonce");
        let tokens_sent: Vec<&str> = api.iter().map(|r| r.headers["authorization"].to_str().unwrap()).collect();
        assert_eq!(tokens_sent, ["DPoP at-1", "DPoP at-2", "DPoP at-2"], "{front:?}");
        assert_eq!(claims_of(&api[2])["nonce"], "n-after");
        assert_eq!(claims_of(&api[2])["ath"], ath("at-2"), "the nonce retry proves the new token");
        let ours = auth.stats();
        assert_eq!((ours.refreshes, ours.retries, ours.nonce_retries), (1, 1, 1), "{front:?}: {ours:?}");
    }
}

#[tokio::test]
async fn a_request_meets_one_nonce_demand_only_even_across_a_refresh() {
    for front in Front::ALL {
        let script = vec![demand("n-1"), refuse(), demand("n-2"), ResponseTemplate::new(200)];
        let (server, auth) = scripted(script).await;
        let client = Client::new(front, &auth);

        let answer = client.get(format!("{}/v1/me", server.uri())).send().await.unwrap();

        assert_eq!(answer.status, 401, "{front:?}: the second demand goes back to the caller");
        assert_eq!(answer.headers["dpop-nonce"], "n-2", "with its nonce, remembered for the caller's own retry");
        let api = api_requests(&server).await.len();
        assert_eq!(api, 3, "{front:?}: the first send, its nonce retry, the retry after the refresh");
        let ours = auth.stats();
        assert_eq!((ours.refreshes, ours.retries, ours.nonce_retries), (1, 1, 1), "{front:?}: {ours:?}");
        // The caller's own retry carries the remembered nonce and gets through.
        let again = client.get(format!("{}/v1/me", server.uri())).send().await.unwrap();
        assert_eq!(again.status, 200, "{front:?}");
    }
}

/// A token source that says its tokens are DPoP-bound but gives no key to prove them with.
#[derive(Debug)]
struct BindsWithoutAKey {
    calls: Arc<AtomicU64>,
    api: String,
}

#[async_trait::async_trait]
impl reqwest_token_refresh::TokenSource for BindsWithoutAKey {
    async fn fetch(&self, _: Option<&TokenSet>) -> Result<TokenSet, reqwest_token_refresh::RefreshError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(TokenSet::new("at-unprovable").with_token_type("DPoP").with_expires_in(Duration::from_secs(3600)))
    }

    fn resource_server(&self) -> reqwest_token_refresh::ResourceServer {
        reqwest_token_refresh::ResourceServer::new().origin(self.api.clone())
    }
}

#[tokio::test]
async fn a_fetched_set_bound_to_a_key_it_does_not_carry_fails_and_is_not_fetched_again_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let calls = Arc::new(AtomicU64::new(0));
    let auth = TokenRefresh::builder(BindsWithoutAKey { calls: calls.clone(), api: server.uri() }).build().unwrap();
    for front in Front::ALL {
        let client = Client::new(front, &auth);
        let failed = client.get(format!("{}/v1/me", server.uri())).send().await.unwrap_err();
        assert!(failed.ours, "{front:?}: {failed:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one token call, then a cool-down: not one a request");
    assert!(server.received_requests().await.unwrap().is_empty(), "nothing was sent without its proof");
}

#[tokio::test]
async fn a_bearer_token_refreshed_into_a_dpop_bound_one_is_retried_with_a_proof() {
    for front in Front::ALL {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(wiremock::matchers::header("authorization", "Bearer at-1"))
            .respond_with(
                ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(wiremock::matchers::header("authorization", "DPoP at-2"))
            .and(wiremock::matchers::header_exists("dpop"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        issue_at_2(&server).await;
        // Tokens from before the client moved to DPoP, refreshed by a DPoP grant.
        let grant = RefreshTokenGrant::new(format!("{}/token", server.uri()))
            .api_origin(server.uri())
            .dpop(DpopKey::generate().unwrap());
        let tokens = TokenSet::new("at-1").with_refresh_token("rt");
        let auth = TokenRefresh::builder(grant).initial_tokens(tokens).build().unwrap();
        let client = Client::new(front, &auth);

        let answer = client.get(format!("{}/v1/me", server.uri())).send().await.unwrap();

        assert_eq!(answer.status, 200, "{front:?}");
        let retried = api_requests(&server).await.into_iter().nth(1).expect("a retry");
        assert_eq!(claims_of(&retried)["ath"], ath("at-2"), "{front:?}");
        assert_eq!(claims_of(&retried)["htu"], format!("{}/v1/me", server.uri()));
    }
}

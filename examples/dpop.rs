//! A DPoP storm (RFC 9449), end to end: concurrent requests all holding a DPoP-bound access token
//! the provider has just expired, through one `TokenRefresh` layer, against an embedded mock
//! provider that checks every proof (signature, `htm`, `htu`, `ath`, `iat`, a `jti` never seen
//! before, its nonce), binds tokens to the key's thumbprint, and demands server nonces at its token
//! endpoint and its API.
//!
//! Run it with `cargo run --example dpop` (optionally `-- 2000` for the number of requests).
//! Nothing outside this process is contacted: the provider listens on 127.0.0.1.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{DpopKey, RefreshTokenGrant, TokenRefresh};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: usize = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(500);

    // Nonces demanded at the token endpoint and at the API (one nonce for both: they share an
    // origin); refresh tokens that work once; a token endpoint that takes 50 ms.
    let provider =
        MockProvider::builder().dpop_nonces(true, true).token_latency(Duration::from_millis(50)).start().await;
    let key = DpopKey::generate()?;
    let grant = RefreshTokenGrant::new(provider.token_url()).client_id("dpop-demo").dpop(key.clone());
    let auth = TokenRefresh::builder(grant)
        .initial_tokens(provider.issue_dpop_tokens(&key))
        .allow_origin(provider.uri())
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let url = provider.api_url("v1/activity");
    println!("key thumbprint (cnf.jkt): {}\n", key.thumbprint());

    // First contact: the API demands a nonce, and the request goes once more with it.
    let first = client.get(&url).send().await?.status();
    println!("first request: {first}, after {} nonce retry", auth.stats().nonce_retries);

    // The storm: the provider stops accepting the access token.
    provider.expire_access_tokens();
    println!("{requests} concurrent requests, all holding a DPoP-bound access token the provider just expired");
    let before = provider.stats();
    let started = Instant::now();
    let statuses = join_all((0..requests).map(|_| async { client.get(&url).send().await.map(|r| r.status()) })).await;
    let wall = started.elapsed();
    let ok = statuses.iter().filter(|status| matches!(status, Ok(status) if status.as_u16() == 200)).count();
    let (storm, layer) = (provider.stats(), auth.stats());

    // The provider moves to a new nonce: the API demands it, met by one more round trip.
    provider.rotate_dpop_nonce();
    let after_rotation = client.get(&url).send().await?.status();
    let (seen, last) = (provider.stats(), auth.stats());

    let proofs = storm.dpop_proofs_checked - before.dpop_proofs_checked;
    let rows = [
        ("200 OK", ok.to_string()),
        ("token endpoint calls", (storm.token_calls - before.token_calls).to_string()),
        ("answered 401 invalid_token", (storm.api_unauthorized - before.api_unauthorized).to_string()),
        ("retries with the new token", layer.retries.to_string()),
        ("DPoP proofs checked", proofs.to_string()),
        ("  distinct jti", (storm.dpop_jtis - before.dpop_jtis).to_string()),
        ("  refused", (storm.dpop_proofs_rejected - before.dpop_proofs_rejected).to_string()),
        ("wall time", format!("{:.1} ms", wall.as_secs_f64() * 1e3)),
    ];
    for (name, value) in rows {
        println!("  {name:<30} {value:>10}");
    }
    println!(
        "after a nonce rotation: {after_rotation}, nonce retries {} in all, token endpoint calls {} in all",
        last.nonce_retries, seen.token_calls
    );

    let mut wrong = Vec::new();
    if first != 200 || ok != requests || after_rotation != 200 {
        wrong.push(format!("requests failed: first {first}, storm {ok} of {requests} OK, last {after_rotation}"));
    }
    if storm.token_calls - before.token_calls != 1 || seen.token_calls != storm.token_calls {
        wrong.push(format!("expected one token call for the storm and none after, saw {seen:?}"));
    }
    if seen.dpop_proofs_rejected != 0 || seen.dpop_replays != 0 || seen.dpop_jtis != seen.dpop_proofs_checked {
        wrong.push(format!("proofs refused or reused: {seen:?}"));
    }
    if layer.nonce_retries != 1 || last.nonce_retries != 2 || seen.dpop_nonce_demands != 2 {
        wrong.push(format!("each nonce demand should cost one round trip: {last:?}, {seen:?}"));
    }
    if auth.tokens().and_then(|tokens| tokens.dpop_key().cloned()).as_ref() != Some(&key) {
        wrong.push("the refreshed set is not bound to the key".into());
    }
    if !wrong.is_empty() {
        return Err(wrong.join("; ").into());
    }
    println!(
        "\none refresh for the whole storm, every request its own proof, every retry's proof bound to the new token"
    );
    Ok(())
}

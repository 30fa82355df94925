//! The 401 storm, end to end: many concurrent requests all holding a token the provider has just
//! expired, through one `TokenRefresh` layer, against an embedded mock provider that rotates
//! refresh tokens and revokes the whole token family if one is ever reused.
//!
//! Run it with `cargo run --example storm` (optionally `-- 5000` for the number of requests).
//! Nothing outside this process is contacted: the provider listens on 127.0.0.1.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: usize = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(1000);

    // A provider whose refresh tokens work exactly once, with a token endpoint that takes 50 ms:
    // plenty of time for a naive client to send a refresh per failed request.
    let provider = MockProvider::builder().token_latency(Duration::from_millis(50)).start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();

    let auth = TokenRefresh::builder(
        RefreshTokenGrant::new(provider.token_url()).client_id("storm-demo").client_secret("demo-secret"),
    )
    .initial_tokens(tokens)
    .allow_origin(provider.uri())
    .build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();

    println!("{requests} concurrent requests, all holding an access token the provider just expired\n");
    let url = provider.api_url("v1/activity");
    let started = Instant::now();
    let results = join_all((0..requests).map(|_| {
        let request = client.get(&url);
        async move {
            let sent = Instant::now();
            let status = request.send().await.map(|r| r.status().as_u16());
            (status, sent.elapsed())
        }
    }))
    .await;
    let wall = started.elapsed();

    let ok = results.iter().filter(|(s, _)| matches!(s, Ok(200))).count();
    let failed = results.len() - ok;
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let layer = auth.stats();
    let seen = provider.stats();

    let rows = [
        ("requests", requests.to_string()),
        ("200 OK", ok.to_string()),
        ("failed", failed.to_string()),
        ("401s seen by the layer", layer.unauthorized.to_string()),
        ("token endpoint calls", seen.token_calls.to_string()),
        ("retries", layer.retries.to_string()),
        ("refresh-token reuse detected", seen.reuse_detected.to_string()),
        ("latency p50", format!("{:.1} ms", at(0.50).as_secs_f64() * 1e3)),
        ("latency p99", format!("{:.1} ms", at(0.99).as_secs_f64() * 1e3)),
        ("wall time", format!("{:.1} ms", wall.as_secs_f64() * 1e3)),
    ];
    println!("{:<30} {:>12}", "", "this layer");
    for (name, value) in rows {
        println!("{name:<30} {value:>12}");
    }

    if seen.token_calls != 1 || failed != 0 {
        return Err(format!("expected one token call and no failures, saw {} and {failed}", seen.token_calls).into());
    }
    println!("\none refresh for the whole storm; the rotated refresh token was spent exactly once");
    Ok(())
}

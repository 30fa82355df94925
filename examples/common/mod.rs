//! What the provider examples share: a storm through a client and a short report of it.
//! (A folder with `mod.rs`, so Cargo does not build it as an example of its own.)

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::TokenRefresh;
use reqwest_token_refresh::testkit::MockProvider;

/// Sends `n` concurrent GETs to `url` and prints what happened; returns how many failed.
pub async fn storm_and_report(
    name: &str,
    client: &ClientWithMiddleware,
    auth: &TokenRefresh,
    provider: &MockProvider,
    url: &str,
    n: usize,
) -> usize {
    let started = Instant::now();
    let statuses = join_all((0..n).map(|_| async { client.get(url).send().await.map(|r| r.status().as_u16()) })).await;
    let ok = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
    let wall: Duration = started.elapsed();
    println!(
        "{name}: {n} concurrent requests -> {ok} OK, {} failed; token calls so far: {}, retries so far: {}; {:.0} ms",
        n - ok,
        provider.stats().token_calls,
        auth.stats().retries,
        wall.as_secs_f64() * 1e3,
    );
    n - ok
}

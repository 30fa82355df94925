//! Many users through one client: 1,000 Withings users, each with their own token set, all
//! expired at once, 5 concurrent requests each; then how much memory a cached key costs.
//!
//! Run it with `cargo run --example many_users`. Nothing outside this process is contacted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use parking_lot::Mutex;
use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{TokenKey, TokenRefresh, TokenSet, providers};

const USERS: usize = 1_000;
const PER_USER: usize = 5;
const MEMORY_KEYS: usize = 10_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Measured first, in a quiet process: what one more cached key costs.
    match resident_bytes() {
        Some(before) => {
            let tokens = TokenSet::new("a".repeat(40)).with_refresh_token("r".repeat(40));
            let memory = TokenRefresh::builder(providers::withings("id", "secret")).build()?;
            for i in 0..MEMORY_KEYS {
                memory.set_tokens_for(&TokenKey::new(format!("user-{i}")), tokens.clone()).await?;
            }
            let after = resident_bytes().unwrap_or(before);
            println!(
                "memory per cached key (layer and in-memory store, 40-byte tokens): about {} bytes over {MEMORY_KEYS} keys",
                after.saturating_sub(before) / MEMORY_KEYS as u64
            );
        }
        None => println!("memory per cached key: not measured on this platform"),
    }

    let provider = MockProvider::withings().await;
    let refreshes: Arc<Mutex<BTreeMap<TokenKey, usize>>> = Arc::default();
    // The preset, pointed at the mock: its token endpoint, and its API in place of Withings'. The
    // preset knows the rest, Withings' answer to an expired token (HTTP 200, `"status":401`) too.
    let grant = providers::withings(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .token_url(provider.token_url())
        .api_origin(provider.uri());
    let auth = TokenRefresh::builder(grant)
        .on_refresh({
            let refreshes = refreshes.clone();
            move |key, _| *refreshes.lock().entry(key.clone()).or_default() += 1
        })
        .on_reauthorization_required(|key, reason| println!("user {key} must consent again: {reason}"))
        .build()?;
    let users: Vec<TokenKey> = (0..USERS).map(|i| TokenKey::new(format!("withings-user-{i}"))).collect();
    for user in &users {
        auth.set_tokens_for(user, provider.issue_tokens()).await?;
    }
    provider.expire_access_tokens();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let url = provider.api_url("measure");

    let started = Instant::now();
    let requests =
        users.iter().flat_map(|user| (0..PER_USER).map(|_| client.get(&url).with_extension(user.clone()).send()));
    let results = join_all(requests).await;
    let wall = started.elapsed();
    let ok = results.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200)).count();

    let mut distribution: BTreeMap<usize, usize> = BTreeMap::new();
    for user in &users {
        *distribution.entry(refreshes.lock().get(user).copied().unwrap_or(0)).or_default() += 1;
    }
    println!("{USERS} users x {PER_USER} concurrent requests, every token expired:");
    println!("  {ok} of {} requests OK in {:.0} ms", USERS * PER_USER, wall.as_secs_f64() * 1e3);
    println!("  token endpoint calls: {}", provider.stats().token_calls);
    for (calls, count) in &distribution {
        println!("  users with {calls} token call(s): {count}");
    }

    if ok != USERS * PER_USER || provider.stats().token_calls != USERS as u64 {
        return Err("expected one token call per user and no failures".into());
    }
    Ok(())
}

/// The process's resident memory, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

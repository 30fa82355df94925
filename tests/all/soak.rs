//! Steady load across many expiries: tokens that live one second, refreshed ahead of expiry,
//! under concurrent requests. Five seconds here; the minute-long run is `#[ignore]`d:
//! `cargo test --test all soak::a_minute -- --ignored`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest_token_refresh::testkit::MockProvider;

use crate::helpers::{client_with, layer};

struct Soaked {
    requests: u64,
    failed: u64,
    token_calls: u64,
    expiries: u64,
    tasks_midway: usize,
    tasks_at_end: usize,
}

async fn soak(length: Duration, workers: usize) -> Soaked {
    let lifetime = Duration::from_secs(1);
    let provider = MockProvider::builder().access_token_lifetime(lifetime).start().await;
    let auth = layer(&provider, provider.issue_tokens()).build().unwrap();
    let client = client_with(&auth);
    let url = provider.api_url("me");
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let metrics = tokio::runtime::Handle::current().metrics();

    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            let (requests, failed) = (requests.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = client.get(&url).send().await.is_ok_and(|r| r.status() == 200);
                    requests.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(length / 2).await;
    let tasks_midway = metrics.num_alive_tasks();
    tokio::time::sleep(length / 2).await;
    let tasks_at_end = metrics.num_alive_tasks();
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.unwrap();
    }
    let expiries = (started.elapsed().as_secs_f64() / lifetime.as_secs_f64()).ceil() as u64;
    Soaked {
        requests: requests.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        token_calls: provider.stats().token_calls,
        expiries,
        tasks_midway,
        tasks_at_end,
    }
}

fn check(soaked: &Soaked) {
    assert_eq!(soaked.failed, 0, "no request failed in {} ({} token calls)", soaked.requests, soaked.token_calls);
    // Each token is replaced once in the second half of its life (its lifetime caps the skew),
    // so at most about two refreshes per expiry, and at least one per expiry.
    assert!(
        soaked.token_calls >= soaked.expiries.saturating_sub(1) && soaked.token_calls <= 2 * soaked.expiries + 1,
        "{} token calls over {} expiries",
        soaked.token_calls,
        soaked.expiries
    );
    // Flat: no tasks pile up between the middle and the end of the run.
    assert!(
        soaked.tasks_at_end <= soaked.tasks_midway + 4,
        "tasks grew from {} to {}",
        soaked.tasks_midway,
        soaked.tasks_at_end
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_seconds_of_steady_load_across_one_second_tokens_fails_nothing() {
    let soaked = soak(Duration::from_secs(5), 16).await;
    check(&soaked);
    assert!(soaked.requests > 100, "the load was real: {} requests", soaked.requests);
    println!("{} requests, {} token calls over {} expiries", soaked.requests, soaked.token_calls, soaked.expiries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long; run it with `cargo test --test all soak::a_minute -- --ignored`"]
async fn a_minute_of_steady_load_across_one_second_tokens_fails_nothing() {
    let soaked = soak(Duration::from_secs(60), 32).await;
    check(&soaked);
    println!("{} requests, {} token calls over {} expiries", soaked.requests, soaked.token_calls, soaked.expiries);
}

//! Latency across an expiry: what a request pays when its key's token comes due, with the refresh
//! on demand, with refresh ahead, and with no expiry at all (the reference).
//!
//! Ten users, four workers each, every worker sending one request after another (5 ms apart)
//! through one layer to the bench server, whose token endpoint answers after 20 ms. The users'
//! tokens were issued together and expire together, a few seconds in, in real time:
//!
//! - **on demand**: the first request that finds its user's token inside the skew window refreshes
//!   it before it is sent, and every request of that user meanwhile waits for the same refresh;
//! - **refresh ahead**: the layer refreshes each user in the background at a random point within
//!   the spread before the window opens, and no request waits;
//! - **no expiry**: the tokens have none; nothing is ever refreshed.
//!
//! Reported per design, medians over interleaved rounds (every design once a round, in turn, each a
//! new layer and client): p50, p99, p99.9 and the largest latency of the requests sent in the
//! second around the window's opening (half a second either side), the requests the layer counted
//! as having waited ([`Stats::waited`](reqwest_token_refresh::Stats::waited)) over the whole run,
//! and token calls.
//!
//! `cargo bench --bench latency` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a short pass.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::server::Server;
use parking_lot::Mutex;
use reqwest_token_refresh::{RefreshAhead, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet};

const USERS: usize = 10;
const WORKERS_PER_USER: usize = 4;
/// The pause between one worker's requests.
const PAUSE: Duration = Duration::from_millis(5);
/// The token endpoint's latency, as in the other benches.
const TOKEN_LATENCY: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Design {
    OnDemand,
    Ahead,
    NoExpiry,
}

impl Design {
    const ALL: [Design; 3] = [Design::OnDemand, Design::Ahead, Design::NoExpiry];

    fn name(self) -> &'static str {
        match self {
            Design::OnDemand => "on demand (the default)",
            Design::Ahead => "refresh ahead",
            Design::NoExpiry => "no expiry (reference)",
        }
    }
}

/// The run's timeline, from the moment the tokens are issued.
#[derive(Clone, Copy)]
struct Timeline {
    /// The tokens' lifetime.
    lifetime: Duration,
    /// The layer's skew window: it opens at `lifetime - skew`.
    skew: Duration,
    /// Refresh ahead's spread.
    spread: Duration,
    /// How long the workers send: past the expiry.
    run: Duration,
}

impl Timeline {
    fn opens(&self) -> Duration {
        self.lifetime - self.skew
    }
}

/// One request: when it was sent (since the tokens were issued) and how long it took.
type Sample = (Duration, Duration);

struct Outcome {
    /// Latencies of the requests sent within half a second of the window's opening.
    around: Vec<Duration>,
    requests: usize,
    waited: u64,
    token_calls: u64,
    failed: usize,
}

async fn run_once(design: Design, server: &Server, timeline: Timeline, round: usize) -> Outcome {
    server.provider().reset().await;
    let mut builder = TokenRefresh::builder(RefreshTokenGrant::new(server.token_url()))
        .allow_origin(server.origin())
        .refresh_skew(timeline.skew);
    if design == Design::Ahead {
        builder = builder.refresh_ahead(RefreshAhead::new().spread(timeline.spread));
    }
    let auth = builder.build().expect("the layer");
    let users: Vec<TokenKey> = (0..USERS).map(|i| TokenKey::new(format!("round-{round}-user-{i}"))).collect();
    let issued_at = Instant::now();
    let expires_at = SystemTime::now() + timeline.lifetime;
    for (user, issued) in users.iter().zip(server.provider().issue_token_families(USERS).await) {
        let mut tokens = TokenSet::new(issued.access_token).with_refresh_token(issued.refresh_token);
        if design != Design::NoExpiry {
            tokens = tokens.with_expires_at(expires_at);
        }
        auth.set_tokens_for(user, tokens).await.expect("tokens installed");
    }
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = users.iter().flat_map(|user| (0..WORKERS_PER_USER).map(move |_| user.clone())).map(|user| {
        let (client, samples, failed, url) = (client.clone(), samples.clone(), failed.clone(), server.api_url());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            while issued_at.elapsed() < timeline.run {
                let sent = issued_at.elapsed();
                let started = Instant::now();
                let ok = match client.get(url.clone()).with_extension(user.clone()).send().await {
                    Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
                    Err(_) => false,
                };
                mine.push((sent, started.elapsed()));
                if !ok {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(PAUSE).await;
            }
            samples.lock().extend(mine);
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await.expect("a worker ends");
    }
    let samples = std::mem::take(&mut *samples.lock());
    let (from, to) =
        (timeline.opens().saturating_sub(Duration::from_millis(500)), timeline.opens() + Duration::from_millis(500));
    let around = samples.iter().filter(|(sent, _)| (from..to).contains(sent)).map(|(_, took)| *took).collect();
    Outcome {
        around,
        requests: samples.len(),
        waited: auth.stats().waited,
        token_calls: server.provider().seen().await.token_calls,
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn main() {
    let quick = common::quick();
    // Tokens that live 3 s (quick: 2 s), the window opening 1 s before expiry (quick: 0.5 s):
    // refresh ahead's spread of 1 s (quick: 0.5 s) ends where the window opens.
    let (timeline, rounds) = if quick {
        let lifetime = Duration::from_secs(2);
        let half = Duration::from_millis(500);
        (Timeline { lifetime, skew: half, spread: half, run: lifetime + half }, 1)
    } else {
        let lifetime = Duration::from_secs(3);
        let second = Duration::from_secs(1);
        (Timeline { lifetime, skew: second, spread: second, run: lifetime + second }, 5)
    };
    let rt = common::runtime();
    let server = rt.block_on(Server::start(TOKEN_LATENCY));
    let mut outcomes: Vec<(Design, Vec<Outcome>)> = Design::ALL.iter().map(|d| (*d, Vec::new())).collect();
    let mut csv = String::from("round,design,p50_us,p99_us,p999_us,max_us,requests,waited,token_calls,failed\n");
    for round in 0..rounds {
        for (design, runs) in &mut outcomes {
            let mut outcome = rt.block_on(run_once(*design, &server, timeline, round));
            let [p50, p99, p999] = [0.5, 0.99, 0.999].map(|q| common::quantile(&mut outcome.around, q));
            let max = outcome.around.iter().max().copied().unwrap_or_default();
            csv.push_str(&format!(
                "{round},{design:?},{},{},{},{},{},{},{},{}\n",
                p50.as_micros(),
                p99.as_micros(),
                p999.as_micros(),
                max.as_micros(),
                outcome.requests,
                outcome.waited,
                outcome.token_calls,
                outcome.failed
            ));
            assert_eq!(outcome.failed, 0, "{design:?}: every request answered 200");
            let expected_calls = if *design == Design::NoExpiry { 0 } else { USERS as u64 };
            assert_eq!(outcome.token_calls, expected_calls, "{design:?}: one refresh per user");
            runs.push(outcome);
        }
    }
    common::write_raw("latency.csv", &csv);

    let mut table = format!(
        "### Latency across an expiry\n\n\
         {USERS} users × {WORKERS_PER_USER} workers, each sending a request every {} ms after the last answer, \
         tokens issued together and expiring {} s in, a {} s skew window, refresh ahead's spread {} s, the token \
         endpoint answering after {} ms. Latency of the requests sent within 0.5 s of the window's opening; \
         medians over {rounds} round(s).\n\n\
         | design | p50 | p99 | p99.9 | max | requests that waited (whole run) | token calls |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        PAUSE.as_millis(),
        timeline.lifetime.as_secs_f64(),
        timeline.skew.as_secs_f64(),
        timeline.spread.as_secs_f64(),
        TOKEN_LATENCY.as_millis(),
    );
    let mut headline = format!(
        "Latency across an expiry ({USERS} users × {WORKERS_PER_USER} workers, a {} ms token endpoint), p99.9 / max of the \
         requests sent around the window's opening, medians:",
        TOKEN_LATENCY.as_millis()
    );
    for (index, (design, runs)) in outcomes.iter_mut().enumerate() {
        let mut stat = |q: Option<f64>| {
            let per_run: Vec<f64> = runs
                .iter_mut()
                .map(|run| {
                    let value = match q {
                        Some(q) => common::quantile(&mut run.around, q),
                        None => run.around.iter().max().copied().unwrap_or_default(),
                    };
                    value.as_secs_f64() * 1e3
                })
                .collect();
            format!("{:.2} ms", common::median(&per_run))
        };
        let (p50, p99, p999, max) = (stat(Some(0.5)), stat(Some(0.99)), stat(Some(0.999)), stat(None));
        let waited = common::count_summary(&runs.iter().map(|run| run.waited).collect::<Vec<_>>());
        let calls = common::count_summary(&runs.iter().map(|run| run.token_calls).collect::<Vec<_>>());
        table.push_str(&format!("| {} | {p50} | {p99} | {p999} | {max} | {waited} | {calls} |\n", design.name()));
        let separator = if index == 0 { " " } else { "; " };
        headline.push_str(&format!("{separator}{} {p999} / {max}", design.name()));
    }
    headline.push_str(".\n");
    common::write_tables("latency", &table);
    common::write_tables("latency.headline", &headline);
}

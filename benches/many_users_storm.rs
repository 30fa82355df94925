//! The many-users storm: 1,000 users (distinct `TokenKey`s) through one `TokenRefresh` layer,
//! every user's access token already rejected by the provider, 5 concurrent requests per user,
//! all 5,000 at once. Each user is a token family of its own at the provider (rotating, 20 ms
//! token endpoint), so one token call per user must come of it, and 200 for every request.
//!
//! Only this crate runs it: the other designs hold one token set. Each storm is paired with a
//! lower-bound run just before it, on a client built the same way: bare reqwest sending each of
//! the 5,000 requests with its user's rejected token and, on the 401, again with that user's new
//! token, the first 401 of each user making that user's one token call (10,000 plain requests and
//! 1,000 token calls). Over HTTP/2 (one connection) and HTTP/1.1 (a pool), against the bench
//! server in a child process of this binary.
//!
//! The bench fails (panics) when a storm makes other than one token call per user or any request
//! fails. `cargo bench --bench many_users_storm` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a
//! short pass with 100 users × 5.

mod common;

use std::fmt::Write as _;
use std::time::Duration;

use common::designs::{self, LowerBound, Start};
use common::run::{STORM_TOKEN_LATENCY, Scenario};
use common::server::{Seen, Server};
use common::transport::Transport;
use common::{count_summary, median, ms, quantile, thousands};
use criterion::{SamplingMode, Throughput};
use reqwest_token_refresh::TokenKey;

/// Concurrent requests per user.
const PER_USER: usize = 5;

/// Users per storm: 1,000 (quick mode, `RTR_BENCH_QUICK=1`: 100).
fn users() -> usize {
    if common::quick() { 100 } else { 1_000 }
}

/// One storm through this crate and the lower-bound run paired with it.
struct Pair {
    transport: Transport,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    ok: usize,
    failed: usize,
    seen: Seen,
    lower_bound: Duration,
    lower_bound_p50: Duration,
    lower_bound_p99: Duration,
    lower_bound_seen: Seen,
}

/// A fresh token family for each of `users` users, every access token already rejected.
async fn prepare(server: &Server, users: usize) -> Vec<Start> {
    let provider = server.provider();
    provider.reset().await;
    let issued = provider.issue_token_families(users).await;
    provider.expire_access_tokens().await;
    issued.into_iter().map(|issued| Start { issued, remaining: Scenario::Rejected.remaining() }).collect()
}

/// The lower bound, then this crate's storm, over `transport`, each on fresh token families and a
/// fresh client with its connections open.
///
/// # Panics
///
/// When either run makes other than one token call per user or any request fails.
async fn run_pair(transport: Transport, users: usize, server: &Server) -> Pair {
    let what = format!("the {}-users storm over {}", thousands(users), transport.label());
    let http = &transport.connected_client(server).await;
    let families = prepare(server, users).await;
    let mut lower_bound = designs::lower_bound(http, server, &families, PER_USER, LowerBound::Storm).await;
    let lower_bound_seen = server.provider().seen().await;
    assert!(
        lower_bound.failed == 0 && lower_bound_seen.token_calls == users as u64,
        "{what}: the lower bound made {} token calls for {users} users and {} of its requests failed (the first: {:?}); {lower_bound_seen:?}",
        lower_bound_seen.token_calls,
        lower_bound.failed,
        lower_bound.first_failure,
    );

    let http = &transport.connected_client(server).await;
    let families = prepare(server, users).await;
    let auth = designs::ours(server).build().expect("a valid layer");
    let keys: Vec<TokenKey> = (0..users).map(|i| TokenKey::new(format!("user-{i}"))).collect();
    for (key, start) in keys.iter().zip(&families) {
        auth.set_tokens_for(key, start.token_set()).await.expect("the user's tokens are stored");
    }
    let client = reqwest_middleware::ClientBuilder::new(http.clone()).with(auth).build();
    let url = server.api_url();
    let requests = keys
        .iter()
        .flat_map(|key| std::iter::repeat_n(key, PER_USER))
        .map(|key| client.get(url.clone()).with_extension(key.clone()));
    let mut run = designs::storm_of(requests).await;
    let seen = server.provider().seen().await;
    let ok = run.latencies.len() - run.failed;
    assert!(
        seen.token_calls == users as u64 && ok == users * PER_USER,
        "{what}: {} token calls for {users} users (one each expected), {ok} of {} requests answered 200 (the first \
         failure: {:?}); {seen:?}",
        seen.token_calls,
        users * PER_USER,
        run.first_failure,
    );
    Pair {
        transport,
        wall: run.wall,
        p50: quantile(&mut run.latencies, 0.50),
        p99: quantile(&mut run.latencies, 0.99),
        ok,
        failed: run.failed,
        seen,
        lower_bound: lower_bound.wall,
        lower_bound_p50: quantile(&mut lower_bound.latencies, 0.50),
        lower_bound_p99: quantile(&mut lower_bound.latencies, 0.99),
        lower_bound_seen,
    }
}

fn main() {
    common::server::serve_if_child();
    let users = users();
    let mut criterion = common::storm_criterion();
    let server = Server::spawn(STORM_TOKEN_LATENCY);
    let rt = common::runtime();
    let mut pairs = Vec::new();
    for transport in Transport::ALL {
        // Warms both sides; then a measurement time that fits ten storms.
        let first = rt.block_on(run_pair(transport, users, &server));
        let mut group = criterion.benchmark_group(format!("many_users_storm/{}", transport.id()));
        group.sampling_mode(SamplingMode::Flat).throughput(Throughput::Elements((users * PER_USER) as u64));
        group.measurement_time((first.wall * 12).max(Duration::from_millis(100)));
        group.bench_function("ours", |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let pair = rt.block_on(run_pair(transport, users, &server));
                    timed += pair.wall;
                    pairs.push(pair);
                }
                timed
            })
        });
        group.finish();
    }
    criterion.final_summary();
    let (tables, headline) = tables(&pairs, users);
    common::write_tables("many_users_storm.headline", &headline);
    common::write_tables("many_users_storm", &tables);
}

/// The bench's table and its headline line.
fn tables(pairs: &[Pair], users: usize) -> (String, String) {
    let requests = users * PER_USER;
    let mut out = format!(
        "### Many users: {} users, {PER_USER} requests each\n\n\
         {} users (distinct `TokenKey`s) through one layer, each a token family of its own whose access token the \
         provider already rejects, {PER_USER} concurrent requests per user, all {} at once. Only this crate runs it \
         (the other designs hold one token set). Its token calls go through its own token client (reqwest's \
         defaults: HTTP/1.1, a connection per concurrent call), the lower bound's through the storm's client.\n\n\
         | transport | client | token calls | OK | failed requests | requests answered 401 | connections opened | wall time | p50 | p99 | wall / lower bound |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        thousands(users),
        thousands(users),
        thousands(requests),
    );
    let mut headline = format!(
        "{} users × {PER_USER} concurrent requests, every access token rejected (this crate): token calls / OK / \
         failed requests / wall time over its lower bound / p99, medians:",
        thousands(users)
    );
    let mut samples = 0;
    for transport in Transport::ALL {
        let runs: Vec<&Pair> = pairs.iter().filter(|p| p.transport == transport).collect();
        if runs.is_empty() {
            continue;
        }
        samples = samples.max(runs.len());
        let time = |f: fn(&Pair) -> Duration| {
            ms(Duration::from_secs_f64(median(&runs.iter().map(|p| f(p).as_secs_f64()).collect::<Vec<_>>())))
        };
        let count = |f: fn(&Pair) -> u64| count_summary(&runs.iter().map(|p| f(p)).collect::<Vec<_>>());
        let ratio =
            median(&runs.iter().map(|p| p.wall.as_secs_f64() / p.lower_bound.as_secs_f64()).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "| {} | lower bound: bare reqwest, {} plain requests + {} token calls | {} | {} | 0 | {} | {} | {} | {} | {} | 1.00 |",
            transport.label(),
            thousands(2 * requests),
            thousands(users),
            count(|p| p.lower_bound_seen.token_calls),
            thousands(requests),
            count(|p| p.lower_bound_seen.api_unauthorized),
            count(|p| p.lower_bound_seen.connections),
            time(|p| p.lower_bound),
            time(|p| p.lower_bound_p50),
            time(|p| p.lower_bound_p99),
        );
        let (token_calls, ok, failed) =
            (count(|p| p.seen.token_calls), count(|p| p.ok as u64), count(|p| p.failed as u64));
        let _ = writeln!(
            out,
            "| {} | **reqwest-token-refresh** | {token_calls} | {ok} | {failed} | {} | {} | {} | {} | {} | {ratio:.2} |",
            transport.label(),
            count(|p| p.seen.api_unauthorized),
            count(|p| p.seen.connections),
            time(|p| p.wall),
            time(|p| p.p50),
            time(|p| p.p99),
        );
        let _ = write!(
            headline,
            " {} {token_calls} / {ok} / {failed} / {ratio:.2}x / {};",
            transport.label(),
            time(|p| p.p99)
        );
    }
    let _ = writeln!(
        out,
        "\n{samples} storms per transport, each paired with a lower-bound run just before it; medians, with the range \
         where it varied. Every storm is checked as it runs: the bench fails unless it made one token call per user \
         and every request was answered 200.\n"
    );
    (out, format!("{}.\n", headline.trim_end_matches(';')))
}

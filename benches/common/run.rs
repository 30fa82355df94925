//! One measured storm of one design, paired with a lower-bound run right before it, and the
//! tables made from many of them.

use std::fmt::Write as _;
use std::time::Duration;

use super::designs::{self, Design, LowerBound, Start};
use super::server::{ACCESS_TOKEN_LIFETIME, Seen, Server};
use super::{count_summary, median, ms, quantile, thousands};

/// What the client believes about the token it holds when the storm starts. In both, the provider
/// already rejects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The 401 storm: the client believes the token has most of its hour left; the provider has
    /// expired it (revoked, rotated elsewhere, clocks apart): every request is answered 401.
    Rejected,
    /// Proactive refresh: the token has 10 s left, inside the 30 s skew window, and the provider
    /// (its clock a little ahead) already rejects it: a design that refreshes ahead of expiry sends
    /// no request with it.
    InsideSkew,
}

impl Scenario {
    fn remaining(self) -> Duration {
        match self {
            Scenario::Rejected => ACCESS_TOKEN_LIFETIME - Duration::from_secs(1),
            Scenario::InsideSkew => Duration::from_secs(10),
        }
    }
}

/// One storm of one design and the lower-bound run paired with it.
#[derive(Debug, Clone)]
pub struct Pair {
    pub design: Design,
    pub n: usize,
    pub wall: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub failed: usize,
    pub seen: Seen,
    /// 401s our layer saw (its own counter), for ours only.
    pub ours_unauthorized: Option<u64>,
    pub lower_bound: Duration,
    pub lower_bound_p50: Duration,
    pub lower_bound_p99: Duration,
}

/// A fresh token family whose access token the provider already rejects.
pub fn prepare(server: &Server, scenario: Scenario) -> Start {
    let provider = server.provider();
    provider.reset();
    let issued = provider.issue_tokens();
    provider.expire_access_tokens();
    Start { issued, remaining: scenario.remaining() }
}

/// A new HTTP/2 client with its connection open (see [`storm_client`](super::storm_client)).
///
/// Every run gets its own connection: a design that makes the client reset many streams (h2 sends
/// GOAWAY `too_many_internal_resets` past 1,024 of them) must not take the next run down with it.
pub async fn connected_client(server: &Server) -> reqwest::Client {
    let http = super::storm_client();
    let _ = http.get(server.api_url()).send().await.expect("the bench server answers");
    http
}

/// The lower bound, then `design`'s storm of `n`, each on a fresh token family and connection.
pub async fn run_pair(design: Design, n: usize, scenario: Scenario, server: &Server) -> Pair {
    let http = &connected_client(server).await;
    let start = prepare(server, scenario);
    let shape = match scenario {
        Scenario::Rejected => LowerBound::Storm,
        Scenario::InsideSkew => LowerBound::Proactive,
    };
    let mut lower_bound = designs::lower_bound(http, server, &start, n, shape).await;
    assert_eq!(lower_bound.failed, 0, "the lower bound must not fail");
    assert_eq!(server.provider().seen().token_calls, 1, "the lower bound makes one token call");

    let http = &connected_client(server).await;
    let start = prepare(server, scenario);
    let built = designs::build(design, server, http, &start).await;
    let mut run = designs::storm(&built.client, &server.api_url(), n).await;
    // Let refreshes that outlive their requests (none should) reach the counters.
    tokio::task::yield_now().await;
    Pair {
        design,
        n,
        wall: run.wall,
        p50: quantile(&mut run.latencies, 0.50),
        p99: quantile(&mut run.latencies, 0.99),
        failed: run.failed,
        seen: server.provider().seen(),
        ours_unauthorized: built.ours.map(|auth| auth.stats().unauthorized),
        lower_bound: lower_bound.wall,
        lower_bound_p50: quantile(&mut lower_bound.latencies, 0.50),
        lower_bound_p99: quantile(&mut lower_bound.latencies, 0.99),
    }
}

/// The storms of one size, summarised per design.
pub struct Summary {
    pub design: Design,
    pub n: usize,
    pub samples: usize,
    pub token_calls: String,
    pub failed: String,
    pub api_401s: String,
    pub wall: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub lower_bound: Duration,
    /// The median of each storm's wall time over its paired lower bound.
    pub ratio: f64,
    /// The largest token-call count and failure count of any storm.
    pub max_token_calls: u64,
    pub max_failed: usize,
}

pub fn summarise(pairs: &[Pair], design: Design, n: usize) -> Option<Summary> {
    let runs: Vec<&Pair> = pairs.iter().filter(|p| p.design == design && p.n == n).collect();
    if runs.is_empty() {
        return None;
    }
    let secs = |f: fn(&Pair) -> Duration| {
        Duration::from_secs_f64(median(&runs.iter().map(|p| f(p).as_secs_f64()).collect::<Vec<_>>()))
    };
    let counts = |f: fn(&Pair) -> u64| count_summary(&runs.iter().map(|p| f(p)).collect::<Vec<_>>());
    Some(Summary {
        design,
        n,
        samples: runs.len(),
        token_calls: counts(|p| p.seen.token_calls),
        failed: counts(|p| p.failed as u64),
        api_401s: counts(|p| p.seen.api_unauthorized),
        wall: secs(|p| p.wall),
        p50: secs(|p| p.p50),
        p99: secs(|p| p.p99),
        lower_bound: secs(|p| p.lower_bound),
        ratio: median(&runs.iter().map(|p| p.wall.as_secs_f64() / p.lower_bound.as_secs_f64()).collect::<Vec<_>>()),
        max_token_calls: runs.iter().map(|p| p.seen.token_calls).max().unwrap_or(0),
        max_failed: runs.iter().map(|p| p.failed).max().unwrap_or(0),
    })
}

/// The per-size tables of a storm bench.
pub fn storm_tables(pairs: &[Pair], sizes: &[usize], scenario: Scenario) -> String {
    let mut out = String::new();
    for &n in sizes {
        let summaries: Vec<Summary> = Design::ALL.iter().filter_map(|&d| summarise(pairs, d, n)).collect();
        let Some(first) = summaries.first() else { continue };
        let of_n = |f: fn(&Pair) -> Duration| {
            ms(Duration::from_secs_f64(median(
                &pairs.iter().filter(|p| p.n == n).map(|p| f(p).as_secs_f64()).collect::<Vec<_>>(),
            )))
        };
        let (lower_bound, lb_p50, lb_p99) =
            (of_n(|p| p.lower_bound), of_n(|p| p.lower_bound_p50), of_n(|p| p.lower_bound_p99));
        let _ = writeln!(out, "#### N = {}\n", thousands(n));
        match scenario {
            Scenario::Rejected => {
                let _ = writeln!(
                    out,
                    "| design | token calls | failed requests | requests answered 401 | wall time | p50 | p99 | wall / lower bound |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
                );
                let _ = writeln!(
                    out,
                    "| lower bound: bare reqwest, {} plain requests + 1 token call | 1 | 0 | {} | {lower_bound} | {lb_p50} | {lb_p99} | 1.00 |",
                    thousands(2 * n),
                    thousands(n),
                );
                for s in &summaries {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                        s.design.label(),
                        s.token_calls,
                        s.failed,
                        s.api_401s,
                        ms(s.wall),
                        ms(s.p50),
                        ms(s.p99),
                        s.ratio
                    );
                }
            }
            Scenario::InsideSkew => {
                let _ = writeln!(
                    out,
                    "| design | token calls | requests answered 401 | failed requests | wall time | p99 | wall / lower bound |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
                );
                let _ = writeln!(
                    out,
                    "| lower bound: bare reqwest, 1 token call then {} plain requests | 1 | 0 | 0 | {lower_bound} | {lb_p99} | 1.00 |",
                    thousands(n),
                );
                for s in &summaries {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {:.2} |",
                        s.design.label(),
                        s.token_calls,
                        s.api_401s,
                        s.failed,
                        ms(s.wall),
                        ms(s.p99),
                        s.ratio
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\n{} storms per design, each paired with a lower-bound run just before it; medians, with the range where it varied.\n",
            first.samples
        );
    }
    out
}

/// Every pair as CSV, for whoever wants more than medians.
pub fn pairs_csv(pairs: &[Pair]) -> String {
    let mut out = String::from(
        "design,n,wall_ms,p50_ms,p99_ms,failed,token_calls,api_401s,lower_bound_ms,lower_bound_p50_ms,lower_bound_p99_ms\n",
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for p in pairs {
        let _ = writeln!(
            out,
            "{},{},{:.3},{:.3},{:.3},{},{},{},{:.3},{:.3},{:.3}",
            p.design.id(),
            p.n,
            ms(p.wall),
            ms(p.p50),
            ms(p.p99),
            p.failed,
            p.seen.token_calls,
            p.seen.api_unauthorized,
            ms(p.lower_bound),
            ms(p.lower_bound_p50),
            ms(p.lower_bound_p99)
        );
    }
    out
}

/// The token endpoint's latency in the storm benches.
pub const STORM_TOKEN_LATENCY: Duration = Duration::from_millis(20);

/// Runs the storm benches for one scenario: every design at every N, each storm paired with a
/// lower-bound run, under the criterion group `<group>/<n>`. Returns the pairs and the sizes.
pub fn storm_bench(group: &str, scenario: Scenario) -> (Vec<Pair>, Vec<usize>) {
    use criterion::{SamplingMode, Throughput};

    let mut criterion = super::storm_criterion();
    let rt = super::runtime();
    let server = rt.block_on(Server::start(STORM_TOKEN_LATENCY));
    // Open the connection and warm both sides before anything is measured.
    rt.block_on(run_pair(Design::Ours, 1_000, scenario, &server));

    let sizes = super::storm_sizes();
    let mut pairs = Vec::new();
    for &n in &sizes {
        let mut bench = criterion.benchmark_group(format!("{group}/{n}"));
        bench.sampling_mode(SamplingMode::Flat).throughput(Throughput::Elements(n as u64));
        bench.measurement_time(super::storm_measurement_time(&rt, n, scenario, &server));
        for design in Design::ALL {
            bench.bench_function(design.id(), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let pair = rt.block_on(run_pair(design, n, scenario, &server));
                        timed += pair.wall;
                        pairs.push(pair);
                    }
                    timed
                })
            });
        }
        bench.finish();
    }
    criterion.final_summary();
    (pairs, sizes)
}

/// One line per design across every N, each cell rendered by `cell` from that storm's summary.
pub fn headline_table(title: &str, pairs: &[Pair], sizes: &[usize], cell: impl Fn(&Summary) -> String) -> String {
    let mut out = format!("{title}\n\n| design |");
    for &n in sizes {
        let _ = write!(out, " N = {} |", thousands(n));
    }
    out.push_str("\n| --- |");
    out.push_str(&" ---: |".repeat(sizes.len()));
    out.push('\n');
    for design in Design::ALL {
        let _ = write!(out, "| {} |", design.label());
        for &n in sizes {
            match summarise(pairs, design, n) {
                Some(summary) => {
                    let _ = write!(out, " {} |", cell(&summary));
                }
                None => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

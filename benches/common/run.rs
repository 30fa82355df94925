//! One measured storm of one design, paired with a lower-bound run right before it, and the
//! tables made from many of them.

use std::fmt::Write as _;
use std::time::Duration;

use super::designs::{self, Design, LowerBound, Start};
use super::server::{ACCESS_TOKEN_LIFETIME, Seen, Server};
use super::transport::Transport;
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
    pub fn remaining(self) -> Duration {
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
    pub transport: Transport,
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
    /// Connections the lower-bound run opened (the design's are in `seen`).
    pub lower_bound_connections: u64,
}

/// A fresh token family whose access token the provider already rejects.
pub async fn prepare(server: &Server, scenario: Scenario) -> Start {
    let provider = server.provider();
    provider.reset().await;
    let issued = provider.issue_tokens().await;
    provider.expire_access_tokens().await;
    Start { issued, remaining: scenario.remaining() }
}

/// The lower bound, then `design`'s storm of `n`, each on a fresh token family and a fresh client
/// of `transport` with its connections open.
pub async fn run_pair(design: Design, n: usize, scenario: Scenario, transport: Transport, server: &Server) -> Pair {
    let http = &transport.connected_client(server).await;
    let start = prepare(server, scenario).await;
    let shape = match scenario {
        Scenario::Rejected => LowerBound::Storm,
        Scenario::InsideSkew => LowerBound::Proactive,
    };
    let mut lower_bound = designs::lower_bound(http, server, std::slice::from_ref(&start), n, shape).await;
    let lower_bound_seen = server.provider().seen().await;
    assert_eq!(
        lower_bound.failed, 0,
        "the lower bound must not fail (the first failure: {:?})",
        lower_bound.first_failure
    );
    assert_eq!(lower_bound_seen.token_calls, 1, "the lower bound makes one token call");

    let http = &transport.connected_client(server).await;
    let start = prepare(server, scenario).await;
    let built = designs::build(design, server, http, &start).await;
    let mut run = designs::storm(&built.client, &server.api_url(), n).await;
    // Let refreshes that outlive their requests (none should) reach the counters.
    tokio::task::yield_now().await;
    Pair {
        design,
        transport,
        n,
        wall: run.wall,
        p50: quantile(&mut run.latencies, 0.50),
        p99: quantile(&mut run.latencies, 0.99),
        failed: run.failed,
        seen: server.provider().seen().await,
        ours_unauthorized: built.ours.map(|auth| auth.stats().unauthorized),
        lower_bound: lower_bound.wall,
        lower_bound_p50: quantile(&mut lower_bound.latencies, 0.50),
        lower_bound_p99: quantile(&mut lower_bound.latencies, 0.99),
        lower_bound_connections: lower_bound_seen.connections,
    }
}

/// The storms of one size over one transport, summarised per design.
pub struct Summary {
    pub design: Design,
    pub n: usize,
    pub samples: usize,
    pub token_calls: String,
    pub failed: String,
    pub api_401s: String,
    pub connections: String,
    pub wall: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub lower_bound: Duration,
    /// The median of each storm's wall time over its paired lower bound, and the lowest and
    /// highest of them: the spread over rounds.
    pub ratio: f64,
    pub ratio_range: (f64, f64),
    /// The largest token-call count and failure count of any storm.
    pub max_token_calls: u64,
    pub max_failed: usize,
}

pub fn summarise(pairs: &[Pair], transport: Transport, design: Design, n: usize) -> Option<Summary> {
    let runs: Vec<&Pair> =
        pairs.iter().filter(|p| p.transport == transport && p.design == design && p.n == n).collect();
    if runs.is_empty() {
        return None;
    }
    let secs = |f: fn(&Pair) -> Duration| {
        Duration::from_secs_f64(median(&runs.iter().map(|p| f(p).as_secs_f64()).collect::<Vec<_>>()))
    };
    let counts = |f: fn(&Pair) -> u64| count_summary(&runs.iter().map(|p| f(p)).collect::<Vec<_>>());
    let ratios: Vec<f64> = runs.iter().map(|p| p.wall.as_secs_f64() / p.lower_bound.as_secs_f64()).collect();
    Some(Summary {
        design,
        n,
        samples: runs.len(),
        token_calls: counts(|p| p.seen.token_calls),
        failed: counts(|p| p.failed as u64),
        api_401s: counts(|p| p.seen.api_unauthorized),
        connections: counts(|p| p.seen.connections),
        wall: secs(|p| p.wall),
        p50: secs(|p| p.p50),
        p99: secs(|p| p.p99),
        lower_bound: secs(|p| p.lower_bound),
        ratio: median(&ratios),
        ratio_range: ratios.iter().fold((f64::INFINITY, 0.0_f64), |(low, high), &r| (low.min(r), high.max(r))),
        max_token_calls: runs.iter().map(|p| p.seen.token_calls).max().unwrap_or(0),
        max_failed: runs.iter().map(|p| p.failed).max().unwrap_or(0),
    })
}

/// The tables of a storm bench: per transport, one per size.
pub fn storm_tables(pairs: &[Pair], transports: &[Transport], sizes: &[usize], scenario: Scenario) -> String {
    let mut out = String::new();
    for &transport in transports {
        let _ = writeln!(out, "#### {}\n\n{}\n", transport.label(), transport.describe());
        for &n in sizes {
            storm_table(&mut out, pairs, transport, n, scenario);
        }
    }
    let _ = writeln!(
        out,
        "\"Connections opened\" counts the connections the server accepted during the storm, beyond those open before it (this crate's token client keeps one of its own).\n"
    );
    out
}

/// The table of one size over one transport.
fn storm_table(out: &mut String, pairs: &[Pair], transport: Transport, n: usize, scenario: Scenario) {
    let summaries: Vec<Summary> = Design::ALL.iter().filter_map(|&d| summarise(pairs, transport, d, n)).collect();
    let Some(first) = summaries.first() else { return };
    let of_n: Vec<&Pair> = pairs.iter().filter(|p| p.transport == transport && p.n == n).collect();
    let ms_of = |f: fn(&Pair) -> Duration| {
        ms(Duration::from_secs_f64(median(&of_n.iter().map(|p| f(p).as_secs_f64()).collect::<Vec<_>>())))
    };
    let (lower_bound, lb_p50, lb_p99) =
        (ms_of(|p| p.lower_bound), ms_of(|p| p.lower_bound_p50), ms_of(|p| p.lower_bound_p99));
    let lb_connections = count_summary(&of_n.iter().map(|p| p.lower_bound_connections).collect::<Vec<_>>());
    let _ = writeln!(out, "##### {}: N = {}\n", transport.label(), thousands(n));
    match scenario {
        Scenario::Rejected => {
            let _ = writeln!(
                out,
                "| design | token calls | failed requests | requests answered 401 | connections opened | wall time | p50 | p99 | wall / lower bound |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            let _ = writeln!(
                out,
                "| lower bound: bare reqwest, {} plain requests + 1 token call | 1 | 0 | {} | {lb_connections} | {lower_bound} | {lb_p50} | {lb_p99} | 1.00 |",
                thousands(2 * n),
                thousands(n),
            );
            for s in &summaries {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} ({:.2}–{:.2}) |",
                    s.design.label(),
                    s.token_calls,
                    s.failed,
                    s.api_401s,
                    s.connections,
                    ms(s.wall),
                    ms(s.p50),
                    ms(s.p99),
                    s.ratio,
                    s.ratio_range.0,
                    s.ratio_range.1
                );
            }
        }
        Scenario::InsideSkew => {
            let _ = writeln!(
                out,
                "| design | token calls | requests answered 401 | failed requests | connections opened | wall time | p99 | wall / lower bound |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            let _ = writeln!(
                out,
                "| lower bound: bare reqwest, 1 token call then {} plain requests | 1 | 0 | 0 | {lb_connections} | {lower_bound} | {lb_p99} | 1.00 |",
                thousands(n),
            );
            for s in &summaries {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.2} ({:.2}–{:.2}) |",
                    s.design.label(),
                    s.token_calls,
                    s.api_401s,
                    s.failed,
                    s.connections,
                    ms(s.wall),
                    ms(s.p99),
                    s.ratio,
                    s.ratio_range.0,
                    s.ratio_range.1
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} rounds, each running every design once in turn, each storm paired with a lower-bound run just before it; medians, with the range where it varied (for wall / lower bound, the lowest and highest of the rounds).\n",
        first.samples
    );
}

/// Every pair as CSV, for whoever wants more than medians.
pub fn pairs_csv(pairs: &[Pair]) -> String {
    let mut out = String::from(
        "transport,design,n,wall_ms,p50_ms,p99_ms,failed,token_calls,api_401s,connections,lower_bound_ms,lower_bound_p50_ms,lower_bound_p99_ms,lower_bound_connections\n",
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for p in pairs {
        let _ = writeln!(
            out,
            "{},{},{},{:.3},{:.3},{:.3},{},{},{},{},{:.3},{:.3},{:.3},{}",
            p.transport.id(),
            p.design.id(),
            p.n,
            ms(p.wall),
            ms(p.p50),
            ms(p.p99),
            p.failed,
            p.seen.token_calls,
            p.seen.api_unauthorized,
            p.seen.connections,
            ms(p.lower_bound),
            ms(p.lower_bound_p50),
            ms(p.lower_bound_p99),
            p.lower_bound_connections
        );
    }
    out
}

/// The token endpoint's latency in the storm benches.
pub const STORM_TOKEN_LATENCY: Duration = Duration::from_millis(20);

/// Storms per design at each size (quick: 2).
pub fn storm_rounds() -> usize {
    if super::quick() { 2 } else { 11 }
}

/// Runs the storm benches for one scenario: at every N over every transport, [`storm_rounds`]
/// rounds, each round every design once (the first design moving down one place a round), each
/// storm paired with a lower-bound run just before it, against a server in a child process (the
/// bench's `main` starts with [`serve_if_child`](super::server::serve_if_child)). Interleaved so that whatever load a shared
/// machine puts on a stretch of the run falls on every design alike; run design by design, a
/// minute of load would land on one of them. A filter argument (`cargo bench --bench storm --
/// storm/http1/1000`) keeps only the sizes whose `<group>/<transport>/<n>` begins with it.
/// Returns the pairs and the sizes.
pub fn storm_bench(group: &str, scenario: Scenario, transports: &[Transport]) -> (Vec<Pair>, Vec<usize>) {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let server = Server::spawn(STORM_TOKEN_LATENCY);
    let rt = super::runtime();
    // Warm both sides (and every transport's code paths) before anything is measured.
    for &transport in transports {
        rt.block_on(run_pair(Design::Ours, 1_000, scenario, transport, &server));
    }

    let sizes = super::storm_sizes();
    let mut pairs = Vec::new();
    for &transport in transports {
        for &n in &sizes {
            let id = format!("{group}/{}/{n}", transport.id());
            if filter.as_deref().is_some_and(|filter| !id.starts_with(filter)) {
                continue;
            }
            let started = std::time::Instant::now();
            for round in 0..storm_rounds() {
                for place in 0..Design::ALL.len() {
                    let design = Design::ALL[(round + place) % Design::ALL.len()];
                    pairs.push(rt.block_on(run_pair(design, n, scenario, transport, &server)));
                }
            }
            eprintln!("{id}: {} rounds in {:.1} s", storm_rounds(), started.elapsed().as_secs_f64());
        }
    }
    (pairs, sizes)
}

/// Per transport, one line per design across every N, each cell rendered by `cell` from that
/// storm's summary.
pub fn headline_table(
    title: &str,
    pairs: &[Pair],
    transports: &[Transport],
    sizes: &[usize],
    cell: impl Fn(&Summary) -> String,
) -> String {
    let mut out = format!("{title}\n\n");
    for &transport in transports {
        let _ = write!(out, "{}:\n\n| design |", transport.label());
        for &n in sizes {
            let _ = write!(out, " N = {} |", thousands(n));
        }
        out.push_str("\n| --- |");
        out.push_str(&" ---: |".repeat(sizes.len()));
        out.push('\n');
        for design in Design::ALL {
            let _ = write!(out, "| {} |", design.label());
            for &n in sizes {
                match summarise(pairs, transport, design, n) {
                    Some(summary) => {
                        let _ = write!(out, " {} |", cell(&summary));
                    }
                    None => out.push_str(" |"),
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

//! Proactive refresh: the storm of `storm.rs`, but the client's token has 10 s left, inside the
//! 30 s skew window, and the provider already rejects it. A design that refreshes ahead of expiry
//! makes one token call before sending anything, and no request ever sees a 401.
//!
//! `cargo bench --bench proactive` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a short pass.

mod common;

use std::time::Duration;

use common::designs::Design;
use common::run::{self, Scenario};
use common::server::Server;
use criterion::{SamplingMode, Throughput};

/// The token endpoint's latency.
const TOKEN_LATENCY: Duration = Duration::from_millis(20);

fn main() {
    let mut criterion = common::storm_criterion();
    let rt = common::runtime();
    let server = rt.block_on(Server::start(TOKEN_LATENCY));
    rt.block_on(run::run_pair(Design::Ours, 1_000, Scenario::InsideSkew, &server));

    let sizes = common::storm_sizes();
    let mut pairs = Vec::new();
    for &n in &sizes {
        let mut group = criterion.benchmark_group(format!("proactive/{n}"));
        group.sampling_mode(SamplingMode::Flat).throughput(Throughput::Elements(n as u64));
        group.measurement_time(common::storm_measurement_time(&rt, n, Scenario::InsideSkew, &server));
        for design in Design::ALL {
            group.bench_function(design.id(), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let pair = rt.block_on(run::run_pair(design, n, Scenario::InsideSkew, &server));
                        timed += pair.wall;
                        pairs.push(pair);
                    }
                    timed
                })
            });
        }
        group.finish();
    }
    criterion.final_summary();

    let mut tables = String::from("### Proactive refresh (token inside the skew window)\n\n");
    tables.push_str(&run::storm_tables(&pairs, &sizes, Scenario::InsideSkew));
    common::write_raw("proactive.csv", &run::pairs_csv(&pairs));
    common::write_tables("proactive.headline", &headline(&pairs, &sizes));
    common::write_tables("proactive", &tables);
}

/// One line per design across every N: token calls, requests answered 401.
fn headline(pairs: &[run::Pair], sizes: &[usize]) -> String {
    let mut out = String::from(
        "Token inside the skew window (the provider already rejects it): token calls / requests answered 401, medians.\n\n| design |",
    );
    for &n in sizes {
        out.push_str(&format!(" N = {} |", common::thousands(n)));
    }
    out.push_str("\n| --- |");
    out.push_str(&" ---: |".repeat(sizes.len()));
    out.push('\n');
    for design in Design::ALL {
        out.push_str(&format!("| {} |", design.label()));
        for &n in sizes {
            match run::summarise(pairs, design, n) {
                Some(s) => out.push_str(&format!(" {} / {} |", s.token_calls, s.api_401s)),
                None => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

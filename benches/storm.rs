//! The 401 storm: N concurrent requests all holding an access token the provider already rejects,
//! against a rotating provider whose token endpoint answers in 20 ms. Every design, every N, one
//! run; each storm is paired with a lower-bound run (bare reqwest, the same 2N requests plus one
//! token call) just before it.
//!
//! `cargo bench --bench storm` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a short pass.

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
    // Open the connection and warm both sides before anything is measured.
    rt.block_on(run::run_pair(Design::Ours, 1_000, Scenario::Rejected, &server));

    let sizes = common::storm_sizes();
    let mut pairs = Vec::new();
    for &n in &sizes {
        let mut group = criterion.benchmark_group(format!("storm/{n}"));
        group.sampling_mode(SamplingMode::Flat).throughput(Throughput::Elements(n as u64));
        group.measurement_time(common::storm_measurement_time(&rt, n, Scenario::Rejected, &server));
        for design in Design::ALL {
            group.bench_function(design.id(), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let pair = rt.block_on(run::run_pair(design, n, Scenario::Rejected, &server));
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

    let mut tables = String::from("### 401 storm\n\n");
    tables.push_str(&run::storm_tables(&pairs, &sizes, Scenario::Rejected));
    common::write_raw("storm.csv", &run::pairs_csv(&pairs));
    common::write_tables("storm.headline", &headline(&pairs, &sizes));
    common::write_tables("storm", &tables);
}

/// One line per design across every N: token calls, failed requests, ratio to the lower bound.
fn headline(pairs: &[run::Pair], sizes: &[usize]) -> String {
    let mut out = String::from(
        "401 storm against a rotating provider (20 ms token endpoint): token calls / failed requests / wall time over the lower bound, medians.\n\n| design |",
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
                Some(s) => out.push_str(&format!(" {} / {} / {:.2}x |", s.token_calls, s.failed, s.ratio)),
                None => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

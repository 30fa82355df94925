//! The 401 storm: N concurrent requests all holding an access token the provider already rejects,
//! against a rotating provider whose token endpoint answers in 20 ms. Every design, every N, over
//! HTTP/2 (one connection) and HTTP/1.1 (a pool), one run; each storm is paired with a
//! lower-bound run (bare reqwest on a client built the same way, the same 2N requests plus one
//! token call) just before it. The server runs in a child process of this binary (an HTTP/1.1
//! storm of 10,000 needs 10,000 connections on each side).
//!
//! `cargo bench --bench storm` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a short pass.

mod common;

use common::run::{self, Scenario};
use common::transport::Transport;

fn main() {
    common::server::serve_if_child();
    let (pairs, sizes) = run::storm_bench("storm", Scenario::Rejected, &Transport::ALL);
    let mut tables = String::from("### 401 storm\n\n");
    tables.push_str(&run::storm_tables(&pairs, &Transport::ALL, &sizes, Scenario::Rejected));
    common::write_raw("storm.csv", &run::pairs_csv(&pairs));
    let headline = run::headline_table(
        "401 storm against a rotating provider (20 ms token endpoint): token calls / failed requests / wall time over the lower bound / p99, medians.",
        &pairs,
        &Transport::ALL,
        &sizes,
        |s| format!("{} / {} / {:.2}x / {}", s.token_calls, s.failed, s.ratio, common::ms(s.p99)),
    );
    common::write_tables("storm.headline", &headline);
    common::write_tables("storm", &tables);
}

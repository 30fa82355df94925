//! Proactive refresh: the storm of `storm.rs`, but the client's token has 10 s left, inside the
//! 30 s skew window, and the provider already rejects it. A design that refreshes ahead of expiry
//! makes one token call before sending anything, and no request ever sees a 401. Over HTTP/2
//! only: whether a design refreshes before it sends does not depend on the transport.
//!
//! `cargo bench --bench proactive` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a short pass.

mod common;

use common::run::{self, Scenario};
use common::transport::Transport;

fn main() {
    common::server::serve_if_child();
    let transports = [Transport::Http2];
    let (pairs, sizes) = run::storm_bench("proactive", Scenario::InsideSkew, &transports);
    let mut tables = String::from("### Proactive refresh (token inside the skew window)\n\n");
    tables.push_str(&run::storm_tables(&pairs, &transports, &sizes, Scenario::InsideSkew));
    common::write_raw("proactive.csv", &run::pairs_csv(&pairs));
    let headline = run::headline_table(
        "Token inside the skew window (the provider already rejects it): token calls / requests answered 401, medians.",
        &pairs,
        &transports,
        &sizes,
        |s| format!("{} / {}", s.token_calls, s.api_401s),
    );
    common::write_tables("proactive.headline", &headline);
    common::write_tables("proactive", &tables);
}

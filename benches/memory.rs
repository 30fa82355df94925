//! Memory: the peak heap of a 10,000-request 401 storm through each design, against the same
//! requests through bare reqwest (the lower-bound choreography), counted by a global allocator
//! in this bench binary.
//!
//! The token endpoint holds its answer until the server has answered all N requests 401 (or no
//! request has arrived for 50 ms), then 100 ms more, so that all N requests are waiting for the
//! refresh at the same moment: the peak is then N waiting requests, and (peak − bare reqwest's peak) / N is what a design costs per
//! waiting request beyond what the request itself costs. Server, client and runtime are in this
//! process and count for every design alike.
//!
//! `cargo bench --bench memory` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a short pass with
//! N = 1,000.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::designs::{self, Design, LowerBound};
use common::run::{Scenario, prepare};
use common::server::Server;
use common::transport::Transport;
use criterion::{Criterion, SamplingMode};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with this layout.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `work` and returns its result and the heap's peak above where it started.
async fn peak_of<T>(work: impl Future<Output = T>) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = work.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

/// How long the gated token answer still waits after the last 401 was sent.
const AFTER_GATE: Duration = Duration::from_millis(100);

/// Who runs the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// Bare reqwest, the lower-bound choreography: the same requests with no layer.
    Bare,
    /// Bare reqwest, each rejected request holding its 401 response until the refresh is done.
    BareHolding401s,
    Design(Design),
}

impl Who {
    fn id(self) -> &'static str {
        match self {
            Who::Bare => "bare-reqwest",
            Who::BareHolding401s => "bare-reqwest-holding-401s",
            Who::Design(design) => design.id(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Who::Bare => "bare reqwest (the same requests, no layer)",
            Who::BareHolding401s => "bare reqwest, each request holding its 401 response until the refresh (reference)",
            Who::Design(design) => design.label(),
        }
    }
}

struct Sample {
    who: Who,
    peak: usize,
    failed: usize,
    token_calls: u64,
    api_401s: u64,
}

async fn one(who: Who, n: usize, server: &Server) -> Sample {
    let http = &Transport::Http2.connected_client(server).await;
    let start = prepare(server, Scenario::Rejected).await;
    server.provider().gate_token_answers(n).await;
    let (failed, peak) = match who {
        Who::Bare | Who::BareHolding401s => {
            let shape = if who == Who::Bare { LowerBound::Storm } else { LowerBound::StormHolding401s };
            let (run, peak) = peak_of(designs::lower_bound(http, server, std::slice::from_ref(&start), n, shape)).await;
            (run.failed, peak)
        }
        Who::Design(design) => {
            let built = designs::build(design, server, http, &start).await;
            let url = server.api_url();
            let (run, peak) = peak_of(designs::storm(&built.client, &url, n)).await;
            (run.failed, peak)
        }
    };
    let seen = server.provider().seen().await;
    Sample { who, peak, failed, token_calls: seen.token_calls, api_401s: seen.api_unauthorized }
}

fn main() {
    let quick = common::quick();
    let n = if quick { 1_000 } else { 10_000 };
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 5 }))
        .without_plots()
        .configure_from_args();
    let rt = common::runtime();
    let server = rt.block_on(Server::start(AFTER_GATE));
    rt.block_on(one(Who::Bare, n, &server));

    let whos: Vec<Who> =
        [Who::Bare, Who::BareHolding401s].into_iter().chain(Design::ALL.into_iter().map(Who::Design)).collect();
    let mut samples = Vec::new();
    let mut group = criterion.benchmark_group(format!("memory/{n}"));
    group.sampling_mode(SamplingMode::Flat);
    for &who in &whos {
        group.bench_function(who.id(), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let started = std::time::Instant::now();
                    samples.push(rt.block_on(one(who, n, &server)));
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
    criterion.final_summary();
    let (tables, headline) = table(&samples, &whos, n);
    common::write_tables("memory.headline", &headline);
    common::write_tables("memory", &tables);
}

fn table(samples: &[Sample], whos: &[Who], n: usize) -> (String, String) {
    let peak = |who: Who| {
        let peaks: Vec<f64> = samples.iter().filter(|s| s.who == who).map(|s| s.peak as f64).collect();
        (common::median(&peaks), peaks.len())
    };
    let (bare, _) = peak(Who::Bare);
    let mut out = format!(
        "### Memory: {} requests waiting for one refresh\n\n| client | token calls | failed requests | requests answered 401 | peak heap | per request | beyond bare reqwest, per request |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        common::thousands(n)
    );
    let mut headline = format!(
        "Peak heap of a {}-request storm, beyond the same requests through bare reqwest, per waiting request:",
        common::thousands(n)
    );
    let mut count = 0;
    for &who in whos {
        let (median_peak, samples_of) = peak(who);
        if samples_of == 0 {
            continue;
        }
        count = count.max(samples_of);
        let runs: Vec<&Sample> = samples.iter().filter(|s| s.who == who).collect();
        let token_calls = common::count_summary(&runs.iter().map(|s| s.token_calls).collect::<Vec<_>>());
        let failed = common::count_summary(&runs.iter().map(|s| s.failed as u64).collect::<Vec<_>>());
        let api_401s = common::count_summary(&runs.iter().map(|s| s.api_401s).collect::<Vec<_>>());
        let label = who.label();
        let beyond = match who {
            Who::Bare => "—".to_owned(),
            _ => format!("{:.0} B", (median_peak - bare) / n as f64),
        };
        if let Who::Design(design) = who {
            headline.push_str(&format!(" {} {beyond} ({api_401s} requests answered 401);", design.label()));
        }
        let _ = writeln!(
            out,
            "| {label} | {token_calls} | {failed} | {api_401s} | {:.1} MiB | {:.0} B | {beyond} |",
            median_peak / (1024.0 * 1024.0),
            median_peak / n as f64,
        );
    }
    let _ = writeln!(
        out,
        "\nMedians of up to {count} storms each. Peak heap is the live-bytes high-water mark above the level before the storm, counted by a global allocator (client, server and runtime together; the same server work for every line). The token endpoint holds its answer until all {} requests were answered 401 (or, for designs that hold requests back while they refresh, until none has arrived for 50 ms), then 100 ms more, so that they all wait at once. Every single-flight design here holds back the requests that start after the first 401 until the new token is there: they wait before being sent, and the peak comes when they are released. This crate releases them one after another, in the order they came, as huskarl's cache and the hand-written mutex release theirs one lock hand-off at a time, so fewer are in flight at once than through bare reqwest, which sends every retry as soon as the token is there (hence a negative figure).\n",
        common::thousands(n)
    );
    let headline = format!("{}.\n", headline.trim_end_matches(';'));
    (out, headline)
}

//! What the bench binaries share: the lean provider server, the designs, and the bookkeeping that
//! turns runs into the tables of BENCHMARKS.md.
//!
//! Each bench binary uses only part of this module.
#![allow(dead_code)]

pub mod designs;
pub mod run;
pub mod server;
pub mod transport;

use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;

/// A layer that does nothing but pass the request on: what reqwest-middleware costs once it holds
/// any layer at all (it clones its middleware stack for every request and boxes every layer's
/// future). The reference the happy-path and instruction-count benches compare the layer with.
pub struct PassThrough;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for PassThrough {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        next.run(request, extensions).await
    }
}

/// `RTR_BENCH_QUICK=1`: small storms and short measurements, so CI can check that every bench
/// builds and runs (it judges no times).
pub fn quick() -> bool {
    std::env::var_os("RTR_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The storm sizes: 100, 1,000 and 10,000 (quick: 100 and 1,000).
pub fn storm_sizes() -> Vec<usize> {
    if quick() { vec![100, 1_000] } else { vec![100, 1_000, 10_000] }
}

/// The runtime every bench runs in: tokio's multi-threaded scheduler, one worker per core, with
/// the server and the clients in it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime")
}

/// Criterion as the storm benches use it: a one-storm warm-up, then ten samples of one storm each
/// (`SamplingMode::Flat` and a measurement time from [`storm_measurement_time`]).
pub fn storm_criterion() -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(1)).without_plots().configure_from_args()
}

/// A measurement time that fits ten storms of `n`, from one storm run now.
pub fn storm_measurement_time(
    rt: &tokio::runtime::Runtime,
    n: usize,
    scenario: run::Scenario,
    transport: transport::Transport,
    server: &server::Server,
) -> Duration {
    let pair = rt.block_on(run::run_pair(designs::Design::Ours, n, scenario, transport, server));
    (pair.wall * 12).max(Duration::from_millis(100))
}

/// Where the tables go: `$RTR_BENCH_OUT`, else `target/rtr-bench`.
pub fn out_dir() -> PathBuf {
    let dir = std::env::var_os("RTR_BENCH_OUT").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
        target.join("rtr-bench")
    });
    std::fs::create_dir_all(&dir).expect("create the bench output directory");
    dir
}

/// Writes raw samples to `<out_dir>/<name>`.
pub fn write_raw(name: &str, contents: &str) {
    std::fs::write(out_dir().join(name), contents).expect("write the samples");
}

/// Writes one bench's tables (markdown) to `<out_dir>/<name>.md` and prints them.
pub fn write_tables(name: &str, markdown: &str) {
    let path = out_dir().join(format!("{name}.md"));
    std::fs::write(&path, markdown).expect("write the tables");
    println!("\n{markdown}\n(written to {})", path.display());
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// The `q` quantile (nearest rank) of `values`, which it sorts.
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `median` and, when they differ, the range: `1` or `1 (1–3)`.
pub fn count_summary(values: &[u64]) -> String {
    let as_f64: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    let (min, max) = (values.iter().min().copied().unwrap_or(0), values.iter().max().copied().unwrap_or(0));
    let med = median(&as_f64);
    let med = if med.fract() == 0.0 { thousands(med as usize) } else { format!("{med:.1}") };
    if min == max { med } else { format!("{med} ({}–{})", thousands(min as usize), thousands(max as usize)) }
}

/// Thousands separators: 10000 → 10,000.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// CPU time used by this process so far, all threads, from `/proc/self/task/*/schedstat`
/// (nanoseconds on the CPU); `None` where that is not readable.
pub fn process_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(path) else { continue };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

//! Happy-path cost in instructions, not seconds: callgrind counts what the client side of one
//! request executes, which does not move with the machine's load the way wall time does.
//!
//! One process serves (the bench's own hyper provider, in a child process of its own, so its work
//! is never counted). For each client (bare reqwest, reqwest-middleware with no layer, with a
//! layer that does nothing, and this crate's layer with a valid token), another child runs under
//! `valgrind --tool=callgrind` on a current-thread runtime: a warm-up (the connection opened, the
//! caches filled), then as many sequential requests again inside `rtr_instructions_measured`, the
//! only function callgrind collects in (`--toggle-collect`). Instructions per request are that
//! function's total divided by the number of requests. Each client is counted under several heap
//! layouts and the median taken (see [`layouts`]: where the allocator happens to place one chunk
//! moves a count by hundreds of instructions).
//!
//! `cargo bench --bench instructions` (optimized, the figures to quote); CI runs
//! `RTR_BENCH_QUICK=1 RTR_INSTRUCTIONS_MAX_RATIO=1.02 cargo bench --bench instructions` (200
//! requests a client under 7 layouts, which give the same ratios: instruction counts do not move with the load),
//! which fails when the layer costs more than 1.02x the instructions of the layer that does
//! nothing. Needs valgrind (Debian: `apt-get install valgrind`), and fails saying so without it.
//! The table goes to `target/rtr-bench/instructions.md`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::PassThrough;
use common::server::Server;
use http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh, TokenSet};

/// Requests counted per client (the warm-up sends as many again, uncounted): 2,000, or 200 in
/// quick mode (`RTR_BENCH_QUICK=1`, what CI runs to check that the bench works).
fn requests() -> u64 {
    if common::quick() { 200 } else { 2_000 }
}
const ROLE: &str = "RTR_INSTRUCTIONS_ROLE";
/// The size of the block a client allocates before anything else (see [`layouts`]).
const SPACER: &str = "RTR_HEAP_SPACER";

/// The heap layouts each client is counted under, as the size of a block allocated before
/// anything else and held to the end: it moves where everything after it lands.
///
/// Why: glibc's malloc serves the chunks a request frees and asks for again from its per-thread
/// cache, but chunks over 1,032 bytes (hyper's buffers, a few a request) go through its bins,
/// and what that costs depends on which chunks happen to lie next to them. One client's count
/// then moves by hundreds of instructions a request when any allocation changes size, or when
/// the heap starts elsewhere; for the layer's client, whose future is one chunk of its own, it
/// took two values about 800 apart over the layouts below. The median over several layouts
/// is the figure that does not hang on where one chunk happened to land.
fn layouts() -> Vec<usize> {
    let all = vec![0, 48, 200, 600, 1_100, 2_500, 5_000, 12_000, 40, 120, 264, 904, 3_000, 7_900, 18_700];
    if common::quick() { all[..7].to_vec() } else { all }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 }
}

/// The clients compared, in the table's order.
const CLIENTS: [(&str, &str); 4] = [
    ("bare", "bare reqwest"),
    ("middleware", "reqwest-middleware, no layer"),
    ("pass-through", "reqwest-middleware + a layer that does nothing (reference)"),
    ("ours", "**reqwest-token-refresh** (valid token)"),
];

enum Client {
    Bare(reqwest::Client, HeaderValue),
    Middleware(ClientWithMiddleware, Option<HeaderValue>),
}

impl Client {
    fn new(id: &str, origin: &str, access_token: &str) -> Client {
        let http = reqwest::Client::builder().no_proxy().build().expect("a client");
        let header = HeaderValue::from_str(&format!("Bearer {access_token}")).expect("a header");
        match id {
            "bare" => Client::Bare(http, header),
            "middleware" => Client::Middleware(reqwest_middleware::ClientBuilder::new(http).build(), Some(header)),
            "pass-through" => {
                Client::Middleware(reqwest_middleware::ClientBuilder::new(http).with(PassThrough).build(), Some(header))
            }
            "ours" => {
                let tokens = TokenSet::new(access_token).with_expires_in(Duration::from_secs(24 * 60 * 60));
                let auth = TokenRefresh::builder(RefreshTokenGrant::new(format!("{origin}/never-called")))
                    .initial_tokens(tokens)
                    .allow_origin(origin)
                    .build()
                    .expect("a layer");
                Client::Middleware(reqwest_middleware::ClientBuilder::new(http).with(auth).build(), None)
            }
            other => panic!("no client {other}"),
        }
    }

    async fn get(&self, url: &reqwest::Url) {
        let response = match self {
            Client::Bare(client, header) => client
                .get(url.clone())
                .header(AUTHORIZATION, header.clone())
                .send()
                .await
                .expect("the request succeeds"),
            Client::Middleware(client, header) => {
                let request = client.get(url.clone());
                let request = match header {
                    Some(header) => request.header(AUTHORIZATION, header.clone()),
                    None => request,
                };
                request.send().await.expect("the request succeeds")
            }
        };
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.expect("the body");
    }
}

/// The requests callgrind counts; its name is what `--toggle-collect` looks for.
#[unsafe(no_mangle)]
#[inline(never)]
fn rtr_instructions_measured(runtime: &tokio::runtime::Runtime, client: &Client, url: &reqwest::Url) {
    runtime.block_on(async {
        for _ in 0..requests() {
            client.get(url).await;
        }
    });
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("server") => serve(),
        Ok("client") => client(),
        _ => drive(),
    }
}

/// The server's child: prints its origin and a valid access token, then serves until killed.
fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let server = Server::start(Duration::from_millis(1)).await;
        let tokens = server.provider().issue_tokens().await;
        println!("READY {} {} {}", server.origin(), server.api_url(), tokens.access_token);
        std::future::pending::<()>().await;
    });
}

/// A client's child, under callgrind.
fn client() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the driver"));
    let (id, origin, url, token) = (var("RTR_CLIENT"), var("RTR_ORIGIN"), var("RTR_URL"), var("RTR_TOKEN"));
    // Held for the whole run: it moves where everything after it lands in the heap.
    let spacer: Vec<u8> = vec![1; std::env::var(SPACER).ok().and_then(|n| n.parse().ok()).unwrap_or(0)];
    let url = reqwest::Url::parse(&url).expect("a URL");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = Client::new(&id, &origin, &token);
    runtime.block_on(async {
        for _ in 0..requests() {
            client.get(&url).await;
        }
    });
    rtr_instructions_measured(&runtime, &client, &url);
    drop(spacer);
}

fn drive() {
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.as_ref().is_ok_and(|out| out.status.success()) {
        eprintln!("valgrind not found: install it (Debian: apt-get install valgrind) to count instructions");
        std::process::exit(1);
    }
    let exe = std::env::current_exe().expect("the bench binary");
    let mut server = Command::new(&exe).env(ROLE, "server").stdout(Stdio::piped()).spawn().expect("the server child");
    let ready = {
        use std::io::BufRead as _;
        let stdout = server.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("the server's first line");
        line
    };
    let mut fields = ready.trim().strip_prefix("READY ").expect("the server is ready").split(' ');
    let (origin, url, token) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());

    let out = common::out_dir();
    let layouts = layouts();
    // Per client: instructions per request under each heap layout, and its callgrind files.
    let mut counts: Vec<(&str, &str, Vec<f64>)> = Vec::new();
    let mut files: Vec<(&str, Vec<std::path::PathBuf>)> = Vec::new();
    for (id, label) in CLIENTS {
        let mut per_layout = Vec::new();
        let mut outputs = Vec::new();
        for (layout, spacer) in layouts.iter().enumerate() {
            let file = out.join(format!("callgrind.{id}.{layout}.out"));
            let status = Command::new("valgrind")
                .args(["--tool=callgrind", "--collect-atstart=no", "--toggle-collect=rtr_instructions_measured"])
                .arg(format!("--callgrind-out-file={}", file.display()))
                .arg(&exe)
                .env(ROLE, "client")
                .envs([("RTR_CLIENT", id), ("RTR_ORIGIN", origin), ("RTR_URL", url), ("RTR_TOKEN", token)])
                .env(SPACER, spacer.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("valgrind runs");
            assert!(status.success(), "the {id} client failed under callgrind (heap spacer {spacer} B)");
            let total = total_instructions(&std::fs::read_to_string(&file).expect("callgrind's output"));
            per_layout.push(total as f64 / requests() as f64);
            outputs.push(file);
        }
        counts.push((id, label, per_layout));
        files.push((id, outputs));
    }
    let _ = server.kill();
    let _ = server.wait();

    let median_of = |wanted: &str| counts.iter().find(|(id, ..)| *id == wanted).map(|(.., n)| median(n)).unwrap();
    let (bare, reference, ours) = (median_of("bare"), median_of("pass-through"), median_of("ours"));
    let mut table = String::from(
        "| client | instructions per request | over the heap layouts | vs bare reqwest | vs the layer that does nothing |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    for (_, label, per_layout) in &counts {
        let n = median(per_layout);
        let (low, high) = per_layout.iter().fold((f64::MAX, f64::MIN), |(low, high), &x| (low.min(x), high.max(x)));
        table.push_str(&format!(
            "| {label} | {n:.0} | {low:.0}–{high:.0} | {:.3}x | {:.3}x |\n",
            n / bare,
            n / reference
        ));
    }
    let ratio = ours / reference;
    table.push_str(&format!(
        "\n{} sequential requests per client after as many uncounted, client side only (the server \
         is another process), one current-thread runtime, counted by callgrind; each client under {} heap \
         layouts (a block of 0 to {} bytes allocated before anything else, held to the end), the median \
         and the range over them. The layer adds {:+.0} instructions a request over a layer that does \
         nothing ({ratio:.3}x).\n",
        requests(),
        layouts.len(),
        layouts.iter().max().unwrap(),
        ours - reference
    ));
    let files_of = |wanted: &str| files.iter().find(|(id, _)| *id == wanted).map(|(_, f)| f.as_slice()).unwrap();
    table.push_str(&top_functions(files_of("ours"), files_of("pass-through")));
    common::write_tables("instructions", &table);
    let allowed = std::env::var("RTR_INSTRUCTIONS_MAX_RATIO").ok().and_then(|max| max.parse::<f64>().ok());
    if let Some(max) = allowed
        && ratio > max
    {
        eprintln!("the layer costs {ratio:.3}x the instructions of a layer that does nothing, over the {max} allowed");
        std::process::exit(1);
    }
}

/// The functions whose own instructions grow most from the layer that does nothing to this layer,
/// per request, as a table (`callgrind_annotate`, which comes with valgrind, does the reading).
fn top_functions(ours: &[std::path::PathBuf], reference: &[std::path::PathBuf]) -> String {
    let per_function = |files: &[std::path::PathBuf]| -> std::collections::HashMap<String, f64> {
        let mut functions = std::collections::HashMap::new();
        for file in files {
            let annotated = Command::new("callgrind_annotate")
                .args(["--threshold=100", "--inclusive=no", "--auto=no"])
                .arg(file)
                .output()
                .expect("callgrind_annotate runs");
            let text = String::from_utf8_lossy(&annotated.stdout);
            for line in text.lines() {
                // `  1,234 ( 0.5%)  file:function [object]`
                let Some((count, rest)) = line.trim_start().split_once(' ') else { continue };
                let Ok(count) = count.replace(',', "").parse::<f64>() else { continue };
                let Some((_, name)) = rest.split_once(")  ") else { continue };
                let name = name.rsplit_once(" [").map_or(name, |(name, _)| name);
                // A call count, where callgrind_annotate adds one: `function (805x)`.
                let name =
                    name.rsplit_once(" (").filter(|(_, calls)| calls.ends_with("x)")).map_or(name, |(name, _)| name);
                let name = name.split_once(':').map_or(name, |(_, function)| function);
                if name != "PROGRAM TOTALS" {
                    *functions.entry(name.to_owned()).or_insert(0.0) +=
                        count / (requests() as f64 * files.len() as f64);
                }
            }
        }
        functions
    };
    let (ours, reference) = (per_function(ours), per_function(reference));
    let mut added: Vec<(f64, &str)> = ours
        .iter()
        .map(|(name, n)| (n - reference.get(name).copied().unwrap_or(0.0), name.as_str()))
        .filter(|(delta, _)| *delta >= 1.0)
        .collect();
    added.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut table = String::from(
        "\nWhere they go: the functions whose own instructions per request grow most from the layer that \
         does nothing to this layer, on average over the heap layouts.\n\n| function | instructions per request added |\n| --- | ---: |\n",
    );
    for (delta, name) in added.into_iter().take(12) {
        table.push_str(&format!("| `{}` | {delta:+.0} |\n", name.replace('|', "\\|")));
    }
    let total = |functions: &std::collections::HashMap<String, f64>| functions.values().sum::<f64>();
    let allocator = |functions: &std::collections::HashMap<String, f64>| {
        functions.iter().filter(|(name, _)| in_allocator(name)).map(|(_, n)| n).sum::<f64>()
    };
    let (own, reference_own) = (total(&ours) - allocator(&ours), total(&reference) - allocator(&reference));
    table.push_str(&format!(
        "\nOf each request's count, glibc's allocator itself (`malloc`, `free` and the bins behind them) \
         takes {:.0} instructions in this layer's client and {:.0} in the reference's, on average over \
         the layouts: what its bins cost moves with where chunks happen to lie. Everything else: this \
         layer {own:.0}, the reference {reference_own:.0}, {:+.0} ({:.3}x).\n",
        allocator(&ours),
        allocator(&reference),
        own - reference_own,
        own / reference_own
    ));
    table
}

/// Whether `function` is glibc's allocator: its entry points and the bin code behind them.
fn in_allocator(function: &str) -> bool {
    matches!(function, "malloc" | "free" | "realloc" | "calloc")
        || ["_int_", "unlink_chunk", "malloc_", "tcache"].iter().any(|prefix| function.starts_with(prefix))
}

/// The `summary:` (or `totals:`) line of a callgrind output: instructions executed.
fn total_instructions(output: &str) -> u64 {
    output
        .lines()
        .find_map(|line| line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("callgrind wrote a summary line")
}

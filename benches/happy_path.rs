//! Happy-path overhead: requests with a valid token through bare reqwest, through
//! reqwest-middleware with no layer, and through our layer, at concurrency 1 and 64, against one
//! local hyper server (HTTP/1.1 keep-alive, one connection per concurrent request).
//!
//! Bare reqwest and reqwest-middleware send the same `Authorization` header, prebuilt, so the
//! difference to our layer is everything the layer does: the token lookup, the header it builds,
//! the request clone kept for a retry, the status check. Each sample of a client is paired with a
//! sample of bare reqwest of the same size run just before it, and the ratio is the median of
//! those pairs, so that the machine's drift cancels (the bare-vs-bare line shows the noise).
//!
//! `cargo bench --bench happy_path` (see BENCHMARKS.md); `RTR_BENCH_QUICK=1` for a short pass.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::PassThrough;
use common::designs::{Start, bearer};
use common::server::Server;
use criterion::{Criterion, Throughput};
use http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::{DpopKey, RefreshTokenGrant, TokenRefresh, TokenSet};

#[derive(Clone)]
enum Client {
    Bare(reqwest::Client, HeaderValue),
    NoLayer(ClientWithMiddleware, HeaderValue),
    /// reqwest-middleware with [`PassThrough`] in it (the caller sets the header).
    PassThrough(ClientWithMiddleware, HeaderValue),
    /// reqwest-middleware with [`Minimal`] in it: the least any layer that can retry does.
    Minimal(ClientWithMiddleware),
    Ours(ClientWithMiddleware),
    /// Our layer with a DPoP-bound token: a fresh proof signed for every request.
    OursDpop(ClientWithMiddleware),
}

/// The least a token layer that can retry a 401 does on the happy path: set a prebuilt header,
/// keep a clone of the request for the retry, check the status. No token lookup, no expiry, no
/// single flight. It shows what being a reqwest-middleware layer costs by itself (the boxed
/// future, the middleware stack reqwest-middleware clones for every request, the clone).
struct Minimal(HeaderValue);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Minimal {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let retry = request.try_clone();
        request.headers_mut().insert(AUTHORIZATION, self.0.clone());
        let response = next.clone().run(request, extensions).await?;
        match retry {
            Some(mut retry) if response.status() == StatusCode::UNAUTHORIZED => {
                retry.headers_mut().insert(AUTHORIZATION, self.0.clone());
                next.run(retry, extensions).await
            }
            _ => Ok(response),
        }
    }
}

impl Client {
    fn id(&self) -> &'static str {
        match self {
            Client::Bare(..) => "bare-reqwest",
            Client::NoLayer(..) => "reqwest-middleware",
            Client::PassThrough(..) => "pass-through-layer",
            Client::Minimal(..) => "minimal-layer",
            Client::Ours(..) => "ours",
            Client::OursDpop(..) => "ours-dpop",
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Client::Bare(..) => "bare reqwest",
            Client::NoLayer(..) => "reqwest-middleware, no layer",
            Client::PassThrough(..) => "reqwest-middleware + a layer that does nothing (reference)",
            Client::Minimal(..) => "reqwest-middleware + a minimal retrying layer, `#[async_trait]` (reference)",
            Client::Ours(..) => "**reqwest-token-refresh** (valid token)",
            Client::OursDpop(..) => "**reqwest-token-refresh**, DPoP-bound token (a fresh ES256 proof each request)",
        }
    }

    async fn get(&self, url: &reqwest::Url) {
        let response = match self {
            Client::Bare(client, token) => {
                client.get(url.clone()).header(AUTHORIZATION, token.clone()).send().await.ok()
            }
            Client::NoLayer(client, token) | Client::PassThrough(client, token) => {
                client.get(url.clone()).header(AUTHORIZATION, token.clone()).send().await.ok()
            }
            Client::Minimal(client) | Client::Ours(client) | Client::OursDpop(client) => {
                client.get(url.clone()).send().await.ok()
            }
        };
        let response = response.expect("the request succeeds");
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.expect("the body");
    }

    /// `concurrency` tasks each sending `per_task` requests one after another; the elapsed time.
    async fn run(&self, url: &reqwest::Url, concurrency: usize, per_task: u64) -> Duration {
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, url) = (self.clone(), url.clone());
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        client.get(&url).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a request task panicked");
        }
        started.elapsed()
    }
}

/// One sample: this client's time and CPU, and the paired bare-reqwest time.
struct Sample {
    requests: u64,
    time: Duration,
    cpu: Option<Duration>,
    bare: Duration,
}

fn main() {
    let quick = common::quick();
    let mut criterion = Criterion::default().without_plots();
    criterion = if quick {
        criterion.sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_millis(300))
    } else {
        criterion.sample_size(40).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4))
    };
    let mut criterion = criterion.configure_from_args();

    let rt = common::runtime();
    let server = rt.block_on(Server::start(Duration::ZERO));
    let issued = rt.block_on(server.provider().issue_tokens());
    let http = reqwest::Client::new();
    let token = bearer(&issued.access_token);
    let start = Start { issued, remaining: Duration::from_secs(3599) };
    let ours = reqwest_middleware::ClientBuilder::new(http.clone()).with(layer(&server, &start, false)).build();
    let ours_dpop = reqwest_middleware::ClientBuilder::new(http.clone()).with(layer(&server, &start, true)).build();
    let clients = [
        Client::Bare(http.clone(), token.clone()),
        Client::NoLayer(reqwest_middleware::ClientBuilder::new(http.clone()).build(), token.clone()),
        Client::PassThrough(
            reqwest_middleware::ClientBuilder::new(http.clone()).with(PassThrough).build(),
            token.clone(),
        ),
        Client::Minimal(reqwest_middleware::ClientBuilder::new(http.clone()).with(Minimal(token.clone())).build()),
        Client::Ours(ours),
        Client::OursDpop(ours_dpop),
    ];
    let bare = clients[0].clone();
    let url = server.api_url();

    let mut results: Vec<(usize, &'static str, &'static str, Vec<Sample>)> = Vec::new();
    for concurrency in [1usize, 64] {
        // Open the connections and load the layer's token before anything is measured.
        for client in &clients {
            rt.block_on(client.run(&url, concurrency, 20));
        }
        let mut group = criterion.benchmark_group(format!("happy_path/c{concurrency}"));
        group.throughput(Throughput::Elements(concurrency as u64));
        for client in &clients {
            let mut samples = Vec::new();
            let mut flip = false;
            group.bench_function(client.id(), |b| {
                b.iter_custom(|iters| {
                    // Alternate which of the pair goes first.
                    flip = !flip;
                    let (time, cpu, bare_time) = rt.block_on(async {
                        let paired = if flip { Some(bare.run(&url, concurrency, iters).await) } else { None };
                        let cpu_before = common::process_cpu_time();
                        let time = client.run(&url, concurrency, iters).await;
                        let cpu = common::process_cpu_time().zip(cpu_before).map(|(after, before)| after - before);
                        let paired = match paired {
                            Some(paired) => paired,
                            None => bare.run(&url, concurrency, iters).await,
                        };
                        (time, cpu, paired)
                    });
                    samples.push(Sample { requests: iters * concurrency as u64, time, cpu, bare: bare_time });
                    time
                })
            });
            results.push((concurrency, client.id(), client.label(), samples));
        }
        group.finish();
    }
    let (layer_alone, layer_cost) = layer_alone(&mut criterion, &rt, &server, &start);
    criterion.final_summary();
    common::write_tables("happy_path.headline", &headline(&results, &layer_cost));
    common::write_tables("happy_path", &(table(&results) + &layer_alone));
}

/// Our layer on `server` with `start`'s valid tokens; with `dpop`, bound to a fresh DPoP key (the
/// bench's server accepts any proof, so what is measured is the client making one).
fn layer(server: &Server, start: &Start, dpop: bool) -> TokenRefresh {
    let mut tokens = TokenSet::new(start.issued.access_token.clone())
        .with_refresh_token(start.issued.refresh_token.clone())
        .with_expires_in(start.remaining);
    if dpop {
        tokens = tokens.with_token_type("DPoP").with_dpop_key(DpopKey::generate().expect("a DPoP key"));
    }
    TokenRefresh::builder(RefreshTokenGrant::new(server.token_url()).client_id("bench-client"))
        .initial_tokens(tokens)
        .allow_origin(server.origin())
        .build()
        .expect("a valid layer")
}

/// Throughput of reqwest-middleware and of our layer relative to bare reqwest, per concurrency.
fn headline(results: &[(usize, &str, &str, Vec<Sample>)], layer_cost: &str) -> String {
    let ratio = |concurrency: usize, id: &str| {
        results.iter().find(|r| r.0 == concurrency && r.1 == id && !r.3.is_empty()).map(|r| {
            common::median(&r.3.iter().map(|s| s.bare.as_secs_f64() / s.time.as_secs_f64()).collect::<Vec<_>>())
        })
    };
    let mut out = String::from("Happy path (valid token), throughput relative to bare reqwest:");
    for concurrency in [1, 64] {
        if let (Some(ours), Some(none)) = (ratio(concurrency, "ours"), ratio(concurrency, "reqwest-middleware")) {
            let nothing = ratio(concurrency, "pass-through-layer")
                .map(|m| format!(", with a layer that does nothing {m:.2}x"))
                .unwrap_or_default();
            let minimal = ratio(concurrency, "minimal-layer")
                .map(|m| format!(", a minimal retrying layer {m:.2}x"))
                .unwrap_or_default();
            let dpop = ratio(concurrency, "ours-dpop")
                .map(|m| format!(", {m:.2}x with a DPoP-bound token"))
                .unwrap_or_default();
            let _ = write!(
                out,
                " concurrency {concurrency}: reqwest-token-refresh {ours:.2}x{dpop} (reqwest-middleware with no layer {none:.2}x{nothing}{minimal});"
            );
        }
    }
    format!("{}. The layer's own cost, without the network: {layer_cost} per request.\n", out.trim_end_matches(';'))
}

/// Answers every request itself with a canned 200, so that a stack ending in it measures the
/// middleware before it and nothing of the network.
struct Canned;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Canned {
    async fn handle(
        &self,
        request: reqwest::Request,
        _: &mut http::Extensions,
        _: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        assert!(request.headers().contains_key(AUTHORIZATION));
        let response = http::Response::builder().status(200).body("{\"ok\":true}").expect("a response");
        Ok(reqwest::Response::from(response))
    }
}

/// The layer's own cost per request: the same requests through reqwest-middleware ending in
/// [`Canned`], with and without our layer in front: one after another on one task, and from 64
/// tasks at once on the runtime's two workers (where the layer's shared state is contended).
fn layer_alone(
    criterion: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    server: &Server,
    start: &Start,
) -> (String, String) {
    let http = reqwest::Client::new();
    let token = bearer(&start.issued.access_token);
    let auth = layer(server, start, false);
    let with_dpop =
        reqwest_middleware::ClientBuilder::new(http.clone()).with(layer(server, start, true)).with(Canned).build();
    let without = reqwest_middleware::ClientBuilder::new(http.clone()).with(Canned).build();
    let minimal =
        reqwest_middleware::ClientBuilder::new(http.clone()).with(Minimal(token.clone())).with(Canned).build();
    let with = reqwest_middleware::ClientBuilder::new(http).with(auth).with(Canned).build();
    let url = server.api_url();
    let mut rows = String::new();
    let mut cost = String::from("n/a");
    for concurrency in [1usize, 64] {
        let mut group = criterion.benchmark_group(format!("layer_alone/c{concurrency}"));
        group.throughput(Throughput::Elements(concurrency as u64));
        let mut medians = Vec::new();
        let clients = [
            ("canned", &without, Some(&token)),
            ("minimal+canned", &minimal, None),
            ("ours+canned", &with, None),
            ("ours-dpop+canned", &with_dpop, None),
        ];
        for (id, client, header) in clients {
            let mut per_request = Vec::new();
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let time = rt.block_on(async {
                        let started = Instant::now();
                        let tasks: Vec<_> = (0..concurrency)
                            .map(|_| {
                                let (client, url, header) = (client.clone(), url.clone(), header.cloned());
                                tokio::spawn(async move {
                                    for _ in 0..iters {
                                        let request = client.get(url.clone());
                                        let request = match &header {
                                            Some(token) => request.header(AUTHORIZATION, token.clone()),
                                            None => request,
                                        };
                                        let response = request.send().await.expect("a canned answer");
                                        assert_eq!(response.status(), StatusCode::OK);
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.expect("a request task panicked");
                        }
                        started.elapsed()
                    });
                    per_request.push(time.as_secs_f64() / (iters as f64 * concurrency as f64));
                    time
                })
            });
            medians.push(common::median(&per_request));
        }
        group.finish();
        if concurrency == 1 {
            cost = format!(
                "{:.2} µs ({:.2} µs beyond a minimal retrying layer); a DPoP proof {:.1} µs more",
                (medians[2] - medians[0]) * 1e6,
                (medians[2] - medians[1]) * 1e6,
                (medians[3] - medians[2]) * 1e6,
            );
        }
        let _ = writeln!(
            rows,
            "| {concurrency} | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs |",
            medians[0] * 1e6,
            medians[1] * 1e6,
            medians[2] * 1e6,
            (medians[2] - medians[0]) * 1e6,
            (medians[2] - medians[1]) * 1e6,
            medians[3] * 1e6,
            (medians[3] - medians[2]) * 1e6,
        );
    }
    let table = format!(
        "#### The layer alone, without the network\n\n| concurrency | reqwest-middleware → canned 200 | → minimal retrying layer → canned 200 | → **reqwest-token-refresh** → canned 200 | the layer's own cost | beyond the minimal layer | → **reqwest-token-refresh**, DPoP-bound token → canned 200 | a DPoP proof's cost |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n{rows}\nThe DPoP columns: the same layer holding a DPoP-bound token, so that each request also gets a fresh ES256 proof (RFC 9449 §4: a JWT with its own `jti`, `htm`, `htu`, `iat` and `ath`, signed with P-256); its cost is the difference to the bearer column. The same `get(url).send()` through reqwest-middleware, ending in a middleware that answers 200 itself (the caller sets the header when there is no layer): what the layer adds to each request on the happy path (token lookup, header, the clone kept for a retry, its boxed future), with no network to hide it. The minimal retrying layer sets a prebuilt header and keeps a clone for a retry, nothing else: what any layer that can retry a 401 pays, including the middleware stack reqwest-middleware clones for every request once it holds a layer. Wall time per request: at concurrency 64, two workers share the work.\n\n"
    );
    (table, cost)
}

fn table(results: &[(usize, &str, &str, Vec<Sample>)]) -> String {
    let mut out = String::from(
        "### Happy path\n\n| client | concurrency | requests/s | throughput vs bare reqwest | CPU per request |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    let mut most = 0;
    for (concurrency, _, label, samples) in results.iter().filter(|r| !r.3.is_empty()) {
        most = most.max(samples.len());
        let rate =
            common::median(&samples.iter().map(|s| s.requests as f64 / s.time.as_secs_f64()).collect::<Vec<_>>());
        let ratio =
            common::median(&samples.iter().map(|s| s.bare.as_secs_f64() / s.time.as_secs_f64()).collect::<Vec<_>>());
        let (cpu, requests) = samples
            .iter()
            .filter_map(|s| s.cpu.map(|cpu| (cpu, s.requests)))
            .fold((Duration::ZERO, 0u64), |(cpu, n), (c, r)| (cpu + c, n + r));
        let cpu = if requests == 0 {
            "n/a".to_owned()
        } else {
            format!("{:.1} µs", cpu.as_secs_f64() * 1e6 / requests as f64)
        };
        let _ = writeln!(out, "| {label} | {concurrency} | {rate:.0} | {ratio:.3} | {cpu} |");
    }
    let _ = writeln!(
        out,
        "\nUp to {most} samples per line. Throughput vs bare reqwest is the median over samples of (bare reqwest's time / this client's time), each sample paired with a bare-reqwest sample of the same size run next to it; the bare-reqwest line itself shows the noise between two identical runs. CPU per request is the whole process (client, server and runtime), from `/proc/self/task/*/schedstat`.\n"
    );
    out
}

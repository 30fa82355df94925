//! Many keys: does the cost of a request stay flat as users come and go past `max_cached_keys`?
//!
//! 100,000 distinct keys go through one layer with `max_cached_keys(1_000)`, in batches of 1,000
//! requests, one request per key, each batch awaited before the next; the time of each batch is
//! recorded. Two kinds of keys:
//!
//! - **dead**: the store has no tokens for them (users whose grant died, or who never logged in):
//!   each request loads the key, finds nothing, and fails fast with re-authorization required,
//!   without a network call. The layer holds every such key until eviction.
//! - **live**: each key has tokens in the store and the request goes to a local server that
//!   answers 200 (a sync job that visits each user once).
//!
//! Reported per kind: the first batch, the last batch, the median batch, their ratio, and the
//! keys held at the end (must be at most 1,000). Each kind runs three times, a fresh layer each,
//! and the medians over the runs are reported.
//!
//! `cargo bench --bench many_keys`; `RTR_BENCH_QUICK=1` for a short pass (10,000 keys, one run).

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use futures::future::join_all;
use reqwest_token_refresh::{MemoryStore, RefreshTokenGrant, TokenKey, TokenRefresh, TokenSet, TokenStore};

const BATCH: usize = 1_000;
const CAPACITY: usize = 1_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dead,
    Live,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dead => "dead keys (no tokens stored): fail fast",
            Kind::Live => "live keys (tokens stored): one API call each",
        }
    }
}

/// One pass: `keys` keys through a fresh layer; the time of each batch, and the keys held at the end.
async fn pass(kind: Kind, keys: usize, server: &Server, run: usize) -> (Vec<Duration>, usize) {
    let store = MemoryStore::new();
    let key = |i: usize| TokenKey::new(format!("run-{run}-user-{i}"));
    if kind == Kind::Live {
        for i in 0..keys {
            let issued = server.provider().issue_tokens().await;
            let tokens = TokenSet::new(issued.access_token).with_refresh_token(issued.refresh_token);
            store.save(&key(i), &tokens, reqwest_token_refresh::Revision::NONE).await.expect("seed");
        }
    }
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(server.token_url()))
        .allow_origin(server.origin())
        .store(store)
        .max_cached_keys(CAPACITY)
        .build()
        .expect("the layer");
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    // Dead keys never reach the network; live ones call the server's always-200 route.
    let url = server.api_url();
    let mut batches = Vec::with_capacity(keys / BATCH);
    for batch in 0..keys / BATCH {
        let started = Instant::now();
        let requests =
            (batch * BATCH..(batch + 1) * BATCH).map(|i| client.get(url.clone()).with_extension(key(i)).send());
        let outcomes = join_all(requests).await;
        batches.push(started.elapsed());
        let ok = outcomes.iter().filter(|outcome| outcome.as_ref().is_ok_and(|r| r.status() == 200)).count();
        match kind {
            Kind::Dead => assert_eq!(ok, 0, "dead keys get no answer"),
            Kind::Live => assert_eq!(ok, BATCH, "live keys get 200"),
        }
        assert!(auth.cached_keys() <= CAPACITY, "{} keys held, over {CAPACITY}", auth.cached_keys());
    }
    (batches, auth.cached_keys())
}

fn main() {
    let quick = common::quick();
    let (keys, runs) = if quick { (10_000, 1) } else { (100_000, 3) };
    let rt = common::runtime();
    let server = rt.block_on(Server::start(Duration::from_millis(20)));
    let mut table = format!(
        "### Many keys\n\n{keys} distinct keys through `max_cached_keys({CAPACITY})`, batches of {BATCH} concurrent requests, \
         one per key; medians over {runs} run(s).\n\n\
         | keys | first batch | last batch | median batch | last / first | keys held at the end |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for kind in [Kind::Dead, Kind::Live] {
        let (mut first, mut last, mut median, mut held) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for run in 0..runs {
            let (batches, kept) = rt.block_on(pass(kind, keys, &server, run));
            let ms: Vec<f64> = batches.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            first.push(ms[0]);
            last.push(*ms.last().expect("a batch"));
            median.push(common::median(&ms));
            held = held.max(kept);
        }
        let (first, last, median) = (common::median(&first), common::median(&last), common::median(&median));
        table.push_str(&format!(
            "| {} | {first:.1} ms | {last:.1} ms | {median:.1} ms | {:.2}x | {held} |\n",
            kind.name(),
            last / first
        ));
    }
    common::write_tables("many_keys", &table);
}

#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: runs every bench in full (about fifteen minutes on two cores, after the
# build) and writes the machine, the headline and the tables from this one run.
#
#   bash benches/report.sh              # all benches, then BENCHMARKS.md
#   RTR_BENCH_QUICK=1 bash benches/report.sh   # a short pass (N up to 1,000); tables not for quoting
#
# Everything runs against servers the benches start on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

target="${CARGO_TARGET_DIR:-target}"
out="$target/rtr-bench"
rm -rf "$out"
mkdir -p "$out"
export RTR_BENCH_OUT="$out"

benches=(happy_path instructions storm many_users_storm proactive latency memory many_keys)
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
started="$(date -u +%Y-%m-%dT%H:%MZ)"
for bench in "${benches[@]}"; do
    echo "== cargo bench --bench $bench"
    cargo bench --bench "$bench"
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
quick_note=""
if [[ -n "${RTR_BENCH_QUICK:-}" && "${RTR_BENCH_QUICK}" != "0" ]]; then
    quick_note="> **Quick mode** (\`RTR_BENCH_QUICK=1\`): small storms and short measurements; these tables only show that the benches run. Regenerate without it before quoting anything."
fi

{
    cat <<'EOF'
# Benchmarks

How `reqwest-token-refresh` behaves under concurrent 401 storms and what it costs on the happy path,
side by side with what users would pick instead. Every table below comes from one run of
`bash benches/report.sh` on the machine described under "Machine"; the machine is shared and noisy,
so the tables quote medians, and each time is compared with a reference measured next to it in the
same run (a ratio), never with a number from another run.

EOF
    if [[ -n "$quick_note" ]]; then printf '%s\n\n' "$quick_note"; fi
    cat <<'EOF'
## Headline

EOF
    cat "$out/storm.headline.md"
    cat "$out/many_users_storm.headline.md"
    echo
    cat "$out/proactive.headline.md"
    echo
    cat "$out/latency.headline.md"
    echo
    cat "$out/happy_path.headline.md"
    echo
    cat "$out/memory.headline.md"
    cat <<'EOF'

## What is compared

- **reqwest-token-refresh**: this crate as a user builds it (`RefreshTokenGrant`, in-memory store,
  default 30 s skew).
- **reqwest-chain 2** with a `Chainer` that refreshes on every 401 and retries once (the pattern of
  that crate's own `reauthorize` test): no single flight.
- **huskarl 0.11 + huskarl-reqwest**: huskarl's `InMemoryTokenCache` (a single flight behind a mutex
  with a re-check) and `HttpAuthorizer`, behind a small adapter middleware that follows huskarl's
  documented request loop (`get_headers`, send, `process_response`, resend once on 401).
- **mutex for every request**: the hand-written pattern "lock a mutex for every request, refresh
  under it, compare tokens on 401", written from scratch in `benches/common/designs.rs`.
- **lower bound**: no middleware; bare reqwest on a client built as the designs' is, against the
  same server, doing the least work any design must do: each of N requests is sent with the
  rejected token and, on its 401, again with the new token, and the first 401 makes the one token
  call (2N plain requests + 1 token call). Each storm is paired with a lower-bound run just before
  it, and "wall / lower bound" is the median of those pairs.
- **the many-users storm** (`benches/many_users_storm.rs`): 1,000 users, distinct `TokenKey`s
  through one layer of this crate, each a token family of its own whose access token the provider
  already rejects, 5 concurrent requests per user, all 5,000 at once. Only this crate runs it (the
  other designs hold one token set); its lower bound is the same choreography per user (10,000
  plain requests + 1,000 token calls, each user's first 401 making that user's call). The bench
  fails unless every storm makes 1,000 token calls and gets 5,000 answers 200.

The provider is a lean hyper 1.x server (`benches/common/server/`): it rotates refresh tokens
(each works once), revokes the whole token family when a spent one comes back (RFC 9700 §4.14.2),
answers its token endpoint after 20 ms, and answers a rejected access token with
`401 WWW-Authenticate: Bearer error="invalid_token"`.

Every storm runs over two transports, each design and its lower bound on a new client built the
same way for every run:

- **HTTP/2, one connection**: prior knowledge over plain http to 127.0.0.1 (as against an API that
  speaks HTTP/2 over TLS); all N requests are streams on the one connection, opened before the
  storm.
- **HTTP/1.1, a pool**: `http1_only().pool_max_idle_per_host(32).tcp_nodelay(true)`, with 32
  connections open and idle before the storm, as a busy service's pool holds them (32: a round
  figure services set, see `benches/common/transport.rs`). reqwest opens a new connection for
  every request that finds none idle, so a storm of N opens about N connections: the tables count
  them ("connections opened").

For the storms the server runs in a child process of the bench binary (killed with the bench, and
gone when its stdin closes): an HTTP/1.1 storm of 10,000 holds 10,000 connections, 20,000 sockets
in one process, over the machine's open-file limit of 20,000. The bench changes the provider's
state between storms through a control API on a port of its own. The happy path (HTTP/1.1
keep-alive, one connection per concurrent request), the memory bench (whose allocator counts
server and client together) and many keys keep the server in the bench's process. Either way
server and client share the machine's two cores.

Reading the storm tables: every single-flight design here stops sending the dead token once the
first 401 is back and a refresh is under way (this crate: a rejected token is not handed out while
its refresh runs; huskarl's cache and the hand-written mutex: behind their lock), so at N = 1,000
and 10,000 most requests wait for the new token before they are sent, never see a 401, and the
storm costs less than the "2N requests" lower bound (a ratio under 1). "Requests answered 401"
shows how many were already in flight.

Reading the HTTP/1.1 tables: a request in flight holds a connection of its own, and the pool keeps
at most 32 idle, so what a storm costs there follows how many requests go out at the same moment.
The requests waiting for the refresh are where the designs differ. The lock-based designs
release them one lock hand-off at a time, at the scheduler's pace, whatever the transport. This
crate releases them in the order they came, 32 on their way at a time: each keeps its place until
its answer's headers are in (1 ms at most), so over a fast network the next request takes the
connection an answer just freed instead of opening its own. The storm's first attempts, sent
before any 401 is back, go out as the caller sends them in every design (the lock-based ones take
their lock for those too, one hand-off at a time), and need a connection each. "Connections opened" shows it. The lower bound's 2N requests open
about 1.5N: the 401s free their connections together, the pool keeps 32, and the retries connect
again.

## How to run

```sh
bash benches/report.sh                    # every bench in full, then this file (about 15 minutes)
cargo bench --bench storm                 # one bench; tables in target/rtr-bench/
cargo bench --bench storm -- storm/http1/1000   # criterion filters work as usual
RTR_BENCH_QUICK=1 cargo test --bench happy_path --bench storm --bench many_users_storm --bench memory --bench proactive --bench many_keys --bench latency
                                          # what CI runs: each bench once, N up to 1,000
cargo bench --bench instructions          # instruction counts (valgrind); CI runs it in quick mode, gated at 1.02x
```

| bench | question |
| --- | --- |
| `benches/happy_path.rs` | requests/s and CPU per request with a valid token: bare reqwest, reqwest-middleware with no layer, this layer; concurrency 1 and 64; and the layer alone, without the network |
| `benches/storm.rs` | N = 100, 1,000, 10,000 requests holding a token the provider rejects, over HTTP/2 (one connection) and HTTP/1.1 (a pool): token calls, failed requests, connections opened, wall time, p50/p99, ratio to the lower bound |
| `benches/many_users_storm.rs` | 1,000 users with 5 concurrent requests each, every user's token rejected, through one layer, over both transports: token calls (one per user), OK responses, failures, wall time, p50/p99, ratio to its own lower bound |
| `benches/proactive.rs` | the same storm with the token inside the skew window, over HTTP/2: token calls, requests that ever see a 401 |
| `benches/latency.rs` | latency of requests across an expiry, 10 users × 4 workers, 20 ms token endpoint: p50/p99/p99.9/max with the refresh on demand, with refresh ahead, and with no expiry; requests that waited, token calls |
| `benches/memory.rs` | peak heap of a 10,000-request storm with every request waiting for the refresh at once, against the same requests through bare reqwest (a counting global allocator) |
| `benches/many_keys.rs` | 100,000 distinct keys through `max_cached_keys(1,000)`, 1,000 requests a batch: the first and the last batch's time (flat, or growing with the keys seen) and the keys held at the end |
| `benches/instructions.rs` | instructions per request on the happy path (callgrind, client side only): bare reqwest, reqwest-middleware with no layer, with a layer that does nothing, this layer; and the functions the layer adds. Needs valgrind |

`RTR_BENCH_QUICK=1` makes the storms N = 100 and 1,000, the many-users storm 100 users × 5, and
the measurements short. Raw samples of the storm benches are written to `target/rtr-bench/*.csv`.

EOF
    cat <<EOF
## Machine

| | |
| --- | --- |
| CPU | $cpu |
| cores (\`nproc\`) | $(nproc) |
| memory | $(free -h | awk '/^Mem:/{print $2}') |
| kernel | $(uname -sr) |
| rustc | $(rustc --version) |
| commit | $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (with local changes in src/)') |
| run | $started, load average $load_before before and $load_after after |

## Results

EOF
    for bench in "${benches[@]}"; do
        cat "$out/$bench.md"
        echo
    done
} > BENCHMARKS.md

echo "== wrote BENCHMARKS.md"

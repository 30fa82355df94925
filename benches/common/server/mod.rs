//! The bench server: the provider (`provider.rs`) on a hyper 1.x server on `127.0.0.1`, in this
//! process or in a child process, and the bench's handle on it.
//!
//! It speaks HTTP/1.1 and HTTP/2 (prior knowledge) on the same port, counts what it saw
//! ([`Seen`]), and stops when dropped.
//!
//! # Where it runs
//!
//! [`Server::spawn`] runs it in a child process: the bench binary runs itself again (`child.rs`),
//! and its `main` starts with [`serve_if_child`]. An HTTP/1.1 storm of 10,000 requests holds
//! 10,000 connections at once; with the server in the same process that is 20,000 sockets, over
//! the open-file limit of the machines these benches run on (`ulimit -n` 20,000), and in two
//! processes each side holds 10,000. The server's work also leaves the bench's runtime (the two
//! still share the machine's cores). The provider's state then lives in the child, and the bench
//! reaches it through a control API on a second port (`control.rs`); [`ProviderHandle`] makes the
//! two look alike.
//!
//! [`Server::start`] runs it in this process, on the bench's runtime: for the memory bench, whose
//! allocator counts server and client together, and for benches that open a few hundred
//! connections at most.

mod child;
mod control;
mod provider;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use provider::Provider;
pub use provider::{ACCESS_TOKEN_LIFETIME, Issued, Seen, TOKEN_PATH, WARM_PATH};

/// The listen backlog the server asks for; the kernel caps it at `net.core.somaxconn` (4,096 on
/// current Linux). A storm over HTTP/1.1 opens thousands of connections at once, and a handshake
/// the queue has no room for is retried after the SYN timeout, a second: with tokio's default of
/// 1,024, such a second would be the listen queue's, not the client's.
const BACKLOG: u32 = 65_535;

/// The role of a bench's server child (see [`serve_if_child`]).
const SERVER_ROLE: &str = "server";
/// How the child learns its token endpoint's latency, in microseconds.
const TOKEN_LATENCY_ENV: &str = "RTR_BENCH_TOKEN_LATENCY_US";

/// Which of its ports a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The API and the token endpoint: what the clients under test call.
    Api,
    /// The control API (`control.rs`).
    Control,
}

/// A listener on `127.0.0.1`, a free port, with a backlog of [`BACKLOG`].
fn bind() -> TcpListener {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1");
    socket.listen(BACKLOG).expect("listen on 127.0.0.1")
}

/// Serves `listener` in the current runtime until the returned task is aborted or the runtime
/// ends (its connections with it).
fn serve(listener: TcpListener, provider: Arc<Provider>, port: Port) -> JoinHandle<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A storm multiplexes up to 10,000 requests on one connection; hyper's default is 200.
    builder.http2().max_concurrent_streams(100_000);
    let builder = Arc::new(builder);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of file descriptors, most likely: give the connections that hold them a
                // moment to close rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if port == Port::Api {
                provider.accepted();
            }
            let provider = provider.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let provider = provider.clone();
                    async move {
                        Ok::<_, Infallible>(match port {
                            Port::Api => provider.handle(request).await,
                            Port::Control => control::handle(&provider, &request),
                        })
                    }
                });
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

/// Call first in the `main` of a bench that uses [`Server::spawn`]: in the server child it serves
/// and never returns; in the bench itself it returns at once.
pub fn serve_if_child() {
    match child::role().as_deref() {
        None => return,
        Some(SERVER_ROLE) => {}
        Some(other) => panic!("no bench child role {other:?}"),
    }
    child::exit_when_stdin_closes();
    let latency = std::env::var(TOKEN_LATENCY_ENV)
        .ok()
        .and_then(|us| us.parse().ok())
        .map(Duration::from_micros)
        .unwrap_or_else(|| panic!("{TOKEN_LATENCY_ENV} is set by the bench"));
    crate::common::runtime().block_on(async {
        let provider = Arc::new(Provider::new(latency));
        let (api, control) = (bind(), bind());
        let (api_addr, control_addr) = (api.local_addr().unwrap(), control.local_addr().unwrap());
        let _api = serve(api, provider.clone(), Port::Api);
        let _control = serve(control, provider, Port::Control);
        // The only line the child prints on stdout (the bench stops reading after it).
        println!("READY {api_addr} {control_addr}");
        std::future::pending::<()>().await
    });
    unreachable!("the server child serves until it is killed or its stdin closes");
}

/// The server, stopped when dropped.
pub struct Server {
    addr: SocketAddr,
    backend: Backend,
}

enum Backend {
    /// On the bench's runtime: the accept loop's task, aborted on drop.
    InProcess { provider: Arc<Provider>, accept: JoinHandle<()> },
    /// In a child process, killed on drop.
    Child { control: control::Client, _process: child::Child },
}

impl Server {
    /// Starts a server in this process, in the current tokio runtime.
    pub async fn start(token_latency: Duration) -> Server {
        let listener = bind();
        let addr = listener.local_addr().expect("a local address");
        let provider = Arc::new(Provider::new(token_latency));
        let accept = serve(listener, provider.clone(), Port::Api);
        Server { addr, backend: Backend::InProcess { provider, accept } }
    }

    /// Starts a server in a child process of this bench binary, whose `main` must start with
    /// [`serve_if_child`]. Call it outside the runtime: it blocks until the child is ready.
    pub fn spawn(token_latency: Duration) -> Server {
        let latency = token_latency.as_micros().to_string();
        let (process, ready) = child::Child::spawn(SERVER_ROLE, &[(TOKEN_LATENCY_ENV, latency)]);
        let addrs: Vec<SocketAddr> = ready
            .strip_prefix("READY ")
            .map(|rest| rest.split(' ').filter_map(|addr| addr.parse().ok()).collect())
            .unwrap_or_default();
        let [addr, control] = addrs[..] else { panic!("the server child said {ready:?}, not READY <api> <control>") };
        Server { addr, backend: Backend::Child { control: control::Client::new(control), _process: process } }
    }

    /// The provider's state and counters, wherever it runs.
    pub fn provider(&self) -> ProviderHandle<'_> {
        match &self.backend {
            Backend::InProcess { provider, .. } => ProviderHandle(Reach::InProcess(provider)),
            Backend::Child { control, .. } => ProviderHandle(Reach::Child(control)),
        }
    }

    /// The origin the server's API (and token endpoint) is served on: the only one the layer
    /// under test sends the token to.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr)
    }

    pub fn api_url(&self) -> reqwest::Url {
        reqwest::Url::parse(&format!("http://{}/api/v1/activity", self.addr)).expect("a valid URL")
    }

    /// Where a client opens its connections before a storm (held for a moment, counted nowhere).
    pub fn warm_url(&self) -> reqwest::Url {
        reqwest::Url::parse(&format!("http://{}{WARM_PATH}", self.addr)).expect("a valid URL")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Backend::InProcess { accept, .. } = &self.backend {
            accept.abort();
        }
    }
}

/// The bench's handle on the provider: the same calls whether it runs in this process (a direct
/// call) or in a child (a control request).
#[derive(Clone, Copy)]
pub struct ProviderHandle<'a>(Reach<'a>);

#[derive(Clone, Copy)]
enum Reach<'a> {
    InProcess(&'a Provider),
    Child(&'a control::Client),
}

impl ProviderHandle<'_> {
    /// Forgets every token and zeroes the counters and the gate.
    pub async fn reset(self) {
        match self.0 {
            Reach::InProcess(provider) => provider.reset(),
            Reach::Child(control) => control.reset().await,
        }
    }

    /// Issues a new token family, as an authorization-code exchange would.
    pub async fn issue_tokens(self) -> Issued {
        self.issue_token_families(1).await.pop().expect("one token family")
    }

    /// Issues `n` token families, one per user.
    pub async fn issue_token_families(self, n: usize) -> Vec<Issued> {
        match self.0 {
            Reach::InProcess(provider) => provider.issue_token_families(n),
            Reach::Child(control) => control.issue_token_families(n).await,
        }
    }

    /// Every access token issued so far is rejected from now on (refresh tokens stay valid).
    pub async fn expire_access_tokens(self) {
        match self.0 {
            Reach::InProcess(provider) => provider.expire_access_tokens(),
            Reach::Child(control) => control.expire_access_tokens().await,
        }
    }

    /// Holds every token answer until `n` API requests have been answered 401, or no API request
    /// has arrived for 50 ms (at most 10 s).
    pub async fn gate_token_answers(self, n: usize) {
        match self.0 {
            Reach::InProcess(provider) => provider.gate_token_answers(n),
            Reach::Child(control) => control.gate_token_answers(n).await,
        }
    }

    /// What the provider saw since the last reset.
    pub async fn seen(self) -> Seen {
        match self.0 {
            Reach::InProcess(provider) => provider.seen(),
            Reach::Child(control) => control.seen().await,
        }
    }
}

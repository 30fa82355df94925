//! How a storm's requests reach the server: as HTTP/2 streams on one connection, or over a pool
//! of HTTP/1.1 connections. Every design and its lower bound run on a client built the same way.
//!
//! # Why 32 idle connections
//!
//! reqwest keeps every idle connection by default (`pool_max_idle_per_host(usize::MAX)`); a
//! service that tunes its pool sets a small round number: 10, 32, 50, 64 and 100 all turn up in
//! public code alike (and 0, to turn pooling off). 32 is one of them, small next to a storm. The
//! figure never limits how many connections reqwest opens: a request that finds no idle connection
//! opens a new one, so a storm of 10,000 opens about 10,000 whatever it is. It sets how many are
//! warm when a storm starts (see [`Transport::connected_client`]) and how many stay open once its
//! answers are back.

use std::time::Duration;

use super::server::Server;

/// `pool_max_idle_per_host` of the HTTP/1.1 client: 32 (see the module docs for why).
pub const POOL_MAX_IDLE_PER_HOST: usize = 32;

/// The longest opening a client's connections may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/2 with prior knowledge: N concurrent requests are N streams on one connection, as
    /// against an API that speaks HTTP/2 over TLS.
    Http2,
    /// HTTP/1.1 keep-alive: one request per connection at a time, from a pool that keeps
    /// [`POOL_MAX_IDLE_PER_HOST`] idle connections.
    Http1,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Http2, Transport::Http1];

    /// The criterion benchmark id's part.
    pub fn id(self) -> &'static str {
        match self {
            Transport::Http2 => "http2",
            Transport::Http1 => "http1",
        }
    }

    /// The name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Http2 => "HTTP/2, one connection",
            Transport::Http1 => "HTTP/1.1, a pool",
        }
    }

    /// What the tables say about it, once.
    pub fn describe(self) -> String {
        match self {
            Transport::Http2 => {
                "HTTP/2 with prior knowledge over plain http to 127.0.0.1 (as against an API that speaks \
                                 HTTP/2 over TLS): all requests are streams on one connection, opened before the storm."
                    .to_owned()
            }
            Transport::Http1 => format!(
                "HTTP/1.1 keep-alive, `http1_only().pool_max_idle_per_host({POOL_MAX_IDLE_PER_HOST})`, \
                 {POOL_MAX_IDLE_PER_HOST} connections open before the storm (a busy service's warm pool). reqwest \
                 opens a new connection for every request that finds none idle, so a storm of N opens about N."
            ),
        }
    }

    /// A new client of this transport (`tcp_nodelay`, no proxy: only the bench's own server on
    /// 127.0.0.1 is ever called).
    pub fn client(self) -> reqwest::Client {
        let builder = reqwest::Client::builder().no_proxy().tcp_nodelay(true);
        let builder = match self {
            Transport::Http2 => builder.http2_prior_knowledge(),
            Transport::Http1 => builder.http1_only().pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST),
        };
        builder.build().expect("a reqwest client")
    }

    /// How many connections [`connected_client`](Self::connected_client) opens.
    pub fn warm_connections(self) -> usize {
        match self {
            Transport::Http2 => 1,
            Transport::Http1 => POOL_MAX_IDLE_PER_HOST,
        }
    }

    /// A new client with its connections open: the one HTTP/2 connection, or
    /// [`POOL_MAX_IDLE_PER_HOST`] HTTP/1.1 connections idle in its pool, as a service that has
    /// been busy holds them. Lower bound and designs start from the same.
    ///
    /// Every run gets its own client: a design that makes the client reset many HTTP/2 streams (h2
    /// sends GOAWAY `too_many_internal_resets` past 1,024 of them) must not take the next run down
    /// with it, and an HTTP/1.1 run must not inherit the connections the one before it left.
    ///
    /// # Panics
    ///
    /// When the server does not count exactly that many new connections: the warm-up requests are
    /// held by the server ([`WARM_PATH`](super::server::WARM_PATH)) so that none finds another's
    /// connection free.
    pub async fn connected_client(self, server: &Server) -> reqwest::Client {
        let http = self.client();
        let before = server.provider().seen().await.connections;
        let url = server.warm_url();
        let warm = (0..self.warm_connections()).map(|_| {
            let request = http.get(url.clone());
            async move { request.send().await?.bytes().await }
        });
        let answers = tokio::time::timeout(CONNECT_TIMEOUT, futures::future::join_all(warm))
            .await
            .unwrap_or_else(|_| panic!("opening the {} connections took over {CONNECT_TIMEOUT:?}", self.label()));
        for answer in answers {
            answer.expect("the bench server answers");
        }
        let opened = server.provider().seen().await.connections - before;
        assert_eq!(opened, self.warm_connections() as u64, "connections opened by the {} warm-up", self.label());
        http
    }
}

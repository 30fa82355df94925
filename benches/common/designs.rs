//! The designs the benches compare, each as a `reqwest_middleware` client over one shared
//! `reqwest::Client`, and the storm they all run.
//!
//! * **ours**: `TokenRefresh` as a user builds it (`RefreshTokenGrant`, in-memory store, its own
//!   token client).
//! * **reqwest-chain**: `reqwest-chain` 2's `ChainMiddleware` with a `Chainer` that refreshes on
//!   every 401 and retries once (the pattern of the crate's own `reauthorize` test), after a tiny
//!   middleware that attaches the current token. No single flight: what a `Chainer` amounts to.
//! * **huskarl**: `huskarl` 0.11's `InMemoryTokenCache` (single flight behind a mutex with a
//!   re-check) and `HttpAuthorizer`, with `huskarl-reqwest` as its token client, behind an adapter
//!   middleware that follows huskarl's documented request loop: `get_headers`, send,
//!   `process_response` (which drops the cached token on `invalid_token`), resend once on 401.
//! * **mutex**: the hand-written pattern "lock a mutex for every request, refresh under it,
//!   compare tokens on 401", written from scratch here.
//! * **lower bound** (not a middleware): the same server answering the same 2N plain requests
//!   plus one token call through bare reqwest, the choreography a perfect client would follow.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::{Extensions, HeaderValue, StatusCode, header::AUTHORIZATION};
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_token_refresh::{RefreshTokenGrant, TokenRefresh, TokenRefreshBuilder, TokenSet};

use super::server::{Issued, Server};

/// How long before expiry every design that has the notion refreshes proactively.
pub const SKEW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    Ours,
    ReqwestChain,
    Huskarl,
    Mutex,
}

impl Design {
    pub const ALL: [Design; 4] = [Design::Ours, Design::ReqwestChain, Design::Huskarl, Design::Mutex];

    /// The criterion benchmark id.
    pub fn id(self) -> &'static str {
        match self {
            Design::Ours => "ours",
            Design::ReqwestChain => "reqwest-chain",
            Design::Huskarl => "huskarl",
            Design::Mutex => "mutex",
        }
    }

    /// The name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Design::Ours => "**reqwest-token-refresh**",
            Design::ReqwestChain => "reqwest-chain 2 (refresh on every 401)",
            Design::Huskarl => "huskarl 0.11 + huskarl-reqwest (adapter)",
            Design::Mutex => "mutex for every request (hand-written)",
        }
    }
}

/// The tokens a client starts from: what the provider issued, and how long the client believes
/// the access token has left of its one-hour life.
#[derive(Debug, Clone)]
pub struct Start {
    pub issued: Issued,
    pub remaining: Duration,
}

impl Start {
    pub fn expires_at(&self) -> SystemTime {
        SystemTime::now() + self.remaining
    }

    /// The tokens as this crate's layer is given them.
    pub fn token_set(&self) -> TokenSet {
        TokenSet::new(self.issued.access_token.clone())
            .with_refresh_token(self.issued.refresh_token.clone())
            .with_expires_at(self.expires_at())
    }
}

/// This crate's layer as a user builds it against `server`, before its tokens are given:
/// `RefreshTokenGrant`, the in-memory store, the API's origin allowed, the skew of every design.
pub fn ours(server: &Server) -> TokenRefreshBuilder {
    TokenRefresh::builder(
        RefreshTokenGrant::new(server.token_url()).client_id("bench-client").client_secret("bench-secret"),
    )
    .allow_origin(server.origin())
    .refresh_skew(SKEW)
}

/// A design's client, ready for a storm.
pub struct Built {
    pub client: ClientWithMiddleware,
    /// Our layer, for its counters.
    pub ours: Option<TokenRefresh>,
}

/// Builds `design` over `http` (the shared `reqwest::Client`) against `server`.
pub async fn build(design: Design, server: &Server, http: &reqwest::Client, start: &Start) -> Built {
    let token_url = server.token_url();
    let builder = ClientBuilder::new(http.clone());
    match design {
        Design::Ours => {
            let auth = ours(server).initial_tokens(start.token_set()).build().expect("a valid layer");
            Built { client: builder.with(auth.clone()).build(), ours: Some(auth) }
        }
        Design::ReqwestChain => {
            let shared = Arc::new(parking_lot::RwLock::new(NaiveTokens::from(start)));
            let chainer = RefreshOnEvery401 { tokens: shared.clone(), http: http.clone(), token_url };
            let client =
                builder.with(AttachCurrentToken(shared)).with(reqwest_chain::ChainMiddleware::new(chainer)).build();
            Built { client, ours: None }
        }
        Design::Huskarl => {
            Built { client: builder.with(huskarl_adapter::build(token_url, start).await).build(), ours: None }
        }
        Design::Mutex => {
            let auth = MutexForEveryRequest {
                tokens: tokio::sync::Mutex::new(NaiveTokens::from(start)),
                http: http.clone(),
                token_url,
            };
            Built { client: builder.with(auth).build(), ours: None }
        }
    }
}

/// What one storm did, as the client saw it.
#[derive(Debug, Clone)]
pub struct StormRun {
    pub wall: Duration,
    pub latencies: Vec<Duration>,
    pub failed: usize,
    /// How the first failed request failed, for the message of a bench that fails on it.
    pub first_failure: Option<String>,
}

/// A request's outcome: `Ok` when it was answered 200 and its body read, else how it failed.
type Outcome = Result<(), String>;

/// Reads a response through to its end (see [`lower_bound`] for why) and says whether it was a 200.
async fn outcome(response: Result<Response, impl std::fmt::Debug>) -> Outcome {
    let response = response.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("reading the body: {e:?}"))?;
    if status == StatusCode::OK { Ok(()) } else { Err(format!("answered {status}: {body:?}")) }
}

/// The longest a storm may take before the bench fails (a 10,000-request storm takes a second or
/// two; a stuck one would otherwise hang the bench).
pub const STORM_TIMEOUT: Duration = Duration::from_secs(60);

/// `n` concurrent requests (one task each, as a server handling `n` requests would) through
/// `client`; each reads its body. A request fails unless it ends in 200.
pub async fn storm(client: &ClientWithMiddleware, url: &reqwest::Url, n: usize) -> StormRun {
    storm_of((0..n).map(|_| client.get(url.clone()))).await
}

/// The requests `requests` makes, all at once, one task each, as [`storm`] sends them.
pub async fn storm_of(requests: impl IntoIterator<Item = reqwest_middleware::RequestBuilder>) -> StormRun {
    let started = Instant::now();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            tokio::spawn(async move {
                let sent = Instant::now();
                let outcome = outcome(request.send().await).await;
                (outcome, sent.elapsed())
            })
        })
        .collect();
    StormRun::collect(started, tasks).await
}

impl StormRun {
    /// Waits (until [`STORM_TIMEOUT`] after `started`) for the storm's request tasks, each
    /// answering its outcome and latency, and sums them up, with the wall time since `started`.
    ///
    /// # Panics
    ///
    /// When a request task panicked or the storm outlived [`STORM_TIMEOUT`].
    async fn collect(started: Instant, tasks: Vec<tokio::task::JoinHandle<(Outcome, Duration)>>) -> StormRun {
        let deadline = tokio::time::Instant::from_std(started + STORM_TIMEOUT);
        let n = tasks.len();
        let mut latencies = Vec::with_capacity(n);
        let (mut failed, mut first_failure) = (0, None);
        for task in tasks {
            let Ok(joined) = tokio::time::timeout_at(deadline, task).await else {
                panic!("a storm of {n} requests was not done after {STORM_TIMEOUT:?} ({} answered)", latencies.len());
            };
            let (outcome, latency) = joined.expect("a storm request panicked");
            if let Err(failure) = outcome {
                failed += 1;
                first_failure.get_or_insert(failure);
            }
            latencies.push(latency);
        }
        StormRun { wall: started.elapsed(), latencies, failed, first_failure }
    }
}

/// What the lower-bound choreography does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerBound {
    /// Each of `n` tasks sends its request with the rejected token, and on the 401 sends it again
    /// with the new token; the first 401 makes the one token call, the others wait for it.
    Storm,
    /// The same, each task keeping its 401 response until its retry is answered, as a middleware
    /// that holds it does. For the memory bench.
    StormHolding401s,
    /// One token call, then `n` requests with the new token.
    Proactive,
}

/// The lower bound: bare reqwest on the same client and server doing the least work any design
/// must do (2N plain requests and one token call; N and one for `Proactive`), with no middleware.
/// The tasks overlap as a design's do: a request retries as soon as the token is there, while
/// others are still getting their 401 (two strict phases of N are slower than that at N = 10,000:
/// 10,000 streams open at once cost HTTP/2 more than the same requests spread out).
///
/// `families` are the token families of the users the requests act for, `per_family` requests
/// each (in that order, as a design's storm sends them): one for the single-user storms, and then
/// one token call in all; one per user in the many-users storm, one token call per user, made by
/// that user's first 401.
pub async fn lower_bound(
    http: &reqwest::Client,
    server: &Server,
    families: &[Start],
    per_family: usize,
    shape: LowerBound,
) -> StormRun {
    /// What the tasks acting for one user share.
    struct Family {
        stale: HeaderValue,
        refresh_token: String,
        fresh: tokio::sync::OnceCell<HeaderValue>,
    }
    let url = server.api_url();
    let token_url = server.token_url();
    let families: Vec<Arc<Family>> = families
        .iter()
        .map(|start| {
            Arc::new(Family {
                stale: bearer(&start.issued.access_token),
                refresh_token: start.issued.refresh_token.clone(),
                fresh: tokio::sync::OnceCell::new(),
            })
        })
        .collect();
    let started = Instant::now();
    if shape == LowerBound::Proactive {
        let fetched = futures::future::join_all(families.iter().map(|family| async {
            let tokens =
                fetch(http, &token_url, &family.refresh_token).await.expect("the token call of the lower bound");
            let _ = family.fresh.set(bearer(&tokens.access_token));
        }));
        fetched.await;
    }
    let tasks: Vec<_> = families
        .iter()
        .flat_map(|family| std::iter::repeat_n(family, per_family))
        .map(|family| {
            let (http, url, token_url, family) = (http.clone(), url.clone(), token_url.clone(), family.clone());
            tokio::spawn(async move {
                // Proactive: the token call is part of every request's wait.
                let sent = if shape == LowerBound::Proactive { started } else { Instant::now() };
                let mut held = None;
                if shape != LowerBound::Proactive {
                    let rejected = http.get(url.clone()).header(AUTHORIZATION, family.stale.clone()).send().await;
                    match (shape, rejected) {
                        (LowerBound::StormHolding401s, rejected) => held = Some(rejected),
                        // Read to the end: an HTTP/2 response dropped before its body has arrived
                        // is reset (RST_STREAM), and h2 closes a connection that resets more than
                        // 1,024 streams (GOAWAY `too_many_internal_resets`).
                        (_, Ok(response)) => drop(response.bytes().await),
                        (_, Err(_)) => {}
                    }
                }
                let token = family
                    .fresh
                    .get_or_init(|| async {
                        let tokens = fetch(&http, &token_url, &family.refresh_token)
                            .await
                            .expect("the token call of the lower bound");
                        bearer(&tokens.access_token)
                    })
                    .await;
                let outcome = outcome(http.get(url).header(AUTHORIZATION, token.clone()).send().await).await;
                drop(held);
                (outcome, sent.elapsed())
            })
        })
        .collect();
    StormRun::collect(started, tasks).await
}

pub fn bearer(access_token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {access_token}")).expect("a header-safe token");
    value.set_sensitive(true);
    value
}

/// Tokens as the hand-written designs keep them.
#[derive(Debug, Clone)]
struct NaiveTokens {
    access_token: String,
    refresh_token: String,
    expires_at: SystemTime,
}

impl From<&Start> for NaiveTokens {
    fn from(start: &Start) -> Self {
        NaiveTokens {
            access_token: start.issued.access_token.clone(),
            refresh_token: start.issued.refresh_token.clone(),
            expires_at: start.expires_at(),
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
}

/// One refresh-token grant, as the hand-written designs send it.
async fn fetch(http: &reqwest::Client, token_url: &str, refresh_token: &str) -> Result<NaiveTokens, std::io::Error> {
    let body = format!(
        "grant_type=refresh_token&refresh_token={}&client_id=bench-client&client_secret=bench-secret",
        form_urlencoded::byte_serialize(refresh_token.as_bytes()).collect::<String>()
    );
    let response = http
        .post(token_url)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(std::io::Error::other)?;
    if status != StatusCode::OK {
        return Err(std::io::Error::other(format!("token endpoint answered {status}")));
    }
    let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    Ok(NaiveTokens {
        access_token: answer.access_token,
        refresh_token: answer.refresh_token.unwrap_or_else(|| refresh_token.to_owned()),
        expires_at: SystemTime::now() + Duration::from_secs(answer.expires_in.unwrap_or(3600)),
    })
}

/// reqwest-chain design, part 1: attaches whatever token is current.
struct AttachCurrentToken(Arc<parking_lot::RwLock<NaiveTokens>>);

#[async_trait]
impl Middleware for AttachCurrentToken {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let value = bearer(&self.0.read().access_token);
        request.headers_mut().insert(AUTHORIZATION, value);
        next.run(request, extensions).await
    }
}

/// reqwest-chain design, part 2: on a 401, refresh with the refresh token in hand and retry once.
struct RefreshOnEvery401 {
    tokens: Arc<parking_lot::RwLock<NaiveTokens>>,
    http: reqwest::Client,
    token_url: String,
}

#[async_trait]
impl reqwest_chain::Chainer for RefreshOnEvery401 {
    /// Whether this request was already retried.
    type State = bool;

    async fn chain(
        &self,
        result: Result<Response, reqwest_middleware::Error>,
        retried: &mut bool,
        request: &mut Request,
    ) -> Result<Option<Response>, reqwest_middleware::Error> {
        let response = result?;
        if response.status() != StatusCode::UNAUTHORIZED || *retried {
            return Ok(Some(response));
        }
        *retried = true;
        let refresh_token = self.tokens.read().refresh_token.clone();
        let fresh =
            fetch(&self.http, &self.token_url, &refresh_token).await.map_err(reqwest_middleware::Error::middleware)?;
        request.headers_mut().insert(AUTHORIZATION, bearer(&fresh.access_token));
        *self.tokens.write() = fresh;
        Ok(None)
    }
}

/// The hand-written stand-in: every request locks the mutex to read the token (refreshing under
/// it when the token is within the skew of expiry); a 401 locks it again and refreshes only if
/// the token is still the one that was rejected.
struct MutexForEveryRequest {
    tokens: tokio::sync::Mutex<NaiveTokens>,
    http: reqwest::Client,
    token_url: String,
}

impl MutexForEveryRequest {
    async fn refresh_locked(&self, tokens: &mut NaiveTokens) -> reqwest_middleware::Result<()> {
        *tokens = fetch(&self.http, &self.token_url, &tokens.refresh_token)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        Ok(())
    }
}

#[async_trait]
impl Middleware for MutexForEveryRequest {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let sent = {
            let mut tokens = self.tokens.lock().await;
            if tokens.expires_at <= SystemTime::now() + SKEW {
                self.refresh_locked(&mut tokens).await?;
            }
            tokens.access_token.clone()
        };
        let retry = request.try_clone();
        request.headers_mut().insert(AUTHORIZATION, bearer(&sent));
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(mut retry) = retry else { return Ok(response) };
        let current = {
            let mut tokens = self.tokens.lock().await;
            if tokens.access_token == sent {
                self.refresh_locked(&mut tokens).await?;
            }
            tokens.access_token.clone()
        };
        retry.headers_mut().insert(AUTHORIZATION, bearer(&current));
        next.run(retry, extensions).await
    }
}

mod huskarl_adapter {
    //! huskarl behind a middleware, following its documented request loop.

    use std::sync::Arc;
    use std::time::SystemTime;

    use async_trait::async_trait;
    use http::{Extensions, StatusCode};
    use huskarl::authorizer::{HttpAuthorizer, parse_challenges};
    use huskarl::cache::{GrantTokenSource, InMemoryRefreshTokenStore, InMemoryTokenCache, NoSource, TokenSource};
    use huskarl::core::OAuthErrorCode;
    use huskarl::grant::core::RawTokenResponse;
    use huskarl::grant::refresh::RefreshGrant;
    use huskarl_reqwest::ReqwestClient;
    use reqwest::{Request, Response};
    use reqwest_middleware::{Middleware, Next};

    use super::{SKEW, Start};
    use crate::common::server::ACCESS_TOKEN_LIFETIME;

    pub struct HuskarlAuth {
        authorizer: Arc<HttpAuthorizer>,
    }

    pub async fn build(token_url: String, start: &Start) -> HuskarlAuth {
        let http = ReqwestClient::builder().build().await.expect("a huskarl-reqwest client");
        let grant = RefreshGrant::builder()
            .token_endpoint(token_url.parse().expect("a valid token URL"))
            .client_id("bench-client")
            .http_client(http)
            .build();
        let source = GrantTokenSource::builder()
            .grant(grant)
            .grant_parameters(NoSource)
            .refresh_store(InMemoryRefreshTokenStore::default())
            .build();
        // A one-hour token received long enough ago that `remaining` is left: huskarl bounds its
        // margin by half the token's lifetime, so the lifetime must be the real one.
        let received_at = SystemTime::now() - (ACCESS_TOKEN_LIFETIME - start.remaining);
        let primed = RawTokenResponse::builder()
            .access_token(start.issued.access_token.clone())
            .token_type("Bearer")
            .expires_in(ACCESS_TOKEN_LIFETIME.as_secs())
            .refresh_token(start.issued.refresh_token.clone())
            .build()
            .into_token_response(None, received_at)
            .expect("a valid token response");
        source.prime(primed).await.expect("priming the token source");
        let cache = InMemoryTokenCache::builder().source(source).expires_margin(SKEW).refresh_jitter(None).build();
        // Take the primed token into the cache, as a running application would have.
        cache.token().await.expect("the primed token");
        HuskarlAuth { authorizer: Arc::new(HttpAuthorizer::builder().cache(cache).build()) }
    }

    impl HuskarlAuth {
        async fn authorize(&self, request: &mut Request, uri: &http::Uri) -> reqwest_middleware::Result<()> {
            let headers = self
                .authorizer
                .get_headers(request.method(), uri)
                .await
                .map_err(reqwest_middleware::Error::middleware)?;
            request.headers_mut().extend(headers);
            Ok(())
        }
    }

    #[async_trait]
    impl Middleware for HuskarlAuth {
        async fn handle(
            &self,
            mut request: Request,
            extensions: &mut Extensions,
            next: Next<'_>,
        ) -> reqwest_middleware::Result<Response> {
            let uri: http::Uri = request.url().as_str().parse().map_err(reqwest_middleware::Error::middleware)?;
            let retry = request.try_clone();
            self.authorize(&mut request, &uri).await?;
            let response = next.clone().run(request, extensions).await?;
            self.authorizer.process_response(&uri, response.headers());
            let invalid_token = response.status() == StatusCode::UNAUTHORIZED
                && parse_challenges(response.headers())
                    .iter()
                    .any(|challenge| challenge.error() == Some(OAuthErrorCode::InvalidToken));
            let (true, Some(mut retry)) = (invalid_token, retry) else { return Ok(response) };
            self.authorize(&mut retry, &uri).await?;
            let response = next.run(retry, extensions).await?;
            self.authorizer.process_response(&uri, response.headers());
            Ok(response)
        }
    }
}

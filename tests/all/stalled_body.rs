//! Contract points 10 and 18: reading an answer to classify it is bounded in time as well as in
//! bytes. A server that sends a 401's headers and the start of its body, then stalls, gets its
//! answer handed to the caller within the classify timeout, with every byte it sent then and
//! later.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use reqwest_token_refresh::{CLASSIFY_BODY_TIMEOUT, RefreshOn, RefreshTokenGrant, TokenRefresh, TokenSet};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::client_with;

/// How long the server holds the rest of the body back unless released: far longer than any
/// bound a test waits for.
const STALL: Duration = Duration::from_secs(60);

/// What the stalling server sends before it stalls, and after.
const FIRST: &str = "{\"error\":\"invalid_";
const REST: &str = "token\",\"error_description\":\"sent late\"}";

/// A hyper server on 127.0.0.1 that answers every request with `status`, the start of a body,
/// and then nothing until released (or [`STALL`] passes); then the rest of the body.
struct StallingServer {
    url: String,
    release: watch::Sender<bool>,
    requests: Arc<AtomicUsize>,
}

impl StallingServer {
    async fn start(status: u16) -> StallingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        let (release, released) = watch::channel(false);
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (released, counted) = (released.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let released = released.clone();
                        let chunks = futures::stream::unfold(0, move |sent| {
                            let mut released = released.clone();
                            async move {
                                match sent {
                                    0 => Some((
                                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(FIRST.as_bytes()))),
                                        1,
                                    )),
                                    1 => {
                                        let _ = tokio::time::timeout(STALL, released.wait_for(|go| *go)).await;
                                        Some((Ok(Frame::data(Bytes::from_static(REST.as_bytes()))), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        let response = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(StreamBody::new(chunks))
                            .unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        StallingServer { url, release, requests }
    }

    /// Lets every stalled body go on.
    fn release(&self) {
        let _ = self.release.send(true);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A token endpoint on `server` that answers `calls` refreshes (and fails the test otherwise).
async fn token_endpoint(server: &MockServer, calls: u64) {
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "a2", "refresh_token": "r2", "expires_in": 3600,
        })))
        .named("token endpoint")
        .expect(calls)
        .mount(server)
        .await;
}

/// A layer whose token endpoint is `token_server`'s, for the API `api` serves.
fn builder(token_server: &MockServer, api: &StallingServer) -> reqwest_token_refresh::TokenRefreshBuilder {
    TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", token_server.uri())))
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1").with_expires_in(Duration::from_secs(3600)))
        .allow_origin(url::Url::parse(&api.url).unwrap().origin().ascii_serialization())
}

/// Reads the rest of `response`'s body once the server is released, bounded.
async fn rest_of_body(server: &StallingServer, response: reqwest::Response) -> String {
    server.release();
    let text = tokio::time::timeout(Duration::from_secs(10), response.text()).await;
    text.expect("the released body arrives").expect("the body reads")
}

#[tokio::test]
async fn a_401_whose_body_stalls_comes_back_in_bounded_time_with_every_byte_the_server_sent() {
    let server = StallingServer::start(401).await;
    let token_server = MockServer::start().await;
    // The first bytes name no error yet: a 401 with no detail, which refreshes by default.
    token_endpoint(&token_server, 1).await;
    let auth = builder(&token_server, &server).build().unwrap();
    let client = client_with(&auth);

    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(20), client.get(&server.url).send())
        .await
        .expect("the layer stops waiting for a stalled 401 body")
        .unwrap();
    let waited = started.elapsed();

    // Two 401s, each read for at most the classify timeout: the first, and the retry's.
    assert!(waited < 2 * CLASSIFY_BODY_TIMEOUT + Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.url().as_str(), server.url);
    assert_eq!(server.requests(), 2, "the 401 refreshed once and the request was retried once");
    assert_eq!(rest_of_body(&server, response).await, format!("{FIRST}{REST}"), "nothing lost, nothing added");
    assert_eq!(auth.stats().refreshes, 1);
    token_server.verify().await;
}

#[tokio::test]
async fn an_answer_a_rejection_rule_reads_that_stalls_comes_back_in_bounded_time_whole() {
    let server = StallingServer::start(200).await;
    let token_server = MockServer::start().await;
    token_endpoint(&token_server, 0).await;
    let auth = builder(&token_server, &server)
        .token_rejected_when(|_, body| body.starts_with(b"{\"status\":401"))
        .build()
        .unwrap();
    let client = client_with(&auth);

    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(20), client.get(&server.url).send())
        .await
        .expect("the layer stops waiting for a stalled body its rule reads")
        .unwrap();

    assert!(started.elapsed() < CLASSIFY_BODY_TIMEOUT + Duration::from_secs(5), "waited {:?}", started.elapsed());
    assert_eq!(response.status(), 200);
    assert_eq!(rest_of_body(&server, response).await, format!("{FIRST}{REST}"));
    assert_eq!(server.requests(), 1);
    token_server.verify().await;
}

#[tokio::test]
async fn classify_timeout_sets_how_long_a_stalled_401_body_is_waited_for() {
    let server = StallingServer::start(401).await;
    let token_server = MockServer::start().await;
    token_endpoint(&token_server, 0).await;
    // Only an explicit `invalid_token` refreshes; the bytes that arrived do not say it.
    let auth = builder(&token_server, &server)
        .refresh_on(RefreshOn::InvalidToken)
        .classify_timeout(Duration::from_millis(200))
        .build();
    let client = client_with(&auth.unwrap());

    let started = Instant::now();
    let response =
        tokio::time::timeout(Duration::from_secs(20), client.get(&server.url).send()).await.unwrap().unwrap();

    assert!(started.elapsed() < Duration::from_millis(1500), "waited {:?}", started.elapsed());
    assert_eq!(response.status(), 401);
    assert_eq!(rest_of_body(&server, response).await, format!("{FIRST}{REST}"));
    token_server.verify().await;
}

/// A hyper server on 127.0.0.1 for an HTTP/2 storm: a request with the token `a1` is answered,
/// after `hold`, with a 401 whose headers say `invalid_token` and whose short body follows 50 ms
/// after them; any other request gets a 200, 300 ms later if it carries a token.
/// Returns its URL and a count of the connections it accepted.
async fn late_bodied_401s(hold: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let stale = request.headers().get("authorization").is_some_and(|value| value == "Bearer a1");
                    async move {
                        let late = futures::stream::once(async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(br#"{"error":"invalid_token"}"#)))
                        });
                        let response = if stale {
                            tokio::time::sleep(hold).await;
                            http::Response::builder()
                                .status(401)
                                .header("www-authenticate", r#"Bearer error="invalid_token""#)
                                .body(http_body_util::Either::Left(StreamBody::new(late)))
                        } else {
                            // Slow enough that the retries are still in flight when the 401s'
                            // late bodies arrive.
                            if request.headers().contains_key("authorization") {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            http::Response::builder().status(200).body(http_body_util::Either::Right(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        };
                        Ok::<_, Infallible>(response.unwrap())
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, connections)
}

fn late_bodied_layer(token_server: &MockServer, api: &str) -> TokenRefresh {
    TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", token_server.uri())))
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1").with_expires_in(Duration::from_secs(3600)))
        .allow_origin(url::Url::parse(api).unwrap().origin().ascii_serialization())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_rejected_answer_is_read_to_its_end_so_the_retry_reuses_its_http1_connection() {
    let token_server = MockServer::start().await;
    token_endpoint(&token_server, 1).await;
    let (api, connections) = late_bodied_401s(Duration::ZERO).await;
    let auth = late_bodied_layer(&token_server, &api);
    let response = tokio::time::timeout(Duration::from_secs(20), client_with(&auth).get(&api).send()).await;
    assert_eq!(response.expect("bounded").unwrap().status(), 200);
    assert_eq!(auth.stats().retries, 1);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "the 401's connection carried the retry");
}

/// h2 closes a connection, failing every request on it, once it has reset 1,024 streams itself
/// (`GOAWAY too_many_internal_resets`). A storm of 1,200 rejections on one HTTP/2 connection,
/// their bodies arriving after their headers, ends with every request answered 200 on that one
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_1200_late_bodied_401s_on_one_http2_connection_ends_200_on_that_connection() {
    let token_server = MockServer::start().await;
    token_endpoint(&token_server, 1).await;
    // Held long enough that every first attempt is out before the first 401 is back.
    let (api, connections) = late_bodied_401s(Duration::from_secs(1)).await;
    let auth = late_bodied_layer(&token_server, &api);
    let http = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let client = reqwest_middleware::ClientBuilder::new(http).with(crate::helpers::Bounded).with(auth.clone()).build();
    // The connection, opened first without a token.
    let opened = client.get(&api).with_extension(reqwest_token_refresh::SkipAuth).send().await.unwrap();
    assert_eq!(opened.status(), 200);

    let statuses = crate::helpers::storm(&client, &api, 1_200, None).await;
    let failed = statuses.iter().filter(|&&status| status != 200).count();
    assert_eq!(failed, 0, "{failed} of 1,200 failed");
    assert!(auth.stats().unauthorized > 1_024, "the storm's first attempts were answered 401: {:?}", auth.stats());
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection throughout");
    crate::helpers::drop_apart(token_server);
}

//! What only the tower front end has: request bodies kept for the retry or sent once, requests
//! whose URI is a path (tonic's), the header rule that gRPC needs, and the boxed errors it hands
//! back. The scenarios both front ends share are in the modules that use `fronts::Client`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    Error, RefreshTokenGrant, ReplayBody, TokenRefresh, TokenRefreshBuilder, TokenRefreshService, TokenSet,
    grpc_unauthenticated,
};
use tower::ServiceExt;
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{REQUEST_BOUND, layer};

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Service = TokenRefreshService<HyperClient<HttpConnector, ReplayBody>>;

fn service(auth: &TokenRefresh) -> Service {
    tower::ServiceBuilder::new()
        .layer(auth.layer())
        .service(HyperClient::builder(TokioExecutor::new()).build_http::<ReplayBody>())
}

fn bytes(body: &'static str) -> Body {
    Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed_unsync()
}

async fn send(
    service: Service,
    request: http::Request<Body>,
) -> Result<http::Response<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    // The answer and its whole body, bounded: a body that never ends fails the test.
    let exchange = async {
        let (parts, body) = service.oneshot(request).await?.into_parts();
        Ok(http::Response::from_parts(parts, body.collect().await?.to_bytes()))
    };
    tokio::time::timeout(REQUEST_BOUND, exchange).await.expect("the request and its body end")
}

/// A layer holding `old` / `r1` against `server`'s `/token`, which answers `new` and is expected
/// `times` times, for `server`'s API.
async fn old_then_new(server: &MockServer, times: u64) -> TokenRefreshBuilder {
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "new", "refresh_token": "r2", "expires_in": 3600})),
        )
        .expect(times)
        .mount(server)
        .await;
    TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
        .initial_tokens(TokenSet::new("old").with_refresh_token("r1"))
        .allow_origin(server.uri())
}

#[tokio::test]
async fn a_post_with_a_body_in_memory_is_sent_again_with_the_same_bytes_after_a_refresh() {
    let server = MockServer::start().await;
    Mock::given(header("authorization", "Bearer old")).respond_with(ResponseTemplate::new(401)).mount(&server).await;
    Mock::given(path("/v1/orders"))
        .and(header("authorization", "Bearer new"))
        .and(body_string(r#"{"item":42}"#))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    let auth = old_then_new(&server, 1).await.build().unwrap();

    let request = http::Request::post(format!("{}/v1/orders", server.uri())).body(bytes(r#"{"item":42}"#)).unwrap();
    let response = send(service(&auth), request).await.unwrap();

    assert_eq!(response.status(), 201, "the retry carried the new token and the same body");
    assert_eq!((auth.stats().refreshes, auth.stats().retries), (1, 1));
    server.verify().await;
}

#[tokio::test]
async fn a_body_still_streaming_is_sent_once_its_401_handed_back_and_the_token_refreshed() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/upload"))
        .respond_with(ResponseTemplate::new(401).set_body_string("expired"))
        .expect(1)
        .mount(&server)
        .await;
    let auth = old_then_new(&server, 1).await.build().unwrap();
    let (chunks, receiver) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"part one, ")))).unwrap();
    let body = StreamBody::new(receiver).map_err(|never| match never {}).boxed_unsync();
    // The rest of the stream comes later, after the request went out.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"part two")))).unwrap();
    });

    let request = http::Request::post(format!("{}/v1/upload", server.uri())).body(body).unwrap();
    let response = send(service(&auth), request).await.unwrap();

    assert_eq!(response.status(), 401, "a stream cannot be sent again: its 401 goes back as it came");
    assert_eq!(response.body(), "expired");
    let received = server.received_requests().await.unwrap();
    let upload = received.iter().find(|r| r.url.path() == "/v1/upload").unwrap();
    assert_eq!(upload.body, b"part one, part two", "the whole stream was sent, once");
    assert_eq!(auth.stats().refreshes, 1, "the refresh happened anyway, for the caller's own retry");
    assert_eq!(auth.stats().retries, 0);
    assert_eq!(auth.tokens().unwrap().access_token().secret(), "new");
    server.verify().await;
}

#[tokio::test]
async fn a_request_whose_uri_is_a_path_gets_the_token_only_when_the_layer_knows_its_origin() {
    let provider = MockProvider::start().await;
    let auth = layer(&provider, provider.issue_tokens()).build().unwrap();
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    // A service that, like a tonic channel, adds the origin itself, and records what it was sent.
    let channel = {
        let (seen, origin) = (seen.clone(), provider.uri());
        let client = HyperClient::builder(TokioExecutor::new()).build_http::<ReplayBody>();
        tower::service_fn(move |mut request: http::Request<ReplayBody>| {
            seen.lock().push(request.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()));
            let path = request.uri().path_and_query().unwrap().as_str().to_owned();
            *request.uri_mut() = format!("{origin}{path}").parse().unwrap();
            client.clone().oneshot(request)
        })
    };
    let request = || http::Request::get("/api/v1/me").body(bytes("")).unwrap();

    let without = tower::ServiceBuilder::new().layer(auth.layer()).service(channel.clone());
    let response = tokio::time::timeout(REQUEST_BOUND, without.oneshot(request())).await.unwrap().unwrap();
    assert_eq!(response.status(), 401, "no origin, no token");
    assert_eq!(auth.stats().requests, 0);

    let with =
        tower::ServiceBuilder::new().layer(auth.layer().origin(&provider.uri()).unwrap()).service(channel.clone());
    let response = tokio::time::timeout(REQUEST_BOUND, with.oneshot(request())).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);

    let elsewhere =
        tower::ServiceBuilder::new().layer(auth.layer().origin("https://other.example").unwrap()).service(channel);
    let response = tokio::time::timeout(REQUEST_BOUND, elsewhere.oneshot(request())).await.unwrap().unwrap();
    assert_eq!(response.status(), 401, "an origin the layer does not send the token to");

    let token = format!("Bearer {}", auth.tokens().unwrap().access_token().secret());
    assert_eq!(*seen.lock(), [None, Some(token), None]);
    assert!(matches!(auth.layer().origin("not a url"), Err(Error::Config(_))));
    assert!(matches!(auth.layer().origin("data:text/plain,x"), Err(Error::Config(_))));
}

#[tokio::test]
async fn a_grpc_unauthenticated_answer_refreshes_once_and_the_call_is_sent_again() {
    let server = MockServer::start().await;
    // A trailers-only gRPC refusal for the old token; an answer for the new one.
    Mock::given(header("authorization", "Bearer old"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/grpc")
                .insert_header("grpc-status", "16")
                .insert_header("grpc-message", "invalid_token"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(200).insert_header("grpc-status", "0").set_body_bytes(b"\0\0\0\0\x02ok"))
        .expect(1)
        .mount(&server)
        .await;
    let auth = old_then_new(&server, 1).await.token_rejected_by_headers(grpc_unauthenticated).build().unwrap();

    let request =
        http::Request::post(format!("{}/demo.Greeter/Hello", server.uri())).body(bytes("\0\0\0\0\x02hi")).unwrap();
    let response = send(service(&auth), request).await.unwrap();

    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(response.body(), &b"\0\0\0\0\x02ok"[..]);
    let stats = auth.stats();
    assert_eq!((stats.unauthorized, stats.refreshes, stats.retries), (1, 1, 1), "{stats:?}");
    server.verify().await;
}

#[tokio::test]
async fn the_layers_errors_reach_a_tower_caller_boxed_and_downcast_to_ours() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    provider.revoke_all();
    let auth = layer(&provider, tokens).build().unwrap();

    let request = http::Request::get(provider.api_url("v1/me")).body(bytes("")).unwrap();
    let err = send(service(&auth), request).await.unwrap_err();

    let ours = err.downcast_ref::<Error>().expect("the layer's own error");
    assert!(ours.is_reauthorization_required(), "{ours}");
    assert!(auth.state().is_reauthorization_required());
}

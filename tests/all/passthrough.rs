//! Contract points 10, 11 and 16: the caller sees exactly what the server sent; a streaming body
//! is sent once and its 401 still refreshes; other 401s and 403s pass through with no refresh;
//! the `Authorization` header the layer sets is marked sensitive.

use std::sync::Arc;

use async_trait::async_trait;
use http::Extensions;
use http::header::AUTHORIZATION;
use parking_lot::Mutex;
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, Middleware, Next};
use reqwest_token_refresh::{
    CLASSIFY_BODY_LIMIT, RefreshOn, RefreshTokenGrant, TokenRefresh, TokenRefreshBuilder, TokenSet,
};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fronts::{Client, Front};
use crate::helpers::client_with;

/// A layer holding `old` / `r1` whose token endpoint is `server`'s `/token`, for `server`'s API.
fn layer(server: &MockServer) -> TokenRefreshBuilder {
    TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", server.uri())))
        .initial_tokens(TokenSet::new("old").with_refresh_token("r1"))
        .allow_origin(server.uri())
}

/// A token endpoint that answers `new` and is expected to be called `times` times.
async fn token_endpoint(server: &MockServer, times: u64) {
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "new", "refresh_token": "r2", "expires_in": 3600})),
        )
        .named("token endpoint")
        .expect(times)
        .mount(server)
        .await;
}

/// 100 KiB of bytes that are not all alike (every value 0..=255, in a pattern that never lines up
/// with the classification cap), so a dropped, repeated or reordered chunk shows.
fn varied_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 7)) as u8).collect()
}

/// What the caller can read of a response, for comparing a plain `reqwest::Client` (no
/// middleware) with the layered client on the same GET.
struct Seen {
    status: u16,
    version: http::Version,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    content_length: Option<u64>,
    body: Vec<u8>,
}

async fn seen(response: Response) -> Seen {
    let mut headers: Vec<(String, Vec<u8>)> = response
        .headers()
        .iter()
        // The date differs between two answers a second apart; everything else must not.
        .filter(|(name, _)| *name != http::header::DATE)
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    headers.sort();
    Seen {
        status: response.status().as_u16(),
        version: response.version(),
        url: response.url().to_string(),
        headers,
        content_length: response.content_length(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

/// Fetches `url` directly and through `auth`; checks the caller sees the same status, version,
/// URL, headers and body bytes; returns both.
async fn fetch_both(auth: &TokenRefresh, url: &str) -> (Seen, Seen) {
    let direct = seen(reqwest::Client::new().get(url).bearer_auth("old").send().await.unwrap()).await;
    let layered = seen(client_with(auth).get(url).send().await.unwrap()).await;
    assert_eq!(layered.status, direct.status);
    assert_eq!(layered.version, direct.version);
    assert_eq!(layered.url, direct.url);
    assert_eq!(layered.headers, direct.headers, "same headers, in the same order per name");
    assert!(layered.body == direct.body, "same body bytes ({} vs {} bytes)", layered.body.len(), direct.body.len());
    (direct, layered)
}

/// A 401 with `len` bytes of body and a challenge for another scheme: the layer must read the
/// body to classify it, then pass the response on.
async fn mount_basic_challenge_401(server: &MockServer, route: &str, body: Vec<u8>, times: u64) {
    Mock::given(path(route))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", r#"Basic realm="reports""#)
                .insert_header("x-request-id", "req-7f3a")
                .append_header("x-multi", "one")
                .append_header("x-multi", "two")
                .set_body_raw(body, "application/octet-stream"),
        )
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_401_naming_another_bearer_error_is_returned_untouched_without_a_refresh() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let server = MockServer::start().await;
        Mock::given(path("/v1/me"))
            .respond_with(
                ResponseTemplate::new(401)
                    .insert_header("www-authenticate", r#"Bearer realm="api", error="invalid_request""#)
                    .set_body_string("malformed query"),
            )
            .expect(1)
            .mount(&server)
            .await;
        token_endpoint(&server, 0).await;
        let auth = layer(&server).build().unwrap();

        let response = Client::new(front, &auth).get(format!("{}/v1/me", server.uri())).send().await.unwrap();

        assert_eq!(response.status, 401);
        assert_eq!(response.headers["www-authenticate"], r#"Bearer realm="api", error="invalid_request""#);
        assert_eq!(response.body, "malformed query");
        let stats = auth.stats();
        assert_eq!((stats.refreshes, stats.retries, stats.unauthorized), (0, 0, 1), "{stats:?}");
        server.verify().await;
    }
}

#[tokio::test]
async fn a_403_insufficient_scope_is_returned_untouched_without_a_refresh() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let server = MockServer::start().await;
        Mock::given(path("/v1/admin"))
            .respond_with(
                ResponseTemplate::new(403)
                    .insert_header("www-authenticate", r#"Bearer error="insufficient_scope", scope="admin""#)
                    .set_body_json(serde_json::json!({"error": "insufficient_scope"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        token_endpoint(&server, 0).await;
        let auth = layer(&server).build().unwrap();

        let response = Client::new(front, &auth).get(format!("{}/v1/admin", server.uri())).send().await.unwrap();

        assert_eq!(response.status, 403);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body, serde_json::json!({"error": "insufficient_scope"}));
        assert_eq!(auth.stats().refreshes, 0);
        assert!(!matches!(auth.state(), reqwest_token_refresh::TokenState::Refreshing { .. }));
        server.verify().await;
    }
}

#[tokio::test]
async fn a_passed_through_401_has_the_servers_status_headers_url_and_body_beyond_the_classification_cap() {
    let server = MockServer::start().await;
    let body = varied_bytes(100 * 1024);
    assert!(body.len() > 20 * CLASSIFY_BODY_LIMIT);
    mount_basic_challenge_401(&server, "/v1/report", body.clone(), 2).await;
    token_endpoint(&server, 0).await;
    let auth = layer(&server).build().unwrap();

    let url = format!("{}/v1/report?page=2", server.uri());
    let (_, layered) = fetch_both(&auth, &url).await;

    assert_eq!(layered.status, 401);
    assert_eq!(layered.url, url);
    assert!(layered.body == body, "the body is the server's, byte for byte");
    assert!(layered.headers.contains(&("x-request-id".to_owned(), b"req-7f3a".to_vec())));
    assert!(layered.headers.contains(&("www-authenticate".to_owned(), br#"Basic realm="reports""#.to_vec())));
    assert_eq!(auth.stats().refreshes, 0);
    server.verify().await;
}

#[tokio::test]
async fn a_passed_through_401_keeps_its_content_length_when_the_body_is_larger_than_the_classification_cap() {
    let server = MockServer::start().await;
    let small = varied_bytes(CLASSIFY_BODY_LIMIT / 2);
    let large = varied_bytes(100 * 1024);
    mount_basic_challenge_401(&server, "/v1/small", small.clone(), 2).await;
    mount_basic_challenge_401(&server, "/v1/large", large.clone(), 2).await;
    token_endpoint(&server, 0).await;
    let auth = layer(&server).build().unwrap();

    let (direct, layered) = fetch_both(&auth, &format!("{}/v1/small", server.uri())).await;
    assert_eq!(direct.content_length, Some(small.len() as u64));
    assert_eq!(layered.content_length, direct.content_length, "a body read whole keeps its length");

    let (direct, layered) = fetch_both(&auth, &format!("{}/v1/large", server.uri())).await;
    assert_eq!(direct.content_length, Some(large.len() as u64));
    assert_eq!(
        layered.content_length, direct.content_length,
        "`Response::content_length()` of a 401 whose body was partly read to classify it"
    );
    server.verify().await;
}

#[tokio::test]
async fn a_passed_through_401_with_a_small_json_body_is_unchanged() {
    let server = MockServer::start().await;
    // No challenge: the JSON body names another error, so the layer passes the 401 on.
    let json = serde_json::json!({"error": "insufficient_scope", "error_description": "needs read:sleep"});
    Mock::given(path("/v1/sleep"))
        .respond_with(ResponseTemplate::new(401).insert_header("x-request-id", "req-1").set_body_json(&json))
        .expect(2)
        .mount(&server)
        .await;
    token_endpoint(&server, 0).await;
    let auth = layer(&server).build().unwrap();

    let (_, layered) = fetch_both(&auth, &format!("{}/v1/sleep", server.uri())).await;

    assert_eq!(serde_json::from_slice::<serde_json::Value>(&layered.body).unwrap(), json);
    assert_eq!(auth.stats().refreshes, 0);
    server.verify().await;
}

#[tokio::test]
async fn with_refresh_on_invalid_token_a_bare_401_passes_through_without_a_refresh() {
    let server = MockServer::start().await;
    let body = varied_bytes(10 * 1024);
    Mock::given(path("/v1/me"))
        .respond_with(ResponseTemplate::new(401).set_body_raw(body.clone(), "application/octet-stream"))
        .expect(2)
        .mount(&server)
        .await;
    token_endpoint(&server, 0).await;
    let auth = layer(&server).refresh_on(RefreshOn::InvalidToken).build().unwrap();

    let (_, layered) = fetch_both(&auth, &format!("{}/v1/me", server.uri())).await;

    assert_eq!(layered.status, 401);
    assert!(layered.body == body);
    assert_eq!(auth.stats().refreshes, 0);
    server.verify().await;
}

#[tokio::test]
async fn by_default_a_bare_401_refreshes_and_retries() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/me"))
        .and(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(200).set_body_string("hello"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1/me")).respond_with(ResponseTemplate::new(401)).expect(1).mount(&server).await;
    token_endpoint(&server, 1).await;
    let auth = layer(&server).build().unwrap();

    let response = client_with(&auth).get(format!("{}/v1/me", server.uri())).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello");
    let stats = auth.stats();
    assert_eq!((stats.refreshes, stats.retries), (1, 1), "{stats:?}");
    server.verify().await;
}

#[tokio::test]
async fn a_streaming_body_that_gets_401_is_sent_once_returned_as_is_and_the_refresh_still_happens() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/upload"))
        .and(header("authorization", "Bearer old"))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", r#"Bearer error="invalid_token""#)
                .set_body_string("token expired"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/upload"))
        .and(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    token_endpoint(&server, 1).await;
    let auth = layer(&server).build().unwrap();
    let client = client_with(&auth);
    let url = format!("{}/v1/upload", server.uri());
    let chunks = || futures::stream::iter(["part one, ", "part two"].map(|s| Ok::<_, std::io::Error>(s.to_owned())));

    let response = client.post(&url).body(reqwest::Body::wrap_stream(chunks())).send().await.unwrap();

    assert_eq!(response.status(), 401, "a stream cannot be replayed: the 401 goes back to the caller");
    assert_eq!(response.headers()["www-authenticate"], r#"Bearer error="invalid_token""#);
    assert_eq!(response.text().await.unwrap(), "token expired");
    let stats = auth.stats();
    assert_eq!((stats.refreshes, stats.retries), (1, 0), "refreshed, not retried: {stats:?}");
    let tokens = auth.tokens().unwrap();
    assert_eq!(tokens.access_token().secret(), "new", "the caller's own retry will use the new token");
    assert_eq!(tokens.refresh_token().unwrap().secret(), "r2");

    // The caller's own retry, with a fresh stream.
    let retried = client.post(&url).body(reqwest::Body::wrap_stream(chunks())).send().await.unwrap();
    assert_eq!(retried.status(), 201);
    assert_eq!(auth.stats().refreshes, 1, "no second refresh");
    let uploads: Vec<_> =
        server.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/v1/upload").collect();
    assert_eq!(uploads.len(), 2);
    for upload in &uploads {
        assert_eq!(upload.body, b"part one, part two", "each stream was sent whole, once");
    }
    server.verify().await;
}

/// Records, for each request that passes it, whether it carried an `Authorization` header and
/// whether that header was marked sensitive.
#[derive(Debug, Clone, Default)]
struct SensitivityProbe(Arc<Mutex<Vec<Option<bool>>>>);

#[async_trait]
impl Middleware for SensitivityProbe {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.0.lock().push(request.headers().get(AUTHORIZATION).map(|v| v.is_sensitive()));
        next.run(request, extensions).await
    }
}

#[tokio::test]
async fn the_authorization_header_the_layer_sets_is_marked_sensitive_on_first_send_and_on_retry() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/me"))
        .and(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1/me"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .expect(1)
        .mount(&server)
        .await;
    token_endpoint(&server, 1).await;
    let auth = layer(&server).build().unwrap();
    let probe = SensitivityProbe::default();
    let client = ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).with(probe.clone()).build();

    let response = client.get(format!("{}/v1/me", server.uri())).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(*probe.0.lock(), [Some(true), Some(true)], "the first send and the retry both carry a sensitive header");
    server.verify().await;
}

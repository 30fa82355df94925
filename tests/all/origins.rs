//! Contract point 8, where the token goes: only allowed origins (the token source's, a
//! preset's API, the builder's; a builder that allows none is refused unless it says any origin
//! will do), never plain `http://` to a host that is not loopback unless the user opts in, never
//! over a request's own `Authorization` header, never with `SkipAuth`; and none of those
//! requests ever triggers a refresh.
//! Contract point 19, only the token's own answers count: a 401 from an origin a redirect led
//! to, which never got the token, triggers no refresh.

use std::sync::{Arc, Mutex};

use http::Extensions;
use http::header::AUTHORIZATION;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_token_refresh::{
    Error, RefreshError, RefreshTokenGrant, TokenRefresh, TokenRefreshBuilder, TokenSet, TokenSource, providers,
};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fronts::{Client, Front};
use crate::helpers::client_with;

/// A host name that is not loopback; the test client resolves it to a local wiremock server.
const FOREIGN_HOST: &str = "api.example.test";

/// A 401 that says the token is dead: it would trigger a refresh if the layer had sent a token.
fn dead_token_401() -> ResponseTemplate {
    ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#)
}

/// A token endpoint on `server` that must never be called.
async fn token_endpoint_never_called(server: &MockServer) {
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "fresh"})))
        .named("token endpoint")
        .expect(0)
        .mount(server)
        .await;
}

/// A layer with a fresh token `a1` whose token endpoint is `token_server`'s `/token`.
fn layer(token_server: &MockServer) -> TokenRefreshBuilder {
    TokenRefresh::builder(RefreshTokenGrant::new(format!("{}/token", token_server.uri())))
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
}

/// A client that sends `http://api.example.test:PORT/...` to `server` without leaving loopback.
fn client_resolving_foreign_host_to(server: &MockServer, auth: &TokenRefresh) -> ClientWithMiddleware {
    let inner = reqwest::Client::builder().no_proxy().resolve(FOREIGN_HOST, *server.address()).build().unwrap();
    ClientBuilder::new(inner).with(auth.clone()).build()
}

fn foreign_url(server: &MockServer, path: &str) -> String {
    format!("http://{FOREIGN_HOST}:{}{path}", server.address().port())
}

/// The `Authorization` headers `server` received, in order (`None` where there was none).
async fn authorizations(server: &MockServer) -> Vec<Option<String>> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .iter()
        .map(|r| r.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn token_is_not_sent_to_an_origin_outside_the_allowed_list() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let (allowed, other) = (MockServer::start().await, MockServer::start().await);
        Mock::given(path("/v1/me")).respond_with(ResponseTemplate::new(200)).expect(1).mount(&allowed).await;
        Mock::given(path("/v1/me")).respond_with(ResponseTemplate::new(200)).expect(1).mount(&other).await;
        token_endpoint_never_called(&allowed).await;
        let auth = layer(&allowed).allow_origin(allowed.uri()).build().unwrap();
        let client = Client::new(front, &auth);

        assert_eq!(client.get(format!("{}/v1/me", allowed.uri())).send().await.unwrap().status, 200);
        assert_eq!(client.get(format!("{}/v1/me", other.uri())).send().await.unwrap().status, 200);

        assert_eq!(authorizations(&allowed).await, [Some("Bearer a1".to_owned())], "the allowed origin gets the token");
        assert_eq!(authorizations(&other).await, [None], "another port on the same host is another origin");
        assert_eq!(auth.stats().requests, 1, "only the allowed request went through the layer's token path");
        allowed.verify().await;
        other.verify().await;
    }
}

#[tokio::test]
async fn a_401_from_an_origin_outside_the_allowed_list_triggers_no_refresh() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let (allowed, other) = (MockServer::start().await, MockServer::start().await);
        Mock::given(path("/v1/me"))
            .respond_with(dead_token_401().set_body_string("not yours"))
            .expect(1)
            .mount(&other)
            .await;
        token_endpoint_never_called(&allowed).await;
        let auth = layer(&allowed).allow_origin(allowed.uri()).build().unwrap();

        let response = Client::new(front, &auth).get(format!("{}/v1/me", other.uri())).send().await.unwrap();

        assert_eq!(response.status, 401, "the 401 goes back to the caller as it came");
        assert_eq!(response.body, "not yours");
        let stats = auth.stats();
        assert_eq!((stats.refreshes, stats.retries, stats.unauthorized), (0, 0, 0), "{stats:?}");
        assert_eq!(authorizations(&other).await, [None]);
        allowed.verify().await;
        other.verify().await;
    }
}

#[tokio::test]
async fn plain_http_to_a_host_that_is_not_loopback_gets_no_token_and_no_refresh() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/me")).respond_with(dead_token_401()).expect(1).mount(&server).await;
    token_endpoint_never_called(&server).await;
    // Not even a layer that sends the token to any origin sends it over plain http.
    let auth = layer(&server).allow_any_origin().build().unwrap();
    let client = client_resolving_foreign_host_to(&server, &auth);

    let response = client.get(foreign_url(&server, "/v1/me")).send().await.unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(authorizations(&server).await, [None], "no bearer token over plain http to {FOREIGN_HOST}");
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        request.headers.get("host").unwrap().to_str().unwrap(),
        format!("{FOREIGN_HOST}:{}", server.address().port()),
        "the request really was addressed to the non-loopback host name"
    );
    assert_eq!(auth.stats().refreshes, 0);
    server.verify().await;
}

#[tokio::test]
async fn an_allowed_origin_over_plain_http_still_gets_no_token_without_the_opt_in() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/me")).respond_with(ResponseTemplate::new(200)).expect(1).mount(&server).await;
    token_endpoint_never_called(&server).await;
    let auth =
        layer(&server).allow_origin(format!("http://{FOREIGN_HOST}:{}", server.address().port())).build().unwrap();

    let response =
        client_resolving_foreign_host_to(&server, &auth).get(foreign_url(&server, "/v1/me")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(authorizations(&server).await, [None], "listing an http origin is not opting in to plain http");
    server.verify().await;
}

#[tokio::test]
async fn plain_http_to_a_host_that_is_not_loopback_gets_the_token_when_the_user_opts_in() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/me"))
        .and(header("authorization", "Bearer a2"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1/me")).respond_with(dead_token_401()).expect(1).mount(&server).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "a2"})))
        .expect(1)
        .mount(&server)
        .await;
    let auth = layer(&server)
        .allow_origin(format!("http://{FOREIGN_HOST}:{}", server.address().port()))
        .allow_insecure_http(true)
        .build()
        .unwrap();

    let response =
        client_resolving_foreign_host_to(&server, &auth).get(foreign_url(&server, "/v1/me")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let api_calls: Vec<_> = authorizations(&server).await.into_iter().filter(|a| a.is_some()).collect();
    // The token call itself carries no Authorization header (no client credentials configured).
    assert_eq!(api_calls, [Some("Bearer a1".to_owned()), Some("Bearer a2".to_owned())]);
    assert_eq!(auth.stats().refreshes, 1, "opted in, the host's 401 is handled like any other");
    server.verify().await;
}

#[tokio::test]
async fn a_request_with_its_own_authorization_header_is_sent_unchanged_and_never_refreshed() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let server = MockServer::start().await;
        Mock::given(path("/v1/me")).respond_with(dead_token_401()).expect(2).mount(&server).await;
        token_endpoint_never_called(&server).await;
        let auth = layer(&server).allow_origin(server.uri()).build().unwrap();
        let client = Client::new(front, &auth);
        let url = format!("{}/v1/me", server.uri());

        let bearer = client.get(&url).header("authorization", "Bearer users-own").send().await.unwrap();
        let basic = client.get(&url).header("authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();

        assert_eq!((bearer.status, basic.status), (401, 401));
        assert_eq!(
            authorizations(&server).await,
            [Some("Bearer users-own".to_owned()), Some("Basic dXNlcjpwYXNz".to_owned())],
            "the caller's own header is sent as it was set"
        );
        let stats = auth.stats();
        assert_eq!((stats.requests, stats.refreshes, stats.retries), (0, 0, 0), "{stats:?}");
        server.verify().await;
    }
}

#[tokio::test]
async fn a_request_marked_skip_auth_gets_no_token_and_never_triggers_a_refresh() {
    for front in Front::ALL {
        println!("-- through {front:?}");
        let server = MockServer::start().await;
        Mock::given(path("/health")).respond_with(dead_token_401()).expect(1).mount(&server).await;
        token_endpoint_never_called(&server).await;
        let auth = layer(&server).allow_origin(server.uri()).build().unwrap();

        let response =
            Client::new(front, &auth).get(format!("{}/health", server.uri())).skip_auth().send().await.unwrap();

        assert_eq!(response.status, 401);
        assert_eq!(authorizations(&server).await, [None]);
        let stats = auth.stats();
        assert_eq!((stats.requests, stats.refreshes, stats.unauthorized), (0, 0, 0), "{stats:?}");
        server.verify().await;
    }
}

/// Mounts `/v1/moved` on `from`: a 302 to `to`.
async fn redirect(from: &MockServer, to: String) {
    Mock::given(path("/v1/moved"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", to.as_str()))
        .mount(from)
        .await;
}

#[tokio::test]
async fn a_401_after_a_redirect_to_another_origin_triggers_no_refresh() {
    // Two servers on 127.0.0.1, on two ports: two origins.
    let (allowed, other) = (MockServer::start().await, MockServer::start().await);
    redirect(&allowed, format!("{}/v1/there", other.uri())).await;
    Mock::given(path("/v1/there"))
        .respond_with(dead_token_401().set_body_string("not about your token"))
        .expect(1)
        .mount(&other)
        .await;
    token_endpoint_never_called(&allowed).await;
    let auth = layer(&allowed).allow_origin(allowed.uri()).build().unwrap();

    let request = client_with(&auth).get(format!("{}/v1/moved", allowed.uri())).send();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), request).await.unwrap().unwrap();

    assert_eq!(response.status(), 401, "the 401 goes back to the caller as it came");
    assert_eq!(response.url().as_str(), format!("{}/v1/there", other.uri()));
    assert_eq!(response.headers()["www-authenticate"], r#"Bearer error="invalid_token""#);
    assert_eq!(response.text().await.unwrap(), "not about your token");
    let stats = auth.stats();
    assert_eq!((stats.refreshes, stats.retries, stats.unauthorized), (0, 0, 0), "{stats:?}");
    assert_eq!(authorizations(&allowed).await, [Some("Bearer a1".to_owned())]);
    assert_eq!(authorizations(&other).await, [None], "reqwest dropped the token at the origin's edge");
    allowed.verify().await;
    other.verify().await;
}

#[tokio::test]
async fn a_401_after_a_redirect_to_another_origin_triggers_no_refresh_for_a_streamed_body() {
    let (allowed, other) = (MockServer::start().await, MockServer::start().await);
    // A 303 turns the POST into a GET without a body, which reqwest can follow with a stream.
    Mock::given(path("/v1/upload"))
        .respond_with(
            ResponseTemplate::new(303).insert_header("location", format!("{}/v1/there", other.uri()).as_str()),
        )
        .mount(&allowed)
        .await;
    Mock::given(path("/v1/there")).respond_with(dead_token_401()).expect(1).mount(&other).await;
    token_endpoint_never_called(&allowed).await;
    let auth = layer(&allowed).allow_origin(allowed.uri()).build().unwrap();

    let chunks = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"one shot"))]);
    let request =
        client_with(&auth).post(format!("{}/v1/upload", allowed.uri())).body(reqwest::Body::wrap_stream(chunks)).send();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), request).await.unwrap().unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(auth.stats().refreshes, 0);
    allowed.verify().await;
    other.verify().await;
}

#[tokio::test]
async fn a_401_after_a_redirect_within_the_same_origin_still_refreshes_and_retries() {
    let server = MockServer::start().await;
    redirect(&server, format!("{}/v1/there", server.uri())).await;
    Mock::given(path("/v1/there"))
        .and(header("authorization", "Bearer fresh"))
        .respond_with(ResponseTemplate::new(200).set_body_string("yours"))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1/there")).respond_with(dead_token_401()).mount(&server).await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "fresh"})))
        .named("token endpoint")
        .expect(1)
        .mount(&server)
        .await;
    let auth = layer(&server).allow_origin(server.uri()).build().unwrap();

    let request = client_with(&auth).get(format!("{}/v1/moved", server.uri())).send();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), request).await.unwrap().unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "yours");
    let received = server.received_requests().await.unwrap();
    let there: Vec<_> = received
        .iter()
        .filter(|r| r.url.path() == "/v1/there")
        .map(|r| r.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()))
        .collect();
    // reqwest keeps `Authorization` on a redirect within the origin: the 401 was the token's.
    assert_eq!(there, [Some("Bearer a1".to_owned()), Some("Bearer fresh".to_owned())]);
    assert_eq!((auth.stats().refreshes, auth.stats().retries), (1, 1));
    server.verify().await;
}

#[test]
fn a_builder_that_allows_no_origin_is_refused_with_what_to_call() {
    #[derive(Debug)]
    struct KnowsNoApi;

    #[async_trait::async_trait]
    impl TokenSource for KnowsNoApi {
        async fn fetch(&self, _current: Option<&TokenSet>) -> Result<TokenSet, RefreshError> {
            Ok(TokenSet::new("a1"))
        }
    }

    let grant = RefreshTokenGrant::new("https://login.example/oauth/token");
    for refused in [TokenRefresh::builder(grant).build(), TokenRefresh::builder(KnowsNoApi).build()] {
        match refused {
            Err(Error::Config(message)) => {
                assert!(message.contains("allow_origin(..)"), "{message}");
                assert!(message.contains("allow_any_origin()"), "{message}");
            }
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }
}

/// Stands in for the https servers these tests cannot run (the test build has no TLS): innermost
/// in the client, it answers every `https` request itself, as the origin it was sent to, and
/// records the `Authorization` header it carried. An answer is a 200 to a request with a token,
/// and to one without, a 401 saying `invalid_token`, which would trigger a refresh had the layer
/// sent the token. Plain `http` goes on to the network (the wiremock servers).
#[derive(Clone, Default)]
struct HttpsStandIn(Arc<Mutex<Vec<Received>>>);

/// An https request's origin and the `Authorization` header it carried.
type Received = (String, Option<String>);

impl HttpsStandIn {
    /// Each https request's origin and `Authorization` header, in order.
    fn received(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Middleware for HttpsStandIn {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if request.url().scheme() != "https" {
            return next.run(request, extensions).await;
        }
        let authorization = request.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
        self.0.lock().unwrap().push((request.url().origin().ascii_serialization(), authorization.clone()));
        let answer = http::Response::builder().url(request.url().clone());
        let answer = match authorization {
            Some(_) => answer.status(200),
            None => answer.status(401).header("www-authenticate", r#"Bearer error="invalid_token""#),
        };
        Ok(reqwest::Response::from(answer.body("").unwrap()))
    }
}

fn client_with_https_stand_in(auth: &TokenRefresh, stand_in: &HttpsStandIn) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).with(stand_in.clone()).build()
}

#[tokio::test]
async fn allow_any_origin_sends_the_token_to_every_https_origin_and_loopback() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/me")).respond_with(ResponseTemplate::new(200)).expect(1).mount(&server).await;
    token_endpoint_never_called(&server).await;
    let auth = layer(&server).allow_any_origin().build().unwrap();
    let stand_in = HttpsStandIn::default();
    let client = client_with_https_stand_in(&auth, &stand_in);

    for url in ["https://api.example/v1/me", "https://elsewhere.example:8443/x", "https://wbsapi.withings.net/measure"]
    {
        assert_eq!(client.get(url).send().await.unwrap().status(), 200, "{url}");
    }
    assert_eq!(client.get(format!("{}/v1/me", server.uri())).send().await.unwrap().status(), 200);

    let bearer = Some("Bearer a1".to_owned());
    assert_eq!(
        stand_in.received(),
        [
            ("https://api.example".to_owned(), bearer.clone()),
            ("https://elsewhere.example:8443".to_owned(), bearer.clone()),
            ("https://wbsapi.withings.net".to_owned(), bearer.clone()),
        ]
    );
    assert_eq!(authorizations(&server).await, [bearer]);
    assert_eq!(auth.stats().requests, 4);
    server.verify().await;
}

/// The Withings preset as it is, apart from its token endpoint: `token_server`'s `/token`.
fn withings_preset_layer(token_server: &MockServer) -> TokenRefreshBuilder {
    TokenRefresh::builder(providers::withings("id", "secret").token_url(format!("{}/token", token_server.uri())))
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
}

#[tokio::test]
async fn a_presets_token_reaches_only_its_providers_api_and_other_origins_never_refresh() {
    let (token_server, other) = (MockServer::start().await, MockServer::start().await);
    token_endpoint_never_called(&token_server).await;
    Mock::given(path("/v1/me")).respond_with(dead_token_401()).expect(1).mount(&other).await;
    // Built with no origin of its own: the preset names Withings' API.
    let auth = withings_preset_layer(&token_server).build().unwrap();
    let stand_in = HttpsStandIn::default();
    let client = client_with_https_stand_in(&auth, &stand_in);

    let withings = client.get(format!("{}/measure?action=getmeas", providers::WITHINGS_API_ORIGIN)).send().await;
    let kroger = client.get("https://api.kroger.com/v1/cart").send().await.unwrap();
    let look_alike = client.get("https://wbsapi.withings.net.evil.example/measure").send().await.unwrap();
    let loopback = client.get(format!("{}/v1/me", other.uri())).send().await.unwrap();

    assert_eq!(withings.unwrap().status(), 200);
    let statuses = [kroger.status(), look_alike.status(), loopback.status()].map(|s| s.as_u16());
    assert_eq!(statuses, [401, 401, 401], "handed back as they came");
    assert_eq!(
        stand_in.received(),
        [
            ("https://wbsapi.withings.net".to_owned(), Some("Bearer a1".to_owned())),
            ("https://api.kroger.com".to_owned(), None),
            ("https://wbsapi.withings.net.evil.example".to_owned(), None),
        ]
    );
    assert_eq!(authorizations(&other).await, [None], "another origin, loopback or not, gets no token");
    let stats = auth.stats();
    assert_eq!((stats.requests, stats.refreshes, stats.unauthorized), (1, 0, 0), "{stats:?}");
    token_server.verify().await;
    other.verify().await;
}

#[tokio::test]
async fn an_origin_the_builder_allows_is_added_to_the_presets() {
    let server = MockServer::start().await;
    token_endpoint_never_called(&server).await;
    Mock::given(path("/v1/me")).respond_with(ResponseTemplate::new(200)).expect(1).mount(&server).await;
    let auth = withings_preset_layer(&server).allow_origin(server.uri()).build().unwrap();
    let stand_in = HttpsStandIn::default();
    let client = client_with_https_stand_in(&auth, &stand_in);

    assert_eq!(client.get(format!("{}/v1/me", server.uri())).send().await.unwrap().status(), 200);
    assert_eq!(client.get("https://wbsapi.withings.net/measure").send().await.unwrap().status(), 200);

    assert_eq!(authorizations(&server).await, [Some("Bearer a1".to_owned())]);
    assert_eq!(stand_in.received(), [("https://wbsapi.withings.net".to_owned(), Some("Bearer a1".to_owned()))]);
    server.verify().await;
}

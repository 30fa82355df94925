//! Contract point 13 and the shape of the token request: client authentication (HTTP Basic or in
//! the body), the grant's fields, scopes and extra params, form or JSON encoding, keeping the old
//! refresh token when none comes back, no redirects, and a token call that never passes through
//! the client's middleware chain. Also the client-credentials grant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Extensions;
use parking_lot::Mutex;
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, Middleware, Next};
use reqwest_token_refresh::Clock as _;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    BodyEncoding, ClientAuth, ClientCredentials, Error, RefreshError, RefreshTokenGrant, TokenRefresh, TokenSet,
    TokenSource,
};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Match, Mock, MockServer, ResponseTemplate};

use crate::helpers::client_with;

/// Matches a form-encoded body holding exactly these fields (no more, none repeated).
struct FormIs(BTreeMap<String, String>);

fn form_is(fields: &[(&str, &str)]) -> FormIs {
    FormIs(fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
}

impl Match for FormIs {
    fn matches(&self, request: &wiremock::Request) -> bool {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&request.body).into_owned().collect();
        let fields: BTreeMap<String, String> = pairs.iter().cloned().collect();
        fields.len() == pairs.len() && fields == self.0
    }
}

/// The form fields of a recorded request.
fn form_fields(request: &wiremock::Request) -> BTreeMap<String, String> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

/// The requests `server` received on `route`.
async fn received_on(server: &MockServer, route: &str) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == route).collect()
}

/// An API at `/api` that accepts `Bearer new` and answers anything else with a dead-token 401.
async fn mount_api(server: &MockServer) {
    Mock::given(path("/api"))
        .and(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(200))
        .mount(server)
        .await;
    Mock::given(path("/api"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .mount(server)
        .await;
}

fn new_tokens() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"access_token": "new", "refresh_token": "r2", "expires_in": 3600}))
}

/// Sends one request through a layer built on `source` holding `old` / `r1`; returns its status.
async fn one_request(server: &MockServer, source: impl TokenSource) -> u16 {
    let auth = TokenRefresh::builder(source)
        .initial_tokens(TokenSet::new("old").with_refresh_token("r1"))
        .allow_origin(server.uri())
        .build()
        .unwrap();
    client_with(&auth).get(format!("{}/api", server.uri())).send().await.unwrap().status().as_u16()
}

fn token_url(server: &MockServer) -> String {
    format!("{}/token", server.uri())
}

#[tokio::test]
async fn basic_client_auth_sends_urlencoded_credentials_in_the_header_and_no_secret_in_the_body() {
    let server = MockServer::start().await;
    mount_api(&server).await;
    // base64("my+client:s%26cret%3A1"): RFC 6749 §2.3.1 form-encodes both parts before joining.
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("authorization", "Basic bXkrY2xpZW50OnMlMjZjcmV0JTNBMQ=="))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("accept", "application/json"))
        .and(form_is(&[("grant_type", "refresh_token"), ("refresh_token", "r1")]))
        .respond_with(new_tokens())
        .expect(1)
        .mount(&server)
        .await;
    let grant = RefreshTokenGrant::new(token_url(&server)).client_id("my client").client_secret("s&cret:1");

    assert_eq!(one_request(&server, grant).await, 200);

    let calls = received_on(&server, "/token").await;
    let body = String::from_utf8(calls[0].body.clone()).unwrap();
    assert!(!body.contains("cret") && !body.contains("client"), "no client credentials in the body: {body}");
    server.verify().await;
}

#[tokio::test]
async fn request_body_client_auth_sends_id_and_secret_as_form_fields_and_no_authorization_header() {
    let server = MockServer::start().await;
    mount_api(&server).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(form_is(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "r1"),
            ("client_id", "my client"),
            ("client_secret", "s&cret:1"),
        ]))
        .respond_with(new_tokens())
        .expect(1)
        .mount(&server)
        .await;
    let grant = RefreshTokenGrant::new(token_url(&server))
        .client_id("my client")
        .client_secret("s&cret:1")
        .client_auth(ClientAuth::RequestBody);

    assert_eq!(one_request(&server, grant).await, 200);

    let calls = received_on(&server, "/token").await;
    assert_eq!(calls.len(), 1);
    assert!(calls[0].headers.get("authorization").is_none(), "no Authorization header on the token call");
    server.verify().await;
}

#[tokio::test]
async fn scopes_are_joined_by_spaces_and_extra_params_are_sent_as_fields() {
    let server = MockServer::start().await;
    mount_api(&server).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("scope=read+write+offline"))
        .and(form_is(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "r1"),
            ("scope", "read write offline"),
            ("client_id", "whoop-app"),
            ("client_secret", "hush"),
            ("action", "requesttoken"),
            ("audience", "https://api.example/v2?x=1&y=2"),
        ]))
        .respond_with(new_tokens())
        .expect(1)
        .mount(&server)
        .await;
    let grant = RefreshTokenGrant::new(token_url(&server))
        .client_id("whoop-app")
        .client_secret("hush")
        .client_auth(ClientAuth::RequestBody)
        .scope("read")
        .scope("write")
        .scope("offline")
        .param("action", "requesttoken")
        .param("audience", "https://api.example/v2?x=1&y=2");

    assert_eq!(one_request(&server, grant).await, 200);
    server.verify().await;
}

#[tokio::test]
async fn json_encoding_sends_the_same_fields_as_json_strings() {
    let server = MockServer::start().await;
    mount_api(&server).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("content-type", "application/json"))
        .respond_with(new_tokens())
        .expect(1)
        .mount(&server)
        .await;
    let grant = RefreshTokenGrant::new(token_url(&server))
        .client_id("partner")
        .client_secret("s&cret")
        .client_auth(ClientAuth::RequestBody)
        .encoding(BodyEncoding::Json)
        .scope("read:partner")
        .scope("offline")
        .param("action", "requesttoken");

    assert_eq!(one_request(&server, grant).await, 200);

    let calls = received_on(&server, "/token").await;
    let body: serde_json::Value = serde_json::from_slice(&calls[0].body).expect("the body is JSON");
    assert_eq!(
        body,
        serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": "r1",
            "scope": "read:partner offline",
            "client_id": "partner",
            "client_secret": "s&cret",
            "action": "requesttoken",
        })
    );
    assert!(calls[0].headers.get("authorization").is_none());
    server.verify().await;
}

#[tokio::test]
async fn json_encoding_with_basic_auth_keeps_the_secret_out_of_the_body() {
    let server = MockServer::start().await;
    mount_api(&server).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("content-type", "application/json"))
        .and(header("authorization", "Basic bXkrY2xpZW50OnMlMjZjcmV0JTNBMQ=="))
        .respond_with(new_tokens())
        .expect(1)
        .mount(&server)
        .await;
    let grant = RefreshTokenGrant::new(token_url(&server))
        .client_id("my client")
        .client_secret("s&cret:1")
        .encoding(BodyEncoding::Json);

    assert_eq!(one_request(&server, grant).await, 200);

    let calls = received_on(&server, "/token").await;
    let body: serde_json::Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(body, serde_json::json!({"grant_type": "refresh_token", "refresh_token": "r1"}));
    server.verify().await;
}

#[tokio::test]
async fn a_response_without_a_refresh_token_keeps_the_old_one_for_the_next_refresh() {
    let server = MockServer::start().await;
    Mock::given(path("/api"))
        .and(header("authorization", "Bearer a3"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api")).respond_with(ResponseTemplate::new(401)).mount(&server).await;
    // Neither answer carries a refresh token; both refreshes must present r1.
    Mock::given(path("/token"))
        .and(form_is(&[("grant_type", "refresh_token"), ("refresh_token", "r1")]))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "a2"})))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/token"))
        .and(form_is(&[("grant_type", "refresh_token"), ("refresh_token", "r1")]))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "a3", "refresh_token": null})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(token_url(&server)))
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
        .allow_origin(server.uri())
        // a2 is rejected as soon as it is fetched; the next request may still refresh.
        .min_refresh_interval(Duration::ZERO)
        .build()
        .unwrap();
    let client = client_with(&auth);
    let url = format!("{}/api", server.uri());

    // a1 is rejected, a2 comes back without a refresh token, and is rejected too (one retry only).
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let kept = auth.tokens().unwrap();
    assert_eq!(kept.access_token().secret(), "a2");
    assert_eq!(kept.refresh_token().map(|r| r.secret()), Some("r1"), "the old refresh token is kept");

    // The next request refreshes with r1 again, gets a3, and keeps r1 once more.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(auth.tokens().unwrap().refresh_token().map(|r| r.secret()), Some("r1"));
    let presented: Vec<_> =
        received_on(&server, "/token").await.iter().map(|r| form_fields(r)["refresh_token"].clone()).collect();
    assert_eq!(presented, ["r1", "r1"]);
    server.verify().await;
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_is_not_followed_and_fails_the_refresh() {
    for status in [302_u16, 307, 308] {
        let (server, elsewhere) = (MockServer::start().await, MockServer::start().await);
        mount_api(&server).await;
        // 302 to another path of the same server; 307 and 308 (which would re-send the body, refresh
        // token and all) to another host.
        let target = match status {
            302 => format!("{}/token/v2", server.uri()),
            _ => format!("{}/steal", elsewhere.uri()),
        };
        Mock::given(path("/token"))
            .respond_with(ResponseTemplate::new(status).insert_header("location", target.as_str()))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/token/v2"))
            .respond_with(new_tokens())
            .named("same-host redirect target")
            .expect(0)
            .mount(&server)
            .await;
        Mock::given(path("/steal"))
            .respond_with(new_tokens())
            .named("other-host redirect target")
            .expect(0)
            .mount(&elsewhere)
            .await;
        let grant = RefreshTokenGrant::new(token_url(&server)).client_id("id").client_secret("secret");
        let auth = TokenRefresh::builder(grant)
            .initial_tokens(TokenSet::new("old").with_refresh_token("r1"))
            .allow_origin(server.uri())
            .build()
            .unwrap();

        let err = client_with(&auth).get(format!("{}/api", server.uri())).send().await.unwrap_err();

        match Error::from_middleware(&err) {
            Some(Error::Refresh { source: RefreshError::Protocol { status: got, .. }, .. }) => {
                assert_eq!(got.as_u16(), status, "the redirect itself is the answer");
            }
            other => panic!("{status}: expected a refresh error, got {other:?}"),
        }
        assert_eq!(received_on(&server, "/token").await.len(), 1, "{status}: one token call");
        assert!(received_on(&server, "/token/v2").await.is_empty(), "{status}: nothing sent to the target");
        assert!(elsewhere.received_requests().await.unwrap().is_empty(), "{status}: nothing sent to the target");
        assert_eq!(auth.tokens().unwrap().refresh_token().unwrap().secret(), "r1");
        server.verify().await;
        elsewhere.verify().await;
    }
}

/// Records the path of every request that passes it.
#[derive(Debug, Clone, Default)]
struct PathRecorder(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl Middleware for PathRecorder {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.0.lock().push(request.url().path().to_owned());
        next.run(request, extensions).await
    }
}

#[tokio::test]
async fn the_token_call_does_not_pass_through_the_clients_middleware_chain() {
    let server = MockServer::start().await;
    mount_api(&server).await;
    Mock::given(path("/token")).respond_with(new_tokens()).expect(1).mount(&server).await;
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(token_url(&server)))
        .initial_tokens(TokenSet::new("old").with_refresh_token("r1"))
        .allow_origin(server.uri())
        .build()
        .unwrap();
    let (before, after) = (PathRecorder::default(), PathRecorder::default());
    let client =
        ClientBuilder::new(reqwest::Client::new()).with(before.clone()).with(auth.clone()).with(after.clone()).build();

    let response = client.get(format!("{}/api", server.uri())).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(*before.0.lock(), ["/api"], "the middleware before the layer sees the caller's request once");
    assert_eq!(*after.0.lock(), ["/api", "/api"], "the one after it sees the send and the retry, never /token");
    assert_eq!(received_on(&server, "/token").await.len(), 1);
    server.verify().await;
}

#[tokio::test]
async fn client_credentials_gets_a_new_token_on_401_without_any_refresh_token() {
    let server = MockServer::start().await;
    mount_api(&server).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("authorization", "Basic Y2xpZW50OlNFQ1JFVC1DTElFTlQtMQ=="))
        .and(form_is(&[("grant_type", "client_credentials"), ("scope", "read:partner")]))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "new", "token_type": "Bearer", "expires_in": 3600
        })))
        .expect(1)
        .mount(&server)
        .await;
    let source = ClientCredentials::new(token_url(&server))
        .client_id("client")
        .client_secret("SECRET-CLIENT-1")
        .scope("read:partner");
    // The service's current token, as a client-credentials grant issues it: no refresh token.
    let auth =
        TokenRefresh::builder(source).initial_tokens(TokenSet::new("old")).allow_origin(server.uri()).build().unwrap();

    let response = client_with(&auth).get(format!("{}/api", server.uri())).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let tokens = auth.tokens().unwrap();
    assert_eq!(tokens.access_token().secret(), "new");
    assert!(tokens.refresh_token().is_none());
    let stats = auth.stats();
    assert_eq!((stats.refreshes, stats.retries), (1, 1), "{stats:?}");
    server.verify().await;
}

#[tokio::test]
async fn client_credentials_needs_no_initial_tokens_and_fetches_one_before_the_first_request() {
    let provider = MockProvider::builder().client_credentials("partner", "hush").start().await;
    let source = ClientCredentials::new(provider.token_url())
        .client_id("partner")
        .client_secret("hush")
        .client_auth(ClientAuth::RequestBody)
        .encoding(BodyEncoding::Json)
        .scope("read:partner")
        .api_origin(provider.uri());
    let auth = TokenRefresh::builder(source).build().unwrap();
    let client = client_with(&auth);

    for _ in 0..3 {
        assert_eq!(client.get(provider.api_url("v1/partner")).send().await.unwrap().status(), 200);
    }

    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.api_unauthorized), (1, 1, 0), "{stats:?}");
    assert_eq!(auth.tokens().unwrap().scope(), Some("read:partner"));
}

#[tokio::test]
async fn a_clock_given_once_to_the_layer_also_dates_what_the_grant_fetches() {
    // A day in the past: a grant reading the system clock would date its tokens a day too late.
    let clock = reqwest_token_refresh::ManualClock::new(std::time::SystemTime::now() - Duration::from_secs(86_400));
    let provider = MockProvider::builder().clock(clock.clone()).start().await;
    let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()))
        .initial_tokens(provider.issue_expired_tokens())
        .clock(clock.clone())
        .allow_origin(provider.uri())
        .build()
        .unwrap();
    let token = tokio::time::timeout(Duration::from_secs(10), auth.access_token()).await.unwrap().unwrap();
    assert_eq!(Some(token.secret()), auth.tokens().as_ref().map(|t| t.access_token().secret()));
    let expires_at = auth.tokens().unwrap().expires_at().expect("the mock sends expires_in");
    assert_eq!(expires_at, clock.now() + Duration::from_secs(3600), "expiry counted from the layer's clock");
    // An hour later by that clock the token is due, and the next request refreshes it first.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(client_with(&auth).get(provider.api_url("me")).send().await.unwrap().status(), 200);
    assert_eq!(provider.stats().token_calls, 2);
    // Outside a layer (a login's exchange, say) a grant without a clock reads the system's.
    let outside = RefreshTokenGrant::new(provider.token_url());
    let fetched = outside.fetch(auth.tokens().as_ref()).await.unwrap();
    let lifetime = fetched.expires_at().unwrap().duration_since(std::time::SystemTime::now()).unwrap();
    assert!(lifetime > Duration::from_secs(3500), "{lifetime:?}");
}

//! MCP discovery over loopback: from a resource server's 401 through its protected resource
//! metadata (RFC 9728) to its authorization server's metadata, every step checked (the resource,
//! the issuer, https, redirects, size and time), and resource indicators (RFC 8707) on the
//! authorization URL, the code exchange and every refresh, which the mock refuses without.

use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;
use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{
    BodyEncoding, ClientCredentials, Discovery, DiscoveryError, LoginError, ProtectedResource, RefreshError,
    RefreshTokenGrant, ResourceMetadata, TokenRefresh, TokenSource,
};
use serde_json::json;
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::discovery::never_ending_server;
use crate::helpers::client_with;

const BOUND: Duration = Duration::from_secs(10);
const REDIRECT: &str = "http://127.0.0.1:1/callback";

/// A mock MCP server and its authorization server on one origin: the API's `/api/mcp` is the
/// protected resource, and token requests must name it.
async fn mcp_provider() -> MockProvider {
    MockProvider::builder()
        .client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .protected_resource("/api/mcp")
        .require_resource_indicator(true)
        .start()
        .await
}

/// The first request an MCP client makes, without a token: its 401's headers.
async fn first_401(url: &str) -> HeaderMap {
    let answer = timeout(BOUND, reqwest::Client::new().post(url).send()).await.unwrap().unwrap();
    assert_eq!(answer.status(), 401);
    answer.headers().clone()
}

async fn paths(server: &MockServer) -> Vec<String> {
    server.received_requests().await.unwrap().iter().map(|r| r.url.path().to_owned()).collect()
}

/// Every `resource` of a form-encoded token request.
fn resources(request: &Request) -> Vec<String> {
    form_urlencoded::parse(&request.body).filter(|(name, _)| name == "resource").map(|(_, v)| v.into_owned()).collect()
}

fn invalid_target(err: &RefreshError) -> bool {
    err.oauth_error().is_some_and(|e| e.error == "invalid_target")
}

#[tokio::test]
async fn a_401_leads_through_the_resource_metadata_to_the_authorization_servers_metadata() {
    let provider = mcp_provider().await;
    let headers = first_401(&provider.api_url("mcp")).await;
    let challenge = headers.get(WWW_AUTHENTICATE).unwrap().to_str().unwrap();
    assert!(challenge.contains(&format!("resource_metadata=\"{}\"", provider.resource_metadata_url())), "{challenge}");

    let metadata =
        timeout(BOUND, ResourceMetadata::from_challenge(provider.api_url("mcp"), &headers)).await.unwrap().unwrap();

    assert_eq!(metadata.resource(), provider.resource());
    assert_eq!(metadata.url(), provider.resource_metadata_url());
    assert_eq!(metadata.authorization_servers(), [provider.issuer()]);
    assert_eq!(metadata.bearer_methods_supported(), ["header"]);
    assert_eq!(metadata.challenge_scope(), None);
    let server = metadata.authorization_server();
    assert_eq!(server.issuer(), provider.issuer());
    assert_eq!(server.token_endpoint(), provider.token_url());
    assert_eq!(server.authorization_endpoint(), Some(provider.authorize_url().as_str()));
    assert_eq!(provider.stats().resource_metadata_served, 1);
    assert_eq!(
        paths(provider.server()).await,
        ["/api/mcp", "/.well-known/oauth-protected-resource/api/mcp", "/.well-known/oauth-authorization-server"],
        "the challenge's URL, then the authorization server's first location: nothing else"
    );
}

#[tokio::test]
async fn resource_is_sent_on_the_authorization_url_the_code_exchange_and_every_refresh() {
    let provider = mcp_provider().await;
    let headers = first_401(&provider.api_url("mcp")).await;
    let metadata = timeout(BOUND, ProtectedResource::new(provider.api_url("mcp")).challenge(&headers).fetch())
        .await
        .unwrap()
        .unwrap();
    let grant = metadata.refresh_token_grant().client_id(MOCK_CLIENT_ID).client_secret(MOCK_CLIENT_SECRET);

    let login = grant.login(REDIRECT).unwrap();
    let (url, pending) = login.start().unwrap();
    let sent: Vec<String> = url.query_pairs().filter(|(n, _)| n == "resource").map(|(_, v)| v.into_owned()).collect();
    assert_eq!(sent, [provider.resource()], "{url}");
    let callback = timeout(BOUND, provider.approve(&url)).await.unwrap();
    let tokens = timeout(BOUND, login.exchange(&pending, &callback)).await.unwrap().expect("the code is exchanged");

    let auth = TokenRefresh::builder(grant).initial_tokens(tokens).build().expect("the resource's origin is allowed");
    let client = client_with(&auth);
    for round in 0..3 {
        provider.expire_access_tokens();
        let answer = timeout(BOUND, client.post(provider.api_url("mcp")).send()).await.unwrap().unwrap();
        assert_eq!(answer.status(), 200, "round {round}");
    }

    let stats = provider.stats();
    assert_eq!(stats.token_calls, 4, "one code exchange, three refreshes");
    assert_eq!(stats.invalid_targets, 0);
    assert_eq!(stats.resource_indicators, 5, "the authorization request and every token call");
    let requests = provider.token_requests();
    let grant_types: Vec<String> = requests
        .iter()
        .map(|r| form_urlencoded::parse(&r.body).find(|(n, _)| n == "grant_type").unwrap().1.into_owned())
        .collect();
    assert_eq!(grant_types, ["authorization_code", "refresh_token", "refresh_token", "refresh_token"]);
    for request in &requests {
        assert_eq!(resources(request), [provider.resource()], "{}", String::from_utf8_lossy(&request.body));
    }
}

#[tokio::test]
async fn the_mock_answers_invalid_target_to_a_request_without_the_resource_or_with_another() {
    let provider = MockProvider::builder().require_resource_indicator(true).start().await;
    let tokens = provider.issue_tokens();
    let refresh = RefreshTokenGrant::new(provider.token_url());

    let missing = timeout(BOUND, refresh.fetch(Some(&tokens))).await.unwrap().unwrap_err();
    assert!(invalid_target(&missing), "{missing:?}");
    let other = refresh.clone().resource("https://other.example/mcp");
    let wrong = timeout(BOUND, other.fetch(Some(&tokens))).await.unwrap().unwrap_err();
    assert!(invalid_target(&wrong), "{wrong:?}");
    let extra = refresh.clone().resource(provider.resource()).resource("https://other.example/mcp");
    let extra = timeout(BOUND, extra.fetch(Some(&tokens))).await.unwrap().unwrap_err();
    assert!(invalid_target(&extra), "two resources, one unknown: {extra:?}");
    // Refused before the grant was looked at: the refresh token is not spent.
    let refreshed = timeout(BOUND, refresh.clone().resource(provider.resource()).fetch(Some(&tokens))).await.unwrap();
    assert!(refreshed.is_ok(), "{refreshed:?}");

    let credentials = ClientCredentials::new(provider.token_url());
    let missing = timeout(BOUND, credentials.fetch(None)).await.unwrap().unwrap_err();
    assert!(invalid_target(&missing), "{missing:?}");
    let json = credentials.resource(provider.resource()).encoding(BodyEncoding::Json);
    assert!(timeout(BOUND, json.fetch(None)).await.unwrap().is_ok(), "a JSON body names it too");
    let two = json.resource("https://other.example/mcp");
    let two = timeout(BOUND, two.fetch(None)).await.unwrap().unwrap_err();
    assert!(invalid_target(&two), "an array of two, one unknown: {two:?}");
    let body = String::from_utf8(provider.token_requests().last().unwrap().body.clone()).unwrap();
    assert!(body.contains(&format!(r#""resource":["{}","https://other.example/mcp"]"#, provider.resource())), "{body}");

    let login = refresh.clone().authorize_url(provider.authorize_url()).login(REDIRECT).unwrap();
    let (url, pending) = login.start().unwrap();
    let callback = timeout(BOUND, provider.approve(&url)).await.unwrap();
    let denied = timeout(BOUND, login.exchange(&pending, &callback)).await.unwrap().unwrap_err();
    assert!(matches!(&denied, LoginError::Denied { error, .. } if error == "invalid_target"), "{denied:?}");

    let stats = provider.stats();
    assert_eq!(stats.invalid_targets, 6, "{stats:?}");
    assert_eq!(stats.resource_indicators, 5, "{stats:?}");
    assert_eq!(stats.token_calls, 7, "{stats:?}");
    assert_eq!(stats.tokens_issued, 2, "{stats:?}");
}

#[tokio::test]
async fn a_resource_that_is_not_an_absolute_uri_without_a_fragment_is_refused_before_anything_is_sent() {
    let provider = MockProvider::start().await;
    let grant = RefreshTokenGrant::new(provider.token_url()).resource("https://mcp.example/mcp#tools");
    let err = timeout(BOUND, grant.fetch(Some(&provider.issue_tokens()))).await.unwrap().unwrap_err();
    assert!(matches!(&err, RefreshError::Config(why) if why.contains("fragment")), "{err:?}");
    let login = grant.authorize_url(provider.authorize_url()).login(REDIRECT).unwrap().resource("/relative");
    assert!(matches!(login.start(), Err(LoginError::Config(_))));
    assert_eq!(provider.stats().token_calls, 0);
}

#[tokio::test]
async fn without_resource_metadata_in_the_401_the_well_known_paths_are_tried_in_the_mcp_order() {
    let server = MockServer::start().await;
    let resource = format!("{}/public/mcp", server.uri());
    let issuer = format!("{}/tenants/acme", server.uri());
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-protected-resource"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "resource": resource,
            "authorization_servers": [issuer],
            "scopes_supported": ["files:read", "files:write"],
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/tenants/acme/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/token"),
            "authorization_endpoint": format!("{issuer}/authorize"),
        })))
        .mount(&server)
        .await;
    let mut headers = HeaderMap::new();
    headers.insert(
        WWW_AUTHENTICATE,
        r#"Bearer realm="mcp", error="insufficient_scope", scope="files:read""#.parse().unwrap(),
    );

    let metadata = timeout(BOUND, ResourceMetadata::from_challenge(&resource, &headers)).await.unwrap().unwrap();

    assert_eq!(metadata.url(), format!("{}/.well-known/oauth-protected-resource", server.uri()));
    assert_eq!(metadata.scopes_supported(), ["files:read", "files:write"]);
    assert_eq!(metadata.challenge_scope(), Some("files:read"));
    assert_eq!(metadata.authorization_server().token_endpoint(), format!("{issuer}/token"));
    assert_eq!(
        paths(&server).await,
        [
            "/.well-known/oauth-protected-resource/public/mcp",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-authorization-server/tenants/acme",
            "/.well-known/openid-configuration/tenants/acme",
            "/tenants/acme/.well-known/openid-configuration",
        ]
    );
    // The challenge's scope wins over scopes_supported, and the resource rides along.
    let shown = format!("{:?}", metadata.refresh_token_grant());
    assert!(
        shown.contains(r#"scopes: ["files:read"]"#) && shown.contains(&format!("resources: [{resource:?}]")),
        "{shown}"
    );
}

#[tokio::test]
async fn a_metadata_document_for_another_resource_is_refused() {
    let provider = MockProvider::builder()
        .protected_resource("/api/mcp")
        .protected_resource_field("resource", json!("https://evil.example/api/mcp"))
        .start()
        .await;
    let err = timeout(BOUND, ResourceMetadata::discover(provider.resource())).await.unwrap().unwrap_err();
    match &err {
        DiscoveryError::ResourceMismatch { expected, found } => {
            assert_eq!(expected, &provider.resource());
            assert_eq!(found, "https://evil.example/api/mcp");
        }
        other => panic!("expected ResourceMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("refused"), "{err}");

    // The root document describes /api/mcp, not /api/other: refused too, and no authorization
    // server is asked.
    let provider = MockProvider::builder().protected_resource("/api/mcp").start().await;
    let other = provider.api_url("other");
    let err = timeout(BOUND, ResourceMetadata::discover(&other)).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::ResourceMismatch { found, .. } if *found == provider.resource()), "{err:?}");
    assert_eq!(
        paths(provider.server()).await,
        ["/.well-known/oauth-protected-resource/api/other", "/.well-known/oauth-protected-resource"]
    );
}

#[tokio::test]
async fn an_authorization_server_naming_another_issuer_is_refused() {
    let provider = MockProvider::builder()
        .protected_resource("/api/mcp")
        .metadata_field("issuer", json!("https://impostor.example"))
        .start()
        .await;
    let headers = first_401(&provider.api_url("mcp")).await;
    let err =
        timeout(BOUND, ResourceMetadata::from_challenge(provider.resource(), &headers)).await.unwrap().unwrap_err();
    match err {
        DiscoveryError::IssuerMismatch { expected, found } => {
            assert_eq!(expected, provider.issuer());
            assert_eq!(found, "https://impostor.example");
        }
        other => panic!("expected IssuerMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_huge_resource_metadata_document_is_cut_at_the_limit() {
    let server = MockServer::start().await;
    let huge = format!(r#"{{"resource":"{}/mcp","padding":"{}"}}"#, server.uri(), "x".repeat(4 * 1024 * 1024));
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(huge, "application/json"))
        .mount(&server)
        .await;
    let resource = format!("{}/mcp", server.uri());

    let err = timeout(BOUND, ResourceMetadata::discover(&resource)).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::TooLarge { limit: 65_536, .. }), "{err:?}");
    let small = ProtectedResource::new(&resource).max_response_bytes(1024);
    let err = timeout(BOUND, small.fetch()).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::TooLarge { limit: 1024, .. }), "{err:?}");
}

#[tokio::test]
async fn a_resource_metadata_document_that_never_ends_times_out() {
    let origin = never_ending_server().await;
    let started = Instant::now();
    let discovery = ProtectedResource::new(format!("{origin}/mcp")).timeout(Duration::from_millis(300));

    let err = timeout(BOUND, discovery.fetch()).await.expect("bounded by the discovery's own timeout").unwrap_err();

    match &err {
        DiscoveryError::TimedOut { url, after } => {
            assert_eq!(*after, Duration::from_millis(300));
            assert!(url.ends_with("/.well-known/oauth-protected-resource/mcp"), "{url}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn plain_http_to_a_host_that_is_not_loopback_is_refused() {
    let started = Instant::now();
    let err = timeout(BOUND, ResourceMetadata::discover("http://mcp.example/mcp")).await.unwrap().unwrap_err();
    assert!(matches!(err, DiscoveryError::InvalidResource { .. }), "{err:?}");

    let server = MockServer::start().await;
    let mut headers = HeaderMap::new();
    let challenge = r#"Bearer resource_metadata="http://mcp.example/.well-known/oauth-protected-resource""#;
    headers.insert(WWW_AUTHENTICATE, challenge.parse().unwrap());
    let from_challenge = ResourceMetadata::from_challenge(format!("{}/mcp", server.uri()), &headers);
    let err = timeout(BOUND, from_challenge).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::InvalidMetadataUrl { url, .. } if url.starts_with("http://mcp.example")));
    assert!(started.elapsed() < Duration::from_secs(1), "refused before any fetch");
    assert!(paths(&server).await.is_empty());

    // An authorization server listed with plain http.
    let provider = MockProvider::builder()
        .protected_resource("/api/mcp")
        .protected_resource_field("authorization_servers", json!(["http://as.example"]))
        .start()
        .await;
    let err = timeout(BOUND, ResourceMetadata::discover(provider.resource())).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::InvalidIssuer { issuer, .. } if issuer == "http://as.example"), "{err:?}");
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_refused_and_one_within_the_origin_followed() {
    let provider = MockProvider::start().await;
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    let resource = format!("{}/mcp", server.uri());
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-protected-resource/mcp"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/.well-known/oauth-protected-resource/mcp", elsewhere.uri())),
        )
        .mount(&server)
        .await;

    let err = timeout(BOUND, ResourceMetadata::discover(&resource)).await.unwrap().unwrap_err();
    match &err {
        DiscoveryError::CrossOriginRedirect { url, location } => {
            assert_eq!(url, &format!("{}/.well-known/oauth-protected-resource/mcp", server.uri()));
            assert!(location.starts_with(&elsewhere.uri()), "{location}");
        }
        other => panic!("expected CrossOriginRedirect, got {other:?}"),
    }
    assert!(paths(&elsewhere).await.is_empty(), "the other origin is never asked");

    // Within the origin, a moved document is followed (a relative Location too).
    let server = MockServer::start().await;
    let resource = format!("{}/mcp", server.uri());
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-protected-resource/mcp"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", "/metadata/mcp.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/metadata/mcp.json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"resource": resource, "authorization_servers": [provider.issuer()]})),
        )
        .mount(&server)
        .await;
    let metadata = timeout(BOUND, ResourceMetadata::discover(&resource)).await.unwrap().unwrap();
    assert_eq!(metadata.url(), format!("{}/metadata/mcp.json", server.uri()));
    assert_eq!(metadata.authorization_server().token_endpoint(), provider.token_url());

    // The authorization server's metadata too.
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", provider.issuer().as_str()))
        .mount(&elsewhere)
        .await;
    let err = timeout(BOUND, Discovery::new(elsewhere.uri()).fetch()).await.unwrap().unwrap_err();
    assert!(matches!(err, DiscoveryError::CrossOriginRedirect { .. }), "{err:?}");
}

#[tokio::test]
async fn a_grant_from_discovery_sends_the_token_to_the_resources_origin_only() {
    let provider = mcp_provider().await;
    let metadata = timeout(BOUND, ResourceMetadata::discover(provider.resource())).await.unwrap().unwrap();
    let grant = metadata.client_credentials().client_id(MOCK_CLIENT_ID).client_secret(MOCK_CLIENT_SECRET);
    let auth = TokenRefresh::builder(grant).build().expect("the resource's origin is allowed");
    let client = client_with(&auth);
    let answer = timeout(BOUND, client.post(provider.api_url("mcp")).send()).await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let other = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).mount(&other).await;
    timeout(BOUND, client.get(other.uri()).send()).await.unwrap().unwrap();
    assert!(!other.received_requests().await.unwrap()[0].headers.contains_key("authorization"));
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.invalid_targets), (1, 0), "{stats:?}");
    assert_eq!(resources(&provider.token_requests()[0]), [provider.resource()]);
}

#[tokio::test]
async fn a_dialect_whose_401_has_no_challenge_gets_one_naming_the_metadata() {
    let provider = MockProvider::builder()
        .dialect(reqwest_token_refresh::testkit::Dialect::Kroger)
        .protected_resource("/api/mcp")
        .start()
        .await;
    let headers = first_401(&provider.api_url("mcp")).await;
    let challenge = headers.get(WWW_AUTHENTICATE).unwrap().to_str().unwrap();
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{}\"", provider.resource_metadata_url()));
    let metadata =
        timeout(BOUND, ResourceMetadata::from_challenge(provider.resource(), &headers)).await.unwrap().unwrap();
    assert_eq!(metadata.authorization_server().token_endpoint(), provider.token_url());
}

#[tokio::test]
async fn a_redirect_loop_within_the_origin_or_a_body_that_is_not_json_is_no_document() {
    let server = MockServer::start().await;
    let inserted = "/.well-known/oauth-protected-resource/mcp";
    Mock::given(method("GET"))
        .and(path(inserted))
        .respond_with(ResponseTemplate::new(302).insert_header("location", inserted))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-protected-resource"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"resource": "#, "application/json"))
        .mount(&server)
        .await;

    let err = timeout(BOUND, ResourceMetadata::discover(format!("{}/mcp", server.uri()))).await.unwrap().unwrap_err();

    match err {
        DiscoveryError::NotFound { tried, status } => {
            assert_eq!(
                tried,
                [
                    format!("{}{inserted}", server.uri()),
                    format!("{}/.well-known/oauth-protected-resource", server.uri())
                ]
            );
            assert_eq!(status, 200, "the last location's");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let fetched = paths(&server).await;
    assert_eq!(fetched.iter().filter(|p| *p == inserted).count(), 4, "the first fetch and 3 redirects: {fetched:?}");
    assert_eq!(fetched.len(), 5, "{fetched:?}");
}

/// A login from `grant`: whether it may start, and if not the methods the refusal names.
fn pkce_verdict(grant: &RefreshTokenGrant) -> Result<(), Option<Vec<String>>> {
    match grant.login(REDIRECT) {
        Ok(_) => Ok(()),
        Err(LoginError::PkceUnsupported { methods }) => Err(methods),
        Err(other) => panic!("{other:?}"),
    }
}

/// A mock MCP server whose authorization server lists `methods` as its
/// `code_challenge_methods_supported` (`Value::Null`: not at all); its grants from RFC 8414
/// discovery alone and from the MCP path.
async fn grants_with_pkce_methods(methods: serde_json::Value) -> (RefreshTokenGrant, RefreshTokenGrant) {
    let provider = MockProvider::builder()
        .protected_resource("/api/mcp")
        .metadata_field("code_challenge_methods_supported", methods)
        .start()
        .await;
    let plain = timeout(BOUND, Discovery::new(provider.issuer()).fetch()).await.unwrap().unwrap();
    let mcp = timeout(BOUND, ResourceMetadata::discover(provider.api_url("mcp"))).await.unwrap().unwrap();
    assert_eq!(plain.code_challenge_methods_supported(), mcp.authorization_server().code_challenge_methods_supported());
    (plain.refresh_token_grant().client_id("c"), mcp.refresh_token_grant().client_id("c"))
}

#[tokio::test]
async fn an_mcp_login_is_refused_when_the_authorization_server_does_not_list_pkce() {
    let (plain, mcp) = grants_with_pkce_methods(serde_json::Value::Null).await;

    assert_eq!(pkce_verdict(&mcp), Err(None), "the MCP specification: absent means refuse to proceed");
    assert_eq!(pkce_verdict(&plain), Ok(()), "plain RFC 8414 discovery does not require the list");
    let refused = mcp.login(REDIRECT).unwrap_err().to_string();
    assert!(refused.contains("has no code_challenge_methods_supported"), "{refused}");
}

#[tokio::test]
async fn a_login_is_refused_on_both_paths_when_the_listed_pkce_methods_lack_s256() {
    let (plain, mcp) = grants_with_pkce_methods(json!(["plain"])).await;

    assert_eq!(pkce_verdict(&mcp), Err(Some(vec!["plain".to_owned()])));
    assert_eq!(pkce_verdict(&plain), Err(Some(vec!["plain".to_owned()])));
    let refused = plain.login(REDIRECT).unwrap_err().to_string();
    assert!(refused.contains(r#"["plain"] without S256"#), "{refused}");

    let (plain, mcp) = grants_with_pkce_methods(json!(["plain", "S256"])).await;
    assert_eq!((pkce_verdict(&plain), pkce_verdict(&mcp)), (Ok(()), Ok(())));
}

#[tokio::test]
async fn a_hand_configured_grant_is_not_checked_for_pkce() {
    let grant = RefreshTokenGrant::new("https://as.example/token").authorize_url("https://as.example/authorize");
    assert_eq!(pkce_verdict(&grant), Ok(()));
}

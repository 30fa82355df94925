//! Discovery (RFC 8414, falling back to OpenID Connect Discovery 1.0) over loopback: the mock
//! provider's metadata made into a working grant, the well-known segment of an issuer with a path,
//! the fallback, and the documents that must be refused (another issuer, plain http) or cut short
//! (one too large, one that never ends), each with its typed error within a bounded time.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{ClientAuth, Discovery, DiscoveryError, ServerMetadata, TokenRefresh};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{client_with, count, storm};

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_grant_built_from_the_mocks_metadata_refreshes_a_storm_once() {
    let provider = MockProvider::builder()
        .client_credentials("client", "secret")
        .metadata_field("revocation_endpoint", json!("http://127.0.0.1:1/oauth/revoke"))
        .metadata_field("dpop_signing_alg_values_supported", json!(["ES256", "RS256"]))
        .start()
        .await;

    let metadata = timeout(BOUND, ServerMetadata::discover(provider.issuer())).await.unwrap().expect("discovered");

    assert_eq!(metadata.issuer(), provider.issuer());
    assert_eq!(metadata.url(), format!("{}/.well-known/oauth-authorization-server", provider.uri()));
    assert_eq!(metadata.token_endpoint(), provider.token_url());
    assert_eq!(metadata.authorization_endpoint(), Some(provider.authorize_url().as_str()));
    assert_eq!(metadata.revocation_endpoint(), Some("http://127.0.0.1:1/oauth/revoke"));
    assert_eq!(metadata.token_endpoint_auth_methods_supported(), ["client_secret_basic", "client_secret_post"]);
    assert_eq!(metadata.dpop_signing_alg_values_supported(), ["ES256", "RS256"]);
    assert_eq!(metadata.document()["code_challenge_methods_supported"], json!(["S256"]));

    let grant = metadata.refresh_token_grant().client_id("client").client_secret("secret").api_origin(provider.uri());
    let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_expired_tokens()).build().unwrap();
    let statuses = timeout(BOUND * 3, storm(&client_with(&auth), &provider.api_url("v1/me"), 50, None)).await.unwrap();
    assert_eq!(count(&statuses, 200), 50);
    assert_eq!(provider.stats().token_calls, 1);
    assert!(provider.token_requests()[0].headers.contains_key("authorization"), "HTTP Basic, as the server prefers");
}

#[tokio::test]
async fn a_whoop_style_server_that_takes_the_secret_in_the_body_gets_it_there() {
    let provider = MockProvider::whoop().await;
    let metadata = timeout(BOUND, ServerMetadata::discover(provider.issuer())).await.unwrap().unwrap();
    assert_eq!(metadata.token_endpoint_auth_methods_supported(), ["client_secret_post"]);
    let shown = format!("{:?}", metadata.client_credentials());
    assert!(shown.contains(&format!("{:?}", ClientAuth::RequestBody)), "{shown}");
}

#[tokio::test]
async fn an_issuer_with_a_path_is_looked_up_with_the_well_known_segment_before_the_path() {
    let server = MockServer::start().await;
    let issuer = format!("{}/tenants/acme", server.uri());
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server/tenants/acme"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": issuer,
            "token_endpoint": format!("{}/tenants/acme/token", server.uri()),
        })))
        .expect(1)
        .mount(&server)
        .await;

    let metadata =
        timeout(BOUND, ServerMetadata::discover(&issuer)).await.unwrap().expect("found at the RFC 8414 place");

    assert_eq!(metadata.token_endpoint(), format!("{}/tenants/acme/token", server.uri()));
    assert_eq!(metadata.token_endpoint_auth_methods_supported(), ["client_secret_basic"], "RFC 8414's default");
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "found at the first place: no second fetch");
}

#[tokio::test]
async fn without_an_rfc_8414_document_the_openid_configuration_is_used() {
    let provider = MockProvider::start().await;
    // The RFC 8414 location answers with a catch-all HTML page, as many servers do.
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("<html>not here</html>", "text/html"))
        .mount(provider.server())
        .await;

    let metadata = timeout(BOUND, ServerMetadata::discover(provider.issuer())).await.unwrap().expect("fell back");

    assert_eq!(metadata.url(), format!("{}/.well-known/openid-configuration", provider.uri()));
    assert_eq!(metadata.token_endpoint(), provider.token_url());
    let paths: Vec<String> =
        provider.server().received_requests().await.unwrap().iter().map(|r| r.url.path().to_owned()).collect();
    assert_eq!(paths, ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]);
}

#[tokio::test]
async fn neither_location_having_a_document_is_not_found_naming_both() {
    let server = MockServer::start().await;
    let err = timeout(BOUND, ServerMetadata::discover(server.uri())).await.unwrap().unwrap_err();
    match err {
        DiscoveryError::NotFound { tried, status } => {
            assert_eq!(status, 404);
            assert_eq!(
                tried,
                [
                    format!("{}/.well-known/oauth-authorization-server", server.uri()),
                    format!("{}/.well-known/openid-configuration", server.uri())
                ]
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_document_naming_another_issuer_is_refused() {
    let provider = MockProvider::builder().metadata_field("issuer", json!("https://impostor.example")).start().await;
    let err = timeout(BOUND, ServerMetadata::discover(provider.issuer())).await.unwrap().unwrap_err();
    match &err {
        DiscoveryError::IssuerMismatch { expected, found } => {
            assert_eq!(expected, &provider.issuer());
            assert_eq!(found, "https://impostor.example");
        }
        other => panic!("expected IssuerMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("refused"), "{err}");
    // The same issuer with a trailing slash is another string: refused too (RFC 8414 §3.3).
    let provider = MockProvider::start().await;
    let slashed = format!("{}/", provider.issuer());
    let err = timeout(BOUND, ServerMetadata::discover(&slashed)).await.unwrap().unwrap_err();
    assert!(matches!(err, DiscoveryError::IssuerMismatch { .. }), "{slashed}: {err:?}");
}

#[tokio::test]
async fn plain_http_is_refused_for_the_issuer_and_for_the_endpoints_unless_loopback() {
    let started = Instant::now();
    let err = Discovery::new("http://idp.example").fetch().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::InvalidIssuer { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "refused before any fetch");

    let provider =
        MockProvider::builder().metadata_field("token_endpoint", json!("http://idp.example/oauth/token")).start().await;
    let err = timeout(BOUND, ServerMetadata::discover(provider.issuer())).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::InsecureEndpoint { name, .. } if name == "token_endpoint"), "{err:?}");
}

#[tokio::test]
async fn a_huge_document_is_cut_at_the_limit_with_a_typed_error() {
    let server = MockServer::start().await;
    let huge = format!(r#"{{"issuer":"{}","padding":"{}"}}"#, server.uri(), "x".repeat(4 * 1024 * 1024));
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(huge, "application/json"))
        .mount(&server)
        .await;

    let err = timeout(BOUND, ServerMetadata::discover(server.uri())).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::TooLarge { limit: 65_536, .. }), "{err:?}");

    let small = Discovery::new(server.uri()).max_response_bytes(1024);
    let err = timeout(BOUND, small.fetch()).await.unwrap().unwrap_err();
    assert!(matches!(&err, DiscoveryError::TooLarge { limit: 1024, .. }), "{err:?}");
}

/// A server whose every answer is `200` and a JSON body that never ends: a byte every 20 ms, for
/// a minute at most (far past any bound the test waits for).
pub(crate) async fn never_ending_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    let first = futures::stream::once(async {
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{\"issuer\":\"")))
                    });
                    let trickle = futures::stream::unfold(0u32, |sent| async move {
                        if sent >= 3_000 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"a"))), sent + 1))
                    });
                    let body = StreamBody::new(futures::StreamExt::chain(first, trickle));
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(body)
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_document_that_never_ends_times_out_with_a_typed_error() {
    let issuer = never_ending_server().await;
    let started = Instant::now();

    let err = timeout(BOUND, Discovery::new(&issuer).timeout(Duration::from_millis(300)).fetch())
        .await
        .expect("bounded by the discovery's own timeout")
        .unwrap_err();

    match &err {
        DiscoveryError::TimedOut { url, after } => {
            assert_eq!(*after, Duration::from_millis(300));
            assert!(url.ends_with("/.well-known/oauth-authorization-server"), "{url}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

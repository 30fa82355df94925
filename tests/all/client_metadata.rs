//! OAuth Client ID Metadata Documents against the mock: a client named by the URL of its own
//! metadata document (hosted by a wiremock server here) logs in and refreshes as a public client;
//! the mock fetches the document once and refuses one that names another client, does not list
//! the redirect URI, is not JSON, is too big or never ends; URLs the draft refuses are refused
//! before anything is sent.

use std::time::Duration;

use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    ClientMetadataDocument, ClientMetadataError, Discovery, Error, Login, RefreshTokenGrant, ServerMetadata,
    TokenRefresh, TokenSet,
};
use serde_json::{Value, json};
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::discovery::never_ending_server;
use crate::helpers::client_with;

/// Far above a loopback round trip, and above the mock's 5-second fetch of a document.
const BOUND: Duration = Duration::from_secs(20);
const REDIRECT: &str = "http://127.0.0.1:33418/callback";
const DOCUMENT_PATH: &str = "/oauth/client.json";

async fn metadata(provider: &MockProvider) -> ServerMetadata {
    timeout(BOUND, Discovery::new(provider.issuer()).fetch()).await.unwrap().expect("the mock's metadata")
}

/// The document's URL on `server`.
fn document_url(server: &MockServer) -> String {
    format!("{}{DOCUMENT_PATH}", server.uri())
}

/// A server of the client's own, hosting at [`DOCUMENT_PATH`] what `body` makes of the
/// document's URL; and that URL.
async fn host(body: impl FnOnce(&str) -> ResponseTemplate) -> (MockServer, String) {
    let server = MockServer::start().await;
    let url = document_url(&server);
    Mock::given(method("GET")).and(path(DOCUMENT_PATH)).respond_with(body(&url)).mount(&server).await;
    (server, url)
}

/// [`host`] serving the valid document of [`document_for`] the URL.
async fn host_valid() -> (MockServer, String) {
    host(|url| json_body(&document_for(url).document().unwrap())).await
}

/// What a client's server answers, made from its document's URL.
type Hosted = fn(&str) -> ResponseTemplate;

fn json_body(document: &Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(document.to_string(), "application/json")
}

fn document_for(url: &str) -> ClientMetadataDocument {
    ClientMetadataDocument::new(url).client_name("metadata document test").redirect_uri(REDIRECT)
}

async fn grant_for(provider: &MockProvider, me: &ClientMetadataDocument) -> RefreshTokenGrant {
    metadata(provider).await.refresh_token_grant().registered_client(me.client().unwrap()).api_origin(provider.uri())
}

/// Asserts that the authorization endpoint refuses `login` to the user's face (400, never a
/// redirect) with a page that says `reason`.
async fn assert_refused(login: &Login, reason: &str) {
    let (url, _) = login.start().unwrap();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let answer = timeout(BOUND, browser.get(url).send()).await.expect("the authorize endpoint hung").unwrap();
    let (status, page) = (answer.status().as_u16(), answer.text().await.unwrap());
    assert_eq!(status, 400, "{reason}: {page}");
    assert!(page.contains(reason), "{reason}: {page}");
}

async fn log_in(provider: &MockProvider, login: &Login) -> TokenSet {
    let (url, pending) = login.start().unwrap();
    let callback = timeout(BOUND, provider.approve(&url)).await.expect("the authorize endpoint hung");
    timeout(BOUND, login.exchange(&pending, &callback)).await.expect("the exchange hung").expect("logged in")
}

fn form(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

async fn fetches_of(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

#[tokio::test]
async fn a_client_named_by_its_metadata_document_logs_in_and_refreshes_as_a_public_client() {
    let provider = MockProvider::builder().client_id_metadata_documents().start().await;
    let (server, url) = host_valid().await;
    let me = document_for(&url);
    assert!(metadata(&provider).await.client_id_metadata_document_supported());

    let grant = grant_for(&provider, &me).await;
    let login = grant.login(REDIRECT).unwrap();
    let tokens = log_in(&provider, &login).await;
    assert_eq!(tokens.client().map(|c| c.client_id()), Some(url.as_str()), "the tokens carry the client");
    assert_eq!(provider.stats().client_metadata_fetches, 1);
    let exchange = &provider.token_requests()[0];
    assert!(form(exchange).contains(&("client_id".into(), url.clone())), "named by its URL in the body");
    assert!(!form(exchange).iter().any(|(k, _)| k == "client_secret"));
    assert!(exchange.headers.get("authorization").is_none(), "a public client sends no credentials");

    let auth = TokenRefresh::builder(grant).build().unwrap();
    auth.set_tokens(tokens).await.unwrap();
    provider.expire_access_tokens();
    let response = timeout(BOUND, client_with(&auth).get(provider.api_url("me")).send()).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let refresh = provider.token_requests().pop().unwrap();
    assert!(form(&refresh).contains(&("grant_type".into(), "refresh_token".into())));
    assert!(form(&refresh).contains(&("client_id".into(), url.clone())));

    // A second login: the document is known, and not fetched again.
    log_in(&provider, &login).await;
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.invalid_clients), (3, 3, 0));
    assert_eq!(stats.client_metadata_fetches, 1);
    assert_eq!(fetches_of(&server).await, 1);
}

#[tokio::test]
async fn a_document_naming_another_client_is_refused_and_not_kept() {
    let provider = MockProvider::builder().client_id_metadata_documents().start().await;
    let server = MockServer::start().await;
    let url = document_url(&server);
    let impostor = document_for("https://well-known-client.example/client.json").document().unwrap();
    Mock::given(method("GET"))
        .and(path(DOCUMENT_PATH))
        .respond_with(json_body(&impostor))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let login = grant_for(&provider, &document_for(&url)).await.login(REDIRECT).unwrap();

    assert_refused(&login, "client_id is not its URL").await;
    assert_eq!(provider.stats().authorizations, 0);

    // A refused document is not kept: once the right one is served, the next login fetches it.
    let right = document_for(&url).document().unwrap();
    Mock::given(method("GET")).and(path(DOCUMENT_PATH)).respond_with(json_body(&right)).mount(&server).await;
    log_in(&provider, &login).await;
    assert_eq!(provider.stats().client_metadata_fetches, 2);
    assert_eq!(provider.stats().authorizations, 1);
}

#[tokio::test]
async fn a_redirect_uri_the_document_does_not_list_is_refused() {
    let provider = MockProvider::builder().client_id_metadata_documents().start().await;
    let (_server, url) = host_valid().await;
    let elsewhere = "http://127.0.0.1:1/somewhere-else";
    let login = grant_for(&provider, &document_for(&url)).await.login(elsewhere).unwrap();

    assert_refused(&login, "redirect_uri is not registered for this client").await;

    assert_eq!((provider.stats().client_metadata_fetches, provider.stats().authorizations), (1, 0));
}

#[tokio::test]
async fn a_document_that_is_not_json_too_big_missing_or_confidential_is_refused() {
    let provider = MockProvider::builder().client_id_metadata_documents().start().await;
    let too_big = |url: &str| {
        let padding = "x".repeat(6 * 1024);
        json_body(
            &document_for(url).field("client_uri", json!(format!("https://a.example/{padding}"))).document().unwrap(),
        )
    };
    let with_secret = |url: &str| {
        let mut document = document_for(url).document().unwrap();
        document["client_secret"] = json!("shared");
        json_body(&document)
    };
    let cases: [(&str, Hosted); 4] = [
        ("not JSON", |_| ResponseTemplate::new(200).set_body_raw("<html>client</html>", "text/html")),
        ("larger than 5120 bytes", too_big),
        ("answered 404", |_| ResponseTemplate::new(404)),
        ("no client_secret", with_secret),
    ];
    for (expected, body) in cases {
        let (_server, url) = host(body).await;
        let login = grant_for(&provider, &document_for(&url)).await.login(REDIRECT).unwrap();

        assert_refused(&login, expected).await;
    }
    assert_eq!((provider.stats().client_metadata_fetches, provider.stats().authorizations), (4, 0));
}

#[tokio::test]
async fn a_document_that_never_ends_is_given_up_on() {
    let provider = MockProvider::builder().client_id_metadata_documents().start().await;
    let url = format!("{}{DOCUMENT_PATH}", never_ending_server().await);
    let login = grant_for(&provider, &document_for(&url)).await.login(REDIRECT).unwrap();

    assert_refused(&login, "could not be fetched").await;

    assert_eq!((provider.stats().client_metadata_fetches, provider.stats().authorizations), (1, 0));
}

#[tokio::test]
async fn client_id_urls_the_draft_refuses_are_refused_before_anything_is_sent() {
    for bad in [
        "http://client.example/client.json",
        "https://client.example/client.json#me",
        "https://client.example",
        "https://client.example/",
        "https://me:secret@client.example/client.json",
        "https://client.example/oauth/../client.json",
    ] {
        let me = ClientMetadataDocument::new(bad).redirect_uri(REDIRECT);
        assert!(matches!(me.client(), Err(ClientMetadataError::InvalidClientId { .. })), "{bad}");
        assert!(matches!(me.document(), Err(ClientMetadataError::InvalidClientId { .. })), "{bad}");
    }

    // And the mock, sent such a client id anyway, fetches nothing.
    let provider = MockProvider::builder().client_id_metadata_documents().start().await;
    let login = metadata(&provider)
        .await
        .refresh_token_grant()
        .client_id("http://client.example/client.json")
        .login(REDIRECT)
        .unwrap();
    assert_refused(&login, "not https").await;
    assert_eq!(provider.stats().client_metadata_fetches, 0);
}

#[tokio::test]
async fn a_document_client_the_provider_never_fetched_cannot_refresh() {
    let provider = MockProvider::builder().client_id_metadata_documents().start().await;
    let (server, url) = host(|_| ResponseTemplate::new(500)).await;
    let grant = grant_for(&provider, &document_for(&url)).await;
    let auth = TokenRefresh::builder(grant).initial_tokens(provider.issue_expired_tokens()).build().unwrap();

    let answer = timeout(BOUND, client_with(&auth).get(provider.api_url("me")).send()).await.unwrap();

    let error = answer.expect_err("an unknown client gets no tokens");
    assert!(matches!(Error::from_middleware(&error), Some(Error::ClientRejected { .. })), "{error:?}");
    assert_eq!(provider.stats().invalid_clients, 1);
    assert_eq!(provider.stats().client_metadata_fetches, 0, "the token endpoint does not fetch documents");
    assert_eq!(fetches_of(&server).await, 0);
}

#[tokio::test]
async fn a_provider_without_client_metadata_documents_does_not_advertise_them() {
    let provider = MockProvider::start().await;
    let metadata = metadata(&provider).await;
    assert!(!metadata.client_id_metadata_document_supported());
    assert_eq!(metadata.document().get("client_id_metadata_document_supported"), None);
}

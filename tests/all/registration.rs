//! Dynamic client registration (RFC 7591) against the mock: register, log in as the registered
//! client, refresh with its secret, in this process and after a restart over the same
//! `FileStore`; a registration that expires or is revoked ends in `ClientRejected`, and
//! registering again and logging in recovers. Registration errors are typed and bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{
    Clock, Discovery, DynamicRegistration, Error, FileStore, Login, LoginError, ManualClock, RefreshError,
    RefreshTokenGrant, RegisteredClient, RegistrationError, ServerMetadata, TokenRefresh, TokenSet,
};
use serde_json::json;
use tokio::time::timeout;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::discovery::never_ending_server;
use crate::helpers::client_with;

const BOUND: Duration = Duration::from_secs(10);
const REDIRECT: &str = "http://127.0.0.1:33418/callback";

async fn metadata(provider: &MockProvider) -> ServerMetadata {
    timeout(BOUND, Discovery::new(provider.issuer()).fetch()).await.unwrap().expect("the mock's metadata")
}

async fn register(registration: &DynamicRegistration) -> RegisteredClient {
    timeout(BOUND, registration.register()).await.expect("registration hung").expect("registered")
}

/// A registration request for the mock's registration endpoint, as its metadata names it.
async fn registration(provider: &MockProvider) -> DynamicRegistration {
    DynamicRegistration::from_metadata(&metadata(provider).await)
        .expect("the mock names its registration endpoint")
        .client_name("registration test")
        .redirect_uri(REDIRECT)
}

/// The mock's grant for `client`, built from the metadata as an MCP client would.
async fn grant_for(provider: &MockProvider, client: &RegisteredClient) -> RefreshTokenGrant {
    metadata(provider).await.refresh_token_grant().registered_client(client.clone()).api_origin(provider.uri())
}

/// Logs in with `login`, the mock playing the browser.
async fn log_in(provider: &MockProvider, login: &Login) -> TokenSet {
    let (url, pending) = login.start().unwrap();
    let callback = timeout(BOUND, provider.approve(&url)).await.expect("the authorize endpoint hung");
    timeout(BOUND, login.exchange(&pending, &callback)).await.expect("the exchange hung").expect("logged in")
}

/// The client credentials a token request carried by HTTP Basic.
fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request.headers.get("authorization")?.to_str().ok()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(value.strip_prefix("Basic ")?).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |s: &str| form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((decode(id)?, decode(secret)?))
}

fn form(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

fn secret_of(client: &RegisteredClient) -> String {
    client.client_secret().expect("a confidential client").secret().to_owned()
}

fn scratch_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rtr-registration-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tokens.json")
}

#[tokio::test]
async fn a_registered_client_logs_in_and_refreshes_with_its_registered_secret() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let client = register(&registration(&provider).await).await;
    assert!(client.client_id().starts_with("dcr-"), "{client:?}");
    assert_eq!(client.token_endpoint_auth_method(), "client_secret_basic");
    assert_eq!(client.client_secret_expires_at(), None, "the mock's secrets never expire by default");
    assert!(client.client_id_issued_at().is_some());
    assert_eq!(client.metadata()["client_name"], "registration test");
    assert_eq!(provider.stats().registrations, 1);
    assert_eq!(provider.registered_clients(), [client.client_id()]);

    let grant = grant_for(&provider, &client).await;
    let login = grant.login(REDIRECT).unwrap();
    let (url, _) = login.start().unwrap();
    let sent_id = url.query_pairs().find(|(k, _)| k == "client_id").map(|(_, v)| v.into_owned());
    assert_eq!(sent_id.as_deref(), Some(client.client_id()), "the authorize URL names the registered client");
    let tokens = log_in(&provider, &login).await;
    assert_eq!(tokens.client(), Some(&client), "the login's tokens carry the registration");
    let exchange = &provider.token_requests()[0];
    assert_eq!(basic_credentials(exchange), Some((client.client_id().to_owned(), secret_of(&client))));

    let auth = TokenRefresh::builder(grant).build().unwrap();
    auth.set_tokens(tokens).await.unwrap();
    provider.expire_access_tokens();
    let response = client_with(&auth).get(provider.api_url("me")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.invalid_clients), (2, 2, 0));
    let refresh = &provider.token_requests()[1];
    assert!(form(refresh).contains(&("grant_type".into(), "refresh_token".into())));
    assert_eq!(
        basic_credentials(refresh),
        Some((client.client_id().to_owned(), secret_of(&client))),
        "the refresh authenticated with the registered client's secret"
    );
    assert_eq!(auth.tokens().and_then(|t| t.client().cloned()), Some(client), "the refreshed set keeps it");
}

#[tokio::test]
async fn a_restart_refreshes_with_the_registration_stored_beside_the_tokens() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let client = register(&registration(&provider).await).await;
    let path = scratch_file("restart");
    {
        let grant = grant_for(&provider, &client).await;
        let tokens = log_in(&provider, &grant.login(REDIRECT).unwrap()).await;
        let first = TokenRefresh::builder(grant).store(FileStore::new(&path)).build().unwrap();
        first.set_tokens(tokens).await.unwrap();
    }
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(stored.to_string().contains(client.client_id()), "the registration is in the file: {stored}");

    // A new process: its grant knows nothing of the registration, and even names a client of its
    // own that the server does not know; the stored registration wins.
    let grant = metadata(&provider)
        .await
        .refresh_token_grant()
        .client_id("configured-elsewhere")
        .client_secret("not-the-registered-secret")
        .api_origin(provider.uri());
    let second = TokenRefresh::builder(grant).store(FileStore::new(&path)).build().unwrap();
    provider.expire_access_tokens();
    let response = client_with(&second).get(provider.api_url("me")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let refresh = provider.token_requests().pop().unwrap();
    assert_eq!(basic_credentials(&refresh), Some((client.client_id().to_owned(), secret_of(&client))));
    assert_eq!(provider.stats().invalid_clients, 0);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn a_public_or_post_registration_authenticates_the_way_it_registered() {
    for method in ["client_secret_post", "none"] {
        let provider = MockProvider::builder().dynamic_registration().start().await;
        let client = register(&registration(&provider).await.token_endpoint_auth_method(method)).await;
        assert_eq!(client.token_endpoint_auth_method(), method);
        assert_eq!(client.client_secret().is_none(), method == "none");
        let grant = grant_for(&provider, &client).await;
        let tokens = log_in(&provider, &grant.login(REDIRECT).unwrap()).await;
        let auth = TokenRefresh::builder(grant).build().unwrap();
        auth.set_tokens(tokens).await.unwrap();
        provider.expire_access_tokens();

        let response = client_with(&auth).get(provider.api_url("me")).send().await.unwrap();

        assert_eq!(response.status(), 200, "{method}");
        let refresh = provider.token_requests().pop().unwrap();
        assert!(refresh.headers.get("authorization").is_none(), "{method}: no HTTP Basic");
        let fields = form(&refresh);
        assert!(fields.contains(&("client_id".into(), client.client_id().into())), "{method}: {fields:?}");
        let secret = fields.iter().find(|(k, _)| k == "client_secret").map(|(_, v)| v.clone());
        assert_eq!(secret, client.client_secret().map(|s| s.secret().to_owned()), "{method}");
    }
}

/// Registers, logs in and installs the tokens in a new layer; the layer and the client.
async fn registered_session(
    provider: &MockProvider,
    registration: &DynamicRegistration,
    clock: Option<&ManualClock>,
) -> (TokenRefresh, RegisteredClient, Arc<AtomicUsize>) {
    let client = register(registration).await;
    let mut grant = grant_for(provider, &client).await;
    if let Some(clock) = clock {
        grant = grant.clock(clock.clone());
    }
    let tokens = log_in(provider, &grant.login(REDIRECT).unwrap()).await;
    let rejected = Arc::new(AtomicUsize::new(0));
    let seen = rejected.clone();
    let mut builder = TokenRefresh::builder(grant).on_client_rejected(move |_, _| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    if let Some(clock) = clock {
        builder = builder.clock(clock.clone());
    }
    let auth = builder.build().unwrap();
    auth.set_tokens(tokens).await.unwrap();
    (auth, client, rejected)
}

/// Registers again as `renew` says, logs in with the new client, installs its tokens.
async fn recover(
    provider: &MockProvider,
    registration: &DynamicRegistration,
    auth: &TokenRefresh,
    failed: &Error,
    old: &RegisteredClient,
) -> RegisteredClient {
    let renewed = timeout(BOUND, registration.renew(auth.tokens().as_ref(), Some(failed))).await.unwrap().unwrap();
    let client = renewed.expect("a rejected registration is renewed");
    assert_ne!(client.client_id(), old.client_id());
    let grant = grant_for(provider, &client).await;
    let tokens = log_in(provider, &grant.login(REDIRECT).unwrap()).await;
    auth.set_tokens(tokens).await.unwrap();
    client
}

#[tokio::test]
async fn a_revoked_registration_is_client_rejected_and_registering_again_and_logging_in_recovers() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let registration = registration(&provider).await;
    let (auth, client, rejected) = registered_session(&provider, &registration, None).await;
    assert_eq!(timeout(BOUND, registration.renew(auth.tokens().as_ref(), None)).await.unwrap().unwrap(), None);
    assert!(provider.revoke_registration(client.client_id()));
    assert!(!provider.revoke_registration(client.client_id()), "revoked once");
    provider.expire_access_tokens();
    let http = client_with(&auth);

    let err = http.get(provider.api_url("me")).send().await.unwrap_err();

    let failed = Error::from_middleware(&err).cloned().expect("one of ours");
    match &failed {
        Error::ClientRejected { reason, .. } => {
            assert_eq!(reason.oauth_error().map(|e| e.error.as_str()), Some("invalid_client"));
        }
        other => panic!("expected ClientRejected, got {other:?}"),
    }
    assert_eq!(rejected.load(Ordering::SeqCst), 1, "the hook fired once");
    assert_eq!(provider.stats().invalid_clients, 1);
    let calls = provider.stats().token_calls;
    let again = http.get(provider.api_url("me")).send().await.unwrap_err();
    assert!(matches!(Error::from_middleware(&again), Some(Error::ClientRejected { .. })), "fails fast");
    assert_eq!(provider.stats().token_calls, calls, "without a token call");

    let renewed = recover(&provider, &registration, &auth, &failed, &client).await;

    let response = http.get(provider.api_url("me")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(provider.stats().registrations, 2);
    assert_eq!(
        auth.tokens().and_then(|t| t.client().map(|c| c.client_id().to_owned())),
        Some(renewed.client_id().into())
    );
}

#[tokio::test]
async fn an_expired_registered_secret_is_not_sent_and_registering_again_recovers() {
    let clock = ManualClock::starting_now();
    let provider = MockProvider::builder()
        .registration_secret_lifetime(Duration::from_secs(600))
        .access_token_lifetime(Duration::from_secs(300))
        .clock(clock.clone())
        .start()
        .await;
    let registration = registration(&provider).await;
    let (auth, client, rejected) = registered_session(&provider, &registration, Some(&clock)).await;
    let expires_at = client.client_secret_expires_at().expect("the mock's secrets expire");
    assert!(!client.secret_expired_at(clock.now()) && client.secret_expired_at(clock.now() + Duration::from_secs(601)));
    let http = client_with(&auth);

    clock.advance(Duration::from_secs(601));
    let calls = provider.stats().token_calls;
    let err = http.get(provider.api_url("me")).send().await.unwrap_err();

    let failed = Error::from_middleware(&err).cloned().expect("one of ours");
    match &failed {
        Error::ClientRejected { reason: RefreshError::RegistrationExpired { client_id, expired_at }, .. } => {
            assert_eq!((client_id.as_str(), *expired_at), (client.client_id(), expires_at));
        }
        other => panic!("expected ClientRejected for the expired registration, got {other:?}"),
    }
    assert_eq!(provider.stats().token_calls, calls, "the expired secret was not sent");
    assert_eq!(rejected.load(Ordering::SeqCst), 1);
    let shown = format!("{failed} {failed:?} {err} {err:?}");
    assert!(!shown.contains(&secret_of(&client)), "{shown}");

    recover(&provider, &registration, &auth, &failed, &client).await;
    let response = http.get(provider.api_url("me")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_mock_refuses_a_registered_client_with_a_wrong_secret_or_method() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let client = register(&registration(&provider).await).await;
    let forged = RegisteredClient::new(client.client_id()).with_client_secret("a-guessed-secret");
    let posted = RegisteredClient::new(client.client_id())
        .with_client_secret(secret_of(&client))
        .with_token_endpoint_auth_method("client_secret_post");
    let unknown = RegisteredClient::new("never-registered").with_client_secret("whatever-secret");
    for (wrong, why) in [(forged, "wrong secret"), (posted, "another method"), (unknown, "unknown client")] {
        let grant = grant_for(&provider, &wrong).await;
        let auth = TokenRefresh::builder(grant).build().unwrap();
        auth.set_tokens(provider.issue_expired_tokens().with_client(wrong)).await.unwrap();

        let err = client_with(&auth).get(provider.api_url("me")).send().await.unwrap_err();

        assert!(matches!(Error::from_middleware(&err), Some(Error::ClientRejected { .. })), "{why}: {err:?}");
    }
    assert_eq!(provider.stats().invalid_clients, 3);
}

#[tokio::test]
async fn registration_errors_are_typed() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let at_mock = DynamicRegistration::new(provider.registration_url()).redirect_uri(REDIRECT);
    // Fields that replace the checked members reach the server, which refuses them.
    let relative = at_mock.clone().field("redirect_uris", json!(["/callback"]));
    let err = timeout(BOUND, relative.register()).await.unwrap().unwrap_err();
    assert!(matches!(&err, RegistrationError::InvalidRedirectUri { description: Some(_) }), "{err:?}");
    let none = at_mock.clone().field("redirect_uris", json!([]));
    let err = timeout(BOUND, none.register()).await.unwrap().unwrap_err();
    assert!(matches!(&err, RegistrationError::InvalidRedirectUri { .. }), "{err:?}");
    let unknown_grant = at_mock.clone().grant_types(["authorization_code", "urn:example:unknown"]);
    let err = timeout(BOUND, unknown_grant.register()).await.unwrap().unwrap_err();
    assert!(matches!(&err, RegistrationError::InvalidClientMetadata { .. }), "{err:?}");
    assert_eq!(provider.stats().registrations, 0);

    // Refused before anything is sent.
    let err = at_mock.clone().redirect_uri("callback").register().await.unwrap_err();
    assert!(matches!(err, RegistrationError::InvalidRequest { .. }), "{err:?}");
    let err =
        DynamicRegistration::new("http://as.example/register").redirect_uri(REDIRECT).register().await.unwrap_err();
    assert!(matches!(err, RegistrationError::InvalidEndpoint { .. }), "{err:?}");
    let plain = MockProvider::start().await;
    let err = DynamicRegistration::from_metadata(&metadata(&plain).await).unwrap_err();
    assert!(matches!(&err, RegistrationError::NoRegistrationEndpoint { issuer } if *issuer == plain.issuer()));

    // Answers that are no registration.
    let server = MockServer::start().await;
    let answer =
        |status: u16, body: &str| ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json");
    for (route, template) in [
        ("/html", answer(201, "<html>registered!</html>")),
        ("/no-id", answer(201, r#"{"client_secret":"leaked-secret-1"}"#)),
        (
            "/wrong-type",
            answer(201, r#"{"client_id":"a","client_secret":"leaked-secret-1","client_secret_expires_at":"never"}"#),
        ),
        ("/down", answer(503, "<html>down</html>")),
        (
            "/token",
            answer(401, r#"{"error":"invalid_token","error_description":"an initial access token is required"}"#),
        ),
    ] {
        Mock::given(method("POST")).and(path(route)).respond_with(template).mount(&server).await;
    }
    let at = |route: &str| DynamicRegistration::new(format!("{}{route}", server.uri())).redirect_uri(REDIRECT);
    for route in ["/html", "/no-id", "/wrong-type"] {
        let err = timeout(BOUND, at(route).register()).await.unwrap().unwrap_err();
        assert!(matches!(err, RegistrationError::InvalidResponse { status, .. } if status == 201), "{route}: {err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("leaked-secret-1"), "{route}: {shown}");
    }
    let err = timeout(BOUND, at("/down").register()).await.unwrap().unwrap_err();
    assert!(matches!(err, RegistrationError::Refused { status, error: None, .. } if status == 503), "{err:?}");
    let err = timeout(BOUND, at("/token").register()).await.unwrap().unwrap_err();
    assert!(matches!(&err, RegistrationError::Refused { error: Some(e), .. } if e == "invalid_token"), "{err:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let unreachable = DynamicRegistration::new(format!("http://{address}/register")).redirect_uri(REDIRECT);
    let err = timeout(BOUND, unreachable.register()).await.unwrap().unwrap_err();
    assert!(matches!(err, RegistrationError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_huge_or_never_ending_registration_answer_is_bounded() {
    let server = MockServer::start().await;
    let huge = format!(r#"{{"client_id":"a","padding":"{}"}}"#, "x".repeat(4 * 1024 * 1024));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(huge, "application/json"))
        .mount(&server)
        .await;
    let err = timeout(BOUND, DynamicRegistration::new(server.uri()).redirect_uri(REDIRECT).register())
        .await
        .expect("a huge answer is cut, not read whole")
        .unwrap_err();
    assert!(matches!(err, RegistrationError::TooLarge { limit: 65_536, .. }), "{err:?}");
    let small = DynamicRegistration::new(server.uri()).redirect_uri(REDIRECT).max_response_bytes(1024);
    let err = timeout(BOUND, small.register()).await.unwrap().unwrap_err();
    assert!(matches!(err, RegistrationError::TooLarge { limit: 1024, .. }), "{err:?}");

    let endless = never_ending_server().await;
    let started = Instant::now();
    let registration = DynamicRegistration::new(format!("{endless}/register"))
        .redirect_uri(REDIRECT)
        .timeout(Duration::from_millis(300));
    let err = timeout(BOUND, registration.register()).await.expect("bounded by its own timeout").unwrap_err();
    assert!(matches!(err, RegistrationError::TimedOut { after, .. } if after == Duration::from_millis(300)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn no_secret_of_a_registration_shows_in_any_debug_or_display() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let server = MockServer::start().await;
    let answer = json!({
        "client_id": "shown-client-id",
        "client_secret": "hidden-client-secret",
        "client_secret_expires_at": 0,
        "registration_access_token": "hidden-registration-token",
        "registration_client_uri": format!("{}/register/shown-client-id", server.uri()),
    });
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201).set_body_json(answer)).mount(&server).await;
    let registration = DynamicRegistration::new(server.uri()).redirect_uri(REDIRECT);
    let client = register(&registration).await;
    assert_eq!(client.registration_access_token().map(|t| t.secret()), Some("hidden-registration-token"));
    let tokens = provider.issue_expired_tokens().with_client(client.clone());
    let grant = grant_for(&provider, &client).await;
    let auth = TokenRefresh::builder(grant.clone()).build().unwrap();
    auth.set_tokens(tokens.clone()).await.unwrap();
    // The mock does not know this client: its refresh is refused, and the error shows no secret.
    let err = client_with(&auth).get(provider.api_url("me")).send().await.unwrap_err();
    let failed = Error::from_middleware(&err).cloned().unwrap();
    assert!(matches!(failed, Error::ClientRejected { .. }), "{failed:?}");

    let shown = format!(
        "{client:?} {client:#?} {tokens:?} {tokens:#?} {grant:?} {registration:?} {failed} {failed:?} {err} {err:?} {:?}",
        auth.tokens()
    );
    for secret in ["hidden-client-secret", "hidden-registration-token"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert!(shown.contains("shown-client-id"));
}

#[tokio::test]
async fn the_mock_sends_a_registered_client_back_only_to_a_redirect_uri_it_registered() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let client = register(&registration(&provider).await).await;
    let grant = grant_for(&provider, &client).await;
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let open = |redirect: &str| {
        let (url, _) = grant.login(redirect).unwrap().start().unwrap();
        let browser = browser.clone();
        async move {
            let answer = timeout(BOUND, browser.get(url).send()).await.unwrap().unwrap();
            (answer.status().as_u16(), answer.text().await.unwrap())
        }
    };

    assert_eq!(open(REDIRECT).await.0, 302);
    let (status, body) = open("https://elsewhere.example/callback").await;
    assert_eq!(status, 400);
    assert!(body.contains("not registered"), "{body}");
    provider.revoke_registration(client.client_id());
    let (status, body) = open(REDIRECT).await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown client_id"), "{body}");
}

#[tokio::test]
async fn a_revocation_authenticates_as_the_sets_registered_client() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let client = register(&registration(&provider).await).await;
    let grant = grant_for(&provider, &client).await;
    let tokens = log_in(&provider, &grant.login(REDIRECT).unwrap()).await;
    // A grant that names no client: the set's registration is what authenticates.
    let bare = metadata(&provider).await.refresh_token_grant().api_origin(provider.uri());
    let auth = TokenRefresh::builder(bare).build().unwrap();
    auth.set_tokens(tokens).await.unwrap();

    timeout(BOUND, auth.revoke()).await.unwrap().expect("revoked");

    let stats = provider.stats();
    assert_eq!((stats.revocation_calls, stats.tokens_revoked, stats.invalid_clients), (1, 1, 0));
    let revocation = &provider.revocation_requests()[0];
    assert_eq!(basic_credentials(revocation), Some((client.client_id().to_owned(), secret_of(&client))));
}

#[tokio::test]
async fn a_registered_secret_a_token_endpoint_echoes_is_redacted() {
    let server = MockServer::start().await;
    let echo = json!({"error": "invalid_client", "error_description": "bad secret echoed-registered-secret for dyn-1"});
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(echo))
        .mount(&server)
        .await;
    let client = RegisteredClient::new("dyn-1")
        .with_client_secret("echoed-registered-secret")
        .with_token_endpoint_auth_method("client_secret_post");
    let grant = RefreshTokenGrant::new(format!("{}/token", server.uri())).api_origin(server.uri());
    let auth = TokenRefresh::builder(grant).build().unwrap();
    let tokens = TokenSet::new("a-1").with_refresh_token("r-1").with_expires_in(Duration::ZERO).with_client(client);
    auth.set_tokens(tokens).await.unwrap();

    let err = client_with(&auth).get(format!("{}/api", server.uri())).send().await.unwrap_err();

    let failed = Error::from_middleware(&err).cloned().expect("one of ours");
    let Error::ClientRejected { reason, .. } = &failed else { panic!("{failed:?}") };
    let description = reason.oauth_error().and_then(|e| e.error_description.clone()).unwrap_or_default();
    assert_eq!(description, "bad secret [redacted] for dyn-1");
    assert!(!format!("{failed} {failed:?} {err:?}").contains("echoed-registered-secret"));
    let sent = &server.received_requests().await.unwrap()[0];
    assert!(form(sent).contains(&("client_secret".into(), "echoed-registered-secret".into())), "sent in the body");
}

#[tokio::test]
async fn a_process_sharing_the_store_picks_up_the_tokens_of_a_new_registration_without_registering() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let registration = registration(&provider).await;
    let client = register(&registration).await;
    let path = scratch_file("shared");
    let grant = grant_for(&provider, &client).await;
    let tokens = log_in(&provider, &grant.login(REDIRECT).unwrap()).await;
    // Two processes of one MCP client, one store; neither grant names a client.
    let bare = || metadata(&provider);
    let layer = |grant: RefreshTokenGrant| {
        TokenRefresh::builder(grant.api_origin(provider.uri()))
            .store(FileStore::new(&path))
            .terminal_recheck(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let first = layer(bare().await.refresh_token_grant());
    let second = layer(bare().await.refresh_token_grant());
    first.set_tokens(tokens).await.unwrap();
    provider.revoke_registration(client.client_id());
    provider.expire_access_tokens();
    let url = provider.api_url("me");

    let err = client_with(&first).get(&url).send().await.unwrap_err();
    let failed = Error::from_middleware(&err).cloned().unwrap();
    let err = client_with(&second).get(&url).send().await.unwrap_err();
    assert!(matches!(Error::from_middleware(&err), Some(Error::ClientRejected { .. })), "{err:?}");
    let renewed = recover(&provider, &registration, &first, &failed, &client).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let response = client_with(&second).get(&url).send().await.unwrap();

    assert_eq!(response.status(), 200, "the second process adopted the stored set of the new registration");
    assert_eq!(provider.stats().registrations, 2, "one new registration between the two");
    let adopted = second.tokens().and_then(|t| t.client().cloned());
    assert_eq!(adopted.as_ref().map(RegisteredClient::client_id), Some(renewed.client_id()));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn the_mock_lets_only_the_client_a_code_was_issued_to_exchange_it() {
    let provider = MockProvider::builder().dynamic_registration().start().await;
    let registration = registration(&provider).await;
    let (mine, theirs) = (register(&registration).await, register(&registration).await);
    let my_login = grant_for(&provider, &mine).await.login(REDIRECT).unwrap();
    let their_login = grant_for(&provider, &theirs).await.login(REDIRECT).unwrap();
    let (url, pending) = my_login.start().unwrap();
    let callback = timeout(BOUND, provider.approve(&url)).await.unwrap();

    let err = timeout(BOUND, their_login.exchange(&pending, &callback)).await.unwrap().unwrap_err();

    let LoginError::Exchange(reason) = &err else { panic!("{err:?}") };
    let refused = reason.oauth_error().expect("an OAuth error");
    assert_eq!(refused.error, "invalid_grant");
    assert_eq!(refused.error_description.as_deref(), Some("The authorization code was issued to another client"));
    assert_eq!(provider.stats().tokens_issued, 0);
}

//! Unit tests of the mock provider, through HTTP as a client sees it: rotation, reuse detection,
//! faults, client authentication, and each dialect's requests and answers.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use super::dialect::{TOKEN_PATH, WITHINGS_INVALID_TOKEN};
use super::grants::PREVIOUS_REFRESH_TOKEN_GRACE;
use super::{Dialect, Fault, MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider, ProviderStats};
use crate::{Clock, ManualClock, TokenSet};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json; charset=utf-8";

/// A response, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    json: Value,
    /// The body as sent, for exact comparisons.
    text: String,
}

impl Answer {
    async fn read(response: reqwest::Result<reqwest::Response>) -> Answer {
        let response = response.expect("the mock answers");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let body = response.bytes().await.expect("a body");
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let text = String::from_utf8_lossy(&body).into_owned();
        Answer { status, headers, json, text }
    }

    fn header(&self, name: &str) -> &str {
        let value = self.headers.get(name).map(HeaderValue::to_str);
        value.and_then(Result::ok).unwrap_or_default()
    }

    /// A string field of the JSON body, `""` when there is none.
    fn field(&self, name: &str) -> &str {
        self.json[name].as_str().unwrap_or_default()
    }

    fn error(&self) -> (u16, &str) {
        (self.status, self.field("error"))
    }
}

impl MockProvider {
    async fn post(&self, content_type: &str, body: &str, basic: Option<&str>) -> Answer {
        let request = reqwest::Client::new().post(self.token_url());
        let mut request = request.header("content-type", content_type).body(body.to_owned());
        if let Some(basic) = basic {
            request = request.header("authorization", basic);
        }
        Answer::read(request.send().await).await
    }

    async fn refresh(&self, refresh_token: &str) -> Answer {
        let body = format!("grant_type=refresh_token&refresh_token={refresh_token}");
        self.post(FORM, &body, None).await
    }

    async fn api(&self, access_token: &str) -> Answer {
        let request = reqwest::Client::new().get(self.api_url("/v1/sleep"));
        Answer::read(request.bearer_auth(access_token).send().await).await
    }

    async fn anonymous_api(&self) -> Answer {
        Answer::read(reqwest::Client::new().get(self.api_url("/v1/sleep")).send().await).await
    }

    /// Withings' refresh, by the book.
    async fn withings_refresh(&self, refresh_token: &str) -> Answer {
        let body = form(&[
            ("action", "requesttoken"),
            ("grant_type", "refresh_token"),
            ("client_id", MOCK_CLIENT_ID),
            ("client_secret", MOCK_CLIENT_SECRET),
            ("refresh_token", refresh_token),
        ]);
        self.post(FORM, &body, None).await
    }
}

/// `fields` as a form body.
fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

/// An `Authorization: Basic` value, for an id and a secret that need no form-encoding.
fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{id}:{secret}")))
}

/// Asserts that the JSON object `object`, sent as `text`, has exactly the fields `names`, sent
/// in that order (a `Value` sorts its fields, so the order is read from the text).
fn assert_fields(text: &str, object: &Value, names: &[&str]) {
    let mut found: Vec<_> =
        names.iter().filter_map(|name| text.find(&format!("\"{name}\":")).zip(Some(*name))).collect();
    found.sort_unstable();
    let order: Vec<_> = found.into_iter().map(|(_, name)| name).collect();
    assert_eq!(order, names, "{text}");
    assert_eq!(object.as_object().map(serde_json::Map::len), Some(names.len()), "{text}");
}

/// Asserts a bare 401: no challenge, no body.
fn assert_bare_401(answer: &Answer) {
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.headers.get("www-authenticate").is_none(), "{answer:?}");
    assert!(answer.text.is_empty(), "{answer:?}");
}

fn access(tokens: &TokenSet) -> &str {
    tokens.access_token().secret()
}

fn refresh(tokens: &TokenSet) -> &str {
    tokens.refresh_token().map_or("", |r| r.secret())
}

#[tokio::test]
async fn a_refresh_rotates_the_refresh_token_and_the_old_one_is_then_rejected() {
    let builder = MockProvider::builder().reuse_revokes_family(false);
    let provider = builder.start().await;
    let tokens = provider.issue_tokens();
    let answer = provider.refresh(refresh(&tokens)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("cache-control"), "no-store");
    assert_eq!(answer.field("token_type"), "Bearer");
    assert_eq!(answer.json["expires_in"], 3600);
    let new = answer.field("refresh_token");
    assert!(!new.is_empty() && new != refresh(&tokens), "{answer:?}");
    assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

    let replay = provider.refresh(refresh(&tokens)).await;
    assert_eq!(replay.error(), (400, "invalid_grant"));
    // Without family revocation the new refresh token survives the replay.
    assert_eq!(provider.refresh(new).await.status, 200);
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_whole_family() {
    let provider = MockProvider::start().await;
    let (tokens, bystander) = (provider.issue_tokens(), provider.issue_tokens());
    let fresh = provider.refresh(refresh(&tokens)).await;

    assert_eq!(provider.refresh(refresh(&tokens)).await.status, 400);
    let rejected = provider.api(fresh.field("access_token")).await;
    assert_eq!(rejected.error(), (401, "invalid_token"));
    let challenge = rejected.header("www-authenticate");
    assert!(challenge.starts_with(r#"Bearer realm="mock", error="invalid_token", "#));
    assert_eq!(provider.api(access(&tokens)).await.status, 401);
    let refreshed = provider.refresh(fresh.field("refresh_token")).await;
    assert_eq!(refreshed.error(), (400, "invalid_grant"));
    // Another authorization is another family: untouched.
    assert_eq!(provider.api(access(&bystander)).await.status, 200);
    let stats = provider.stats();
    assert_eq!((stats.reuse_detected, stats.families_revoked), (1, 1));
}

#[tokio::test]
async fn without_rotation_no_refresh_token_is_returned_and_the_old_one_keeps_working() {
    let builder = MockProvider::builder().rotate_refresh_tokens(false);
    let provider = builder.start().await;
    let tokens = provider.issue_tokens();
    for _ in 0..3 {
        let answer = provider.refresh(refresh(&tokens)).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.json.get("refresh_token").is_none(), "{answer:?}");
        assert_eq!(provider.api(answer.field("access_token")).await.status, 200);
    }
    assert_eq!(provider.stats().reuse_detected, 0);
}

#[tokio::test]
async fn access_token_expiry_follows_the_providers_manual_clock() {
    let clock = ManualClock::starting_now();
    let lifetime = Duration::from_secs(60);
    let builder = MockProvider::builder().access_token_lifetime(lifetime);
    let provider = builder.clock(clock.clone()).start().await;
    let tokens = provider.issue_tokens();
    assert_eq!(tokens.expires_at(), Some(clock.now() + lifetime));

    clock.advance(Duration::from_secs(59));
    assert_eq!(provider.api(access(&tokens)).await.status, 200);
    clock.advance(Duration::from_secs(1));
    let expired = provider.api(access(&tokens)).await;
    assert_eq!(expired.error(), (401, "invalid_token"));
    assert!(expired.field("error_description").contains("expired"));

    let answer = provider.refresh(refresh(&tokens)).await;
    assert_eq!((answer.status, answer.json["expires_in"].as_u64()), (200, Some(60)));
    assert_eq!(provider.api(answer.field("access_token")).await.status, 200);
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_rejected_as_the_test_asked() {
    let provider = MockProvider::start().await;
    let expired = provider.issue_expired_tokens();
    assert!(expired.expires_at().is_some_and(|at| at < SystemTime::now()));
    assert_eq!(provider.api(access(&expired)).await.status, 401);
    let renewed = provider.refresh(refresh(&expired)).await;
    assert_eq!(renewed.status, 200);

    provider.expire_access_tokens();
    assert_eq!(provider.api(renewed.field("access_token")).await.status, 401);
    // Refresh tokens are left alone, and tokens issued afterwards are valid.
    let renewed = provider.refresh(renewed.field("refresh_token")).await;
    assert_eq!(provider.api(renewed.field("access_token")).await.status, 200);

    let other = provider.issue_tokens();
    provider.revoke_all();
    assert_eq!(provider.api(access(&other)).await.status, 401);
    assert_eq!(provider.refresh(refresh(&other)).await.status, 400);
    let refreshed = provider.refresh(renewed.field("refresh_token")).await;
    assert_eq!(refreshed.error(), (400, "invalid_grant"));
    assert_eq!(provider.stats().families_revoked, 2);
}

#[tokio::test]
async fn injected_faults_come_first_in_order_then_normal_handling_resumes() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    let retry_after = Duration::from_millis(1500);
    provider.fail_next_token_calls(2, Fault::RateLimited { retry_after });
    provider.fail_next_token_calls(1, Fault::Status(503));
    provider.fail_next_token_calls(1, Fault::InvalidGrant);
    let (content_type, body) = ("text/html".to_owned(), b"<html>".to_vec());
    provider.fail_next_token_calls(1, Fault::Body { status: 200, content_type, body });

    for _ in 0..2 {
        let limited = provider.refresh(refresh(&tokens)).await;
        assert_eq!(limited.error(), (429, "rate_limited"));
        assert_eq!(limited.header("retry-after"), "2", "1.5 s rounds up");
    }
    let failed = provider.refresh(refresh(&tokens)).await;
    assert_eq!(failed.error(), (503, "server_error"));
    let failed = provider.refresh(refresh(&tokens)).await;
    assert_eq!(failed.error(), (400, "invalid_grant"));
    let html = provider.refresh(refresh(&tokens)).await;
    assert_eq!((html.status, html.header("content-type")), (200, "text/html"));
    assert_eq!(html.json, Value::Null);

    // The refresh token was never really used, so it still works.
    assert_eq!(provider.refresh(refresh(&tokens)).await.status, 200);
    let stats = provider.stats();
    let counts = (stats.token_calls, stats.tokens_issued, stats.invalid_grants);
    assert_eq!(counts, (6, 1, 1));
}

#[tokio::test]
async fn client_credentials_are_accepted_as_http_basic_with_urlencoded_parts() {
    let builder = MockProvider::builder().client_credentials("my client", "s3cr&t:é");
    let provider = builder.start().await;
    let tokens = provider.issue_tokens();
    let form = format!("grant_type=refresh_token&refresh_token={}", refresh(&tokens));
    // RFC 6749 §2.3.1: each part is form-urlencoded, then joined and base64-encoded.
    let basic = |user_pass: &str| format!("Basic {}", BASE64.encode(user_pass));

    let wrong = provider.post(FORM, &form, Some(&basic("my+client:guess"))).await;
    assert_eq!(wrong.error(), (401, "invalid_client"));
    assert_eq!(wrong.header("www-authenticate"), r#"Basic realm="mock""#);
    let missing = provider.post(FORM, &form, None).await;
    assert_eq!(missing.error(), (401, "invalid_client"));
    let garbled = provider.post(FORM, &form, Some("Basic %%%")).await;
    assert_eq!(garbled.error(), (401, "invalid_client"));

    let right = basic("my+client:s3cr%26t%3A%C3%A9");
    let answer = provider.post(FORM, &form, Some(&right)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(provider.stats().tokens_issued, 1);
}

#[tokio::test]
async fn client_credentials_are_accepted_in_form_and_json_bodies() {
    let builder = MockProvider::builder().client_credentials("partner", "pw");
    let provider = builder.start().await;
    let tokens = provider.issue_tokens();
    let form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id=partner&client_secret=pw&scope=offline",
        refresh(&tokens)
    );
    let answer = provider.post(FORM, &form, None).await;
    assert_eq!((answer.status, answer.field("scope")), (200, "offline"));

    // WHOOP's partner API: the client-credentials grant as JSON; no refresh token comes back.
    let body = json!({"grant_type": "client_credentials", "client_id": "partner",
        "client_secret": "pw", "scope": "whoop-partner/token"});
    let answer = provider.post(JSON, &body.to_string(), None).await;
    assert_eq!(answer.field("scope"), "whoop-partner/token", "{answer:?}");
    assert!(answer.json.get("refresh_token").is_none(), "{answer:?}");
    assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

    let body = json!({"grant_type": "client_credentials", "client_id": "partner",
        "client_secret": "no"});
    let answer = provider.post(JSON, &body.to_string(), None).await;
    assert_eq!(answer.error(), (401, "invalid_client"));
}

#[tokio::test]
async fn stats_count_every_kind_of_call_and_no_credentials_get_a_bare_challenge() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    let request = reqwest::Client::new().post(provider.api_url("x"));
    let anonymous = Answer::read(request.send().await).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), r#"Bearer realm="mock""#);
    assert_eq!(provider.api(access(&tokens)).await.status, 200);
    assert_eq!(provider.api("at-never-issued").await.status, 401);
    provider.refresh(refresh(&tokens)).await;
    provider.refresh(refresh(&tokens)).await;
    provider.refresh("rt-never-issued").await;
    provider.post(FORM, "grant_type=password", None).await;

    let expected = ProviderStats {
        token_calls: 4,
        tokens_issued: 1,
        invalid_grants: 2,
        reuse_detected: 1,
        families_revoked: 1,
        grace_refreshes: 0,
        answers_lost: 0,
        authorizations: 0,
        nonces_issued: 0,
        revocation_calls: 0,
        tokens_revoked: 0,
        api_calls: 3,
        api_ok: 1,
        api_unauthorized: 2,
        // No DPoP here (feature `dpop` adds its counters): they stay at zero.
        ..ProviderStats::default()
    };
    assert_eq!(provider.stats(), expected);
}

#[tokio::test]
async fn concurrent_refreshes_with_one_refresh_token_let_exactly_one_succeed() {
    let builder = MockProvider::builder().token_latency(Duration::from_millis(50));
    let provider = builder.start().await;
    let tokens = provider.issue_tokens();
    let refreshes = (0..8).map(|_| provider.refresh(refresh(&tokens)));
    let answers = futures::future::join_all(refreshes).await;

    let (winners, losers): (Vec<_>, Vec<_>) = answers.iter().partition(|a| a.status == 200);
    assert_eq!(winners.len(), 1, "{answers:?}");
    assert!(losers.iter().all(|a| a.error() == (400, "invalid_grant")));
    // The losers look like a replay, so even the winner's tokens are revoked: this is what a
    // client without a single flight does to its user.
    assert_eq!(provider.api(winners[0].field("access_token")).await.status, 401);
    let stats = provider.stats();
    assert_eq!((stats.reuse_detected, stats.families_revoked), (7, 1));
}

#[tokio::test]
async fn malformed_requests_get_an_error_answer_not_a_panic() {
    let provider = MockProvider::start().await;
    let cases = [
        (FORM, "refresh_token=x", "invalid_request"),
        (FORM, "grant_type=password&username=u&password=p", "unsupported_grant_type"),
        (FORM, "grant_type=authorization_code&code=x", "invalid_grant"),
        (FORM, "grant_type=refresh_token", "invalid_request"),
        (FORM, "grant_type=refresh_token&grant_type=client_credentials", "invalid_request"),
        (FORM, "grant_type=refresh_token&refresh_token=%FF%FE", "invalid_grant"),
        (JSON, "{not json", "invalid_request"),
        (JSON, r#"{"grant_type": 7}"#, "invalid_request"),
        ("text/plain", "grant_type=refresh_token", "invalid_request"),
        ("", "grant_type=refresh_token", "invalid_request"),
    ];
    for (content_type, body, error) in cases {
        let answer = provider.post(content_type, body, None).await;
        assert_eq!(answer.error(), (400, error), "{content_type} {body}");
    }
    assert_eq!(provider.stats().token_calls, cases.len() as u64);
    // An empty bearer token is a 401 like any unknown one.
    assert_eq!(provider.api("").await.error(), (401, "invalid_token"));
}

#[tokio::test]
async fn mocks_mounted_by_a_test_take_precedence_and_debug_hides_secrets() {
    let builder = MockProvider::builder().client_credentials("id", "hunter2");
    let provider = builder.clone().start().await;
    let tokens = provider.issue_tokens();
    assert_eq!(provider.token_url(), format!("{}/oauth/token", provider.uri()));
    assert!(provider.uri().starts_with("http://127.0.0.1:"));
    let teapot = Mock::given(method("POST")).and(path(TOKEN_PATH));
    let teapot = teapot.respond_with(ResponseTemplate::new(418));
    teapot.mount(provider.server()).await;
    assert_eq!(provider.refresh(refresh(&tokens)).await.status, 418);
    assert_eq!(provider.stats().token_calls, 0);
    let received = provider.server().received_requests().await;
    assert_eq!(received.map(|r| r.len()), Some(1));

    let shown = format!("{provider:?} {builder:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains(access(&tokens)), "{shown}");
}

#[tokio::test]
async fn the_default_dialect_is_standard_and_builder_settings_win_over_a_dialects_defaults() {
    assert_eq!(Dialect::default(), Dialect::Standard);
    let provider = MockProvider::start().await;
    assert_eq!(
        (provider.dialect(), provider.token_url()),
        (Dialect::Standard, format!("{}/oauth/token", provider.uri()))
    );

    // Set before the dialect or after it, the lifetime and the grace are the builder's.
    let lifetime = Duration::from_secs(60);
    let builder = MockProvider::builder().access_token_lifetime(lifetime).dialect(Dialect::Withings);
    let provider = builder.previous_refresh_token_grace(false).start().await;
    let tokens = provider.issue_tokens();
    let answer = provider.withings_refresh(refresh(&tokens)).await;
    assert_eq!(answer.json["body"]["expires_in"], 60, "{answer:?}");
    let replay = provider.withings_refresh(refresh(&tokens)).await;
    assert_eq!(replay.json["error"], "Invalid Params: invalid refresh_token", "no grace: {replay:?}");
    assert_eq!(provider.stats().reuse_detected, 1);
}

#[tokio::test]
async fn whoop_takes_credentials_in_a_form_body_and_rotates_only_for_scope_offline() {
    let provider = MockProvider::whoop().await;
    assert!(provider.token_url().ends_with("/oauth/oauth2/token"), "{}", provider.token_url());
    let tokens = provider.issue_tokens();
    let old = refresh(&tokens);
    let grant = |scope: Option<&str>, secret: &str| {
        let mut fields = vec![
            ("grant_type", "refresh_token"),
            ("client_id", MOCK_CLIENT_ID),
            ("client_secret", secret),
            ("refresh_token", old),
        ];
        fields.extend(scope.map(|scope| ("scope", scope)));
        form(&fields)
    };

    // Refused: HTTP Basic, alone or not; a JSON body; a wrong secret; another grant.
    let without_secret = form(&[("grant_type", "refresh_token"), ("refresh_token", old), ("scope", "offline")]);
    let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
    let basic_only = provider.post(FORM, &without_secret, Some(&mock_basic)).await;
    assert_eq!(basic_only.error(), (401, "invalid_client"));
    assert_eq!(basic_only.header("www-authenticate"), "", "no Basic challenge where Basic is refused");
    let both = provider.post(FORM, &grant(Some("offline"), MOCK_CLIENT_SECRET), Some(&mock_basic)).await;
    assert_eq!(both.error(), (401, "invalid_client"));
    let as_json = json!({"grant_type": "refresh_token", "client_id": MOCK_CLIENT_ID,
        "client_secret": MOCK_CLIENT_SECRET, "refresh_token": old, "scope": "offline"});
    assert_eq!(provider.post(JSON, &as_json.to_string(), None).await.error(), (400, "invalid_request"));
    let wrong = provider.post(FORM, &grant(Some("offline"), "guess"), None).await;
    assert_eq!(wrong.error(), (401, "invalid_client"));
    let credentials = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", MOCK_CLIENT_ID),
        ("client_secret", MOCK_CLIENT_SECRET),
    ]);
    assert_eq!(provider.post(FORM, &credentials, None).await.error(), (400, "unsupported_grant_type"));
    assert_eq!(provider.stats().tokens_issued, 0);

    // Without `offline`: no new refresh token, and the old one stays valid.
    for scope in [None, Some("read:recovery"), Some("offlineish")] {
        let answer = provider.post(FORM, &grant(scope, MOCK_CLIENT_SECRET), None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_fields(&answer.text, &answer.json, &["access_token", "expires_in", "scope", "token_type"]);
        assert_eq!(provider.api(answer.field("access_token")).await.status, 200);
    }
    // With it, among other scopes: a new one, WHOOP's fields in WHOOP's order; the old one spent.
    let answer = provider.post(FORM, &grant(Some("read:recovery offline"), MOCK_CLIENT_SECRET), None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let fields = ["access_token", "refresh_token", "expires_in", "scope", "token_type"];
    assert_fields(&answer.text, &answer.json, &fields);
    assert_eq!((answer.field("scope"), answer.field("token_type")), ("read:recovery offline", "bearer"));
    assert_eq!(answer.json["expires_in"], 3600);
    assert_ne!(answer.field("refresh_token"), old);
    let replay = provider.post(FORM, &grant(Some("offline"), MOCK_CLIENT_SECRET), None).await;
    assert_eq!(replay.error(), (400, "invalid_grant"));
    assert_eq!(provider.stats().reuse_detected, 1);

    // The API's 401 says nothing, whatever the reason.
    assert_bare_401(&provider.api(answer.field("access_token")).await);
    assert_bare_401(&provider.api("at-never-issued").await);
    assert_bare_401(&provider.anonymous_api().await);
}

#[tokio::test]
async fn whoop_partner_grants_client_credentials_from_a_json_body_only() {
    let provider = MockProvider::whoop_partner().await;
    assert!(provider.token_url().ends_with("/developer/v2/partner/token"), "{}", provider.token_url());
    let request = json!({"grant_type": "client_credentials", "client_id": MOCK_CLIENT_ID,
        "client_secret": MOCK_CLIENT_SECRET, "scope": "whoop-partner/token"});
    let answer = provider.post("application/json", &request.to_string(), None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_fields(&answer.text, &answer.json, &["access_token", "token_type", "expires_in"]);
    assert_eq!((answer.field("token_type"), answer.json["expires_in"].as_u64()), ("bearer", Some(3600)));
    assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

    let mut wrong = request.clone();
    wrong["client_secret"] = "guess".into();
    let refused = provider.post(JSON, &wrong.to_string(), None).await;
    assert_eq!((refused.status, refused.text.as_str()), (401, r#"{"error":"invalid_client"}"#));
    assert_eq!(refused.header("www-authenticate"), "");
    let mut by_basic = request.clone();
    by_basic.as_object_mut().map(|fields| fields.remove("client_secret"));
    let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
    assert_eq!(provider.post(JSON, &by_basic.to_string(), Some(&mock_basic)).await.status, 401);
    let fields = [
        ("grant_type", "client_credentials"),
        ("client_id", MOCK_CLIENT_ID),
        ("client_secret", MOCK_CLIENT_SECRET),
        ("scope", "whoop-partner/token"),
    ];
    assert_eq!(provider.post(FORM, &form(&fields), None).await.error(), (400, "invalid_request"));
    let mut unscoped = request.clone();
    unscoped.as_object_mut().map(|fields| fields.remove("scope"));
    assert_eq!(provider.post(JSON, &unscoped.to_string(), None).await.error(), (400, "invalid_request"));
    let mut refresh_grant = request.clone();
    refresh_grant["grant_type"] = "refresh_token".into();
    refresh_grant["refresh_token"] = "rt-anything".into();
    let refused = provider.post(JSON, &refresh_grant.to_string(), None).await;
    assert_eq!(refused.error(), (400, "unsupported_grant_type"));
    assert_eq!(provider.stats().tokens_issued, 1);

    // A partner has no users: what `issue_tokens` stands in for has no refresh token either.
    let tokens = provider.issue_tokens();
    assert!(tokens.refresh_token().is_none());
    provider.expire_access_tokens();
    assert_bare_401(&provider.api(access(&tokens)).await);
    assert_bare_401(&provider.anonymous_api().await);
}

#[tokio::test]
async fn kroger_takes_http_basic_only_and_refuses_a_spent_refresh_token_in_plain_text() {
    let provider = MockProvider::kroger().await;
    assert!(provider.token_url().ends_with("/v1/connect/oauth2/token"), "{}", provider.token_url());
    let tokens = provider.issue_tokens();
    let old = refresh(&tokens);
    let grant = |refresh_token: &str| form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]);
    let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);

    // Refused: no Basic, the secret in the body, a wrong secret, a JSON body.
    assert_eq!(provider.post(FORM, &grant(old), None).await.error(), (401, "invalid_client"));
    let in_body = format!("{}&client_id={MOCK_CLIENT_ID}&client_secret={MOCK_CLIENT_SECRET}", grant(old));
    assert_eq!(provider.post(FORM, &in_body, None).await.error(), (401, "invalid_client"));
    assert_eq!(provider.post(FORM, &in_body, Some(&mock_basic)).await.error(), (401, "invalid_client"));
    let wrong = provider.post(FORM, &grant(old), Some(&basic(MOCK_CLIENT_ID, "guess"))).await;
    assert_eq!(wrong.error(), (401, "invalid_client"));
    let as_json = json!({"grant_type": "refresh_token", "refresh_token": old}).to_string();
    assert_eq!(provider.post(JSON, &as_json, Some(&mock_basic)).await.error(), (400, "invalid_request"));

    let answer = provider.post(FORM, &grant(old), Some(&mock_basic)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_fields(&answer.text, &answer.json, &["refresh_token", "expires_in", "access_token", "token_type"]);
    assert_eq!(answer.field("token_type"), "bearer");
    assert_eq!(provider.api(answer.field("access_token")).await.status, 200);

    // Single use: spent, unknown, missing or refused by a fault, the same plain-text 400.
    provider.fail_next_token_calls(1, Fault::InvalidGrant);
    let new = answer.field("refresh_token");
    let bodies = [grant(new), grant(old), grant("rt-never-issued"), "grant_type=refresh_token".to_owned()];
    for body in bodies {
        let refused = provider.post(FORM, &body, Some(&mock_basic)).await;
        assert_eq!(refused.status, 400, "{body}");
        assert_eq!(refused.header("content-type"), "text/plain", "{body}");
        assert_eq!(refused.text, "Missing/Invalid Refresh Token", "{body}");
    }
    let stats = provider.stats();
    assert_eq!((stats.invalid_grants, stats.reuse_detected, stats.tokens_issued), (3, 1, 1));

    // The API's 401: Kroger's JSON, byte for byte, and no challenge (the reuse revoked the family).
    for rejected in [provider.api(answer.field("access_token")).await, provider.anonymous_api().await] {
        assert_eq!(rejected.status, 401);
        assert_eq!(
            rejected.text,
            r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#
        );
        assert_eq!(rejected.header("content-type"), "application/json");
        assert_eq!(rejected.header("www-authenticate"), "");
    }
}

#[tokio::test]
async fn withings_answers_every_token_call_with_http_200_and_an_envelope() {
    let provider = MockProvider::withings().await;
    assert_eq!(provider.token_url(), format!("{}/v2/oauth2", provider.uri()));
    let tokens = provider.issue_tokens();
    let answer = provider.withings_refresh(refresh(&tokens)).await;
    assert_eq!((answer.status, &answer.json["status"]), (200, &json!(0)), "{answer:?}");
    let body = &answer.json["body"];
    let fields = ["userid", "access_token", "refresh_token", "expires_in", "scope", "csrf_token", "token_type"];
    assert_fields(&answer.text, body, &fields);
    assert!(answer.text.starts_with(r#"{"status":0,"body":{"userid":""#), "{}", answer.text);
    assert_eq!(
        (&body["expires_in"], &body["scope"], &body["token_type"]),
        (&json!(10800), &json!("user.metrics"), &json!("Bearer"))
    );
    assert!(body["userid"].as_str().is_some_and(|id| id.parse::<u64>().is_ok()), "{body}");
    assert!(body["csrf_token"].as_str().is_some_and(|csrf| !csrf.is_empty()), "{body}");
    let access_token = body["access_token"].as_str().unwrap_or_default();
    let data = provider.api(access_token).await;
    assert_eq!((data.status, data.text.as_str()), (200, r#"{"status":0,"body":{}}"#));

    // Refusals are 200 as well; the envelope's status says what went wrong.
    let envelope = |error: &str| format!(r#"{{"status":503,"body":{{}},"error":"{error}"}}"#);
    let refused = provider.withings_refresh("rt-never-issued").await;
    assert_eq!((refused.status, refused.text), (200, envelope("Invalid Params: invalid refresh_token")));
    let grant = [("grant_type", "refresh_token"), ("refresh_token", refresh(&tokens))];
    let credentials = [("client_id", MOCK_CLIENT_ID), ("client_secret", MOCK_CLIENT_SECRET)];
    let without_action = provider.post(FORM, &form(&[&grant[..], &credentials[..]].concat()), None).await;
    assert_eq!((without_action.status, without_action.text), (200, envelope("Invalid Params: action")));
    let other_action = [&[("action", "getnonce")], &grant[..], &credentials[..]].concat();
    assert_eq!(provider.post(FORM, &form(&other_action), None).await.text, envelope("Invalid Params: action"));
    let basic_auth = [&[("action", "requesttoken")], &grant[..]].concat();
    let mock_basic = basic(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET);
    let refused = provider.post(FORM, &form(&basic_auth), Some(&mock_basic)).await;
    assert_eq!((refused.status, refused.text), (200, envelope("Invalid Params: invalid client_id or client_secret")));
    let as_json = json!({"action": "requesttoken", "grant_type": "refresh_token"}).to_string();
    let refused = provider.post(JSON, &as_json, None).await;
    assert_eq!((refused.status, &refused.json["status"]), (200, &json!(503)), "{refused:?}");
    provider.fail_next_token_calls(1, Fault::InvalidGrant);
    let injected = provider.withings_refresh(body["refresh_token"].as_str().unwrap_or_default()).await;
    assert_eq!(injected.text, envelope("Invalid Params: invalid refresh_token"));
    assert_eq!(provider.stats().invalid_grants, 2);

    // Only the dialect's path is a token endpoint; the API rejects a token with a 200 too.
    let elsewhere = format!("{}/oauth/token", provider.uri());
    let request = reqwest::Client::new().post(elsewhere).header("content-type", FORM).body("action=requesttoken");
    assert_eq!(Answer::read(request.send().await).await.status, 404);
    provider.expire_access_tokens();
    let rejected = provider.api(access_token).await;
    assert_eq!((rejected.status, rejected.text.as_str()), (200, WITHINGS_INVALID_TOKEN));
    assert!(crate::providers::withings_token_rejected(http::StatusCode::OK, rejected.text.as_bytes()));
    assert_eq!(provider.stats().api_unauthorized, 1);
}

#[tokio::test]
async fn withings_grace_keeps_the_previous_refresh_token_until_the_new_access_token_is_used() {
    let provider = MockProvider::withings().await;
    let tokens = provider.issue_tokens();
    let first = provider.withings_refresh(refresh(&tokens)).await;
    assert_eq!(first.json["status"], 0, "{first:?}");
    // The answer went astray, say: the client presents the refresh token it still has.
    let again = provider.withings_refresh(refresh(&tokens)).await;
    assert_eq!(again.json["status"], 0, "within the grace: {again:?}");
    let (first, again) = (&first.json["body"], &again.json["body"]);
    assert_ne!(first["access_token"], again["access_token"]);
    assert_ne!(first["refresh_token"], again["refresh_token"]);
    let stats = provider.stats();
    assert_eq!((stats.tokens_issued, stats.grace_refreshes, stats.reuse_detected), (2, 1, 0));

    // The new access token is used: the client evidently has the new pair, the grace is over.
    assert_eq!(provider.api(again["access_token"].as_str().unwrap_or_default()).await.status, 200);
    let late = provider.withings_refresh(refresh(&tokens)).await;
    assert_eq!(late.json["error"], "Invalid Params: invalid refresh_token", "{late:?}");
    let stats = provider.stats();
    assert_eq!((stats.grace_refreshes, stats.reuse_detected, stats.families_revoked), (1, 1, 1));
}

#[tokio::test]
async fn any_dialect_can_opt_into_the_grace_which_ends_eight_hours_after_the_rotation() {
    let clock = ManualClock::starting_now();
    let builder = MockProvider::builder().previous_refresh_token_grace(true).reuse_revokes_family(false);
    let provider = builder.clock(clock.clone()).start().await;
    let tokens = provider.issue_tokens();
    assert_eq!(provider.refresh(refresh(&tokens)).await.status, 200);

    clock.advance(PREVIOUS_REFRESH_TOKEN_GRACE - Duration::from_secs(1));
    let within = provider.refresh(refresh(&tokens)).await;
    assert_eq!(within.status, 200, "re-presenting does not restart the grace: {within:?}");
    clock.advance(Duration::from_secs(1));
    assert_eq!(provider.refresh(refresh(&tokens)).await.error(), (400, "invalid_grant"));
    // The pair issued within the grace is unaffected (no family revocation here).
    assert_eq!(provider.refresh(within.field("refresh_token")).await.status, 200);
    let stats = provider.stats();
    assert_eq!((stats.tokens_issued, stats.grace_refreshes, stats.reuse_detected), (3, 1, 1));
}

#[tokio::test]
async fn a_lost_answer_rotates_on_the_provider_while_the_client_times_out() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.fail_next_token_calls(1, Fault::LoseAnswer);
    // The client must time out by itself: the answer would come an hour later.
    let client = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().expect("a client");
    let body = format!("grant_type=refresh_token&refresh_token={}", refresh(&tokens));
    let lost = client.post(provider.token_url()).header("content-type", FORM).body(body.clone()).send().await;
    assert!(lost.as_ref().is_err_and(reqwest::Error::is_timeout), "{lost:?}");
    let stats = provider.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.answers_lost), (1, 1, 1));

    // The provider rotated: the refresh token the client still holds is spent, and trying it
    // again looks like a replay.
    assert_eq!(provider.refresh(refresh(&tokens)).await.error(), (400, "invalid_grant"));
    assert_eq!(provider.stats().reuse_detected, 1);
    let requests = provider.token_requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!((request.url.path(), request.body.as_slice()), ("/oauth/token", body.as_bytes()));
        assert_eq!(request.headers.get("content-type").map(HeaderValue::as_bytes), Some(FORM.as_bytes()));
    }
}

#[tokio::test]
async fn withings_grace_rescues_a_client_whose_refresh_answer_was_lost() {
    let provider = MockProvider::withings().await;
    let tokens = provider.issue_tokens();
    provider.fail_next_token_calls(1, Fault::LoseAnswer);
    let client = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().expect("a client");
    let body = form(&[
        ("action", "requesttoken"),
        ("grant_type", "refresh_token"),
        ("client_id", MOCK_CLIENT_ID),
        ("client_secret", MOCK_CLIENT_SECRET),
        ("refresh_token", refresh(&tokens)),
    ]);
    let lost = client.post(provider.token_url()).header("content-type", FORM).body(body).send().await;
    assert!(lost.as_ref().is_err_and(reqwest::Error::is_timeout), "{lost:?}");

    let retried = provider.withings_refresh(refresh(&tokens)).await;
    assert_eq!(retried.json["status"], 0, "{retried:?}");
    let access_token = retried.json["body"]["access_token"].as_str().unwrap_or_default();
    assert_eq!(provider.api(access_token).await.status, 200);
    let stats = provider.stats();
    assert_eq!((stats.answers_lost, stats.grace_refreshes, stats.reuse_detected), (1, 1, 0));
    assert_eq!(provider.token_requests().len(), 2);
}

#[tokio::test]
async fn every_dialect_answers_malformed_requests_with_its_error_not_a_panic() {
    let dialects = [Dialect::Standard, Dialect::Whoop, Dialect::WhoopPartner, Dialect::Kroger, Dialect::Withings];
    let cases: [(&str, &str, Option<&str>); 9] = [
        (FORM, "", None),
        (FORM, "action=requesttoken&grant_type=refresh_token&grant_type=refresh_token", None),
        (FORM, "%FF%FE=%00&&==&action=requesttoken", Some("Basic %%%")),
        (FORM, "action=requesttoken&grant_type=refresh_token&refresh_token=%FF", Some("Basic Og==")),
        (JSON, "{not json", None),
        (JSON, "[1, 2]", None),
        (JSON, r#"{"grant_type": 7, "scope": ["offline"]}"#, None),
        ("text/plain", "grant_type=refresh_token", None),
        ("", "", Some("Bearer")),
    ];
    for dialect in dialects {
        let builder = MockProvider::builder().dialect(dialect);
        let provider = builder.client_credentials(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).start().await;
        for (content_type, body, authorization) in cases {
            let answer = provider.post(content_type, body, authorization).await;
            let refused = match dialect {
                Dialect::Withings => answer.status == 200 && answer.json["status"] == 503,
                _ => matches!(answer.status, 400 | 401),
            };
            assert!(refused, "{dialect:?} {content_type:?} {body:?}: {answer:?}");
        }
        let garbled = HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text is a valid header value");
        let request = reqwest::Client::new().get(provider.api_url("x")).header("authorization", garbled);
        let rejected = Answer::read(request.send().await).await;
        match dialect {
            Dialect::Withings => assert_eq!(rejected.json["status"], 401, "{rejected:?}"),
            _ => assert_eq!(rejected.status, 401, "{dialect:?}"),
        }
        assert_eq!(provider.stats().tokens_issued, 0, "{dialect:?}");
    }
}

#[tokio::test]
async fn accepts_access_token_checks_a_token_as_the_api_does_and_counts_it() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    let token = tokens.access_token().secret();

    assert!(provider.accepts_access_token(token));
    assert!(!provider.accepts_access_token("never-issued"));
    provider.expire_access_tokens();
    assert!(!provider.accepts_access_token(token), "an expired token is refused");
    assert_eq!(provider.api(token).await.status, 401, "as the API refuses it");

    let stats = provider.stats();
    assert_eq!((stats.api_calls, stats.api_ok, stats.api_unauthorized), (4, 1, 3), "{stats:?}");
}

impl MockProvider {
    async fn revoke(&self, content_type: &str, body: &str, basic: Option<&str>) -> Answer {
        let request = reqwest::Client::new().post(self.revocation_url());
        let mut request = request.header("content-type", content_type).body(body.to_owned());
        if let Some(basic) = basic {
            request = request.header("authorization", basic);
        }
        Answer::read(request.send().await).await
    }
}

#[tokio::test]
async fn the_revocation_endpoint_revokes_a_refresh_tokens_family_or_one_access_token() {
    let provider = MockProvider::builder().client_credentials("client", "secret").start().await;
    let basic = format!("Basic {}", BASE64.encode("client:secret"));
    let (family, other) = (provider.issue_tokens(), provider.issue_tokens());
    let refresh_token = family.refresh_token().unwrap().secret();

    // Client authentication as at the token endpoint.
    let body = format!("token={refresh_token}&token_type_hint=refresh_token");
    assert_eq!(provider.revoke(FORM, &body, None).await.error(), (401, "invalid_client"));
    let wrong = format!("Basic {}", BASE64.encode("client:wrong"));
    assert_eq!(provider.revoke(FORM, &body, Some(&wrong)).await.error(), (401, "invalid_client"));
    assert_eq!(provider.revoke(JSON, r#"{"token":"x"}"#, Some(&basic)).await.error(), (400, "invalid_request"));
    assert_eq!(
        provider.revoke(FORM, "token_type_hint=refresh_token", Some(&basic)).await.error(),
        (400, "invalid_request")
    );
    assert_eq!(provider.stats().tokens_revoked, 0);

    // A refresh token: its family goes, access tokens with it.
    assert_eq!(provider.revoke(FORM, &body, Some(&basic)).await.status, 200);
    let refresh = format!("grant_type=refresh_token&refresh_token={refresh_token}");
    assert_eq!(provider.post(FORM, &refresh, Some(&basic)).await.error(), (400, "invalid_grant"));
    assert_eq!(provider.api(family.access_token().secret()).await.status, 401);
    assert_eq!(provider.api(other.access_token().secret()).await.status, 200, "another family is untouched");

    // An access token, whatever the hint says: that one token goes; its refresh token stays.
    let body = format!("token={}&token_type_hint=refresh_token", other.access_token().secret());
    assert_eq!(provider.revoke(FORM, &body, Some(&basic)).await.status, 200);
    assert_eq!(provider.api(other.access_token().secret()).await.status, 401);
    let refresh = format!("grant_type=refresh_token&refresh_token={}", other.refresh_token().unwrap().secret());
    assert_eq!(provider.post(FORM, &refresh, Some(&basic)).await.status, 200);

    // RFC 7009 §2.2: an unknown or already revoked token is answered 200, and counts nothing.
    for token in ["rt-never-issued", refresh_token] {
        assert_eq!(provider.revoke(FORM, &format!("token={token}"), Some(&basic)).await.status, 200);
    }
    let stats = provider.stats();
    assert_eq!((stats.revocation_calls, stats.tokens_revoked), (8, 2));
    assert_eq!(provider.revocation_requests().len(), 8);
}

#[tokio::test]
async fn revocation_faults_answer_first_and_the_metadata_names_the_endpoint() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    let body = format!("token={}", tokens.refresh_token().unwrap().secret());
    provider.fail_next_revocation_calls(1, Fault::Status(503));
    provider.fail_next_revocation_calls(1, Fault::RateLimited { retry_after: Duration::from_millis(1500) });
    assert_eq!(provider.revoke(FORM, &body, None).await.error(), (503, "server_error"));
    let limited = provider.revoke(FORM, &body, None).await;
    assert_eq!((limited.status, limited.header("retry-after")), (429, "2"));
    assert_eq!(provider.api(tokens.access_token().secret()).await.status, 200, "faulted calls revoke nothing");
    assert_eq!(provider.revoke(FORM, &body, None).await.status, 200);
    assert_eq!(provider.api(tokens.access_token().secret()).await.status, 401);

    let metadata =
        reqwest::Client::new().get(format!("{}/.well-known/oauth-authorization-server", provider.uri())).send().await;
    let metadata = Answer::read(metadata).await;
    assert_eq!(metadata.field("revocation_endpoint"), provider.revocation_url());
    let kroger = MockProvider::kroger().await;
    let metadata =
        reqwest::Client::new().get(format!("{}/.well-known/oauth-authorization-server", kroger.uri())).send().await;
    assert!(Answer::read(metadata).await.json.get("revocation_endpoint").is_none(), "Kroger documents none");
}

//! The provider the benches run against: a lean rotating OAuth 2.0 provider, what its hyper
//! server answers, and what it counts.
//!
//! `testkit::MockProvider` is wiremock: every request is matched against every mounted mock and
//! recorded, which at 20,000 requests per storm costs more than the layer being measured. This
//! provider does the same things the benches need and nothing else:
//!
//! * `GET /api/...` answers 200 `{"ok":true}` to a valid bearer token, else 401 with
//!   `WWW-Authenticate: Bearer error="invalid_token"` and a JSON body (RFC 6750 §3.1).
//! * `POST /oauth/token` takes the refresh-token grant as a form body (client authentication is
//!   accepted in any form and not checked) and rotates: each refresh token works once, and
//!   presenting a spent one revokes its whole token family (RFC 9700 §4.14.2), as Kroger-style
//!   providers and `MockProvider` do. The answer is held for a fixed latency.
//! * `GET /warm` answers 200 after [`WARM_HOLD`], counting nothing: what a client sends to open
//!   its connections before a storm.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";
/// How long access tokens live, as the token endpoint says (`expires_in`).
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The path a client warms its connections on (see [`WARM_HOLD`]).
pub const WARM_PATH: &str = "/warm";
/// How long `GET /warm` is held: long enough that a client sending K of them at once finds no
/// connection coming free meanwhile and opens K (connecting on loopback takes well under 1 ms).
pub const WARM_HOLD: Duration = Duration::from_millis(20);
/// The longest a held token answer waits for its gate (see [`Provider::gate_token_answers`]).
const GATE_TIMEOUT: Duration = Duration::from_secs(10);
/// A gate also opens once no API request has arrived for this long.
const GATE_QUIET: Duration = Duration::from_millis(50);

/// An access token and refresh token as the provider issued them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
}

/// What the provider saw since the last [`Provider::reset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Calls to the token endpoint.
    pub token_calls: u64,
    /// New token sets issued.
    pub tokens_issued: u64,
    /// Token calls refused with `invalid_grant` (spent, revoked or unknown refresh token).
    pub invalid_grants: u64,
    /// Spent refresh tokens presented again (each revokes its family).
    pub reuse_detected: u64,
    /// API requests answered 200.
    pub api_ok: u64,
    /// API requests answered 401.
    pub api_unauthorized: u64,
    /// TCP connections accepted on the API port (the control port's are not counted).
    pub connections: u64,
}

#[derive(Default)]
struct Counters {
    token_calls: AtomicU64,
    tokens_issued: AtomicU64,
    invalid_grants: AtomicU64,
    reuse_detected: AtomicU64,
    api_ok: AtomicU64,
    api_unauthorized: AtomicU64,
    connections: AtomicU64,
}

enum RefreshState {
    Active,
    Spent,
}

#[derive(Default)]
struct Grants {
    next: u64,
    /// Refresh token → (family, state). Revoking a family removes its tokens.
    refresh: HashMap<String, (u64, RefreshState)>,
}

/// The provider's state, shared by the server's connections and the bench.
pub struct Provider {
    token_latency: Duration,
    /// Valid access tokens → family. Read on every API request, so kept apart from `grants`.
    access: RwLock<HashMap<String, u64>>,
    grants: Mutex<Grants>,
    counters: Counters,
    /// When non-zero, token answers wait until this many 401s were sent (see `gate_token_answers`).
    gate_after_401s: AtomicUsize,
    gate_open: Notify,
    started: std::time::Instant,
    /// When the last API request arrived, in nanoseconds since `started`.
    last_api_request: AtomicU64,
}

impl Provider {
    pub(super) fn new(token_latency: Duration) -> Self {
        Self {
            token_latency,
            access: RwLock::new(HashMap::new()),
            grants: Mutex::new(Grants::default()),
            counters: Counters::default(),
            gate_after_401s: AtomicUsize::new(0),
            gate_open: Notify::new(),
            started: std::time::Instant::now(),
            last_api_request: AtomicU64::new(0),
        }
    }

    /// Forgets every token and zeroes the counters and the gate.
    pub fn reset(&self) {
        self.access.write().clear();
        *self.grants.lock() = Grants::default();
        for counter in [
            &self.counters.token_calls,
            &self.counters.tokens_issued,
            &self.counters.invalid_grants,
            &self.counters.reuse_detected,
            &self.counters.api_ok,
            &self.counters.api_unauthorized,
            &self.counters.connections,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.gate_after_401s.store(0, Ordering::Relaxed);
    }

    /// Issues a new token family, as an authorization-code exchange would.
    pub fn issue_tokens(&self) -> Issued {
        let family = {
            let mut grants = self.grants.lock();
            grants.next += 1;
            grants.next
        };
        self.issue(family)
    }

    /// Issues `n` token families, one per user of a service that holds many.
    pub fn issue_token_families(&self, n: usize) -> Vec<Issued> {
        (0..n).map(|_| self.issue_tokens()).collect()
    }

    /// Every access token issued so far is rejected from now on (refresh tokens stay valid).
    pub fn expire_access_tokens(&self) {
        self.access.write().clear();
    }

    /// Holds every token answer until `n` API requests have been answered 401, or no API request
    /// has arrived for 50 ms (at most 10 s), so that a storm's requests are all waiting for the
    /// refresh at once.
    pub fn gate_token_answers(&self, n: usize) {
        self.last_api_request.store(self.since_start().as_nanos() as u64, Ordering::Relaxed);
        self.gate_after_401s.store(n, Ordering::Relaxed);
    }

    pub fn seen(&self) -> Seen {
        let c = &self.counters;
        Seen {
            token_calls: c.token_calls.load(Ordering::Relaxed),
            tokens_issued: c.tokens_issued.load(Ordering::Relaxed),
            invalid_grants: c.invalid_grants.load(Ordering::Relaxed),
            reuse_detected: c.reuse_detected.load(Ordering::Relaxed),
            api_ok: c.api_ok.load(Ordering::Relaxed),
            api_unauthorized: c.api_unauthorized.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
        }
    }

    fn issue(&self, family: u64) -> Issued {
        let n = {
            let mut grants = self.grants.lock();
            grants.next += 1;
            grants.next
        };
        let issued = Issued { access_token: format!("at-{family}-{n}"), refresh_token: format!("rt-{family}-{n}") };
        self.grants.lock().refresh.insert(issued.refresh_token.clone(), (family, RefreshState::Active));
        self.access.write().insert(issued.access_token.clone(), family);
        self.counters.tokens_issued.fetch_add(1, Ordering::Relaxed);
        issued
    }

    fn revoke_family(&self, family: u64) {
        self.access.write().retain(|_, f| *f != family);
        self.grants.lock().refresh.retain(|_, (f, _)| *f != family);
    }

    /// The refresh-token grant: rotate, or refuse (and revoke the family on reuse).
    fn refresh(&self, refresh_token: Option<&str>) -> Option<Issued> {
        let refresh_token = refresh_token?;
        let family = {
            let mut grants = self.grants.lock();
            match grants.refresh.get_mut(refresh_token) {
                Some((family, state @ RefreshState::Active)) => {
                    *state = RefreshState::Spent;
                    Ok(*family)
                }
                Some((family, RefreshState::Spent)) => Err(Some(*family)),
                None => Err(None),
            }
        };
        match family {
            Ok(family) => Some(self.issue(family)),
            Err(reused) => {
                if let Some(family) = reused {
                    self.counters.reuse_detected.fetch_add(1, Ordering::Relaxed);
                    self.revoke_family(family);
                }
                None
            }
        }
    }

    /// Counts a connection accepted on the API port.
    pub(super) fn accepted(&self) {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers a request to the API port.
    pub(super) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() == Method::POST && request.uri().path() == TOKEN_PATH {
            return self.token_endpoint(request).await;
        }
        if request.uri().path() == WARM_PATH {
            tokio::time::sleep(WARM_HOLD).await;
            return respond(StatusCode::OK, "application/json", r#"{"ok":true}"#);
        }
        if request.uri().path().starts_with("/api/") {
            return self.api(&request);
        }
        respond(StatusCode::NOT_FOUND, "application/json", r#"{"error":"not_found"}"#)
    }

    fn api(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if self.gate_after_401s.load(Ordering::Relaxed) != 0 {
            self.last_api_request.store(self.since_start().as_nanos() as u64, Ordering::Relaxed);
        }
        let token =
            request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| {
                // A DPoP-bound token comes with a proof, which the bench's server takes on trust:
                // the bench measures what the client does to make it.
                let dpop = || value.strip_prefix("DPoP ").filter(|_| request.headers().contains_key("dpop"));
                value.strip_prefix("Bearer ").or_else(dpop)
            });
        let valid = token.is_some_and(|token| self.access.read().contains_key(token));
        if valid {
            self.counters.api_ok.fetch_add(1, Ordering::Relaxed);
            return respond(StatusCode::OK, "application/json", r#"{"ok":true}"#);
        }
        let unauthorized = self.counters.api_unauthorized.fetch_add(1, Ordering::Relaxed) + 1;
        let gate = self.gate_after_401s.load(Ordering::Relaxed);
        if gate != 0 && unauthorized >= gate as u64 {
            self.gate_open.notify_waiters();
        }
        let mut response = respond(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"error":"invalid_token","error_description":"The access token expired"}"#,
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Bearer realm="bench", error="invalid_token""#),
        );
        response
    }

    async fn token_endpoint(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.counters.token_calls.fetch_add(1, Ordering::Relaxed);
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return respond(StatusCode::BAD_REQUEST, "application/json", r#"{"error":"invalid_request"}"#),
        };
        let mut grant_type = None;
        let mut refresh_token = None;
        for (name, value) in form_urlencoded::parse(&body) {
            match &*name {
                "grant_type" => grant_type = Some(value.into_owned()),
                "refresh_token" => refresh_token = Some(value.into_owned()),
                _ => {}
            }
        }
        // Decided on arrival, answered after the latency: a provider spends the refresh token as
        // soon as it accepts the request.
        let outcome = match grant_type.as_deref() {
            Some("refresh_token") => self.refresh(refresh_token.as_deref()),
            _ => None,
        };
        self.wait_for_gate().await;
        tokio::time::sleep(self.token_latency).await;
        match outcome {
            Some(issued) => {
                let body = serde_json::json!({
                    "access_token": issued.access_token,
                    "token_type": "Bearer",
                    "expires_in": ACCESS_TOKEN_LIFETIME.as_secs(),
                    "refresh_token": issued.refresh_token,
                });
                respond(StatusCode::OK, "application/json", body.to_string())
            }
            None => {
                self.counters.invalid_grants.fetch_add(1, Ordering::Relaxed);
                respond(StatusCode::BAD_REQUEST, "application/json", r#"{"error":"invalid_grant"}"#)
            }
        }
    }

    async fn wait_for_gate(&self) {
        let deadline = tokio::time::Instant::now() + GATE_TIMEOUT;
        loop {
            let gate = self.gate_after_401s.load(Ordering::Relaxed);
            let notified = self.gate_open.notified();
            tokio::pin!(notified);
            // Registered before the check, so a notification between the two is not lost.
            notified.as_mut().enable();
            if gate == 0 || self.counters.api_unauthorized.load(Ordering::Relaxed) >= gate as u64 {
                return;
            }
            // A client that holds its requests back while it refreshes (behind a lock) never sends
            // all of them: open once the API has been quiet for a while.
            let quiet =
                self.since_start().saturating_sub(Duration::from_nanos(self.last_api_request.load(Ordering::Relaxed)));
            if quiet >= GATE_QUIET || tokio::time::Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout(GATE_QUIET / 4, notified).await;
        }
    }

    fn since_start(&self) -> Duration {
        self.started.elapsed()
    }
}

pub(super) fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

//! The control API of a server in a child process: what the bench does to the provider between
//! storms (reset it, issue tokens, expire them, gate its token answers, read its counters),
//! over HTTP on a port of its own.
//!
//! A port of its own, so that control requests never touch what the provider counts on the API
//! port (requests, connections) nor the gate's quiet timer. Between storms only: a control call
//! is a round trip, and nothing here is on a storm's path.
//!
//! | request | does | answers |
//! | --- | --- | --- |
//! | `POST /reset` | [`Provider::reset`] | 204 |
//! | `POST /issue?families=N` | [`Provider::issue_token_families`] | the [`Issued`] list, JSON |
//! | `POST /expire` | [`Provider::expire_access_tokens`] | 204 |
//! | `POST /gate?after_401s=N` | [`Provider::gate_token_answers`] | 204 |
//! | `GET /seen` | [`Provider::seen`] | [`Seen`], JSON |

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::provider::{Issued, Provider, Seen, respond};

/// The longest a control call may take (issuing 1,000 token families takes milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers a control request (the server's side).
pub(super) fn handle(provider: &Provider, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let query = |name: &str| {
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.parse::<usize>().ok())
    };
    let done = || respond(StatusCode::NO_CONTENT, "text/plain", "");
    let json = |body: String| respond(StatusCode::OK, "application/json", body);
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/reset") => {
            provider.reset();
            done()
        }
        (&Method::POST, "/issue") => match query("families") {
            Some(n) => json(serde_json::to_string(&provider.issue_token_families(n)).expect("tokens as JSON")),
            None => respond(StatusCode::BAD_REQUEST, "text/plain", "families=N is required"),
        },
        (&Method::POST, "/expire") => {
            provider.expire_access_tokens();
            done()
        }
        (&Method::POST, "/gate") => match query("after_401s") {
            Some(n) => {
                provider.gate_token_answers(n);
                done()
            }
            None => respond(StatusCode::BAD_REQUEST, "text/plain", "after_401s=N is required"),
        },
        (&Method::GET, "/seen") => json(serde_json::to_string(&provider.seen()).expect("counters as JSON")),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "no such control request"),
    }
}

/// The bench's side of the control API.
#[derive(Debug)]
pub(super) struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client for the control API at `addr`.
    pub(super) fn new(addr: std::net::SocketAddr) -> Client {
        let http = reqwest::Client::builder().no_proxy().timeout(CALL_TIMEOUT).build().expect("a control client");
        Client { http, base: format!("http://{addr}") }
    }

    /// Sends one control request and returns its body.
    ///
    /// # Panics
    ///
    /// When the server does not answer 2xx within 30 s: a bench cannot go on without its provider.
    async fn call(&self, method: Method, path_and_query: &str) -> Bytes {
        let url = format!("{}{path_and_query}", self.base);
        let response = self
            .http
            .request(method, &url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("the bench server's control API, {path_and_query}: {e}"));
        let status = response.status();
        let body = response.bytes().await.unwrap_or_else(|e| panic!("the control answer to {path_and_query}: {e}"));
        assert!(status.is_success(), "the control API answered {path_and_query} with {status}: {body:?}");
        body
    }

    pub(super) async fn reset(&self) {
        self.call(Method::POST, "/reset").await;
    }

    pub(super) async fn issue_token_families(&self, n: usize) -> Vec<Issued> {
        let body = self.call(Method::POST, &format!("/issue?families={n}")).await;
        serde_json::from_slice(&body).expect("the issued tokens")
    }

    pub(super) async fn expire_access_tokens(&self) {
        self.call(Method::POST, "/expire").await;
    }

    pub(super) async fn gate_token_answers(&self, n: usize) {
        self.call(Method::POST, &format!("/gate?after_401s={n}")).await;
    }

    pub(super) async fn seen(&self) -> Seen {
        serde_json::from_slice(&self.call(Method::GET, "/seen").await).expect("the counters")
    }
}

//! One driver for both front ends: a test written against [`Client`] runs through the reqwest
//! middleware and through the tower layer (over hyper-util's client), with the same requests and
//! the same assertions. Scenarios loop over [`Front::ALL`].

use bytes::Bytes;
use futures::future::join_all;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_token_refresh::{Error, ReplayBody, SkipAuth, TokenKey, TokenRefresh, TokenRefreshService};
use tower::ServiceExt;

use crate::helpers::{REQUEST_BOUND, client_with};

/// Which front end a scenario runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// `reqwest_middleware::ClientWithMiddleware` with the layer in it.
    Reqwest,
    /// hyper-util's client wrapped in `TokenRefresh::layer()`.
    Tower,
}

impl Front {
    /// Both, in the order scenarios run them.
    pub const ALL: [Front; 2] = [Front::Reqwest, Front::Tower];
}

/// A client of either front end, sharing the layer it was made from.
#[derive(Clone)]
pub enum Client {
    Reqwest(ClientWithMiddleware),
    Tower(Box<TokenRefreshService<HyperClient<HttpConnector, ReplayBody>>>),
}

/// What a caller got back: the answer as it can read it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request that failed: whether with this crate's error, and the error's text (shown when an
/// assertion on it fails).
#[derive(Debug)]
pub struct Failure {
    pub reauthorization_required: bool,
    pub ours: bool,
    #[allow(dead_code, reason = "read through Debug, in the failure messages of assertions")]
    pub text: String,
}

impl Failure {
    fn from_ours(err: Option<&Error>, text: String) -> Failure {
        Failure {
            reauthorization_required: err.is_some_and(Error::is_reauthorization_required),
            ours: err.is_some(),
            text,
        }
    }
}

impl Client {
    /// A client of `front` with `auth` in it.
    pub fn new(front: Front, auth: &TokenRefresh) -> Client {
        match front {
            Front::Reqwest => Client::Reqwest(client_with(auth)),
            Front::Tower => {
                let client = HyperClient::builder(TokioExecutor::new()).build_http::<ReplayBody>();
                Client::Tower(Box::new(tower::ServiceBuilder::new().layer(auth.layer()).service(client)))
            }
        }
    }

    /// A GET to `url`, to be sent with [`Call::send`].
    pub fn get(&self, url: impl Into<String>) -> Call {
        Call { client: self.clone(), url: url.into(), key: None, headers: Vec::new(), skip_auth: false }
    }
}

/// One request being put together.
pub struct Call {
    client: Client,
    url: String,
    key: Option<TokenKey>,
    headers: Vec<(HeaderName, HeaderValue)>,
    skip_auth: bool,
}

impl Call {
    /// Sent with `key`'s tokens.
    pub fn key(mut self, key: Option<TokenKey>) -> Self {
        self.key = key;
        self
    }

    /// With a header of the caller's own.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((HeaderName::from_static(name), HeaderValue::from_str(value).unwrap()));
        self
    }

    /// Marked [`SkipAuth`].
    pub fn skip_auth(mut self) -> Self {
        self.skip_auth = true;
        self
    }

    /// Sends it and reads the whole answer; a request that takes longer than [`REQUEST_BOUND`]
    /// fails the test.
    pub async fn send(self) -> Result<Answer, Failure> {
        let what = format!("GET {}", self.url);
        match tokio::time::timeout(REQUEST_BOUND, self.send_unbounded()).await {
            Ok(outcome) => outcome,
            Err(_) => panic!("{what} took longer than {REQUEST_BOUND:?} through the layer: it hung"),
        }
    }

    async fn send_unbounded(self) -> Result<Answer, Failure> {
        match self.client {
            Client::Reqwest(client) => {
                let mut request = client.get(&self.url);
                for (name, value) in self.headers {
                    request = request.header(name, value);
                }
                if let Some(key) = self.key {
                    request = request.with_extension(key);
                }
                if self.skip_auth {
                    request = request.with_extension(SkipAuth);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|err| Failure::from_ours(Error::from_middleware(&err), err.to_string()))?;
                let (status, headers) = (response.status().as_u16(), response.headers().clone());
                let body = response.bytes().await.map_err(|err| Failure::from_ours(None, err.to_string()))?;
                Ok(Answer { status, headers, body })
            }
            Client::Tower(service) => {
                let mut request = http::Request::get(&self.url).body(Full::<Bytes>::default()).unwrap();
                request.headers_mut().extend(self.headers);
                if let Some(key) = self.key {
                    request.extensions_mut().insert(key);
                }
                if self.skip_auth {
                    request.extensions_mut().insert(SkipAuth);
                }
                let response = (*service)
                    .oneshot(request)
                    .await
                    .map_err(|err| Failure::from_ours(err.downcast_ref::<Error>(), err.to_string()))?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(|err| Failure::from_ours(None, err.to_string()))?.to_bytes();
                Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
            }
        }
    }

    /// Sends it in a task of its own, for a test to act while it is under way.
    pub fn spawn(self) -> tokio::task::JoinHandle<Result<Answer, Failure>> {
        tokio::spawn(self.send())
    }
}

/// Sends `n` concurrent GETs to `url` (optionally as `key`) and returns their statuses; a request
/// that failed counts as status 0.
pub async fn storm(client: &Client, url: &str, n: usize, key: Option<TokenKey>) -> Vec<u16> {
    join_all((0..n).map(|_| client.get(url).key(key.clone()).send()))
        .await
        .into_iter()
        .map(|outcome| outcome.map_or(0, |answer| answer.status))
        .collect()
}

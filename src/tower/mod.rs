//! The tower front end (feature `tower`): [`TokenRefreshLayer`] wraps any tower service that sends
//! `http::Request`s (a tonic channel, hyper-util's client, a stack of your own) with the same
//! exchange as the reqwest middleware: the same per-key single flight, stores, terminal state and
//! counters, since it is the same [`TokenRefresh`] value.

mod body;

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;
use url::Url;

pub use body::{ReplayBody, ResponseBody};

use crate::cache::paced;
use crate::error::Error;
use crate::exchange::{Answer, Credential, Resend, discard_body};
use crate::key::TokenKey;
use crate::peek::{BoxError, Peeked, peek_body};
use crate::stats::Event;
use crate::token_refresh::TokenRefresh;

/// How many bytes of a request body the tower layer keeps so that it can send the request again
/// after a refresh, unless set otherwise with [`TokenRefreshLayer::replay_limit`]: 64 KiB (65,536
/// bytes). A longer body is sent once.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

impl TokenRefresh {
    /// A tower layer over this value: services it wraps attach its tokens and refresh them with
    /// it. Every clone of this value, and every service of every layer made from it, shares one
    /// single flight per key, so a reqwest client and a tower stack given one `TokenRefresh`
    /// refresh once between them.
    ///
    /// The wrapped service is sent `http::Request<ReplayBody>` (see [`ReplayBody`]) and its
    /// answers reach the caller as `http::Response<ResponseBody<_>>`; its errors, and this crate's
    /// [`Error`], reach the caller boxed (downcast with `err.downcast_ref::<Error>()`).
    ///
    /// A request whose URI has no origin (tonic's are a path: the channel adds its origin) gets
    /// the token only when the layer is told the origin with [`TokenRefreshLayer::origin`].
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use http_body_util::{BodyExt, Full};
    /// use hyper_util::client::legacy::Client;
    /// use hyper_util::rt::TokioExecutor;
    /// use reqwest_token_refresh::testkit::MockProvider;
    /// use reqwest_token_refresh::{RefreshTokenGrant, ReplayBody, TokenRefresh};
    /// use tower::ServiceExt;
    ///
    /// let provider = MockProvider::start().await;
    /// let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()))
    ///     .initial_tokens(provider.issue_tokens())
    ///     .allow_origin(provider.uri())
    ///     .build()?;
    /// let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    /// let service = tower::ServiceBuilder::new().layer(auth.layer()).service(client);
    ///
    /// provider.expire_access_tokens();
    /// let request = http::Request::get(provider.api_url("v1/me")).body(Full::<bytes::Bytes>::default())?;
    /// let response = service.oneshot(request).await?;
    ///
    /// assert_eq!(response.status(), 200, "a 401, one refresh, and the retry got through");
    /// assert_eq!(auth.stats().refreshes, 1);
    /// let body = response.into_body().collect().await?.to_bytes();
    /// assert!(!body.is_empty());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn layer(&self) -> TokenRefreshLayer {
        TokenRefreshLayer { auth: self.clone(), origin: None, replay_limit: DEFAULT_REPLAY_LIMIT }
    }
}

/// A tower layer that attaches [`TokenRefresh`]'s tokens; made by [`TokenRefresh::layer`].
#[derive(Clone)]
pub struct TokenRefreshLayer {
    auth: TokenRefresh,
    /// For requests whose URI is a path only: the origin they go to, and whether it may get the
    /// token (decided once, when it was set).
    origin: Option<Arc<PathOnly>>,
    replay_limit: usize,
}

struct PathOnly {
    origin: Url,
    refused: Option<&'static str>,
}

impl fmt::Debug for TokenRefreshLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefreshLayer")
            .field("origin", &self.origin.as_ref().map(|path_only| path_only.origin.as_str()))
            .field("replay_limit", &self.replay_limit)
            .field("auth", &self.auth)
            .finish()
    }
}

impl TokenRefreshLayer {
    /// The origin that requests whose URI is only a path are sent to (a tonic channel's, such as
    /// `https://grpc.example:443`). Such requests get the token as a request to that origin
    /// would: the layer's allowed origins and its `http` rule decide.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `origin` is not a URL with a host.
    pub fn origin(mut self, origin: &str) -> Result<Self, Error> {
        let url = Url::parse(origin).map_err(|e| Error::Config(format!("origin {origin:?} does not parse: {e}")))?;
        if url.host().is_none() {
            return Err(Error::Config(format!("origin {origin:?} has no host")));
        }
        let refused = self.auth.inner.origins.refuses(&url);
        self.origin = Some(Arc::new(PathOnly { origin: url, refused }));
        Ok(self)
    }

    /// How many bytes of a request body to keep for the retry after a refresh; see
    /// [`ReplayBody`]. Default: [`DEFAULT_REPLAY_LIMIT`] (64 KiB). Zero keeps only empty bodies.
    #[must_use = "a builder method returns the changed layer; on its own the call changes nothing"]
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// Why a request to `uri` must not get the token, or `None` when it may.
    fn refuses(&self, uri: &Uri) -> Option<&'static str> {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return match &self.origin {
                Some(path_only) => path_only.refused,
                None => Some("the URI has no origin, and the layer was given none (TokenRefreshLayer::origin)"),
            };
        };
        match Url::parse(&format!("{scheme}://{authority}/")) {
            Ok(url) => self.auth.inner.origins.refuses(&url),
            Err(_) => Some("the URI's origin does not parse as a URL"),
        }
    }

    /// The whole URL a request to `uri` goes to, which a DPoP proof is signed for; see
    /// [`target`].
    fn target(&self, uri: &Uri) -> Option<Url> {
        target(uri, self.origin.as_deref())
    }
}

/// The whole URL a request to `uri` goes to, which a DPoP proof is signed for: `uri` itself when
/// it has an origin, else `path_only`'s origin with `uri`'s path and query. The path is set, not
/// joined: a path such as `//other.example/x` stays a path of this origin.
fn target(uri: &Uri, path_only: Option<&PathOnly>) -> Option<Url> {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Url::parse(&uri.to_string()).ok();
    }
    let mut url = path_only?.origin.clone();
    url.set_path(uri.path());
    url.set_query(uri.query());
    Some(url)
}

impl<S> Layer<S> for TokenRefreshLayer {
    type Service = TokenRefreshService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenRefreshService { inner, layer: self.clone() }
    }
}

/// A tower service that attaches [`TokenRefresh`]'s tokens to the requests it passes to `S`,
/// refreshes once per expiry however many fail at once, and sends each rejected request again
/// once; made by [`TokenRefreshLayer`].
#[derive(Clone, Debug)]
pub struct TokenRefreshService<S> {
    inner: S,
    layer: TokenRefreshLayer,
}

/// The future of [`TokenRefreshService`].
pub type ResponseFuture<B> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

impl<S, B, ResB> Service<Request<B>> for TokenRefreshService<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was polled ready goes with this request; its clone stays for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move { layer.exchange(inner, request).await })
    }
}

impl TokenRefreshLayer {
    /// One request through the layer: what `TokenRefresh`'s reqwest middleware does, for tower.
    async fn exchange<S, B, ResB>(
        self,
        mut inner: S,
        request: Request<B>,
    ) -> Result<Response<ResponseBody<ResB>>, BoxError>
    where
        S: Service<Request<ReplayBody>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let auth = &self.auth;
        let refused = match auth.admits(request.extensions(), request.headers()) {
            false => true,
            true => self
                .refuses(request.uri())
                .inspect(|why| tracing::debug!(uri = %request.uri(), why, "no token attached"))
                .is_some(),
        };
        if refused {
            let (parts, body) = request.into_parts();
            let (body, _) = ReplayBody::keep(body, 0).await;
            return call(&mut inner, Request::from_parts(parts, body)).await;
        }
        auth.inner.stats.count(Event::Request);
        let key = request.extensions().get::<TokenKey>().cloned().unwrap_or_default();
        let (credential, sent, pass) = auth.inner.cache.lease(&key).await?.into_parts();
        let credential = credential.map_err(|problem| problem.into_error(key.clone()))?;
        let (mut parts, body) = request.into_parts();
        let (body, kept) = ReplayBody::keep(body, self.replay_limit).await;
        // What a retry needs: the request as it came (without the token), and its body's frames.
        let retry_parts = kept.as_ref().map(|_| parts.clone());
        let target = if credential.proves() { self.target(&parts.uri) } else { None };
        let proof = auth.proof(&credential, &key, &parts.method, || target.clone())?;
        let with = credential.attach(&mut parts.headers, proof);
        let answer = {
            let first = std::pin::pin!(call(&mut inner, Request::from_parts(parts, body)));
            paced(pass, first).await?
        };
        auth.observe(&with, target.as_ref(), answer.headers());
        if !auth.may_reject(&answer) {
            auth.inner.cache.accepted(&sent, sent.generation());
            return Ok(answer);
        }
        let path_only = self.origin.clone();
        let retry = retry_parts.zip(kept).map(|(parts, kept)| Again { auth, inner, parts, kept, path_only, key });
        // A tower stack shows no redirects: an answer is from the origin the request was sent to.
        auth.after_rejection(answer, true, retry, sent, with).await
    }
}

/// What a rejected request needs to go again: its parts as they came (without the token), its
/// body's frames, and where it went (for a DPoP proof).
struct Again<'a, S> {
    auth: &'a TokenRefresh,
    inner: S,
    parts: http::request::Parts,
    kept: body::Kept,
    /// The layer's origin for path-only URIs: a retry's proof (its token may be DPoP-bound when
    /// the first one was not) is signed for the URL the request goes to.
    path_only: Option<Arc<PathOnly>>,
    key: TokenKey,
}

impl<S, ResB> Resend for Again<'_, S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>> + Send,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Answer = Response<ResponseBody<ResB>>;
    type Error = BoxError;

    async fn resend(&mut self, credential: &Credential) -> Result<(Self::Answer, bool), BoxError> {
        let mut parts = self.parts.clone();
        let target = if credential.proves() { target(&parts.uri, self.path_only.as_deref()) } else { None };
        let proof = self.auth.proof(credential, &self.key, &parts.method, || target.clone())?;
        let with = credential.clone().attach(&mut parts.headers, proof);
        let answer = call(&mut self.inner, Request::from_parts(parts, self.kept.body())).await?;
        self.auth.observe(&with, target.as_ref(), answer.headers());
        Ok((answer, true))
    }
}

/// Waits for `inner` to be ready, sends `request`, and wraps the answer's body.
async fn call<S, ResB>(inner: &mut S, request: Request<ReplayBody>) -> Result<Response<ResponseBody<ResB>>, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| inner.poll_ready(cx)).await.map_err(Into::into)?;
    let response = inner.call(request).await.map_err(Into::into)?;
    Ok(response.map(ResponseBody::untouched))
}

impl<ResB> Answer for Response<ResponseBody<ResB>>
where
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }

    fn version(&self) -> Version {
        self.version()
    }

    fn body_length(&self) -> Option<u64> {
        self.body().size_hint().exact()
    }

    async fn peek(self, limit: usize, timeout: Duration) -> (Self, Bytes, bool) {
        let (parts, body) = self.into_parts();
        let Peeked { body, head, stalled } = peek_body(body.boxed_unsync(), limit, timeout).await;
        (Response::from_parts(parts, ResponseBody::peeked(body)), head, stalled)
    }

    async fn discard(self, timeout: Duration) {
        discard_body(self.into_body(), timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_and_its_service_are_send_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<TokenRefreshLayer>();
        check::<TokenRefreshService<()>>();
    }

    #[test]
    fn a_proofs_url_is_the_uri_or_the_layers_origin_with_the_path_set_not_joined() {
        let origin = PathOnly { origin: Url::parse("https://grpc.example:8443").unwrap(), refused: None };
        let uri = |text: &str| text.parse::<Uri>().unwrap();
        let at = |text: &str, path_only: Option<&PathOnly>| target(&uri(text), path_only).map(String::from);
        assert_eq!(at("https://api.example/v1/me?x=1", None).as_deref(), Some("https://api.example/v1/me?x=1"));
        assert_eq!(at("/pkg.Svc/Call", Some(&origin)).as_deref(), Some("https://grpc.example:8443/pkg.Svc/Call"));
        assert_eq!(at("/a?b=c", Some(&origin)).as_deref(), Some("https://grpc.example:8443/a?b=c"));
        assert_eq!(
            at("//other.example/x", Some(&origin)).as_deref(),
            Some("https://grpc.example:8443//other.example/x"),
            "a path, not another origin"
        );
        assert_eq!(at("/a", None), None, "no origin to go to");
    }

    #[test]
    fn the_replay_limit_is_what_its_doc_says() {
        assert_eq!(DEFAULT_REPLAY_LIMIT, 65_536, "64 KiB");
    }
}

//! The reqwest-middleware front end: [`TokenRefresh`] as a `reqwest_middleware::Middleware`.
//! What is attached where, which answers reject the token and the one retry are the exchange's
//! (`crate::exchange`); this file adapts reqwest's requests and answers to it.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, HeaderMap, StatusCode, Version};
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Middleware, Next};

use crate::cache::{Sent, paced};
use crate::error::Error;
use crate::exchange::{Answer, Credential, Resend, discard_body};
use crate::kept::Kept;
use crate::key::TokenKey;
use crate::peek::{Peeked, Replayed, peek_body};
use crate::stats::Event;
use crate::token_refresh::TokenRefresh;

// Written out rather than with `#[async_trait]`: what can be decided without waiting is decided
// before any future exists. A request that passes through gets the next middleware's future as
// it is, and a request with a fresh token gets the small future of `TokenRefresh::send`. That
// future is one allocation per request, so it stays within the allocator's per-thread cache
// (`tests/all/footprint.rs`). A request that must wait for a token gets one larger future that
// waits and then sends; a key's first load and the handling of a 401 are boxed apart, allocated
// only when needed.
impl Middleware for TokenRefresh {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Sending<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        if !self.admits(extensions, request.headers()) {
            return next.run(request, extensions);
        }
        if let Some(why) = self.inner.origins.refuses(request.url()) {
            tracing::debug!(url = %request.url().origin().ascii_serialization(), why, "no token attached");
            return next.run(request, extensions);
        }
        self.inner.stats.count(Event::Request);
        let key = extensions.get::<TokenKey>();
        if let Some((credential, sent)) = self.inner.cache.lease_ready(key) {
            return Box::pin(self.send(request, credential, sent, extensions, next));
        }
        let key = key.cloned().unwrap_or_default();
        // One allocation on this path too: the wait and the send share it. A request that waited
        // for a flight goes out in its window (see `cache::flight`).
        Box::pin(async move {
            let (credential, sent, pass) = self.inner.cache.lease(&key).await?.into_parts();
            let credential = credential.map_err(|problem| problem.into_error(key))?;
            paced(pass, std::pin::pin!(self.send(request, credential, sent, extensions, next))).await
        })
    }
}

type Sending<'a> = Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'a>>;

impl TokenRefresh {
    /// Sends the request with `credential`; an answer that may say the token was rejected goes on
    /// in [`Self::after_rejection`].
    ///
    /// Not an `async fn`, which would keep a second copy of each argument in its future.
    fn send<'a>(
        &'a self,
        mut request: Request,
        credential: Credential,
        sent: Sent<'a>,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> impl Future<Output = reqwest_middleware::Result<Response>> + Send + 'a {
        // A body that cannot be cloned (a stream) is sent once; see contract point 11.
        let kept = Kept::of(&request);
        // A DPoP-bound token's proof is signed for this request's method and URL; a bearer
        // token's is `None`, made from nothing. (The error is boxed: the future holds it.)
        let proof = self.proof(&credential, sent.key(), request.method(), || Some(request.url().clone()));
        let attached = proof.map(|proof| credential.attach(request.headers_mut(), proof)).map_err(Box::new);
        async move {
            let with = attached.map_err(|err| *err)?;
            let response = next.clone().run(request, extensions).await?;
            self.observe(&with, Some(response.url()), response.headers());
            if !self.may_reject(&response) {
                self.inner.cache.accepted(&sent, sent.generation());
                return Ok(response);
            }
            let from_its_origin = kept.same_origin(response.url());
            let retry = kept.into_retry().map(|request| Again { auth: self, request, next, extensions });
            Box::pin(self.after_rejection(response, from_its_origin, retry, sent, with)).await
        }
    }
}

/// What a rejected request needs to go again through the rest of the chain: reqwest's copy of it
/// (a body it can copy, or none), sent as a copy each time.
struct Again<'a> {
    auth: &'a TokenRefresh,
    request: Request,
    next: Next<'a>,
    extensions: &'a mut Extensions,
}

impl Resend for Again<'_> {
    type Answer = Response;
    type Error = reqwest_middleware::Error;

    async fn resend(&mut self, credential: &Credential) -> reqwest_middleware::Result<(Response, bool)> {
        // A request is kept for a retry only with a body reqwest can copy, which it can copy
        // again; a stream never gets here.
        let mut request = self.request.try_clone().ok_or_else(|| reqwest_middleware::Error::middleware(SentOnce))?;
        let key = self.extensions.get::<crate::key::TokenKey>().cloned().unwrap_or_default();
        let proof = self.auth.proof(credential, &key, request.method(), || Some(request.url().clone()))?;
        let with = credential.clone().attach(request.headers_mut(), proof);
        let sent_to = request.url().clone();
        let response = self.next.clone().run(request, self.extensions).await?;
        self.auth.observe(&with, Some(response.url()), response.headers());
        let from_its_origin = crate::origin::same_origin(&sent_to, response.url());
        Ok((response, from_its_origin))
    }
}

/// A request whose body is a stream cannot go again.
#[derive(Debug, thiserror::Error)]
#[error("the request's body is a stream, which can be sent only once")]
struct SentOnce;

impl Answer for Response {
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
        self.content_length()
    }

    async fn peek(self, limit: usize, timeout: Duration) -> (Self, Bytes, bool) {
        let url = self.url().clone();
        let (mut parts, body) = http::Response::<reqwest::Body>::from(self).into_parts();
        let Peeked { body, head, stalled } = peek_body(body, limit, timeout).await;
        let body = match body {
            // The whole body was read: hand it back as a plain, reusable body.
            Replayed::Whole(_) => reqwest::Body::from(head.clone()),
            Replayed::Replay(replay) => reqwest::Body::wrap(replay),
        };
        // `reqwest::Response::from(http::Response)` takes the URL from an extension that only
        // `ResponseBuilderExt::url` can set.
        if let Ok(carrier) = http::Response::builder().url(url).body(()) {
            parts.extensions.extend(carrier.into_parts().0.extensions);
        }
        (Response::from(http::Response::from_parts(parts, body)), head, stalled)
    }

    async fn discard(self, timeout: Duration) {
        discard_body(http::Response::<reqwest::Body>::from(self).into_body(), timeout).await;
    }
}

impl Error {
    /// Gets this crate's error back out of a `reqwest_middleware::Error`, if it is one.
    ///
    /// ```
    /// # fn handle(err: reqwest_middleware::Error) {
    /// use reqwest_token_refresh::Error;
    ///
    /// match Error::from_middleware(&err) {
    ///     Some(Error::ReauthorizationRequired { key, .. }) => {
    ///         println!("user {key} must log in again");
    ///     }
    ///     Some(other) => println!("token problem: {other}"),
    ///     None => println!("HTTP problem: {err}"),
    /// }
    /// # }
    /// ```
    ///
    /// Our error is also found inside another middleware's error when that error names it as its
    /// `source()`. reqwest-retry's `RetryError` does not (it is transparent): match
    /// `RetryError::Error(inner)` first, or put the retry layer inside this one, as the README
    /// recommends.
    pub fn from_middleware(err: &reqwest_middleware::Error) -> Option<&Error> {
        match err {
            reqwest_middleware::Error::Middleware(inner) => inner.chain().find_map(find_in),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

/// Our error, in one link of an error chain or in a `reqwest_middleware::Error` it holds.
fn find_in<'a>(link: &'a (dyn StdError + 'static)) -> Option<&'a Error> {
    if let Some(ours) = link.downcast_ref::<Error>() {
        return Some(ours);
    }
    link.downcast_ref::<reqwest_middleware::Error>().and_then(Error::from_middleware)
}

impl From<Error> for reqwest_middleware::Error {
    fn from(err: Error) -> Self {
        reqwest_middleware::Error::middleware(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RefreshError;

    #[test]
    fn our_error_comes_back_out_of_reqwest_middleware() {
        let err: reqwest_middleware::Error =
            Error::ReauthorizationRequired { key: TokenKey::new("u1"), reason: RefreshError::NoRefreshToken }.into();
        let ours = Error::from_middleware(&err).expect("our error");
        assert!(ours.is_reauthorization_required());
        assert_eq!(ours.to_string(), "re-authorization required for token key `u1`");
        // The reason is the error's source, said once in the chain, not repeated in its message.
        let reason = std::error::Error::source(ours).expect("a source").to_string();
        assert_eq!(reason, "there is no refresh token to refresh with");
    }

    #[test]
    fn middleware_is_send_sync() {
        fn check<T: Middleware + Send + Sync + 'static>() {}
        check::<TokenRefresh>();
    }
}

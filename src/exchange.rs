//! One exchange of a request that carries a token, whatever front end sent it: which requests get
//! the token, which answers say it was rejected, and the one retry after a refresh.
//!
//! The reqwest-middleware front end (`middleware`) and the tower one (`tower`) differ only in
//! their request and answer types. What an answer must offer the protocol is [`Answer`]; what a
//! front end does itself is attach the [`Credential`] (with the request's DPoP proof, made here),
//! send, and keep what a retry needs ([`Resend`]).
//!
//! A DPoP-bound token (feature `dpop`) changes three things, all here: each request carries a
//! fresh proof ([`TokenRefresh::proof`]); every answer's `DPoP-Nonce` is remembered for its
//! origin ([`TokenRefresh::observe`]); and a 401 demanding a nonce (`DPoP
//! error="use_dpop_nonce"`, RFC 9449 §9) is met by sending the request once more with a proof
//! that carries it, with the same token, before anything else is read into the answer. The nonce
//! retry happens once per request, whether the demand answers the first send or the send after a
//! refresh; a second demand goes back to the caller.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, Version, header::AUTHORIZATION};
use url::Url;

use crate::cache::{Sent, paced};
use crate::challenge::{self, CLASSIFY_BODY_LIMIT, Rejection};
pub(crate) use crate::credential::{Credential, SentWith};
use crate::error::Error;
use crate::stats::Event;
use crate::token_refresh::TokenRefresh;

/// How much of a rejected answer's body the layer reads to let its connection go on: 64 KiB. A
/// longer one is dropped unread (its connection closed, or its stream reset): reading it would
/// cost more than a new connection.
pub(crate) const DISCARD_LIMIT: usize = 64 * 1024;

/// A request extension: the request gets no token and never triggers a refresh.
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use reqwest_token_refresh::SkipAuth;
///
/// client.get("https://api.provider.example/health").with_extension(SkipAuth).send().await?;
/// # Ok(()) }
/// ```
///
/// Through the tower layer, put it in the `http::Request`'s extensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipAuth;

/// What an answer of a front end offers the exchange.
pub(crate) trait Answer: Sized + Send {
    fn status(&self) -> StatusCode;
    fn headers(&self) -> &HeaderMap;
    fn version(&self) -> Version;
    /// The body's length, when the answer says it.
    fn body_length(&self) -> Option<u64>;
    /// Reads up to `limit` bytes of the body for at most `timeout` (see [`crate::peek`]): an
    /// equivalent answer, the bytes read, and whether the body stalled.
    fn peek(self, limit: usize, timeout: Duration) -> impl Future<Output = (Self, Bytes, bool)> + Send;
    /// Reads what is left of the body, up to [`DISCARD_LIMIT`] and for at most `timeout`, and lets
    /// it go, so that its connection (or stream) can carry the retry.
    fn discard(self, timeout: Duration) -> impl Future<Output = ()> + Send;
}

/// What a front end kept of a request to send it again, and how it sends it: a copy of the
/// request, with `credential` attached (and the request's proof, from [`TokenRefresh::proof`]),
/// every answer observed ([`TokenRefresh::observe`]). A request is sent again at most twice: once
/// to meet a DPoP nonce demand, once after a refresh.
pub(crate) trait Resend: Send {
    /// The front end's answer.
    type Answer: Answer;
    /// The front end's error, which this crate's errors convert into.
    type Error: From<Error>;
    /// Sends the request again with `credential`: its answer, and whether it came from the origin
    /// it was sent to.
    fn resend(
        &mut self,
        credential: &Credential,
    ) -> impl Future<Output = Result<(Self::Answer, bool), Self::Error>> + Send;
}

impl TokenRefresh {
    /// The `DPoP` header of a request by `method` to `url` with `credential`: a fresh proof for
    /// a DPoP-bound token, `None` for a bearer token (which costs nothing more). `url` is asked
    /// for only when a proof is made.
    #[inline]
    pub(crate) fn proof(
        &self,
        credential: &Credential,
        key: &crate::key::TokenKey,
        method: &Method,
        url: impl FnOnce() -> Option<Url>,
    ) -> Result<Option<HeaderValue>, Error> {
        #[cfg(feature = "dpop")]
        if let Some(bound) = &credential.bound {
            use crate::dpop::DpopError;
            let dpop = |source| Error::Dpop { key: key.clone(), source };
            let target = url().ok_or_else(|| dpop(DpopError::Proof("the request's URL is not known".into())))?;
            let dpop_key = bound.dpop_key().ok_or_else(|| dpop(DpopError::KeyLost))?;
            let now = self.inner.cache.now();
            let nonces = &self.inner.dpop_nonces;
            return crate::dpop::api_proof(dpop_key, method, &target, bound.access_token(), nonces, now)
                .map(Some)
                .map_err(dpop);
        }
        let _ = (credential, key, method, url);
        Ok(None)
    }

    /// Takes note of an answer to a request sent to `url` with a credential: a DPoP-bound
    /// token's answers may carry the origin's next nonce (RFC 9449 §8.2, §9). Nothing for a
    /// bearer token.
    #[inline]
    pub(crate) fn observe(&self, credential: &SentWith, url: Option<&Url>, headers: &HeaderMap) {
        #[cfg(feature = "dpop")]
        if credential.proves()
            && let Some(url) = url
        {
            self.inner.dpop_nonces.observe(url, headers);
        }
        let _ = (credential, url, headers);
    }

    /// Whether `answer`, to a request with `credential`, demands a DPoP nonce it gave (and which
    /// is now remembered): worth sending the request once more, with the same token.
    fn nonce_demanded(&self, credential: &SentWith, answer: &impl Answer) -> bool {
        #[cfg(feature = "dpop")]
        return credential.proves() && crate::dpop::nonce_demanded(answer.status(), answer.headers()).is_some();
        #[cfg(not(feature = "dpop"))]
        {
            let _ = (credential, answer);
            false
        }
    }

    /// Whether a request may get a token at all, before its origin is looked at: not marked
    /// [`SkipAuth`], no `Authorization` of its own, and not sent from inside a refresh.
    pub(crate) fn admits(&self, extensions: &Extensions, headers: &HeaderMap) -> bool {
        // Most requests have no headers of their own yet: no lookup (which hashes the name) then.
        if extensions.get::<SkipAuth>().is_some() || (!headers.is_empty() && headers.contains_key(AUTHORIZATION)) {
            return false;
        }
        if crate::cache::in_refresh() {
            // A token source calling its token endpoint through this very layer: the request
            // must not wait for the refresh it is part of.
            tracing::debug!("request from inside a refresh passed through without a token");
            return false;
        }
        true
    }

    /// Whether an answer may say the token was rejected, and is worth reading for it: a 401, an
    /// answer a [`token_rejected_by_headers`](crate::TokenRefreshBuilder::token_rejected_by_headers)
    /// rule rejects, or with a [`token_rejected_when`](crate::TokenRefreshBuilder::token_rejected_when)
    /// rule, any answer whose body may fit in [`CLASSIFY_BODY_LIMIT`] (a rejection is a short
    /// error document; a long body is data, handed to the caller without being held back).
    pub(crate) fn may_reject(&self, answer: &impl Answer) -> bool {
        let status = answer.status();
        let inner = &self.inner;
        status == StatusCode::UNAUTHORIZED
            || inner.rejected_by_headers.as_ref().is_some_and(|rule| rule(status, answer.headers()))
            || (inner.rejected_when.is_some()
                && answer.body_length().is_none_or(|length| length <= CLASSIFY_BODY_LIMIT as u64))
    }

    /// Reads whether `answer` rejects the token it was sent with (`key`'s `generation`), and
    /// counts it if it does; `from_its_origin` is whether the answer came from the origin the
    /// token was sent to.
    /// Returns an equivalent answer and whether to refresh: a 401 refreshes when [`RefreshOn`]
    /// accepts it, another answer when a rule says the token was rejected.
    ///
    /// Only the token's own answers count (contract point 19): after a redirect to another
    /// origin, the token was no longer sent, so what that origin answers says nothing about it.
    /// Such an answer is handed on untouched, its body unread.
    async fn rejects<A: Answer>(
        &self,
        answer: A,
        from_its_origin: bool,
        sent: &Sent<'_>,
        generation: u64,
        credential: &SentWith,
    ) -> (A, bool) {
        let key = sent.key();
        let status = answer.status();
        if !from_its_origin {
            tracing::debug!(
                key = %key,
                generation,
                %status,
                "the answer came from another origin, after a redirect that dropped the token"
            );
            return (answer, false);
        }
        let timeout = self.inner.classify_timeout;
        if status == StatusCode::UNAUTHORIZED {
            self.inner.stats.count(Event::Rejection);
            let (answer, rejection) = classify(answer, timeout, credential.scheme()).await;
            let refresh = self.inner.refresh_on.accepts(&rejection);
            tracing::debug!(key = %key, generation, ?rejection, refresh, "401");
            return (answer, refresh);
        }
        if self.inner.rejected_by_headers.as_ref().is_some_and(|rule| rule(status, answer.headers())) {
            self.inner.stats.count(Event::Rejection);
            tracing::debug!(key = %key, generation, %status, "the answer's headers say the token was rejected");
            return (answer, true);
        }
        let Some(rule) = &self.inner.rejected_when else { return (answer, false) };
        let (answer, head, stalled) = answer.peek(CLASSIFY_BODY_LIMIT, timeout).await;
        if stalled {
            tracing::debug!(key = %key, generation, %status, read = head.len(), "the body stalled; the rule sees what arrived");
        }
        let rejected = rule(status, &head[..head.len().min(CLASSIFY_BODY_LIMIT)]);
        if rejected {
            self.inner.stats.count(Event::Rejection);
            tracing::debug!(key = %key, generation, %status, "the answer says the token was rejected");
        }
        (answer, rejected)
    }

    /// An answer that may reject the token, to a request sent `with` a credential: if it does,
    /// get a newer token (refreshing once for everyone) and send the request again with it, once.
    /// A DPoP nonce demand is met first (see the module docs).
    ///
    /// `retry` is what the front end kept to send the request again (`None`: its body could be
    /// sent only once).
    pub(crate) async fn after_rejection<R: Resend>(
        &self,
        answer: R::Answer,
        from_its_origin: bool,
        mut retry: Option<R>,
        sent: Sent<'_>,
        with: SentWith,
    ) -> Result<R::Answer, R::Error> {
        let (mut answer, mut from_its_origin) = (answer, from_its_origin);
        let mut nonce_met = false;
        if let Some(retry) = retry.as_mut()
            && from_its_origin
            && self.nonce_demanded(&with, &answer)
            && let Some(again) = with.again()
        {
            (answer, from_its_origin) = self.meet_nonce(answer, retry, &again).await?;
            nonce_met = true;
            if !self.may_reject(&answer) {
                self.inner.cache.accepted(&sent, sent.generation());
                return Ok(answer);
            }
        }
        let (answer, refresh) = self.rejects(answer, from_its_origin, &sent, sent.generation(), &with).await;
        if !refresh {
            if answer.status() != StatusCode::UNAUTHORIZED {
                self.inner.cache.accepted(&sent, sent.generation());
            }
            return Ok(answer);
        }
        if self.inner.cache.refresh_held_back(&sent) {
            return Ok(answer);
        }
        let Some(mut retry) = retry else {
            // The body is gone; the refresh still happens, so that the caller's own retry works.
            let _ = self.inner.cache.renew(&sent, answer.version()).await;
            return Ok(answer);
        };
        // The rejected answer is not needed any more. Its body is read to its end while the
        // refresh runs, so that its connection is free for the retry: an HTTP/1.1 connection
        // whose answer was dropped unread is closed, and an HTTP/2 stream reset.
        let over = answer.version();
        let (renewed, ()) =
            tokio::join!(self.inner.cache.renew(&sent, over), answer.discard(self.inner.classify_timeout));
        let (renewed, pass) = renewed?;
        let credential = renewed.credential.clone().map_err(|problem| problem.into_error(sent.key().clone()))?;
        let with = credential.sent_with();
        self.inner.stats.count(Event::Retry);
        let (mut answer, mut from_its_origin) = {
            let retried = std::pin::pin!(retry.resend(&credential));
            paced(pass, retried).await?
        };
        if !nonce_met && from_its_origin && self.nonce_demanded(&with, &answer) {
            (answer, from_its_origin) = self.meet_nonce(answer, &mut retry, &credential).await?;
        }
        // One retry, no loop: a second rejection goes back as it came, counted.
        if !self.may_reject(&answer) {
            self.inner.cache.accepted(&sent, renewed.generation);
            return Ok(answer);
        }
        let (answer, rejected) = self.rejects(answer, from_its_origin, &sent, renewed.generation, &with).await;
        if !rejected && answer.status() != StatusCode::UNAUTHORIZED {
            self.inner.cache.accepted(&sent, renewed.generation);
        }
        Ok(answer)
    }

    /// Sends the request again to meet a DPoP nonce demand: the demanding answer's nonce is
    /// remembered already (the front end observed it), so the new proof carries it.
    async fn meet_nonce<R: Resend>(
        &self,
        answer: R::Answer,
        retry: &mut R,
        credential: &Credential,
    ) -> Result<(R::Answer, bool), R::Error> {
        tracing::debug!("the server demands a DPoP nonce: the request goes again with it");
        self.inner.stats.count(Event::NonceRetry);
        answer.discard(self.inner.classify_timeout).await;
        retry.resend(credential).await
    }
}

/// Reads what is left of `body`, up to [`DISCARD_LIMIT`] and for at most `timeout`, and lets it
/// go: each front end's [`Answer::discard`].
pub(crate) async fn discard_body<B: http_body::Body>(body: B, timeout: Duration) {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let read_to_end = async {
        let mut read = 0;
        while read <= DISCARD_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, bytes::Buf::remaining),
                Some(Err(_)) | None => return,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read_to_end).await;
}

/// Whether a 401 rejects the token. The headers are read first; the body only when they name no
/// error, and for at most `timeout`: a body that stalls is judged by what arrived (see
/// [`CLASSIFY_BODY_TIMEOUT`]).
async fn classify<A: Answer>(answer: A, timeout: Duration, scheme: &str) -> (A, Rejection) {
    let from_headers = challenge::classify_unauthorized(answer.headers(), &[], scheme);
    if matches!(from_headers, Rejection::InvalidToken | Rejection::OtherError(_)) {
        return (answer, from_headers);
    }
    let (answer, head, stalled) = answer.peek(CLASSIFY_BODY_LIMIT, timeout).await;
    // A peek may read past the limit (a whole chunk); what is judged stops at it, as documented.
    let judged = &head[..head.len().min(CLASSIFY_BODY_LIMIT)];
    let rejection = challenge::classify_unauthorized(answer.headers(), judged, scheme);
    if stalled {
        tracing::debug!(read = head.len(), ?rejection, "the 401's body stalled; classified from what arrived");
    }
    (answer, rejection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discard_limit_is_what_its_doc_says() {
        assert_eq!(DISCARD_LIMIT, 65_536, "64 KiB");
    }
}

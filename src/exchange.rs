//! One exchange of a request that carries a token, whatever front end sent it: which requests get
//! the token, which answers say it was rejected, and the one retry after a refresh.
//!
//! The reqwest-middleware front end (`middleware`) and the tower one (`tower`) differ only in
//! their request and answer types. What an answer must offer the protocol is [`Answer`]; what a
//! front end does itself is attach a header, send, and keep what a retry needs.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, StatusCode, Version, header::AUTHORIZATION};

use crate::cache::{Sent, paced};
use crate::challenge::{self, CLASSIFY_BODY_LIMIT, Rejection};
use crate::error::Error;
use crate::key::TokenKey;
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

impl TokenRefresh {
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
    async fn rejects<A: Answer>(&self, answer: A, from_its_origin: bool, key: &TokenKey, generation: u64) -> (A, bool) {
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
            let (answer, rejection) = classify(answer, timeout).await;
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

    /// An answer that may reject the token: if it does, get a newer token (refreshing once for
    /// everyone) and send the request again with it, once.
    ///
    /// `retry` is what the front end kept to send the request again (`None`: its body could be
    /// sent only once); `resend` sends it with the new token's header and says whether the
    /// answer came from the origin it was sent to.
    pub(crate) async fn after_rejection<A, R, E, F>(
        &self,
        answer: A,
        from_its_origin: bool,
        retry: Option<R>,
        sent: Sent<'_>,
        resend: impl FnOnce(R, HeaderValue) -> F,
    ) -> Result<A, E>
    where
        A: Answer,
        E: From<Error>,
        F: Future<Output = Result<(A, bool), E>>,
    {
        let (answer, refresh) = self.rejects(answer, from_its_origin, sent.key(), sent.generation()).await;
        if !refresh {
            if answer.status() != StatusCode::UNAUTHORIZED {
                self.inner.cache.accepted(&sent, sent.generation());
            }
            return Ok(answer);
        }
        if self.inner.cache.refresh_held_back(&sent) {
            return Ok(answer);
        }
        let Some(retry) = retry else {
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
        let header =
            renewed.header.clone().map_err(|problem| Error::InvalidAccessToken { key: sent.key().clone(), problem })?;
        self.inner.stats.count(Event::Retry);
        let retried = std::pin::pin!(resend(retry, header));
        let (answer, from_its_origin) = paced(pass, retried).await?;
        // One retry, no loop: a second rejection goes back as it came, counted.
        if !self.may_reject(&answer) {
            self.inner.cache.accepted(&sent, renewed.generation);
            return Ok(answer);
        }
        let (answer, rejected) = self.rejects(answer, from_its_origin, sent.key(), renewed.generation).await;
        if !rejected && answer.status() != StatusCode::UNAUTHORIZED {
            self.inner.cache.accepted(&sent, renewed.generation);
        }
        Ok(answer)
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
async fn classify<A: Answer>(answer: A, timeout: Duration) -> (A, Rejection) {
    let from_headers = challenge::classify_unauthorized(answer.headers(), &[]);
    if matches!(from_headers, Rejection::InvalidToken | Rejection::OtherError(_)) {
        return (answer, from_headers);
    }
    let (answer, head, stalled) = answer.peek(CLASSIFY_BODY_LIMIT, timeout).await;
    // A peek may read past the limit (a whole chunk); what is judged stops at it, as documented.
    let rejection = challenge::classify_unauthorized(answer.headers(), &head[..head.len().min(CLASSIFY_BODY_LIMIT)]);
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

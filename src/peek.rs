//! Reading the start of a response body without taking it from the caller.
//!
//! To tell a dead-token 401 from another 401, the layer may need the body (Kroger puts
//! `{"error":"invalid_token"}` there). It reads at most a few KiB, for at most a few seconds, and
//! hands back a response with the same status, headers, URL, extensions and body bytes: the bytes
//! it read, then the rest of the original stream as it arrives.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use reqwest::ResponseBuilderExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`peek_body`] read, and the answer to hand on in its place.
pub(crate) struct Peeked {
    /// An answer equivalent to the one peeked at: same status, headers, URL, extensions, bytes.
    pub(crate) response: reqwest::Response,
    /// The start of the body: at least `limit` bytes, unless the body ended or stalled first.
    pub(crate) head: Bytes,
    /// Whether the body stalled: `timeout` passed before `limit` bytes or its end arrived.
    pub(crate) stalled: bool,
}

/// Reads up to `limit` bytes of the body, waiting at most `timeout` in all (not per chunk, so a
/// body that trickles a byte at a time is bounded too); returns them and a response equivalent
/// to `response`. A chunk that is already there is read even with a zero `timeout`.
pub(crate) async fn peek_body(response: reqwest::Response, limit: usize, timeout: Duration) -> Peeked {
    let url = response.url().clone();
    let (mut parts, mut body) = http::Response::<reqwest::Body>::from(response).into_parts();
    // Whether the body's length was known: the answer handed back says so exactly when the
    // original did (`Response::content_length`).
    let known_length = body.size_hint().exact().is_some();
    let mut head = BytesMut::new();
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut failure: Option<BoxError> = None;
    let mut finished = false;
    let mut stalled = false;
    // `sleep` saturates: a timeout too long to represent never fires.
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while head.len() < limit {
        // Dropping a pending `frame()` loses nothing: the body keeps what has not been taken, and
        // the caller reads it from the replay.
        let next = tokio::select! {
            biased;
            next = body.frame() => next,
            () = &mut deadline => {
                stalled = true;
                break;
            }
        };
        match next {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    head.extend_from_slice(data);
                }
                frames.push_back(frame);
            }
            Some(Err(err)) => {
                failure = Some(err.into());
                break;
            }
            None => {
                finished = true;
                break;
            }
        }
    }
    let head = head.freeze();
    let replay = if known_length && finished && failure.is_none() && frames.iter().all(Frame::is_data) {
        // The whole body was read: hand it back as a plain, reusable body.
        reqwest::Body::from(head.clone())
    } else {
        reqwest::Body::wrap(Replay { frames, failure, rest: (!finished).then_some(body), known_length })
    };
    // `reqwest::Response::from(http::Response)` takes the URL from an extension that only
    // `ResponseBuilderExt::url` can set.
    if let Ok(carrier) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(carrier.into_parts().0.extensions);
    }
    Peeked { response: reqwest::Response::from(http::Response::from_parts(parts, replay)), head, stalled }
}

/// The frames already read, then the read error if there was one, then the rest of the body.
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    failure: Option<BoxError>,
    rest: Option<reqwest::Body>,
    /// Whether the original body's length was known; if not, this one's is not either.
    known_length: bool,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(err) = self.failure.take() {
            self.rest = None;
            return Poll::Ready(Some(Err(err)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.failure.is_some() {
            return http_body::SizeHint::default();
        }
        let buffered: u64 = self.frames.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let rest = self.rest.as_ref().map(HttpBody::size_hint).unwrap_or_else(|| http_body::SizeHint::with_exact(0));
        let mut hint = http_body::SizeHint::new();
        // The upper bound first: `set_lower` panics if it would exceed the upper bound.
        if let Some(upper) = rest.upper()
            && self.known_length
        {
            hint.set_upper(buffered + upper);
        }
        hint.set_lower(buffered + rest.lower());
        hint
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.failure.is_none() && self.rest.as_ref().is_none_or(HttpBody::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn answer(body: reqwest::Body) -> reqwest::Response {
        reqwest::Response::from(http::Response::builder().status(200).body(body).unwrap())
    }

    fn chunked(chunks: &[&'static str]) -> reqwest::Body {
        let frames = chunks.iter().map(|chunk| Ok::<_, Infallible>(Frame::data(Bytes::from_static(chunk.as_bytes()))));
        reqwest::Body::wrap(StreamBody::new(futures::stream::iter(frames.collect::<Vec<_>>())))
    }

    #[tokio::test]
    async fn a_body_is_handed_back_whole_and_its_length_known_only_if_it_was() {
        for (body, length, text) in [
            (reqwest::Body::from("{\"status\":0}"), Some(12), "{\"status\":0}"),
            (chunked(&["{\"sta", "tus\":0}"]), None, "{\"status\":0}"),
            (chunked(&["0123", "4567", "89"]), None, "0123456789"),
            // Read to its end within the limit: still of unknown length, as it came.
            (chunked(&["ab", "cd"]), None, "abcd"),
        ] {
            let Peeked { response, head, stalled } = peek_body(answer(body), 6, Duration::from_secs(5)).await;
            assert!(!stalled, "{text}");
            assert_eq!(response.content_length(), length, "{text}");
            assert!(head.len() >= 6.min(text.len()) && text.as_bytes().starts_with(&head), "{head:?}");
            let bytes = http::Response::<reqwest::Body>::from(response).into_body().collect().await.unwrap().to_bytes();
            assert_eq!(bytes, text.as_bytes());
        }
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_handed_back_after_the_timeout_with_nothing_lost() {
        let (chunks, receiver) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"{\"err")))).unwrap();
        let body = reqwest::Body::wrap(StreamBody::new(receiver));

        let peeked =
            tokio::time::timeout(Duration::from_secs(5), peek_body(answer(body), 4096, Duration::from_millis(50)))
                .await
                .expect("the peek gives up on a stalled body");

        assert!(peeked.stalled);
        assert_eq!(&peeked.head[..], b"{\"err");
        chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"or\":1}")))).unwrap();
        drop(chunks);
        let rest = http::Response::<reqwest::Body>::from(peeked.response).into_body().collect();
        let bytes = tokio::time::timeout(Duration::from_secs(5), rest).await.unwrap().unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"error\":1}");
    }
}

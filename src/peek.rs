//! Reading the start of a response body without taking it from the caller.
//!
//! To tell a dead-token 401 from another 401, the layer may need the body (Kroger puts
//! `{"error":"invalid_token"}` there). It reads at most a few KiB, for at most a few seconds, and
//! hands back a body with the same bytes: the bytes it read, then the rest of the original stream
//! as it arrives. Any body will do; each front end puts it back into its own kind of answer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`peek_body`] read, and the body to hand on in its place.
pub(crate) struct Peeked<B> {
    /// A body with the same bytes as the one peeked at: what was read, then the rest.
    pub(crate) body: Replayed<B>,
    /// The start of the body: at least `limit` bytes, unless the body ended or stalled first.
    pub(crate) head: Bytes,
    /// Whether the body stalled: `timeout` passed before `limit` bytes or its end arrived.
    pub(crate) stalled: bool,
}

/// A peeked-at body, handed on.
pub(crate) enum Replayed<B> {
    /// The whole body was read, and its length was known: its bytes (also the peek's `head`).
    Whole(Full<Bytes>),
    /// The frames read, then whatever the original body still has.
    Replay(Replay<B>),
}

/// Reads up to `limit` bytes of `body`, waiting at most `timeout` in all (not per chunk, so a
/// body that trickles a byte at a time is bounded too); returns them and a body with the same
/// bytes. A chunk that is already there is read even with a zero `timeout`.
pub(crate) async fn peek_body<B>(mut body: B, limit: usize, timeout: Duration) -> Peeked<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    // Whether the body's length was known: the body handed back says so exactly when the
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
    let body = if known_length && finished && failure.is_none() && frames.iter().all(Frame::is_data) {
        Replayed::Whole(Full::new(head.clone()))
    } else {
        Replayed::Replay(Replay { frames, failure, rest: (!finished).then_some(body), known_length })
    };
    Peeked { body, head, stalled }
}

impl<B> HttpBody for Replayed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Replayed::Whole(whole) => Pin::new(whole).poll_frame(cx).map_err(|never| match never {}),
            Replayed::Replay(replay) => Pin::new(replay).poll_frame(cx),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Replayed::Whole(whole) => whole.size_hint(),
            Replayed::Replay(replay) => replay.size_hint(),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Replayed::Whole(whole) => whole.is_end_stream(),
            Replayed::Replay(replay) => replay.is_end_stream(),
        }
    }
}

/// The frames already read, then the read error if there was one, then the rest of the body.
pub(crate) struct Replay<B> {
    frames: VecDeque<Frame<Bytes>>,
    failure: Option<BoxError>,
    rest: Option<B>,
    /// Whether the original body's length was known; if not, this one's is not either.
    known_length: bool,
}

impl<B> HttpBody for Replay<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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

    use http_body_util::StreamBody;

    use super::*;

    type Chunks = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn chunked(chunks: &[&'static str]) -> Chunks {
        let frames = chunks.iter().map(|chunk| Ok::<_, Infallible>(Frame::data(Bytes::from_static(chunk.as_bytes()))));
        StreamBody::new(futures::stream::iter(frames.collect::<Vec<_>>()))
    }

    async fn check<B>(body: B, length: Option<u64>, text: &str)
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let Peeked { body, head, stalled } = peek_body(body, 6, Duration::from_secs(5)).await;
        assert!(!stalled, "{text}");
        assert_eq!(body.size_hint().exact(), length, "{text}");
        assert!(head.len() >= 6.min(text.len()) && text.as_bytes().starts_with(&head), "{head:?}");
        assert_eq!(body.collect().await.unwrap().to_bytes(), text.as_bytes());
    }

    #[tokio::test]
    async fn a_body_is_handed_back_whole_and_its_length_known_only_if_it_was() {
        check(Full::new(Bytes::from_static(b"{\"status\":0}")), Some(12), "{\"status\":0}").await;
        check(chunked(&["{\"sta", "tus\":0}"]), None, "{\"status\":0}").await;
        check(chunked(&["0123", "4567", "89"]), None, "0123456789").await;
        // Read to its end within the limit: still of unknown length, as it came.
        check(chunked(&["ab", "cd"]), None, "abcd").await;
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_handed_back_after_the_timeout_with_nothing_lost() {
        let (chunks, receiver) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"{\"err")))).unwrap();
        let body = StreamBody::new(receiver);

        let peeked = tokio::time::timeout(Duration::from_secs(5), peek_body(body, 4096, Duration::from_millis(50)))
            .await
            .expect("the peek gives up on a stalled body");

        assert!(peeked.stalled);
        assert_eq!(&peeked.head[..], b"{\"err");
        chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"or\":1}")))).unwrap();
        drop(chunks);
        let bytes =
            tokio::time::timeout(Duration::from_secs(5), peeked.body.collect()).await.unwrap().unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"error\":1}");
    }
}

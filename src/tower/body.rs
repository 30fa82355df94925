//! The bodies of the tower front end: [`ReplayBody`], what the wrapped service is sent (a request
//! body the layer could keep for a retry, or the caller's own stream), and [`ResponseBody`], what
//! the caller gets back (the service's body, or the same bytes after the layer read the start of
//! a rejection).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;

use crate::peek::{BoxError, Replayed};

/// A request body as the layer hands it to the service it wraps.
///
/// A body whose frames are all there when the request is sent (bytes in memory, one encoded gRPC
/// message), up to [`replay_limit`](super::TokenRefreshLayer::replay_limit) bytes, is kept, so the
/// request can be sent again after a refresh. Any other body (a stream still being produced, or
/// a longer one) is sent once, as it comes: after a rejection the token is refreshed, and the
/// rejection handed back, as for a stream through the reqwest layer (contract point 11).
///
/// The layer never waits for a body to decide: it takes what is ready. A body that is not ready
/// yet (a client stream that sends after the answer's headers) is never held back.
pub struct ReplayBody {
    kind: Kind,
}

enum Kind {
    /// Every frame, kept: this is one sending of them.
    Kept { frames: VecDeque<KeptFrame>, remaining: u64, trailers: bool },
    /// The frames read before the body turned out to be a stream, then the rest of it.
    Once { read: VecDeque<Frame<Bytes>>, failure: Option<BoxError>, rest: UnsyncBoxBody<Bytes, BoxError> },
}

/// A frame kept for a retry (a `Frame` cannot be cloned).
#[derive(Clone)]
pub(crate) enum KeptFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// The frames of a body kept for the retry.
#[derive(Clone)]
pub(crate) struct Kept {
    frames: Vec<KeptFrame>,
}

impl Kept {
    /// One more sending of the kept frames.
    pub(crate) fn body(&self) -> ReplayBody {
        let remaining = self.frames.iter().map(|frame| frame.data_len()).sum();
        let trailers = self.frames.iter().any(|frame| matches!(frame, KeptFrame::Trailers(_)));
        ReplayBody { kind: Kind::Kept { frames: self.frames.iter().cloned().collect(), remaining, trailers } }
    }
}

impl KeptFrame {
    fn data_len(&self) -> u64 {
        match self {
            KeptFrame::Data(data) => data.len() as u64,
            KeptFrame::Trailers(_) => 0,
        }
    }

    fn into_frame(self) -> Frame<Bytes> {
        match self {
            KeptFrame::Data(data) => Frame::data(data),
            KeptFrame::Trailers(trailers) => Frame::trailers(trailers),
        }
    }
}

impl ReplayBody {
    /// The body to send `body` as, and its frames kept for a retry when they were all ready and
    /// came to at most `limit` bytes.
    pub(crate) async fn keep<B>(body: B, limit: usize) -> (ReplayBody, Option<Kept>)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            let kept = Kept { frames: Vec::new() };
            return (kept.body(), Some(kept));
        }
        let mut rest = body.map_err(Into::into).boxed_unsync();
        let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
        let mut kept: Vec<KeptFrame> = Vec::new();
        let mut bytes = 0usize;
        let mut failure = None;
        // Polled, not awaited: a frame that is not there yet makes the body a stream.
        let ended = poll_fn(|cx| {
            loop {
                if bytes > limit {
                    return Poll::Ready(false);
                }
                match Pin::new(&mut rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let frame = match frame.into_data() {
                            Ok(data) => {
                                bytes = bytes.saturating_add(data.len());
                                kept.push(KeptFrame::Data(data.clone()));
                                Frame::data(data)
                            }
                            Err(frame) => match frame.into_trailers() {
                                Ok(trailers) => {
                                    kept.push(KeptFrame::Trailers(trailers.clone()));
                                    Frame::trailers(trailers)
                                }
                                // A frame of a kind this version of `http-body` added later:
                                // passed on, and the body sent once.
                                Err(other) => {
                                    read.push_back(other);
                                    return Poll::Ready(false);
                                }
                            },
                        };
                        read.push_back(frame);
                    }
                    Poll::Ready(None) => return Poll::Ready(bytes <= limit),
                    // An error is the stream's to report, in order, to the service.
                    Poll::Ready(Some(Err(err))) => {
                        failure = Some(err);
                        return Poll::Ready(false);
                    }
                    Poll::Pending => return Poll::Ready(false),
                }
            }
        })
        .await;
        if ended {
            let kept = Kept { frames: kept };
            return (kept.body(), Some(kept));
        }
        // What was read goes first, then the error the body gave, if it gave one, then the rest.
        (ReplayBody { kind: Kind::Once { read, failure, rest } }, None)
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Kept { frames, remaining, .. } => {
                let frame = frames.pop_front().map(|frame| {
                    *remaining -= frame.data_len();
                    Ok(frame.into_frame())
                });
                Poll::Ready(frame)
            }
            Kind::Once { read, failure, rest } => match read.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => match failure.take() {
                    Some(err) => Poll::Ready(Some(Err(err))),
                    None => Pin::new(rest).poll_frame(cx),
                },
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            // A body with trailers has no exact length on the wire (HTTP/1.1 sends it chunked).
            Kind::Kept { remaining, trailers: false, .. } => SizeHint::with_exact(*remaining),
            Kind::Kept { remaining, trailers: true, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(*remaining);
                hint
            }
            Kind::Once { read, rest, .. } => {
                let read: u64 = read.iter().filter_map(Frame::data_ref).map(|data| data.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                if let Some(upper) = rest.upper() {
                    hint.set_upper(read.saturating_add(upper));
                }
                hint.set_lower(read.saturating_add(rest.lower()));
                hint
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Kept { frames, .. } => frames.is_empty(),
            Kind::Once { read, failure, rest } => read.is_empty() && failure.is_none() && rest.is_end_stream(),
        }
    }
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = matches!(self.kind, Kind::Kept { .. });
        f.debug_struct("ReplayBody").field("kept_for_a_retry", &kept).finish_non_exhaustive()
    }
}

pin_project! {
    /// An answer's body as the tower layer hands it back: the wrapped service's own, or, for an
    /// answer the layer read the start of to tell whether it rejects the token, the same bytes:
    /// those it read, then the rest as the server sends it.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Answered<B>,
    }
}

pin_project! {
    #[project = AnsweredProjection]
    enum Answered<B> {
        Untouched { #[pin] body: B },
        Peeked { body: Replayed<UnsyncBoxBody<Bytes, BoxError>> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn untouched(body: B) -> Self {
        ResponseBody { kind: Answered::Untouched { body } }
    }

    pub(crate) fn peeked(body: Replayed<UnsyncBoxBody<Bytes, BoxError>>) -> Self {
        ResponseBody { kind: Answered::Peeked { body } }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            AnsweredProjection::Untouched { body } => body.poll_frame(cx).map_err(Into::into),
            AnsweredProjection::Peeked { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Answered::Untouched { body } => body.size_hint(),
            Answered::Peeked { body } => body.size_hint(),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Answered::Untouched { body } => body.is_end_stream(),
            Answered::Peeked { body } => body.is_end_stream(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peeked = matches!(self.kind, Answered::Peeked { .. });
        f.debug_struct("ResponseBody").field("peeked", &peeked).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{Full, StreamBody};

    use super::*;

    async fn bytes(body: ReplayBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_body_in_memory_is_kept_and_sent_again_with_the_same_bytes() {
        let (sent, kept) = ReplayBody::keep(Full::new(Bytes::from_static(b"{\"q\":1}")), 64).await;
        assert_eq!(sent.size_hint().exact(), Some(7));
        assert_eq!(bytes(sent).await, &b"{\"q\":1}"[..]);
        let kept = kept.expect("kept for a retry");
        let again = kept.body();
        assert_eq!(again.size_hint().exact(), Some(7));
        assert_eq!(bytes(again).await, &b"{\"q\":1}"[..]);
        assert_eq!(bytes(kept.body()).await, &b"{\"q\":1}"[..], "as often as needed");
    }

    #[tokio::test]
    async fn an_empty_body_is_kept() {
        let (sent, kept) = ReplayBody::keep(http_body_util::Empty::<Bytes>::new(), 64).await;
        assert!(sent.is_end_stream());
        assert!(kept.unwrap().body().is_end_stream());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_sent_once_with_nothing_lost() {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> =
            ["0123", "4567", "89"].iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        let (sent, kept) = ReplayBody::keep(StreamBody::new(futures::stream::iter(chunks)), 5).await;
        assert!(kept.is_none(), "over the limit");
        assert_eq!(bytes(sent).await, &b"0123456789"[..]);
    }

    #[tokio::test]
    async fn a_body_not_ready_yet_is_sent_once_and_never_waited_for() {
        let (chunks, receiver) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"ab")))).unwrap();
        let kept =
            tokio::time::timeout(std::time::Duration::from_secs(5), ReplayBody::keep(StreamBody::new(receiver), 64))
                .await
                .expect("keeping a body never waits for it");
        let (sent, kept) = kept;
        assert!(kept.is_none(), "a stream still being produced is not kept");
        chunks.unbounded_send(Ok(Frame::data(Bytes::from_static(b"cd")))).unwrap();
        drop(chunks);
        assert_eq!(bytes(sent).await, &b"abcd"[..]);
    }

    #[tokio::test]
    async fn trailers_are_kept_with_the_data() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-check", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"ab"))), Ok(Frame::trailers(trailers))];
        let (_, kept) = ReplayBody::keep(StreamBody::new(futures::stream::iter(frames)), 64).await;
        let again = kept.unwrap().body();
        assert_eq!(again.size_hint().exact(), None, "a body with trailers has no exact length");
        let collected = again.collect().await.unwrap();
        assert_eq!(collected.trailers().and_then(|t| t.get("x-check")).unwrap(), "1");
        assert_eq!(collected.to_bytes(), &b"ab"[..]);
    }
}

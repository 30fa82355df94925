//! What the layer keeps of each request it sends with a token, for the one retry a rejection may
//! call for, and for telling the token's own answers from a redirect target's.
//!
//! Every request needs this copy and almost none uses it, so it is made from what a retry needs
//! and costs no allocation in the common case: a request without a body is kept as its parts,
//! its URL's text inline (a `Url` holds its text on the heap, and copying it was most of what the
//! layer cost a request). The `Url` is parsed back from that text only for a retry; a URL of a
//! special scheme (the only ones the layer sends a token to) parses back to itself.

use std::time::Duration;

use http::{HeaderMap, Method, Version};
use reqwest::Request;
use url::Url;

/// The longest URL kept inline, in bytes; a longer one is kept as a `Url`. Most API URLs fit; the
/// bound keeps a request's future within the allocator's per-thread cache
/// (`tests/all/footprint.rs`).
const INLINE_URL: usize = 160;

/// What is kept of one request. Every request's future holds one, so what only some requests
/// need is boxed: their own headers, and reqwest's copy of a request with a body (a `Request` is
/// 264 bytes); each of those already costs an allocation for the copy itself.
pub(crate) enum Kept {
    /// A request without a body, as its parts.
    Parts { method: Method, url: SentTo, headers: Option<Box<HeaderMap>>, version: Version, timeout: Option<Duration> },
    /// A request whose body reqwest can copy (its bytes are shared, not copied): reqwest's copy.
    Copy(Box<Request>),
    /// A request whose body is a stream, sent once (contract point 11): only where it went.
    Once(SentTo),
}

impl Kept {
    /// What to keep of `request`, before it is sent.
    ///
    /// Its parts are all a `reqwest::Request` carries: its extensions hold only reqwest's own
    /// per-request settings, of which 0.13 has one, the timeout (kept here). `Request::try_clone`
    /// would also copy the URL's text to the heap, and build a map of those settings for the
    /// copy's timeout only to replace it with the original's; it is used only for a body, whose
    /// bytes nothing else can share.
    pub(crate) fn of(request: &Request) -> Kept {
        if request.body().is_some() {
            return match request.try_clone() {
                Some(copy) => Kept::Copy(Box::new(copy)),
                None => Kept::Once(SentTo::of(request.url())),
            };
        }
        Kept::Parts {
            method: request.method().clone(),
            url: SentTo::of(request.url()),
            // Most requests have no headers of their own yet (reqwest adds its defaults later).
            headers: (!request.headers().is_empty()).then(|| Box::new(request.headers().clone())),
            version: request.version(),
            timeout: request.timeout().copied(),
        }
    }

    /// Whether `url` has the origin the request was sent to (before any redirect).
    pub(crate) fn same_origin(&self, url: &Url) -> bool {
        match self {
            Kept::Parts { url: sent_to, .. } | Kept::Once(sent_to) => sent_to.same_origin(url),
            Kept::Copy(request) => crate::origin::same_origin(request.url(), url),
        }
    }

    /// The request to send again; `None` for a stream, whose body is gone.
    pub(crate) fn into_retry(self) -> Option<Request> {
        match self {
            Kept::Parts { method, url, headers, version, timeout } => {
                let mut retry = Request::new(method, url.into_url()?);
                if let Some(headers) = headers {
                    *retry.headers_mut() = *headers;
                }
                *retry.version_mut() = version;
                if timeout.is_some() {
                    *retry.timeout_mut() = timeout;
                }
                Some(retry)
            }
            Kept::Copy(request) => Some(*request),
            Kept::Once(_) => None,
        }
    }
}

/// Where a request was sent: its URL's text inline, or, for a URL too long for that, the `Url`.
pub(crate) enum SentTo {
    Inline { text: [u8; INLINE_URL], len: u8 },
    Url(Box<Url>),
}

impl SentTo {
    fn of(url: &Url) -> SentTo {
        let text = url.as_str().as_bytes();
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_URL => {
                let mut inline = [0; INLINE_URL];
                inline[..text.len()].copy_from_slice(text);
                SentTo::Inline { text: inline, len }
            }
            _ => SentTo::Url(Box::new(url.clone())),
        }
    }

    /// Same scheme, host and port: the same text where there was no redirect, else the same
    /// [`origin_of`] both texts.
    fn same_origin(&self, url: &Url) -> bool {
        match self {
            SentTo::Inline { text, len } => {
                let (ours, theirs) = (&text[..usize::from(*len)], url.as_str().as_bytes());
                ours == theirs || origin_of(ours).is_some_and(|origin| Some(origin) == origin_of(theirs))
            }
            SentTo::Url(sent) => crate::origin::same_origin(sent, url),
        }
    }

    /// The `Url` again.
    fn into_url(self) -> Option<Url> {
        match self {
            SentTo::Inline { text, len } => Url::parse(std::str::from_utf8(&text[..usize::from(len)]).ok()?).ok(),
            SentTo::Url(url) => Some(*url),
        }
    }
}

/// The scheme, and the host and port, of a `Url`'s text: `https` and `api.example:8443` in
/// `https://user@api.example:8443/v1?q`. The text is a `Url`'s serialization of an http(s) URL, so
/// it is normalized (the host lower-cased, a default port left out, the user's name and password
/// percent-encoded, a path always present): comparing these parts of two texts compares origins.
fn origin_of(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let scheme_end = text.iter().position(|&b| b == b':')?;
    let authority = text[scheme_end..].strip_prefix(b"://")?;
    let authority =
        &authority[..authority.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(authority.len())];
    let host_and_port = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    Some((&text[..scheme_end], host_and_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(kept: Kept) -> Request {
        assert!(matches!(kept, Kept::Parts { .. }), "a request without a body is kept as its parts");
        kept.into_retry().unwrap()
    }

    #[test]
    fn a_retry_is_what_reqwest_would_copy() {
        let client = reqwest::Client::new();
        let long = format!("https://api.example/v1/{}?q=1", "a".repeat(INLINE_URL));
        let requests = [
            client
                .get("https://API.example:443/v1/me?fields=a,b#frag")
                .header("x-trace", "1")
                .header("x-trace", "2")
                .timeout(Duration::from_secs(7))
                .version(Version::HTTP_11)
                .build(),
            client.put("https://api.example/v1/items/7").header("content-type", "application/json").body("{}").build(),
            client.delete("http://127.0.0.1:8080/v1/items/7").version(Version::HTTP_2).build(),
            client.request(Method::from_bytes(b"PURGE").unwrap(), "https://[::1]:8443/cache/%C3%A9?x=%20").build(),
            client.get(&long).build(),
        ];
        for request in requests {
            let request = request.unwrap();
            let retry = Kept::of(&request).into_retry().expect("replayable");
            let reference = request.try_clone().unwrap();
            assert_eq!(retry.method(), reference.method());
            assert_eq!(retry.url(), reference.url());
            assert_eq!(retry.url().as_str(), reference.url().as_str());
            assert_eq!(retry.headers(), reference.headers());
            assert_eq!(retry.version(), reference.version());
            assert_eq!(retry.timeout(), reference.timeout());
            let bytes = |r: &Request| r.body().map(|body| body.as_bytes().map(<[u8]>::to_vec));
            assert_eq!(bytes(&retry), bytes(&reference), "{} {}", request.method(), request.url());
        }
    }

    #[test]
    fn short_urls_are_kept_inline_and_long_ones_as_urls() {
        let client = reqwest::Client::new();
        let fits = format!("https://api.example/{}", "a".repeat(INLINE_URL - "https://api.example/".len()));
        let request = client.get(&fits).build().unwrap();
        assert!(matches!(Kept::of(&request), Kept::Parts { url: SentTo::Inline { .. }, .. }));
        assert_eq!(parts(Kept::of(&request)).url().as_str(), fits);
        let longer = format!("{fits}b");
        let request = client.get(&longer).build().unwrap();
        assert!(matches!(Kept::of(&request), Kept::Parts { url: SentTo::Url(_), .. }));
        assert_eq!(parts(Kept::of(&request)).url().as_str(), longer);
    }

    #[test]
    fn a_stream_is_kept_only_as_where_it_went() {
        let chunks = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"once"))]);
        let request = reqwest::Client::new()
            .post("https://api.example/upload")
            .body(reqwest::Body::wrap_stream(chunks))
            .build()
            .unwrap();
        let kept = Kept::of(&request);
        assert!(kept.same_origin(&Url::parse("https://api.example/elsewhere").unwrap()));
        assert!(!kept.same_origin(&Url::parse("https://other.example/upload").unwrap()));
        assert!(kept.into_retry().is_none(), "a stream cannot be sent twice");
    }

    #[test]
    fn the_origin_kept_is_scheme_host_and_port() {
        let long_path = "p/".repeat(INLINE_URL);
        for sent in ["https://user:pw@api.example/v1/a?q", &format!("https://api.example/{long_path}")] {
            let request = reqwest::Client::new().get(sent).build().unwrap();
            let kept = Kept::of(&request);
            for same in [
                "https://api.example/other",
                "https://API.example:443/",
                "https://other@api.example/x",
                "https://a%40b:p%2F@api.example/x",
                "https://api.example?q",
                "https://api.example#f",
            ] {
                assert!(kept.same_origin(&Url::parse(same).unwrap()), "{sent} and {same}");
            }
            for other in [
                "http://api.example/v1/a",
                "https://api.example:8443/v1/a",
                "https://api.example.evil/v1/a",
                "https://evil.example/v1/a",
                "https://sub.api.example/v1/a",
                "https://api.exampl/v1/a",
                "https://api.example@evil.example/v1/a",
                "https://evil.example/@api.example/",
            ] {
                assert!(!kept.same_origin(&Url::parse(other).unwrap()), "{sent} and {other}");
            }
        }
        let request = reqwest::Client::new().get("http://127.0.0.1:8080/a").build().unwrap();
        let kept = Kept::of(&request);
        assert!(kept.same_origin(&Url::parse("http://127.0.0.1:8080/z").unwrap()));
        assert!(!kept.same_origin(&Url::parse("http://127.0.0.1:8081/a").unwrap()));
        assert!(!kept.same_origin(&Url::parse("http://127.0.0.10:8080/a").unwrap()));
        let request = reqwest::Client::new().get("https://[::1]:8443/a").build().unwrap();
        let kept = Kept::of(&request);
        assert!(kept.same_origin(&Url::parse("https://[0:0::1]:8443/b").unwrap()));
        assert!(!kept.same_origin(&Url::parse("https://[::1]/a").unwrap()));
        assert!(!kept.same_origin(&Url::parse("https://[::2]:8443/a").unwrap()));
    }

    fn url_parts() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let scheme = prop::sample::select(vec!["http", "https", "HTTPS"]);
        let user = prop::option::of("[a-zA-Z@:/%?#]{0,6}(:[a-z@/]{0,4})?");
        let host = prop::sample::select(vec![
            "api.example",
            "API.Example",
            "api.example.",
            "sub.api.example",
            "127.0.0.1",
            "[::1]",
            "[0::1]",
            "[::2]",
            "xn--bcher-kva.example",
            "bücher.example",
        ]);
        let port = prop::sample::select(vec!["", ":80", ":443", ":8080", ":08080"]);
        let rest = "(/[a-zA-Z0-9@:/?#%. ]{0,12})?";
        (scheme, user, host, port, rest).prop_map(|(scheme, user, host, port, rest)| {
            let user = user.map(|user| format!("{user}@")).unwrap_or_default();
            format!("{scheme}://{user}{host}{port}{rest}")
        })
    }

    proptest::proptest! {
        #[test]
        fn the_kept_origin_is_the_urls_origin(a in url_parts(), b in url_parts()) {
            let (Ok(a), Ok(b)) = (Url::parse(&a), Url::parse(&b)) else { return Ok(()) };
            let request = Request::new(Method::GET, a.clone());
            let kept = Kept::of(&request);
            proptest::prop_assert_eq!(kept.same_origin(&b), crate::origin::same_origin(&a, &b), "{} and {}", a, b);
            proptest::prop_assert_eq!(kept.into_retry().map(|retry| retry.url().clone()), Some(a));
        }
    }
}

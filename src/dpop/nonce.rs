//! Server-provided nonces (RFC 9449 §8, §9): the latest `DPoP-Nonce` each origin sent, for the
//! next proof to that origin, shared by the token requests and the API requests of one layer.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use parking_lot::Mutex;
use url::Url;

/// The `DPoP-Nonce` response header.
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";

/// The most origins whose nonce is remembered: 64. A layer talks to a token endpoint and a few
/// APIs; past this, the origin heard from least recently is forgotten (its next request may cost
/// one `use_dpop_nonce` round trip again), so a client sent to many origins holds bounded memory.
pub(crate) const MAX_NONCE_ORIGINS: usize = 64;

/// The longest nonce kept: 1,024 bytes. Nonces are short opaque strings; a longer one is a broken
/// or hostile server, and would go into every proof.
pub(crate) const MAX_NONCE_LEN: usize = 1024;

/// The latest nonce of each origin, most recently heard from last. Clones share one memory.
#[derive(Clone, Default)]
pub(crate) struct DpopNonces {
    by_origin: Arc<Mutex<VecDeque<(String, String)>>>,
}

impl fmt::Debug for DpopNonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Nonces are not secrets, but they say nothing useful in a log either: the origins do.
        let origins: Vec<String> = self.by_origin.lock().iter().map(|(origin, _)| origin.clone()).collect();
        f.debug_struct("DpopNonces").field("origins", &origins).finish()
    }
}

impl DpopNonces {
    /// The latest nonce `url`'s origin sent, if any.
    pub(crate) fn get(&self, url: &Url) -> Option<String> {
        let origin = origin_of(url)?;
        self.by_origin.lock().iter().find(|(known, _)| *known == origin).map(|(_, nonce)| nonce.clone())
    }

    /// Remembers the `DPoP-Nonce` of an answer from `url`, if it has a usable one (RFC 9449 §8.1:
    /// `1*NQCHAR`, here at most [`MAX_NONCE_LEN`] bytes), and returns it. An answer without one
    /// changes nothing: a server sends a nonce when it has a new one, not on every answer.
    pub(crate) fn observe(&self, url: &Url, headers: &HeaderMap) -> Option<String> {
        let nonce = nonce_in(headers)?;
        let origin = origin_of(url)?;
        let mut by_origin = self.by_origin.lock();
        by_origin.retain(|(known, _)| *known != origin);
        if by_origin.len() >= MAX_NONCE_ORIGINS {
            by_origin.pop_front();
        }
        by_origin.push_back((origin, nonce.clone()));
        Some(nonce)
    }
}

/// A usable `DPoP-Nonce` in `headers`: the first value, if it is `1*NQCHAR` (visible ASCII but
/// `"` and `\`) and not too long.
pub(crate) fn nonce_in(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(DPOP_NONCE)?.to_str().ok()?.trim();
    let nqchar = |b: u8| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e);
    (!value.is_empty() && value.len() <= MAX_NONCE_LEN && value.bytes().all(nqchar)).then(|| value.to_owned())
}

/// `scheme://host:port`, or `None` for an opaque origin (which no nonce can be tied to).
fn origin_of(url: &Url) -> Option<String> {
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn nonce(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(DPOP_NONCE, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn the_limits_are_what_their_docs_say() {
        assert_eq!(MAX_NONCE_ORIGINS, 64);
        assert_eq!(MAX_NONCE_LEN, 1024);
    }

    #[test]
    fn a_nonce_is_remembered_for_its_origin_and_replaced_by_the_next() {
        let nonces = DpopNonces::default();
        assert_eq!(nonces.get(&url("https://as.example/token")), None);
        assert_eq!(nonces.observe(&url("https://as.example/token"), &nonce("n-1")), Some("n-1".into()));
        // The whole origin shares it: the token endpoint and an API on the same host.
        assert_eq!(nonces.get(&url("https://as.example/api/me?x=1")), Some("n-1".into()));
        assert_eq!(nonces.get(&url("https://as.example:8443/token")), None, "another port is another origin");
        assert_eq!(nonces.get(&url("http://as.example/token")), None, "another scheme too");
        nonces.observe(&url("https://as.example/other"), &nonce("n-2"));
        assert_eq!(nonces.get(&url("https://as.example/token")), Some("n-2".into()));
        assert_eq!(nonces.observe(&url("https://as.example/token"), &HeaderMap::new()), None);
        assert_eq!(nonces.get(&url("https://as.example/token")), Some("n-2".into()), "no nonce keeps the last");
        let clone = nonces.clone();
        clone.observe(&url("https://rs.example/"), &nonce("r-1"));
        assert_eq!(nonces.get(&url("https://rs.example/x")), Some("r-1".into()), "clones share one memory");
    }

    #[test]
    fn unusable_nonces_are_not_kept() {
        let nonces = DpopNonces::default();
        let target = url("https://as.example/");
        for bad in ["has space", "quote\"d", "back\\slash", ""] {
            assert_eq!(nonces.observe(&target, &nonce(bad)), None, "{bad:?}");
        }
        assert_eq!(nonces.observe(&target, &nonce(&"n".repeat(MAX_NONCE_LEN + 1))), None);
        assert!(nonces.observe(&target, &nonce(&"n".repeat(MAX_NONCE_LEN))).is_some());
        assert_eq!(nonces.observe(&url("data:text/plain,x"), &nonce("n")), None, "an opaque origin");
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_origin_heard_from_least_recently() {
        let nonces = DpopNonces::default();
        for i in 0..MAX_NONCE_ORIGINS {
            nonces.observe(&url(&format!("https://h{i}.example/")), &nonce(&format!("n{i}")));
        }
        // h0 speaks again, so h1 is now the one heard from least recently.
        nonces.observe(&url("https://h0.example/"), &nonce("n0b"));
        nonces.observe(&url("https://new.example/"), &nonce("new"));
        assert_eq!(nonces.by_origin.lock().len(), MAX_NONCE_ORIGINS);
        assert_eq!(nonces.get(&url("https://h1.example/")), None);
        assert_eq!(nonces.get(&url("https://h0.example/")), Some("n0b".into()));
        assert_eq!(nonces.get(&url("https://new.example/")), Some("new".into()));
    }
}

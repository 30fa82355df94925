//! Which URLs may receive the token.

use url::{Host, Origin, Url};

/// Decides whether a request's URL may carry the bearer token.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    /// When set, only these origins get the token; `None` only when the user chose
    /// [`allow_any_origin`](crate::TokenRefreshBuilder::allow_any_origin).
    pub(crate) allowed: Option<Vec<AllowedOrigin>>,
    /// Whether plain `http://` to a host that is not loopback may get the token.
    pub(crate) allow_insecure_http: bool,
}

/// An allowed origin as its parts. Every request is checked against these; they are compared in
/// place with the request's URL, without building its [`Origin`], which would allocate, or its
/// [`Host`], which would parse an IP address again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowedOrigin {
    scheme: String,
    /// As a `Url` writes it: lower case, an IPv6 address in brackets.
    host: String,
    port: u16,
    /// Whether the token may go there whatever `allow_insecure_http` says: `https`, or plain
    /// `http` to a loopback host.
    secure: bool,
    /// How a `Url` of this origin begins, up to its path (`https://api.example`,
    /// `http://127.0.0.1:8080`): most requests' URLs are told apart by this alone.
    prefix: String,
}

impl AllowedOrigin {
    fn matches(&self, url: &Url) -> bool {
        // A `Url` of an http(s) origin is written `scheme://host[:port]/…`, the host in lower
        // case and a default port left out, so a URL that begins with the prefix and then its
        // path is of this origin. Other URLs (a user name and password before the host, say)
        // are compared part by part.
        let text = url.as_str().as_bytes();
        (text.starts_with(self.prefix.as_bytes()) && text.get(self.prefix.len()) == Some(&b'/'))
            || (url.port_or_known_default() == Some(self.port)
                && url.host_str() == Some(self.host.as_str())
                && url.scheme() == self.scheme)
    }
}

impl OriginPolicy {
    /// An allowed origin, from a URL whose origin it is (`scheme://host[:port]`, or any URL with
    /// that origin: its path is ignored).
    pub(crate) fn parse_origin(origin: &str) -> Result<AllowedOrigin, String> {
        let url = Url::parse(origin).map_err(|e| format!("allowed origin {origin:?} does not parse: {e}"))?;
        let Origin::Tuple(scheme, host, port) = url.origin() else {
            return Err(format!("allowed origin {origin:?} has no host"));
        };
        let secure = match scheme.as_str() {
            "https" => true,
            "http" => is_loopback_host(Some(match &host {
                Host::Domain(name) => Host::Domain(name.as_str()),
                Host::Ipv4(ip) => Host::Ipv4(*ip),
                Host::Ipv6(ip) => Host::Ipv6(*ip),
            })),
            _ => false,
        };
        // The origin's host as a `Url` serializes it, which is how requests' URLs are compared.
        let host = match host {
            Host::Ipv6(ip) => format!("[{ip}]"),
            host => host.to_string(),
        };
        let prefix = Url::parse(&format!("{scheme}://{host}:{port}"))
            .map(|url| url[..url::Position::AfterPort].to_owned())
            .map_err(|e| format!("allowed origin {origin:?} does not parse as an origin: {e}"))?;
        Ok(AllowedOrigin { scheme, host, port, secure, prefix })
    }

    /// Why `url` must not get the token, or `None` when it may.
    pub(crate) fn refuses(&self, url: &Url) -> Option<&'static str> {
        let secure = match &self.allowed {
            Some(allowed) => match allowed.iter().find(|origin| origin.matches(url)) {
                // Decided when the origin was allowed: its scheme, and whether its host is loopback.
                Some(origin) => origin.secure || (origin.scheme == "http" && self.allow_insecure_http),
                None => return Some("origin not in the allowed list"),
            },
            None => match url.scheme() {
                "https" => true,
                "http" => is_loopback(url) || self.allow_insecure_http,
                _ => false,
            },
        };
        match url.scheme() {
            _ if secure => None,
            "http" => Some("plain http to a host that is not loopback"),
            _ => Some("not an http(s) URL"),
        }
    }
}

/// Whether `a` and `b` have the same origin (scheme, host, port; RFC 6454), the test reqwest
/// applies before it keeps the `Authorization` header across a redirect. Compared in place,
/// without building [`Origin`]s, which allocate: a `Url`'s host is normalized, so equal hosts are
/// equal text.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.port_or_known_default() == b.port_or_known_default() && a.host_str() == b.host_str() && a.scheme() == b.scheme()
}

/// Whether `url`'s host is a loopback address or `localhost` (or a name under it).
pub(crate) fn is_loopback(url: &Url) -> bool {
    is_loopback_host(url.host())
}

fn is_loopback_host(host: Option<Host<&str>>) -> bool {
    match host {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => {
            // `Url` has lowercased the host already.
            let name = name.trim_end_matches('.');
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn without_a_list_every_https_origin_is_allowed() {
        assert_eq!(OriginPolicy::default().refuses(&url("https://api.example/x")), None);
    }

    #[test]
    fn plain_http_only_to_loopback_unless_opted_in() {
        let policy = OriginPolicy::default();
        assert!(policy.refuses(&url("http://api.example/x")).is_some());
        assert!(policy.refuses(&url("http://10.0.0.1/x")).is_some());
        for ok in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://localhost/",
            "http://api.localhost/",
            "http://LOCALHOST./",
            "http://Api.LocalHost/",
        ] {
            assert_eq!(policy.refuses(&url(ok)), None, "{ok}");
        }
        let opted = OriginPolicy { allow_insecure_http: true, ..OriginPolicy::default() };
        assert_eq!(opted.refuses(&url("http://api.example/x")), None);
    }

    #[test]
    fn allowed_origins_match_scheme_host_and_port() {
        let policy = OriginPolicy {
            allowed: Some(vec![OriginPolicy::parse_origin("https://api.example").unwrap()]),
            ..OriginPolicy::default()
        };
        assert_eq!(policy.refuses(&url("https://api.example/v1?q=1")), None);
        assert_eq!(policy.refuses(&url("https://api.example:443/v1")), None);
        assert!(policy.refuses(&url("https://api.example:8443/v1")).is_some());
        assert!(policy.refuses(&url("https://evil.example/v1")).is_some());
        assert!(policy.refuses(&url("https://api.example.evil.example/")).is_some());
        assert!(policy.refuses(&url("http://api.example/v1")).is_some());
    }

    #[test]
    fn an_allowed_origin_given_with_a_path_or_inside_a_blob_url_is_its_origin() {
        for given in ["https://api.example/v1/ignored?q", "blob:https://api.example/uuid", "https://API.example:443"] {
            let policy = OriginPolicy {
                allowed: Some(vec![OriginPolicy::parse_origin(given).unwrap()]),
                ..OriginPolicy::default()
            };
            assert_eq!(policy.refuses(&url("https://api.example/other")), None, "{given}");
            assert!(policy.refuses(&url("https://other.example/")).is_some(), "{given}");
        }
    }

    #[test]
    fn same_origin_compares_scheme_host_and_port() {
        assert!(same_origin(&url("https://api.example/a"), &url("https://api.example:443/b?c")));
        assert!(same_origin(&url("http://127.0.0.1:8080/a"), &url("http://127.0.0.1:8080/z")));
        assert!(!same_origin(&url("http://127.0.0.1:8080/a"), &url("http://127.0.0.1:8081/a")));
        assert!(!same_origin(&url("http://api.example/a"), &url("https://api.example/a")));
        assert!(!same_origin(&url("https://api.example/a"), &url("https://other.example/a")));
        assert!(!same_origin(&url("https://api.example/a"), &url("https://sub.api.example/a")));
    }

    #[test]
    fn an_allowed_origin_matches_what_same_origin_says() {
        let urls = [
            "https://api.example/x",
            "https://API.example:443/y",
            "https://api.example:8443/",
            "http://api.example/",
            "https://sub.api.example/",
            "https://api.example.evil/",
            "https://api.example@evil.example/",
            "http://127.0.0.1:8080/a",
            "http://127.0.0.1/a",
            "http://[::1]:8080/a",
            "http://[0:0::1]:8080/b",
            "http://[::2]:8080/a",
            "https://bücher.example/",
            "https://xn--bcher-kva.example/x",
            "https://user:pw@api.example/z",
        ];
        for allowed in urls {
            let origin = OriginPolicy::parse_origin(allowed).unwrap();
            for requested in urls {
                let (a, b) = (url(allowed), url(requested));
                assert_eq!(origin.matches(&b), same_origin(&a, &b), "{allowed} allowing {requested}");
            }
        }
        assert!(OriginPolicy::parse_origin("http://[::1]:8080").unwrap().matches(&url("http://[0::1]:8080/")));
    }

    #[test]
    fn an_allowed_plain_http_origin_needs_loopback_or_the_opt_in() {
        let allowing = |origin: &str, allow_insecure_http: bool| OriginPolicy {
            allowed: Some(vec![OriginPolicy::parse_origin(origin).unwrap()]),
            allow_insecure_http,
        };
        for loopback in
            ["http://127.0.0.1:8080", "http://[::1]:8080", "http://api.localhost", "blob:http://localhost/x"]
        {
            let policy = allowing(loopback, false);
            let origin = policy.allowed.as_ref().unwrap()[0].clone();
            let request = format!("http://{}:{}/v1", origin.host, origin.port);
            assert_eq!(policy.refuses(&url(&request)), None, "{loopback}");
        }
        assert_eq!(
            allowing("http://api.example", false).refuses(&url("http://api.example/v1")),
            Some("plain http to a host that is not loopback")
        );
        assert_eq!(allowing("http://api.example", true).refuses(&url("http://api.example/v1")), None);
        assert_eq!(allowing("https://api.example", false).refuses(&url("https://api.example/v1")), None);
        assert_eq!(OriginPolicy::default().refuses(&url("ftp://api.example/")), Some("not an http(s) URL"));
        let ws = allowing("ws://api.example", true);
        assert_eq!(ws.refuses(&url("ws://api.example/")), Some("not an http(s) URL"), "allowed, but not http(s)");
    }

    #[test]
    fn origins_without_host_are_rejected() {
        assert!(OriginPolicy::parse_origin("data:text/plain,x").is_err());
        assert!(OriginPolicy::parse_origin("not a url").is_err());
    }
}

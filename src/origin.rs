//! Which URLs may receive the token.

use url::{Host, Origin, Url};

/// Decides whether a request's URL may carry the bearer token.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    /// When set, only these origins get the token; `None` only when the user chose
    /// [`allow_any_origin`](crate::TokenRefreshBuilder::allow_any_origin). Kept as URLs
    /// (`scheme://host[:port]`) and compared by [`same_origin`]: every request is checked
    /// against them, and building its [`Origin`] would cost an allocation per request.
    pub(crate) allowed: Option<Vec<Url>>,
    /// Whether plain `http://` to a host that is not loopback may get the token.
    pub(crate) allow_insecure_http: bool,
}

impl OriginPolicy {
    /// An allowed origin, as the URL `scheme://host[:port]` its origin serializes to.
    pub(crate) fn parse_origin(origin: &str) -> Result<Url, String> {
        let url = Url::parse(origin).map_err(|e| format!("allowed origin {origin:?} does not parse: {e}"))?;
        match url.origin() {
            tuple @ Origin::Tuple(..) => Url::parse(&tuple.ascii_serialization())
                .map_err(|e| format!("allowed origin {origin:?} does not parse as an origin: {e}")),
            Origin::Opaque(_) => Err(format!("allowed origin {origin:?} has no host")),
        }
    }

    /// Why `url` must not get the token, or `None` when it may.
    pub(crate) fn refuses(&self, url: &Url) -> Option<&'static str> {
        if let Some(allowed) = &self.allowed
            && !allowed.iter().any(|origin| same_origin(origin, url))
        {
            return Some("origin not in the allowed list");
        }
        match url.scheme() {
            "https" => None,
            "http" if self.allow_insecure_http || is_loopback(url) => None,
            "http" => Some("plain http to a host that is not loopback"),
            _ => Some("not an http(s) URL"),
        }
    }
}

/// Whether `a` and `b` have the same origin (scheme, host, port; RFC 6454), the test reqwest
/// applies before it keeps the `Authorization` header across a redirect. Compared in place,
/// without building [`Origin`]s, which allocate.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host() == b.host() && a.port_or_known_default() == b.port_or_known_default()
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
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
    fn origins_without_host_are_rejected() {
        assert!(OriginPolicy::parse_origin("data:text/plain,x").is_err());
        assert!(OriginPolicy::parse_origin("not a url").is_err());
    }
}

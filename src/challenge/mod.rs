//! Reading a 401: is the bearer token we sent dead, or is something else wrong?
//!
//! A 401 is only worth a token refresh when the token itself was the problem. Refreshing for any
//! other reason costs a round trip to the token endpoint, and if the request keeps failing, it
//! turns one bad request into a refresh loop. [`classify_unauthorized`] reads the
//! `WWW-Authenticate` challenges and the start of the body and answers with a [`Rejection`]:
//!
//! - **[`Rejection::InvalidToken`]**: RFC 6750 §3 has a resource server that turns down a bearer
//!   token send a `Bearer` challenge, and §3.1 defines `error="invalid_token"` as "expired,
//!   revoked, malformed, or invalid for other reasons", adding that the client MAY ask for a new
//!   token and retry. That is exactly the case a refresh fixes.
//! - **[`Rejection::OtherError`]**: the other RFC 6750 codes (`invalid_request`,
//!   `insufficient_scope`) and anything vendor-specific describe a request that a new token of
//!   the same grant would not fix (a token with the same scope is still short of scope), so the
//!   response is passed through.
//! - **[`Rejection::NoDetail`]**: RFC 6750 §3.1 says a server SHOULD NOT include an error code
//!   when the request carried no authentication at all, and plenty of servers, gateways and
//!   proxies answer an expired token with a bare `401` or a bare `Bearer realm="…"` challenge
//!   too. We did send a token, so the likeliest reading is that it was not accepted. But the
//!   server did not say so, which is why this is a separate answer: the caller decides, and
//!   the default is to refresh.
//! - **[`Rejection::OtherScheme`]**: if every challenge is for some other scheme (`Basic`,
//!   `Negotiate`, `DPoP` from RFC 9449, …), the server is not asking for a bearer token at all, and
//!   a fresh one would be turned down the same way. `DPoP` errors in particular
//!   (`invalid_dpop_proof`, `use_dpop_nonce`) need a new proof, not a new token.
//!
//! The header comes first because it is where RFC 6750 puts the error. Many APIs, Kroger's among
//! them, send no challenge and put an RFC 6749 §5.2-style JSON error in the body instead
//! (`{"error":"invalid_token", ...}`), so the body decides when the header does not.
//!
//! The challenge grammar (RFC 9110 §11.6.1, formerly RFC 7235 §4.1) is ambiguous, because one
//! comma separates both challenges and a challenge's parameters:
//! `Basic realm="a", Bearer realm="b", error="invalid_token"` is two challenges with one and two
//! parameters. Here, a list element begins a new challenge unless it has the `name=` form of a
//! parameter. This module's parser is small and lenient. It reads what real servers send
//! (odd spacing, empty list elements, unterminated quotes) instead of rejecting the whole
//! header, and it never panics on arbitrary input.

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// What a 401 says about the bearer token that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// RFC 6750 `error="invalid_token"` in a Bearer challenge, or `{"error":"invalid_token"}` in a
    /// JSON body.
    InvalidToken,
    /// No error detail anywhere: no challenge at all, or a bare `Bearer` / `Bearer realm="x"`
    /// challenge without an `error` param, and a body that names no error.
    NoDetail,
    /// The server named another error (e.g. `invalid_request`, `insufficient_scope`); holds the
    /// code as sent.
    OtherError(String),
    /// Only challenges of other schemes (e.g. `Basic realm="x"`, `DPoP ...`) were sent: the
    /// server is not asking for a bearer token, a refresh cannot help.
    OtherScheme,
}

/// Classifies a 401 from its `WWW-Authenticate` headers and the first bytes of its body (the
/// caller caps the body, at a few KiB, and may pass a truncated prefix).
///
/// See the [module documentation](self) for the reasoning behind each answer. In order:
/// 1. A `Bearer` challenge with an `error` param decides: `invalid_token` (any case) gives
///    [`Rejection::InvalidToken`], any other code gives [`Rejection::OtherError`]. If several
///    `Bearer` challenges disagree, `invalid_token` wins, because a refresh is cheap next to
///    giving up on a request that a refresh would have saved.
/// 2. Otherwise, a JSON object body whose `error` member is a string, or an object with a
///    string `code`, decides in the same way.
/// 3. Otherwise the answer is [`Rejection::OtherScheme`] if challenges were sent and none was
///    `Bearer`, or else [`Rejection::NoDetail`].
pub(crate) fn classify_unauthorized(headers: &HeaderMap, body: &[u8]) -> Rejection {
    let mut saw_challenge = false;
    let mut saw_bearer = false;
    let mut other_code: Option<String> = None;

    for value in headers.get_all(WWW_AUTHENTICATE) {
        // `to_str` accepts only visible ASCII, but a realm may be UTF-8 text, so that is tried
        // next. Bytes that are neither could only be partly understood, so the line is skipped
        // rather than guessed at.
        let Some(text) = value.to_str().ok().or_else(|| std::str::from_utf8(value.as_bytes()).ok()) else {
            continue;
        };
        for challenge in parse_challenges(text) {
            saw_challenge = true;
            if challenge.scheme != "bearer" {
                continue;
            }
            saw_bearer = true;
            for code in challenge.params_named("error") {
                match classify_code(code) {
                    // Nothing later can outrank it, so there is no need to read further.
                    Some(Rejection::InvalidToken) => return Rejection::InvalidToken,
                    // The first other code is kept, in case no `invalid_token` turns up.
                    Some(Rejection::OtherError(code)) => {
                        other_code.get_or_insert(code);
                    }
                    _ => {}
                }
            }
        }
    }

    if let Some(code) = other_code {
        return Rejection::OtherError(code);
    }
    if let Some(rejection) = body_error(body).as_deref().and_then(classify_code) {
        return rejection;
    }
    if saw_challenge && !saw_bearer { Rejection::OtherScheme } else { Rejection::NoDetail }
}

/// Turns an error code into a rejection; `None` for a blank code, which says no more than a
/// missing one.
///
/// RFC 6750 codes are lower case, but servers are not always careful, and reading `INVALID_TOKEN`
/// as "some other error" would leave a dead token in place. Surrounding whitespace is ignored for
/// the same reason, and the code kept for `OtherError` is the trimmed text, case as sent.
fn classify_code(code: &str) -> Option<Rejection> {
    let code = code.trim();
    if code.is_empty() {
        None
    } else if code.eq_ignore_ascii_case("invalid_token") {
        Some(Rejection::InvalidToken)
    } else {
        Some(Rejection::OtherError(code.to_owned()))
    }
}

/// The error code in a JSON error body: `{"error": "code"}` (RFC 6749 §5.2 style, as Kroger
/// and most OAuth servers send it) or `{"error": {"code": "code"}}` (as some API gateways nest it).
///
/// Anything else names no error: not JSON, cut off by the caller's cap, not an object, or a
/// numeric code (Google's `{"error": {"code": 401, ...}}` repeats the status and says nothing
/// about the token). A truncated body fails to parse, and that is the safe reading, because
/// without the whole object there is no telling what it said.
fn body_error(body: &[u8]) -> Option<String> {
    // Some servers put a UTF-8 byte order mark in front of JSON, which serde_json rejects.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // The caller has already capped the body, and serde_json limits nesting depth, so parsing
    // into a `Value` cannot blow up.
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = match value.get("error")? {
        serde_json::Value::String(code) => code.as_str(),
        serde_json::Value::Object(inner) => inner.get("code")?.as_str()?,
        _ => return None,
    };
    Some(code.to_owned())
}

/// One challenge from a `WWW-Authenticate` header: a scheme and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// The auth-scheme, ASCII-lowercased because schemes are case-insensitive
    /// (`Bearer`, `bearer` and `BEARER` are one scheme).
    pub(crate) scheme: String,
    /// The auth-params in the order sent: names ASCII-lowercased (they are case-insensitive too),
    /// values as sent, with quoted strings unquoted and unescaped. A token68 (as in
    /// `Negotiate abc123==`) is not a parameter and is not kept, because nothing here reads it.
    pub(crate) params: Vec<(String, String)>,
}

impl Challenge {
    /// The values of every parameter called `name` (lowercase), in order.
    ///
    /// A parameter should appear at most once per challenge (RFC 9110 §11.2), but a server that
    /// repeats one has still said each value, so none is dropped.
    fn params_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params.iter().filter(move |(param, _)| param == name).map(|(_, value)| value.as_str())
    }
}

/// Splits one `WWW-Authenticate` value into its challenges (RFC 9110 §11.6.1).
///
/// ```text
/// challenge  = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
/// auth-param = token BWS "=" BWS ( token / quoted-string )
/// ```
///
/// A comma separates challenges as well as one challenge's parameters. Where one or the other
/// could begin, this takes a parameter if the element has the `token BWS "="` shape, and a new
/// challenge otherwise: `scheme SP ...`, or a lone token before a comma or the end.
///
/// The parser is lenient because the goal is to read what servers actually send, not to police
/// them. It ignores empty list elements and stray garbage up to the next comma. It takes an
/// unterminated quoted string to the end of the value. It reads unquoted values up to the next
/// whitespace or comma, even if they hold characters a token may not (`realm=https://x/`), and
/// it attaches a `name=value` that appears where a challenge should start to the previous
/// challenge. It never panics, and it never returns more challenges than the value has bytes.
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut cursor = Cursor { bytes: value.as_bytes(), pos: 0 };
    let mut challenges: Vec<Challenge> = Vec::new();

    loop {
        cursor.skip_separators();
        if cursor.at_end() {
            break;
        }
        let start = cursor.pos;
        let Some(scheme) = cursor.token() else {
            cursor.skip_rest_of_element();
            continue;
        };
        let spaced = cursor.skip_ows();
        if cursor.peek() == Some(b'=') {
            // A parameter where a challenge should begin, as in `Bearer realm=, error="x"`, where
            // `realm=` read as a token68 ends the challenge early. It most likely belongs to the
            // challenge before it. With no challenge before it, there is nothing to attach it to.
            cursor.pos = start;
            if let Some(param) = cursor.auth_param()
                && let Some(last) = challenges.last_mut()
            {
                last.params.push(param);
            }
            cursor.skip_rest_of_element();
            continue;
        }
        let mut challenge = Challenge { scheme: lowercase(scheme), params: Vec::new() };
        if spaced && !cursor.at_end() && cursor.peek() != Some(b',') {
            cursor.challenge_body(&mut challenge);
        } else {
            // Either nothing follows the scheme (a bare challenge), or something is glued to it
            // (`Bearer"x"`), which no grammar reading can make sense of.
            cursor.skip_rest_of_element();
        }
        challenges.push(challenge);
    }
    challenges
}

/// A position in a header value.
///
/// The parser works on bytes: every delimiter in the grammar is ASCII, and an ASCII byte never
/// occurs inside a multi-byte UTF-8 character, so a cut at a delimiter is always a cut between
/// characters. Every read goes through `get`, so no input can index out of bounds.
struct Cursor<'a> {
    /// The whole header value.
    bytes: &'a [u8],
    /// The next byte to read; never past `bytes.len()`.
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// The next byte, if any.
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Whether the whole value has been read.
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Moves past the next byte; a no-op at the end.
    fn bump(&mut self) {
        if !self.at_end() {
            self.pos += 1;
        }
    }

    /// Moves past bytes while `keep` holds and returns them.
    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        self.bytes.get(start..self.pos).unwrap_or_default()
    }

    /// Skips optional whitespace (SP / HTAB) and reports whether there was any, which is what
    /// tells `scheme SP param` apart from `param=`.
    fn skip_ows(&mut self) -> bool {
        !self.take_while(is_ows).is_empty()
    }

    /// Skips whitespace and commas, and with them any empty list elements (`, ,Bearer`).
    fn skip_separators(&mut self) {
        self.take_while(|b| is_ows(b) || b == b',');
    }

    /// A non-empty run of token characters.
    fn token(&mut self) -> Option<&'a [u8]> {
        let token = self.take_while(is_tchar);
        (!token.is_empty()).then_some(token)
    }

    /// Skips to the comma that ends the current list element, or to the end of the value.
    /// Commas inside quoted strings do not count.
    fn skip_rest_of_element(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b',' => break,
                b'"' => {
                    self.quoted_string();
                }
                _ => self.bump(),
            }
        }
    }

    /// Reads a quoted string, which starts at the current `"`, and returns its unescaped text.
    ///
    /// A backslash escapes the byte after it. An unterminated string runs to the end of the value,
    /// because taking what is there beats throwing away the whole header.
    fn quoted_string(&mut self) -> String {
        let mut text = Vec::new();
        self.bump(); // the opening quote
        while let Some(b) = self.peek() {
            self.bump();
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        text.push(escaped);
                        self.bump();
                    }
                }
                _ => text.push(b),
            }
        }
        // Dropping a backslash leaves valid UTF-8 valid. Lossy conversion only guards against a
        // broken invariant; it cannot panic either way.
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Reads what follows `scheme SP`: a token68, or a list of auth-params.
    ///
    /// This stops, without consuming it, at the first list element that is not a parameter,
    /// because that element is the next challenge (`Basic realm="a", Bearer ...`).
    fn challenge_body(&mut self, challenge: &mut Challenge) {
        if self.token68() {
            return;
        }
        while let Some(param) = self.auth_param() {
            challenge.params.push(param);
            // Anything after the value but before the comma (`error="a"b`) is junk.
            self.skip_rest_of_element();
            self.skip_separators();
        }
    }

    /// Moves past a token68 (`abc123==`) if one stands alone here as a whole list element.
    /// Otherwise, it stays put and returns `false`.
    ///
    /// `realm="x"` and `error=invalid_token` also begin with token68 characters and an `=`, so
    /// the check is that nothing but whitespace follows before the comma or the end.
    fn token68(&mut self) -> bool {
        let start = self.pos;
        if self.take_while(is_token68_char).is_empty() {
            return false;
        }
        self.take_while(|b| b == b'=');
        self.skip_ows();
        if self.at_end() || self.peek() == Some(b',') {
            true
        } else {
            self.pos = start;
            false
        }
    }

    /// Reads `name BWS "=" BWS value` if it is here. Otherwise, it stays put and returns `None`.
    ///
    /// The value may be empty (`scope=,`); servers do send that, and reading it as a parameter
    /// keeps the parameters after it in the same challenge.
    fn auth_param(&mut self) -> Option<(String, String)> {
        let start = self.pos;
        let name = self.token()?;
        self.skip_ows();
        if self.peek() != Some(b'=') {
            self.pos = start;
            return None;
        }
        self.bump();
        self.skip_ows();
        let value = if self.peek() == Some(b'"') {
            self.quoted_string()
        } else {
            String::from_utf8_lossy(self.take_while(|b| !is_ows(b) && b != b',')).into_owned()
        };
        Some((lowercase(name), value))
    }
}

/// SP or HTAB, the only whitespace the header grammar allows.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A `tchar` (RFC 9110 §5.6.2): the characters of scheme and parameter names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A token68 character before the trailing `=` padding (RFC 9110 §11.2): base64 and base64url.
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// A scheme or parameter name, in the one case used for comparison. Names are ASCII tokens,
/// so lossy conversion never replaces anything.
fn lowercase(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    /// The headers of a response with one `WWW-Authenticate` line per entry.
    fn challenges(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(line).expect("test header"));
        }
        headers
    }

    /// Classifies a response with the given `WWW-Authenticate` lines and an empty body.
    fn classify_header(line: &str) -> Rejection {
        classify_unauthorized(&challenges(&[line]), b"")
    }

    /// Classifies a response with no `WWW-Authenticate` header and the given body.
    fn classify_body(body: &str) -> Rejection {
        classify_unauthorized(&HeaderMap::new(), body.as_bytes())
    }

    /// A challenge, for comparing parse results.
    fn challenge(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.to_owned(),
            params: params.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
        }
    }

    /// `OtherError` with the given code.
    fn other(code: &str) -> Rejection {
        Rejection::OtherError(code.to_owned())
    }

    // --- The header ---

    #[test]
    fn bearer_invalid_token_is_invalid_token() {
        assert_eq!(
            classify_header(
                r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#
            ),
            Rejection::InvalidToken
        );
    }

    #[test]
    fn unquoted_error_token_is_invalid_token() {
        assert_eq!(classify_header("Bearer error=invalid_token"), Rejection::InvalidToken);
    }

    #[test]
    fn quoted_error_with_escapes_is_invalid_token() {
        assert_eq!(classify_header(r#"Bearer error="invalid\_token""#), Rejection::InvalidToken);
        assert_eq!(
            parse_challenges(r#"Bearer error_description="say \"hi\" \\ bye""#),
            vec![challenge("bearer", &[("error_description", r#"say "hi" \ bye"#)])]
        );
    }

    #[test]
    fn insufficient_scope_passes_through() {
        assert_eq!(
            classify_header(r#"Bearer realm="example", error="insufficient_scope", scope="read""#),
            other("insufficient_scope")
        );
    }

    #[test]
    fn invalid_request_passes_through() {
        assert_eq!(classify_header(r#"Bearer error="invalid_request""#), other("invalid_request"));
    }

    #[test]
    fn other_error_keeps_the_code_as_sent() {
        assert_eq!(classify_header(r#"Bearer error=" Insufficient_Scope ""#), other("Insufficient_Scope"));
    }

    #[test]
    fn invalid_token_code_ignores_case() {
        assert_eq!(classify_header(r#"Bearer error="INVALID_TOKEN""#), Rejection::InvalidToken);
        assert_eq!(classify_header(r#"Bearer error="Invalid_Token""#), Rejection::InvalidToken);
    }

    #[test]
    fn scheme_and_param_names_ignore_case() {
        for line in [
            r#"bearer error="invalid_token""#,
            r#"BEARER ERROR="invalid_token""#,
            r#"Bearer Error="invalid_token""#,
            "bEaReR eRrOr=invalid_token",
        ] {
            assert_eq!(classify_header(line), Rejection::InvalidToken, "{line}");
        }
    }

    #[test]
    fn odd_spacing_is_tolerated() {
        assert_eq!(classify_header(r#"Bearer   error = "invalid_token" ,realm="x""#), Rejection::InvalidToken);
        assert_eq!(
            parse_challenges(r#"Bearer   error = "invalid_token" ,realm="x""#),
            vec![challenge("bearer", &[("error", "invalid_token"), ("realm", "x")])]
        );
    }

    #[test]
    fn tabs_count_as_whitespace() {
        assert_eq!(classify_header("Bearer\trealm=\"x\",\terror\t=\t\"invalid_token\"\t"), Rejection::InvalidToken);
    }

    #[test]
    fn empty_list_elements_are_skipped() {
        assert_eq!(classify_header(r#", ,Bearer error="invalid_token""#), Rejection::InvalidToken);
        assert_eq!(
            parse_challenges(r#"Basic realm="a",, , Bearer realm="b",,error="invalid_token",,"#),
            vec![
                challenge("basic", &[("realm", "a")]),
                challenge("bearer", &[("realm", "b"), ("error", "invalid_token")]),
            ]
        );
    }

    #[test]
    fn several_challenges_on_one_line() {
        let line = r#"Basic realm="a", Bearer realm="b", error="invalid_token""#;
        assert_eq!(
            parse_challenges(line),
            vec![
                challenge("basic", &[("realm", "a")]),
                challenge("bearer", &[("realm", "b"), ("error", "invalid_token")]),
            ]
        );
        assert_eq!(classify_header(line), Rejection::InvalidToken);
    }

    #[test]
    fn bearer_error_found_after_other_schemes() {
        assert_eq!(
            classify_header(r#"Negotiate, Basic realm="a", DPoP algs="ES256", Bearer error="invalid_token""#),
            Rejection::InvalidToken
        );
    }

    #[test]
    fn bare_schemes_in_a_row() {
        assert_eq!(
            parse_challenges("Negotiate, NTLM,Bearer"),
            vec![challenge("negotiate", &[]), challenge("ntlm", &[]), challenge("bearer", &[]),]
        );
    }

    #[test]
    fn scheme_followed_by_scheme_starts_a_new_challenge() {
        // `Bearer Basic realm="x"` is not valid, but the likeliest meaning is two challenges.
        assert_eq!(
            parse_challenges(r#"Bearer Basic realm="x""#),
            vec![challenge("bearer", &[]), challenge("basic", &[("realm", "x")])]
        );
    }

    #[test]
    fn multiple_header_lines() {
        let headers = challenges(&[r#"Basic realm="a""#, r#"Bearer realm="b", error="invalid_token""#]);
        assert_eq!(classify_unauthorized(&headers, b""), Rejection::InvalidToken);
    }

    #[test]
    fn multiple_header_lines_with_only_other_schemes() {
        let headers = challenges(&[r#"Basic realm="a""#, "Negotiate"]);
        assert_eq!(classify_unauthorized(&headers, b""), Rejection::OtherScheme);
    }

    #[test]
    fn disagreeing_bearer_challenges_invalid_token_wins() {
        assert_eq!(
            classify_header(r#"Bearer error="insufficient_scope", Bearer error="invalid_token""#),
            Rejection::InvalidToken
        );
        let headers = challenges(&[r#"Bearer error="invalid_request""#, r#"Bearer error="invalid_token""#]);
        assert_eq!(classify_unauthorized(&headers, b""), Rejection::InvalidToken);
    }

    #[test]
    fn first_of_several_other_codes_is_kept() {
        assert_eq!(
            classify_header(r#"Bearer error="invalid_request", Bearer error="insufficient_scope""#),
            other("invalid_request")
        );
    }

    #[test]
    fn quoted_value_may_hold_commas_and_equals() {
        let line = r#"Bearer realm="a, b=c, Basic d", error="invalid_token""#;
        assert_eq!(
            parse_challenges(line),
            vec![challenge("bearer", &[("realm", "a, b=c, Basic d"), ("error", "invalid_token")])]
        );
        // The quoted `error="..."` is the realm's text, not a parameter.
        assert_eq!(classify_header(r#"Bearer realm="error=\"invalid_token\"""#), Rejection::NoDetail);
    }

    #[test]
    fn token68_does_not_confuse_the_parser() {
        let line = r#"Negotiate abc123==, Bearer error="invalid_token""#;
        assert_eq!(
            parse_challenges(line),
            vec![challenge("negotiate", &[]), challenge("bearer", &[("error", "invalid_token")]),]
        );
        assert_eq!(classify_header(line), Rejection::InvalidToken);
        assert_eq!(
            parse_challenges("Negotiate YIIB+/9x-._~=, NTLM TlRMTVNTUAACAAAA"),
            vec![challenge("negotiate", &[]), challenge("ntlm", &[])]
        );
    }

    #[test]
    fn token68_alone_is_other_scheme() {
        assert_eq!(classify_header("Negotiate abc123=="), Rejection::OtherScheme);
    }

    #[test]
    fn empty_value_does_not_swallow_the_next_param() {
        // After a parameter, `scope=` is an empty parameter.
        assert_eq!(classify_header(r#"Bearer realm="x", scope=, error="invalid_token""#), Rejection::InvalidToken);
        // As the first element it reads as a token68, and the orphaned parameter after it
        // goes back to the challenge it came from.
        assert_eq!(classify_header(r#"Bearer realm=, error="invalid_token""#), Rejection::InvalidToken);
    }

    #[test]
    fn param_without_any_scheme_is_dropped() {
        assert_eq!(parse_challenges(r#"error="invalid_token""#), vec![]);
        assert_eq!(classify_header(r#"error="invalid_token""#), Rejection::NoDetail);
    }

    #[test]
    fn unquoted_values_may_hold_non_token_characters() {
        assert_eq!(
            parse_challenges("Bearer realm=https://api.example.com/, error=invalid_token"),
            vec![challenge("bearer", &[("realm", "https://api.example.com/"), ("error", "invalid_token")])]
        );
    }

    #[test]
    fn unterminated_quote_does_not_panic() {
        // Taken to the end, the value is still readable.
        assert_eq!(classify_header(r#"Bearer error="invalid_token"#), Rejection::InvalidToken);
        // A quote that eats the rest of the line hides what came after it.
        assert_eq!(classify_header(r#"Bearer realm="x, error="invalid_token""#), Rejection::NoDetail);
        for line in [r#"""#, r#"Bearer ""#, r#"Bearer error=""#, r#"Bearer error="\"#] {
            let _ = parse_challenges(line);
            let _ = classify_header(line);
        }
    }

    #[test]
    fn junk_after_a_value_is_skipped() {
        assert_eq!(
            parse_challenges(r#"Bearer realm="x"junk "more", error="invalid_token""#),
            vec![challenge("bearer", &[("realm", "x"), ("error", "invalid_token")])]
        );
        assert_eq!(parse_challenges(r#"Bearer"x", Basic"#), vec![challenge("bearer", &[]), challenge("basic", &[])]);
        assert_eq!(parse_challenges(r#"@@@ "a, b", Bearer error=x"#), vec![challenge("bearer", &[("error", "x")])]);
    }

    #[test]
    fn repeated_error_param_is_read_in_full() {
        assert_eq!(
            classify_header(r#"Bearer error="invalid_request", error="invalid_token""#),
            Rejection::InvalidToken
        );
    }

    #[test]
    fn empty_error_param_is_no_detail() {
        assert_eq!(classify_header(r#"Bearer error="""#), Rejection::NoDetail);
        assert_eq!(classify_header(r#"Bearer error="  ""#), Rejection::NoDetail);
    }

    #[test]
    fn empty_and_blank_headers_are_no_detail() {
        assert_eq!(classify_header(""), Rejection::NoDetail);
        assert_eq!(classify_header(" \t ,, "), Rejection::NoDetail);
        assert_eq!(parse_challenges(""), vec![]);
    }

    #[test]
    fn non_utf8_header_line_is_skipped() {
        let mut headers = HeaderMap::new();
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_bytes(b"Bearer realm=\"caf\xE9\", error=\"invalid_token\"")
                .expect("obs-text is allowed in a header value"),
        );
        // Latin-1 `é` is neither visible ASCII nor UTF-8: the line is skipped.
        assert_eq!(classify_unauthorized(&headers, b""), Rejection::NoDetail);
        // The other lines are still read.
        headers.append(WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#));
        assert_eq!(classify_unauthorized(&headers, b""), Rejection::InvalidToken);
    }

    #[test]
    fn utf8_header_is_read() {
        let mut headers = HeaderMap::new();
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_bytes("Bearer realm=\"café\", error=\"invalid_token\"".as_bytes())
                .expect("obs-text is allowed in a header value"),
        );
        assert_eq!(classify_unauthorized(&headers, b""), Rejection::InvalidToken);
        assert_eq!(parse_challenges("Bearer realm=\"café \\é\""), vec![challenge("bearer", &[("realm", "café é")])]);
    }

    // --- No detail and other schemes ---

    #[test]
    fn no_header_and_no_body_is_no_detail() {
        assert_eq!(classify_unauthorized(&HeaderMap::new(), b""), Rejection::NoDetail);
    }

    #[test]
    fn bare_bearer_is_no_detail() {
        assert_eq!(classify_header("Bearer"), Rejection::NoDetail);
        assert_eq!(classify_header("  bearer  "), Rejection::NoDetail);
    }

    #[test]
    fn bearer_realm_without_error_is_no_detail() {
        assert_eq!(classify_header(r#"Bearer realm="x", error_description="expired""#), Rejection::NoDetail);
    }

    #[test]
    fn basic_only_is_other_scheme() {
        assert_eq!(classify_header(r#"Basic realm="x""#), Rejection::OtherScheme);
        assert_eq!(classify_header(r#"Basic realm="x", charset="UTF-8""#), Rejection::OtherScheme);
    }

    #[test]
    fn dpop_only_is_other_scheme() {
        assert_eq!(classify_header(r#"DPoP error="invalid_token", algs="ES256 PS256""#), Rejection::OtherScheme);
        assert_eq!(
            classify_header(r#"DPoP error="use_dpop_nonce", error_description="nonce required""#),
            Rejection::OtherScheme
        );
    }

    #[test]
    fn bearer_alongside_other_schemes_is_not_other_scheme() {
        assert_eq!(classify_header(r#"Basic realm="x", Bearer realm="y""#), Rejection::NoDetail);
    }

    #[test]
    fn bearer_inside_a_quoted_value_is_not_a_challenge() {
        assert_eq!(classify_header(r#"Basic realm="Bearer error=invalid_token""#), Rejection::OtherScheme);
    }

    // --- The body ---

    #[test]
    fn kroger_json_body_is_invalid_token() {
        assert_eq!(
            classify_body(
                r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#
            ),
            Rejection::InvalidToken
        );
    }

    #[test]
    fn kroger_body_prefixes_never_misread() {
        let body = r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#;
        for end in 0..body.len() {
            let prefix = body.as_bytes().get(..end).unwrap_or_default();
            assert_eq!(classify_unauthorized(&HeaderMap::new(), prefix), Rejection::NoDetail, "prefix of {end} bytes");
        }
    }

    #[test]
    fn json_body_error_ignores_case_and_whitespace() {
        assert_eq!(classify_body("  {\"error\" : \"Invalid_Token\"}\n"), Rejection::InvalidToken);
    }

    #[test]
    fn json_body_other_error_passes_through() {
        assert_eq!(
            classify_body(r#"{"error":"invalid_client","error_description":"unknown client"}"#),
            other("invalid_client")
        );
    }

    #[test]
    fn json_body_nested_error_code() {
        assert_eq!(classify_body(r#"{"error":{"code":"invalid_token","message":"expired"}}"#), Rejection::InvalidToken);
        assert_eq!(classify_body(r#"{"error":{"code":"AccessDenied","message":"no"}}"#), other("AccessDenied"));
    }

    #[test]
    fn json_body_numeric_code_is_no_detail() {
        assert_eq!(
            classify_body(
                r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#
            ),
            Rejection::NoDetail
        );
        assert_eq!(classify_body(r#"{"error":401}"#), Rejection::NoDetail);
        assert_eq!(classify_body(r#"{"error":null}"#), Rejection::NoDetail);
        assert_eq!(classify_body(r#"{"error":true}"#), Rejection::NoDetail);
    }

    #[test]
    fn json_body_empty_error_is_no_detail() {
        assert_eq!(classify_body(r#"{"error":""}"#), Rejection::NoDetail);
        assert_eq!(classify_body(r#"{"error":{"code":" "}}"#), Rejection::NoDetail);
    }

    #[test]
    fn json_body_byte_order_mark_is_ignored() {
        assert_eq!(
            classify_unauthorized(&HeaderMap::new(), b"\xEF\xBB\xBF{\"error\":\"invalid_token\"}"),
            Rejection::InvalidToken
        );
    }

    #[test]
    fn body_without_an_error_is_no_detail() {
        for body in [
            "",
            "Unauthorized",
            "<html><body><h1>401 Unauthorized</h1></body></html>",
            r#"{"error":"invalid_tok"#,
            r#"["invalid_token"]"#,
            r#"[{"error":"invalid_token"}]"#,
            r#""invalid_token""#,
            r#"{"message":"invalid_token"}"#,
            r#"{"Error":"invalid_token"}"#,
            "null",
            "{}",
        ] {
            assert_eq!(classify_body(body), Rejection::NoDetail, "{body}");
        }
    }

    #[test]
    fn deeply_nested_body_is_no_detail() {
        let body = "[".repeat(4096);
        assert_eq!(classify_body(&body), Rejection::NoDetail);
    }

    #[test]
    fn bearer_without_error_defers_to_body() {
        let headers = challenges(&[r#"Bearer realm="x""#]);
        assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_token"}"#), Rejection::InvalidToken);
        assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_grant"}"#), other("invalid_grant"));
    }

    #[test]
    fn header_error_outranks_body() {
        let headers = challenges(&[r#"Bearer error="insufficient_scope""#]);
        assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_token"}"#), other("insufficient_scope"));
        let headers = challenges(&[r#"Bearer error="invalid_token""#]);
        assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_request"}"#), Rejection::InvalidToken);
    }

    #[test]
    fn other_scheme_with_json_error_body_lets_body_decide() {
        let headers = challenges(&[r#"Basic realm="x""#]);
        assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_token"}"#), Rejection::InvalidToken);
        assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_client"}"#), other("invalid_client"));
        assert_eq!(classify_unauthorized(&headers, b"<html>401</html>"), Rejection::OtherScheme);
    }

    // --- Arbitrary input ---

    /// A tiny xorshift64 generator, so the fuzz test is deterministic and needs no dependency.
    struct XorShift(u64);

    impl XorShift {
        /// The next number; never zero for a non-zero seed.
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A number below `bound` (which must not be zero); the slight bias does not matter here.
        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % bound as u64).unwrap_or_default()
        }
    }

    /// Picks one of `items`.
    fn pick<'a, T: ?Sized>(rng: &mut XorShift, items: &[&'a T]) -> &'a T {
        items[rng.below(items.len())]
    }

    /// A byte string built from pieces of the header and JSON grammars in no particular order, so
    /// that the parser's odd corners come up far more often than they would from random bytes.
    fn random_soup(rng: &mut XorShift) -> Vec<u8> {
        #[rustfmt::skip]
        const PIECES: &[&[u8]] = &[
            b"Bearer", b"bearer", b"Basic", b"Negotiate", b"DPoP", b" ", b"  ", b"\t", b",", b", ", b"=", b"==",
            b"\"", b"\\", b"\\\"", b"error", b"Error", b"realm", b"invalid_token", b"insufficient_scope", b"abc123",
            b"+/", b"{", b"}", b"[", b"]", b":", b"\"error\"", b"\"code\"", b"null", b"1", b"\xC3\xA9", b"\xE9",
            b"\xEF\xBB\xBF", b"\0", b"\r\n", b"\x7F",
        ];
        let mut bytes = Vec::new();
        for _ in 0..rng.below(24) {
            if rng.below(8) == 0 {
                // A random byte, most likely not in any grammar.
                bytes.push(rng.next().to_le_bytes()[0]);
            } else {
                bytes.extend_from_slice(pick(rng, PIECES));
            }
        }
        bytes
    }

    /// A header value that is nearly well-formed: a few challenges with a few parameters each,
    /// then a couple of random byte edits. This is what reaches `invalid_token` and the other
    /// codes, which the soup alone almost never spells out.
    fn random_header(rng: &mut XorShift) -> Vec<u8> {
        const SCHEMES: &[&str] = &["Bearer", "bearer", "BEARER", "Basic", "DPoP", "Negotiate"];
        const NAMES: &[&str] = &["error", "Error", "realm", "scope", "error_description"];
        const VALUES: &[&str] = &[
            "invalid_token",
            "\"invalid_token\"",
            "\"invalid\\_token\"",
            "\"INVALID_TOKEN\"",
            "insufficient_scope",
            "\"invalid_request\"",
            "\"a, b=c\"",
            "\"\"",
            "",
        ];
        const GAPS: &[&str] = &[", ", ",", " , ", ",\t", ", ,"];
        let mut text = String::new();
        for challenge in 0..=rng.below(3) {
            if challenge > 0 {
                text.push_str(pick(rng, GAPS));
            }
            text.push_str(pick(rng, SCHEMES));
            if rng.below(4) == 0 {
                text.push_str(" abc123==");
                continue;
            }
            for param in 0..rng.below(4) {
                text.push_str(if param == 0 { " " } else { pick(rng, GAPS) });
                text.push_str(pick(rng, NAMES));
                text.push_str(pick(rng, &["=", " = ", "\t="]));
                text.push_str(pick(rng, VALUES));
            }
        }
        let mut bytes = text.into_bytes();
        for _ in 0..rng.below(3) {
            let at = rng.below(bytes.len() + 1);
            let byte = pick(rng, &[b"\"", b",", b"=", b" ", b"\\", b"\xE9"])[0];
            match rng.below(3) {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at),
            }
        }
        bytes
    }

    /// A body that is mostly a JSON error object, sometimes nested, sometimes truncated.
    fn random_body(rng: &mut XorShift) -> Vec<u8> {
        const BODIES: &[&str] = &[
            r#"{"error":"invalid_token"}"#,
            r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#,
            r#"{"error":"Invalid_Token"}"#,
            r#"{"error":"invalid_client"}"#,
            r#"{"error":{"code":"invalid_token"}}"#,
            r#"{"error":{"code":401}}"#,
            r#"{"error":""}"#,
            r#"[{"error":"invalid_token"}]"#,
        ];
        let mut bytes = pick(rng, BODIES).as_bytes().to_vec();
        if rng.below(2) == 0 {
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        bytes
    }

    #[test]
    fn random_inputs_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut seen = [0_u32; 4];
        for round in 0..6000 {
            let (header, body) = match round % 3 {
                0 => (random_soup(&mut rng), random_soup(&mut rng)),
                1 => (random_header(&mut rng), random_soup(&mut rng)),
                _ => (random_header(&mut rng), random_body(&mut rng)),
            };

            let text = String::from_utf8_lossy(&header);
            let parsed = parse_challenges(&text);
            // Every challenge consumes at least its scheme, and each parameter its name and `=`.
            assert!(parsed.len() <= text.len());
            for challenge in &parsed {
                assert!(
                    !challenge.scheme.is_empty()
                        && challenge.scheme.bytes().all(is_tchar)
                        && !challenge.scheme.bytes().any(|b| b.is_ascii_uppercase()),
                    "bad scheme {:?} from {text:?}",
                    challenge.scheme
                );
                for (name, _) in &challenge.params {
                    assert!(
                        !name.is_empty() && name.bytes().all(is_tchar) && !name.bytes().any(|b| b.is_ascii_uppercase()),
                        "bad param name {name:?} from {text:?}"
                    );
                }
            }
            // Parsing is a pure function of its input.
            assert_eq!(parsed, parse_challenges(&text));

            let mut headers = HeaderMap::new();
            // Control characters make an invalid header value; such a response never arrives.
            if let Ok(value) = HeaderValue::from_bytes(&header) {
                headers.append(WWW_AUTHENTICATE, value.clone());
                headers.append(WWW_AUTHENTICATE, value);
            }
            let answer = match classify_unauthorized(&headers, &body) {
                Rejection::InvalidToken => 0,
                Rejection::NoDetail => 1,
                Rejection::OtherError(code) => {
                    assert!(!code.is_empty() && code.trim() == code, "code {code:?}");
                    assert!(!code.eq_ignore_ascii_case("invalid_token"));
                    2
                }
                Rejection::OtherScheme => 3,
            };
            seen[answer] += 1;
        }
        // Guards the generators: a run that never reached an answer tested little on its way there.
        assert!(seen.iter().all(|&count| count >= 100), "answers seen: {seen:?}");
    }
}

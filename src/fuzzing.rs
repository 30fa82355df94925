//! Entry points for fuzzing the parsers that read what servers send. Hidden, compiled only with
//! the `fuzzing` feature (and in the crate's own tests), and not part of the public API: no
//! semver promise.
//!
//! The cargo-fuzz targets in `fuzz/` hand the fuzzer's bytes to [`check_www_authenticate`] and
//! [`check_token_response`]. Each check runs a parser and panics when an invariant the rest of
//! the crate relies on breaks: the parser itself must never panic, a challenge must read back the
//! same after being written out again, an excerpt must stay under its cap and show no token. The
//! crate's unit tests replay `fuzz/seeds/` through the same checks, so an input the fuzzer once
//! found stays fixed on stable Rust.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use crate::challenge::{self, Challenge, Rejection};
use crate::error::RefreshError;
use crate::token::TokenSet;

// The token endpoint's answer parsers, the ones the token client runs (not a copy): the checks
// below and `proptests` call them through this path.
pub(crate) use crate::source::response;

/// The longest excerpt of a body, in characters, before its ellipsis.
pub(crate) const EXCERPT_CHARS: usize = 512;

/// Bytes of a non-JSON body that an excerpt reads before redacting (four times the cap).
const EXCERPT_TEXT_BYTES: usize = EXCERPT_CHARS * 4;

/// The fields whose values are secrets and must never appear in an excerpt.
pub(crate) const SECRET_FIELDS: &[&str] = &["access_token", "refresh_token", "id_token", "client_secret"];

/// The fixed "now" the checks parse against, so that a finding replays the same.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// What [`classify_unauthorized`] decided, as a string: `invalid_token`, `no_detail`,
/// `other_scheme`, or `other_error:` followed by the code.
pub fn classify_unauthorized(header_lines: &[&[u8]], body: &[u8]) -> String {
    match challenge::classify_unauthorized(&headers(header_lines), body, "bearer") {
        Rejection::InvalidToken => "invalid_token".to_owned(),
        Rejection::NoDetail => "no_detail".to_owned(),
        Rejection::OtherScheme => "other_scheme".to_owned(),
        Rejection::OtherError(code) => format!("other_error:{code}"),
    }
}

/// The challenges in one `WWW-Authenticate` value: each scheme (lowercase) with its parameters.
pub fn parse_challenges(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    challenge::parse_challenges(value).into_iter().map(|c| (c.scheme, c.params)).collect()
}

/// Reads a token endpoint's answer as the token client does: a 2xx as a token response, anything
/// else as an error response, with `Retry-After` if `retry_after` is a valid header value.
pub fn parse_token_response(status: u16, retry_after: Option<&[u8]>, body: &[u8]) -> Result<TokenSet, RefreshError> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if status.is_success() {
        return response::parse_success(status, body, None, now());
    }
    let mut headers = HeaderMap::new();
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(RETRY_AFTER, value);
    }
    Err(response::parse_failure(status, &headers, body, now()))
}

/// The excerpt of a body that an error shows.
pub fn excerpt(body: &[u8]) -> String {
    response::excerpt(body)
}

/// A `WWW-Authenticate` line per element of `lines` that is a valid header value; the others are
/// left out, as no server could send them.
fn headers(lines: &[&[u8]]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(WWW_AUTHENTICATE, value);
        }
    }
    headers
}

/// Writes challenges out in canonical form: every value quoted, `"` and `\` escaped.
pub(crate) fn render_challenges(challenges: &[Challenge]) -> String {
    let rendered: Vec<String> = challenges
        .iter()
        .map(|c| {
            let mut text = c.scheme.clone();
            for (i, (name, value)) in c.params.iter().enumerate() {
                text.push_str(if i == 0 { " " } else { ", " });
                text.push_str(name);
                text.push_str("=\"");
                for ch in value.chars() {
                    if ch == '"' || ch == '\\' {
                        text.push('\\');
                    }
                    text.push(ch);
                }
                text.push('"');
            }
            text
        })
        .collect();
    rendered.join(", ")
}

/// Checks `parse_challenges` on one value: it stays within bounds, names are lowercase tokens, the
/// answer is a pure function of the input, and the canonical form reads back the same.
pub(crate) fn check_parse(text: &str) -> Vec<Challenge> {
    let parsed = challenge::parse_challenges(text);
    assert!(parsed.len() <= text.len(), "more challenges than bytes in {text:?}");
    let is_name = |name: &str| {
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            && !name.bytes().any(|b| b.is_ascii_uppercase())
    };
    for c in &parsed {
        assert!(is_name(&c.scheme), "bad scheme {:?} from {text:?}", c.scheme);
        for (name, _) in &c.params {
            assert!(is_name(name), "bad parameter name {name:?} from {text:?}");
        }
    }
    assert_eq!(parsed, challenge::parse_challenges(text), "not deterministic on {text:?}");
    let canonical = render_challenges(&parsed);
    assert_eq!(
        challenge::parse_challenges(&canonical),
        parsed,
        "{text:?} written out as {canonical:?} reads back differently"
    );
    parsed
}

/// What `classify_unauthorized` must answer, worked out from `parse_challenges` and the JSON body
/// independently of it: the reference the fuzzer compares the real thing with.
pub(crate) fn expected_rejection(headers: &HeaderMap, body: &[u8]) -> Rejection {
    let mut saw_challenge = false;
    let mut saw_bearer = false;
    let mut first_other: Option<String> = None;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = std::str::from_utf8(value.as_bytes()) else { continue };
        for c in challenge::parse_challenges(text) {
            saw_challenge = true;
            if c.scheme != "bearer" {
                continue;
            }
            saw_bearer = true;
            for (name, value) in &c.params {
                let code = value.trim();
                if name != "error" || code.is_empty() {
                    continue;
                }
                if code.eq_ignore_ascii_case("invalid_token") {
                    return Rejection::InvalidToken;
                }
                first_other.get_or_insert_with(|| code.to_owned());
            }
        }
    }
    if let Some(code) = first_other {
        return Rejection::OtherError(code);
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let code = serde_json::from_slice::<Value>(body).ok().and_then(|value| match value.get("error") {
        Some(Value::String(code)) => Some(code.clone()),
        Some(Value::Object(inner)) => inner.get("code").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    });
    match code.as_deref().map(str::trim) {
        Some(code) if code.eq_ignore_ascii_case("invalid_token") => Rejection::InvalidToken,
        Some(code) if !code.is_empty() => Rejection::OtherError(code.to_owned()),
        _ if saw_challenge && !saw_bearer => Rejection::OtherScheme,
        _ => Rejection::NoDetail,
    }
}

/// Fuzz target `www_authenticate`. The bytes up to the first NUL are `WWW-Authenticate` lines
/// separated by `\n` (neither byte can occur in a header value); the rest is the 401's body.
///
/// # Panics
///
/// When the parser or the classifier breaks an invariant (see the module documentation).
pub fn check_www_authenticate(data: &[u8]) {
    let (head, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
    for line in &lines {
        check_parse(&String::from_utf8_lossy(line));
    }
    // The layer classifies the first few KiB of a body at most.
    let body = &body[..body.len().min(crate::CLASSIFY_BODY_LIMIT)];
    let mut headers = headers(&lines);
    let answer = challenge::classify_unauthorized(&headers, body, "bearer");
    if let Rejection::OtherError(code) = &answer {
        assert!(!code.is_empty() && code.trim() == code, "code {code:?}");
        assert!(!code.eq_ignore_ascii_case("invalid_token"), "invalid_token read as another error");
    }
    assert_eq!(answer, expected_rejection(&headers, body), "lines {lines:?}, body {:?}", String::from_utf8_lossy(body));
    // Whatever else was said, a Bearer `invalid_token` challenge on a line of its own wins.
    headers.append(WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#));
    assert_eq!(challenge::classify_unauthorized(&headers, body, "bearer"), Rejection::InvalidToken);
}

/// The statuses the first byte of a `token_response` input picks from.
const STATUSES: &[u16] = &[200, 201, 204, 400, 401, 403, 429, 500, 502, 503];

/// Fuzz target `token_response`. The first byte picks the status; then, up to the first NUL, a
/// `Retry-After` value if there is a NUL at all; then the body.
///
/// # Panics
///
/// When a parser breaks an invariant (see the module documentation).
pub fn check_token_response(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let status = STATUSES[usize::from(first) % STATUSES.len()];
    let (retry_after, body) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };

    check_excerpt(body, &excerpt(body));
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    // Every body is tried both ways, whatever the status said.
    match response::parse_success(status_code, body, None, now()) {
        Ok(tokens) => check_tokens(&tokens),
        Err(RefreshError::InvalidResponse { body: shown, reason, .. }) => {
            assert!(!reason.is_empty());
            check_excerpt(body, &shown);
        }
        Err(other) => panic!("parse_success without a mapper answered {other:?}"),
    }
    match parse_token_response(status, retry_after, body) {
        Ok(tokens) => check_tokens(&tokens),
        Err(RefreshError::InvalidResponse { body: shown, .. }) => check_excerpt(body, &shown),
        Err(RefreshError::Protocol { status: got, retry_after: asked, body: shown, error }) => {
            assert_eq!(got.as_u16(), status);
            if error.is_some() {
                assert!(shown.is_empty(), "an OAuth error and an excerpt");
            }
            check_excerpt(body, &shown);
            // A valid, ASCII `Retry-After` that is a number of seconds is read as that many.
            let seconds = retry_after
                .filter(|v| v.is_ascii() && HeaderValue::from_bytes(v).is_ok())
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(seconds) = seconds {
                assert_eq!(asked, Some(Duration::from_secs(seconds)));
            }
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// A parsed token set is usable: a non-empty access token, a non-empty refresh token if any, and
/// an expiry after now and at most ten years ahead.
pub(crate) fn check_tokens(tokens: &TokenSet) {
    assert!(!tokens.access_token().secret().is_empty(), "empty access token accepted");
    if let Some(refresh) = tokens.refresh_token() {
        assert!(!refresh.secret().is_empty(), "empty refresh token kept");
    }
    if let Some(expires_at) = tokens.expires_at() {
        assert!(expires_at > now(), "a token that expired on arrival");
        assert!(expires_at <= now() + response::MAX_EXPIRES_IN, "an expiry beyond ten years");
    }
}

/// An excerpt `shown` of `body` is capped and shows no secret field's value.
///
/// What counts as a secret value here: in a JSON body, the string value of a secret field
/// (at any depth) that occurs nowhere else in the document; in any other body, a run of eight or
/// more letters and digits that follows a secret field's name (at the start or after a delimiter:
/// `{`, `,`, `&`, a quote, a backslash, whitespace) and a separator (quotes, `:`, `=`,
/// whitespace, backslashes), and occurs nowhere else in the text.
pub(crate) fn check_excerpt(body: &[u8], shown: &str) {
    let chars = shown.chars().count();
    assert!(chars <= EXCERPT_CHARS + 1, "an excerpt of {chars} characters");
    if chars == EXCERPT_CHARS + 1 {
        assert!(shown.ends_with('…'), "a capped excerpt without its ellipsis");
    }
    for secret in secret_values(body) {
        assert!(!shown.contains(&secret), "secret {secret:?} shown in {shown:?}");
    }
}

/// The secret values in `body` that an excerpt must not show; see [`check_excerpt`].
pub(crate) fn secret_values(body: &[u8]) -> Vec<String> {
    let alnum = |s: &str| s.len() >= 8 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
        let mut secrets = Vec::new();
        take_secrets(&mut value, &mut secrets);
        // What else the document says, with every secret field taken out.
        let rest = value.to_string();
        secrets.retain(|s| alnum(s) && !rest.contains(s.as_str()) && !"[redacted]".contains(s.as_str()));
        return secrets;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_TEXT_BYTES)]);
    let mut secrets = Vec::new();
    for name in SECRET_FIELDS {
        for (at, _) in text.match_indices(name) {
            // A field's name starts a field: at the start, or after a delimiter. Inside a word
            // (`xrefresh_token`) it is text that happens to contain the name.
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| !matches!(c, '{' | ',' | '&' | '"' | '\'' | '\\') && !c.is_whitespace()) {
                continue;
            }
            let after = &text[at + name.len()..];
            let value_at = after.find(|c: char| !matches!(c, '"' | '\'' | ':' | '=' | '\\') && !c.is_whitespace());
            let Some(value_at) = value_at.filter(|&i| i > 0) else { continue };
            let value: String = after[value_at..].chars().take_while(char::is_ascii_alphanumeric).collect();
            if alnum(&value) && text.matches(value.as_str()).count() == 1 && !"[redacted]".contains(value.as_str()) {
                secrets.push(value);
            }
        }
    }
    secrets
}

/// Moves the string values of secret fields, at any depth, out of `value` into `secrets`.
fn take_secrets(value: &mut Value, secrets: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for name in SECRET_FIELDS {
                if let Some(Value::String(secret)) = fields.remove(*name) {
                    secrets.push(secret);
                }
            }
            fields.values_mut().for_each(|v| take_secrets(v, secrets));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| take_secrets(v, secrets)),
        _ => {}
    }
}

//! Reading what a token endpoint answered: the token response (RFC 6749 §5.1) and the error
//! response (§5.2).
//!
//! Everything here is a pure function of the status, headers, body bytes and current time, so the
//! malformed answers real providers send are unit-tested without a server.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::error::{OAuthError, RefreshError};
use crate::token::{RefreshToken, TokenSet};

/// The longest `expires_in` accepted: ten years. Anything longer is a unit mix-up (milliseconds
/// sent as seconds) or garbage, and trusting it would keep a dead token for good.
pub(crate) const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How much of a body is kept in an error, for the reader of a log.
const EXCERPT_BYTES: usize = 512;

/// Fields whose values are secrets and never appear in an error.
const SECRET_FIELDS: &[&str] = &["access_token", "refresh_token", "id_token", "client_secret"];

/// Turns an envelope-wrapped answer into a plain token response, or into the OAuth error it
/// carries.
pub(crate) type ResponseMapper = dyn Fn(Value) -> Result<Value, OAuthError> + Send + Sync;

/// Parses a 2xx answer into a token set.
pub(crate) fn parse_success(
    status: StatusCode,
    body: &[u8],
    mapper: Option<&ResponseMapper>,
    now: SystemTime,
) -> Result<TokenSet, RefreshError> {
    let unreadable = |reason: String| RefreshError::InvalidResponse {
        status,
        reason,
        body: excerpt(body),
        rotated_refresh_token: None,
    };
    let value: Value =
        serde_json::from_slice(strip_bom(body)).map_err(|e| unreadable(format!("the body is not JSON ({e})")))?;
    let value = match mapper {
        Some(map) => map(value).map_err(|error| RefreshError::Protocol {
            status,
            error: Some(Box::new(error)),
            retry_after: None,
            body: String::new(),
        })?,
        None => value,
    };
    let Value::Object(mut fields) = value else {
        return Err(unreadable("the body is not a JSON object".into()));
    };
    // Whatever else is wrong with the answer, a new refresh token in it must not be lost: the
    // provider may already have spent the old one.
    let rotated = match fields.get("refresh_token") {
        Some(Value::String(token)) if !token.is_empty() => Some(RefreshToken::new(token.clone())),
        _ => None,
    };
    let invalid = |reason: String| RefreshError::InvalidResponse {
        status,
        reason,
        body: excerpt(body),
        rotated_refresh_token: rotated.clone(),
    };

    let access_token = match fields.remove("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token,
        Some(Value::String(_)) => return Err(invalid("`access_token` is empty".into())),
        Some(_) => return Err(invalid("`access_token` is not a string".into())),
        None => return Err(invalid("`access_token` is missing".into())),
    };
    let mut tokens = TokenSet::new(access_token);

    match fields.remove("refresh_token") {
        Some(Value::String(token)) if !token.is_empty() => tokens = tokens.with_refresh_token(token),
        Some(Value::String(_) | Value::Null) | None => {}
        Some(_) => return Err(invalid("`refresh_token` is not a string".into())),
    }
    if let Some(expires_in) = fields.remove("expires_in") {
        let lifetime = parse_expires_in(&expires_in).map_err(invalid)?;
        if let Some(lifetime) = lifetime {
            let expires_at =
                now.checked_add(lifetime).ok_or_else(|| invalid("`expires_in` overflows the clock".into()))?;
            tokens = tokens.with_expires_at(expires_at);
        }
    }
    match fields.remove("token_type") {
        Some(Value::String(kind)) => tokens = tokens.with_token_type(kind),
        Some(Value::Null) | None => {}
        Some(other) => tokens = tokens.with_extra("token_type", other),
    }
    match fields.remove("scope") {
        Some(Value::String(scope)) => tokens = tokens.with_scope(scope),
        Some(Value::Null) | None => {}
        // Some providers send scopes as an array; keep it for the user rather than fail.
        Some(other) => tokens = tokens.with_extra("scope", other),
    }
    for (name, value) in fields {
        tokens = tokens.with_extra(name, value);
    }
    Ok(tokens)
}

/// `expires_in` as providers really send it: a number, sometimes a float, sometimes a string.
fn parse_expires_in(value: &Value) -> Result<Option<Duration>, String> {
    let seconds = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64().ok_or_else(|| "`expires_in` is not a number".to_owned())?,
        Value::String(s) => {
            s.trim().parse::<f64>().map_err(|_| format!("`expires_in` is the string {s:?}, not a number"))?
        }
        _ => return Err("`expires_in` is not a number".into()),
    };
    if !seconds.is_finite() {
        return Err("`expires_in` is not a finite number".into());
    }
    if seconds < 0.0 {
        return Err(format!("`expires_in` is negative ({seconds})"));
    }
    if seconds == 0.0 {
        // Some providers send 0 for "no fixed lifetime". Taken literally it would make every
        // request refresh first; as "unknown", the token is used until a server rejects it.
        return Ok(None);
    }
    if seconds > MAX_EXPIRES_IN.as_secs_f64() {
        return Err(format!(
            "`expires_in` of {seconds} seconds is beyond {} seconds (ten years)",
            MAX_EXPIRES_IN.as_secs()
        ));
    }
    match Duration::from_secs_f64(seconds) {
        // A lifetime that rounds to nothing is read like 0: no known expiry.
        lifetime if lifetime.is_zero() => Ok(None),
        lifetime => Ok(Some(lifetime)),
    }
}

/// Turns a non-2xx answer into a protocol error.
pub(crate) fn parse_failure(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> RefreshError {
    let error =
        serde_json::from_slice::<Value>(strip_bom(body)).ok().and_then(|value| oauth_error(&value)).map(Box::new);
    RefreshError::Protocol {
        status,
        body: if error.is_some() { String::new() } else { excerpt(body) },
        error,
        retry_after: retry_after(headers, now),
    }
}

/// An RFC 6749 §5.2 error object, leniently: `error` must be a string; the rest is optional.
pub(crate) fn oauth_error(value: &Value) -> Option<OAuthError> {
    let object = value.as_object()?;
    let code = object.get("error")?.as_str()?;
    let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
    Some(OAuthError {
        error: code.to_owned(),
        error_description: text("error_description"),
        error_uri: text("error_uri"),
    })
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The start of a body for an error message: capped, lossily decoded, and with the values of
/// token fields replaced so that a half-valid token response never puts a secret in a log.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let body = strip_bom(body);
    if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
        redact(&mut value);
        return cap(&value.to_string());
    }
    cap(&redact_text(&String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES * 4)])))
}

/// Redacts text that is not JSON: a form-encoded answer, a truncated JSON document, an error
/// page that echoes the request. Finding where a value ends in text of unknown shape is guesswork
/// (escaped quotes, line breaks, nested encodings), so the text is cut at the first secret field
/// name instead: what comes before it is shown, nothing after it.
fn redact_text(text: &str) -> String {
    let lowered = text.to_ascii_lowercase();
    match SECRET_FIELDS.iter().filter_map(|name| lowered.find(name)).min() {
        Some(first) => format!("{}[redacted]", &text[..first]),
        None => text.to_owned(),
    }
}

/// Redacts a parsed JSON body: the values of secret fields, and whole strings that name a secret
/// field (a token response nested as a JSON string, say).
fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => redact_fields(fields),
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => {
            let lowered = text.to_ascii_lowercase();
            if SECRET_FIELDS.iter().any(|name| lowered.contains(name)) {
                *text = "[redacted]".into();
            }
        }
        _ => {}
    }
}

fn redact_fields(fields: &mut Map<String, Value>) {
    for (name, value) in fields.iter_mut() {
        if SECRET_FIELDS.contains(&name.to_ascii_lowercase().as_str()) {
            *value = Value::String("[redacted]".into());
        } else {
            redact(value);
        }
    }
}

/// A body without its UTF-8 byte-order mark, which some servers put before JSON.
fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

fn cap(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_BYTES) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ok(body: &str) -> Result<TokenSet, RefreshError> {
        parse_success(StatusCode::OK, body.as_bytes(), None, now())
    }

    fn reason(result: Result<TokenSet, RefreshError>) -> String {
        match result {
            Err(RefreshError::InvalidResponse { reason, .. }) => reason,
            other => panic!("expected InvalidResponse, got {other:?}"),
        }
    }

    #[test]
    fn kroger_token_response_parses() {
        let tokens =
            ok(r#"{"refresh_token":"FN20","expires_in":172800,"access_token":"B2ei","token_type":"bearer"}"#).unwrap();
        assert_eq!(tokens.access_token().secret(), "B2ei");
        assert_eq!(tokens.refresh_token().unwrap().secret(), "FN20");
        assert_eq!(tokens.expires_at(), Some(now() + Duration::from_secs(172_800)));
        assert_eq!(tokens.token_type(), Some("bearer"));
    }

    #[test]
    fn provider_fields_are_kept_as_extra() {
        let tokens = ok(r#"{"access_token":"a","userid":"363","csrf_token":"x","scope":"user.info"}"#).unwrap();
        assert_eq!(tokens.extra().get("userid"), Some(&Value::from("363")));
        assert_eq!(tokens.scope(), Some("user.info"));
    }

    #[test]
    fn expires_in_as_string_or_float_is_accepted() {
        assert_eq!(
            ok(r#"{"access_token":"a","expires_in":"3600"}"#).unwrap().expires_at(),
            Some(now() + Duration::from_secs(3600))
        );
        assert_eq!(
            ok(r#"{"access_token":"a","expires_in":1.5}"#).unwrap().expires_at(),
            Some(now() + Duration::from_millis(1500))
        );
        assert_eq!(ok(r#"{"access_token":"a","expires_in":null}"#).unwrap().expires_at(), None);
    }

    #[test]
    fn expires_in_zero_means_no_known_expiry() {
        assert_eq!(ok(r#"{"access_token":"a","expires_in":0}"#).unwrap().expires_at(), None);
        assert_eq!(ok(r#"{"access_token":"a","expires_in":"0"}"#).unwrap().expires_at(), None);
    }

    #[test]
    fn not_json_is_a_typed_error_with_an_excerpt() {
        match ok("<html>Bad Gateway</html>") {
            Err(RefreshError::InvalidResponse { reason, body, .. }) => {
                assert!(reason.starts_with("the body is not JSON"), "{reason}");
                assert_eq!(body, "<html>Bad Gateway</html>");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_or_wrong_access_token_is_a_typed_error() {
        assert_eq!(reason(ok(r#"{"token_type":"bearer"}"#)), "`access_token` is missing");
        assert_eq!(reason(ok(r#"{"access_token":42}"#)), "`access_token` is not a string");
        assert_eq!(reason(ok(r#"{"access_token":""}"#)), "`access_token` is empty");
        assert_eq!(reason(ok("[1,2]")), "the body is not a JSON object");
    }

    #[test]
    fn negative_or_absurd_expires_in_is_a_typed_error() {
        assert!(reason(ok(r#"{"access_token":"a","expires_in":-5}"#)).contains("negative"));
        assert!(reason(ok(r#"{"access_token":"a","expires_in":1e300}"#)).contains("ten years"));
        assert!(reason(ok(r#"{"access_token":"a","expires_in":"soon"}"#)).contains("not a number"));
        assert!(reason(ok(r#"{"access_token":"a","expires_in":[1]}"#)).contains("not a number"));
    }

    #[test]
    fn error_excerpts_never_show_token_values() {
        match ok(r#"{"access_token":"SECRET-A","refresh_token":"SECRET-R","expires_in":-1}"#) {
            Err(RefreshError::InvalidResponse { body, .. }) => {
                assert!(!body.contains("SECRET"), "{body}");
                assert!(body.contains("[redacted]"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn text_excerpts_redact_secret_fields_too() {
        for body in [
            "access_token=SECRET-A&refresh_token=SECRET-R&expires_in=3600",
            r#"{"access_token":"SECRET-A","refresh_token":"SECRET-R","expi"#,
            "<pre>grant_type=refresh_token&refresh_token=SECRET-R&client_secret=SECRET-C</pre>",
        ] {
            let shown = excerpt(body.as_bytes());
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
    }

    #[test]
    fn sent_secrets_are_redacted_from_error_bodies() {
        let mut err = parse_failure(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"upstream said: xyzzy-token", now());
        err.redact(&["xyzzy-token"]);
        assert!(!err.to_string().contains("xyzzy"), "{err}");
    }

    #[test]
    fn a_secret_cut_short_by_the_excerpt_cap_is_redacted_too() {
        let body = format!("{} Invalid refresh token: rt-0123456789", "x".repeat(EXCERPT_BYTES - 30));
        let mut err = parse_failure(StatusCode::BAD_REQUEST, &HeaderMap::new(), body.as_bytes(), now());
        assert!(err.to_string().contains("rt-01"), "the cap cut the secret short: {err}");
        err.redact(&["rt-0123456789"]);
        assert!(!err.to_string().contains("rt-0"), "{err}");
        assert!(err.to_string().contains("Invalid refresh token: [redacted]…"), "{err}");
    }

    #[test]
    fn an_invalid_answer_still_carries_its_new_refresh_token() {
        match ok(r#"{"access_token":"a","refresh_token":"r2","expires_in":-1}"#) {
            Err(RefreshError::InvalidResponse { rotated_refresh_token: Some(token), .. }) => {
                assert_eq!(token.secret(), "r2")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn excerpts_are_capped() {
        let huge = "x".repeat(100_000);
        let shown = excerpt(huge.as_bytes());
        assert!(shown.chars().count() <= EXCERPT_BYTES + 1);
    }

    #[test]
    fn invalid_grant_error_response_is_parsed() {
        let err = parse_failure(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":"invalid_grant","error_description":"expired"}"#,
            now(),
        );
        let oauth = err.oauth_error().unwrap();
        assert_eq!(oauth.error, "invalid_grant");
        assert_eq!(oauth.error_description.as_deref(), Some("expired"));
    }

    #[test]
    fn plain_text_error_keeps_its_body() {
        let err = parse_failure(StatusCode::BAD_REQUEST, &HeaderMap::new(), b"Missing/Invalid Refresh Token", now());
        assert!(err.oauth_error().is_none());
        assert!(err.to_string().contains("Missing/Invalid Refresh Token"), "{err}");
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(2)));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(120));
        headers.insert(http::header::RETRY_AFTER, date.parse().unwrap());
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(120)));
        headers.insert(http::header::RETRY_AFTER, "whenever".parse().unwrap());
        assert_eq!(retry_after(&headers, now()), None);
    }

    #[test]
    fn envelope_mapper_unwraps_and_reports_errors() {
        let unwrap_body = |value: Value| -> Result<Value, OAuthError> {
            match value.get("status").and_then(Value::as_i64) {
                Some(0) => Ok(value.get("body").cloned().unwrap_or(Value::Null)),
                Some(code) => Err(OAuthError::new(format!("status_{code}"))),
                None => Err(OAuthError::new("no_status")),
            }
        };
        let tokens =
            parse_success(StatusCode::OK, br#"{"status":0,"body":{"access_token":"a"}}"#, Some(&unwrap_body), now())
                .unwrap();
        assert_eq!(tokens.access_token().secret(), "a");
        let err = parse_success(StatusCode::OK, br#"{"status":601}"#, Some(&unwrap_body), now()).unwrap_err();
        assert_eq!(err.oauth_error().unwrap().error, "status_601");
    }
}

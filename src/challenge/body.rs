//! The error code in a JSON error body, for the APIs that send no `WWW-Authenticate` challenge
//! and put an RFC 6749 §5.2-style `{"error": ...}` in the body instead (Kroger's among them).

/// The error code in a JSON error body: `{"error": "code"}` (RFC 6749 §5.2 style, as Kroger
/// and most OAuth servers send it) or `{"error": {"code": "code"}}` (as some API gateways nest it).
///
/// Anything else names no error: not JSON, cut off by the caller's cap, not an object, or a
/// numeric code (Google's `{"error": {"code": 401, ...}}` repeats the status and says nothing
/// about the token). A truncated body fails to parse, and that is the safe reading, because
/// without the whole object there is no telling what it said.
pub(super) fn body_error(body: &[u8]) -> Option<String> {
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

//! Unit tests of the 401 classifier and the `WWW-Authenticate` parser: the header, bare and
//! foreign challenges, JSON bodies, and arbitrary input from a deterministic generator.

use http::{HeaderMap, HeaderValue};

use super::www_authenticate::is_tchar;
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
    classify_unauthorized(&challenges(&[line]), b"", "bearer")
}

/// Classifies a response with no `WWW-Authenticate` header and the given body.
fn classify_body(body: &str) -> Rejection {
    classify_unauthorized(&HeaderMap::new(), body.as_bytes(), "bearer")
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
        vec![challenge("basic", &[("realm", "a")]), challenge("bearer", &[("realm", "b"), ("error", "invalid_token")])]
    );
}

#[test]
fn several_challenges_on_one_line() {
    let line = r#"Basic realm="a", Bearer realm="b", error="invalid_token""#;
    assert_eq!(
        parse_challenges(line),
        vec![challenge("basic", &[("realm", "a")]), challenge("bearer", &[("realm", "b"), ("error", "invalid_token")])]
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
        vec![challenge("negotiate", &[]), challenge("ntlm", &[]), challenge("bearer", &[])]
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
    assert_eq!(classify_unauthorized(&headers, b"", "bearer"), Rejection::InvalidToken);
}

#[test]
fn multiple_header_lines_with_only_other_schemes() {
    let headers = challenges(&[r#"Basic realm="a""#, "Negotiate"]);
    assert_eq!(classify_unauthorized(&headers, b"", "bearer"), Rejection::OtherScheme);
}

#[test]
fn disagreeing_bearer_challenges_invalid_token_wins() {
    assert_eq!(
        classify_header(r#"Bearer error="insufficient_scope", Bearer error="invalid_token""#),
        Rejection::InvalidToken
    );
    let headers = challenges(&[r#"Bearer error="invalid_request""#, r#"Bearer error="invalid_token""#]);
    assert_eq!(classify_unauthorized(&headers, b"", "bearer"), Rejection::InvalidToken);
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
        vec![challenge("negotiate", &[]), challenge("bearer", &[("error", "invalid_token")])]
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
    assert_eq!(classify_header(r#"Bearer error="invalid_request", error="invalid_token""#), Rejection::InvalidToken);
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
    assert_eq!(classify_unauthorized(&headers, b"", "bearer"), Rejection::NoDetail);
    // The other lines are still read.
    headers.append(WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#));
    assert_eq!(classify_unauthorized(&headers, b"", "bearer"), Rejection::InvalidToken);
}

#[test]
fn utf8_header_is_read() {
    let mut headers = HeaderMap::new();
    headers.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_bytes("Bearer realm=\"café\", error=\"invalid_token\"".as_bytes())
            .expect("obs-text is allowed in a header value"),
    );
    assert_eq!(classify_unauthorized(&headers, b"", "bearer"), Rejection::InvalidToken);
    assert_eq!(parse_challenges("Bearer realm=\"café \\é\""), vec![challenge("bearer", &[("realm", "café é")])]);
}

// --- No detail and other schemes ---

#[test]
fn no_header_and_no_body_is_no_detail() {
    assert_eq!(classify_unauthorized(&HeaderMap::new(), b"", "bearer"), Rejection::NoDetail);
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
fn for_a_dpop_token_the_dpop_challenge_decides_as_bearer_does_for_a_bearer_token() {
    let dpop = |line: &str| classify_unauthorized(&challenges(&[line]), b"", "dpop");
    assert_eq!(dpop(r#"DPoP error="invalid_token", algs="ES256 PS256""#), Rejection::InvalidToken);
    assert_eq!(dpop(r#"DPoP error="use_dpop_nonce""#), Rejection::OtherError("use_dpop_nonce".into()));
    assert_eq!(dpop(r#"DPoP error="invalid_dpop_proof""#), Rejection::OtherError("invalid_dpop_proof".into()));
    assert_eq!(dpop(r#"DPoP algs="ES256""#), Rejection::NoDetail);
    assert_eq!(dpop(r#"Bearer error="invalid_token""#), Rejection::OtherScheme, "a bearer token would not do");
    assert_eq!(dpop(r#"Bearer realm="x", DPoP error="invalid_token""#), Rejection::InvalidToken);
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
        classify_body(r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#),
        Rejection::InvalidToken
    );
}

#[test]
fn kroger_body_prefixes_never_misread() {
    let body = r#"{"error_description":"The access token is invalid or has expired","error":"invalid_token"}"#;
    for end in 0..body.len() {
        let prefix = body.as_bytes().get(..end).unwrap_or_default();
        assert_eq!(
            classify_unauthorized(&HeaderMap::new(), prefix, "bearer"),
            Rejection::NoDetail,
            "prefix of {end} bytes"
        );
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
        classify_unauthorized(&HeaderMap::new(), b"\xEF\xBB\xBF{\"error\":\"invalid_token\"}", "bearer"),
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
    assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_token"}"#, "bearer"), Rejection::InvalidToken);
    assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_grant"}"#, "bearer"), other("invalid_grant"));
}

#[test]
fn header_error_outranks_body() {
    let headers = challenges(&[r#"Bearer error="insufficient_scope""#]);
    assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_token"}"#, "bearer"), other("insufficient_scope"));
    let headers = challenges(&[r#"Bearer error="invalid_token""#]);
    assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_request"}"#, "bearer"), Rejection::InvalidToken);
}

#[test]
fn other_scheme_with_json_error_body_lets_body_decide() {
    let headers = challenges(&[r#"Basic realm="x""#]);
    assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_token"}"#, "bearer"), Rejection::InvalidToken);
    assert_eq!(classify_unauthorized(&headers, br#"{"error":"invalid_client"}"#, "bearer"), other("invalid_client"));
    assert_eq!(classify_unauthorized(&headers, b"<html>401</html>", "bearer"), Rejection::OtherScheme);
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
        let answer = match classify_unauthorized(&headers, &body, "bearer") {
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

#[test]
fn the_classify_limits_are_what_their_docs_say() {
    assert_eq!(CLASSIFY_BODY_LIMIT, 4_096, "4 KiB");
    assert_eq!(CLASSIFY_BODY_TIMEOUT, Duration::from_secs(2));
}

#[test]
fn refresh_on_decides_which_401s_refresh() {
    assert!(RefreshOn::InvalidToken.accepts(&Rejection::InvalidToken));
    assert!(!RefreshOn::InvalidToken.accepts(&Rejection::NoDetail));
    assert!(RefreshOn::InvalidTokenOrNoDetail.accepts(&Rejection::NoDetail));
    assert!(!RefreshOn::InvalidTokenOrNoDetail.accepts(&Rejection::OtherError("insufficient_scope".into())));
    assert!(!RefreshOn::InvalidTokenOrNoDetail.accepts(&Rejection::OtherScheme));
}

#[test]
fn grpc_unauthenticated_is_status_16_in_the_headers() {
    let headers = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static(value));
        headers
    };
    assert!(grpc_unauthenticated(StatusCode::OK, &headers("16")));
    assert!(grpc_unauthenticated(StatusCode::OK, &headers(" 16 ")));
    for other in ["0", "7", "160", "1", ""] {
        assert!(!grpc_unauthenticated(StatusCode::OK, &headers(other)), "{other}");
    }
    assert!(!grpc_unauthenticated(StatusCode::OK, &HeaderMap::new()));
}

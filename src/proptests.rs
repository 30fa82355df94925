//! Property tests for the parsers that read what servers send: the `WWW-Authenticate` parser and
//! the 401 classifier, the token and error response parsers, `Retry-After`, and the body excerpts
//! that errors show.
//!
//! Each property runs proptest's default number of cases (256; set `PROPTEST_CASES` for a longer
//! run). The invariants are the ones the fuzz targets in `fuzz/` check, through the same functions
//! in [`crate::fuzzing`]; `fuzz_seeds_replay_clean` replays the committed seeds and findings.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::challenge::{Challenge, Rejection, classify_unauthorized, parse_challenges};
use crate::error::RefreshError;
use crate::fuzzing::{self, check_excerpt, check_tokens, now, response};

// --- Strategies ---

/// Token characters (RFC 9110 §5.6.2).
const TCHARS: &str = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A token: a scheme, a parameter name or an unquoted value.
fn token(max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = TCHARS.chars().collect();
    prop::collection::vec(prop::sample::select(chars), 1..=max).prop_map(|c| c.into_iter().collect())
}

/// `word` in a random mix of upper and lower case.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars().zip(upper).map(|(c, up)| if up { c.to_ascii_uppercase() } else { c }).collect()
    })
}

/// Optional whitespace: nothing, or a few spaces and tabs.
fn ows() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', '\t']), 0..3).prop_map(|c| c.into_iter().collect())
}

/// Required whitespace.
fn rws() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', '\t']), 1..3).prop_map(|c| c.into_iter().collect())
}

/// A list separator with odd spacing, sometimes with empty list elements.
fn comma() -> impl Strategy<Value = String> {
    (ows(), prop::sample::select(vec![",", ",", ",", ", ,", ",,"]), ows()).prop_map(|(a, c, b)| format!("{a}{c}{b}"))
}

/// A parameter value as sent, and as it must read back.
#[derive(Debug, Clone)]
enum ParamValue {
    /// An unquoted token.
    Token(String),
    /// A quoted string; the text is unescaped. When sent, `"` and `\` are escaped, and so, at
    /// random, are some other characters (`\a` means `a`).
    Quoted { text: String, escape_more: Vec<bool> },
}

impl ParamValue {
    fn text(&self) -> &str {
        match self {
            ParamValue::Token(text) | ParamValue::Quoted { text, .. } => text,
        }
    }

    fn render(&self) -> String {
        match self {
            ParamValue::Token(text) => text.clone(),
            ParamValue::Quoted { text, escape_more } => {
                let mut out = String::from("\"");
                for (i, c) in text.chars().enumerate() {
                    if c == '"' || c == '\\' || escape_more.get(i).copied().unwrap_or_default() {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
                out
            }
        }
    }
}

fn param_value() -> impl Strategy<Value = ParamValue> {
    let quoted = ("[ -~éü€\t]{0,24}", prop::collection::vec(prop::bool::weighted(0.1), 24))
        .prop_map(|(text, escape_more)| ParamValue::Quoted { text, escape_more });
    let known = prop::sample::select(vec!["invalid_token", "INVALID_TOKEN", "insufficient_scope", "invalid_request"])
        .prop_map(|code| ParamValue::Token(code.to_owned()));
    prop_oneof![3 => token(16).prop_map(ParamValue::Token), 3 => quoted, 2 => known]
}

fn param_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any_case("error"),
        1 => any_case("realm"),
        1 => any_case("scope"),
        1 => any_case("error_description"),
        2 => token(10),
    ]
}

fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any_case("bearer"),
        1 => any_case("basic"),
        1 => any_case("dpop"),
        1 => any_case("negotiate"),
        2 => token(12),
    ]
}

/// A well-formed challenge, and how it is spaced when sent.
#[derive(Debug, Clone)]
struct GenChallenge {
    scheme: String,
    params: Vec<(String, ParamValue)>,
    /// Between the scheme and the first parameter.
    gap: String,
    /// Around each `=`, and after each parameter: (before, after, separator).
    spacing: Vec<(String, String, String)>,
}

impl GenChallenge {
    fn render(&self) -> String {
        let mut text = self.scheme.clone();
        for (i, ((name, value), (before, after, separator))) in self.params.iter().zip(&self.spacing).enumerate() {
            text.push_str(if i == 0 { &self.gap } else { separator });
            text.push_str(&format!("{name}{before}={after}{}", value.render()));
        }
        text
    }

    /// What the parser must answer for it.
    fn expected(&self) -> Challenge {
        Challenge {
            scheme: self.scheme.to_ascii_lowercase(),
            params: self.params.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.text().to_owned())).collect(),
        }
    }
}

fn gen_challenge() -> impl Strategy<Value = GenChallenge> {
    (scheme(), prop::collection::vec((param_name(), param_value()), 0..5), rws())
        .prop_flat_map(|(scheme, params, gap)| {
            let n = params.len();
            (Just(scheme), Just(params), Just(gap), prop::collection::vec((ows(), ows(), comma()), n))
        })
        .prop_map(|(scheme, params, gap, spacing)| GenChallenge { scheme, params, gap, spacing })
}

/// Several challenges on one line, with odd separators and optional leading and trailing commas.
fn challenge_line() -> impl Strategy<Value = (Vec<GenChallenge>, String)> {
    (
        prop::collection::vec((gen_challenge(), comma()), 1..4),
        ows(),
        prop::option::of(comma()),
        prop::option::of(comma()),
    )
        .prop_map(|(challenges, tail, lead, trail)| {
            let mut text = lead.unwrap_or_default();
            for (i, (challenge, separator)) in challenges.iter().enumerate() {
                if i > 0 {
                    text.push_str(separator);
                }
                text.push_str(&challenge.render());
            }
            text.push_str(&tail);
            text.push_str(&trail.unwrap_or_default());
            (challenges.into_iter().map(|(c, _)| c).collect(), text)
        })
}

/// Pieces of the header and JSON grammars in no order: reaches the parser's odd corners far more
/// often than random bytes do.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    const PIECES: &[&[u8]] = &[
        b"Bearer",
        b"bearer",
        b"Basic",
        b"Negotiate",
        b"DPoP",
        b" ",
        b"  ",
        b"\t",
        b",",
        b", ",
        b"=",
        b"==",
        b"\"",
        b"\\",
        b"\\\"",
        b"error",
        b"realm",
        b"invalid_token",
        b"insufficient_scope",
        b"abc123",
        b"+/",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b"\"error\"",
        b"\"code\"",
        b"null",
        b"1",
        b"\xC3\xA9",
        b"\xE9",
        b"\xEF\xBB\xBF",
        b"\0",
        b"\n",
        b"\r\n",
        b"\x7F",
    ];
    prop::collection::vec(
        prop_oneof![9 => prop::sample::select(PIECES).prop_map(<[u8]>::to_vec), 1 => any::<u8>().prop_map(|b| vec![b])],
        0..40,
    )
    .prop_map(|pieces| pieces.concat())
}

/// A 401 body: nothing, a JSON error in one of its shapes (sometimes cut short), or HTML.
fn error_body() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    let code = prop_oneof![
        Just("invalid_token".to_owned()),
        Just(" Invalid_Token ".to_owned()),
        Just("insufficient_scope".to_owned()),
        Just("".to_owned()),
        Just("  ".to_owned()),
        token(12),
    ];
    prop_oneof![
        1 => Just((Vec::new(), None)),
        1 => Just((b"<html><h1>401 Unauthorized</h1></html>".to_vec(), None)),
        3 => code.clone().prop_map(|c| (json!({"error": c, "error_description": "x"}).to_string().into_bytes(), Some(c))),
        1 => code.clone().prop_map(|c| (json!({"error": {"code": c}}).to_string().into_bytes(), Some(c))),
        1 => code.prop_map(|c| {
            let body = json!({"error": c}).to_string();
            (body.as_bytes()[..body.len() - 1].to_vec(), None)
        }),
    ]
}

/// The rejection a set of well-formed challenges and a body must give (contract point 16 and the
/// classifier's documentation), computed from what was generated rather than from a parse.
fn expected_rejection(lines: &[Vec<GenChallenge>], body_code: Option<&str>) -> Rejection {
    let challenges: Vec<&GenChallenge> = lines.iter().flatten().collect();
    let bearer_codes: Vec<String> = challenges
        .iter()
        .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .flat_map(|c| c.params.iter())
        .filter(|(name, _)| name.eq_ignore_ascii_case("error"))
        .map(|(_, value)| value.text().trim().to_owned())
        .filter(|code| !code.is_empty())
        .collect();
    if bearer_codes.iter().any(|c| c.eq_ignore_ascii_case("invalid_token")) {
        return Rejection::InvalidToken;
    }
    if let Some(code) = bearer_codes.first() {
        return Rejection::OtherError(code.clone());
    }
    match body_code.map(str::trim) {
        Some(code) if code.eq_ignore_ascii_case("invalid_token") => Rejection::InvalidToken,
        Some(code) if !code.is_empty() => Rejection::OtherError(code.to_owned()),
        _ if !challenges.is_empty() && !challenges.iter().any(|c| c.scheme.eq_ignore_ascii_case("bearer")) => {
            Rejection::OtherScheme
        }
        _ => Rejection::NoDetail,
    }
}

/// A b64token (RFC 6750 §2.1): what access and refresh tokens are made of.
fn b64token(min: usize, max: usize) -> impl Strategy<Value = String> {
    let body = proptest::string::string_regex(&format!("[A-Za-z0-9._~+/-]{{{min},{max}}}")).expect("a regex");
    (body, "={0,2}").prop_map(|(body, padding)| body + &padding)
}

/// `expires_in` as providers send it.
#[derive(Debug, Clone)]
enum ExpiresIn {
    Absent,
    Null,
    Zero,
    Seconds(u64),
    Fractional(f64),
    Text(u64, &'static str),
}

impl ExpiresIn {
    fn json(&self) -> Option<Value> {
        match self {
            ExpiresIn::Absent => None,
            ExpiresIn::Null => Some(Value::Null),
            ExpiresIn::Zero => Some(json!(0)),
            ExpiresIn::Seconds(s) => Some(json!(s)),
            ExpiresIn::Fractional(s) => Some(json!(s)),
            ExpiresIn::Text(s, pad) => Some(json!(format!("{pad}{s}{pad}"))),
        }
    }

    fn lifetime(&self) -> Option<Duration> {
        match self {
            ExpiresIn::Absent | ExpiresIn::Null | ExpiresIn::Zero => None,
            ExpiresIn::Seconds(s) | ExpiresIn::Text(s, _) => Some(Duration::from_secs(*s)),
            ExpiresIn::Fractional(s) => Some(Duration::from_secs_f64(*s)),
        }
    }
}

fn expires_in() -> impl Strategy<Value = ExpiresIn> {
    let max = response::MAX_EXPIRES_IN.as_secs();
    prop_oneof![
        1 => Just(ExpiresIn::Absent),
        1 => Just(ExpiresIn::Null),
        1 => Just(ExpiresIn::Zero),
        4 => (1..=max).prop_map(ExpiresIn::Seconds),
        2 => (0.001..max as f64).prop_map(ExpiresIn::Fractional),
        2 => ((1..=max), prop::sample::select(vec!["", " ", "\t"])).prop_map(|(s, pad)| ExpiresIn::Text(s, pad)),
    ]
}

/// A JSON value that is not an object or array: extra fields' values.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z ]{0,8}".prop_map(Value::from),
    ]
}

/// Any JSON value, leaning on the field names the parsers look for.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "access_token",
            "refresh_token",
            "expires_in",
            "token_type",
            "scope",
            "error",
            "error_description",
            "code",
            "status",
            "body",
            "id_token",
            "client_secret",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    let scalar = prop_oneof![
        leaf(),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        ".{0,16}".prop_map(Value::from),
        Just(json!(-5)),
        Just(json!("3600")),
        Just(json!(1e12)),
    ];
    scalar.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid token response and what it must parse to.
#[derive(Debug, Clone)]
struct GenTokens {
    access: String,
    refresh: Option<String>,
    expires_in: ExpiresIn,
    token_type: Option<String>,
    scope: Option<String>,
    extra: BTreeMap<String, Value>,
}

impl GenTokens {
    /// The fields, in a random order.
    fn fields(&self, order: &[usize]) -> Vec<(String, Value)> {
        let mut fields = vec![("access_token".to_owned(), json!(self.access))];
        if let Some(refresh) = &self.refresh {
            fields.push(("refresh_token".to_owned(), json!(refresh)));
        }
        if let Some(expires_in) = self.expires_in.json() {
            fields.push(("expires_in".to_owned(), expires_in));
        }
        if let Some(kind) = &self.token_type {
            fields.push(("token_type".to_owned(), json!(kind)));
        }
        if let Some(scope) = &self.scope {
            fields.push(("scope".to_owned(), json!(scope)));
        }
        fields.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut ordered: Vec<(usize, (String, Value))> =
            fields.into_iter().enumerate().map(|(i, f)| (order.get(i).copied().unwrap_or(i), f)).collect();
        ordered.sort_by_key(|(rank, _)| *rank);
        ordered.into_iter().map(|(_, f)| f).collect()
    }
}

/// Serialises fields in the given order (a `serde_json` object would sort them).
fn ordered_json(fields: &[(String, Value)], pretty: bool) -> String {
    let (open, sep, colon, close) = if pretty { ("{\n  ", ",\n  ", ": ", "\n}") } else { ("{", ",", ":", "}") };
    let members: Vec<String> = fields.iter().map(|(k, v)| format!("{}{colon}{v}", Value::from(k.as_str()))).collect();
    format!("{open}{}{close}", members.join(sep))
}

fn gen_tokens() -> impl Strategy<Value = GenTokens> {
    let extra_key = "x_[a-z]{1,8}";
    (
        b64token(1, 48),
        prop::option::of(b64token(1, 48)),
        expires_in(),
        prop::option::of(prop::sample::select(vec!["Bearer", "bearer", "N_A"]).prop_map(str::to_owned)),
        prop::option::of("[a-z:.]{1,10}( [a-z:.]{1,10}){0,3}"),
        prop::collection::btree_map(extra_key, leaf(), 0..4),
    )
        .prop_map(|(access, refresh, expires_in, token_type, scope, extra)| GenTokens {
            access,
            refresh,
            expires_in,
            token_type,
            scope,
            extra,
        })
}

/// Secrets long enough that no other part of a generated body can contain a piece of them.
fn secret() -> impl Strategy<Value = String> {
    b64token(16, 40)
}

/// How a body that holds secret fields is written.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// Compact JSON.
    Json,
    /// JSON over several lines, two-space indent.
    Pretty,
    /// JSON with `/` escaped as `\/`, as PHP's `json_encode` writes it.
    EscapedSlashes,
    /// Valid JSON cut short after the secrets: not JSON any more.
    Truncated,
    /// PHP-style JSON cut short.
    EscapedSlashesTruncated,
    /// JSON with a UTF-8 byte order mark in front (serde_json refuses it).
    ByteOrderMark,
    /// `application/x-www-form-urlencoded`, as GitHub answers unless asked for JSON.
    Form,
    /// Form fields without percent-encoding, as a page that echoes them might show them.
    RawForm,
}

const FORMATS: &[Format] = &[
    Format::Json,
    Format::Pretty,
    Format::EscapedSlashes,
    Format::Truncated,
    Format::EscapedSlashesTruncated,
    Format::ByteOrderMark,
    Format::Form,
    Format::RawForm,
];

/// Writes `fields` as `format`.
fn write_body(fields: &[(String, Value)], format: Format) -> Vec<u8> {
    let json = ordered_json(fields, false);
    let php = json.replace('/', "\\/");
    let cut = |text: &str| {
        // Past the last secret's closing quote: a body that breaks off later, in another field.
        let end = text.rfind("[END]").unwrap_or(text.len());
        text.as_bytes()[..end].to_vec()
    };
    let form = |encode: bool| {
        let pairs = fields.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)));
        if encode {
            form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
        } else {
            pairs.map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&").into_bytes()
        }
    };
    match format {
        Format::Json => json.into_bytes(),
        Format::Pretty => ordered_json(fields, true).into_bytes(),
        Format::EscapedSlashes => php.into_bytes(),
        Format::Truncated => cut(&json),
        Format::EscapedSlashesTruncated => cut(&php),
        Format::ByteOrderMark => [b"\xEF\xBB\xBF".as_slice(), json.as_bytes()].concat(),
        Format::Form => form(true),
        Format::RawForm => form(false),
    }
}

/// Whether any ten characters in a row of `secret` (or all of it, if shorter) appear in `shown`.
fn shows_part_of(shown: &str, secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    let window = chars.len().min(10);
    chars.windows(window).map(|w| w.iter().collect::<String>()).find(|piece| shown.contains(piece.as_str()))
}

/// A date `Retry-After` can carry, `seconds` after [`now`].
fn http_date(seconds: u64) -> String {
    httpdate::fmt_http_date(now() + Duration::from_secs(seconds))
}

// --- Properties ---

/// The properties' seed: fixed, so that CI is repeatable. `PROPTEST_RNG_SEED` picks another and
/// `PROPTEST_CASES` runs longer (`PROPTEST_CASES=20000 cargo test --lib proptests`).
const SEED: u64 = 0x7e57_ab1e_5eed_0007;

proptest! {
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(SEED),
        ..ProptestConfig::default()
    })]

    #[test]
    fn parse_challenges_never_panics_on_arbitrary_text(text in ".{0,80}") {
        fuzzing::check_parse(&text);
    }

    #[test]
    fn parse_challenges_never_panics_on_grammar_soup(bytes in soup()) {
        fuzzing::check_parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn classify_never_panics_and_agrees_with_the_parse_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
        fuzzing::check_www_authenticate(&bytes);
    }

    #[test]
    fn classify_never_panics_and_agrees_with_the_parse_on_grammar_soup(
        lines in prop::collection::vec(soup(), 0..3),
        body in soup(),
    ) {
        let mut data = lines.join(&b'\n').into_iter().filter(|&b| b != 0).collect::<Vec<u8>>();
        data.push(0);
        data.extend(body);
        fuzzing::check_www_authenticate(&data);
    }

    #[test]
    fn well_formed_challenges_parse_back_to_their_schemes_and_params((challenges, line) in challenge_line()) {
        let expected: Vec<Challenge> = challenges.iter().map(GenChallenge::expected).collect();
        prop_assert_eq!(parse_challenges(&line), expected, "line {:?}", line);
    }

    #[test]
    fn classify_reads_well_formed_challenges_and_bodies_as_specified(
        lines in prop::collection::vec(challenge_line(), 0..3),
        (body, body_code) in error_body(),
    ) {
        let mut headers = HeaderMap::new();
        for (_, line) in &lines {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(line).expect("generated lines are header values"));
        }
        let challenges: Vec<Vec<GenChallenge>> = lines.into_iter().map(|(c, _)| c).collect();
        prop_assert_eq!(classify_unauthorized(&headers, &body, "bearer"), expected_rejection(&challenges, body_code.as_deref()));
    }

    #[test]
    fn token_parsers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::check_token_response(&bytes);
    }

    #[test]
    fn token_parsers_never_panic_on_arbitrary_json(status in any::<u8>(), value in any_json()) {
        let mut data = vec![status];
        data.extend(value.to_string().into_bytes());
        fuzzing::check_token_response(&data);
    }

    #[test]
    fn valid_token_responses_parse_back_to_the_same_values(
        tokens in gen_tokens(),
        order in Just((0..16).collect::<Vec<usize>>()).prop_shuffle(),
        pretty in any::<bool>(),
    ) {
        let body = ordered_json(&tokens.fields(&order), pretty);
        let parsed = response::parse_success(StatusCode::OK, body.as_bytes(), None, now());
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(err) => return Err(TestCaseError::fail(format!("{err:?} for {body}"))),
        };
        check_tokens(&parsed);
        prop_assert_eq!(parsed.access_token().secret(), tokens.access.as_str());
        prop_assert_eq!(parsed.refresh_token().map(|r| r.secret().to_owned()), tokens.refresh.clone());
        // serde_json reads floats fast rather than exactly: the last bits of a fractional
        // `expires_in` may differ, by nanoseconds.
        let off = match (parsed.expires_at(), tokens.expires_in.lifetime().map(|l| now() + l)) {
            (Some(got), Some(want)) => Some(got.duration_since(want).unwrap_or_else(|e| e.duration())),
            (None, None) => Some(Duration::ZERO),
            _ => None,
        };
        prop_assert!(off.is_some_and(|off| off < Duration::from_micros(1)), "{:?} for {}", parsed.expires_at(), body);
        prop_assert_eq!(parsed.token_type(), tokens.token_type.as_deref());
        prop_assert_eq!(parsed.scope(), tokens.scope.as_deref());
        let extra: Map<String, Value> = tokens.extra.clone().into_iter().collect();
        prop_assert_eq!(parsed.extra(), &extra);
    }

    #[test]
    fn oauth_error_responses_parse_back_with_their_retry_after(
        status in 400u16..600,
        code in "[a-z_]{1,20}",
        description in prop::option::of(".{0,40}"),
        uri in prop::option::of("https://[a-z]{1,10}\\.example/[a-z]{0,10}"),
        extra in prop::collection::btree_map("x_[a-z]{1,6}", leaf(), 0..3),
        retry in prop::option::of((0u64..100_000, any::<bool>())),
    ) {
        let mut body: Map<String, Value> = extra.into_iter().collect();
        body.insert("error".into(), json!(code));
        if let Some(description) = &description {
            body.insert("error_description".into(), json!(description));
        }
        if let Some(uri) = &uri {
            body.insert("error_uri".into(), json!(uri));
        }
        let mut headers = HeaderMap::new();
        if let Some((seconds, as_date)) = retry {
            let value = if as_date { http_date(seconds) } else { seconds.to_string() };
            headers.insert(RETRY_AFTER, HeaderValue::from_str(&value).expect("a header value"));
        }
        let status = StatusCode::from_u16(status).expect("a status");
        let body = Value::Object(body).to_string();
        match response::parse_failure(status, &headers, body.as_bytes(), now()) {
            RefreshError::Protocol { status: got, error: Some(error), retry_after, body: shown } => {
                prop_assert_eq!(got, status);
                prop_assert_eq!(&error.error, &code);
                prop_assert_eq!(&error.error_description, &description);
                prop_assert_eq!(&error.error_uri, &uri);
                prop_assert_eq!(retry_after, retry.map(|(seconds, _)| Duration::from_secs(seconds)));
                prop_assert!(shown.is_empty());
            }
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_nothing_else(
        seconds in any::<u64>(),
        ago in 1u64..1_000_000_000,
        junk in "[a-zA-Z ,:-]{0,30}",
    ) {
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).expect("a header value"));
            response::retry_after(&headers, now())
        };
        prop_assert_eq!(read(&seconds.to_string()), Some(Duration::from_secs(seconds)));
        prop_assert_eq!(read(&format!(" {seconds}\t")), Some(Duration::from_secs(seconds)));
        let ahead = seconds % 10_000_000;
        prop_assert_eq!(read(&http_date(ahead)), Some(Duration::from_secs(ahead)));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(ago));
        prop_assert_eq!(read(&past), Some(Duration::ZERO), "a date in the past means now");
        if httpdate::parse_http_date(junk.trim()).is_err() {
            prop_assert_eq!(read(&junk), None);
        }
    }

    #[test]
    fn excerpts_of_arbitrary_bytes_stay_under_the_cap(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        check_excerpt(&bytes, &response::excerpt(&bytes));
    }

    #[test]
    fn excerpts_of_long_text_stay_under_the_cap(text in "[a-zé€ \"{},:=&]{400,1200}") {
        check_excerpt(text.as_bytes(), &response::excerpt(text.as_bytes()));
    }

    #[test]
    fn excerpts_never_show_a_secret_fields_value(
        access in secret(),
        refresh in secret(),
        id_token in secret(),
        client_secret in secret(),
        extra in prop::collection::btree_map("x_[a-z]{1,6}", leaf(), 0..4),
        order in Just((0..12).collect::<Vec<usize>>()).prop_shuffle(),
        format in prop::sample::select(FORMATS),
        padding in 0usize..3000,
    ) {
        let mut fields: Vec<(String, Value)> = vec![
            ("access_token".into(), json!(access)),
            ("refresh_token".into(), json!(refresh)),
            ("id_token".into(), json!(id_token)),
            ("client_secret".into(), json!(client_secret)),
            ("expires_in".into(), json!(-1)),
        ];
        fields.extend(extra.into_iter());
        let mut ordered: Vec<(usize, (String, Value))> =
            fields.into_iter().enumerate().map(|(i, f)| (order.get(i).copied().unwrap_or(i), f)).collect();
        ordered.sort_by_key(|(rank, _)| *rank);
        let mut fields: Vec<(String, Value)> = ordered.into_iter().map(|(_, f)| f).collect();
        // A field after every secret, where a truncated body breaks off, and padding that may push
        // the secrets past the excerpt's cap or the text excerpt's read limit.
        fields.push(("x_padding".into(), json!(format!("[END]{}", "p".repeat(padding)))));
        let body = write_body(&fields, format);

        let shown = response::excerpt(&body);
        check_excerpt(&body, &shown);
        for secret in [&access, &refresh, &id_token, &client_secret] {
            let leaked = shows_part_of(&shown, secret);
            prop_assert!(leaked.is_none(), "{:?} of {:?} shown as {:?}, from {:?}", leaked, secret, shown, format);
        }
        // The same excerpt is what an unusable answer's error carries.
        if let Err(RefreshError::InvalidResponse { body: in_error, .. }) =
            response::parse_success(StatusCode::OK, &body, None, now())
        {
            prop_assert_eq!(in_error, shown);
        }
    }
}

// --- Examples the properties found, and the committed fuzz seeds ---

/// Every file under `fuzz/seeds/<target>/` (the fuzzer's starting corpus) and
/// `fuzz/regressions/<target>/` (inputs it once failed on) goes through the fuzz target's check
/// again, so a finding stays fixed without a nightly toolchain.
///
/// The published package has no `fuzz/`: cargo leaves out a folder that holds a crate of its own.
/// Only there (cargo writes `Cargo.toml.orig` into every package it makes) is nothing to replay;
/// in the repository a missing seed folder fails the test. The crate's folder is the one cargo
/// names when it runs the test, not the one it was compiled in: cargo reuses a test binary built
/// from an identical copy of the package unpacked elsewhere.
#[test]
fn fuzz_seeds_replay_clean() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    );
    let fuzz = root.join("fuzz");
    if !fuzz.exists() && root.join("Cargo.toml.orig").exists() {
        return;
    }
    let targets = [
        ("www_authenticate", fuzzing::check_www_authenticate as fn(&[u8])),
        ("token_response", fuzzing::check_token_response),
    ];
    let mut failed = Vec::new();
    for (target, check) in targets {
        let mut replayed = 0;
        for kind in ["seeds", "regressions"] {
            let dir = fuzz.join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if std::panic::catch_unwind(|| check(&data)).is_err() {
                    failed.push(format!("{kind}/{target}/{}", path.file_name().unwrap_or_default().to_string_lossy()));
                }
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no seeds for {target} in {}", fuzz.display());
    }
    assert!(failed.is_empty(), "inputs that fail their check (the panics are above): {failed:?}");
}

/// PHP's `json_encode` writes `/` as `\/`. Cut short (or otherwise not JSON), such an answer is
/// redacted as text, and the part of a secret after its first `\/` must not show either.
#[test]
fn excerpt_of_php_escaped_json_cut_short_hides_the_whole_secret() {
    let body = br#"{"access_token":"abcd\/efghijklmnop","refresh_token":"qrst\/uvwxyz0123456","expi"#;
    let shown = response::excerpt(body);
    for tail in ["efghijklmnop", "uvwxyz0123456"] {
        assert!(!shown.contains(tail), "{tail} shown in {shown}");
    }
}

/// A secret on the line after its field's name (YAML, or JSON pretty-printed with the value on a
/// line of its own) is still a secret.
#[test]
fn excerpt_hides_a_secret_on_the_line_after_its_name() {
    for body in ["access_token:\n  SECRETVALUE0123\n", "{\"refresh_token\":\r\n\"SECRETVALUE4567\",\"expi"] {
        let shown = response::excerpt(body.as_bytes());
        assert!(!shown.contains("SECRETVALUE"), "{shown}");
    }
}

/// A gateway that wraps the provider's answer as a string (`{"statusCode":200,"body":"{\"access_token\":..."}`,
/// an API Gateway proxy integration set up wrongly) gives an answer without `access_token`,
/// whose excerpt must not show the tokens inside the string.
#[test]
fn excerpt_hides_secrets_in_json_nested_as_a_string() {
    let inner = json!({"access_token": "SECRETACCESS0123", "refresh_token": "SECRETREFRESH4567"}).to_string();
    let body = json!({"statusCode": 200, "body": inner}).to_string();
    match response::parse_success(StatusCode::OK, body.as_bytes(), None, now()) {
        Err(RefreshError::InvalidResponse { body: shown, .. }) => assert!(!shown.contains("SECRET"), "{shown}"),
        other => panic!("{other:?}"),
    }
}

/// An `expires_in` under a nanosecond rounds to a lifetime of zero. Zero means "no known expiry"
/// (a token expired on arrival would be refreshed before every request), and so must this.
#[test]
fn a_sub_nanosecond_expires_in_is_not_expired_on_arrival() {
    for expires_in in ["5e-182", "1e-10", "\"0.0000000001\""] {
        let body = format!(r#"{{"access_token":"a","expires_in":{expires_in}}}"#);
        let parsed = response::parse_success(StatusCode::OK, body.as_bytes(), None, now());
        match parsed {
            Ok(tokens) => check_tokens(&tokens),
            Err(err) => panic!("{expires_in}: {err:?}"),
        }
    }
}

/// Some servers put a UTF-8 byte order mark before JSON (the 401 classifier already allows for
/// it); a token response that does must still parse.
#[test]
fn a_token_response_with_a_byte_order_mark_parses() {
    let body = b"\xEF\xBB\xBF{\"access_token\":\"a\",\"expires_in\":3600}";
    let tokens = response::parse_success(StatusCode::OK, body, None, now()).expect("parses");
    assert_eq!(tokens.access_token().secret(), "a");
}

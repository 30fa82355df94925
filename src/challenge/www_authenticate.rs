//! The `WWW-Authenticate` header grammar: a value split into its challenges, each a scheme and
//! its parameters ([`parse_challenges`]).
//!
//! The challenge grammar (RFC 9110 §11.6.1, formerly RFC 7235 §4.1) is ambiguous, because one
//! comma separates both challenges and a challenge's parameters:
//! `Basic realm="a", Bearer realm="b", error="invalid_token"` is two challenges with one and two
//! parameters. Here, a list element begins a new challenge unless it has the `name=` form of a
//! parameter. This parser is small and lenient. It reads what real servers send
//! (odd spacing, empty list elements, unterminated quotes) instead of rejecting the whole
//! header, and it never panics on arbitrary input.

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
    pub(super) fn params_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
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
pub(super) fn is_tchar(b: u8) -> bool {
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

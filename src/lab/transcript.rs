//! Transcripts: SMTP (and POP3) sessions written down in the `C:`/`S:` notation of the RFCs' own
//! examples.
//!
//! Interface:
//! - `Transcript::parse(text)` / `Transcript::load(path)` read a transcript; `Display` prints it
//!   back, and `parse(print(t)) == t`.
//! - `Pattern::matches(actual)` checks a server reply line against an `S:` line with placeholders.
//! - `reply_code(line)`, `is_last_reply_line(line)` and `align(..)` are shared by replay and compare.
//! - `escape_line(bytes, at_line_end)` writes bytes in this notation (`recorder.rs` uses it).
//!
//! A transcript file never holds a raw control or invisible character (`visible::is_hidden`):
//! the parser refuses one, and the printer escapes every one, so whatever prints a transcript
//! line cannot send a terminal a control sequence.
//!
//! The format, one line each (blank lines are ignored):
//!
//! ```text
//! # title: Two recipients, one unknown       header lines: title, rfc, server (options), note
//! # port: submission                         which listener to replay against (see below)
//! # protocol: pop3                           the replies are POP3 (or IMAP) lines, not SMTP replies
//! # setup: deliver alice                     what must happen before the replay (see below)
//! S: 220 {host} ESMTP {*}                    a server reply line; placeholders {host} {id} {date}
//!                                            {n} (digits) {*} (anything)
//! C: MAIL FROM:<mary@client.example>         a client line; sent as the text plus CRLF
//! C: AUTH PLAIN {secret}                     a masked secret: recorded, never replayed
//! == TLS ==                                  everything below happened inside TLS
//! ```
//!
//! Escapes make invisible bytes visible: `{CR}` `{TAB}` `{NUL}` `{xHH}` (any other control byte,
//! or a byte that is not UTF-8), `{{` (a literal `{`); at the end of a `C:` line `{LF}` means the
//! line ended with a bare LF and `{EOF}` that the client closed without ending it.
//!
//! Replies: in an SMTP transcript the `S:` lines of one reply are told apart by the code rules
//! (`250-` goes on, `250 ` ends it). POP3 has no such rule (RFC 1939 §3: a multi-line response
//! ends with a line holding only a dot, one-line responses do not), so with `# protocol: pop3`
//! each run of `S:` lines after the client's lines is read as exactly that many lines; so is
//! `# protocol: imap` (RFC 9051 §2.2.2: untagged lines, then the tagged one).
//!
//! The headers `# server:`, `# port:` and `# setup:` tell a test how to prepare a fresh server;
//! `smtplab replay` ignores them (it is given a running server). `# port:` names a listener:
//! `smtp` (the default, `--listen`), `submission`, `smtps`, `pop3` or `imap`. `# setup: deliver USER`
//! (one line per message) delivers one short fixed message to `USER@localhost` over SMTP before
//! the replay, so that a POP3 or IMAP transcript finds mail in the maildrop. `smtplab compare`
//! compares SMTP sessions only, and sends a POP3 or IMAP one to `smtplab replay --codes-only`.
//!
//! Standards: RFC 5321 Appendix D, §2.3.8, §4.2, RFC 4954 §4, RFC 1939 §3, RFC 9051 §2.2.2

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use crate::visible;

/// The line that separates what was said in the clear from what was said inside TLS.
pub const TLS_MARKER: &str = "== TLS ==";

/// How a client line ended on the wire (RFC 5321 §2.3.8: CRLF is the only standard ending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `<CRLF>`, as the standard asks. Written with no marker.
    CrLf,
    /// A bare `<LF>` (netcat without `-C`). Written as `{LF}` at the end.
    Lf,
    /// No ending: the client closed the connection mid-line. Written as `{EOF}` at the end.
    None,
}

/// One `C:` line: the bytes the client sent, whether a secret was masked after them, the ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLine {
    pub bytes: Vec<u8>,
    /// The line went on with a secret (an AUTH argument or SASL response) written as `{secret}`.
    pub secret: bool,
    pub ending: LineEnding,
}

/// One piece of an `S:` line: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `{host}`: a hostname or address literal, such as `mx.teach.test` or `[192.0.2.1]`.
    Host,
    /// `{id}`: a queue or message id, one word without spaces.
    Id,
    /// `{date}`: an RFC 5322 date such as `Fri, 27 Nov 2026 05:06:52 +0000`.
    Date,
    /// `{n}`: a number, one or more ASCII digits (an octet count, a message number).
    Number,
    /// `{*}`: any text, possibly empty.
    Any,
}

/// An `S:` line: the text as written in the transcript, and its pieces ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    pieces: Vec<Piece>,
}

/// One line of the body of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Client(ClientLine),
    Server(Pattern),
    /// `== TLS ==`: the session switched to TLS here.
    Tls,
}

/// A line together with where it stood in its file (1-based; 0 for a line built in code).
#[derive(Debug, Clone)]
pub struct Entry {
    pub line_no: usize,
    pub line: Line,
}

/// Two entries are equal when they say the same thing; where they stood in a file does not count,
/// so that a transcript printed and parsed again equals the original.
impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.line == other.line
    }
}

/// The `#` lines at the top: what the transcript teaches and how the server must be started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// `# title: Two recipients, one unknown`
    pub title: Option<String>,
    /// `# rfc: RFC 5321 §3.3, §4.2.2`
    pub rfc: Option<String>,
    /// `# server: --domain teach.test --max-size 1000`, split on whitespace.
    pub server: Vec<String>,
    /// `# note: ...`, one entry per line.
    pub notes: Vec<String>,
    /// `# port: submission`: the listener to replay against; `None` is the `--listen` one.
    pub port: Option<String>,
    /// `# protocol: pop3`: how the server's lines are grouped into replies.
    pub protocol: Protocol,
    /// `# setup: deliver alice`, one entry per line: what a test does before the replay.
    pub setup: Vec<String>,
}

/// The protocol a transcript speaks, which decides how many lines make one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RFC 5321 §4.2: a reply ends with the line that has no `-` after its code.
    #[default]
    Smtp,
    /// RFC 1939 §3: no continuation marker; each run of `S:` lines is read as that many lines.
    Pop3,
    /// RFC 9051 §2.2.2: untagged lines, then the tagged one; read as POP3 is, line by line.
    Imap,
}

impl Protocol {
    /// The word used in `# protocol:`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Pop3 => "pop3",
            Protocol::Imap => "imap",
        }
    }

    fn from_name(name: &str) -> Result<Protocol, String> {
        match name.to_ascii_lowercase().as_str() {
            "smtp" => Ok(Protocol::Smtp),
            "pop3" => Ok(Protocol::Pop3),
            "imap" => Ok(Protocol::Imap),
            _ => Err(format!(
                "# protocol: {name:?} is not known (smtp, pop3 or imap)"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    pub header: Header,
    pub entries: Vec<Entry>,
}

/// A line the parser did not understand, with its line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line_no: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "line {}: {}", self.line_no, self.message)
    }
}

impl std::error::Error for ParseError {}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

impl Transcript {
    /// Reads a transcript. Blank lines and `#` lines other than the known headers are skipped.
    pub fn parse(text: &str) -> Result<Transcript, ParseError> {
        let mut transcript = Transcript::default();
        // Some editors start a file with a byte order mark; it is not part of the first line.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            // Editors strip trailing blanks, so they carry no meaning; a real one is `{x20}`.
            let raw = raw.trim_end();
            let error = |message: String| ParseError { line_no, message };
            if let Some(hidden) = raw
                .chars()
                .find(|&c| visible::is_hidden(c) && c != '\u{feff}')
            {
                let written = visible::escape(hidden.to_string().as_bytes());
                return Err(error(format!(
                    "a raw control or invisible character (U+{:04X}); write it as {written}",
                    u32::from(hidden)
                )));
            }
            if raw.is_empty() {
                continue;
            } else if let Some(comment) = raw.strip_prefix('#') {
                transcript.header.read(comment).map_err(error)?;
            } else if raw == TLS_MARKER {
                transcript.push(line_no, Line::Tls);
            } else if let Some(rest) = raw.strip_prefix("C:") {
                let client = ClientLine::parse(after_space(rest)).map_err(error)?;
                transcript.push(line_no, Line::Client(client));
            } else if let Some(rest) = raw.strip_prefix("S:") {
                let pattern = Pattern::parse(after_space(rest)).map_err(error)?;
                transcript.push(line_no, Line::Server(pattern));
            } else {
                return Err(error(format!(
                    "expected `C:`, `S:`, `#` or `{TLS_MARKER}`, found {raw:?}"
                )));
            }
        }
        Ok(transcript)
    }

    /// Reads a transcript file; a parse error becomes an `InvalidData` error naming file and line.
    pub fn load(path: &Path) -> io::Result<Transcript> {
        let text = fs::read_to_string(path)?;
        Transcript::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    fn push(&mut self, line_no: usize, line: Line) {
        self.entries.push(Entry { line_no, line });
    }
}

/// `C: text` has one space after the colon; `C:` alone is an empty line.
fn after_space(rest: &str) -> &str {
    rest.strip_prefix(' ').unwrap_or(rest)
}

impl Header {
    /// Takes in one `#` line (without the `#`); lines that are not `key: value` are comments.
    /// Only a value that cannot be right (an unknown protocol) is an error.
    fn read(&mut self, comment: &str) -> Result<(), String> {
        let Some((key, value)) = comment.trim().split_once(':') else {
            return Ok(());
        };
        let value = value.trim().to_string();
        match key.trim() {
            "title" => self.title = Some(value),
            "rfc" => self.rfc = Some(value),
            "server" => self.server = value.split_whitespace().map(String::from).collect(),
            "note" => self.notes.push(value),
            "port" => self.port = Some(value),
            "protocol" => self.protocol = Protocol::from_name(&value)?,
            "setup" => self.setup.push(value),
            _ => {}
        }
        Ok(())
    }
}

/// What the text between braces, or any other stretch of text, stands for.
#[derive(Debug, PartialEq)]
enum Token {
    Text(String),
    /// `{CR}`, `{TAB}`, `{NUL}`, `{xHH}`: one byte.
    Byte(u8),
    /// `{LF}`: kept apart from `{x0A}` because at the end of a C: line it is the line ending.
    LineFeed,
    /// Any other `{name}`: a placeholder, `{secret}` or `{EOF}`; the caller decides.
    Name(String),
}

/// Splits a line into text and `{...}` tokens.
fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        rest = &rest[open + 1..];
        if let Some(after) = rest.strip_prefix('{') {
            literal.push('{');
            rest = after;
            continue;
        }
        let close = rest
            .find('}')
            .ok_or("a `{` without its `}` (write `{{` for a literal brace)")?;
        if !literal.is_empty() {
            tokens.push(Token::Text(std::mem::take(&mut literal)));
        }
        tokens.push(brace_token(&rest[..close]));
        rest = &rest[close + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        tokens.push(Token::Text(literal));
    }
    Ok(tokens)
}

fn brace_token(name: &str) -> Token {
    let hex = name
        .strip_prefix('x')
        .filter(|h| h.len() == 2)
        .and_then(|h| u8::from_str_radix(h, 16).ok());
    match (name, hex) {
        (_, Some(byte)) => Token::Byte(byte),
        ("CR", _) => Token::Byte(b'\r'),
        ("TAB", _) => Token::Byte(b'\t'),
        ("NUL", _) => Token::Byte(0),
        ("LF", _) => Token::LineFeed,
        _ => Token::Name(name.to_string()),
    }
}

impl ClientLine {
    /// Reads the text after `C: `: escapes, then `{secret}`, then `{LF}` or `{EOF}` at the end.
    fn parse(text: &str) -> Result<ClientLine, String> {
        let mut tokens = lex(text)?;
        let ending = match tokens.last() {
            Some(Token::LineFeed) => LineEnding::Lf,
            Some(Token::Name(name)) if name == "EOF" => LineEnding::None,
            _ => LineEnding::CrLf,
        };
        if ending != LineEnding::CrLf {
            tokens.pop();
        }
        let secret = matches!(tokens.last(), Some(Token::Name(name)) if name == "secret");
        if secret {
            tokens.pop();
        }
        let mut bytes = Vec::new();
        for token in tokens {
            match token {
                Token::Text(text) => bytes.extend_from_slice(text.as_bytes()),
                Token::Byte(byte) => bytes.push(byte),
                Token::LineFeed => bytes.push(b'\n'),
                Token::Name(name) => return Err(unknown_in_client_line(&name)),
            }
        }
        Ok(ClientLine {
            bytes,
            secret,
            ending,
        })
    }

    /// The bytes this line puts on the wire (`None` for a masked secret, which cannot be sent).
    pub fn wire_bytes(&self) -> Option<Vec<u8>> {
        if self.secret {
            return None;
        }
        let mut wire = self.bytes.clone();
        match self.ending {
            LineEnding::CrLf => wire.extend_from_slice(b"\r\n"),
            LineEnding::Lf => wire.push(b'\n'),
            LineEnding::None => {}
        }
        Some(wire)
    }

    /// The text of the line: lossy UTF-8, without escapes or the ending. Not for a terminal
    /// as it is: escape it first (`visible`).
    pub fn lossy_text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

fn unknown_in_client_line(name: &str) -> String {
    match name {
        "secret" | "EOF" => format!("{{{name}}} may only stand at the end of a C: line"),
        _ => format!(
            "{{{name}}} is not known in a C: line (known: {{CR}} {{LF}} {{TAB}} {{NUL}} {{xHH}} \
             {{EOF}} {{secret}}; write {{{{ for a literal brace)"
        ),
    }
}

impl Pattern {
    /// Reads the text after `S: `. Placeholders: `{host}` `{id}` `{date}` `{n}` `{*}`.
    pub fn parse(source: &str) -> Result<Pattern, String> {
        let mut pieces: Vec<Piece> = Vec::new();
        // Escaped bytes gather here until the text goes on: `{xC2}{x85}` is one character.
        let mut bytes: Vec<u8> = Vec::new();
        for token in lex(source)? {
            let piece = match token {
                Token::Byte(byte) => {
                    bytes.push(byte);
                    continue;
                }
                Token::Text(text) => Piece::Literal(text),
                Token::Name(name) => placeholder(&name)?,
                Token::LineFeed => return Err("a server line cannot hold {LF}".to_string()),
            };
            push_piece(&mut pieces, escaped_text(&mut bytes)?);
            push_piece(&mut pieces, Some(piece));
        }
        push_piece(&mut pieces, escaped_text(&mut bytes)?);
        let source = source.to_string();
        Ok(Pattern { source, pieces })
    }

    /// A pattern matching exactly `text`, as the recorder writes what a server said.
    pub fn literal(text: &str) -> Pattern {
        let pieces = if text.is_empty() {
            Vec::new()
        } else {
            vec![Piece::Literal(text.to_string())]
        };
        let source = escape_line(text.as_bytes(), true);
        Pattern { source, pieces }
    }

    /// The line as written after `S: `.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Does the server's reply line `actual` (without its CRLF) fit this pattern?
    pub fn matches(&self, actual: &str) -> bool {
        match_pieces(&self.pieces, actual)
    }

    /// The reply code the pattern expects, when it is written out (`250-...` gives 250).
    pub fn reply_code(&self) -> Option<u16> {
        reply_code(&self.source)
    }
}

/// The text of escaped bytes gathered so far, which must be UTF-8 in a server's line.
fn escaped_text(bytes: &mut Vec<u8>) -> Result<Option<Piece>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8(std::mem::take(bytes))
        .map_err(|_| "in S: lines escaped bytes must form UTF-8 characters".to_string())?;
    Ok(Some(Piece::Literal(text)))
}

/// `{CR}` next to text is one literal; joining them keeps the matcher simple.
fn push_piece(pieces: &mut Vec<Piece>, piece: Option<Piece>) {
    match (pieces.last_mut(), piece) {
        (Some(Piece::Literal(before)), Some(Piece::Literal(more))) => before.push_str(&more),
        (_, Some(piece)) => pieces.push(piece),
        (_, None) => {}
    }
}

fn placeholder(name: &str) -> Result<Piece, String> {
    match name {
        "host" => Ok(Piece::Host),
        "id" => Ok(Piece::Id),
        "date" => Ok(Piece::Date),
        "n" => Ok(Piece::Number),
        "*" => Ok(Piece::Any),
        _ => Err(format!(
            "unknown placeholder {{{name}}} (S: lines know {{host}} {{id}} {{date}} {{n}} {{*}}; \
             write {{{{ for a literal brace)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------

/// Matches pieces against text from left to right. A placeholder first takes as much as it can
/// and gives back one character at a time until the rest of the line matches too (backtracking).
fn match_pieces(pieces: &[Piece], text: &str) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    // A final " {*}" also matches nothing at all, space included: `250 {host} {*}` is meant
    // to accept a server that says only `250 mx.example`.
    if let ([Piece::Literal(space), Piece::Any], true) = (pieces, text.is_empty()) {
        if space == " " {
            return true;
        }
    }
    if let Piece::Literal(literal) = first {
        return text
            .strip_prefix(literal.as_str())
            .is_some_and(|after| match_pieces(rest, after));
    }
    let shortest = if *first == Piece::Any { 0 } else { 1 };
    (shortest..=first.longest(text))
        .rev()
        .filter(|&n| text.is_char_boundary(n))
        .any(|n| first.accepts(&text[..n]) && match_pieces(rest, &text[n..]))
}

impl Piece {
    /// The longest stretch at the start of `text` this placeholder could cover.
    fn longest(&self, text: &str) -> usize {
        let run = |ok: fn(char) -> bool| text.find(|c| !ok(c)).unwrap_or(text.len());
        match self {
            Piece::Host => run(is_host_char),
            Piece::Id => run(|c| !c.is_whitespace()),
            Piece::Number => run(|c| c.is_ascii_digit()),
            Piece::Date | Piece::Any | Piece::Literal(_) => text.len(),
        }
    }

    fn accepts(&self, stretch: &str) -> bool {
        match self {
            Piece::Date => looks_like_date(stretch),
            _ => true,
        }
    }
}

/// Letters, digits, dots and hyphens, plus what an address literal such as `[IPv6:2001:db8::1]` needs.
fn is_host_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
}

/// A loose check for an RFC 5322 date: a four-digit year and an `HH:MM` time among its words,
/// no blank at either end. Strict enough to catch a missing date, loose enough for every server.
fn looks_like_date(text: &str) -> bool {
    let digits = |w: &str, n: usize| w.len() == n && w.bytes().all(|b| b.is_ascii_digit());
    let is_time = |w: &str| w.split(':').count() >= 2 && w.split(':').all(|part| digits(part, 2));
    let words: Vec<&str> = text.split_whitespace().collect();
    text.trim() == text && words.iter().any(|w| digits(w, 4)) && words.iter().any(|w| is_time(w))
}

/// The three-digit code at the start of a reply line (RFC 5321 §4.2: `Reply-code [ SP / "-" ]`).
pub fn reply_code(line: &str) -> Option<u16> {
    let code = line.get(..3)?;
    let separator = line.as_bytes().get(3).copied();
    let digits_only = code.bytes().all(|b| b.is_ascii_digit());
    let separated = matches!(separator, None | Some(b' ') | Some(b'-'));
    (digits_only && separated)
        .then(|| code.parse().ok())
        .flatten()
}

/// Is this the last line of a reply? Every line but the last has a `-` after the code.
pub fn is_last_reply_line(line: &str) -> bool {
    !(reply_code(line).is_some() && line.as_bytes().get(3) == Some(&b'-'))
}

/// One row of an alignment of two sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    Both(usize, usize),
    OnlyLeft(usize),
    OnlyRight(usize),
}

/// Lines up two sequences of lengths `left` and `right` along their longest common subsequence,
/// where `same(i, j)` says whether left item `i` and right item `j` are the same thing.
pub fn align(left: usize, right: usize, same: impl Fn(usize, usize) -> bool) -> Vec<Pair> {
    // common[i][j]: length of the longest common subsequence of left[i..] and right[j..].
    let mut common = vec![vec![0usize; right + 1]; left + 1];
    for i in (0..left).rev() {
        for j in (0..right).rev() {
            common[i][j] = if same(i, j) {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut pairs) = (0, 0, Vec::new());
    while i < left || j < right {
        if i < left && j < right && same(i, j) && common[i][j] == common[i + 1][j + 1] + 1 {
            pairs.push(Pair::Both(i, j));
            (i, j) = (i + 1, j + 1);
        } else if j == right || (i < left && common[i + 1][j] >= common[i][j + 1]) {
            pairs.push(Pair::OnlyLeft(i));
            i += 1;
        } else {
            pairs.push(Pair::OnlyRight(j));
            j += 1;
        }
    }
    pairs
}

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

/// Writes bytes so that every one of them can be seen and read back (`visible::escape`:
/// control and invisible characters and bytes that are not UTF-8 become escapes, `{` becomes
/// `{{`). With `at_line_end`, trailing blanks become `{x20}`, since an editor would silently
/// drop them.
pub fn escape_line(bytes: &[u8], at_line_end: bool) -> String {
    let out = visible::escape(bytes);
    if at_line_end {
        return trailing_blanks_escaped(out);
    }
    out
}

/// Blanks at the end of a line would be dropped by an editor: they become `{x20}`.
pub fn trailing_blanks_escaped(mut line: String) -> String {
    let kept = line.trim_end_matches(' ').len();
    let blanks = line.len() - kept;
    line.truncate(kept);
    line + &"{x20}".repeat(blanks)
}

impl fmt::Display for ClientLine {
    /// `C: text`, with `{secret}` and the ending marker; `C:` alone for an empty CRLF line.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let marker = match self.ending {
            LineEnding::CrLf => "",
            LineEnding::Lf => "{LF}",
            LineEnding::None => "{EOF}",
        };
        let secret = if self.secret { "{secret}" } else { "" };
        let at_line_end = secret.is_empty() && marker.is_empty();
        let text = format!("{}{secret}{marker}", escape_line(&self.bytes, at_line_end));
        if text.is_empty() {
            write!(f, "C:")
        } else {
            write!(f, "C: {text}")
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Line::Client(client) => write!(f, "{client}"),
            Line::Server(pattern) if pattern.source.is_empty() => write!(f, "S:"),
            Line::Server(pattern) => write!(f, "S: {}", pattern.source),
            Line::Tls => write!(f, "{TLS_MARKER}"),
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some(title) = &self.title {
            writeln!(f, "# title: {title}")?;
        }
        if let Some(rfc) = &self.rfc {
            writeln!(f, "# rfc: {rfc}")?;
        }
        if !self.server.is_empty() {
            writeln!(f, "# server: {}", self.server.join(" "))?;
        }
        for note in &self.notes {
            writeln!(f, "# note: {note}")?;
        }
        if let Some(port) = &self.port {
            writeln!(f, "# port: {port}")?;
        }
        if self.protocol != Protocol::Smtp {
            writeln!(f, "# protocol: {}", self.protocol.name())?;
        }
        for setup in &self.setup {
            writeln!(f, "# setup: {setup}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.header)?;
        for entry in &self.entries {
            writeln!(f, "{}", entry.line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(source: &str) -> Pattern {
        Pattern::parse(source).unwrap()
    }

    #[test]
    fn round_trip() {
        let text = "# title: t\n# rfc: RFC 5321 §4.1.1.2\n# server: --domain teach.test --max-size 1000\n\
                    # note: n\nS: 220 {host} ESMTP {*}\nC: EHLO x\nS: 250-{host}\nS: 250 SIZE 1000\n\
                    C:\nC: a{TAB}b{NUL}{CR}{x01}{xFF}{{c{LF}\nC: AUTH PLAIN {secret}\nC: end{x20}\n\
                    C: bye{EOF}\n== TLS ==\nS: 221 {{not a placeholder}\n";
        let t = Transcript::parse(text).unwrap();
        assert_eq!(t.to_string(), text);
        assert_eq!(Transcript::parse(&t.to_string()).unwrap(), t);
        assert_eq!(
            t.header.server,
            ["--domain", "teach.test", "--max-size", "1000"]
        );
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let t = Transcript::parse("\u{feff}# just a comment\n\n# note: hi\nC: QUIT\n").unwrap();
        assert_eq!(t.header.notes, ["hi"]);
        assert_eq!(t.entries.len(), 1);
        assert_eq!(t.entries[0].line_no, 4);
    }

    #[test]
    fn escapes() {
        let cases: [(&str, &[u8], LineEnding); 8] = [
            ("a{CR}b", b"a\rb", LineEnding::CrLf),
            ("a{LF}", b"a", LineEnding::Lf),
            ("a{TAB}b", b"a\tb", LineEnding::CrLf),
            ("{NUL}", b"\0", LineEnding::CrLf),
            ("{x1B}{xFF}", b"\x1b\xff", LineEnding::CrLf),
            ("half{EOF}", b"half", LineEnding::None),
            ("{{x}", b"{x}", LineEnding::CrLf),
            ("a{x0A}b", b"a\nb", LineEnding::CrLf),
        ];
        for (text, bytes, ending) in cases {
            let line = ClientLine::parse(text).unwrap();
            assert_eq!(
                (line.bytes.as_slice(), line.ending),
                (bytes, ending),
                "{text}"
            );
            assert_eq!(line.to_string(), format!("C: {text}"));
        }
    }

    #[test]
    fn a_final_space_and_star_may_match_nothing() {
        let pattern = Pattern::parse("250 {host} {*}").unwrap();
        assert!(pattern.matches("250 mx.example"));
        assert!(pattern.matches("250 mx.example greets you"));
        assert!(!pattern.matches("250"));
        assert!(!Pattern::parse("250 {*}").unwrap().matches("251 x"));
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        let error = Transcript::parse("C: EHLO x\nS: 250 {hostname}\n").unwrap_err();
        assert_eq!(error.line_no, 2);
        assert!(error.message.contains("{hostname}"));
        assert!(Transcript::parse("C: {secret} more\n").is_err());
        assert!(Transcript::parse("C: open {brace\n").is_err());
        assert!(Transcript::parse("X: what\n").is_err());
    }

    #[test]
    fn host_placeholder() {
        assert!(pattern("250 {host}").matches("250 mx.teach.test"));
        assert!(pattern("250 {host} greets you").matches("250 [192.0.2.1] greets you"));
        assert!(!pattern("250 {host}").matches("250 two words"));
        assert!(!pattern("250 {host}").matches("250 "));
    }

    #[test]
    fn any_placeholder_mid_line() {
        let p = pattern("250 2.0.0 {*} queued");
        assert!(p.matches("250 2.0.0 Ok: queued"));
        assert!(p.matches("250 2.0.0  queued"));
        assert!(!p.matches("250 2.0.0 Ok"));
        assert!(pattern("221 {*}").matches("221 "));
        assert!(pattern("{*}").matches(""));
    }

    #[test]
    fn date_placeholder() {
        let p = pattern("220 {host} ESMTP {date}");
        assert!(p.matches("220 mx.test ESMTP Fri, 27 Nov 2026 05:06:52 +0000"));
        assert!(!p.matches("220 mx.test ESMTP ready"));
        let q = pattern("220 {host} ESMTP; {date} (up)");
        assert!(q.matches("220 mx.test ESMTP; Fri, 27 Nov 2026 05:06:52 +0000 (up)"));
    }

    #[test]
    fn id_placeholder() {
        let p = pattern("250 2.0.0 OK queued as {id}");
        assert!(p.matches("250 2.0.0 OK queued as 4Xb9-Q1"));
        assert!(!p.matches("250 2.0.0 OK queued as two words"));
        assert!(pattern("250 {id} accepted").matches("250 <abc@host> accepted"));
    }

    #[test]
    fn number_placeholder() {
        let p = pattern("+OK {n} octets");
        assert!(p.matches("+OK 200 octets"));
        assert!(!p.matches("+OK  octets"));
        assert!(!p.matches("+OK 2x0 octets"));
        assert!(pattern("{n} {n}").matches("1 260"));
    }

    #[test]
    fn port_protocol_and_setup_headers() {
        let text = "# title: t\n# port: pop3\n# protocol: pop3\n# setup: deliver alice\n\
                    # setup: deliver alice\nS: +OK {*}\n";
        let t = Transcript::parse(text).unwrap();
        assert_eq!(t.header.port.as_deref(), Some("pop3"));
        assert_eq!(t.header.protocol, Protocol::Pop3);
        assert_eq!(t.header.setup, ["deliver alice", "deliver alice"]);
        assert_eq!(t.to_string(), text);
        assert_eq!(
            Transcript::parse("# title: t\n").unwrap().header.protocol,
            Protocol::Smtp
        );
        assert_eq!(
            Transcript::parse("# title: t\n# protocol: IMAP\n")
                .unwrap()
                .header
                .protocol,
            Protocol::Imap
        );
        let error = Transcript::parse("# title: t\n# protocol: nntp\n").unwrap_err();
        assert_eq!(error.line_no, 2);
    }

    #[test]
    fn reply_codes() {
        assert_eq!(reply_code("250-SIZE"), Some(250));
        assert_eq!(reply_code("354"), Some(354));
        assert_eq!(reply_code("25x OK"), None);
        assert!(!is_last_reply_line("250-SIZE"));
        assert!(is_last_reply_line("250 HELP"));
    }

    #[test]
    fn alignment() {
        let left = ["EHLO", "MAIL", "DATA", "QUIT"];
        let right = ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"];
        let pairs = align(left.len(), right.len(), |i, j| left[i] == right[j]);
        assert!(pairs.contains(&Pair::OnlyRight(2)));
        assert_eq!(pairs.len(), 5);
    }
}

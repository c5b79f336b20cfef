//! Commands: the verb table (syntax, RFC section, what each verb does) and the command parser.
//!
//! Interface:
//! - `enum Verb` and `VERBS`, one row per verb: its syntax (which is also its HELP text), the RFC
//!   section that defines it, and a one-line summary.
//! - `enum Command`, the parsed command with its arguments.
//! - `parse(line)` turns one command line (without its line end) into a `Command`, or a `Reply`
//!   that says what is wrong (500 unknown verb, 501 bad argument).
//!
//! Standards: RFC 5321 §4.1.1, §4.1.2, §4.3.2, Appendix F, RFC 1869 §4.1.2

use crate::smtp::address::{self, AddressError, ForwardPath, ReversePath};
use crate::smtp::reply::Reply;

/// Every verb smtplab recognises. The compiler checks that `step` handles each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Vrfy,
    Expn,
    Help,
    Noop,
    Quit,
    Send,
    Soml,
    Saml,
    Turn,
    Starttls,
    Auth,
    Bdat,
    Etrn,
}

/// Facts about one verb, in one table: HELP prints them, the lessons quote them.
#[derive(Debug)]
pub struct VerbInfo {
    pub verb: Verb,
    pub name: &'static str,
    pub syntax: &'static str,
    pub rfc: &'static str,
    pub summary: &'static str,
    pub example: &'static str,
}

// ANCHOR: verbs
#[rustfmt::skip]
pub const VERBS: &[VerbInfo] = &[
    verb(Verb::Helo, "HELO", "HELO <your-domain>", "RFC 5321 §4.1.1.1",
        "say hello (plain SMTP); starts a fresh session", "HELO client.example"),
    verb(Verb::Ehlo, "EHLO", "EHLO <your-domain>", "RFC 5321 §4.1.1.1",
        "say hello and ask for the extension list (ESMTP)", "EHLO client.example"),
    verb(Verb::Mail, "MAIL", "MAIL FROM:<sender> [SIZE=n] [BODY=7BIT|8BITMIME]", "RFC 5321 §4.1.1.2",
        "start a transaction: who the mail is from", "MAIL FROM:<mary@client.example>"),
    verb(Verb::Rcpt, "RCPT", "RCPT TO:<recipient>", "RFC 5321 §4.1.1.3",
        "add one recipient (repeat for more)", "RCPT TO:<alice@localhost>"),
    verb(Verb::Data, "DATA", "DATA", "RFC 5321 §4.1.1.4",
        "send the message; end it with a line holding only a dot", "DATA"),
    verb(Verb::Rset, "RSET", "RSET", "RFC 5321 §4.1.1.5",
        "abort the transaction, keep the connection", "RSET"),
    verb(Verb::Vrfy, "VRFY", "VRFY <user>", "RFC 5321 §4.1.1.6",
        "ask whether a mailbox exists", "VRFY alice"),
    verb(Verb::Expn, "EXPN", "EXPN <list>", "RFC 5321 §4.1.1.7",
        "ask who is on a mailing list", "EXPN students"),
    verb(Verb::Help, "HELP", "HELP [command]", "RFC 5321 §4.1.1.8",
        "show what you can type now, or how to use one command", "HELP MAIL"),
    verb(Verb::Noop, "NOOP", "NOOP", "RFC 5321 §4.1.1.9",
        "do nothing; the server answers 250", "NOOP"),
    verb(Verb::Quit, "QUIT", "QUIT", "RFC 5321 §4.1.1.10",
        "say goodbye; the server closes the connection", "QUIT"),
    verb(Verb::Starttls, "STARTTLS", "STARTTLS", "RFC 3207 §4",
        "switch this connection to TLS; then say EHLO again", "STARTTLS"),
    verb(Verb::Auth, "AUTH", "AUTH <mechanism> [initial-response]", "RFC 4954 §4",
        "log in (PLAIN, LOGIN or CRAM-MD5), so the server relays for you", "AUTH PLAIN AGFsaWNlAHBhc3N3b3Jk"),
    verb(Verb::Bdat, "BDAT", "BDAT <octets> [LAST]", "RFC 3030 §2",
        "send the next chunk of the message: exactly that many octets follow", "BDAT 86 LAST"),
    verb(Verb::Etrn, "ETRN", "ETRN <domain> | ETRN @<domain> | ETRN #<queue>", "RFC 1985 §5",
        "ask the server to try its queued mail for a domain now", "ETRN two.test"),
    verb(Verb::Send, "SEND", "SEND FROM:<sender>", "RFC 5321 Appendix F.6",
        "obsolete: deliver to a terminal instead of a mailbox", "SEND FROM:<mary@client.example>"),
    verb(Verb::Soml, "SOML", "SOML FROM:<sender>", "RFC 5321 Appendix F.6",
        "obsolete: send to a terminal or else mail", "SOML FROM:<mary@client.example>"),
    verb(Verb::Saml, "SAML", "SAML FROM:<sender>", "RFC 5321 Appendix F.6",
        "obsolete: send to a terminal and mail", "SAML FROM:<mary@client.example>"),
    verb(Verb::Turn, "TURN", "TURN", "RFC 5321 Appendix F.1",
        "obsolete: swap the client and server roles", "TURN"),
];
// ANCHOR_END: verbs

const fn verb(
    verb: Verb,
    name: &'static str,
    syntax: &'static str,
    rfc: &'static str,
    summary: &'static str,
    example: &'static str,
) -> VerbInfo {
    VerbInfo {
        verb,
        name,
        syntax,
        rfc,
        summary,
        example,
    }
}

impl Verb {
    pub fn info(self) -> &'static VerbInfo {
        // Every verb has exactly one row; a unit test keeps it that way.
        VERBS
            .iter()
            .find(|row| row.verb == self)
            .unwrap_or(&VERBS[0])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Look a verb up by name, case-insensitively (RFC 5321 §2.4: verbs are not case sensitive).
    pub fn from_name(name: &str) -> Option<Verb> {
        VERBS
            .iter()
            .find(|row| row.name.eq_ignore_ascii_case(name))
            .map(|row| row.verb)
    }

    /// The verbs RFC 5321 Appendix F retired; they answer 502 and explain why.
    pub fn is_obsolete(self) -> bool {
        matches!(self, Verb::Send | Verb::Soml | Verb::Saml | Verb::Turn)
    }
}

/// An ESMTP parameter of MAIL or RCPT: `esmtp-param = esmtp-keyword ["=" esmtp-value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Upper-cased: keywords are not case sensitive.
    pub keyword: String,
    pub value: Option<String>,
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        path: ReversePath,
        params: Vec<Param>,
    },
    Rcpt {
        path: ForwardPath,
        params: Vec<Param>,
    },
    Data,
    Rset,
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    Noop,
    Quit,
    Starttls,
    /// `AUTH mechanism [initial-response]`
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// `BDAT chunk-size [LAST]`: the chunk follows the line.
    Bdat {
        size: u64,
        last: bool,
    },
    /// `ETRN node` (RFC 1985 §5): start the queue for a domain.
    Etrn(String),
    /// SEND, SOML, SAML, TURN: recognised, never implemented.
    Obsolete(Verb),
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Helo(_) => Verb::Helo,
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Rset => Verb::Rset,
            Command::Vrfy(_) => Verb::Vrfy,
            Command::Expn(_) => Verb::Expn,
            Command::Help(_) => Verb::Help,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Starttls => Verb::Starttls,
            Command::Auth { .. } => Verb::Auth,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Etrn(_) => Verb::Etrn,
            Command::Obsolete(verb) => *verb,
        }
    }
}

// ANCHOR: parse
/// `command = verb [SP argument] CRLF` (RFC 5321 §4.1.1). `line` comes without its line end.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let text = command_text(line)?;
    let (word, argument) = match text.split_once(' ') {
        Some((word, rest)) => (word, rest.trim()),
        None => (text.trim_end(), ""),
    };
    let Some(verb) = Verb::from_name(word) else {
        return Err(unknown_verb(word));
    };
    match verb {
        Verb::Helo => helo_argument(argument, verb).map(Command::Helo),
        Verb::Ehlo => helo_argument(argument, verb).map(Command::Ehlo),
        Verb::Mail => mail_argument(argument),
        Verb::Rcpt => rcpt_argument(argument),
        Verb::Data => no_argument(argument, verb, Command::Data),
        Verb::Rset => no_argument(argument, verb, Command::Rset),
        Verb::Quit => no_argument(argument, verb, Command::Quit),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        Verb::Noop => Ok(Command::Noop),
        Verb::Vrfy => string_argument(argument, verb).map(Command::Vrfy),
        Verb::Expn => string_argument(argument, verb).map(Command::Expn),
        Verb::Help => Ok(Command::Help(
            Some(argument.to_string()).filter(|a| !a.is_empty()),
        )),
        Verb::Starttls => no_argument(argument, verb, Command::Starttls),
        Verb::Auth => auth_argument(argument),
        Verb::Bdat => bdat_argument(argument),
        Verb::Etrn => string_argument(argument, verb).map(Command::Etrn),
        Verb::Send | Verb::Soml | Verb::Saml | Verb::Turn => Ok(Command::Obsolete(verb)),
    }
}
// ANCHOR_END: parse

/// Commands are text: refuse NUL, control characters and bytes that are not UTF-8, saying which.
fn command_text(line: &[u8]) -> Result<&str, Reply> {
    command_bytes_problem(line)
        .map_or(Ok(()), Err)
        .map_err(|problem| {
            // RFC 5321 §4.1.2: bad characters in the argument of a known command get 501.
            let verb = line
                .split(|&b| b == b' ')
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(Verb::from_name);
            match verb {
                None => Reply::UNKNOWN_COMMAND_500.text(problem),
                Some(Verb::Mail) => Reply::BAD_SENDER_501.text(problem),
                Some(Verb::Rcpt) => Reply::BAD_RECIPIENT_501.text(problem),
                Some(_) => Reply::SYNTAX_501.text(problem),
            }
        })?;
    std::str::from_utf8(line).map_err(|_| Reply::SYNTAX_501)
}

/// What is wrong with the bytes of a command line, in words, if anything.
fn command_bytes_problem(line: &[u8]) -> Option<String> {
    if line.contains(&0) {
        return Some("Command contains a NUL byte".into());
    }
    if let Some(&byte) = line.iter().find(|&&b| b == 0x08 || b == 0x7f) {
        let key = if byte == 0x08 {
            "Backspace (0x08)"
        } else {
            "Delete (0x7F)"
        };
        return Some(format!(
            "Your line contains a {key} character: the terminal sent the key instead of erasing. Type the whole line again"
        ));
    }
    if let Some(key) = escape_sequence(line) {
        return Some(format!(
            "Your line contains an escape sequence: your terminal sent {key}. \
             Telnet does not edit lines: retype the line"
        ));
    }
    if line.iter().any(|&b| b < 0x20 && b != b'\t') {
        return Some("Command contains a control character".into());
    }
    std::str::from_utf8(line)
        .is_err()
        .then(|| "Command contains 8-bit bytes that are not UTF-8".into())
}

/// A key the terminal sent as an ANSI escape sequence (ESC `[` or ESC `O`, then a final
/// letter), named as a student would: telnet and netcat pass keys through, so the up arrow
/// that recalls a line in a shell arrives here as `ESC [ A`.
fn escape_sequence(line: &[u8]) -> Option<&'static str> {
    let at = line.iter().position(|&b| b == 0x1b)?;
    match line.get(at + 1..at + 3) {
        Some([b'[' | b'O', b'A' | b'B' | b'C' | b'D']) => Some("an arrow key"),
        _ => Some("a cursor or function key (an escape sequence)"),
    }
}

/// 500 for an unknown verb, with a suggestion when it is one typo away from a real one.
fn unknown_verb(word: &str) -> Reply {
    // Only up to a blank or control: `AUTH<TAB>PLAIN<TAB>secret` is one "word" here, and its
    // secret must not come back in the reply (which the log and the transcript keep).
    let shown: String = word
        .chars()
        .take_while(|c| !c.is_whitespace() && !c.is_control())
        .take(16)
        .collect();
    match closest_verb(word) {
        Some(verb) => Reply::UNKNOWN_COMMAND_500.text(format!(
            "Command \"{shown}\" not recognized; did you mean {}?",
            verb.name()
        )),
        None if word.is_empty() => Reply::UNKNOWN_COMMAND_500
            .text("Empty line: type a command, or HELP to see what you can type now"),
        None => Reply::UNKNOWN_COMMAND_500.text(format!(
            "Command \"{shown}\" not recognized; type HELP for the list"
        )),
    }
}

/// The verb at edit distance 1 (or a swap of two neighbouring letters) from `word`, if any.
fn closest_verb(word: &str) -> Option<Verb> {
    let word = word.to_ascii_uppercase();
    VERBS
        .iter()
        .find(|row| one_typo_apart(&word, row.name))
        .map(|row| row.verb)
}

fn one_typo_apart(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a == b || a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (rest_a, rest_b) = (&a[prefix..], &b[prefix..]);
    let swapped = rest_a.len() >= 2
        && rest_a.len() == rest_b.len()
        && rest_a[0] == rest_b[1]
        && rest_a[1] == rest_b[0]
        && rest_a[2..] == rest_b[2..];
    let replaced = a.len() == b.len() && rest_a.get(1..) == rest_b.get(1..);
    let inserted = a.len() + 1 == b.len() && rest_a == rest_b.get(1..).unwrap_or_default();
    let deleted = a.len() == b.len() + 1 && rest_a.get(1..).unwrap_or_default() == rest_b;
    swapped || replaced || inserted || deleted
}

fn syntax_reply(verb: Verb) -> Reply {
    Reply::SYNTAX_501.text(format!("Syntax: {}", verb.info().syntax))
}

fn domain_argument(argument: &str, verb: Verb) -> Result<String, Reply> {
    if argument.is_empty() {
        return Err(syntax_reply(verb).text(format!(
            "Syntax: {} (tell the server your name, e.g. {})",
            verb.info().syntax,
            verb.info().example
        )));
    }
    Ok(argument.to_string())
}

/// RFC 5321 §4.1.1.1: the client's name is a Domain or an address literal, nothing else
/// (it is written into the `Received:` header, where anything more could forge a clause).
fn helo_argument(argument: &str, verb: Verb) -> Result<String, Reply> {
    let name = domain_argument(argument, verb)?;
    address::helo_name(&name).map_err(|error| {
        let rule = match error {
            AddressError::Syntax(rule) => rule,
            _ => "a domain name of at most 255 octets",
        };
        let name = verb.name();
        syntax_reply(verb).text(format!(
            "Syntax: {name} <domain> or {name} [address], e.g. {}; {rule} (RFC 5321 §4.1.1.1)",
            verb.info().example
        ))
    })?;
    Ok(name)
}

fn string_argument(argument: &str, verb: Verb) -> Result<String, Reply> {
    if argument.is_empty() {
        return Err(syntax_reply(verb));
    }
    Ok(argument.to_string())
}

fn no_argument(argument: &str, verb: Verb, command: Command) -> Result<Command, Reply> {
    if !argument.is_empty() {
        return Err(syntax_reply(verb).text(format!("Syntax: {} (no arguments)", verb.name())));
    }
    Ok(command)
}

/// `"AUTH" SP sasl-mech [SP initial-response]` (RFC 4954 §4)
fn auth_argument(argument: &str) -> Result<Command, Reply> {
    let mut words = argument.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(mechanism), initial, None) => Ok(Command::Auth {
            mechanism: mechanism.to_string(),
            initial: initial.map(str::to_string),
        }),
        _ => Err(syntax_reply(Verb::Auth)),
    }
}

/// `bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]`, `end-marker = "LAST"` (RFC 3030 §3)
fn bdat_argument(argument: &str) -> Result<Command, Reply> {
    let mut words = argument.split_whitespace();
    let size = words
        .next()
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse().ok());
    match (size, words.next(), words.next()) {
        (Some(size), None, None) => Ok(Command::Bdat { size, last: false }),
        (Some(size), Some(marker), None) if marker.eq_ignore_ascii_case("LAST") => {
            Ok(Command::Bdat { size, last: true })
        }
        _ => Err(syntax_reply(Verb::Bdat)),
    }
}

/// `"MAIL FROM:" Reverse-path [SP Mail-parameters]` (RFC 5321 §4.1.1.2)
fn mail_argument(argument: &str) -> Result<Command, Reply> {
    let bad = Reply::BAD_SENDER_501;
    let path_text = keyword_colon(argument, "FROM:", Verb::Mail, &bad)?;
    let (path, rest) = address::reverse_path(path_text, true)
        .map_err(|error| address_reply(error, bad, Verb::Mail, path_text))?;
    Ok(Command::Mail {
        path,
        params: parameters(rest)?,
    })
}

/// `"RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path ) [SP Rcpt-parameters]`
fn rcpt_argument(argument: &str) -> Result<Command, Reply> {
    let bad = Reply::BAD_RECIPIENT_501;
    let path_text = keyword_colon(argument, "TO:", Verb::Rcpt, &bad)?;
    let (path, rest) = address::forward_path(path_text, true)
        .map_err(|error| address_reply(error, bad, Verb::Rcpt, path_text))?;
    Ok(Command::Rcpt {
        path,
        params: parameters(rest)?,
    })
}

/// Strip `FROM:` / `TO:`. DEVIATION: a space after the colon (`MAIL FROM: <x>`) is accepted, as
/// Postfix and most servers do, although the grammar of RFC 5321 §4.1.2 has none there.
fn keyword_colon<'a>(
    argument: &'a str,
    keyword: &str,
    verb: Verb,
    bad: &Reply,
) -> Result<&'a str, Reply> {
    let head = argument.get(..keyword.len()).unwrap_or_default();
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(bad.clone().text(format!(
            "Syntax: {} (no space before the colon, e.g. {})",
            verb.info().syntax,
            verb.info().example
        )));
    }
    Ok(&argument[keyword.len()..])
}

/// Did the client write `MAIL FROM: <x>` or `RCPT TO: <x>`, with the space the grammar of
/// RFC 5321 §4.1.2 does not have? (Accepted all the same; see `keyword_colon`.)
pub fn space_after_colon(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line).to_ascii_uppercase();
    text.starts_with("MAIL FROM: ") || text.starts_with("RCPT TO: ")
}

/// Does this line look like a header field of a message (`Subject: hi`, `From: x`)?
/// `field-name = 1*ftext`, `ftext = %d33-57 / %d59-126` (RFC 5322 §3.6.8): printable, no colon.
pub fn looks_like_header(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    !name.is_empty()
        && name.iter().all(|&b| (33..=126).contains(&b))
        && Verb::from_name(&String::from_utf8_lossy(name)).is_none()
}

/// Turn an address error into a 501/553 reply that names the rule that was broken.
fn address_reply(error: AddressError, bad: Reply, verb: Verb, path_text: &str) -> Reply {
    match error {
        AddressError::MissingBrackets => bad.text(format!(
            "The address must be in angle brackets: {}:<{}> (RFC 5321 §4.1.2)",
            if verb == Verb::Mail {
                "MAIL FROM"
            } else {
                "RCPT TO"
            },
            path_text
                .split_whitespace()
                .next()
                .unwrap_or("you@example.com")
        )),
        AddressError::Syntax(rule) => {
            bad.text(format!("Bad address syntax: {rule} (RFC 5321 §4.1.2)"))
        }
        AddressError::TooLong(part) => bad.text(format!(
            "Path too long: the {part} is over its limit (RFC 5321 §4.5.3.1)"
        )),
        AddressError::NeedsSmtpUtf8 => Reply::NEEDS_SMTPUTF8_553,
    }
}

/// `Mail-parameters = esmtp-param *(SP esmtp-param)`
fn parameters(text: &str) -> Result<Vec<Param>, Reply> {
    text.split(' ')
        .filter(|word| !word.is_empty())
        .map(esmtp_param)
        .collect()
}

/// `esmtp-param = esmtp-keyword ["=" esmtp-value]`; `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`
fn esmtp_param(word: &str) -> Result<Param, Reply> {
    let (keyword, value) = match word.split_once('=') {
        Some((keyword, value)) => (keyword, Some(value)),
        None => (word, None),
    };
    let keyword_ok = keyword
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && keyword
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    // esmtp-value = 1*(%d33-60 / %d62-126): printable, no "=", no space.
    let value_ok = value
        .is_none_or(|v| !v.is_empty() && v.chars().all(|c| ('!'..='~').contains(&c) && c != '='));
    if !keyword_ok || !value_ok {
        return Err(Reply::SYNTAX_501.text(format!("Bad parameter syntax: {word}")));
    }
    Ok(Param {
        keyword: keyword.to_ascii_uppercase(),
        value: value.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> u16 {
        match parse(line.as_bytes()) {
            Ok(_) => 0,
            Err(reply) => reply.code,
        }
    }

    #[test]
    fn every_verb_has_one_row() {
        for row in VERBS {
            assert_eq!(VERBS.iter().filter(|r| r.verb == row.verb).count(), 1);
            assert_eq!(row.verb.info().name, row.name);
            assert!(row.rfc.starts_with("RFC "), "{}", row.name);
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse(b"helo x"), Ok(Command::Helo("x".into())));
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(parse(b"noop anything at all"), Ok(Command::Noop));
    }

    #[test]
    fn arguments() {
        assert_eq!(code("HELO"), 501);
        assert_eq!(code("EHLO"), 501);
        assert_eq!(code("DATA now"), 501);
        assert_eq!(code("RSET x"), 501);
        assert_eq!(code("QUIT please"), 501);
        assert_eq!(code("VRFY"), 501);
        assert_eq!(code("EXPN"), 501);
        assert_eq!(parse(b"HELP mail"), Ok(Command::Help(Some("mail".into()))));
        assert_eq!(parse(b"HELP"), Ok(Command::Help(None)));
    }

    #[test]
    fn mail_and_rcpt() {
        let Ok(Command::Mail { path, params }) =
            parse(b"MAIL FROM:<mary@client.example> SIZE=100 body=8BITMIME")
        else {
            panic!("MAIL did not parse");
        };
        assert_eq!(path.to_string(), "<mary@client.example>");
        assert_eq!(
            params[0],
            Param {
                keyword: "SIZE".into(),
                value: Some("100".into())
            }
        );
        assert_eq!(params[1].keyword, "BODY");
        assert!(matches!(
            parse(b"mail from:<>"),
            Ok(Command::Mail {
                path: ReversePath::Null,
                ..
            })
        ));
        assert!(matches!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                path: ForwardPath::Postmaster,
                ..
            })
        ));
        assert!(
            parse(b"MAIL FROM: <mary@client.example>").is_ok(),
            "space after colon is accepted"
        );
    }

    #[test]
    fn coaching_for_missing_brackets() {
        let reply = parse(b"MAIL FROM: alice@x").unwrap_err();
        assert_eq!((reply.code, reply.status), (501, "5.1.7"));
        assert!(reply.text.contains("MAIL FROM:<alice@x>"), "{}", reply.text);
        let reply = parse(b"RCPT TO alice@x").unwrap_err();
        assert_eq!((reply.code, reply.status), (501, "5.1.3"));
    }

    #[test]
    fn bad_parameter_syntax() {
        assert_eq!(code("MAIL FROM:<a@b.c> SIZE="), 501);
        assert_eq!(code("MAIL FROM:<a@b.c> -X=1"), 501);
    }

    #[test]
    fn unknown_verbs_and_typos() {
        let reply = parse(b"HLEO x").unwrap_err();
        assert_eq!((reply.code, reply.status), (500, "5.5.2"));
        assert!(reply.text.contains("did you mean HELO?"), "{}", reply.text);
        assert!(parse(b"MAL FROM:<a@b.c>")
            .unwrap_err()
            .text
            .contains("MAIL"));
        assert!(parse(b"RCTP TO:<a@b.c>").unwrap_err().text.contains("RCPT"));
        assert!(!parse(b"FOO bar").unwrap_err().text.contains("did you mean"));
        assert_eq!(code(""), 500);
    }

    #[test]
    fn bytes_that_are_not_text() {
        assert!(parse(b"NO\0OP").unwrap_err().text.contains("NUL"));
        assert!(parse(b"HELO \xff\xfe").unwrap_err().text.contains("8-bit"));
        assert!(parse(b"HELL\x08O x")
            .unwrap_err()
            .text
            .contains("Backspace"));
        assert!(parse(b"NOOP\x7f").unwrap_err().text.contains("Delete"));
    }

    #[test]
    fn auth_and_bdat_arguments() {
        assert_eq!(
            parse(b"AUTH PLAIN AGE="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGE=".into())
            })
        );
        assert_eq!(code("AUTH"), 501);
        assert_eq!(
            parse(b"BDAT 86 LAST"),
            Ok(Command::Bdat {
                size: 86,
                last: true
            })
        );
        assert_eq!(
            parse(b"bdat 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert_eq!(code("BDAT -1"), 501);
        assert_eq!(code("BDAT 5 FIRST"), 501);
        assert_eq!(code("STARTTLS now"), 501);
    }

    #[test]
    fn message_text_and_spaced_colons_are_recognised() {
        assert!(looks_like_header(b"Subject: hi"));
        assert!(looks_like_header(b"From: mary@client.example"));
        assert!(looks_like_header(b"To:"));
        assert!(!looks_like_header(b"MAIL FROM:<a@b>"));
        assert!(!looks_like_header(b"Hi Alice!"));
        assert!(!looks_like_header(b": no name"));
        assert!(space_after_colon(b"mail from: <a@b>"));
        assert!(space_after_colon(b"RCPT TO: <a@b>"));
        assert!(!space_after_colon(b"MAIL FROM:<a@b>"));
    }

    #[test]
    fn obsolete_verbs_are_recognised() {
        assert_eq!(parse(b"TURN"), Ok(Command::Obsolete(Verb::Turn)));
        assert_eq!(
            parse(b"send from:<a@b.c>"),
            Ok(Command::Obsolete(Verb::Send))
        );
    }
}

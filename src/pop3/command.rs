//! POP3 commands in, responses out: the verb table, the parser, and the `+OK`/`-ERR` format
//! with its byte-stuffed multi-line bodies. No state here: `session.rs` decides what a command
//! means now.
//!
//! Interface:
//! - `VERBS`, every command this server knows, with its syntax and RFC section.
//! - `parse(line)` turns one line into a `Command`, or the `-ERR` that says what is wrong.
//! - `Response`, a status line and an optional multi-line body; `to_wire` byte-stuffs it. A
//!   RETR or TOP body is a `Retrieval`, streamed from the maildrop after the status line.
//!
//! Standards: RFC 1939 §3, §5, §7, RFC 2449 §3, §5

use std::fmt;

// ANCHOR: verbs
/// Every POP3 command this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    User,
    Pass,
    Quit,
    Stat,
    List,
    Retr,
    Dele,
    Noop,
    Rset,
    Top,
    Uidl,
    Capa,
    Stls,
}

/// A verb's facts: its name on the wire, its syntax (the hint in an `-ERR`), its RFC section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerbInfo {
    pub verb: Verb,
    pub name: &'static str,
    pub syntax: &'static str,
    pub rfc: &'static str,
}

const fn verb(verb: Verb, name: &'static str, syntax: &'static str, rfc: &'static str) -> VerbInfo {
    VerbInfo {
        verb,
        name,
        syntax,
        rfc,
    }
}

#[rustfmt::skip]
pub const VERBS: &[VerbInfo] = &[
    verb(Verb::User, "USER", "USER name",       "RFC 1939 §7"),
    verb(Verb::Pass, "PASS", "PASS password",   "RFC 1939 §7"),
    verb(Verb::Quit, "QUIT", "QUIT",            "RFC 1939 §6"),
    verb(Verb::Stat, "STAT", "STAT",            "RFC 1939 §5"),
    verb(Verb::List, "LIST", "LIST [msg]",      "RFC 1939 §5"),
    verb(Verb::Retr, "RETR", "RETR msg",        "RFC 1939 §5"),
    verb(Verb::Dele, "DELE", "DELE msg",        "RFC 1939 §5"),
    verb(Verb::Noop, "NOOP", "NOOP",            "RFC 1939 §5"),
    verb(Verb::Rset, "RSET", "RSET",            "RFC 1939 §5"),
    verb(Verb::Top,  "TOP",  "TOP msg lines",   "RFC 1939 §7"),
    verb(Verb::Uidl, "UIDL", "UIDL [msg]",      "RFC 1939 §7"),
    verb(Verb::Capa, "CAPA", "CAPA",            "RFC 2449 §5"),
    verb(Verb::Stls, "STLS", "STLS",            "RFC 2595 §4"),
];
// ANCHOR_END: verbs

impl Verb {
    pub fn info(self) -> &'static VerbInfo {
        VERBS
            .iter()
            .find(|info| info.verb == self)
            .unwrap_or(&VERBS[0])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }
}

/// A parsed command line. Message numbers are as the client typed them (1 is the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(String),
    Quit,
    Stat,
    List(Option<usize>),
    Retr(usize),
    Dele(usize),
    Noop,
    Rset,
    Top { msg: usize, lines: usize },
    Uidl(Option<usize>),
    Capa,
    Stls,
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::User(_) => Verb::User,
            Command::Pass(_) => Verb::Pass,
            Command::Quit => Verb::Quit,
            Command::Stat => Verb::Stat,
            Command::List(_) => Verb::List,
            Command::Retr(_) => Verb::Retr,
            Command::Dele(_) => Verb::Dele,
            Command::Noop => Verb::Noop,
            Command::Rset => Verb::Rset,
            Command::Top { .. } => Verb::Top,
            Command::Uidl(_) => Verb::Uidl,
            Command::Capa => Verb::Capa,
            Command::Stls => Verb::Stls,
        }
    }
}

// ANCHOR: parse
/// `command = keyword *(SP param) CRLF` (RFC 2449 §3); keywords are case-insensitive. PASS
/// takes the rest of the line, spaces included: "a POP3 server may treat spaces in the
/// argument as part of the password" (RFC 1939 §7).
pub fn parse(line: &[u8]) -> Result<Command, Response> {
    let line = std::str::from_utf8(line).map_err(|_| Response::err("Commands are ASCII text"))?;
    let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
    let Some(info) = VERBS.iter().find(|v| v.name.eq_ignore_ascii_case(keyword)) else {
        // Only up to a blank or control: `PASS<TAB>secret` must not come back in the reply.
        let shown: String = keyword
            .chars()
            .take_while(|c| !c.is_whitespace() && !c.is_control())
            .take(16)
            .collect();
        return Err(Response::err(format!(
            "Unknown command {shown:?}; try CAPA, USER name, PASS password, STAT, LIST, RETR n, QUIT"
        )));
    };
    let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
    let syntax = || Response::err(format!("Syntax: {}", info.syntax));
    let number = |text: &str| text.parse::<usize>().map_err(|_| syntax());
    let command = match (info.verb, args.as_slice()) {
        (Verb::User, [name]) => Command::User(name.to_string()),
        (Verb::Pass, _) if !rest.is_empty() => Command::Pass(rest.to_string()),
        (Verb::Quit, []) => Command::Quit,
        (Verb::Stat, []) => Command::Stat,
        (Verb::List, []) => Command::List(None),
        (Verb::List, [msg]) => Command::List(Some(number(msg)?)),
        (Verb::Retr, [msg]) => Command::Retr(number(msg)?),
        (Verb::Dele, [msg]) => Command::Dele(number(msg)?),
        (Verb::Noop, []) => Command::Noop,
        (Verb::Rset, []) => Command::Rset,
        (Verb::Top, [msg, lines]) => Command::Top {
            msg: number(msg)?,
            lines: number(lines)?,
        },
        (Verb::Uidl, []) => Command::Uidl(None),
        (Verb::Uidl, [msg]) => Command::Uidl(Some(number(msg)?)),
        (Verb::Capa, []) => Command::Capa,
        (Verb::Stls, []) => Command::Stls,
        _ => return Err(syntax()),
    };
    Ok(command)
}
// ANCHOR_END: parse

// ANCHOR: response
/// One response: `+OK text` or `-ERR text`, and for a multi-line response its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    pub text: String,
    /// Lines ending in CRLF, not yet byte-stuffed; `to_wire` stuffs them and adds `.` CRLF.
    pub body: Option<Vec<u8>>,
    /// RETR and TOP: the body is a message streamed from the maildrop after the status line
    /// (`Session::send_message`), so it is never in memory whole.
    pub stream: Option<Retrieval>,
}

/// Which message RETR or TOP streams, and for TOP how many body lines (RFC 1939 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retrieval {
    /// The message's index in the maildrop, from 0.
    pub index: usize,
    pub lines: Option<usize>,
}

impl Response {
    pub fn ok(text: impl Into<String>) -> Response {
        Response {
            ok: true,
            text: text.into(),
            body: None,
            stream: None,
        }
    }

    pub fn err(text: impl Into<String>) -> Response {
        Response {
            ok: false,
            text: text.into(),
            body: None,
            stream: None,
        }
    }

    /// A multi-line `+OK` response (RFC 1939 §3).
    pub fn multi(text: impl Into<String>, body: Vec<u8>) -> Response {
        Response {
            ok: true,
            text: text.into(),
            body: Some(body),
            stream: None,
        }
    }

    /// A multi-line `+OK` response whose body is a message streamed from the maildrop.
    pub fn streamed(text: impl Into<String>, retrieval: Retrieval) -> Response {
        Response {
            ok: true,
            text: text.into(),
            body: None,
            stream: Some(retrieval),
        }
    }

    /// The bytes on the wire. RFC 1939 §3: "If any line of the multi-line response begins with
    /// the termination octet, the line is "byte-stuffed" by pre-pending the termination octet
    /// to that line", and the response ends with `.` CRLF.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = format!("{self}\r\n").into_bytes();
        if let Some(body) = &self.body {
            for line in body.split_inclusive(|&byte| byte == b'\n') {
                if line.starts_with(b".") {
                    out.push(b'.');
                }
                out.extend_from_slice(line);
            }
            if !body.is_empty() && !body.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
        }
        out
    }
}

/// The status line without CRLF.
impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.ok { "+OK" } else { "-ERR" };
        if self.text.is_empty() {
            write!(f, "{status}")
        } else {
            write!(f, "{status} {}", self.text)
        }
    }
}
// ANCHOR_END: response

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse(b"user Alice"), Ok(Command::User("Alice".into())));
        assert_eq!(
            parse(b"PASS two words "),
            Ok(Command::Pass("two words ".into()))
        );
        assert_eq!(parse(b"top 2 10"), Ok(Command::Top { msg: 2, lines: 10 }));
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"UIDL 3"), Ok(Command::Uidl(Some(3))));
        for bad in [
            "RETR", "RETR x", "RETR -1", "STAT 1", "TOP 1", "PASS", "USER", "HELO x", "",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse(b"\xff").is_err());
    }

    #[test]
    fn multi_line_responses_are_byte_stuffed_and_terminated() {
        let response = Response::multi("x", b"a\r\n.\r\n..b\r\n.c\r\n".to_vec());
        assert_eq!(
            response.to_wire(),
            b"+OK x\r\na\r\n..\r\n...b\r\n..c\r\n.\r\n".to_vec()
        );
        assert_eq!(
            Response::multi("none", Vec::new()).to_wire(),
            b"+OK none\r\n.\r\n"
        );
        assert_eq!(Response::err("no").to_wire(), b"-ERR no\r\n");
        assert_eq!(Response::ok("").to_wire(), b"+OK\r\n");
    }
}

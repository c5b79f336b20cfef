//! Replies: a three-digit code, an enhanced status code, and text, written in one place.
//!
//! Interface:
//! - `Reply` values whose names carry their code (`Reply::OK_250`, `Reply::BAD_SEQUENCE_503`).
//! - `Reply::text(..)` swaps in a more helpful text; the code never changes.
//! - `Display` writes the wire form, multi-line replies as `250-...` lines then `250 ...`.
//!
//! Standards: RFC 5321 §4.2, §4.2.1, §4.2.2, §4.2.3, RFC 3463 §3, RFC 2034 §3

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply. `text` may hold several lines separated by `\n`: each becomes one reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The RFC 3463 enhanced status code, or "" where RFC 2034 §3 leaves it out
    /// (the greeting, replies to HELO/EHLO, and 3xx replies).
    pub status: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            status,
            text: Cow::Borrowed(text),
        }
    }

    /// The same code and status with another text: coaching never changes the code.
    pub fn text(self, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            text: text.into(),
            ..self
        }
    }

    /// Add one more line at the end (multi-line replies such as EHLO, HELP, EXPN).
    pub fn line(mut self, line: impl AsRef<str>) -> Reply {
        let mut text = self.text.into_owned();
        text.push('\n');
        text.push_str(line.as_ref());
        self.text = Cow::Owned(text);
        self
    }

    /// 4xx and 5xx replies count towards the session's error limit.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// RFC 5321 §4.2.1: the first digit says success (2), intermediate (3), or failure (4, 5).
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    // RFC 5321 §4.2.2 lists the codes; §4.2.3 orders them. The name of each value carries its code.
    pub const HELP_214: Reply = Reply::new(214, "2.0.0", "");
    pub const CLOSING_221: Reply = Reply::new(221, "2.0.0", "Bye");
    pub const OK_250: Reply = Reply::new(250, "2.0.0", "OK");
    pub const SENDER_OK_250: Reply = Reply::new(250, "2.1.0", "Sender OK");
    pub const RECIPIENT_OK_250: Reply = Reply::new(250, "2.1.5", "Recipient OK");
    pub const CANNOT_VRFY_252: Reply = Reply::new(
        252,
        "2.5.0",
        "Cannot VRFY user, but will accept message and attempt delivery",
    );
    pub const START_MAIL_354: Reply = Reply::new(
        354,
        "",
        "End data with <CR><LF>.<CR><LF> (a line with only a dot)",
    );
    pub const TOO_MANY_CONNECTIONS_421: Reply =
        Reply::new(421, "4.3.2", "Too many connections, try again later");
    pub const TOO_MANY_FROM_ADDRESS_421: Reply = Reply::new(
        421,
        "4.7.0",
        "Too many connections from your address; close one of them and try again",
    );
    pub const TOO_MANY_JUNK_COMMANDS_421: Reply = Reply::new(
        421,
        "4.7.0",
        "Too many commands that send no mail (NOOP, RSET, VRFY, HELP, BDAT 0), closing connection",
    );
    pub const TIMEOUT_421: Reply = Reply::new(421, "4.4.2", "Timeout exceeded, closing connection");
    pub const TOO_MANY_ERRORS_421: Reply =
        Reply::new(421, "4.7.0", "Too many errors, closing connection");
    pub const LOCAL_ERROR_451: Reply = Reply::new(
        451,
        "4.3.0",
        "Local error in processing, message not delivered",
    );
    pub const TOO_MANY_RECIPIENTS_452: Reply = Reply::new(452, "4.5.3", "Too many recipients");
    pub const UNKNOWN_COMMAND_500: Reply = Reply::new(500, "5.5.2", "Command not recognized");
    pub const LINE_TOO_LONG_500: Reply = Reply::new(
        500,
        "5.5.6",
        "Line too long (the limit is 512 octets, RFC 5321 §4.5.3.1.4)",
    );
    pub const SYNTAX_501: Reply =
        Reply::new(501, "5.5.4", "Syntax error in parameters or arguments");
    pub const BAD_SENDER_501: Reply = Reply::new(501, "5.1.7", "Bad sender address syntax");
    pub const BAD_RECIPIENT_501: Reply = Reply::new(501, "5.1.3", "Bad recipient address syntax");
    pub const NOT_IMPLEMENTED_502: Reply = Reply::new(502, "5.5.1", "Command not implemented");
    pub const BAD_SEQUENCE_503: Reply = Reply::new(503, "5.5.1", "Bad sequence of commands");
    pub const NO_SUCH_USER_550: Reply = Reply::new(550, "5.1.1", "No such user here");
    pub const RELAY_DENIED_550: Reply = Reply::new(550, "5.7.1", "Relaying denied");
    pub const BARE_LINE_END_550: Reply = Reply::new(
        550,
        "5.5.2",
        "Message contains a bare CR or LF (RFC 5321 §2.3.8); nothing was stored",
    );
    pub const TOO_BIG_552: Reply = Reply::new(552, "5.3.4", "Message size exceeds fixed limit");
    pub const NEEDS_SMTPUTF8_553: Reply = Reply::new(
        553,
        "5.6.7",
        "Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531 §3.3)",
    );
    pub const NO_VALID_RECIPIENTS_554: Reply = Reply::new(554, "5.5.1", "No valid recipients");
    pub const NUL_IN_MESSAGE_554: Reply = Reply::new(
        554,
        "5.6.0",
        "Message contains a NUL byte; nothing was stored",
    );
    pub const TOO_MANY_HOPS_554: Reply = Reply::new(
        554,
        "5.4.6",
        "Too many hops (Received: headers), mail loop?",
    );
    pub const UNKNOWN_PARAMETER_555: Reply =
        Reply::new(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized");
}

// ANCHOR: display
impl fmt::Display for Reply {
    /// RFC 5321 §4.2: every line but the last has a hyphen after the code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let separator = if lines.peek().is_some() { '-' } else { ' ' };
            write!(f, "{}{}", self.code, separator)?;
            match (self.status.is_empty(), line.is_empty()) {
                (true, _) => write!(f, "{line}")?,
                (false, true) => write!(f, "{}", self.status)?,
                (false, false) => write!(f, "{} {line}", self.status)?,
            }
            f.write_str("\r\n")?;
        }
        Ok(())
    }
}
// ANCHOR_END: display

#[cfg(test)]
mod tests {
    use super::*;

    /// Each named reply carries the code its name says, and a status of the same class.
    #[test]
    fn names_match_codes() {
        let named = [
            ("HELP_214", Reply::HELP_214),
            ("CLOSING_221", Reply::CLOSING_221),
            ("OK_250", Reply::OK_250),
            ("SENDER_OK_250", Reply::SENDER_OK_250),
            ("RECIPIENT_OK_250", Reply::RECIPIENT_OK_250),
            ("CANNOT_VRFY_252", Reply::CANNOT_VRFY_252),
            ("START_MAIL_354", Reply::START_MAIL_354),
            ("TOO_MANY_CONNECTIONS_421", Reply::TOO_MANY_CONNECTIONS_421),
            (
                "TOO_MANY_FROM_ADDRESS_421",
                Reply::TOO_MANY_FROM_ADDRESS_421,
            ),
            (
                "TOO_MANY_JUNK_COMMANDS_421",
                Reply::TOO_MANY_JUNK_COMMANDS_421,
            ),
            ("TIMEOUT_421", Reply::TIMEOUT_421),
            ("TOO_MANY_ERRORS_421", Reply::TOO_MANY_ERRORS_421),
            ("LOCAL_ERROR_451", Reply::LOCAL_ERROR_451),
            ("TOO_MANY_RECIPIENTS_452", Reply::TOO_MANY_RECIPIENTS_452),
            ("UNKNOWN_COMMAND_500", Reply::UNKNOWN_COMMAND_500),
            ("LINE_TOO_LONG_500", Reply::LINE_TOO_LONG_500),
            ("SYNTAX_501", Reply::SYNTAX_501),
            ("BAD_SENDER_501", Reply::BAD_SENDER_501),
            ("BAD_RECIPIENT_501", Reply::BAD_RECIPIENT_501),
            ("NOT_IMPLEMENTED_502", Reply::NOT_IMPLEMENTED_502),
            ("BAD_SEQUENCE_503", Reply::BAD_SEQUENCE_503),
            ("NO_SUCH_USER_550", Reply::NO_SUCH_USER_550),
            ("RELAY_DENIED_550", Reply::RELAY_DENIED_550),
            ("BARE_LINE_END_550", Reply::BARE_LINE_END_550),
            ("TOO_BIG_552", Reply::TOO_BIG_552),
            ("NEEDS_SMTPUTF8_553", Reply::NEEDS_SMTPUTF8_553),
            ("NO_VALID_RECIPIENTS_554", Reply::NO_VALID_RECIPIENTS_554),
            ("NUL_IN_MESSAGE_554", Reply::NUL_IN_MESSAGE_554),
            ("TOO_MANY_HOPS_554", Reply::TOO_MANY_HOPS_554),
            ("UNKNOWN_PARAMETER_555", Reply::UNKNOWN_PARAMETER_555),
        ];
        for (name, reply) in named {
            assert!(
                name.ends_with(&reply.code.to_string()),
                "{name} is {}",
                reply.code
            );
            let class = reply.code / 100;
            if class == 3 {
                assert!(reply.status.is_empty(), "{name}: 3xx has no enhanced code");
            } else {
                assert!(reply.status.starts_with(&class.to_string()), "{name}");
            }
        }
    }

    #[test]
    fn single_line() {
        assert_eq!(Reply::OK_250.to_string(), "250 2.0.0 OK\r\n");
        assert_eq!(
            Reply::START_MAIL_354.to_string().split(' ').next(),
            Some("354")
        );
    }

    #[test]
    fn multi_line_has_hyphens_until_the_last() {
        let reply = Reply::new(250, "", "host greets you")
            .line("SIZE 100")
            .line("HELP");
        assert_eq!(
            reply.to_string(),
            "250-host greets you\r\n250-SIZE 100\r\n250 HELP\r\n"
        );
    }

    #[test]
    fn coaching_keeps_the_code() {
        let reply = Reply::BAD_SEQUENCE_503.text("Send MAIL FROM first");
        assert_eq!(reply.to_string(), "503 5.5.1 Send MAIL FROM first\r\n");
    }
}

//! The classroom console: `--trace` prints every line in and out with the state it moves the
//! session to, and `--explain` ends each reply with the RFC section and the next command.
//!
//! Interface:
//! - `client`, `server`, `transition`, `event`, `data_hint` format one console line each, as
//!   plain strings (coloured when `Style::colour` is set); pure functions, tested without I/O.
//! - `Console` prints those strings for one session: one write per block under the stdout lock,
//!   so the lines of several sessions interleave but never tear. With `--web` it also reports
//!   every line and move to the live board (`lab/live.rs`), so the page sees what `--trace` sees.
//! - `explain(reply, rfc, next, ehlo)` adds the `--explain` note to a reply; `next_expected`
//!   says in words what a client should send in a state.
//! - Every line a student's bytes reach is written with `visible::escape` (client lines, in the
//!   transcript notation: `{x08}` for a backspace, `{x1B}` for an escape) or `visible::sanitize`
//!   (reply lines), so nothing a student types can act on the teacher's terminal. A command's
//!   secret arrives already masked (`auth::Masked`) and shows as `{secret}`.
//!
//! Standards: RFC 5321 §4.1.4, §4.2, §4.1.1.1, RFC 4954 §4

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::lab::live::{Opening, Watch};
use crate::smtp::auth::Masked;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Role, StateName};
use crate::visible;

/// After this long without a line in DATA the console reminds the teacher how DATA ends (or
/// after half the idle timeout, when that is shorter, so the hint always comes before the 421).
pub const DATA_HINT_AFTER: Duration = Duration::from_secs(15);

/// The console shows this many lines of each message, then counts the rest: a projector has
/// room for a letter, not for a 10 MB attachment.
pub const MAX_DATA_LINES_SHOWN: usize = 40;

/// Colours for session ids, one per session in turn (ANSI SGR codes). Red and green are kept
/// for refusals and successes.
const SESSION_COLOURS: [&str; 6] = ["36", "35", "33", "34", "96", "95"];
const CLIENT_COLOUR: &str = "1";
const POSITIVE_COLOUR: &str = "32";
const NEGATIVE_COLOUR: &str = "31";
const QUIET_COLOUR: &str = "2";

/// A wrapped line keeps at least this many columns of text, however narrow the terminal.
const MIN_WRAP_COLUMNS: usize = 20;
/// Continuation lines of a wrapped line are indented this much under the text.
const WRAP_INDENT: &str = "  ";

/// How to print the lines of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours (stdout is a terminal).
    pub colour: bool,
    /// The session's number, which picks its colour.
    pub session: u64,
    /// Wrap lines at this many columns (the terminal's width), so a long EHLO reply or HELP
    /// line stays inside its session's colour on a projector; `None` never wraps (a pipe).
    pub width: Option<usize>,
}

impl Style {
    pub const PLAIN: Style = Style {
        colour: false,
        session: 0,
        width: None,
    };

    /// The style of session `session` on this process's stdout: colours and wrapping only
    /// when it is a terminal, since a file or a pipe should get the plain text.
    pub fn for_stdout(session: u64) -> Style {
        let terminal = std::io::stdout().is_terminal();
        Style {
            colour: terminal,
            session,
            width: if terminal { terminal_width() } else { None },
        }
    }

    /// `[S3] ` + body, each in its colour, and a newline; a body wider than the terminal goes
    /// on as indented lines with the same `[S3] ` in front.
    fn line(&self, id: &str, body_colour: &str, body: &str) -> String {
        let prefix_columns = id.chars().count() + 3;
        let room = self
            .width
            .map(|w| w.saturating_sub(prefix_columns).max(MIN_WRAP_COLUMNS));
        wrap(body, room)
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let indent = if i == 0 { "" } else { WRAP_INDENT };
                self.one_line(id, body_colour, &format!("{indent}{piece}"))
            })
            .collect()
    }

    fn one_line(&self, id: &str, body_colour: &str, body: &str) -> String {
        if !self.colour {
            return format!("[{id}] {body}\n");
        }
        let index = usize::try_from(self.session).unwrap_or(0) % SESSION_COLOURS.len();
        let id_colour = SESSION_COLOURS[index];
        format!("\x1b[{id_colour}m[{id}]\x1b[0m \x1b[{body_colour}m{body}\x1b[0m\n")
    }
}

/// `body` cut into pieces of at most `room` characters (continuations `WRAP_INDENT` less).
fn wrap(body: &str, room: Option<usize>) -> Vec<String> {
    let chars: Vec<char> = body.chars().collect();
    let Some(room) = room.filter(|&room| chars.len() > room) else {
        return vec![body.to_string()];
    };
    let mut pieces = vec![chars[..room].iter().collect::<String>()];
    let more = room.saturating_sub(WRAP_INDENT.len()).max(1);
    pieces.extend(chars[room..].chunks(more).map(|c| c.iter().collect()));
    pieces
}

/// The width of the terminal on stdout, if it is one (the TIOCGWINSZ ioctl).
fn terminal_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given, which lives here.
    let status = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (status == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

// ANCHOR: lines
/// `[S1] C: HELO client.example`, in the transcript notation; the secret of an AUTH line is
/// `{secret}`.
pub fn client(style: Style, id: &str, line: Masked) -> String {
    // An empty line is `C:` alone, as in the transcripts.
    let text = match line.to_string() {
        shown if shown.is_empty() => "C:".to_string(),
        shown => format!("C: {shown}"),
    };
    style.line(id, CLIENT_COLOUR, &text)
}

/// One `[S1] S: ...` line per line of a reply as written on the wire (CRLFs removed).
pub fn server(style: Style, id: &str, wire: &str) -> String {
    wire.lines()
        .map(|line| {
            let colour = if line.starts_with(['4', '5']) {
                NEGATIVE_COLOUR
            } else {
                POSITIVE_COLOUR
            };
            style.line(id, colour, &format!("S: {}", visible::sanitize(line)))
        })
        .collect()
}

/// `[S1]    Greeted → MailGiven  (RFC 5321 §4.1.1.2)`; a refusal leaves the state unchanged.
pub fn transition(
    style: Style,
    id: &str,
    (from, to): (StateName, StateName),
    rfc: &str,
    fault: Option<&str>,
) -> String {
    let moved = if from == to {
        format!("{from:?} (unchanged)")
    } else {
        format!("{from:?} → {to:?}")
    };
    let fault = fault.map_or(String::new(), |rule| format!("  scripted fault {rule}"));
    style.line(id, QUIET_COLOUR, &format!("   {moved}  ({rfc}){fault}"))
}
// ANCHOR_END: lines

/// `[S1] -- connect from 127.0.0.1:40112`: what happens to the connection itself.
pub fn event(style: Style, id: &str, text: &str) -> String {
    style.line(id, QUIET_COLOUR, &format!("-- {text}"))
}

/// The reminder for a student who typed a message and forgot the lone dot.
pub fn data_hint(style: Style, id: &str) -> String {
    event(style, id, DATA_HINT)
}

/// What the reminder says, on the console and on the web view.
const DATA_HINT: &str = "still in DATA: end the message with a line holding only a dot";

// ANCHOR: explain
/// What a client should send next, in words, in each state.
fn next_expected(state: StateName) -> &'static str {
    match state {
        StateName::Connected => "HELO or EHLO",
        StateName::Greeted => "MAIL FROM",
        StateName::MailGiven => "RCPT TO",
        StateName::RcptGiven => "RCPT TO or DATA",
        StateName::Data => "the message, then a line with only a dot",
        StateName::Chunking => "BDAT",
        StateName::Authenticating => "the SASL response",
        StateName::Closed => "nothing, the connection closes",
    }
}

/// `--explain`: end the reply with `[RFC 5321 §4.1.1.2; next: RCPT TO]`. The code and status
/// stay, so real clients still work. The note goes on the last line, except after EHLO, whose
/// later lines are extension keywords that clients parse: there it ends the first line, the
/// free-text greeting (RFC 5321 §4.1.1.1). A 334 challenge is base64 and is never touched.
pub fn explain(reply: Reply, rfc: &str, next: StateName, ehlo: bool) -> Reply {
    if reply.code == 334 {
        return reply;
    }
    let note = format!("[{rfc}; next: {}]", next_expected(next));
    let text = reply.text.to_string();
    let (head, tail) = match text.split_once('\n') {
        Some((first, rest)) if ehlo => (first.to_string(), format!("\n{rest}")),
        _ => (text, String::new()),
    };
    let joined = if head.is_empty() {
        note
    } else {
        format!("{head} {note}")
    };
    reply.text(format!("{joined}{tail}"))
}
// ANCHOR_END: explain

/// The console of one session: printed with `--trace`, shown on the web view with `--web`.
#[derive(Clone)]
pub struct Console {
    pub style: Style,
    pub id: String,
    /// `--trace`: print on stdout.
    to_stdout: bool,
    /// `--web`: the same events on the live board.
    pub live: Option<Watch>,
}

impl Console {
    /// The console of an SMTP session, when `--trace` prints it or `--web` shows it.
    pub fn open(
        config: &Config,
        style: Style,
        id: &str,
        peer: SocketAddr,
        role: Role,
    ) -> Option<Console> {
        let live = config.live.open(Opening {
            id: id.to_string(),
            peer,
            role: role.name(),
            machine: "smtp",
            state: format!("{:?}", StateName::Connected),
        });
        (config.trace || live.is_some()).then(|| Console {
            style,
            id: id.to_string(),
            to_stdout: config.trace,
            live,
        })
    }

    /// Write a block of lines with one call under the stdout lock: the block never tears.
    /// A console that cannot be written must not end a session, so errors are ignored.
    fn print(&self, block: impl FnOnce() -> String) {
        if !self.to_stdout {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(block().as_bytes());
        let _ = out.flush();
    }

    /// A line of message text, or a note in place of one: shown whole, escaped.
    pub fn client(&self, bytes: &[u8]) {
        self.command(Masked::new(bytes, None));
    }

    /// A command line, its secret already masked.
    pub fn command(&self, line: Masked) {
        if let Some(live) = &self.live {
            live.command(line);
        }
        self.print(|| client(self.style, &self.id, line));
    }

    /// A line of a message: on the web view only where mail may be shown (`Board::on`).
    pub fn data(&self, bytes: &[u8]) {
        if let Some(live) = &self.live {
            live.data(bytes);
        }
        self.print(|| client(self.style, &self.id, Masked::new(bytes, None)));
    }

    pub fn server(&self, wire: &str) {
        if let Some(live) = &self.live {
            live.server(wire);
        }
        self.print(|| server(self.style, &self.id, wire));
    }

    pub fn transition(&self, states: (StateName, StateName), rfc: &str, fault: Option<&str>) {
        if let Some(live) = &self.live {
            let (from, to) = states;
            live.moved(&format!("{from:?}"), &format!("{to:?}"), rfc);
        }
        self.print(|| transition(self.style, &self.id, states, rfc, fault));
    }

    pub fn event(&self, text: &str) {
        if let Some(live) = &self.live {
            live.event(text);
        }
        self.print(|| event(self.style, &self.id, text));
    }

    pub fn data_hint(&self) {
        if let Some(live) = &self.live {
            live.event(DATA_HINT);
        }
        self.print(|| data_hint(self.style, &self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StateName::*;

    #[test]
    fn plain_lines() {
        let p = Style::PLAIN;
        assert_eq!(
            client(p, "S1", Masked::new(b"HELO x", None)),
            "[S1] C: HELO x\n"
        );
        assert_eq!(client(p, "S1", Masked::new(b"", None)), "[S1] C:\n");
        assert_eq!(
            server(p, "S2", "250-a\r\n250 b\r\n"),
            "[S2] S: 250-a\n[S2] S: 250 b\n"
        );
        assert_eq!(
            transition(p, "S1", (Greeted, MailGiven), "RFC 5321 §4.1.1.2", None),
            "[S1]    Greeted → MailGiven  (RFC 5321 §4.1.1.2)\n"
        );
        assert_eq!(
            transition(
                p,
                "S1",
                (RcptGiven, RcptGiven),
                "RFC 5321 §4.1.1.3",
                Some("rcpt:3=452")
            ),
            "[S1]    RcptGiven (unchanged)  (RFC 5321 §4.1.1.3)  scripted fault rcpt:3=452\n"
        );
        assert_eq!(event(p, "S1", "connect"), "[S1] -- connect\n");
        assert!(data_hint(p, "S3").starts_with("[S3] -- still in DATA"));
    }

    #[test]
    fn long_lines_wrap_at_the_terminal_width_under_their_session_id() {
        let narrow = Style {
            width: Some(30),
            ..Style::PLAIN
        };
        let text = client(
            narrow,
            "S1",
            Masked::new(b"MAIL FROM:<a-long-address@example.com>", None),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            ["[S1] C: MAIL FROM:<a-long-addr", "[S1]   ess@example.com>",]
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 30));
        assert_eq!(
            client(narrow, "S1", Masked::new(b"QUIT", None)),
            "[S1] C: QUIT\n"
        );
        let piped = client(
            Style::PLAIN,
            "S1",
            Masked::new("x".repeat(300).as_bytes(), None),
        );
        assert_eq!(piped.lines().count(), 1, "a pipe never wraps");
    }

    #[test]
    fn colours_differ_per_session_and_per_kind() {
        let one = Style {
            colour: true,
            session: 1,
            width: None,
        };
        let two = Style {
            colour: true,
            session: 2,
            width: None,
        };
        let a = client(one, "S1", Masked::new(b"NOOP", None));
        let b = client(two, "S2", Masked::new(b"NOOP", None));
        assert!(a.contains("\x1b["), "{a:?}");
        assert_ne!(a.split(']').next(), b.split(']').next());
        let ok = server(one, "S1", "250 OK\r\n");
        let refused = server(one, "S1", "550 no\r\n");
        assert!(ok.contains("\x1b[32m") && refused.contains("\x1b[31m"));
        assert!(a.ends_with("\x1b[0m\n"));
    }

    #[test]
    fn student_bytes_cannot_reach_the_terminal_raw() {
        let p = Style::PLAIN;
        let line = |bytes| client(p, "S1", Masked::new(bytes, None));
        assert_eq!(line(b"HEL\x08LO"), "[S1] C: HEL{x08}LO\n");
        assert_eq!(line(b"\x1b]0;OWNED\x07"), "[S1] C: {x1B}]0;OWNED{x07}\n");
        assert_eq!(line("Grüße".as_bytes()), "[S1] C: Grüße\n");
        assert_eq!(
            client(p, "S1", Masked::new(b"AUTH PLAIN AGFs", Some(11))),
            "[S1] C: AUTH PLAIN {secret}\n"
        );
        assert_eq!(
            server(p, "S1", "500 \u{9b}2J\r\n"),
            "[S1] S: 500 {xC2}{x9B}2J\n"
        );
    }

    #[test]
    fn explain_keeps_the_code_and_notes_the_next_command() {
        let reply = explain(Reply::SENDER_OK_250, "RFC 5321 §4.1.1.2", MailGiven, false);
        assert_eq!(
            reply.to_string(),
            "250 2.1.0 Sender OK [RFC 5321 §4.1.1.2; next: RCPT TO]\r\n"
        );
        let help = Reply::HELP_214.text("a").line("b");
        assert_eq!(
            explain(help, "RFC 5321 §4.1.1.8", Greeted, false).to_string(),
            "214-2.0.0 a\r\n214 2.0.0 b [RFC 5321 §4.1.1.8; next: MAIL FROM]\r\n"
        );
        let ehlo = Reply::new(250, "", "host greets c")
            .line("SIZE 10")
            .line("HELP");
        assert_eq!(
            explain(ehlo, "RFC 5321 §4.1.1.1", Greeted, true).to_string(),
            "250-host greets c [RFC 5321 §4.1.1.1; next: MAIL FROM]\r\n250-SIZE 10\r\n250 HELP\r\n"
        );
        let challenge = Reply::new(334, "", "").text("VXNlcm5hbWU6");
        assert_eq!(
            explain(challenge.clone(), "RFC 4954 §4", Authenticating, false),
            challenge
        );
        assert_eq!(
            explain(Reply::new(250, "2.0.0", ""), "R", Greeted, false).to_string(),
            "250 2.0.0 [R; next: MAIL FROM]\r\n"
        );
    }
}

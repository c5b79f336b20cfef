//! Replay: plays the `C:` lines of a transcript against any SMTP (or POP3) server and diffs
//! the replies.
//!
//! Interface:
//! - `replay(transcript, server, options)` runs one transcript and returns a `ReplayReport`.
//! - `ReplayReport::is_match` / `first_mismatch` / `render(color)`: the verdict and a unified diff
//!   (`-` the expected `S:` line with its line number, `+` what the server said).
//! - `replay_main(args)`: `smtplab replay FILE... --server HOST:PORT [--codes-only] [--record]
//!   [--color auto|always|never]`; exit 0 when every file matches, 1 on a difference, 2 on a
//!   usage or I/O error.
//!
//! The rule for sending: consecutive `C:` lines go out in one write (so pipelined commands and
//! DATA content are sent as a client would), then one reply is read for each reply in the
//! following `S:` lines. The first `S:` lines, before any `C:`, are the greeting.
//!
//! After an SMTP greeting a replay sends `recorder::REPLAY_MARKER`, a NOOP whose 250 is not
//! compared, so a server recording its sessions leaves the replay out (unless `--record`).
//! Every line of the report that holds a server's or a transcript's text is escaped
//! (`visible`): a reply cannot send the terminal a control sequence.
//!
//! With `# protocol: pop3` the server's lines are not grouped by reply codes (POP3 has none):
//! each run of `S:` lines is one "reply", and exactly that many lines are read for it. The same
//! holds for `# protocol: imap`, whose status (for `--codes-only`) is the OK, NO or BAD of the
//! reply's last, tagged line.
//!
//! Standards: RFC 5321 §4.2, §4.5.3.2, RFC 2920 §3.1, RFC 1939 §3, RFC 9051 §2.2.2, §7.1

use std::io::{self, BufReader, IsTerminal, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use getopts::Options;

use crate::lab::recorder::REPLAY_MARKER;
use crate::lab::transcript::{
    align, is_last_reply_line, reply_code, ClientLine, Entry, Line, LineEnding, Pair, Pattern,
    Protocol, Transcript,
};
use crate::relay::client::{self, MAX_REPLY_LINE_READ};
use crate::visible::sanitize;

/// How long to wait for one reply line, and for a connection.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one transcript may take altogether.
const FILE_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Compare reply codes only, for servers whose reply texts differ from the transcript's.
    pub codes_only: bool,
    pub read_timeout: Duration,
    pub deadline: Duration,
    /// Let a server with `--transcripts` record this replay. Otherwise the replay first sends
    /// `recorder::REPLAY_MARKER` after the greeting, and the recorder leaves it out.
    pub record: bool,
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions {
            codes_only: false,
            read_timeout: READ_TIMEOUT,
            deadline: FILE_DEADLINE,
            record: false,
        }
    }
}

/// The outcome of replaying one transcript.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub server: SocketAddr,
    /// Replies that matched their `S:` lines.
    pub replies_matched: usize,
    /// One hunk per exchange whose replies differ.
    hunks: Vec<Hunk>,
    /// Where replay had to stop early without a failure (TLS, a masked secret).
    pub skipped: Option<Skipped>,
    /// The server could not be reached at all.
    pub error: Option<String>,
}

/// The part of a transcript that replay could not play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The line where replay stopped.
    pub line_no: usize,
    /// How many transcript lines were not played.
    pub lines: usize,
    /// Why, as a machine can tell it (a test may accept a stop at TLS but not at a secret).
    pub cause: SkipCause,
    pub reason: &'static str,
}

/// What made replay stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipCause {
    /// The `== TLS ==` marker: replay does not speak TLS.
    Tls,
    /// A `C:` line with a masked `{secret}`, which cannot be sent.
    Secret,
}

/// The lines sent in one exchange and the replies that differ, diff style.
#[derive(Debug, Clone)]
struct Hunk {
    /// The first transcript line that did not match.
    pub first_mismatch: usize,
    pub lines: Vec<DiffLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DiffLine {
    /// A line sent or a reply line that matched, shown for context.
    Same(String),
    /// An `S:` line of the transcript that the server did not say.
    Expected { line_no: usize, text: String },
    /// What the server said instead (or why it said nothing).
    Actual(String),
}

/// Some `C:` lines and the `S:` lines that follow them.
#[derive(Debug, Default)]
struct Exchange<'a> {
    send: Vec<&'a ClientLine>,
    /// The expected replies, each a list of (line number, pattern) for its lines.
    replies: Vec<Vec<(usize, &'a Pattern)>>,
}

// ---------------------------------------------------------------------------------------------
// Planning: from transcript lines to exchanges
// ---------------------------------------------------------------------------------------------

/// Cuts the transcript into exchanges, up to the first line replay cannot play.
fn plan(transcript: &Transcript) -> (Vec<Exchange<'_>>, Option<Skipped>) {
    let entries = &transcript.entries;
    let protocol = transcript.header.protocol;
    let mut exchanges = Vec::new();
    let mut current = Exchange::default();
    for (index, Entry { line_no, line }) in entries.iter().enumerate() {
        let (lines_left, cause, reason) = match line {
            Line::Tls => (
                entries.len() - index - 1,
                SkipCause::Tls,
                "the session switched to TLS here, and replay does not speak TLS",
            ),
            Line::Client(client) if client.secret => (
                entries.len() - index,
                SkipCause::Secret,
                "this line holds a masked {secret}, which replay cannot send",
            ),
            Line::Client(client) => {
                if !current.replies.is_empty() {
                    exchanges.push(std::mem::take(&mut current));
                }
                current.send.push(client);
                continue;
            }
            Line::Server(pattern) => {
                current.add_reply_line(*line_no, pattern, protocol);
                continue;
            }
        };
        exchanges.push(current);
        let skipped = Skipped {
            line_no: *line_no,
            lines: lines_left,
            cause,
            reason,
        };
        return (exchanges, Some(skipped));
    }
    exchanges.push(current);
    (exchanges, None)
}

impl<'a> Exchange<'a> {
    /// Adds an `S:` line to the reply being built, or starts the next reply. In POP3 every
    /// `S:` line after the client's lines belongs to the one reply of this exchange.
    fn add_reply_line(&mut self, line_no: usize, pattern: &'a Pattern, protocol: Protocol) {
        let reply_done = match (protocol, self.replies.last().and_then(|reply| reply.last())) {
            (_, None) => true,
            (Protocol::Pop3 | Protocol::Imap, Some(_)) => false,
            (Protocol::Smtp, Some((_, last))) => is_last_reply_line(last.source()),
        };
        if reply_done {
            self.replies.push(Vec::new());
        }
        if let Some(reply) = self.replies.last_mut() {
            reply.push((line_no, pattern));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------------

/// The client side of the connection, with a timeout on every read and a deadline for the file.
struct Connection {
    reader: BufReader<TcpStream>,
    read_timeout: Duration,
    deadline: Instant,
    protocol: Protocol,
}

impl Connection {
    fn open(
        server: SocketAddr,
        options: &ReplayOptions,
        protocol: Protocol,
    ) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&server, options.read_timeout)?;
        stream.set_write_timeout(Some(options.read_timeout))?;
        Ok(Connection {
            reader: BufReader::new(stream),
            read_timeout: options.read_timeout,
            deadline: Instant::now() + options.deadline,
            protocol,
        })
    }

    /// Sends the lines in one write; after a line marked `{EOF}` the sending side is closed.
    /// A failed write is not reported here: the read that follows shows what happened.
    fn send(&mut self, lines: &[&ClientLine]) {
        let wire: Vec<u8> = lines
            .iter()
            .filter_map(|line| line.wire_bytes())
            .flatten()
            .collect();
        let stream = self.reader.get_mut();
        let _ = stream.write_all(&wire);
        if lines.iter().any(|line| line.ending == LineEnding::None) {
            let _ = stream.shutdown(Shutdown::Write);
        }
    }

    /// Says "this is a replay" with a NOOP the recorder knows; its 250 is read and not compared.
    /// It ends as the transcript's first line does, so a netcat (bare LF) session stays one.
    fn mark_as_replay(&mut self, ending: LineEnding) {
        let marker = ClientLine {
            bytes: REPLAY_MARKER.as_bytes().to_vec(),
            secret: false,
            ending,
        };
        let _ = self
            .reader
            .get_mut()
            .write_all(&marker.wire_bytes().unwrap_or_default());
        let _ = self.read_reply(1);
    }

    /// Reads the reply `expected` stands for: in SMTP the lines up to the one without a `-`
    /// after the code; in POP3 exactly as many lines as were expected.
    fn read_reply(&mut self, expected: usize) -> Result<Vec<String>, String> {
        if self.protocol != Protocol::Smtp {
            return (0..expected).map(|_| self.read_line()).collect();
        }
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            let last = is_last_reply_line(&line);
            lines.push(line);
            if last {
                return Ok(lines);
            }
        }
    }

    /// Reads one line ending in CRLF or LF (`client::read_line`, which cuts a long one); the
    /// error text says why there is none.
    fn read_line(&mut self) -> Result<String, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("(the time for this transcript ran out)".to_string());
        }
        let timeout = left.min(self.read_timeout);
        if let Err(error) = self.reader.get_ref().set_read_timeout(Some(timeout)) {
            return Err(format!("(connection error: {error})"));
        }
        client::read_line(&mut self.reader).map_err(|error| match error.kind() {
            io::ErrorKind::UnexpectedEof => "(the server closed the connection)".to_string(),
            io::ErrorKind::InvalidData => {
                format!("(a reply line longer than {MAX_REPLY_LINE_READ} bytes)")
            }
            _ if is_timeout(&error) => format!("(no reply within {} s)", timeout.as_secs_f32()),
            _ => format!("(connection error: {error})"),
        })
    }
}

/// How the transcript's first client line ends (CRLF when it has none).
fn first_ending(transcript: &Transcript) -> LineEnding {
    let first = transcript
        .entries
        .iter()
        .find_map(|entry| match &entry.line {
            Line::Client(client) => Some(client.ending),
            _ => None,
        });
    match first {
        Some(LineEnding::Lf) => LineEnding::Lf,
        _ => LineEnding::CrLf,
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------------------------
// Replaying and comparing
// ---------------------------------------------------------------------------------------------

/// Replays `transcript` against `server` and compares every reply with its `S:` lines.
pub fn replay(
    transcript: &Transcript,
    server: SocketAddr,
    options: &ReplayOptions,
) -> ReplayReport {
    let (exchanges, skipped) = plan(transcript);
    let mut report = ReplayReport {
        server,
        replies_matched: 0,
        hunks: Vec::new(),
        skipped,
        error: None,
    };
    let protocol = transcript.header.protocol;
    let mut connection = match Connection::open(server, options, protocol) {
        Ok(connection) => connection,
        Err(error) => {
            report.error = Some(format!("cannot connect to {server}: {error}"));
            return report;
        }
    };
    for (index, exchange) in exchanges.iter().enumerate() {
        connection.send(&exchange.send);
        if !report.check(exchange, &mut connection, options.codes_only) {
            break;
        }
        let after_greeting = index == 0 && exchange.send.is_empty();
        if after_greeting && protocol == Protocol::Smtp && !options.record {
            connection.mark_as_replay(first_ending(transcript));
        }
    }
    report
}

impl ReplayReport {
    /// Reads the replies of one exchange and records a hunk if any differs.
    /// Returns false when the connection is no longer usable.
    fn check(
        &mut self,
        exchange: &Exchange,
        connection: &mut Connection,
        codes_only: bool,
    ) -> bool {
        let mut lines: Vec<DiffLine> = exchange
            .send
            .iter()
            .map(|client| DiffLine::Same(client.to_string()))
            .collect();
        let mut first_mismatch = None;
        let mut usable = true;
        for expected in &exchange.replies {
            let (same, diff) = match connection.read_reply(expected.len()) {
                Ok(actual) if codes_only => diff_status(expected, &actual, connection.protocol),
                Ok(actual) => diff_reply(expected, &actual),
                Err(reason) => {
                    usable = false;
                    let mut diff = replaced(expected, &[]);
                    diff.push(DiffLine::Actual(reason));
                    (false, diff)
                }
            };
            if same {
                self.replies_matched += 1;
            } else {
                first_mismatch = first_mismatch.or(mismatch_line(&diff, expected));
            }
            lines.extend(diff);
            if !usable {
                break;
            }
        }
        if let Some(first_mismatch) = first_mismatch {
            self.hunks.push(Hunk {
                first_mismatch,
                lines,
            });
        }
        usable
    }

    /// True when every reply matched (lines skipped for TLS or a secret do not count against it).
    pub fn is_match(&self) -> bool {
        self.error.is_none() && self.hunks.is_empty()
    }

    /// The transcript line of the first `S:` line that did not match.
    pub fn first_mismatch(&self) -> Option<usize> {
        self.hunks.first().map(|hunk| hunk.first_mismatch)
    }
}

/// `codes_only`: compares one reply by its status alone, the code of its last line in SMTP,
/// `+OK` or `-ERR` at the start of its first line in POP3.
fn diff_status(
    expected: &[(usize, &Pattern)],
    actual: &[String],
    protocol: Protocol,
) -> (bool, Vec<DiffLine>) {
    let wanted = match protocol {
        Protocol::Smtp => expected
            .last()
            .and_then(|(_, pattern)| pattern.reply_code())
            .map(|code| code.to_string()),
        Protocol::Pop3 => expected
            .first()
            .and_then(|(_, pattern)| pop3_status(pattern.source())),
        Protocol::Imap => expected
            .last()
            .and_then(|(_, pattern)| imap_status(pattern.source())),
    };
    let got = match protocol {
        Protocol::Smtp => actual
            .last()
            .and_then(|line| reply_code(line))
            .map(|code| code.to_string()),
        Protocol::Pop3 => actual.first().and_then(|line| pop3_status(line)),
        Protocol::Imap => actual.last().and_then(|line| imap_status(line)),
    };
    // An S: line that starts with a placeholder accepts any status.
    let same = wanted.is_none() || wanted == got;
    let lines = if same {
        actual
            .iter()
            .map(|line| DiffLine::Same(said(line)))
            .collect()
    } else {
        replaced(expected, actual)
    };
    (same, lines)
}

/// The status indicator of a POP3 response line (RFC 1939 §3): `+OK` or `-ERR`.
fn pop3_status(line: &str) -> Option<String> {
    let word = line.split(' ').next()?;
    matches!(word, "+OK" | "-ERR").then(|| word.to_string())
}

/// The status of an IMAP reply's last line (RFC 9051 §7.1): `OK`, `NO`, `BAD` or `BYE` after
/// the tag (or `*`); a continuation request is `+`.
fn imap_status(line: &str) -> Option<String> {
    let mut words = line.split(' ');
    let first = words.next()?;
    if first == "+" {
        return Some(first.to_string());
    }
    let word = words.next()?;
    matches!(word, "OK" | "NO" | "BAD" | "BYE" | "PREAUTH").then(|| word.to_string())
}

/// Compares one reply line by line, aligned, so an extra EHLO keyword shows as one `+` line.
fn diff_reply(expected: &[(usize, &Pattern)], actual: &[String]) -> (bool, Vec<DiffLine>) {
    let pairs = align(expected.len(), actual.len(), |i, j| {
        expected[i].1.matches(&actual[j])
    });
    let same = pairs.iter().all(|pair| matches!(pair, Pair::Both(..)));
    let lines = pairs.iter().map(|pair| match *pair {
        Pair::Both(_, j) => DiffLine::Same(said(&actual[j])),
        Pair::OnlyLeft(i) => removed(expected[i]),
        Pair::OnlyRight(j) => DiffLine::Actual(said(&actual[j])),
    });
    (same, lines.collect())
}

/// The whole expected reply as `-` lines, then the whole actual reply as `+` lines.
fn replaced(expected: &[(usize, &Pattern)], actual: &[String]) -> Vec<DiffLine> {
    let added = actual.iter().map(|line| DiffLine::Actual(said(line)));
    expected
        .iter()
        .map(|&line| removed(line))
        .chain(added)
        .collect()
}

fn removed((line_no, pattern): (usize, &Pattern)) -> DiffLine {
    let text = Line::Server(pattern.clone()).to_string();
    DiffLine::Expected { line_no, text }
}

/// What the server said, written as an `S:` line that could be pasted into a transcript.
fn said(text: &str) -> String {
    Line::Server(Pattern::literal(text)).to_string()
}

/// The line to name for a reply that differs: its first `-` line, else its first line.
fn mismatch_line(diff: &[DiffLine], expected: &[(usize, &Pattern)]) -> Option<usize> {
    let removed = diff.iter().find_map(|line| match line {
        DiffLine::Expected { line_no, .. } => Some(*line_no),
        _ => None,
    });
    removed.or(expected.first().map(|(line_no, _)| *line_no))
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

impl ReplayReport {
    /// A verdict line, then the diff and any skipped part; ANSI colours when `color`.
    pub fn render(&self, color: bool) -> String {
        let paint = |code: &str, text: &str| {
            if color {
                format!("{code}{text}{RESET}")
            } else {
                text.to_string()
            }
        };
        let mut out = String::new();
        if let Some(error) = &self.error {
            out.push_str(&paint(RED, &format!("error: {error}")));
            out.push('\n');
        } else if let Some(line_no) = self.first_mismatch() {
            out.push_str(&paint(
                RED,
                &format!("FAIL: first difference at line {line_no}"),
            ));
            out.push_str(&format!(
                "\n--- expected (transcript)\n+++ actual ({})\n",
                self.server
            ));
        } else {
            let verdict = format!("ok: {} replies matched", self.replies_matched);
            out.push_str(&paint(GREEN, &verdict));
            out.push('\n');
        }
        for hunk in &self.hunks {
            out.push_str(&paint(CYAN, &format!("@@ line {} @@", hunk.first_mismatch)));
            out.push('\n');
            for line in &hunk.lines {
                let text = match line {
                    DiffLine::Same(text) => format!(" {text}"),
                    DiffLine::Expected { line_no, text } => {
                        paint(RED, &format!("-{text}    (line {line_no})"))
                    }
                    DiffLine::Actual(text) => paint(GREEN, &format!("+{text}")),
                };
                out.push_str(&text);
                out.push('\n');
            }
        }
        if let Some(skipped) = &self.skipped {
            out.push_str(&format!(
                "skipped {} lines from line {}: {}\n",
                skipped.lines, skipped.line_no, skipped.reason
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The `replay` subcommand
// ---------------------------------------------------------------------------------------------

const EXIT_MATCH: i32 = 0;
const EXIT_DIFFERENT: i32 = 1;
const EXIT_ERROR: i32 = 2;

/// `smtplab replay FILE... --server HOST:PORT [--codes-only] [--color WHEN]`;
/// `args` are the arguments after `replay`. Returns the exit status.
pub fn replay_main(args: &[String]) -> i32 {
    let options = command_line_options();
    let usage = options.usage("Usage: smtplab replay FILE... --server HOST:PORT [options]");
    let matches = match options.parse(args) {
        Ok(matches) => matches,
        Err(error) => return usage_error(&error.to_string(), &usage),
    };
    if matches.opt_present("help") {
        println!("{usage}");
        return EXIT_MATCH;
    }
    let server = match matches.opt_str("server").map(|s| resolve(&s)) {
        Some(Ok(server)) => server,
        Some(Err(error)) => return usage_error(&error, &usage),
        None => return usage_error("--server HOST:PORT is required", &usage),
    };
    let color = match matches.opt_str("color").as_deref() {
        None | Some("auto") => io::stdout().is_terminal(),
        Some("always") => true,
        Some("never") => false,
        Some(other) => {
            return usage_error(
                &format!("--color {other}: use auto, always or never"),
                &usage,
            )
        }
    };
    if matches.free.is_empty() {
        return usage_error("name at least one transcript FILE", &usage);
    }
    let replay_options = ReplayOptions {
        codes_only: matches.opt_present("codes-only"),
        record: matches.opt_present("record"),
        ..ReplayOptions::default()
    };
    let statuses = matches
        .free
        .iter()
        .map(|file| replay_file(Path::new(file), server, &replay_options, color));
    statuses.fold(EXIT_MATCH, i32::max)
}

fn command_line_options() -> Options {
    let mut options = Options::new();
    options.optopt(
        "s",
        "server",
        "the SMTP server to replay against",
        "HOST:PORT",
    );
    options.optflag("", "codes-only", "compare reply codes only, not the texts");
    options.optflag(
        "",
        "record",
        "let a server with --transcripts record this replay too",
    );
    options.optopt(
        "",
        "color",
        "colour the diff: auto (default), always, never",
        "WHEN",
    );
    options.optflag("h", "help", "print this help");
    options
}

fn usage_error(message: &str, usage: &str) -> i32 {
    eprintln!("smtplab replay: {message}\n\n{usage}");
    EXIT_ERROR
}

fn resolve(server: &str) -> Result<SocketAddr, String> {
    let mut addresses = server
        .to_socket_addrs()
        .map_err(|error| format!("--server {server}: {error}"))?;
    addresses
        .next()
        .ok_or_else(|| format!("--server {server}: no address found"))
}

/// Replays one file and prints its report; returns its exit status.
fn replay_file(path: &Path, server: SocketAddr, options: &ReplayOptions, color: bool) -> i32 {
    let transcript = match Transcript::load(path) {
        Ok(transcript) => transcript,
        Err(error) => {
            eprintln!("{}", sanitize(&format!("{}: {error}", path.display())));
            return EXIT_ERROR;
        }
    };
    let report = replay(&transcript, server, options);
    let name = sanitize(&path.display().to_string());
    print!("{name}: {}", report.render(color));
    match (&report.error, report.is_match()) {
        (Some(_), _) => EXIT_ERROR,
        (None, true) => EXIT_MATCH,
        (None, false) => EXIT_DIFFERENT,
    }
}

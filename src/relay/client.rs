//! The SMTP client: the side of a conversation that sends commands and reads replies. The relay
//! uses it to hand a queued message to the next hop; the bench and replay tools read replies
//! with the same `read_reply`.
//!
//! Interface:
//! - `read_reply(reader)` reads one reply, multi-line replies included, with limits;
//!   `read_reply_lines(reader)` returns the same reply's lines as they came (for replay);
//!   `expect(reader, codes, after)` reads a reply and fails unless its code is one of `codes`;
//!   `read_line(reader)` reads one line with the same limits (POP3 replay uses it).
//! - `SmtpClient::connect(target, options, tag)` opens a conversation (from the host's own
//!   address when it has one); `send_message(..)` carries one queued message to that host:
//!   greeting, EHLO, STARTTLS when offered, MAIL FROM with the parameters the message needs,
//!   RCPT TO, then DATA (or BDAT for `BODY=BINARYMIME`), and QUIT.
//! - `wire_data(content)` turns stored `\n` lines into the DATA stream: CRLF, dot-stuffed, `.`;
//!   `WireEncoder` does the same a chunk at a time, so a queued message is never held whole.
//! - `TlsPolicy` is `--relay-tls none|may|encrypt` (Postfix's `smtp_tls_security_level`).
//!
//! Every read and write stops at the transaction's deadline as well as at the step's own
//! timeout: a host that sends one octet every few seconds keeps a worker only so long.
//!
//! The client states at every step what it expects (`cmd(OK, "MAIL FROM", ...)`), as Go's
//! net/smtp does. Before MAIL FROM a failure means "this host cannot take mail now": the next
//! host is tried. From MAIL FROM on, the host has answered for the message: 2xx is done, 4xx is
//! tried again later, 5xx is bounced (RFC 5321 §4.2.1).
//!
//! Standards: RFC 5321 §2.3.8, §3.2, §4.2, §4.2.1, §4.5.2, §4.5.3.1.5, §4.5.3.2, RFC 3207 §4, §4.2,
//!   RFC 3030 §2, §3, RFC 6152 §3, RFC 6531 §3.2, RFC 1870 §6, RFC 3461 §5.2.1

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use log::debug;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

use crate::relay::queue::{Entry, Rcpt};
use crate::smtp::body::READ_CHUNK;
use crate::smtp::extensions::BodyType;

// RFC 5321 §4.5.3.2: how long a client waits for each reply before giving up on the host.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5 * 60); // §4.5.3.2.1
const MAIL_TIMEOUT: Duration = Duration::from_secs(5 * 60); // §4.5.3.2.2
const RCPT_TIMEOUT: Duration = Duration::from_secs(5 * 60); // §4.5.3.2.3
const DATA_TIMEOUT: Duration = Duration::from_secs(2 * 60); // §4.5.3.2.4
const DATA_BLOCK_TIMEOUT: Duration = Duration::from_secs(3 * 60); // §4.5.3.2.5
const DATA_END_TIMEOUT: Duration = Duration::from_secs(10 * 60); // §4.5.3.2.6
/// Not in the RFC: a host that does not accept the TCP connection within this is skipped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF. Longer lines are cut
/// (not refused: the code is what matters), but a host cannot make us read without end.
const MAX_REPLY_LINE: usize = 512;
/// A reply line longer than this many octets ends the conversation.
pub const MAX_REPLY_LINE_READ: usize = 16 * MAX_REPLY_LINE;
/// More lines than this in one reply ends the conversation (EHLO answers have a dozen).
const MAX_REPLY_LINES: usize = 100;

/// The codes a step accepts: "250" for most, "250 or 251" for RCPT (251: "will forward").
const OK: &[u16] = &[250];
const RCPT_OK: &[u16] = &[250, 251];

/// `--relay-tls`: when the relay uses STARTTLS (RFC 3207) towards the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Never, even when offered.
    None,
    /// When offered; the certificate is not checked (opportunistic TLS, RFC 7435), and a
    /// failed handshake is followed by a new connection in the clear.
    #[default]
    May,
    /// Always: a host that does not offer STARTTLS, or whose handshake fails, is not used.
    Encrypt,
}

impl TlsPolicy {
    /// `none`, `may` or `encrypt`.
    pub fn parse(text: &str) -> Result<TlsPolicy, String> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(TlsPolicy::None),
            "may" => Ok(TlsPolicy::May),
            "encrypt" => Ok(TlsPolicy::Encrypt),
            _ => Err(format!(
                "--relay-tls is none, may or encrypt, not '{text}'."
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// One reply from the other side: its code and the text of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl RemoteReply {
    /// A reply made up here, for a step that never reached the other side.
    pub fn local(code: u16, text: impl Into<String>) -> RemoteReply {
        RemoteReply {
            code,
            lines: vec![text.into()],
        }
    }

    /// `550 5.1.1 No such user`, a multi-line reply joined with spaces (for logs and the spool).
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
            .trim_end()
            .to_string()
    }

    /// Does an EHLO reply list this keyword (`STARTTLS`, `SIZE 1000`)?
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

// ANCHOR: read_reply
/// `Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF`
/// (RFC 5321 §4.2): lines with "-" after the code go on, the line with " " (or nothing) ends.
/// Every line must carry the same code; too many or too long lines end the conversation.
pub fn read_reply(reader: &mut impl BufRead) -> io::Result<RemoteReply> {
    let mut lines = Vec::new();
    let mut code = None;
    for line in read_reply_lines(reader)? {
        let bad =
            |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{why}: {line:?}"));
        let digits = line
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let this_code: u16 = digits
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad("no reply code"))?;
        if !(200..600).contains(&this_code) || code.is_some_and(|c| c != this_code) {
            return Err(bad("unexpected reply code"));
        }
        code = Some(this_code);
        if !matches!(line.as_bytes().get(3), None | Some(b' ') | Some(b'-')) {
            return Err(bad("no space or hyphen after the code"));
        }
        lines.push(line.get(4..).unwrap_or("").to_string());
    }
    let code = code.ok_or_else(|| io::Error::other("an empty reply"))?;
    Ok(RemoteReply { code, lines })
}
// ANCHOR_END: read_reply

/// The lines of one reply as they came, without their line ends: up to the first line that
/// has no `-` after its three characters of code.
fn read_reply_lines(reader: &mut impl BufRead) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let line = read_line(reader)?;
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line);
        if last {
            return Ok(lines);
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many reply lines",
            ));
        }
    }
}

/// Read one reply and fail unless its code is one of `codes`; `after` names what was sent.
pub fn expect(reader: &mut impl BufRead, codes: &[u16], after: &str) -> io::Result<RemoteReply> {
    let reply = read_reply(reader)?;
    if codes.contains(&reply.code) {
        Ok(reply)
    } else {
        Err(io::Error::other(format!(
            "expected {codes:?} after {after}, got {:?}",
            reply.one_line()
        )))
    }
}

/// One line without its CRLF (or bare LF), cut at `MAX_REPLY_LINE` octets; a line longer
/// than `MAX_REPLY_LINE_READ` is an error, so that a peer cannot make us read without end.
pub fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let mut total = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let (chunk, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => (&buffer[..=end], true),
            None => (buffer, false),
        };
        let keep = MAX_REPLY_LINE.saturating_sub(line.len()).min(chunk.len());
        line.extend_from_slice(&chunk[..keep]);
        let used = chunk.len();
        total += used;
        reader.consume(used);
        if done {
            break;
        }
        if total > MAX_REPLY_LINE_READ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

// ---------------------------------------------------------------------------------------------
// The message on the wire
// ---------------------------------------------------------------------------------------------

// ANCHOR: wire_data
/// The DATA stream for stored content: every line ends in CRLF, a line that starts with "."
/// gets a second one (RFC 5321 §4.5.2), and the stream ends with "." on a line of its own.
/// The whole content in one piece; the relay uses `WireEncoder` to do the same chunk by chunk.
pub fn wire_data(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + 5);
    let mut encoder = WireEncoder::new();
    encoder.encode(content, &mut out);
    encoder.finish(&mut out);
    out
}

/// Stored content to the DATA stream, a chunk at a time. A line may straddle two chunks, so
/// the encoder remembers where it stands: at the start of a line, or holding back a CR.
///
/// The order matters (security case 1.12): line ends are made canonical first, so a stray CR
/// becomes a space and never reaches the next hop; only then is each line dot-stuffed. Stuffing
/// first could leave a "." after a line break that did not exist yet when we looked.
#[derive(Debug, Clone)]
struct WireEncoder {
    /// The next octet starts a line (a "." there is stuffed).
    line_start: bool,
    /// A CR was seen and not written: dropped if the line ends next (`\r\n` in the store is
    /// one line end), a space otherwise.
    held_cr: bool,
}

impl Default for WireEncoder {
    fn default() -> WireEncoder {
        WireEncoder::new()
    }
}

impl WireEncoder {
    pub fn new() -> WireEncoder {
        WireEncoder {
            line_start: true,
            held_cr: false,
        }
    }

    /// Append the wire form of `chunk` (the next octets of the content) to `out`.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if b == b'\n' {
                self.held_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                continue;
            }
            if self.held_cr {
                // RFC 5321 §2.3.8: no bare CR may be sent; it becomes a space.
                out.push(b' ');
                self.held_cr = false;
            }
            if self.line_start && b == b'.' {
                out.push(b'.');
            }
            self.line_start = false;
            match b {
                b'\r' => self.held_cr = true,
                _ => out.push(b),
            }
        }
    }

    /// End the stream: close a last line without its line end, then "." on a line of its own.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}
// ANCHOR_END: wire_data

/// A BDAT chunk's octets (RFC 3030 §2): stored `\n` line ends become CRLF again, nothing else
/// changes (no dot-stuffing: the size says where the chunk ends).
fn chunk_octets(stored: &[u8], out: &mut Vec<u8>) {
    for &b in stored {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
}

// ---------------------------------------------------------------------------------------------
// The connection: plain or TLS, with a deadline
// ---------------------------------------------------------------------------------------------

/// The socket of one conversation, in the clear or inside TLS.
enum Wire {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

/// A connection whose every read and write ends at the step's timeout or at the
/// transaction's deadline, whichever comes first.
struct Line {
    wire: Wire,
    /// The same socket, for timeouts and shutdown (the TLS stream owns the other handle).
    tcp: TcpStream,
    deadline: Instant,
    step_timeout: Duration,
}

impl Line {
    /// Set the socket's timeouts for the next read or write; an error once the deadline passed.
    fn arm(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(deadline_passed());
        }
        let timeout = left.min(self.step_timeout);
        self.tcp.set_read_timeout(Some(timeout))?;
        self.tcp.set_write_timeout(Some(timeout))?;
        Ok(timeout)
    }

    /// A timed-out read or write says which limit it met, not "resource temporarily unavailable".
    fn explain(&self, error: io::Error, timeout: Duration) -> io::Error {
        if !matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return error;
        }
        if Instant::now() >= self.deadline {
            return deadline_passed();
        }
        let secs = timeout.as_secs();
        io::Error::new(io::ErrorKind::TimedOut, format!("nothing within {secs} s"))
    }
}

fn deadline_passed() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the time for the whole transaction ran out",
    )
}

impl Read for Line {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = self.arm()?;
        let result = match &mut self.wire {
            Wire::Plain(tcp) => tcp.read(buf),
            Wire::Tls(tls) => tls.read(buf),
        };
        result.map_err(|e| self.explain(e, timeout))
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let timeout = self.arm()?;
        let result = match &mut self.wire {
            Wire::Plain(tcp) => tcp.write(buf),
            Wire::Tls(tls) => tls.write(buf),
        };
        result.map_err(|e| self.explain(e, timeout))
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.wire {
            Wire::Plain(tcp) => tcp.flush(),
            Wire::Tls(tls) => tls.flush(),
        }
    }
}

// ANCHOR: connect_from
/// Connect to `to`, from `from` when the host listens on one specific address: then the next
/// hop sees the same address this host is known by (its `Received:` line names it).
pub fn connect_from(from: Option<IpAddr>, to: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(ip) = from.filter(|ip| ip.is_ipv4() == to.is_ipv4()) {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
    Ok(socket.into())
}
// ANCHOR_END: connect_from

/// The TLS client handshake on `tcp`. The certificate is not checked: on the Internet most
/// mail servers' certificates do not name the MX host (RFC 7435, opportunistic security).
fn tls_handshake(tcp: TcpStream, host: &str) -> Result<SslStream<TcpStream>, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    builder.set_verify(SslVerifyMode::NONE);
    let config = builder
        .build()
        .configure()
        .map_err(|e| e.to_string())?
        .verify_hostname(false);
    // An address literal is no name to send as SNI; the crate skips an IP address.
    let name = host.trim_start_matches('[').trim_end_matches(']');
    config.connect(name, tcp).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// The conversation
// ---------------------------------------------------------------------------------------------

/// Why a step did not get the reply it expected.
enum StepError {
    /// The host answered, with another code.
    Refused {
        step: &'static str,
        reply: RemoteReply,
    },
    /// The connection broke, timed out, or the reply made no sense.
    Broken {
        step: &'static str,
        error: io::Error,
    },
}

/// Why a host did not take the message at all (the next host may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotTaken {
    /// It could not take mail now: one line for the log and the spool.
    Unavailable(String),
    /// The TLS handshake failed; with `--relay-tls may` the host is tried again in the clear.
    TlsFailed(String),
}

/// What the host said about the message: one reply per recipient, whether it took the DSN
/// parameters over, and whether the conversation was inside TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub replies: Vec<RemoteReply>,
    pub dsn: bool,
    pub tls: bool,
}

/// The client side of one SMTP conversation.
pub struct SmtpClient {
    reader: BufReader<Line>,
    tag: String,
    tls: bool,
}

impl SmtpClient {
    /// Wrap a connected socket; every step ends by `deadline` at the latest.
    pub fn new(stream: TcpStream, tag: &str, deadline: Instant) -> io::Result<SmtpClient> {
        let tcp = stream.try_clone()?;
        let line = Line {
            wire: Wire::Plain(stream),
            tcp,
            deadline,
            step_timeout: GREETING_TIMEOUT,
        };
        Ok(SmtpClient {
            reader: BufReader::new(line),
            tag: tag.to_string(),
            tls: false,
        })
    }

    fn read(&mut self, step: &'static str, timeout: Duration) -> Result<RemoteReply, StepError> {
        self.reader.get_mut().step_timeout = timeout;
        let reply =
            read_reply(&mut self.reader).map_err(|error| StepError::Broken { step, error })?;
        for (n, line) in reply.lines.iter().enumerate() {
            let sep = if n + 1 < reply.lines.len() { '-' } else { ' ' };
            debug!("[{}] S: {}{sep}{line}", self.tag, reply.code);
        }
        Ok(reply)
    }

    fn write(&mut self, step: &'static str, bytes: &[u8]) -> Result<(), StepError> {
        let line = self.reader.get_mut();
        line.step_timeout = DATA_BLOCK_TIMEOUT;
        line.write_all(bytes)
            .map_err(|error| StepError::Broken { step, error })
    }

    // ANCHOR: cmd
    /// Send one command and read its reply; `Ok` only if the code is one the step expects.
    fn cmd(
        &mut self,
        expect: &[u16],
        step: &'static str,
        line: &str,
        timeout: Duration,
    ) -> Result<RemoteReply, StepError> {
        debug!("[{}] C: {line}", self.tag);
        self.write(step, format!("{line}\r\n").as_bytes())?;
        let reply = self.read(step, timeout)?;
        if expect.contains(&reply.code) {
            Ok(reply)
        } else {
            Err(StepError::Refused { step, reply })
        }
    }
    // ANCHOR_END: cmd

    /// Greeting and EHLO (HELO if EHLO is refused): is this host ready to take mail?
    fn hello(&mut self, hostname: &str) -> Result<RemoteReply, StepError> {
        let greeting = self.read("greeting", GREETING_TIMEOUT)?;
        if greeting.code != 220 {
            return Err(StepError::Refused {
                step: "greeting",
                reply: greeting,
            });
        }
        self.ehlo(hostname)
    }

    fn ehlo(&mut self, hostname: &str) -> Result<RemoteReply, StepError> {
        match self.cmd(OK, "EHLO", &format!("EHLO {hostname}"), MAIL_TIMEOUT) {
            // RFC 5321 §3.2: a server that does not know EHLO answers 500/502; then HELO.
            Err(StepError::Refused { reply, .. }) if reply.code >= 500 => {
                self.cmd(OK, "HELO", &format!("HELO {hostname}"), MAIL_TIMEOUT)
            }
            other => other,
        }
    }

    // ANCHOR: starttls
    /// RFC 3207 §4: STARTTLS, 220, the handshake, then EHLO again, because what the server
    /// offered in the clear may change once it knows the line is private (§4.2).
    fn starttls(&mut self, hostname: &str, host: &str) -> Result<RemoteReply, NotTaken> {
        let failed = |why: String| NotTaken::TlsFailed(why);
        self.cmd(&[220], "STARTTLS", "STARTTLS", MAIL_TIMEOUT)
            .map_err(|e| failed(self.diagnose(e)))?;
        if !self.reader.buffer().is_empty() {
            // Octets sent before the handshake would be taken as said inside TLS (CVE-2011-0411
            // in reverse): a host that does this is not trusted with the message.
            return Err(failed("the host sent data before the TLS handshake".into()));
        }
        let line = self.reader.get_mut();
        let tcp = line.tcp.try_clone().map_err(|e| failed(e.to_string()))?;
        line.arm().map_err(|e| failed(e.to_string()))?;
        let tls = tls_handshake(tcp, host).map_err(|e| failed(format!("TLS handshake: {e}")))?;
        line.wire = Wire::Tls(Box::new(tls));
        self.tls = true;
        debug!("[{}] TLS is on", self.tag);
        self.ehlo(hostname)
            .map_err(|e| NotTaken::Unavailable(self.diagnose(e)))
    }
    // ANCHOR_END: starttls

    // ANCHOR: send_message
    /// One message to one host, or `Err` if the host never got as far as MAIL FROM (then the
    /// next host may take it).
    pub fn send_message(
        &mut self,
        hostname: &str,
        host: &str,
        tls: TlsPolicy,
        entry: &Entry,
        content: &Path,
        rcpts: &[Rcpt],
    ) -> Result<Answer, NotTaken> {
        let unavailable = |client: &SmtpClient, e| NotTaken::Unavailable(client.diagnose(e));
        let mut ehlo = self.hello(hostname).map_err(|e| unavailable(self, e))?;
        match (tls, ehlo.has_keyword("STARTTLS")) {
            (TlsPolicy::None, _) => {}
            (_, true) => ehlo = self.starttls(hostname, host)?,
            (TlsPolicy::May, false) => {}
            (TlsPolicy::Encrypt, false) => {
                return Err(NotTaken::Unavailable(
                    "451 4.7.4 The host does not offer STARTTLS, and --relay-tls encrypt needs it"
                        .into(),
                ))
            }
        }
        // RFC 3461 §5.2.1, §5.2.2 (a): the DSN parameters go on only to a host that lists DSN.
        let dsn = ehlo.has_keyword("DSN");
        let replies = match mail_parameters(&ehlo, entry, content, dsn) {
            Err(refusal) => vec![refusal; rcpts.len()],
            Ok(params) => {
                let mail = format!("MAIL FROM:{}{params}", entry.sender);
                match self.cmd(OK, "MAIL FROM", &mail, MAIL_TIMEOUT) {
                    Ok(_) => self.recipients_and_content(entry, content, rcpts, dsn),
                    Err(error) => vec![self.as_reply(error); rcpts.len()],
                }
            }
        };
        let _ = self.cmd(&[221], "QUIT", "QUIT", MAIL_TIMEOUT);
        Ok(Answer {
            replies,
            dsn,
            tls: self.tls,
        })
    }
    // ANCHOR_END: send_message

    /// RCPT for every recipient, then the content if any was accepted; one reply per recipient.
    fn recipients_and_content(
        &mut self,
        entry: &Entry,
        content: &Path,
        rcpts: &[Rcpt],
        dsn: bool,
    ) -> Vec<RemoteReply> {
        let mut replies = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            let line = format!("RCPT TO:{}{}", rcpt.path, rcpt_parameters(rcpt, dsn));
            let reply = match self.cmd(RCPT_OK, "RCPT TO", &line, RCPT_TIMEOUT) {
                Ok(reply) => reply,
                Err(error) => self.as_reply(error),
            };
            replies.push(reply);
        }
        let accepted: Vec<usize> = (0..replies.len())
            .filter(|&i| replies[i].code / 100 == 2)
            .collect();
        if accepted.is_empty() {
            return replies;
        }
        // The message's fate now decides every accepted recipient's (RFC 5321 §3.3).
        let verdict = match File::open(content) {
            Err(error) => RemoteReply::local(
                451,
                format!("4.3.0 Cannot read the queued message: {error}"),
            ),
            Ok(file) if entry.body == BodyType::BinaryMime => self.bdat(file),
            Ok(file) => self.data(file),
        };
        for i in accepted {
            replies[i] = verdict.clone();
        }
        replies
    }

    /// DATA, 354, the content, and the reply to the final dot.
    fn data(&mut self, file: File) -> RemoteReply {
        let result = self
            .cmd(&[354], "DATA", "DATA", DATA_TIMEOUT)
            .and_then(|_| self.send_content(file))
            .and_then(|()| self.read("end of data", DATA_END_TIMEOUT));
        result.unwrap_or_else(|error| self.as_reply(error))
    }

    // ANCHOR: send_content
    /// The content file on the wire, `READ_CHUNK` octets at a time, then the final dot. If the
    /// file cannot be read half way, the connection is cut: without the final dot the next
    /// hop throws the partial message away (RFC 5321 §4.1.1.4), and it is tried again later.
    fn send_content(&mut self, file: File) -> Result<(), StepError> {
        let mut encoder = WireEncoder::new();
        let mut sent = 0;
        self.for_each_chunk(file, |client, chunk, wire| {
            encoder.encode(chunk, wire);
            sent += wire.len();
            client.write("message content", wire)
        })?;
        let mut wire = Vec::new();
        encoder.finish(&mut wire);
        self.write("message content", &wire)?;
        let octets = sent + wire.len();
        debug!(
            "[{}] C: <message, {octets} octets, ending with .>",
            self.tag
        );
        Ok(())
    }
    // ANCHOR_END: send_content

    // ANCHOR: bdat
    /// RFC 3030 §2: the content as `BDAT <size>` chunks, each answered with 250, and an empty
    /// `BDAT 0 LAST` to end. No dot-stuffing and no final dot: a NUL or a lone "." is just data.
    fn bdat(&mut self, file: File) -> RemoteReply {
        let result = self
            .for_each_chunk(file, |client, chunk, wire| {
                chunk_octets(chunk, wire);
                let command = format!("BDAT {}", wire.len());
                debug!("[{}] C: {command} <{} octets>", client.tag, wire.len());
                client.write("BDAT", format!("{command}\r\n").as_bytes())?;
                client.write("BDAT", wire)?;
                match client.read("BDAT", DATA_BLOCK_TIMEOUT)? {
                    reply if reply.code == 250 => Ok(()),
                    reply => Err(StepError::Refused {
                        step: "BDAT",
                        reply,
                    }),
                }
            })
            .and_then(|()| self.cmd(OK, "BDAT LAST", "BDAT 0 LAST", DATA_END_TIMEOUT));
        result.unwrap_or_else(|error| self.as_reply(error))
    }
    // ANCHOR_END: bdat

    /// Read the content file a chunk at a time; `send` gets each chunk and an empty buffer for
    /// its wire form. A file that cannot be read half way cuts the connection.
    fn for_each_chunk(
        &mut self,
        mut file: File,
        mut send: impl FnMut(&mut SmtpClient, &[u8], &mut Vec<u8>) -> Result<(), StepError>,
    ) -> Result<(), StepError> {
        let mut chunk = vec![0; READ_CHUNK];
        let mut wire = Vec::with_capacity(READ_CHUNK + READ_CHUNK / 2);
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let _ = self.reader.get_ref().tcp.shutdown(Shutdown::Both);
                    let step = "reading the queued message";
                    return Err(StepError::Broken { step, error });
                }
            };
            wire.clear();
            send(self, &chunk[..n], &mut wire)?;
        }
    }

    /// A failed step as a reply: the host's own reply, or a 451 we make up for a broken line.
    fn as_reply(&self, error: StepError) -> RemoteReply {
        match error {
            StepError::Refused { reply, .. } => reply,
            StepError::Broken { step, error } => RemoteReply::local(
                451,
                format!("4.4.2 Connection failed during {step}: {error}"),
            ),
        }
    }

    /// Why a host could not take mail at all: one line for the log and the spool.
    fn diagnose(&self, error: StepError) -> String {
        match error {
            StepError::Refused { step, reply } => {
                format!("{} (expected 2xx to {step})", reply.one_line())
            }
            StepError::Broken { step, error } => {
                format!("451 4.4.2 Connection failed during {step}: {error}")
            }
        }
    }
}

// ANCHOR: mail_parameters
/// The parameters of MAIL FROM for this host, or the reply that bounces the message because
/// the host lacks an extension the message needs:
/// - `SIZE=` to a host that lists SIZE (RFC 1870 §6), so it can refuse a message too large
///   before it is sent;
/// - `BODY=8BITMIME` only to a host with 8BITMIME; to another, 8-bit mail bounces with 5.6.3
///   rather than being rewritten (RFC 6152 §3; lesson 12 says why);
/// - `BODY=BINARYMIME` only to a host with BINARYMIME and CHUNKING (RFC 3030 §3);
/// - `SMTPUTF8` to a host that lists it; mail that needs it and a host without it: 5.6.7
///   (RFC 6531 §3.2);
/// - `RET` and `ENVID` as the client gave them, to a host that lists DSN (RFC 3461 §5.2.1).
fn mail_parameters(
    ehlo: &RemoteReply,
    entry: &Entry,
    content: &Path,
    dsn: bool,
) -> Result<String, RemoteReply> {
    let mut params = String::new();
    if ehlo.has_keyword("SIZE") {
        if let Ok(meta) = std::fs::metadata(content) {
            params.push_str(&format!(" SIZE={}", meta.len()));
        }
    }
    let lacks =
        |what: &str| format!("the next hop does not offer {what}, which this message needs");
    match entry.body {
        BodyType::SevenBit => {}
        BodyType::EightBitMime if ehlo.has_keyword("8BITMIME") => params.push_str(" BODY=8BITMIME"),
        BodyType::BinaryMime if ehlo.has_keyword("BINARYMIME") && ehlo.has_keyword("CHUNKING") => {
            params.push_str(" BODY=BINARYMIME")
        }
        BodyType::EightBitMime => {
            return Err(RemoteReply::local(
                554,
                format!("5.6.3 {}", lacks("8BITMIME")),
            ))
        }
        BodyType::BinaryMime => {
            let what = lacks("BINARYMIME and CHUNKING");
            return Err(RemoteReply::local(554, format!("5.6.3 {what}")));
        }
    }
    if entry.smtputf8 {
        if ehlo.has_keyword("SMTPUTF8") {
            params.push_str(" SMTPUTF8");
        } else if needs_smtputf8(entry, content) {
            return Err(RemoteReply::local(
                554,
                format!("5.6.7 {}", lacks("SMTPUTF8")),
            ));
        }
    }
    if dsn {
        if let Some(ret) = entry.ret {
            params.push_str(&format!(" RET={}", ret.keyword()));
        }
        if let Some(envid) = &entry.envid {
            params.push_str(&format!(" ENVID={envid}"));
        }
    }
    Ok(params)
}
// ANCHOR_END: mail_parameters

/// RFC 6531 §3.2: a message sent with SMTPUTF8 needs it only if it uses it: a non-ASCII
/// address in the envelope, or non-ASCII octets in the header section. Otherwise it goes to a
/// host without SMTPUTF8 as it is.
fn needs_smtputf8(entry: &Entry, content: &Path) -> bool {
    let envelope = std::iter::once(&entry.sender).chain(entry.recipients.iter().map(|r| &r.path));
    if envelope.into_iter().any(|path| !path.is_ascii()) {
        return true;
    }
    // The header section, read a chunk at a time up to the empty line that ends it.
    let Ok(file) = File::open(content) else {
        return true; // cannot tell: do not risk sending what the host cannot take
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return false,
            Ok(_) if line == b"\n" || line == b"\r\n" => return false,
            Ok(_) if !line.is_ascii() => return true,
            Ok(_) => {}
            Err(_) => return true,
        }
    }
}

/// ` NOTIFY=SUCCESS ORCPT=rfc822;bob@two.test` for RCPT TO (RFC 3461 §5.2.1 (c), (d)).
fn rcpt_parameters(rcpt: &Rcpt, dsn: bool) -> String {
    let mut params = String::new();
    if dsn {
        if let Some(notify) = rcpt.notify {
            params.push_str(&format!(" NOTIFY={notify}"));
        }
        if let Some(orcpt) = &rcpt.orcpt {
            params.push_str(&format!(" ORCPT={orcpt}"));
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> io::Result<RemoteReply> {
        read_reply(&mut text.as_bytes())
    }

    #[test]
    fn replies_single_and_multi_line() {
        let one = reply("250 2.0.0 OK\r\n").unwrap();
        assert_eq!((one.code, one.one_line().as_str()), (250, "250 2.0.0 OK"));
        let ehlo = reply("250-mx.two.test\r\n250-SIZE 1000\r\n250 STARTTLS\r\n").unwrap();
        assert_eq!(ehlo.lines.len(), 3);
        assert!(ehlo.has_keyword("starttls") && ehlo.has_keyword("SIZE"));
        assert_eq!(
            reply("354\n").unwrap().code,
            354,
            "bare LF and no text are fine"
        );
        let mut raw: &[u8] = b"250-first\r\n250 last\r\nnext";
        assert_eq!(
            read_reply_lines(&mut raw).unwrap(),
            vec!["250-first", "250 last"]
        );
        let mut wrong: &[u8] = b"451 4.3.0 later\r\n";
        assert!(expect(&mut wrong, &[250], "MAIL").is_err());
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        for bad in [
            "",
            "25",
            "abc hello\r\n",
            "250-first\r\n251 second\r\n",
            "250x\r\n",
            "999 what\r\n",
            "250-unterminated",
        ] {
            assert!(reply(bad).is_err(), "{bad:?}");
        }
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1) + "250 end\r\n";
        assert!(reply(&many).is_err());
        let long = format!("250 {}\r\n", "y".repeat(MAX_REPLY_LINE * 4));
        assert_eq!(
            reply(&long).unwrap().lines[0].len(),
            MAX_REPLY_LINE - 4,
            "cut, not refused"
        );
        let endless = format!("250 {}", "y".repeat(MAX_REPLY_LINE_READ + 10));
        assert!(reply(&endless).is_err());
    }

    #[test]
    fn wire_data_is_crlf_then_dot_stuffed() {
        assert_eq!(wire_data(b"a\n.b\n..\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(wire_data(b""), b".\r\n");
        assert_eq!(wire_data(b"no end"), b"no end\r\n.\r\n");
        // A stray CR never reaches the wire alone, and a "." after it is not a line start.
        let wire = wire_data(b"x\r.\rMAIL FROM:<a@b>\n.\n");
        assert_eq!(wire, b"x . MAIL FROM:<a@b>\r\n..\r\n.\r\n");
        for (i, &b) in wire.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(wire.get(i + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                assert_eq!(wire[i - 1], b'\r');
            }
        }
    }

    #[test]
    fn bdat_chunks_restore_crlf_and_keep_everything_else() {
        let mut out = Vec::new();
        chunk_octets(b".a\0b\n.\n", &mut out);
        assert_eq!(out, b".a\0b\r\n.\r\n");
    }

    /// The line-by-line form of `wire_data` (split, strip CR, stuff, join): the reference the
    /// streaming encoder must agree with.
    fn wire_data_by_lines(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let body = content.strip_suffix(b"\n").unwrap_or(content);
        if !content.is_empty() {
            for line in body.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.first() == Some(&b'.') {
                    out.push(b'.');
                }
                out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn streaming_in_random_chunks_equals_the_one_piece_result() {
        // A small linear congruential generator: reproducible, no dependency.
        let mut seed: u64 = 0x5eed_1234;
        let mut next = |bound: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % bound
        };
        let alphabet = b"..\r\n\nab";
        for _ in 0..500 {
            let len = next(200);
            let content: Vec<u8> = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
            let mut encoder = WireEncoder::new();
            let mut streamed = Vec::new();
            let mut rest = &content[..];
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(1 + next(rest.len()));
                encoder.encode(piece, &mut streamed);
                rest = tail;
            }
            encoder.finish(&mut streamed);
            assert_eq!(streamed, wire_data(&content), "{content:?}");
            assert_eq!(streamed, wire_data_by_lines(&content), "{content:?}");
        }
    }

    #[test]
    fn mail_parameters_follow_what_the_host_offers() {
        let ehlo = |keywords: &str| RemoteReply {
            code: 250,
            lines: std::iter::once("hop")
                .chain(keywords.split_whitespace())
                .map(String::from)
                .collect(),
        };
        let mut entry = Entry::new(
            "m",
            "<alice@one.test>".into(),
            vec!["<bob@two.test>".into()],
        );
        let nowhere = Path::new("/nonexistent/content");
        let params = |ehlo: &RemoteReply, entry: &Entry| {
            mail_parameters(ehlo, entry, nowhere, false).map_err(|r| r.one_line())
        };
        entry.body = BodyType::EightBitMime;
        assert_eq!(
            params(&ehlo("8BITMIME"), &entry).as_deref(),
            Ok(" BODY=8BITMIME")
        );
        assert!(params(&ehlo(""), &entry).is_err_and(|r| r.starts_with("554 5.6.3")));
        entry.body = BodyType::BinaryMime;
        assert!(params(&ehlo("BINARYMIME"), &entry).is_err_and(|r| r.contains("5.6.3")));
        let both = ehlo("BINARYMIME CHUNKING");
        assert_eq!(params(&both, &entry).as_deref(), Ok(" BODY=BINARYMIME"));
        entry.body = BodyType::SevenBit;
        entry.smtputf8 = true;
        assert_eq!(
            params(&ehlo("SMTPUTF8"), &entry).as_deref(),
            Ok(" SMTPUTF8")
        );
        entry.sender = "<josé@one.test>".into();
        assert!(params(&ehlo(""), &entry).is_err_and(|r| r.starts_with("554 5.6.7")));
        let content = std::env::temp_dir().join(format!("smtplab-size-{}", std::process::id()));
        std::fs::write(&content, b"Subject: x\n\n12345\n").unwrap();
        entry.sender = "<alice@one.test>".into();
        let sized = mail_parameters(&ehlo("SIZE 1000"), &entry, &content, false);
        assert_eq!(sized, Ok(" SIZE=18".to_string()), "RFC 1870 §6");
        let _ = std::fs::remove_file(&content);
        assert_eq!(TlsPolicy::parse("MAY"), Ok(TlsPolicy::May));
        assert!(TlsPolicy::parse("always").is_err());
    }
}

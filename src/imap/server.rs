//! The IMAP listener and one client's I/O loop: a welcome socket, a thread per client, lines
//! and literals in, responses out, and IDLE.
//!
//! Interface:
//! - `spawn(listener, config, ..)` accepts on a `Listener` bound by `net/listener.rs` (with
//!   `--imaps`, TLS first) and returns its `Welcome`, which stops it when dropped. `Imap` is the service that starts sessions.
//! - `serve(stream, session, id, acceptor, idle)` runs one session over a `tls::Stream`: in the
//!   clear with STARTTLS (RFC 9051 §6.2.1), or inside TLS from the first byte (`--imaps`,
//!   RFC 8314 §3.3).
//!
//! How a command is read: a line; if it ends with `{n}` the server answers `+` and reads
//! exactly n octets, then the rest of the command, which may announce another literal
//! (RFC 9051 §4.3). `{n+}` (LITERAL+) sends the octets without waiting for `+`. Lines,
//! literals and their number are bounded (`command.rs`), so a client cannot make the server
//! hold more than about a megabyte for it. During IDLE the connection looks at the mailbox
//! every `IDLE_POLL` while it waits for `DONE`, so new mail is reported within a second.
//!
//! Standards: RFC 9051 §2.2.1, §4.3, §5.4, §5.5, §6.2.1, §6.3.13, §7.1.5, §7.6, RFC 8314 §3.3

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::config::Config;
use crate::imap::command::{
    literal_at_end, Refused, Response, MAX_LINE, MAX_LITERAL, MAX_LITERALS,
};
use crate::imap::mbox::MboxMailboxes;
use crate::imap::session::{Mailboxes, Next, Session, StateName, Step, Tls};
use crate::net::line::{LineReader, ReadError};
use crate::net::listener::{self, Admission, Listener, Refusal, Service, Welcome};
use crate::net::tls::{self, Acceptor, Stream};
use crate::store::mbox::MailDir;
use crate::visible;

/// RFC 9051 §5.4: an inactivity autologout timer "MUST be of at least 30 minutes' duration".
pub const AUTOLOGOUT: Duration = Duration::from_secs(30 * 60);

/// How often IDLE looks at the mailbox.
pub const IDLE_POLL: Duration = Duration::from_millis(200);

/// IMAP as a welcome socket's service: what every session of one listener shares.
struct Imap {
    config: Arc<Config>,
    tls: Option<Arc<Acceptor>>,
    implicit_tls: bool,
    mailboxes: Arc<dyn Mailboxes>,
    sessions: AtomicU64,
}

/// Accept on a background thread, counted by the server's `admission`; mailboxes are the
/// mbox files of `config.mail_dir`.
pub fn spawn(
    listener: Listener,
    config: Arc<Config>,
    tls: Option<Arc<Acceptor>>,
    admission: Arc<Admission>,
) -> Welcome {
    let addr = listener.local_addr();
    let mailboxes = Arc::new(MboxMailboxes {
        mail_dir: MailDir::new(config.mail_dir.clone()),
    });
    let service = Arc::new(Imap {
        config,
        tls,
        implicit_tls: listener.implicit_tls,
        mailboxes,
        sessions: AtomicU64::new(0),
    });
    info!("IMAP listening on {addr}");
    Welcome::spawn(listener.bound, admission, service)
}

impl Service for Imap {
    fn session(&self, stream: TcpStream) -> (String, Box<dyn FnOnce() + Send>) {
        let id = format!("I{}", self.sessions.fetch_add(1, Ordering::SeqCst) + 1);
        let tls = Tls {
            available: self.tls.is_some(),
            active: self.implicit_tls,
        };
        let mut session = Session::new(self.config.clone(), self.mailboxes.clone(), tls);
        if let Ok(peer) = stream.peer_addr() {
            session = session.with_peer(listener::canonical(peer).ip());
        }
        let acceptor = self.tls.clone();
        let (implicit_tls, idle) = (self.implicit_tls, self.config.idle_timeout);
        let name = format!("imap-{id}");
        let serve = move || serve_tcp(stream, session, id, (acceptor, idle), implicit_tls);
        (name, Box::new(serve))
    }

    fn refuse(&self, stream: TcpStream, why: Refusal) {
        let text = match why {
            Refusal::Full => "BYE Too many connections; try again later",
            Refusal::TooManyFromAddress => {
                "BYE Too many connections from your address; close one of them and try again"
            }
        };
        listener::say_and_close(stream, &Response::untagged(text).to_wire());
    }
}

/// `tls` is the acceptor, if any, and the idle timeout that bounds a handshake.
fn serve_tcp(
    stream: TcpStream,
    session: Session,
    id: String,
    tls: (Option<Arc<Acceptor>>, Duration),
    implicit_tls: bool,
) {
    let (acceptor, idle) = tls;
    let peer = stream
        .peer_addr()
        .map(|a| listener::canonical(a).to_string())
        .unwrap_or_default();
    info!("[{id}] IMAP connect from {peer}");
    // The autologout bounds a client that is silent; one that stops reading our answers is
    // held only as long as an SMTP client would be (`--timeout`).
    if let Err(error) = stream.set_write_timeout(Some(idle)) {
        warn!("[{id}] cannot set a write timeout: {error}");
        return;
    }
    let mut stream = Stream::Plain(stream);
    if implicit_tls {
        let Some(tls) = acceptor.as_deref() else {
            return;
        };
        stream = match stream.start_tls(tls, tls::handshake_deadline(idle)) {
            Ok(stream) => stream,
            Err(error) => {
                warn!("[{id}] {peer}: {error}");
                return;
            }
        };
    }
    serve(stream, session, &id, acceptor, idle);
}

/// One client on this thread. Errors end the connection; they are logged, never panics.
pub fn serve(
    stream: Stream,
    session: Session,
    id: &str,
    acceptor: Option<Arc<Acceptor>>,
    idle: Duration,
) {
    let mut connection = Connection {
        stream: Some(stream),
        acceptor,
        idle,
        lines: LineReader::new(),
        session,
        id,
        output: Vec::new(),
    };
    let outcome = connection.run();
    let state = connection.session.state().name();
    match outcome {
        Ok(reason) => info!("[{id}] IMAP disconnect ({reason}, state {state:?})"),
        Err(error) => info!("[{id}] IMAP disconnect ({error}, state {state:?})"),
    }
}

/// What reading one command found.
enum Read {
    /// A whole command: its lines and literals.
    Command(Vec<u8>),
    /// Refused before parsing (too long, a literal too large): answer BAD and go on.
    Refused(Refused),
    /// The session is over, for this reason.
    Over(&'static str),
}

/// One line, or why there is none.
enum LineRead {
    Line(Vec<u8>),
    TooLong(Vec<u8>),
}

struct Connection<'a> {
    /// `None` only for the instant of a TLS handshake.
    stream: Option<Stream>,
    acceptor: Option<Arc<Acceptor>>,
    idle: Duration,
    lines: LineReader,
    session: Session,
    id: &'a str,
    output: Vec<u8>,
}

impl Connection<'_> {
    // ANCHOR: run
    /// Greet; then read what the state asks for (a command, a SASL line, or during IDLE a
    /// `DONE` with a look at the mailbox every `IDLE_POLL`), step the session, write.
    fn run(&mut self) -> io::Result<&'static str> {
        let greeting = self.session.greeting();
        self.send(&[greeting]);
        self.flush()?;
        loop {
            let step = match self.session.state().name() {
                StateName::Authenticating => match self.read_line(self.deadline())? {
                    Ok(LineRead::Line(line)) => {
                        debug!("[{}] C: ****", self.id);
                        self.session.sasl(&line)
                    }
                    Ok(LineRead::TooLong(_)) => self.session.sasl(b"*"),
                    Err(reason) => return Ok(reason),
                },
                StateName::Idling => match self.idle()? {
                    Ok(step) => step,
                    Err(reason) => return Ok(reason),
                },
                _ => match self.read_command()? {
                    Read::Command(bytes) => {
                        self.log_command(&bytes);
                        self.session.command(&bytes)
                    }
                    Read::Refused(refused) => self.session.refuse_line(refused),
                    Read::Over(reason) => return Ok(reason),
                },
            };
            if !step.pause.is_zero() {
                self.flush()?;
                thread::sleep(step.pause);
            }
            self.send(&step.responses);
            match step.next {
                Next::StartTls => {
                    self.flush()?;
                    self.starttls()?;
                }
                Next::Close => {
                    self.flush()?;
                    return Ok("closed by the session");
                }
                Next::Read => {
                    if self.lines.must_flush(self.output.len()) {
                        self.flush()?;
                    }
                }
            }
        }
    }
    // ANCHOR_END: run

    fn deadline(&self) -> Instant {
        Instant::now() + AUTOLOGOUT
    }

    /// IDLE: wait for a line, looking at the mailbox between reads; the whole wait is bounded
    /// by the autologout timer.
    fn idle(&mut self) -> io::Result<Result<Step, &'static str>> {
        let give_up = self.deadline();
        loop {
            let poll = (Instant::now() + IDLE_POLL).min(give_up);
            match self.read_line(poll)? {
                Ok(LineRead::Line(line) | LineRead::TooLong(line)) => {
                    return Ok(Ok(self.session.idle_line(&line)));
                }
                Err("autologout") if Instant::now() < give_up => {
                    let step = self.session.poll();
                    if !step.responses.is_empty() {
                        self.send(&step.responses);
                        self.flush()?;
                    }
                }
                Err(reason) => return Ok(Err(reason)),
            }
        }
    }

    // ANCHOR: read_command
    /// Read one command: a line, and for each literal it announces, the octets and the line
    /// that goes on after them.
    fn read_command(&mut self) -> io::Result<Read> {
        let deadline = self.deadline();
        let mut command = Vec::new();
        for literals in 0.. {
            let line = match self.read_line(deadline)? {
                Ok(LineRead::Line(line)) => line,
                Ok(LineRead::TooLong(start)) => {
                    let text = format!("Command line too long (the limit is {MAX_LINE} octets)");
                    return Ok(Read::Refused(refused(&command, &start, text)));
                }
                Err(reason) => return Ok(Read::Over(reason)),
            };
            command.extend_from_slice(&line);
            let Some((size, synchronizing)) = literal_at_end(&line) else {
                return Ok(Read::Command(command));
            };
            if size > MAX_LITERAL || literals >= MAX_LITERALS {
                let text = format!(
                    "Literal too large: at most {MAX_LITERALS} literals of {MAX_LITERAL} octets"
                );
                if !synchronizing {
                    // The octets are on their way and cannot be told apart from commands.
                    self.send(&[Response::untagged(format!("BYE {text}"))]);
                    self.flush()?;
                    return Ok(Read::Over("a non-synchronizing literal too large"));
                }
                return Ok(Read::Refused(refused(&command, b"", text)));
            }
            if synchronizing {
                self.send(&[Response::Continue("Ready for the literal".into())]);
                self.flush()?;
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| io::Error::other("no stream"))?;
            match self.lines.read_chunk(stream, size as u64, size, deadline) {
                Ok(octets) => {
                    command.extend_from_slice(b"\r\n");
                    command.extend_from_slice(&octets);
                }
                Err(error) => return over(error).map(Read::Over),
            }
        }
        Ok(Read::Over("unreachable"))
    }
    // ANCHOR_END: read_command

    /// One line without its ending, at most `MAX_LINE` octets (the rest of a longer line is
    /// read and dropped). `Err(reason)`: the session is over, or the deadline passed.
    fn read_line(&mut self, deadline: Instant) -> io::Result<Result<LineRead, &'static str>> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no stream"))?;
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            match self.lines.read_data(stream, deadline) {
                Ok(piece) => {
                    // Keep the start of a long line: its tag is needed for the BAD.
                    let room = MAX_LINE.saturating_sub(line.len());
                    too_long |= piece.bytes.len() > room;
                    line.extend_from_slice(&piece.bytes[..piece.bytes.len().min(room)]);
                    if piece.ending.is_some() {
                        return Ok(Ok(if too_long {
                            LineRead::TooLong(line)
                        } else {
                            LineRead::Line(line)
                        }));
                    }
                }
                Err(error) => return over(error).map(Err),
            }
        }
    }

    /// The log shows commands, never passwords: LOGIN and AUTHENTICATE only by tag and verb.
    fn log_command(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut words = text.split(' ');
        let (tag, verb) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let secret = ["LOGIN", "AUTHENTICATE"]
            .iter()
            .any(|v| verb.eq_ignore_ascii_case(v));
        let shown = if secret {
            format!("{tag} {verb} ****")
        } else {
            text.lines().next().unwrap_or("").to_string()
        };
        // What the client sent may hold terminal escapes: the log is read on a terminal.
        debug!("[{}] C: {}", self.id, visible::sanitize(&shown));
    }

    fn send(&mut self, responses: &[Response]) {
        for response in responses {
            debug!(
                "[{}] S: {}",
                self.id,
                visible::sanitize(&response.to_string())
            );
            self.output.extend_from_slice(&response.to_wire());
        }
    }

    /// STARTTLS: forget unread plaintext (CVE-2011-0411 and RFC 9051 §6.2.1), then the
    /// handshake.
    fn starttls(&mut self) -> io::Result<()> {
        self.lines.discard_buffered();
        tls::upgrade(&mut self.stream, self.acceptor.as_deref(), self.idle)?;
        self.session.tls_started();
        info!("[{}] IMAP TLS started", self.id);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no stream"))?;
        if !self.output.is_empty() {
            stream.write_all(&self.output)?;
            self.output.clear();
        }
        stream.flush()
    }
}

/// Why reading stopped, as a reason for the log; an I/O error is passed on.
fn over(error: ReadError) -> io::Result<&'static str> {
    match error {
        // RFC 9051 §5.4: past the autologout timer the server may close without a word.
        ReadError::Timeout => Ok("autologout"),
        ReadError::Closed { .. } => Ok("client closed the connection"),
        ReadError::Io(error) => Err(error),
    }
}

/// A command refused before parsing, with its tag when the first line shows one.
fn refused(command: &[u8], line: &[u8], text: String) -> Refused {
    let first = if command.is_empty() { line } else { command };
    let tag = first
        .split(|&b| b == b' ')
        .next()
        .filter(|t| !t.is_empty() && t.iter().all(|&b| b.is_ascii_graphic() && b != b'+'))
        .map(|t| String::from_utf8_lossy(t).into_owned());
    Refused { tag, text }
}

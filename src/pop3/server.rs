//! The POP3 listener and one client's I/O loop: a welcome socket, a thread per client, mbox files.
//!
//! Interface:
//! - `spawn(listener, config, ..)` accepts on a `Listener` bound by `net/listener.rs` (with
//!   `--pop3s`, TLS first) and returns its `Welcome`, which stops it when dropped. `Pop3` is the service that starts each session.
//! - `serve(stream, session, id, acceptor, idle)` runs one session over a `tls::Stream`: in the
//!   clear with STLS (RFC 2595 §4), or inside TLS from the first byte (`--pop3s`, RFC 8314 §3.3).
//! - `MboxMaildrops` is the `pop3::Maildrops` hook over the mail directory: the reader lock for
//!   the session, the delivery lock for a moment to index the messages, each message read from
//!   the file when RETR or TOP asks (memory does not grow with the maildrop), and an atomic
//!   rewrite in UPDATE.
//!
//! The server side of the same loop as `src/connection.rs`: greet, read a line, step the session,
//! write; flush when no further input is waiting, so pipelined commands all get answers, or
//! when the answers pass `line::FLUSH_AT`, so a client that never reads cannot pile them up.
//! The TLS handshake has one deadline for the whole of it (`tls::handshake_deadline`).
//!
//! Standards: RFC 1939 §3, §4, §6, RFC 2449 §6.6, RFC 2595 §4, RFC 8314 §3.3

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::config::Config;
use crate::lab::live::{Opening, Watch};
use crate::net::line::{CommandLine, LineReader, ReadError};
use crate::net::listener::{self, Admission, Listener, Refusal, Service, Welcome};
use crate::net::tls::{self, Acceptor, Stream};
use crate::pop3::command::{self, Response};
use crate::pop3::session::{
    self, Maildrops, MessageSource, Next, OpenError, Opened, Session, Step, StoredMessage, Tls,
    Wire,
};
use crate::smtp::auth;
use crate::store::maildrop::{span_reader, MaildropLock, ReaderLock};
use crate::store::mbox::{DeliveryError, MailDir};
use crate::store::mboxrd::{self, Counter, Span, MAX_PIECE};

/// RFC 1939 §3: an inactivity autologout timer "MUST be of at least 10 minutes' duration"
/// (the default of `--pop3-autologout`; a lesson may shorten it to watch it happen).
pub const AUTOLOGOUT: Duration = Duration::from_secs(10 * 60);

/// POP3 as a welcome socket's service: what every session of one listener shares.
struct Pop3 {
    config: Arc<Config>,
    tls: Option<Arc<Acceptor>>,
    implicit_tls: bool,
    maildrops: Arc<dyn Maildrops>,
    sessions: AtomicU64,
}

/// Accept on a background thread, counted by the server's `admission`; maildrops are the
/// mbox files of `config.mail_dir`. Dropping the `Welcome` stops it; sessions already
/// running finish on their own.
pub fn spawn(
    listener: Listener,
    config: Arc<Config>,
    tls: Option<Arc<Acceptor>>,
    admission: Arc<Admission>,
) -> Welcome {
    let addr = listener.local_addr();
    let maildrops = Arc::new(MboxMaildrops {
        mail_dir: MailDir::new(config.mail_dir.clone()),
    });
    let service = Arc::new(Pop3 {
        config,
        tls,
        implicit_tls: listener.implicit_tls,
        maildrops,
        sessions: AtomicU64::new(0),
    });
    info!("POP3 listening on {addr}");
    Welcome::spawn(listener.bound, admission, service)
}

impl Service for Pop3 {
    fn session(&self, stream: TcpStream) -> (String, Box<dyn FnOnce() + Send>) {
        let id = format!("P{}", self.sessions.fetch_add(1, Ordering::SeqCst) + 1);
        let tls = Tls {
            available: self.tls.is_some(),
            active: self.implicit_tls,
        };
        let session = Session::new(self.config.clone(), self.maildrops.clone(), tls);
        let Ok(peer) = stream.peer_addr() else {
            return (format!("pop3-{id}"), Box::new(|| ()));
        };
        let session = session.with_peer(listener::canonical(peer).ip());
        let acceptor = self.tls.clone();
        let (implicit_tls, idle) = (self.implicit_tls, self.config.idle_timeout);
        let name = format!("pop3-{id}");
        let serve = move || serve_tcp(stream, session, id, (acceptor, idle), implicit_tls);
        (name, Box::new(serve))
    }

    fn refuse(&self, stream: TcpStream, why: Refusal) {
        let text = match why {
            Refusal::Full => "Too many connections; try again later",
            Refusal::TooManyFromAddress => {
                "Too many connections from your address; close one of them and try again"
            }
        };
        listener::say_and_close(stream, &Response::err(text).to_wire());
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
    info!("[{id}] POP3 connect from {peer}");
    let watch = open_watch(&session, &stream, &id, implicit_tls);
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
    serve(stream, session, &id, acceptor, idle, watch);
}

/// Tell `--web` a POP3 session opened (`None` without `--web`).
fn open_watch(session: &Session, stream: &TcpStream, id: &str, tls: bool) -> Option<Watch> {
    session.live().open(Opening {
        id: id.to_string(),
        peer: stream.peer_addr().ok()?,
        role: if tls { "POP3S" } else { "POP3" },
        machine: "pop3",
        state: format!("{:?}", session::StateName::Authorization),
    })
}

/// One client on this thread, over any stream with a read deadline. Errors end the
/// connection; they are logged, never panics. `watch` reports to `--web`.
pub fn serve(
    stream: Stream,
    session: Session,
    id: &str,
    acceptor: Option<Arc<Acceptor>>,
    idle: Duration,
    watch: Option<Watch>,
) {
    let mut connection = Connection {
        stream: Some(stream),
        acceptor,
        idle,
        lines: LineReader::new(),
        session,
        id,
        output: Vec::new(),
        watch,
    };
    let outcome = connection.run();
    let state = connection.session.state().name();
    match outcome {
        Ok(reason) => info!("[{id}] POP3 disconnect ({reason}, state {state:?})"),
        Err(error) => info!("[{id}] POP3 disconnect ({error}, state {state:?})"),
    }
    // Dropping the session here releases the maildrop lock. A session that did not reach
    // UPDATE removes nothing (RFC 1939 §6).
}

/// One client, from greeting to close.
struct Connection<'a> {
    /// `None` only for the instant of a TLS handshake.
    stream: Option<Stream>,
    acceptor: Option<Arc<Acceptor>>,
    /// The server's idle timeout (`--timeout`), which also bounds an STLS handshake.
    idle: Duration,
    lines: LineReader,
    session: Session,
    id: &'a str,
    output: Vec<u8>,
    /// `--web`: lines and moves for the live view.
    watch: Option<Watch>,
}

impl Connection<'_> {
    // ANCHOR: run
    /// Read a line, step the session, write the responses; after QUIT in TRANSACTION, UPDATE.
    fn run(&mut self) -> io::Result<&'static str> {
        let greeting = self.session.greeting();
        self.send(&[greeting])?;
        self.flush()?;
        loop {
            let mut step = match self.read_command()? {
                Ok(step) => step,
                Err(reason) => return Ok(reason),
            };
            if !step.pause.is_zero() {
                self.flush()?;
                thread::sleep(step.pause);
            }
            if step.next == Next::Update {
                self.send(&step.responses)?;
                step = self.session.update();
            }
            if step.next == Next::StartTls {
                self.send(&step.responses)?;
                self.flush()?;
                self.starttls()?;
                continue;
            }
            self.send(&step.responses)?;
            if step.next == Next::Close {
                self.flush()?;
                return Ok("closed by the session");
            }
            if self.lines.must_flush(self.output.len()) {
                self.flush()?;
            }
        }
    }
    // ANCHOR_END: run

    /// Read and step one command line; `Err(reason)` means the session is over.
    fn read_command(&mut self) -> io::Result<Result<Step, &'static str>> {
        let deadline = Instant::now() + self.session.autologout();
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no stream"))?;
        let line = match self.lines.read_command(stream, deadline) {
            Ok(CommandLine::Line(line)) => line,
            Ok(CommandLine::TooLong) => {
                let response = Response::err("Command line too long (RFC 2449 §4)");
                return Ok(Ok(self.session.refuse_line(response)));
            }
            // RFC 1939 §3: at autologout "the server should close the TCP connection without
            // removing any messages or sending any response to the client".
            Err(ReadError::Timeout) => return Ok(Err("autologout")),
            Err(ReadError::Closed { .. }) => return Ok(Err("client closed the connection")),
            Err(ReadError::Io(error)) => return Err(error),
        };
        let secret = is_pass(&line.bytes).then(|| auth::secret_after(&line.bytes, 1));
        let shown = auth::Masked::new(&line.bytes, secret.flatten());
        debug!("[{}] C: {shown}", self.id);
        let step = self.session.command(&line.bytes);
        if let Some(watch) = &self.watch {
            watch.command(shown);
            watch.moved(
                &format!("{:?}", step.from),
                &format!("{:?}", step.to),
                step.rfc,
            );
        }
        Ok(Ok(step))
    }

    /// Queue responses; `flush` writes them. A RETR or TOP message is streamed at once, after
    /// what is queued, through a buffer of `MAX_PIECE`.
    fn send(&mut self, responses: &[Response]) -> io::Result<()> {
        for response in responses {
            // A response may quote the client; the log is read on a terminal too.
            let logged = crate::visible::sanitize(&response.to_string());
            debug!("[{}] S: {logged}", self.id);
            let wire = response.to_wire();
            if let Some(watch) = &self.watch {
                // The status line only: the lines after it may be a message (RETR, TOP).
                watch.server(String::from_utf8_lossy(&wire).lines().next().unwrap_or(""));
            }
            self.output.extend_from_slice(&wire);
            if let Some(retrieval) = response.stream {
                self.flush()?;
                let stream = self
                    .stream
                    .as_mut()
                    .ok_or_else(|| io::Error::other("no stream"))?;
                let capacity = usize::try_from(MAX_PIECE).map_err(io::Error::other)?;
                let mut out = BufWriter::with_capacity(capacity, stream);
                self.session.send_message(retrieval, &mut out)?;
                out.flush()?;
            }
        }
        Ok(())
    }

    /// STLS: forget unread plaintext (as SMTP's STARTTLS, CVE-2011-0411), then the handshake.
    fn starttls(&mut self) -> io::Result<()> {
        self.lines.discard_buffered();
        tls::upgrade(&mut self.stream, self.acceptor.as_deref(), self.idle)?;
        self.session.tls_started();
        info!("[{}] POP3 TLS started", self.id);
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

/// Passwords never go to the log: a line whose verb, as the parser reads it, is PASS.
fn is_pass(line: &[u8]) -> bool {
    let verb = line
        .split(|b| *b == b' ' || *b == b'\t')
        .find(|w| !w.is_empty());
    verb.is_some_and(|word| {
        command::VERBS.iter().any(|info| {
            info.verb == command::Verb::Pass && word.eq_ignore_ascii_case(info.name.as_bytes())
        })
    })
}

// ANCHOR: mbox_maildrops
/// Maildrops as mbox files: `DIR/<user>`, the same files SMTP delivers to.
pub struct MboxMaildrops {
    pub mail_dir: MailDir,
}

impl Maildrops for MboxMaildrops {
    /// Take the reader lock for the whole session (a second login gets `[IN-USE]`), then the
    /// delivery lock only while indexing, so SMTP goes on delivering during the session. Only
    /// each message's place, size and unique-id are kept: RETR reads the message when asked.
    fn open(&self, user: &str) -> Result<Opened, OpenError> {
        let failed = |error: DeliveryError| {
            warn!("POP3 cannot open the maildrop of {user}: {error}");
            OpenError::Failed(error.to_string())
        };
        let reader = self
            .mail_dir
            .try_lock_reader(user)
            .map_err(failed)?
            .ok_or(OpenError::InUse)?;
        let locked = self.mail_dir.lock_maildrop(user).map_err(failed)?;
        let snapshot = Snapshot::index(&locked, reader)
            .map_err(|e| failed(DeliveryError::Io(user.to_string(), e)))?;
        let uids = session::ids_of_hashes(snapshot.messages.iter().map(|m| m.hash));
        let messages = snapshot
            .messages
            .iter()
            .zip(uids)
            .map(|(m, uid)| StoredMessage { uid, size: m.size })
            .collect();
        Ok(Opened {
            messages,
            source: Box::new(snapshot),
        })
    }

    /// UPDATE: under the delivery lock, index the file as it is now, find the deleted messages
    /// by unique-id (mail that arrived meanwhile, or that another program rewrote, has other
    /// ids and stays), rewrite atomically.
    fn commit(&self, user: &str, deleted: &[String]) -> Result<usize, String> {
        let removed = self.mail_dir.rewrite_without(user, |locked, spans| {
            let hashes = spans
                .iter()
                .map(|span| {
                    let mut raw = Hashing::new(locked.span_reader(*span)?);
                    io::copy(&mut raw, &mut io::sink()).map(|_| raw.hash)
                })
                .collect::<io::Result<Vec<u64>>>()?;
            let uids = session::ids_of_hashes(hashes);
            Ok(uids.iter().map(|uid| deleted.contains(uid)).collect())
        });
        match removed {
            Ok(removed) => {
                info!("POP3 {user}: removed {removed} messages");
                Ok(removed)
            }
            Err(error) => {
                warn!("POP3 {user}: cannot remove deleted messages: {error}");
                Err(error.to_string())
            }
        }
    }
}
// ANCHOR_END: mbox_maildrops

// ANCHOR: snapshot
/// The maildrop as it was at login: where each message lies in the file, its hash and its
/// size, but not its bytes. RETR reads a message from the file and checks the hash, so a
/// message another program moved or changed since is refused, never served wrong.
struct Snapshot {
    /// The mbox at login, open for reading. A file renamed over the name later is another
    /// file; this one still holds the messages as indexed.
    file: File,
    messages: Vec<Indexed>,
    /// The exclusive-access lock of the session (RFC 1939 §4), released when this is dropped.
    _reader: ReaderLock,
}

struct Indexed {
    span: Span,
    hash: u64,
    size: usize,
}

impl Snapshot {
    /// Read the locked maildrop once, a message at a time, each in bounded memory: its hash
    /// and its size on the wire in one pass.
    fn index(locked: &MaildropLock, reader: ReaderLock) -> io::Result<Snapshot> {
        let mut messages = Vec::new();
        for span in locked.spans()? {
            let mut raw = Hashing::new(locked.span_reader(span)?);
            let mut wire = Wire::new(Counter(0), None, false);
            mboxrd::unquoted_pieces(&mut raw, |piece| wire.piece(piece))?;
            let size = usize::try_from(wire.finish()?.0).map_err(io::Error::other)?;
            messages.push(Indexed {
                span,
                hash: raw.hash,
                size,
            });
        }
        Ok(Snapshot {
            file: locked.file().try_clone()?,
            messages,
            _reader: reader,
        })
    }

    fn indexed(&self, index: usize) -> io::Result<&Indexed> {
        self.messages
            .get(index)
            .ok_or_else(|| io::Error::other("no such message"))
    }
}

impl MessageSource for Snapshot {
    fn verify(&self, index: usize) -> io::Result<()> {
        let message = self.indexed(index)?;
        let mut raw = Hashing::new(span_reader(&self.file, message.span)?);
        io::copy(&mut raw, &mut io::sink())?;
        raw.check(message.hash)
    }

    /// Hash what is read as it is sent, to the end of the span even when TOP stops early, so a
    /// message changed between `verify` and now is caught before the final `.`.
    fn send(&self, index: usize, wire: &mut Wire<&mut dyn Write>) -> io::Result<()> {
        let message = self.indexed(index)?;
        let mut raw = Hashing::new(span_reader(&self.file, message.span)?);
        mboxrd::unquoted_pieces(&mut raw, |piece| wire.piece(piece))?;
        io::copy(&mut raw, &mut io::sink())?;
        raw.check(message.hash)
    }
}

// ANCHOR_END: snapshot

/// A reader of a message's raw bytes that hashes them (`fnv1a64`) as they pass.
struct Hashing<R> {
    inner: R,
    hash: u64,
}

impl<R: BufRead> Hashing<R> {
    fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hash: session::FNV1A64_START,
        }
    }

    fn check(&self, hash: u64) -> io::Result<()> {
        if self.hash != hash {
            return Err(io::Error::other("the message changed since login"));
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hash = session::fnv1a64_more(self.hash, &out[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Hashing<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if let Ok(buffered) = self.inner.fill_buf() {
            let n = n.min(buffered.len());
            self.hash = session::fnv1a64_more(self.hash, &buffered[..n]);
        }
        self.inner.consume(n);
    }
}

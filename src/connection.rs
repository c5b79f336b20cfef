//! One client's connection: greet, read a line, ask the session, write the replies; repeat.
//! It sits at the top of the crate, beside `server.rs`, because it joins three parts: the
//! socket (`net/`), the protocol (`smtp/`, which needs no socket) and the classroom tools
//! around it (`lab/`: coaching, `--trace`, `--transcripts`, `--fault`).
//!
//! Interface:
//! - `serve(stream, context, number, role)` runs one session to its end on the calling thread.
//!
//! Replies are buffered and flushed when no further input is waiting (RFC 2920: a client may
//! send a group of commands at once and must get every reply, in order), or once they pass
//! `line::FLUSH_AT`, so a client that never reads cannot pile them up. Every read has a
//! deadline (RFC 5321 §4.5.3.2.7), in the clear and inside TLS alike, so a silent or trickling
//! client is closed with 421; so is one that sends only junk commands (`JUNK_COMMAND_LIMIT`).
//! STARTTLS drops every byte that arrived before the handshake (RFC 3207 §4.2, CVE-2011-0411).
//! The peer address is IPv4 when the client is, also on a `[::]` listener.
//! With `--trace` every line in and out, each state transition, connect, disconnect and TLS
//! start go to the console (`trace::Console`), which also feeds `--web`; `--fault greeting=...`
//! rules act in `start`.
//!
//! Standards: RFC 5321 §4.5.3.2.7, §3.8, §4.1.1.4, RFC 2920 §3.1, RFC 3207 §4.2, RFC 8314 §3.3,
//!   RFC 3030 §2

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::config::Config;
use crate::lab::coach::Coach;
use crate::lab::fault::{self, Action};
use crate::lab::recorder::Recorder;
use crate::lab::trace::{self, Console, Style};
use crate::net::line::{CommandLine, Ending, LineReader, Piece, ReadError};
use crate::net::listener;
use crate::net::tls::{self, Acceptor, Stream};
use crate::smtp::auth;
use crate::smtp::body::READ_CHUNK;
use crate::smtp::command::{self, Command};
use crate::smtp::data::DataReader;
use crate::smtp::envelope::Deliver;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Endpoint, Next, Role, Session, StateName, Step};

/// Postfix's `smtpd_min_data_rate`: after a first `--timeout` of grace, a message must keep
/// arriving at this many octets a second on average. Without it, a client that sends one line
/// just inside every timeout could hold a thread for ever (slowloris).
pub const MIN_DATA_RATE: u64 = 500;

/// Postfix's `smtpd_junk_command_limit`: this many commands that move no mail (NOOP, RSET,
/// VRFY, EXPN, HELP, `BDAT 0`) in a row, and the next one gets 421. A delivered message starts
/// the count again, so a long honest session is never cut short.
const JUNK_COMMAND_LIMIT: u32 = 100;

/// When the next piece of message data must have arrived: within the idle timeout, and within
/// the time the octets received so far have earned at `MIN_DATA_RATE`.
fn data_deadline(started: Instant, received: u64, idle: Duration) -> Instant {
    let earned = Duration::from_secs(received / MIN_DATA_RATE);
    (Instant::now() + idle).min(started + idle + earned)
}

/// What every connection shares: the configuration, the delivery hook, the TLS acceptor.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub deliver: Arc<dyn Deliver>,
    pub tls: Option<Arc<Acceptor>>,
}

/// Why a session ended without a QUIT: said in the log line of the disconnect.
type Ended = &'static str;

/// One client, from accept to close.
struct Connection {
    /// `None` only for the instant of a TLS handshake.
    stream: Option<Stream>,
    peer: SocketAddr,
    lines: LineReader,
    /// The session, with the classroom tools (coaching, `--explain`, `--fault`) around it.
    session: Coach,
    context: Context,
    output: Vec<u8>,
    /// `--transcripts`: this session written down as it happens.
    recorder: Option<Recorder>,
    /// `--trace`: the teacher's console.
    console: Option<Console>,
    /// Junk commands since the last delivered message (`JUNK_COMMAND_LIMIT`).
    junk: u32,
}

/// Run one session on this thread. Errors end the connection; they are logged, never panics.
pub fn serve(tcp: TcpStream, context: Context, number: u64, role: Role) {
    let id = format!("S{number}");
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
    let (peer, local) = (listener::canonical(peer), listener::canonical(local));
    info!("[{id}] connect from {peer} ({role:?} listener {local})");
    if let Err(error) = tcp.set_write_timeout(Some(context.config.idle_timeout)) {
        warn!("[{id}] cannot set a write timeout: {error}");
        return;
    }
    let endpoint = Endpoint {
        role,
        tls_available: context.tls.is_some(),
    };
    let session = Session::new(
        context.config.clone(),
        context.deliver.clone(),
        endpoint,
        (peer, local),
        id.clone(),
    );
    let session = Coach::new(session, context.config.clone());
    let recorder = context.config.transcripts.as_deref().and_then(|dir| {
        Recorder::start(&context.config, peer, number, &id)
            .map_err(|error| {
                warn!(
                    "[{id}] cannot record a transcript in {}: {error}",
                    dir.display()
                )
            })
            .ok()
    });
    let console = Console::open(&context.config, Style::for_stdout(number), &id, peer, role);
    if let Some(console) = &console {
        console.event(&connect_text(peer, local, role, &context.config.faults));
    }
    let mut connection = Connection {
        stream: Some(Stream::Plain(tcp)),
        peer,
        lines: LineReader::new(),
        session,
        context,
        output: Vec::new(),
        recorder,
        console,
        junk: 0,
    };
    let outcome = match connection.start(role) {
        Ok(None) => connection.run(),
        Ok(Some(reason)) => Ok(reason),
        Err(error) => Err(error),
    };
    let state = connection.session.state().name();
    let reason = match outcome {
        Ok(reason) => reason.to_string(),
        Err(error) => error.to_string(),
    };
    info!("[{id}] disconnect from {peer} ({reason}, state {state:?})");
    if let Some(console) = &connection.console {
        console.event(&format!("disconnect ({reason}, state {state:?})"));
    }
}

/// `connect from 127.0.0.1:40112 to 127.0.0.1:2525 (Relay)`, and the faults in force.
fn connect_text(peer: SocketAddr, local: SocketAddr, role: Role, faults: &[fault::Rule]) -> String {
    let mut text = format!("connect from {peer} to {local} ({role:?} listener)");
    if !faults.is_empty() {
        let rules: Vec<&str> = faults.iter().map(|r| r.text.as_str()).collect();
        text.push_str(&format!("; scripted faults: {}", rules.join(", ")));
    }
    text
}

/// How long a DATA phase may be silent before the console hint: `DATA_HINT_AFTER`, or half
/// the idle timeout when that is shorter, so the hint comes before the 421.
fn data_hint_after(idle: Duration) -> Duration {
    trace::DATA_HINT_AFTER.min(idle / 2)
}

impl Connection {
    /// Implicit TLS (RFC 8314 §3.3): the handshake comes before the greeting. `--fault greeting=`
    /// rules may delay the greeting, replace it with 421, or close without one; then the
    /// session is over before it began (`Some(reason)`).
    fn start(&mut self, role: Role) -> io::Result<Option<Ended>> {
        if role == Role::ImplicitTls {
            self.handshake()?;
        }
        let config = self.context.config.clone();
        for rule in fault::greeting_rules(&config.faults) {
            if let Some(console) = &self.console {
                console.event(&format!("scripted fault {}", rule.text));
            }
            match (rule.action, rule.reply()) {
                // One thread per client: this sleep holds up this client only.
                (Action::Delay(pause), _) => std::thread::sleep(pause),
                (_, Some(reply)) => {
                    self.send_and_flush(&[reply])?;
                    return Ok(Some("scripted fault before the greeting"));
                }
                (_, None) => return Ok(Some("scripted fault: closed before the greeting")),
            }
        }
        let greeting = self.session.greeting();
        self.send(&[greeting]);
        self.flush()?;
        Ok(None)
    }

    // ANCHOR: run
    /// The loop of the lesson: read a line, step the session, write the replies.
    fn run(&mut self) -> io::Result<Ended> {
        loop {
            let (step, ending) = match self.read_command()? {
                Ok(pair) => pair,
                Err(reason) => return Ok(reason),
            };
            let step = match step.next {
                Next::ReadData => {
                    self.send_and_flush(&step.replies)?;
                    match self.read_message(ending)? {
                        Ok(step) => self.after_message(step),
                        Err(reason) => return Ok(reason),
                    }
                }
                Next::ReadChunk(size) => {
                    self.send(&step.replies);
                    match self.read_chunk(size)? {
                        Ok(step) => self.after_message(step),
                        Err(reason) => return Ok(reason),
                    }
                }
                Next::StartTls => {
                    self.send_and_flush(&step.replies)?;
                    self.starttls()?;
                    continue;
                }
                Next::ReadCommand | Next::Close => step,
            };
            self.send(&step.replies);
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

    // ANCHOR: junk
    /// Count a command that moves no mail; past `JUNK_COMMAND_LIMIT` its answer is 421 and the
    /// session ends, so NOOP or `BDAT 0` for ever cannot hold a thread.
    fn limit_junk(&mut self, junk: bool, mut step: Step) -> Step {
        self.junk += u32::from(junk);
        if junk && self.junk > JUNK_COMMAND_LIMIT {
            step.replies = vec![Reply::TOO_MANY_JUNK_COMMANDS_421];
            step.next = Next::Close;
        }
        step
    }

    /// A message was delivered (250 back in Greeted): junk counts from zero again.
    fn after_message(&mut self, step: Step) -> Step {
        if step.to == StateName::Greeted && step.replies.iter().any(|r| r.code == 250) {
            self.junk = 0;
        }
        step
    }
    // ANCHOR_END: junk

    /// Read and step one command line. `Err(reason)` means the session is over (the client
    /// left, or timed out and got 421).
    fn read_command(&mut self) -> io::Result<Result<(Step, Ending), Ended>> {
        let deadline = Instant::now() + self.context.config.idle_timeout;
        let (lines, stream) = self.io()?;
        let line = match lines.read_command(stream, deadline) {
            Ok(CommandLine::Line(line)) => line,
            Ok(CommandLine::TooLong) => {
                if let Some(console) = &self.console {
                    console.client(b"(a line over 512 octets, skipped)");
                }
                let step = self.session.refuse_line(Reply::LINE_TOO_LONG_500);
                self.trace_step(&step);
                return Ok(Ok((step, Ending::CrLf)));
            }
            Err(error) => return self.read_failed(error).map(Err),
        };
        // One decision, from the command's words, masks the secret everywhere the line goes.
        let sasl = self.session.state().name() == StateName::Authenticating;
        let shown = auth::Masked::new(&line.bytes, auth::smtp_secret(&line.bytes, sasl));
        debug!("[{}] C: {shown}", self.session.id());
        self.record_client(shown, Some(line.ending));
        if let Some(console) = &self.console {
            console.command(shown);
        }
        let junk = self.session.state().name() != StateName::Authenticating && is_junk(&line.bytes);
        // Rule LE-3: a CR inside a command line is not a line end; say so instead of guessing.
        let step = if line.bytes.contains(&b'\r') {
            self.session.refuse_line(
                Reply::UNKNOWN_COMMAND_500.text("Syntax error (bare CR in a command line)"),
            )
        } else {
            self.session.command(&line.bytes)
        };
        let step = self.limit_junk(junk, step);
        self.trace_step(&step);
        Ok(Ok((step, line.ending)))
    }

    /// `--trace`: the state the step moved the session to, and the RFC section behind it.
    fn trace_step(&self, step: &Step) {
        if let Some(console) = &self.console {
            console.transition((step.from, step.to), step.rfc, self.session.fired());
        }
    }

    // ANCHOR: read_message
    /// After 354: read pieces until the end of data, then let the session deliver. Nothing is
    /// stored unless the whole message arrived.
    fn read_message(&mut self, data_ending: Ending) -> io::Result<Result<Step, Ended>> {
        let max = usize::try_from(self.context.config.max_size).unwrap_or(usize::MAX);
        let mut data = DataReader::new(max, data_ending, &self.context.config.mail_dir);
        let mut shown = TracedData::default();
        let (started, mut received) = (Instant::now(), 0u64);
        loop {
            let deadline = data_deadline(started, received, self.context.config.idle_timeout);
            match self.read_data_piece(&mut shown.hinted, deadline)? {
                Ok(piece) => {
                    received += piece.bytes.len() as u64 + 2;
                    self.record_client(auth::Masked::new(&piece.bytes, None), piece.ending);
                    let end = data.push(&piece, self.lines.saw_cr());
                    shown.line(self.console.as_ref(), &piece.bytes, end);
                    if end {
                        break;
                    }
                }
                Err(error) => return self.read_failed(error).map(Err),
            }
        }
        let content = data.finish(self.lines.saw_cr());
        let step = self.session.end_of_data(content);
        self.trace_step(&step);
        Ok(Ok(step))
    }
    // ANCHOR_END: read_message

    // ANCHOR: data_hint
    /// The next piece of message data, within the idle timeout. With `--trace`, a silence of
    /// `data_hint_after` first prints a hint once (a student forgot the lone dot), then the
    /// read goes on until the real deadline.
    fn read_data_piece(
        &mut self,
        hinted: &mut bool,
        deadline: Instant,
    ) -> io::Result<Result<Piece, ReadError>> {
        let idle = self.context.config.idle_timeout;
        let hint_at = (Instant::now() + data_hint_after(idle)).min(deadline);
        let console = self.console.clone();
        let (lines, stream) = self.io()?;
        if let (Some(console), false) = (console, *hinted) {
            match lines.read_data(stream, hint_at) {
                Err(ReadError::Timeout) => {
                    console.data_hint();
                    *hinted = true;
                }
                other => return Ok(other),
            }
        }
        Ok(lines.read_data(stream, deadline))
    }
    // ANCHOR_END: data_hint

    /// After `BDAT size`: read exactly that many octets (RFC 3030 §2), `READ_CHUNK` at a time,
    /// handing each piece to the session, so a chunk of any size is never in memory whole.
    fn read_chunk(&mut self, size: u64) -> io::Result<Result<Step, Ended>> {
        let deadline = Instant::now() + self.context.config.idle_timeout;
        let mut room = self.session.chunk_room();
        let mut left = size;
        while left > 0 {
            let piece = left.min(READ_CHUNK as u64);
            let keep = room.min(READ_CHUNK);
            let (lines, stream) = self.io()?;
            match lines.read_chunk(stream, piece, keep, deadline) {
                Ok(kept) => {
                    room -= kept.len();
                    self.session.chunk_piece(&kept);
                }
                Err(error) => return self.read_failed(error).map(Err),
            }
            left -= piece;
        }
        if let Some(console) = &self.console {
            console.client(format!("(a chunk of {size} octets)").as_bytes());
        }
        let step = self.session.chunk(Vec::new(), size);
        self.trace_step(&step);
        Ok(Ok(step))
    }

    // ANCHOR: starttls
    /// After `220 Ready to start TLS`: forget every unread plaintext byte (an attacker may have
    /// appended commands to the STARTTLS line), then run the handshake.
    fn starttls(&mut self) -> io::Result<()> {
        self.lines.discard_buffered();
        self.handshake()?;
        self.session.tls_started();
        if let Some(recorder) = &mut self.recorder {
            recorder.tls_started();
        }
        Ok(())
    }
    // ANCHOR_END: starttls

    /// The server side of a TLS handshake; a failure ends only this connection.
    fn handshake(&mut self) -> io::Result<()> {
        let (acceptor, idle) = (
            self.context.tls.as_deref(),
            self.context.config.idle_timeout,
        );
        if let Err(error) = tls::upgrade(&mut self.stream, acceptor, idle) {
            warn!("[{}] {}: {error}", self.session.id(), self.peer);
            return Err(error);
        }
        info!("[{}] TLS started with {}", self.session.id(), self.peer);
        if let Some(console) = &self.console {
            console.event("TLS started (RFC 3207 §4.2: the session starts again from Connected)");
        }
        Ok(())
    }

    /// The input buffer and the stream, borrowed together for a read.
    fn io(&mut self) -> io::Result<(&mut LineReader, &mut Stream)> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("connection closed"))?;
        Ok((&mut self.lines, stream))
    }

    /// A read that produced no line: the client left (nothing to say), the deadline passed
    /// (421 4.4.2, RFC 5321 §3.8 allows closing after a timeout), or an I/O error.
    fn read_failed(&mut self, error: ReadError) -> io::Result<Ended> {
        match error {
            ReadError::Closed { partial } if partial.is_empty() => {
                Ok("client closed the connection")
            }
            ReadError::Closed { partial } => {
                let sasl = self.session.state().name() == StateName::Authenticating;
                let secret = auth::smtp_secret(&partial, sasl);
                self.record_client(auth::Masked::new(&partial, secret), None);
                Ok("client closed the connection in the middle of a line")
            }
            ReadError::Timeout => {
                self.send_and_flush(&[Reply::TIMEOUT_421])?;
                Ok("timeout")
            }
            ReadError::Io(error) => Err(error),
        }
    }

    /// Queue replies; `flush` writes them.
    fn send(&mut self, replies: &[Reply]) {
        for reply in replies {
            let text = reply.to_string();
            // A reply may quote the client; the log is read on a terminal too.
            let logged = crate::visible::sanitize(text.trim_end());
            if reply.is_error() {
                info!("[{}] {} S: {logged}", self.session.id(), self.peer);
            } else {
                debug!("[{}] S: {logged}", self.session.id());
            }
            self.output.extend_from_slice(text.as_bytes());
            if let Some(console) = &self.console {
                console.server(&text);
            }
            if let Some(recorder) = &mut self.recorder {
                recorder.server_reply(&text);
            }
        }
    }

    fn send_and_flush(&mut self, replies: &[Reply]) -> io::Result<()> {
        self.send(replies);
        self.flush()
    }

    /// Record what the client sent. A fragment of a very long line is recorded as a line of its
    /// own (marked as ending without a line end); whole lines keep their real ending.
    fn record_client(&mut self, shown: auth::Masked, ending: Option<Ending>) {
        if let Some(recorder) = &mut self.recorder {
            recorder.client_line(shown, ending);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let output = std::mem::take(&mut self.output);
        let (_, stream) = self.io()?;
        if !output.is_empty() {
            stream.write_all(&output)?;
        }
        stream.flush()
    }
}

/// NOOP, RSET, VRFY, EXPN, HELP and `BDAT 0`: commands a script can repeat for ever without
/// sending mail (`JUNK_COMMAND_LIMIT`).
fn is_junk(line: &[u8]) -> bool {
    matches!(
        command::parse(line),
        Ok(Command::Noop
            | Command::Rset
            | Command::Vrfy(_)
            | Command::Expn(_)
            | Command::Help(_)
            | Command::Bdat {
                size: 0,
                last: false
            })
    )
}

/// What the console has shown of one message: a projector has room for a letter.
#[derive(Default)]
struct TracedData {
    lines: usize,
    hidden: usize,
    /// The "still in DATA" hint was printed for this message.
    hinted: bool,
}

impl TracedData {
    /// Show a data line, up to `MAX_DATA_LINES_SHOWN`; the end-of-data line always shows,
    /// after a count of the lines left out.
    fn line(&mut self, console: Option<&Console>, bytes: &[u8], end: bool) {
        let Some(console) = console else {
            return;
        };
        self.lines += 1;
        if end && self.hidden > 0 {
            console.event(&format!(
                "({} more lines of the message not shown)",
                self.hidden
            ));
        }
        if end || self.lines <= trace::MAX_DATA_LINES_SHOWN {
            console.data(bytes);
        } else {
            self.hidden += 1;
        }
    }
}

//! One client's connection: greet, read a line, ask the session, write the replies; repeat.
//!
//! Interface:
//! - `serve(stream, context, number, role)` runs one session to its end on the calling thread.
//!
//! Replies are buffered and flushed only when no further input is waiting (RFC 2920: a client
//! may send a group of commands at once and must get every reply, in order). Every read has a
//! deadline (RFC 5321 §4.5.3.2.7), so a silent or trickling client is closed with 421. STARTTLS
//! drops every byte that arrived before the handshake (RFC 3207 §4.2, CVE-2011-0411).
//!
//! Standards: RFC 5321 §4.5.3.2.7, RFC 5321 §3.8, RFC 2920 §3.1, RFC 5321 §4.1.1.4, RFC 3207 §4.2, RFC 8314 §3.3, RFC 3030 §2

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info, warn};
use native_tls::TlsAcceptor;

use crate::config::Config;
use crate::data::DataReader;
use crate::line::{CommandLine, Ending, LineReader, ReadError};
use crate::reply::Reply;
use crate::session::{Deliver, Endpoint, Next, Role, Session, Step};
use crate::tls::Stream;
use crate::transcript::{LineEnding, Recorder};

/// What every connection shares: the configuration, the delivery hook, the TLS acceptor.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub deliver: Arc<dyn Deliver>,
    pub tls: Option<Arc<TlsAcceptor>>,
}

/// Why a session ended without a QUIT: said in the log line of the disconnect.
type Ended = &'static str;

/// One client, from accept to close.
struct Connection {
    /// `None` only for the instant of a TLS handshake.
    stream: Option<Stream>,
    peer: SocketAddr,
    lines: LineReader,
    session: Session,
    context: Context,
    output: Vec<u8>,
    /// `--transcripts`: this session written down as it happens.
    recorder: Option<Recorder>,
}

/// Run one session on this thread. Errors end the connection; they are logged, never panics.
pub fn serve(tcp: TcpStream, context: Context, number: u64, role: Role) {
    let id = format!("S{number}");
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
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
    let recorder = context.config.transcripts.as_deref().and_then(|dir| {
        Recorder::create(dir, peer, number, &format!("Session {id} from {peer}"))
            .map_err(|error| {
                warn!(
                    "[{id}] cannot record a transcript in {}: {error}",
                    dir.display()
                )
            })
            .ok()
    });
    let mut connection = Connection {
        stream: Some(Stream::Plain(tcp)),
        peer,
        lines: LineReader::new(),
        session,
        context,
        output: Vec::new(),
        recorder,
    };
    let outcome = connection.start(role).and_then(|()| connection.run());
    let state = connection.session.state().name();
    match outcome {
        Ok(reason) => info!("[{id}] disconnect from {peer} ({reason}, state {state:?})"),
        Err(error) => info!("[{id}] disconnect from {peer} ({error}, state {state:?})"),
    }
}

impl Connection {
    /// Implicit TLS (RFC 8314 §3.3): the handshake comes before the greeting.
    fn start(&mut self, role: Role) -> io::Result<()> {
        if role == Role::ImplicitTls {
            self.handshake()?;
        }
        let greeting = self.session.greeting();
        self.send(&[greeting]);
        self.flush()
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
                        Ok(step) => step,
                        Err(reason) => return Ok(reason),
                    }
                }
                Next::ReadChunk(size) => {
                    self.send(&step.replies);
                    match self.read_chunk(size)? {
                        Ok(step) => step,
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
            if !self.lines.has_buffered() {
                self.flush()?;
            }
        }
    }
    // ANCHOR_END: run

    /// Read and step one command line. `Err(reason)` means the session is over (the client
    /// left, or timed out and got 421).
    fn read_command(&mut self) -> io::Result<Result<(Step, Ending), Ended>> {
        let deadline = Instant::now() + self.context.config.idle_timeout;
        let (lines, stream) = self.io()?;
        let line = match lines.read_command(stream, deadline) {
            Ok(CommandLine::Line(line)) => line,
            Ok(CommandLine::TooLong) => {
                return Ok(Ok((
                    self.session.refuse_line(Reply::LINE_TOO_LONG_500),
                    Ending::CrLf,
                )));
            }
            Err(error) => return self.read_failed(error).map(Err),
        };
        debug!(
            "[{}] C: {}",
            self.session.id(),
            String::from_utf8_lossy(&line.bytes)
        );
        self.record_client(&line.bytes, Some(line.ending));
        // Rule LE-3: a CR inside a command line is not a line end; say so instead of guessing.
        let step = if line.bytes.contains(&b'\r') {
            self.session.refuse_line(
                Reply::UNKNOWN_COMMAND_500.text("Syntax error (bare CR in a command line)"),
            )
        } else {
            self.session.command(&line.bytes)
        };
        Ok(Ok((step, line.ending)))
    }

    // ANCHOR: read_message
    /// After 354: read pieces until the end of data, then let the session deliver. Nothing is
    /// stored unless the whole message arrived.
    fn read_message(&mut self, data_ending: Ending) -> io::Result<Result<Step, Ended>> {
        let max = usize::try_from(self.context.config.max_size).unwrap_or(usize::MAX);
        let mut data = DataReader::new(max, data_ending);
        loop {
            let deadline = Instant::now() + self.context.config.idle_timeout;
            let (lines, stream) = self.io()?;
            match lines.read_data(stream, deadline) {
                Ok(piece) => {
                    self.record_client(&piece.bytes, piece.ending);
                    if data.push(&piece, self.lines.saw_cr()) {
                        break;
                    }
                }
                Err(error) => return self.read_failed(error).map(Err),
            }
        }
        let content = data.finish(self.lines.saw_cr());
        Ok(Ok(self.session.end_of_data(content)))
    }
    // ANCHOR_END: read_message

    /// After `BDAT size`: read exactly that many octets (RFC 3030 §2).
    fn read_chunk(&mut self, size: u64) -> io::Result<Result<Step, Ended>> {
        let deadline = Instant::now() + self.context.config.idle_timeout;
        let room = self.session.chunk_room();
        let (lines, stream) = self.io()?;
        match lines.read_chunk(stream, size, room, deadline) {
            Ok(kept) => Ok(Ok(self.session.chunk(kept, size))),
            Err(error) => self.read_failed(error).map(Err),
        }
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
        let acceptor = self
            .context
            .tls
            .clone()
            .ok_or_else(|| io::Error::other("TLS is not configured"))?;
        let plain = self
            .stream
            .take()
            .ok_or_else(|| io::Error::other("no stream"))?;
        match plain.start_tls(&acceptor) {
            Ok(tls) => {
                info!("[{}] TLS started with {}", self.session.id(), self.peer);
                self.stream = Some(tls);
                Ok(())
            }
            Err(error) => {
                warn!("[{}] {}: {error}", self.session.id(), self.peer);
                Err(io::Error::other(error))
            }
        }
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
                if let Some(recorder) = &mut self.recorder {
                    recorder.client_line(&partial, LineEnding::None);
                }
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
            if reply.is_error() {
                info!(
                    "[{}] {} S: {}",
                    self.session.id(),
                    self.peer,
                    text.trim_end()
                );
            } else {
                debug!("[{}] S: {}", self.session.id(), text.trim_end());
            }
            self.output.extend_from_slice(text.as_bytes());
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
    fn record_client(&mut self, bytes: &[u8], ending: Option<Ending>) {
        if let Some(recorder) = &mut self.recorder {
            let ending = match ending {
                Some(Ending::CrLf) => LineEnding::CrLf,
                Some(Ending::Lf) => LineEnding::Lf,
                None => LineEnding::None,
            };
            recorder.client_line(bytes, ending);
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

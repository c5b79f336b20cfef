//! One client's connection: greet, read a line, ask the session, write the replies; repeat.
//!
//! Interface:
//! - `serve(stream, context, id)` runs one session to its end on the calling thread.
//!
//! Replies are buffered and flushed only when no further input is waiting (RFC 2920: a client
//! may send a group of commands at once and must get every reply, in order). Every read has a
//! deadline (RFC 5321 §4.5.3.2.7), so a silent or trickling client is closed with 421.
//!
//! Standards: RFC 5321 §4.5.3.2.7, RFC 5321 §3.8, RFC 2920 §3.1, RFC 5321 §4.1.1.4

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info, warn};

use crate::config::Config;
use crate::data::DataReader;
use crate::line::{CommandLine, Ending, LineReader, ReadError};
use crate::reply::Reply;
use crate::session::{Deliver, Next, Session, Step};
use crate::transcript::{LineEnding, Recorder};

/// What every connection shares: the configuration and the delivery hook.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub deliver: Arc<dyn Deliver>,
}

/// One client, from accept to close.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    lines: LineReader,
    session: Session,
    config: Arc<Config>,
    output: Vec<u8>,
    /// `--transcripts`: this session written down as it happens.
    recorder: Option<Recorder>,
}

/// Run one session on this thread. Errors end the connection; they are logged, never panics.
pub fn serve(stream: TcpStream, context: Context, number: u64) {
    let id = format!("S{number}");
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    info!("[{id}] connect from {peer}");
    if let Err(error) = stream.set_write_timeout(Some(context.config.idle_timeout)) {
        warn!("[{id}] cannot set a write timeout: {error}");
        return;
    }
    let session = Session::new(
        context.config.clone(),
        context.deliver,
        peer,
        local,
        id.clone(),
    );
    let recorder = context.config.transcripts.as_deref().and_then(|dir| {
        let title = format!("Session {id} from {peer}");
        Recorder::create(dir, peer, number, &title)
            .map_err(|error| {
                warn!(
                    "[{id}] cannot record a transcript in {}: {error}",
                    dir.display()
                )
            })
            .ok()
    });
    let mut connection = Connection {
        stream,
        peer,
        lines: LineReader::new(),
        session,
        config: context.config,
        output: Vec::new(),
        recorder,
    };
    let outcome = connection.run();
    let state = connection.session.state().name();
    match outcome {
        Ok(reason) => info!("[{id}] disconnect from {peer} ({reason}, state {state:?})"),
        Err(error) => info!("[{id}] disconnect from {peer} ({error}, state {state:?})"),
    }
}

impl Connection {
    // ANCHOR: run
    /// The loop of the lesson: read a line, step the session, write the replies.
    fn run(&mut self) -> io::Result<&'static str> {
        let greeting = self.session.greeting();
        self.send(&[greeting]);
        self.flush()?;
        loop {
            let (mut step, ending) = match self.read_command()? {
                Ok(pair) => pair,
                Err(reason) => return Ok(reason),
            };
            if step.next == Next::ReadData {
                self.send(&step.replies);
                self.flush()?;
                step = match self.read_message(ending)? {
                    Ok(step) => step,
                    Err(reason) => return Ok(reason),
                };
            }
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
    fn read_command(&mut self) -> io::Result<Result<(Step, Ending), &'static str>> {
        let deadline = Instant::now() + self.config.idle_timeout;
        let line = match self.lines.read_command(&mut self.stream, deadline) {
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
    fn read_message(&mut self, data_ending: Ending) -> io::Result<Result<Step, &'static str>> {
        let mut data = DataReader::new(
            usize::try_from(self.config.max_size).unwrap_or(usize::MAX),
            data_ending,
        );
        loop {
            let deadline = Instant::now() + self.config.idle_timeout;
            match self.lines.read_data(&mut self.stream, deadline) {
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

    /// A read that produced no line: the client left (nothing to say), the deadline passed
    /// (421 4.4.2, RFC 5321 §3.8 allows closing after a timeout), or an I/O error.
    fn read_failed(&mut self, error: ReadError) -> io::Result<&'static str> {
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
                self.send(&[Reply::TIMEOUT_421]);
                self.flush()?;
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
        if !self.output.is_empty() {
            self.stream.write_all(&self.output)?;
            self.output.clear();
        }
        self.stream.flush()
    }
}

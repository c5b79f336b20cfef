//! The line reader: splits what the client sends into command lines and message lines.
//!
//! Interface:
//! - `LineReader::read_command` returns one command line (telnet negotiation removed), or
//!   `TooLong` after skipping the rest of an over-long line, so the session stays in sync.
//! - `LineReader::read_data` returns the next piece of message content: a whole line, or a
//!   fragment of a very long one, so memory stays bounded whatever the client sends.
//! - `LineReader::must_flush(pending)` says when replies must be written (PIPELINING, and
//!   a bound on what waits for a client that does not read).
//! - `LineReader::saw_cr` is the session latch of the line-ending rule: has this client ever
//!   sent a CR? `discard_buffered` drops unread bytes (STARTTLS).
//! - `TimedRead` is a read that gives up at a deadline; a slow trickle cannot hold a line open.
//!
//! Standards: RFC 5321 §2.3.8, §4.5.3.1.4, §4.5.3.1.6, RFC 854 §3, RFC 2920 §3.1

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

/// RFC 5321 §4.5.3.1.4: "The maximum total length of a command line including the command word
/// and the <CRLF> is 512 octets."
const MAX_COMMAND_LINE: usize = 512;

/// How much unread input one connection may hold; also the largest piece `read_data` returns.
const BUFFER_SIZE: usize = 16 * 1024;

/// Replies waiting for the client are written once they pass this many octets: a few full
/// TCP segments, so pipelining still saves round trips.
pub const FLUSH_AT: usize = 8 * 1024;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// How a line ended on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `<CR><LF>`, the SMTP line end.
    CrLf,
    /// A bare `<LF>`, as netcat without `-C` sends.
    Lf,
}

/// One complete line, without its ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    pub ending: Ending,
}

/// A piece of message content: a whole line (`ending` is `Some`) or the next part of a line
/// longer than the buffer (`ending` is `None`; the line goes on in the next piece).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Vec<u8>,
    pub ending: Option<Ending>,
}

/// What `read_command` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    Line(Line),
    /// Over 512 octets: the rest of the line was skipped.
    TooLong,
}

/// Why no line came.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection (`partial` holds the bytes of an unfinished line).
    Closed {
        partial: Vec<u8>,
    },
    /// The deadline passed (RFC 5321 §4.5.3.2.7).
    Timeout,
    Io(io::Error),
}

/// A read that returns an error of kind `TimedOut` or `WouldBlock` once `deadline` has passed.
pub trait TimedRead {
    fn read_before(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize>;
}

impl TimedRead for TcpStream {
    fn read_before(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.set_read_timeout(Some(left))?;
        self.read(buf)
    }
}

/// A fixed-size input buffer over the connection, with the CR latch.
pub struct LineReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    saw_cr: bool,
}

impl Default for LineReader {
    fn default() -> Self {
        LineReader::new()
    }
}

impl LineReader {
    pub fn new() -> LineReader {
        LineReader {
            buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            saw_cr: false,
        }
    }

    /// Has the client sent any CR in this session (since the last TLS handshake)?
    pub fn saw_cr(&self) -> bool {
        self.saw_cr
    }

    /// Is there input the client sent that has not been read yet?
    fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    // ANCHOR: must_flush
    /// Should `pending` octets of replies be written now? PIPELINING (RFC 2920 §3.1) asks for
    /// them when no further input is waiting, just before the server would block on a read.
    /// They are also written once they pass `FLUSH_AT`, whatever input waits: a client that
    /// pipelines without reading must not make the server hold its answers without limit.
    pub fn must_flush(&self, pending: usize) -> bool {
        !self.has_buffered() || pending >= FLUSH_AT
    }
    // ANCHOR_END: must_flush

    /// Forget unread input and the CR latch (after STARTTLS: RFC 3207 §4.2 and CVE-2011-0411).
    pub fn discard_buffered(&mut self) {
        self.start = 0;
        self.end = 0;
        self.saw_cr = false;
    }

    // ANCHOR: read_command
    /// Read one command line. A bare LF ends a command too (netcat); see `../shared` rule LE-3.
    pub fn read_command(
        &mut self,
        source: &mut impl TimedRead,
        deadline: Instant,
    ) -> Result<CommandLine, ReadError> {
        loop {
            if let Some(lf) = self.find_lf(MAX_COMMAND_LINE) {
                let line = self.take_line(lf);
                return Ok(CommandLine::Line(Line {
                    bytes: strip_telnet(&line.bytes),
                    ending: line.ending,
                }));
            }
            if self.buffered() >= MAX_COMMAND_LINE {
                self.skip_past_lf(source, deadline)?;
                return Ok(CommandLine::TooLong);
            }
            self.fill(source, deadline)?;
        }
    }
    // ANCHOR_END: read_command

    /// Read the next piece of message content, never rewriting a byte (rule LE-6: the
    /// end-of-data test sees exactly what the client sent).
    pub fn read_data(
        &mut self,
        source: &mut impl TimedRead,
        deadline: Instant,
    ) -> Result<Piece, ReadError> {
        loop {
            if let Some(lf) = self.find_lf(BUFFER_SIZE) {
                let line = self.take_line(lf);
                return Ok(Piece {
                    bytes: line.bytes,
                    ending: Some(line.ending),
                });
            }
            if self.buffered() == BUFFER_SIZE {
                return Ok(self.take_fragment());
            }
            self.fill(source, deadline)?;
        }
    }

    // ANCHOR: read_chunk
    /// Read exactly `size` octets (a BDAT chunk, RFC 3030 §2), keeping at most `keep` of them:
    /// the rest is read and dropped, so the session stays in sync and memory stays bounded.
    pub fn read_chunk(
        &mut self,
        source: &mut impl TimedRead,
        size: u64,
        keep: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, ReadError> {
        let mut kept = Vec::new();
        let mut left = size;
        while left > 0 {
            if !self.has_buffered() {
                self.fill(source, deadline)?;
            }
            let take = self
                .buffered()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let room = keep.saturating_sub(kept.len()).min(take);
            kept.extend_from_slice(&self.buf[self.start..self.start + room]);
            self.start += take;
            left -= take as u64;
        }
        Ok(kept)
    }
    // ANCHOR_END: read_chunk

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The index of the first LF within the first `limit` buffered bytes.
    fn find_lf(&self, limit: usize) -> Option<usize> {
        let window = &self.buf[self.start..self.end.min(self.start + limit)];
        window.iter().position(|&b| b == LF).map(|i| self.start + i)
    }

    /// Take the bytes up to the LF at `lf`, and the LF, from the buffer.
    fn take_line(&mut self, lf: usize) -> Line {
        let raw = &self.buf[self.start..lf];
        let (bytes, ending) = match raw.split_last() {
            Some((&CR, text)) => (text.to_vec(), Ending::CrLf),
            _ => (raw.to_vec(), Ending::Lf),
        };
        self.saw_cr |= raw.contains(&CR);
        self.start = lf + 1;
        Line { bytes, ending }
    }

    /// Take a full buffer of a long line, keeping a final CR back: it may be half of a CRLF.
    fn take_fragment(&mut self) -> Piece {
        let mut end = self.end;
        if self.buf[end - 1] == CR {
            end -= 1;
        }
        let bytes = self.buf[self.start..end].to_vec();
        self.saw_cr |= bytes.contains(&CR);
        self.start = end;
        Piece {
            bytes,
            ending: None,
        }
    }

    /// Discard input up to and including the next LF (the tail of an over-long command line).
    fn skip_past_lf(
        &mut self,
        source: &mut impl TimedRead,
        deadline: Instant,
    ) -> Result<(), ReadError> {
        loop {
            if let Some(lf) = self.find_lf(BUFFER_SIZE) {
                self.saw_cr |= self.buf[self.start..lf].contains(&CR);
                self.start = lf + 1;
                return Ok(());
            }
            self.saw_cr |= self.buf[self.start..self.end].contains(&CR);
            self.start = self.end;
            self.fill(source, deadline)?;
        }
    }

    /// Read more input into the free end of the buffer.
    fn fill(&mut self, source: &mut impl TimedRead, deadline: Instant) -> Result<(), ReadError> {
        // Move the unread bytes to the front only when the end is full: moving them on every
        // read would cost a client that sends one byte at a time 16 KiB of copying per byte.
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match source.read_before(&mut self.buf[self.end..], deadline) {
            Ok(0) => Err(ReadError::Closed {
                partial: self.buf[self.start..self.end].to_vec(),
            }),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(ReadError::Io(e)),
        }
    }
}

/// Telnet's "Interpret As Command" byte (RFC 854).
const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL: u8 = 251;
const DONT: u8 = 254;

// ANCHOR: strip_telnet
/// Remove telnet negotiation (RFC 854 §3) from a command line: `IAC IAC` is a literal 255,
/// `IAC WILL/WONT/DO/DONT option` and `IAC SB ... IAC SE` are dropped (refusing silently is
/// allowed), any other `IAC x` is dropped. Command mode only: message content is never touched,
/// or stripping could turn `.<IAC><NOP>` into an end of data (SMTP smuggling).
fn strip_telnet(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        match (line[i], line.get(i + 1).copied()) {
            (IAC, Some(IAC)) => {
                out.push(IAC);
                i += 2;
            }
            (IAC, Some(WILL..=DONT)) => i += 3,
            (IAC, Some(SB)) => i = subnegotiation_end(line, i + 2),
            (IAC, _) => i += 2,
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}
// ANCHOR_END: strip_telnet

/// The index just past `IAC SE`, searching from `from` (or the end of the line).
fn subnegotiation_end(line: &[u8], from: usize) -> usize {
    (from..line.len().saturating_sub(1))
        .find(|&j| line[j] == IAC && line[j + 1] == SE)
        .map_or(line.len(), |j| j + 2)
}

/// Input held in memory that arrives in the given pieces, one per read, then ends (as if the
/// client closed). Tests and the fuzzer cut the same bytes in different ways through it: every
/// cut must give the same result, or a boundary case of the reader is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunks(pub VecDeque<Vec<u8>>);

impl Chunks {
    pub fn new(pieces: impl IntoIterator<Item = Vec<u8>>) -> Chunks {
        Chunks(pieces.into_iter().collect())
    }
}

impl TimedRead for Chunks {
    fn read_before(&mut self, buf: &mut [u8], _deadline: Instant) -> io::Result<usize> {
        let Some(chunk) = self.0.front_mut() else {
            return Ok(0);
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.0.pop_front();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn commands(input: &[u8]) -> Vec<CommandLine> {
        let mut source = Chunks::new([input.to_vec()]);
        let mut reader = LineReader::new();
        let mut out = Vec::new();
        while let Ok(line) = reader.read_command(&mut source, soon()) {
            out.push(line);
        }
        out
    }

    fn line(text: &[u8], ending: Ending) -> CommandLine {
        CommandLine::Line(Line {
            bytes: text.to_vec(),
            ending,
        })
    }

    #[test]
    fn crlf_and_bare_lf_both_end_commands() {
        assert_eq!(
            commands(b"HELO a\r\nNOOP\nQUIT\r\n"),
            vec![
                line(b"HELO a", Ending::CrLf),
                line(b"NOOP", Ending::Lf),
                line(b"QUIT", Ending::CrLf)
            ]
        );
    }

    #[test]
    fn limit_is_512_octets_including_crlf() {
        let mut exact = b"NOOP ".to_vec();
        exact.resize(510, b'x');
        exact.extend_from_slice(b"\r\n");
        assert!(matches!(commands(&exact)[0], CommandLine::Line(_)));
        let mut over = b"NOOP ".to_vec();
        over.resize(511, b'x');
        over.extend_from_slice(b"\r\nQUIT\r\n");
        assert_eq!(
            commands(&over),
            vec![CommandLine::TooLong, line(b"QUIT", Ending::CrLf)]
        );
    }

    #[test]
    fn a_mebibyte_without_newline_is_skipped_in_bounded_memory() {
        let mut input = vec![b'a'; 1 << 20];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut source = Chunks::new(input.chunks(7000).map(<[u8]>::to_vec));
        let mut reader = LineReader::new();
        assert_eq!(
            reader.read_command(&mut source, soon()).ok(),
            Some(CommandLine::TooLong)
        );
        assert_eq!(reader.buf.len(), BUFFER_SIZE);
        assert_eq!(
            reader.read_command(&mut source, soon()).ok(),
            Some(line(b"NOOP", Ending::CrLf))
        );
    }

    #[test]
    fn telnet_negotiation_is_removed_from_commands() {
        assert_eq!(strip_telnet(b"\xff\xfd\x18HELO x"), b"HELO x");
        assert_eq!(strip_telnet(b"HE\xff\xf1LO"), b"HELO");
        assert_eq!(strip_telnet(b"\xff\xfa\x18\x00xterm\xff\xf0NOOP"), b"NOOP");
        assert_eq!(strip_telnet(b"a\xff\xffb"), b"a\xffb");
        assert_eq!(strip_telnet(b"x\xff"), b"x");
    }

    #[test]
    fn data_pieces_keep_every_byte() {
        let mut source = Chunks::new([b".\xff\xf1\r\nab\rc\n".to_vec()]);
        let mut reader = LineReader::new();
        let first = reader.read_data(&mut source, soon()).ok();
        assert_eq!(
            first,
            Some(Piece {
                bytes: b".\xff\xf1".to_vec(),
                ending: Some(Ending::CrLf)
            })
        );
        let second = reader.read_data(&mut source, soon()).ok();
        assert_eq!(
            second,
            Some(Piece {
                bytes: b"ab\rc".to_vec(),
                ending: Some(Ending::Lf)
            })
        );
    }

    #[test]
    fn a_long_data_line_comes_in_fragments_and_a_split_crlf_survives() {
        let mut input = vec![b'x'; BUFFER_SIZE - 1];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut source = Chunks::new([input]);
        let mut reader = LineReader::new();
        let first = reader
            .read_data(&mut source, soon())
            .ok()
            .map(|p| (p.bytes.len(), p.ending));
        assert_eq!(first, Some((BUFFER_SIZE - 1, None)));
        let second = reader.read_data(&mut source, soon()).ok();
        assert_eq!(
            second,
            Some(Piece {
                bytes: vec![],
                ending: Some(Ending::CrLf)
            })
        );
    }

    #[test]
    fn chunks_are_read_exactly_and_capped() {
        let mut source = Chunks::new([b"abc".to_vec(), b"defgNOOP\r\n".to_vec()]);
        let mut reader = LineReader::new();
        let chunk = reader.read_chunk(&mut source, 7, 4, soon()).ok();
        assert_eq!(chunk, Some(b"abcd".to_vec()));
        assert_eq!(
            reader.read_command(&mut source, soon()).ok(),
            Some(line(b"NOOP", Ending::CrLf))
        );
    }

    #[test]
    fn the_cr_latch() {
        let mut source = Chunks::new([b"HELO a\nNOOP\r\n".to_vec()]);
        let mut reader = LineReader::new();
        let _ = reader.read_command(&mut source, soon());
        assert!(!reader.saw_cr());
        let _ = reader.read_command(&mut source, soon());
        assert!(reader.saw_cr());
        reader.discard_buffered();
        assert!(!reader.saw_cr());
    }

    #[test]
    fn closed_mid_line_reports_the_partial_line() {
        let mut source = Chunks::new([b"HEL".to_vec()]);
        let mut reader = LineReader::new();
        let result = reader.read_command(&mut source, soon());
        assert!(matches!(result, Err(ReadError::Closed { partial }) if partial == b"HEL"));
    }
}

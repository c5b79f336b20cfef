//! DATA: find the end of the message, undo dot-stuffing, enforce the size limit.
//!
//! Interface:
//! - `DataReader::push(piece, saw_cr)` takes the next piece of content from `line.rs` and says
//!   whether it was the end of data.
//! - `DataReader::finish(saw_cr)` gives the message (a `Body`, lines ending in `\n`) or the
//!   reply that refuses it: 552 too big, 550 bare CR/LF, 554 NUL byte or too many hops, 451 when
//!   the spill file could not be written.
//! - `ChunkReader::push(octets)` and `finish()` do the same for a message sent with BDAT chunks,
//!   one chunk (or piece of one) at a time; `chunked_content(octets, binary)` for all at once.
//!
//! The content goes into a `Body` (`src/smtp/body.rs`), which moves a large message to a spill file:
//! a session holds at most `body::SPILL_THRESHOLD` octets of it, whatever `--max-size` says.
//!
//! Standards: RFC 5321 §4.1.1.4, §4.5.2, §4.5.3.1.7, §2.3.8, §6.3, RFC 3030 §2

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use log::warn;

use crate::net::line::{CommandLine, Ending, LineReader, Piece, TimedRead};
use crate::smtp::body::{Body, SPILL_THRESHOLD};
use crate::smtp::reply::Reply;

/// RFC 5321 §6.3: "SMTP servers using this technique SHOULD use a large rejection threshold,
/// normally at least 100 Received entries." 100 is the floor the RFC names.
const MAX_RECEIVED_HEADERS: usize = 100;

/// Reads one message after the 354 reply.
#[derive(Debug)]
pub struct DataReader {
    max_size: usize,
    content: Body,
    /// Writing the spill file failed: the message is refused with 451 at the end.
    spill_failed: bool,
    /// Octets the client sent, counted as on the wire (each line with its CRLF).
    size: usize,
    /// The ending of the previous line (for the first line: of the DATA command itself).
    previous_ending: Ending,
    /// True when the next piece starts a new line.
    at_line_start: bool,
    bare_lf_seen: bool,
    bare_cr_seen: bool,
    nul_seen: bool,
}

impl DataReader {
    /// `data_ending` is how the DATA command line ended; a large message spills into `spill_dir`.
    pub fn new(max_size: usize, data_ending: Ending, spill_dir: &Path) -> DataReader {
        DataReader {
            max_size,
            content: Body::new(spill_dir),
            spill_failed: false,
            size: 0,
            previous_ending: data_ending,
            at_line_start: true,
            bare_lf_seen: false,
            bare_cr_seen: false,
            nul_seen: false,
        }
    }

    // ANCHOR: push
    /// Take the next piece; returns true at the end of data. `saw_cr` is the session's CR latch.
    pub fn push(&mut self, piece: &Piece, saw_cr: bool) -> bool {
        if self.is_end_of_data(piece, saw_cr) {
            return true;
        }
        let mut bytes = piece.bytes.as_slice();
        // RFC 5321 §4.5.2: "If the first character is a period and there are other characters
        // on the line, the first character is deleted."
        if self.at_line_start && bytes.first() == Some(&b'.') {
            bytes = &bytes[1..];
        }
        self.note_unusual_bytes(bytes, piece.ending);
        self.store(bytes, piece.ending.is_some());
        self.at_line_start = piece.ending.is_some();
        if let Some(ending) = piece.ending {
            self.previous_ending = ending;
        }
        false
    }

    /// Rule LE-4: a line holding only "." ends the data when it and the line before it both end
    /// in CRLF, or, for a client that has never sent a CR (netcat), both in a bare LF. No other
    /// sequence does: `<LF>.<CR><LF>` and friends are the SMTP smuggling attack.
    fn is_end_of_data(&self, piece: &Piece, saw_cr: bool) -> bool {
        let only_a_dot = self.at_line_start && piece.bytes == b".";
        match (piece.ending, self.previous_ending) {
            (Some(Ending::CrLf), Ending::CrLf) => only_a_dot,
            (Some(Ending::Lf), Ending::Lf) => only_a_dot && !saw_cr,
            _ => false,
        }
    }
    // ANCHOR_END: push

    fn note_unusual_bytes(&mut self, bytes: &[u8], ending: Option<Ending>) {
        self.bare_lf_seen |= ending == Some(Ending::Lf);
        self.bare_cr_seen |= bytes.contains(&b'\r');
        self.nul_seen |= bytes.contains(&0);
    }

    /// Keep the bytes while under the limit; past it, only count (RFC 5321 §4.5.3.1.7: the
    /// server keeps reading to the end of data, so the session stays in sync).
    fn store(&mut self, bytes: &[u8], line_complete: bool) {
        let added = bytes.len() + if line_complete { 2 } else { 0 };
        self.size = self.size.saturating_add(added);
        if self.size > self.max_size {
            self.content = Body::default();
            return;
        }
        let stored = self.content.push(bytes).and_then(|()| match line_complete {
            true => self.content.push(b"\n"),
            false => Ok(()),
        });
        self.spill_failed |= note_spill_error(stored);
    }

    // ANCHOR: finish
    /// The message, or why it is refused. Nothing refused here is ever stored.
    pub fn finish(self, saw_cr: bool) -> Result<Body, Reply> {
        if self.size > self.max_size {
            return Err(Reply::TOO_BIG_552.text(format!(
                "Message size exceeds fixed limit of {} octets; nothing was stored",
                self.max_size
            )));
        }
        // Rule LE-5: a client that uses CRLF never sends a bare CR or LF; one inside its message
        // could forge an mbox "From " line or smuggle commands to the next hop.
        if saw_cr && (self.bare_lf_seen || self.bare_cr_seen) {
            return Err(Reply::BARE_LINE_END_550);
        }
        if self.nul_seen {
            return Err(Reply::NUL_IN_MESSAGE_554);
        }
        if self.spill_failed {
            return Err(Reply::LOCAL_ERROR_451);
        }
        check_hops(self.content)
    }
    // ANCHOR_END: finish
}

/// A failed write to the spill file is logged once here and refuses the message at its end.
fn note_spill_error(result: io::Result<()>) -> bool {
    match result {
        Ok(()) => false,
        Err(error) => {
            warn!("cannot write the message to its spill file: {error}");
            true
        }
    }
}

/// RFC 5321 §6.3: refuse a message that has travelled through too many hops (a mail loop).
/// The header section is read from the first `SPILL_THRESHOLD` octets: a hundred `Received:`
/// fields fit in a small part of that.
fn check_hops(content: Body) -> Result<Body, Reply> {
    let head = content.head(SPILL_THRESHOLD).map_err(|error| {
        warn!("cannot read the message back from its spill file: {error}");
        Reply::LOCAL_ERROR_451
    })?;
    if received_headers(&head) > MAX_RECEIVED_HEADERS {
        return Err(Reply::TOO_MANY_HOPS_554);
    }
    Ok(content)
}

// ANCHOR: chunked_content
/// A message sent with BDAT chunks (RFC 3030 §2): the octets exactly as sent, no dot-stuffing.
/// Lines are stored ending in `\n` like DATA's, so both commands store the same bytes. A bare CR
/// could forge a line in the mbox, so it is refused like DATA's; NUL is allowed only with
/// `BODY=BINARYMIME`. Octets arrive in pieces: a CR at the end of one waits for the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReader {
    content: Body,
    binary: bool,
    /// The last octet so far was a CR; the next one must be its LF.
    cr_pending: bool,
    /// The first reason to refuse the message; later octets are only counted by the session.
    refused: Option<Reply>,
    spill_failed: bool,
}

impl ChunkReader {
    pub fn new(binary: bool, spill_dir: &Path) -> ChunkReader {
        ChunkReader {
            content: Body::new(spill_dir),
            binary,
            cr_pending: false,
            refused: None,
            spill_failed: false,
        }
    }

    /// Take the next octets of the message.
    pub fn push(&mut self, octets: &[u8]) {
        if self.refused.is_some() || self.spill_failed {
            return;
        }
        let mut kept = Vec::with_capacity(octets.len());
        for &byte in octets {
            match (self.cr_pending, byte) {
                (true, b'\n') => kept.push(b'\n'),
                (true, _) => self.refused = Some(Reply::BARE_LINE_END_550),
                (false, b'\r') => {}
                (false, 0) if !self.binary => self.refused = Some(Reply::NUL_IN_MESSAGE_554),
                (false, _) => kept.push(byte),
            }
            if self.refused.is_some() {
                return;
            }
            self.cr_pending = byte == b'\r';
        }
        self.spill_failed |= note_spill_error(self.content.push(&kept));
    }

    /// The message, or why it is refused.
    pub fn finish(self) -> Result<Body, Reply> {
        if let Some(reply) = self.refused {
            return Err(reply);
        }
        if self.cr_pending {
            return Err(Reply::BARE_LINE_END_550);
        }
        if self.spill_failed {
            return Err(Reply::LOCAL_ERROR_451);
        }
        check_hops(self.content)
    }
}

/// All of a BDAT message at once (in memory; for tests and small inputs).
pub fn chunked_content(octets: &[u8], binary: bool) -> Result<Vec<u8>, Reply> {
    let mut reader = ChunkReader::new(binary, &std::env::temp_dir());
    reader.push(octets);
    let body = reader.finish()?;
    body.to_vec().map_err(|_| Reply::LOCAL_ERROR_451)
}
// ANCHOR_END: chunked_content

/// What one message gave when read without a socket: the message or its refusal (`None`: the
/// input ended first), then the command lines that followed it.
pub type Outcome = (Option<Result<Vec<u8>, Reply>>, Vec<CommandLine>);

/// The loop `connection.rs` runs after 354, over any input and without a session: pieces into
/// a `DataReader` until the end of data, then the command lines after it. The randomized tests
/// and the fuzzer cut the same bytes in many ways (`line::Chunks`) and compare the outcomes.
pub fn read_message(
    source: &mut impl TimedRead,
    max_size: usize,
    data_ending: Ending,
    spill_dir: &Path,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = LineReader::new();
    let mut data = DataReader::new(max_size, data_ending, spill_dir);
    let message = loop {
        match lines.read_data(source, deadline) {
            Ok(piece) if data.push(&piece, lines.saw_cr()) => {
                let body = data.finish(lines.saw_cr());
                break Some(
                    body.and_then(|body| body.to_vec().map_err(|_| Reply::LOCAL_ERROR_451)),
                );
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let mut after = Vec::new();
    while let Ok(line) = lines.read_command(source, deadline) {
        after.push(line);
    }
    (message, after)
}

/// Count the `Received:` fields in the header section (up to the first empty line).
fn received_headers(content: &[u8]) -> usize {
    content
        .split(|&b| b == b'\n')
        .take_while(|line| !line.is_empty())
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::line::Chunks;
    use crate::net::line::LineReader;
    use std::time::{Duration, Instant};

    /// Feed `input` (after the DATA line, which ended in `data_ending`) and return what
    /// `finish` says, plus the bytes left unread after the end of data.
    fn read(input: &[u8], data_ending: Ending, max: usize) -> (Result<Vec<u8>, Reply>, bool) {
        let mut source = Chunks::new([input.to_vec()]);
        let mut lines = LineReader::new();
        if data_ending == Ending::CrLf {
            // The DATA command already set the latch.
            let mut data_cmd = Chunks::new([b"DATA\r\n".to_vec()]);
            let _ = lines.read_command(&mut data_cmd, Instant::now() + Duration::from_secs(1));
        }
        let mut reader = DataReader::new(max, data_ending, &std::env::temp_dir());
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok(piece) = lines.read_data(&mut source, deadline) {
            if reader.push(&piece, lines.saw_cr()) {
                return (finish(reader, lines.saw_cr()), true);
            }
        }
        (finish(reader, lines.saw_cr()), false)
    }

    fn finish(reader: DataReader, saw_cr: bool) -> Result<Vec<u8>, Reply> {
        reader.finish(saw_cr).map(|body| body.to_vec().unwrap())
    }

    #[test]
    fn standard_end_of_data() {
        let (result, ended) = read(b"Subject: x\r\n\r\nhello\r\n.\r\n", Ending::CrLf, 1000);
        assert!(ended);
        assert_eq!(result, Ok(b"Subject: x\n\nhello\n".to_vec()));
    }

    #[test]
    fn dot_unstuffing() {
        let (result, _) = read(b"..hidden\r\n.x\r\n...\r\n.\r\n", Ending::CrLf, 1000);
        assert_eq!(result, Ok(b".hidden\nx\n..\n".to_vec()));
    }

    #[test]
    fn netcat_ends_with_a_bare_lf_dot() {
        let (result, ended) = read(b"Subject: hi\n\nhello\n.\n", Ending::Lf, 1000);
        assert!(ended);
        assert_eq!(result, Ok(b"Subject: hi\n\nhello\n".to_vec()));
    }

    #[test]
    fn smuggling_variants_never_end_data_in_a_crlf_session() {
        let variants: [&[u8]; 10] = [
            b"\n.\n",
            b"\n.\r\n",
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\r\r\n",
            b"\r\n\0.\r\n",
        ];
        for variant in variants {
            let mut input = b"Subject: t\r\n\r\nbody".to_vec();
            input.extend_from_slice(variant);
            input.extend_from_slice(
                b"MAIL FROM:<ceo@teach.test>\r\nSubject: SMUGGLED\r\n\r\nx\r\n.\r\n",
            );
            let (result, ended) = read(&input, Ending::CrLf, 10_000);
            assert!(ended, "{variant:?}");
            let code = result.map_err(|r| r.code);
            assert!(matches!(code, Err(550 | 554)), "{variant:?} gave {code:?}");
        }
    }

    #[test]
    fn telnet_iac_after_the_dot_is_not_the_end() {
        let (result, _) = read(b"a\r\n.\xff\xf1\r\nb\r\n.\r\n", Ending::CrLf, 1000);
        assert_eq!(result, Ok(b"a\n\xff\xf1\nb\n".to_vec()));
    }

    #[test]
    fn a_pure_lf_session_becomes_strict_after_its_first_cr() {
        let (_, ended) = read(b"line1\r\n.\n", Ending::Lf, 1000);
        assert!(!ended, ".<LF> must not end data once a CR was seen");
        let (result, ended) = read(b"line1\r\n.\n\r\n.\r\n", Ending::Lf, 1000);
        assert!(ended);
        assert_eq!(result.map_err(|r| r.code), Err(550));
    }

    #[test]
    fn too_big_is_refused_at_the_end_in_bounded_memory() {
        let mut input = Vec::new();
        for _ in 0..200 {
            input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let (result, ended) = read(&input, Ending::CrLf, 1000);
        assert!(ended);
        assert_eq!(result.map_err(|r| (r.code, r.status)), Err((552, "5.3.4")));
    }

    #[test]
    fn eight_bit_content_is_kept() {
        let (result, _) = read("Grüße\r\n.\r\n".as_bytes(), Ending::CrLf, 1000);
        assert_eq!(result, Ok("Grüße\n".as_bytes().to_vec()));
    }

    #[test]
    fn chunks_are_stored_like_data() {
        assert_eq!(
            chunked_content(b"Subject: x\r\n\r\n.hi\r\n", false),
            Ok(b"Subject: x\n\n.hi\n".to_vec())
        );
        assert_eq!(
            chunked_content(b"a\rb\r\n", false).map_err(|r| r.code),
            Err(550)
        );
        assert_eq!(
            chunked_content(b"a\0b\r\n", false).map_err(|r| r.code),
            Err(554)
        );
        assert_eq!(chunked_content(b"a\0b\r\n", true), Ok(b"a\0b\n".to_vec()));
    }

    #[test]
    fn hop_limit() {
        let mut input = Vec::new();
        for _ in 0..=MAX_RECEIVED_HEADERS {
            input.extend_from_slice(b"Received: from a by b; date\r\n");
        }
        input.extend_from_slice(b"\r\nbody\r\n.\r\n");
        let (result, _) = read(&input, Ending::CrLf, 1 << 20);
        assert_eq!(result.map_err(|r| (r.code, r.status)), Err((554, "5.4.6")));
        assert_eq!(
            received_headers(b"Received: x\nreceived: y\n\nReceived: body\n"),
            2
        );
    }

    #[test]
    fn a_cr_at_the_end_of_a_chunk_waits_for_the_next() {
        let mut reader = ChunkReader::new(false, &std::env::temp_dir());
        reader.push(b"a\r");
        reader.push(b"\nb\r\n");
        assert_eq!(reader.finish().unwrap().to_vec().unwrap(), b"a\nb\n");
        let mut reader = ChunkReader::new(false, &std::env::temp_dir());
        reader.push(b"a\r");
        reader.push(b"b\r\n");
        assert_eq!(reader.finish().map_err(|r| r.code), Err(550));
        let mut reader = ChunkReader::new(false, &std::env::temp_dir());
        reader.push(b"a\r");
        assert_eq!(reader.finish().map_err(|r| r.code), Err(550));
    }

    #[test]
    fn a_large_message_is_kept_exactly() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for i in 0..2000 {
            let line = format!("{i:04} {}", "x".repeat(300));
            input.extend_from_slice(format!(".{line}\r\n").as_bytes());
            expected.extend_from_slice(format!("{line}\n").as_bytes());
        }
        input.extend_from_slice(b".\r\n");
        let (result, ended) = read(&input, Ending::CrLf, 1 << 24);
        assert!(ended);
        assert_eq!(result, Ok(expected));
    }
}

//! The mboxrd format: how messages sit in an mbox file, and how to find them again.
//!
//! Interface:
//! - `from_line(sender, time)` is the separator line a message starts with (RFC 4155 §2).
//! - `quote_mboxrd(content)` and the streaming `MboxrdQuoter` quote a message for the file: a
//!   line matching `^>*From ` gets one more `>`, and an empty line ends the message.
//! - `parse_mboxrd(bytes)` reads an mbox back into messages, undoing the quoting;
//!   `split_mboxrd(bytes)` cuts it into each message's raw bytes without changing one.
//!
//! This file knows the format only: no locks, no files, no fsync (that is `mbox.rs`).
//!
//! Standards: RFC 4155 §2

use std::io::{self, BufRead, Read, Write};
use std::time::SystemTime;

use crate::datetime;

/// The `From ` line's sender for the null reverse-path `<>` (qmail mbox(5), Postfix).
const NULL_SENDER: &str = "MAILER-DAEMON";

/// One message read back from an mbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The envelope sender from the `From ` line (`MAILER-DAEMON` for `<>`).
    pub sender: String,
    /// The message as delivered (trace headers included), quoting undone, `\n` line ends.
    pub content: Vec<u8>,
}

/// The separator, RFC 4155 §2: `From`, the sender, the UTC time in asctime form, `\n`.
pub fn from_line(sender: &str, time: SystemTime) -> String {
    format!(
        "From {} {}\n",
        separator_sender(sender),
        datetime::asctime(time)
    )
}

/// The sender as one word: `MAILER-DAEMON` for `<>`, and whitespace (a quoted local part may
/// hold spaces) turned into `-`, as qmail does, so a reader finds the date after the first space.
fn separator_sender(sender: &str) -> String {
    if sender.is_empty() {
        return NULL_SENDER.to_string();
    }
    sender
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect()
}

/// mboxrd quoting (qmail mbox(5)): a line matching `^>*From ` gets one more `>`. Then the
/// empty line that ends every message, after a `\n` if the last line lacked one.
pub fn quote_mboxrd(content: &[u8]) -> Vec<u8> {
    let mut quoter = MboxrdQuoter::new(Vec::with_capacity(content.len() + 2));
    // Writing to a Vec cannot fail: it only allocates.
    let written = quoter.write(content).and_then(|()| quoter.finish());
    written.unwrap_or_else(|_| unreachable!("a Vec refused a write"))
}

/// Does `line` match `^>*From ` (a From_ line, quoted any number of times)?
fn is_from_line(line: &[u8]) -> bool {
    let quotes = line.iter().take_while(|&&byte| byte == b'>').count();
    line[quotes..].starts_with(FROM_)
}

/// The start of a `From_` line, after any number of `>`.
const FROM_: &[u8] = b"From ";

// ANCHOR: quoter
/// mboxrd quoting as a stream: content arrives in pieces cut anywhere, even inside `>>From `,
/// so the quoter remembers where it is in the current line.
pub struct MboxrdQuoter<W: Write> {
    out: W,
    line: LineStart,
    /// The last octet written (`\n` before any), to end the message with one empty line.
    last: u8,
    wrote: bool,
}

/// Where the quoter is in the current line.
#[derive(Clone, Copy)]
enum LineStart {
    /// Still matching `^>*From `: `quotes` `>` and the first `from` octets of `From ` so far,
    /// held back until we know whether the line needs one more `>`.
    Matching { quotes: usize, from: usize },
    /// The line is decided; copy octets up to its `\n`.
    Rest,
}

impl<W: Write> MboxrdQuoter<W> {
    pub fn new(out: W) -> Self {
        MboxrdQuoter {
            out,
            line: LineStart::Matching { quotes: 0, from: 0 },
            last: b'\n',
            wrote: false,
        }
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while let Some(&byte) = bytes.first() {
            match self.line {
                LineStart::Rest => {
                    let end = bytes
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |i| i + 1);
                    self.emit(&bytes[..end])?;
                    if self.last == b'\n' {
                        self.line = LineStart::Matching { quotes: 0, from: 0 };
                    }
                    bytes = &bytes[end..];
                    continue;
                }
                LineStart::Matching { quotes, from: 0 } if byte == b'>' => {
                    self.line = LineStart::Matching {
                        quotes: quotes + 1,
                        from: 0,
                    };
                }
                LineStart::Matching { quotes, from } if byte == FROM_[from] => {
                    if from + 1 == FROM_.len() {
                        // `^>*From `: one more `>` in front, then what was held back.
                        self.emit(b">")?;
                        self.release(quotes, FROM_.len())?;
                    } else {
                        self.line = LineStart::Matching {
                            quotes,
                            from: from + 1,
                        };
                    }
                }
                LineStart::Matching { quotes, from } => {
                    // Not a From_ line: give back what was held, and look at `byte` again.
                    self.release(quotes, from)?;
                    continue;
                }
            }
            bytes = &bytes[1..];
        }
        Ok(())
    }

    /// Write the held-back `>`s and start of `From `; the rest of the line is copied as is.
    fn release(&mut self, quotes: usize, from: usize) -> io::Result<()> {
        for _ in 0..quotes {
            self.emit(b">")?;
        }
        self.emit(&FROM_[..from])?;
        self.line = LineStart::Rest;
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(&last) = bytes.last() {
            self.out.write_all(bytes)?;
            self.last = last;
            self.wrote = true;
        }
        Ok(())
    }

    /// The end of the content: what is still held back, a `\n` if the last line lacked one,
    /// and the empty line that ends every message.
    pub fn finish(mut self) -> io::Result<W> {
        if let LineStart::Matching { quotes, from } = self.line {
            self.release(quotes, from)?;
        }
        if self.wrote && self.last != b'\n' {
            self.emit(b"\n")?;
        }
        self.emit(b"\n")?;
        Ok(self.out)
    }
}
// ANCHOR_END: quoter

/// Read an mboxrd file back into messages.
///
/// A message starts at a line beginning `From ` that is the first line of the file or follows
/// an empty line. One `>` is removed from each `^>+From ` line, and the empty line that ends
/// each message is dropped. So `content` is exactly the trace headers and content as
/// delivered, except that content whose last line lacked `\n` comes back with one.
/// Bytes before the first `From ` line are ignored.
pub fn parse_mboxrd(bytes: &[u8]) -> Vec<StoredMessage> {
    let mut messages = Vec::new();
    let mut current: Option<StoredMessage> = None;
    let mut after_empty_line = true; // the start of the file counts as one
    for line in bytes.split_inclusive(|&byte| byte == b'\n') {
        if after_empty_line && line.starts_with(b"From ") {
            messages.extend(current.take().map(without_final_empty_line));
            current = Some(StoredMessage {
                sender: sender_of(line),
                content: Vec::new(),
            });
        } else if let Some(message) = current.as_mut() {
            let unquoted = if line.starts_with(b">") && is_from_line(line) {
                &line[1..]
            } else {
                line
            };
            message.content.extend_from_slice(unquoted);
        }
        after_empty_line = line == b"\n";
    }
    messages.extend(current.map(without_final_empty_line));
    messages
}

/// The sender: the word after `From ` on a separator line.
fn sender_of(separator: &[u8]) -> String {
    let rest = separator["From ".len()..].trim_ascii_end();
    let word = rest.split(|&byte| byte == b' ').next().unwrap_or_default();
    String::from_utf8_lossy(word).into_owned()
}

/// Drop the empty line that ends a message in the file (if the file has it).
fn without_final_empty_line(mut message: StoredMessage) -> StoredMessage {
    let content = &message.content;
    if content == b"\n" || content.ends_with(b"\n\n") {
        message.content.pop();
    }
    message
}

/// An mbox file cut into messages without changing a byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMbox<'a> {
    /// Bytes before the first `From ` line (`parse_mboxrd` ignores them; a rewrite keeps them).
    pub prefix: &'a [u8],
    /// Each message from its `From ` line up to the next one: separator, quoted content and
    /// the empty line that ends it. `parse_mboxrd` of one of these gives exactly one message.
    pub messages: Vec<&'a [u8]>,
}

/// Split an mbox where `parse_mboxrd` starts a new message: a `From ` line that is the first
/// line or follows an empty line. The pieces put back together are the file.
pub fn split_mboxrd(bytes: &[u8]) -> RawMbox<'_> {
    // Reading from a slice cannot fail.
    let spans = index_mboxrd(bytes).unwrap_or_default();
    let prefix_end = spans.first().map_or(bytes.len(), |s| s.offset as usize);
    let messages = spans
        .iter()
        .map(|s| &bytes[s.offset as usize..(s.offset + s.len) as usize])
        .collect();
    RawMbox {
        prefix: &bytes[..prefix_end],
        messages,
    }
}

/// Where one message lies in an mbox file: from its `From ` line up to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

/// The messages of an mbox read as a stream, one line at a time, so that a large file is
/// never in memory: each message's span, cut where `parse_mboxrd` starts a new message.
pub fn index_mboxrd(mut reader: impl BufRead) -> io::Result<Vec<Span>> {
    let mut spans: Vec<Span> = Vec::new();
    let mut line = Vec::new();
    let (mut offset, mut after_empty_line) = (0, true);
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)? as u64;
        if read == 0 {
            break;
        }
        if after_empty_line && line.starts_with(FROM_) {
            spans.push(Span { offset, len: 0 });
        }
        if let Some(last) = spans.last_mut() {
            last.len += read;
        }
        after_empty_line = line == b"\n";
        offset += read;
    }
    Ok(spans)
}

/// The longest piece of a line `unquoted_pieces` hands on at once: a longer line comes in
/// several pieces, so reading a message never holds more than this.
pub const MAX_PIECE: u64 = 64 * 1024;

// ANCHOR: unquoted_pieces
/// One message's raw bytes in the mbox (a `Span`: separator, quoted content, the empty line
/// after it) read as a stream: `each` gets the content as `parse_mboxrd` gives it, in pieces
/// that never split a line unless it is longer than `MAX_PIECE`. The separator is skipped,
/// one `>` is removed from each `^>+From ` line, and the final empty line is held back one
/// line and dropped at the end. `each` returns `false` to stop early (TOP has enough).
pub fn unquoted_pieces(
    mut raw: impl BufRead,
    mut each: impl FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<()> {
    let mut piece = Vec::new();
    let (mut in_separator, mut at_line_start, mut held_empty_line) = (true, true, false);
    loop {
        piece.clear();
        if (&mut raw).take(MAX_PIECE).read_until(b'\n', &mut piece)? == 0 {
            return Ok(());
        }
        let starts_line = at_line_start;
        at_line_start = piece.ends_with(b"\n");
        if in_separator {
            in_separator = !at_line_start;
            continue;
        }
        if std::mem::take(&mut held_empty_line) && !each(b"\n")? {
            return Ok(());
        }
        if starts_line && piece == b"\n" {
            held_empty_line = true;
            continue;
        }
        let quoted = starts_line && piece.starts_with(b">") && is_from_line(&piece);
        if !each(&piece[usize::from(quoted)..])? {
            return Ok(());
        }
    }
}
// ANCHOR_END: unquoted_pieces

/// How many octets `quote_mboxrd` would make of a body given in chunks, without keeping any.
pub fn quoted_len(
    for_each_chunk: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
) -> io::Result<u64> {
    let mut quoter = MboxrdQuoter::new(Counter(0));
    for_each_chunk(&mut |chunk| quoter.write(chunk))?;
    Ok(quoter.finish()?.0)
}

/// A writer that only counts.
pub struct Counter(pub u64);

impl Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TRICKY_BODY: &[u8] = b"Subject: quoting\n\nFrom me\n>From x\n>>From y\nFrom:not-a-separator\nFromage\n.\n\ncaf\xc3\xa9 \xff\xfe 8-bit\nlast line without newline";

    /// Quote `content` cut at the given points, through the streaming quoter.
    fn quote_in_pieces(content: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut quoter = MboxrdQuoter::new(Vec::new());
        let mut start = 0;
        for &cut in cuts.iter().chain([content.len()].iter()) {
            quoter.write(&content[start..cut]).unwrap();
            start = cut;
        }
        quoter.finish().unwrap()
    }

    #[test]
    fn unquoted_pieces_give_what_parse_mboxrd_gives() {
        let long = format!("{}\n", "y".repeat(MAX_PIECE as usize * 2 + 7));
        let mboxes: [&[u8]; 6] = [
            b"From a@b x\nSubject: s\n\n>From here\n>>From there\n>Fromage\n\n",
            b"From a@b x\n\n",
            b"From a@b x\nno end",
            b"From a@b x\nA: b\n\nbody\n\n\n",
            b"From a@b x\r\nA: b\r\n\r\nbody\r\n\n",
            long.as_bytes(),
        ];
        let long_mbox = [b"From a@b x\n".as_slice(), long.as_bytes(), b"\n"].concat();
        for mbox in mboxes.iter().copied().chain([long_mbox.as_slice()]) {
            let mut streamed = Vec::new();
            unquoted_pieces(mbox, |piece| {
                streamed.extend_from_slice(piece);
                Ok(true)
            })
            .unwrap();
            let parsed = parse_mboxrd(mbox)
                .pop()
                .map(|m| m.content)
                .unwrap_or_default();
            assert_eq!(
                streamed,
                parsed,
                "{:?}",
                String::from_utf8_lossy(&mbox[..40.min(mbox.len())])
            );
        }
    }

    #[test]
    fn quoting_in_pieces_equals_quoting_at_once() {
        let inputs: [&[u8]; 6] = [
            TRICKY_BODY,
            b"From x",
            b">>>From",
            b">\n>From \nFro\n\nFrom",
            b"",
            b"no newline",
        ];
        // A fixed xorshift sequence: random-looking cuts, the same on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for input in inputs {
            let whole = quote_mboxrd(input);
            // Every single cut point, then many random sets of cuts.
            for cut in 0..=input.len() {
                assert_eq!(
                    quote_in_pieces(input, &[cut]),
                    whole,
                    "{input:?} cut at {cut}"
                );
            }
            for _ in 0..200 {
                let mut cuts: Vec<usize> = (0..4)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % (input.len() as u64 + 1)) as usize
                    })
                    .collect();
                cuts.sort_unstable();
                assert_eq!(
                    quote_in_pieces(input, &cuts),
                    whole,
                    "{input:?} cut at {cuts:?}"
                );
            }
        }
    }

    #[test]
    fn quoted_len_counts_what_quoting_makes() {
        let counted = quoted_len(|each| TRICKY_BODY.chunks(5).try_for_each(each));
        assert_eq!(counted.unwrap(), quote_mboxrd(TRICKY_BODY).len() as u64);
    }

    #[test]
    fn parse_ignores_bytes_before_the_first_separator() {
        let messages = parse_mboxrd(b"junk\n\nFrom a@x Thu Jan  1 00:00:00 1970\nHi\n\n");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].content, b"Hi\n");
        assert!(parse_mboxrd(b"").is_empty());
    }

    #[test]
    fn a_from_line_needs_an_empty_line_before_it() {
        // An unquoted `From ` line inside a paragraph (an mboxo writer's miss) is not a separator.
        let file = b"From a@x Thu Jan  1 00:00:00 1970\nHi\nFrom b@y is here\n\n";
        let messages = parse_mboxrd(file);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].content, b"Hi\nFrom b@y is here\n");
    }

    #[test]
    fn split_agrees_with_parse_and_loses_no_byte() {
        let file: &[u8] = b"junk\n\nFrom a@x Thu Jan  1 00:00:00 1970\nHi\nFrom b@y inside\n\n\
            From c@z Thu Jan  1 00:00:00 1970\n>From q\n\nFrom d@w Thu Jan  1 00:00:00 1970\nno end";
        let raw = split_mboxrd(file);
        assert_eq!(raw.prefix, b"junk\n\n");
        assert_eq!(raw.messages.len(), 3);
        assert_eq!([raw.prefix, &raw.messages.concat()].concat(), file);
        let one_by_one: Vec<StoredMessage> =
            raw.messages.iter().flat_map(|m| parse_mboxrd(m)).collect();
        assert_eq!(one_by_one, parse_mboxrd(file));
        assert!(split_mboxrd(b"").messages.is_empty());
    }
}

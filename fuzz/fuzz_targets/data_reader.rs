//! Fuzz the DATA reader (`smtplab::line::LineReader` + `smtplab::data::DataReader`): the same
//! bytes delivered in arbitrary chunks must give the same message (or the same refusal) and leave
//! the same bytes unread as when delivered in one piece. Never a panic.
//!
//! Input layout: byte 0 picks the DATA command's line ending and the size limit, bytes 1..=8 are
//! chunk lengths (cycled), the rest is what the client sends after the 354 reply.
//!
//! Run (from the repository root; only a stable toolchain is needed):
//!   cargo install cargo-fuzz
//!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run data_reader -- -max_total_time=600
//! Corpus and crash artifacts stay in fuzz/corpus and fuzz/artifacts (ignored by git).
#![no_main]

use std::io;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smtplab::data::DataReader;
use smtplab::line::{CommandLine, Ending, LineReader, ReadError, TimedRead};
use smtplab::reply::Reply;

/// Input arriving in the given chunks, one chunk per read (an empty list: the client closed).
struct Chunks(std::collections::VecDeque<Vec<u8>>);

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

/// What reading one message gave: the message or its refusal (None: the client closed first),
/// then the command lines that followed it.
type Outcome = (Option<Result<Vec<u8>, Reply>>, Vec<CommandLine>);

fn read_message(source: &mut Chunks, max_size: usize, data_ending: Ending) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = LineReader::new();
    let mut data = DataReader::new(max_size, data_ending);
    let message = loop {
        match lines.read_data(source, deadline) {
            Ok(piece) if data.push(&piece, lines.saw_cr()) => {
                break Some(data.finish(lines.saw_cr()))
            }
            Ok(_) => {}
            Err(ReadError::Closed { .. }) => break None,
            Err(error) => panic!("unexpected read error {error:?}"),
        }
    };
    let mut after = Vec::new();
    while let Ok(line) = lines.read_command(source, deadline) {
        after.push(line);
    }
    (message, after)
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 9 {
        return;
    }
    let data_ending = if input[0] & 1 == 0 {
        Ending::CrLf
    } else {
        Ending::Lf
    };
    let max_size = 64 + usize::from(input[0] >> 1) * 16;
    let sizes: Vec<usize> = input[1..9].iter().map(|&b| usize::from(b) + 1).collect();
    let stream = &input[9..];
    let whole = read_message(&mut Chunks([stream.to_vec()].into()), max_size, data_ending);
    let mut chunks = std::collections::VecDeque::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + size).min(stream.len());
        chunks.push_back(stream[at..end].to_vec());
        at = end;
    }
    let chunked = read_message(&mut Chunks(chunks), max_size, data_ending);
    assert_eq!(
        whole, chunked,
        "chunking changed the result (sizes {sizes:?})"
    );
});

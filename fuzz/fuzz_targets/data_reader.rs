//! Fuzz the DATA reader (`smtplab::net::line::LineReader` + `smtplab::smtp::data::DataReader`): the same
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

use libfuzzer_sys::fuzz_target;
use smtplab::net::line::{Chunks, Ending};
use smtplab::smtp::data::{self, Outcome};

/// The socket-free reader of the library, with spill files in the system's temporary directory.
fn read_message(source: &mut Chunks, max_size: usize, data_ending: Ending) -> Outcome {
    data::read_message(source, max_size, data_ending, &std::env::temp_dir())
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
    let whole = read_message(&mut Chunks::new([stream.to_vec()]), max_size, data_ending);
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

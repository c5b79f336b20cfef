//! Fuzz `smtplab::lab::transcript::Transcript::parse`: never a panic, and for any text it accepts,
//! printing the transcript and parsing the print gives the same transcript (`parse(print(t)) == t`).
//!
//! Run (from the repository root; only a stable toolchain is needed):
//!   cargo install cargo-fuzz
//!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run transcript_parser -- -max_total_time=600
//! Corpus and crash artifacts stay in fuzz/corpus and fuzz/artifacts (ignored by git).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplab::lab::transcript::Transcript;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(transcript) = Transcript::parse(text) else {
        return;
    };
    let printed = transcript.to_string();
    match Transcript::parse(&printed) {
        Ok(again) => assert_eq!(again, transcript, "round trip changed {printed:?}"),
        Err(error) => panic!("printed transcript does not parse: {error}\n{printed}"),
    }
});

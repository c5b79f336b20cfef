//! Fuzz `smtplab::smtp::command::parse` with arbitrary command lines: it must never panic, and a
//! refusal must be a 5xx reply (a parse error is a reply, never a crash).
//!
//! Run (from the repository root; only a stable toolchain is needed):
//!   cargo install cargo-fuzz
//!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run command_parser -- -max_total_time=600
//! Corpus and crash artifacts stay in fuzz/corpus and fuzz/artifacts (ignored by git).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Err(reply) = smtplab::smtp::command::parse(line) {
        let text = reply.to_string();
        assert!(
            text.starts_with('5'),
            "a parse error must be a 5xx reply: {text:?}"
        );
    }
});

//! Fuzz `smtplab::imap::command::parse` with arbitrary commands (lines and inline literals): it
//! must never panic, a refusal must be a BAD, and a command that parses must answer to its tag.
//! `literal_at_end` gets the same bytes: it must never panic either.
//!
//! Run (from the repository root; only a stable toolchain is needed):
//!   cargo install cargo-fuzz
//!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run imap_parser -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplab::imap::command::{literal_at_end, parse};

fuzz_target!(|command: &[u8]| {
    let _ = literal_at_end(command);
    match parse(command) {
        Ok(tagged) => assert!(!tagged.tag.is_empty(), "a command always has a tag"),
        Err(refused) => assert!(refused.response().is_bad(), "a parse error is a BAD"),
    }
});

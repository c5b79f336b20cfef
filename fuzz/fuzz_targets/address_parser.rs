//! Fuzz the RFC 5321 §4.1.2 path parsers `smtplab::smtp::address::{reverse_path, forward_path}`, with
//! and without SMTPUTF8: never a panic, and the rest they return is a suffix of the input.
//!
//! Run (from the repository root; only a stable toolchain is needed):
//!   cargo install cargo-fuzz
//!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run address_parser -- -max_total_time=600
//! Corpus and crash artifacts stay in fuzz/corpus and fuzz/artifacts (ignored by git).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtplab::smtp::address::{forward_path, reverse_path};

fuzz_target!(|data: &[u8]| {
    let Ok(arg) = std::str::from_utf8(data) else {
        return;
    };
    for smtputf8 in [false, true] {
        if let Ok((_, rest)) = reverse_path(arg, smtputf8) {
            assert!(
                arg.ends_with(rest),
                "rest {rest:?} is not a suffix of {arg:?}"
            );
        }
        if let Ok((_, rest)) = forward_path(arg, smtputf8) {
            assert!(
                arg.ends_with(rest),
                "rest {rest:?} is not a suffix of {arg:?}"
            );
        }
    }
});

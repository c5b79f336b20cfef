//! Dates for trace headers and mbox separators, computed from the Unix clock without a crate.
//!
//! Interface:
//! - `rfc5322(time)`: `Fri, 27 Nov 2026 05:06:52 +0000`, for `Received:` and `Date:`.
//! - `asctime(time)`: `Fri Nov 27 05:06:52 2026`, for the mbox `From ` line.
//!
//! Standards: RFC 5322 §3.3, RFC 4155 §2

use std::time::SystemTime;

pub fn rfc5322(time: SystemTime) -> String {
    let _ = time;
    String::from("Thu, 01 Jan 1970 00:00:00 +0000")
}

pub fn asctime(time: SystemTime) -> String {
    let _ = time;
    String::from("Thu Jan  1 00:00:00 1970")
}

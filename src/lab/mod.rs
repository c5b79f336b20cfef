//! The classroom tools: they watch, record, replay, compare and disturb sessions, and measure.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `transcript.rs` | the `C:`/`S:` transcript format: parse, match, print | 12 |
//! | `recorder.rs` | `--transcripts`: each live session written as a transcript | 12, 14 |
//! | `replay.rs` | plays a transcript against any server and diffs the replies | 12 |
//! | `compare.rs` | explains how a student's session differs from a reference | 12 |
//! | `coach.rs` | coaching, `--explain` and `--fault` around the SMTP session's `step` | 15 |
//! | `trace.rs` | `--trace`: every line with its state move and RFC section | 15 |
//! | `live.rs` | the live board every session reports to, which `--web` shows | 17 |
//! | `json.rs` | JSON strings that no student byte can break out of, for the board and `--web` | 17 |
//! | `diagram.rs` | the state machine drawn from its table | 6 |
//! | `fault.rs` | `--fault`: refusals at a chosen point, the same way every time | 15 |
//! | `bench.rs` | the load generator | 16 |
//! | `dns_server.rs` | `smtplab dns`: a lab nameserver for one zone file | 11 |
//! | `roster.rs` | `smtplab roster N`: logins for a class, and the list `class` | 15 |
//!
//! Standards: none

pub mod transcript;

pub mod recorder;

pub mod replay;

pub mod compare;

pub mod coach;

pub mod trace;

pub mod live;

pub mod json;

pub mod diagram;

pub mod fault;

pub mod bench;

pub mod roster;

pub mod dns_server;

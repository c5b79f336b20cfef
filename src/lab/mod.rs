//! The classroom tools: they watch, record, replay, compare and disturb sessions, and measure.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `transcript.rs` | the `C:`/`S:` transcript format: parse, match, print | 13 |
//! | `recorder.rs` | `--transcripts`: each live session written as a transcript | 13, 15 |
//! | `replay.rs` | plays a transcript against any server and diffs the replies | 13 |
//! | `compare.rs` | explains how a student's session differs from a reference | 13 |
//! | `coach.rs` | coaching, `--explain` and `--fault` around the SMTP session's `step` | 16 |
//! | `trace.rs` | `--trace`: every line with its state move and RFC section | 16 |
//! | `live.rs` | the live board every session reports to, which `--web` shows | 18 |
//! | `json.rs` | JSON strings that no student byte can break out of, for the board and `--web` | 18 |
//! | `diagram.rs` | the state machine drawn from its table | 6 |
//! | `fault.rs` | `--fault`: refusals at a chosen point, the same way every time | 16 |
//! | `bench.rs` | the load generator | 17 |
//! | `dns_server.rs` | `smtplab dns`: a lab nameserver for one zone file | 11 |
//! | `roster.rs` | `smtplab roster N`: logins for a class, and the list `class` | 16 |
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

//! smtplab: a teaching SMTP server. A welcome socket, a thread per client, an explicit RFC 5321
//! state machine, mbox delivery. This file is the map: the parts of the system in the order the
//! lessons follow one message through them. Each folder's `mod.rs` lists its own files, and each
//! file opens with the RFC sections it implements.
//!
//! | part | what it holds | lessons |
//! |---|---|---|
//! | `config`, `server` | the options, and the listeners that start everything | 1 |
//! | `connection` | one SMTP client's loop: where the protocol ([`smtp`]) meets the socket ([`net`]) and the classroom tools ([`lab`]), so it sits above all three | 5, 6 |
//! | [`net`] | the welcome socket and its limits, bytes to lines, and TLS | 1, 5, 9, 15 |
//! | [`smtp`] | the SMTP server side: commands, replies, the state machine, DATA | 2–6, 8–10 |
//! | `machine` | a state machine as a table, shared by SMTP and POP3 | 6 |
//! | [`store`] | local mailboxes: mbox files, locks, group commit | 7, 17 |
//! | `datetime` | dates for trace headers, mbox separators and transcript names | 7, 13 |
//! | `visible` | escapes for every byte a student sends that a terminal would act on: every part that shows a student's bytes uses it, none owns it | 15 |
//! | [`relay`] | mail for other domains: the queue, MX lookup, the next hop, bounces | 11, 12 |
//! | [`lab`] | classroom tools: transcripts, replay, compare, trace, faults, the bench | 13, 16, 17 |
//! | [`pop3`] | reading mail back out over POP3 | 14 |
//! | [`web`] | `--web`: the live view of sessions, state machine, mailboxes and queue | 18 |
//! | [`imap`] | reading mail on the server over IMAP: flags and UIDs kept | 19 |
//!
//! No folder needs another that needs it back, even through others (`tests/architecture.rs`
//! checks it): a part below tells a part above through a hook it defines, such as
//! `smtp::envelope::Deliver`. The top-level files are the wiring and what every part shares,
//! down to `lock` below.
//!
//! Standards: none

pub mod config;
pub mod connection;
pub mod server;

pub mod net;
pub mod smtp;

pub mod machine;

pub mod store;

pub mod datetime;

pub mod visible;

pub mod relay;

pub mod lab;

pub mod pop3;

pub mod imap;
pub mod web;

/// Lock a mutex even if a thread panicked while holding it. Every mutex here guards state that
/// stays whole between statements (counters, flags, queues), and one failed session must not
/// stop the others. Shared by every part, so it sits at the root of the crate.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

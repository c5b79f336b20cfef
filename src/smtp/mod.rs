//! The SMTP server side, from the first command to the end of the message: the protocol alone,
//! testable without a socket. The loop that feeds it lines is `src/connection.rs`. Read in this
//! order:
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `command.rs` | the verb table and the command parser | 3 |
//! | `reply.rs` | replies: code, enhanced code, text, written in one place | 3 |
//! | `session.rs` | the state machine: one `enum State`, one table, one `step` | 2, 4, 6 |
//! | `envelope.rs` | what a transaction gathers, who the client is, the delivery hook | 4, 7 |
//! | `address.rs` | the paths of MAIL FROM and RCPT TO, after the RFC grammar | 4, 10 |
//! | `data.rs` | DATA: the end of the message, dot-stuffing, the size limit | 5 |
//! | `body.rs` | a message's content: in memory while small, in a file when large | 17 |
//! | `extensions.rs` | the EHLO keywords and the MAIL FROM parameters | 8 |
//! | `auth.rs` | AUTH: the SASL mechanisms, without sockets | 9 |
//! | `auth_budget.rs` | the password-failure budget per client address, for SMTP, POP3 and IMAP | 15 |
//!
//! Standards: none

pub mod command;
pub mod reply;

pub mod session;

pub mod envelope;

pub mod address;

pub mod data;

pub mod body;

pub mod extensions;

pub mod auth;
pub mod auth_budget;

//! POP3: reading mail back out of the same mbox files.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `server.rs` | the POP3 listener and one client's I/O loop | 14 |
//! | `command.rs` | the verb table, the command parser, `+OK`/`-ERR` responses | 14 |
//! | `session.rs` | the POP3 state machine: one table, one `step` | 14 |
//!
//! Standards: none

pub mod server;

pub mod command;
pub mod session;

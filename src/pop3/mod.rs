//! POP3: reading mail back out of the same mbox files.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `server.rs` | the POP3 listener and one client's I/O loop | 13 |
//! | `session.rs` | the POP3 state machine and its commands | 13 |
//!
//! Standards: none

pub mod server;
pub mod session;

//! IMAP: reading mail on the server, from the same mbox files, with flags and UIDs that stay.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `server.rs` | the IMAP listener and one client's I/O loop: lines, literals, IDLE | 19 |
//! | `command.rs` | the verb table, the parser from the ABNF, tagged and untagged responses | 19 |
//! | `session.rs` | the IMAP state machine: one table, one `step` | 19 |
//! | `message.rs` | one message as FETCH and SEARCH see it: sections, ENVELOPE | 19 |
//! | `mbox.rs` | flags in `Status:` headers, UIDs in an index beside the mbox, the file hook | 19 |
//!
//! Standards: none

pub mod server;

pub mod command;
pub mod message;
pub mod session;

pub mod mbox;

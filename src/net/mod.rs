//! The network part: the welcome socket, and what turns a TCP byte stream into lines a
//! protocol can read.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `listener.rs` | the welcome socket of SMTP, POP3 and IMAP: backlog, caps per server and per address | 1, 15 |
//! | `line.rs` | the line reader: command lines, message lines, the 512-octet limit | 5, 15 |
//! | `tls.rs` | the certificate, the acceptor, the handshake, and the stream a connection reads and writes | 9 |
//!
//! Standards: none

pub mod line;
pub mod listener;
pub mod tls;

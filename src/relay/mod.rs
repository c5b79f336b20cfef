//! The relay: mail for other domains, from the spool to the next hop, or back as a bounce.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `queue.rs` | the spool: two files per message, written so a crash loses nothing | 12 |
//! | `dns.rs` | MX lookup: which hosts take mail for a domain, in which order | 11 |
//! | `worker.rs` | the threads that take messages from the spool to the next hop | 12 |
//! | `client.rs` | the SMTP client: commands out, replies in, STARTTLS, DATA and BDAT | 12 |
//! | `bounce.rs` | delivery status notifications for the sender | 12 |
//!
//! Standards: none

pub mod queue;

pub mod dns;

pub mod worker;

pub mod client;

pub mod bounce;

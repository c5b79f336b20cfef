//! The local store: where accepted mail for local users lands, durably.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `delivery.rs` | the `Deliver` hook: each recipient to a mailbox or to the queue | 7 |
//! | `mboxrd.rs` | the mbox format: separator lines, quoting, finding the messages again | 7 |
//! | `mbox.rs` | the delivery transaction: lock, record the intent, append, sync, all-or-nothing; recovery at start | 7, 17 |
//! | `lock.rs` | the dotlock and the fcntl lock that mutt, Python and Postfix also take | 7 |
//! | `intent.rs` | the intent record, and recovery's rule "prove, then cut" | 7, 17 |
//! | `maildrop.rs` | a reader's view (POP3): index, read one message, rewrite without the deleted | 14 |
//! | `gate.rs` | group commit: one lock, one write, one sync for many waiters | 17 |
//!
//! Standards: none

pub mod delivery;
pub mod intent;
pub mod lock;
pub mod maildrop;
pub mod mbox;
pub mod mboxrd;

pub mod gate;

//! The local store: where accepted mail for local users lands, durably.
//!
//! | file | what | lesson |
//! |---|---|---|
//! | `delivery.rs` | the `Deliver` hook: each recipient to a mailbox or to the queue | 7 |
//! | `mbox.rs` | appending to `DIR/<user>` in mboxrd format, all-or-nothing | 7, 13 |
//! | `gate.rs` | group commit: one lock, one write, one fsync for many waiters | 16 |
//!
//! Standards: none

pub mod delivery;
pub mod mbox;

pub mod gate;

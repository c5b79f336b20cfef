//! Local delivery: append a message to `DIR/<user>` in mboxrd format, all-or-nothing.
//!
//! Interface:
//! - `MailDir::deliver(sender, deliveries, content)` appends one message to several mboxes under
//!   lock, fsyncs each, and truncates every file back if any append fails.
//! - `parse_mboxrd(bytes)` reads an mbox back (for tests and POP3), undoing the quoting.
//!
//! Standards: RFC 4155 §2, RFC 5321 §4.4, RFC 5321 §6.1

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The mail directory: one mbox file per local user.
#[derive(Debug, Clone)]
pub struct MailDir {
    root: PathBuf,
}

/// One mailbox to append to, with the trace headers that go in front of the content for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The local user; the mbox is `DIR/<user>`.
    pub user: String,
    /// `Return-Path:` and `Received:` lines, each ending in `\n`.
    pub trace_headers: String,
}

/// Why a delivery failed; every mbox is unchanged when this is returned.
#[derive(Debug)]
pub enum DeliveryError {
    /// A user name that could escape the mail directory or is not a plain file name.
    UnsafeName(String),
    /// The mbox stayed locked by someone else for too long.
    Locked(String),
    /// An I/O error (write, fsync, a directory where the mbox should be, ...).
    Io(String, io::Error),
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::UnsafeName(user) => write!(f, "unsafe mailbox name {user:?}"),
            DeliveryError::Locked(user) => write!(f, "mailbox of {user} is locked"),
            DeliveryError::Io(user, err) => write!(f, "mailbox of {user}: {err}"),
        }
    }
}

/// One message read back from an mbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The envelope sender from the `From ` line (`MAILER-DAEMON` for `<>`).
    pub sender: String,
    /// The message as delivered (trace headers included), quoting undone, `\n` line ends.
    pub content: Vec<u8>,
}

impl MailDir {
    pub fn new(root: impl Into<PathBuf>) -> MailDir {
        MailDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Append `content` (lines ending in `\n`, already dot-unstuffed) for every delivery.
    /// `sender` is the envelope sender without brackets ("" for the null path).
    pub fn deliver(
        &self,
        sender: &str,
        deliveries: &[Delivery],
        content: &[u8],
    ) -> Result<(), DeliveryError> {
        let _ = (sender, deliveries, content);
        Ok(())
    }
}

/// Read an mboxrd file back into messages.
pub fn parse_mboxrd(bytes: &[u8]) -> Vec<StoredMessage> {
    let _ = bytes;
    Vec::new()
}

//! A reader's view of an mbox (the POP3 maildrop): read it under the delivery locks, index its
//! messages without holding the file in memory, and rewrite it without the deleted ones.
//!
//! Interface:
//! - `MailDir::try_lock_reader(user)` lets one reader (a POP3 session) at a time have a
//!   maildrop, from login to the end of the session.
//! - `MailDir::lock_maildrop(user)` holds an mbox with the locks a delivery takes; on the held
//!   `MaildropLock`, `spans()` indexes the messages as they are *now*, `read_span(span)` reads
//!   one (`span_reader(span)` as a stream, in bounded memory), and `rewrite(keep)` replaces
//!   the file with only the spans kept; `rewrite_parts` also writes new bytes in between
//!   (IMAP's flag headers).
//! - `MailDir::rewrite_without(user, remove)` does all of that in one step: `remove` sees the
//!   messages as the file holds them at that moment, so mail another program delivered or
//!   rewrote during the session is judged by what it is now, and kept unless marked.
//!
//! Standards: RFC 1939 §4, §6, RFC 4155 §2

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use crate::store::gate::Exclusive;
use crate::store::lock::{private_file, MboxLock};
use crate::store::mbox::{is_safe_mailbox_name, DeliveryError, MailDir};
use crate::store::mboxrd::{index_mboxrd, Span, MAX_PIECE};

// ANCHOR: maildrop_lock
/// The mbox of one user, held with the same two locks a delivery takes (dotlock, then fcntl),
/// for a reader that must see whole messages or rewrite the file (POP3).
///
/// Why holding the dotlock across a rewrite is enough: a deliverer takes the dotlock *before*
/// it opens the mbox (`src/store/lock.rs::lock_mbox`), so while we hold it no deliverer can
/// have the old file open for writing, and the first deliverer after us opens the new file by
/// its name. Postfix and mutt take the dotlock first as well.
#[derive(Debug)]
pub struct MaildropLock {
    mbox: MboxLock,
    path: PathBuf,
    root: PathBuf,
    /// Keeps this server's own deliverers waiting in line; fields drop in order, so this is
    /// released after the mbox's own locks.
    _held: Exclusive<DeliveryError>,
}

/// At most one reader session per maildrop: an exclusive flock on `DIR/.<user>.reader`,
/// released when this is dropped (or when the process dies: a flock cannot go stale).
#[derive(Debug)]
pub struct ReaderLock {
    file: File,
}

impl Drop for ReaderLock {
    fn drop(&mut self) {
        if let Err(err) = self.file.unlock() {
            log::error!("cannot unlock a reader lock: {err}");
        }
    }
}
// ANCHOR_END: maildrop_lock

/// The bytes of `span` in `file`, read `MAX_PIECE` at a time: a message of any size is read
/// in bounded memory. Moves the file's offset (shared with its clones).
pub fn span_reader(mut file: &File, span: Span) -> io::Result<impl BufRead + '_> {
    file.seek(SeekFrom::Start(span.offset))?;
    let capacity = usize::try_from(MAX_PIECE).map_err(io::Error::other)?;
    Ok(BufReader::with_capacity(capacity, file.take(span.len)))
}

impl MailDir {
    /// Lock a user's mbox as a delivery does (waiting up to the lock attempts); the mbox is
    /// created empty if it does not exist. Deliveries wait until the lock is dropped.
    pub fn lock_maildrop(&self, user: &str) -> Result<MaildropLock, DeliveryError> {
        let held = self.gates.exclusive(user);
        let mbox = self.lock_mailbox(user)?;
        Ok(MaildropLock {
            _held: held,
            path: self.root().join(user),
            root: self.root().to_path_buf(),
            mbox,
        })
    }

    /// Claim the right to be the one reader (POP3 session) of `user`'s maildrop; `Ok(None)` if
    /// another reader has it (RFC 1939 §4: an exclusive-access lock from login to UPDATE).
    ///
    /// This is not the delivery lock: SMTP keeps delivering while a reader is logged in, and
    /// the reader takes `lock_maildrop` only for a moment to read or to commit. The lock file
    /// stays in place (a name no mailbox can have, as it starts with `.`): removing it would
    /// let a waiter lock a file that has just lost its name.
    pub fn try_lock_reader(&self, user: &str) -> Result<Option<ReaderLock>, DeliveryError> {
        if !is_safe_mailbox_name(user) {
            return Err(DeliveryError::UnsafeName(user.to_string()));
        }
        let io_error = |err| DeliveryError::Io(user.to_string(), err);
        let file = private_file()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root().join(format!(".{user}.reader")))
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ReaderLock { file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(err)) => Err(io_error(err)),
        }
    }

    /// Rewrite `user`'s mbox without the messages `remove` marks, atomically, under the
    /// delivery locks. `remove` is called with the messages as the file holds them *now* (it
    /// may read each with `read_span`), so mail delivered since the caller last looked is seen
    /// and kept. Returns how many messages were removed.
    pub fn rewrite_without(
        &self,
        user: &str,
        remove: impl FnOnce(&MaildropLock, &[Span]) -> io::Result<Vec<bool>>,
    ) -> Result<usize, DeliveryError> {
        let io_error = |err| DeliveryError::Io(user.to_string(), err);
        let lock = self.lock_maildrop(user)?;
        let spans = lock.spans().map_err(io_error)?;
        let marks = remove(&lock, &spans).map_err(io_error)?;
        let prefix = Span {
            offset: 0,
            len: spans.first().map_or(0, |s| s.offset),
        };
        let mut keep = vec![prefix];
        for (index, span) in spans.iter().enumerate() {
            if !marks.get(index).copied().unwrap_or(false) {
                keep.push(*span);
            }
        }
        let removed = spans.len() + 1 - keep.len();
        if removed > 0 {
            lock.rewrite(&keep).map_err(io_error)?;
        }
        Ok(removed)
    }
}

/// One piece of an mbox being rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    /// These bytes of the file as it is now.
    Kept(Span),
    /// New bytes: a message with its headers changed.
    New(&'a [u8]),
}

impl MaildropLock {
    /// The locked mbox, open for reading and appending.
    pub fn file(&self) -> &File {
        &self.mbox.file
    }

    /// Every message of the mbox as it is now, found by reading it once, a line at a time.
    pub fn spans(&self) -> io::Result<Vec<Span>> {
        self.check_still_named()?;
        let mut file = self.mbox.file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        index_mboxrd(BufReader::new(file))
    }

    /// The raw bytes of one message (separator, quoted content, the empty line after it).
    pub fn read_span(&self, span: Span) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; usize::try_from(span.len).map_err(io::Error::other)?];
        self.mbox.file.read_exact_at(&mut bytes, span.offset)?;
        Ok(bytes)
    }

    /// One message's raw bytes as a stream, read a buffer at a time (`span_reader`).
    pub fn span_reader(&self, span: Span) -> io::Result<impl BufRead + '_> {
        span_reader(&self.mbox.file, span)
    }

    /// Is the name still this file? A file renamed over it meanwhile is not ours to read.
    fn check_still_named(&self) -> io::Result<()> {
        let (ours, named) = (
            self.mbox.file.metadata()?,
            fs::symlink_metadata(&self.path)?,
        );
        if (ours.dev(), ours.ino()) != (named.dev(), named.ino()) {
            return Err(io::Error::other("the mbox was replaced while locked"));
        }
        Ok(())
    }

    /// Replace the mbox with the spans kept (POP3's UPDATE): `rewrite_parts` with no new bytes.
    pub fn rewrite(self, keep: &[Span]) -> io::Result<()> {
        let parts: Vec<Part> = keep.iter().copied().map(Part::Kept).collect();
        self.rewrite_parts(&parts)
    }

    // ANCHOR: rewrite
    /// Replace the mbox with `parts`, all or nothing: spans of the file as it is, and new bytes
    /// (IMAP's new flag headers), copied into `DIR/.<user>.new` a buffer at a time; sync it,
    /// rename it over the mbox, sync the directory (the rename lives there). A crash leaves
    /// either the old file or the new one, never half of each. The locks stay held until the
    /// caller drops `self`: IMAP saves its index and takes the new file's stamp first, as mail
    /// delivered after the locks go must make the stamp differ. Only `spans` is no longer
    /// possible, as the name now holds the new file.
    pub fn rewrite_parts(&self, parts: &[Part]) -> io::Result<()> {
        let temp = self.root.join(format!(".{}.new", self.mbox.user));
        // A temp file left by a crash is ours to remove: we hold the dotlock.
        match fs::remove_file(&temp) {
            Err(err) if err.kind() != ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let written = self
            .copy_parts(&temp, parts)
            .and_then(|()| fs::rename(&temp, &self.path));
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(err);
        }
        File::open(&self.root)?.sync_all()
    }
    // ANCHOR_END: rewrite

    /// Create `temp` (0600, never through a symlink), write the parts into it, sync it.
    fn copy_parts(&self, temp: &std::path::Path, parts: &[Part]) -> io::Result<()> {
        let file = private_file().write(true).create_new(true).open(temp)?;
        let mut out = BufWriter::new(file);
        let mut source = self.mbox.file.try_clone()?;
        for part in parts {
            let span = match part {
                Part::Kept(span) => span,
                Part::New(bytes) => {
                    out.write_all(bytes)?;
                    continue;
                }
            };
            source.seek(SeekFrom::Start(span.offset))?;
            let copied = io::copy(&mut (&mut source).take(span.len), &mut out)?;
            if copied != span.len {
                return Err(io::Error::other("the mbox shrank while locked"));
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

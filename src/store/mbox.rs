//! Local delivery: append a message to `DIR/<user>` in mboxrd format, all-or-nothing, and the
//! start-up recovery that cuts only what a killed delivery of ours left half-written.
//!
//! Interface:
//! - `MailDir::new(dir)` names the mail directory; `with_lock_attempts(n)` bounds the wait for
//!   locks; `with_size_limit(bytes)` refuses a delivery that would make an mbox larger, and
//!   `room_for(user, declared)` asks at RCPT time whether a message of that size still fits.
//! - `MailDir::deliver_body(sender, deliveries, body)` appends one message to several mboxes
//!   under lock, syncs each, and truncates every file back if any append fails; `deliver(..)`
//!   does the same for content given as bytes. A small message joins a group commit
//!   (`src/store/gate.rs`); a spilled one (`src/smtp/body.rs`) is quoted and written as a
//!   stream, so a large message is never in memory whole.
//! - `MailDir::recover()` runs once at start, after the listeners are bound: "prove, then cut"
//!   (`src/store/intent.rs`).
//! - `MailDir::path_for(user)` and `is_safe_mailbox_name(user)` say where a user's mbox is, if
//!   the name is safe to use as a file name. The format itself is `src/store/mboxrd.rs`; the
//!   locks are `src/store/lock.rs`; a reader's view (POP3) is `src/store/maildrop.rs`.
//!
//! One delivery, step by step (`MailDir::write_and_sync`):
//! 1. refuse the whole delivery if any user name is unsafe;
//! 2. lock every mbox, in sorted order: the dotlock `DIR/<user>.lock`, then the mbox opened
//!    without following symlinks, then an fcntl lock on it;
//! 3. refuse it if any mbox would pass the size limit;
//! 4. for each mbox, record the intent (`DIR/.<user>.intent`: inode, start, end, first bytes),
//!    then append: a blank line if the last message lacks one, the `From ` line, trace
//!    headers and quoted content;
//! 5. sync each mbox (one `fdatasync` per mbox per batch), or on any error truncate every mbox
//!    back to where it started;
//! 6. mark each intent idle, and release all locks (dropping the guards does it).
//!
//! Standards: RFC 4155 §2, RFC 5321 §4.4, §6.1

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::smtp::body::{Body, READ_CHUNK};
use crate::store::gate::{Exclusive, Gates};
use crate::store::intent::{self, Intent, IntentFile, Verdict, INTENT_SUFFIX};
use crate::store::lock::{self, lock_mbox, MboxLock, LOCK_ATTEMPTS, LOCK_SUFFIX};
use crate::store::mboxrd::{from_line, quote_mboxrd, quoted_len, MboxrdQuoter};
// Readers of an mbox (tests, POP3) have always found these here.
pub use crate::store::mboxrd::{parse_mboxrd, split_mboxrd, StoredMessage};

/// Longest user name, in bytes: the limit of an address's local part (RFC 5321 §4.5.3.1.1).
const MAX_MAILBOX_NAME: usize = 64;

/// `DIR/.<user>.committed` was the committed-length record of earlier versions; recovery
/// removes it, as it is no longer read and its length rule cut other programs' mail.
const OLD_COMMITTED_SUFFIX: &str = ".committed";

/// The mail directory: one mbox file per local user.
#[derive(Debug, Clone)]
pub struct MailDir {
    root: PathBuf,
    /// Deliveries queue here per mailbox and share one write and sync (`src/store/gate.rs`).
    pub(super) gates: Arc<Gates<DeliveryError>>,
    /// How long to wait for each lock: as long as this many tries `LOCK_RETRY_DELAY` apart.
    lock_attempts: u32,
    /// No delivery may make an mbox longer than this (`--mailbox-size-limit`).
    size_limit: Option<u64>,
    /// Test hook: fail right after writing to this user's mbox, to exercise the rollback.
    #[cfg(test)]
    fail_after_writing: Option<String>,
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
    /// The message would make the mbox longer than the size limit.
    Full { user: String, limit: u64 },
    /// An I/O error (write, sync, a directory where the mbox should be, ...).
    Io(String, io::Error),
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::UnsafeName(user) => write!(f, "unsafe mailbox name {user:?}"),
            DeliveryError::Locked(user) => write!(f, "mailbox of {user} is locked"),
            DeliveryError::Full { user, limit } => {
                write!(
                    f,
                    "mailbox of {user} would pass its size limit of {limit} bytes"
                )
            }
            DeliveryError::Io(user, err) => write!(f, "mailbox of {user}: {err}"),
        }
    }
}

/// A batch's failure is handed to every message in it (`src/store/gate.rs`); an `io::Error` is
/// not `Clone`, so its copy keeps the kind and the text.
impl Clone for DeliveryError {
    fn clone(&self) -> DeliveryError {
        match self {
            DeliveryError::UnsafeName(user) => DeliveryError::UnsafeName(user.clone()),
            DeliveryError::Locked(user) => DeliveryError::Locked(user.clone()),
            DeliveryError::Full { user, limit } => DeliveryError::Full {
                user: user.clone(),
                limit: *limit,
            },
            DeliveryError::Io(user, err) => {
                DeliveryError::Io(user.clone(), io::Error::new(err.kind(), err.to_string()))
            }
        }
    }
}

/// What one mbox gets in a delivery, known before a byte is written.
struct Append<'a> {
    /// The first bytes, known before writing: all of them for messages quoted in memory, the
    /// separator and trace headers for a message streamed from its spill file.
    head: Vec<&'a [u8]>,
    /// Where each message starts, counted from the first separator.
    starts: Vec<u64>,
    /// Octets in all.
    len: u64,
}

impl<'a> Append<'a> {
    /// Messages already quoted in memory, written one after the other.
    fn of(messages: &[&'a [u8]]) -> Append<'a> {
        let mut starts = Vec::with_capacity(messages.len());
        let mut len = 0;
        for message in messages {
            starts.push(len);
            len += message.len() as u64;
        }
        Append {
            head: messages.to_vec(),
            starts,
            len,
        }
    }
}

/// One mbox held for a delivery: its locks, its intent record, and where the append began.
struct Held {
    lock: MboxLock,
    intent: IntentFile,
    start: u64,
}

impl Held {
    fn io_error(&self, err: io::Error) -> DeliveryError {
        DeliveryError::Io(self.lock.user.clone(), err)
    }
}

/// What recovery found for one mbox at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub user: String,
    pub verdict: Verdict,
}

impl MailDir {
    pub fn new(root: impl Into<PathBuf>) -> MailDir {
        MailDir {
            root: root.into(),
            gates: Arc::new(Gates::default()),
            lock_attempts: LOCK_ATTEMPTS,
            size_limit: None,
            #[cfg(test)]
            fail_after_writing: None,
        }
    }

    /// Wait for each lock (dotlock, then fcntl) as long as `attempts` tries `LOCK_RETRY_DELAY`
    /// apart would take (`src/store/lock.rs::retry`), before
    /// failing with `DeliveryError::Locked`. The default is `LOCK_ATTEMPTS`; tests use a few.
    pub fn with_lock_attempts(mut self, attempts: u32) -> MailDir {
        self.lock_attempts = attempts.max(1);
        self
    }

    /// Refuse (`DeliveryError::Full`) a delivery that would make an mbox longer than `bytes`.
    pub fn with_size_limit(mut self, bytes: u64) -> MailDir {
        self.size_limit = Some(bytes);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// RCPT time, before any content (RFC 1870): refuse (`DeliveryError::Full`) when `user`'s
    /// mbox is already at the size limit, or when its size plus the `declared` size of the
    /// message would pass it. Read without locks: the end of DATA checks again, under them.
    pub fn room_for(&self, user: &str, declared: u64) -> Result<(), DeliveryError> {
        let Some(limit) = self.size_limit else {
            return Ok(());
        };
        let path = self
            .path_for(user)
            .ok_or_else(|| DeliveryError::UnsafeName(user.to_string()))?;
        let size = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
            Err(err) => return Err(DeliveryError::Io(user.to_string(), err)),
        };
        if size >= limit || size.saturating_add(declared) > limit {
            return Err(DeliveryError::Full {
                user: user.to_string(),
                limit,
            });
        }
        Ok(())
    }

    /// `DIR/<user>`, or `None` if `user` is not a safe file name (see `is_safe_mailbox_name`).
    pub fn path_for(&self, user: &str) -> Option<PathBuf> {
        is_safe_mailbox_name(user).then(|| self.root.join(user))
    }

    /// Append `content` (lines ending in `\n`, already dot-unstuffed) for every delivery.
    /// `sender` is the envelope sender without brackets ("" for the null path).
    ///
    /// A user listed twice gets the message once, with the first entry's trace headers.
    /// Either every mbox gets the message, durably, or none changes.
    pub fn deliver(
        &self,
        sender: &str,
        deliveries: &[Delivery],
        content: &[u8],
    ) -> Result<(), DeliveryError> {
        self.deliver_body(sender, deliveries, &Body::from(content))
    }

    // ANCHOR: deliver_body
    /// Append `content` for every delivery, as `deliver` does. A spilled (large) body is
    /// streamed from its file into each mbox; a small one is built in memory and may share a
    /// batch with other messages for the same mailbox.
    pub fn deliver_body(
        &self,
        sender: &str,
        deliveries: &[Delivery],
        content: &Body,
    ) -> Result<(), DeliveryError> {
        let deliveries = sorted_unique(deliveries);
        if let Some(bad) = deliveries.iter().find(|d| !is_safe_mailbox_name(&d.user)) {
            return Err(DeliveryError::UnsafeName(bad.user.clone()));
        }
        let separator = from_line(sender, SystemTime::now());
        // A large body is in a spill file: stream it. A small one is quoted in memory.
        let Some(bytes) = content.as_slice() else {
            return self.deliver_streaming(&separator, &deliveries, content);
        };
        let body = quote_mboxrd(bytes);
        let messages: Vec<Vec<u8>> = deliveries
            .iter()
            .map(|d| [separator.as_bytes(), d.trace_headers.as_bytes(), &body].concat())
            .collect();
        if let ([delivery], [message]) = (deliveries.as_slice(), messages.as_slice()) {
            // One mailbox: join the batch of whoever else is waiting for it (group commit).
            let user = &delivery.user;
            return self.gates.submit(user, message.clone(), |batch| {
                let appends = [Append::of(batch)];
                self.write_and_sync(&[user], &appends, |_, file| {
                    batch.iter().try_for_each(|message| file.write_all(message))
                })
            });
        }
        // Several mailboxes: hold each one, in sorted order, so two such deliveries can never
        // each hold a mailbox the other waits for.
        let users: Vec<&str> = deliveries.iter().map(|d| d.user.as_str()).collect();
        let appends: Vec<Append> = messages.iter().map(|m| Append::of(&[m])).collect();
        let _held = self.hold_all(&users);
        self.write_and_sync(&users, &appends, |i, file| file.write_all(&messages[i]))
    }

    /// A large message: hold every mailbox (never in a batch, which would gather it in memory)
    /// and quote the body into each file as it is read back, `READ_CHUNK` octets at a time.
    fn deliver_streaming(
        &self,
        separator: &str,
        deliveries: &[&Delivery],
        content: &Body,
    ) -> Result<(), DeliveryError> {
        let users: Vec<&str> = deliveries.iter().map(|d| d.user.as_str()).collect();
        let body_len = quoted_len(|each| content.for_each_chunk(each))
            .map_err(|err| DeliveryError::Io(users.join(", "), err))?;
        let appends: Vec<Append> = deliveries
            .iter()
            .map(|d| Append {
                head: vec![separator.as_bytes(), d.trace_headers.as_bytes()],
                starts: vec![0],
                len: (separator.len() + d.trace_headers.len()) as u64 + body_len,
            })
            .collect();
        let _held = self.hold_all(&users);
        self.write_and_sync(&users, &appends, |i, file| {
            let mut out = BufWriter::with_capacity(READ_CHUNK, file);
            out.write_all(separator.as_bytes())?;
            out.write_all(deliveries[i].trace_headers.as_bytes())?;
            let mut quoter = MboxrdQuoter::new(out);
            content.for_each_chunk(|chunk| quoter.write(chunk))?;
            quoter.finish()?.flush()
        })
    }
    // ANCHOR_END: deliver_body

    /// Hold each mailbox in the order given (sorted), until the guards are dropped.
    fn hold_all(&self, users: &[&str]) -> Vec<Exclusive<DeliveryError>> {
        users
            .iter()
            .map(|user| self.gates.exclusive(user))
            .collect()
    }

    // ANCHOR: write_and_sync
    /// Lock each mailbox, check the size limit, record each intent, append each message with
    /// `write(index, file)`, sync them all; on any error truncate every one back. All or
    /// nothing. Then every intent is idle again and the locks go.
    fn write_and_sync(
        &self,
        users: &[&str],
        appends: &[Append],
        write: impl Fn(usize, &mut File) -> io::Result<()>,
    ) -> Result<(), DeliveryError> {
        let mut held = Vec::with_capacity(users.len());
        for user in users {
            held.push(self.hold(user)?);
        }
        let guards = self.plan(&held, appends)?;
        let written = self
            .append_all(&mut held, appends, &guards, write)
            .and_then(|()| self.sync_all(&held));
        if written.is_err() {
            roll_back(&mut held);
        }
        for mbox in &held {
            // The append is synced or undone: the record no longer describes anything.
            if let Err(err) = mbox.intent.clear() {
                log::error!(
                    "cannot clear the intent record of {}: {err}",
                    mbox.lock.user
                );
            }
        }
        // Dropping `held` releases every fcntl lock and dotlock; the `?` returns above release
        // them the same way.
        written
    }
    // ANCHOR_END: write_and_sync

    /// Take the locks of `user`'s mbox, open its intent record, note where it ends.
    fn hold(&self, user: &str) -> Result<Held, DeliveryError> {
        let io_error = |err| DeliveryError::Io(user.to_string(), err);
        let lock = self.lock_mailbox(user)?;
        let intent = IntentFile::open(&self.root, user).map_err(io_error)?;
        // Only now, under both locks, is the length stable.
        let start = lock.file.metadata().map_err(io_error)?.len();
        Ok(Held {
            lock,
            intent,
            start,
        })
    }

    /// The dotlock and the fcntl lock of `user`'s mbox (`src/store/lock.rs`).
    pub(super) fn lock_mailbox(&self, user: &str) -> Result<MboxLock, DeliveryError> {
        if !is_safe_mailbox_name(user) {
            return Err(DeliveryError::UnsafeName(user.to_string()));
        }
        lock_mbox(&self.root, user, self.lock_attempts)
            .map_err(|err| DeliveryError::Io(user.to_string(), err))?
            .ok_or_else(|| DeliveryError::Locked(user.to_string()))
    }

    /// Before writing anything: the blank line each mbox needs in front of our separator, and
    /// the size limit, checked for every mbox so that none is written if one is full.
    fn plan(&self, held: &[Held], appends: &[Append]) -> Result<Vec<&'static [u8]>, DeliveryError> {
        let mut guards = Vec::with_capacity(held.len());
        for (mbox, append) in held.iter().zip(appends) {
            let guard =
                blank_line_guard(&mbox.lock.file, mbox.start).map_err(|e| mbox.io_error(e))?;
            let end = mbox.start + guard.len() as u64 + append.len;
            if let Some(limit) = self.size_limit.filter(|&limit| end > limit) {
                let user = mbox.lock.user.clone();
                return Err(DeliveryError::Full { user, limit });
            }
            guards.push(guard);
        }
        Ok(guards)
    }

    /// Record each intent, then write the blank line guard and the messages to every mbox.
    fn append_all(
        &self,
        held: &mut [Held],
        appends: &[Append],
        guards: &[&[u8]],
        write: impl Fn(usize, &mut File) -> io::Result<()>,
    ) -> Result<(), DeliveryError> {
        for (i, mbox) in held.iter_mut().enumerate() {
            let (append, guard) = (&appends[i], guards[i]);
            let guard_len = guard.len() as u64;
            let separators = append.starts.iter().map(|s| s + guard_len).collect();
            let head = [&[guard][..], &append.head].concat().concat();
            let planned = Intent::plan(&mbox.lock.file, &head, separators, guard_len + append.len);
            let file = &mut mbox.lock.file;
            // The file is opened with O_APPEND and we hold its locks, so every write lands at
            // the end; a crash halfway is cut off at start by `recover`, with the intent as proof.
            let written = planned
                .and_then(|intent| mbox.intent.record(&intent))
                .and_then(|()| file.write_all(guard))
                .and_then(|()| write(i, file));
            written.map_err(|err| DeliveryError::Io(mbox.lock.user.clone(), err))?;
            #[cfg(test)]
            if self.fail_after_writing.as_deref() == Some(mbox.lock.user.as_str()) {
                return Err(mbox.io_error(io::Error::other("injected failure")));
            }
        }
        Ok(())
    }

    /// Sync every mbox, and the directory if a new mbox was created in it: "250" must mean the
    /// message survives a crash (RFC 5321 §6.1). This is the one sync of a delivery.
    fn sync_all(&self, held: &[Held]) -> Result<(), DeliveryError> {
        for mbox in held {
            mbox.lock.file.sync_data().map_err(|e| mbox.io_error(e))?;
        }
        if let Some(new) = held.iter().find(|mbox| mbox.lock.created) {
            // A new file's name lives in the directory; a sync of the file alone does not keep it.
            File::open(&self.root)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| new.io_error(e))?;
        }
        Ok(())
    }

    /// At start, once the listeners are bound: for every mbox whose intent record describes an
    /// append, judge it (`src/store/intent.rs::judge`) and cut only a tail it proves is ours
    /// and unacknowledged. Every record is then retired, so it is judged once.
    pub fn recover(&self) -> io::Result<Vec<Recovered>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            lock::remove_orphan_lock_file(&self.root.join(&name));
            let hidden = |suffix| name.strip_prefix('.')?.strip_suffix(suffix);
            if hidden(OLD_COMMITTED_SUFFIX).is_some_and(is_safe_mailbox_name) {
                log::info!("removing {name}: a record of an earlier version, no longer used");
                fs::remove_file(self.root.join(&name))?;
            }
            let Some(user) = hidden(INTENT_SUFFIX).filter(|u| is_safe_mailbox_name(u)) else {
                continue;
            };
            if let Some(verdict) = self.recover_one(user)? {
                found.push(Recovered {
                    user: user.to_string(),
                    verdict,
                });
            }
        }
        Ok(found)
    }

    /// Judge one mbox's intent record under the delivery locks; `None` if it was idle. The
    /// record is read again and retired under the locks: another smtplab on the same mail
    /// directory may be delivering, and its record is live until it lets go of the mbox.
    fn recover_one(&self, user: &str) -> io::Result<Option<Verdict>> {
        let record = IntentFile::open(&self.root, user)?;
        if record.read()?.is_none() {
            return Ok(None);
        }
        if !self.root.join(user).exists() {
            record.retire()?;
            return Ok(Some(Verdict::Leave("the mbox is gone".to_string())));
        }
        let held = self
            .lock_maildrop(user)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let Some(intent) = record.read()? else {
            return Ok(None); // the other smtplab finished it meanwhile
        };
        let verdict = intent::judge(&intent, held.file())?;
        if let Verdict::Cut { start, .. } = verdict {
            held.file().set_len(start)?;
            held.file().sync_data()?;
        }
        record.retire()?;
        Ok(Some(verdict))
    }
}

/// Is `user` safe as a file name inside the mail directory?
///
/// Not empty, at most `MAX_MAILBOX_NAME` bytes, no `/` (it would leave the directory), no NUL
/// or control character, no leading `.` (that also rules out `.` and `..`, and hides nothing),
/// and no `.lock` ending (it would be another mbox's dotlock). UTF-8 letters are fine.
pub fn is_safe_mailbox_name(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_MAILBOX_NAME
        && !user.starts_with('.')
        && !user.ends_with(LOCK_SUFFIX)
        && !user.chars().any(|c| c == '/' || c.is_control())
}

/// The deliveries sorted by user, each user once (the first entry for a user wins).
fn sorted_unique(deliveries: &[Delivery]) -> Vec<&Delivery> {
    let mut sorted: Vec<&Delivery> = deliveries.iter().collect();
    sorted.sort_by(|a, b| a.user.cmp(&b.user)); // stable: equal users keep their order
    sorted.dedup_by(|later, earlier| later.user == earlier.user);
    sorted
}

/// What must come before our `From ` line so that it starts a message (RFC 4155 §2: a separator
/// follows an empty line). Another writer may have left its last message without one: Python's
/// `mailbox` writes the empty line *before* each message, not after. Without it, our separator
/// would be glued to that message and readers would see one message too few.
fn blank_line_guard(mbox: &File, len: u64) -> io::Result<&'static [u8]> {
    let mut tail = [0u8; 2];
    let tail = &mut tail[..len.min(2) as usize];
    mbox.read_exact_at(tail, len - tail.len() as u64)?;
    Ok(match tail {
        [] | [b'\n'] | [b'\n', b'\n'] => b"",
        [_, b'\n'] => b"\n",
        _ => b"\n\n",
    })
}

/// Undo a failed delivery: truncate each mbox to its length before we wrote (Postfix
/// mail_copy() does the same), and sync that. Errors are logged: the first error is the
/// one reported, and there is nothing better to do here.
fn roll_back(held: &mut [Held]) {
    for mbox in held {
        let file = &mbox.lock.file;
        if let Err(err) = file.set_len(mbox.start).and_then(|()| file.sync_data()) {
            log::error!("cannot roll back mailbox of {}: {err}", mbox.lock.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::lock::{LOCK_RETRY_DELAY, STALE_LOCK_AGE};
    use crate::store::mboxrd::tests::TRICKY_BODY;
    use std::fs::OpenOptions;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;
    use std::time::Instant;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "smtplab-mbox-{}-{}-{name}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(unique);
            fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        fn mail_dir(&self) -> MailDir {
            MailDir::new(&self.0)
        }

        fn read(&self, user: &str) -> Vec<u8> {
            fs::read(self.0.join(user)).expect("read mbox")
        }

        /// File names in the directory, sorted: checks that nothing else was written.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("read dir")
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                // The intent records are bookkeeping, not locks or mailboxes.
                .filter(|name| !name.ends_with(INTENT_SUFFIX))
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn to(user: &str) -> Delivery {
        Delivery {
            user: user.to_string(),
            trace_headers: format!("Return-Path: <mary@relay.example>\nDelivered-To: {user}\n"),
        }
    }

    #[test]
    fn a_spilled_message_is_streamed_into_every_mbox() {
        let dir = TempDir::new("spilled");
        let mut content = Vec::new();
        let mut i = 0;
        while content.len() <= 3 * crate::smtp::body::SPILL_THRESHOLD {
            let line = match i % 3 {
                0 => format!("From line {i}\n"),
                1 => format!(">>From quoted {i}\n"),
                _ => format!("{}\n", "y".repeat(997)),
            };
            content.extend_from_slice(line.as_bytes());
            i += 1;
        }
        let mut body = Body::new(&dir.0);
        for piece in content.chunks(777) {
            body.push(piece).unwrap();
        }
        assert!(body.is_spilled());
        dir.mail_dir()
            .deliver_body("a@x", &[to("bob"), to("alice")], &body)
            .expect("deliver");
        assert_eq!(dir.names(), ["alice", "bob"], "no spill file or lock left");
        for user in ["alice", "bob"] {
            let messages = parse_mboxrd(&dir.read(user));
            assert_eq!(messages.len(), 1);
            let mut expected = to(user).trace_headers.into_bytes();
            expected.extend_from_slice(&content);
            assert!(messages[0].content == expected, "{user}: content differs");
        }
    }

    #[test]
    fn round_trip_undoes_the_quoting() {
        let dir = TempDir::new("round-trip");
        let delivery = to("alice");
        dir.mail_dir()
            .deliver(
                "mary@relay.example",
                std::slice::from_ref(&delivery),
                TRICKY_BODY,
            )
            .expect("deliver");

        let stored = dir.read("alice");
        let text = String::from_utf8_lossy(&stored);
        for quoted in ["\n>From me\n", "\n>>From x\n", "\n>>>From y\n"] {
            assert!(text.contains(quoted), "{quoted:?} missing in {text:?}");
        }
        for kept in ["\nFrom:not-a-separator\n", "\nFromage\n", "\n.\n"] {
            assert!(text.contains(kept), "{kept:?} missing in {text:?}");
        }
        // The partial last line gets its `\n`, then the empty line: two newlines (6.07).
        assert!(stored.ends_with(b"last line without newline\n\n"));

        let messages = parse_mboxrd(&stored);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].sender, "mary@relay.example");
        let mut expected = delivery.trace_headers.into_bytes();
        expected.extend_from_slice(TRICKY_BODY);
        expected.push(b'\n'); // documented: a partial last line comes back with `\n`
        assert_eq!(messages[0].content, expected);
    }

    #[test]
    fn separator_line_is_rfc_4155() {
        let dir = TempDir::new("separator");
        dir.mail_dir()
            .deliver("mary@relay.example", &[to("alice")], b"Hi\n")
            .expect("deliver");
        let stored = String::from_utf8(dir.read("alice")).expect("utf-8");
        let first = stored.lines().next().expect("a line");
        let date = first
            .strip_prefix("From mary@relay.example ")
            .expect("sender");
        assert_eq!(date.len(), 24, "asctime date: {date:?}");
        assert!(stored[first.len() + 1..].starts_with("Return-Path: <mary@relay.example>\n"));
        assert!(stored.ends_with("\nHi\n\n"));
        assert!(!stored.contains('\r'));
    }

    #[test]
    fn null_sender_is_mailer_daemon() {
        let dir = TempDir::new("null-sender");
        dir.mail_dir()
            .deliver("", &[to("alice")], b"Bounce\n")
            .expect("deliver");
        let stored = dir.read("alice");
        assert!(stored.starts_with(b"From MAILER-DAEMON "));
        assert_eq!(parse_mboxrd(&stored)[0].sender, "MAILER-DAEMON");
    }

    #[test]
    fn whitespace_in_the_sender_becomes_hyphens() {
        let dir = TempDir::new("sender-space");
        dir.mail_dir()
            .deliver("\"mary smith\tjr\"@relay.example", &[to("alice")], b"Hi\n")
            .expect("deliver");
        let stored = dir.read("alice");
        assert!(stored.starts_with(b"From \"mary-smith-jr\"@relay.example "));
        assert_eq!(
            parse_mboxrd(&stored)[0].sender,
            "\"mary-smith-jr\"@relay.example"
        );
    }

    #[test]
    fn two_messages_in_one_file() {
        let dir = TempDir::new("two-messages");
        let maildir = dir.mail_dir();
        maildir
            .deliver("a@x", &[to("alice")], b"first\n\n")
            .expect("deliver 1");
        maildir
            .deliver("b@x", &[to("alice")], b"From the second\nno newline")
            .expect("deliver 2");
        let messages = parse_mboxrd(&dir.read("alice"));
        let headers = to("alice").trace_headers;
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].sender, "a@x");
        assert_eq!(
            messages[0].content,
            format!("{headers}first\n\n").as_bytes()
        );
        assert_eq!(messages[1].sender, "b@x");
        assert_eq!(
            messages[1].content,
            format!("{headers}From the second\nno newline\n").as_bytes()
        );
    }

    #[test]
    fn empty_content_is_one_message() {
        let dir = TempDir::new("empty");
        dir.mail_dir()
            .deliver("a@x", &[to("alice")], b"")
            .expect("deliver");
        let messages = parse_mboxrd(&dir.read("alice"));
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].content, to("alice").trace_headers.as_bytes());
    }

    #[test]
    fn two_users_in_one_delivery() {
        let dir = TempDir::new("two-users");
        dir.mail_dir()
            .deliver("a@x", &[to("bob"), to("alice")], b"Hi all\n")
            .expect("deliver");
        for user in ["alice", "bob"] {
            let messages = parse_mboxrd(&dir.read(user));
            assert_eq!(messages.len(), 1, "{user}");
            let expected = format!("{}Hi all\n", to(user).trace_headers);
            assert_eq!(messages[0].content, expected.as_bytes());
        }
        assert_eq!(dir.names(), ["alice", "bob"], "no dotlock is left behind");
    }

    #[test]
    fn the_same_user_twice_is_delivered_once() {
        let dir = TempDir::new("same-user");
        let mut second = to("alice");
        second.trace_headers = "X-Second: yes\n".to_string();
        dir.mail_dir()
            .deliver("a@x", &[to("alice"), second], b"Once\n")
            .expect("deliver");
        let messages = parse_mboxrd(&dir.read("alice"));
        assert_eq!(messages.len(), 1);
        assert!(
            messages[0].content.starts_with(b"Return-Path:"),
            "first wins"
        );
    }

    #[test]
    fn new_mbox_is_private() {
        let dir = TempDir::new("mode");
        dir.mail_dir()
            .deliver("a@x", &[to("alice")], b"Hi\n")
            .expect("deliver");
        let mode = fs::metadata(dir.0.join("alice"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn safe_names() {
        for good in ["alice", "bob.smith", "δοκιμή", "a-b_c+d", &"x".repeat(64)] {
            assert!(is_safe_mailbox_name(good), "{good:?}");
        }
        let too_long = "x".repeat(65);
        for bad in [
            "", ".", "..", "../x", "a/b", "/etc", ".hidden", "x.lock", "a\0b", "a\nb", "a\tb",
            "a\u{7f}", &too_long,
        ] {
            assert!(!is_safe_mailbox_name(bad), "{bad:?}");
        }
        let maildir = MailDir::new("/var/mail");
        assert_eq!(
            maildir.path_for("alice"),
            Some(PathBuf::from("/var/mail/alice"))
        );
        assert_eq!(maildir.path_for("../x"), None);
    }

    #[test]
    fn unsafe_names_write_nothing() {
        let dir = TempDir::new("unsafe");
        for bad in ["../x", "a/b", ".hidden", "x.lock", ""] {
            let result = dir
                .mail_dir()
                .deliver("a@x", &[to("alice"), to(bad)], b"Hi\n");
            assert!(
                matches!(&result, Err(DeliveryError::UnsafeName(user)) if user == bad),
                "{bad:?}: {result:?}"
            );
        }
        assert!(dir.names().is_empty(), "wrote {:?}", dir.names());
    }

    #[test]
    fn a_directory_at_one_mbox_fails_the_whole_delivery() {
        let dir = TempDir::new("directory");
        let maildir = dir.mail_dir();
        maildir
            .deliver("a@x", &[to("alice")], b"Earlier\n")
            .expect("deliver");
        let before = dir.read("alice");
        fs::create_dir(dir.0.join("bob")).expect("mkdir");

        let result = maildir.deliver("a@x", &[to("alice"), to("bob")], b"Now\n");
        match result {
            Err(DeliveryError::Io(user, err)) => {
                assert_eq!(user, "bob");
                assert!(err.to_string().contains("is a directory"), "{err}");
            }
            other => panic!("expected Io for bob, got {other:?}"),
        }
        assert_eq!(dir.read("alice"), before);
        assert_eq!(dir.names(), ["alice", "bob"], "no dotlock is left behind");
    }

    /// What a delivery killed halfway leaves: its intent recorded, `written` of `message`'s
    /// octets appended.
    fn kill_halfway(dir: &TempDir, message: &[u8], written: usize) {
        let mut mbox = OpenOptions::new()
            .read(true)
            .append(true)
            .open(dir.0.join("alice"))
            .unwrap();
        let intent = Intent::plan(&mbox, message, vec![0], message.len() as u64).unwrap();
        IntentFile::open(&dir.0, "alice")
            .unwrap()
            .record(&intent)
            .unwrap();
        mbox.write_all(&message[..written]).unwrap();
    }

    const HALF_DELIVERED: &[u8] =
        b"From x@y Thu Jan  1 00:00:00 1970\nReturn-Path: <x@y>\nSubject: lost\n\nbody\n\n";

    // ANCHOR: prove_then_cut
    #[test]
    fn recover_cuts_only_an_unfinished_delivery_it_can_prove_is_its_own() {
        let dir = TempDir::new("recover");
        let maildir = dir.mail_dir();
        maildir
            .deliver("a@b.example", &[to("alice")], b"first\n")
            .unwrap();
        let acknowledged = dir.read("alice");

        // Killed halfway: the tail is ours, unfinished, never acknowledged. Cut.
        kill_halfway(&dir, HALF_DELIVERED, 57);
        let found = maildir.recover().unwrap();
        assert_eq!(
            found[0].verdict,
            Verdict::Cut {
                start: acknowledged.len() as u64,
                bytes: 57
            }
        );
        assert_eq!(dir.read("alice"), acknowledged);
        assert_eq!(
            maildir.recover().unwrap(),
            vec![],
            "a record is judged once"
        );

        // Killed halfway, then a mail reader rewrote the file (a status header): not ours now.
        kill_halfway(&dir, HALF_DELIVERED, 57);
        let rewritten = String::from_utf8(dir.read("alice"))
            .unwrap()
            .replace("first", "Status: RO\n\nfirst");
        fs::write(dir.0.join("alice"), &rewritten).unwrap();
        let found = maildir.recover().unwrap();
        assert!(matches!(found[0].verdict, Verdict::Leave(_)), "{found:?}");
        assert_eq!(
            dir.read("alice"),
            rewritten.as_bytes(),
            "not a byte removed"
        );

        // The next delivery starts on a line of its own: three messages.
        maildir
            .deliver("a@b.example", &[to("alice")], b"second\n")
            .unwrap();
        assert_eq!(parse_mboxrd(&dir.read("alice")).len(), 3);
    }
    // ANCHOR_END: prove_then_cut

    #[test]
    fn a_delivery_that_would_pass_the_size_limit_changes_nothing() {
        let dir = TempDir::new("limit");
        let maildir = dir.mail_dir().with_size_limit(300);
        maildir
            .deliver("a@x", &[to("alice"), to("bob")], b"small\n")
            .unwrap();
        let (alice, bob) = (dir.read("alice"), dir.read("bob"));
        let big = "x".repeat(200);
        let refused = maildir.deliver("a@x", &[to("alice"), to("bob")], big.as_bytes());
        assert!(
            matches!(refused, Err(DeliveryError::Full { ref user, limit: 300 }) if user == "alice"),
            "{refused:?}"
        );
        assert_eq!((dir.read("alice"), dir.read("bob")), (alice, bob));
    }

    #[test]
    fn room_for_refuses_a_full_mailbox_or_a_declared_size_that_would_not_fit() {
        let dir = TempDir::new("room");
        let maildir = dir.mail_dir().with_size_limit(300);
        assert!(maildir.room_for("alice", 300).is_ok(), "no mbox yet: empty");
        assert!(
            maildir.room_for("alice", 301).is_err(),
            "would pass the limit"
        );
        fs::write(dir.0.join("alice"), "x".repeat(250)).unwrap();
        assert!(maildir.room_for("alice", 0).is_ok());
        assert!(
            maildir.room_for("alice", 50).is_ok(),
            "exactly at the limit"
        );
        let refused = maildir.room_for("alice", 51);
        assert!(
            matches!(refused, Err(DeliveryError::Full { ref user, limit: 300 }) if user == "alice"),
            "{refused:?}"
        );
        fs::write(dir.0.join("alice"), "x".repeat(300)).unwrap();
        assert!(
            maildir.room_for("alice", 0).is_err(),
            "already at the limit"
        );
        assert!(
            dir.mail_dir().room_for("alice", u64::MAX).is_ok(),
            "no limit"
        );
    }

    #[test]
    fn a_message_without_a_final_empty_line_gets_one_before_ours() {
        // Python's `mailbox` writes the empty line before a message, not after it.
        let dir = TempDir::new("guard");
        fs::write(
            dir.0.join("alice"),
            b"From py@x Thu Jan  1 00:00:00 1970\nSubject: py\n\nhi\n",
        )
        .unwrap();
        dir.mail_dir()
            .deliver("a@x", &[to("alice")], b"ours\n")
            .unwrap();
        let messages = parse_mboxrd(&dir.read("alice"));
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].content, b"Subject: py\n\nhi\n");
    }

    #[test]
    fn a_failed_write_rolls_every_mbox_back() {
        let dir = TempDir::new("rollback");
        let mut maildir = dir.mail_dir();
        maildir
            .deliver("a@x", &[to("alice")], b"Earlier\n")
            .expect("deliver");
        let before = dir.read("alice");

        // alice is written first (sorted order), then bob's write "fails".
        maildir.fail_after_writing = Some("bob".to_string());
        let result = maildir.deliver("a@x", &[to("bob"), to("alice")], b"Lost\n");
        assert!(matches!(result, Err(DeliveryError::Io(ref user, _)) if user == "bob"));
        assert_eq!(dir.read("alice"), before);
        assert!(dir.read("bob").is_empty(), "the new mbox is truncated to 0");
        assert_eq!(dir.names(), ["alice", "bob"], "no dotlock is left behind");
    }

    #[test]
    fn a_symlink_mbox_is_refused() {
        let dir = TempDir::new("symlink");
        let outside = TempDir::new("symlink-target");
        let target = outside.0.join("target");
        fs::write(&target, b"precious\n").expect("write target");
        std::os::unix::fs::symlink(&target, dir.0.join("alice")).expect("symlink");

        let result = dir.mail_dir().deliver("a@x", &[to("alice")], b"Hi\n");
        match result {
            Err(DeliveryError::Io(_, err)) => {
                assert!(err.to_string().contains("symbolic link"), "{err}")
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert_eq!(fs::read(&target).expect("read"), b"precious\n");
    }

    #[test]
    fn a_hard_linked_mbox_is_refused() {
        let dir = TempDir::new("hardlink");
        fs::write(dir.0.join("alice"), b"precious\n").expect("write");
        fs::hard_link(dir.0.join("alice"), dir.0.join("elsewhere")).expect("link");
        let result = dir.mail_dir().deliver("a@x", &[to("alice")], b"Hi\n");
        assert!(matches!(result, Err(DeliveryError::Io(..))), "{result:?}");
        assert_eq!(dir.read("alice"), b"precious\n");
    }

    #[test]
    fn a_stale_dotlock_is_removed() {
        let dir = TempDir::new("stale-lock");
        let lock = File::create(dir.0.join("alice.lock")).expect("lock");
        let old = SystemTime::now() - STALE_LOCK_AGE - Duration::from_secs(60);
        lock.set_modified(old).expect("age the lock");

        dir.mail_dir()
            .with_lock_attempts(1)
            .deliver("a@x", &[to("alice")], b"Hi\n")
            .expect("deliver");
        assert_eq!(parse_mboxrd(&dir.read("alice")).len(), 1);
        assert_eq!(dir.names(), ["alice"]);
    }

    #[test]
    fn a_fresh_dotlock_makes_delivery_wait_then_fail() {
        let dir = TempDir::new("fresh-lock");
        fs::write(dir.0.join("alice"), b"").expect("mbox");
        File::create(dir.0.join("alice.lock")).expect("lock");

        let started = Instant::now();
        let result = dir
            .mail_dir()
            .with_lock_attempts(3)
            .deliver("a@x", &[to("alice")], b"Hi\n");
        assert!(matches!(result, Err(DeliveryError::Locked(ref user)) if user == "alice"));
        assert!(
            started.elapsed() >= 2 * LOCK_RETRY_DELAY,
            "it waited between tries"
        );
        assert!(dir.read("alice").is_empty());
        assert!(
            dir.0.join("alice.lock").exists(),
            "someone else's lock stays"
        );
    }

    #[test]
    fn a_held_fcntl_lock_makes_delivery_fail() {
        // A classic POSIX record lock, as Python's `fcntl.lockf` and mutt take it.
        let dir = TempDir::new("fcntl");
        fs::write(dir.0.join("alice"), b"").expect("mbox");
        let holder = OpenOptions::new()
            .write(true)
            .open(dir.0.join("alice"))
            .expect("open");
        // SAFETY: a zeroed `flock` is valid; the descriptor is live for the call.
        let mut request: libc::flock = unsafe { std::mem::zeroed() };
        request.l_type = libc::F_WRLCK as libc::c_short;
        let locked = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLK, &mut request) };
        assert_eq!(locked, 0, "lockf");

        let result = dir
            .mail_dir()
            .with_lock_attempts(2)
            .deliver("a@x", &[to("alice")], b"Hi\n");
        assert!(
            matches!(result, Err(DeliveryError::Locked(_))),
            "{result:?}"
        );
        assert_eq!(dir.names(), ["alice"], "our dotlock was removed");
        drop(holder);
        let result = dir.mail_dir().deliver("a@x", &[to("alice")], b"Hi\n");
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn concurrent_deliveries_do_not_interleave() {
        const THREADS: usize = 20;
        let dir = TempDir::new("concurrent");
        let maildir = Arc::new(dir.mail_dir());
        let handles: Vec<_> = (0..THREADS)
            .map(|n| {
                let maildir = Arc::clone(&maildir);
                thread::spawn(move || {
                    let body = format!("Subject: {n}\n\n{}\n", format!("marker-{n} ").repeat(2000));
                    maildir.deliver("a@x", &[to("alice"), to("bob")], body.as_bytes())
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread").expect("deliver");
        }

        for user in ["alice", "bob"] {
            let messages = parse_mboxrd(&dir.read(user));
            assert_eq!(messages.len(), THREADS, "{user}");
            let mut seen: Vec<usize> = messages
                .iter()
                .map(|message| {
                    let text = String::from_utf8(message.content.clone()).expect("utf-8");
                    let n: usize = text
                        .split("Subject: ")
                        .nth(1)
                        .and_then(|rest| rest.split('\n').next())
                        .and_then(|n| n.parse().ok())
                        .expect("subject");
                    let body = format!("Subject: {n}\n\n{}\n", format!("marker-{n} ").repeat(2000));
                    assert_eq!(text, format!("{}{body}", to(user).trace_headers));
                    n
                })
                .collect();
            seen.sort();
            assert_eq!(seen, (0..THREADS).collect::<Vec<_>>());
        }
    }

    fn deliver_subjects(dir: &TempDir, subjects: &[&str]) {
        for subject in subjects {
            let body = format!("Subject: {subject}\n\nFrom me\n>From x\nbody\n");
            dir.mail_dir()
                .deliver("mary@relay.example", &[to("alice")], body.as_bytes())
                .expect("deliver");
        }
    }

    fn subjects(dir: &TempDir) -> Vec<String> {
        parse_mboxrd(&dir.read("alice"))
            .iter()
            .map(|m| {
                let text = String::from_utf8_lossy(&m.content).into_owned();
                let line = text.lines().find(|l| l.starts_with("Subject: "));
                line.unwrap_or_default()["Subject: ".len()..].to_string()
            })
            .collect()
    }

    #[test]
    fn rewrite_without_removes_only_the_marked_messages_and_keeps_their_bytes() {
        let dir = TempDir::new("rewrite");
        deliver_subjects(&dir, &["one", "two", "three"]);
        let before = dir.read("alice");
        let raw = split_mboxrd(&before);
        let removed = dir
            .mail_dir()
            .rewrite_without("alice", |_, messages| {
                assert_eq!(messages.len(), 3);
                Ok(vec![false, true, false])
            })
            .expect("rewrite");
        assert_eq!(removed, 1);
        assert_eq!(
            dir.read("alice"),
            [raw.messages[0], raw.messages[2]].concat()
        );
        assert_eq!(subjects(&dir), ["one", "three"]);
        // Only the mbox is left: no dotlock, no temp file.
        assert_eq!(dir.names(), ["alice"]);
        let mode = fs::metadata(dir.0.join("alice"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn nothing_marked_leaves_the_file_alone() {
        let dir = TempDir::new("rewrite-none");
        deliver_subjects(&dir, &["one"]);
        let inode = fs::metadata(dir.0.join("alice")).expect("meta").ino();
        let removed = dir
            .mail_dir()
            .rewrite_without("alice", |_, m| Ok(vec![false; m.len()]));
        assert_eq!(removed.expect("rewrite"), 0);
        assert_eq!(
            fs::metadata(dir.0.join("alice")).expect("meta").ino(),
            inode
        );
    }

    #[test]
    fn a_held_maildrop_lock_keeps_deliverers_out_of_the_file() {
        // The deliverer takes the dotlock before it opens the mbox: while a rewrite holds the
        // lock, a delivery cannot even open the old file, so it cannot append to it after the
        // rename unlinks it.
        let dir = TempDir::new("maildrop-lock");
        deliver_subjects(&dir, &["one"]);
        let before = dir.read("alice");
        let lock = dir.mail_dir().lock_maildrop("alice").expect("lock");
        let refused = dir.mail_dir().with_lock_attempts(1).deliver(
            "mary@relay.example",
            &[to("alice")],
            b"Subject: late\n\n",
        );
        assert!(
            matches!(refused, Err(DeliveryError::Locked(_))),
            "{refused:?}"
        );
        assert_eq!(dir.read("alice"), before);
        let spans = lock.spans().expect("index");
        assert_eq!(lock.read_span(spans[0]).expect("read"), before);
        lock.rewrite(&[]).expect("rewrite");
        assert_eq!(dir.read("alice"), b"");
        assert_eq!(dir.names(), ["alice"]);
    }

    #[test]
    fn mail_delivered_during_a_rewrite_lands_in_the_new_file() {
        let dir = TempDir::new("rewrite-race");
        deliver_subjects(&dir, &["old"]);
        let lock = dir.mail_dir().lock_maildrop("alice").expect("lock");
        let mail_dir = dir.mail_dir();
        let deliverer = std::thread::spawn(move || {
            let body = b"Subject: new\n\nhello\n";
            mail_dir.deliver("mary@relay.example", &[to("alice")], body)
        });
        lock.rewrite(&[]).expect("rewrite"); // drops "old" and releases the lock
        deliverer.join().expect("join").expect("deliver");
        // Whenever the deliverer ran, its message is in the file that now has the name.
        assert_eq!(subjects(&dir), ["new"]);
    }

    #[test]
    fn one_reader_at_a_time() {
        let dir = TempDir::new("reader");
        let first = dir.mail_dir().try_lock_reader("alice").expect("lock");
        assert!(first.is_some());
        assert!(dir
            .mail_dir()
            .try_lock_reader("alice")
            .expect("try")
            .is_none());
        assert!(dir
            .mail_dir()
            .try_lock_reader("bob")
            .expect("try")
            .is_some());
        drop(first);
        assert!(dir
            .mail_dir()
            .try_lock_reader("alice")
            .expect("try")
            .is_some());
        assert!(matches!(
            dir.mail_dir().try_lock_reader("../x"),
            Err(DeliveryError::UnsafeName(_))
        ));
    }
}

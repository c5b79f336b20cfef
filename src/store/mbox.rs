//! Local delivery: append a message to `DIR/<user>` in mboxrd format, all-or-nothing.
//!
//! Interface:
//! - `MailDir::new(dir)` names the mail directory; `with_lock_attempts(n)` bounds the wait for locks.
//! - `MailDir::deliver_body(sender, deliveries, body)` appends one message to several mboxes
//!   under lock, fsyncs each, and truncates every file back if any append fails; `deliver(..)`
//!   does the same for content given as bytes. A small message joins a group commit
//!   (`src/store/gate.rs`); a spilled one (`src/smtp/body.rs`) is quoted and written as a stream, so a
//!   large message is never in memory whole.
//! - `MailDir::path_for(user)` and `is_safe_mailbox_name(user)` say where a user's mbox is, if
//!   the name is safe to use as a file name.
//! - `parse_mboxrd(bytes)` reads an mbox back (for tests and POP3), undoing the quoting.
//! - `MailDir::lock_maildrop(user)` holds an mbox under the delivery locks (read, or `rewrite`
//!   it atomically); `rewrite_without(user, remove)` removes messages by what they are now;
//!   `try_lock_reader(user)` lets one reader (a POP3 session) at a time have a maildrop.
//! - `split_mboxrd(bytes)` cuts an mbox into its messages' raw bytes, as `parse_mboxrd` does.
//!
//! One delivery, step by step (`MailDir::deliver`):
//! 1. refuse the whole delivery if any user name is unsafe;
//! 2. lock every mbox, in sorted order: a dotlock `DIR/<user>.lock`, then open the mbox without
//!    following symlinks, then an exclusive `flock` on it; record its length;
//! 3. append `From ` line, trace headers and quoted content to each, then fsync each;
//! 4. on any error, truncate every mbox back to its recorded length;
//! 5. record the new length as committed (`DIR/.<user>.committed`, fsync'd): `recover` cuts an
//!    mbox back to it at start, so a crash in the middle of step 3 leaves no partial message;
//! 6. release all locks (a guard's `Drop` does it, whatever happened).
//!
//! Standards: RFC 4155 §2, RFC 5321 §4.4, RFC 5321 §6.1

use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions, TryLockError};
use std::io::{self, BufWriter, ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use crate::datetime;
use crate::smtp::body::{Body, READ_CHUNK};
use crate::store::gate::{Exclusive, Gates};

/// Longest user name, in bytes: the limit of an address's local part (RFC 5321 §4.5.3.1.1).
pub const MAX_MAILBOX_NAME: usize = 64;

/// A dotlock older than this was left by a crashed deliverer and is removed
/// (Postfix `stale_lock_time` default, 500 s).
pub const STALE_LOCK_AGE: Duration = Duration::from_secs(500);

/// Pause between two tries of a lock. Postfix waits 1 s (`deliver_lock_delay`); we try more
/// often so that a short wait behind another delivery stays short.
pub const LOCK_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Tries of each lock before giving up with `DeliveryError::Locked`: 200 × 100 ms = 20 s, the
/// same total wait as Postfix's `deliver_lock_attempts` (20) × `deliver_lock_delay` (1 s).
pub const LOCK_ATTEMPTS: u32 = 200;

/// Mode of a new mbox or dotlock: read and write for the owner only; mail is private.
const MBOX_MODE: u32 = 0o600;

/// `DIR/<user>.lock` is the dotlock of `DIR/<user>` (the convention of Postfix, mutt, procmail).
const LOCK_SUFFIX: &str = ".lock";

/// `DIR/.<user>.committed` holds the length of the mbox with every acknowledged message.
const COMMITTED_SUFFIX: &str = ".committed";

/// The `From ` line's sender for the null reverse-path `<>` (qmail mbox(5), Postfix).
const NULL_SENDER: &str = "MAILER-DAEMON";

/// `O_NOFOLLOW` from the kernel headers: `open` fails (ELOOP) if the last path component is a
/// symlink. The value differs between systems; there is no libc crate here, so it is written out.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
const O_NOFOLLOW: i32 = 0o400000; // Linux asm-generic/fcntl.h
#[cfg(any(
    target_os = "macos",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd"
))]
const O_NOFOLLOW: i32 = 0x0100; // BSD sys/fcntl.h
#[cfg(not(any(
    all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        )
    ),
    target_os = "macos",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd"
)))]
compile_error!("O_NOFOLLOW is not known for this target: add its value from <fcntl.h> in mbox.rs");

/// The mail directory: one mbox file per local user.
#[derive(Debug, Clone)]
pub struct MailDir {
    root: PathBuf,
    /// Deliveries queue here per mailbox and share one write and fsync (`src/store/gate.rs`).
    gates: Arc<Gates<DeliveryError>>,
    /// Tries of each lock, `LOCK_RETRY_DELAY` apart.
    lock_attempts: u32,
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
        MailDir {
            root: root.into(),
            gates: Arc::new(Gates::default()),
            lock_attempts: LOCK_ATTEMPTS,
            #[cfg(test)]
            fail_after_writing: None,
        }
    }

    /// Try each lock (dotlock, then flock) `attempts` times, `LOCK_RETRY_DELAY` apart, before
    /// failing with `DeliveryError::Locked`. The default is `LOCK_ATTEMPTS`; tests use a few.
    /// At least one try is always made.
    pub fn with_lock_attempts(mut self, attempts: u32) -> MailDir {
        self.lock_attempts = attempts.max(1);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/<user>`, or `None` if `user` is not a safe file name (see `is_safe_mailbox_name`).
    pub fn path_for(&self, user: &str) -> Option<PathBuf> {
        is_safe_mailbox_name(user).then(|| self.root.join(user))
    }

    /// Append `content` (lines ending in `\n`, already dot-unstuffed) for every delivery.
    /// `sender` is the envelope sender without brackets ("" for the null path).
    ///
    /// A user listed twice gets the message once, with the first entry's trace headers.
    /// Either every mbox gets the message, durably (fsync), or none changes.
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
                self.write_and_sync(&[user], |_, file| file.write_all(batch))
            });
        }
        // Several mailboxes: hold each one, in sorted order, so two such deliveries can never
        // each hold a mailbox the other waits for.
        let users: Vec<&str> = deliveries.iter().map(|d| d.user.as_str()).collect();
        let _held = self.hold_all(&users);
        self.write_and_sync(&users, |i, file| file.write_all(&messages[i]))
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
        let _held = self.hold_all(&users);
        self.write_and_sync(&users, |i, file| {
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
    /// Lock each mailbox, append its message with `write(index, file)`, fsync them all and
    /// record the committed lengths; on any error truncate every one back. All or nothing.
    fn write_and_sync(
        &self,
        users: &[&str],
        write: impl Fn(usize, &mut File) -> io::Result<()>,
    ) -> Result<(), DeliveryError> {
        let mut mboxes = Vec::with_capacity(users.len());
        for user in users {
            mboxes.push(self.lock_mailbox(user)?);
        }
        let written = self
            .append_all(&mut mboxes, write)
            .and_then(|()| self.sync_all(&mboxes));
        if written.is_err() {
            roll_back(&mut mboxes);
        }
        // Release every flock and dotlock. The `?` returns above release them the same way:
        // dropping a `LockedMbox` is what unlocks it.
        drop(mboxes);
        written
    }
    // ANCHOR_END: write_and_sync

    /// Take the dotlock, open the mbox safely, take the flock, and record the length.
    fn lock_mailbox(&self, user: &str) -> Result<LockedMbox, DeliveryError> {
        let io_error = |err| DeliveryError::Io(user.to_string(), err);
        let locked = || DeliveryError::Locked(user.to_string());
        let path = self
            .path_for(user)
            .ok_or_else(|| DeliveryError::UnsafeName(user.to_string()))?;
        let lock_path = self.root.join(format!("{user}{LOCK_SUFFIX}"));

        let dotlock = retry(self.lock_attempts, || try_dotlock(&lock_path))
            .map_err(io_error)?
            .ok_or_else(locked)?;
        let (file, created) = open_mailbox(&path).map_err(io_error)?;
        retry(self.lock_attempts, || try_flock(&file))
            .map_err(io_error)?
            .ok_or_else(locked)?;
        // Only now, under both locks, is the length stable.
        let old_len = file.metadata().map_err(io_error)?.len();
        Ok(LockedMbox {
            user: user.to_string(),
            file,
            old_len,
            created,
            _dotlock: dotlock,
        })
    }

    /// Write the `From ` line, the trace headers and the quoted body to every mbox.
    fn append_all(
        &self,
        mboxes: &mut [LockedMbox],
        write: impl Fn(usize, &mut File) -> io::Result<()>,
    ) -> Result<(), DeliveryError> {
        for (i, mbox) in mboxes.iter_mut().enumerate() {
            let io_error = |err| DeliveryError::Io(mbox.user.clone(), err);
            // The file is opened with O_APPEND and we hold its locks, so every write lands at
            // the end; a crash halfway is cut off by `recover` (the committed length).
            write(i, &mut mbox.file).map_err(io_error)?;
            #[cfg(test)]
            if self.fail_after_writing.as_deref() == Some(mbox.user.as_str()) {
                return Err(io_error(io::Error::other("injected failure")));
            }
        }
        Ok(())
    }

    /// fsync every mbox, and the directory if a new mbox was created in it: "250" must mean
    /// the message survives a crash (RFC 5321 §6.1).
    fn sync_all(&self, mboxes: &[LockedMbox]) -> Result<(), DeliveryError> {
        for mbox in mboxes {
            mbox.file
                .sync_all()
                .map_err(|err| DeliveryError::Io(mbox.user.clone(), err))?;
        }
        if let Some(new) = mboxes.iter().find(|mbox| mbox.created) {
            // A new file's name lives in the directory; fsync of the file alone does not keep it.
            File::open(&self.root)
                .and_then(|dir| dir.sync_all())
                .map_err(|err| DeliveryError::Io(new.user.clone(), err))?;
        }
        // Only bytes that are on disk may be counted as committed.
        for mbox in mboxes {
            let committed = mbox
                .file
                .metadata()
                .and_then(|meta| self.record_committed(&mbox.user, meta.len()));
            committed.map_err(|err| DeliveryError::Io(mbox.user.clone(), err))?;
        }
        Ok(())
    }

    // ANCHOR: committed
    /// Record, durably, how long `user`'s mbox is with every acknowledged message in it:
    /// `DIR/.<user>.committed`. Whatever lies beyond that length after a crash was never
    /// answered with 250, and `recover` cuts it off.
    fn record_committed(&self, user: &str, len: u64) -> io::Result<()> {
        let path = self.root.join(format!(".{user}{COMMITTED_SUFFIX}"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(MBOX_MODE)
            .custom_flags(O_NOFOLLOW)
            .open(path)?;
        // A fixed-width record rewritten in place: one small write, never a half-new number.
        file.write_all(format!("{len:020}\n").as_bytes())?;
        file.sync_data()
    }

    /// At start: cut every mbox back to its committed length. A delivery killed halfway (a
    /// crash, SIGKILL) leaves bytes past it that no client was ever told were safe.
    /// Returns the users whose mbox was cut, with the number of bytes removed.
    pub fn recover(&self) -> io::Result<Vec<(String, u64)>> {
        let mut cut = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            remove_orphan_lock_file(&self.root.join(&name));
            let Some(user) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(COMMITTED_SUFFIX))
            else {
                continue;
            };
            if !is_safe_mailbox_name(user) {
                continue;
            }
            let lock = self
                .lock_maildrop(user)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let committed = read_committed(&self.root.join(&name))?;
            let len = lock.mbox.file.metadata()?.len();
            if len > committed {
                lock.mbox.file.set_len(committed)?;
                lock.mbox.file.sync_all()?;
                cut.push((user.to_string(), len - committed));
            } else if len < committed {
                // Shortened by a rewrite whose record was not updated yet: the file is right.
                self.record_committed(user, len)?;
            }
        }
        Ok(cut)
    }
    // ANCHOR_END: committed
}

/// A batch's failure is handed to every message in it (`src/store/gate.rs`); an `io::Error` is not
/// `Clone`, so its copy keeps the kind and the text.
impl Clone for DeliveryError {
    fn clone(&self) -> DeliveryError {
        match self {
            DeliveryError::UnsafeName(user) => DeliveryError::UnsafeName(user.clone()),
            DeliveryError::Locked(user) => DeliveryError::Locked(user.clone()),
            DeliveryError::Io(user, err) => {
                DeliveryError::Io(user.clone(), io::Error::new(err.kind(), err.to_string()))
            }
        }
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

/// The separator, RFC 4155 §2: `From`, the sender, the UTC time in asctime form, `\n`.
fn from_line(sender: &str, time: SystemTime) -> String {
    format!(
        "From {} {}\n",
        separator_sender(sender),
        datetime::asctime(time)
    )
}

/// The sender as one word: `MAILER-DAEMON` for `<>`, and whitespace (a quoted local part may
/// hold spaces) turned into `-`, as qmail does, so a reader finds the date after the first space.
fn separator_sender(sender: &str) -> String {
    if sender.is_empty() {
        return NULL_SENDER.to_string();
    }
    sender
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect()
}

/// mboxrd quoting (qmail mbox(5)): a line matching `^>*From ` gets one more `>`. Then the
/// empty line that ends every message, after a `\n` if the last line lacked one.
fn quote_mboxrd(content: &[u8]) -> Vec<u8> {
    let mut quoter = MboxrdQuoter::new(Vec::with_capacity(content.len() + 2));
    // Writing to a Vec cannot fail: it only allocates.
    let written = quoter.write(content).and_then(|()| quoter.finish());
    written.unwrap_or_else(|_| unreachable!("a Vec refused a write"))
}

/// Does `line` match `^>*From ` (a From_ line, quoted any number of times)?
fn is_from_line(line: &[u8]) -> bool {
    let quotes = line.iter().take_while(|&&byte| byte == b'>').count();
    line[quotes..].starts_with(FROM_)
}

/// The start of a `From_` line, after any number of `>`.
const FROM_: &[u8] = b"From ";

// ANCHOR: quoter
/// mboxrd quoting as a stream: content arrives in pieces cut anywhere, even inside `>>From `,
/// so the quoter remembers where it is in the current line.
struct MboxrdQuoter<W: Write> {
    out: W,
    line: LineStart,
    /// The last octet written (`\n` before any), to end the message with one empty line.
    last: u8,
    wrote: bool,
}

/// Where the quoter is in the current line.
#[derive(Clone, Copy)]
enum LineStart {
    /// Still matching `^>*From `: `quotes` `>` and the first `from` octets of `From ` so far,
    /// held back until we know whether the line needs one more `>`.
    Matching { quotes: usize, from: usize },
    /// The line is decided; copy octets up to its `\n`.
    Rest,
}

impl<W: Write> MboxrdQuoter<W> {
    fn new(out: W) -> Self {
        MboxrdQuoter {
            out,
            line: LineStart::Matching { quotes: 0, from: 0 },
            last: b'\n',
            wrote: false,
        }
    }

    fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while let Some(&byte) = bytes.first() {
            match self.line {
                LineStart::Rest => {
                    let end = bytes
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |i| i + 1);
                    self.emit(&bytes[..end])?;
                    if self.last == b'\n' {
                        self.line = LineStart::Matching { quotes: 0, from: 0 };
                    }
                    bytes = &bytes[end..];
                    continue;
                }
                LineStart::Matching { quotes, from: 0 } if byte == b'>' => {
                    self.line = LineStart::Matching {
                        quotes: quotes + 1,
                        from: 0,
                    };
                }
                LineStart::Matching { quotes, from } if byte == FROM_[from] => {
                    if from + 1 == FROM_.len() {
                        // `^>*From `: one more `>` in front, then what was held back.
                        self.emit(b">")?;
                        self.release(quotes, FROM_.len())?;
                    } else {
                        self.line = LineStart::Matching {
                            quotes,
                            from: from + 1,
                        };
                    }
                }
                LineStart::Matching { quotes, from } => {
                    // Not a From_ line: give back what was held, and look at `byte` again.
                    self.release(quotes, from)?;
                    continue;
                }
            }
            bytes = &bytes[1..];
        }
        Ok(())
    }

    /// Write the held-back `>`s and start of `From `; the rest of the line is copied as is.
    fn release(&mut self, quotes: usize, from: usize) -> io::Result<()> {
        for _ in 0..quotes {
            self.emit(b">")?;
        }
        self.emit(&FROM_[..from])?;
        self.line = LineStart::Rest;
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(&last) = bytes.last() {
            self.out.write_all(bytes)?;
            self.last = last;
            self.wrote = true;
        }
        Ok(())
    }

    /// The end of the content: what is still held back, a `\n` if the last line lacked one,
    /// and the empty line that ends every message.
    fn finish(mut self) -> io::Result<W> {
        if let LineStart::Matching { quotes, from } = self.line {
            self.release(quotes, from)?;
        }
        if self.wrote && self.last != b'\n' {
            self.emit(b"\n")?;
        }
        self.emit(b"\n")?;
        Ok(self.out)
    }
}
// ANCHOR_END: quoter

/// A dotlock we created; dropping it removes the file. A lock someone else holds is never
/// one of these, so we never remove a live lock that is not ours.
#[derive(Debug)]
struct DotLock {
    path: PathBuf,
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.path) {
            log::error!("cannot remove dotlock {}: {err}", self.path.display());
        }
    }
}

/// One mbox held for this delivery, with its length before we wrote anything.
/// Dropping it releases the flock and then the dotlock (fields drop after `drop` runs,
/// in order), so the locks are released on every path out of `deliver`.
#[derive(Debug)]
struct LockedMbox {
    user: String,
    file: File,
    old_len: u64,
    /// We created the file, so the directory needs an fsync too.
    created: bool,
    /// Held only to be dropped after `file`.
    _dotlock: DotLock,
}

impl Drop for LockedMbox {
    fn drop(&mut self) {
        // Closing the file would release the flock too; unlocking says so explicitly.
        if let Err(err) = self.file.unlock() {
            log::error!("cannot unlock mailbox of {}: {err}", self.user);
        }
    }
}

/// Call `attempt` up to `attempts` times, `LOCK_RETRY_DELAY` apart, until it gives `Some`.
/// `Ok(None)` means the lock stayed taken every time.
fn retry<T>(
    attempts: u32,
    mut attempt: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    for n in 0..attempts {
        if n > 0 {
            thread::sleep(LOCK_RETRY_DELAY);
        }
        if let Some(done) = attempt()? {
            return Ok(Some(done));
        }
    }
    Ok(None)
}

/// Create the dotlock with O_CREAT|O_EXCL (`create_new`): exactly one process or thread can
/// succeed. `Ok(None)` if it exists and is fresh.
fn try_dotlock(path: &Path) -> io::Result<Option<DotLock>> {
    remove_if_stale(path)?;
    // The lock file holds its owner's process id, so a lock left by a killed process can be
    // told from a live one. It is written under a private name first and then linked into
    // place: link() fails if the lock exists, and the lock never appears empty.
    let pid = std::process::id();
    let private = path.with_file_name(format!(
        ".{}-{pid}-{:?}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        thread::current().id()
    ));
    let _ = fs::remove_file(&private);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MBOX_MODE)
        .custom_flags(O_NOFOLLOW)
        .open(&private)?;
    file.write_all(format!("{pid}\n").as_bytes())?;
    let created = fs::hard_link(&private, path);
    let _ = fs::remove_file(&private);
    match created {
        Ok(()) => Ok(Some(DotLock {
            path: path.to_path_buf(),
        })),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(None),
        Err(err) => Err(err),
    }
}

/// Remove the dotlock at `path` if it is older than `STALE_LOCK_AGE`.
// Two deliverers may both find the same stale lock; the second may then remove the first's
// new lock. Postfix's dot_lockfile() has the same window; the flock below still protects us.
/// A private lock file (`.<user>.lock-<pid>-<thread>`) whose process is gone was left by a
/// crash between writing it and linking it into place: remove it.
fn remove_orphan_lock_file(path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((_, rest)) = name.split_once(&format!("{LOCK_SUFFIX}-")) else {
        return;
    };
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    if name.starts_with('.') && pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    {
        let _ = fs::remove_file(path);
    }
}

/// Is the process named in a dotlock still running? A lock without a readable process id
/// (written by another program) is presumed alive; it goes stale only with age. The check
/// looks in /proc, so it works on Linux; elsewhere every lock is presumed alive.
fn holder_is_alive(path: &Path) -> bool {
    let pid = fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if Path::new("/proc/self").exists() => {
            Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => true,
    }
}

fn remove_if_stale(path: &Path) -> io::Result<()> {
    let modified = match fs::symlink_metadata(path).and_then(|meta| meta.modified()) {
        Ok(modified) => modified,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    // A time in the future (clock changed) makes `elapsed` fail: treat the lock as fresh.
    let age = modified.elapsed().unwrap_or(Duration::ZERO);
    if age <= STALE_LOCK_AGE && holder_is_alive(path) {
        return Ok(());
    }
    log::warn!(
        "removing stale dotlock {} ({}s old)",
        path.display(),
        age.as_secs()
    );
    match fs::remove_file(path) {
        Err(err) if err.kind() != ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The kernel lock: an exclusive `flock` (`File::try_lock` is flock on Linux and the BSDs).
/// Unlike fcntl locks, which belong to a process, a flock belongs to an open file, so it also
/// keeps apart two threads of this server that opened the same mbox. On Linux, flock and fcntl
/// locks do not see each other: tools that use fcntl (Postfix local) are kept out by the dotlock.
fn try_flock(file: &File) -> io::Result<Option<()>> {
    match file.try_lock() {
        Ok(()) => Ok(Some(())),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(err)) => Err(err),
    }
}

/// Open (or create, mode 0600) the mbox for appending; refuse anything but a regular file with
/// one hard link, as Postfix's safe_open() does. Also says whether the file was created.
fn open_mailbox(path: &Path) -> io::Result<(File, bool)> {
    // Look first: opening a FIFO for writing could block, and a symlink gets a clear message.
    let existed = match fs::symlink_metadata(path) {
        Ok(meta) => {
            check_regular(path, &meta)?;
            true
        }
        Err(err) if err.kind() == ErrorKind::NotFound => false,
        Err(err) => return Err(err),
    };
    // O_NOFOLLOW closes the window between the look and the open: a symlink put there
    // meanwhile makes the open fail instead of appending to the file it points to.
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(MBOX_MODE)
        .custom_flags(O_NOFOLLOW)
        .open(path)?;
    // Check what was actually opened: a file swapped in meanwhile is caught here.
    check_regular(path, &file.metadata()?)?;
    Ok((file, !existed))
}

/// A mailbox must be a plain file with one name: not a symlink, a directory, a device, or a
/// hard link to a file elsewhere.
fn check_regular(path: &Path, meta: &Metadata) -> io::Result<()> {
    let kind = meta.file_type();
    let problem = if kind.is_symlink() {
        "is a symbolic link".to_string()
    } else if kind.is_dir() {
        "is a directory".to_string()
    } else if !kind.is_file() {
        "is not a regular file".to_string()
    } else if meta.nlink() != 1 {
        format!("has {} hard links", meta.nlink())
    } else {
        return Ok(());
    };
    Err(io::Error::other(format!(
        "{} {problem}; refusing to deliver",
        path.display()
    )))
}

/// Undo a failed delivery: truncate each mbox to its length before we wrote (Postfix
/// mail_copy() does the same), and fsync that. Errors are logged: the first error is the
/// one reported, and there is nothing better to do here.
fn roll_back(mboxes: &mut [LockedMbox]) {
    for mbox in mboxes {
        let truncated = mbox
            .file
            .set_len(mbox.old_len)
            .and_then(|()| mbox.file.sync_all());
        if let Err(err) = truncated {
            log::error!("cannot roll back mailbox of {}: {err}", mbox.user);
        }
    }
}

/// Read an mboxrd file back into messages.
///
/// A message starts at a line beginning `From ` that is the first line of the file or follows
/// an empty line. One `>` is removed from each `^>+From ` line, and the empty line that ends
/// each message is dropped. So `content` is exactly the trace headers and content as
/// delivered, except that content whose last line lacked `\n` comes back with one.
/// Bytes before the first `From ` line are ignored.
pub fn parse_mboxrd(bytes: &[u8]) -> Vec<StoredMessage> {
    let mut messages = Vec::new();
    let mut current: Option<StoredMessage> = None;
    let mut after_empty_line = true; // the start of the file counts as one
    for line in bytes.split_inclusive(|&byte| byte == b'\n') {
        if after_empty_line && line.starts_with(b"From ") {
            messages.extend(current.take().map(without_final_empty_line));
            current = Some(StoredMessage {
                sender: sender_of(line),
                content: Vec::new(),
            });
        } else if let Some(message) = current.as_mut() {
            let unquoted = if line.starts_with(b">") && is_from_line(line) {
                &line[1..]
            } else {
                line
            };
            message.content.extend_from_slice(unquoted);
        }
        after_empty_line = line == b"\n";
    }
    messages.extend(current.map(without_final_empty_line));
    messages
}

/// The sender: the word after `From ` on a separator line.
fn sender_of(separator: &[u8]) -> String {
    let rest = separator["From ".len()..].trim_ascii_end();
    let word = rest.split(|&byte| byte == b' ').next().unwrap_or_default();
    String::from_utf8_lossy(word).into_owned()
}

/// Drop the empty line that ends a message in the file (if the file has it).
fn without_final_empty_line(mut message: StoredMessage) -> StoredMessage {
    let content = &message.content;
    if content == b"\n" || content.ends_with(b"\n\n") {
        message.content.pop();
    }
    message
}

// ANCHOR: maildrop_lock
/// The mbox of one user, held with the same two locks a delivery takes (dotlock, then flock),
/// for a reader that must see whole messages or rewrite the file (POP3).
///
/// Why holding the dotlock across a rewrite is enough: a deliverer takes the dotlock *before*
/// it opens the mbox (`MailDir::lock_mailbox`), so while we hold it no deliverer can have the
/// old file open for writing, and the first deliverer after us opens the new file by its name.
/// A deliverer that opened the file earlier still held the dotlock then, so it finished its
/// append before we could read. (A program that used only flock would not be kept out: after
/// the rename it could append to the unlinked old file. Postfix, mutt and procmail all take
/// the dotlock as well.)
#[derive(Debug)]
pub struct MaildropLock {
    mbox: LockedMbox,
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

impl MailDir {
    /// Lock a user's mbox as a delivery does (waiting up to the lock attempts); the mbox is
    /// created empty if it does not exist. Deliveries wait until the lock is dropped.
    pub fn lock_maildrop(&self, user: &str) -> Result<MaildropLock, DeliveryError> {
        let held = self.gates.exclusive(user);
        let mbox = self.lock_mailbox(user)?;
        Ok(MaildropLock {
            _held: held,
            path: self.root.join(user),
            root: self.root.clone(),
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
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(MBOX_MODE)
            .custom_flags(O_NOFOLLOW)
            .open(self.root.join(format!(".{user}.reader")))
            .map_err(io_error)?;
        Ok(try_flock(&file)
            .map_err(io_error)?
            .map(|()| ReaderLock { file }))
    }

    /// Rewrite `user`'s mbox without the messages `remove` marks, atomically, under the
    /// delivery lock. `remove` is called with the messages as the file holds them *now* (each
    /// from its `From ` line to the next, see `split_mboxrd`), so mail delivered since the
    /// caller last looked is seen and kept. Returns how many messages were removed.
    pub fn rewrite_without(
        &self,
        user: &str,
        remove: impl FnOnce(&[&[u8]]) -> Vec<bool>,
    ) -> Result<usize, DeliveryError> {
        let lock = self.lock_maildrop(user)?;
        let io_error = |err| DeliveryError::Io(user.to_string(), err);
        let bytes = lock.read().map_err(io_error)?;
        let mbox = split_mboxrd(&bytes);
        let marks = remove(&mbox.messages);
        let mut kept = mbox.prefix.to_vec();
        let mut removed = 0;
        for (index, raw) in mbox.messages.iter().enumerate() {
            if marks.get(index).copied().unwrap_or(false) {
                removed += 1;
            } else {
                kept.extend_from_slice(raw);
            }
        }
        if removed > 0 {
            lock.rewrite(&kept).map_err(io_error)?;
        }
        Ok(removed)
    }
}

impl MaildropLock {
    /// The whole mbox as it is now. Opened again by name (the locked handle is append-only),
    /// without following a symlink, and checked to be the very file we locked.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(O_NOFOLLOW)
            .open(&self.path)?;
        let (ours, opened) = (self.mbox.file.metadata()?, file.metadata()?);
        if (ours.dev(), ours.ino()) != (opened.dev(), opened.ino()) {
            return Err(io::Error::other("the mbox was replaced while locked"));
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(bytes)
    }

    // ANCHOR: rewrite
    /// Replace the mbox with `contents`, all or nothing: write `DIR/.<user>.new`, fsync it,
    /// rename it over the mbox, fsync the directory (the rename lives there). A crash leaves
    /// either the old file or the new one, never half of each. The locks are released only
    /// after all of that, when `self` is dropped.
    pub fn rewrite(self, contents: &[u8]) -> io::Result<()> {
        let temp = self.root.join(format!(".{}.new", self.mbox.user));
        // A temp file left by a crash is ours to remove: we hold the dotlock.
        match fs::remove_file(&temp) {
            Err(err) if err.kind() != ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let written = write_synced(&temp, contents).and_then(|()| fs::rename(&temp, &self.path));
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(err);
        }
        File::open(&self.root)?.sync_all()?;
        MailDir::new(self.root.clone()).record_committed(&self.mbox.user, contents.len() as u64)
    }
    // ANCHOR_END: rewrite
}

/// The committed length in a `.committed` record; a damaged record counts as "no limit":
/// never cut an mbox on the word of a record that cannot be read.
fn read_committed(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    Ok(text.trim().parse().unwrap_or(u64::MAX))
}

/// Create `path` (mode 0600, never through a symlink), write `contents`, fsync.
fn write_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MBOX_MODE)
        .custom_flags(O_NOFOLLOW)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// An mbox file cut into messages without changing a byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMbox<'a> {
    /// Bytes before the first `From ` line (`parse_mboxrd` ignores them; a rewrite keeps them).
    pub prefix: &'a [u8],
    /// Each message from its `From ` line up to the next one: separator, quoted content and
    /// the empty line that ends it. `parse_mboxrd` of one of these gives exactly one message.
    pub messages: Vec<&'a [u8]>,
}

/// Split an mbox where `parse_mboxrd` starts a new message: a `From ` line that is the first
/// line or follows an empty line. The pieces put back together are the file.
pub fn split_mboxrd(bytes: &[u8]) -> RawMbox<'_> {
    let mut starts = Vec::new();
    let mut offset = 0;
    let mut after_empty_line = true;
    for line in bytes.split_inclusive(|&byte| byte == b'\n') {
        if after_empty_line && line.starts_with(b"From ") {
            starts.push(offset);
        }
        after_empty_line = line == b"\n";
        offset += line.len();
    }
    let prefix_end = starts.first().copied().unwrap_or(bytes.len());
    let messages = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| &bytes[start..starts.get(i + 1).copied().unwrap_or(bytes.len())])
        .collect();
    RawMbox {
        prefix: &bytes[..prefix_end],
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
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
                // The committed-length records are bookkeeping, not locks or mailboxes.
                .filter(|name| !name.ends_with(COMMITTED_SUFFIX))
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

    const TRICKY_BODY: &[u8] = b"Subject: quoting\n\nFrom me\n>From x\n>>From y\nFrom:not-a-separator\nFromage\n.\n\ncaf\xc3\xa9 \xff\xfe 8-bit\nlast line without newline";

    /// Quote `content` cut at the given points, through the streaming quoter.
    fn quote_in_pieces(content: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut quoter = MboxrdQuoter::new(Vec::new());
        let mut start = 0;
        for &cut in cuts.iter().chain([content.len()].iter()) {
            quoter.write(&content[start..cut]).unwrap();
            start = cut;
        }
        quoter.finish().unwrap()
    }

    #[test]
    fn quoting_in_pieces_equals_quoting_at_once() {
        let inputs: [&[u8]; 6] = [
            TRICKY_BODY,
            b"From x",
            b">>>From",
            b">\n>From \nFro\n\nFrom",
            b"",
            b"no newline",
        ];
        // A fixed xorshift sequence: random-looking cuts, the same on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for input in inputs {
            let whole = quote_mboxrd(input);
            // Every single cut point, then many random sets of cuts.
            for cut in 0..=input.len() {
                assert_eq!(
                    quote_in_pieces(input, &[cut]),
                    whole,
                    "{input:?} cut at {cut}"
                );
            }
            for _ in 0..200 {
                let mut cuts: Vec<usize> = (0..4)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % (input.len() as u64 + 1)) as usize
                    })
                    .collect();
                cuts.sort_unstable();
                assert_eq!(
                    quote_in_pieces(input, &cuts),
                    whole,
                    "{input:?} cut at {cuts:?}"
                );
            }
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

    #[test]
    fn recover_cuts_an_unfinished_delivery() {
        let dir = TempDir::new("recover");
        let maildir = dir.mail_dir();
        maildir
            .deliver("a@b.example", &[to("alice")], b"first\n")
            .unwrap();
        let committed = dir.read("alice");
        // A delivery killed halfway: bytes past the committed length.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.0.join("alice"))
            .unwrap();
        file.write_all(b"From x@y Thu Jan  1 00:00:00 1970\nReturn-Path: <x@y>\nSubj")
            .unwrap();
        let cut = maildir.recover().unwrap();
        assert_eq!(cut, vec![("alice".to_string(), 57)]);
        assert_eq!(dir.read("alice"), committed);
        assert_eq!(maildir.recover().unwrap(), vec![], "nothing more to cut");
        maildir
            .deliver("a@b.example", &[to("alice")], b"second\n")
            .unwrap();
        assert_eq!(parse_mboxrd(&dir.read("alice")).len(), 2);
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
    fn o_nofollow_refuses_a_symlink() {
        // The open itself, without the look before it, must refuse a symlink.
        let dir = TempDir::new("nofollow");
        fs::write(dir.0.join("target"), b"").expect("write target");
        std::os::unix::fs::symlink("target", dir.0.join("link")).expect("symlink");
        let opened = OpenOptions::new()
            .append(true)
            .custom_flags(O_NOFOLLOW)
            .open(dir.0.join("link"));
        assert!(opened.is_err());
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
    fn a_held_flock_makes_delivery_fail() {
        let dir = TempDir::new("flock");
        fs::write(dir.0.join("alice"), b"").expect("mbox");
        let holder = File::open(dir.0.join("alice")).expect("open");
        holder.lock().expect("flock");

        let result = dir
            .mail_dir()
            .with_lock_attempts(2)
            .deliver("a@x", &[to("alice")], b"Hi\n");
        assert!(
            matches!(result, Err(DeliveryError::Locked(_))),
            "{result:?}"
        );
        assert_eq!(dir.names(), ["alice"], "our dotlock was removed");
        holder.unlock().expect("unlock");
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

    #[test]
    fn parse_ignores_bytes_before_the_first_separator() {
        let messages = parse_mboxrd(b"junk\n\nFrom a@x Thu Jan  1 00:00:00 1970\nHi\n\n");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].content, b"Hi\n");
        assert!(parse_mboxrd(b"").is_empty());
    }

    #[test]
    fn a_from_line_needs_an_empty_line_before_it() {
        // An unquoted `From ` line inside a paragraph (an mboxo writer's miss) is not a separator.
        let file = b"From a@x Thu Jan  1 00:00:00 1970\nHi\nFrom b@y is here\n\n";
        let messages = parse_mboxrd(file);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].content, b"Hi\nFrom b@y is here\n");
    }

    /// Deliver `subjects.len()` messages to alice, one per subject.
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
    fn split_agrees_with_parse_and_loses_no_byte() {
        let file: &[u8] = b"junk\n\nFrom a@x Thu Jan  1 00:00:00 1970\nHi\nFrom b@y inside\n\n\
            From c@z Thu Jan  1 00:00:00 1970\n>From q\n\nFrom d@w Thu Jan  1 00:00:00 1970\nno end";
        let raw = split_mboxrd(file);
        assert_eq!(raw.prefix, b"junk\n\n");
        assert_eq!(raw.messages.len(), 3);
        assert_eq!([raw.prefix, &raw.messages.concat()].concat(), file);
        let one_by_one: Vec<StoredMessage> =
            raw.messages.iter().flat_map(|m| parse_mboxrd(m)).collect();
        assert_eq!(one_by_one, parse_mboxrd(file));
        assert!(split_mboxrd(b"").messages.is_empty());
    }

    #[test]
    fn rewrite_without_removes_only_the_marked_messages_and_keeps_their_bytes() {
        let dir = TempDir::new("rewrite");
        deliver_subjects(&dir, &["one", "two", "three"]);
        let before = dir.read("alice");
        let raw = split_mboxrd(&before);
        let removed = dir
            .mail_dir()
            .rewrite_without("alice", |messages| {
                assert_eq!(messages.len(), 3);
                vec![false, true, false]
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
            .rewrite_without("alice", |m| vec![false; m.len()]);
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
        assert_eq!(lock.read().expect("read"), before);
        lock.rewrite(b"").expect("rewrite");
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
        lock.rewrite(b"").expect("rewrite"); // drops "old" and releases the lock
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

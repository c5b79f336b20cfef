//! The outbound queue: two files per message in the spool directory, written so that a message
//! the server has said `250` to survives a crash, and retried on a schedule until it expires.
//!
//! Interface:
//! - `Spool::new(dir)` names the spool; `spool.prepare(&entry, head, &body)` writes the content
//!   file (`head` then `body`, streamed) and the entry's small state file under temporary names
//!   and fsyncs both; `Prepared::commit()` renames them into the queue (content first), fsyncs
//!   the directory and wakes the relay; a `Prepared` dropped without `commit` removes its files.
//! - `spool.save(&entry)` rewrites the state file after a delivery attempt (same safe steps; the
//!   content is never rewritten); `spool.remove(id)` takes both files out; `spool.load_all()`
//!   reads every state file back (never the content); `spool.open_content(id)` opens the
//!   content for reading in chunks.
//! - `spool.generation()` / `spool.wait(seen, timeout)` / `spool.wake()`: the relay sleeps until
//!   a new message is queued or the timeout passes.
//! - `Entry` (envelope, per-recipient state, schedule), `Schedule` (`--retry`,
//!   `--queue-lifetime`), `parse_duration`, `parse_retry`.
//! - `message_id(session, n)` names an accepted message, uniquely across restarts.
//! - `queue_main(args)` is `smtplab queue [--spool DIR]`: what waits, why, and when it is tried next.
//!
//! One entry on disk, step by step: write `tmp.<id>`, fsync it, rename it to `<id>` (a rename is
//! atomic: a reader sees the old file or the new one, never half of one), then fsync the
//! directory, because a new name lives in the directory, not in the file. The content goes the
//! same way to `<id>.msg`, once, before the state file: a state file never names missing content.
//! Memory stays bounded whatever the message size: the content is copied from disk to disk in
//! chunks, and the relay reads it back in chunks.
//!
//! Standards: RFC 5321 §4.5.4, §4.5.4.1, §6.1

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::datetime;
use crate::smtp::body::Body;
use crate::smtp::extensions::{BodyType, MailOptions, Notify, Ret};

/// RFC 5321 §4.5.4.1: "the retry interval SHOULD be at least 30 minutes", and "retries continue
/// until the message is transmitted or the sender gives up; the give-up time generally needs to
/// be at least 4-5 days".
// DEVIATION: the first retries come sooner than 30 minutes (as Postfix's 5-minute
// minimal_backoff_time does): most temporary failures (greylisting, a restart) clear in minutes.
const DEFAULT_RETRY: &str = "5m,10m,30m,1h,2h,4h";
pub const DEFAULT_QUEUE_LIFETIME: Duration = Duration::from_secs(5 * 24 * 3600);

/// First line of every state file, so a stray file is never taken for a message.
const MAGIC: &str = "smtplab-queue 2";
/// The first format kept the content inside the state file; such a file is reported, not sent.
const MAGIC_SINGLE_FILE: &str = "smtplab-queue 1";
/// Suffix of a content file: `<id>.msg` beside the state file `<id>`.
const CONTENT_SUFFIX: &str = ".msg";
/// Prefix of a file being written; never read as a queue entry.
const TEMP_PREFIX: &str = "tmp.";
/// Mode of a spool file: mail is private.
const SPOOL_MODE: u32 = 0o600;

/// Where one recipient stands. Kept per recipient, so a partial success is never sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    /// Not delivered yet; tried again at `next_attempt`.
    Pending,
    /// The next hop said 2xx after DATA: done.
    Delivered,
    /// Bounced (5xx, or the queue lifetime ran out); the sender has been told.
    Failed,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    /// The forward-path as the client gave it, with brackets: `<bob@two.test>`.
    pub path: String,
    pub state: RcptState,
    /// The host that gave the last answer for this recipient, if any (DSN `Remote-MTA`).
    pub remote: String,
    /// The last reply or error, one line: `451 4.4.1 Connection refused` (why it waits).
    pub reply: String,
    /// RFC 3461 §4.1 `NOTIFY=` from the RCPT command, if the client gave it.
    pub notify: Option<Notify>,
    /// RFC 3461 §4.2 `ORCPT=` from the RCPT command, as the client wrote it (xtext).
    pub orcpt: Option<String>,
    /// The last conversation about this recipient was inside TLS (STARTTLS, RFC 3207).
    pub tls: bool,
}

/// One queued message: envelope, recipients with their state, schedule. The content is in its
/// own file (`Spool::open_content`), so an entry is small whatever the message size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The queue id, also the file name.
    pub id: String,
    /// The id the client was told in the 250 reply.
    pub message_id: String,
    /// Unix seconds when it was queued.
    pub created: u64,
    pub attempts: u32,
    /// Unix seconds of the next delivery attempt.
    pub next_attempt: u64,
    /// The reverse-path with brackets: `<alice@one.test>`, or `<>` for a bounce.
    pub sender: String,
    pub recipients: Vec<Rcpt>,
    /// RFC 3461 §4.3 `RET=` from the MAIL command: what a failure report returns.
    pub ret: Option<Ret>,
    /// RFC 3461 §4.4 `ENVID=` from the MAIL command, as the client wrote it (xtext).
    pub envid: Option<String>,
    /// RFC 6531 §3.4: the client sent `SMTPUTF8` with MAIL FROM.
    pub smtputf8: bool,
    /// RFC 6152, RFC 3030: the `BODY=` the client declared.
    pub body: BodyType,
}

impl Entry {
    /// A new entry with every recipient pending, due now.
    pub fn new(message_id: &str, sender: String, recipients: Vec<String>) -> Entry {
        let now = datetime::unix_now();
        Entry {
            id: new_queue_id(now),
            message_id: message_id.to_string(),
            created: now,
            attempts: 0,
            next_attempt: now,
            sender,
            recipients: recipients
                .into_iter()
                .map(|path| Rcpt {
                    path,
                    state: RcptState::Pending,
                    remote: String::new(),
                    reply: String::new(),
                    notify: None,
                    orcpt: None,
                    tls: false,
                })
                .collect(),
            ret: None,
            envid: None,
            smtputf8: false,
            body: BodyType::SevenBit,
        }
    }

    /// The MAIL FROM parameters the relay passes on or honours: RET and ENVID (RFC 3461
    /// §5.2.1), SMTPUTF8 (RFC 6531 §3.4) and BODY (RFC 6152, RFC 3030).
    pub fn keep_mail_options(&mut self, options: &MailOptions) {
        self.ret = options.ret;
        self.envid = options.envid.clone();
        self.smtputf8 = options.smtputf8;
        self.body = options.body;
    }

    /// True when no recipient is pending: the file can go.
    pub fn is_done(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.state != RcptState::Pending)
    }
}

/// The retry schedule: the waits between attempts, and when to give up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The wait after the first, second, ... failed attempt; the last one repeats.
    pub retry: Vec<Duration>,
    /// After this long in the queue a message that still fails temporarily is bounced.
    pub lifetime: Duration,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            retry: parse_retry(DEFAULT_RETRY).unwrap_or_default(),
            lifetime: DEFAULT_QUEUE_LIFETIME,
        }
    }
}

impl Schedule {
    /// The wait after `attempts` failed attempts (1 = after the first).
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) - 1) as usize;
        self.retry
            .get(index)
            .or(self.retry.last())
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Has this entry been queued longer than the lifetime allows?
    pub fn expired(&self, entry: &Entry, now: u64) -> bool {
        now.saturating_sub(entry.created) >= self.lifetime.as_secs()
    }
}

/// `30s`, `5m`, `2h`, `5d`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a duration like 30s, 5m, 2h or 5d.");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// `--retry 1m,5m,30m,2h`: a comma-separated list of durations, at least one.
pub fn parse_retry(text: &str) -> Result<Vec<Duration>, String> {
    let list = text
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--retry: {e}"))?;
    if list.iter().any(Duration::is_zero) {
        return Err("--retry: a wait of zero would retry without pause.".into());
    }
    Ok(list)
}

/// `<seconds>-<pid>-<counter>`: unique within a process, and across restarts (new pid, later time).
fn new_queue_id(now: u64) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{now}-{}-{n}", std::process::id())
}

/// The spool directory. The alarm clock that wakes the relay when something is queued is one
/// per process (`ALARM`), so a `Spool` made anywhere from the directory's name (as ETRN does)
/// wakes the relay too; another server in the same process only looks once more.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

/// Bumped by `Spool::wake`; the relay waits for it to change.
static ALARM: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// A new entry written and synced under a temporary name, not yet in the queue.
#[must_use = "commit() puts the entry in the queue; dropping it removes the file"]
pub struct Prepared<'a> {
    spool: &'a Spool,
    id: String,
    committed: bool,
}

impl Spool {
    /// The directory is created on first use, so a server that never relays leaves no trace.
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ANCHOR: prepare
    /// Step one of queueing: the content (`head`, then `body`) and the entry are on disk and
    /// synced, but the relay cannot see them yet. The caller finishes its other work (local
    /// delivery), then commits, or drops to undo. The body is copied in chunks, never whole.
    pub fn prepare(&self, entry: &Entry, head: &[u8], body: &Body) -> io::Result<Prepared<'_>> {
        fs::create_dir_all(&self.dir)?;
        let prepared = Prepared {
            spool: self,
            id: entry.id.clone(),
            committed: false,
        };
        // On an error `prepared` is dropped here, and its drop removes what was written.
        write_content_synced(&self.temp_path(&content_name(&entry.id)), head, body)?;
        write_synced(&self.temp_path(&entry.id), &serialize(entry))?;
        Ok(prepared)
    }
    // ANCHOR_END: prepare

    /// Rewrite an entry's state after an attempt: temporary file, fsync, rename, directory
    /// fsync. The content file stays as it is.
    pub fn save(&self, entry: &Entry) -> io::Result<()> {
        let temp = self.temp_path(&entry.id);
        write_synced(&temp, &serialize(entry))?;
        self.rename_into_queue(&entry.id)
    }

    /// Take an entry out of the queue (every recipient delivered or bounced): the state file
    /// first, so a crash in between leaves only content that no entry names (removed at the
    /// next start by `remove_stale_temp_files`).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(id))?;
        match fs::remove_file(self.content_path(id)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        sync_dir(&self.dir)
    }

    /// Where the content of entry `id` is: `<id>.msg`.
    pub fn content_path(&self, id: &str) -> PathBuf {
        self.dir.join(content_name(id))
    }

    /// The content of entry `id` (lines ending in `\n`, this server's `Received:` line on top),
    /// to be read in chunks.
    pub fn open_content(&self, id: &str) -> io::Result<File> {
        File::open(self.content_path(id))
    }

    /// Every queued entry, oldest first; files that cannot be read come back as errors.
    pub fn load_all(&self) -> Vec<Result<Entry, String>> {
        let names = match fs::read_dir(&self.dir) {
            Ok(dir) => dir
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| is_state_file(name))
                .collect::<Vec<_>>(),
            Err(_) => Vec::new(), // no spool directory yet: nothing queued
        };
        let mut entries: Vec<Result<Entry, String>> =
            names.iter().map(|name| self.load(name)).collect();
        entries.sort_by_key(|e| e.as_ref().map(|e| (e.created, e.id.clone())).ok());
        entries
    }

    /// One entry, read again from its state file (`id` is its file name).
    pub fn load(&self, name: &str) -> Result<Entry, String> {
        let bytes =
            fs::read(self.dir.join(name)).map_err(|e| format!("{name}: cannot read: {e}"))?;
        deserialize(name, &bytes).map_err(|e| format!("{name}: {e}"))
    }

    /// Remove temporary files a crash left behind: their messages were never acknowledged
    /// with 250, so the client still has them. Content whose state file is gone (a crash in
    /// the middle of `remove`) goes too. Call before any session starts.
    pub fn remove_stale_temp_files(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = name
                .strip_suffix(CONTENT_SUFFIX)
                .is_some_and(|id| !self.dir.join(id).exists());
            if name.starts_with(TEMP_PREFIX) || orphan {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    pub fn generation(&self) -> u64 {
        *crate::lock(&ALARM.0)
    }

    /// Wake the relay: a message was queued (or the server is stopping).
    pub fn wake(&self) {
        let mut generation = crate::lock(&ALARM.0);
        *generation += 1;
        ALARM.1.notify_all();
    }

    /// Sleep until `wake` is called after `seen` was read, or until `timeout` passes.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let generation = crate::lock(&ALARM.0);
        let _ = ALARM
            .1
            .wait_timeout_while(generation, timeout, |g| *g == seen);
    }

    fn temp_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{TEMP_PREFIX}{id}"))
    }

    fn rename_into_queue(&self, name: &str) -> io::Result<()> {
        fs::rename(self.temp_path(name), self.dir.join(name))?;
        sync_dir(&self.dir)
    }
}

/// `<id>.msg`.
fn content_name(id: &str) -> String {
    format!("{id}{CONTENT_SUFFIX}")
}

/// A state file: not being written, not hidden, not content.
fn is_state_file(name: &str) -> bool {
    !name.starts_with(TEMP_PREFIX) && !name.starts_with('.') && !name.ends_with(CONTENT_SUFFIX)
}

impl Prepared<'_> {
    // ANCHOR: commit
    /// Step two: rename the content into the queue and sync the directory, then the same for
    /// the state file, so no crash leaves a state file whose content is missing; wake the relay.
    pub fn commit(mut self) -> io::Result<()> {
        self.spool.rename_into_queue(&content_name(&self.id))?;
        self.spool.rename_into_queue(&self.id)?;
        self.committed = true;
        self.spool.wake();
        Ok(())
    }
    // ANCHOR_END: commit

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Prepared<'_> {
    /// Not committed: the message was refused after all, so nothing may stay in the spool.
    fn drop(&mut self) {
        if !self.committed {
            let content = content_name(&self.id);
            let _ = fs::remove_file(self.spool.temp_path(&self.id));
            let _ = fs::remove_file(self.spool.temp_path(&content));
            // Renamed already, but no state file names it: a commit that failed half way.
            if !self.spool.dir.join(&self.id).exists() {
                let _ = fs::remove_file(self.spool.dir.join(content));
            }
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = create_private(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

// ANCHOR: write_content
/// The content file: `head`, then the body chunk by chunk, then fsync. However large the
/// message, at most one chunk of it is in memory.
fn write_content_synced(path: &Path, head: &[u8], body: &Body) -> io::Result<()> {
    let mut file = BufWriter::new(create_private(path)?);
    file.write_all(head)?;
    body.for_each_chunk(|chunk| file.write_all(chunk))?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}
// ANCHOR_END: write_content

fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(SPOOL_MODE)
        .open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

// ANCHOR: format
/// The state file: a header of `name: value` lines, one `recipient:` line per recipient with
/// tab-separated fields (state, path, remote host, last reply, NOTIFY, ORCPT, `tls` when the
/// last conversation was inside TLS), and an empty line; the content is in `<id>.msg`. The MAIL
/// parameters (`ret:`, `envid:`, `smtputf8:`, `body:`) and NOTIFY and ORCPT are written only
/// when the client gave them, because a relay passes on exactly what it got (RFC 3461 §5.2.1).
fn serialize(entry: &Entry) -> Vec<u8> {
    let mut head = String::new();
    let _ = writeln!(head, "{MAGIC}");
    let _ = writeln!(head, "id: {}", entry.id);
    let _ = writeln!(head, "message-id: {}", one_line(&entry.message_id));
    let _ = writeln!(head, "created: {}", entry.created);
    let _ = writeln!(head, "attempts: {}", entry.attempts);
    let _ = writeln!(head, "next-attempt: {}", entry.next_attempt);
    let _ = writeln!(head, "sender: {}", one_line(&entry.sender));
    if let Some(ret) = entry.ret {
        let _ = writeln!(head, "ret: {}", ret.keyword());
    }
    if let Some(envid) = &entry.envid {
        let _ = writeln!(head, "envid: {}", one_line(envid));
    }
    if entry.smtputf8 {
        let _ = writeln!(head, "smtputf8: yes");
    }
    match entry.body {
        BodyType::SevenBit => {}
        BodyType::EightBitMime => {
            let _ = writeln!(head, "body: 8BITMIME");
        }
        BodyType::BinaryMime => {
            let _ = writeln!(head, "body: BINARYMIME");
        }
    }
    for rcpt in &entry.recipients {
        let state = match rcpt.state {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        };
        let _ = writeln!(
            head,
            "recipient: {state}\t{}\t{}\t{}\t{}\t{}\t{}",
            one_line(&rcpt.path),
            one_line(&rcpt.remote),
            one_line(&rcpt.reply),
            rcpt.notify.map(|n| n.to_string()).unwrap_or_default(),
            one_line(rcpt.orcpt.as_deref().unwrap_or("")),
            if rcpt.tls { "tls" } else { "" },
        );
    }
    head.push('\n');
    head.into_bytes()
}
// ANCHOR_END: format

/// A header value never holds a line end or a tab (they separate fields).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn deserialize(name: &str, bytes: &[u8]) -> Result<Entry, String> {
    let end = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("no empty line after the header")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "header is not UTF-8")?;
    let mut lines = head.lines();
    match lines.next() {
        Some(MAGIC) => {}
        Some(MAGIC_SINGLE_FILE) => {
            return Err("a queue file of the first format (content inside); not sent".into())
        }
        _ => return Err("not a smtplab queue file".into()),
    }
    let mut entry = Entry {
        id: name.to_string(),
        message_id: String::new(),
        created: 0,
        attempts: 0,
        next_attempt: 0,
        sender: String::new(),
        recipients: Vec::new(),
        ret: None,
        envid: None,
        smtputf8: false,
        body: BodyType::SevenBit,
    };
    for line in lines {
        let (key, value) = line.split_once(": ").ok_or("a header line without ': '")?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("bad number in {key}"))
        };
        match key {
            "id" => entry.id = value.to_string(),
            "message-id" => entry.message_id = value.to_string(),
            "created" => entry.created = number()?,
            "attempts" => entry.attempts = u32::try_from(number()?).unwrap_or(u32::MAX),
            "next-attempt" => entry.next_attempt = number()?,
            "sender" => entry.sender = value.to_string(),
            "recipient" => entry.recipients.push(recipient(value)?),
            "ret" => entry.ret = Some(Ret::parse(value).ok_or("bad ret")?),
            "envid" => entry.envid = Some(value.to_string()),
            "smtputf8" => entry.smtputf8 = value == "yes",
            "body" => entry.body = body_type(value)?,
            _ => {} // a field from a newer version: keep going
        }
    }
    if entry.recipients.is_empty() || entry.sender.is_empty() {
        return Err("no sender or no recipients".into());
    }
    Ok(entry)
}

fn recipient(value: &str) -> Result<Rcpt, String> {
    let mut fields = value.split('\t');
    let state = match fields.next() {
        Some("pending") => RcptState::Pending,
        Some("delivered") => RcptState::Delivered,
        Some("failed") => RcptState::Failed,
        _ => return Err("unknown recipient state".into()),
    };
    let path = fields
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("recipient without a path")?;
    let remote = fields.next().unwrap_or("").to_string();
    let reply = fields.next().unwrap_or("").to_string();
    // Files written before DSN support have no fifth and sixth field.
    let notify = match fields.next().filter(|n| !n.is_empty()) {
        Some(text) => Some(Notify::parse(text).ok_or("bad NOTIFY value")?),
        None => None,
    };
    let orcpt = fields.next().filter(|o| !o.is_empty()).map(str::to_string);
    let tls = fields.next() == Some("tls");
    Ok(Rcpt {
        state,
        path: path.to_string(),
        remote,
        reply,
        notify,
        orcpt,
        tls,
    })
}

fn body_type(value: &str) -> Result<BodyType, String> {
    match value {
        "8BITMIME" => Ok(BodyType::EightBitMime),
        "BINARYMIME" => Ok(BodyType::BinaryMime),
        "7BIT" => Ok(BodyType::SevenBit),
        _ => Err(format!("unknown body type {value}")),
    }
}

const QUEUE_USAGE: &str = "Usage: smtplab queue [--spool DIR]

Lists the messages waiting in the outbound queue: sender, recipients, why each one waits, and
when the next delivery attempt is due.";

/// `smtplab queue [--spool DIR]`.
pub fn queue_main(args: &[String]) -> i32 {
    let mut options = getopts::Options::new();
    options.optopt("", "spool", "outbound queue (default ./spool)", "DIR");
    options.optflag("h", "help", "print this help");
    let matches = match options.parse(args) {
        Ok(m) => m,
        Err(error) => {
            eprintln!("smtplab queue: {error}.\n{}", options.usage(QUEUE_USAGE));
            return 2;
        }
    };
    if matches.opt_present("help") {
        print!("{}", options.usage(QUEUE_USAGE));
        return 0;
    }
    let dir = matches.opt_str("spool").unwrap_or_else(|| "spool".into());
    // Senders, recipients and remote replies come from clients and other servers: escaped.
    let listed = listing(&Spool::new(dir).load_all(), datetime::unix_now());
    print!("{}", crate::visible::sanitize(&listed));
    0
}

/// The text `smtplab queue` prints.
pub fn listing(entries: &[Result<Entry, String>], now: u64) -> String {
    let mut out = String::new();
    let mut waiting = 0;
    for entry in entries {
        match entry {
            Err(error) => {
                let _ = writeln!(out, "unreadable: {error}");
            }
            Ok(entry) => {
                waiting += 1;
                describe(&mut out, entry, now);
            }
        }
    }
    if waiting == 0 {
        out.push_str("The queue is empty.\n");
    } else {
        let _ = writeln!(out, "{waiting} message(s) waiting.");
    }
    out
}

fn describe(out: &mut String, entry: &Entry, now: u64) {
    let next = if entry.next_attempt <= now {
        "due now".to_string()
    } else {
        format!("next try in {}", human(entry.next_attempt - now))
    };
    let _ = writeln!(
        out,
        "{}  from {}  queued {} ({} ago)  attempts {}  {next}",
        entry.id,
        entry.sender,
        datetime::rfc5322(datetime::system_time(entry.created)),
        human(now.saturating_sub(entry.created)),
        entry.attempts,
    );
    for rcpt in &entry.recipients {
        let state = match rcpt.state {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        };
        let via = match (rcpt.remote.is_empty(), rcpt.tls) {
            (true, _) => String::new(),
            (false, false) => format!(" (from {})", rcpt.remote),
            (false, true) => format!(" (from {}, over TLS)", rcpt.remote),
        };
        let _ = writeln!(out, "    {state:<9} {}  {}{via}", rcpt.path, rcpt.reply);
    }
}

/// `90` -> `1m30s`.
fn human(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_spool(tag: &str) -> Spool {
        let dir = std::env::temp_dir().join(format!("smtplab-queue-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Spool::new(dir)
    }

    fn sample() -> Entry {
        Entry::new(
            "S1.1",
            "<alice@one.test>".into(),
            vec!["<bob@two.test>".into(), "<\"a b\"@two.test>".into()],
        )
    }

    const HEAD: &[u8] = b"Received: by here\n";

    fn body() -> Body {
        Body::in_memory(b"Subject: hi\n\nbody\n\nend\n".to_vec())
    }

    fn content_of(spool: &Spool, id: &str) -> Vec<u8> {
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut spool.open_content(id).unwrap(), &mut content).unwrap();
        content
    }

    #[test]
    fn an_entry_survives_the_round_trip_through_its_file() {
        let spool = temp_spool("roundtrip");
        let mut entry = sample();
        entry.recipients[0].state = RcptState::Delivered;
        entry.recipients[1].reply = "451 4.4.1 refused\tby\npeer".into();
        entry.ret = Some(Ret::Hdrs);
        entry.envid = Some("QQ+2B314159".into());
        entry.recipients[0].notify = Some(Notify::NEVER);
        entry.recipients[1].notify = Some(Notify {
            success: true,
            failure: true,
            delay: false,
        });
        entry.recipients[1].orcpt = Some("rfc822;a+20b@two.test".into());
        entry.recipients[0].tls = true;
        entry.smtputf8 = true;
        entry.body = BodyType::BinaryMime;
        spool
            .prepare(&entry, HEAD, &body())
            .unwrap()
            .commit()
            .unwrap();
        let loaded = spool.load_all();
        assert_eq!(loaded.len(), 1, "the content file is not an entry");
        let back = loaded[0].clone().unwrap();
        assert_eq!(back.recipients[1].reply, "451 4.4.1 refused by peer");
        entry.recipients[1].reply = back.recipients[1].reply.clone();
        assert_eq!(back, entry);
        assert_eq!(
            content_of(&spool, &entry.id),
            b"Received: by here\nSubject: hi\n\nbody\n\nend\n"
        );
        entry.attempts = 3;
        spool.save(&entry).unwrap();
        assert_eq!(spool.load_all()[0].clone().unwrap().attempts, 3);
        assert_eq!(content_of(&spool, &entry.id).len(), HEAD.len() + 23);
        spool.remove(&entry.id).unwrap();
        assert!(spool.load_all().is_empty());
        assert_eq!(
            fs::read_dir(spool.dir()).unwrap().count(),
            0,
            "both files go"
        );
        let _ = fs::remove_dir_all(spool.dir());
    }

    #[test]
    fn an_uncommitted_entry_leaves_nothing_behind() {
        let spool = temp_spool("uncommitted");
        let prepared = spool.prepare(&sample(), HEAD, &body()).unwrap();
        assert!(spool.load_all().is_empty(), "the relay cannot see it yet");
        drop(prepared);
        assert_eq!(fs::read_dir(spool.dir()).unwrap().count(), 0);
        let _ = fs::remove_dir_all(spool.dir());
    }

    #[test]
    fn a_large_body_is_copied_to_the_content_file_in_chunks() {
        let spool = temp_spool("large");
        fs::create_dir_all(spool.dir()).unwrap();
        let mut large = Body::new(spool.dir());
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz\n";
        for _ in 0..(3 * crate::smtp::body::SPILL_THRESHOLD / line.len()) {
            large.push(line).unwrap();
        }
        assert!(large.is_spilled());
        let entry = sample();
        spool
            .prepare(&entry, HEAD, &large)
            .unwrap()
            .commit()
            .unwrap();
        let content = content_of(&spool, &entry.id);
        assert_eq!(content.len() as u64, HEAD.len() as u64 + large.len());
        assert!(content.starts_with(HEAD) && content.ends_with(line));
        let _ = fs::remove_dir_all(spool.dir());
    }

    #[test]
    fn orphans_and_old_single_file_entries() {
        let spool = temp_spool("orphans");
        let entry = sample();
        spool
            .prepare(&entry, HEAD, &body())
            .unwrap()
            .commit()
            .unwrap();
        fs::write(spool.dir().join("1-2-3.msg"), b"no state file names me").unwrap();
        fs::write(spool.dir().join("tmp.4-5-6"), b"half written").unwrap();
        fs::write(
            spool.dir().join("7-8-9"),
            b"smtplab-queue 1\nid: 7-8-9\n\ncontent",
        )
        .unwrap();
        spool.remove_stale_temp_files();
        let mut left: Vec<String> = fs::read_dir(spool.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let id = entry.id.clone();
        assert_eq!(left, vec![id.clone(), format!("{id}.msg"), "7-8-9".into()]);
        let loaded = spool.load_all();
        assert_eq!(loaded.len(), 2);
        assert!(
            loaded
                .iter()
                .any(|e| matches!(e, Err(text) if text.contains("first format"))),
            "{loaded:?}"
        );
        let _ = fs::remove_dir_all(spool.dir());
    }

    #[test]
    fn durations_and_the_retry_schedule() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_retry("1s,0s").is_err());
        let schedule = Schedule {
            retry: parse_retry("1m,5m").unwrap(),
            lifetime: Duration::from_secs(600),
        };
        assert_eq!(schedule.delay_after(1), Duration::from_secs(60));
        assert_eq!(schedule.delay_after(2), Duration::from_secs(300));
        assert_eq!(
            schedule.delay_after(9),
            Duration::from_secs(300),
            "the last repeats"
        );
        let entry = sample();
        assert!(!schedule.expired(&entry, entry.created + 599));
        assert!(schedule.expired(&entry, entry.created + 600));
        let default = Schedule::default();
        assert!(default.retry[0] >= Duration::from_secs(60));
        assert!(
            default.lifetime >= Duration::from_secs(4 * 86_400),
            "RFC 5321 §4.5.4.1"
        );
    }

    #[test]
    fn the_listing_says_why_and_when() {
        let mut entry = sample();
        entry.next_attempt = entry.created + 90;
        entry.recipients[0].reply = "451 4.4.1 Connection refused".into();
        entry.recipients[0].remote = "mx.two.test".into();
        let text = listing(&[Ok(entry)], sample().created);
        assert!(text.contains("next try in 1m30s"), "{text}");
        assert!(
            text.contains("451 4.4.1 Connection refused (from mx.two.test)"),
            "{text}"
        );
        assert!(text.contains("1 message(s) waiting."), "{text}");
        assert_eq!(listing(&[], 0), "The queue is empty.\n");
    }
}

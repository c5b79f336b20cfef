//! IMAP's state kept in plain mbox files: flags in `Status:`/`X-Status:` headers, UIDs in a
//! small index beside the mbox, and `MboxMailboxes`, the session's hook that reads and
//! rewrites an mbox under the same locks as delivery and POP3.
//!
//! Interface:
//! - `flags_of(header)` and `with_flags(raw, flags)`: flags as mutt and UW-IMAP write them
//!   (`Status: RO` is seen, `X-Status: AFTD` answered, flagged, draft, deleted).
//! - `served(content)`: the message as a client sees it, without those two headers.
//! - `identities(raw)`: a key per message that survives a rewrite by mutt or Python.
//! - `UidMap`: UIDVALIDITY, UIDNEXT and key → UID, saved in `DIR/.<user>.imap`.
//! - `MboxMailboxes`, the `session::Mailboxes` hook over the mail directory.
//!
//! Why an index beside the mbox rather than `X-UID:` headers in each message (UW-IMAP's way):
//! giving a UID then needs no rewrite of the mbox, so SELECT and EXAMINE only read it, and new
//! mail gets its UID without touching the file delivery appends to. The key of a message is
//! a hash of its `From ` line and its text without the headers that mail programs rewrite
//! (Status, X-Status, X-Keywords, X-UID, Content-Length, Lines): mutt marking a message read,
//! or Python's `mailbox` writing the file anew, leaves the key, and so the UID, as it was.
//! If a rewrite reorders messages so that UIDs would no longer grow with the sequence number,
//! the index starts over with a new UIDVALIDITY, as RFC 9051 §2.3.1.1 asks.
//!
//! Standards: RFC 9051 §2.3.1.1, §2.3.2, §2.3.3, RFC 4155 §2

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;

use crate::imap::command::Flags;
use crate::imap::message::Message;
use crate::imap::session::{Mailbox, Mailboxes, OpenError, Snapshot};
use crate::pop3::session::fnv1a64;
use crate::store::maildrop::{MaildropLock, Part, ReaderLock};
use crate::store::mbox::{DeliveryError, MailDir};
use crate::store::mboxrd::{self, Span};

/// Headers that mail programs rewrite: they are not part of a message's key.
const REWRITTEN: [&str; 8] = [
    "status",
    "x-status",
    "x-keywords",
    "x-uid",
    "x-imap",
    "x-imapbase",
    "content-length",
    "lines",
];

/// The flag headers this server owns; clients never see them in the message text.
const FLAG_HEADERS: [&str; 2] = ["status", "x-status"];

/// The header lines of `text` (up to the first empty line), each field with its folded
/// continuation lines, as `(lower-case name, bytes)`; and where the header ends.
fn header_fields(text: &[u8]) -> (Vec<(String, &[u8])>, usize) {
    let mut fields: Vec<(String, &[u8])> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line == b"\n" || line == b"\r\n" {
            break;
        }
        let folded = line.starts_with(b" ") || line.starts_with(b"\t");
        match fields.last_mut() {
            Some((_, bytes)) if folded => {
                *bytes = &text[offset - bytes.len()..offset + line.len()];
            }
            _ => {
                let name = line
                    .iter()
                    .position(|&b| b == b':')
                    .map(|end| String::from_utf8_lossy(&line[..end]).trim().to_lowercase())
                    .unwrap_or_default();
                fields.push((name, line));
            }
        }
        offset += line.len();
    }
    (fields, offset)
}

/// `text` without the header fields named in `drop`.
fn without_fields(text: &[u8], drop: &[&str]) -> Vec<u8> {
    let (fields, end) = header_fields(text);
    let mut out: Vec<u8> = fields
        .into_iter()
        .filter(|(name, _)| !drop.contains(&name.as_str()))
        .flat_map(|(_, bytes)| bytes.to_vec())
        .collect();
    out.extend_from_slice(&text[end..]);
    out
}

// ANCHOR: flags_of
/// The flags a message's headers record: `Status: R` is `\Seen`; `X-Status:` holds `A`
/// (`\Answered`), `F` (`\Flagged`), `T` (`\Draft`) and `D` (`\Deleted`), as mutt reads them.
pub fn flags_of(text: &[u8]) -> Flags {
    let (fields, _) = header_fields(text);
    let mut flags = Flags::default();
    for (name, bytes) in fields {
        let value = bytes.splitn(2, |&b| b == b':').nth(1).unwrap_or_default();
        let letters = |pairs: &[(u8, Flags)]| {
            pairs
                .iter()
                .filter(|(letter, _)| value.contains(letter))
                .fold(Flags::default(), |acc, (_, flag)| acc.union(*flag))
        };
        match name.as_str() {
            "status" => flags = flags.union(letters(&[(b'R', Flags::SEEN)])),
            "x-status" => {
                flags = flags.union(letters(&[
                    (b'A', Flags::ANSWERED),
                    (b'F', Flags::FLAGGED),
                    (b'T', Flags::DRAFT),
                    (b'D', Flags::DELETED),
                ]))
            }
            _ => {}
        }
    }
    flags
}

/// A raw mbox message (its `From ` line, header, body) with its flag headers replaced by
/// `flags`; every other byte stays as it was. The new headers go last in the header, where
/// mutt puts them.
pub fn with_flags(raw: &[u8], flags: Flags) -> Vec<u8> {
    let first_line = raw
        .iter()
        .position(|&b| b == b'\n')
        .map_or(raw.len(), |i| i + 1);
    let (separator, text) = raw.split_at(first_line);
    let (fields, end) = header_fields(text);
    let mut out = separator.to_vec();
    for (name, bytes) in fields {
        if !FLAG_HEADERS.contains(&name.as_str()) {
            out.extend_from_slice(bytes);
        }
    }
    let seen = if flags.contains(Flags::SEEN) { "R" } else { "" };
    out.extend(format!("Status: {seen}O\n").bytes());
    let x_status: String = [
        (Flags::ANSWERED, 'A'),
        (Flags::FLAGGED, 'F'),
        (Flags::DRAFT, 'T'),
        (Flags::DELETED, 'D'),
    ]
    .iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .map(|(_, letter)| *letter)
    .collect();
    if !x_status.is_empty() {
        out.extend(format!("X-Status: {x_status}\n").bytes());
    }
    out.extend_from_slice(&text[end..]);
    out
}
// ANCHOR_END: flags_of

/// The message a client is given: the content without the flag headers this server keeps.
pub fn served(content: &[u8]) -> Vec<u8> {
    without_fields(content, &FLAG_HEADERS)
}

// ANCHOR: identities
/// One key per raw message (from `split_mboxrd`): FNV-1a of the `From ` line and the text
/// without the headers mail programs rewrite and without trailing empty lines. Copies that
/// are byte-identical get `-2`, `-3` after the hash, as POP3's unique-ids do.
pub fn identities<'a>(raw: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    raw.into_iter()
        .map(|raw| {
            let first_line = raw
                .iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |i| i + 1);
            let (separator, text) = raw.split_at(first_line);
            let mut kept = separator.to_vec();
            kept.extend(without_fields(text, &REWRITTEN));
            while kept.ends_with(b"\n") {
                kept.pop();
            }
            let hash = fnv1a64(&kept);
            let copies = seen.entry(hash).or_insert(0);
            *copies += 1;
            match *copies {
                1 => format!("{hash:016x}"),
                n => format!("{hash:016x}-{n}"),
            }
        })
        .collect()
}
// ANCHOR_END: identities

/// `INTERNALDATE` from an mbox `From sender Thu Dec  3 09:28:47 2026` line (RFC 4155 §2), as
/// `"03-Dec-2026 09:28:47 +0000"`; the epoch when the line cannot be read.
pub fn internal_date(raw: &[u8]) -> String {
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let words: Vec<String> = String::from_utf8_lossy(line)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let date = match words.as_slice() {
        [.., month, day, time, year]
            if month.len() == 3 && time.len() == 8 && year.len() == 4 && day.len() <= 2 =>
        {
            day.parse::<u8>()
                .ok()
                .map(|day| format!("{day:02}-{month}-{year} {time} +0000"))
        }
        _ => None,
    };
    date.unwrap_or_else(|| "01-Jan-1970 00:00:00 +0000".to_string())
}

// ANCHOR: uid_map
/// UIDVALIDITY, UIDNEXT and the UID of each message key: the file `DIR/.<user>.imap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidMap {
    pub validity: u32,
    pub next: u32,
    pub uids: BTreeMap<String, u32>,
}

impl UidMap {
    /// A new map: UIDVALIDITY is the time in seconds, so a map made anew gets a new one.
    pub fn fresh(now: u32) -> UidMap {
        UidMap {
            validity: now.max(1),
            next: 1,
            uids: BTreeMap::new(),
        }
    }

    /// Read the file's text; `None` if it is not a map (then a fresh one is made).
    pub fn parse(text: &str) -> Option<UidMap> {
        let mut lines = text.lines();
        if lines.next()? != "smtplab-imap 1" {
            return None;
        }
        let value = |line: Option<&str>, name: &str| -> Option<u32> {
            line?.strip_prefix(name)?.trim().parse().ok()
        };
        let validity = value(lines.next(), "uidvalidity")?;
        let next = value(lines.next(), "uidnext")?;
        let mut uids = BTreeMap::new();
        for line in lines {
            let (key, uid) = line.split_once(' ')?;
            let uid: u32 = uid.parse().ok()?;
            if uid == 0 || uid >= next {
                return None;
            }
            uids.insert(key.to_string(), uid);
        }
        Some(UidMap {
            validity,
            next,
            uids,
        })
    }

    pub fn to_text(&self) -> String {
        let mut text = format!(
            "smtplab-imap 1\nuidvalidity {}\nuidnext {}\n",
            self.validity, self.next
        );
        for (key, uid) in &self.uids {
            text.push_str(&format!("{key} {uid}\n"));
        }
        text
    }

    /// The UIDs of the messages with these keys, in order. A key seen before keeps its UID;
    /// a new one gets UIDNEXT. Keys no longer in the mailbox are forgotten. If the UIDs would
    /// not grow with the position (a rewrite moved messages), every message is numbered
    /// anew under a new UIDVALIDITY.
    pub fn assign(&mut self, keys: &[String], now: u32) -> Vec<u32> {
        let mut uids = Vec::with_capacity(keys.len());
        for key in keys {
            let uid = *self.uids.entry(key.clone()).or_insert_with(|| {
                self.next += 1;
                self.next - 1
            });
            uids.push(uid);
        }
        if uids.windows(2).any(|w| w[0] >= w[1]) {
            *self = UidMap::fresh(now.max(self.validity.saturating_add(1)));
            return self.assign(keys, now);
        }
        self.uids.retain(|key, _| keys.contains(key));
        uids
    }
}
// ANCHOR_END: uid_map

/// What a write changes: new flags by UID, and the UIDs to remove.
type Change<'a> = (&'a [(u32, Flags)], &'a [u32]);

/// The mbox files of the mail directory, seen by IMAP.
pub struct MboxMailboxes {
    pub mail_dir: MailDir,
}

/// A selected mbox: the reader lock, held for as long as it is selected.
struct MboxMailbox {
    user: String,
    mail_dir: MailDir,
    _reader: ReaderLock,
    /// The file as last read or written.
    stamp: Option<Stamp>,
}

fn seconds_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// `DIR/.<user>.imap`: a name no mailbox can have, as it starts with a dot.
fn index_path(mail_dir: &MailDir, user: &str) -> PathBuf {
    mail_dir.root().join(format!(".{user}.imap"))
}

/// The messages of a locked mbox as they are now: where each lies, and its bytes.
fn read_messages(lock: &MaildropLock) -> io::Result<Vec<(Span, Vec<u8>)>> {
    lock.spans()?
        .into_iter()
        .map(|span| Ok((span, lock.read_span(span)?)))
        .collect()
}

/// A message that stays in the mbox: its UID, where it lies, its bytes, and its new bytes
/// when its flags change.
struct Kept<'a> {
    uid: u32,
    span: Span,
    raw: &'a [u8],
    replaced: Option<Vec<u8>>,
}

impl Kept<'_> {
    /// The message as the file will hold it.
    fn bytes(&self) -> &[u8] {
        self.replaced.as_deref().unwrap_or(self.raw)
    }
}

// ANCHOR: transact
/// Read `user`'s mbox under the delivery locks, give each message its UID, and apply
/// `change` (the flags to write, the UIDs to remove): one rewrite, in which the messages not
/// changed are copied as they are. Returns the mailbox as it is after, and the file's stamp
/// taken while the locks are still held: a stamp taken later could already include a message
/// delivered after the read, and that message would never be reported.
fn transact(
    mail_dir: &MailDir,
    user: &str,
    change: Option<Change>,
) -> Result<(Snapshot, Option<Stamp>), String> {
    let io_error = |e: io::Error| failed(DeliveryError::Io(user.to_string(), e));
    let lock = mail_dir.lock_maildrop(user).map_err(failed)?;
    let messages = read_messages(&lock).map_err(io_error)?;
    let keys = identities(messages.iter().map(|(_, raw)| raw.as_slice()));
    let index = index_path(mail_dir, user);
    let old = fs::read_to_string(&index)
        .ok()
        .and_then(|text| UidMap::parse(&text));
    let mut map = old.clone().unwrap_or_else(|| UidMap::fresh(seconds_now()));
    let uids = map.assign(&keys, seconds_now());
    let (flags, expunged) = change.unwrap_or((&[], &[]));
    let mut kept: Vec<Kept> = Vec::new();
    for ((span, raw), uid) in messages.iter().zip(&uids) {
        if expunged.contains(uid) {
            continue;
        }
        let new_flags = flags.iter().find(|(u, _)| u == uid).map(|(_, f)| *f);
        let replaced = new_flags
            .filter(|f| *f != flags_of(header_after_separator(raw)))
            .map(|f| with_flags(raw, f));
        kept.push(Kept {
            uid: *uid,
            span: *span,
            raw,
            replaced,
        });
    }
    if kept.len() < messages.len() || kept.iter().any(|k| k.replaced.is_some()) {
        let prefix = Span {
            offset: 0,
            len: messages.first().map_or(0, |(span, _)| span.offset),
        };
        let mut parts = vec![Part::Kept(prefix)];
        parts.extend(kept.iter().map(|k| match &k.replaced {
            Some(bytes) => Part::New(bytes),
            None => Part::Kept(k.span),
        }));
        let keys = identities(kept.iter().map(Kept::bytes));
        map.uids.retain(|key, _| keys.contains(key));
        lock.rewrite_parts(&parts).map_err(io_error)?;
    }
    if old.as_ref() != Some(&map) {
        save_index(&index, &map).map_err(io_error)?;
    }
    let messages = kept
        .iter()
        .map(|k| {
            let raw = k.bytes();
            let content = mboxrd::parse_mboxrd(raw)
                .pop()
                .map(|m| m.content)
                .unwrap_or_default();
            Message::new(
                k.uid,
                flags_of(&content),
                &served(&content),
                internal_date(raw),
            )
        })
        .collect();
    let snapshot = Snapshot {
        validity: map.validity,
        next_uid: map.next,
        messages,
    };
    Ok((snapshot, stamp(mail_dir, user)))
}
// ANCHOR_END: transact

/// The header of a raw message, after its `From ` line.
fn header_after_separator(raw: &[u8]) -> &[u8] {
    let first_line = raw
        .iter()
        .position(|&b| b == b'\n')
        .map_or(raw.len(), |i| i + 1);
    &raw[first_line..]
}

/// Options for a file only its owner may read: the index says which mail is there.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

/// Write the index to a temporary file, sync it, and rename it into place.
fn save_index(path: &PathBuf, map: &UidMap) -> io::Result<()> {
    let temp = path.with_extension("imap.new");
    let mut file = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)?;
    file.write_all(map.to_text().as_bytes())?;
    file.sync_all()?;
    fs::rename(&temp, path)
}

/// A file's identity and version: (inode, size, modification time in ns).
type Stamp = (u64, u64, i128);

/// The mbox file's identity and version now, if it exists.
fn stamp(mail_dir: &MailDir, user: &str) -> Option<Stamp> {
    let meta = fs::metadata(mail_dir.path_for(user)?).ok()?;
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Some((meta.ino(), meta.size(), mtime))
}

impl Mailboxes for MboxMailboxes {
    /// Take the reader lock that POP3 takes: a second session on the same mailbox, IMAP or
    /// POP3, is told it is in use.
    fn open(&self, user: &str) -> Result<Box<dyn Mailbox>, OpenError> {
        let reader = self
            .mail_dir
            .try_lock_reader(user)
            .map_err(|error| {
                warn!("IMAP cannot open the mailbox of {user}: {error}");
                OpenError::Failed(error.to_string())
            })?
            .ok_or(OpenError::InUse)?;
        Ok(Box::new(MboxMailbox {
            user: user.to_string(),
            mail_dir: self.mail_dir.clone(),
            _reader: reader,
            stamp: None,
        }))
    }

    /// A look without the reader lock (STATUS of a mailbox not selected): UIDs are given as
    /// they would be, but the index is only read, unless the mailbox is free to write it.
    fn status(&self, user: &str) -> Result<Snapshot, String> {
        match self.mail_dir.try_lock_reader(user).map_err(failed)? {
            Some(_reader) => transact(&self.mail_dir, user, None).map(|(snapshot, _)| snapshot),
            None => {
                let lock = self.mail_dir.lock_maildrop(user).map_err(failed)?;
                let messages = read_messages(&lock).map_err(failed)?;
                let keys = identities(messages.iter().map(|(_, raw)| raw.as_slice()));
                let mut map = fs::read_to_string(index_path(&self.mail_dir, user))
                    .ok()
                    .and_then(|text| UidMap::parse(&text))
                    .unwrap_or_else(|| UidMap::fresh(seconds_now()));
                let uids = map.assign(&keys, seconds_now());
                let messages = messages
                    .iter()
                    .zip(uids)
                    .map(|((_, raw), uid)| {
                        let flags = flags_of(header_after_separator(raw));
                        Message::new(uid, flags, b"", internal_date(raw))
                    })
                    .collect();
                Ok(Snapshot {
                    validity: map.validity,
                    next_uid: map.next,
                    messages,
                })
            }
        }
    }
}

impl Mailbox for MboxMailbox {
    fn snapshot(&mut self) -> Result<Snapshot, String> {
        self.apply(None)
    }

    fn changed(&self) -> bool {
        stamp(&self.mail_dir, &self.user) != self.stamp
    }

    fn write(&mut self, flags: &[(u32, Flags)], expunge: &[u32]) -> Result<Snapshot, String> {
        self.apply(Some((flags, expunge)))
    }
}

impl MboxMailbox {
    fn apply(&mut self, change: Option<Change>) -> Result<Snapshot, String> {
        match transact(&self.mail_dir, &self.user, change) {
            Ok((snapshot, stamp)) => {
                self.stamp = stamp;
                Ok(snapshot)
            }
            Err(error) => {
                warn!("IMAP {}: {error}", self.user);
                // Unknown state: the next check sees a change and reads the file again.
                self.stamp = None;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &[u8] = b"From bob@example.org Thu Dec  3 09:28:47 2026\nFrom: bob\nSubject: hi\n folded\n\nbody\n>From quoted\n\n";

    #[test]
    fn flags_round_trip_through_the_headers_mutt_reads() {
        assert_eq!(flags_of(b"Subject: x\n\nStatus: RO\n"), Flags::default());
        let all = Flags(31);
        let raw = with_flags(RAW, all);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(
            text.contains(" folded\nStatus: RO\nX-Status: AFTD\n\nbody\n"),
            "{text}"
        );
        assert_eq!(flags_of(header_after_separator(&raw)), all);
        let none = with_flags(&raw, Flags::default());
        assert_eq!(flags_of(header_after_separator(&none)), Flags::default());
        assert!(String::from_utf8(none.clone())
            .unwrap()
            .contains("Status: O\n\n"));
        assert_eq!(
            identities([RAW]),
            identities([&none[..]]),
            "flags keep the key"
        );
        assert_eq!(
            served(b"A: 1\nStatus: RO\nX-Status: F\n\nStatus: body\n"),
            b"A: 1\n\nStatus: body\n"
        );
    }

    #[test]
    fn keys_ignore_rewritten_headers_and_number_copies() {
        let mutt = b"From bob@example.org Thu Dec  3 09:28:47 2026\nFrom: bob\nSubject: hi\n folded\nContent-Length: 5\nLines: 2\n\nbody\n>From quoted\n";
        assert_eq!(identities([RAW]), identities([&mutt[..]]));
        let keys = identities([RAW, &mutt[..], RAW]);
        assert_eq!(keys[1], format!("{}-2", keys[0]));
        assert_eq!(keys[2], format!("{}-3", keys[0]));
        let other = b"From bob@example.org Thu Dec  3 09:28:48 2026\nFrom: bob\n\nbody\n";
        assert_ne!(identities([&other[..]])[0], keys[0]);
    }

    #[test]
    fn uids_persist_grow_and_start_over_when_order_breaks() {
        let keys = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut map = UidMap::fresh(100);
        assert_eq!(map.assign(&keys(&["a", "b"]), 100), [1, 2]);
        let text = map.to_text();
        let mut again = UidMap::parse(&text).unwrap();
        assert_eq!(again, map);
        assert_eq!(again.assign(&keys(&["b", "c"]), 200), [2, 3]);
        assert!(!again.uids.contains_key("a"), "forgotten once gone");
        assert_eq!(again.validity, 100);
        assert_eq!(again.assign(&keys(&["c", "b"]), 200), [1, 2]);
        assert_eq!(again.validity, 200, "a new UIDVALIDITY");
        assert_eq!(UidMap::parse("junk"), None);
        assert_eq!(
            UidMap::parse("smtplab-imap 1\nuidvalidity 1\nuidnext 2\na 5\n"),
            None
        );
    }

    #[test]
    fn internal_date_from_the_separator() {
        assert_eq!(internal_date(RAW), "03-Dec-2026 09:28:47 +0000");
        assert_eq!(internal_date(b"From x\n"), "01-Jan-1970 00:00:00 +0000");
    }
}

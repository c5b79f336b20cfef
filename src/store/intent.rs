//! The intent record: what a delivery is about to append, so that recovery can prove that an
//! unfinished tail is its own before it cuts it.
//!
//! Interface:
//! - `Intent::plan(file, head, starts, len)` describes an append before a byte of it is
//!   written: the mbox's device and inode, the offset it starts at, the offset it will end at,
//!   where each of its messages starts, and its first bytes (`head`): the whole append for
//!   messages quoted in memory, the separator and trace headers for a large one that is
//!   streamed.
//! - `IntentFile::open(root, user)` is `DIR/.<user>.intent`; `record(intent)` writes it and
//!   `clear()` marks it idle again once the append is synced or undone.
//! - `judge(intent, mbox)` is recovery's rule, "prove, then cut": `Verdict::Cut` only when the
//!   mbox is the same inode, its length lies inside the unfinished append, the bytes from the
//!   start offset are the ones we were writing (as far as `head` goes), and no other writer's
//!   message follows ours;
//!   otherwise `Verdict::Leave` with the reason, for the log.
//!
//! Why not a sync of the record before each append: the record matters only after a crash.
//! After SIGKILL the kernel still has every byte we wrote, record included. After a power cut a
//! record that did not reach the disk is simply missing, and a missing record proves nothing, so
//! nothing is cut: the cost is a half-written message left in the file, never a lost one.
//!
//! Standards: RFC 5321 §6.1, RFC 4155 §2

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::store::lock::private_file;

/// `DIR/.<user>.intent` is the intent record of `DIR/<user>`.
pub const INTENT_SUFFIX: &str = ".intent";

/// First word of a record; a record in another format is never trusted.
const MAGIC: &str = "smtplab-intent-1";

/// What an idle record says: no append in progress.
const IDLE: &[u8] = b"idle\n";

// ANCHOR: intent
/// One append, described before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The mbox file: device and inode. A file replaced by rename is another inode.
    pub dev: u64,
    pub ino: u64,
    /// Its length before the append: where recovery cuts back to.
    pub start: u64,
    /// Its length once the append is complete.
    pub end: u64,
    /// Where each message's separator starts, counted from `start` (a blank line written in
    /// front of the first, to end someone else's last message, comes before it).
    pub separators: Vec<u64>,
    /// The first bytes of the append, as they will be written: blank line, separator, and as
    /// much more as is known before writing.
    pub head: Vec<u8>,
}
// ANCHOR_END: intent

impl Intent {
    /// The intent to append `len` octets to `mbox`, starting with `head`, whose messages start
    /// at `separators` (relative to the current end).
    pub fn plan(mbox: &File, head: &[u8], separators: Vec<u64>, len: u64) -> io::Result<Self> {
        let meta = mbox.metadata()?;
        Ok(Intent {
            dev: meta.dev(),
            ino: meta.ino(),
            start: meta.len(),
            end: meta.len() + len,
            separators,
            head: head.to_vec(),
        })
    }

    /// A line of numbers (the last is the length of the head), then the head verbatim.
    fn encode(&self) -> Vec<u8> {
        let starts: Vec<String> = self.separators.iter().map(u64::to_string).collect();
        let mut text = format!(
            "{MAGIC} {} {} {} {} {} {}\n",
            self.dev,
            self.ino,
            self.start,
            self.end,
            starts.join(","),
            self.head.len()
        )
        .into_bytes();
        text.extend_from_slice(&self.head);
        text
    }

    /// `None` for an idle record, and for anything that is not a whole record in our format:
    /// a record we cannot read proves nothing.
    fn decode(bytes: &[u8]) -> Option<Intent> {
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let numbers = std::str::from_utf8(&bytes[..newline]).ok()?;
        let mut fields = numbers.split(' ');
        if fields.next()? != MAGIC {
            return None;
        }
        let number = |field: Option<&str>| field?.parse::<u64>().ok();
        let (dev, ino) = (number(fields.next())?, number(fields.next())?);
        let (start, end) = (number(fields.next())?, number(fields.next())?);
        let separators = fields
            .next()?
            .split(',')
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        let head_len = usize::try_from(number(fields.next())?).ok()?;
        // A record cut short (a torn write) is not a record.
        let head = bytes.get(newline + 1..newline + 1 + head_len)?;
        Some(Intent {
            dev,
            ino,
            start,
            end,
            separators,
            head: head.to_vec(),
        })
    }
}

/// The record file of one mbox, open for as long as a delivery holds the mbox.
#[derive(Debug)]
pub struct IntentFile {
    file: File,
}

impl IntentFile {
    pub fn open(root: &Path, user: &str) -> io::Result<IntentFile> {
        let path = root.join(format!(".{user}{INTENT_SUFFIX}"));
        let file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(IntentFile { file })
    }

    /// Write the record in place: one `pwrite`, then cut whatever a longer record left.
    /// No fsync: see the module header.
    pub fn record(&self, intent: &Intent) -> io::Result<()> {
        self.replace(&intent.encode())
    }

    /// Back to idle: the append is on disk, or it was undone.
    pub fn clear(&self) -> io::Result<()> {
        self.replace(IDLE)
    }

    /// Idle, durably: recovery has dealt with the record, so it must never be judged again.
    pub fn retire(&self) -> io::Result<()> {
        self.clear()?;
        self.file.sync_data()
    }

    fn replace(&self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, 0)?;
        self.file.set_len(bytes.len() as u64)
    }

    /// The append in progress when the server stopped, if the record holds one.
    pub fn read(&self) -> io::Result<Option<Intent>> {
        let mut bytes = Vec::new();
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?; // it may be read more than once
        file.read_to_end(&mut bytes)?;
        Ok(Intent::decode(&bytes))
    }
}

/// What recovery decided about one unfinished append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte from `start` on is ours and was never acknowledged: truncate to `start`.
    Cut { start: u64, bytes: u64 },
    /// No proof; the file stays as it is, for this reason.
    Leave(String),
}

// ANCHOR: judge
/// Recovery's rule: cut only what can be shown to be our own unfinished append.
pub fn judge(intent: &Intent, mbox: &File) -> io::Result<Verdict> {
    let meta = mbox.metadata()?;
    let (start, end, len) = (intent.start, intent.end, meta.len());
    let leave = |why: String| Ok(Verdict::Leave(why));
    if (meta.dev(), meta.ino()) != (intent.dev, intent.ino) {
        return leave(format!(
            "it is another file now (inode {}, the delivery wrote to inode {})",
            meta.ino(),
            intent.ino
        ));
    }
    if len <= start || len >= end {
        return leave(format!(
            "it is {len} bytes long, outside the unfinished delivery ({start} to {end} bytes): \
             the delivery finished, or another program changed the file since"
        ));
    }
    if !starts_with_our_head(intent, mbox, len)? {
        return leave(format!(
            "the bytes from offset {start} on are not the ones smtplab was writing there"
        ));
    }
    if let Some(offset) = foreign_separator(intent, mbox, len)? {
        return leave(format!(
            "another program's message begins at offset {offset}, after the unfinished delivery"
        ));
    }
    Ok(Verdict::Cut {
        start,
        bytes: len - start,
    })
}
// ANCHOR_END: judge

/// Are the bytes from the start the ones we were writing, as far as the file and the head go?
/// For a message quoted in memory the head is the whole append, so every byte is compared.
fn starts_with_our_head(intent: &Intent, mbox: &File, len: u64) -> io::Result<bool> {
    let compared = (len - intent.start).min(intent.head.len() as u64) as usize;
    let mut found = vec![0; compared];
    mbox.read_exact_at(&mut found, intent.start)?;
    Ok(found == intent.head[..compared])
}

/// The offset of a line starting `From ` in the tail that is not one of our separators. Our
/// own content never has one (mboxrd quotes it), so such a line is another writer's message.
fn foreign_separator(intent: &Intent, mbox: &File, len: u64) -> io::Result<Option<u64>> {
    let mut reader = BufReader::new(mbox.try_clone()?);
    reader.seek(SeekFrom::Start(intent.start))?;
    let mut tail = reader.take(len - intent.start);
    let mut line = Vec::new();
    let mut offset = 0;
    loop {
        line.clear();
        let read = tail.read_until(b'\n', &mut line)? as u64;
        if read == 0 {
            return Ok(None);
        }
        if line.starts_with(b"From ") && !intent.separators.contains(&offset) {
            return Ok(Some(intent.start + offset));
        }
        offset += read;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_record_reads_back_and_anything_else_proves_nothing() {
        let intent = Intent {
            dev: 1,
            ino: 2,
            start: 30,
            end: 90,
            separators: vec![1, 40],
            head: b"\nFrom a@x Thu Jan  1 00:00:00 1970\nSubject: x\n\n".to_vec(),
        };
        assert_eq!(Intent::decode(&intent.encode()), Some(intent.clone()));
        assert_eq!(Intent::decode(IDLE), None);
        let torn = &intent.encode()[..20];
        assert_eq!(Intent::decode(torn), None);
        let text = String::from_utf8(intent.encode()).expect("text");
        let other = text.replacen(MAGIC, "smtplab-intent-9", 1);
        assert_eq!(Intent::decode(other.as_bytes()), None);
    }

    /// A file, and the intent of an append of `ours` (its first `head` octets known) of which
    /// `written` octets were written.
    fn mbox_with(name: &str, ours: &[u8], head: usize, written: usize) -> (File, Intent) {
        let path =
            std::env::temp_dir().join(format!("smtplab-intent-{}-{name}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        let _ = std::fs::remove_file(&path); // the open handle is all the test needs
        let intent = Intent::plan(&file, &ours[..head], vec![0], ours.len() as u64).expect("plan");
        file.write_all(&ours[..written]).expect("write");
        (file, intent)
    }

    const OURS: &[u8] = b"From a@x Thu Jan  1 00:00:00 1970\nSubject: ours\n\nbody\n\n";

    #[test]
    fn only_an_unfinished_append_of_ours_is_cut() {
        let (file, intent) = mbox_with("cut", OURS, OURS.len(), 40);
        assert_eq!(
            judge(&intent, &file).unwrap(),
            Verdict::Cut {
                start: 0,
                bytes: 40
            }
        );
        let (file, intent) = mbox_with("complete", OURS, OURS.len(), OURS.len());
        assert!(matches!(judge(&intent, &file).unwrap(), Verdict::Leave(_)));
        let (file, intent) = mbox_with("nothing", OURS, OURS.len(), 0);
        assert!(matches!(judge(&intent, &file).unwrap(), Verdict::Leave(_)));
    }

    #[test]
    fn a_rewritten_file_or_a_later_append_is_left_alone() {
        // Rewritten: other bytes where our separator was.
        let (mut file, intent) = mbox_with("rewritten", OURS, OURS.len(), 0);
        file.write_all(b"From b@y Thu Jan  1 00:00:00 1970\nStatus: RO\n")
            .unwrap();
        let Verdict::Leave(why) = judge(&intent, &file).unwrap() else {
            panic!("cut")
        };
        assert!(why.contains("not the ones smtplab was writing"), "{why}");
        // A line added after our half-written message: not a byte we meant to write.
        let (mut file, intent) = mbox_with("edited", OURS, OURS.len(), 38);
        file.write_all(b"edited\n").unwrap();
        let Verdict::Leave(why) = judge(&intent, &file).unwrap() else {
            panic!("cut")
        };
        assert!(why.contains("not the ones smtplab was writing"), "{why}");
        // A streamed message (only its separator known ahead), then another program's message.
        let (mut file, intent) = mbox_with("appended", OURS, 34, 38);
        file.write_all(b"\nFrom c@z x\n").unwrap();
        let Verdict::Leave(why) = judge(&intent, &file).unwrap() else {
            panic!("cut")
        };
        assert!(why.contains("another program's message"), "{why}");
    }
}

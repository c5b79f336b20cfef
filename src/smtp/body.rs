//! A message's content that stays in memory while it is small and spills to a file when large.
//!
//! Interface:
//! - `Body::new(spill_dir)` starts an empty body; `Body::in_memory(bytes)` wraps bytes that
//!   are already in memory (a bounce report, a test) and never spills.
//! - `push(bytes)` appends; past `SPILL_THRESHOLD` octets the bytes go to an unlinked file in
//!   `spill_dir`, so a session holds at most `SPILL_THRESHOLD` octets of any message.
//! - `len()`, `is_spilled()`, `as_slice()` (a small body's bytes), `head(n)` (the first octets, for header checks),
//!   `for_each_chunk(f)` (the whole content, `READ_CHUNK` octets at a time, as often as needed),
//!   and `to_vec()` for the few places that need one copy in memory.
//!
//! The spill file is created as `.spill-<pid>-<n>`, opened, and unlinked at once: only the open
//! file descriptor keeps it, so a crash or a dropped message leaves nothing on disk.
//!
//! Standards: RFC 5321 §4.5.3.1.7, §6.1

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Octets kept in memory before the content moves to a spill file. Most mail is far smaller
/// (a text message is a few KiB), so most messages never touch the spill directory.
pub const SPILL_THRESHOLD: usize = 256 * 1024;

/// Octets read back from a spill file at a time.
pub const READ_CHUNK: usize = 64 * 1024;

/// Mode of a spill file for the moment it has a name: the owner only, mail is private.
const SPILL_MODE: u32 = 0o600;

/// Numbers the spill files of this process, so two sessions never pick the same name.
static SPILL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Message content, lines ending in `\n`. A clone shares the spill file: clone a body only to
/// read it (a clone that pushes would write over the other's bytes).
#[derive(Debug, Clone, Default)]
pub struct Body {
    /// Where a large body spills; `None` keeps everything in memory.
    spill_dir: Option<PathBuf>,
    /// The spill file (unlinked) and how many octets it holds.
    file: Option<Arc<File>>,
    file_len: u64,
    /// The octets after those in the file: all of a small body, the unwritten tail of a large one.
    tail: Vec<u8>,
}

impl Body {
    /// An empty body that spills into `spill_dir` (the mail directory: same file system as
    /// the mailboxes, and already private).
    pub fn new(spill_dir: &Path) -> Body {
        Body {
            spill_dir: Some(spill_dir.to_path_buf()),
            ..Body::default()
        }
    }

    /// Bytes that are already in memory; this body never spills.
    pub fn in_memory(bytes: Vec<u8>) -> Body {
        Body {
            tail: bytes,
            ..Body::default()
        }
    }

    // ANCHOR: push
    /// Append `bytes`. When the in-memory tail reaches `SPILL_THRESHOLD`, it moves to the
    /// spill file, so memory stays below the threshold plus one push.
    pub fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() < SPILL_THRESHOLD {
            return Ok(());
        }
        let Some(dir) = &self.spill_dir else {
            return Ok(());
        };
        let file = match &self.file {
            Some(file) => file.clone(),
            None => {
                let file = Arc::new(spill_file(dir)?);
                self.file = Some(file.clone());
                file
            }
        };
        file.write_all_at(&self.tail, self.file_len)?;
        self.file_len += self.tail.len() as u64;
        self.tail = Vec::new();
        Ok(())
    }
    // ANCHOR_END: push

    /// Octets in the body.
    pub fn len(&self) -> u64 {
        self.file_len + self.tail.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole content, when it is all in memory (a body that never spilled).
    pub fn as_slice(&self) -> Option<&[u8]> {
        match self.file {
            None => Some(&self.tail),
            Some(_) => None,
        }
    }

    /// Has the body moved to a spill file? A spilled body is large: it is streamed, never
    /// copied into memory whole.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The first `n` octets (fewer if the body is shorter): enough for header checks such as
    /// counting `Received:` fields.
    pub fn head(&self, n: usize) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()).unwrap_or(usize::MAX).min(n);
        let mut head = vec![0; len];
        let in_file = usize::try_from(self.file_len)
            .unwrap_or(usize::MAX)
            .min(len);
        if let Some(file) = &self.file {
            file.read_exact_at(&mut head[..in_file], 0)?;
        }
        head[in_file..].copy_from_slice(&self.tail[..len - in_file]);
        Ok(head)
    }

    // ANCHOR: for_each_chunk
    /// Call `f` with the whole content in order, at most `READ_CHUNK` octets at a time. Reads
    /// with `read_at`, which keeps no file position, so a body can be read any number of times.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if let Some(file) = &self.file {
            let mut buffer = vec![0; READ_CHUNK];
            let mut offset = 0;
            while offset < self.file_len {
                let want = usize::try_from(self.file_len - offset)
                    .unwrap_or(READ_CHUNK)
                    .min(READ_CHUNK);
                file.read_exact_at(&mut buffer[..want], offset)?;
                f(&buffer[..want])?;
                offset += want as u64;
            }
        }
        if self.tail.is_empty() {
            return Ok(());
        }
        f(&self.tail)
    }
    // ANCHOR_END: for_each_chunk

    /// The whole content in memory: for tests and for the socket-free reader the fuzzer uses
    /// (`src/smtp/data.rs::read_message`); the server itself always reads a body in chunks.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut all = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.for_each_chunk(|chunk| {
            all.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(all)
    }
}

/// Two bodies are equal when their contents are (an unreadable body equals nothing).
impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.len() == other.len()
            && matches!((self.to_vec(), other.to_vec()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Eq for Body {}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Body {
        Body::in_memory(bytes.to_vec())
    }
}

/// Create `.spill-<pid>-<n>` in `dir`, keep it open, and unlink it at once: nothing is left
/// behind whatever happens to the process.
fn spill_file(dir: &Path) -> io::Result<File> {
    let n = SPILL_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".spill-{}-{n}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(SPILL_MODE)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("smtplab-body-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[test]
    fn a_small_body_stays_in_memory() {
        let dir = temp_dir("small");
        let mut body = Body::new(&dir);
        body.push(b"Subject: hi\n\nhello\n").unwrap();
        assert!(!body.is_spilled());
        assert_eq!(body.to_vec().unwrap(), b"Subject: hi\n\nhello\n");
        assert_eq!(body.head(7).unwrap(), b"Subject");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_large_body_spills_and_leaves_no_file() {
        let dir = temp_dir("large");
        let content = sample(3 * SPILL_THRESHOLD + 1234);
        let mut body = Body::new(&dir);
        for piece in content.chunks(1000) {
            body.push(piece).unwrap();
        }
        assert!(body.is_spilled());
        assert!(body.tail.len() < SPILL_THRESHOLD, "memory stays bounded");
        assert_eq!(body.len(), content.len() as u64);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "the spill file is unlinked"
        );
        // Read twice: reading keeps no position.
        assert_eq!(body.to_vec().unwrap(), content);
        assert_eq!(body.to_vec().unwrap(), content);
        assert_eq!(body.head(10).unwrap(), &content[..10]);
        let mut chunks = 0;
        body.for_each_chunk(|chunk| {
            assert!(chunk.len() <= READ_CHUNK.max(SPILL_THRESHOLD));
            chunks += 1;
            Ok(())
        })
        .unwrap();
        assert!(chunks > 3);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_spill_directory_is_an_error() {
        let mut body = Body::new(Path::new("/nonexistent/smtplab-spill"));
        assert!(body.push(&sample(SPILL_THRESHOLD)).is_err());
    }

    #[test]
    fn in_memory_bodies_never_spill() {
        let mut body = Body::in_memory(Vec::new());
        body.push(&sample(SPILL_THRESHOLD + 1)).unwrap();
        assert!(!body.is_spilled());
        assert_eq!(body, Body::from(&sample(SPILL_THRESHOLD + 1)[..]));
    }
}

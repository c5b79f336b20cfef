//! The mbox locks, taken the way Postfix takes them on Linux (`mailbox_delivery_lock = fcntl,
//! dotlock`), so that mutt, Python's `mailbox` and Postfix `local(8)` keep out of a mailbox
//! while smtplab writes it, and smtplab keeps out while they do.
//!
//! Interface:
//! - `lock_mbox(root, user, attempts)` takes the dotlock `DIR/<user>.lock`, opens the mbox
//!   (created 0600 if missing) without following a symlink, then takes an fcntl write lock on
//!   it; `Ok(None)` if someone else kept either lock for all the tries. Dropping the returned
//!   `MboxLock` releases both.
//! - `private_file()` is how every file in the mail directory is opened: mode 0600, never
//!   through a symlink (`O_NOFOLLOW`).
//! - `remove_orphan_lock_file(path)` clears what a crash between two steps of a dotlock left.
//!
//! Why two locks: a dotlock works for every program, even over NFS, but only if everyone
//! checks for it; the fcntl lock is what mutt and Python take first. On Linux `flock` and fcntl
//! locks do not see each other, so an `flock` would keep out nobody but ourselves.
//!
//! Standards: RFC 4155 §2

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// A dotlock older than this was left by a crashed deliverer and is removed
/// (Postfix `stale_lock_time` default, 500 s).
pub const STALE_LOCK_AGE: Duration = Duration::from_secs(500);

/// Pause between two tries of a lock. Postfix waits 1 s (`deliver_lock_delay`); we try more
/// often so that a short wait behind another delivery stays short.
pub const LOCK_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Tries of each lock before giving up: 200 × 100 ms = 20 s, the same total wait as Postfix's
/// `deliver_lock_attempts` (20) × `deliver_lock_delay` (1 s).
pub const LOCK_ATTEMPTS: u32 = 200;

/// Mode of every file smtplab creates in the mail directory: mail is private.
const MBOX_MODE: u32 = 0o600;

/// `DIR/<user>.lock` is the dotlock of `DIR/<user>` (the convention of Postfix, mutt, procmail).
pub const LOCK_SUFFIX: &str = ".lock";

/// Options for a file in the mail directory: created 0600, and `open` fails (ELOOP) if the name
/// is a symbolic link, so a link planted there cannot redirect a write.
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(MBOX_MODE).custom_flags(libc::O_NOFOLLOW);
    options
}

/// One mbox held with both locks, and the file open for appending. Dropping it releases the
/// fcntl lock and then the dotlock (fields drop after `drop` runs, in order).
#[derive(Debug)]
pub struct MboxLock {
    pub user: String,
    pub file: File,
    /// We created the file, so the directory needs an fsync too.
    pub created: bool,
    /// Held only to be dropped after `file`.
    _dotlock: DotLock,
}

/// Take the dotlock, open the mbox safely, take the fcntl lock: the order of Postfix's
/// `local(8)` and of mutt. Each lock is tried `attempts` times, `LOCK_RETRY_DELAY` apart.
pub fn lock_mbox(root: &Path, user: &str, attempts: u32) -> io::Result<Option<MboxLock>> {
    let lock_path = root.join(format!("{user}{LOCK_SUFFIX}"));
    let Some(dotlock) = retry(attempts, || try_dotlock(&lock_path))? else {
        return Ok(None);
    };
    let (file, created) = open_mailbox(&root.join(user))?;
    if retry(attempts, || try_record_lock(&file))?.is_none() {
        return Ok(None); // `dotlock` is dropped: our lock file goes
    }
    Ok(Some(MboxLock {
        user: user.to_string(),
        file,
        created,
        _dotlock: dotlock,
    }))
}

impl Drop for MboxLock {
    fn drop(&mut self) {
        // Closing the file would release the lock too; unlocking says so explicitly.
        if let Err(err) = record_lock(&self.file, libc::F_UNLCK) {
            log::error!("cannot unlock mailbox of {}: {err}", self.user);
        }
    }
}

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

/// Call `attempt` until it gives `Some`, for as long as `attempts` tries `LOCK_RETRY_DELAY`
/// apart would take. The first pauses are short (1, 2, 4, ... ms, up to `LOCK_RETRY_DELAY`):
/// another program's lock is usually held for a single append, and a wait of a whole
/// `LOCK_RETRY_DELAY` after each would slow every delivery that meets one.
/// `Ok(None)` means the lock stayed taken all that time.
fn retry<T>(
    attempts: u32,
    mut attempt: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let deadline = Instant::now() + LOCK_RETRY_DELAY * attempts.max(1).saturating_sub(1);
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(done) = attempt()? {
            return Ok(Some(done));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(LOCK_RETRY_DELAY);
    }
}

// ANCHOR: record_lock
/// The kernel lock: an fcntl write lock on the whole file, the lock mutt, Python's
/// `fcntl.lockf` and Postfix take. `Ok(None)` if another holds it.
///
/// It is an *open file description* lock (`F_OFD_SETLK`): it conflicts with the classic fcntl
/// locks of other programs exactly as theirs do with each other, but it belongs to our open
/// file, not to the whole process. So two threads of this server that open the same mbox keep
/// each other out, and closing some other descriptor of the file does not drop it, which a
/// classic fcntl lock would.
fn try_record_lock(file: &File) -> io::Result<Option<()>> {
    match record_lock(file, libc::F_WRLCK) {
        Ok(()) => Ok(Some(())),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Open file description locks are Linux's. Elsewhere the classic lock belongs to the whole
/// process; our own threads are still kept apart by the gates (`src/store/gate.rs`).
#[cfg(target_os = "linux")]
const SET_LOCK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(not(target_os = "linux"))]
const SET_LOCK: libc::c_int = libc::F_SETLK;

/// Set (`F_WRLCK`) or clear (`F_UNLCK`) the lock over the whole file, without waiting.
fn record_lock(file: &File, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: `flock` is plain data; all-zero is a valid value, and zero `l_start`/`l_len` with
    // `SEEK_SET` mean "the whole file, however long it grows". OFD locks need `l_pid` 0.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = kind as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a valid descriptor (we own `file`) and a pointer to a live `flock`.
    let result = unsafe { libc::fcntl(file.as_raw_fd(), SET_LOCK, &mut request) };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
// ANCHOR_END: record_lock

/// Create the dotlock with O_CREAT|O_EXCL semantics: exactly one process or thread can
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
    let mut file = private_file().write(true).create_new(true).open(&private)?;
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

/// A private lock file (`.<user>.lock-<pid>-<thread>`) whose process is gone was left by a
/// crash between writing it and linking it into place: remove it.
pub fn remove_orphan_lock_file(path: &Path) {
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

/// Remove the dotlock at `path` if it is older than `STALE_LOCK_AGE` or its process is gone.
// Two deliverers may both find the same stale lock; the second may then remove the first's
// new lock. Postfix's dot_lockfile() has the same window; the fcntl lock still protects us.
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
    // meanwhile makes the open fail instead of appending to the file it points to. The file
    // is opened for reading too: recovery and the blank-line check read what is there.
    let file = private_file()
        .read(true)
        .append(true)
        .create(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("smtplab-lock-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn o_nofollow_refuses_a_symlink() {
        // The open itself, without the look before it, must refuse a symlink.
        let dir = temp_dir("nofollow");
        fs::write(dir.join("target"), b"").expect("write target");
        std::os::unix::fs::symlink("target", dir.join("link")).expect("symlink");
        assert!(private_file().append(true).open(dir.join("link")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_opens_of_one_mbox_exclude_each_other_and_a_close_elsewhere_keeps_the_lock() {
        let dir = temp_dir("ofd");
        let held = lock_mbox(&dir, "alice", 1).expect("lock").expect("free");
        assert!(lock_mbox(&dir, "alice", 1).expect("try").is_none());
        // Drop our dotlock's rival: only the fcntl lock is tested here.
        let (other, _) = open_mailbox(&dir.join("alice")).expect("open");
        assert_eq!(try_record_lock(&other).expect("try"), None);
        drop(File::open(dir.join("alice")).expect("open and close"));
        assert_eq!(try_record_lock(&other).expect("try"), None, "still held");
        drop(held);
        assert_eq!(try_record_lock(&other).expect("try"), Some(()));
        let _ = fs::remove_dir_all(&dir);
    }
}

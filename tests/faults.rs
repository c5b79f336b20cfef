//! Faults: a full disk, a client that trickles one byte at a time, a crowd over
//! `--max-connections`. Each ends in a temporary reply (451/452/421) for the one client it
//! touches, nothing half-stored, and a server that goes on serving everyone else.

mod common;

use std::io::{BufReader, ErrorKind, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::{assert_reply, read_reply, Client, Reply, TestServer};

/// The recipient of every message in these tests (a demo user of the default directory).
const RCPT: &str = "alice@smtplab.test";

/// The pace of a trickling client: one byte, then this long waiting for an answer.
const TRICKLE_PAUSE: Duration = Duration::from_millis(300);

/// `--timeout` of the trickle tests, in seconds: short, so a test ends in about this long.
const SHORT_TIMEOUT: &str = "2";

// ---------------------------------------------------------------------------------------------
// After every fault: the server still serves a fresh client.

/// A new client is greeted, says EHLO, delivers a message and quits.
fn assert_still_serves(server: &TestServer, tag: &str) {
    let before = server.message_count("alice");
    let mut c = server.connect();
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    let content = format!("Subject: after {tag}\r\n\r\nstill here\r\n");
    let reply = c.send_mail("mary@client.example", &[RCPT], &content);
    assert_eq!(reply.code, 250, "a delivery after {tag}: {reply:?}");
    c.expect("QUIT", 221);
    assert_eq!(server.message_count("alice"), before + 1);
}

// ---------------------------------------------------------------------------------------------
// 1. The disk fills up in the middle of a delivery.
//
// Why a tmpfs and not `prlimit --fsize`: exceeding RLIMIT_FSIZE does not make write(2) fail
// with EFBIG at first; the kernel sends SIGXFSZ, whose default action kills the process. The
// server (in-process here, and the test binary with it) would die instead of answering 452,
// and std cannot ignore a signal without libc. A small tmpfs gives a real ENOSPC instead.

/// Size of the tmpfs mounted over the mail directory.
const TMPFS_SIZE: &str = "64k";

/// A file created first to take most of the space, removed later to free it.
const FILLER_BYTES: usize = 32 * 1024;

/// Lines of 100 octets in each message: about 6 KiB, so a few fit and then one does not.
const LINES_PER_MESSAGE: usize = 60;

/// More than the 64 KiB could ever hold: the loop below ends by then or the test fails.
const MAX_MESSAGES: usize = 20;

/// A tmpfs mounted on a directory; unmounted when dropped, also when the test fails.
struct Mounted(PathBuf);

impl Mounted {
    /// Mount a tmpfs of `size` on `dir`, or say why not.
    fn tmpfs(dir: &Path, size: &str) -> Result<Mounted, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Mounted(dir.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let plain = Command::new("umount").arg(&self.0).status();
        if !plain.is_ok_and(|s| s.success()) {
            // Something still holds a file there: detach it now, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Message `n`: a subject and `LINES_PER_MESSAGE` lines of one repeated letter.
fn numbered_message(n: usize) -> String {
    let letter = char::from(b'a' + (n % 26) as u8);
    let line = letter.to_string().repeat(98);
    let mut text = format!("Subject: message {n}\r\n\r\n");
    for _ in 0..LINES_PER_MESSAGE {
        text.push_str(&line);
        text.push_str("\r\n");
    }
    text
}

/// One message on its own connection; the reply to the final dot.
fn deliver_one(server: &TestServer, content: &str) -> Reply {
    let mut c = server.connect();
    let reply = c.send_mail("mary@client.example", &[RCPT], content);
    c.expect("QUIT", 221);
    reply
}

/// What the mailbox must hold: exactly these messages, each whole, in order.
fn assert_mailbox_holds(server: &TestServer, sent: &[String]) {
    let stored = server.messages("alice");
    assert_eq!(
        stored.len(),
        sent.len(),
        "the mbox holds exactly the messages that got 250"
    );
    for (n, (message, content)) in stored.iter().zip(sent).enumerate() {
        let body = common::without_trace_headers(&message.content);
        let expected = content.replace("\r\n", "\n");
        assert!(
            body == expected.as_bytes(),
            "message {n} is not whole: {} octets stored, {} sent",
            body.len(),
            expected.len()
        );
    }
}

#[test]
fn a_full_disk_gives_452_stores_no_partial_message_and_recovers() {
    // The server is declared first so it is dropped last: the tmpfs is unmounted before the
    // temporary directory under it is removed.
    let server = common::start(&[]);
    let mail_dir = server.mail_dir();
    // Mounted over the mail directory the server already created: it opens its files by path,
    // so from now on every delivery lands in the tmpfs.
    let _mounted = match Mounted::tmpfs(&mail_dir, TMPFS_SIZE) {
        Ok(mounted) => mounted,
        Err(error) => {
            println!("SKIP: cannot mount a tmpfs ({error})");
            return;
        }
    };
    let filler = mail_dir.join("filler");
    std::fs::write(&filler, vec![0u8; FILLER_BYTES]).expect("write the filler file");

    let mut accepted: Vec<String> = Vec::new();
    let refusal = loop {
        assert!(accepted.len() < MAX_MESSAGES, "the tmpfs never filled up");
        let content = numbered_message(accepted.len());
        let reply = deliver_one(&server, &content);
        if reply.code != 250 {
            break reply;
        }
        accepted.push(content);
    };
    // ENOSPC is `ErrorKind::StorageFull`: 452 4.3.1 (src/store/delivery.rs `failure_reply`); any other
    // local failure would be 451. Both are temporary: the client keeps the message.
    assert!(
        (refusal.code, refusal.status().as_str()) == (452, "4.3.1") || refusal.code == 451,
        "{refusal:?}"
    );
    assert!(!accepted.is_empty(), "no message fitted at all");
    assert_mailbox_holds(&server, &accepted);

    // Free the space: the message refused a moment ago now fits.
    std::fs::remove_file(&filler).expect("remove the filler file");
    let content = numbered_message(accepted.len());
    let reply = deliver_one(&server, &content);
    assert_eq!(reply.code, 250, "after freeing space: {reply:?}");
    accepted.push(content);
    assert_mailbox_holds(&server, &accepted);

    assert_still_serves(&server, "a full disk");
}

// ---------------------------------------------------------------------------------------------
// 2. A client that trickles one byte at a time.
//
// How the deadline works (src/connection.rs, src/net/line.rs `TimedRead`): each command line, and
// each line of message data, gets one deadline of `--timeout` from the moment the server
// starts waiting for it. Every read sets the socket's read timeout to the time left, so bytes
// that keep coming do not move the deadline: a line that takes longer than the timeout to
// arrive ends in 421 4.4.2, however busy the client looks. One thread per client means the
// trickler holds up nobody but itself.
//
// A per-line deadline alone would let a client send a whole line every 1.9 s (with a 2 s
// timeout) and keep its session for as long as it likes. During DATA the deadline is also
// bounded by a minimum data rate, as Postfix's `smtpd_min_data_rate`: after one `--timeout` of
// grace the message must come at `MIN_DATA_RATE` (500) octets a second on average (test 4).
// Commands have no such rate: a client typing NOOP every 1.9 s keeps its session, costing one
// thread and one of the `--max-connections` slots; enough of them can fill every slot (the
// slowloris attack), which a rate limit would not fully stop either.

/// What the trickling client saw.
#[derive(Debug)]
struct Trickled {
    /// How many bytes went out before the server answered.
    sent: usize,
    reply: Option<Reply>,
    closed: bool,
    /// Whether the other client had finished when the answer came.
    other_done_first: bool,
}

/// Send `bytes` one at a time, waiting `TRICKLE_PAUSE` for an answer after each: the wait
/// is the pace. Stops at the first answer, so nothing is written to a closed connection.
fn trickle(
    mut c: Client,
    bytes: &[u8],
    started: mpsc::Sender<()>,
    other_done: &AtomicBool,
) -> Trickled {
    let mut sent = 0;
    for &byte in bytes {
        c.send(&[byte]);
        sent += 1;
        if sent == 1 {
            let _ = started.send(());
        }
        if answer_within(&mut c, TRICKLE_PAUSE) {
            break;
        }
    }
    let reply = c.try_reply();
    let other_done_first = other_done.load(Ordering::SeqCst);
    let closed = c.is_closed();
    Trickled {
        sent,
        reply,
        closed,
        other_done_first,
    }
}

/// Has the server sent anything (or closed) within `wait`? The normal read timeout is restored.
fn answer_within(c: &mut Client, wait: Duration) -> bool {
    if !c.reader.buffer().is_empty() {
        return true;
    }
    let tcp = c.reader.get_ref();
    tcp.set_read_timeout(Some(wait)).expect("timeout");
    let peeked = tcp.peek(&mut [0u8; 1]);
    tcp.set_read_timeout(Some(common::READ_TIMEOUT))
        .expect("timeout");
    match peeked {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// Start a trickling client on its own thread; returns once its first byte is out.
fn start_trickle(
    c: Client,
    bytes: &'static [u8],
    other_done: &Arc<AtomicBool>,
) -> thread::JoinHandle<Trickled> {
    let (started, first_byte_out) = mpsc::channel();
    let flag = other_done.clone();
    let thread = thread::spawn(move || trickle(c, bytes, started, &flag));
    first_byte_out
        .recv_timeout(common::READ_TIMEOUT)
        .expect("the trickle started");
    thread
}

/// Check what the trickler saw: cut off with 421 4.4.2 before its line was complete, closed,
/// and only after the other client was done.
fn assert_cut_off(seen: &Trickled, line_len: usize) {
    let reply = seen.reply.as_ref().expect("a reply before the close");
    assert_reply(reply, 421, "4.4.2");
    assert!(
        seen.sent < line_len,
        "the line was finished first: {seen:?}"
    );
    assert!(seen.closed, "still open after the 421");
    assert!(seen.other_done_first, "the other client had to wait");
}

/// The command line the trickler never finishes: 22 bytes at 300 ms each would take 6.6 s.
const TRICKLED_HELO: &[u8] = b"HELO trickle.example\r\n";

#[test]
fn a_command_trickled_byte_by_byte_gets_421_while_others_are_served() {
    let server = common::start(&["--timeout", SHORT_TIMEOUT]);
    let other_done = Arc::new(AtomicBool::new(false));
    let slow = start_trickle(server.connect(), TRICKLED_HELO, &other_done);

    // Meanwhile a second client runs a whole session.
    let mut quick = server.connect();
    let reply = quick.send_mail(
        "mary@client.example",
        &[RCPT],
        "Subject: quick\r\n\r\nnot held up\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    quick.expect("QUIT", 221);
    other_done.store(true, Ordering::SeqCst);

    let seen = slow.join().expect("the trickle thread");
    assert_cut_off(&seen, TRICKLED_HELO.len());
    assert_eq!(server.message_count("alice"), 1);
    server.wait_idle();
    assert_still_serves(&server, "a trickled command");
}

/// A data line far longer than the timeout allows at one byte per `TRICKLE_PAUSE`.
const TRICKLED_DATA: &[u8] =
    b"Subject: this line arrives one byte at a time and never reaches its end\r\n";

/// Security catalogue 5.04 (inside TLS: `tls_limits.rs`).
#[test]
fn message_data_trickled_byte_by_byte_gets_421_and_stores_nothing() {
    let server = common::start(&["--timeout", SHORT_TIMEOUT]);
    let mut slow = server.connect();
    slow.open_data("mary@client.example", &["bob@smtplab.test"]);
    let other_done = Arc::new(AtomicBool::new(false));
    let slow = start_trickle(slow, TRICKLED_DATA, &other_done);

    let mut quick = server.connect();
    let reply = quick.send_mail(
        "mary@client.example",
        &[RCPT],
        "Subject: quick\r\n\r\nnot held up\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    quick.expect("QUIT", 221);
    other_done.store(true, Ordering::SeqCst);

    let seen = slow.join().expect("the trickle thread");
    assert_cut_off(&seen, TRICKLED_DATA.len());
    server.wait_idle();
    assert_eq!(
        server.message_count("bob"),
        0,
        "nothing of the trickle is stored"
    );
    assert_eq!(server.message_count("alice"), 1);
    assert_still_serves(&server, "trickled data");
}

// ---------------------------------------------------------------------------------------------
// 3. More clients than `--max-connections`.

/// The connection cap of the test.
const MAX_CONNECTIONS: usize = 3;

/// Clients that arrive together when the server is already full.
const CROWD: usize = 10;

#[test]
fn clients_over_the_cap_get_421_at_once_and_the_others_carry_on() {
    let cap = MAX_CONNECTIONS.to_string();
    let server = common::start(&["--max-connections", &cap]);
    let mut admitted: Vec<Client> = (0..MAX_CONNECTIONS).map(|_| server.connect()).collect();
    for c in &admitted {
        assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    }

    // All of the crowd connects before any of it reads.
    let crowd: Vec<TcpStream> = (0..CROWD)
        .map(|_| common::connect_with_timeouts(server.addr()))
        .collect();
    for (n, stream) in crowd.into_iter().enumerate() {
        let mut reader = BufReader::new(stream);
        let reply = read_reply(&mut reader).expect("a 421 before the close");
        assert_reply(&reply, 421, "4.3.2");
        let mut byte = [0u8; 1];
        let rest = reader.read(&mut byte);
        assert!(matches!(rest, Ok(0)), "client {n} of the crowd: {rest:?}");
    }

    for c in &mut admitted {
        c.expect("NOOP", 250);
    }
    for mut c in admitted {
        c.expect("QUIT", 221);
        assert!(c.is_closed());
    }
    server.wait_idle();
    assert_still_serves(&server, "a full house");
}

// ---------------------------------------------------------------------------------------------
// 4. Whole lines, each just inside the timeout: the minimum data rate ends it.

/// A short line every `LINE_PAUSE`, each well inside the 2 s timeout, at far less than
/// `MIN_DATA_RATE` octets a second on average.
const LINE_PAUSE: Duration = Duration::from_millis(700);

/// More lines than the deadline allows: 12 lines at 700 ms take 8.4 s, and the 2 s of grace
/// plus what 12 short lines earn at 500 octets a second is about 2 s.
const SLOW_LINES: usize = 12;

#[test]
fn whole_lines_just_inside_the_timeout_are_cut_off_by_the_minimum_data_rate() {
    assert_eq!(smtplab::connection::MIN_DATA_RATE, 500);
    let server = common::start(&["--timeout", SHORT_TIMEOUT]);
    let mut slow = server.connect();
    slow.open_data("mary@client.example", &["bob@smtplab.test"]);
    let mut lines_sent = 0;
    while lines_sent < SLOW_LINES && !answer_within(&mut slow, LINE_PAUSE) {
        slow.send(b"still typing\r\n");
        lines_sent += 1;
    }
    let reply = slow.try_reply().expect("a reply before the close");
    assert_reply(&reply, 421, "4.4.2");
    assert!(
        lines_sent < SLOW_LINES,
        "the client kept the session for {lines_sent} lines"
    );
    assert!(slow.is_closed());
    server.wait_idle();
    assert_eq!(
        server.message_count("bob"),
        0,
        "nothing of the slow message is stored"
    );
    assert_still_serves(&server, "slow lines");
}

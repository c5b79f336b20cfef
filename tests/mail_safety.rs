//! The mbox is a shared file: mail readers rewrite it, other programs append to it under the
//! usual locks, and a second smtplab may be started by mistake. None of that may lose mail.
//! Each test drives the real binary (or the in-process server) on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_addr, have_tool, start_binary, Client, Killed, TempDir, READ_TIMEOUT};
use smtplab::store::mbox::parse_mboxrd;

/// A server process on `addr` with its mail directory and spool under `dir`.
fn start_in(dir: &Path, addr: SocketAddr, extra: &[&str]) -> Killed {
    let mut options: Vec<String> = vec![
        "--hostname".into(),
        "smtplab.test".into(),
        "--mail-dir".into(),
        dir.join("mail").display().to_string(),
        "--spool".into(),
        dir.join("spool").display().to_string(),
    ];
    options.extend(extra.iter().map(|s| s.to_string()));
    start_binary(addr, &options)
}

fn mbox_path(dir: &Path) -> PathBuf {
    dir.join("mail").join("alice")
}

/// Deliver one message to alice with this subject; asserts the 250.
fn deliver(addr: SocketAddr, subject: &str) {
    let mut client = Client::connect(addr);
    let content = format!("Subject: {subject}\r\n\r\nHello from {subject}.\r\nFrom here on\r\n");
    let reply = client.send_mail("mary@example.org", &["alice@localhost"], &content);
    assert_eq!(reply.code, 250, "{reply:?}");
}

/// The messages of alice's mbox with the status headers that mail readers add taken out.
fn contents_without_status(dir: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(mbox_path(dir)).expect("read mbox");
    parse_mboxrd(&bytes)
        .into_iter()
        .map(|m| {
            m.content
                .split_inclusive(|&b| b == b'\n')
                .filter(|line| !is_status_header(line))
                .flatten()
                .copied()
                .collect()
        })
        .collect()
}

/// Headers mutt and Python's `mailbox` add or change when they rewrite an mbox.
fn is_status_header(line: &[u8]) -> bool {
    ["Status:", "X-Status:", "Content-Length:", "Lines:"]
        .iter()
        .any(|name| line.starts_with(name.as_bytes()))
}

/// Deliver two, let `rewrite` change the file with the server stopped, restart, deliver one
/// more: three messages, the first two as they were apart from status headers.
fn rewrite_between_runs_keeps_every_message(tag: &str, rewrite: impl FnOnce(&Path)) {
    let dir = TempDir::new(tag);
    let addr = free_addr();
    let server = start_in(dir.path(), addr, &[]);
    deliver(addr, "one");
    deliver(addr, "two");
    drop(server);
    let before = contents_without_status(dir.path());
    assert_eq!(before.len(), 2);

    rewrite(dir.path());
    let rewritten = std::fs::read(mbox_path(dir.path())).expect("read");
    assert!(
        rewritten.windows(7).any(|w| w == b"Status:"),
        "the reader added no status header: {}",
        String::from_utf8_lossy(&rewritten)
    );

    let addr = free_addr();
    let server = start_in(dir.path(), addr, &[]);
    deliver(addr, "three");
    drop(server);
    let after = contents_without_status(dir.path());
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[..2], before[..], "the first two changed");
    assert!(String::from_utf8_lossy(&after[2]).contains("Subject: three\n"));
}

const PYTHON_SET_FLAGS: &str = r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1])
box.lock()
for key, message in box.iteritems():
    message.set_flags("RO")
    box[key] = message
box.flush()
box.unlock()
"#;

#[test]
fn python_mailbox_rewrite_then_restart_keeps_every_message() {
    if !have_tool("python3") {
        return;
    }
    rewrite_between_runs_keeps_every_message("python-rewrite", |dir| {
        let status = Command::new("python3")
            .args(["-c", PYTHON_SET_FLAGS])
            .arg(mbox_path(dir))
            .status()
            .expect("run python3");
        assert!(status.success());
    });
}

#[test]
fn mutt_read_then_restart_keeps_every_message() {
    if !common::on_path("tmux") || !common::on_path("mutt") {
        return;
    }
    rewrite_between_runs_keeps_every_message("mutt-rewrite", |dir| {
        // A tmux server of its own (`-L`), so the test never touches anyone's sessions.
        let socket = format!("smtplab-mutt-{}", std::process::id());
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .args(["-L", &socket])
                .args(args)
                .env("HOME", dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
                .expect("run tmux")
        };
        let _stop = TmuxServer(&tmux);
        let mutt = format!(
            "mutt -n -F /dev/null -e 'set folder={} move=no quit=yes mbox_type=mbox' -f {}",
            dir.display(),
            mbox_path(dir).display()
        );
        let started = tmux(&[
            "new-session",
            "-d",
            "-s",
            "mutt",
            "-x",
            "100",
            "-y",
            "30",
            &mutt,
        ]);
        assert!(started.status.success(), "tmux did not start");
        let screen = || {
            String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "mutt"]).stdout)
                .into_owned()
        };
        common::wait_until("mutt to show the index", || screen().contains("Msgs:2"));
        // Open the first message, back to the index, quit: mutt writes `Status:` headers.
        tmux(&["send-keys", "-t", "mutt", "Enter"]);
        common::wait_until("mutt to show the message", || {
            screen().contains("Hello from one.")
        });
        tmux(&["send-keys", "-t", "mutt", "q"]);
        common::wait_until("mutt to show the index", || screen().contains("Msgs:2"));
        tmux(&["send-keys", "-t", "mutt", "q"]);
        common::wait_until("mutt to quit", || {
            !tmux(&["has-session", "-t", "mutt"]).status.success()
        });
    });
}

/// Kills the test's own tmux server when dropped, also when an assertion fails.
struct TmuxServer<'a, F: Fn(&[&str]) -> std::process::Output>(&'a F);

impl<F: Fn(&[&str]) -> std::process::Output> Drop for TmuxServer<'_, F> {
    fn drop(&mut self) {
        (self.0)(&["kill-server"]);
    }
}

/// Every file under `root` with its bytes: hidden files, locks and records included.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::files_under(root)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path, bytes)
        })
        .collect()
}

#[test]
fn a_second_instance_on_the_same_port_changes_nothing() {
    let dir = TempDir::new("second-instance");
    let addr = free_addr();
    let _first = start_in(dir.path(), addr, &[]);
    deliver(addr, "one");
    // Another program appends a message: ours to keep, whoever wrote it.
    let mut mbox = std::fs::OpenOptions::new()
        .append(true)
        .open(mbox_path(dir.path()))
        .expect("open");
    mbox.write_all(b"From other@example.org Thu Jan  1 00:00:00 1970\nSubject: theirs\n\nhi\n\n")
        .expect("append");
    let before = snapshot(dir.path());

    let second = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .args(["--listen", &addr.to_string(), "--hostname", "smtplab.test"])
        .args(["--mail-dir", &dir.path().join("mail").display().to_string()])
        .args(["--spool", &dir.path().join("spool").display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second instance");
    let mut second = Killed(second);
    output_of(&mut second);
    let mut stderr = String::new();
    if let Some(mut pipe) = second.0.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("stderr");
    }
    let status = second.0.try_wait().expect("wait").expect("exited");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another program already uses that port"),
        "{stderr}"
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "the mail directory or spool changed"
    );
}

/// Python's `mailbox` appending `count` messages, each under `lock()` (`fcntl.lockf` and a
/// `.lock` file), retrying while smtplab holds the mailbox.
const PYTHON_APPENDER: &str = r#"
import mailbox, sys, time
box = mailbox.mbox(sys.argv[1])
for i in range(int(sys.argv[2])):
    while True:
        try:
            box.lock()
            break
        except mailbox.ExternalClashError:
            time.sleep(0.001)
    text = "Subject: %s-%d\n\npython body %d\nFrom a line that needs quoting\n"
    box.add(mailbox.mboxMessage(text % (sys.argv[3], i, i)))
    box.flush()
    box.unlock()
print("done")
"#;

const SESSIONS: usize = 4;
const PER_SESSION: usize = 500;
const PYTHON_MESSAGES: usize = 200;

/// One session delivering `PER_SESSION` messages to alice, a command at a time.
fn flood(addr: SocketAddr, session: usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut step = |send: &str, code: &str| {
        reader.get_mut().write_all(send.as_bytes()).expect("write");
        line.clear();
        reader.read_line(&mut line).expect("reply");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
    };
    step("", "220");
    step("HELO flood.test\r\n", "250");
    for n in 0..PER_SESSION {
        step("MAIL FROM:<load@flood.test>\r\n", "250");
        step("RCPT TO:<alice@localhost>\r\n", "250");
        step("DATA\r\n", "354");
        step(
            &format!("Subject: s{session}-m{n}\r\n\r\nbody s{session}-m{n}\r\n.\r\n"),
            "250",
        );
    }
}

/// Run `PYTHON_APPENDER`: `count` messages with subjects `prefix-0`, `prefix-1`, ...
fn python_appender(dir: &Path, count: usize, prefix: &str) -> Killed {
    let child = Command::new("python3")
        .args(["-c", PYTHON_APPENDER])
        .arg(mbox_path(dir))
        .arg(count.to_string())
        .arg(prefix)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    Killed(child)
}

#[test]
fn an_external_writer_under_fcntl_and_dotlock_interleaves_with_nothing() {
    if !have_tool("python3") {
        return;
    }
    let dir = TempDir::new("external-writer");
    let addr = free_addr();
    let server = start_in(dir.path(), addr, &[]);
    deliver(addr, "first"); // the mbox exists before Python opens it
    let mut python = python_appender(dir.path(), PYTHON_MESSAGES, "py");
    let started = Instant::now();
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|session| thread::spawn(move || flood(addr, session)))
        .collect();
    for session in sessions {
        session.join().expect("session");
    }
    let flooded = started.elapsed();
    assert!(output_of(&mut python).contains("done"), "python failed");
    println!(
        "{} smtplab deliveries in {flooded:?}; {PYTHON_MESSAGES} Python appends done after {:?}",
        SESSIONS * PER_SESSION,
        started.elapsed()
    );
    // More of Python's mail after smtplab's last delivery, then a restart: it stays too.
    assert!(output_of(&mut python_appender(dir.path(), 5, "late")).contains("done"));
    drop(server);
    let addr = free_addr();
    let _server = start_in(dir.path(), addr, &[]);
    deliver(addr, "last");

    let bytes = std::fs::read(mbox_path(dir.path())).expect("read");
    let messages = parse_mboxrd(&bytes);
    assert_eq!(
        messages.len(),
        2 + SESSIONS * PER_SESSION + PYTHON_MESSAGES + 5
    );
    let mut seen = std::collections::HashSet::new();
    for message in &messages {
        let text = String::from_utf8_lossy(&message.content);
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("no subject in {text:?}"));
        let expected_end = match subject.split_once('-') {
            Some(("py" | "late", i)) => {
                format!("\n\npython body {i}\nFrom a line that needs quoting\n")
            }
            Some(_) => format!("\n\nbody {subject}\n"),
            None => format!("\n\nHello from {subject}.\nFrom here on\n"),
        };
        assert!(
            text.ends_with(&expected_end),
            "message {subject} is not whole: {text:?}"
        );
        assert!(seen.insert(subject.to_string()), "{subject} twice");
    }
}

/// Wait (with a deadline) for a child to exit, and return what it printed.
fn output_of(child: &mut Killed) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the child did not finish");
        thread::sleep(Duration::from_millis(20));
    }
    let mut text = String::new();
    if let Some(mut out) = child.0.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut text).expect("stdout");
    }
    text
}

#[test]
fn a_delivery_past_the_mailbox_size_limit_is_refused_for_that_mailbox() {
    let server = common::start(&["--mailbox-size-limit", "4000"]);
    let content = format!("Subject: filler\r\n\r\n{}\r\n", "x".repeat(900));
    let mut refused = None;
    for _ in 0..10 {
        let reply = server
            .connect()
            .send_mail("mary@example.org", &["alice@localhost"], &content);
        if reply.code != 250 {
            refused = Some(reply);
            break;
        }
    }
    let reply = refused.expect("the mailbox filled up");
    common::assert_reply(&reply, 452, "4.2.2");
    let full = server.mbox("alice");
    assert!(full.len() <= 4000, "{} bytes", full.len());
    // Nothing of the refused message was written; another mailbox still takes mail.
    let again = server
        .connect()
        .send_mail("mary@example.org", &["alice@localhost"], &content);
    assert_eq!(again.code, 452);
    assert_eq!(server.mbox("alice"), full);
    let other = server
        .connect()
        .send_mail("mary@example.org", &["bob@localhost"], &content);
    assert_eq!(other.code, 250, "{other:?}");
}

/// An mbox of `octets` bytes holding one message, written by another program.
fn mbox_of(octets: usize) -> Vec<u8> {
    let mut mbox = b"From a@b Thu Jan  1 00:00:00 1970\nSubject: filler\n\n".to_vec();
    mbox.resize(octets - 1, b'x');
    mbox.push(b'\n');
    mbox
}

#[test]
fn a_full_mailbox_refuses_its_recipient_at_rcpt_and_the_others_get_the_message() {
    let dir = TempDir::new("rcpt-full");
    std::fs::create_dir_all(dir.path().join("mail")).expect("mkdir");
    let full = mbox_of(4000);
    std::fs::write(mbox_path(dir.path()), &full).expect("fill alice");
    let addr = free_addr();
    let _server = start_in(dir.path(), addr, &["--mailbox-size-limit", "4000"]);
    let mut client = Client::connect(addr);
    client.expect("EHLO client.example", 250);
    client.expect("MAIL FROM:<mary@example.org>", 250);
    let refused = client.cmd("RCPT TO:<alice@localhost>");
    common::assert_reply(&refused, 452, "4.2.2");
    assert!(refused.text().contains("alice"), "{refused:?}");
    client.expect("RCPT TO:<bob@localhost>", 250);
    client.expect("DATA", 354);
    client.send(b"Subject: for bob\r\n\r\nonly bob\r\n.\r\n");
    assert_eq!(client.reply().code, 250);
    assert_eq!(std::fs::read(mbox_path(dir.path())).expect("alice"), full);
    let bob = std::fs::read(dir.path().join("mail").join("bob")).expect("bob's mbox");
    let messages = parse_mboxrd(&bob);
    assert_eq!(messages.len(), 1);
    assert!(messages[0].content.ends_with(b"only bob\n"));

    // Room for a small message, but not for the size MAIL FROM declares (RFC 1870 §6.4).
    std::fs::write(mbox_path(dir.path()), mbox_of(3000)).expect("alice");
    client.expect("MAIL FROM:<mary@example.org> SIZE=999", 250);
    client.expect("RCPT TO:<alice@localhost>", 250);
    client.expect("RSET", 250);
    client.expect("MAIL FROM:<mary@example.org> SIZE=1001", 250);
    common::assert_reply(&client.cmd("RCPT TO:<alice@localhost>"), 452, "4.2.2");
}

/// 32 MiB of mail in alice's mbox: 320 messages of 100 KiB.
const MAILDROP_MESSAGES: usize = 320;
const MESSAGE_KIB: usize = 100;
/// What a POP3 login, LIST and one RETR may add to the server's peak memory: the index and
/// one message, with room for the allocator, far below the maildrop's 32 MiB.
const MAX_POP3_GROWTH_KIB: u64 = 8 * 1024;

/// Send a POP3 command and read its `+OK` response, to the final `.` if `multi_line`;
/// returns the octets read.
fn pop3(reader: &mut BufReader<TcpStream>, send: &str, multi_line: bool) -> usize {
    reader.get_mut().write_all(send.as_bytes()).expect("write");
    let mut octets = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .expect("read within the timeout");
        assert!(n > 0, "the server closed the connection");
        assert!(octets > 0 || line.starts_with("+OK"), "{send:?}: {line}");
        octets += n;
        if !multi_line || line == ".\r\n" {
            return octets;
        }
    }
}

#[test]
fn pop3_memory_does_not_grow_with_the_maildrop() {
    let dir = TempDir::new("pop3-memory");
    let mail = dir.path().join("mail");
    std::fs::create_dir_all(&mail).expect("mkdir");
    let body = format!("{}\n", "y".repeat(1023)).repeat(MESSAGE_KIB);
    let mut mbox =
        std::io::BufWriter::new(std::fs::File::create(mail.join("alice")).expect("mbox"));
    for n in 0..MAILDROP_MESSAGES {
        write!(
            mbox,
            "From a@b Thu Jan  1 00:00:00 1970\nSubject: {n}\n\n{body}\n"
        )
        .expect("write");
    }
    mbox.flush().expect("flush");
    drop(mbox);

    let (addr, pop3_addr) = (free_addr(), free_addr());
    let server = start_in(dir.path(), addr, &["--pop3", &pop3_addr.to_string()]);
    let pid = server.0.id();
    let stream = TcpStream::connect(pop3_addr).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    pop3(&mut reader, "", false);
    let before = common::peak_kib(pid);
    pop3(&mut reader, "USER alice\r\n", false);
    reader
        .get_mut()
        .write_all(b"PASS password\r\n")
        .expect("write");
    let mut line = String::new();
    reader.read_line(&mut line).expect("login");
    assert!(
        line.starts_with(&format!(
            "+OK alice's maildrop has {MAILDROP_MESSAGES} messages"
        )),
        "{line}"
    );
    pop3(&mut reader, "LIST\r\n", true);
    let retrieved = pop3(&mut reader, &format!("RETR {MAILDROP_MESSAGES}\r\n"), true);
    assert!(retrieved > MESSAGE_KIB * 1024, "{retrieved} octets");
    pop3(&mut reader, "QUIT\r\n", false);
    let after = common::peak_kib(pid);
    let growth = after.saturating_sub(before);
    println!("POP3 over a {} KiB maildrop: peak {before} KiB before login, {after} KiB after, growth {growth} KiB", MAILDROP_MESSAGES * MESSAGE_KIB);
    assert!(growth < MAX_POP3_GROWTH_KIB, "grew by {growth} KiB");
}

const PYTHON_FLAG_AND_APPEND: &str = r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1])
box.lock()
key, message = next(box.iteritems())
message.set_flags("RO")
box[key] = message
box.add(mailbox.mboxMessage("Subject: py\n\nadded during the POP3 session\n"))
box.flush()
box.unlock()
"#;

#[test]
fn pop3_quit_keeps_what_another_program_changed_during_the_session() {
    if !have_tool("python3") {
        return;
    }
    let dir = TempDir::new("pop3-concurrent");
    let (addr, pop3_addr) = (free_addr(), free_addr());
    let _server = start_in(dir.path(), addr, &["--pop3", &pop3_addr.to_string()]);
    for subject in ["one", "two", "three"] {
        deliver(addr, subject);
    }
    let stream = TcpStream::connect(pop3_addr).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    pop3(&mut reader, "", false);
    pop3(&mut reader, "USER alice\r\n", false);
    pop3(&mut reader, "PASS password\r\n", false);
    pop3(&mut reader, "DELE 2\r\n", false);
    // Python rewrites the mbox (a status header on "one", by rename) and appends "py".
    let status = Command::new("python3")
        .args(["-c", PYTHON_FLAG_AND_APPEND])
        .arg(mbox_path(dir.path()))
        .status()
        .expect("run python3");
    assert!(status.success());
    pop3(&mut reader, "QUIT\r\n", false);

    let subjects: Vec<String> = contents_without_status(dir.path())
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(m);
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(String::from))
        })
        .collect();
    for kept in ["one", "three", "py"] {
        assert!(
            subjects.iter().any(|s| s == kept),
            "{kept} lost: {subjects:?}"
        );
    }
    println!("after QUIT: {subjects:?}");
}

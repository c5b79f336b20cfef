//! POP3 end to end: mail goes in over SMTP and comes out over POP3 (a small Rust client here,
//! Python's poplib and curl when they are installed).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::{wait_until, TestServer};

fn start() -> TestServer {
    common::start(&["--pop3", "127.0.0.1:0"])
}

fn pop3_addr(server: &TestServer) -> SocketAddr {
    server.handle.pop3_addr().expect("a POP3 listener")
}

/// Send `content` (lines ending in CRLF, not dot-stuffed) to alice over SMTP.
fn deliver(server: &TestServer, content: &str) {
    let stuffed: String = content
        .split_inclusive("\r\n")
        .map(|line| {
            if line.starts_with('.') {
                format!(".{line}")
            } else {
                line.to_string()
            }
        })
        .collect();
    let reply =
        server
            .connect()
            .send_mail("mary@client.example", &["alice@smtplab.test"], &stuffed);
    assert_eq!(reply.code, 250, "{reply:?}");
}

fn simple(subject: &str) -> String {
    format!("Subject: {subject}\r\n\r\nHello from {subject}.\r\n")
}

/// A POP3 client whose every read has a timeout.
struct Pop3 {
    reader: BufReader<TcpStream>,
}

impl Pop3 {
    fn connect(addr: SocketAddr) -> Pop3 {
        let mut client = Pop3 {
            reader: BufReader::new(common::connect_with_timeouts(addr)),
        };
        let greeting = client.line();
        assert!(greeting.starts_with("+OK "), "{greeting}");
        client
    }

    /// One line without its CRLF; panics at end of file.
    fn line(&mut self) -> String {
        let mut raw = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut raw)
            .expect("read within the timeout");
        assert!(n > 0, "the server closed the connection");
        assert!(raw.ends_with(b"\r\n"), "line without CRLF: {raw:?}");
        String::from_utf8_lossy(&raw[..raw.len() - 2]).into_owned()
    }

    fn cmd(&mut self, line: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.line()
    }

    /// A command that must succeed; returns the text after `+OK`.
    fn ok(&mut self, line: &str) -> String {
        let response = self.cmd(line);
        assert!(response.starts_with("+OK"), "{line}: {response}");
        response.get(4..).unwrap_or("").to_string()
    }

    /// A multi-line command: the body with the stuffing removed, and the raw bytes as sent.
    fn multi(&mut self, line: &str) -> (Vec<u8>, Vec<u8>) {
        self.ok(line);
        let (mut body, mut raw) = (Vec::new(), Vec::new());
        loop {
            let mut one = Vec::new();
            let n = self.reader.read_until(b'\n', &mut one).expect("read");
            assert!(n > 0 && one.ends_with(b"\r\n"), "{line}: cut short");
            raw.extend_from_slice(&one);
            if one == b".\r\n" {
                return (body, raw);
            }
            let unstuffed = if one.starts_with(b".") {
                &one[1..]
            } else {
                &one
            };
            body.extend_from_slice(unstuffed);
        }
    }

    fn login(&mut self) {
        self.ok("USER alice");
        self.ok("PASS password");
    }

    /// STAT as (count, octets).
    fn stat(&mut self) -> (usize, usize) {
        let text = self.ok("STAT");
        let mut words = text.split(' ').map(|w| w.parse().expect("a number"));
        (words.next().expect("count"), words.next().expect("octets"))
    }

    fn listing(&mut self, command: &str) -> Vec<(usize, String)> {
        let (body, _) = self.multi(command);
        String::from_utf8(body)
            .expect("ASCII")
            .lines()
            .map(|l| {
                let (n, value) = l.split_once(' ').expect("n value");
                (n.parse().expect("n"), value.to_string())
            })
            .collect()
    }

    fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_until(b'\n', &mut rest), Ok(0))
    }
}

fn subjects(server: &TestServer) -> Vec<String> {
    smtplab::store::mbox::parse_mboxrd(&server.mbox("alice"))
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(&m.content).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

#[test]
fn a_rust_client_lists_reads_and_deletes() {
    let server = start();
    deliver(&server, &simple("one"));
    deliver(&server, &simple("two"));
    let mut pop = Pop3::connect(pop3_addr(&server));
    let capa = pop.multi("CAPA").0;
    assert!(String::from_utf8_lossy(&capa).contains("UIDL\r\n"));
    pop.login();
    let (count, octets) = pop.stat();
    assert_eq!(count, 2);
    let sizes = pop.listing("LIST");
    assert_eq!(sizes.len(), 2);
    let listed: usize = sizes
        .iter()
        .map(|(_, s)| s.parse::<usize>().expect("size"))
        .sum();
    assert_eq!(listed, octets);
    let uids = pop.listing("UIDL");
    assert_eq!(uids.len(), 2);
    assert_ne!(uids[0].1, uids[1].1);
    for (n, size) in &sizes {
        // The rule: LIST's size is the message after unstuffing, without the final ".".
        let (body, _) = pop.multi(&format!("RETR {n}"));
        assert_eq!(body.len().to_string(), *size, "message {n}");
        assert!(
            body.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'),
            "CRLF only"
        );
    }
    let (top, _) = pop.multi("TOP 1 0");
    assert!(top.ends_with(b"\r\n\r\n") && top.starts_with(b"Return-Path: "));
    assert!(String::from_utf8_lossy(&top).contains("Subject: one"));
    assert_eq!(pop.ok("DELE 1"), "Message 1 deleted (for good at QUIT)");
    assert!(pop.cmd("RETR 1").starts_with("-ERR"));
    assert_eq!(pop.stat().0, 1);
    assert!(pop.ok("QUIT").contains("1 message deleted"));
    assert!(pop.is_closed());
    assert_eq!(subjects(&server), ["two"]);
    // The survivor keeps its unique-id.
    let mut again = Pop3::connect(pop3_addr(&server));
    again.login();
    assert_eq!(again.listing("UIDL"), [(1, uids[1].1.clone())]);
    again.ok("QUIT");
}

#[test]
fn a_body_comes_back_byte_identical() {
    let server = start();
    let content = "Subject: tricky\r\n\r\n.\r\n..x\r\nFrom me\r\n>From x\r\n.end\r\nlast\r\n";
    deliver(&server, content);
    // Both encodings were applied on the way in: SMTP stuffing undone, mboxrd quoting done.
    let stored = server.mbox_text("alice");
    assert!(stored.contains("\n>From me\n>>From x\n"), "{stored}");
    let mut pop = Pop3::connect(pop3_addr(&server));
    pop.login();
    let (body, raw) = pop.multi("RETR 1");
    let body = String::from_utf8(body).expect("UTF-8");
    assert!(body.ends_with(content), "{body:?}");
    let header_end = body.find("\r\n\r\n").expect("header");
    assert_eq!(
        &body[header_end + 4..],
        ".\r\n..x\r\nFrom me\r\n>From x\r\n.end\r\nlast\r\n"
    );
    // And on the wire every line starting with "." was stuffed.
    let raw = String::from_utf8(raw).expect("UTF-8");
    assert!(
        raw.contains("\r\n..\r\n...x\r\nFrom me\r\n>From x\r\n..end\r\n"),
        "{raw:?}"
    );
    pop.ok("QUIT");
}

#[test]
fn mail_delivered_during_a_session_survives_the_quit() {
    let server = start();
    deliver(&server, &simple("old"));
    deliver(&server, &simple("kept"));
    let mut pop = Pop3::connect(pop3_addr(&server));
    pop.login();
    pop.ok("DELE 1");
    // SMTP still delivers while the POP3 session is in TRANSACTION.
    deliver(&server, &simple("new"));
    assert_eq!(subjects(&server), ["old", "kept", "new"]);
    assert_eq!(pop.stat().0, 1, "the session sees its snapshot");
    assert!(pop.ok("QUIT").contains("1 message deleted"));
    assert_eq!(subjects(&server), ["kept", "new"]);
}

#[test]
fn a_dropped_connection_deletes_nothing() {
    let server = start();
    deliver(&server, &simple("one"));
    deliver(&server, &simple("two"));
    let before = server.mbox("alice");
    let mut pop = Pop3::connect(pop3_addr(&server));
    pop.login();
    pop.ok("DELE 1");
    pop.ok("DELE 2");
    drop(pop);
    wait_until("the POP3 session to end", || {
        server.handle.pop3_sessions() == 0
    });
    assert_eq!(server.mbox("alice"), before);
    let mut again = Pop3::connect(pop3_addr(&server));
    again.login();
    assert_eq!(again.stat().0, 2);
    again.ok("QUIT");
    assert_eq!(
        server.mbox("alice"),
        before,
        "QUIT without DELE changes nothing"
    );
}

#[test]
fn a_second_login_is_told_the_maildrop_is_busy() {
    let server = start();
    deliver(&server, &simple("one"));
    let mut first = Pop3::connect(pop3_addr(&server));
    first.login();
    let mut second = Pop3::connect(pop3_addr(&server));
    second.ok("USER alice");
    let busy = second.cmd("PASS password");
    assert!(busy.starts_with("-ERR [IN-USE]"), "{busy}");
    // Another user is not affected.
    let mut bob = Pop3::connect(pop3_addr(&server));
    bob.ok("USER bob");
    bob.ok("PASS password");
    assert_eq!(bob.stat(), (0, 0));
    bob.ok("QUIT");
    first.ok("QUIT");
    // The lock is released before QUIT is answered, so a retry gets in at once.
    second.login();
    assert_eq!(second.stat().0, 1);
    second.ok("QUIT");
}

#[test]
fn a_wrong_password_gets_err_and_then_the_right_one_works() {
    let server = start();
    let mut pop = Pop3::connect(pop3_addr(&server));
    pop.ok("USER alice");
    let wrong = pop.cmd("PASS guess");
    assert!(wrong.starts_with("-ERR "), "{wrong}");
    assert!(
        pop.cmd("STAT").starts_with("-ERR"),
        "still in AUTHORIZATION"
    );
    pop.login();
    assert_eq!(pop.stat(), (0, 0));
    pop.ok("QUIT");
}

#[test]
fn unique_ids_are_stable_across_sessions() {
    let server = start();
    deliver(&server, &simple("one"));
    deliver(&server, &simple("two"));
    let mut listings = Vec::new();
    for _ in 0..2 {
        let mut pop = Pop3::connect(pop3_addr(&server));
        pop.login();
        listings.push(pop.listing("UIDL"));
        pop.ok("QUIT");
    }
    assert_eq!(listings[0].len(), 2);
    assert_eq!(listings[0], listings[1]);
    assert!(listings[0].iter().all(|(_, uid)| uid.len() == 16));
}

const POPLIB: &str = r#"
import poplib, sys
m = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=10)
m.user("alice")
m.pass_("password")
count, size = m.stat()
resp, listing, _ = m.list()
resp, uids, _ = m.uidl()
resp, lines, octets = m.retr(1)
m.dele(1)
print(count, size, len(listing), len(uids), octets, listing[0].split()[1].decode())
print(b"\n".join(lines).decode())
m.quit()
"#;

#[test]
fn python_poplib_fetches_lists_and_deletes() {
    if !common::have_tool("python3") {
        return;
    }
    let server = start();
    deliver(&server, &simple("first"));
    deliver(&server, &simple("second"));
    let out = Command::new("python3")
        .args(["-c", POPLIB, &pop3_addr(&server).port().to_string()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut words = stdout.lines().next().expect("a line").split(' ');
    assert_eq!(words.next(), Some("2"));
    let size: usize = words.next().expect("size").parse().expect("size");
    assert_eq!((words.next(), words.next()), (Some("2"), Some("2")));
    // poplib counts the octets it received, stuffing removed: what LIST announced.
    let octets = words.next().expect("octets");
    assert_eq!(Some(octets), words.next(), "RETR octets = LIST size");
    assert!(octets.parse::<usize>().expect("octets") < size);
    assert!(stdout.contains("Subject: first"), "{stdout}");
    assert!(stdout.contains("Hello from first."), "{stdout}");
    assert_eq!(subjects(&server), ["second"]);
}

#[test]
fn curl_fetches_message_one() {
    if !common::have_tool("curl") {
        return;
    }
    let server = start();
    deliver(&server, &simple("for curl"));
    let url = format!("pop3://{}/1", pop3_addr(&server));
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args([url.as_str(), "-u", "alice:password"])
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Subject: for curl\r\n"), "{stdout:?}");
    assert!(stdout.contains("Hello from for curl.\r\n"), "{stdout:?}");
    assert_eq!(subjects(&server), ["for curl"], "RETR deletes nothing");
}

/// Overwrite one octet of alice's mbox in place, as an editor that keeps the file would.
fn change_in_place(server: &TestServer, needle: &[u8]) {
    use std::os::unix::fs::FileExt;
    let path = server.mail_dir().join("alice");
    let bytes = std::fs::read(&path).expect("the mbox");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the text to change");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the mbox");
    file.write_all_at(b"X", at as u64).expect("write");
}

#[test]
fn a_message_changed_since_login_is_never_sent() {
    use smtplab::pop3::server::MboxMaildrops;
    use smtplab::pop3::session::{Maildrops, Wire};
    use smtplab::store::mbox::MailDir;
    let server = start();
    deliver(&server, "Subject: one\r\n\r\nfirst\r\n");
    deliver(&server, "Subject: two\r\n\r\nsecond\r\n");
    let maildrops = MboxMaildrops {
        mail_dir: MailDir::new(server.mail_dir()),
    };
    let opened = maildrops.open("alice").expect("open");
    let send = |index: usize| {
        let mut out: Vec<u8> = Vec::new();
        let mut wire = Wire::new(&mut out as &mut dyn Write, None, true);
        opened.source.send(index, &mut wire)
    };
    assert!(opened.source.verify(0).is_ok());
    assert!(send(0).is_ok());
    // Changed after login: refused before +OK (verify) and while streaming (send), so a
    // client never receives a whole response holding another message's bytes.
    change_in_place(&server, b"first");
    assert!(opened.source.verify(0).is_err());
    assert!(send(0).is_err());
    assert!(
        opened.source.verify(1).is_ok(),
        "the other message is unchanged"
    );
    assert!(send(1).is_ok());
}

#[test]
fn a_client_that_stops_reading_is_let_go_after_the_timeout() {
    // `--timeout 2`: a write that cannot move for 2 s ends the session, and with it the
    // maildrop lock, long before POP3's 10-minute autologout.
    let server = common::start(&["--pop3", "127.0.0.1:0", "--timeout", "2"]);
    let line = "y".repeat(998);
    let big: String = (0..2048).map(|_| format!("{line}\r\n")).collect();
    deliver(&server, &format!("Subject: big\r\n\r\n{big}"));
    let mut stalled = Pop3::connect(pop3_addr(&server));
    stalled.login();
    // Far more than the socket buffers hold: the server's writes block, and this client
    // never reads them.
    let pipelined = "RETR 1\r\n".repeat(20);
    stalled
        .reader
        .get_mut()
        .write_all(pipelined.as_bytes())
        .expect("write");
    wait_until("alice's maildrop to be free again", || {
        let mut next = Pop3::connect(pop3_addr(&server));
        next.ok("USER alice");
        let free = next.cmd("PASS password").starts_with("+OK");
        if free {
            next.ok("QUIT");
        }
        free
    });
    drop(stalled);
}

//! IMAP end to end: mail goes in over SMTP and is read, flagged and expunged over IMAP (a small
//! Rust client here; Python's imaplib, curl and mutt when they are installed).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_until, TempDir, TestServer};
use smtplab::config::{self, Config};
use smtplab::server::{Server, ServerHandle};

fn start() -> TestServer {
    common::start(&["--imap", "127.0.0.1:0", "--pop3", "127.0.0.1:0"])
}

fn imap_addr(server: &TestServer) -> SocketAddr {
    server.handle.imap_addr(false).expect("an IMAP listener")
}

/// A server over an existing mail directory (to restart one), with SMTP and IMAP.
fn start_in(dir: &Path) -> ServerHandle {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--imap",
        "127.0.0.1:0",
        "--hostname",
        "smtplab.test",
        "--mail-dir",
        &dir.join("mail").display().to_string(),
        "--spool",
        &dir.join("spool").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let matches = config::options().parse(&args).expect("options parse");
    let config = Config::from_matches(&matches).expect("valid options");
    Server::bind(config).expect("bind").spawn()
}

/// Send `content` (CRLF lines, not dot-stuffed) to alice over SMTP.
fn deliver(addr: SocketAddr, content: &str) {
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
    let reply = common::Client::connect(addr).send_mail(
        "mary@client.example",
        &["alice@smtplab.test"],
        &stuffed,
    );
    assert_eq!(reply.code, 250, "{reply:?}");
}

fn simple(subject: &str) -> String {
    format!("From: Mary <mary@client.example>\r\nSubject: {subject}\r\n\r\nHello from {subject}.\r\n.a line with a dot\r\n")
}

/// An IMAP client whose every read has a timeout.
struct Imap {
    reader: BufReader<TcpStream>,
    tags: u32,
}

/// What one command brought: the untagged responses (literals inline) and the tagged line.
struct Answer {
    untagged: Vec<Vec<u8>>,
    tagged: String,
}

impl Answer {
    fn ok(&self) -> bool {
        self.tagged.split(' ').nth(1) == Some("OK")
    }

    fn text(&self) -> String {
        self.untagged
            .iter()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .collect::<Vec<_>>()
            .join("")
    }
}

impl Imap {
    fn connect(addr: SocketAddr) -> Imap {
        let mut client = Imap {
            reader: BufReader::new(common::connect_with_timeouts(addr)),
            tags: 0,
        };
        let greeting = client.response();
        assert!(greeting.starts_with(b"* OK "), "{greeting:?}");
        client
    }

    fn login(addr: SocketAddr) -> Imap {
        let mut client = Imap::connect(addr);
        assert!(client.run("LOGIN alice password").ok());
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// One response: a line, and for each literal it announces, the octets and what follows.
    fn response(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            self.reader.read_until(b'\n', &mut line).expect("read");
            assert!(!line.is_empty(), "the server closed the connection");
            out.extend_from_slice(&line);
            let Some(size) = literal_size(&line) else {
                return out;
            };
            let mut literal = vec![0; size];
            self.reader.read_exact(&mut literal).expect("read literal");
            out.extend_from_slice(&literal);
        }
    }

    /// Send `tag command` and read up to the tagged response.
    fn run(&mut self, command: &str) -> Answer {
        self.tags += 1;
        let tag = format!("t{}", self.tags);
        self.send(format!("{tag} {command}\r\n").as_bytes());
        self.until(&tag)
    }

    fn until(&mut self, tag: &str) -> Answer {
        let mut untagged = Vec::new();
        loop {
            let response = self.response();
            if response.starts_with(format!("{tag} ").as_bytes()) {
                let tagged = String::from_utf8_lossy(&response).trim_end().to_string();
                return Answer { untagged, tagged };
            }
            untagged.push(response);
        }
    }

    /// BODY.PEEK[] of each message in order.
    fn bodies(&mut self) -> Vec<Vec<u8>> {
        let answer = self.run("FETCH 1:* BODY.PEEK[]");
        assert!(answer.ok(), "{}", answer.tagged);
        answer.untagged.iter().map(|u| literal_of(u)).collect()
    }

    /// `(uid, flags)` of each message in order.
    fn uids_and_flags(&mut self) -> Vec<(u32, String)> {
        let answer = self.run("FETCH 1:* (UID FLAGS)");
        assert!(answer.ok(), "{}", answer.tagged);
        answer
            .untagged
            .iter()
            .map(|u| {
                let text = String::from_utf8_lossy(u);
                let uid = text
                    .split("UID ")
                    .nth(1)
                    .unwrap()
                    .split([' ', ')'])
                    .next()
                    .unwrap();
                let flags = text
                    .split("FLAGS (")
                    .nth(1)
                    .unwrap()
                    .split(')')
                    .next()
                    .unwrap();
                (uid.parse().unwrap(), flags.to_string())
            })
            .collect()
    }
}

/// `{n}` at the end of a line (before CRLF).
fn literal_size(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let open = text.rfind('{')?;
    text.strip_suffix('}')?[open + 1..].parse().ok()
}

/// The octets of the (first) literal in a response.
fn literal_of(response: &[u8]) -> Vec<u8> {
    let end = response.iter().position(|&b| b == b'\n').unwrap() + 1;
    let size = literal_size(&response[..end]).expect("a literal");
    response[end..end + size].to_vec()
}

/// The message as stored, in the CRLF form IMAP serves.
fn stored_crlf(server_mbox: &[u8]) -> Vec<Vec<u8>> {
    smtplab::store::mbox::parse_mboxrd(server_mbox)
        .into_iter()
        .map(|m| smtplab::pop3::session::to_crlf(&m.content))
        .collect()
}

#[test]
fn select_sees_exactly_the_mbox_and_bodies_are_byte_identical() {
    let server = start();
    let sent: Vec<String> = (1..=3).map(|i| simple(&format!("message {i}"))).collect();
    for content in &sent {
        deliver(server.addr(), content);
    }
    let mut imap = Imap::login(imap_addr(&server));
    let select = imap.run("SELECT INBOX");
    assert!(select.ok(), "{}", select.tagged);
    assert!(
        select.text().contains("* 3 EXISTS\r\n"),
        "{}",
        select.text()
    );
    let bodies = imap.bodies();
    assert_eq!(bodies, stored_crlf(&server.mbox("alice")));
    for (body, content) in bodies.iter().zip(&sent) {
        assert_eq!(
            common::without_trace_headers(body),
            content.as_bytes(),
            "what SMTP accepted, after the trace headers"
        );
    }
    let peeked = imap.uids_and_flags();
    assert!(
        peeked.iter().all(|(_, flags)| flags.is_empty()),
        "PEEK sets no flag: {peeked:?}"
    );
    assert!(imap.run("LOGOUT").ok());
}

#[test]
fn store_deleted_and_expunge_remove_exactly_those_messages() {
    let server = start();
    for i in 1..=4 {
        deliver(server.addr(), &simple(&format!("message {i}")));
    }
    let before = stored_crlf(&server.mbox("alice"));
    let mut imap = Imap::login(imap_addr(&server));
    imap.run("SELECT INBOX");
    let store = imap.run("STORE 2,4 +FLAGS (\\Deleted)");
    assert!(
        store.text().contains("* 2 FETCH (FLAGS (\\Deleted))"),
        "{}",
        store.text()
    );
    assert!(
        server.mbox_text("alice").contains("X-Status: D\n"),
        "flags are in the file"
    );
    assert_eq!(
        server.message_count("alice"),
        4,
        "STORE alone removes nothing"
    );
    let expunge = imap.run("EXPUNGE");
    assert_eq!(expunge.text(), "* 4 EXPUNGE\r\n* 2 EXPUNGE\r\n");
    let after = stored_crlf(&server.mbox("alice"));
    assert_eq!(after, [before[0].clone(), before[2].clone()]);
    assert_eq!(imap.bodies(), after, "the client sees what the file holds");
}

#[test]
fn flags_and_uids_survive_a_restart_and_an_external_rewrite() {
    let dir = TempDir::new("imap-restart");
    let first = start_in(dir.path());
    for i in 1..=3 {
        deliver(first.addr(), &simple(&format!("message {i}")));
    }
    let imap_at = |handle: &ServerHandle| handle.imap_addr(false).expect("IMAP");
    let mut imap = Imap::login(imap_at(&first));
    imap.run("SELECT INBOX");
    assert!(imap.run("STORE 2 +FLAGS (\\Seen \\Flagged)").ok());
    assert!(imap.run("STORE 3 +FLAGS (\\Answered)").ok());
    let before = imap.uids_and_flags();
    imap.run("LOGOUT");
    drop(first);

    let second = start_in(dir.path());
    let mut imap = Imap::login(imap_at(&second));
    let select = imap.run("SELECT INBOX");
    let validity = select
        .text()
        .split("UIDVALIDITY ")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(imap.uids_and_flags(), before, "after a restart");
    imap.run("LOGOUT");

    // Another program rewrites the file as mutt does: new Content-Length and Lines headers,
    // the Status header rewritten, under the same dotlock.
    let path = dir.path().join("mail/alice");
    let text = std::fs::read_to_string(&path).unwrap();
    let rewritten = text
        .replace(
            "Subject: message 1\n",
            "Subject: message 1\nContent-Length: 40\nLines: 2\n",
        )
        .replace(
            "Status: RO\nX-Status: F\n",
            "Status: RO\nX-Status: F\nX-Keywords: \n",
        );
    assert_ne!(rewritten, text);
    std::fs::write(&path, rewritten).unwrap();
    let mut imap = Imap::login(imap_at(&second));
    let select = imap.run("SELECT INBOX");
    assert!(
        select.text().contains(&format!("UIDVALIDITY {validity}]")),
        "{}",
        select.text()
    );
    assert_eq!(
        imap.uids_and_flags(),
        before,
        "after a rewrite by another program"
    );
}

#[test]
fn idle_reports_mail_delivered_meanwhile_within_a_second() {
    let server = start();
    deliver(server.addr(), &simple("first"));
    let mut imap = Imap::login(imap_addr(&server));
    imap.run("SELECT INBOX");
    imap.send(b"idle IDLE\r\n");
    assert!(imap.response().starts_with(b"+ "));
    deliver(server.addr(), &simple("second"));
    let delivered = Instant::now();
    assert_eq!(imap.response(), b"* 2 EXISTS\r\n");
    println!("EXISTS {:?} after the 250", delivered.elapsed());
    imap.send(b"DONE\r\n");
    let done = imap.until("idle");
    assert!(done.ok(), "{}", done.tagged);
    assert_eq!(imap.bodies().len(), 2);
}

#[test]
fn imap_and_pop3_on_one_mailbox_exclude_each_other() {
    let server = start();
    deliver(server.addr(), &simple("one"));
    let mut imap = Imap::login(imap_addr(&server));
    assert!(imap.run("SELECT INBOX").ok());
    let pop3 = common::connect_with_timeouts(server.handle.pop3_addr().unwrap());
    let mut pop3 = BufReader::new(pop3);
    let mut line = String::new();
    pop3.read_line(&mut line).unwrap();
    pop3.get_mut()
        .write_all(b"USER alice\r\nPASS password\r\n")
        .unwrap();
    line.clear();
    pop3.read_line(&mut line).unwrap();
    line.clear();
    pop3.read_line(&mut line).unwrap();
    assert!(line.starts_with("-ERR [IN-USE]"), "{line}");
    let mut second = Imap::login(imap_addr(&server));
    let busy = second.run("EXAMINE INBOX");
    assert!(busy.tagged.contains("NO [INUSE]"), "{}", busy.tagged);
    assert!(imap.run("UNSELECT").ok());
    assert!(second.run("EXAMINE INBOX").ok(), "free again");
}

#[test]
fn literals_bad_input_and_the_error_budget() {
    let server = start();
    let mut imap = Imap::connect(imap_addr(&server));
    imap.send(b"a LOGIN {5}\r\n");
    assert!(
        imap.response().starts_with(b"+ "),
        "a synchronizing literal waits for +"
    );
    imap.send(b"alice {8+}\r\npassword\r\n");
    let login = imap.until("a");
    assert!(login.ok(), "{}", login.tagged);
    let big = imap.run(&format!("LOGIN {{{}}}", 1 << 20));
    assert!(
        big.tagged.contains(" BAD Literal too large"),
        "{}",
        big.tagged
    );
    let long = imap.run(&format!("NOOP {}", "x".repeat(20_000)));
    assert!(
        long.tagged.contains(" BAD Command line too long"),
        "{}",
        long.tagged
    );
    let mut last = String::new();
    for _ in 0..20 {
        imap.send(b"x FETCH\r\n");
        let response = String::from_utf8_lossy(&imap.response()).into_owned();
        if response.starts_with("* BYE") {
            last = response;
            break;
        }
    }
    assert!(last.contains("Too many errors"), "{last}");
}

#[test]
fn implicit_tls_and_starttls() {
    let server = common::start_tls(&["--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0"]);
    let connector = common::tls_connector();
    let tcp = common::connect_with_timeouts(server.handle.imap_addr(true).unwrap());
    let mut tls = connector.connect(common::TLS_HOST, tcp).expect("handshake");
    let mut greeting = [0u8; 256];
    let n = tls.read(&mut greeting).unwrap();
    assert!(
        greeting[..n].starts_with(b"* OK [CAPABILITY"),
        "{:?}",
        String::from_utf8_lossy(&greeting[..n])
    );
    let mut plain = Imap::connect(server.handle.imap_addr(false).unwrap());
    let caps = plain.run("CAPABILITY");
    assert!(caps.text().contains(" STARTTLS"), "{}", caps.text());
    // A command sent in the clear behind STARTTLS must not run inside TLS (CVE-2011-0411).
    plain.send(b"s STARTTLS\r\ninjected LOGIN alice password\r\n");
    assert!(plain.until("s").ok());
    let tcp = plain.reader.into_inner();
    let mut tls = connector.connect(common::TLS_HOST, tcp).expect("handshake");
    tls.write_all(b"c CAPABILITY\r\n").unwrap();
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    while !text.ends_with(b"c OK CAPABILITY completed\r\n") {
        assert_eq!(tls.read(&mut byte).unwrap(), 1);
        text.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(!text.contains("STARTTLS"), "not offered twice");
    assert!(
        !text.contains("injected"),
        "the plaintext behind STARTTLS was dropped: {text}"
    );
    assert!(text.contains("AUTH=PLAIN"), "still not logged in: {text}");
}

/// Run a Python script with the IMAP port, the SMTP port and the mail directory as arguments.
fn python(script: &str, args: &[String]) -> Option<common::ToolRun> {
    if !common::have_tool("python3") {
        return None;
    }
    let mut command = Command::new("python3");
    command.arg("-c").arg(script).args(args);
    Some(common::run_tool(&mut command, b"", Duration::from_secs(30)))
}

const IMAPLIB: &str = r#"
import imaplib, mailbox, smtplib, sys, time
imap_port, smtp_port, mail_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def deliver(subject):
    s = smtplib.SMTP("127.0.0.1", smtp_port, timeout=10)
    s.sendmail("mary@client.example", ["alice@smtplab.test"],
               "Subject: %s\r\n\r\nBody of %s\r\n" % (subject, subject))
    s.quit()
for i in range(3):
    deliver("m%d" % i)
m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
m.login("alice", "password")
typ, data = m.select("INBOX")
assert data == [b"3"], data
stored = [msg.as_bytes() for msg in mailbox.mbox(mail_dir + "/alice")]
for n in range(1, 4):
    typ, data = m.fetch(str(n), "(BODY.PEEK[])")
    body = data[0][1]
    assert body.replace(b"\r\n", b"\n") == stored[n - 1], (body, stored[n - 1])
    assert body.endswith(b"Subject: m%d\r\n\r\nBody of m%d\r\n" % (n - 1, n - 1)), body
typ, data = m.uid("FETCH", "1:*", "(UID)")
uids_before = [int(x.split(b"UID ")[1].rstrip(b")")) for x in data]
m.store("3", "+FLAGS", "(\\Flagged)")
m.logout()
# An external rewrite: Python's mailbox writes the file anew (and drops the first message).
box = mailbox.mbox(mail_dir + "/alice")
box.lock()
box.remove(box.keys()[0])
box.flush()
box.unlock()
m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
m.login("alice", "password")
m.select("INBOX")
typ, data = m.uid("FETCH", "1:*", "(UID FLAGS)")
assert [int(x.split(b"UID ")[1].split(b" ")[0]) for x in data] == uids_before[1:], data
assert b"\\Flagged" in data[1], data
print("imaplib ok")
"#;

#[test]
fn python_imaplib_reads_flags_and_keeps_uids_across_a_mailbox_flush() {
    let server = start();
    let args = [
        imap_addr(&server).port().to_string(),
        server.addr().port().to_string(),
        server.mail_dir().display().to_string(),
    ];
    let Some(run) = python(IMAPLIB, &args) else {
        return;
    };
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("imaplib ok"));
}

#[test]
fn curl_retrieves_a_message_by_uid() {
    if !common::have_tool("curl") {
        return;
    }
    let server = start();
    deliver(server.addr(), &simple("for curl"));
    let url = format!("imap://{}/INBOX;UID=1", imap_addr(&server));
    let run = common::run_tool(
        Command::new("curl").args(["-s", "--max-time", "10", "-u", "alice:password", &url]),
        b"",
        Duration::from_secs(15),
    );
    assert!(run.success, "{}", run.stderr);
    assert!(run.stdout.contains("Subject: for curl"), "{}", run.stdout);
    assert!(run.stdout.contains("Hello from for curl."));
}

#[test]
fn mutt_lists_the_mailbox_over_imap() {
    if !common::have_tool_with("mutt", &["-v"]) || !common::have_tool_with("tmux", &["-V"]) {
        return;
    }
    let server = start();
    deliver(server.addr(), &simple("seen by mutt"));
    let dir = TempDir::new("imap-mutt");
    let muttrc = dir.path().join("muttrc");
    let addr = imap_addr(&server);
    std::fs::write(
        &muttrc,
        format!(
            "set imap_user=alice\nset imap_pass=password\nset folder=imap://{addr}/\nset spoolfile=imap://{addr}/INBOX\nset ssl_starttls=no\nset ssl_force_tls=no\nset imap_passive=no\nset header_cache=\nset message_cachedir=\nset sort=date\n"
        ),
    )
    .unwrap();
    let session = format!("smtplab-imap-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .expect("tmux")
    };
    let _stop = KillTmux(session.clone());
    let mutt = format!("TERM=xterm mutt -n -F {}", muttrc.display());
    tmux(&["new-session", "-d", "-x", "120", "-y", "30", &mutt]);
    let mut screen = String::new();
    wait_until("mutt to list the message", || {
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).into_owned();
        screen.contains("seen by mutt")
    });
    assert!(screen.contains("Mary"), "{screen}");
    tmux(&["send-keys", "q"]);
}

#[test]
fn a_mutt_rewrite_keeps_uids_and_its_flags_show_over_imap() {
    if !common::have_tool_with("mutt", &["-v"]) || !common::have_tool_with("tmux", &["-V"]) {
        return;
    }
    let server = start();
    for i in 1..=3 {
        deliver(server.addr(), &simple(&format!("mutt {i}")));
    }
    let mut imap = Imap::login(imap_addr(&server));
    imap.run("SELECT INBOX");
    assert!(imap.run("STORE 1 +FLAGS (\\Seen)").ok());
    let before = imap.uids_and_flags();
    imap.run("LOGOUT");
    // mutt opens the file itself, flags a message and writes the mailbox back ($): it adds
    // Content-Length and Lines headers and rewrites Status, under the dotlock.
    let dir = TempDir::new("imap-mutt-file");
    let muttrc = dir.path().join("muttrc");
    let settings = format!(
        "set folder={}\nset mbox_type=mbox\nset move=no\nset sort=date\n",
        dir.path().display()
    );
    std::fs::write(&muttrc, settings).unwrap();
    let session = format!("smtplab-imap-file-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .expect("tmux")
    };
    let _stop = KillTmux(session.clone());
    let mbox = server.mail_dir().join("alice");
    let mutt = format!(
        "TERM=xterm mutt -n -F {} -f {}",
        muttrc.display(),
        mbox.display()
    );
    tmux(&["new-session", "-d", "-x", "120", "-y", "30", &mutt]);
    wait_until("mutt to show the mailbox", || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).contains("mutt 3")
    });
    // mutt opens at the first unread message: number 2.
    tmux(&["send-keys", "F", "$"]);
    wait_until("mutt to write the file", || {
        server.mbox_text("alice").contains("X-Status: F")
    });
    tmux(&["send-keys", "q"]);
    assert!(
        server.mbox_text("alice").contains("Lines: "),
        "mutt rewrote the file"
    );
    let mut imap = Imap::login(imap_addr(&server));
    imap.run("SELECT INBOX");
    let after = imap.uids_and_flags();
    let uids = |list: &[(u32, String)]| list.iter().map(|(uid, _)| *uid).collect::<Vec<_>>();
    assert_eq!(
        uids(&after),
        uids(&before),
        "the same UIDs after mutt's rewrite"
    );
    assert_eq!(after[0].1, "\\Seen", "the flag IMAP set, kept by mutt");
    assert_eq!(after[1].1, "\\Flagged", "the flag mutt set, seen over IMAP");
}

/// Ends a tmux server (its own socket) when the test ends, however it ends.
struct KillTmux(String);

impl Drop for KillTmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[test]
fn codes_only_replay_compares_the_tagged_status() {
    use smtplab::lab::replay::{replay, ReplayOptions};
    use smtplab::lab::transcript::Transcript;
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/transcripts/70-imap-session.txt"
    );
    let text = std::fs::read_to_string(golden).unwrap();
    let reworded = text.replace("a6 OK SEARCH completed", "a6 OK nothing unseen");
    let wrong = text.replace("a6 OK SEARCH completed", "a6 NO SEARCH completed");
    let codes_only = ReplayOptions {
        codes_only: true,
        ..ReplayOptions::default()
    };
    let run = |text: &str, options: &ReplayOptions| {
        let server = start();
        deliver(
            server.addr(),
            "From: <mary@client.example>\r\nSubject: Hello\r\n\r\nHi!\r\n",
        );
        replay(
            &Transcript::parse(text).unwrap(),
            imap_addr(&server),
            options,
        )
    };
    assert!(!run(&reworded, &ReplayOptions::default()).is_match());
    let loose = run(&reworded, &codes_only);
    assert!(loose.is_match(), "{}", loose.render(false));
    assert!(!run(&wrong, &codes_only).is_match(), "OK is not NO");
}

#[test]
fn compare_sends_an_imap_session_to_replay() {
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/transcripts/70-imap-session.txt"
    );
    let smtp = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/transcripts/01-seed-session.txt"
    );
    let args = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
    assert_eq!(
        smtplab::lab::compare::compare_main(&args(golden, golden)),
        2
    );
    assert_eq!(smtplab::lab::compare::compare_main(&args(smtp, golden)), 2);
    assert_eq!(smtplab::lab::compare::compare_main(&args(smtp, smtp)), 0);
}

#[test]
fn flag_rewrites_lose_nothing_smtp_delivers_meanwhile() {
    const MESSAGES: usize = 30;
    let server = start();
    deliver(server.addr(), &simple("first"));
    let smtp = server.addr();
    let sender = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            deliver(smtp, &simple(&format!("during {i}")));
        }
    });
    let mut imap = Imap::login(imap_addr(&server));
    assert!(imap.run("SELECT INBOX").ok());
    let mut rewrites = 0;
    while !sender.is_finished() || rewrites == 0 {
        let flag = if rewrites % 2 == 0 { "+" } else { "-" };
        assert!(imap
            .run(&format!("STORE 1:* {flag}FLAGS.SILENT (\\Seen)"))
            .ok());
        assert!(imap.run("NOOP").ok());
        rewrites += 1;
    }
    sender.join().expect("the sender");
    let noop = imap.run("NOOP");
    assert!(noop.ok());
    assert_eq!(server.message_count("alice"), MESSAGES + 1, "none lost");
    assert_eq!(
        imap.bodies().len(),
        MESSAGES + 1,
        "the client was told of each"
    );
    let uids = imap.uids_and_flags();
    assert!(
        uids.windows(2).all(|w| w[0].0 < w[1].0),
        "UIDs grow: {uids:?}"
    );
    println!("{rewrites} flag rewrites while {MESSAGES} messages were delivered");
}

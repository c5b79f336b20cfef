//! smtplab and a real Postfix relay mail to each other, both ways, over loopback. The test builds
//! a private Postfix instance in a temporary directory (its own main.cf and master.cf, smtpd on
//! a free port of 127.0.0.26, STARTTLS with a certificate made by `openssl`, mail for `pf.test`
//! stored in one mbox file, everything else relayed to smtplab) and runs its master daemon in
//! the foreground as a child, stopped when the test ends, also on a failed assertion. Postfix
//! needs root to start; without it, without Postfix or without openssl the test prints
//! `SKIP:` and returns. It never touches the system's Postfix or port 25.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    have_tool_with, on_path, run_tool, wait_until, without_trace_headers, Client, TempDir,
    TestServer, READ_TIMEOUT,
};
use smtplab::relay::queue::Spool;
use smtplab::store::mbox::{parse_mboxrd, StoredMessage};

/// Postfix listens here: an address of its own, so it can never meet another test's port.
const POSTFIX_IP: &str = "127.0.0.26";
/// The domain Postfix stores mail for.
const POSTFIX_DOMAIN: &str = "pf.test";
/// Postfix's `message_size_limit`, far below smtplab's.
const POSTFIX_SIZE_LIMIT: usize = 200_000;
/// How long Postfix gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The Postfix user's uid and gid (the owner of its queue and of the mail it stores).
fn postfix_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, "postfix"]).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Whether this machine can run a private Postfix; prints the reason when it cannot.
fn postfix_can_run() -> Option<(u32, u32)> {
    if !on_path("postconf") {
        println!("SKIP: postfix not installed");
        return None;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: postfix needs root to start its master daemon");
        return None;
    }
    if !have_tool_with("openssl", &["version"]) {
        return None;
    }
    let ids = postfix_ids();
    if ids.is_none() {
        println!("SKIP: postfix is installed but there is no postfix user");
    }
    ids
}

/// A free port on `ip`: bind port 0, note it, close the socket.
fn free_port(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    listener.local_addr().expect("addr")
}

/// A private Postfix: config in `dir/etc`, queue in `dir/queue`, mail for pf.test appended to
/// `dir/mail/inbox`, its log in `dir/maillog`. Stopped (SIGTERM to the master, which stops its
/// children; then SIGKILL to the whole process group) and removed when dropped.
struct Postfix {
    master: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Postfix {
    /// Configure and start Postfix on `addr`, relaying every other domain to `relayhost`.
    fn start(addr: SocketAddr, relayhost: SocketAddr, (uid, gid): (u32, u32)) -> Postfix {
        let dir = TempDir::new("postfix");
        let root = dir.path();
        for sub in ["etc", "queue", "data", "mail"] {
            std::fs::create_dir_all(root.join(sub)).expect("create a Postfix directory");
        }
        for owned in ["data", "mail"] {
            std::os::unix::fs::chown(root.join(owned), Some(uid), Some(gid)).expect("chown");
        }
        make_certificate(&root.join("etc"));
        std::fs::write(root.join("etc/main.cf"), main_cf(root, relayhost, uid, gid))
            .expect("main.cf");
        std::fs::write(root.join("etc/master.cf"), master_cf(addr)).expect("master.cf");
        let etc = root.join("etc");
        // `postfix check` creates the queue's subdirectories with the right owners.
        let check = run_tool(
            Command::new("postfix").arg("-c").arg(&etc).arg("check"),
            b"",
            READ_TIMEOUT,
        );
        assert!(check.success, "postfix check: {}", check.stderr);
        let master = Command::new(daemon_directory(&etc).join("master"))
            .arg("-c")
            .arg(&etc)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Postfix master");
        let mut postfix = Postfix { master, addr, dir };
        wait_until("Postfix to greet", || postfix.greets());
        postfix
    }

    /// True once smtpd answers with 220 (the session ends with QUIT, so Postfix logs nothing
    /// unusual); panics if the master has died.
    fn greets(&mut self) -> bool {
        if let Ok(Some(status)) = self.master.try_wait() {
            panic!("the Postfix master exited with {status}:\n{}", self.log());
        }
        let Ok(stream) = TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
        let mut client = Client::over(stream);
        client.expect("QUIT", 221);
        client.greeting.code == 220
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// What Postfix stored for pf.test (its mbox: `From ` lines, `>From ` quoting).
    fn inbox(&self) -> String {
        let path = self.dir.path().join("mail/inbox");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// The log's warning, error and fatal lines.
    fn complaints(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                ["warning:", "error:", "fatal:", "panic:"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(String::from)
            .collect()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = self.master.id() as libc::pid_t;
        // SAFETY: kill only sends a signal; `pid` is our own child, not yet reaped, so the id
        // cannot belong to another process. The master leads its own process group (same id).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(self.master.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the group id stays reserved while any member of the group lives, so
        // this reaches only Postfix processes left behind (or nothing: ESRCH).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

/// Where Postfix keeps its daemons (`master`, `smtpd`, ...), as its own `postconf` says.
fn daemon_directory(etc: &Path) -> PathBuf {
    let output = Command::new("postconf")
        .arg("-c")
        .arg(etc)
        .args(["-h", "daemon_directory"])
        .output()
        .expect("postconf");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A throwaway self-signed certificate for Postfix's STARTTLS: `etc/cert.pem`, `etc/key.pem`.
fn make_certificate(etc: &Path) {
    let made = run_tool(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=mx.pf.test", "-keyout"])
            .arg(etc.join("key.pem"))
            .arg("-out")
            .arg(etc.join("cert.pem")),
        b"",
        READ_TIMEOUT,
    );
    assert!(made.success, "openssl req: {}", made.stderr);
}

/// main.cf: loopback only, no DNS, no header rewriting; pf.test to one mbox file, the rest to
/// `relayhost`; STARTTLS both ways with the handshakes logged.
fn main_cf(root: &Path, relayhost: SocketAddr, uid: u32, gid: u32) -> String {
    let root = root.display();
    format!(
        "compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
myhostname = mx.{POSTFIX_DOMAIN}
mydomain = {POSTFIX_DOMAIN}
myorigin = {POSTFIX_DOMAIN}
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
message_size_limit = {POSTFIX_SIZE_LIMIT}
smtpd_peername_lookup = no
smtp_host_lookup = native
local_header_rewrite_clients =
alias_maps =
alias_database =
relayhost = [{ip}]:{port}
virtual_mailbox_domains = {POSTFIX_DOMAIN}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:inbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
smtpd_tls_cert_file = {root}/etc/cert.pem
smtpd_tls_key_file = {root}/etc/key.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtp_tls_security_level = may
smtp_tls_loglevel = 1
",
        ip = relayhost.ip(),
        port = relayhost.port(),
    )
}

/// master.cf: smtpd on `addr` only, and the services a queue needs; nothing chrooted.
fn master_cf(addr: SocketAddr) -> String {
    let services = [
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "virtual unix - n n - - virtual",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ];
    format!("{addr} inet n - n - - smtpd\n{}\n", services.join("\n"))
}

/// One message, dot-stuffed on the wire (RFC 5321 §4.5.2): the sender with its MAIL FROM
/// parameters, and the recipient as RCPT TO's argument (`<path>` and any parameters). Asserts
/// every step and returns the reply code to the final dot.
fn send(to_server: SocketAddr, (from, params): (&str, &str), to: &str, content: &str) -> u16 {
    let mut client = Client::connect(to_server);
    client.expect("EHLO client.example", 250);
    client.expect(&format!("MAIL FROM:<{from}>{params}"), 250);
    client.expect(&format!("RCPT TO:{to}"), 250);
    client.expect("DATA", 354);
    let stuffed = content.replace("\r\n.", "\r\n..");
    client.send(stuffed.as_bytes());
    client.send(b".\r\n");
    let code = client.reply().code;
    client.cmd("QUIT");
    code
}

/// smtplab for one.test with STARTTLS, sending all foreign mail to Postfix.
fn start_smtplab(postfix: SocketAddr) -> TestServer {
    let postfix = postfix.to_string();
    #[rustfmt::skip]
    let options = [
        "--hostname", "mx.one.test", "--domain", "one.test", "--relay-from", "127.0.0.0/8",
        "--smart-host", &postfix, "--tls-self-signed", "--retry", "1s",
    ];
    common::start(&options)
}

/// A message whose body tests transparency: 8-bit text, a line that starts with a dot, one
/// that starts with "From ", a long line and trailing spaces.
fn tricky_message(from: &str, to: &str, marker: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{marker}@{POSTFIX_DOMAIN}>\r\nSubject: {marker}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n\
         {marker}: grüße, ça va?\r\n.a line with a leading dot\r\n..two dots\r\n\
         From the start of a line\r\ntrailing spaces   \r\n{}\r\n",
        "x".repeat(900)
    )
}

/// smtplab for one.test and Postfix for pf.test, each relaying the other's domain to the other.
struct Lab {
    smtplab: TestServer,
    postfix: Postfix,
}

impl Lab {
    fn start(ids: (u32, u32)) -> Lab {
        let postfix_addr = free_port(POSTFIX_IP);
        let smtplab = start_smtplab(postfix_addr);
        let postfix = Postfix::start(postfix_addr, smtplab.addr(), ids);
        Lab { smtplab, postfix }
    }

    /// The first message in `user`'s smtplab mbox that contains `marker`, once it is there.
    fn smtplab_message(&self, user: &str, marker: &str) -> StoredMessage {
        let find = || {
            parse_mboxrd(&self.smtplab.mbox(user))
                .into_iter()
                .find(|m| String::from_utf8_lossy(&m.content).contains(marker))
        };
        wait_until(&format!("{marker:?} in {user}'s mbox"), || find().is_some());
        find().expect("the message")
    }

    /// The first message Postfix stored that contains `marker` (mbox `>From ` quoting undone).
    fn postfix_message(&self, marker: &str) -> String {
        let find = || {
            parse_mboxrd(self.postfix.inbox().as_bytes())
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m.content).into_owned())
                .find(|m| m.contains(marker))
        };
        wait_until(&format!("{marker:?} in Postfix's mailbox"), || {
            find().is_some()
        });
        find().expect("the message")
    }

    fn smtplab_queue_empties(&self) {
        let spool = Spool::new(self.smtplab.dir.path().join("spool"));
        wait_until("smtplab's queue to empty", || spool.load_all().is_empty());
    }
}

/// smtplab relays a UTF-8-addressed, 8-bit message to Postfix over STARTTLS; Postfix stores it
/// unchanged.
fn smtplab_relays_to_postfix(lab: &Lab) {
    let outbound = tricky_message("josé@one.test", "zoë@pf.test", "to-postfix");
    let from = ("josé@one.test", " SMTPUTF8 BODY=8BITMIME");
    let code = send(lab.smtplab.addr(), from, "<zoë@pf.test>", &outbound);
    assert_eq!(code, 250);
    let stored = lab.postfix_message("to-postfix: grüße");
    lab.smtplab_queue_empties();
    assert!(
        stored.contains("by mx.pf.test (Postfix) with UTF8SMTPS"),
        "Postfix's Received shows no STARTTLS and SMTPUTF8:\n{stored}"
    );
    assert!(
        stored.contains(&outbound.replace("\r\n", "\n")),
        "the message changed on the way to Postfix:\n{stored}"
    );
    let log = lab.postfix.log();
    assert!(
        log.contains("TLS connection established from"),
        "Postfix's smtpd saw no STARTTLS:\n{log}"
    );
}

/// Postfix relays a message to smtplab over STARTTLS; it lands in alice's mbox as the sender
/// wrote it.
fn postfix_relays_to_smtplab(lab: &Lab) {
    let inbound = tricky_message("rené@pf.test", "alice@one.test", "to-smtplab");
    let from = ("rené@pf.test", " SMTPUTF8 BODY=8BITMIME");
    let code = send(lab.postfix.addr, from, "<alice@one.test>", &inbound);
    assert_eq!(code, 250);
    let message = lab.smtplab_message("alice", "to-smtplab: grüße");
    let text = String::from_utf8_lossy(&message.content).into_owned();
    assert_eq!(message.sender, "rené@pf.test");
    assert!(
        text.contains("by mx.pf.test (Postfix) with UTF8SMTP id"),
        "no Postfix Received line:\n{text}"
    );
    assert!(
        text.contains("by mx.one.test (smtplab) with UTF8SMTPS id"),
        "Postfix did not use STARTTLS towards smtplab:\n{text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&without_trace_headers(&message.content)),
        inbound.replace("\r\n", "\n"),
        "the message changed on the way from Postfix"
    );
}

/// NOTIFY=SUCCESS both ways (RFC 3461): each side reports `Action: delivered` to the other's
/// sender, and the report crosses back over the relay.
fn success_reports_cross(lab: &Lab) {
    let content = "Subject: report-from-postfix\r\n\r\nplease confirm\r\n";
    let from = ("alice@one.test", " ENVID=env-out");
    send_notify(lab.smtplab.addr(), from, "dsn@pf.test", content);
    let report = lab.smtplab_message("alice", "Original-Envelope-Id: env-out");
    let text = String::from_utf8_lossy(&report.content).into_owned();
    assert_eq!(report.sender, "MAILER-DAEMON", "{text}");
    assert!(text.contains("Reporting-MTA: dns; mx.pf.test"), "{text}");
    assert!(text.contains("Action: delivered"), "{text}");

    let content = "From: bob@pf.test\r\nSubject: report-from-smtplab\r\n\r\nplease confirm\r\n";
    let from = ("bob@pf.test", " ENVID=env-in");
    send_notify(lab.postfix.addr, from, "alice@one.test", content);
    let report = lab.postfix_message("Original-Envelope-Id: env-in");
    assert!(
        report.contains("Reporting-MTA: dns; mx.one.test"),
        "{report}"
    );
    assert!(report.contains("Action: delivered"), "{report}");
    assert!(report.contains("Return-Path: <>"), "{report}");
}

/// One message whose only recipient asks for a success report.
fn send_notify(to_server: SocketAddr, from: (&str, &str), to: &str, content: &str) {
    let rcpt = format!("<{to}> NOTIFY=SUCCESS ORCPT=rfc822;{to}");
    assert_eq!(send(to_server, from, &rcpt, content), 250);
}

/// A message over Postfix's size limit: smtplab announces its SIZE in MAIL FROM (RFC 1870), so
/// Postfix refuses it before the content is sent, and smtplab bounces it to the sender.
fn size_is_announced(lab: &Lab) {
    let content = format!(
        "Subject: too-big-for-postfix\r\n\r\n{}",
        format!("{}\r\n", "z".repeat(76)).repeat(POSTFIX_SIZE_LIMIT / 78 + 100)
    );
    let code = send(
        lab.smtplab.addr(),
        ("alice@one.test", ""),
        "<big@pf.test>",
        &content,
    );
    assert_eq!(code, 250);
    let bounce = lab.smtplab_message("alice", "Subject: too-big-for-postfix");
    let text = String::from_utf8_lossy(&bounce.content).into_owned();
    assert!(text.contains("Status: 5.3.4"), "{text}");
    let log = lab.postfix.log();
    assert!(
        log.contains("reject: MAIL from") && log.contains("552 5.3.4"),
        "Postfix did not refuse at MAIL FROM, so no SIZE= came:\n{log}"
    );
}

#[test]
fn smtplab_and_postfix_relay_to_each_other_over_starttls() {
    let Some(ids) = postfix_can_run() else {
        return;
    };
    let lab = Lab::start(ids);
    smtplab_relays_to_postfix(&lab);
    postfix_relays_to_smtplab(&lab);
    success_reports_cross(&lab);
    size_is_announced(&lab);

    let complaints = lab.postfix.complaints();
    println!("Postfix's warnings: {complaints:#?}");
    assert!(
        complaints
            .iter()
            .all(|l| !l.contains("postfix/smtp[") && !l.contains("postfix/smtpd[")),
        "Postfix complained about the conversation with smtplab:\n{complaints:#?}"
    );
}

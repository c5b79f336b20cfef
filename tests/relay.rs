//! The relay lab: smtplab instances on different loopback addresses, a real UDP DNS server for
//! the made-up domains, and scripted next hops. Every message travels over real sockets:
//! MUA -> smtplab (one.test) -> MX lookup -> next hop -> mbox.

mod common;
mod dns_server;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::{wait_until, TempDir, TestServer, READ_TIMEOUT};
use dns_server::{DnsServer, Zone};
use smtplab::relay::queue::{RcptState, Spool};
use smtplab::store::mbox::parse_mboxrd;

const ONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const TWO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const FAKE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// Nothing listens here: connections are refused at once.
const DEAD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// The second server: mail for `domain` is delivered to its local mailboxes (alice, bob).
fn start_two(dns: &DnsServer, domain: &str, listen: &str) -> TestServer {
    let dns = dns.addr().to_string();
    common::start(&[
        "--listen",
        listen,
        "--hostname",
        "mx.two.test",
        "--domain",
        domain,
        "--dns",
        &dns,
    ])
}

/// The first server: one.test, relaying through the lab's nameserver (`common::start_one_test`).
fn start_one(dns: &DnsServer, mx_port: u16, retry: &str, extra: &[&str]) -> TestServer {
    common::start_one_test(dns.addr(), mx_port, retry, extra)
}

fn spool_of(server: &TestServer) -> Spool {
    Spool::new(server.dir.path().join("spool"))
}

fn queued(spool: &Spool) -> usize {
    spool.load_all().len()
}

/// alice@one.test writes to `to` through the first server; the reply to the final dot.
fn send_from_alice(one: &TestServer, to: &str, body: &str) -> common::Reply {
    let mut client = one.connect();
    let content = format!("From: alice@one.test\r\nTo: {to}\r\nSubject: lab\r\n\r\n{body}");
    let reply = client.send_mail("alice@one.test", &[to], &content);
    client.cmd("QUIT");
    reply
}

fn received_count(message: &[u8]) -> usize {
    let text = String::from_utf8_lossy(message);
    text.split("\n\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("Received:"))
        .count()
}

#[test]
fn a_message_travels_from_one_test_to_two_test() {
    let dns = DnsServer::start(
        Zone::new()
            .mx("one.test", 10, "mx.one.test")
            .a("mx.one.test", ONE)
            .mx("two.test", 10, "mx.two.test")
            .a("mx.two.test", TWO),
    );
    let two = start_two(&dns, "two.test", "127.0.0.3:0");
    let one = start_one(&dns, two.addr().port(), "1s", &[]);
    let reply = send_from_alice(&one, "bob@two.test", "Hello Bob, from one.test.\r\n");
    assert_eq!(
        (reply.code, reply.status().as_str()),
        (250, "2.0.0"),
        "{reply:?}"
    );

    wait_until("bob's mail on two.test", || two.message_count("bob") == 1);
    let spool = spool_of(&one);
    wait_until("the queue on one.test to empty", || queued(&spool) == 0);
    let stored = &parse_mboxrd(&two.mbox("bob"))[0];
    assert_eq!(stored.sender, "alice@one.test");
    assert_eq!(
        received_count(&stored.content),
        2,
        "one Received line per server"
    );
    let text = String::from_utf8_lossy(&stored.content);
    assert!(text.contains("by mx.one.test (smtplab)"), "{text}");
    assert!(text.contains("by mx.two.test (smtplab)"), "{text}");
    assert!(text.contains("\nHello Bob, from one.test.\n"), "{text}");
    assert!(one.mbox("bob").is_empty() && two.mbox("alice").is_empty());
}

#[test]
fn a_dead_best_mx_is_skipped_for_the_next_one() {
    let dns = DnsServer::start(
        Zone::new()
            .mx("two.test", 10, "dead.two.test")
            .a("dead.two.test", DEAD)
            .mx("two.test", 20, "mx.two.test")
            .a("mx.two.test", TWO),
    );
    let two = start_two(&dns, "two.test", "127.0.0.3:0");
    let one = start_one(&dns, two.addr().port(), "1s", &[]);
    assert_eq!(
        send_from_alice(&one, "bob@two.test", "via MX 20\r\n").code,
        250
    );
    wait_until("bob's mail via MX 20", || two.message_count("bob") == 1);
    let spool = spool_of(&one);
    wait_until("the queue to empty", || queued(&spool) == 0);
}

#[test]
fn a_domain_without_mx_is_its_own_mail_host() {
    let dns = DnsServer::start(Zone::new().a("plain.test", TWO));
    let two = start_two(&dns, "plain.test", "127.0.0.3:0");
    let one = start_one(&dns, two.addr().port(), "1s", &[]);
    assert_eq!(
        send_from_alice(&one, "bob@plain.test", "implicit MX\r\n").code,
        250
    );
    wait_until("bob's mail via the A record", || {
        two.message_count("bob") == 1
    });
}

/// The DSN in alice's mbox on the first server (waits for it).
fn bounce_for_alice(one: &TestServer) -> smtplab::store::mbox::StoredMessage {
    wait_until("a bounce for alice", || one.message_count("alice") == 1);
    parse_mboxrd(&one.mbox("alice")).remove(0)
}

#[test]
fn a_null_mx_bounces_at_once() {
    let dns = DnsServer::start(Zone::new().mx("null.test", 0, "."));
    let one = start_one(&dns, 25, "1h", &[]);
    assert_eq!(
        send_from_alice(&one, "bob@null.test", "nobody home\r\n").code,
        250
    );
    let dsn = bounce_for_alice(&one);
    let text = String::from_utf8_lossy(&dsn.content);
    assert_eq!(dsn.sender, "MAILER-DAEMON", "a bounce comes from <>");
    assert!(
        text.contains("Final-Recipient: rfc822; bob@null.test\n"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.10\n"), "{text}");
    assert!(text.contains("null MX"), "{text}");
    let spool = spool_of(&one);
    wait_until("the queue to empty", || queued(&spool) == 0);
}

/// What a scripted next hop saw in one connection.
#[derive(Debug, Default, Clone)]
struct Seen {
    commands: Vec<String>,
    /// The raw DATA stream, from after 354 up to and including the final `.` line.
    data: Vec<u8>,
}

/// A scripted next hop on `FAKE`: answers RCPT with `rcpt_replies[n]` on the n-th connection
/// (the last one repeats) and records what it saw. Stopped when dropped.
struct FakeHop {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHop {
    fn start(rcpt_replies: &[&'static str]) -> FakeHop {
        let listener = TcpListener::bind((FAKE, 0)).expect("bind fake hop");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, flag, replies) = (seen.clone(), stop.clone(), rcpt_replies.to_vec());
        let thread = thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let reply = replies[n.min(replies.len() - 1)];
                        n += 1;
                        let record = converse(stream, reply);
                        log.lock().unwrap().push(record);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeHop {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn sessions(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One SMTP conversation as a minimal server; every read has a timeout.
fn converse(stream: TcpStream, rcpt_reply: &str) -> Seen {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut seen = Seen::default();
    let _ = writer.write_all(b"220 fake.test ESMTP\r\n");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return seen;
        }
        let command = line.trim_end().to_string();
        seen.commands.push(command.clone());
        let verb = command.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => "250-fake.test\r\n250 8BITMIME".to_string(),
            "MAIL" | "RSET" | "NOOP" => "250 2.1.0 OK".to_string(),
            "RCPT" => rcpt_reply.to_string(),
            "DATA" => {
                let _ = writer.write_all(b"354 go ahead\r\n");
                seen.data = common::hop_read_data(&mut reader);
                "250 2.0.0 queued".to_string()
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 2.0.0 bye\r\n");
                return seen;
            }
            _ => "502 5.5.1 no".to_string(),
        };
        let _ = writer.write_all(format!("{reply}\r\n").as_bytes());
    }
}

fn fake_zone(domain: &str) -> Zone {
    Zone::new()
        .mx(domain, 10, &format!("mx.{domain}"))
        .a(&format!("mx.{domain}"), FAKE)
}

#[test]
fn a_451_to_rcpt_is_delivered_on_a_later_retry_with_clean_line_ends() {
    let dns = DnsServer::start(fake_zone("flaky.test"));
    let hop = FakeHop::start(&["451 4.7.1 greylisted, try again", "250 2.1.5 OK"]);
    let one = start_one(&dns, hop.addr.port(), "1s", &[]);
    // A body whose lines start with dots, and one that looks like SMTP commands (cases 1.12, 1.17).
    let body = "..leading dot\r\n..\r\nMAIL FROM:<ceo@one.test>\r\nlast\r\n";
    assert_eq!(send_from_alice(&one, "bob@flaky.test", body).code, 250);
    let spool = spool_of(&one);
    wait_until("the retry to deliver", || {
        hop.sessions().iter().any(|s| !s.data.is_empty())
    });
    wait_until("the queue to empty", || queued(&spool) == 0);

    let sessions = hop.sessions();
    assert!(
        sessions.len() >= 2,
        "first attempt refused, a later one accepted"
    );
    assert!(
        sessions[0].data.is_empty(),
        "no DATA after the only RCPT got 451"
    );
    assert!(sessions[0]
        .commands
        .iter()
        .any(|c| c == "RCPT TO:<bob@flaky.test>"));
    let delivered: Vec<&Seen> = sessions.iter().filter(|s| !s.data.is_empty()).collect();
    assert_eq!(delivered.len(), 1, "delivered once");
    let data = &delivered[0].data;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert_eq!(data[i - 1], b'\r', "bare LF at {i}");
        }
    }
    let text = String::from_utf8_lossy(data);
    assert!(text.contains("\r\n..leading dot\r\n"), "{text}");
    assert!(
        text.contains("\r\n..\r\nMAIL FROM:<ceo@one.test>\r\nlast\r\n.\r\n"),
        "{text}"
    );
    assert_eq!(
        text.matches("\r\n.\r\n").count(),
        1,
        "one end of data: {text}"
    );
    assert!(text.starts_with("Received: from client.example"), "{text}");
    assert_eq!(
        one.message_count("alice"),
        0,
        "no bounce for a delivered message"
    );
}

#[test]
fn a_550_sends_a_dsn_to_the_local_sender() {
    let dns = DnsServer::start(fake_zone("strict.test"));
    let hop = FakeHop::start(&["550 5.1.1 <bob@strict.test>: no such user"]);
    let one = start_one(&dns, hop.addr.port(), "1s", &[]);
    assert_eq!(
        send_from_alice(&one, "bob@strict.test", "hello?\r\n").code,
        250
    );
    let dsn = bounce_for_alice(&one);
    let spool = spool_of(&one);
    wait_until("the queue to empty", || queued(&spool) == 0);
    assert_eq!(hop.sessions().len(), 1, "a 5xx is not retried");

    let text = String::from_utf8_lossy(&dsn.content).into_owned();
    assert_eq!(dsn.sender, "MAILER-DAEMON");
    assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
    assert!(text.contains("Reporting-MTA: dns; mx.one.test\n"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; bob@strict.test\n"),
        "{text}"
    );
    assert!(text.contains("Action: failed\nStatus: 5.1.1\n"), "{text}");
    assert!(text.contains("Remote-MTA: dns; mx.strict.test\n"), "{text}");
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@strict.test>: no such user\n"));
    assert!(text.contains("Content-Type: text/rfc822-headers\n"));
    assert!(
        text.contains("\nSubject: lab\n"),
        "the original headers come back: {text}"
    );
    python_reads_the_report(&dsn.content, "bob@strict.test", "5.1.1");
}

/// Python's `email` package must see a multipart/report with the right recipient block.
fn python_reads_the_report(message: &[u8], recipient: &str, status: &str) {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("SKIP: python3 not installed");
        return;
    }
    let dir = TempDir::new("dsn");
    let file = dir.path().join("dsn.eml");
    std::fs::write(&file, message).unwrap();
    let script = r#"
import email, sys
msg = email.message_from_binary_file(open(sys.argv[1], 'rb'))
assert msg.get_content_type() == 'multipart/report', msg.get_content_type()
assert msg.get_param('report-type') == 'delivery-status'
parts = msg.get_payload()
print('parts', [p.get_content_type() for p in parts])
report = [p for p in parts if p.get_content_type() == 'message/delivery-status'][0]
blocks = report.get_payload()
print('reporting-mta', blocks[0]['Reporting-MTA'])
for block in blocks[1:]:
    print('final-recipient', block['Final-Recipient'])
    print('status', block['Status'])
    print('action', block['Action'])
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("parts ['text/plain', 'message/delivery-status', 'text/rfc822-headers']"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("final-recipient rfc822; {recipient}\n")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("status {status}\n")), "{stdout}");
    assert!(stdout.contains("action failed\n"), "{stdout}");
}

#[test]
fn queued_mail_survives_a_restart_and_is_delivered_once() {
    let dns = DnsServer::start(
        Zone::new()
            .mx("two.test", 10, "mx.two.test")
            .a("mx.two.test", TWO),
    );
    // A port on TWO with nobody listening yet: the first server's attempts are refused.
    let port = TcpListener::bind((TWO, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shared = TempDir::new("restart");
    let spool_dir = shared.path().join("spool").display().to_string();
    let first = start_one(&dns, port, "1s", &["--spool", &spool_dir]);
    assert_eq!(
        send_from_alice(&first, "bob@two.test", "survive\r\n").code,
        250
    );
    let spool = Spool::new(&spool_dir);
    wait_until("a failed first attempt", || {
        spool
            .load_all()
            .iter()
            .flatten()
            .any(|e| e.attempts >= 1 && e.recipients[0].state == RcptState::Pending)
    });
    drop(first); // the server stops with the message still queued
    assert_eq!(queued(&spool), 1);

    let listen = format!("{TWO}:{port}");
    let two = start_two(&dns, "two.test", &listen);
    let second = start_one(&dns, port, "1s", &["--spool", &spool_dir]);
    wait_until("delivery after the restart", || {
        two.message_count("bob") == 1
    });
    wait_until("the queue to empty", || queued(&spool) == 0);
    drop(second);
    assert_eq!(two.message_count("bob"), 1, "delivered once");
}

#[test]
fn smtplab_queue_lists_what_waits() {
    let dns = DnsServer::start(Zone::new().servfail("two.test"));
    let one = start_one(&dns, 25, "1h", &[]);
    assert_eq!(send_from_alice(&one, "bob@two.test", "wait\r\n").code, 250);
    let spool = spool_of(&one);
    wait_until("a deferred attempt", || {
        spool.load_all().iter().flatten().any(|e| e.attempts >= 1)
    });
    let listing = smtplab::relay::queue::listing(&spool.load_all(), smtplab::datetime::unix_now());
    assert!(listing.contains("from <alice@one.test>"), "{listing}");
    assert!(
        listing.contains("pending   <bob@two.test>  451 4.4.3"),
        "{listing}"
    );
    assert!(listing.contains("next try in"), "{listing}");
    assert!(Path::new(spool.dir()).is_dir());
}

/// carol@far.test is a foreign sender who may relay (a loopback client).
fn send_from_carol(one: &TestServer, to: &str) -> common::Reply {
    let mut client = one.connect();
    let content = format!("From: carol@far.test\r\nTo: {to}\r\nSubject: far\r\n\r\nhi\r\n");
    let reply = client.send_mail("carol@far.test", &[to], &content);
    client.cmd("QUIT");
    reply
}

#[test]
fn a_foreign_sender_gets_the_dsn_by_relay_from_the_null_path() {
    let dns = DnsServer::start(fake_zone("strict.test").mx("far.test", 10, "mx.strict.test"));
    let hop = FakeHop::start(&["550 5.1.1 no such user", "250 2.1.5 OK"]);
    let one = start_one(&dns, hop.addr.port(), "1s", &[]);
    assert_eq!(send_from_carol(&one, "bob@strict.test").code, 250);
    wait_until("the DSN to reach far.test", || hop.sessions().len() >= 2);
    let spool = spool_of(&one);
    wait_until("the queue to empty", || queued(&spool) == 0);
    let dsn = &hop.sessions()[1];
    assert!(dsn.commands.iter().any(|c| c == "MAIL FROM:<>"), "{dsn:?}");
    assert!(
        dsn.commands.iter().any(|c| c == "RCPT TO:<carol@far.test>"),
        "{dsn:?}"
    );
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: rfc822; bob@strict.test\r\n"),
        "{text}"
    );
}

#[test]
fn a_bounce_that_fails_is_never_bounced_again() {
    let dns = DnsServer::start(fake_zone("strict.test").mx("far.test", 10, "mx.strict.test"));
    let hop = FakeHop::start(&["550 5.1.1 no such user"]);
    let one = start_one(&dns, hop.addr.port(), "1s", &[]);
    assert_eq!(send_from_carol(&one, "bob@strict.test").code, 250);
    let spool = spool_of(&one);
    wait_until("the DSN attempt", || hop.sessions().len() >= 2);
    wait_until("the queue to empty", || queued(&spool) == 0);
    let sessions = hop.sessions();
    assert_eq!(
        sessions.len(),
        2,
        "the message, then its bounce: no bounce of the bounce"
    );
    assert!(sessions[1].commands.iter().any(|c| c == "MAIL FROM:<>"));
    // Not lost either: the report about the failed bounce goes to the local postmaster (alice).
    let notice = bounce_for_alice(&one);
    let text = String::from_utf8_lossy(&notice.content);
    assert!(
        text.contains("Final-Recipient: rfc822; carol@far.test\n"),
        "{text}"
    );
}

#[test]
fn mail_that_outlives_the_queue_lifetime_bounces_with_4_4_7() {
    let dns = DnsServer::start(
        Zone::new()
            .mx("two.test", 10, "dead.two.test")
            .a("dead.two.test", DEAD),
    );
    let one = start_one(&dns, 2525, "1s", &["--queue-lifetime", "1s"]);
    assert_eq!(
        send_from_alice(&one, "bob@two.test", "too late\r\n").code,
        250
    );
    let dsn = bounce_for_alice(&one);
    let text = String::from_utf8_lossy(&dsn.content);
    assert!(text.contains("Status: 4.4.7\n"), "{text}");
    assert!(text.contains("Delivery time expired"), "{text}");
    assert!(
        text.contains("Cannot connect to dead.two.test"),
        "the last error: {text}"
    );
}

#[test]
fn an_mx_list_that_names_this_server_bounces_as_a_loop() {
    let dns = DnsServer::start(
        Zone::new()
            .mx("loop.test", 10, "mx.one.test")
            .a("mx.one.test", ONE),
    );
    let one = start_one(&dns, 2525, "1h", &[]);
    assert_eq!(
        send_from_alice(&one, "bob@loop.test", "round and round\r\n").code,
        250
    );
    let dsn = bounce_for_alice(&one);
    let text = String::from_utf8_lossy(&dsn.content);
    assert!(text.contains("Status: 5.4.6\n"), "{text}");
}

#[test]
fn a_smart_host_takes_everything_without_dns() {
    let hop = FakeHop::start(&["250 2.1.5 OK"]);
    let smart = hop.addr.to_string();
    let one = common::start(&[
        "--domain",
        "one.test",
        "--relay-from",
        "127.0.0.0/8",
        "--smart-host",
        &smart,
        "--dns",
        "127.0.0.1:9",
        "--retry",
        "1h",
    ]);
    assert_eq!(
        send_from_alice(&one, "bob@nowhere.invalid", "via the smart host\r\n").code,
        250
    );
    wait_until("the smart host to get it", || {
        hop.sessions().iter().any(|s| !s.data.is_empty())
    });
    assert!(hop.sessions()[0]
        .commands
        .iter()
        .any(|c| c == "RCPT TO:<bob@nowhere.invalid>"));
}

#[test]
fn smtplab_mx_prints_the_lookup_step_by_step() {
    let dns = DnsServer::start(
        Zone::new()
            .mx("two.test", 20, "backup.two.test")
            .mx("two.test", 10, "mx.two.test")
            .a("mx.two.test", TWO)
            .aaaa("mx.two.test", "::1".parse().unwrap())
            .a("backup.two.test", DEAD)
            .a("plain.test", TWO)
            .mx("null.test", 0, "."),
    );
    let run = |domain: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_smtplab"))
            .args(["mx", domain, "--dns", &dns.addr().to_string()])
            .output()
            .expect("run smtplab mx");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, text) = run("two.test");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("two.test MX 10 mx.two.test"), "{text}");
    assert!(text.contains("mx.two.test A 127.0.0.3"), "{text}");
    assert!(text.contains("mx.two.test AAAA ::1"), "{text}");
    assert!(
        text.contains("=> try in this order: mx.two.test, backup.two.test"),
        "{text}"
    );
    let (_, text) = run("plain.test");
    assert!(text.contains("implicit MX"), "{text}");
    let (code, text) = run("null.test");
    assert_eq!(code, Some(1));
    assert!(text.contains("556 5.1.10"), "{text}");
    let (_, text) = run("nowhere.test");
    assert!(text.contains("NXDOMAIN"), "{text}");
}

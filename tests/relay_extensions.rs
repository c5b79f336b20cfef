//! The relay passes on what the client asked for, or says why it cannot: SMTPUTF8, BODY=8BITMIME
//! and BINARYMIME (by BDAT), STARTTLS towards the next hop, DSN success reports, the source
//! address, and parallel delivery that a slow next hop cannot stall. Two smtplab instances (or
//! one and a scripted hop) and the test nameserver, all on loopback.

mod common;
mod dns_server;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{wait_until, HopScript, ScriptedHop, TempDir, TestServer};
use dns_server::{DnsServer, Zone};
use smtplab::relay::queue::Spool;
use smtplab::store::mbox::{parse_mboxrd, StoredMessage};

const ONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const TWO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const HOP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const SLOW: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// one.test on 127.0.0.2 and two.test on 127.0.0.3, each the MX of its domain.
fn lab_zone() -> Zone {
    Zone::new()
        .mx("one.test", 10, "mx.one.test")
        .a("mx.one.test", ONE)
        .mx("two.test", 10, "mx.two.test")
        .a("mx.two.test", TWO)
}

/// The second server: two.test on 127.0.0.3, plus `extra` options.
fn start_two(dns: &DnsServer, extra: &[&str]) -> TestServer {
    let dns = dns.addr().to_string();
    let mut options = vec![
        "--listen",
        "127.0.0.3:0",
        "--hostname",
        "mx.two.test",
        "--domain",
        "two.test",
        "--dns",
        &dns,
    ];
    options.extend_from_slice(extra);
    common::start(&options)
}

fn start_one(dns: &DnsServer, mx_port: u16, extra: &[&str]) -> TestServer {
    common::start_one_test(dns.addr(), mx_port, "1s", extra)
}

/// Wait for the first message in `user`'s mbox on `server`.
fn first_message(server: &TestServer, user: &str) -> StoredMessage {
    wait_until(&format!("mail for {user}"), || {
        server.message_count(user) >= 1
    });
    parse_mboxrd(&server.mbox(user)).remove(0)
}

fn text(message: &StoredMessage) -> String {
    String::from_utf8_lossy(&message.content).into_owned()
}

fn queue_empties(server: &TestServer) {
    let spool = Spool::new(server.dir.path().join("spool"));
    wait_until("the queue to empty", || spool.load_all().is_empty());
}

/// Send one message with MAIL FROM parameters; the reply to the final dot.
fn send_with(server: &TestServer, from: &str, params: &str, to: &str, content: &str) -> u16 {
    let mut client = server.connect();
    client.expect("EHLO client.example", 250);
    client.expect(&format!("MAIL FROM:<{from}>{params}"), 250);
    client.expect(&format!("RCPT TO:<{to}>"), 250);
    client.expect("DATA", 354);
    client.send(content.as_bytes());
    client.send(b".\r\n");
    let code = client.reply().code;
    client.cmd("QUIT");
    code
}

/// alice@one.test writes to bob@two.test through `one`.
fn send_to_bob(one: &TestServer, subject: &str) {
    let content = format!("Subject: {subject}\r\n\r\nx\r\n");
    assert_eq!(
        send_with(one, "alice@one.test", "", "bob@two.test", &content),
        250
    );
}

/// Send a small message through `one`, and the text of the first report in alice's mbox.
fn report_to_alice(one: &TestServer, from: &str, params: &str, to: &str) -> String {
    let code = send_with(one, from, params, to, "Subject: x\r\n\r\nx\r\n");
    assert_eq!(code, 250);
    text(&first_message(one, "alice"))
}

/// one.test relaying to a scripted next hop for two.test that lists 8BITMIME (not SMTPUTF8,
/// SIZE or DSN) and answers every RCPT with `rcpt_reply`.
fn hop_lab(rcpt_reply: &'static str) -> (DnsServer, ScriptedHop, TestServer) {
    let zone = Zone::new()
        .mx("two.test", 10, "hop.two.test")
        .a("hop.two.test", HOP);
    let dns = DnsServer::start(zone);
    let script = HopScript {
        dsn: false,
        rcpt_reply,
    };
    let hop = ScriptedHop::start(&format!("{HOP}:0"), script);
    let one = start_one(&dns, hop.addr.port(), &[]);
    (dns, hop, one)
}

#[test]
fn a_utf8_sender_crosses_two_hosts_from_the_hosts_own_address() {
    let dns = DnsServer::start(lab_zone());
    let two = start_two(&dns, &[]);
    let one = start_one(&dns, two.addr().port(), &[]);
    let content = "From: José <josé@one.test>\r\nSubject: café\r\n\r\nHola\r\n";
    let code = send_with(&one, "josé@one.test", " SMTPUTF8", "bob@two.test", content);
    assert_eq!(code, 250);
    let stored = first_message(&two, "bob");
    assert_eq!(stored.sender, "josé@one.test");
    let text = text(&stored);
    assert!(text.contains("Subject: café\n"), "{text}");
    // The next hop's trace line names 127.0.0.2, the address one.test listens on (item 8).
    assert!(text.contains("from mx.one.test ([127.0.0.2])"), "{text}");
    assert!(text.contains("with UTF8SMTP"), "{text}");
    queue_empties(&one);
    assert_eq!(
        one.message_count("alice"),
        0,
        "no bounce, no postmaster notice"
    );
}

#[test]
fn a_binarymime_message_goes_on_by_bdat() {
    let dns = DnsServer::start(lab_zone());
    let two = start_two(&dns, &[]);
    let one = start_one(&dns, two.addr().port(), &[]);
    let mut client = one.connect();
    client.expect("EHLO client.example", 250);
    client.expect("MAIL FROM:<alice@one.test> BODY=BINARYMIME", 250);
    client.expect("RCPT TO:<bob@two.test>", 250);
    let content = b"Subject: binary\r\n\r\nnul\0byte\r\n.\r\nend\r\n";
    client.send(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
    client.send(content);
    assert_eq!(client.reply().code, 250);
    client.cmd("QUIT");
    let stored = first_message(&two, "bob");
    let body = &stored.content;
    assert!(
        body.windows(9).any(|w| w == b"nul\0byte\n"),
        "the NUL crossed intact: {:?}",
        String::from_utf8_lossy(body)
    );
    assert!(body.ends_with(b"\n.\nend\n"), "a lone dot is data in BDAT");
    queue_empties(&one);
}

#[test]
fn a_hop_without_smtputf8_makes_a_5_6_7_bounce_for_the_sender() {
    let (_dns, hop, one) = hop_lab("250 2.1.5 OK");
    let text = report_to_alice(&one, "alice@one.test", " SMTPUTF8", "pepé@two.test");
    assert!(text.contains("Action: failed\nStatus: 5.6.7\n"), "{text}");
    assert!(text.contains("SMTPUTF8"), "{text}");
    assert!(
        text.starts_with("Return-Path: <>\nReceived: by mx.one.test (smtplab) id "),
        "a report's own trace line: {text}"
    );
    assert!(
        hop.sessions()
            .iter()
            .all(|s| !s.commands.iter().any(|c| c.starts_with("MAIL"))),
        "nothing was offered to a host that cannot take it"
    );
    queue_empties(&one);
}

#[test]
fn a_bounce_for_a_sender_without_a_mailbox_goes_to_postmaster() {
    let (_dns, _hop, one) = hop_lab("550 5.1.1 no such user");
    // The demo's postmaster is alice.
    let text = report_to_alice(&one, "nobody@one.test", "", "bob@two.test");
    assert!(
        text.contains("Final-Recipient: rfc822; bob@two.test\n"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1\n"), "{text}");
    queue_empties(&one);
}

#[test]
fn body_8bitmime_is_passed_on_to_a_hop_that_offers_it() {
    let (_dns, hop, one) = hop_lab("250 2.1.5 OK");
    // The scripted hop offers 8BITMIME (and not SIZE): BODY=8BITMIME goes on, SIZE= does not.
    let content = "Subject: x\r\n\r\ncaf\u{e9}\r\n";
    assert_eq!(
        send_with(
            &one,
            "alice@one.test",
            " BODY=8BITMIME",
            "bob@two.test",
            content
        ),
        250
    );
    wait_until("the hop to get the message", || !hop.messages().is_empty());
    let mail = hop
        .sessions()
        .into_iter()
        .find(|s| !s.data.is_empty())
        .expect("a session");
    assert!(
        mail.commands
            .contains(&"MAIL FROM:<alice@one.test> BODY=8BITMIME".to_string()),
        "{:?}",
        mail.commands
    );
    queue_empties(&one);
}

#[test]
fn the_next_hop_sees_starttls_and_writes_esmtps() {
    let dns = DnsServer::start(lab_zone());
    let transcripts = TempDir::new("two-transcripts");
    let dir = transcripts.path().display().to_string();
    let two = start_two(&dns, &["--tls-self-signed", "--transcripts", &dir]);
    let one = start_one(&dns, two.addr().port(), &[]);
    send_to_bob(&one, "tls");
    let stored = first_message(&two, "bob");
    let text = text(&stored);
    assert!(
        text.contains("by mx.two.test (smtplab) with ESMTPS id"),
        "{text}"
    );
    queue_empties(&one);
    let recorded: String = common::files_under(transcripts.path())
        .iter()
        .map(|file| std::fs::read_to_string(file).unwrap_or_default())
        .collect();
    assert!(recorded.contains("C: STARTTLS\n"), "{recorded}");
    assert!(recorded.contains("== TLS =="), "{recorded}");
}

#[test]
fn relay_tls_none_keeps_to_the_clear() {
    let dns = DnsServer::start(lab_zone());
    let two = start_two(&dns, &["--tls-self-signed"]);
    let one = start_one(&dns, two.addr().port(), &["--relay-tls", "none"]);
    send_to_bob(&one, "x");
    let text = text(&first_message(&two, "bob"));
    assert!(
        text.contains("by mx.two.test (smtplab) with ESMTP id"),
        "{text}"
    );
}

#[test]
fn notify_success_on_local_delivery_reports_delivered() {
    let dns = DnsServer::start(lab_zone());
    let one = start_one(&dns, 25, &[]);
    let mut client = one.connect();
    client.expect("EHLO client.example", 250);
    client.expect("MAIL FROM:<alice@one.test> ENVID=lab1", 250);
    client.expect("RCPT TO:<bob@one.test> NOTIFY=SUCCESS", 250);
    client.expect("DATA", 354);
    client.send(b"Subject: hi bob\r\n\r\nsecret\r\n.\r\n");
    assert_eq!(client.reply().code, 250);
    client.cmd("QUIT");
    assert_eq!(first_message(&one, "bob").sender, "alice@one.test");
    let report = first_message(&one, "alice");
    assert_eq!(report.sender, "MAILER-DAEMON");
    let text = text(&report);
    assert!(
        text.contains("Action: delivered\nStatus: 2.0.0\n"),
        "{text}"
    );
    assert!(text.contains("Original-Envelope-Id: lab1\n"), "{text}");
    assert!(
        text.contains("Subject: hi bob\n") && !text.contains("secret"),
        "{text}"
    );
    assert_eq!(
        text.matches("Received: ").count(),
        1,
        "the report's own trace line only: {text}"
    );
    queue_empties(&one);
    assert_eq!(one.message_count("alice"), 1, "one report");
}

/// A next hop that accepts connections and sends its greeting one octet every 200 ms, forever:
/// a tarpit. Stopped (threads joined) when dropped.
struct Tarpit {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Tarpit {
    fn start() -> Tarpit {
        let listener = TcpListener::bind((SLOW, 0)).expect("bind the tarpit");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Ok((stream, _)) = listener.accept() {
                    held.push(stream);
                }
                for stream in &mut held {
                    let _ = stream.write_all(b"2");
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        Tarpit {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_tarpit_hop_does_not_delay_another_domains_mail() {
    let tarpit = Tarpit::start();
    // Both next hops listen on the same port number, as MX hosts do on port 25.
    let dns = DnsServer::start(
        lab_zone()
            .mx("slow.test", 10, "mx.slow.test")
            .a("mx.slow.test", SLOW),
    );
    let two = start_two(&dns, &["--listen", &format!("{TWO}:{}", tarpit.port)]);
    let one = start_one(&dns, tarpit.port, &["--relay-deadline", "3s"]);
    for n in 0..3 {
        let to = format!("user{n}@slow.test");
        assert_eq!(
            send_with(
                &one,
                "alice@one.test",
                "",
                &to,
                "Subject: slow\r\n\r\nx\r\n"
            ),
            250
        );
    }
    let started = Instant::now();
    send_to_bob(&one, "fast");
    let stored = first_message(&two, "bob");
    println!(
        "two.test's mail arrived {:?} after it was sent, beside a tarpit",
        started.elapsed()
    );
    assert!(text(&stored).contains("Subject: fast"));
    // The deadline ends each tarpit conversation: the slow mail waits in the queue with why.
    let spool = Spool::new(one.dir.path().join("spool"));
    wait_until("a tarpit conversation to reach its deadline", || {
        spool.load_all().into_iter().flatten().any(|entry| {
            entry
                .recipients
                .iter()
                .any(|r| r.reply.contains("whole transaction ran out"))
        })
    });
}

/// The `id` clause of each `Received:` line this server (`by smtplab.test`) wrote in `user`'s
/// mbox under `mail`.
fn received_ids(mail: &std::path::Path, user: &str) -> Vec<String> {
    let mbox = std::fs::read(mail.join(user)).unwrap_or_default();
    parse_mboxrd(&mbox)
        .iter()
        .flat_map(|m| {
            let text = String::from_utf8_lossy(&m.content).into_owned();
            let id = text
                .split(" id ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|id| id.trim_end_matches(';').to_string());
            id.into_iter().collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn message_ids_are_unique_across_a_restart_and_are_atoms() {
    let dir = TempDir::new("ids");
    let mail = dir.path().join("mail");
    let options: Vec<String> = ["--hostname", "smtplab.test", "--mail-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([mail.display().to_string(), "--spool".into()])
        .chain([dir.path().join("spool").display().to_string()])
        .collect();
    for round in 0..2 {
        let addr = common::free_addr();
        let _server = common::start_binary(addr, &options);
        let mut client = common::Client::connect(addr);
        client.expect("EHLO client.example", 250);
        let content = format!("Subject: round {round}\r\n\r\nx\r\n");
        assert_eq!(
            client
                .send_mail("mary@client.example", &["alice@localhost"], &content)
                .code,
            250
        );
        client.cmd("QUIT");
    }
    let ids = received_ids(&mail, "alice");
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(
        ids[0], ids[1],
        "the same session number after a restart, another id"
    );
    for id in &ids {
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "an Atom: {id}"
        );
    }
}

#[test]
fn a_literal_that_names_this_server_is_delivered_here_once_or_refused() {
    // The server's port is also the port it relays to, as with port 25 on the Internet.
    let port = common::free_addr().port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let server = common::start(&[
        "--listen",
        &listen,
        "--mx-port",
        &port,
        "--relay-from",
        "127.0.0.0/8",
    ]);
    let mut client = server.connect();
    client.expect("EHLO client.example", 250);
    client.expect("MAIL FROM:<mary@client.example>", 250);
    for form in ["[127.0.0.1]", "[0.0.0.0]", "[IPv6:::ffff:127.0.0.1]"] {
        client.expect(&format!("RCPT TO:<bob@{form}>"), 250);
    }
    let refused = client.cmd("RCPT TO:<nobody@[0.0.0.0]>");
    assert_eq!(
        (refused.code, refused.status().as_str()),
        (550, "5.4.6"),
        "{refused:?}"
    );
    assert!(refused.text().contains("loop back"), "{refused:?}");
    client.expect("DATA", 354);
    client.send(b"Subject: self\r\n\r\nx\r\n.\r\n");
    assert_eq!(client.reply().code, 250);
    client.cmd("QUIT");
    assert_eq!(
        server.message_count("bob"),
        1,
        "three forms of one mailbox, one copy"
    );
    let spool = Spool::new(server.dir.path().join("spool"));
    assert!(
        spool.load_all().is_empty(),
        "nothing was queued to relay to itself"
    );
}

#[test]
fn etrn_flushes_a_queued_message_at_once() {
    // two.test's mail host is down at first: the message waits, with an hour to its next try.
    let port = TcpListener::bind((TWO, 0))
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let dns = DnsServer::start(lab_zone());
    let one = common::start_one_test(dns.addr(), port, "1h", &[]);
    send_to_bob(&one, "later");
    let spool = Spool::new(one.dir.path().join("spool"));
    wait_until("the first attempt to fail", || {
        spool
            .load_all()
            .into_iter()
            .flatten()
            .any(|e| e.attempts == 1)
    });
    let two = start_two(&dns, &["--listen", &format!("{TWO}:{port}")]);
    let mut client = one.connect();
    client.expect("EHLO client.example", 250);
    let reply = client.cmd("ETRN two.test");
    assert_eq!(
        (reply.code, reply.text()),
        (
            253,
            "2.0.0 OK, 1 pending messages for node two.test started".to_string()
        )
    );
    client.cmd("QUIT");
    let started = Instant::now();
    first_message(&two, "bob");
    println!("ETRN to delivery: {:?}", started.elapsed());
    queue_empties(&one);
}

#[test]
fn etrn_is_only_for_clients_that_may_relay() {
    let server = common::start(&[]);
    let mut client = server.connect();
    let ehlo = client.cmd("EHLO client.example");
    assert!(
        !ehlo.lines.iter().any(|l| l == "ETRN"),
        "not offered: {ehlo:?}"
    );
    let reply = client.cmd("ETRN two.test");
    assert_eq!(
        (reply.code, reply.status().as_str()),
        (459, "4.7.1"),
        "{reply:?}"
    );
    let help = client.cmd("HELP ETRN");
    assert_eq!(help.code, 214);
    assert!(help.text().contains("RFC 1985"), "{help:?}");
}

/// What the broken-TLS hop saw in one connection: the commands, and whether a message came.
type HopSeen = (Vec<String>, bool);

/// A next hop that offers STARTTLS and then breaks every handshake (it closes the connection
/// after its 220), but takes mail in the clear. Records each session's commands and whether it
/// got a message. Stopped (thread joined) when dropped.
struct BrokenTlsHop {
    port: u16,
    sessions: Arc<std::sync::Mutex<Vec<HopSeen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BrokenTlsHop {
    fn start() -> BrokenTlsHop {
        let listener = TcpListener::bind((HOP, 0)).expect("bind the hop");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let sessions = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, flag) = (sessions.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let seen = broken_tls_session(stream);
                        log.lock().expect("lock").push(seen);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BrokenTlsHop {
            port,
            sessions,
            stop,
            thread: Some(thread),
        }
    }

    fn sessions(&self) -> Vec<HopSeen> {
        self.sessions.lock().expect("lock").clone()
    }
}

impl Drop for BrokenTlsHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One conversation: the commands, and whether a message came; every read has a timeout.
fn broken_tls_session(stream: std::net::TcpStream) -> HopSeen {
    use std::io::BufRead;
    let mut commands = Vec::new();
    let mut delivered = false;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(common::READ_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return (commands, delivered);
    };
    let mut reader = std::io::BufReader::new(stream);
    let _ = writer.write_all(b"220 hop.test ESMTP\r\n");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return (commands, delivered);
        }
        let command = line.trim_end().to_string();
        commands.push(command.clone());
        let reply = match command.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
            "EHLO" => "250-hop.test\r\n250 STARTTLS",
            "STAR" => {
                let _ = writer.write_all(b"220 2.0.0 go ahead\r\n");
                return (commands, delivered); // and no handshake: the connection closes
            }
            "MAIL" | "RCPT" => "250 2.0.0 OK",
            "DATA" => {
                let _ = writer.write_all(b"354 go ahead\r\n");
                delivered = !common::hop_read_data(&mut reader).is_empty();
                "250 2.0.0 queued"
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 2.0.0 bye\r\n");
                return (commands, delivered);
            }
            _ => "502 5.5.1 no",
        };
        let _ = writer.write_all(format!("{reply}\r\n").as_bytes());
    }
}

fn broken_tls_lab(hop: &BrokenTlsHop, relay_tls: &str) -> (DnsServer, TestServer) {
    let zone = Zone::new()
        .mx("two.test", 10, "hop.two.test")
        .a("hop.two.test", HOP);
    let dns = DnsServer::start(zone);
    let one = start_one(&dns, hop.port, &["--relay-tls", relay_tls]);
    send_to_bob(&one, "tls");
    (dns, one)
}

#[test]
fn relay_tls_may_sends_in_the_clear_after_a_failed_handshake() {
    let hop = BrokenTlsHop::start();
    let (_dns, one) = broken_tls_lab(&hop, "may");
    wait_until("the message in the clear", || {
        hop.sessions().iter().any(|s| s.1)
    });
    let sessions = hop.sessions();
    assert!(
        sessions[0].0.contains(&"STARTTLS".to_string()),
        "{sessions:?}"
    );
    let clear = sessions.iter().find(|s| s.1).expect("a delivery");
    assert!(!clear.0.contains(&"STARTTLS".to_string()), "{sessions:?}");
    queue_empties(&one);
}

#[test]
fn relay_tls_encrypt_keeps_the_message_rather_than_send_it_in_the_clear() {
    let hop = BrokenTlsHop::start();
    let (_dns, one) = broken_tls_lab(&hop, "encrypt");
    let spool = Spool::new(one.dir.path().join("spool"));
    wait_until("the failed handshake to be recorded", || {
        let entries = spool.load_all();
        entries
            .into_iter()
            .flatten()
            .any(|e| e.recipients[0].reply.contains("4.7.0 TLS failed"))
    });
    assert!(
        hop.sessions().iter().all(|s| !s.1),
        "never sent in the clear"
    );
}

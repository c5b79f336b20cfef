//! The hostile classroom: twenty honest students each send twenty messages while attackers,
//! one or two per finding (1, 2, 3, 5, 11, 12), do their worst at the same time, each from an
//! address of its own: pipeliners that never read, a trickled ClientHello, a connection hog, a
//! NOOP loop, a password guesser, a mailbox filler and a POP3 reader of the full maildrop. Every
//! honest message must arrive exactly once, no thread of the server may panic, and its memory
//! must stay under 256 MiB. The whole run is bounded in time and count, on loopback only.
//!
//! An attacker is a row of `ATTACKERS`: a name, a source address and a function that attacks
//! until the field says stop. A new limit brings its attacker as one more row.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Client;
use smtplab::smtp::auth::base64_encode;

const STUDENTS: usize = 20;
const MESSAGES: usize = 20;
const MEMORY_LIMIT_KIB: u64 = 256 * 1024;
/// The honest students must be done by then, however hard the attackers push.
const WHOLE_RUN: Duration = Duration::from_secs(120);

/// What every attacker shares: where to aim (the server's SMTP, SMTPS and POP3 addresses),
/// when to stop, and how many attackers are under way.
struct Field {
    smtp: SocketAddr,
    smtps: SocketAddr,
    pop3: SocketAddr,
    stop: AtomicBool,
    engaged: AtomicUsize,
}

impl Field {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Say once that this attacker's first attack is under way.
    fn engaged(&self, said: &mut bool) {
        if !std::mem::replace(said, true) {
            self.engaged.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wait until the field says stop or `pause` has passed, whichever comes first.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One attacker: what it does (the finding it tries), where it comes from, how it attacks.
/// `attack` runs until the field says stop, reconnecting whenever the server cuts it off.
struct Attacker {
    finding: &'static str,
    from: &'static str,
    attack: fn(&str, &Field),
}

const ATTACKERS: &[Attacker] = &[
    Attacker {
        finding: "1: pipelines EHLO and never reads a reply",
        from: "127.0.0.11",
        attack: pipeline_never_reading,
    },
    Attacker {
        finding: "1: pipelines POP3 CAPA before login and never reads",
        from: "127.0.0.15",
        attack: pipeline_capa_never_reading,
    },
    Attacker {
        finding: "2: trickles a ClientHello a byte at a time",
        from: "127.0.0.12",
        attack: trickle_client_hello,
    },
    Attacker {
        finding: "3: holds more connections than the whole server has",
        from: "127.0.0.13",
        attack: hold_connections,
    },
    Attacker {
        finding: "12: sends NOOP for ever",
        from: "127.0.0.14",
        attack: junk_for_ever,
    },
    Attacker {
        finding: "11: guesses alice's password over SMTP AUTH and POP3 in turn",
        from: "127.0.0.16",
        attack: guess_passwords,
    },
    Attacker {
        finding: "5: fills bob's mailbox past --mailbox-size-limit, again and again",
        from: "127.0.0.17",
        attack: fill_a_mailbox,
    },
    Attacker {
        finding: "5: logs in to bob's big maildrop over POP3 and reads all of it",
        from: "127.0.0.18",
        attack: read_a_big_maildrop,
    },
];

/// bob's mailbox may grow to this (`--mailbox-size-limit`): big beside one message, so the
/// POP3 reader's maildrop is big, and small enough to fill in well under a second.
const MAILBOX_LIMIT: usize = 8 << 20;
/// The filler sends messages of this size.
const FILLER_MESSAGE: usize = 512 << 10;

/// The password-failure budget of an address in this run (`--auth-budget`), and the first
/// wait after the free failures (`--auth-delay`, seconds): small, so the guesser spends its
/// budget within a few seconds.
const GUESS_BUDGET: u32 = 5;
const GUESS_DELAY: &str = "0.05";

#[test]
fn twenty_students_deliver_everything_while_attackers_do_their_worst() {
    let (smtps, pop3) = (common::free_addr(), common::free_addr());
    #[rustfmt::skip]
    let server = common::binary(&[
        "--tls-self-signed", "--smtps", &smtps.to_string(), "--pop3", &pop3.to_string(),
        "--timeout", "3", "--auth-budget", &GUESS_BUDGET.to_string(), "--auth-delay", GUESS_DELAY,
        "--mailbox-size-limit", &MAILBOX_LIMIT.to_string(),
    ].map(String::from));
    common::wait_until("the SMTPS and POP3 listeners", || {
        TcpStream::connect(smtps).is_ok() && TcpStream::connect(pop3).is_ok()
    });
    let field = Arc::new(Field {
        smtp: server.addr,
        smtps,
        pop3,
        stop: AtomicBool::new(false),
        engaged: AtomicUsize::new(0),
    });
    let attackers: Vec<(&str, JoinHandle<()>)> = ATTACKERS
        .iter()
        .map(|attacker| {
            let field = field.clone();
            let (from, attack) = (attacker.from, attacker.attack);
            let thread = std::thread::spawn(move || attack(from, &field));
            (attacker.finding, thread)
        })
        .collect();
    let engaging = Instant::now();
    common::wait_until("every attacker under way", || {
        field.engaged.load(Ordering::SeqCst) == ATTACKERS.len()
    });
    let engaging = engaging.elapsed();

    let started = Instant::now();
    let smtp = field.smtp;
    let students: Vec<_> = (0..STUDENTS)
        .map(|student| std::thread::spawn(move || honest_student(student, smtp)))
        .collect();
    let failed: Vec<usize> = students
        .into_iter()
        .enumerate()
        .filter_map(|(student, thread)| thread.join().is_err().then_some(student))
        .collect();
    let elapsed = started.elapsed();
    field.stop.store(true, Ordering::SeqCst);
    for (finding, thread) in attackers {
        thread
            .join()
            .unwrap_or_else(|_| panic!("attacker {finding} panicked"));
    }
    assert!(failed.is_empty(), "students {failed:?} failed");
    println!(
        "{STUDENTS} students × {MESSAGES} messages in {:.1} s beside {} attackers (all under way after {:.1} s); peak RSS {} KiB",
        elapsed.as_secs_f64(),
        ATTACKERS.len(),
        engaging.as_secs_f64(),
        server.peak_kib()
    );
    assert!(elapsed < WHOLE_RUN, "the students took {elapsed:?}");

    let markers = count_markers(&server.mbox("alice"));
    for student in 0..STUDENTS {
        for message in 0..MESSAGES {
            let marker = marker(student, message);
            assert_eq!(markers.get(&marker), Some(&1), "{marker}");
        }
    }
    assert_eq!(markers.len(), STUDENTS * MESSAGES, "no other message");
    let bob = server.mbox("bob").len();
    assert!(bob <= MAILBOX_LIMIT, "bob's mailbox grew to {bob} octets");
    server.assert_peak_stays_under(MEMORY_LIMIT_KIB, Duration::ZERO);
    let log = server.log();
    assert!(!log.contains("panicked"), "a thread panicked:\n{log}");
}

fn marker(student: usize, message: usize) -> String {
    format!("HONEST-{student:02}-{message:02}")
}

/// One student from an address of their own, twenty messages in one session.
fn honest_student(student: usize, smtp: SocketAddr) {
    let from = format!("127.0.1.{}", student + 1);
    let mut c = Client::connect_from(&from, smtp);
    assert_eq!(c.greeting.code, 220, "student {student}: {:?}", c.greeting);
    c.expect(&format!("EHLO student{student}.example"), 250);
    for message in 0..MESSAGES {
        c.expect(&format!("MAIL FROM:<student{student}@client.example>"), 250);
        c.expect("RCPT TO:<alice@localhost>", 250);
        c.expect("DATA", 354);
        let marker = marker(student, message);
        let body = format!("Subject: {marker}\r\n\r\n{marker}\r\n.\r\n");
        c.send_expect(body.as_bytes(), 250);
    }
    c.expect("QUIT", 221);
}

/// How often each marker appears as the body of a message in an mbox.
fn count_markers(mbox: &[u8]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in smtplab::store::mbox::parse_mboxrd(mbox) {
        let text = String::from_utf8_lossy(&message.content).into_owned();
        if let Some(body) = text.split("\n\n").nth(1) {
            *counts.entry(body.trim().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// The attackers

/// Finding 1: EHLO after EHLO, each write ending inside a line, never reading a reply.
fn pipeline_never_reading(from: &str, field: &Field) {
    pipeline_at(from, field, field.smtp, b"EHLO x\r\n");
}

/// Finding 1 in POP3: CAPA, answered with many lines, before any login.
fn pipeline_capa_never_reading(from: &str, field: &Field) {
    pipeline_at(from, field, field.pop3, b"CAPA\r\n");
}

/// Send `line` again and again to `addr` without reading, until the server stops reading too
/// (then the attack is at its worst), and again after the server has cut it off.
fn pipeline_at(from: &str, field: &Field, addr: SocketAddr, line: &[u8]) {
    let mut said = false;
    while !field.stopped() {
        if let Ok(mut tcp) = common::connect_from(from, addr) {
            common::pipeline_without_reading(&mut tcp, line, 2 << 20);
            field.engaged(&mut said);
            field.pause(Duration::from_secs(2));
        }
    }
}

/// Finding 2: a ClientHello at the SMTPS port, a byte every half second.
fn trickle_client_hello(from: &str, field: &Field) {
    let mut said = false;
    while !field.stopped() {
        if let Ok(tcp) = common::connect_from(from, field.smtps) {
            field.engaged(&mut said);
            common::trickle_until_closed(tcp, Duration::from_millis(500), Duration::from_secs(6));
        }
    }
}

/// Finding 3: more idle connections than the server has places, again and again.
fn hold_connections(from: &str, field: &Field) {
    let mut said = false;
    while !field.stopped() {
        let held: Vec<TcpStream> = (0..120)
            .filter_map(|_| common::connect_from(from, field.smtp).ok())
            .collect();
        field.engaged(&mut said);
        field.pause(Duration::from_secs(2));
        drop(held);
    }
}

/// Finding 12: NOOP after NOOP, reading each reply, until the server says 421.
fn junk_for_ever(from: &str, field: &Field) {
    let mut said = false;
    while !field.stopped() {
        let Ok(mut tcp) = common::connect_from(from, field.smtp) else {
            field.pause(Duration::from_millis(100));
            continue;
        };
        field.engaged(&mut said);
        let mut buffer = [0u8; 4096];
        while !field.stopped() {
            let answered = tcp
                .write_all(b"NOOP\r\n")
                .and_then(|()| tcp.read(&mut buffer));
            if !matches!(answered, Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// Finding 11: wrong passwords for alice, over SMTP AUTH and POP3 in turn, reconnecting after
/// every refusal. The server judges at most the budget's worth of them; after that every try,
/// in either protocol and on any new connection, is refused unjudged. Under way once both
/// protocols have shut it out.
fn guess_passwords(from: &str, field: &Field) {
    let (mut said, mut judged, mut guess) = (false, 0, 0);
    while !field.stopped() {
        let smtp = guess_over_smtp(from, field.smtp, &mut guess);
        let pop3 = guess_over_pop3(from, field.pop3, &mut guess);
        judged += smtp.judged + pop3.judged;
        if smtp.shut_out && pop3.shut_out {
            field.engaged(&mut said);
        }
    }
    assert!(
        judged <= GUESS_BUDGET,
        "{judged} of {guess} guesses were judged; the budget is {GUESS_BUDGET}"
    );
}

/// What one connection of guesses came to: how many the server judged (a plain "wrong
/// password"), and whether it ended with the budget's refusal.
struct Guesses {
    judged: u32,
    shut_out: bool,
}

/// The budget's words, in SMTP's 421 and POP3's -ERR [AUTH] alike.
const SHUT_OUT: &str = "Too many failed logins";

fn guess_over_smtp(from: &str, smtp: SocketAddr, guess: &mut u32) -> Guesses {
    let mut guesses = Guesses {
        judged: 0,
        shut_out: false,
    };
    let Ok(tcp) = common::connect_from(from, smtp) else {
        return guesses;
    };
    let mut c = Client::over(tcp);
    c.expect("EHLO guesser.example", 250);
    loop {
        *guess += 1;
        let wrong = base64_encode(format!("\0alice\0guess-{guess}").as_bytes());
        let Some(reply) = ask(&mut c, &format!("AUTH PLAIN {wrong}")) else {
            return guesses;
        };
        match reply.code {
            535 => guesses.judged += 1,
            421 => {
                guesses.shut_out = reply.text().contains(SHUT_OUT);
                return guesses;
            }
            _ => panic!("guess {guess} got {reply:?}"),
        }
    }
}

/// One command, and its reply; None once the server has closed the connection.
fn ask(c: &mut Client, line: &str) -> Option<common::Reply> {
    c.reader
        .get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .ok()?;
    c.try_reply()
}

fn guess_over_pop3(from: &str, pop3: SocketAddr, guess: &mut u32) -> Guesses {
    let mut guesses = Guesses {
        judged: 0,
        shut_out: false,
    };
    let Ok(tcp) = common::connect_from(from, pop3) else {
        return guesses;
    };
    let mut reader = BufReader::new(tcp);
    let mut say = |line: &str| -> Option<String> {
        if !line.is_empty() {
            let sent = reader.get_mut().write_all(format!("{line}\r\n").as_bytes());
            sent.ok()?;
        }
        let mut answer = String::new();
        match reader.read_line(&mut answer) {
            Ok(n) if n > 0 => Some(answer),
            _ => None,
        }
    };
    if !say("").is_some_and(|greeting| greeting.starts_with("+OK")) {
        return guesses;
    }
    while say("USER alice").is_some_and(|answer| answer.starts_with("+OK")) {
        *guess += 1;
        let Some(answer) = say(&format!("PASS guess-{guess}")) else {
            break;
        };
        assert!(answer.starts_with("-ERR"), "guess {guess} got {answer:?}");
        if answer.contains(SHUT_OUT) {
            guesses.shut_out = true;
            break;
        }
        guesses.judged += 1;
    }
    guesses
}

/// Finding 5: 512 KiB messages for bob until his mailbox is full, then more of them, each of
/// which must be refused with 452 4.2.2 (at RCPT or after the data). Under way once the first
/// is refused.
fn fill_a_mailbox(from: &str, field: &Field) {
    let mut said = false;
    let line = format!("{}\r\n", "x".repeat(78));
    let content = format!(
        "Subject: filler\r\n\r\n{}.\r\n",
        line.repeat(FILLER_MESSAGE / line.len())
    );
    while !field.stopped() {
        let Ok(tcp) = common::connect_from(from, field.smtp) else {
            field.pause(Duration::from_millis(100));
            continue;
        };
        let mut c = Client::over(tcp);
        c.expect("EHLO filler.example", 250);
        c.expect("MAIL FROM:<filler@client.example>", 250);
        let mut reply = c.cmd("RCPT TO:<bob@localhost>");
        if reply.code == 250 {
            c.expect("DATA", 354);
            c.send(content.as_bytes());
            reply = c.reply();
        }
        match (reply.code, reply.status().as_str()) {
            (250, _) => {}
            (452, "4.2.2") => field.engaged(&mut said),
            _ => panic!("a message for bob got {reply:?}"),
        }
    }
}

/// Finding 5 in POP3: log in as bob, whose maildrop the filler keeps full, and read every
/// message of it; again and again. Under way once it has read a maildrop of many messages.
fn read_a_big_maildrop(from: &str, field: &Field) {
    let mut said = false;
    while !field.stopped() {
        let read = common::connect_from(from, field.pop3)
            .map(|tcp| read_every_message(tcp, "bob"))
            .unwrap_or(0);
        if read >= MAILBOX_LIMIT / FILLER_MESSAGE / 2 {
            field.engaged(&mut said);
        } else {
            field.pause(Duration::from_millis(100));
        }
    }
}

/// Log in as `user` over POP3 and RETR every message to its final dot; the messages read.
fn read_every_message(tcp: TcpStream, user: &str) -> usize {
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    let mut answer = |reader: &mut BufReader<TcpStream>, command: &str| -> Option<String> {
        if !command.is_empty() {
            let sent = reader
                .get_mut()
                .write_all(format!("{command}\r\n").as_bytes());
            sent.ok()?;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.starts_with("+OK") => Some(line.clone()),
            _ => None,
        }
    };
    let logged_in = answer(&mut reader, "").is_some()
        && answer(&mut reader, &format!("USER {user}")).is_some()
        && answer(
            &mut reader,
            &format!("PASS {}", smtplab::config::DEMO_PASSWORD),
        )
        .is_some();
    let count = match answer(&mut reader, "STAT").filter(|_| logged_in) {
        Some(stat) => stat
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        None => return 0,
    };
    for message in 1..=count {
        if answer(&mut reader, &format!("RETR {message}")).is_none() || !to_final_dot(&mut reader) {
            return message - 1;
        }
    }
    answer(&mut reader, "QUIT");
    count
}

/// Read a multi-line POP3 response up to its final dot; false if the connection ended first.
fn to_final_dot(reader: &mut BufReader<TcpStream>) -> bool {
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
        if line == b".\r\n" {
            return true;
        }
    }
}

//! One client cannot hurt the others: replies to a client that never reads stay bounded, one
//! address cannot take every slot, a burst of connects is all greeted, junk commands end in
//! 421, bad numbers in flags are one sentence and exit 2, and IPv4 clients of a `[::]`
//! listener are IPv4 to every policy. Each test runs the real binary on loopback.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{assert_reply, Binary, Client, TempDir};

/// The server's memory stays under this while a client pipelines without reading: the
/// threshold of unwritten replies is a few KiB, so this leaves room for everything else.
const BOUNDED_KIB: u64 = 64 * 1024;

/// The binary with these options (see `common::binary`).
fn binary(options: &[&str]) -> Binary {
    common::binary(&options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
}

/// Commands sent in one write that ends in the middle of a line: 16 KiB at most, so the
/// server reads them all at once and always has unread input left.
const PIPELINED: usize = 1900;

/// Write `count` copies of `line` and half a line more in one write (never finishing it), then
/// count the answers whose last line starts with `last` that arrive within 3 s.
fn answers_to_an_unfinished_pipeline(
    stream: TcpStream,
    line: &[u8],
    count: usize,
    last: &str,
) -> usize {
    let mut input = line.repeat(count);
    input.extend_from_slice(&line[..line.len() / 2]);
    assert!(input.len() < 16 * 1024);
    (&stream).write_all(&input).expect("write");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut answers = 0;
    let mut text = String::new();
    while answers < count {
        text.clear();
        match reader.read_line(&mut text) {
            Ok(n) if n > 0 => answers += usize::from(text.starts_with(last)),
            _ => break,
        }
    }
    answers
}

/// Replies waiting for a client are written once they pass a few KiB, even while unread
/// input is buffered: all but the last few arrive, and the server's memory stays small.
#[test]
fn replies_are_written_while_pipelined_input_is_still_unread() {
    let server = binary(&[]);
    let mut c = Client::connect(server.addr);
    c.expect("EHLO first.example", 250);
    let stream = c.reader.into_inner();
    let answers = answers_to_an_unfinished_pipeline(stream, b"EHLO x\r\n", PIPELINED, "250 ");
    println!("{answers} of {PIPELINED} EHLO replies arrived before the line was finished");
    assert!(answers >= PIPELINED - 100, "only {answers} replies arrived");
    server.assert_peak_stays_under(BOUNDED_KIB, Duration::ZERO);
}

#[test]
fn pop3_answers_are_written_while_pipelined_input_is_still_unread() {
    let pop3 = common::free_addr().to_string();
    let server = binary(&["--pop3", &pop3]);
    let mut smtp = Client::connect(server.addr);
    let body = format!("Subject: retr\r\n\r\n{}\r\n", "x".repeat(76).repeat(50));
    let reply = smtp.send_mail("mary@client.example", &["alice@localhost"], &body);
    assert_eq!(reply.code, 250, "{reply:?}");
    let pop = common::connect_with_timeouts(pop3.parse().expect("address"));
    let mut reader = BufReader::new(pop.try_clone().expect("clone"));
    for line in ["", "USER alice\r\n", "PASS password\r\n"] {
        (&pop).write_all(line.as_bytes()).expect("write");
        let mut answer = String::new();
        reader.read_line(&mut answer).expect("answer");
        assert!(answer.starts_with("+OK"), "{line:?} got {answer:?}");
    }
    let answers = answers_to_an_unfinished_pipeline(pop, b"RETR 1\r\n", PIPELINED, "+OK");
    println!("{answers} of {PIPELINED} RETR answers arrived before the line was finished");
    assert!(answers >= PIPELINED - 10, "only {answers} answers arrived");
    server.assert_peak_stays_under(BOUNDED_KIB, Duration::ZERO);
}

#[test]
fn one_address_cannot_take_every_slot() {
    let server = binary(&[]);
    let hogs: Vec<Client> = (0..32)
        .map(|_| Client::connect_from("127.0.0.1", server.addr))
        .collect();
    assert!(hogs.iter().all(|c| c.greeting.code == 220));
    let mut over = Client::connect_from("127.0.0.1", server.addr);
    assert_reply(&over.greeting, 421, "4.7.0");
    let sentence = over.greeting.text().replace("4.7.0 ", "");
    assert!(!sentence.contains(['.', '\n']), "one sentence: {sentence}");
    assert!(over.is_closed());
    let mut neighbour = Client::connect_from("127.0.0.9", server.addr);
    assert_eq!(neighbour.greeting.code, 220, "{:?}", neighbour.greeting);
    neighbour.expect("EHLO neighbour.example", 250);
}

/// How many clients connect at once in the burst test, and from how many addresses (each
/// address stays within the default share of 32).
const BURST: usize = 1000;
const BURST_ADDRESSES: usize = 40;

#[test]
fn a_burst_of_1000_connects_is_all_greeted_within_10_seconds() {
    // The clients' sockets here, the server's there (it inherits the limit), and a margin.
    let needed = (BURST as u64) * 2 + 200;
    if !common::raise_open_files_limit(needed) {
        let limit = common::open_files_limit();
        println!("SKIP: {needed} open files needed, the limit is {limit:?}; raise it with ulimit -n {needed}");
        return;
    }
    let server = binary(&["--max-connections", "1200", "--timeout", "60"]);
    let addr = server.addr;
    let start_line = Arc::new(Barrier::new(BURST + 1));
    let clients: Vec<_> = (0..BURST)
        .map(|i| {
            let start_line = start_line.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    start_line.wait();
                    let from = format!("127.0.1.{}", 1 + i % BURST_ADDRESSES);
                    greeted_within(&from, addr, Instant::now() + Duration::from_secs(10))
                })
                .expect("spawn a client thread")
        })
        .collect();
    start_line.wait();
    let started = Instant::now();
    let streams: Vec<Option<TcpStream>> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let greeted = streams.iter().filter(|s| s.is_some()).count();
    println!(
        "{greeted} of {BURST} simultaneous connects greeted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(greeted, BURST);
}

/// Connect from `from` and read a 220 before `deadline`; the open stream, or None.
fn greeted_within(from: &str, addr: SocketAddr, deadline: Instant) -> Option<TcpStream> {
    let mut stream = common::connect_from(from, addr).ok()?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    got.starts_with(b"220").then_some(stream)
}

#[test]
fn commands_that_send_no_mail_end_in_421_after_the_junk_limit() {
    let server = binary(&[]);
    let mut c = Client::connect(server.addr);
    c.expect("EHLO script.example", 250);
    let junk = ["NOOP", "RSET", "VRFY alice", "HELP"];
    for n in 0..50 {
        let reply = c.cmd(junk[n % junk.len()]);
        assert!(reply.code < 400, "junk command {n} got {reply:?}");
    }
    c.expect("MAIL FROM:<script@script.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    for n in 50..100 {
        let reply = c.cmd("BDAT 0");
        assert!(reply.code < 400, "junk command {n} got {reply:?}");
    }
    let reply = c.cmd("NOOP");
    assert_reply(&reply, 421, "4.7.0");
    assert!(c.is_closed());

    // Mail in between starts the count again: an honest long session is never cut.
    let mut honest = Client::connect(server.addr);
    for round in 0..3 {
        for _ in 0..60 {
            honest.expect("NOOP", 250);
        }
        let body = format!("Subject: round {round}\r\n\r\nhello\r\n");
        let reply = honest.send_mail("mary@client.example", &["alice@localhost"], &body);
        assert_eq!(reply.code, 250, "{reply:?}");
    }
}

#[test]
fn bad_numbers_in_flags_are_one_sentence_and_exit_2() {
    let dir = TempDir::new("flags");
    let mail = dir.path().join("mail").display().to_string();
    #[rustfmt::skip]
    let bad: &[&[&str]] = &[
        &["--timeout", "-1"], &["--timeout", "nan"], &["--timeout", "1e19"],
        &["--timeout", "inf"], &["--timeout", "0"], &["--timeout", "lots"],
        &["--timeout", "1e-10"], &["--pop3-autologout", "0"], &["--pop3-autologout", "nan"],
        &["--mailbox-size-limit", "-1"], &["--mailbox-size-limit", "1e30"],
        &["--max-connections", "0"], &["--max-connections", "-5"],
        &["--max-connections", "1e3"], &["--max-connections-per-ip", "0"],
        &["--max-size", "-1"], &["--max-recipients", "0"], &["--max-errors", "0"],
        &["--mx-port", "0"], &["--mx-port", "70000"],
        &["--retry", "99999999999d"], &["--queue-lifetime", "99999999999d"],
    ];
    for flags in bad {
        let run = common::run_tool(
            Command::new(env!("CARGO_BIN_EXE_smtplab"))
                .args(["--listen", "127.0.0.1:0", "--mail-dir", &mail])
                .args(*flags),
            b"",
            Duration::from_secs(10),
        );
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(
            run.code,
            Some(2),
            "{flags:?}: {run_stderr}",
            run_stderr = run.stderr
        );
        assert_eq!(lines.len(), 1, "{flags:?}: {lines:?}");
        assert!(
            lines[0].starts_with("smtplab: --") && lines[0].ends_with('.'),
            "{flags:?}: {lines:?}"
        );
    }
}

#[test]
fn ipv4_clients_of_an_ipv6_wildcard_listener_are_ipv4_to_every_policy() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        println!("SKIP: this machine cannot listen on [::] (no IPv6)");
        return;
    }
    // A port free on every address, as the wildcard needs.
    let port = std::net::TcpListener::bind("[::]:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let wildcard = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let _server = common::binary_on(wildcard, &["--relay-from".into(), "127.0.0.0/8".into()]);
    let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    let ehlo = c.expect("EHLO student.example", 250);
    assert!(
        ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "AUTH is offered on loopback: {ehlo:?}"
    );
    c.expect("MAIL FROM:<student@student.example>", 250);
    // Relaying is allowed for 127.0.0.0/8; nothing is queued (no DATA).
    c.expect("RCPT TO:<someone@elsewhere.example>", 250);
    c.expect("QUIT", 221);
}

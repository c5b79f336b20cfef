//! TLS at every entry point (STARTTLS, SMTPS, POP3 STLS, POP3S): TLS 1.3 and 1.2 are both
//! offered, and deadlines hold inside TLS exactly as in the clear. A ClientHello trickled a
//! byte at a time meets the whole handshake deadline; a TLS record trickled a byte at a time
//! meets the command deadline and the DATA deadline, and in POP3 the autologout. Each test
//! runs the real binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Binary, Client};

/// The server's `--timeout` in these tests (the handshake, command and DATA deadlines), and its
/// `--pop3-autologout`. Long enough for an honest TLS handshake of a debug build on a loaded
/// two-core machine; far shorter than any trickled record below (28 bytes or more, at
/// `TRICKLE` each: 7 s or more).
const TIMEOUT_SECS: &str = "4";

/// A trickling client sends one byte this often: every gap is far inside the timeout, so only
/// a deadline for the whole handshake, command or message can stop it.
const TRICKLE: Duration = Duration::from_millis(250);

/// The server must have closed a trickling client by then (the timeout, plus a margin).
const CUT_BY: Duration = Duration::from_secs(10);

/// A running binary with every TLS entry point, and their addresses.
struct Server {
    _binary: Binary,
    smtp: SocketAddr,
    smtps: SocketAddr,
    pop3: SocketAddr,
    pop3s: SocketAddr,
}

fn server() -> Server {
    let [smtps, pop3, pop3s] = [(); 3].map(|()| common::free_addr());
    #[rustfmt::skip]
    let mut args: Vec<String> = [
        "--tls-self-signed", "--timeout", TIMEOUT_SECS, "--pop3-autologout", TIMEOUT_SECS,
    ].map(String::from).to_vec();
    for (flag, addr) in [("--smtps", smtps), ("--pop3", pop3), ("--pop3s", pop3s)] {
        args.extend([flag.to_string(), addr.to_string()]);
    }
    let binary = common::binary(&args);
    common::wait_until("every listener", || {
        [smtps, pop3, pop3s]
            .iter()
            .all(|a| TcpStream::connect(a).is_ok())
    });
    Server {
        smtp: binary.addr,
        _binary: binary,
        smtps,
        pop3,
        pop3s,
    }
}

// ---------------------------------------------------------------------------------------------
// TLS 1.3 and 1.2 at every entry point

/// `openssl s_client -brief` at one entry point with one protocol version; what it printed.
fn s_client(addr: SocketAddr, starttls: Option<&str>, version: &str) -> String {
    let mut command = Command::new("openssl");
    command.args(["s_client", "-brief", version, "-connect", &addr.to_string()]);
    if let Some(protocol) = starttls {
        command.args(["-starttls", protocol]);
    }
    let run = common::run_tool(&mut command, b"", Duration::from_secs(20));
    format!("{}{}", run.stdout, run.stderr)
}

#[test]
fn tls_1_3_and_1_2_at_every_entry_point() {
    if !common::have_tool_with("openssl", &["version"]) {
        return;
    }
    let server = server();
    let entries = [
        ("SMTP STARTTLS", server.smtp, Some("smtp")),
        ("SMTPS", server.smtps, None),
        ("POP3 STLS", server.pop3, Some("pop3")),
        ("POP3S", server.pop3s, None),
    ];
    for (name, addr, starttls) in entries {
        for (flag, shown) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
            let output = s_client(addr, starttls, flag);
            assert!(
                output.contains(&format!("Protocol version: {shown}")),
                "{name} with {flag}: {output}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A trickled ClientHello

fn trickle_until_closed(tcp: TcpStream) -> Option<Duration> {
    common::trickle_until_closed(tcp, TRICKLE, CUT_BY)
}

/// A plain-text connection that has asked for TLS and got the go-ahead.
fn after_starttls(addr: SocketAddr, commands: &[(&str, &str)]) -> TcpStream {
    let tcp = common::connect_with_timeouts(addr);
    let mut reader = BufReader::new(tcp.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    let mut writer = tcp.try_clone().expect("clone");
    for (command, expected) in commands {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("write");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("answer");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(line.starts_with(expected), "{command}: {line:?}");
    }
    assert!(reader.buffer().is_empty());
    tcp
}

#[test]
fn a_trickled_client_hello_is_cut_at_the_handshake_deadline() {
    let server = server();
    let entries = [
        ("SMTPS", common::connect_with_timeouts(server.smtps)),
        ("POP3S", common::connect_with_timeouts(server.pop3s)),
        (
            "SMTP STARTTLS",
            after_starttls(server.smtp, &[("EHLO x", "250"), ("STARTTLS", "220")]),
        ),
        ("POP3 STLS", after_starttls(server.pop3, &[("STLS", "+OK")])),
    ];
    let trickles: Vec<_> = entries
        .into_iter()
        .map(|(name, tcp)| (name, std::thread::spawn(move || trickle_until_closed(tcp))))
        .collect();
    for (name, trickle) in trickles {
        let closed = trickle.join().expect("trickle thread");
        println!("{name}: trickled ClientHello closed after {closed:?}");
        assert!(closed.is_some(), "{name}: still open after {CUT_BY:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A TLS record trickled byte by byte, inside a session

/// A socket that, once `slow` is set, writes one byte per `TRICKLE`: a whole TLS record then
/// takes many seconds to arrive, each byte well inside the timeout.
#[derive(Debug)]
struct Trickle {
    tcp: TcpStream,
    slow: Arc<AtomicBool>,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.slow.load(Ordering::SeqCst) {
            return self.tcp.write(buf);
        }
        for byte in buf {
            self.tcp.write_all(&[*byte])?;
            std::thread::sleep(TRICKLE);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// TLS over `tcp` (just told to start it), through a socket that trickles once the flag is set.
fn tls_that_trickles(
    tcp: TcpStream,
) -> (BufReader<native_tls::TlsStream<Trickle>>, Arc<AtomicBool>) {
    let slow = Arc::new(AtomicBool::new(false));
    let socket = Trickle {
        tcp,
        slow: slow.clone(),
    };
    let tls = common::tls_connector()
        .connect(common::TLS_HOST, socket)
        .expect("TLS handshake");
    (BufReader::new(tls), slow)
}

/// Write `trickled` as one TLS record a byte at a time, then read the answer line: None if
/// the connection ended instead.
fn answer_to_a_trickled_record(
    tls: &mut BufReader<native_tls::TlsStream<Trickle>>,
    slow: &AtomicBool,
    trickled: &[u8],
) -> Option<String> {
    slow.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let written = tls.get_mut().write_all(trickled);
    let mut line = String::new();
    let read = tls.read_line(&mut line);
    println!(
        "trickled record: write {:?}, then {:?} after {:.1} s",
        written.is_ok(),
        line.trim_end(),
        started.elapsed().as_secs_f64()
    );
    matches!(read, Ok(n) if n > 0).then_some(line)
}

/// STARTTLS, then `setup` commands at full speed, then `trickled` as one TLS record sent a
/// byte at a time. Returns the reply after it: anything but a 250 (a 421, or a closed
/// connection, as `None`).
fn trickle_a_record(setup: &[(&str, u16)], trickled: &[u8]) -> Option<u16> {
    let server = server();
    let mut plain = Client::connect(server.smtp);
    plain.expect("EHLO trickle.example", 250);
    plain.expect("STARTTLS", 220);
    let (reader, slow) = tls_that_trickles(plain.reader.into_inner());
    let mut t = common::Conn {
        reader,
        greeting: (),
    };
    for (command, code) in setup {
        t.expect(command, *code);
    }
    let line = answer_to_a_trickled_record(&mut t.reader, &slow, trickled)?;
    line.get(..3)?.parse().ok()
}

#[test]
fn a_pop3_command_trickled_inside_tls_meets_the_autologout() {
    let server = server();
    let tcp = after_starttls(server.pop3, &[("STLS", "+OK")]);
    let (mut tls, slow) = tls_that_trickles(tcp);
    let answer = answer_to_a_trickled_record(&mut tls, &slow, b"USER alice\r\n");
    // RFC 1939 §3: autologout closes the connection without a response.
    assert_eq!(answer, None, "a trickled record was answered as if on time");
}

#[test]
fn a_command_trickled_inside_tls_meets_the_command_deadline() {
    let reply = trickle_a_record(&[("EHLO inside.example", 250)], b"NOOP\r\n");
    assert_ne!(
        reply,
        Some(250),
        "a trickled record was answered as if on time"
    );
}

#[test]
fn a_message_trickled_inside_tls_meets_the_data_deadline() {
    let setup = [
        ("EHLO inside.example", 250),
        ("MAIL FROM:<slow@client.example>", 250),
        ("RCPT TO:<alice@localhost>", 250),
        ("DATA", 354),
    ];
    let reply = trickle_a_record(&setup, b"Subject: slow\r\n\r\ntrickled\r\n.\r\n");
    assert_ne!(reply, Some(250), "a trickled message was accepted");
}

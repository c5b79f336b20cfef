//! Crash safety: SIGKILL the server at random moments while clients deliver, restart it, and
//! check that every message that got 250 is in the mbox exactly once and nothing is half-written.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{free_addr, start_binary, Killed, TempDir, READ_TIMEOUT};

const ROUNDS: u64 = 100;
const CLIENTS: usize = 3;

/// A started server process, killed when dropped.
fn start(addr: SocketAddr, mail_dir: &Path) -> Killed {
    let options = [
        "--hostname",
        "smtplab.test",
        "--mail-dir",
        &mail_dir.display().to_string(),
    ]
    .map(String::from);
    start_binary(addr, &options)
}

/// Deliver message after message on one connection until the server goes away; return the
/// markers that were answered 250.
fn deliver_until_killed(
    addr: SocketAddr,
    client: usize,
    stop: &AtomicBool,
    acked: &Mutex<Vec<String>>,
) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut reader = BufReader::new(stream);
    let mut n = 0;
    let expect = |reader: &mut BufReader<TcpStream>, line: &[u8], code: &str| -> bool {
        if !line.is_empty() && reader.get_mut().write_all(line).is_err() {
            return false;
        }
        let mut reply = String::new();
        matches!(reader.read_line(&mut reply), Ok(n) if n > 0) && reply.starts_with(code)
    };
    if !expect(&mut reader, b"", "220") || !expect(&mut reader, b"HELO crash.test\r\n", "250") {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let marker = format!("c{client}-m{n}");
        let ok = expect(&mut reader, b"MAIL FROM:<load@crash.test>\r\n", "250")
            && expect(&mut reader, b"RCPT TO:<alice@localhost>\r\n", "250")
            && expect(&mut reader, b"DATA\r\n", "354")
            && expect(&mut reader, body(&marker).as_bytes(), "250");
        if !ok {
            return;
        }
        acked.lock().expect("lock").push(marker);
    }
}

fn body(marker: &str) -> String {
    format!(
        "Subject: {marker}\r\n\r\n{}\r\nend {marker}\r\n.\r\n",
        "x".repeat(3000)
    )
}

/// A tiny xorshift generator, so the kill points are different each round but repeatable.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_mail() {
    let dir = TempDir::new("crash");
    let mail_dir = dir.path().join("mail");
    let mut seed = 0x5eed_c0de_u64;
    let mut total_acked = 0;
    let mut restarts_that_cut = 0;
    for _ in 0..ROUNDS {
        let addr = free_addr();
        let server = start(addr, &mail_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (stop, acked) = (stop.clone(), acked.clone());
                thread::spawn(move || deliver_until_killed(addr, client, &stop, &acked))
            })
            .collect();
        // Kill at a random moment, 10 to 150 ms into the stream of deliveries.
        thread::sleep(Duration::from_millis(10 + next(&mut seed) % 140));
        drop(server);
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.join().expect("client thread");
        }
        let before = std::fs::metadata(mail_dir.join("alice"))
            .map(|m| m.len())
            .unwrap_or(0);
        // Restarting runs the recovery; the server is ready once it listens.
        drop(start(free_addr(), &mail_dir));
        let after = std::fs::metadata(mail_dir.join("alice"))
            .map(|m| m.len())
            .unwrap_or(0);
        restarts_that_cut += u32::from(after < before);
        let round_acked = acked.lock().expect("lock").clone();
        total_acked += round_acked.len();
        check_mbox(&mail_dir.join("alice"), &round_acked);
        // Start every round with an empty mbox, so markers never repeat across rounds.
        let _ = std::fs::remove_file(mail_dir.join("alice"));
        let _ = std::fs::remove_file(mail_dir.join(".alice.intent"));
    }
    println!("{ROUNDS} rounds, {total_acked} messages acknowledged; {restarts_that_cut} restarts cut a half-written delivery");
}

/// Every acknowledged marker once; every stored message whole (its body exactly as sent).
fn check_mbox(path: &Path, acked: &[String]) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let messages = smtplab::store::mbox::parse_mboxrd(&bytes);
    let mut seen = Vec::new();
    for message in &messages {
        let text = String::from_utf8_lossy(&message.content);
        let marker = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("a message without its Subject: {text:?}"))
            .to_string();
        let expected = body(&marker).replace("\r\n", "\n");
        let expected = expected.trim_end_matches(".\n");
        assert!(text.ends_with(expected), "message {marker} is not whole");
        assert!(!seen.contains(&marker), "message {marker} stored twice");
        seen.push(marker);
    }
    for marker in acked {
        assert!(
            seen.contains(marker),
            "acknowledged message {marker} was lost"
        );
    }
}

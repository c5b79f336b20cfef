//! Soak: many clients at once, each sending several messages over one connection. Every message
//! must arrive exactly once (a unique marker per message is counted in the mbox), and afterwards
//! the server's threads and file descriptors must fall back to what they were before the load.
//!
//! The full soak (1,000 clients × 10 messages) is ignored by default; run it with
//!
//! ```text
//! ulimit -n 4096; cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! The server runs in this process, so `/proc/self/task` counts its threads and `/proc/self/fd`
//! its descriptors (Linux). The two tests take a lock so they never run at the same time.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// Client reads wait this long: under a heavy load a delivery may wait behind many others.
const SOAK_TIMEOUT: Duration = Duration::from_secs(120);

/// File descriptors one client costs the process: its socket and the server's.
const FDS_PER_CLIENT: u64 = 2;

/// Descriptors beyond the clients: listeners, mbox files, the test harness.
const FD_MARGIN: u64 = 200;

/// Client threads need little stack: they only hold a socket and a small buffer.
const CLIENT_STACK: usize = 128 * 1024;

/// Only one soak at a time: each counts every thread and descriptor of the process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn soak_50_clients_4_messages() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    soak(50, 4);
}

/// 1,000 concurrent clients × 10 messages. See the module comment for how to run it.
#[test]
#[ignore = "heavy: run with --ignored (see the module comment)"]
fn soak_1000_clients_10_messages() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    soak(1000, 10);
}

fn soak(clients: usize, messages: usize) {
    let needed = clients as u64 * FDS_PER_CLIENT + FD_MARGIN;
    match common::open_files_limit() {
        Some(limit) if limit < needed => {
            println!(
                "SKIP: RLIMIT_NOFILE is {limit}, {clients} clients need about {needed}; \
                 raise it with ulimit -n {needed}"
            );
            return;
        }
        None => {
            println!("SKIP: /proc/self/limits not readable (not Linux?)");
            return;
        }
        Some(_) => {}
    }
    let max = (clients + 10).to_string();
    // Every client comes from 127.0.0.1: its share is the whole server.
    #[rustfmt::skip]
    let server = common::start(&[
        "--max-connections", &max, "--max-connections-per-ip", &max, "--timeout", "300",
    ]);
    let idle = (
        count_entries("/proc/self/task"),
        count_entries("/proc/self/fd"),
    );

    // Connect one by one and read each greeting before the next connect: a burst of 1,000
    // connects at once overflows the listen backlog (see `connect_greeted`). Then all clients
    // start sending together.
    let connected: Vec<BufReader<TcpStream>> = (0..clients)
        .map(|client| connect_greeted(server.addr(), client).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let start_line = Arc::new(Barrier::new(clients));
    let started = Instant::now();
    let threads: Vec<_> = connected
        .into_iter()
        .enumerate()
        .map(|(client, reader)| {
            let start_line = start_line.clone();
            std::thread::Builder::new()
                .stack_size(CLIENT_STACK)
                .spawn(move || {
                    start_line.wait();
                    send_messages(reader, client, messages)
                })
                .expect("spawn a client thread")
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| {
            t.join()
                .unwrap_or_else(|_| Err("client panicked".into()))
                .err()
        })
        .collect();
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} clients failed, first: {}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    let markers = count_markers(&server.mbox("alice"));
    let total = clients * messages;
    let duplicated: Vec<_> = markers.iter().filter(|(_, &n)| n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    for client in 0..clients {
        for n in 0..messages {
            assert!(
                markers.contains_key(&format!("{client}.{n}")),
                "lost {client}.{n}"
            );
        }
    }
    assert_eq!(server.message_count("alice"), total);

    server.wait_idle();
    wait_with_deadline("threads back to the idle count", || {
        count_entries("/proc/self/task") <= idle.0
    });
    wait_with_deadline("file descriptors back to the idle count", || {
        count_entries("/proc/self/fd") <= idle.1
    });
    println!(
        "soak: {clients} clients × {messages} messages = {total} delivered once each in {:.1} s; \
         back to {} threads and {} descriptors",
        elapsed.as_secs_f64(),
        idle.0,
        idle.1
    );
}

/// Connect and read the 220 greeting.
///
/// Why not connect from every client thread at once: the server's listen backlog is 128 (what
/// `std::net::TcpListener::bind` asks for), and when a burst of connects overflows it, Linux with
/// SYN cookies drops the connection on the server side while the client believes it is
/// connected, and waits for a greeting that never comes.
fn connect_greeted(addr: SocketAddr, client: usize) -> Result<BufReader<TcpStream>, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("client {client}: connect: {e}"))?;
    for timeout in [
        stream.set_read_timeout(Some(SOAK_TIMEOUT)),
        stream.set_write_timeout(Some(SOAK_TIMEOUT)),
    ] {
        timeout.map_err(|e| e.to_string())?;
    }
    let mut reader = BufReader::new(stream);
    match read_reply(&mut reader) {
        Ok(reply) if reply.code == 220 => Ok(reader),
        other => Err(format!("client {client}: greeting {other:?}")),
    }
}

/// One client: EHLO, then `messages` transactions back to back, each with a unique marker.
fn send_messages(
    mut reader: BufReader<TcpStream>,
    client: usize,
    messages: usize,
) -> Result<(), String> {
    let started = Instant::now();
    let mut step = |line: Option<String>, code: u16| -> Result<(), String> {
        if let Some(line) = &line {
            reader
                .get_mut()
                .write_all(line.as_bytes())
                .map_err(|e| format!("client {client}: write: {e}"))?;
        }
        match read_reply(&mut reader) {
            Ok(reply) if reply.code == code => Ok(()),
            other => Err(format!(
                "client {client}: {line:?} got {other:?}, wanted {code}, after {:.1} s",
                started.elapsed().as_secs_f64()
            )),
        }
    };
    step(Some("EHLO soak.example\r\n".into()), 250)?;
    for n in 0..messages {
        step(Some("MAIL FROM:<soak@client.example>\r\n".into()), 250)?;
        step(Some("RCPT TO:<alice@localhost>\r\n".into()), 250)?;
        step(Some("DATA\r\n".into()), 354)?;
        let body = format!("Subject: soak\r\nX-Soak-Id: {client}.{n}\r\n\r\nHello.\r\n.\r\n");
        step(Some(body), 250)?;
    }
    step(Some("QUIT\r\n".into()), 221)
}

/// One reply, or why none came (the harness's `read_reply` panics on a timeout; here a timeout
/// is one client's failure, reported with the others).
fn read_reply(reader: &mut BufReader<TcpStream>) -> Result<common::Reply, String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or(format!("bad reply {line:?}"))?;
        lines.push(line.get(4..).unwrap_or("").to_string());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(common::Reply { code, lines });
        }
    }
}

/// How often each `X-Soak-Id` marker occurs in the mbox.
fn count_markers(mbox: &[u8]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in mbox.split(|&b| b == b'\n') {
        if let Some(id) = line.strip_prefix(b"X-Soak-Id: ") {
            let id = String::from_utf8_lossy(id).trim_end().to_string();
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Entries of a /proc directory (threads or descriptors of this process).
fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

/// Poll `condition` every 10 ms for up to a minute (the server's threads end on their own after
/// the clients quit; how fast depends on the machine).
fn wait_with_deadline(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

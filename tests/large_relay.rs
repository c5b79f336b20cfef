//! A message for another domain, far larger than the spill threshold, goes through the real
//! server process to a next hop without the server's peak memory growing with the message:
//! it is queued from the spill file to the queue's content file, and sent from there, in chunks.
//!
//! Linux only: the peak resident size is read from `/proc/PID/status` (`VmHWM`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    free_addr, peak_kib, spool_files, start_binary, Client, Killed, TempDir, READ_TIMEOUT,
};

/// 40 MiB: larger than the message, so it is accepted.
const MAX_SIZE: &str = "41943040";
/// The message sent with DATA.
const MESSAGE_SIZE: usize = 30 * 1024 * 1024;
/// What the server's peak resident memory may grow by while it takes and relays the message:
/// what a session and the relay may hold (a spill threshold, read and write buffers) with room
/// to spare for the allocator.
const MAX_GROWTH_KIB: u64 = 8 * 1024;
/// The last line of the message, to see that the next hop got all of it.
const MARKER: &[u8] = b"END-OF-THE-LARGE-RELAYED-MESSAGE";
/// Long enough to move 30 MiB twice through a debug build on a slow machine.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);

fn start(addr: SocketAddr, next_hop: SocketAddr, dir: &Path) -> Killed {
    let options = format!(
        "--hostname smtplab.test --relay-from 127.0.0.0/8 --smart-host {next_hop} --dns 127.0.0.1:9 \
         --retry 1h --max-size {MAX_SIZE} --mail-dir {} --spool {}",
        dir.join("mail").display(),
        dir.join("spool").display()
    );
    start_binary(
        addr,
        &options
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>(),
    )
}

/// The message on the wire: 1,000-octet lines, some starting with "." (dot-stuffed), and the
/// marker on the last line.
fn wire_message(size: usize) -> Vec<u8> {
    let mut wire = b"Subject: a large relayed message\r\n\r\n".to_vec();
    let mut n = 0;
    while wire.len() < size {
        let start = if n % 10 == 3 { "..a dot first" } else { "line" };
        let line = format!("{start} {n:08} ");
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(&vec![b'x'; 998 - line.len()]);
        wire.extend_from_slice(b"\r\n");
        n += 1;
    }
    wire.extend_from_slice(MARKER);
    wire.extend_from_slice(b"\r\n");
    wire
}

/// What the next hop saw of one message: the DATA octets before the final dot (counted and
/// thrown away), the first few KiB (trace header and subject), and the last line.
#[derive(Debug, Clone, Default)]
struct Received {
    octets: usize,
    start: Vec<u8>,
    last_line: Vec<u8>,
}

/// A next hop that takes any message and keeps only what `Received` holds.
struct NextHop {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NextHop {
    fn start() -> NextHop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the next hop");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (messages.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(message) = converse(stream) {
                            seen.lock().unwrap().push(message);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        NextHop {
            addr,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for NextHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One SMTP conversation as the next hop; `None` if it broke off.
fn converse(stream: TcpStream) -> Option<Received> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
    let mut writer = stream.try_clone().ok()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"220 next.test ESMTP\r\n").ok()?;
    let mut received = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return received;
        }
        let verb = line.get(..4).unwrap_or(b"").to_ascii_uppercase();
        let reply: &[u8] = match &verb[..] {
            b"EHLO" | b"HELO" | b"MAIL" | b"RCPT" => b"250 OK\r\n",
            b"DATA" => {
                writer.write_all(b"354 go ahead\r\n").ok()?;
                received = Some(read_data(&mut reader)?);
                b"250 2.0.0 taken\r\n"
            }
            b"QUIT" => {
                writer.write_all(b"221 bye\r\n").ok()?;
                return received;
            }
            _ => b"502 5.5.1 not here\r\n",
        };
        writer.write_all(reply).ok()?;
    }
}

/// The DATA octets up to the final dot, counted line by line and not kept.
fn read_data(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut received = Received::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        if line == b".\r\n" {
            return Some(received);
        }
        received.octets += line.len();
        if received.start.len() < 4096 {
            received.start.extend_from_slice(&line);
        }
        received.last_line.clone_from(&line);
    }
}

/// Send one message for bob@far.test on an open session, asserting each step.
fn send_relayed(client: &mut Client, wire: &[u8]) {
    client.expect("MAIL FROM:<big@sender.test>", 250);
    client.expect("RCPT TO:<bob@far.test>", 250);
    client.expect("DATA", 354);
    client.send(wire);
    client.send_expect(b".\r\n", 250);
}

/// Poll `condition` every 10 ms until `deadline` passes.
fn wait_long(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_large_message_is_relayed_in_bounded_memory() {
    if !Path::new("/proc/self/status").exists() {
        println!("SKIP: /proc not available");
        return;
    }
    let dir = TempDir::new("large-relay");
    let hop = NextHop::start();
    let addr = free_addr();
    let server = start(addr, hop.addr, dir.path());
    let pid = server.0.id();

    // A small relayed message first, so the session and the relay have run once before we measure.
    let mut client = Client::connect(addr);
    client.expect("EHLO client.test", 250);
    send_relayed(&mut client, b"Subject: warm-up\r\n\r\nhi\r\n");
    wait_long("the warm-up at the next hop", DELIVERY_DEADLINE, || {
        hop.messages().len() == 1
    });
    let before = peak_kib(pid);

    let wire = wire_message(MESSAGE_SIZE);
    send_relayed(&mut client, &wire);
    client.expect("QUIT", 221);
    wait_long(
        "the large message at the next hop",
        DELIVERY_DEADLINE,
        || hop.messages().len() == 2,
    );
    let spool = dir.path().join("spool");
    wait_long("the queue to empty", DELIVERY_DEADLINE, || {
        spool_files(&spool).is_empty()
    });

    let after = peak_kib(pid);
    let growth = after.saturating_sub(before);
    println!("server peak memory: {before} KiB before, {after} KiB after, growth {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak memory grew by {growth} KiB for a {MESSAGE_SIZE}-octet relayed message"
    );

    let big = hop.messages()[1].clone();
    let subject = b"Subject: a large relayed message\r\n";
    let at = big
        .start
        .windows(subject.len())
        .position(|w| w == subject)
        .expect("the message after the trace header");
    assert!(
        big.start.starts_with(b"Received: "),
        "the relay adds its trace header"
    );
    // The wire form comes back as it was sent: same CRLF lines, same dot-stuffing.
    assert_eq!(big.octets - at, wire.len(), "octets after the trace header");
    assert_eq!(big.last_line, [MARKER, b"\r\n"].concat());
    assert_eq!(&big.start[at..], &wire[..big.start.len() - at]);
    drop(server);
    drop(hop);
}

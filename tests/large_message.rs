//! A message far larger than the spill threshold goes through the real server process without
//! its peak memory growing with the message, and lands byte-exact in the mbox.
//!
//! Linux only: the peak resident size is read from `/proc/PID/status` (`VmHWM`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use common::{
    free_addr, peak_kib, start_binary, without_trace_headers, Client, Killed, TempDir, READ_TIMEOUT,
};

/// 40 MiB: larger than the message, so it is accepted.
const MAX_SIZE: &str = "41943040";
/// The message sent with DATA.
const MESSAGE_SIZE: usize = 30 * 1024 * 1024;
/// What the server's peak resident memory may grow by while it takes the messages. The
/// messages are 30 MiB and 12 MiB; the bound is what a session may hold (a spill threshold,
/// read and write buffers) with room to spare for the allocator.
const MAX_GROWTH_KIB: u64 = 8 * 1024;

fn start(addr: SocketAddr, dir: &Path, extra: &str) -> Killed {
    let options = format!(
        "--hostname smtplab.test --max-size {MAX_SIZE} --mail-dir {} --spool {}{extra}",
        dir.join("mail").display(),
        dir.join("spool").display()
    );
    start_binary(
        addr,
        &options.split(' ').map(String::from).collect::<Vec<_>>(),
    )
}

/// The message as stored (lines ending in `\n`): lines of 1,000 octets on the wire, among them lines that
/// start with `.` and with `From `, which both need care on the way (dot-stuffing, quoting).
fn message(size: usize) -> Vec<u8> {
    let mut content = b"Subject: a large message\n\n".to_vec();
    let mut n = 0;
    while content.len() < size {
        let start = match n % 10 {
            3 => ".a dot first",
            5 => "From the start",
            7 => ">From quoted",
            _ => "line",
        };
        let line = format!("{start} {n:08} ");
        content.extend_from_slice(line.as_bytes());
        content.extend_from_slice(&vec![b'x'; 998 - line.len()]);
        content.push(b'\n');
        n += 1;
    }
    content
}

/// The DATA stream for stored content: CRLF line ends, dot-stuffed, then the final dot.
fn wire(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 500 + 8);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(&line[..line.len() - 1]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn envelope(client: &mut Client) {
    client.expect("MAIL FROM:<big@sender.test>", 250);
    client.expect("RCPT TO:<alice@localhost>", 250);
}

#[test]
fn a_large_message_streams_to_disk_in_bounded_memory() {
    if !Path::new("/proc/self/status").exists() {
        println!("SKIP: /proc not available");
        return;
    }
    let dir = TempDir::new("large");
    let addr = free_addr();
    let server = start(addr, dir.path(), "");
    let pid = server.0.id();

    // A small message first, so the session machinery has been used once before we measure.
    let mut client = Client::connect(addr);
    client.expect("EHLO client.test", 250);
    envelope(&mut client);
    client.expect("DATA", 354);
    client.send_expect(b"Subject: warm-up\r\n\r\nhi\r\n.\r\n", 250);
    let before = peak_kib(pid);

    let big = message(MESSAGE_SIZE);
    envelope(&mut client);
    client.expect("DATA", 354);
    client.send_expect(&wire(&big), 250);

    // The same kind of message with BDAT, in two chunks cut inside a CRLF.
    let chunked = message(12 * 1024 * 1024);
    let octets = wire(&chunked);
    let octets = &octets[..octets.len() - 3]; // BDAT has no final dot
    let cut = octets.iter().position(|&b| b == b'\r').expect("a CR") + 1;
    envelope(&mut client);
    let first = [format!("BDAT {cut}\r\n").as_bytes(), &octets[..cut]].concat();
    client.send_expect(&first, 250);
    let rest = &octets[cut..];
    let last = [format!("BDAT {} LAST\r\n", rest.len()).as_bytes(), rest].concat();
    client.send_expect(&last, 250);
    // BDAT is not dot-stuffed: its lines are stored as sent, the `..` included.
    let stored_chunked: Vec<u8> = octets
        .split_inclusive(|&b| b == b'\n')
        .flat_map(|line| [&line[..line.len() - 2], b"\n"].concat())
        .collect();
    client.expect("QUIT", 221);

    let after = peak_kib(pid);
    let growth = after.saturating_sub(before);
    println!("server peak memory: {before} KiB before, {after} KiB after, growth {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak memory grew by {growth} KiB for a {MESSAGE_SIZE}-octet message"
    );

    let mbox = std::fs::read(dir.path().join("mail").join("alice")).expect("the mbox");
    let messages = smtplab::store::mbox::parse_mboxrd(&mbox);
    assert_eq!(messages.len(), 3);
    assert!(
        without_trace_headers(&messages[1].content) == big,
        "the DATA message differs"
    );
    assert!(
        without_trace_headers(&messages[2].content) == stored_chunked,
        "the BDAT message differs"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path().join("mail"))
        .expect("mail dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        !names.iter().any(|name| name.starts_with(".spill-")),
        "a spill file was left: {names:?}"
    );
    drop(server);
}

/// Send a POP3 command and read the status line, which must be `+OK`.
fn pop3_ok(reader: &mut BufReader<TcpStream>, command: &str) -> String {
    reader
        .get_mut()
        .write_all(command.as_bytes())
        .expect("write");
    let mut line = String::new();
    reader.read_line(&mut line).expect("a response in time");
    assert!(line.starts_with("+OK"), "{command:?}: {line}");
    line
}

/// A multi-line POP3 body up to the `.` line, stuffing undone, lines ending in `\n`.
fn pop3_body(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut content = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .expect("the body in time");
        assert!(
            n > 0 && line.ends_with(b"\r\n"),
            "the server closed mid-body"
        );
        if line == b".\r\n" {
            return content;
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
        content.extend_from_slice(&unstuffed[..unstuffed.len() - 2]);
        content.push(b'\n');
    }
}

#[test]
fn pop3_streams_a_large_message_in_bounded_memory() {
    if !Path::new("/proc/self/status").exists() {
        println!("SKIP: /proc not available");
        return;
    }
    let dir = TempDir::new("large-pop3");
    let (addr, pop3_addr) = (free_addr(), free_addr());
    let server = start(addr, dir.path(), &format!(" --pop3 {pop3_addr}"));
    let pid = server.0.id();
    let big = message(MESSAGE_SIZE);
    let mut client = Client::connect(addr);
    client.expect("EHLO client.test", 250);
    envelope(&mut client);
    client.expect("DATA", 354);
    client.send_expect(&wire(&big), 250);
    client.expect("QUIT", 221);

    let stream = TcpStream::connect(pop3_addr).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    pop3_ok(&mut reader, "");
    let before = peak_kib(pid);
    pop3_ok(&mut reader, "USER alice\r\n");
    pop3_ok(&mut reader, "PASS password\r\n");
    let status = pop3_ok(&mut reader, "RETR 1\r\n");
    let retrieved = pop3_body(&mut reader);
    pop3_ok(&mut reader, "TOP 1 2\r\n");
    let top = pop3_body(&mut reader);
    pop3_ok(&mut reader, "QUIT\r\n");
    let after = peak_kib(pid);
    let growth = after.saturating_sub(before);
    println!("POP3 RETR of a {MESSAGE_SIZE}-octet message: peak {before} KiB before login, {after} KiB after, growth {growth} KiB");

    assert!(
        without_trace_headers(&retrieved) == big,
        "RETR differs from what SMTP accepted"
    );
    let size: usize = status["+OK ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a size");
    let lines = retrieved.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        size,
        retrieved.len() + lines,
        "the size counts CRLF line ends"
    );
    let header_end = big.windows(2).position(|w| w == b"\n\n").expect("a header") + 2;
    let two_lines: usize = big[header_end..]
        .split_inclusive(|&b| b == b'\n')
        .take(2)
        .map(<[u8]>::len)
        .sum();
    assert!(
        without_trace_headers(&top) == big[..header_end + two_lines],
        "TOP 1 2"
    );
    assert!(growth < MAX_GROWTH_KIB, "peak memory grew by {growth} KiB");
}

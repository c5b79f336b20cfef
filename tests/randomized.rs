//! Bounded randomized tests with fixed seeds (a small xorshift generator, no crates), so every
//! run tries the same inputs and a failure names the seed that reproduces it:
//! - random byte streams through a real session: always well-formed reply lines, never a panic,
//!   and the server still answers a fresh client afterwards;
//! - random message bodies round-trip byte-exact through DATA and the mbox;
//! - the DATA reader gives the same result however the same bytes are split into reads;
//! - random IMAP streams (commands, literals, IDLE, garbage) get well-formed IMAP responses.

mod common;

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use smtplab::net::line::{Chunks, Ending};
use smtplab::smtp::data::{self, Outcome};

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

/// xorshift64* (Vigna): tiny, fast, and good enough to pick test inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Zero is the one state xorshift never leaves.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Split `bytes` into pieces of 1..=max_piece bytes.
fn random_chunks(rng: &mut Rng, bytes: &[u8], max_piece: usize) -> VecDeque<Vec<u8>> {
    let mut chunks = VecDeque::new();
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + rng.between(1, max_piece)).min(bytes.len());
        chunks.push_back(bytes[at..end].to_vec());
        at = end;
    }
    chunks
}

// ---------------------------------------------------------------------------------------------
// Panics in server threads
// ---------------------------------------------------------------------------------------------

/// Panics anywhere in this test binary (the server runs in-process, so its session threads
/// count too). The default hook still prints each one.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

// ---------------------------------------------------------------------------------------------
// Random sessions
// ---------------------------------------------------------------------------------------------

const COMMANDS: &[&str] = &[
    "EHLO client.example",
    "HELO client.example",
    "MAIL FROM:<mary@client.example>",
    "MAIL FROM:<>",
    "MAIL FROM:<mary@client.example> SIZE=100 BODY=8BITMIME",
    "RCPT TO:<alice@localhost>",
    "RCPT TO:<bob@localhost>",
    "RCPT TO:<nobody@localhost>",
    "RCPT TO:<someone@far.example>",
    "DATA",
    "RSET",
    "NOOP",
    "VRFY alice",
    "EXPN students",
    "HELP",
    "HELP MAIL",
    "AUTH PLAIN",
    "STARTTLS",
    "BDAT 5",
    "BDAT 0 LAST",
    ".",
    "Subject: hello",
    "QUIT",
];

/// One random fragment of a session: a command, garbage, or an odd line ending.
fn random_fragment(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.below(10) {
        0..=3 => {
            out.extend_from_slice(rng.pick(COMMANDS).as_bytes());
            out.extend_from_slice(rng.pick::<&[u8]>(&[b"\r\n", b"\r\n", b"\n", b"\r"]));
        }
        4 => out.extend((0..rng.between(1, 40)).map(|_| rng.byte())),
        5 => out.extend((0..rng.between(1, 40)).map(|_| rng.between(0x20, 0x7e) as u8)),
        6 => out.extend_from_slice(rng.pick::<&[u8]>(&[b"\0", b"\r", b"\n", b"\r\r\n", b"\n.\n"])),
        7 => {
            let long = rng.between(400, 3000);
            out.extend((0..long).map(|_| b'a' + rng.below(26) as u8));
            out.extend_from_slice(b"\r\n");
        }
        8 => out.extend_from_slice(b"\r\n.\r\n"),
        _ => out.extend_from_slice(b"\xff\xfd\x18NOOP\r\n"),
    }
}

/// RFC 5321 §4.2: `Reply-line = *( Reply-code "-" [ textstring ] CRLF )
/// Reply-code [ SP textstring ] CRLF`, codes 2xx..5xx; §4.5.3.1.5: at most 512 octets.
/// Returns a description of the first problem.
fn check_replies(bytes: &[u8]) -> Result<usize, String> {
    let mut replies = 0;
    let mut open: Option<&[u8]> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let shown = String::from_utf8_lossy(line);
        let Some(body) = line.strip_suffix(b"\r\n") else {
            return Err(format!("reply line without CRLF: {shown:?}"));
        };
        if line.len() > 512 || body.len() < 3 {
            return Err(format!("bad reply line length: {shown:?}"));
        }
        let code = &body[..3];
        let valid_code = (b'2'..=b'5').contains(&code[0])
            && (b'0'..=b'5').contains(&code[1])
            && code[2].is_ascii_digit();
        if !valid_code || open.is_some_and(|c| c != code) {
            return Err(format!("bad reply code: {shown:?}"));
        }
        match body.get(3) {
            Some(b'-') => open = Some(code),
            None | Some(b' ') => {
                open = None;
                replies += 1;
            }
            Some(_) => return Err(format!("bad separator after the code: {shown:?}")),
        }
        if body.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("control byte inside a reply: {shown:?}"));
        }
    }
    if open.is_some() {
        return Err("the last reply was left unfinished".into());
    }
    Ok(replies)
}

/// Write `chunks` from a second thread while this one reads every reply up to the server's
/// close; then the write side is shut down, so the server always sees the end.
fn run_stream(server: &common::TestServer, chunks: VecDeque<Vec<u8>>) -> Vec<u8> {
    run_stream_to(server.addr(), chunks)
}

/// `run_stream` against any listener.
fn run_stream_to(addr: std::net::SocketAddr, chunks: VecDeque<Vec<u8>>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(common::READ_TIMEOUT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(common::READ_TIMEOUT))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        for chunk in chunks {
            // The server may close first (QUIT, too many errors): stop writing then.
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(Shutdown::Write);
    });
    let mut received = Vec::new();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => received.extend_from_slice(&line),
            // A reset after the server closed with our bytes unread: the replies are all in.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading replies: {e}"),
        }
    }
    sender.join().expect("writer thread");
    received
}

#[test]
fn random_byte_streams_get_well_formed_replies_and_never_break_the_server() {
    count_panics();
    let server = common::start(&["--max-errors", "1000", "--max-size", "20000"]);
    for seed in 1..=40u64 {
        let mut rng = Rng::new(seed);
        let mut stream = Vec::new();
        for _ in 0..rng.between(5, 60) {
            random_fragment(&mut rng, &mut stream);
        }
        let max_piece = rng.pick(&[1, 7, 64, 1500]);
        let received = run_stream(&server, random_chunks(&mut rng, &stream, max_piece));
        let replies = check_replies(&received).unwrap_or_else(|problem| {
            panic!(
                "seed {seed}: {problem}\nsent {:?}",
                String::from_utf8_lossy(&stream)
            )
        });
        assert!(replies >= 1, "seed {seed}: not even a greeting");
        let mut fresh = server.connect();
        assert_eq!(fresh.greeting.code, 220, "seed {seed}");
        fresh.expect("NOOP", 250);
        fresh.expect("QUIT", 221);
    }
    server.wait_idle();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a thread panicked");
}

#[test]
fn reply_checker_refuses_what_it_should() {
    assert_eq!(check_replies(b"220 hi\r\n250-a\r\n250 b\r\n"), Ok(2));
    assert_eq!(check_replies(b"250\r\n"), Ok(1));
    for bad in [
        &b"250-a\r\n"[..],
        b"250-a\r\n251 b\r\n",
        b"25 x\r\n",
        b"250x\r\n",
        b"250 a\n",
        b"650 a\r\n",
    ] {
        assert!(check_replies(bad).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// DATA round trip through the mbox
// ---------------------------------------------------------------------------------------------

/// A random message as lines (no CR, LF or NUL inside), with lines that need care: a leading
/// dot (dot-stuffing, RFC 5321 §4.5.2), `From ` and `>From ` (mboxrd quoting), empty lines.
fn random_body(rng: &mut Rng, seed: u64) -> Vec<Vec<u8>> {
    let mut lines = vec![format!("X-Random-Body: {seed}").into_bytes()];
    for _ in 0..rng.between(0, 40) {
        let prefix: &[u8] =
            rng.pick::<&[u8]>(&[b"", b"", b".", b"..", b"From ", b">From ", b">>From "]);
        let mut line = prefix.to_vec();
        for _ in 0..rng.between(0, 120) {
            let byte = if rng.chance(80) {
                rng.between(0x20, 0x7e) as u8
            } else {
                rng.between(0x80, 0xff) as u8
            };
            line.push(byte);
        }
        lines.push(line);
    }
    lines
}

/// The body on the wire: CRLF line ends, a dot doubled at the start of a line, and the end.
fn dot_stuffed(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[test]
fn random_bodies_round_trip_byte_exact_through_the_mbox() {
    count_panics();
    let server = common::start(&[]);
    let mut client = server.connect();
    client.expect("EHLO client.example", 250);
    let mut sent = Vec::new();
    for seed in 1..=30u64 {
        let mut rng = Rng::new(seed);
        let lines = random_body(&mut rng, seed);
        client.expect("MAIL FROM:<mary@client.example> BODY=8BITMIME", 250);
        client.expect("RCPT TO:<alice@localhost>", 250);
        client.expect("DATA", 354);
        let wire = dot_stuffed(&lines);
        for chunk in random_chunks(&mut rng, &wire, 300) {
            client.send(&chunk);
        }
        assert_eq!(client.reply().code, 250, "seed {seed}");
        sent.push(
            lines
                .iter()
                .flat_map(|l| [&l[..], b"\n"].concat())
                .collect::<Vec<u8>>(),
        );
    }
    client.expect("QUIT", 221);
    let stored = smtplab::store::mbox::parse_mboxrd(&server.mbox("alice"));
    assert_eq!(stored.len(), sent.len());
    for (n, (message, expected)) in stored.iter().zip(&sent).enumerate() {
        assert_eq!(
            without_trace_headers(&message.content),
            Some(&expected[..]),
            "message {} (seed {})",
            n,
            n + 1
        );
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a thread panicked");
}

/// The content after the `Return-Path:` line and the `Received:` header (with its folded
/// continuation lines) that delivery puts in front.
fn without_trace_headers(content: &[u8]) -> Option<&[u8]> {
    let mut rest = content.strip_prefix(b"Return-Path: ")?;
    rest = &rest[rest.iter().position(|&b| b == b'\n')? + 1..];
    rest = rest.strip_prefix(b"Received: ")?;
    loop {
        rest = &rest[rest.iter().position(|&b| b == b'\n')? + 1..];
        if !rest.starts_with(b"\t") {
            return Some(rest);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The DATA reader does not care how the bytes were split
// ---------------------------------------------------------------------------------------------

/// The socket-free reader, with the spill files in the system's temporary directory.
fn read_message(source: &mut Chunks, max_size: usize, data_ending: Ending) -> Outcome {
    data::read_message(source, max_size, data_ending, &std::env::temp_dir())
}

/// Message content with everything the reader must treat with care.
fn random_data_stream(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.between(0, 30) {
        match rng.below(8) {
            0 => out.extend_from_slice(rng.pick::<&[u8]>(&[
                b".\r\n",
                b".\n",
                b"\r\n.\r\n",
                b"\n.\n",
            ])),
            1 => out.extend_from_slice(rng.pick::<&[u8]>(&[b"\r", b"\n", b"\0", b"\r\r\n"])),
            // Longer than the 16 KiB buffer: the line comes in fragments.
            2 if rng.chance(20) => {
                out.extend(std::iter::repeat_n(b'x', rng.between(16_000, 20_000)))
            }
            3 => out.extend_from_slice(b"..dot\r\n"),
            _ => {
                out.extend((0..rng.between(0, 80)).map(|_| rng.byte()));
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if rng.chance(70) {
        out.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    }
    out
}

#[test]
fn data_reader_result_does_not_depend_on_how_reads_split_the_bytes() {
    for seed in 1..=300u64 {
        let mut rng = Rng::new(seed);
        let bytes = random_data_stream(&mut rng);
        let max_size = rng.pick(&[100, 5_000, 1_000_000]);
        let ending = rng.pick(&[Ending::CrLf, Ending::Lf]);
        let whole = read_message(&mut Chunks::new([bytes.clone()]), max_size, ending);
        // One-byte reads of a long line cost a buffer compaction each: keep those inputs short.
        let tiny = if bytes.len() < 4_000 { 1 } else { 500 };
        for max_piece in [tiny, 7, 100, 20_000] {
            let chunks = random_chunks(&mut rng, &bytes, max_piece);
            let split = read_message(&mut Chunks(chunks), max_size, ending);
            assert_eq!(whole, split, "seed {seed}, pieces up to {max_piece} bytes");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random IMAP sessions
// ---------------------------------------------------------------------------------------------

const IMAP_COMMANDS: &[&str] = &[
    "a LOGIN alice password",
    "b SELECT INBOX",
    "c FETCH 1:* (FLAGS UID RFC822.SIZE BODY.PEEK[])",
    "c2 FETCH 2 (ENVELOPE BODY[HEADER.FIELDS (FROM SUBJECT)]<0.7> BODY[TEXT])",
    "d STORE 1 +FLAGS (\\Deleted \\Seen)",
    "d2 UID STORE 1:* -FLAGS.SILENT (\\Seen)",
    "e EXPUNGE",
    "e2 UID EXPUNGE 1:3",
    "f UID SEARCH OR FROM mary NOT SEEN",
    "f2 SEARCH 1,3:* TEXT hello",
    "g IDLE",
    "DONE",
    "h LOGIN {5}",
    "h2 LOGIN alice {8+}",
    "password",
    "i NOOP",
    "j LOGOUT",
    "k AUTHENTICATE PLAIN",
    "AGFsaWNlAHBhc3N3b3Jk",
    "*",
    "l STATUS INBOX (MESSAGES UIDNEXT UNSEEN)",
    "m LIST \"\" *",
    "n EXAMINE INBOX",
    "o CLOSE",
    "p UNSELECT",
    "q STARTTLS",
    "r FETCH 99999:* FLAGS",
    "s FETCH {3+}",
];

/// One random fragment of an IMAP session.
fn random_imap_fragment(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.below(10) {
        0..=5 => {
            out.extend_from_slice(rng.pick(IMAP_COMMANDS).as_bytes());
            out.extend_from_slice(rng.pick::<&[u8]>(&[b"\r\n", b"\r\n", b"\n"]));
        }
        6 => out.extend((0..rng.between(1, 40)).map(|_| rng.byte())),
        7 => out.extend((0..rng.between(1, 40)).map(|_| rng.between(0x20, 0x7e) as u8)),
        8 => {
            let long = rng.between(400, 12_000);
            out.extend((0..long).map(|_| b'a' + rng.below(26) as u8));
            out.extend_from_slice(b"\r\n");
        }
        _ => out.extend_from_slice(rng.pick::<&[u8]>(&[b"{", b"}\r\n", b"{999999999}\r\n", b"\0"])),
    }
}

/// RFC 9051 §2.2.2, §7: every response line ends in CRLF and is untagged (`* `), a
/// continuation (`+ `), or `tag OK|NO|BAD text`; a line ending in `{n}` is followed by exactly
/// n octets, and the response goes on after them. Returns the number of responses.
fn check_imap_responses(bytes: &[u8]) -> Result<usize, String> {
    let mut responses = 0;
    let mut at = 0;
    let mut continued = false;
    while at < bytes.len() {
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| at + i + 1)
            .ok_or("a response without a line end")?;
        let line = &bytes[at..end];
        let shown = String::from_utf8_lossy(line);
        let body = line
            .strip_suffix(b"\r\n")
            .ok_or_else(|| format!("no CRLF: {shown:?}"))?;
        if !continued {
            let mut words = body.splitn(3, |&b| b == b' ');
            let first = words.next().unwrap_or_default();
            let second = words.next().unwrap_or_default();
            let well_formed = match first {
                b"*" | b"+" => true,
                tag => !tag.is_empty() && [&b"OK"[..], b"NO", b"BAD"].contains(&second),
            };
            if !well_formed {
                return Err(format!("not an IMAP response: {shown:?}"));
            }
            responses += 1;
        }
        at = end;
        continued = false;
        let text = String::from_utf8_lossy(body);
        if let Some(n) = text
            .strip_suffix('}')
            .and_then(|t| t.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            at += n;
            continued = true;
        }
    }
    Ok(responses)
}

#[test]
fn random_imap_streams_get_well_formed_responses_and_never_break_the_server() {
    count_panics();
    let server = common::start(&["--imap", "127.0.0.1:0", "--max-errors", "1000"]);
    for i in 0..3 {
        let content = format!("From: <mary@client.example>\r\nSubject: hello {i}\r\n\r\nHi!\r\n");
        let reply =
            server
                .connect()
                .send_mail("mary@client.example", &["alice@localhost"], &content);
        assert_eq!(reply.code, 250);
    }
    let imap = server.handle.imap_addr(false).expect("IMAP");
    for seed in 1..=30u64 {
        let mut rng = Rng::new(seed);
        let mut stream = b"a0 LOGIN alice password\r\nb0 SELECT INBOX\r\n".to_vec();
        for _ in 0..rng.between(5, 50) {
            random_imap_fragment(&mut rng, &mut stream);
        }
        let max_piece = rng.pick(&[1, 7, 64, 1500]);
        let received = run_stream_to(imap, random_chunks(&mut rng, &stream, max_piece));
        let responses = check_imap_responses(&received).unwrap_or_else(|problem| {
            panic!(
                "seed {seed}: {problem}\nsent {:?}\ngot {:?}",
                String::from_utf8_lossy(&stream),
                String::from_utf8_lossy(&received)
            )
        });
        assert!(responses >= 1, "seed {seed}: not even a greeting");
    }
    common::wait_until("IMAP sessions to end", || {
        server.handle.imap_sessions() == 0
    });
    let mut fresh = BufReader::new(TcpStream::connect(imap).expect("connect"));
    fresh
        .get_ref()
        .set_read_timeout(Some(common::READ_TIMEOUT))
        .unwrap();
    fresh
        .get_mut()
        .write_all(b"z LOGIN alice password\r\nz2 SELECT INBOX\r\n")
        .unwrap();
    let mut all = String::new();
    while !all.contains("z2 ") {
        let mut line = String::new();
        assert!(fresh.read_line(&mut line).unwrap() > 0, "{all}");
        all.push_str(&line);
    }
    assert!(all.contains("z2 OK"), "the mailbox is free again: {all}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a thread panicked");
}

#[test]
fn imap_response_checker_refuses_what_it_should() {
    assert_eq!(check_imap_responses(b"* OK hi\r\na OK done\r\n"), Ok(2));
    assert_eq!(
        check_imap_responses(b"* 1 FETCH (BODY[] {5}\r\nab\ncd)\r\na OK x\r\n"),
        Ok(2)
    );
    for bad in [&b"* OK\n"[..], b"a MAYBE x\r\n", b"hello\r\n", b"* OK"] {
        assert!(check_imap_responses(bad).is_err(), "{bad:?}");
    }
}

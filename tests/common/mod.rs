//! Test harness: a real smtplab server on 127.0.0.1:0 with its own mail directory, and an SMTP
//! client whose every read has a timeout.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtplab::config::{self, Config};
use smtplab::server::{Server, ServerHandle};

/// Every read in a test gives up after this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("smtplab-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server; dropping it stops the acceptor and removes its files.
pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: TempDir,
}

/// Start a server with these command-line options (plus a loopback port, a temp mail
/// directory, a temp spool and the host name `smtplab.test`, unless the options say otherwise).
pub fn start(options: &[&str]) -> TestServer {
    let dir = TempDir::new("server");
    let mail_dir = dir.path().join("mail");
    let mut args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--hostname".into(),
        "smtplab.test".into(),
        "--mail-dir".into(),
        mail_dir.display().to_string(),
    ];
    if options.contains(&"--hostname") {
        // The test names its own host: drop the default `--hostname smtplab.test`.
        if let Some(i) = args.iter().position(|a| a == "--hostname") {
            args.drain(i..i + 2);
        }
    }
    if !options.contains(&"--spool") {
        args.extend([
            "--spool".into(),
            dir.path().join("spool").display().to_string(),
        ]);
    }
    args.extend(options.iter().map(|s| s.to_string()));
    let matches = config::options().parse(&args).expect("options parse");
    let mut config = Config::from_matches(&matches).expect("valid options");
    if options.contains(&"--listen") {
        config.listen.remove(0);
    }
    let handle = Server::bind(config).expect("bind").spawn();
    TestServer { handle, dir }
}

impl TestServer {
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The bytes of a user's mbox ("" when it does not exist).
    pub fn mbox(&self, user: &str) -> Vec<u8> {
        std::fs::read(self.mail_dir().join(user)).unwrap_or_default()
    }

    pub fn mbox_text(&self, user: &str) -> String {
        String::from_utf8_lossy(&self.mbox(user)).into_owned()
    }

    /// How many messages a user's mbox holds.
    pub fn message_count(&self, user: &str) -> usize {
        smtplab::store::mbox::parse_mboxrd(&self.mbox(user)).len()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Wait (with a deadline) until no session is running.
    pub fn wait_idle(&self) {
        wait_until("sessions to end", || self.handle.active_sessions() == 0);
    }
}

/// How long a condition may take to come true: longer than one read, because starting a
/// server (a debug build, on a loaded two-core machine) can take several seconds.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Poll `condition` every 10 ms; panic with `what` after `WAIT_LIMIT`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One reply: the code and its lines (text after the code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code at the start of the last line ("" if none).
    pub fn status(&self) -> String {
        let last = self.lines.last().cloned().unwrap_or_default();
        let first = last.split(' ').next().unwrap_or("").to_string();
        if first.chars().next().is_some_and(|c| c.is_ascii_digit()) && first.contains('.') {
            first
        } else {
            String::new()
        }
    }
}

/// An SMTP client over any stream (plain TCP or TLS); every read has a timeout.
pub struct Conn<S, G> {
    pub reader: BufReader<S>,
    /// The 220 greeting (`Client`); for `TlsClient` Some only with implicit TLS, since after
    /// STARTTLS the greeting came in the clear.
    pub greeting: G,
}

/// A client in the clear.
pub type Client = Conn<TcpStream, Reply>;

/// A client inside TLS (after STARTTLS, or implicit TLS).
pub type TlsClient = Conn<native_tls::TlsStream<TcpStream>, Option<Reply>>;

impl<S: Read + Write, G> Conn<S, G> {
    /// Write raw bytes (no line end added).
    pub fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).expect("write");
        stream.flush().expect("flush");
    }

    /// Send one command line with CRLF and read its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    pub fn reply(&mut self) -> Reply {
        read_reply(&mut self.reader).expect("a reply")
    }

    /// Read a reply, or None if the server closed the connection.
    pub fn try_reply(&mut self) -> Option<Reply> {
        read_reply(&mut self.reader)
    }

    /// Send one command line and assert its reply code; returns the reply.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.cmd(line);
        assert_eq!(reply.code, code, "{line:?} got {reply:?}");
        reply
    }

    /// Send raw bytes (a message, a BDAT chunk) and assert the code of the reply that follows.
    pub fn send_expect(&mut self, bytes: &[u8], code: u16) -> Reply {
        self.send(bytes);
        let reply = self.reply();
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into_owned();
        assert_eq!(reply.code, code, "after {shown:?} got {reply:?}");
        reply
    }

    /// EHLO, MAIL FROM, one RCPT TO per recipient, DATA — asserting 250s and the 354.
    pub fn open_data(&mut self, from: &str, to: &[&str]) {
        self.expect("EHLO client.example", 250);
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        }
        self.expect("DATA", 354);
    }

    /// EHLO, MAIL, RCPT..., DATA, content, "." — asserting each step; returns the final reply.
    pub fn send_mail(&mut self, from: &str, to: &[&str], content: &str) -> Reply {
        self.open_data(from, to);
        self.send(content.as_bytes());
        self.send(b".\r\n");
        self.reply()
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(connect_with_timeouts(addr))
    }

    /// A client on a connection already made (see `connect_from`); reads the greeting.
    pub fn over(stream: TcpStream) -> Client {
        let mut reader = BufReader::new(stream);
        let greeting = read_reply(&mut reader).expect("greeting");
        Client { reader, greeting }
    }

    /// True when the server has closed the connection (reads end of file within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// Read one (possibly multi-line) reply; None on end of file.
pub fn read_reply(reader: &mut impl BufRead) -> Option<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .expect("read within the timeout");
        if n == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        assert!(line.len() >= 3, "short reply line {line:?}");
        let code: u16 = line[..3].parse().expect("reply code");
        let more = line.as_bytes().get(3) == Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_string());
        if !more {
            return Some(Reply { code, lines });
        }
    }
}

/// Every file and directory below `root`, sorted (for "nothing was created" checks).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    found
}

/// True when `tool --version` runs; otherwise prints the SKIP line the rules ask for.
pub fn have_tool(tool: &str) -> bool {
    have_tool_with(tool, &["--version"])
}

// ---------------------------------------------------------------------------------------------
// TLS, external tools and users files (STARTTLS, SMTPS, AUTH tests)

/// The name the test server's certificate is made for.
pub const TLS_HOST: &str = "smtplab.test";

/// A client-side TLS connector that trusts the server's throwaway certificate.
pub fn tls_connector() -> native_tls::TlsConnector {
    native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .expect("TLS connector")
}

impl Client {
    /// Send STARTTLS, expect 220 2.0.0, and run the client side of the handshake.
    pub fn starttls(mut self) -> TlsClient {
        let reply = self.cmd("STARTTLS");
        assert_eq!(
            (reply.code, reply.status().as_str()),
            (220, "2.0.0"),
            "{reply:?}"
        );
        self.handshake()
    }

    /// The client side of the handshake, after the 220 was read. Nothing may be buffered.
    pub fn handshake(self) -> TlsClient {
        assert!(
            self.reader.buffer().is_empty(),
            "bytes after the 220 before TLS: {:?}",
            String::from_utf8_lossy(self.reader.buffer())
        );
        let tcp = self.reader.into_inner();
        let tls = tls_connector()
            .connect(TLS_HOST, tcp)
            .expect("TLS handshake");
        TlsClient {
            reader: BufReader::new(tls),
            greeting: None,
        }
    }
}

impl TlsClient {
    /// Implicit TLS (`--smtps`): the handshake, then the greeting inside TLS.
    pub fn connect_implicit(addr: SocketAddr) -> TlsClient {
        let tcp = connect_with_timeouts(addr);
        let tls = tls_connector()
            .connect(TLS_HOST, tcp)
            .expect("TLS handshake");
        let mut reader = BufReader::new(tls);
        let greeting = read_reply(&mut reader).expect("greeting");
        TlsClient {
            reader,
            greeting: Some(greeting),
        }
    }

    /// True when the server has closed the connection (end of file, or a TLS close).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// True when no byte arrives for `wait` (a read timeout); the normal timeout is restored.
    pub fn is_silent_for(&mut self, wait: Duration) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let tcp = self.reader.get_ref().get_ref();
        tcp.set_read_timeout(Some(wait)).expect("timeout");
        let mut byte = [0u8; 1];
        let result = self.reader.read(&mut byte);
        let tcp = self.reader.get_ref().get_ref();
        tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        match result {
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            Ok(_) => false,
        }
    }
}

/// True when `tool args...` runs and succeeds (for tools without `--version`, such as
/// `openssl version`); otherwise prints the SKIP line the rules ask for.
pub fn have_tool_with(tool: &str, args: &[&str]) -> bool {
    let found = std::process::Command::new(tool)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIP: {tool} not installed");
    }
    found
}

/// What an external tool printed, and whether it finished before the deadline.
pub struct ToolRun {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
    /// The exit status; `None` when the tool was killed at the deadline (or by a signal).
    pub code: Option<i32>,
}

/// Run a command with `input` on its stdin; kill it if it runs longer than `limit`.
pub fn run_tool(command: &mut std::process::Command, input: &[u8], limit: Duration) -> ToolRun {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the tool");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    ToolRun {
        success: status.is_some_and(|s| s.success()),
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

/// Write a `--users` file (`user:password` lines) into `dir`; returns its path as text.
pub fn write_users(dir: &Path, lines: &[&str]) -> String {
    let path = dir.join("users");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write users file");
    path.display().to_string()
}

/// The message as the sender wrote it: a stored message without the `Return-Path:` and
/// `Received:` trace headers the server put in front (continuation lines included).
pub fn without_trace_headers(content: &[u8]) -> Vec<u8> {
    let mut rest = content;
    loop {
        let is_trace = rest.starts_with(b"Return-Path:") || rest.starts_with(b"Received:");
        let is_continuation = rest.starts_with(b"\t") || rest.starts_with(b" ");
        if !(is_trace || is_continuation) {
            return rest.to_vec();
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => rest = &rest[end + 1..],
            None => return Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by several test files: the test world, replies, connections, processes

/// Assert a reply's code and its enhanced status code together.
pub fn assert_reply(reply: &Reply, code: u16, status: &str) {
    assert_eq!(
        (reply.code, reply.status().as_str()),
        (code, status),
        "{reply:?}"
    );
}

/// A server whose local domains are `teach.test` (the security catalogue's test world) and
/// `localhost`, plus these options.
pub fn start_teach_test(extra: &[&str]) -> TestServer {
    let mut options = vec!["--domain", "teach.test", "--domain", "localhost"];
    options.extend_from_slice(extra);
    start(&options)
}

/// A server with a throwaway self-signed certificate (`--tls-self-signed`), plus these options.
pub fn start_tls(extra: &[&str]) -> TestServer {
    let mut options = vec!["--tls-self-signed"];
    options.extend_from_slice(extra);
    start(&options)
}

impl TestServer {
    /// A client that was greeted with 220 and said `EHLO client.example`.
    pub fn greeted(&self) -> Client {
        self.greeted_as("client.example")
    }

    /// A client that was greeted with 220 and said `EHLO <name>`.
    pub fn greeted_as(&self, name: &str) -> Client {
        let mut c = self.connect();
        assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
        c.expect(&format!("EHLO {name}"), 250);
        c
    }

    /// Connect, EHLO, STARTTLS, handshake: a client inside TLS that has not said EHLO yet.
    pub fn tls_client(&self) -> TlsClient {
        self.greeted().starttls()
    }

    /// The messages a user's mbox holds, parsed.
    pub fn messages(&self, user: &str) -> Vec<smtplab::store::mbox::StoredMessage> {
        smtplab::store::mbox::parse_mboxrd(&self.mbox(user))
    }
}

/// A TCP connection to `addr` whose reads and writes give up after `READ_TIMEOUT`.
pub fn connect_with_timeouts(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    stream
}

/// A client connected to `addr` from the loopback address `from` (any of 127.0.0.0/8), as a
/// student on another machine would be; reads and writes give up after `READ_TIMEOUT`.
pub fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let source: SocketAddr = format!("{from}:0").parse().expect("a source address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&source.into())?;
    socket.connect_timeout(&addr.into(), READ_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    Ok(stream)
}

impl Client {
    /// A client from the loopback address `from`, greeted (whatever the greeting says).
    pub fn connect_from(from: &str, addr: SocketAddr) -> Client {
        let mut reader = BufReader::new(connect_from(from, addr).expect("connect"));
        let greeting = read_reply(&mut reader).expect("greeting");
        Client { reader, greeting }
    }
}

/// A free loopback address: bind port 0, note the address, close the socket.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// True when `tool` is an executable on PATH (for tools without a `--version`, such as
/// telnet); otherwise prints the SKIP line the rules ask for.
pub fn on_path(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if !found {
        println!("SKIP: {tool} not installed");
    }
    found
}

/// A child process, killed with SIGKILL (no chance to flush or clean up) and waited for when
/// dropped, also when an assertion fails.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The names of the files in a spool directory (none when it does not exist): for checks that
/// a finished queue leaves nothing behind, content files included.
pub fn spool_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// A scripted next hop (DSN and queue-crash tests)

/// What a scripted next hop saw in one connection.
#[derive(Debug, Default, Clone)]
pub struct HopSession {
    pub commands: Vec<String>,
    /// The raw DATA stream, from after 354 up to and including the final `.` line.
    pub data: Vec<u8>,
}

/// How a scripted next hop answers.
#[derive(Debug, Clone, Copy)]
pub struct HopScript {
    /// List `DSN` after EHLO (RFC 3461 §3).
    pub dsn: bool,
    /// The reply to every RCPT TO.
    pub rcpt_reply: &'static str,
}

/// A next hop on `addr` that answers from a script and records every session; stopped (and
/// its thread joined) when dropped.
pub struct ScriptedHop {
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<HopSession>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedHop {
    pub fn start(addr: &str, script: HopScript) -> ScriptedHop {
        let listener = std::net::TcpListener::bind(addr).expect("bind the next hop");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, flag) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let session = hop_converse(stream, script);
                        log.lock().expect("lock").push(session);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ScriptedHop {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn sessions(&self) -> Vec<HopSession> {
        self.seen.lock().expect("lock").clone()
    }

    /// The DATA streams received so far, one per accepted message.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.sessions()
            .into_iter()
            .filter(|s| !s.data.is_empty())
            .map(|s| s.data)
            .collect()
    }
}

impl Drop for ScriptedHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One SMTP conversation as a minimal server; every read has a timeout.
fn hop_converse(stream: TcpStream, script: HopScript) -> HopSession {
    let mut session = HopSession::default();
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(READ_TIMEOUT)).is_err()
    {
        return session;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return session;
    };
    let mut reader = BufReader::new(stream);
    let _ = writer.write_all(b"220 hop.test ESMTP\r\n");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return session;
        }
        let command = line.trim_end().to_string();
        session.commands.push(command.clone());
        let verb = command.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" if script.dsn => "250-hop.test\r\n250-8BITMIME\r\n250 DSN",
            "EHLO" => "250-hop.test\r\n250 8BITMIME",
            "MAIL" | "RSET" | "NOOP" => "250 2.1.0 OK",
            "RCPT" => script.rcpt_reply,
            "DATA" => {
                let _ = writer.write_all(b"354 go ahead\r\n");
                session.data = hop_read_data(&mut reader);
                "250 2.0.0 queued"
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 2.0.0 bye\r\n");
                return session;
            }
            _ => "502 5.5.1 no",
        };
        let _ = writer.write_all(format!("{reply}\r\n").as_bytes());
    }
}

/// Raw bytes until `\r\n.\r\n` (the stream starts at a line start, so a lone `.\r\n` counts).
pub fn hop_read_data(reader: &mut impl Read) -> Vec<u8> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !(data == b".\r\n" || data.ends_with(b"\r\n.\r\n")) {
        match reader.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            _ => break,
        }
    }
    data
}

// ---------------------------------------------------------------------------------------------
// The real binary, for tests that kill it or measure its memory

/// Start the `smtplab` binary listening on `listen` with these further options, and wait (with
/// a deadline) until it greets a client: the listeners are bound before the start-up recovery,
/// and the first greeting comes after it. Output is discarded; the process is killed when the
/// returned guard is dropped.
pub fn start_binary(listen: SocketAddr, options: &[String]) -> Killed {
    spawn_binary(listen, options, Stdio::null(), Stdio::null())
}

/// As `start_binary`, with the server's log (its standard error) going to `log`.
pub fn start_binary_logging(
    listen: SocketAddr,
    options: &[String],
    log: impl Into<Stdio>,
) -> Killed {
    spawn_binary(listen, options, Stdio::null(), log.into())
}

/// `start_binary`, keeping what the server prints: standard output (the banner, `--trace`) in
/// `dir/stdout` and standard error (the log) in `dir/stderr`.
pub fn start_binary_logged(listen: SocketAddr, options: &[String], dir: &Path) -> Killed {
    let file = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).expect("log file"));
    spawn_binary(listen, options, file("stdout"), file("stderr"))
}

fn spawn_binary(listen: SocketAddr, options: &[String], stdout: Stdio, stderr: Stdio) -> Killed {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .args(["--listen", &listen.to_string()])
        .args(options)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start smtplab");
    let mut server = Killed(child);
    wait_until("the server to listen", || {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("smtplab exited with {status}");
        }
        TcpStream::connect(listen).is_ok()
    });
    let mut greeting = String::new();
    let stream = connect_with_timeouts(listen);
    BufReader::new(stream)
        .read_line(&mut greeting)
        .expect("a greeting within the timeout");
    server
}

/// The soft limit on open files of this process (Linux: `/proc/self/limits`); a server started
/// by a test inherits it.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    Some(soft.parse().unwrap_or(u64::MAX)) // "unlimited"
}

/// Make sure this process (and a server it starts later) may open `needed` files: raise the
/// soft limit towards the hard one with util-linux's `prlimit` when it is lower. True when
/// the limit is enough now.
pub fn raise_open_files_limit(needed: u64) -> bool {
    if open_files_limit().is_some_and(|limit| limit >= needed) {
        return true;
    }
    let _ = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={needed}:"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    open_files_limit().is_some_and(|limit| limit >= needed)
}

/// The peak resident set size of a process, in KiB (Linux: `VmHWM` in `/proc/PID/status`).
pub fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM line");
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmHWM value")
}

/// The lab's first server: local domain one.test on 127.0.0.2, relaying for loopback clients
/// to MX hosts on `mx_port` found through the test nameserver `dns`, retrying after `retry`
/// (plus any `extra` options).
pub fn start_one_test(dns: SocketAddr, mx_port: u16, retry: &str, extra: &[&str]) -> TestServer {
    let (dns, port) = (dns.to_string(), mx_port.to_string());
    #[rustfmt::skip]
    let mut options = vec![
        "--listen", "127.0.0.2:0", "--hostname", "mx.one.test", "--domain", "one.test",
        "--relay-from", "127.0.0.0/8", "--dns", &dns, "--mx-port", &port, "--retry", retry,
    ];
    options.extend_from_slice(extra);
    start(&options)
}

/// Collects what a child process prints, line by line, on a thread of its own.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    pub fn collect(source: impl Read + Send + 'static) -> Output {
        let output = Output::default();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                sink.0.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        output
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    pub fn wait_for(&self, needle: &str) {
        wait_until(&format!("{needle:?} in the output"), || {
            self.text().contains(needle)
        });
    }
}

/// Start `command` with stdin closed and its stdout collected (stderr as the command says);
/// the process is killed when the returned `Killed` is dropped.
pub fn spawn_collecting(command: &mut Command) -> (Killed, Output) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the process");
    let stdout = Output::collect(child.stdout.take().expect("stdout"));
    (Killed(child), stdout)
}

/// The real binary started with `--lab` in `dir` (every listener on a port of its own choosing,
/// host name `smtplab.test` unless `extra` names one), its banner read from stdout.
pub struct LabServer {
    _child: Killed,
    pub stdout: Output,
    /// Each banner line `  ROLE  ADDR  purpose`, by role.
    pub listeners: BTreeMap<String, SocketAddr>,
}

impl LabServer {
    pub fn start(dir: &TempDir, extra: &[&str]) -> LabServer {
        // Port 0 everywhere: a test must not depend on 2525 and its neighbours being free.
        let host = if extra.contains(&"--hostname") {
            &[][..]
        } else {
            &["--hostname", "smtplab.test"][..]
        };
        let (child, stdout) = spawn_collecting(
            Command::new(env!("CARGO_BIN_EXE_smtplab"))
                .current_dir(dir.path())
                .arg("--lab")
                .args(host)
                .args(["--listen", "127.0.0.1:0", "--submission", "127.0.0.1:0"])
                .args(["--smtps", "127.0.0.1:0", "--pop3", "127.0.0.1:0"])
                .args(["--pop3s", "127.0.0.1:0", "--web", "127.0.0.1:0"])
                .args(["--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0"])
                .args(extra)
                .stderr(Stdio::null()),
        );
        stdout.wait_for("Try: telnet");
        let listeners = banner_listeners(&stdout.text());
        LabServer {
            _child: child,
            stdout,
            listeners,
        }
    }

    pub fn addr(&self, role: &str) -> SocketAddr {
        *self
            .listeners
            .get(role)
            .unwrap_or_else(|| panic!("no {role} in the banner:\n{:?}", self.listeners))
    }
}

pub fn banner_listeners(banner: &str) -> BTreeMap<String, SocketAddr> {
    banner
        .lines()
        .filter(|line| line.starts_with("  "))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let role = words.next()?.to_string();
            let addr = words.next()?.parse().ok()?;
            Some((role, addr))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The real binary under attack (limits, TLS limits, the hostile classroom)

/// The binary on a free loopback port, with its own mail directory, spool and log.
pub struct Binary {
    pub process: Killed,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

/// Start the binary on a free loopback port as host `smtplab.test`, with a temporary mail
/// directory and spool, its log (standard error) kept in `server.log`, plus `options`.
pub fn binary(options: &[String]) -> Binary {
    binary_on(free_addr(), options)
}

/// As `binary`, listening on `addr`.
pub fn binary_on(addr: SocketAddr, options: &[String]) -> Binary {
    let dir = TempDir::new("binary");
    let mut args = options.to_vec();
    for (flag, sub) in [("--mail-dir", "mail"), ("--spool", "spool")] {
        args.extend([flag.to_string(), dir.path().join(sub).display().to_string()]);
    }
    if !options.iter().any(|o| o == "--hostname") {
        args.extend(["--hostname".into(), TLS_HOST.into()]);
    }
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
    let process = start_binary_logging(addr, &args, log);
    Binary { process, addr, dir }
}

impl Binary {
    pub fn peak_kib(&self) -> u64 {
        peak_kib(self.process.0.id())
    }

    /// Watch the peak memory for `watch`; fail as soon as it passes `limit_kib`.
    pub fn assert_peak_stays_under(&self, limit_kib: u64, watch: Duration) {
        let until = Instant::now() + watch;
        loop {
            let peak = self.peak_kib();
            assert!(
                peak < limit_kib,
                "peak RSS {peak} KiB, over {limit_kib} KiB"
            );
            if Instant::now() >= until {
                println!("peak RSS {peak} KiB");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The bytes of a user's mbox ("" when it does not exist).
    pub fn mbox(&self, user: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join("mail").join(user)).unwrap_or_default()
    }
}

/// Write `line` again and again, `limit` octets at most, never reading: small writes a moment
/// apart, each ending in the middle of a line, so that every read of the server ends inside a
/// line and it always has unread input. Stops when a write blocks for a second (the server
/// has stopped reading) or after 20 s. Returns the octets written.
pub fn pipeline_without_reading(stream: &mut TcpStream, line: &[u8], limit: usize) -> usize {
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let lines = line.repeat(4096);
    let piece = 4095; // not a multiple of the line: every write ends inside a line
    let (mut sent, mut at) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < limit && Instant::now() < deadline {
        let end = (at + piece).min(lines.len());
        match stream.write(&lines[at..end]) {
            Ok(n) => {
                sent += n;
                at = (at + n) % lines.len();
            }
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    // End inside a line, whatever came before.
    let _ = stream.write(&line[..line.len() / 2]);
    sent
}

/// The start of a TLS handshake record that announces 512 octets: the server waits for them.
pub const CLIENT_HELLO_START: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// Send a ClientHello one byte per `every` (then zeros) on `tcp` until the server closes the
/// connection; how long that took, or None if it was still open after `give_up`.
pub fn trickle_until_closed(
    mut tcp: TcpStream,
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    tcp.set_read_timeout(Some(every)).expect("timeout");
    let started = Instant::now();
    let mut bytes = CLIENT_HELLO_START
        .iter()
        .copied()
        .chain(std::iter::repeat(0));
    while started.elapsed() < give_up {
        let byte = bytes.next().unwrap_or(0);
        if tcp.write_all(&[byte]).is_err() {
            return Some(started.elapsed());
        }
        let mut answer = [0u8; 256];
        match tcp.read(&mut answer) {
            Ok(0) => return Some(started.elapsed()),
            // An alert before the close: keep reading until the close.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

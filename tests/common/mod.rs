//! Test harness: a real smtplab server on 127.0.0.1:0 with its own mail directory, and an SMTP
//! client whose every read has a timeout.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
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
        smtplab::mbox::parse_mboxrd(&self.mbox(user)).len()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Wait (with a deadline) until no session is running.
    pub fn wait_idle(&self) {
        wait_until("sessions to end", || self.handle.active_sessions() == 0);
    }
}

/// Poll `condition` every 10 ms; panic with `what` after 10 s.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + READ_TIMEOUT;
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

pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub greeting: Reply,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        let mut reader = BufReader::new(stream);
        let greeting = read_reply(&mut reader).expect("greeting");
        Client { reader, greeting }
    }

    /// Write raw bytes (no line end added).
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
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

    /// True when the server has closed the connection (reads end of file within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }

    /// EHLO, MAIL, RCPT..., DATA, content, "." — asserting each step; returns the final reply.
    pub fn send_mail(&mut self, from: &str, to: &[&str], content: &str) -> Reply {
        assert_eq!(self.cmd("EHLO client.example").code, 250);
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
        for rcpt in to {
            assert_eq!(
                self.cmd(&format!("RCPT TO:<{rcpt}>")).code,
                250,
                "RCPT {rcpt}"
            );
        }
        assert_eq!(self.cmd("DATA").code, 354);
        self.send(content.as_bytes());
        self.send(b".\r\n");
        self.reply()
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

impl Client {
    /// Send one command line and assert its reply code; returns the reply.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.cmd(line);
        assert_eq!(reply.code, code, "{line:?} got {reply:?}");
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
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIP: {tool} not installed");
    }
    found
}

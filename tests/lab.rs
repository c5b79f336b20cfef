//! `smtplab --lab`: the whole lab from minute 0. The real binary in an empty directory opens all
//! five listeners, and one student's path runs without a restart: a session on SMTP, STARTTLS
//! and AUTH on submission, and the mail read back over POP3.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{connect_with_timeouts, Client, Killed, Output, TempDir, TlsClient};

/// The real binary started with `--lab` in `dir`, its banner read from stdout.
struct Lab {
    _child: Killed,
    stdout: Output,
    /// Each banner line `  ROLE  ADDR  purpose`, by role.
    listeners: BTreeMap<String, SocketAddr>,
}

impl Lab {
    fn start(dir: &TempDir, extra: &[&str]) -> Lab {
        // Port 0 everywhere: a test must not depend on 2525 and its neighbours being free.
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtplab"))
            .current_dir(dir.path())
            .args(["--lab", "--hostname", "smtplab.test"])
            .args(["--listen", "127.0.0.1:0", "--submission", "127.0.0.1:0"])
            .args(["--smtps", "127.0.0.1:0", "--pop3", "127.0.0.1:0"])
            .args(["--pop3s", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtplab --lab");
        let stdout = Output::collect(child.stdout.take().expect("stdout"));
        let child = Killed(child);
        stdout.wait_for("Try: telnet");
        let listeners = banner_listeners(&stdout.text());
        Lab {
            _child: child,
            stdout,
            listeners,
        }
    }

    fn addr(&self, role: &str) -> SocketAddr {
        *self
            .listeners
            .get(role)
            .unwrap_or_else(|| panic!("no {role} in the banner:\n{:?}", self.listeners))
    }
}

fn banner_listeners(banner: &str) -> BTreeMap<String, SocketAddr> {
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

/// A POP3 line reader and writer over any stream; every read has the common timeout.
struct Pop3<S: std::io::Read + Write>(BufReader<S>);

impl<S: std::io::Read + Write> Pop3<S> {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("a POP3 line");
        line.trim_end().to_string()
    }

    fn ok(&mut self, command: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("write");
        let line = self.line();
        assert!(line.starts_with("+OK"), "{command} got {line}");
        line
    }

    /// A multi-line answer, up to the lone dot.
    fn multi(&mut self, command: &str) -> String {
        self.ok(command);
        let mut text = String::new();
        loop {
            let line = self.line();
            if line == "." {
                return text;
            }
            text.push_str(&line);
            text.push('\n');
        }
    }
}

#[test]
fn lab_opens_five_listeners_and_one_path_runs_without_a_restart() {
    let dir = TempDir::new("lab");
    let lab = Lab::start(&dir, &[]);
    let roles: Vec<&str> = lab.listeners.keys().map(String::as_str).collect();
    assert_eq!(roles, ["POP3", "POP3S", "SMTP", "SMTPS", "submission"]);

    // Minute 0: a telnet-style session on the SMTP port, to bob.
    let mut smtp = Client::connect(lab.addr("SMTP"));
    assert_eq!(smtp.greeting.code, 220);
    let ehlo = smtp.expect("EHLO student.example", 250);
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    let reply = smtp.send_mail(
        "alice@localhost",
        &["bob@localhost"],
        "Subject: one\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    smtp.expect("QUIT", 221);

    // Later: STARTTLS and AUTH on submission, the same server, to alice.
    let mut submission = Client::connect(lab.addr("submission"));
    submission.expect("EHLO student.example", 250);
    let mut tls = submission.starttls();
    tls.expect("EHLO student.example", 250);
    tls.expect("AUTH PLAIN AGJvYgBwYXNzd29yZA==", 235); // \0bob\0password
    let reply = tls.send_mail(
        "bob@localhost",
        &["alice@localhost"],
        "Subject: two\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    tls.expect("QUIT", 221);

    // And the mail read back over POP3.
    let mut pop3 = Pop3(BufReader::new(connect_with_timeouts(lab.addr("POP3"))));
    assert!(pop3.line().starts_with("+OK"));
    pop3.ok("USER alice");
    pop3.ok("PASS password");
    let message = pop3.multi("RETR 1");
    assert!(message.contains("Subject: two"), "{message}");
    pop3.ok("QUIT");

    // The implicit-TLS listeners answer inside TLS.
    let smtps = TlsClient::connect_implicit(lab.addr("SMTPS"));
    assert_eq!(smtps.greeting.map(|g| g.code), Some(220));
    let tcp = connect_with_timeouts(lab.addr("POP3S"));
    let tls = common::tls_connector()
        .connect(common::TLS_HOST, tcp)
        .expect("POP3S handshake");
    let mut pop3s = Pop3(BufReader::new(tls));
    assert!(pop3s.line().starts_with("+OK"));

    // Every session was recorded in ./transcripts-mine, beside where the lab was started.
    common::wait_until("two SMTP transcripts", || {
        std::fs::read_dir(dir.path().join("transcripts-mine"))
            .is_ok_and(|entries| entries.count() >= 2)
    });
    assert!(lab.stdout.text().contains("transcripts-mine"));
}

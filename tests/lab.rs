//! `smtplab --lab`: the whole lab from minute 0. The real binary in an empty directory opens all
//! five listeners, and one student's path runs without a restart: a session on SMTP, STARTTLS
//! and AUTH on submission, and the mail read back over POP3.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use common::{connect_with_timeouts, Client, Killed, LabServer, Output, TempDir, TlsClient};

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
fn lab_opens_every_listener_and_one_path_runs_without_a_restart() {
    let dir = TempDir::new("lab");
    let lab = LabServer::start(&dir, &[]);
    let roles: Vec<&str> = lab.listeners.keys().map(String::as_str).collect();
    assert_eq!(
        roles,
        [
            "IMAP",
            "IMAPS",
            "POP3",
            "POP3S",
            "SMTP",
            "SMTPS",
            "submission",
            "web"
        ]
    );

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
    // A second login while this one is open: the answer says what is going on, in words a
    // student can act on (curl shows only "Access denied" for a bare [IN-USE]).
    let mut second = Pop3(BufReader::new(connect_with_timeouts(lab.addr("POP3"))));
    second.line();
    second.ok("USER alice");
    second
        .0
        .get_mut()
        .write_all(b"PASS password\r\n")
        .expect("write");
    let busy = second.line();
    assert!(busy.starts_with("-ERR [IN-USE]"), "{busy}");
    assert!(
        busy.contains("open in another POP3 or IMAP session"),
        "{busy}"
    );
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
    let tcp = connect_with_timeouts(lab.addr("IMAPS"));
    let tls = common::tls_connector()
        .connect(common::TLS_HOST, tcp)
        .expect("IMAPS handshake");
    let mut imaps = Pop3(BufReader::new(tls));
    assert!(imaps
        .line()
        .starts_with("* OK [CAPABILITY IMAP4rev1 IMAP4rev2"));

    // Every session was recorded in ./transcripts-mine, beside where the lab was started.
    common::wait_until("two SMTP transcripts", || {
        std::fs::read_dir(dir.path().join("transcripts-mine"))
            .is_ok_and(|entries| entries.count() >= 2)
    });
    assert!(lab.stdout.text().contains("transcripts-mine"));
}

#[test]
fn a_roster_serves_a_class_with_its_own_passwords_and_the_list_class() {
    let dir = TempDir::new("roster");
    let output = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .current_dir(dir.path())
        .args(["roster", "3"])
        .output()
        .expect("run smtplab roster");
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    let logins: BTreeMap<String, String> = table
        .lines()
        .filter(|line| line.starts_with("student"))
        .filter_map(|line| line.split_once("  "))
        .map(|(user, password)| (user.to_string(), password.trim().to_string()))
        .collect();
    assert_eq!(logins.len(), 3, "{table}");

    let lab = LabServer::start(
        &dir,
        &["--users", "class.users", "--aliases", "class.aliases"],
    );
    let banner = lab.stdout.text();
    assert!(!banner.contains("Demo users"), "{banner}");
    assert!(!banner.contains("password"), "{banner}");

    // Mail to the list class reaches every student, who reads it with the password on paper.
    let mut smtp = Client::connect(lab.addr("SMTP"));
    let reply = smtp.send_mail(
        "teacher@localhost",
        &["class@localhost"],
        "Subject: welcome\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    for (user, password) in &logins {
        let mut pop3 = Pop3(BufReader::new(connect_with_timeouts(lab.addr("POP3"))));
        pop3.line();
        pop3.ok(&format!("USER {user}"));
        pop3.ok(&format!("PASS {password}"));
        assert!(pop3.multi("RETR 1").contains("Subject: welcome"));
        pop3.ok("QUIT");
    }
    // A second roster would silently change handed-out passwords: it is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .current_dir(dir.path())
        .args(["roster", "3"])
        .output()
        .expect("run smtplab roster");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("class.users"));
}

#[test]
fn help_fits_80_columns_and_names_every_subcommand() {
    let output = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .arg("--help")
        .output()
        .expect("run smtplab --help");
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let wide: Vec<&str> = help.lines().filter(|l| l.chars().count() > 80).collect();
    assert!(wide.is_empty(), "lines over 80 columns: {wide:#?}");
    // Every subcommand main.rs dispatches, and `states --pop3` and `--imap`, are in the usage lines.
    let main = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/main.rs"))
        .expect("read main.rs");
    let subcommands: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Some(\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(subcommands.len() >= 8, "{subcommands:?}");
    for name in subcommands {
        assert!(
            help.contains(&format!("smtplab {name} ")),
            "--help omits {name}"
        );
    }
    assert!(help.contains("|--pop3|"), "--help omits states --pop3");
    assert!(help.contains("|--imap]"), "--help omits states --imap");
}

// ---------------------------------------------------------------------------------------------
// `smtplab dns`: the lab nameserver
// ---------------------------------------------------------------------------------------------

/// The zone of the relay lab, as `lessons/relay-lab.sh` writes it (between `<<'ZONE'` and
/// `ZONE`): the test serves the very file the lab does.
fn lab_zone() -> String {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lessons/relay-lab.sh"))
            .expect("read relay-lab.sh");
    let (_, rest) = script
        .split_once("<<'ZONE'\n")
        .expect("a zone in relay-lab.sh");
    let (zone, _) = rest.split_once("\nZONE\n").expect("the end of the zone");
    format!("{zone}\n")
}

/// `smtplab dns` on a port of its own choosing, its console collected.
fn start_dns(dir: &TempDir) -> (Killed, Output, SocketAddr) {
    let zone = dir.path().join("lab.zone");
    std::fs::write(&zone, lab_zone()).expect("write zone");
    let (child, console) = common::spawn_collecting(
        Command::new(env!("CARGO_BIN_EXE_smtplab"))
            .arg("dns")
            .arg("--zone")
            .arg(&zone)
            .args(["--listen", "127.0.0.1:0"])
            .stderr(Stdio::null()),
    );
    console.wait_for("recursion refused");
    let text = console.text();
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {text:?}"));
    (child, console, addr)
}

/// One real UDP query, as a resolver sends it (recursion desired).
fn udp_query(server: SocketAddr, name: &str, kind: RecordType) -> Message {
    let mut query = Message::new(4242, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(common::READ_TIMEOUT))
        .expect("timeout");
    socket
        .send_to(&query.to_vec().expect("encode"), server)
        .expect("send");
    let mut buffer = [0u8; 4096];
    let (len, _) = socket.recv_from(&mut buffer).expect("an answer in time");
    Message::from_vec(&buffer[..len]).expect("a DNS message")
}

#[test]
fn the_lab_nameserver_answers_mx_from_a_zone_file_and_logs_every_query() {
    let dir = TempDir::new("lab-dns");
    let (_dns, console, addr) = start_dns(&dir);

    let mx = udp_query(addr, "one.test.", RecordType::MX);
    assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
    assert!(mx.metadata.authoritative && !mx.metadata.recursion_available);
    let found: Vec<String> = mx.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(found, ["10 mx.one.test."]);
    let null = udp_query(addr, "nullmx.test.", RecordType::MX);
    assert_eq!(null.answers[0].data.to_string(), "0 .");
    let outside = udp_query(addr, "example.com.", RecordType::MX);
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
    console.wait_for("MX example.com. -> REFUSED");
    console.wait_for("MX one.test. -> NOERROR: 10 mx.one.test.");

    // The relay's own resolver (hickory, over UDP) reads the same answer.
    let lookup = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .args(["mx", "two.test", "--dns", &addr.to_string()])
        .output()
        .expect("run smtplab mx");
    let shown = String::from_utf8_lossy(&lookup.stdout);
    assert!(
        shown.contains("mx.two.test") && shown.contains("127.0.0.3"),
        "{shown}"
    );

    if common::on_path("dig") {
        let dig = Command::new("dig")
            .args([
                "+short",
                "+time=5",
                "+tries=1",
                "-p",
                &addr.port().to_string(),
            ])
            .args(["@127.0.0.1", "MX", "one.test"])
            .output()
            .expect("run dig");
        assert_eq!(
            String::from_utf8_lossy(&dig.stdout).trim(),
            "10 mx.one.test."
        );
        let dig_tcp = Command::new("dig")
            .args([
                "+tcp",
                "+short",
                "+time=5",
                "+tries=1",
                "-p",
                &addr.port().to_string(),
            ])
            .args(["@127.0.0.1", "A", "mx.two.test"])
            .output()
            .expect("run dig +tcp");
        assert_eq!(String::from_utf8_lossy(&dig_tcp.stdout).trim(), "127.0.0.3");
    }
}

// ---------------------------------------------------------------------------------------------
// The projector console
// ---------------------------------------------------------------------------------------------

/// `smtplab --trace` with `RUST_LOG` as given (unset for `None`); one session with a 550, then
/// what stdout and stderr showed.
fn console_with_a_refusal(rust_log: Option<&str>) -> (String, String) {
    let dir = TempDir::new("console");
    let listen = common::free_addr().to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_smtplab"));
    command
        .current_dir(dir.path())
        .args(["--trace", "--listen", &listen, "--hostname", "smtplab.test"])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let (mut child, stdout) = common::spawn_collecting(&mut command);
    let stderr = Output::collect(child.0.stderr.take().expect("stderr"));
    stdout.wait_for("Try: telnet");

    let mut client = Client::connect(listen.parse().expect("addr"));
    client.expect("HELO student.example", 250);
    client.expect("MAIL FROM:<alice@localhost>", 250);
    client.expect("RCPT TO:<nobody@localhost>", 550);
    client.expect("QUIT", 221);
    stdout.wait_for("-- disconnect");
    if rust_log.is_some() {
        stderr.wait_for("550 5.1.1");
    }
    (stdout.text(), stderr.text())
}

#[test]
fn with_trace_a_refusal_is_shown_exactly_once_across_stdout_and_stderr() {
    let (stdout, stderr) = console_with_a_refusal(None);
    let both = format!("{stdout}{stderr}");
    let shown = both.matches("550 5.1.1").count();
    assert_eq!(shown, 1, "the 550 is shown {shown} times:\n{both}");
}

#[test]
fn with_trace_rust_log_still_brings_the_log_back() {
    let (_, stderr) = console_with_a_refusal(Some("info"));
    assert!(stderr.contains("550 5.1.1"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// `compare` that teaches: a session typed against the real server, recorded, then compared
// ---------------------------------------------------------------------------------------------

/// Type `lines` (commands, and message text after a 354) into a fresh server that records
/// sessions, and return the path of the recording.
fn recorded_session(dir: &TempDir, lines: &[&str]) -> std::path::PathBuf {
    let record = dir.path().join("recorded");
    let server = common::start(&["--transcripts", record.to_str().unwrap()]);
    let mut client = server.connect();
    let mut in_data = false;
    for line in lines {
        client.send(format!("{line}\r\n").as_bytes());
        if in_data && *line != "." {
            continue;
        }
        let reply = client.reply();
        in_data = reply.code == 354;
    }
    server.wait_idle();
    let files = common::files_under(&record);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn run_compare(mine: &std::path::Path) -> (Option<i32>, String) {
    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/transcripts/01-seed-session.txt"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .arg("compare")
        .arg(mine)
        .arg(reference)
        .output()
        .expect("run smtplab compare");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

const SEED_MESSAGE: [&str; 6] = [
    "From: <mary@client.example>",
    "To: <alice@localhost>",
    "Subject: Hello",
    "",
    "Hi Alice!",
    ".",
];

#[test]
fn the_seed_session_typed_with_ehlo_compares_equal_to_the_golden_one() {
    let dir = TempDir::new("compare-seed");
    let mut lines = vec![
        "EHLO client.example",
        "MAIL FROM:<mary@client.example>",
        "RCPT TO:<alice@localhost>",
        "RCPT TO:<nosuchuser@localhost>",
        "DATA",
    ];
    lines.extend(SEED_MESSAGE);
    lines.push("QUIT");
    let (code, out) = run_compare(&recorded_session(&dir, &lines));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("matches"), "{out}");
}

#[test]
fn compare_names_the_503_of_rcpt_before_mail_once_and_in_the_students_order() {
    let dir = TempDir::new("compare-503");
    let mut lines = vec![
        "HELO client.example",
        "RCPT TO:<alice@localhost>",
        "MAIL FROM:mary@client.example",
        "MAIL FROM:<mary@client.example>",
        "DATA",
    ];
    lines.extend(SEED_MESSAGE);
    lines.push("QUIT");
    let (code, out) = run_compare(&recorded_session(&dir, &lines));
    assert_eq!(code, Some(1), "{out}");
    let findings: Vec<&str> = out.lines().skip(1).collect();
    // 1. RCPT TO before MAIL: the 503, what it means, why, and where the RFC says so.
    assert!(findings[0].contains("RCPT TO (your line"), "{out}");
    assert!(
        findings[0].contains("answered 503, a bad sequence of commands"),
        "{out}"
    );
    assert!(
        findings[0].contains("only MAIL FROM opens one (RFC 5321 §4.1.1.3, §4.1.4)"),
        "{out}"
    );
    assert!(findings[0].contains("only after MAIL FROM"), "{out}");
    // 2. The MAIL FROM without brackets, retried at once: told where it happened.
    assert!(findings[1].contains("MAIL FROM (your line"), "{out}");
    assert!(
        findings[1].contains("501") && findings[1].contains("§4.1.2"),
        "{out}"
    );
    assert!(findings[1].contains("again"), "{out}");
    // 3. Both missing recipients in one finding, then what they cost at DATA, and the message
    //    typed after the refused DATA as one finding.
    assert!(
        findings[2].contains("never sent RCPT TO (reference lines 11, 13)"),
        "{out}"
    );
    assert!(
        findings[3].contains("DATA (your line") && findings[3].contains("503"),
        "{out}"
    );
    assert!(findings[4].contains("message text (your lines"), "{out}");
    assert_eq!(findings.len(), 5, "{out}");
    let mut sorted: Vec<usize> = findings.iter().filter_map(|f| your_line(f)).collect();
    let in_order = sorted.clone();
    sorted.sort_unstable();
    assert_eq!(
        in_order, sorted,
        "findings follow the student's lines:\n{out}"
    );
}

/// The number after "your line " in a finding, if it has one.
fn your_line(finding: &str) -> Option<usize> {
    let after = finding.split("your line ").nth(1)?;
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

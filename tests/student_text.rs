//! What a student types, against the real binary: it cannot forge the `Received:` header, it
//! reaches the teacher's terminal only escaped (trace, compare, replay, queue, mx), and it cannot
//! fill the disk through a transcript. Recordings replay against any smtplab and leave replays
//! out.

mod common;
mod dns_server;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_addr, run_tool, start_binary, start_binary_logged, Client, TempDir, ToolRun};

const TOOL_LIMIT: Duration = Duration::from_secs(20);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mail_dir(dir: &TempDir) -> String {
    dir.path().join("mail").display().to_string()
}

/// `smtplab ARGS...`, bounded in time.
fn smtplab(arguments: &[&str]) -> ToolRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smtplab"));
    command.args(arguments);
    run_tool(&mut command, b"", TOOL_LIMIT)
}

/// No byte that a terminal acts on: C0 controls but TAB and LF, DEL, C1, bidi and separators.
fn assert_terminal_safe(what: &str, text: &str) {
    let bad = text
        .chars()
        .find(|&c| c != '\n' && smtplab::visible::is_hidden(c));
    assert_eq!(bad, None, "{what} prints a raw {bad:?}:\n{text}");
}

// ---------------------------------------------------------------------------------------------
// The Received header

#[test]
fn helo_text_cannot_forge_the_received_header() {
    let dir = TempDir::new("helo-forgery");
    let smtp = free_addr();
    let _server = start_binary(smtp, &args(&["--mail-dir", &mail_dir(&dir)]));
    let mut c = Client::connect(smtp);
    for forged in [
        "EHLO evil.example ([10.9.8.7])\u{85}X-Injected: yes\u{2028} by trusted.example (Postfix)",
        "HELO evil.example\u{202e}",
        "EHLO [10.9.8.7]) by trusted.example",
        "EHLO 10.9.8.7",
    ] {
        let refused = c.cmd(forged);
        assert_eq!(refused.code, 501, "{forged:?}: {refused:?}");
        assert!(refused.text().contains("RFC 5321 §4.1.1.1"), "{refused:?}");
    }
    // Refused greetings leave the session where it was: still no HELO.
    assert_eq!(c.cmd("MAIL FROM:<s@client.example>").code, 503);
    c.expect("EHLO good.example", 250);
    c.expect("MAIL FROM:<s@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("DATA", 354);
    c.send_expect(b"Subject: hi\r\n\r\nhello\r\n.\r\n", 250);
    let stored = std::fs::read_to_string(dir.path().join("mail").join("alice")).unwrap();
    // Security catalogue 8.07: the new Received: header comes first after Return-Path and names
    // the HELO argument, then the real address, where readers look for it.
    let lines: Vec<&str> = stored.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.starts_with("Return-Path:"))
        .expect("a Return-Path line");
    assert_eq!(
        lines[at + 1],
        "Received: from good.example ([127.0.0.1])",
        "{stored}"
    );
    let by = lines[at + 2];
    assert!(
        by.contains("with ESMTP id ") && by.trim_start().starts_with("by "),
        "{by}"
    );
    let date = lines[at + 3];
    assert!(
        date.contains("for <alice@localhost>;") && date.ends_with(" +0000"),
        "{date}"
    );
    assert!(
        !stored.contains("X-Injected") && !stored.contains("10.9.8.7"),
        "{stored}"
    );
    assert_terminal_safe("the mbox", &stored);
}

// ---------------------------------------------------------------------------------------------
// The teacher's terminal

#[test]
fn the_trace_console_escapes_what_a_student_types() {
    let dir = TempDir::new("trace-escapes");
    let smtp = free_addr();
    let options = args(&["--trace", "-v", "--mail-dir", &mail_dir(&dir)]);
    let server = start_binary_logged(smtp, &options, dir.path());
    let mut c = Client::connect(smtp);
    c.send("NOOP \u{1b}]0;OWNED\u{7}\u{1b}[2J \u{9b}2J \u{202e}\r\n".as_bytes());
    c.reply();
    c.send("EHLO \u{1b}[31mred\r\nXYZ\u{85}\r\n".as_bytes());
    c.reply();
    c.reply();
    // An unknown verb is quoted in the 500: a right-to-left override must not reach the log raw.
    assert_eq!(c.cmd("FOO\u{202e}oof").code, 500);
    c.expect("QUIT", 221);
    assert!(c.is_closed());
    drop(server);
    let console = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert_terminal_safe("--trace", &console);
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_terminal_safe("the log", &log);
    assert!(log.contains("FOO{xE2}{x80}{xAE}oof"), "{log}");
    assert!(
        console.contains("C: NOOP {x1B}]0;OWNED{x07}{x1B}[2J"),
        "{console}"
    );
}

/// A student's transcript with a terminal escape in a client line, and a reference.
fn student_files(dir: &Path) -> (PathBuf, PathBuf) {
    let mine = dir.join("mine.txt");
    let reference = dir.join("reference.txt");
    std::fs::write(
        &mine,
        "S: 220 {host} ESMTP\nC: {x1B}]0;OWNED{x07}{x1B}[2J\nS: 500 5.5.2 no\nC: QUIT\nS: 221 bye\n",
    )
    .unwrap();
    std::fs::write(
        &reference,
        "S: 220 {host} ESMTP\nC: HELO x\nS: 250 {host}\nC: QUIT\nS: 221 bye\n",
    )
    .unwrap();
    (mine, reference)
}

#[test]
fn compare_escapes_a_students_terminal_codes() {
    let dir = TempDir::new("compare-escapes");
    let (mine, reference) = student_files(dir.path());
    let run = smtplab(&[
        "compare",
        &mine.display().to_string(),
        &reference.display().to_string(),
    ]);
    assert_terminal_safe("compare", &run.stdout);
    assert_terminal_safe("compare", &run.stderr);
    assert!(run.stdout.contains("{x1B}"), "{}", run.stdout);

    // A raw escape typed into a transcript file is refused, and the refusal is escaped too.
    std::fs::write(&mine, "C: HELO \u{1b}[2J\n").unwrap();
    let run = smtplab(&[
        "compare",
        &mine.display().to_string(),
        &reference.display().to_string(),
    ]);
    assert!(!run.success);
    assert_terminal_safe("compare", &run.stderr);
    assert!(run.stderr.contains("write it as {x1B}"), "{}", run.stderr);
}

/// A server that says terminal escapes: it answers every line with one.
fn hostile_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_read_timeout(Some(common::READ_TIMEOUT));
        let mut writer = stream.try_clone().unwrap();
        let _ = writer.write_all("220 evil \u{1b}]0;OWNED\u{7}\r\n".as_bytes());
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let said = format!("250 {line} \u{9b}2J\u{1b}[2J\r\n");
            if writer.write_all(said.as_bytes()).is_err() || line == "QUIT" {
                break;
            }
        }
    });
    (addr, handle)
}

#[test]
fn replay_escapes_what_a_server_says() {
    let dir = TempDir::new("replay-escapes");
    let (mine, _) = student_files(dir.path());
    let (server, handle) = hostile_server();
    let run = smtplab(&[
        "replay",
        &mine.display().to_string(),
        "--server",
        &server.to_string(),
        "--color",
        "never",
    ]);
    handle.join().unwrap();
    assert_terminal_safe("replay", &run.stdout);
    assert!(run.stdout.contains("{x1B}]0;OWNED{x07}"), "{}", run.stdout);
}

#[test]
fn the_queue_listing_escapes_remote_replies() {
    let dir = TempDir::new("queue-escapes");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let state = "smtplab-queue 2\nid: q1\nmessage-id: <m@x>\ncreated: 0\nattempts: 1\n\
                 next-attempt: 0\nsender: s@client.example\n\
                 recipient: pending\tv@relay.example\tmx.relay.example\t451 \u{1b}]0;OWNED\u{7}\t\t\n\n";
    std::fs::write(spool.join("q1"), state).unwrap();
    std::fs::write(spool.join("q1.msg"), "Subject: x\n\nx\n").unwrap();
    let run = smtplab(&["queue", "--spool", &spool.display().to_string()]);
    assert!(run.stdout.contains("v@relay.example"), "{}", run.stdout);
    assert_terminal_safe("queue", &run.stdout);
}

#[test]
fn the_mx_lookup_escapes_the_domain_a_student_types() {
    let dns = dns_server::DnsServer::start(
        dns_server::Zone::new().a("mx.evil.test", [127, 0, 0, 3].into()),
    );
    let nameserver = dns.addr().to_string();
    for domain in [
        "evil\u{1b}]0;OWNED\u{7}.test",
        "evil\u{202e}tset.test",
        "\u{9b}2J.evil.test",
    ] {
        let run = smtplab(&["mx", domain, "--dns", &nameserver]);
        assert_terminal_safe("mx", &run.stdout);
        assert_terminal_safe("mx", &run.stderr);
        assert!(run.stdout.contains("evil"), "{domain:?}: {}", run.stdout);
    }
}

// ---------------------------------------------------------------------------------------------
// Transcripts on disk

#[test]
fn a_transcript_is_capped_per_session_and_says_so() {
    let dir = TempDir::new("transcript-cap");
    let smtp = free_addr();
    let recordings = dir.path().join("recordings");
    let options = args(&[
        "--max-size",
        "20000",
        "--transcripts",
        &recordings.display().to_string(),
        "--mail-dir",
        &mail_dir(&dir),
    ]);
    let _server = start_binary(smtp, &options);
    let mut c = Client::connect(smtp);
    c.open_data("s@client.example", &["alice@localhost"]);
    // 210 KB of message text: the transcript keeps --max-size plus 64 KiB of it, no more.
    let line = format!("{}\r\n", "x".repeat(68));
    c.send(line.repeat(3000).as_bytes());
    c.send_expect(b".\r\n", 552);
    c.expect("QUIT", 221);
    assert!(c.is_closed());
    let files = common::files_under(&recordings);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.len() <= 20_000 + 64 * 1024 + 512,
        "{} bytes",
        text.len()
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("# note: the transcript was cut here"),
        "{last}"
    );
    assert!(smtplab::lab::transcript::Transcript::parse(&text).is_ok());
}

/// The recordings in `dir`, sorted by name as `ls` shows them.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut files = common::files_under(dir);
    files.sort();
    files
}

#[test]
fn a_recording_replays_against_any_fresh_server_and_replays_are_not_recorded() {
    let dir = TempDir::new("recordings");
    let (first, second) = (free_addr(), free_addr());
    let (mine, theirs) = (dir.path().join("mine"), dir.path().join("theirs"));
    let start = |listen, name: &str, record: &Path, mail: &str| {
        let options = args(&[
            "--hostname",
            name,
            "--transcripts",
            &record.display().to_string(),
            "--mail-dir",
            &dir.path().join(mail).display().to_string(),
        ]);
        start_binary(listen, &options)
    };
    let _one = start(first, "one.test", &mine, "mail-one");
    // Session S1 says only QUIT; S2 sends a message, so its 250 names message S2-1-<this process>.
    let mut c = Client::connect(first);
    c.expect("QUIT", 221);
    let mut c = Client::connect(first);
    c.expect("EHLO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("DATA", 354);
    c.send_expect(b"Subject: hi\r\n\r\nhello\r\n.\r\n", 250);
    c.expect("QUIT", 221);
    assert!(c.is_closed());
    common::wait_until("two recordings", || recordings(&mine).len() == 2);
    let listed = recordings(&mine);
    let last = std::fs::read_to_string(&listed[1]).unwrap();
    assert!(
        last.contains("C: MAIL FROM"),
        "ls order is session order:\n{last}"
    );
    assert!(last.contains("S: 220 {host} ESMTP"), "{last}");
    assert!(last.contains("OK: message {id} delivered"), "{last}");

    // Another name, a fresh numbering: the recording still matches, reply texts included.
    let _two = start(second, "two.test", &theirs, "mail-two");
    let file = listed[1].display().to_string();
    let run = smtplab(&[
        "replay",
        &file,
        "--server",
        &second.to_string(),
        "--color",
        "never",
    ]);
    assert!(run.success, "{}{}", run.stdout, run.stderr);
    let mut c = Client::connect(second);
    c.expect("QUIT", 221);
    common::wait_until("the QUIT session's recording", || {
        recordings(&theirs).len() == 1
    });
    assert!(!std::fs::read_to_string(&recordings(&theirs)[0])
        .unwrap()
        .contains("MAIL FROM"));

    // Asked for, a replay is recorded like any session.
    let run = smtplab(&["replay", &file, "--server", &second.to_string(), "--record"]);
    assert!(run.success, "{}", run.stdout);
    common::wait_until("the recorded replay", || recordings(&theirs).len() == 2);
}

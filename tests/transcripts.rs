//! The transcript library as golden files: every `transcripts/*.txt` must replay against a fresh
//! server, and a session recorded with `--transcripts` must replay against a fresh server too.
//!
//! A library file is prepared from its header: `# server:` options start the server, `# setup:
//! deliver USER` lines each deliver `SETUP_MESSAGE` to USER over SMTP first, and `# port:` picks
//! the listener to replay against. Replay may stop early only at `== TLS ==`.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use smtplab::lab::replay::{replay, ReplayOptions, SkipCause};
use smtplab::lab::transcript::{Header, Transcript};
use smtplab::smtp::session::Role;

/// The library covers the lessons; fewer files means some were lost.
const MIN_TRANSCRIPTS: usize = 30;

fn library_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("transcripts");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    files
}

/// The message `# setup: deliver USER` sends (a POP3 transcript shows it again in RETR).
const SETUP_SENDER: &str = "mary@client.example";
const SETUP_MESSAGE: &str = "From: <mary@client.example>\r\nSubject: Hello\r\n\r\nHi!\r\n";

/// Runs the `# setup:` lines against `server`; the error names a line it does not know.
fn run_setup(server: &common::TestServer, header: &Header) -> Result<(), String> {
    for step in &header.setup {
        let Some(user) = step.strip_prefix("deliver ") else {
            return Err(format!("# setup: {step:?} is not known (deliver USER)\n"));
        };
        let mut client = server.connect();
        let recipient = format!("{}@localhost", user.trim());
        let reply = client.send_mail(SETUP_SENDER, &[&recipient], SETUP_MESSAGE);
        if reply.code != 250 {
            return Err(format!("# setup: {step}: the message got {reply:?}\n"));
        }
        client.cmd("QUIT");
    }
    server.wait_idle();
    Ok(())
}

/// The listener `# port:` names (the `--listen` one by default).
fn listener(server: &common::TestServer, header: &Header) -> Result<SocketAddr, String> {
    let found = match header.port.as_deref() {
        None | Some("smtp") => Some(server.addr()),
        Some("submission") => server.handle.addr_of(Role::Submission),
        Some("smtps") => server.handle.addr_of(Role::ImplicitTls),
        Some("pop3") => server.handle.pop3_addr(),
        Some("imap") => server.handle.imap_addr(false),
        Some(other) => return Err(format!("# port: {other:?} is not known\n")),
    };
    let port = header.port.as_deref().unwrap_or("smtp");
    found.ok_or(format!(
        "# port: {port}, but `# server:` starts no such listener\n"
    ))
}

/// Starts a fresh server with the transcript's `# server:` options, runs its `# setup:` and
/// replays it on its `# port:`. Returns what went wrong, or `None` when every reply matched.
fn replay_against_fresh_server(transcript: &Transcript) -> Option<String> {
    let header = &transcript.header;
    let options: Vec<&str> = header.server.iter().map(String::as_str).collect();
    let server = common::start(&options);
    let target = run_setup(&server, header).and_then(|()| listener(&server, header));
    let report = match target {
        Ok(addr) => replay(transcript, addr, &ReplayOptions::default()),
        Err(problem) => return Some(problem),
    };
    server.wait_idle();
    common::wait_until("POP3 and IMAP sessions to end", || {
        server.handle.pop3_sessions() + server.handle.imap_sessions() == 0
    });
    // Replay cannot follow a session into TLS; stopping there is the one early stop allowed.
    let stopped_at_tls = report
        .skipped
        .as_ref()
        .is_none_or(|skipped| skipped.cause == SkipCause::Tls);
    if report.is_match() && stopped_at_tls {
        None
    } else {
        Some(report.render(false))
    }
}

/// What is wrong with one library file, or `None`.
fn check_library_file(path: &Path) -> Option<String> {
    let transcript = match Transcript::load(path) {
        Ok(transcript) => transcript,
        Err(error) => return Some(error.to_string()),
    };
    let header = &transcript.header;
    if header.title.is_none() || header.rfc.is_none() || header.notes.is_empty() {
        return Some("needs `# title:`, `# rfc:` and at least one `# note:`\n".to_string());
    }
    replay_against_fresh_server(&transcript)
}

#[test]
fn every_transcript_replays() {
    let files = library_files();
    let mut failures = Vec::new();
    for path in &files {
        if let Some(problem) = check_library_file(path) {
            let name = path.file_name().unwrap().to_string_lossy();
            failures.push(format!("{name}: {problem}"));
        }
    }
    println!("replayed {} transcripts", files.len());
    assert!(
        files.len() >= MIN_TRANSCRIPTS,
        "only {} transcripts in transcripts/",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} transcripts differ:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn only_the_tls_marker_may_stop_a_library_file_early() {
    let starttls = Path::new(env!("CARGO_MANIFEST_DIR")).join("transcripts/40-starttls.txt");
    let at_tls = Transcript::load(&starttls).unwrap();
    let server = common::start(&["--tls-self-signed"]);
    let report = replay(&at_tls, server.addr(), &ReplayOptions::default());
    assert!(report.is_match(), "{}", report.render(false));
    assert_eq!(report.skipped.map(|s| s.cause), Some(SkipCause::Tls));
    assert_eq!(replay_against_fresh_server(&at_tls), None);
    let at_secret = Transcript::parse("S: 220 {*}\nC: AUTH PLAIN {secret}\nS: 235 {*}\n").unwrap();
    let problem = replay_against_fresh_server(&at_secret).expect("a stop at a secret is refused");
    assert!(problem.contains("{secret}"), "{problem}");
}

#[test]
fn a_setup_or_port_the_test_does_not_know_is_an_error() {
    let unknown_setup = Transcript::parse("# setup: empty alice\nS: 220 {*}\n").unwrap();
    let problem = replay_against_fresh_server(&unknown_setup).unwrap();
    assert!(problem.contains("not known"), "{problem}");
    let missing_listener = Transcript::parse("# port: pop3\nS: +OK {*}\n").unwrap();
    let problem = replay_against_fresh_server(&missing_listener).unwrap();
    assert!(problem.contains("no such listener"), "{problem}");
}

#[test]
fn smuggled_commands_are_not_run_and_nothing_is_stored() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("transcripts/34-smuggling-refused.txt");
    let transcript = Transcript::load(&path).unwrap();
    let server = common::start(&[]);
    let report = replay(&transcript, server.addr(), &ReplayOptions::default());
    assert!(report.is_match(), "{}", report.render(false));
    server.wait_idle();
    assert_eq!(server.mbox("alice"), b"", "the refused message was stored");
    assert_eq!(
        server.mbox("bob"),
        b"",
        "the smuggled message was delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// Recording, then replaying what was recorded
// ---------------------------------------------------------------------------------------------

/// Waits (with a deadline) for the one transcript in `dir` to end with the reply to QUIT, and
/// returns its text. The recorder writes line by line, so the file can be read half written.
fn finished_recording(dir: &Path) -> String {
    let mut text = String::new();
    common::wait_until("the recording to end with 221", || {
        let files: Vec<PathBuf> = fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if let [only] = files.as_slice() {
            text = fs::read_to_string(only).unwrap_or_default();
        }
        text.lines()
            .last()
            .is_some_and(|line| line.starts_with("S: 221 "))
    });
    text
}

#[test]
fn recorded_session_replays() {
    let recordings = common::TempDir::new("recorded");
    let dir = recordings.path().display().to_string();
    let server = common::start(&["--transcripts", &dir]);
    let mut c = server.connect();
    assert_eq!(c.cmd("EHLO client.example").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<mary@client.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<nosuchuser@localhost>").code, 550);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: Dots\r\n\r\n..a line that starts with a dot\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.cmd("QUIT").code, 221);
    assert!(c.is_closed());
    let text = finished_recording(recordings.path());
    for line in [
        "C: EHLO client.example",
        "C: RCPT TO:<nosuchuser@localhost>",
    ] {
        assert!(
            text.contains(&format!("\n{line}\n")),
            "{line:?} is missing from:\n{text}"
        );
    }
    assert!(
        text.contains("\nC: ..a line that starts with a dot\n"),
        "{text}"
    );

    // The recorder wrote {host} and {id} where the server said its name and the message id, so
    // the file replays exactly as written (tests/student_text.rs replays one against a server
    // with another name and another session count).
    let recorded = Transcript::parse(&text).unwrap();
    let replays = common::TempDir::new("recorded-replay");
    let replay_dir = replays.path().display().to_string();
    let fresh = common::start(&["--transcripts", &replay_dir]);
    let report = replay(&recorded, fresh.addr(), &ReplayOptions::default());
    assert!(report.is_match(), "{}\n{text}", report.render(false));
    assert_eq!(fresh.message_count("alice"), 1);
}

#[test]
fn recording_shows_invisible_bytes() {
    let recordings = common::TempDir::new("invisible");
    let dir = recordings.path().display().to_string();
    let server = common::start(&["--transcripts", &dir]);
    let mut c = server.connect();
    assert_eq!(c.cmd("EHLO client.example").code, 250);
    c.send(b"NOOP a\tb\r\n");
    assert_eq!(c.reply().code, 250);
    c.send(b"NOOP a\0c\r\n");
    assert_eq!(
        c.reply().code,
        501,
        "a NUL byte in the argument of a known command is refused"
    );
    c.send(b"NOOP bare\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.cmd("QUIT").code, 221);
    let text = finished_recording(recordings.path());
    for line in ["C: NOOP a{TAB}b", "C: NOOP a{NUL}c", "C: NOOP bare{LF}"] {
        assert!(
            text.contains(&format!("\n{line}\n")),
            "{line:?} is missing from:\n{text}"
        );
    }
    // The escapes read back as the same bytes: the recording replays.
    let recorded = Transcript::parse(&text).unwrap();
    let fresh = common::start(&[]);
    let report = replay(&recorded, fresh.addr(), &ReplayOptions::default());
    assert!(report.is_match(), "{}\n{text}", report.render(false));
}

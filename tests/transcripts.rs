//! The transcript library as golden files: every `transcripts/*.txt` must replay against a fresh
//! server, and a session recorded with `--transcripts` must replay against a fresh server too.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use smtplab::replay::{replay, ReplayOptions};
use smtplab::transcript::Transcript;

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

/// Starts a fresh server with the transcript's `# server:` options and replays it.
/// Returns what went wrong, or `None` when every reply matched.
fn replay_against_fresh_server(transcript: &Transcript) -> Option<String> {
    let options: Vec<&str> = transcript
        .header
        .server
        .iter()
        .map(String::as_str)
        .collect();
    let server = common::start(&options);
    let report = replay(transcript, server.addr(), &ReplayOptions::default());
    server.wait_idle();
    if report.is_match() && report.skipped.is_none() {
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

    // Nothing volatile is left to mask: the host name is fixed (smtplab.test), replies carry no
    // date, and a fresh server numbers its sessions from S1 again, so the message id in the 250
    // after DATA (S1.1) comes out the same. The recorded file is replayed exactly as written.
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

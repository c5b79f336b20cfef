//! Replay against a small scripted SMTP server, recording, and compare.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtplab::config::Config;
use smtplab::lab::compare::{compare, compare_main, Finding};
use smtplab::lab::recorder::Recorder;
use smtplab::lab::replay::{replay, replay_main, ReplayOptions};
use smtplab::lab::transcript::{Line, LineEnding, Transcript};
use smtplab::net::line::Ending;
use smtplab::smtp::auth::{self, Masked};

const TIMEOUT: Duration = Duration::from_secs(5);

/// How the fake server words its replies.
#[derive(Clone, Copy)]
enum Wording {
    /// The wording the fixtures expect.
    Usual,
    /// Same codes, other texts: what a different SMTP server might say.
    Other,
}

/// The reply to one command, by verb, like a very small SMTP server.
fn answer(line: &str, wording: Wording) -> &'static str {
    let verb = line
        .split([' ', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match (verb.as_str(), wording) {
        ("EHLO", _) => "250-fake.test greets you\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n",
        ("MAIL", Wording::Usual) => "250 2.1.0 OK\r\n",
        ("MAIL", Wording::Other) => "250 2.1.0 Sender <mary@client.example> looks fine\r\n",
        ("RCPT", Wording::Usual) => "250 2.1.5 OK\r\n",
        ("RCPT", Wording::Other) => "250 2.1.5 Recipient is welcome\r\n",
        ("DATA", _) => "354 End data with <CR><LF>.<CR><LF>\r\n",
        ("STARTTLS", _) => "220 2.0.0 Ready to start TLS\r\n",
        ("QUIT", _) => "221 2.0.0 Bye\r\n",
        _ => "500 5.5.2 What?\r\n",
    }
}

/// A scripted SMTP server for one connection, on a free port of 127.0.0.1.
fn fake_server(wording: Wording) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            serve(stream, wording);
        }
    });
    address
}

fn serve(stream: TcpStream, wording: Wording) {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let _ = writer.write_all(b"220 fake.test ESMTP ready\r\n");
    let mut in_data = false;
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        let text = line.trim_end_matches(['\r', '\n']);
        let reply = match (in_data, text) {
            (true, ".") => "250 2.0.0 OK queued as Q1234\r\n",
            (true, _) => "",
            (false, _) => answer(text, wording),
        };
        in_data = (in_data && text != ".") || reply.starts_with("354");
        if writer.write_all(reply.as_bytes()).is_err() || reply.starts_with("221") {
            return;
        }
        line.clear();
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Transcript {
    Transcript::load(&fixture(name)).unwrap()
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn fixtures_print_and_parse_back() {
    for name in [
        "seed-session.txt",
        "wrong.txt",
        "forgot-rcpt.txt",
        "starttls.txt",
    ] {
        let transcript = load(name);
        assert_eq!(
            Transcript::parse(&transcript.to_string()).unwrap(),
            transcript,
            "{name}"
        );
    }
}

#[test]
fn replay_of_the_seed_session_matches() {
    let report = replay(
        &load("seed-session.txt"),
        fake_server(Wording::Usual),
        &ReplayOptions::default(),
    );
    assert!(report.is_match(), "{}", report.render(false));
    assert_eq!(report.replies_matched, 7);
    assert!(report.render(false).starts_with("ok: 7 replies matched"));
}

/// `replay_main` on a fixture against a fresh fake server (usual wording, no color).
fn replay_main_against_fake(name: &str) -> i32 {
    let server = fake_server(Wording::Usual).to_string();
    let file = fixture(name);
    replay_main(&args(&[
        file.to_str().unwrap(),
        "--server",
        &server,
        "--color",
        "never",
    ]))
}

#[test]
fn replay_main_exits_0_on_a_match() {
    assert_eq!(replay_main_against_fake("seed-session.txt"), 0);
}

#[test]
fn the_wrong_transcript_fails_and_names_its_line() {
    let report = replay(
        &load("wrong.txt"),
        fake_server(Wording::Usual),
        &ReplayOptions::default(),
    );
    assert!(!report.is_match());
    assert_eq!(report.first_mismatch(), Some(15));
    let diff = report.render(false);
    assert!(diff.contains("FAIL: first difference at line 15"), "{diff}");
    assert!(diff.contains("-S: 550 5.1.1 {*}    (line 15)"), "{diff}");
    assert!(diff.contains("+S: 250 2.1.5 OK"), "{diff}");
    assert!(diff.contains(" C: RCPT TO:<alice@teach.test>"), "{diff}");
    assert!(report.render(true).contains("\x1b[31m-S: 550"));
}

#[test]
fn replay_main_exits_1_on_the_wrong_transcript() {
    assert_eq!(replay_main_against_fake("wrong.txt"), 1);
}

#[test]
fn replay_main_exits_2_on_usage_and_connection_errors() {
    let file = fixture("seed-session.txt");
    let file = file.to_str().unwrap();
    assert_eq!(replay_main(&args(&[file])), 2, "no --server");
    assert_eq!(
        replay_main(&args(&["--server", "127.0.0.1:1"])),
        2,
        "no file"
    );
    assert_eq!(
        replay_main(&args(&[file, "--server", "127.0.0.1:1", "--color", "pink"])),
        2
    );
    // A port nobody listens on: bind one, note it, close it again.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    assert_eq!(replay_main(&args(&[file, "--server", &closed])), 2);
}

#[test]
fn codes_only_passes_when_only_texts_differ() {
    let transcript = load("seed-session.txt");
    let strict = replay(
        &transcript,
        fake_server(Wording::Other),
        &ReplayOptions::default(),
    );
    assert!(!strict.is_match(), "the texts do differ");
    let codes_only = ReplayOptions {
        codes_only: true,
        ..ReplayOptions::default()
    };
    let loose = replay(&transcript, fake_server(Wording::Other), &codes_only);
    assert!(loose.is_match(), "{}", loose.render(false));
}

#[test]
fn codes_only_still_fails_on_a_wrong_code() {
    let codes_only = ReplayOptions {
        codes_only: true,
        ..ReplayOptions::default()
    };
    let report = replay(&load("wrong.txt"), fake_server(Wording::Other), &codes_only);
    assert_eq!(report.first_mismatch(), Some(15));
}

#[test]
fn replay_stops_at_tls_and_reports_skipped_lines() {
    let report = replay(
        &load("starttls.txt"),
        fake_server(Wording::Usual),
        &ReplayOptions::default(),
    );
    assert!(report.is_match(), "{}", report.render(false));
    let skipped = report.skipped.clone().unwrap();
    assert_eq!((skipped.line_no, skipped.lines), (13, 6));
    assert!(report
        .render(false)
        .contains("skipped 6 lines from line 13"));
}

#[test]
fn replay_stops_at_a_masked_secret() {
    let transcript = Transcript::parse("S: 220 {*}\nC: EHLO x\nS: 250-{*}\nS: 250-{*}\nS: 250 {*}\nC: AUTH PLAIN {secret}\nS: 235 {*}\n").unwrap();
    let report = replay(
        &transcript,
        fake_server(Wording::Usual),
        &ReplayOptions::default(),
    );
    assert!(report.is_match(), "{}", report.render(false));
    assert!(report.render(false).contains("{secret}"));
    assert_eq!(report.skipped.unwrap().lines, 2);
}

#[test]
fn a_server_that_stops_answering_is_a_difference() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let silent = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        thread::sleep(Duration::from_millis(600));
        drop(stream);
    });
    let options = ReplayOptions {
        read_timeout: Duration::from_millis(200),
        ..ReplayOptions::default()
    };
    let report = replay(&load("seed-session.txt"), server, &options);
    assert_eq!(report.first_mismatch(), Some(6));
    assert!(
        report.render(false).contains("+(no reply within"),
        "{}",
        report.render(false)
    );
    silent.join().unwrap();
}

fn scratch_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("smtplab-{name}-{}-{nanos}", std::process::id()))
}

#[test]
fn recorder_round_trip() {
    let dir = scratch_dir("recorder");
    let peer: SocketAddr = "127.0.0.1:4242".parse().unwrap();
    let config = Config {
        transcripts: Some(dir.clone()),
        hostname: "teach.test".into(),
        ..Config::default()
    };
    let mut recorder = Recorder::start(&config, peer, 7, "S7").unwrap();
    // As the connection does: the secret is found from the command's words, or is the whole
    // line after a 334.
    let sasl = std::cell::Cell::new(false);
    let client = |recorder: &mut Recorder, bytes: &[u8], ending: Option<Ending>| {
        recorder.client_line(
            Masked::new(bytes, auth::smtp_secret(bytes, sasl.get())),
            ending,
        );
    };
    let server = |recorder: &mut Recorder, text: &str| {
        sasl.set(text.starts_with("334 "));
        recorder.server_reply(text);
    };
    let data = |recorder: &mut Recorder, bytes: &[u8]| {
        recorder.client_line(Masked::new(bytes, None), Some(Ending::CrLf));
    };
    let crlf = Some(Ending::CrLf);
    server(&mut recorder, "220 teach.test ESMTP smtplab\r\n");
    client(&mut recorder, b"EHLO\tlaptop", crlf);
    server(&mut recorder, "250-teach.test\r\n250 AUTH PLAIN LOGIN\r\n");
    client(&mut recorder, b"MAIL FROM:<a@b>", Some(Ending::Lf));
    server(&mut recorder, "250 2.1.0 OK\r\n");
    client(&mut recorder, b"NOOP\0{x}", crlf);
    server(&mut recorder, "250 2.0.0 OK {really}\r\n");
    client(&mut recorder, b"AUTH PLAIN AGFsaWNlAHBhc3N3b3Jk", crlf);
    server(&mut recorder, "535 5.7.8 no\r\n");
    client(&mut recorder, b"AUTH LOGIN", crlf);
    server(&mut recorder, "334 VXNlcm5hbWU6\r\n");
    client(&mut recorder, b"YWxpY2U=", crlf);
    server(&mut recorder, "334 UGFzc3dvcmQ6\r\n");
    client(&mut recorder, b"cGFzc3dvcmQ=", crlf);
    server(&mut recorder, "235 2.7.0 OK\r\n");
    client(&mut recorder, b"DATA", crlf);
    server(&mut recorder, "354 go ahead\r\n");
    data(&mut recorder, b"AUTH PLAIN is just message text here");
    data(&mut recorder, b".");
    server(&mut recorder, "250 2.0.0 queued\r\n");
    client(&mut recorder, b"STARTTLS", crlf);
    server(&mut recorder, "220 2.0.0 go\r\n");
    recorder.tls_started();
    client(&mut recorder, b"QUI", None);

    let name = recorder
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(name.ends_with("-000007-127.0.0.1-4242.txt"), "{name}");
    assert_eq!(name.as_bytes()[8], b'-');
    assert!(
        name[..8]
            .bytes()
            .chain(name[9..15].bytes())
            .all(|b| b.is_ascii_digit()),
        "{name}"
    );

    // The file is complete while the recorder is still alive: nothing waits in a buffer.
    let text = std::fs::read_to_string(recorder.path()).unwrap();
    for expected in [
        "# title: Session S7 from 127.0.0.1:4242\n# recorded: 127.0.0.1:4242\n",
        "S: 220 {host} ESMTP smtplab\n",
        "C: EHLO{TAB}laptop\nS: 250-{host}\n",
        "C: MAIL FROM:<a@b>{LF}\n",
        "C: NOOP{NUL}{{x}\n",
        "S: 250 2.0.0 OK {{really}\n",
        "C: AUTH PLAIN {secret}\n",
        "C: AUTH LOGIN\nS: 334 VXNlcm5hbWU6\nC: {secret}\nS: 334 UGFzc3dvcmQ6\nC: {secret}\n",
        "C: AUTH PLAIN is just message text here\nC: .\n",
        "== TLS ==\nC: QUI{EOF}\n",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    for secret in ["AGFsaWNl", "YWxpY2U=", "cGFzc3dvcmQ="] {
        assert!(!text.contains(secret));
    }

    let transcript = Transcript::parse(&text).unwrap();
    let Line::Client(mail) = &transcript.entries[4].line else {
        panic!("{:?}", transcript.entries[4])
    };
    assert_eq!(
        (mail.bytes.as_slice(), mail.ending),
        (&b"MAIL FROM:<a@b>"[..], LineEnding::Lf)
    );
    let Line::Client(noop) = &transcript.entries[6].line else {
        panic!()
    };
    assert_eq!(noop.bytes, b"NOOP\0{x}");
    let Line::Client(auth) = &transcript.entries[8].line else {
        panic!()
    };
    assert!(auth.secret && auth.bytes == b"AUTH PLAIN ");
    assert_eq!(
        transcript.header.title.as_deref(),
        Some("Session S7 from 127.0.0.1:4242")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compare_explains_a_forgotten_rcpt_to() {
    let findings = compare(&load("forgot-rcpt.txt"), &load("seed-session.txt"));
    let words: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    let missing = &words[0];
    assert!(
        missing.contains("never sent RCPT TO (reference line 13)"),
        "{words:#?}"
    );
    assert!(missing.contains("503"), "{missing}");
    assert!(
        words[1].starts_with("You sent DATA (your line 10) and the server answered 503"),
        "{words:#?}"
    );
    assert!(matches!(&findings[0], Finding::Missing { verb, .. } if verb == "RCPT TO"));
    // The missing final dot follows from the refused DATA and is not counted again.
    assert_eq!(findings.len(), 2, "{words:#?}");
}

#[test]
fn compare_explains_wrong_order() {
    let reference = load("seed-session.txt");
    let mine = Transcript::parse(
        "S: 220 x\nC: EHLO a\nS: 250 x\nC: MAIL FROM:<m@a>\nS: 250 ok\nC: DATA\nS: 503 no\n\
         C: RCPT TO:<alice@teach.test>\nS: 250 ok\nC: QUIT\nS: 221 bye\n",
    )
    .unwrap();
    let words: Vec<String> = compare(&mine, &reference)
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert!(
        words[0].starts_with("You sent DATA (your line 6) and the server answered 503"),
        "{words:#?}"
    );
    assert!(words[0].contains("only after RCPT TO"), "{words:#?}");
}

#[test]
fn compare_counts_helo_and_ehlo_as_the_same_step() {
    let reference = load("seed-session.txt");
    let text = reference.to_string().replacen("C: EHLO", "C: HELO", 1);
    let findings = compare(&Transcript::parse(&text).unwrap(), &reference);
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn compare_explains_a_syntax_error() {
    let reference = load("seed-session.txt");
    let text = reference
        .to_string()
        .replacen("S: 250 2.1.0 OK", "S: 501 5.1.7 Bad sender", 1);
    let words: Vec<String> = compare(&Transcript::parse(&text).unwrap(), &reference)
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(words.len(), 1, "{words:#?}");
    assert!(words[0].contains("At MAIL FROM"), "{}", words[0]);
    assert!(
        words[0].contains("501, a syntax error in the arguments"),
        "{}",
        words[0]
    );
    assert!(words[0].contains("(RFC 5321 §4.1.2)"), "{}", words[0]);
    assert!(words[0].contains("angle brackets"), "{}", words[0]);
}

#[test]
fn compare_main_exit_codes() {
    let seed = fixture("seed-session.txt");
    let seed = seed.to_str().unwrap();
    let forgot = fixture("forgot-rcpt.txt");
    assert_eq!(compare_main(&args(&[seed, seed])), 0);
    assert_eq!(compare_main(&args(&[forgot.to_str().unwrap(), seed])), 1);
    assert_eq!(compare_main(&args(&[seed])), 2);
    assert_eq!(compare_main(&args(&[seed, "/nonexistent/file.txt"])), 2);
}

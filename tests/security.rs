//! The security catalogue's cases that the core server covers, over real sockets: SMTP
//! smuggling (section 1), open relay (section 3), limits and order (section 4), denial of
//! service (section 5), mbox (section 6).
//! The test world of the catalogue: local domain `teach.test` with users alice and bob.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{assert_reply, start_teach_test, Client, Reply, TestServer};

// ---------------------------------------------------------------------------------------------
// 1. SMTP smuggling

/// The smuggled second transaction of case 1.02, after the first dot sequence.
const SMUGGLED: &[u8] = b"MAIL FROM:<ceo@teach.test>\r\nRCPT TO:<alice@teach.test>\r\nDATA\r\nSubject: SMUGGLED\r\n\r\nx\r\n.\r\n";

/// Send `Subject: t`, `body`, the dot sequence, then the smuggled transaction, in one write.
/// Returns the one reply after the data; asserts the session is still in sync.
fn smuggle(server: &TestServer, sequence: &[u8]) -> Reply {
    let mut c = server.connect();
    c.open_data("a@relay.example", &["alice@teach.test"]);
    let mut stream = b"Subject: t\r\n\r\nbody".to_vec();
    stream.extend_from_slice(sequence);
    stream.extend_from_slice(SMUGGLED);
    c.send(&stream);
    let reply = c.reply();
    // Exactly one reply: the next one read must be RSET's own.
    let rset = c.cmd("RSET");
    assert_eq!(
        rset.code, 250,
        "{sequence:?}: RSET after the data: {rset:?}"
    );
    assert!(
        rset.text().contains("Reset"),
        "{sequence:?}: an extra reply came before RSET's: {rset:?}"
    );
    c.expect("QUIT", 221);
    reply
}

#[test]
fn case_1_01_standard_end_of_data() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<a@relay.example>", 250);
    c.expect("RCPT TO:<alice@teach.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n");
    assert_reply(&c.reply(), 250, "2.0.0");
    let stored = server.messages("alice");
    assert_eq!(stored.len(), 1);
    assert!(stored[0].content.ends_with(b"Subject: x\n\nhello\n"));
}

#[test]
fn case_1_02_lf_dot_crlf_smuggling() {
    let server = start_teach_test(&[]);
    let reply = smuggle(&server, b"\n.\r\n");
    assert_reply(&reply, 550, "5.5.2");
    assert!(reply.text().to_lowercase().contains("bare"), "{reply:?}");
    assert!(server.mbox("alice").is_empty(), "nothing stored");
    assert!(!server.mbox_text("alice").contains("SMUGGLED"));
}

#[test]
fn case_1_03_to_1_10_every_smuggling_variant() {
    let variants: [(&str, &[u8]); 11] = [
        ("1.03 V1", b"\n.\n"),
        ("1.04 V3", b"\r.\r"),
        ("1.05a V4", b"\r.\n"),
        ("1.05b V4", b"\n.\r"),
        ("1.06 V5", b"\r\n.\n"),
        ("1.07 V6", b"\r.\r\n"),
        ("1.08 V7", b"\r\n.\r"),
        ("1.09a V8", b"\r\n.\r\r\n"),
        ("1.09b V8", b"\r\r\n.\r\r\n"),
        ("1.10 V9", b"\r\n\0.\r\n"),
        ("1.02 V2", b"\n.\r\n"),
    ];
    let server = start_teach_test(&[]);
    for (case, sequence) in variants {
        let reply = smuggle(&server, sequence);
        assert!(
            matches!(reply.code, 550 | 554),
            "{case} {sequence:?}: {reply:?}"
        );
        assert!(
            !server.mbox_text("alice").contains("SMUGGLED"),
            "{case}: {}",
            server.mbox_text("alice")
        );
        assert!(server.mbox("alice").is_empty(), "{case}: nothing stored");
    }
    server.wait_idle();
    assert!(server.mbox("alice").is_empty());
}

#[test]
fn case_1_10_nul_before_the_dot_is_554() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    c.open_data("a@relay.example", &["alice@teach.test"]);
    let mut stream = b"a\r\n\0.\r\n".to_vec();
    stream.extend_from_slice(SMUGGLED);
    c.send(&stream);
    assert_reply(&c.reply(), 554, "5.6.0");
    c.expect("RSET", 250);
    assert!(server.mbox("alice").is_empty());
}

/// V10: the catalogue lets the server store this message, because `.` + IAC NOP is neither end
/// of data nor a bare line end; what matters is one reply, one message, the bytes kept.
#[test]
fn case_1_11_telnet_iac_after_the_dot_is_not_end_of_data() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    c.open_data("a@relay.example", &["alice@teach.test"]);
    let mut stream = b"a\r\n.\xFF\xF1\r\n".to_vec();
    stream.extend_from_slice(SMUGGLED);
    c.send(&stream);
    let reply = c.reply();
    let rset = c.cmd("RSET");
    assert!(rset.text().contains("Reset"), "one reply only: {rset:?}");
    let stored = server.messages("alice");
    match reply.code {
        250 => {
            assert_eq!(stored.len(), 1, "never a second message");
            let content = &stored[0].content;
            assert!(
                content.windows(2).any(|w| w == b"\xFF\xF1"),
                "IAC NOP kept: {}",
                String::from_utf8_lossy(content)
            );
            assert!(content.ends_with(b"a\n\xFF\xF1\nMAIL FROM:<ceo@teach.test>\nRCPT TO:<alice@teach.test>\nDATA\nSubject: SMUGGLED\n\nx\n"));
        }
        550 | 554 => assert!(stored.is_empty()),
        other => panic!("unexpected reply {other}: {reply:?}"),
    }
}

#[test]
fn case_1_13_netcat_pure_lf_session_finishes_a_message() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    for (line, code) in [
        ("HELO nc\n", 250),
        ("MAIL FROM:<s@relay.example>\n", 250),
        ("RCPT TO:<alice@teach.test>\n", 250),
        ("DATA\n", 354),
    ] {
        c.send(line.as_bytes());
        assert_eq!(c.reply().code, code, "{line:?}");
    }
    for line in ["Subject: hi\n", "\n", "hello\n"] {
        c.send(line.as_bytes());
    }
    c.send(b".\n");
    assert_reply(&c.reply(), 250, "2.0.0");
    let stored = server.messages("alice");
    assert_eq!(stored.len(), 1);
    assert!(stored[0].content.ends_with(b"Subject: hi\n\nhello\n"));
    assert!(!server.mbox_text("alice").contains('\r'));
}

#[test]
fn case_1_14_a_pure_lf_session_becomes_strict_after_its_first_cr() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    for (line, code) in [
        ("HELO nc\n", 250),
        ("MAIL FROM:<s@relay.example>\n", 250),
        ("RCPT TO:<alice@teach.test>\n", 250),
        ("DATA\n", 354),
    ] {
        c.send(line.as_bytes());
        assert_eq!(c.reply().code, code, "{line:?}");
    }
    // `.\n` after a CR is not the end; if the server answered it, the reply read below would
    // be that answer rather than the one to the real end of data.
    c.send(b"line1\r\n.\n");
    c.send(b"\r\n.\r\n");
    assert_reply(&c.reply(), 550, "5.5.2");
    c.expect("RSET", 250);
    assert!(server.mbox("alice").is_empty());
}

#[test]
fn case_1_15_bare_lf_inside_a_command_stream_of_a_crlf_session() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    c.send(b"MAIL FROM:<a@relay.example>\nRCPT TO:<alice@teach.test>\r\n");
    assert_eq!(c.reply().code, 250, "MAIL");
    assert_eq!(c.reply().code, 250, "RCPT");
    c.expect("RSET", 250);
}

// ---------------------------------------------------------------------------------------------
// 3. Open relay (the client is on loopback, not in --relay-from)

/// What one relay case expects of one command.
#[derive(Clone, Copy, Debug)]
enum Want {
    Ok,
    Code(u16, &'static str),
    /// A code without a pinned enhanced status.
    CodeOnly(u16),
}

fn check(case: &str, line: &str, reply: &Reply, want: Want) {
    match want {
        Want::Ok => assert_eq!(reply.code, 250, "{case} {line}: {reply:?}"),
        Want::Code(code, status) => assert_eq!(
            (reply.code, reply.status().as_str()),
            (code, status),
            "{case} {line}: {reply:?}"
        ),
        Want::CodeOnly(code) => assert_eq!(reply.code, code, "{case} {line}: {reply:?}"),
    }
}

const DENIED: Want = Want::Code(550, "5.7.1");
const NO_USER: Want = Want::Code(550, "5.1.1");
const SYNTAX: Want = Want::CodeOnly(501);

/// `EHLO probe.example`, MAIL FROM (default `<spamtest@relay.example>`), then the RCPT lines.
/// After a refused-only case, DATA must not start a message (554 or 503, never 354).
fn relay_case(server: &TestServer, case: &str, mail: Option<(&str, Want)>, rcpts: &[(&str, Want)]) {
    let before = (server.mbox("alice"), server.mbox("bob"));
    let mut c = server.greeted_as("probe.example");
    let (mail_line, mail_want) = mail.unwrap_or(("MAIL FROM:<spamtest@relay.example>", Want::Ok));
    let reply = c.cmd(mail_line);
    check(case, mail_line, &reply, mail_want);
    let mail_ok = reply.code == 250;
    for (rcpt, want) in rcpts {
        let reply = c.cmd(rcpt);
        if mail_ok {
            check(case, rcpt, &reply, *want);
        } else {
            assert_eq!(reply.code, 503, "{case} {rcpt} without MAIL: {reply:?}");
        }
    }
    let any_ok = mail_ok && rcpts.iter().any(|(_, w)| matches!(w, Want::Ok));
    let data = c.cmd("DATA");
    if any_ok {
        assert_eq!(data.code, 354, "{case}: {data:?}");
        c.send(b"Subject: relay probe\r\n\r\nprobe\r\n.\r\n");
        assert_eq!(c.reply().code, 250, "{case}");
    } else {
        assert!(matches!(data.code, 503 | 554), "{case}: DATA got {data:?}");
    }
    c.expect("QUIT", 221);
    if !any_ok {
        let after = (server.mbox("alice"), server.mbox("bob"));
        assert!(before == after, "{case}: a mailbox changed");
    }
}

/// One open-relay case: its id, the MAIL line and its answer (None: the default sender, 250),
/// then each RCPT line and its answer.
type RelayCase = (
    &'static str,
    Option<(&'static str, Want)>,
    &'static [(&'static str, Want)],
);

/// Catalogue cases 3.01–3.25 (3.24 has its own test: its lines hold NUL and control bytes).
#[rustfmt::skip]
const RELAY_CASES: &[RelayCase] = &[
    ("3.01", None, &[("RCPT TO:<victim@relay.example>", DENIED)]),
    ("3.02", Some(("MAIL FROM:<alice@teach.test>", Want::Ok)), &[("RCPT TO:<victim@relay.example>", DENIED)]),
    ("3.03", Some(("MAIL FROM:<>", Want::Ok)), &[("RCPT TO:<victim@relay.example>", DENIED)]),
    ("3.04", Some(("MAIL FROM:<spamtest>", SYNTAX)), &[("RCPT TO:<victim@relay.example>", DENIED)]),
    ("3.05", Some(("MAIL FROM:<spamtest@[127.0.0.1]>", Want::Ok)), &[("RCPT TO:<victim@relay.example>", DENIED)]),
    ("3.06", None, &[("RCPT TO:<\"victim@relay.example\">", SYNTAX)]),
    ("3.07", None, &[("RCPT TO:victim@relay.example", SYNTAX)]),
    ("3.08", None, &[("RCPT TO:<victim%relay.example@teach.test>", NO_USER)]),
    ("3.09", None, &[("RCPT TO:<victim%relay.example>", SYNTAX),
                     ("RCPT TO:<\"victim%relay.example\">", SYNTAX)]),
    ("3.10", None, &[("RCPT TO:<victim@relay.example@teach.test>", SYNTAX)]),
    ("3.11", None, &[("RCPT TO:<\"victim@relay.example\"@teach.test>", NO_USER)]),
    ("3.12", None, &[("RCPT TO:<@teach.test:victim@relay.example>", DENIED)]),
    ("3.13", None, &[("RCPT TO:<@relay.example:alice@teach.test>", Want::Ok)]),
    ("3.14", None, &[("RCPT TO:<relay.example!victim>", SYNTAX)]),
    ("3.15", None, &[("RCPT TO:<relay.example!victim@teach.test>", NO_USER)]),
    ("3.16", Some(("MAIL FROM:<relay.example!nobody>", SYNTAX)), &[("RCPT TO:<victim@relay.example>", DENIED)]),
    ("3.17", None, &[("RCPT TO:<victim@[192.0.2.1]>", DENIED)]),
    ("3.18", None, &[("RCPT TO:<alice@[127.0.0.1]>", Want::Ok)]),
    ("3.19", None, &[("RCPT TO:<victim@192.0.2.1>", SYNTAX)]),
    ("3.20", None, &[("RCPT TO:<alice@TEACH.TEST>", Want::Ok),
                     ("RCPT TO:<Alice@teach.test>", Want::Ok)]),
    ("3.21", None, &[("RCPT TO:<postmaster>", Want::Ok),
                     ("RCPT TO:<POSTMASTER@teach.test>", Want::Ok)]),
    ("3.22", None, &[("RCPT TO:<alice>", SYNTAX)]),
    ("3.23", None, &[("RCPT TO:<victim@relay.example.>", SYNTAX)]),
    ("3.25", None, &[("RCPT TO:<../../x@teach.test>", SYNTAX),
                     ("RCPT TO:<a/b@teach.test>", NO_USER),
                     ("RCPT TO:<\"..\"@teach.test>", NO_USER),
                     ("RCPT TO:<\"../../x\"@teach.test>", NO_USER)]),
];

#[test]
fn case_3_01_to_3_25_no_open_relay() {
    let server = start_teach_test(&[]);
    let files_before = common::files_under(server.dir.path());
    let temp_x_before = std::env::temp_dir().join("x").exists();

    for (case, mail, rcpts) in RELAY_CASES {
        relay_case(&server, case, *mail, rcpts);
    }

    // Only the 250 cases delivered: 3.13, 3.18, 3.20 (twice), 3.21 (twice, to alice).
    server.wait_idle();
    let alice = server.messages("alice");
    assert_eq!(alice.len(), 4, "{}", server.mbox_text("alice"));
    assert!(server.mbox("bob").is_empty());
    assert!(alice
        .iter()
        .all(|m| String::from_utf8_lossy(&m.content).contains("\nprobe\n")));
    let mut files_after = common::files_under(server.dir.path());
    files_after.retain(|p| !files_before.contains(p));
    let expected_new = vec![
        server.mail_dir().join(".alice.intent"),
        server.mail_dir().join("alice"),
    ];
    assert_eq!(files_after, expected_new, "no other file was created");
    assert_eq!(std::env::temp_dir().join("x").exists(), temp_x_before);
}

/// NUL and control characters inside an address (RFC 5321 §4.1.2: "MUST reject ... with a 501").
#[test]
fn case_3_24_nul_and_control_characters_in_an_address() {
    let server = start_teach_test(&[]);
    let mut wrong = Vec::new();
    for bytes in [
        &b"RCPT TO:<a\0b@teach.test>\r\n"[..],
        &b"RCPT TO:<a\x01b@teach.test>\r\n"[..],
        &b"RCPT TO:<a\x7fb@teach.test>\r\n"[..],
    ] {
        let mut c = server.greeted_as("probe.example");
        c.expect("MAIL FROM:<spamtest@relay.example>", 250);
        c.send(bytes);
        let reply = c.reply();
        if (reply.code, reply.status().as_str()) != (501, "5.1.3") {
            wrong.push(format!("{} got {reply:?}", bytes.escape_ascii()));
        }
        assert!(matches!(c.cmd("DATA").code, 503 | 554));
        c.expect("QUIT", 221);
    }
    assert!(wrong.is_empty(), "expected 501 5.1.3: {wrong:#?}");
    assert!(server.mbox("alice").is_empty());
}

#[test]
fn case_3_27_relay_from_loopback_may_relay() {
    let server = start_teach_test(&["--relay-from", "127.0.0.0/8"]);
    let mut c = server.greeted_as("probe.example");
    c.expect("MAIL FROM:<spamtest@relay.example>", 250);
    c.expect("RCPT TO:<victim@relay.example>", 250);
}

// ---------------------------------------------------------------------------------------------
// 4. Limits, order, dropped connections (the cases core.rs does not already cover)

#[test]
fn case_4_01_command_line_of_512_octets() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    c.send(format!("NOOP {}\r\n", "x".repeat(505)).as_bytes());
    assert_eq!(c.reply().code, 250);
}

#[test]
fn case_4_02_a_mebibyte_mail_from_without_newline() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    c.send(b"MAIL FROM:<");
    c.send(&vec![b'a'; 1024 * 1024]);
    c.send(b">\r\nNOOP\r\n");
    assert_eq!(c.reply().code, 500);
    assert_eq!(c.reply().code, 250, "NOOP after the long line");
    // No transaction was opened by the long line.
    assert_eq!(c.cmd("RCPT TO:<alice@teach.test>").code, 503);
}

#[test]
fn case_4_03_path_limits() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<a@relay.example>", 250);
    let at_limit = format!("RCPT TO:<{}@teach.test>", "a".repeat(64));
    assert_reply(&c.cmd(&at_limit), 550, "5.1.1");
    let over = format!("RCPT TO:<{}@teach.test>", "a".repeat(65));
    let reply = c.cmd(&over);
    assert!(
        matches!(reply.code, 501 | 553),
        "65-octet local part: {reply:?}"
    );
    // A path holds at most 256 octets with its brackets (§4.5.3.1.3), so the longest domain
    // that fits beside `v@` is 252 octets: a semantic answer (not ours), not a syntax error.
    let domain_252 = format!(
        "{}.{}.{}.{}",
        "d".repeat(63),
        "d".repeat(63),
        "d".repeat(63),
        "d".repeat(60)
    );
    let path_256 = format!("<v@{domain_252}>");
    assert_eq!(path_256.len(), 256);
    assert_reply(&c.cmd(&format!("RCPT TO:{path_256}")), 550, "5.7.1");
    let reply = c.cmd(&format!("RCPT TO:<v@{domain_252}d>"));
    assert!(matches!(reply.code, 501 | 553), "257-octet path: {reply:?}");
    // A domain of 256 octets is over its own limit (§4.5.3.1.2).
    let domain_256 = format!("{domain_252}dddd");
    assert_eq!(domain_256.len(), 256);
    let reply = c.cmd(&format!("RCPT TO:<v@{domain_256}>"));
    assert!(
        matches!(reply.code, 501 | 553),
        "256-octet domain: {reply:?}"
    );
    c.expect("NOOP", 250);
}

#[test]
fn case_4_04_a_hundred_recipients_then_452() {
    let server = start_teach_test(&["--max-recipients", "100"]);
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<a@relay.example>", 250);
    let mut group = Vec::new();
    for _ in 0..100 {
        group.extend_from_slice(b"RCPT TO:<alice@teach.test>\r\n");
    }
    c.send(&group);
    for i in 0..100 {
        assert_eq!(c.reply().code, 250, "recipient {}", i + 1);
    }
    assert_reply(&c.cmd("RCPT TO:<bob@teach.test>"), 452, "4.5.3");
    c.expect("DATA", 354);
    c.send(b"Subject: many\r\n\r\nmany\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert!(server.message_count("alice") >= 1);
    assert!(server.mbox("bob").is_empty(), "the 101st was refused");
}

#[test]
fn case_4_05_size_declared_too_large() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    let ehlo = c.expect("EHLO c", 250);
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 10485760"), "{ehlo:?}");
    assert_reply(
        &c.cmd("MAIL FROM:<a@relay.example> SIZE=20000000"),
        552,
        "5.3.4",
    );
    c.expect("MAIL FROM:<a@relay.example>", 250);
}

#[test]
fn case_4_06_message_larger_than_the_limit() {
    let server = start_teach_test(&["--max-size", "2048"]);
    let mut c = server.connect();
    c.open_data("a@relay.example", &["alice@teach.test"]);
    let mut data = b"Subject: big\r\n\r\n".to_vec();
    while data.len() < 2048 + 1024 {
        data.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    data.extend_from_slice(b".\r\nNOOP\r\n");
    c.send(&data);
    assert_reply(&c.reply(), 552, "5.3.4");
    assert_eq!(c.reply().code, 250, "NOOP");
    assert!(server.mbox("alice").is_empty());
}

#[test]
fn case_4_07_long_text_lines_are_stored_intact() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    c.open_data("a@relay.example", &["alice@teach.test"]);
    let line_998 = "L".repeat(998);
    let line_5000 = "M".repeat(5000);
    c.send(format!("Subject: long\r\n\r\n{line_998}\r\n{line_5000}\r\n.\r\n").as_bytes());
    assert_eq!(c.reply().code, 250);
    let stored = server.messages("alice");
    assert_eq!(stored.len(), 1);
    let expected = format!("\n\n{line_998}\n{line_5000}\n");
    assert!(stored[0].content.ends_with(expected.as_bytes()));
}

#[test]
fn case_4_08_rcpt_before_mail() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    assert_reply(&c.cmd("RCPT TO:<alice@teach.test>"), 503, "5.5.1");
    c.expect("MAIL FROM:<a@relay.example>", 250);
}

#[test]
fn case_4_09_data_is_never_read_as_data_without_354() {
    let server = start_teach_test(&[]);
    // (a) DATA before RCPT
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<a@relay.example>", 250);
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");
    assert_eq!(c.cmd("Subject: x").code, 500);
    // (b) every RCPT refused
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<a@relay.example>", 250);
    assert_eq!(c.cmd("RCPT TO:<nobody@teach.test>").code, 550);
    assert_reply(&c.cmd("DATA"), 554, "5.5.1");
    assert_eq!(c.cmd("Subject: x").code, 500);
}

#[test]
fn case_4_10_nested_mail() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<a@x.example>", 250);
    assert_reply(&c.cmd("MAIL FROM:<b@x.example>"), 503, "5.5.1");
    c.expect("RCPT TO:<alice@teach.test>", 250);
}

#[test]
fn case_4_11_mail_before_ehlo() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    assert_reply(&c.cmd("MAIL FROM:<a@x.example>"), 503, "5.5.1");
}

#[test]
fn case_4_12_noop_rset_help_vrfy_before_ehlo() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    assert_eq!(c.cmd("NOOP").code, 250);
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(c.cmd("HELP").code, 214);
    assert!(matches!(c.cmd("VRFY alice").code, 250 | 252 | 550 | 502));
    assert_ne!(c.cmd("EXPN students").code, 503);
}

#[test]
fn case_4_13_ehlo_in_a_transaction_resets_it() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<a@x.example>", 250);
    c.expect("RCPT TO:<alice@teach.test>", 250);
    c.expect("EHLO c", 250);
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");
}

#[test]
fn case_4_14_a_refused_command_leaves_the_state_unchanged() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    assert_reply(&c.cmd("MAIL FROM:<bad syntax"), 501, "5.1.7");
    c.expect("MAIL FROM:<a@x.example>", 250);
}

#[test]
fn case_4_15_unknown_command_and_arguments_on_data_rset_quit() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    assert_reply(&c.cmd("FOO bar"), 500, "5.5.2");
    c.expect("MAIL FROM:<a@x.example>", 250);
    c.expect("RCPT TO:<alice@teach.test>", 250);
    assert_reply(&c.cmd("DATA now"), 501, "5.5.4");
    assert_reply(&c.cmd("RSET x"), 501, "5.5.4");
    assert_reply(&c.cmd("QUIT please"), 501, "5.5.4");
    c.expect("NOOP", 250);
}

#[test]
fn case_4_16_error_limit() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    for i in 1..=20 {
        assert_eq!(c.cmd(&format!("XYZZY{i}")).code, 500, "error {i}");
    }
    let closing = c.reply();
    assert_reply(&closing, 421, "4.7.0");
    assert!(c.is_closed());
}

/// Cases 4.17 and 4.19 inside TLS: the deadlines are the same as in the clear (core.rs has them
/// there).
#[test]
fn case_4_17_and_4_19_inside_tls() {
    let server = common::start_tls(&["--timeout", "1", "--domain", "teach.test"]);
    let mut idle = server.tls_client();
    idle.expect("EHLO c", 250);
    assert_reply(&idle.reply(), 421, "4.4.2");
    assert!(idle.is_closed());
    let mut silent = server.tls_client();
    silent.expect("EHLO c", 250);
    silent.expect("MAIL FROM:<a@relay.example>", 250);
    silent.expect("RCPT TO:<alice@teach.test>", 250);
    silent.expect("DATA", 354);
    silent.send(b"Subject: half\r\n\r\nfirst line\r\n");
    assert_reply(&silent.reply(), 421, "4.4.2");
    assert!(silent.is_closed());
    server.wait_idle();
    assert!(server.mbox("alice").is_empty(), "no mail");
}

#[test]
fn case_4_18_connection_dropped_in_the_middle_of_data() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    assert_eq!(
        c.send_mail(
            "a@relay.example",
            &["alice@teach.test"],
            "Subject: kept\r\n\r\nkept\r\n"
        )
        .code,
        250
    );
    c.expect("QUIT", 221);
    server.wait_idle();
    let before = server.mbox("alice");
    let files_before = common::files_under(server.dir.path());
    let mut c = server.connect();
    c.open_data("a@relay.example", &["alice@teach.test"]);
    c.send(b"line 1\r\nline 2\r\nline 3\r\n");
    drop(c);
    server.wait_idle();
    assert_eq!(server.mbox("alice"), before);
    assert_eq!(
        common::files_under(server.dir.path()),
        files_before,
        "no spool or temporary file remains"
    );
}

#[test]
fn case_4_22_dot_unstuffing() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    c.open_data("a@relay.example", &["alice@teach.test"]);
    c.send(b"Subject: dots\r\n\r\n..hidden\r\n.x\r\n...\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    let stored = server.messages("alice");
    assert!(stored[0].content.ends_with(b"\n\n.hidden\nx\n..\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. Denial of service (5.01 is core.rs's `max_connections_turns_the_third_client_away`, 5.04
// faults.rs's trickles and tls_limits.rs's trickles inside TLS)

/// The options of a real binary in the catalogue's test world.
fn teach_test_binary(extra: &[&str]) -> common::Binary {
    let mut options: Vec<String> = ["--domain", "teach.test", "--domain", "localhost"]
        .map(String::from)
        .to_vec();
    options.extend(extra.iter().map(|o| o.to_string()));
    common::binary(&options)
}

/// `count` clients from `from`, and their greetings' codes.
fn clients_from(from: &str, server: &TestServer, count: usize) -> (Vec<Client>, Vec<u16>) {
    let clients: Vec<Client> = (0..count)
        .map(|_| Client::connect_from(from, server.addr()))
        .collect();
    let codes = clients.iter().map(|c| c.greeting.code).collect();
    (clients, codes)
}

#[test]
fn case_5_02_per_client_cap_recovers_when_its_connections_close() {
    let server = start_teach_test(&["--max-connections-per-ip", "4"]);
    let (held, codes) = clients_from("127.0.0.5", &server, 4);
    assert_eq!(codes, [220; 4]);
    let mut over = Client::connect_from("127.0.0.5", server.addr());
    assert_reply(&over.greeting, 421, "4.7.0");
    assert!(over.is_closed());
    let mut other = Client::connect_from("127.0.0.6", server.addr());
    other.expect("EHLO other.example", 250);
    // The four drop without QUIT: their places come back all the same.
    drop(held);
    common::wait_until("the dropped sessions to end", || {
        server.handle.active_sessions() == 1
    });
    let (_again, codes) = clients_from("127.0.0.5", &server, 4);
    assert_eq!(codes, [220; 4], "the address has its whole share again");
    other.expect("NOOP", 250);
}

#[test]
fn case_5_03_a_flood_of_10000_noops_ends_in_421_after_the_junk_limit() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    let mut flood = b"EHLO c\r\n".to_vec();
    flood.extend_from_slice(&b"NOOP\r\n".repeat(10_000));
    // The server may close before it has read everything; what it said is what counts.
    let _ = c.reader.get_mut().write_all(&flood);
    let mut said = Vec::new();
    let _ = c.reader.read_to_end(&mut said);
    let said = String::from_utf8_lossy(&said);
    let lines: Vec<&str> = said.lines().collect();
    let noops = lines.iter().filter(|l| l.starts_with("250 2.0.0")).count();
    assert_eq!(noops, 100, "replies to NOOP before the limit");
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("421 4.7.0 "), "{last}");
}

#[test]
fn case_5_05_a_mebibyte_subject_header_is_stored_intact_in_bounded_memory() {
    let server = teach_test_binary(&[]);
    let mut c = Client::connect(server.addr);
    c.open_data("a@relay.example", &["alice@teach.test"]);
    let subject = format!("Subject: {}", "s".repeat(1 << 20));
    c.send(format!("{subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    assert_eq!(c.reply().code, 250);
    c.expect("QUIT", 221);
    let stored = smtplab::store::mbox::parse_mboxrd(&server.mbox("alice"));
    assert_eq!(stored.len(), 1);
    let content = String::from_utf8_lossy(&stored[0].content);
    assert!(
        content.lines().any(|line| line == subject),
        "the header is stored whole"
    );
    // The message is held once or twice on its way to disk, never more.
    server.assert_peak_stays_under(64 * 1024, Duration::ZERO);
}

#[test]
fn case_5_06_http_and_proxy_probes_get_500_and_reach_the_log_escaped() {
    let server = teach_test_binary(&["-v"]);
    for probe in [
        "GET /\u{1b}]0;OWNED\u{7} HTTP/1.0",
        "POST /\u{9b}2J HTTP/1.1",
        "CONNECT teach.test:25\u{202e} HTTP/1.0",
    ] {
        let mut c = Client::connect(server.addr);
        let reply = c.cmd(probe);
        assert_reply(&reply, 500, "5.5.2");
        assert!(
            !reply.text().contains(['\u{1b}', '\u{9b}', '\u{202e}']),
            "{probe:?} is echoed raw: {reply:?}"
        );
        c.expect("QUIT", 221);
    }
    // Each line is logged before its reply is sent.
    let log = server.log();
    assert!(log.contains("C: GET /{x1B}]0;OWNED{x07} HTTP/1.0"), "{log}");
    let raw = log
        .chars()
        .find(|&ch| ch != '\n' && smtplab::visible::is_hidden(ch));
    assert_eq!(raw, None, "the log holds a raw {raw:?}:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// 6. mbox correctness

fn deliver_one(server: &TestServer, from: &str, wire_body: &[u8]) -> Reply {
    let mut c = server.connect();
    c.open_data(from, &["alice@teach.test"]);
    c.send(wire_body);
    let reply = c.reply();
    c.expect("QUIT", 221);
    reply
}

#[test]
fn case_6_01_from_in_the_body_is_escaped() {
    let server = start_teach_test(&[]);
    let wire = b"Subject: from\r\n\r\nFrom here on\r\n>From x\r\n>>From y\r\nFrom:not-a-separator\r\nFromage\r\n.\r\n";
    assert_eq!(deliver_one(&server, "mary@relay.example", wire).code, 250);
    let mbox = server.mbox_text("alice");
    assert!(
        mbox.contains("\n\n>From here on\n>>From x\n>>>From y\nFrom:not-a-separator\nFromage\n"),
        "{mbox}"
    );
    let stored = server.messages("alice");
    assert_eq!(stored.len(), 1);
    assert!(stored[0]
        .content
        .ends_with(b"\n\nFrom here on\n>From x\n>>From y\nFrom:not-a-separator\nFromage\n"));
    if common::have_tool("python3") {
        assert_eq!(python_count(&server.mail_dir().join("alice")), 1);
    }
}

fn python_count(path: &std::path::Path) -> usize {
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg("import mailbox, sys\nprint(len(mailbox.mbox(sys.argv[1], create=False)))")
        .arg(path)
        .output()
        .expect("run python3");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a count")
}

#[test]
fn case_6_02_from_produced_by_dot_unstuffing() {
    let server = start_teach_test(&[]);
    let wire = b"Subject: dot\r\n\r\n.From evil@x Sat Jan  3 01:05:34 1996\r\n.\r\n";
    assert_eq!(deliver_one(&server, "mary@relay.example", wire).code, 250);
    let mbox = server.mbox_text("alice");
    assert!(
        mbox.contains("\n>From evil@x Sat Jan  3 01:05:34 1996\n"),
        "{mbox}"
    );
    assert_eq!(server.message_count("alice"), 1);
}

/// `^From mary@relay\.example [A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d \d{4}$`
fn is_separator_for(line: &str, sender: &str) -> bool {
    let Some(date) = line
        .strip_prefix("From ")
        .and_then(|rest| rest.strip_prefix(sender))
        .and_then(|rest| rest.strip_prefix(' '))
    else {
        return false;
    };
    let pattern = "Aaa Aaa _9 99:99:99 9999";
    date.len() == pattern.len()
        && date.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'A' => c.is_ascii_uppercase(),
            'a' => c.is_ascii_lowercase(),
            '_' => c == ' ' || c.is_ascii_digit(),
            '9' => c.is_ascii_digit(),
            _ => c == p,
        })
}

#[test]
fn case_6_03_separator_line_and_trace_headers() {
    let server = start_teach_test(&[]);
    let wire = b"Subject: sep\r\n\r\nbody\r\n.\r\n";
    assert_eq!(deliver_one(&server, "mary@relay.example", wire).code, 250);
    let mbox = server.mbox_text("alice");
    let mut lines = mbox.lines();
    let separator = lines.next().unwrap_or("");
    assert!(
        is_separator_for(separator, "mary@relay.example"),
        "separator: {separator:?}"
    );
    assert_eq!(lines.next(), Some("Return-Path: <mary@relay.example>"));
    let rest: Vec<&str> = lines.collect();
    let received = rest
        .iter()
        .position(|l| l.starts_with("Received: "))
        .expect("a Received header");
    let subject = rest
        .iter()
        .position(|l| *l == "Subject: sep")
        .expect("the client's header");
    assert!(
        received < subject,
        "Received comes before the client's headers"
    );
    assert!(
        rest[..received]
            .iter()
            .all(|l| l.starts_with("Delivered-To: ")),
        "only Delivered-To may come between: {rest:?}"
    );
    assert!(mbox.ends_with("\nbody\n\n"), "{mbox:?}");
}

#[test]
fn case_6_04_null_sender() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted_as("c");
    c.expect("MAIL FROM:<>", 250);
    c.expect("RCPT TO:<alice@teach.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: bounce\r\n\r\nbounce\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    let mbox = server.mbox_text("alice");
    let separator = mbox.lines().next().unwrap_or("");
    assert!(
        is_separator_for(separator, "MAILER-DAEMON"),
        "separator: {separator:?}"
    );
    assert!(mbox.contains("\nReturn-Path: <>\n"), "{mbox}");
}

#[test]
fn case_6_06_no_cr_in_the_mbox() {
    let server = start_teach_test(&[]);
    let wire = b"Subject: crlf\r\nTo: alice@teach.test\r\n\r\nline one\r\nline two\r\n\r\n.\r\n";
    assert_eq!(deliver_one(&server, "mary@relay.example", wire).code, 250);
    let mbox = server.mbox("alice");
    assert!(!mbox.contains(&b'\r'), "{}", server.mbox_text("alice"));
    assert!(mbox.ends_with(b"\n"));
    assert!(server.mbox_text("alice").contains("\nline one\nline two\n"));
}

#[test]
fn case_6_10_bare_lf_cannot_forge_a_separator() {
    let server = start_teach_test(&[]);
    let wire = b"Subject: forge\r\n\r\nhello\nFrom attacker@evil Sat Jan  1 00:00:00 2000\r\nafter\r\n.\r\n";
    let reply = deliver_one(&server, "mary@relay.example", wire);
    let mbox = server.mbox_text("alice");
    assert!(
        !mbox.lines().any(|l| l.starts_with("From attacker@evil")),
        "{mbox}"
    );
    let accepted = usize::from(reply.code == 250);
    assert_eq!(server.message_count("alice"), accepted);
    if reply.code != 250 {
        assert_reply(&reply, 550, "5.5.2");
    }
    if common::have_tool("python3") && accepted > 0 {
        assert_eq!(python_count(&server.mail_dir().join("alice")), accepted);
    }
}

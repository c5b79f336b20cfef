//! The newer extensions over real sockets: SMTPUTF8 (RFC 6531) delivery into a UTF-8 user's
//! mbox, CHUNKING and BINARYMIME (RFC 3030), and the WITH clause of the Received header after
//! STARTTLS and AUTH (RFC 3848).

mod common;

use common::{assert_reply, Client, Reply, TestServer};
use smtplab::smtp::auth::base64_encode;
use smtplab::smtp::session::Role;

// ---------------------------------------------------------------------------------------------
// SMTPUTF8

const UTF8_USER: &str = "δοκιμή";
const UTF8_DOMAIN: &str = "παράδειγμα.δοκιμή";

/// A server whose only user is δοκιμή, at παράδειγμα.δοκιμή and localhost.
fn utf8_server() -> (TestServer, common::TempDir) {
    let users_dir = common::TempDir::new("utf8-users");
    let users = common::write_users(users_dir.path(), &[&format!("{UTF8_USER}:password")]);
    let server = common::start(&[
        "--users",
        &users,
        "--domain",
        UTF8_DOMAIN,
        "--domain",
        "localhost",
    ]);
    (server, users_dir)
}

#[test]
fn a_utf8_message_reaches_a_utf8_users_mbox() {
    let (server, _users) = utf8_server();
    let mut c = server.greeted();
    c.expect("MAIL FROM:<测试@测试.测试> SMTPUTF8", 250);
    c.expect(&format!("RCPT TO:<{UTF8_USER}@{UTF8_DOMAIN}>"), 250);
    c.expect("DATA", 354);
    c.send("From: 测试@测试.测试\r\nSubject: Δοκιμή\r\n\r\nΓειά σου, κόσμε\r\n.\r\n".as_bytes());
    assert_eq!(c.reply().code, 250);
    c.expect("QUIT", 221);

    let path = server.mail_dir().join(UTF8_USER);
    assert!(path.exists(), "{} exists", path.display());
    let stored = server.messages(UTF8_USER);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sender, "测试@测试.测试");
    let text = String::from_utf8(stored[0].content.clone()).expect("UTF-8 kept intact");
    assert!(text.contains("\nSubject: Δοκιμή\n"), "{text}");
    assert!(text.contains("\nΓειά σου, κόσμε\n"), "{text}");
    assert!(text.contains(" with UTF8SMTP"), "{text}");
    assert!(
        text.contains(&format!("for <{UTF8_USER}@{UTF8_DOMAIN}>")),
        "{text}"
    );
}

#[test]
fn a_utf8_recipient_without_smtputf8_is_553() {
    let (server, _users) = utf8_server();
    let mut c = server.greeted();
    c.expect("MAIL FROM:<ascii@client.example>", 250);
    assert_reply(
        &c.cmd(&format!("RCPT TO:<{UTF8_USER}@{UTF8_DOMAIN}>")),
        553,
        "5.6.7",
    );
    assert!(matches!(c.cmd("DATA").code, 503 | 554));
    c.expect("QUIT", 221);
    assert!(server.mbox(UTF8_USER).is_empty());
}

#[test]
fn a_utf8_sender_without_smtputf8_is_553() {
    let (server, _users) = utf8_server();
    let mut c = server.greeted();
    assert_reply(&c.cmd("MAIL FROM:<测试@测试.测试>"), 553, "5.6.7");
    // No transaction was opened.
    assert_eq!(c.cmd(&format!("RCPT TO:<{UTF8_USER}@localhost>")).code, 503);
    c.expect("QUIT", 221);
}

// ---------------------------------------------------------------------------------------------
// CHUNKING and BINARYMIME

/// The message as sent, CRLF line ends, with a line that starts with a dot.
const MESSAGE: &[u8] =
    b"From: a@client.example\r\nSubject: chunks\r\n\r\nline one\r\n.dot line\r\nline three\r\n";

/// The same message through DATA (dot-stuffed).
const MESSAGE_STUFFED: &[u8] =
    b"From: a@client.example\r\nSubject: chunks\r\n\r\nline one\r\n..dot line\r\nline three\r\n.\r\n";

fn open_transaction(c: &mut Client, extra: &str) {
    c.expect("EHLO client.example", 250);
    c.expect(&format!("MAIL FROM:<a@client.example>{extra}"), 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
}

/// `BDAT size [LAST]` and its chunk in one write; returns the reply.
fn bdat(c: &mut Client, chunk: &[u8], last: bool) -> Reply {
    let mut bytes = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    bytes.extend_from_slice(chunk);
    c.send(&bytes);
    c.reply()
}

#[test]
fn three_bdat_chunks_store_the_same_message_as_data() {
    let server = common::start(&[]);
    // Chunk one ends between a CR and its LF; chunk three starts with that LF.
    let split = MESSAGE
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a CRLF")
        + 1;
    let (first, rest) = MESSAGE.split_at(split);
    let (second, third) = rest.split_at(rest.len() - 1);
    assert_eq!(first.last(), Some(&b'\r'));
    assert_eq!(third, b"\n");

    let mut c = server.connect();
    open_transaction(&mut c, "");
    assert_eq!(bdat(&mut c, first, false).code, 250);
    assert_eq!(bdat(&mut c, second, false).code, 250);
    assert_eq!(bdat(&mut c, third, true).code, 250);

    c.expect("MAIL FROM:<a@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("DATA", 354);
    c.send(MESSAGE_STUFFED);
    assert_eq!(c.reply().code, 250);
    c.expect("QUIT", 221);

    let stored = server.messages("alice");
    assert_eq!(stored.len(), 2);
    let chunked = common::without_trace_headers(&stored[0].content);
    let data = common::without_trace_headers(&stored[1].content);
    assert_eq!(
        String::from_utf8_lossy(&chunked),
        String::from_utf8_lossy(&data)
    );
    assert!(chunked.starts_with(b"From: a@client.example\n"));
    assert!(String::from_utf8_lossy(&chunked).contains("\n.dot line\n"));
}

#[test]
fn pipelined_bdat_chunks_in_one_write() {
    let server = common::start(&[]);
    let mut c = server.connect();
    open_transaction(&mut c, "");
    let mut bytes = Vec::new();
    for (chunk, last) in [(&MESSAGE[..10], false), (&MESSAGE[10..], true)] {
        let word = if last { " LAST" } else { "" };
        bytes.extend_from_slice(format!("BDAT {}{word}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
    }
    bytes.extend_from_slice(b"NOOP\r\n");
    c.send(&bytes);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250, "NOOP after the chunks");
    assert_eq!(server.messages("alice").len(), 1);
}

#[test]
fn data_after_bdat_is_503() {
    let server = common::start(&[]);
    let mut c = server.connect();
    open_transaction(&mut c, "");
    assert_eq!(bdat(&mut c, b"Subject: x\r\n", false).code, 250);
    assert_eq!(c.cmd("DATA").code, 503);
    // The chunked transaction goes on.
    assert_eq!(bdat(&mut c, b"\r\nbody\r\n", true).code, 250);
    c.expect("QUIT", 221);
    let stored = server.messages("alice");
    assert_eq!(stored.len(), 1);
    assert!(common::without_trace_headers(&stored[0].content).ends_with(b"Subject: x\n\nbody\n"));
}

#[test]
fn bdat_before_rcpt_is_503_after_its_chunk() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    // Before MAIL, then before RCPT: the chunk is read and dropped, then 503.
    assert_eq!(bdat(&mut c, b"NOOP\r\nRSET\r\n", false).code, 503);
    c.expect("MAIL FROM:<a@client.example>", 250);
    assert_eq!(bdat(&mut c, b"QUIT\r\n", true).code, 503);
    // In sync: the chunk's bytes were not taken as commands.
    let noop = c.cmd("NOOP");
    assert_eq!(noop.code, 250, "{noop:?}");
    c.expect("RCPT TO:<alice@localhost>", 250);
    assert_eq!(bdat(&mut c, b"Subject: y\r\n\r\nok\r\n", true).code, 250);
    assert_eq!(server.messages("alice").len(), 1);
}

#[test]
fn binarymime_needs_bdat() {
    let server = common::start(&[]);
    let mut c = server.connect();
    open_transaction(&mut c, " BODY=BINARYMIME");
    assert_eq!(c.cmd("DATA").code, 503);
    // The same transaction through BDAT is fine, 8-bit octets and all.
    let body = b"Subject: binary\r\n\r\n\xff\xfe\x80 raw\r\n";
    assert_eq!(bdat(&mut c, body, true).code, 250);
    c.expect("QUIT", 221);
    assert_eq!(server.messages("alice").len(), 1);
}

#[test]
fn bdat_over_max_size_is_552_at_last() {
    let server = common::start(&["--max-size", "100"]);
    let mut c = server.connect();
    open_transaction(&mut c, "");
    let chunk = [b'x'; 60];
    assert_eq!(bdat(&mut c, &chunk, false).code, 250);
    let last = bdat(&mut c, &chunk, true);
    assert_eq!(last.code, 552, "{last:?}");
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
    assert!(server.mbox("alice").is_empty());
}

// ---------------------------------------------------------------------------------------------
// The WITH clause of Received (RFC 3848 §3)

fn received_with(server: &TestServer, user: &str) -> String {
    let stored = server.messages(user);
    let text = String::from_utf8_lossy(&stored.last().expect("a message").content).into_owned();
    let with = text
        .split(" with ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("")
        .to_string();
    with
}

#[test]
fn received_says_esmtps_after_starttls() {
    let server = common::start_tls(&[]);
    let mut t = server.tls_client();
    t.open_data("a@client.example", &["alice@localhost"]);
    t.send(b"Subject: tls\r\n\r\nhi\r\n.\r\n");
    assert_eq!(t.reply().code, 250);
    t.expect("QUIT", 221);
    assert_eq!(received_with(&server, "alice"), "ESMTPS");
}

#[test]
fn received_says_esmtpsa_after_starttls_and_auth() {
    let server = common::start(&["--tls-self-signed", "--submission", "127.0.0.1:0"]);
    let addr = server.handle.addr_of(Role::Submission).expect("submission");
    let mut c = Client::connect(addr);
    c.expect("EHLO client.example", 250);
    let mut t = c.starttls();
    t.expect("EHLO client.example", 250);
    let login = t.cmd(&format!(
        "AUTH PLAIN {}",
        base64_encode(b"\0alice\0password")
    ));
    assert_eq!(login.code, 235, "{login:?}");
    t.expect("MAIL FROM:<alice@localhost>", 250);
    t.expect("RCPT TO:<bob@localhost>", 250);
    t.expect("DATA", 354);
    t.send(b"Subject: tls+auth\r\n\r\nhi\r\n.\r\n");
    assert_eq!(t.reply().code, 250);
    t.expect("QUIT", 221);
    assert_eq!(received_with(&server, "bob"), "ESMTPSA");
}

#[test]
fn received_says_esmtp_in_the_clear() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.open_data("a@client.example", &["alice@localhost"]);
    c.send(b"Subject: clear\r\n\r\nhi\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(received_with(&server, "alice"), "ESMTP");
}

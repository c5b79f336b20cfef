//! The full loop, with real clients at both ends: Python's `smtplib` submits a message on one.test
//! (STARTTLS, AUTH), smtplab relays it through an MX lookup to two.test, and Python's `poplib`
//! (and `curl pop3://`) fetch it from two.test's POP3 port; Python's `imaplib` reads the same
//! message from two.test's IMAP port.
//!
//! MUA --submission+TLS+AUTH--> smtplab one.test --MX--> smtplab two.test --mbox--> POP3 or IMAP --> MUA
//!
//! Skipped when python3 is missing (the whole loop) or curl is missing (its listing only).

mod common;
mod dns_server;

use std::process::Command;
use std::time::Duration;

use common::{have_tool, run_tool, wait_until, TempDir, TestServer};
use dns_server::{DnsServer, Zone};
use smtplab::smtp::session::Role;

/// An external client that runs longer than this is killed and the test fails.
const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// The message as the mail client sends it: a line with a leading dot (dot-stuffing on both
/// SMTP hops and in POP3) and a line starting "From " (mboxrd quoting in bob's mbox).
const MESSAGE: &str = "From: alice@one.test\r\n\
To: bob@two.test\r\n\
Subject: the full loop\r\n\
\r\n\
Hello Bob,\r\n\
.a line that starts with a dot\r\n\
From here on, mboxrd must quote this line and POP3 must unquote it.\r\n\
\r\n\
Alice\r\n";

/// The body: everything after the first empty line.
fn body(message: &str) -> &str {
    message
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("")
}

/// two.test: local mailboxes, a POP3 and an IMAP listener, on 127.0.0.3.
fn start_two() -> TestServer {
    common::start(&[
        "--listen",
        "127.0.0.3:0",
        "--pop3",
        "127.0.0.3:0",
        "--imap",
        "127.0.0.3:0",
        "--hostname",
        "mx.two.test",
        "--domain",
        "two.test",
    ])
}

/// one.test: a submission port with STARTTLS, relaying by MX to two.test's SMTP port.
fn start_one(dns: &DnsServer, two: &TestServer) -> TestServer {
    let dns = dns.addr().to_string();
    let mx_port = two.addr().port().to_string();
    common::start(&[
        "--listen",
        "127.0.0.2:0",
        "--submission",
        "127.0.0.2:0",
        "--tls-self-signed",
        "--hostname",
        "mx.one.test",
        "--domain",
        "one.test",
        "--dns",
        &dns,
        "--mx-port",
        &mx_port,
        "--retry",
        "1s",
    ])
}

/// alice's mail client: STARTTLS (the certificate is a throwaway, so not verified), AUTH, send.
const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
with smtplib.SMTP(host, port, timeout=10) as s:
    s.ehlo("client.one.test")
    s.starttls(context=context)
    s.ehlo("client.one.test")
    s.login("alice", "password")
    refused = s.sendmail("alice@one.test", ["bob@two.test"], open(path, "rb").read())
    assert not refused, refused
print("sent")
"#;

/// bob's mail client: log in, RETR 1, write the message as received (CRLF lines).
const POPLIB: &str = r#"
import poplib, sys
host, port = sys.argv[1], int(sys.argv[2])
m = poplib.POP3(host, port, timeout=10)
m.user("bob")
m.pass_("password")
count, _ = m.stat()
assert count == 1, count
resp, lines, octets = m.retr(1)
m.quit()
sys.stdout.buffer.write(b"".join(line + b"\r\n" for line in lines))
"#;

/// bob's other mail client: log in over IMAP, SELECT, FETCH BODY.PEEK[] of message 1.
const IMAPLIB: &str = r#"
import imaplib, sys
host, port = sys.argv[1], int(sys.argv[2])
m = imaplib.IMAP4(host, port, timeout=10)
m.login("bob", "password")
typ, data = m.select("INBOX")
assert data == [b"1"], data
typ, data = m.fetch("1", "(BODY.PEEK[])")
m.logout()
sys.stdout.buffer.write(data[0][1])
"#;

fn python(script: &str, args: &[String]) -> String {
    let run = run_tool(
        Command::new("python3").arg("-c").arg(script).args(args),
        b"",
        TOOL_LIMIT,
    );
    assert!(run.success, "python3: {}{}", run.stdout, run.stderr);
    run.stdout
}

#[test]
fn smtplib_submits_smtplab_relays_poplib_and_curl_fetch() {
    if !have_tool("python3") {
        return; // SKIP: python3 not installed (printed by have_tool)
    }
    let dns = DnsServer::start(
        Zone::new()
            .mx("two.test", 10, "mx.two.test")
            .a("mx.two.test", "127.0.0.3".parse().unwrap()),
    );
    let two = start_two();
    let one = start_one(&dns, &two);
    let submission = one
        .handle
        .addr_of(Role::Submission)
        .expect("a submission listener");
    let pop3 = two.handle.pop3_addr().expect("a POP3 listener");

    let dir = TempDir::new("full-loop");
    let file = dir.path().join("message.eml");
    std::fs::write(&file, MESSAGE).expect("write the message");
    let sent = python(
        SMTPLIB,
        &[
            submission.ip().to_string(),
            submission.port().to_string(),
            file.display().to_string(),
        ],
    );
    assert_eq!(sent.trim(), "sent");

    wait_until("bob's mbox on two.test", || two.message_count("bob") == 1);
    let fetched = python(POPLIB, &[pop3.ip().to_string(), pop3.port().to_string()]);
    assert_eq!(
        body(&fetched),
        body(MESSAGE),
        "the body, byte for byte, after two SMTP hops, an mbox and POP3"
    );
    let (headers, _) = fetched.split_once("\r\n\r\n").expect("headers and body");
    let headers = format!("{headers}\r\n");
    assert!(headers.contains("Subject: the full loop\r\n"), "{headers}");
    assert!(headers.contains("by mx.one.test (smtplab)"), "{headers}");
    assert!(headers.contains("by mx.two.test (smtplab)"), "{headers}");
    assert!(
        headers.contains("with ESMTPSA"),
        "submitted over TLS with AUTH (RFC 3848): {headers}"
    );

    let imap = two.handle.imap_addr(false).expect("an IMAP listener");
    let read = python(IMAPLIB, &[imap.ip().to_string(), imap.port().to_string()]);
    assert_eq!(read, fetched, "IMAP's BODY[] is POP3's RETR, byte for byte");

    if have_tool("curl") {
        let url = format!("pop3://{pop3}/");
        let run = run_tool(
            Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "10"])
                .args([url.as_str(), "-u", "bob:password"]),
            b"",
            TOOL_LIMIT,
        );
        assert!(run.success, "curl: {}", run.stderr);
        let size = fetched.len().to_string();
        let listing: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(listing.len(), 1, "one message listed: {listing:?}");
        assert!(
            listing[0].starts_with("1 ") && listing[0].trim_end().ends_with(&size),
            "LIST shows message 1 with its size {size}: {listing:?}"
        );
    } // else: SKIP: curl not installed (printed by have_tool)
}

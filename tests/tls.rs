//! STARTTLS (RFC 3207) and implicit TLS (RFC 8314) over real sockets: the handshake, the reset
//! it implies, the plaintext-injection defence (CVE-2011-0411), and two real clients, Python's
//! `smtplib` and `openssl s_client`, when they are installed.

mod common;

use std::time::Duration;

use common::{assert_reply, start_tls, Reply, TestServer, TlsClient};
use smtplab::smtp::session::Role;

/// How long the injection tests wait for bytes that must never come.
const SILENCE: Duration = Duration::from_secs(2);

/// How long an external client (python3, openssl) may run.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

fn has_keyword(ehlo: &Reply, keyword: &str) -> bool {
    ehlo.lines
        .iter()
        .any(|l| l.split(' ').next() == Some(keyword))
}

// ---------------------------------------------------------------------------------------------
// Advertising and the reset after the handshake

#[test]
fn starttls_is_advertised_in_the_clear_and_not_inside_tls() {
    let server = start_tls(&[]);
    let mut c = server.connect();
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(has_keyword(&ehlo, "STARTTLS"), "{ehlo:?}");
    let mut t = c.starttls();
    let ehlo = t.expect("EHLO client.example", 250);
    assert!(!has_keyword(&ehlo, "STARTTLS"), "{ehlo:?}");
    assert!(
        ehlo.lines.iter().any(|l| l.starts_with("AUTH ")),
        "AUTH inside TLS: {ehlo:?}"
    );
    t.expect("QUIT", 221);
}

#[test]
fn rcpt_right_after_the_handshake_is_503() {
    let server = start_tls(&[]);
    let mut t = server.tls_client();
    assert_eq!(t.cmd("RCPT TO:<alice@localhost>").code, 503);
    // Not even after the new EHLO: no MAIL was given inside TLS.
    t.expect("EHLO client.example", 250);
    assert_eq!(t.cmd("RCPT TO:<alice@localhost>").code, 503);
    t.expect("QUIT", 221);
}

#[test]
fn mail_right_after_the_handshake_without_ehlo_is_503() {
    let server = start_tls(&[]);
    let mut t = server.tls_client();
    assert_eq!(t.cmd("MAIL FROM:<a@client.example>").code, 503);
    t.expect("EHLO client.example", 250);
    t.expect("MAIL FROM:<a@client.example>", 250);
    t.expect("QUIT", 221);
}

#[test]
fn a_second_starttls_inside_tls_is_503() {
    let server = start_tls(&[]);
    let mut t = server.tls_client();
    t.expect("EHLO client.example", 250);
    t.expect("STARTTLS", 503);
    t.expect("NOOP", 250);
    t.expect("QUIT", 221);
}

#[test]
fn starttls_with_an_argument_is_501() {
    let server = start_tls(&[]);
    let mut c = server.greeted();
    c.expect("STARTTLS now", 501);
    // Still in the clear and in sync: a plain command works.
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
}

#[test]
fn starttls_without_tls_configured_is_502_and_not_advertised() {
    let server = common::start(&[]);
    let mut c = server.connect();
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(!has_keyword(&ehlo, "STARTTLS"), "{ehlo:?}");
    c.expect("STARTTLS", 502);
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
}

#[test]
fn starttls_inside_a_transaction_is_503() {
    let server = start_tls(&[]);
    let mut c = server.greeted();
    c.expect("MAIL FROM:<a@client.example>", 250);
    c.expect("STARTTLS", 503);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("RSET", 250);
    c.expect("QUIT", 221);
}

#[test]
fn starttls_before_ehlo_is_503() {
    let server = start_tls(&[]);
    let mut c = server.connect();
    c.expect("STARTTLS", 503);
    c.expect("QUIT", 221);
}

/// Security catalogue 2.08: no plain-text fallback after a failed handshake.
#[test]
fn a_failed_handshake_closes_only_that_connection() {
    let server = start_tls(&[]);
    let mut c = server.greeted();
    assert_reply(&c.cmd("STARTTLS"), 220, "2.0.0");
    // Plain text where a TLS ClientHello belongs.
    c.send(b"HELO x\r\n");
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut c.reader, &mut rest);
    // A close with unread input may arrive as a reset; only a timeout means "still open".
    let timed_out = closed.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    assert!(!timed_out, "the server closes the connection: {closed:?}");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        !text.contains("250"),
        "no SMTP reply after a failed handshake: {text:?}"
    );
    // The server still serves others, in the clear and inside TLS.
    let mut other = server.connect();
    assert_eq!(other.greeting.code, 220);
    other.expect("EHLO other.example", 250);
    let mut t = other.starttls();
    t.expect("EHLO other.example", 250);
    t.expect("QUIT", 221);
    server.wait_idle();
}

// ---------------------------------------------------------------------------------------------
// Plaintext injection (CVE-2011-0411, NO STARTTLS)

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let server = start_tls(&[]);
    let mut c = server.greeted();
    c.send(b"STARTTLS\r\nRSET\r\n");
    assert_reply(&c.reply(), 220, "2.0.0");
    let mut t = c.handshake();
    assert!(
        t.is_silent_for(SILENCE),
        "a reply arrived for the injected RSET"
    );
    let noop = t.cmd("NOOP");
    assert_eq!(noop.code, 250, "{noop:?}");
    assert!(
        !noop.text().contains("Reset"),
        "got RSET's reply for NOOP: {noop:?}"
    );
    // Exactly one reply for NOOP: the next one read is QUIT's own.
    t.expect("QUIT", 221);
}

#[test]
fn an_injected_ehlo_is_discarded_too() {
    // The EAST form: the injected line is a valid EHLO, so a vulnerable server answers the
    // next real command with the EHLO's 250.
    let server = start_tls(&[]);
    let mut c = server.greeted();
    c.send(b"STARTTLS\r\nEHLO x\r\n");
    assert_reply(&c.reply(), 220, "2.0.0");
    let mut t = c.handshake();
    assert!(
        t.is_silent_for(SILENCE),
        "a reply arrived for the injected EHLO"
    );
    let fake = t.cmd("FAKE x");
    assert_eq!(fake.code, 500, "{fake:?}");
    t.expect("QUIT", 221);
}

#[test]
fn injected_mail_commands_do_not_open_a_transaction() {
    let server = start_tls(&[]);
    let mut c = server.greeted();
    c.send(b"STARTTLS\r\nEHLO x\r\nMAIL FROM:<attacker@evil.example>\r\n");
    assert_reply(&c.reply(), 220, "2.0.0");
    let mut t = c.handshake();
    t.expect("EHLO client.example", 250);
    // Had the injected MAIL been kept, this RCPT would be accepted.
    assert_eq!(t.cmd("RCPT TO:<alice@localhost>").code, 503);
    t.expect("QUIT", 221);
}

// ---------------------------------------------------------------------------------------------
// Implicit TLS and certificate files

#[test]
fn implicit_tls_greets_inside_tls_and_never_offers_starttls() {
    let server = start_tls(&["--smtps", "127.0.0.1:0"]);
    let addr = server
        .handle
        .addr_of(Role::ImplicitTls)
        .expect("smtps listener");
    let mut t = TlsClient::connect_implicit(addr);
    assert_eq!(t.greeting.as_ref().map(|g| g.code), Some(220));
    let ehlo = t.expect("EHLO client.example", 250);
    assert!(!has_keyword(&ehlo, "STARTTLS"), "{ehlo:?}");
    assert!(
        ehlo.lines.iter().any(|l| l.starts_with("AUTH ")),
        "{ehlo:?}"
    );
    t.expect("STARTTLS", 503);
    t.expect("QUIT", 221);
}

#[test]
fn a_certificate_and_key_from_files_serve_starttls() {
    let dir = common::TempDir::new("tls-files");
    let (cert, key) = smtplab::net::tls::self_signed(common::TLS_HOST).expect("self-signed pair");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert).expect("write cert");
    std::fs::write(&key_path, key).expect("write key");
    let server = common::start(&[
        "--tls-cert",
        &cert_path.display().to_string(),
        "--tls-key",
        &key_path.display().to_string(),
    ]);
    let mut t = server.tls_client();
    t.open_data("a@client.example", &["alice@localhost"]);
    t.send(b"Subject: over TLS\r\n\r\nsecret\r\n.\r\n");
    assert_eq!(t.reply().code, 250);
    t.expect("QUIT", 221);
    assert_eq!(server.message_count("alice"), 1);
}

// ---------------------------------------------------------------------------------------------
// Real clients: openssl s_client and Python's smtplib

#[test]
fn openssl_s_client_starttls_delivers_a_message() {
    if !common::have_tool_with("openssl", &["version"]) {
        return;
    }
    let server = start_tls(&[]);
    let port = server.addr().port().to_string();
    // Typed lines end in a bare LF, as s_client sends them without -crlf.
    let input = "EHLO sclient.example\nMAIL FROM:<tester@client.example>\nRCPT TO:<alice@localhost>\nDATA\nSubject: from s_client\n\nhello over STARTTLS\n.\nQUIT\n";
    let run = common::run_tool(
        std::process::Command::new("openssl").args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-quiet",
        ]),
        input.as_bytes(),
        TOOL_LIMIT,
    );
    assert!(
        run.stdout.contains("221"),
        "s_client saw QUIT's reply: stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    let stored = smtplab::store::mbox::parse_mboxrd(&server.mbox("alice"));
    assert_eq!(stored.len(), 1, "{}", server.mbox_text("alice"));
    let text = String::from_utf8_lossy(&stored[0].content);
    assert!(text.contains("Subject: from s_client\n"), "{text}");
    assert!(text.contains("\nhello over STARTTLS\n"), "{text}");
    assert!(text.contains("with ESMTPS "), "{text}");
}

/// Python's smtplib: connect, (STARTTLS,) log in, send one message to alice, quit.
const PYTHON_CLIENT: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage
mode, port = sys.argv[1], int(sys.argv[2])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if mode == "smtps":
    client = smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=context)
else:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("python.example")
    client.starttls(context=context)
client.ehlo("python.example")
assert not client.has_extn("starttls"), "STARTTLS advertised inside TLS"
client.login("alice", "password")
message = EmailMessage()
message["From"] = "alice@localhost"
message["To"] = "bob@localhost"
message["Subject"] = "from smtplib over " + mode
message.set_content("hello from python\n")
refused = client.send_message(message)
assert refused == {}, refused
client.quit()
print("SENT", mode)
"#;

fn python_sends(server: &TestServer, mode: &str, port: u16) {
    let run = common::run_tool(
        std::process::Command::new("python3").args(["-c", PYTHON_CLIENT, mode, &port.to_string()]),
        b"",
        TOOL_LIMIT,
    );
    assert!(
        run.success && run.stdout.contains("SENT"),
        "{mode}: stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    let stored = smtplab::store::mbox::parse_mboxrd(&server.mbox("bob"));
    let last = stored.last().expect("a message for bob");
    let text = String::from_utf8_lossy(&last.content);
    assert!(
        text.contains(&format!("Subject: from smtplib over {mode}\n")),
        "{text}"
    );
    assert!(text.contains("\nhello from python\n"), "{text}");
    assert!(text.contains("with ESMTPSA "), "{text}");
    assert_eq!(last.sender, "alice@localhost");
}

#[test]
fn python_smtplib_starttls_login_and_send_on_the_relay_port() {
    if !common::have_tool("python3") {
        return;
    }
    let server = start_tls(&[]);
    python_sends(&server, "listen", server.addr().port());
    assert_eq!(server.message_count("bob"), 1);
}

#[test]
fn python_smtplib_starttls_login_and_send_on_the_submission_port() {
    if !common::have_tool("python3") {
        return;
    }
    let server = start_tls(&["--submission", "127.0.0.1:0"]);
    let port = server
        .handle
        .addr_of(Role::Submission)
        .expect("submission listener")
        .port();
    python_sends(&server, "submission", port);
    assert_eq!(server.message_count("bob"), 1);
}

#[test]
fn python_smtplib_smtp_ssl_on_the_smtps_port() {
    if !common::have_tool("python3") {
        return;
    }
    let server = start_tls(&["--smtps", "127.0.0.1:0"]);
    let port = server
        .handle
        .addr_of(Role::ImplicitTls)
        .expect("smtps listener")
        .port();
    python_sends(&server, "smtps", port);
    assert_eq!(server.message_count("bob"), 1);
}

/// Python drives each AUTH mechanism itself (its own HMAC-MD5 for CRAM-MD5) inside TLS.
#[test]
fn python_smtplib_logs_in_with_every_mechanism() {
    if !common::have_tool("python3") {
        return;
    }
    const SCRIPT: &str = r#"
import smtplib, ssl, sys
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"]:
    for password, expected in [("password", 235), ("wrong", 535)]:
        client = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
        client.starttls(context=context)
        client.ehlo("python.example")
        client.user, client.password = "alice", password
        method = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
        try:
            code, _ = client.auth(mechanism, method, initial_response_ok=(mechanism == "PLAIN"))
        except smtplib.SMTPAuthenticationError as error:
            code = error.smtp_code
        print(mechanism, password, code)
        assert code == expected, (mechanism, password, code)
        client.quit()
print("DONE")
"#;
    let server = start_tls(&[]);
    let run = common::run_tool(
        std::process::Command::new("python3").args([
            "-c",
            SCRIPT,
            &server.addr().port().to_string(),
        ]),
        b"",
        TOOL_LIMIT,
    );
    assert!(
        run.success && run.stdout.contains("DONE"),
        "stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
}

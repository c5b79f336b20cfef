//! POP3 inside TLS: STLS (RFC 2595 §4) and implicit TLS (`--pop3s`, RFC 8314).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{TestServer, READ_TIMEOUT, TLS_HOST};

fn start() -> TestServer {
    common::start(&[
        "--tls-self-signed",
        "--pop3",
        "127.0.0.1:0",
        "--pop3s",
        "127.0.0.1:0",
    ])
}

fn deliver(server: &TestServer, subject: &str) {
    let body = format!("Subject: {subject}\r\n\r\nhello\r\n");
    assert_eq!(
        server
            .connect()
            .send_mail("mary@client.example", &["alice@localhost"], &body)
            .code,
        250
    );
}

/// Read one response line from any stream.
fn line(reader: &mut impl BufRead) -> String {
    let mut text = String::new();
    reader
        .read_line(&mut text)
        .expect("a line within the timeout");
    text.trim_end().to_string()
}

/// Read a multi-line response up to the lone dot.
fn lines(reader: &mut impl BufRead) -> Vec<String> {
    let first = line(reader);
    assert!(first.starts_with("+OK"), "{first}");
    let mut out = Vec::new();
    loop {
        let next = line(reader);
        if next == "." {
            return out;
        }
        out.push(next);
    }
}

fn send(stream: &mut impl Write, text: &str) {
    stream
        .write_all(format!("{text}\r\n").as_bytes())
        .expect("write");
}

#[test]
fn stls_is_offered_then_forgets_the_clear_and_logs_in() {
    let server = start();
    deliver(&server, "over stls");
    let tcp = TcpStream::connect(server.handle.pop3_addr().expect("pop3")).expect("connect");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut reader = BufReader::new(tcp);
    assert!(line(&mut reader).starts_with("+OK"));
    send(reader.get_mut(), "CAPA");
    assert!(lines(&mut reader).contains(&"STLS".to_string()));
    // USER in the clear, then STLS with an injected command in the same write.
    send(reader.get_mut(), "USER alice");
    assert!(line(&mut reader).starts_with("+OK"));
    reader
        .get_mut()
        .write_all(b"STLS\r\nPASS password\r\n")
        .expect("write");
    assert!(line(&mut reader).starts_with("+OK"));
    assert!(
        reader.buffer().is_empty(),
        "nothing may follow +OK in the clear"
    );
    let tcp = reader.into_inner();
    let tls = common::tls_connector()
        .connect(TLS_HOST, tcp)
        .expect("handshake");
    let mut reader = BufReader::new(tls);
    // The injected PASS was dropped and USER forgotten: PASS now is out of order.
    send(reader.get_mut(), "CAPA");
    let capabilities = lines(&mut reader);
    assert!(
        !capabilities.contains(&"STLS".to_string()),
        "{capabilities:?}"
    );
    send(reader.get_mut(), "PASS password");
    assert!(line(&mut reader).starts_with("-ERR"));
    send(reader.get_mut(), "USER alice");
    assert!(line(&mut reader).starts_with("+OK"));
    send(reader.get_mut(), "PASS password");
    assert!(line(&mut reader).starts_with("+OK"));
    send(reader.get_mut(), "STLS");
    assert!(
        line(&mut reader).starts_with("-ERR"),
        "STLS only before login"
    );
    send(reader.get_mut(), "STAT");
    assert!(line(&mut reader).starts_with("+OK 1 "));
    send(reader.get_mut(), "QUIT");
    assert!(line(&mut reader).starts_with("+OK"));
}

#[test]
fn pop3s_speaks_tls_from_the_first_byte() {
    let server = start();
    deliver(&server, "over pop3s");
    let tcp = TcpStream::connect(server.handle.pop3s_addr().expect("pop3s")).expect("connect");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let tls = common::tls_connector()
        .connect(TLS_HOST, tcp)
        .expect("handshake");
    let mut reader = BufReader::new(tls);
    assert!(line(&mut reader).starts_with("+OK"));
    send(reader.get_mut(), "USER alice");
    line(&mut reader);
    send(reader.get_mut(), "PASS password");
    assert!(line(&mut reader).starts_with("+OK"));
    send(reader.get_mut(), "RETR 1");
    assert!(lines(&mut reader).contains(&"Subject: over pop3s".to_string()));
    send(reader.get_mut(), "QUIT");
    assert!(line(&mut reader).starts_with("+OK"));
}

#[test]
fn stls_without_tls_configured_is_refused() {
    let server = common::start(&["--pop3", "127.0.0.1:0"]);
    let tcp = TcpStream::connect(server.handle.pop3_addr().expect("pop3")).expect("connect");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut reader = BufReader::new(tcp);
    line(&mut reader);
    send(reader.get_mut(), "CAPA");
    assert!(!lines(&mut reader).contains(&"STLS".to_string()));
    send(reader.get_mut(), "STLS");
    assert!(line(&mut reader).starts_with("-ERR"));
}

#[test]
fn python_poplib_uses_stls_and_pop3_ssl() {
    if !common::have_tool("python3") {
        return;
    }
    let server = start();
    deliver(&server, "for python");
    let plain = server.handle.pop3_addr().expect("pop3").port();
    let implicit = server.handle.pop3s_addr().expect("pop3s").port();
    let script = format!(
        r#"
import poplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
p = poplib.POP3("127.0.0.1", {plain}, timeout=10); p.stls(ctx); p.user("alice"); p.pass_("password")
print("stls", p.stat()[0]); p.quit()
s = poplib.POP3_SSL("127.0.0.1", {implicit}, context=ctx, timeout=10); s.user("alice"); s.pass_("password")
print("ssl", s.stat()[0]); s.quit()
"#
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(child.wait().expect("wait").success(), "{out}");
    assert_eq!(out, "stls 1\nssl 1\n");
}

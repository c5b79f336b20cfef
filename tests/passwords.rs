//! Passwords in a classroom, against the real binary: plain-text logins only on this machine or
//! inside TLS, for SMTP and POP3 alike; secrets masked in transcripts, on the console and in the
//! log; AUTH PLAIN's authzid; one password-failure budget per client address.
//! A second client address is 127.0.0.2, made with `common::connect_from`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;

use common::{connect_from, free_addr, start_binary, start_binary_logged, Client, TempDir};
use smtplab::smtp::auth::base64_encode;

const PASSWORD: &str = "s3cret-Pw";

fn here() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn lan() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

/// A users file with alice and bob, whose passwords appear nowhere else in the output.
fn users(dir: &TempDir) -> String {
    common::write_users(dir.path(), &[&format!("alice:{PASSWORD}"), "bob:other-Pw"])
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn plain(authzid: &str, user: &str, password: &str) -> String {
    base64_encode(format!("{authzid}\0{user}\0{password}").as_bytes())
}

fn smtp_from(source: IpAddr, server: SocketAddr) -> Client {
    Client::over(connect_from(&source.to_string(), server).expect("connect"))
}

/// A POP3 client, in the clear or inside TLS: one line per response is enough for the
/// commands used here.
struct Pop3<S = TcpStream>(BufReader<S>);

impl Pop3 {
    fn from(source: IpAddr, server: SocketAddr) -> Pop3 {
        let mut pop3 = Pop3(BufReader::new(
            connect_from(&source.to_string(), server).expect("connect"),
        ));
        assert!(pop3.line().starts_with("+OK"));
        pop3
    }

    /// STLS and the handshake (RFC 2595 §4).
    fn stls(mut self) -> Pop3<native_tls::TlsStream<TcpStream>> {
        assert!(self.cmd("STLS").starts_with("+OK"));
        let tls = common::tls_connector()
            .connect(common::TLS_HOST, self.0.into_inner())
            .expect("TLS handshake");
        Pop3(BufReader::new(tls))
    }
}

impl<S: Read + Write> Pop3<S> {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("a POP3 line");
        line.trim_end().to_string()
    }

    fn cmd(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.line()
    }

    /// CAPA's lines up to the lone dot.
    fn capabilities(&mut self) -> Vec<String> {
        assert!(self.cmd("CAPA").starts_with("+OK"));
        std::iter::from_fn(|| Some(self.line()))
            .take_while(|line| line != ".")
            .collect()
    }
}

#[test]
fn plaintext_login_works_only_from_the_allowed_networks() {
    let dir = TempDir::new("plaintext");
    let (smtp, pop3) = (free_addr(), free_addr());
    let users = users(&dir);
    let options = args(&[
        "--pop3",
        &pop3.to_string(),
        "--users",
        &users,
        "--plaintext-auth-from",
        "127.0.0.1/32",
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let _server = start_binary(smtp, &options);

    // 127.0.0.2 plays a student machine on the LAN: no AUTH, no USER, a sentence saying why.
    let mut c = smtp_from(lan(), smtp);
    let ehlo = c.expect("EHLO student.example", 250);
    assert!(!ehlo.text().contains("AUTH"), "{ehlo:?}");
    let refused = c.cmd(&format!("AUTH PLAIN {}", plain("", "alice", PASSWORD)));
    assert_eq!((refused.code, refused.status().as_str()), (538, "5.7.11"));
    assert!(refused.text().contains("TLS"), "{refused:?}");
    let mut p = Pop3::from(lan(), pop3);
    assert!(!p.capabilities().contains(&"USER".to_string()));
    let user = p.cmd("USER alice");
    assert!(
        user.starts_with("-ERR [AUTH] ") && user.contains("TLS"),
        "{user}"
    );
    assert!(p
        .cmd(&format!("PASS {PASSWORD}"))
        .starts_with("-ERR [AUTH] "));

    // This machine may, in both protocols.
    let mut c = smtp_from(here(), smtp);
    assert!(c.expect("EHLO me.example", 250).text().contains("AUTH"));
    c.expect(&format!("AUTH PLAIN {}", plain("", "alice", PASSWORD)), 235);
    let mut p = Pop3::from(here(), pop3);
    assert!(p.capabilities().contains(&"USER".to_string()));
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(p.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
}

#[test]
fn inside_tls_a_lan_client_may_log_in() {
    let dir = TempDir::new("plaintext-tls");
    let smtp = free_addr();
    let users = users(&dir);
    let pop3 = free_addr();
    let options = args(&[
        "--pop3",
        &pop3.to_string(),
        "--users",
        &users,
        "--tls-self-signed",
        "--plaintext-auth-from",
        "127.0.0.1/32",
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let _server = start_binary(smtp, &options);
    let p = Pop3::from(lan(), pop3);
    let mut tls = p.stls();
    assert!(tls.capabilities().contains(&"USER".to_string()));
    assert!(tls.cmd("USER alice").starts_with("+OK"));
    assert!(tls.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    let mut c = smtp_from(lan(), smtp);
    c.expect("EHLO student.example", 250);
    let mut tls = c.starttls();
    assert!(tls
        .expect("EHLO student.example", 250)
        .text()
        .contains("AUTH"));
    tls.expect(&format!("AUTH PLAIN {}", plain("", "alice", PASSWORD)), 235);
}

/// Security catalogue 2.10: no AUTH before TLS on the submission port, for a client that is
/// not on this machine; MAIL then needs AUTH first.
#[test]
fn case_2_10_no_auth_before_tls_on_the_submission_port() {
    let dir = TempDir::new("case-2-10");
    let (smtp, submission) = (free_addr(), free_addr());
    let options = args(&[
        "--submission",
        &submission.to_string(),
        "--plaintext-auth-from",
        "127.0.0.1/32",
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let _server = start_binary(smtp, &options);
    let mut c = smtp_from(lan(), submission);
    assert!(!c.expect("EHLO c", 250).text().contains("AUTH"));
    let auth = c.cmd(&format!("AUTH PLAIN {}", plain("", "alice", "password")));
    assert_eq!(auth.code, 538, "{auth:?}");
    assert_eq!(c.cmd("MAIL FROM:<alice@localhost>").code, 530);
}

#[test]
fn allow_plaintext_auth_opts_a_lan_in_with_a_warning() {
    let dir = TempDir::new("allow-plaintext");
    let smtp = free_addr();
    let options = args(&[
        "--allow-plaintext-auth",
        "--plaintext-auth-from",
        "127.0.0.1/32",
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let _server = start_binary_logged(smtp, &options, dir.path());
    let mut c = smtp_from(lan(), smtp);
    assert!(c
        .expect("EHLO student.example", 250)
        .text()
        .contains("AUTH"));
    c.expect(
        &format!("AUTH PLAIN {}", plain("", "alice", "password")),
        235,
    );
    let banner = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(
        banner.contains("WARNING: passwords accepted without TLS from 0.0.0.0/0"),
        "{banner}"
    );
}

/// Every secret form a client can send, each in its own connection.
fn send_every_secret_form(smtp: SocketAddr, pop3: SocketAddr) {
    let good = plain("", "alice", PASSWORD);
    for line in [
        format!("AUTH  PLAIN {good}"),
        format!("AUTH PLAIN\t{good}"),
        format!("auth plain {good}"),
    ] {
        let mut c = Client::connect(smtp);
        c.expect("EHLO c", 250);
        c.expect(&line, 235);
        c.expect("QUIT", 221);
    }
    let mut c = Client::connect(smtp);
    c.expect("EHLO c", 250);
    c.expect("AUTH PLAIN", 334);
    c.expect(&good, 235);
    c.expect("QUIT", 221);
    let mut c = Client::connect(smtp);
    c.expect("EHLO c", 250);
    c.expect(&format!("AUTH LOGIN {}", base64_encode(b"alice")), 334);
    c.expect(&base64_encode(PASSWORD.as_bytes()), 235);
    c.expect("QUIT", 221);
    let mut p = Pop3::from(here(), pop3);
    assert!(p.cmd("USER alice").starts_with("+OK"));
    // Two spaces make the password " s3cret-Pw" (RFC 1939 §7 allows spaces in it): refused,
    // and masked all the same.
    assert!(p.cmd(&format!("PASS  {PASSWORD}")).starts_with("-ERR"));
    // A tab makes the whole line one unknown word: refused, and not echoed back.
    assert!(p.cmd(&format!("PASS\t{PASSWORD}")).starts_with("-ERR"));
    assert!(p.cmd("QUIT").starts_with("+OK"));
    let mut c = Client::connect(smtp);
    c.expect("EHLO c", 250);
    c.expect(
        &format!("AUTH\tPLAIN\t{}", plain("", "alice", PASSWORD)),
        500,
    );
    c.expect("QUIT", 221);
}

#[test]
fn secrets_never_reach_a_transcript_the_console_or_the_log() {
    let dir = TempDir::new("secrets");
    let (smtp, pop3) = (free_addr(), free_addr());
    let users = users(&dir);
    let recordings = dir.path().join("recordings");
    let options = args(&[
        "--pop3",
        &pop3.to_string(),
        "--users",
        &users,
        "--trace",
        "-v",
        "--transcripts",
        &recordings.display().to_string(),
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let server = start_binary_logged(smtp, &options, dir.path());
    send_every_secret_form(smtp, pop3);
    let transcripts = || common::files_under(&recordings);
    common::wait_until("six recordings", || transcripts().len() == 6);
    drop(server); // the log and the console are complete
    let secrets = [
        PASSWORD.to_string(),
        plain("", "alice", PASSWORD),
        base64_encode(PASSWORD.as_bytes()),
    ];
    let mut places: Vec<(String, String)> = transcripts()
        .iter()
        .map(|path| (path.display().to_string(), read(path)))
        .collect();
    places.push(("the console".into(), read(&dir.path().join("stdout"))));
    places.push(("the log".into(), read(&dir.path().join("stderr"))));
    for (place, text) in &places {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{place} shows {secret}:\n{text}"
            );
        }
    }
    let all: String = places.iter().map(|(_, text)| text.as_str()).collect();
    assert!(all.contains("C: AUTH  PLAIN {secret}"), "{all}");
    assert!(all.contains("C: AUTH PLAIN{TAB}{secret}"), "{all}");
    assert!(all.contains("PASS  {secret}"), "{all}");
    assert!(all.contains("PASS{TAB}{secret}"), "{all}");
    assert!(all.contains("C: AUTH{TAB}PLAIN{TAB}{secret}"), "{all}");
}

/// `-v` alone logs every line a client sends: a SASL continuation line (AUTH PLAIN's response
/// after its 334, AUTH LOGIN's user name and password) and POP3's PASS are logged masked.
#[test]
fn the_verbose_log_masks_sasl_continuation_lines() {
    let dir = TempDir::new("verbose-secrets");
    let (smtp, pop3) = (free_addr(), free_addr());
    let users = users(&dir);
    let options = args(&[
        "-v",
        "--pop3",
        &pop3.to_string(),
        "--users",
        &users,
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let server = start_binary_logged(smtp, &options, dir.path());
    let mut c = Client::connect(smtp);
    c.expect("EHLO c", 250);
    c.expect("AUTH PLAIN", 334);
    c.expect(&plain("", "alice", PASSWORD), 235);
    c.expect("QUIT", 221);
    let mut c = Client::connect(smtp);
    c.expect("EHLO c", 250);
    c.expect("AUTH LOGIN", 334);
    c.expect(&base64_encode(b"alice"), 334);
    c.expect(&base64_encode(PASSWORD.as_bytes()), 235);
    c.expect("QUIT", 221);
    let mut p = Pop3::from(here(), pop3);
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(p.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    assert!(p.cmd("QUIT").starts_with("+OK"));
    drop(server); // the log is complete
    let log = read(&dir.path().join("stderr"));
    for secret in [
        PASSWORD.to_string(),
        plain("", "alice", PASSWORD),
        base64_encode(PASSWORD.as_bytes()),
        base64_encode(b"alice"),
    ] {
        assert!(!log.contains(&secret), "the log shows {secret}:\n{log}");
    }
    // The lines are logged, masked: the log was not merely silent.
    let masked = log.lines().filter(|l| l.ends_with("C: {secret}")).count();
    assert_eq!(masked, 3, "three continuation lines:\n{log}");
    assert!(log.contains("C: PASS {secret}"), "{log}");
}

#[test]
fn transcripts_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("private");
    let smtp = free_addr();
    let recordings = dir.path().join("new").join("recordings");
    let options = args(&[
        "--transcripts",
        &recordings.display().to_string(),
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let _server = start_binary(smtp, &options);
    let mut c = Client::connect(smtp);
    c.expect("QUIT", 221);
    common::wait_until("a recording", || {
        common::files_under(&recordings).len() == 1
    });
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&recordings), 0o700);
    assert_eq!(mode(&common::files_under(&recordings)[0]), 0o600);
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[test]
fn auth_plain_refuses_to_act_as_another_user() {
    let dir = TempDir::new("authzid");
    let smtp = free_addr();
    let users = users(&dir);
    let options = args(&[
        "--users",
        &users,
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let _server = start_binary(smtp, &options);
    let mut c = Client::connect(smtp);
    c.expect("EHLO c", 250);
    // bob's authzid with alice's right password: RFC 4616 §2 says no.
    let other = c.cmd(&format!("AUTH PLAIN {}", plain("bob", "alice", PASSWORD)));
    assert_eq!(
        (other.code, other.status().as_str()),
        (535, "5.7.8"),
        "{other:?}"
    );
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", "alice", PASSWORD)),
        235,
    );
}

#[test]
fn password_guessing_spends_one_budget_per_address_across_smtp_and_pop3() {
    let dir = TempDir::new("budget");
    let (smtp, pop3) = (free_addr(), free_addr());
    let users = users(&dir);
    let options = args(&[
        "--pop3",
        &pop3.to_string(),
        "--users",
        &users,
        "--auth-budget",
        "5",
        "--auth-delay",
        "0.05",
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
    ]);
    let _server = start_binary(smtp, &options);
    let wrong = plain("", "alice", "guess");
    let right = plain("", "alice", PASSWORD);

    // Three SMTP guesses (the per-connection limit), then two over POP3: the budget is spent.
    let mut c = smtp_from(here(), smtp);
    c.expect("EHLO c", 250);
    c.expect(&format!("AUTH PLAIN {wrong}"), 535);
    c.expect(&format!("AUTH PLAIN {wrong}"), 535);
    c.expect(&format!("AUTH PLAIN {wrong}"), 535);
    assert_eq!(c.reply().code, 421);
    let mut p = Pop3::from(here(), pop3);
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(p.cmd("PASS guess").starts_with("-ERR"));
    assert!(p.cmd("USER alice").starts_with("+OK"));
    let shut = p.cmd("PASS guess");
    assert!(
        shut.starts_with("-ERR [AUTH] Too many failed logins"),
        "{shut}"
    );

    // Now even the right password is refused from this address, in both protocols...
    let mut c = smtp_from(here(), smtp);
    c.expect("EHLO c", 250);
    let refused = c.cmd(&format!("AUTH PLAIN {right}"));
    assert_eq!((refused.code, refused.status().as_str()), (421, "4.7.0"));
    assert!(
        refused.text().contains("Too many failed logins"),
        "{refused:?}"
    );
    assert!(c.is_closed());
    let mut p = Pop3::from(here(), pop3);
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(p
        .cmd(&format!("PASS {PASSWORD}"))
        .starts_with("-ERR [AUTH]"));

    // ...while another address is unaffected.
    let mut c = smtp_from(lan(), smtp);
    c.expect("EHLO c", 250);
    c.expect(&format!("AUTH PLAIN {right}"), 235);
    let mut p = Pop3::from(lan(), pop3);
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(p.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
}

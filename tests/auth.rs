//! AUTH (RFC 4954) with PLAIN, LOGIN and CRAM-MD5, the submission listener (RFC 6409), and
//! relaying decided by who the client is (security catalogue section 3), over real sockets.
//! The test world: demo users alice and bob (password `password`), local domains `teach.test`
//! and `localhost`. Every client here is on loopback, where AUTH is offered in the clear; the
//! 538 answer for a client on another network is in tests/passwords.rs, which narrows
//! `--plaintext-auth-from` and connects from 127.0.0.2.

mod common;

use common::{assert_reply, start_teach_test, Client, Reply, TestServer};
use smtplab::smtp::auth::{base64_decode, base64_encode, cram_md5_digest};
use smtplab::smtp::session::Role;

const PASSWORD: &str = "password";

/// These tests fail logins on purpose, many from one address: the growing wait of the
/// password-failure budget (tested in tests/passwords.rs) would only slow them down.
const NO_WAIT: &[&str] = &["--auth-delay", "0"];

fn b64(text: &str) -> String {
    base64_encode(text.as_bytes())
}

#[derive(Clone, Copy, Debug)]
enum Mechanism {
    Plain,
    Login,
    CramMd5,
}

const MECHANISMS: [Mechanism; 3] = [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5];

/// Run one whole exchange for `user`/`password` and return the final reply.
fn authenticate(c: &mut Client, mechanism: Mechanism, user: &str, password: &str) -> Reply {
    match mechanism {
        Mechanism::Plain => c.cmd(&format!(
            "AUTH PLAIN {}",
            b64(&format!("\0{user}\0{password}"))
        )),
        Mechanism::Login => {
            let prompt = c.expect("AUTH LOGIN", 334);
            assert_eq!(prompt.text(), b64("Username:"));
            let prompt = c.expect(&b64(user), 334);
            assert_eq!(prompt.text(), b64("Password:"));
            c.cmd(&b64(password))
        }
        Mechanism::CramMd5 => {
            let challenge = c.expect("AUTH CRAM-MD5", 334);
            let challenge = base64_decode(&challenge.text()).expect("base64 challenge");
            let challenge = String::from_utf8(challenge).expect("text challenge");
            assert!(
                challenge.starts_with('<') && challenge.ends_with('>'),
                "{challenge}"
            );
            let digest = cram_md5_digest(password, &challenge).expect("digest");
            c.cmd(&b64(&format!("{user} {digest}")))
        }
    }
}

/// Start an exchange and stop at its first 334 (PLAIN without an initial response).
fn begin(c: &mut Client, mechanism: Mechanism) {
    let line = match mechanism {
        Mechanism::Plain => "AUTH PLAIN",
        Mechanism::Login => "AUTH LOGIN",
        Mechanism::CramMd5 => "AUTH CRAM-MD5",
    };
    c.expect(line, 334);
}

// ---------------------------------------------------------------------------------------------
// Each mechanism: good, bad, cancelled, malformed, replayed

#[test]
fn every_mechanism_accepts_the_right_password() {
    let server = start_teach_test(&[]);
    for mechanism in MECHANISMS {
        let mut c = server.greeted();
        let reply = authenticate(&mut c, mechanism, "alice", PASSWORD);
        assert_eq!(
            (reply.code, reply.status().as_str()),
            (235, "2.7.0"),
            "{mechanism:?}: {reply:?}"
        );
        c.expect("QUIT", 221);
    }
}

#[test]
fn every_mechanism_refuses_a_wrong_password_and_an_unknown_user() {
    let server = start_teach_test(NO_WAIT);
    for mechanism in MECHANISMS {
        for (user, password) in [("alice", "guess"), ("mallory", PASSWORD)] {
            let mut c = server.greeted();
            let reply = authenticate(&mut c, mechanism, user, password);
            assert_eq!(
                (reply.code, reply.status().as_str()),
                (535, "5.7.8"),
                "{mechanism:?} {user}/{password}: {reply:?}"
            );
            // One failure does not end the session; the client is still not logged in.
            c.expect("NOOP", 250);
            c.expect("QUIT", 221);
        }
    }
}

#[test]
fn every_mechanism_can_be_cancelled_with_a_star() {
    let server = start_teach_test(&[]);
    for mechanism in MECHANISMS {
        let mut c = server.greeted();
        begin(&mut c, mechanism);
        let reply = c.cmd("*");
        assert_eq!(
            (reply.code, reply.status().as_str()),
            (501, "5.5.2"),
            "{mechanism:?}: {reply:?}"
        );
        // Back to commands, and a new AUTH may start.
        c.expect("NOOP", 250);
        let reply = authenticate(&mut c, mechanism, "alice", PASSWORD);
        assert_eq!(reply.code, 235, "{mechanism:?} after a cancel: {reply:?}");
        c.expect("QUIT", 221);
    }
}

#[test]
fn login_cancelled_at_the_password_prompt() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted();
    c.expect("AUTH LOGIN", 334);
    c.expect(&b64("alice"), 334);
    assert_reply(&c.cmd("*"), 501, "5.5.2");
    c.expect("NOOP", 250);
}

#[test]
fn every_mechanism_refuses_a_response_that_is_not_base64() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted();
    assert_reply(&c.cmd("AUTH PLAIN %%%not-base64%%%"), 501, "5.5.2");
    for mechanism in MECHANISMS {
        let mut c = server.greeted();
        begin(&mut c, mechanism);
        let reply = c.cmd("!!!!");
        assert_eq!(
            (reply.code, reply.status().as_str()),
            (501, "5.5.2"),
            "{mechanism:?}: {reply:?}"
        );
        c.expect("NOOP", 250);
        c.expect("QUIT", 221);
    }
    // PLAIN that is base64 but not "authzid NUL user NUL password".
    let mut c = server.greeted();
    assert_reply(
        &c.cmd(&format!("AUTH PLAIN {}", b64("alice password"))),
        501,
        "5.5.2",
    );
    // CRAM-MD5 takes no initial response.
    assert_eq!(
        c.cmd(&format!("AUTH CRAM-MD5 {}", b64("alice x"))).code,
        501
    );
    c.expect("QUIT", 221);
}

#[test]
fn a_second_auth_after_success_is_503() {
    let server = start_teach_test(&[]);
    for mechanism in MECHANISMS {
        let mut c = server.greeted();
        assert_eq!(authenticate(&mut c, mechanism, "alice", PASSWORD).code, 235);
        for again in MECHANISMS {
            let line = match again {
                Mechanism::Plain => format!("AUTH PLAIN {}", b64("\0bob\0password")),
                Mechanism::Login => "AUTH LOGIN".to_string(),
                Mechanism::CramMd5 => "AUTH CRAM-MD5".to_string(),
            };
            let reply = c.cmd(&line);
            assert_eq!(reply.code, 503, "{mechanism:?} then {again:?}: {reply:?}");
        }
        c.expect("QUIT", 221);
    }
}

#[test]
fn an_unknown_mechanism_is_504() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted();
    assert_reply(&c.cmd("AUTH GSSAPI"), 504, "5.5.4");
    assert_reply(&c.cmd("AUTH XOAUTH2 dGVzdA=="), 504, "5.5.4");
    c.expect("NOOP", 250);
}

#[test]
fn auth_before_ehlo_is_503() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0password")))
            .code,
        503
    );
    c.expect("EHLO client.example", 250);
    assert_eq!(
        authenticate(&mut c, Mechanism::Plain, "alice", PASSWORD).code,
        235
    );
}

#[test]
fn auth_inside_a_transaction_is_503() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted();
    c.expect("MAIL FROM:<a@client.example>", 250);
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0password")))
            .code,
        503
    );
    c.expect("RCPT TO:<alice@teach.test>", 250);
    assert_eq!(c.cmd("AUTH LOGIN").code, 503);
    c.expect("RSET", 250);
    assert_eq!(
        authenticate(&mut c, Mechanism::Login, "alice", PASSWORD).code,
        235
    );
}

#[test]
fn three_failures_end_the_session_with_421() {
    let server = start_teach_test(NO_WAIT);
    for mechanism in MECHANISMS {
        let mut c = server.greeted();
        for _ in 0..2 {
            assert_eq!(authenticate(&mut c, mechanism, "alice", "guess").code, 535);
        }
        let third = authenticate(&mut c, mechanism, "alice", "guess");
        assert_eq!(third.code, 535, "{mechanism:?}: {third:?}");
        let closing = c.try_reply();
        assert_eq!(
            closing.as_ref().map(|r| r.code),
            Some(421),
            "{mechanism:?}: {closing:?}"
        );
        assert!(c.is_closed(), "{mechanism:?}: the connection is closed");
    }
    // Failures are counted per connection: a new one may log in.
    let mut c = server.greeted();
    assert_eq!(
        authenticate(&mut c, Mechanism::CramMd5, "alice", PASSWORD).code,
        235
    );
}

#[test]
fn auth_is_offered_to_a_loopback_client_in_the_clear() {
    let server = start_teach_test(&[]);
    let mut c = server.connect();
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN CRAM-MD5"),
        "{ehlo:?}"
    );
}

#[test]
fn authenticated_and_plain_sessions_are_named_in_the_received_header() {
    let server = start_teach_test(&[]);
    let mut c = server.greeted();
    assert_eq!(
        authenticate(&mut c, Mechanism::Plain, "alice", PASSWORD).code,
        235
    );
    c.expect("MAIL FROM:<alice@teach.test>", 250);
    c.expect("RCPT TO:<bob@teach.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: a\r\n\r\nauthenticated\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    let text = server.mbox_text("bob");
    assert!(text.contains("with ESMTPA "), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The submission listener

fn submission(server: &TestServer) -> Client {
    let addr = server
        .handle
        .addr_of(Role::Submission)
        .expect("submission listener");
    let mut c = Client::connect(addr);
    c.expect("EHLO client.example", 250);
    c
}

#[test]
fn submission_refuses_mail_before_auth_and_accepts_after() {
    let server = start_teach_test(&["--submission", "127.0.0.1:0"]);
    let mut c = submission(&server);
    assert_reply(&c.cmd("MAIL FROM:<alice@teach.test>"), 530, "5.7.0");
    assert_eq!(c.cmd("RCPT TO:<bob@teach.test>").code, 503);
    assert_eq!(c.cmd("DATA").code, 503);
    // A failed login does not open the door either.
    assert_eq!(
        authenticate(&mut c, Mechanism::Plain, "alice", "guess").code,
        535
    );
    assert_reply(&c.cmd("MAIL FROM:<alice@teach.test>"), 530, "5.7.0");
    assert_eq!(
        authenticate(&mut c, Mechanism::CramMd5, "alice", PASSWORD).code,
        235
    );
    c.expect("MAIL FROM:<alice@teach.test>", 250);
    c.expect("RCPT TO:<bob@teach.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: submitted\r\n\r\nhello bob\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    c.expect("QUIT", 221);
    let stored = smtplab::store::mbox::parse_mboxrd(&server.mbox("bob"));
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0].content).contains("\nhello bob\n"));
}

#[test]
fn submission_refuses_a_null_sender_and_a_claimed_auth_param_without_auth() {
    let server = start_teach_test(&["--submission", "127.0.0.1:0"]);
    let mut c = submission(&server);
    assert_reply(&c.cmd("MAIL FROM:<>"), 530, "5.7.0");
    assert_reply(
        &c.cmd("MAIL FROM:<alice@teach.test> AUTH=<alice@teach.test>"),
        530,
        "5.7.0",
    );
    c.expect("QUIT", 221);
    assert!(server.mbox("alice").is_empty() && server.mbox("bob").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Relaying: decided by AUTH, never by what the client claims

#[test]
fn an_authenticated_client_may_relay() {
    let server = start_teach_test(&["--submission", "127.0.0.1:0"]);
    let mut answers = Vec::new();
    let mut c = server.greeted();
    assert_eq!(
        authenticate(&mut c, Mechanism::Plain, "alice", PASSWORD).code,
        235
    );
    c.expect("MAIL FROM:<alice@teach.test>", 250);
    answers.push(("relay port", c.cmd("RCPT TO:<friend@relay.example>")));
    c.expect("QUIT", 221);

    let mut c = submission(&server);
    assert_eq!(
        authenticate(&mut c, Mechanism::Login, "bob", PASSWORD).code,
        235
    );
    c.expect("MAIL FROM:<bob@teach.test>", 250);
    answers.push(("submission port", c.cmd("RCPT TO:<friend@relay.example>")));
    c.expect("QUIT", 221);
    // Only the RCPT is checked: delivery to other domains is answered at the end of DATA.
    assert!(
        answers.iter().all(|(_, reply)| reply.code == 250),
        "RCPT to a foreign domain after AUTH: {answers:#?}"
    );
}

/// The relay tricks of catalogue cases 3.08–3.16 (3.13 is a positive control, left out), with
/// the answer each must get.
const TRICKS: &[(&str, &str, u16)] = &[
    ("3.08", "RCPT TO:<victim%relay.example@teach.test>", 550),
    ("3.09", "RCPT TO:<victim%relay.example>", 501),
    ("3.09", "RCPT TO:<\"victim%relay.example\">", 501),
    ("3.10", "RCPT TO:<victim@relay.example@teach.test>", 501),
    ("3.11", "RCPT TO:<\"victim@relay.example\"@teach.test>", 550),
    ("3.12", "RCPT TO:<@teach.test:victim@relay.example>", 550),
    ("3.14", "RCPT TO:<relay.example!victim>", 501),
    ("3.15", "RCPT TO:<relay.example!victim@teach.test>", 550),
    ("3.16", "RCPT TO:<victim@relay.example>", 550),
];

/// Something an unauthenticated client may try before MAIL to look authenticated.
#[derive(Clone, Copy, Debug)]
enum Posing {
    FailedAuth,
    CancelledAuth,
    MalformedAuth,
    /// `MAIL FROM:<..> AUTH=<alice@teach.test>`: a claim, not a login (RFC 4954 §5).
    AuthParameter,
    /// Logged in in the clear, then STARTTLS: the login is forgotten (RFC 3207 §4.2).
    LoginBeforeStarttls,
}

/// A command sender for a client that is plain or inside TLS.
type Commands = Box<dyn FnMut(&str) -> Reply>;

fn pose(server: &TestServer, posing: Posing) -> (Commands, &'static str) {
    let mut c = server.greeted();
    let mail = match posing {
        Posing::FailedAuth => {
            assert_eq!(
                authenticate(&mut c, Mechanism::Plain, "alice", "guess").code,
                535
            );
            "MAIL FROM:<alice@teach.test>"
        }
        Posing::CancelledAuth => {
            c.expect("AUTH LOGIN", 334);
            c.expect(&b64("alice"), 334);
            assert_eq!(c.cmd("*").code, 501);
            "MAIL FROM:<alice@teach.test>"
        }
        Posing::MalformedAuth => {
            c.expect("AUTH CRAM-MD5", 334);
            assert_eq!(c.cmd("@@@").code, 501);
            "MAIL FROM:<alice@teach.test>"
        }
        Posing::AuthParameter => "MAIL FROM:<alice@teach.test> AUTH=<alice@teach.test>",
        Posing::LoginBeforeStarttls => {
            assert_eq!(
                authenticate(&mut c, Mechanism::Plain, "alice", PASSWORD).code,
                235
            );
            let mut t = c.starttls();
            t.expect("EHLO client.example", 250);
            return (
                Box::new(move |line| t.cmd(line)),
                "MAIL FROM:<alice@teach.test>",
            );
        }
    };
    (Box::new(move |line| c.cmd(line)), mail)
}

#[test]
fn relay_tricks_after_posing_as_authenticated_are_refused() {
    let server = start_teach_test(&["--tls-self-signed", "--auth-delay", "0"]);
    let before = (server.mbox("alice"), server.mbox("bob"));
    let mut wrong = Vec::new();
    for posing in [
        Posing::FailedAuth,
        Posing::CancelledAuth,
        Posing::MalformedAuth,
        Posing::AuthParameter,
        Posing::LoginBeforeStarttls,
    ] {
        for (case, rcpt, code) in TRICKS {
            let (mut cmd, mail) = pose(&server, posing);
            let mail_line = if *case == "3.16" {
                mail.replace("<alice@teach.test>", "<relay.example!nobody>")
            } else {
                mail.to_string()
            };
            let mail_reply = cmd(&mail_line);
            let reply = cmd(rcpt);
            let expected = if *case == "3.16" {
                // The bang-path sender is refused at MAIL, so the RCPT has no transaction.
                (mail_reply.code == 501 && reply.code == 503) || reply.code == 550
            } else {
                mail_reply.code == 250 && reply.code == *code
            };
            if !expected {
                wrong.push(format!(
                    "{posing:?} {case} {mail_line} -> {mail_reply:?}; {rcpt} -> {reply:?}"
                ));
            }
            let data = cmd("DATA");
            if data.code == 354 {
                wrong.push(format!("{posing:?} {case}: DATA got 354"));
            }
            cmd("QUIT");
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    server.wait_idle();
    assert!(
        before == (server.mbox("alice"), server.mbox("bob")),
        "a mailbox changed"
    );
    assert_eq!(
        common::files_under(&server.mail_dir()),
        Vec::<std::path::PathBuf>::new(),
        "no mailbox was created"
    );
}

/// Logging in lets a client relay, but never turns a local-looking trick into a relay: the
/// percent hack, a quoted `@` and a bang path at a local domain still find no local user.
#[test]
fn relay_tricks_at_a_local_domain_are_refused_even_after_auth() {
    let server = start_teach_test(&[]);
    for (case, rcpt) in [
        ("3.08", "RCPT TO:<victim%relay.example@teach.test>"),
        ("3.11", "RCPT TO:<\"victim@relay.example\"@teach.test>"),
        ("3.15", "RCPT TO:<relay.example!victim@teach.test>"),
    ] {
        let mut c = server.greeted();
        assert_eq!(
            authenticate(&mut c, Mechanism::Plain, "alice", PASSWORD).code,
            235
        );
        c.expect("MAIL FROM:<alice@teach.test>", 250);
        let reply = c.cmd(rcpt);
        assert_eq!(
            (reply.code, reply.status().as_str()),
            (550, "5.1.1"),
            "{case}: {reply:?}"
        );
        c.expect("QUIT", 221);
    }
    assert!(common::files_under(&server.mail_dir()).is_empty());
}

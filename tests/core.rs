//! The core server's acceptance list, over real sockets: every command and error code, the
//! limits, the timeouts, pipelining, dot-stuffing, concurrency and failure handling.

mod common;

use common::{assert_reply, Client, TestServer};

/// True when a reply line starts with an RFC 3463 enhanced status code such as `2.0.0`.
fn has_enhanced_code(line: &str) -> bool {
    let first = line.split(' ').next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// A client with an open transaction: EHLO, MAIL, RCPT alice.
fn in_transaction(server: &TestServer) -> Client {
    let mut c = server.greeted();
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c
}

fn no_mail_anywhere(server: &TestServer) {
    for user in ["alice", "bob"] {
        assert!(
            server.mbox(user).is_empty(),
            "{user} got mail: {}",
            server.mbox_text(user)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Every command

#[test]
fn ehlo_is_multiline_with_extensions_and_no_enhanced_codes() {
    let server = common::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.greeting.code, 220);
    for line in &c.greeting.lines {
        assert!(!has_enhanced_code(line), "greeting: {line:?}");
    }
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(ehlo.lines.len() > 1, "EHLO is multi-line: {ehlo:?}");
    assert!(ehlo.lines[0].contains("smtplab.test"), "{ehlo:?}");
    for keyword in [
        "SIZE 10485760",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "HELP",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == keyword),
            "EHLO lacks {keyword}: {ehlo:?}"
        );
    }
    for line in &ehlo.lines {
        assert!(!has_enhanced_code(line), "EHLO: {line:?}");
    }
    let helo = c.expect("HELO client.example", 250);
    assert_eq!(helo.lines.len(), 1, "{helo:?}");
    assert!(!has_enhanced_code(&helo.lines[0]), "HELO: {helo:?}");
}

#[test]
fn ehlo_size_follows_max_size() {
    let server = common::start(&["--max-size", "1000"]);
    let mut c = server.connect();
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 1000"), "{ehlo:?}");
}

#[test]
fn helo_mail_rcpt_data_rset_noop_quit() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    assert_reply(&c.cmd("NOOP"), 250, "2.0.0");
    assert_reply(&c.cmd("MAIL FROM:<mary@client.example>"), 250, "2.1.0");
    assert_reply(&c.cmd("RCPT TO:<bob@localhost>"), 250, "2.1.5");
    assert_reply(&c.cmd("RSET"), 250, "2.0.0");
    // RSET dropped the transaction.
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<bob@localhost>", 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: core\r\n\r\nbody\r\n.\r\n");
    assert_reply(&c.reply(), 250, "2.0.0");
    let quit = c.cmd("QUIT");
    assert_reply(&quit, 221, "2.0.0");
    assert!(c.is_closed(), "the server closes after 221");
    assert_eq!(server.message_count("bob"), 1);
}

#[test]
fn vrfy_user_and_unknown() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    let alice = c.expect("VRFY alice", 250);
    assert!(alice.text().contains("alice"), "{alice:?}");
    assert_reply(&c.cmd("VRFY nosuchuser"), 550, "5.1.1");
}

#[test]
fn expn_list_and_unknown() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    let list = c.expect("EXPN students", 250);
    assert!(list.lines.len() >= 2, "multi-line: {list:?}");
    assert!(list.lines.iter().any(|l| l.contains("alice")), "{list:?}");
    assert!(list.lines.iter().any(|l| l.contains("bob")), "{list:?}");
    assert_eq!(c.cmd("EXPN nosuchlist").code, 550);
}

#[test]
fn help_and_help_mail() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    let help = c.expect("HELP", 214);
    assert!(help.text().contains("MAIL"), "{help:?}");
    let mail = c.expect("HELP MAIL", 214);
    assert!(mail.text().contains("MAIL FROM:<"), "syntax: {mail:?}");
    assert!(mail.text().contains("RFC 5321 §4.1.1.2"), "{mail:?}");
}

#[test]
fn obsolete_verbs_get_502_mentioning_obsolete() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    for verb in [
        "SEND FROM:<a@b.example>",
        "SOML FROM:<a@b.example>",
        "SAML FROM:<a@b.example>",
        "TURN",
    ] {
        let reply = c.cmd(verb);
        assert_reply(&reply, 502, "5.5.1");
        assert!(
            reply.text().to_lowercase().contains("obsolete"),
            "{verb}: {reply:?}"
        );
    }
}

#[test]
fn unknown_verb_is_500_5_5_2() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    assert_reply(&c.cmd("FROB nicate"), 500, "5.5.2");
    c.expect("NOOP", 250);
}

#[test]
fn bad_arguments_get_501() {
    let server = common::start(&[]);
    let mut c = in_transaction(&server);
    // With a recipient in place, a DATA with an argument must not start the data phase.
    assert_eq!(c.cmd("DATA x").code, 501);
    assert_eq!(c.cmd("RSET x").code, 501);
    assert_eq!(c.cmd("QUIT x").code, 501);
    assert_eq!(c.cmd("HELO").code, 501);
    // None of them changed anything: the transaction is still open.
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: still here\r\n\r\nok\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(server.message_count("alice"), 1);
}

#[test]
fn out_of_order_commands_get_503_5_5_1() {
    let server = common::start(&[]);
    let mut c = server.connect();
    assert_reply(&c.cmd("MAIL FROM:<mary@client.example>"), 503, "5.5.1");
    c.expect("EHLO client.example", 250);
    assert_reply(&c.cmd("RCPT TO:<alice@localhost>"), 503, "5.5.1");
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");
    c.expect("MAIL FROM:<mary@client.example>", 250);
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");
    assert_reply(&c.cmd("MAIL FROM:<other@client.example>"), 503, "5.5.1");
    // The first transaction is still open.
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("DATA", 354);
}

#[test]
fn data_after_every_rcpt_refused_is_554() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    c.expect("MAIL FROM:<mary@client.example>", 250);
    assert_reply(&c.cmd("RCPT TO:<nobody@localhost>"), 550, "5.1.1");
    assert_eq!(c.cmd("DATA").code, 554);
}

#[test]
fn unknown_mail_and_rcpt_parameters_get_555() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    assert_reply(
        &c.cmd("MAIL FROM:<mary@client.example> FROB=1"),
        555,
        "5.5.4",
    );
    c.expect("MAIL FROM:<mary@client.example>", 250);
    assert_reply(&c.cmd("RCPT TO:<alice@localhost> FROB=1"), 555, "5.5.4");
    c.expect("RCPT TO:<alice@localhost>", 250);
}

#[test]
fn mail_with_size_over_the_limit_is_552_and_state_unchanged() {
    let server = common::start(&["--max-size", "1000"]);
    let mut c = server.greeted();
    assert_reply(&c.cmd("MAIL FROM:<a@b.example> SIZE=1001"), 552, "5.3.4");
    c.expect("MAIL FROM:<a@b.example> SIZE=1000", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
}

#[test]
fn commands_are_case_insensitive() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.expect("ehlo client.example", 250);
    c.expect("mail from:<mary@client.example>", 250);
    c.expect("rcpt to:<alice@localhost>", 250);
    c.expect("RcPt To:<bob@localhost>", 250);
    c.expect("data", 354);
    c.send(b"Subject: lower\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    c.expect("noop", 250);
    c.expect("quit", 221);
    assert_eq!(server.message_count("alice"), 1);
}

// ---------------------------------------------------------------------------------------------
// Limits, timeouts, error limit

#[test]
fn command_line_of_512_octets_is_accepted_513_is_too_long() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    let exact = format!("NOOP {}\r\n", "x".repeat(505));
    assert_eq!(exact.len(), 512);
    c.send(exact.as_bytes());
    assert_eq!(c.reply().code, 250, "512 octets including CRLF");
    let over = format!("NOOP {}\r\n", "x".repeat(506));
    assert_eq!(over.len(), 513);
    c.send(over.as_bytes());
    assert_reply(&c.reply(), 500, "5.5.6");
    assert_eq!(c.cmd("NOOP").code, 250, "still in sync");
}

/// Security catalogue 4.17 (inside TLS: `security.rs`, `case_4_17_and_4_19_inside_tls`).
#[test]
fn idle_timeout_after_greeting_gives_421_and_close() {
    let server = common::start(&["--timeout", "1"]);
    let mut c = server.connect();
    // Send nothing: the read below waits (up to the client's timeout) for the server's 421.
    let reply = c.reply();
    assert_reply(&reply, 421, "4.4.2");
    assert!(c.is_closed());
}

/// Security catalogue 4.19.
#[test]
fn idle_timeout_in_the_middle_of_data_stores_nothing() {
    let server = common::start(&["--timeout", "1"]);
    let mut c = server.connect();
    c.open_data("mary@client.example", &["alice@localhost"]);
    c.send(b"Subject: half\r\n\r\nfirst line\r\n");
    let reply = c.reply();
    assert_reply(&reply, 421, "4.4.2");
    assert!(c.is_closed());
    server.wait_idle();
    no_mail_anywhere(&server);
}

#[test]
fn twenty_errors_end_the_session_with_421() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    // The 421 comes right behind the 20th 500, so the 21st to 25th commands are never sent:
    // writing them to a closed socket would make the kernel reset the connection.
    for i in 1..=20 {
        let reply = c.cmd(&format!("BOGUS{i}"));
        assert_reply(&reply, 500, "5.5.2");
    }
    let closing = c.reply();
    assert_eq!(closing.code, 421, "{closing:?}");
    assert!(c.is_closed());
}

#[test]
fn max_errors_option_sets_the_limit() {
    let server = common::start(&["--max-errors", "3"]);
    let mut c = server.greeted();
    assert_eq!(c.cmd("BOGUS1").code, 500);
    assert_eq!(c.cmd("BOGUS2").code, 500);
    assert_eq!(c.cmd("BOGUS3").code, 500);
    assert_eq!(c.reply().code, 421);
    assert!(c.is_closed());
}

// ---------------------------------------------------------------------------------------------
// Transactions

#[test]
fn ehlo_and_helo_start_a_fresh_transaction_and_rset_clears() {
    let server = common::start(&[]);
    let mut c = in_transaction(&server);
    c.expect("EHLO client.example", 250);
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");

    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("HELO client.example", 250);
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");

    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("RSET", 250);
    assert_reply(&c.cmd("DATA"), 503, "5.5.1");
    assert_reply(&c.cmd("RCPT TO:<alice@localhost>"), 503, "5.5.1");
    no_mail_anywhere(&server);
}

#[test]
fn pipelined_group_gets_its_replies_in_order() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    c.send(
        b"MAIL FROM:<mary@client.example>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n",
    );
    let codes: Vec<u16> = (0..4).map(|_| c.reply().code).collect();
    assert_eq!(codes, vec![250, 250, 250, 354]);
    c.send(b"Subject: pipelined\r\n\r\nhello\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(server.message_count("alice"), 1);
    assert_eq!(server.message_count("bob"), 1);
}

// ---------------------------------------------------------------------------------------------
// Dot-stuffing and mbox

const TRICKY_WIRE: &[u8] = b"Subject: dots\r\n\r\n..\r\n...x\r\nFrom me\r\n>From x\r\nend\r\n.\r\n";
const TRICKY_BODY: &[u8] = b"Subject: dots\n\n.\n..x\nFrom me\n>From x\nend\n";

#[test]
fn dot_stuffing_and_from_lines_round_trip_byte_exact() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.open_data("mary@client.example", &["alice@localhost"]);
    c.send(TRICKY_WIRE);
    assert_eq!(c.reply().code, 250);
    let messages = smtplab::store::mbox::parse_mboxrd(&server.mbox("alice"));
    assert_eq!(messages.len(), 1, "{}", server.mbox_text("alice"));
    let content = &messages[0].content;
    assert!(
        content.ends_with(TRICKY_BODY),
        "content:\n{}",
        String::from_utf8_lossy(content)
    );
    assert!(
        content.starts_with(b"Return-Path: ") || content.starts_with(b"Received: "),
        "trace headers come first: {}",
        String::from_utf8_lossy(content)
    );
    let mbox = server.mbox_text("alice");
    assert!(mbox.contains("\n>From me\n"), "{mbox}");
    assert!(mbox.contains("\n>>From x\n"), "{mbox}");
}

#[test]
fn python_mailbox_reads_one_message_with_quoted_from() {
    if !common::have_tool("python3") {
        return;
    }
    let server = common::start(&[]);
    let mut c = server.connect();
    c.open_data("mary@client.example", &["alice@localhost"]);
    c.send(TRICKY_WIRE);
    assert_eq!(c.reply().code, 250);
    let path = server.mail_dir().join("alice");
    let script = "import mailbox, sys\n\
                  box = mailbox.mbox(sys.argv[1], create=False)\n\
                  msgs = list(box)\n\
                  print(len(msgs))\n\
                  print(msgs[0].get_payload())\n";
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("run python3");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("1"), "exactly one message: {stdout}");
    assert!(
        stdout.lines().any(|l| l == ">From me"),
        "Python shows the quoted line: {stdout}"
    );
}

#[test]
fn fifty_clients_at_once_deliver_fifty_intact_messages() {
    // All fifty come from 127.0.0.1: raise the share of one address above them.
    let server = common::start(&["--max-connections-per-ip", "50"]);
    let addr = server.addr();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let body = format!(
                    "Subject: client {i}\r\n\r\nMARKER-{i:03}-begin\r\n{}\r\nMARKER-{i:03}-end\r\n",
                    "filler ".repeat(40)
                );
                let reply = c.send_mail("mary@client.example", &["alice@localhost"], &body);
                assert_eq!(reply.code, 250, "client {i}: {reply:?}");
                c.expect("QUIT", 221);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let messages = smtplab::store::mbox::parse_mboxrd(&server.mbox("alice"));
    assert_eq!(messages.len(), 50);
    let filler = "filler ".repeat(40);
    for i in 0..50 {
        let body = format!("\nMARKER-{i:03}-begin\n{filler}\nMARKER-{i:03}-end\n");
        let holders: Vec<_> = messages
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.content).contains(&format!("MARKER-{i:03}-")))
            .collect();
        assert_eq!(holders.len(), 1, "marker {i} in exactly one message");
        assert!(
            holders[0].content.ends_with(body.as_bytes()),
            "message {i} intact"
        );
    }
}

#[test]
fn client_dropping_in_the_middle_of_data_changes_no_mbox() {
    let server = common::start(&[]);
    let mut first = server.connect();
    assert_eq!(
        first
            .send_mail(
                "mary@client.example",
                &["alice@localhost", "bob@localhost"],
                "Subject: before\r\n\r\nkeep me\r\n"
            )
            .code,
        250
    );
    first.expect("QUIT", 221);
    let alice_before = server.mbox("alice");
    let bob_before = server.mbox("bob");
    let mut c = server.connect();
    c.open_data("mary@client.example", &["alice@localhost", "bob@localhost"]);
    c.send(b"Subject: dropped\r\n\r\nline 1\r\nline 2\r\nline 3\r\n");
    drop(c);
    server.wait_idle();
    assert_eq!(server.mbox("alice"), alice_before);
    assert_eq!(server.mbox("bob"), bob_before);
}

#[test]
fn delivery_failure_gives_451_and_leaves_alice_unchanged() {
    let server = common::start(&[]);
    let mut first = server.connect();
    assert_eq!(
        first
            .send_mail(
                "mary@client.example",
                &["alice@localhost"],
                "Subject: earlier\r\n\r\nearlier\r\n"
            )
            .code,
        250
    );
    first.expect("QUIT", 221);
    let alice_before = server.mbox("alice");
    std::fs::create_dir(server.mail_dir().join("bob")).expect("make mail/bob a directory");
    let mut c = server.connect();
    let reply = c.send_mail(
        "mary@client.example",
        &["alice@localhost", "bob@localhost"],
        "Subject: fails\r\n\r\nnot stored\r\n",
    );
    assert_eq!(reply.code, 451, "{reply:?}");
    assert_eq!(server.mbox("alice"), alice_before, "alice unchanged");
    c.expect("NOOP", 250);
}

#[test]
fn oversized_message_gets_552_after_the_dot_and_nothing_is_stored() {
    let server = common::start(&["--max-size", "1000"]);
    let mut c = server.connect();
    c.open_data("mary@client.example", &["alice@localhost"]);
    let line = format!("{}\r\n", "y".repeat(98));
    c.send(b"Subject: big\r\n\r\n");
    for _ in 0..50 {
        c.send(line.as_bytes());
    }
    c.send(b".\r\n");
    assert_reply(&c.reply(), 552, "5.3.4");
    c.expect("NOOP", 250);
    no_mail_anywhere(&server);
}

#[test]
fn a_mebibyte_without_newline_is_500_and_the_session_stays_usable() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    let garbage = vec![b'g'; 1024 * 1024];
    c.send(&garbage);
    c.send(b"\r\n");
    assert_reply(&c.reply(), 500, "5.5.6");
    c.expect("NOOP", 250);
}

#[test]
fn nul_and_eight_bit_bytes_in_commands_get_500() {
    let server = common::start(&[]);
    let mut c = server.greeted();
    c.send(b"NO\0OP\r\n");
    assert_eq!(c.reply().code, 500, "NUL inside a verb");
    c.send(b"NO\xe9OP\r\n");
    assert_eq!(c.reply().code, 500, "8-bit byte inside a verb");
    c.expect("NOOP", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
}

/// Security catalogue 5.01: the cap, and the count recovering.
#[test]
fn max_connections_turns_the_third_client_away() {
    let server = common::start(&["--max-connections", "2"]);
    let mut one = server.connect();
    let mut two = server.connect();
    assert_eq!((one.greeting.code, two.greeting.code), (220, 220));
    let mut three = server.connect();
    assert_reply(&three.greeting, 421, "4.3.2");
    assert!(three.is_closed());
    one.expect("QUIT", 221);
    assert!(one.is_closed());
    common::wait_until("a session to end", || server.handle.active_sessions() < 2);
    let four = server.connect();
    assert_eq!(four.greeting.code, 220);
    two.expect("NOOP", 250);
}

#[test]
fn netcat_bare_lf_session_delivers() {
    let server = common::start(&[]);
    let mut c = server.connect();
    for (line, code) in [
        ("HELO nc\n", 250),
        ("MAIL FROM:<s@client.example>\n", 250),
        ("RCPT TO:<alice@localhost>\n", 250),
        ("DATA\n", 354),
    ] {
        c.send(line.as_bytes());
        assert_eq!(c.reply().code, code, "{line:?}");
    }
    c.send(b"Subject: hi\n\nhello\n.\n");
    assert_eq!(c.reply().code, 250);
    let mbox = server.mbox_text("alice");
    assert!(mbox.contains("Subject: hi\n\nhello\n"), "{mbox}");
    assert!(!mbox.contains('\r'));
    assert_eq!(server.message_count("alice"), 1);
}

#[test]
fn trace_headers_say_esmtp_or_smtp() {
    let server = common::start(&[]);
    let mut c = server.connect();
    assert_eq!(
        c.send_mail(
            "mary@client.example",
            &["alice@localhost"],
            "Subject: e\r\n\r\ne\r\n"
        )
        .code,
        250
    );
    c.expect("HELO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: h\r\n\r\nh\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    let messages = smtplab::store::mbox::parse_mboxrd(&server.mbox("alice"));
    assert_eq!(messages.len(), 2);
    for (message, with) in messages.iter().zip(["with ESMTP", "with SMTP"]) {
        let text = String::from_utf8_lossy(&message.content);
        assert!(
            text.starts_with("Return-Path: <mary@client.example>\n"),
            "{text}"
        );
        assert!(text.contains("Received: from client.example"), "{text}");
        assert!(text.contains(&format!(" {with} id ")), "{with}: {text}");
        assert!(text.contains("for <alice@localhost>"), "{text}");
    }
}

#[test]
fn vrfy_expn_noop_rset_help_before_helo_are_not_503() {
    let server = common::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.cmd("VRFY alice").code, 250);
    assert_eq!(c.cmd("EXPN students").code, 250);
    assert_eq!(c.cmd("NOOP").code, 250);
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(c.cmd("HELP").code, 214);
    // Still not greeted: MAIL needs HELO first.
    assert_eq!(c.cmd("MAIL FROM:<mary@client.example>").code, 503);
}

#[test]
fn postmaster_is_always_accepted_and_reaches_alice() {
    let server = common::start(&[]);
    let mut c = server.connect();
    let reply = c.send_mail(
        "mary@client.example",
        &["postmaster", "POSTMASTER@localhost"],
        "Subject: to postmaster\r\n\r\nhello postmaster\r\n",
    );
    assert_eq!(reply.code, 250);
    let mbox = server.mbox_text("alice");
    assert!(mbox.contains("hello postmaster"), "{mbox}");
    assert!(server.message_count("alice") >= 1);
}

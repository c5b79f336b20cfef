//! The seed article's example session, typed as a student would, over a real socket.

mod common;

#[test]
fn seed_session_delivers_to_the_known_user_only() {
    let server = common::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.greeting.code, 220);
    assert!(
        c.greeting.text().contains("smtplab.test"),
        "{:?}",
        c.greeting
    );
    assert!(
        c.greeting.text().contains("HELP"),
        "the greeting hints at HELP"
    );
    assert_eq!(c.cmd("HELO client.example").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<mary@client.example>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").code, 250);
    let unknown = c.cmd("RCPT TO:<nosuchuser@localhost>");
    assert_eq!((unknown.code, unknown.status().as_str()), (550, "5.1.1"));
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"From: mary@client.example\r\nTo: alice@localhost\r\nSubject: Hello\r\n\r\nHi Alice!\r\n.\r\n");
    let accepted = c.reply();
    assert_eq!((accepted.code, accepted.status().as_str()), (250, "2.0.0"));
    assert_eq!(c.cmd("QUIT").code, 221);
    assert!(c.is_closed());

    let mbox = server.mbox_text("alice");
    assert!(mbox.starts_with("From mary@client.example "), "{mbox}");
    assert!(mbox.contains("Return-Path: <mary@client.example>\n"));
    assert!(mbox.contains(
        "Received: from client.example ([127.0.0.1])\n\tby smtplab.test (smtplab) with SMTP id "
    ));
    assert!(mbox.contains("\n\tfor <alice@localhost>; "));
    assert!(mbox.contains("Subject: Hello\n\nHi Alice!\n\n"));
    assert_eq!(server.message_count("alice"), 1);
    let others: Vec<_> = std::fs::read_dir(server.mail_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // `.alice.intent` is alice's intent record (see `src/store/intent.rs::Intent`).
        .filter(|name| name != "alice" && name != ".alice.intent")
        .collect();
    assert!(others.is_empty(), "mail landed elsewhere: {others:?}");
}

//! Delivery status notifications (RFC 3461) end to end: smtplab (one.test) relays through a
//! real UDP DNS server to a scripted next hop that does or does not list DSN, and the reports
//! land in alice's mbox on one.test.

mod common;
mod dns_server;

use std::net::{Ipv4Addr, TcpListener};

use common::{wait_until, HopScript, ScriptedHop, TestServer};
use dns_server::{DnsServer, Zone};
use smtplab::relay::queue::Spool;
use smtplab::smtp::extensions::{Notify, Ret};
use smtplab::store::mbox::parse_mboxrd;

/// The scripted next hop listens here (the MX of every test domain).
const HOP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// A DNS server where `domain` has its MX on `HOP`.
fn dns_for(domain: &str) -> DnsServer {
    let mx = format!("mx.{domain}");
    DnsServer::start(Zone::new().mx(domain, 10, &mx).a(&mx, HOP))
}

/// smtplab as one.test, relaying for loopback clients to the next hop on `mx_port`.
fn start_one(dns: &DnsServer, mx_port: u16, retry: &str) -> TestServer {
    common::start_one_test(dns.addr(), mx_port, retry, &[])
}

fn spool_of(server: &TestServer) -> Spool {
    Spool::new(server.dir.path().join("spool"))
}

/// alice@one.test sends one message: `mail` is the MAIL FROM line, `rcpts` the RCPT TO lines.
fn send(one: &TestServer, mail: &str, rcpts: &[&str]) {
    let mut client = one.connect();
    client.expect("EHLO client.example", 250);
    client.expect(mail, 250);
    for rcpt in rcpts {
        client.expect(rcpt, 250);
    }
    client.expect("DATA", 354);
    client.send(b"From: alice@one.test\r\nSubject: report me\r\n\r\nthe body line\r\n.\r\n");
    assert_eq!(client.reply().code, 250);
    client.cmd("QUIT");
}

/// Wait until the relay is done with everything (reports are written before the file goes).
fn wait_for_empty_queue(one: &TestServer) {
    let spool = spool_of(one);
    wait_until("the queue to empty", || spool.load_all().is_empty());
}

#[test]
fn the_queue_file_keeps_the_dsn_parameters() {
    // Nothing listens on this port: the message stays queued (retry in an hour).
    let port = TcpListener::bind((HOP, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns = dns_for("two.test");
    let one = start_one(&dns, port, "1h");
    send(
        &one,
        "MAIL FROM:<alice@one.test> RET=FULL ENVID=QQ+2B314159",
        &[
            "RCPT TO:<bob@two.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+40two.test",
            "RCPT TO:<carol@two.test>",
        ],
    );
    let spool = spool_of(&one);
    wait_until("the message in the queue", || spool.load_all().len() == 1);
    let entry = spool.load_all().remove(0).expect("a readable queue file");
    assert_eq!(entry.ret, Some(Ret::Full));
    assert_eq!(entry.envid.as_deref(), Some("QQ+2B314159"), "kept as xtext");
    let bob = &entry.recipients[0];
    assert_eq!(
        bob.notify,
        Some(Notify {
            success: true,
            failure: false,
            delay: true
        })
    );
    assert_eq!(bob.orcpt.as_deref(), Some("rfc822;Bob+40two.test"));
    let carol = &entry.recipients[1];
    assert_eq!((carol.notify, carol.orcpt.as_deref()), (None, None));
}

#[test]
fn a_next_hop_with_dsn_gets_the_parameters_and_reports_itself() {
    let hop = ScriptedHop::start(
        "127.0.0.4:0",
        HopScript {
            dsn: true,
            rcpt_reply: "250 2.1.5 OK",
        },
    );
    let dns = dns_for("two.test");
    let one = start_one(&dns, hop.addr.port(), "1s");
    send(
        &one,
        "MAIL FROM:<alice@one.test> RET=HDRS ENVID=QQ+2B314159",
        &[
            "RCPT TO:<bob@two.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40two.test",
            "RCPT TO:<carol@two.test>",
        ],
    );
    wait_until("the next hop to get it", || hop.messages().len() == 1);
    wait_for_empty_queue(&one);
    let commands = hop.sessions()[0].commands.clone();
    for expected in [
        "MAIL FROM:<alice@one.test> RET=HDRS ENVID=QQ+2B314159",
        "RCPT TO:<bob@two.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40two.test",
        "RCPT TO:<carol@two.test>",
    ] {
        assert!(
            commands.iter().any(|c| c == expected),
            "{expected} in {commands:?}"
        );
    }
    assert_eq!(
        one.message_count("alice"),
        0,
        "the next hop reports from now on: no 'relayed' notice here (RFC 3461 §5.2.1)"
    );
}

#[test]
fn notify_success_to_a_hop_without_dsn_gives_a_relayed_report() {
    let hop = ScriptedHop::start(
        "127.0.0.4:0",
        HopScript {
            dsn: false,
            rcpt_reply: "250 2.1.5 OK",
        },
    );
    let dns = dns_for("two.test");
    let one = start_one(&dns, hop.addr.port(), "1s");
    send(
        &one,
        "MAIL FROM:<alice@one.test> RET=FULL ENVID=QQ+2B314159",
        &[
            "RCPT TO:<bob@two.test> NOTIFY=SUCCESS ORCPT=rfc822;Bob+40two.test",
            "RCPT TO:<carol@two.test>",
        ],
    );
    wait_until("the next hop to get it", || hop.messages().len() == 1);
    wait_for_empty_queue(&one);
    let commands = hop.sessions()[0].commands.clone();
    assert!(
        commands.contains(&"MAIL FROM:<alice@one.test>".to_string()),
        "no DSN parameters to a host without DSN (RFC 3461 §5.2.2 (a)): {commands:?}"
    );
    assert!(commands.contains(&"RCPT TO:<bob@two.test>".to_string()));

    let reports = parse_mboxrd(&one.mbox("alice"));
    assert_eq!(reports.len(), 1, "one report, for bob only");
    let report = &reports[0];
    assert_eq!(report.sender, "MAILER-DAEMON", "sent from <>");
    let text = String::from_utf8_lossy(&report.content);
    assert!(
        text.contains("Subject: Successful Mail Delivery Report\n"),
        "{text}"
    );
    assert!(
        text.contains("Original-Envelope-Id: QQ+314159\nReporting-MTA: dns; mx.one.test\n"),
        "ENVID decoded: {text}"
    );
    assert!(
        text.contains(
            "Original-Recipient: rfc822; Bob@two.test\n\
             Final-Recipient: rfc822; bob@two.test\n\
             Action: relayed\n\
             Status: 2.0.0\n\
             Remote-MTA: dns; mx.two.test\n"
        ),
        "{text}"
    );
    assert!(
        !text.contains("carol@two.test"),
        "carol did not ask: {text}"
    );
    assert!(
        text.contains("Content-Type: text/rfc822-headers\n"),
        "{text}"
    );
    assert!(
        !text.contains("the body line"),
        "a report without failures returns only the headers, even with RET=FULL"
    );
}

#[test]
fn failures_are_reported_as_notify_asks_with_ret_full() {
    let hop = ScriptedHop::start(
        "127.0.0.4:0",
        HopScript {
            dsn: false,
            rcpt_reply: "550 5.1.1 no such user",
        },
    );
    let dns = dns_for("two.test");
    let one = start_one(&dns, hop.addr.port(), "1s");
    send(
        &one,
        "MAIL FROM:<alice@one.test> RET=FULL",
        &[
            "RCPT TO:<never@two.test> NOTIFY=NEVER",
            "RCPT TO:<onlysuccess@two.test> NOTIFY=SUCCESS",
            "RCPT TO:<failure@two.test> NOTIFY=FAILURE ORCPT=rfc822;failure@two.test",
            "RCPT TO:<default@two.test>",
        ],
    );
    wait_until("the next hop's refusal", || !hop.sessions().is_empty());
    wait_for_empty_queue(&one);
    let reports = parse_mboxrd(&one.mbox("alice"));
    assert_eq!(reports.len(), 1, "one bounce");
    let text = String::from_utf8_lossy(&reports[0].content);
    assert!(text.contains("Subject: Undelivered Mail Returned to Sender\n"));
    for reported in ["failure@two.test", "default@two.test"] {
        assert!(
            text.contains(&format!(
                "Final-Recipient: rfc822; {reported}\nAction: failed\nStatus: 5.1.1\n"
            )),
            "{reported}: {text}"
        );
    }
    assert!(text.contains("Original-Recipient: rfc822; failure@two.test\n"));
    for silent in ["never@two.test", "onlysuccess@two.test"] {
        assert!(!text.contains(silent), "{silent} is not reported: {text}");
    }
    assert!(
        !text.contains("Original-Envelope-Id"),
        "no ENVID given, none returned"
    );
    assert!(
        text.contains("Content-Type: message/rfc822\n"),
        "RET=FULL: {text}"
    );
    assert!(
        text.contains("\nthe body line\n"),
        "the whole message comes back: {text}"
    );
}

#[test]
fn notify_never_for_everyone_means_no_bounce_at_all() {
    let hop = ScriptedHop::start(
        "127.0.0.4:0",
        HopScript {
            dsn: false,
            rcpt_reply: "550 5.1.1 no such user",
        },
    );
    let dns = dns_for("two.test");
    let one = start_one(&dns, hop.addr.port(), "1s");
    send(
        &one,
        "MAIL FROM:<alice@one.test>",
        &["RCPT TO:<bob@two.test> NOTIFY=NEVER"],
    );
    wait_until("the next hop's refusal", || !hop.sessions().is_empty());
    wait_for_empty_queue(&one);
    assert_eq!(one.message_count("alice"), 0, "NOTIFY=NEVER: no report");
}

//! SIGKILL with mail in the outbound queue: the real binary accepts three messages for another
//! domain while the next hop is down, is killed, and is started again on the same spool once
//! the next hop is up. Every message must arrive exactly once, and the queue must end empty
//! (RFC 5321 §6.1: a 250 is a promise that survives a crash).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::{
    free_addr, spool_files, start_binary, wait_until, HopScript, Killed, ScriptedHop, TempDir,
};

/// smtplab for one.test, sending all foreign mail to `next_hop`, its queue in `spool`.
fn start(listen: SocketAddr, next_hop: SocketAddr, spool: &Path, mail: &Path) -> Killed {
    let options = format!(
        "--hostname mx.one.test --domain one.test --relay-from 127.0.0.0/8 --smart-host {next_hop} \
         --retry 1s --spool {} --mail-dir {}",
        spool.display(),
        mail.display()
    );
    start_binary(
        listen,
        &options
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>(),
    )
}

/// What `smtplab queue --spool DIR` prints.
fn queue_listing(spool: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .arg("queue")
        .arg("--spool")
        .arg(spool)
        .output()
        .expect("run smtplab queue");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn queued_mail_survives_sigkill_and_is_relayed_exactly_once() {
    let dir = TempDir::new("queue-crash");
    let (spool, mail) = (dir.path().join("spool"), dir.path().join("mail"));
    let next_hop = free_addr(); // down for now: every attempt is refused
    let listen = free_addr();
    let first = start(listen, next_hop, &spool, &mail);

    let markers: Vec<String> = (1..=3).map(|n| format!("crash-marker-{n}")).collect();
    let mut client = common::Client::connect(listen);
    for (n, marker) in markers.iter().enumerate() {
        let to = format!("user{n}@two.test");
        let content = format!("Subject: {marker}\r\n\r\n{marker}\r\n");
        let reply = client.send_mail("alice@one.test", &[&to], &content);
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    client.cmd("QUIT");
    assert!(
        queue_listing(&spool).contains("3 message(s) waiting."),
        "{}",
        queue_listing(&spool)
    );

    drop(first); // SIGKILL: no chance to flush, close or clean up anything
    let hop = ScriptedHop::start(
        &next_hop.to_string(),
        HopScript {
            dsn: false,
            rcpt_reply: "250 2.1.5 OK",
        },
    );
    let second = start(listen, next_hop, &spool, &mail);
    wait_until("the next hop to get all three", || {
        hop.messages().len() >= 3
    });
    wait_until("the queue to empty", || {
        queue_listing(&spool) == "The queue is empty.\n"
    });
    // The listing reads state files, and a finished entry loses its state file first and its
    // content a moment later (a kill in between leaves content the next start removes): wait
    // for the content too before killing, or the check below races the relay.
    wait_until("the content files to go", || spool_files(&spool).is_empty());
    drop(second);

    let received: Vec<String> = hop
        .messages()
        .iter()
        .map(|data| String::from_utf8_lossy(data).into_owned())
        .collect();
    assert_eq!(received.len(), 3, "no message twice");
    for marker in &markers {
        let copies = received
            .iter()
            .filter(|m| m.contains(&format!("\r\n{marker}\r\n")))
            .count();
        assert_eq!(copies, 1, "{marker} arrived {copies} times");
    }
    let left = spool_files(&spool);
    assert!(left.is_empty(), "files left in the spool: {left:?}");
}

//! Cross-check: an mbox written by `smtplab::store::mbox` is read by another implementation,
//! Python's `mailbox.mbox`. Skipped (with a message) where `python3` is not installed.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use smtplab::store::mbox::{Delivery, MailDir};

/// Prints the number of messages, then each message's body, separated by `=====` lines.
const READ_WITH_PYTHON: &str = r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1], create=False)
messages = list(box)
print(len(messages))
for message in messages:
    print("=====")
    print(message.get_payload(), end="")
"#;

#[test]
fn python_mailbox_reads_what_we_write() {
    if !common::have_tool("python3") {
        return;
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("smtplab-tests-mbox-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp dir");
    let maildir = MailDir::new(&dir);
    let alice = Delivery {
        user: "alice".to_string(),
        trace_headers: "Return-Path: <mary@relay.example>\n".to_string(),
    };
    let bodies: [&[u8]; 3] = [
        b"Subject: one\n\nFrom me, with love\n>From x\n",
        b"Subject: two\n\nno final newline",
        b"Subject: three\n\n\nFrom the start of a paragraph\n",
    ];
    for body in bodies {
        maildir
            .deliver("mary@relay.example", std::slice::from_ref(&alice), body)
            .expect("deliver");
    }

    let output = Command::new("python3")
        .arg("-c")
        .arg(READ_WITH_PYTHON)
        .arg(dir.join("alice"))
        .output()
        .expect("run python3");
    fs::remove_dir_all(&dir).expect("remove temp dir");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert_eq!(
        stdout.lines().next(),
        Some("3"),
        "message count in {stdout:?}"
    );
    // Python's reader does not undo mboxrd quoting, so the quoted forms come back.
    assert!(
        stdout.contains("\n>From me, with love\n>>From x\n"),
        "{stdout:?}"
    );
    assert!(
        stdout.contains("\n>From the start of a paragraph\n"),
        "{stdout:?}"
    );
    assert!(stdout.contains("no final newline\n"), "{stdout:?}");
}

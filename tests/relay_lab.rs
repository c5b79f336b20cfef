//! `lessons/relay-lab.sh` runs as a student runs it: from a directory outside the checkout, with
//! only the smtplab binary (on PATH), and exits 0 with every process it started stopped. A
//! failing step names its cause and shows the log line.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_tool, TempDir};

/// The whole lab takes a few seconds; a hang is cut off here.
const LAB_LIMIT: Duration = Duration::from_secs(90);

/// A directory holding only a copy of the script and, in `bin/`, the binary under `name`.
fn outside_the_checkout(tag: &str, binary: &[u8]) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new(tag);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/lessons/relay-lab.sh");
    std::fs::copy(script, dir.path().join("relay-lab.sh")).expect("copy the script");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    std::fs::write(bin.join("smtplab"), binary).expect("write the binary");
    std::fs::set_permissions(bin.join("smtplab"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::create_dir(dir.path().join("tmp")).expect("tmp dir");
    dir
}

fn run_lab(dir: &Path) -> common::ToolRun {
    let path = format!("{}:/usr/bin:/bin", dir.join("bin").display());
    run_tool(
        Command::new("bash")
            .arg("relay-lab.sh")
            .current_dir(dir)
            .env_clear()
            .env("PATH", path)
            .env("TMPDIR", dir.join("tmp")),
        b"",
        LAB_LIMIT,
    )
}

/// The address after `label` in a line such as `one.test: 127.0.0.2:41234`.
fn address_after(output: &str, label: &str) -> SocketAddr {
    output
        .split_whitespace()
        .skip_while(|w| *w != label)
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {label} address in:\n{output}"))
}

#[test]
fn the_relay_lab_runs_outside_the_checkout_with_only_the_binary() {
    if !common::have_tool("bash") {
        return;
    }
    let binary = std::fs::read(env!("CARGO_BIN_EXE_smtplab")).expect("read the binary");
    let dir = outside_the_checkout("relay-lab", &binary);
    let run = run_lab(dir.path());
    assert!(
        run.success,
        "the lab failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    let out = &run.stdout;
    // What the lab shows from the protocols themselves: the nameserver's answers, the replies,
    // bob's mbox, the queue listing and the delivery reports (not the wording of the log).
    for expected in [
        "udp MX two.test. -> NOERROR: 10 mx.two.test.",
        "S: 250 2.0.0 OK: message",
        "Subject: relay lab",
        "The queue is empty.",
        "Final-Recipient: rfc822; carol@nosuch.test",
        "Final-Recipient: rfc822; bob@down.test",
        "relay-lab: every step passed",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    let queue_line = |rcpt: &str, code: &str| {
        out.lines()
            .any(|l| l.contains(&format!("<{rcpt}>")) && l.contains(code))
    };
    assert!(
        queue_line("bob@down.test", "451"),
        "no waiting bob@down.test:\n{out}"
    );
    assert!(
        queue_line("carol@nosuch.test", "550 5.1.2"),
        "no failed carol:\n{out}"
    );
    assert!(
        !out.contains(":5353"),
        "the lab must keep off the mDNS port"
    );
    // Every process the script started is gone: its listeners refuse connections.
    for label in ["one.test:", "two.test:", "DNS:"] {
        let addr = address_after(out, label);
        common::wait_until(&format!("{addr} to close"), || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
        });
    }
}

#[test]
fn a_failing_step_names_its_cause_and_shows_the_log() {
    if !common::have_tool("bash") {
        return;
    }
    // A "binary" whose nameserver cannot start, the way a bad zone file or a taken port fails.
    let fake = b"#!/bin/sh\necho 'smtplab dns: cannot bind UDP 127.0.0.1:0: in use.' >&2\nexit 2\n";
    let dir = outside_the_checkout("relay-lab-fail", fake);
    let run = run_lab(dir.path());
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("relay-lab: FAILED: the nameserver did not start"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("cannot bind UDP"), "{}", run.stderr);
}

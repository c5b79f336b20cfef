//! `lessons/LAB.md` runs as written: its `smtplab --lab` block starts the real binary, every
//! other ```sh block runs in bash (exit 0 unless `<!-- expect-exit: N -->` says otherwise), and
//! every session typed in telnet (`<!-- session: [starttls] PORT -->`) is played line by line:
//! the lines a student types are sent, and each reply must read as the sheet shows it. The
//! lab's fixed ports are moved to free ones, the same way in the commands and the sessions.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_tool, LabServer, TempDir};

const SHEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lessons/LAB.md");
const SESSION_MARK: &str = "<!-- session:";
const EXIT_MARK: &str = "<!-- expect-exit:";
/// The host name the sheet's replies show.
const SHEET_HOST: &str = "yourhost";
/// The ports of `--lab` and the banner's name for each.
const LAB_PORTS: [(u16, &str); 5] = [
    (2525, "SMTP"),
    (2587, "submission"),
    (2465, "SMTPS"),
    (2110, "POP3"),
    (2995, "POP3S"),
];
/// One command block may take this long (the relay lab takes a few seconds).
const BLOCK_LIMIT: Duration = Duration::from_secs(60);

/// One fenced block of the sheet, with the line its body starts on.
#[derive(Debug)]
enum Block {
    Commands {
        line: usize,
        text: String,
        exit: i32,
    },
    Session {
        line: usize,
        port: u16,
        starttls: bool,
        lines: Vec<String>,
    },
}

/// The markers on the lines just before a fence (up to two).
fn markers<'a>(lines: &[&'a str], fence: usize) -> Vec<&'a str> {
    lines[fence.saturating_sub(2)..fence]
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("<!--"))
        .collect()
}

fn marker_value<'a>(markers: &[&'a str], mark: &str) -> Option<&'a str> {
    markers
        .iter()
        .find_map(|m| m.strip_prefix(mark)?.strip_suffix("-->"))
        .map(str::trim)
}

fn parse_sheet(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let close = lines[i + 1..]
            .iter()
            .position(|l| l.trim() == "```")
            .map(|n| i + 1 + n)
            .unwrap_or_else(|| panic!("LAB.md:{}: the block is never closed", i + 1));
        let body: Vec<String> = lines[i + 1..close].iter().map(|l| l.to_string()).collect();
        let found = markers(&lines, i);
        let line = i + 2;
        match (lang, marker_value(&found, SESSION_MARK)) {
            ("sh", None) => blocks.push(Block::Commands {
                line,
                text: body.join("\n"),
                exit: marker_value(&found, EXIT_MARK).map_or(0, |n| n.parse().expect("exit")),
            }),
            ("text", Some(session)) => {
                let words: Vec<&str> = session.split_whitespace().collect();
                blocks.push(Block::Session {
                    line,
                    port: words.last().and_then(|p| p.parse().ok()).expect("a port"),
                    starttls: words.contains(&"starttls"),
                    lines: body,
                });
            }
            _ => panic!(
                "LAB.md:{line}: every block is a ```sh block to run or a ```text session under \
                 `{SESSION_MARK} PORT -->`; this one is neither, so no test would check it"
            ),
        }
        i = close + 1;
    }
    blocks
}

/// The sheet's ports, moved to the ones the lab really listens on.
fn moved(text: &str, ports: &BTreeMap<u16, u16>) -> String {
    let mut text = text.to_string();
    for (from, to) in ports {
        for sep in [":", " "] {
            text = text.replace(&format!("{sep}{from}"), &format!("{sep}{to}"));
        }
    }
    text
}

/// Message ids (`S1.1`, or with a unique tail, `S1-1-t6ybq80b3kb`) depend on how many sessions
/// came before and when: they are compared as `S#`.
fn without_ids(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == 'S' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            {
                chars.next();
            }
            out.push('#');
        }
    }
    out
}

/// `250 ...`, `354-...`: a line the server writes.
fn is_reply(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() >= 4 && bytes[..3].iter().all(u8::is_ascii_digit) && matches!(bytes[3], b' ' | b'-')
}

/// Type the session into `stream` and compare each reply; returns the differences.
fn play<S: Read + Write>(stream: S, first_line: usize, lines: &[String]) -> Vec<String> {
    let mut reader = BufReader::new(stream);
    let mut problems = Vec::new();
    let mut in_message = false;
    for (n, line) in lines.iter().enumerate() {
        let at = first_line + n;
        if !in_message && is_reply(line) {
            let mut got = String::new();
            if reader.read_line(&mut got).unwrap_or(0) == 0 {
                problems.push(format!("LAB.md:{at}: expected {line:?}, the server closed"));
                return problems;
            }
            let got = got.trim_end_matches(['\r', '\n']);
            if without_ids(got) != without_ids(line) {
                problems.push(format!(
                    "LAB.md:{at}: the sheet shows\n    {line}\n  the server said\n    {got}"
                ));
            }
            in_message = line.starts_with("354 ");
            continue;
        }
        in_message &= line != ".";
        let stream = reader.get_mut();
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .and_then(|()| stream.flush())
            .unwrap_or_else(|e| panic!("LAB.md:{at}: cannot send: {e}"));
    }
    problems
}

/// A session as `openssl s_client -starttls smtp` leaves it: EHLO and STARTTLS already done.
fn play_after_starttls(
    addr: std::net::SocketAddr,
    first_line: usize,
    lines: &[String],
) -> Vec<String> {
    let mut client = common::Client::connect(addr);
    client.expect("EHLO openssl.client", 250);
    let tls = client.starttls();
    play(tls.reader.into_inner(), first_line, lines)
}

fn run_commands(dir: &Path, line: usize, text: &str, exit: i32) -> Vec<String> {
    let path = format!("{}:/usr/bin:/bin", dir.join("bin").display());
    let run = run_tool(
        Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", text])
            .current_dir(dir)
            .env_clear()
            .env("PATH", path)
            .env("HOME", dir)
            .env("TMPDIR", dir.join("tmp")),
        b"",
        BLOCK_LIMIT,
    );
    let code = if run.success { 0 } else { 1 };
    let wanted = if exit == 0 { 0 } else { 1 };
    if code == wanted {
        return Vec::new();
    }
    vec![format!(
        "LAB.md:{line}: the block should exit {exit}:\n{text}\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    )]
}

/// A directory that looks like the top of a checkout to the sheet's commands: `lessons/` and
/// `transcripts/` of the real one, the binary in `bin/`, and a private temp dir.
fn lab_directory() -> TempDir {
    let dir = TempDir::new("lab-sheet");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["lessons", "transcripts"] {
        std::os::unix::fs::symlink(root.join(name), dir.path().join(name)).expect("symlink");
    }
    std::fs::create_dir(dir.path().join("bin")).expect("bin");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_smtplab"),
        dir.path().join("bin/smtplab"),
    )
    .expect("symlink the binary");
    std::fs::create_dir(dir.path().join("tmp")).expect("tmp");
    dir
}

#[test]
fn the_lab_sheet_runs_as_written() {
    if !common::have_tool("curl") || !common::have_tool("bash") {
        return;
    }
    let text = std::fs::read_to_string(SHEET).expect("read LAB.md");
    let blocks = parse_sheet(&text);
    let dir = lab_directory();
    let mut lab: Option<LabServer> = None;
    let mut ports = BTreeMap::new();
    let mut problems = Vec::new();
    for block in &blocks {
        match block {
            Block::Commands { text, .. } if text.trim() == "smtplab --lab" => {
                let server = LabServer::start(&dir, &["--hostname", SHEET_HOST]);
                ports = LAB_PORTS
                    .iter()
                    .map(|&(port, role)| (port, server.addr(role).port()))
                    .collect();
                lab = Some(server);
            }
            Block::Commands { line, text, exit } => {
                problems.extend(run_commands(dir.path(), *line, &moved(text, &ports), *exit));
            }
            Block::Session {
                line,
                port,
                starttls,
                lines,
            } => {
                let addr = format!("127.0.0.1:{}", ports.get(port).copied().unwrap_or(*port));
                let addr = addr.parse().expect("address");
                let lines: Vec<String> = lines.iter().map(|l| moved(l, &ports)).collect();
                problems.extend(if *starttls {
                    play_after_starttls(addr, *line, &lines)
                } else {
                    play(common::connect_with_timeouts(addr), *line, &lines)
                });
            }
        }
    }
    assert!(lab.is_some(), "LAB.md never starts `smtplab --lab`");
    assert!(
        problems.is_empty(),
        "LAB.md does not run as written:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_sheet_checker_reads_sessions_and_ids() {
    assert_eq!(
        without_ids("250 2.0.0 OK: message S12.3 delivered"),
        "250 2.0.0 OK: message S# delivered"
    );
    assert_eq!(without_ids("id S1-1-t6ybq80b3kb for"), "id S# for");
    assert_eq!(without_ids("Subject: SIZE"), "Subject: SIZE");
    assert!(is_reply("250-SIZE 1000") && is_reply("354 End") && !is_reply("Subject: x"));
    let ports = BTreeMap::from([(2525, 40001), (2110, 40004)]);
    assert_eq!(
        moved("telnet 127.0.0.1 2525; pop3://x@127.0.0.1:2110/", &ports),
        "telnet 127.0.0.1 40001; pop3://x@127.0.0.1:40004/"
    );
    let blocks = parse_sheet("<!-- session: starttls 2587 -->\n```text\nEHLO x\n```\n<!-- expect-exit: 1 -->\n```sh\nfalse\n```\n");
    assert!(matches!(
        &blocks[0],
        Block::Session {
            port: 2587,
            starttls: true,
            ..
        }
    ));
    assert!(matches!(&blocks[1], Block::Commands { exit: 1, .. }));
}

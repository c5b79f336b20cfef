//! `--web` in a real browser: headless Chromium, driven over its DevTools pipe, watches a
//! student's session move through the state machine, and a NOOP full of markup stays text.
//!
//! The browser is driven rather than run with `--dump-dom --virtual-time-budget`: virtual time
//! stops while a request is open, and the page's event stream is always open. So the test asks
//! the live page for its DOM again and again until what it waits for is there, or a deadline.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{start, Client, TempDir};

/// The longest the browser may take to show what the test waits for.
const BROWSER_DEADLINE: Duration = Duration::from_secs(30);

/// Headless Chromium on `--remote-debugging-pipe`: commands go to its fd 3, answers come from
/// its fd 4, each a JSON text ending in a NUL byte.
struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: Receiver<String>,
    next_id: u64,
    session: String,
    _profile: TempDir,
}

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| common::have_tool_with(name, &["--version"]));
    if found.is_none() {
        println!("SKIP: chromium not installed (.ci/run installs it with apt-get)");
    }
    found
}

impl Browser {
    /// Start Chromium on `url`; `None` (after a SKIP line) when it starts but never answers,
    /// as where it lacks a library it needs.
    fn open(program: &str, url: &str) -> Option<Browser> {
        let profile = TempDir::new("chromium");
        let profile_arg = format!("--user-data-dir={}", profile.path().display());
        // The shell moves the pipes to fds 3 and 4, where Chromium looks for them.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>/dev/null")
            .args([
                program,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                "--remote-debugging-pipe",
                &profile_arg,
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let commands = child.stdin.take().expect("fd 3");
        let mut output = child.stdout.take().expect("fd 4");
        let (send, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buffer = [0u8; 65536];
            while let Ok(n) = output.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buffer[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&message[..end]).into_owned();
                    if send.send(text).is_err() {
                        return;
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            answers,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let Some(created) =
            browser.try_call("Target.createTarget", &format!("{{\"url\":\"{url}\"}}"))
        else {
            println!("SKIP: {program} started but did not answer on its DevTools pipe");
            return None;
        };
        let target = string_field(&created, "targetId").expect("a target id");
        let attached = browser.call(
            "Target.attachToTarget",
            &format!("{{\"targetId\":\"{target}\",\"flatten\":true}}"),
        );
        browser.session = string_field(&attached, "sessionId").expect("a session id");
        Some(browser)
    }

    /// Send a command and wait for its answer (events in between are skipped).
    fn call(&mut self, method: &str, params: &str) -> String {
        self.try_call(method, params)
            .unwrap_or_else(|| panic!("chromium did not answer {method}"))
    }

    /// `call`, or `None` when no answer came before the deadline.
    fn try_call(&mut self, method: &str, params: &str) -> Option<String> {
        self.next_id += 1;
        let id = self.next_id;
        let session = if self.session.is_empty() {
            String::new()
        } else {
            format!(",\"sessionId\":\"{}\"", self.session)
        };
        let command =
            format!("{{\"id\":{id},\"method\":\"{method}\",\"params\":{params}{session}}}\0");
        self.commands.write_all(command.as_bytes()).ok()?;
        let deadline = Instant::now() + BROWSER_DEADLINE;
        let prefix = format!("{{\"id\":{id},");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self.answers.recv_timeout(left).ok()?;
            if answer.starts_with(&prefix) {
                assert!(!answer.contains("\"error\":"), "{method}: {answer}");
                return Some(answer);
            }
        }
    }

    /// The page's DOM as HTML, now.
    fn dom(&mut self) -> String {
        let answer = self.call(
            "Runtime.evaluate",
            r#"{"expression":"document.documentElement.outerHTML","returnByValue":true}"#,
        );
        string_field(&answer, "value").unwrap_or_default()
    }

    /// Ask for the DOM until `ready` holds; panic with `what` and the DOM at the deadline.
    fn dom_when(&mut self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + BROWSER_DEADLINE;
        loop {
            let dom = self.dom();
            if ready(&dom) {
                return dom;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}:\n{dom}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let answer = self.call("Page.captureScreenshot", r#"{"format":"png"}"#);
        let data = string_field(&answer, "data").expect("screenshot data");
        smtplab::smtp::auth::base64_decode(&data).expect("base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .commands
            .write_all(b"{\"id\":999999,\"method\":\"Browser.close\"}\0");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first string value of `"name":"..."` in a JSON text, unescaped.
fn string_field(json: &str, name: &str) -> Option<String> {
    let start = json.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let mut out = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// The start tag of the element carrying `attribute` (such as `id="smtp-Data"`).
fn tag_with<'a>(dom: &'a str, attribute: &str) -> &'a str {
    let Some(at) = dom.find(attribute) else {
        return "";
    };
    let start = dom[..at].rfind('<').unwrap_or(0);
    let end = dom[at..].find('>').map_or(dom.len(), |e| at + e + 1);
    &dom[start..end]
}

fn in_state(dom: &str, session: &str, state: &str) -> bool {
    let row = tag_with(dom, &format!("data-session=\"{session}\""));
    let node = tag_with(dom, &format!("id=\"smtp-{state}\""));
    row.contains(&format!("data-state=\"{state}\"")) && node.contains("current")
}

fn alice_count(dom: &str) -> Option<usize> {
    let row = tag_with(dom, "data-user=\"alice\"");
    let count = row.split("data-count=\"").nth(1)?;
    count.split('"').next()?.parse().ok()
}

#[test]
fn the_page_follows_a_session_through_the_state_machine() {
    let Some(program) = chromium() else {
        return;
    };
    let server = start(&["--web", "127.0.0.1:0"]);
    let web = server.handle.web_addr().expect("web listener");
    let mut client = Client::connect(server.addr());
    client.expect("EHLO student.test", 250);
    client.expect("NOOP <script>alert(1)</script>", 250);
    client.expect("MAIL FROM:<student@example.com>", 250);
    client.expect("RCPT TO:<alice@localhost>", 250);

    let Some(mut browser) = Browser::open(program, &format!("http://{web}/#S1")) else {
        return;
    };
    let dom = browser.dom_when("S1 in RcptGiven with a count for alice", |dom| {
        in_state(dom, "S1", "RcptGiven") && alice_count(dom).is_some()
    });
    assert!(
        tag_with(&dom, "data-from=\"RcptGiven\" data-to=\"Data\"").contains("class=\"move\""),
        "DATA is a legal move now: {}",
        tag_with(&dom, "data-from=\"RcptGiven\" data-to=\"Data\"")
    );
    assert!(tag_with(&dom, "data-from=\"Connected\" data-to=\"Greeted\"").contains("illegal"));
    assert!(tag_with(&dom, "data-from=\"MailGiven\" data-to=\"RcptGiven\"").contains("last"));
    assert!(
        dom.contains("NOOP &lt;script&gt;alert(1)&lt;/script&gt;"),
        "shown as text"
    );
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
    let shot = browser.screenshot();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    std::fs::write(&path, &shot).expect("save the screenshot");
    println!("screenshot of the web view: {}", path.display());

    let before = alice_count(&dom).expect("alice's row");
    client.expect("DATA", 354);
    client.send(b"Subject: hello\r\n\r\nHi Alice.\r\n.\r\n");
    assert_eq!(client.reply().code, 250);
    browser.dom_when("S1 back in Greeted and one more message for alice", |dom| {
        in_state(dom, "S1", "Greeted") && alice_count(dom) == Some(before + 1)
    });
}

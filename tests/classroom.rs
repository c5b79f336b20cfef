//! The classroom: real telnet and netcat typed by hand, coaching replies, state-aware HELP,
//! `--explain`, `--fault` rules and the `--trace` console of the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{on_path, wait_until, Client, Killed, Output, TempDir, READ_TIMEOUT};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The real `smtplab` binary with `--trace`, its stdout collected.
struct Binary {
    _child: Killed,
    stdout: Output,
    addr: SocketAddr,
    mail: TempDir,
}

impl Binary {
    fn start(options: &[&str]) -> Binary {
        let mail = TempDir::new("classroom-bin");
        let listen = common::free_addr().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtplab"))
            .args(["--listen", &listen, "--hostname", "smtplab.test"])
            .arg("--mail-dir")
            .arg(mail.path())
            .args(options)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtplab");
        let stdout = Output::collect(child.stdout.take().expect("stdout"));
        let child = Killed(child);
        stdout.wait_for("smtplab listening");
        Binary {
            _child: child,
            stdout,
            addr: listen.parse().expect("addr"),
            mail,
        }
    }

    fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The console lines of the sessions (the banner left out).
    fn trace_lines(&self) -> Vec<String> {
        self.stdout
            .text()
            .lines()
            .filter(|l| l.starts_with("[S"))
            .map(str::to_string)
            .collect()
    }
}

/// A tmux server of its own (its socket in a temp dir), killed at the end of the test.
struct Tmux {
    socket: std::path::PathBuf,
    _dir: TempDir,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        Tmux::start_sized(name, command, 150)
    }

    /// A window `columns` wide, as narrow as a projector's console may be.
    fn start_sized(name: &str, command: &str, columns: u16) -> Tmux {
        let dir = TempDir::new(name);
        let tmux = Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        };
        // remain-on-exit keeps the screen after telnet exits (the server closes after QUIT).
        let status = tmux
            .command()
            .args(["-f", "/dev/null", "start-server", ";"])
            .args(["set-option", "-g", "remain-on-exit", "on", ";"])
            .args([
                "new-session",
                "-d",
                "-s",
                "class",
                "-x",
                &columns.to_string(),
            ])
            .args(["-y", "60"])
            .arg(command)
            .env("TERM", "xterm")
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.socket);
        command
    }

    fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The screen with its colours, as ANSI escape sequences.
    fn screen_in_colour(&self) -> String {
        self.capture(&["-e"])
    }

    fn capture(&self, options: &[&str]) -> String {
        let output = self
            .command()
            .args(["capture-pane", "-p", "-t", "class"])
            .args(options)
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Type a line as a student would, then press Enter.
    fn type_line(&self, text: &str) {
        if !text.is_empty() {
            let status = self
                .command()
                .args(["send-keys", "-t", "class", "-l", text])
                .status()
                .expect("send-keys");
            assert!(status.success());
        }
        let status = self
            .command()
            .args(["send-keys", "-t", "class", "Enter"])
            .status()
            .expect("send-keys");
        assert!(status.success());
    }

    /// Wait until the screen shows `needle` `times` times.
    fn wait_for(&self, needle: &str, times: usize) {
        wait_until(&format!("{needle:?} x{times} on the telnet screen"), || {
            self.screen().matches(needle).count() >= times
        });
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

// ---------------------------------------------------------------------------------------------
// The projector: the console in a real terminal
// ---------------------------------------------------------------------------------------------

#[test]
fn the_projector_console_is_coloured_and_wraps_at_the_terminal_width() {
    if !on_path("tmux") {
        return;
    }
    let mail = TempDir::new("projector-mail");
    let listen = common::free_addr();
    let command = format!(
        "{} --trace --listen {listen} --hostname smtplab.test --mail-dir {}",
        env!("CARGO_BIN_EXE_smtplab"),
        mail.path().display()
    );
    let tmux = Tmux::start_sized("projector", &command, 60);
    tmux.wait_for("Try: telnet", 1);
    let mut c = Client::connect(listen);
    c.expect(
        "HELO a-rather-long-name-for-a-client-host.in-a-classroom.example",
        250,
    );
    c.expect("QUIT", 221);
    tmux.wait_for("-- disconnect", 1);
    let screen = tmux.screen();
    // The console cut the line itself: the rest goes on under the same [S1], indented (a line
    // the terminal wrapped would go on without it).
    let lines: Vec<&str> = screen.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("[S1] C: HELO a-rather-long"))
        .unwrap_or_else(|| panic!("no HELO line on the screen:\n{screen}"));
    assert!(lines[at + 1].starts_with("[S1]   "), "{screen}");
    assert!(lines.iter().all(|l| l.chars().count() <= 60), "{screen}");
    assert!(
        tmux.screen_in_colour().contains("\u{1b}["),
        "no colours on a terminal"
    );
}

// ---------------------------------------------------------------------------------------------
// Real telnet and netcat
// ---------------------------------------------------------------------------------------------

/// A whole session typed into the real telnet client, in a pseudo-terminal.
#[test]
fn telnet_typed_by_hand_delivers_the_mail() {
    if !on_path("telnet") || !on_path("tmux") {
        return;
    }
    let server = common::start(&[]);
    let tmux = Tmux::start(
        "telnet",
        &format!("telnet 127.0.0.1 {}", server.addr().port()),
    );
    tmux.wait_for("220 smtplab.test", 1);
    let steps: &[(&str, &str, usize)] = &[
        ("HELO client.example", "250 smtplab.test greets", 1),
        ("MAIL FROM:<mary@client.example>", "250 2.1.0", 1),
        ("RCPT TO:<alice@localhost>", "250 2.1.5", 1),
        ("DATA", "354 ", 1),
        ("Subject: typed by hand", "", 0),
        ("", "", 0),
        ("Hello from telnet.", "", 0),
        (".", "250 2.0.0", 1),
        ("QUIT", "221 2.0.0", 1),
    ];
    for (line, expect, times) in steps {
        tmux.type_line(line);
        if *times > 0 {
            tmux.wait_for(expect, *times);
        }
    }
    server.wait_idle();
    let mbox = server.mbox_text("alice");
    assert!(
        mbox.contains("Subject: typed by hand\n\nHello from telnet.\n"),
        "{mbox}\n--- screen ---\n{}",
        tmux.screen()
    );
}

/// The same with netcat without -C: every line ends in a bare LF, and so does the lone dot.
#[test]
fn netcat_with_bare_lf_delivers_the_mail() {
    if !on_path("nc") {
        return;
    }
    let server = common::start(&[]);
    let mut child = Command::new("nc")
        .args(["127.0.0.1", &server.addr().port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nc");
    let output = Output::collect(child.stdout.take().expect("stdout"));
    let mut stdin = child.stdin.take().expect("stdin");
    let _nc = Killed(child);
    output.wait_for("220 smtplab.test");
    let steps = [
        ("HELO client.example\n", "250 smtplab.test greets"),
        ("MAIL FROM:<mary@client.example>\n", "250 2.1.0"),
        ("RCPT TO:<bob@localhost>\n", "250 2.1.5"),
        ("DATA\n", "354 "),
        (
            "Subject: netcat\n\nNo carriage returns here.\n.\n",
            "250 2.0.0",
        ),
        ("QUIT\n", "221 2.0.0"),
    ];
    for (input, expect) in steps {
        stdin.write_all(input.as_bytes()).expect("write to nc");
        output.wait_for(expect);
    }
    server.wait_idle();
    let mbox = server.mbox_text("bob");
    assert!(
        mbox.contains("Subject: netcat\n\nNo carriage returns here.\n"),
        "{mbox}"
    );
}

/// Telnet negotiation (IAC DO/WILL) before a command is dropped; the command still works.
#[test]
fn telnet_negotiation_does_not_corrupt_a_command() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.send(b"\xff\xfd\x18\xff\xfb\x1fHELO client.example\r\n");
    let reply = c.reply();
    assert_eq!(reply.code, 250, "{reply:?}");
    assert!(reply.text().contains("greets client.example"), "{reply:?}");
}

// ---------------------------------------------------------------------------------------------
// Coaching replies: the RFC code, a text that teaches
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stray_backspace_is_named() {
    let server = common::start(&[]);
    let mut c = server.connect();
    let reply = c.cmd("HEL\x08LO client.example");
    assert_eq!((reply.code, reply.status().as_str()), (500, "5.5.2"));
    assert!(reply.text().contains("Backspace"), "{reply:?}");
    let reply = c.cmd("NOOP\x7f");
    assert_eq!(reply.code, 500);
    assert!(reply.text().contains("Delete"), "{reply:?}");
}

#[test]
fn an_arrow_key_is_named_and_the_student_asked_to_retype() {
    let server = common::start(&[]);
    let mut c = server.connect();
    // The up arrow in a terminal without line editing: ESC [ A, then what was typed.
    let reply = c.cmd("\x1b[AMAIL FROM:<mary@client.example>");
    assert_eq!(reply.code, 500, "{reply:?}");
    assert!(
        reply.text().contains("your terminal sent an arrow key"),
        "{reply:?}"
    );
    assert!(reply.text().contains("retype the line"), "{reply:?}");
    // Another escape sequence (F1 is ESC O P) is named as one too.
    let reply = c.cmd("HELO x\x1bOP");
    assert!(reply.text().contains("escape sequence"), "{reply:?}");
    c.expect("HELO client.example", 250);
}

#[test]
fn missing_angle_brackets_show_the_right_form() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    let reply = c.expect("MAIL FROM: alice@x.example", 501);
    assert!(
        reply.text().contains("MAIL FROM:<alice@x.example>"),
        "{reply:?}"
    );
}

#[test]
fn a_space_after_the_colon_is_accepted_and_pointed_out() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    let reply = c.expect("MAIL FROM: <mary@client.example>", 250);
    assert_eq!(reply.status(), "2.1.0");
    assert!(
        reply
            .text()
            .contains("accepted, but RFC 5321 §4.1.2 has no space after the colon"),
        "{reply:?}"
    );
    let reply = c.expect("RCPT TO: <alice@localhost>", 250);
    assert!(
        reply.text().contains("no space after the colon"),
        "{reply:?}"
    );
    let reply = c.expect("RCPT TO:<bob@localhost>", 250);
    assert!(!reply.text().contains("no space"), "{reply:?}");
}

#[test]
fn rcpt_before_mail_says_what_comes_first() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    let reply = c.expect("RCPT TO:<alice@localhost>", 503);
    assert!(reply.text().contains("MAIL FROM"), "{reply:?}");
}

#[test]
fn a_typo_suggests_the_verb() {
    let server = common::start(&[]);
    let mut c = server.connect();
    let reply = c.expect("HLEO client.example", 500);
    assert!(reply.text().contains("did you mean HELO?"), "{reply:?}");
}

/// Message text typed before DATA's 354, in each state where a transaction may be on its way.
#[test]
fn message_text_before_data_is_recognised_in_each_state() {
    let server = common::start(&[]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    let reply = c.expect("Subject: hi", 500);
    assert_eq!(reply.status(), "5.5.2");
    assert!(
        reply.text().contains("looks like message text") && reply.text().contains("MAIL FROM"),
        "Greeted: {reply:?}"
    );
    c.expect("MAIL FROM:<mary@client.example>", 250);
    let reply = c.expect("From: mary@client.example", 500);
    assert!(
        reply.text().contains("looks like message text") && reply.text().contains("RCPT TO"),
        "MailGiven: {reply:?}"
    );
    c.expect("RCPT TO:<alice@localhost>", 250);
    let reply = c.expect("To: alice@localhost", 500);
    assert!(
        reply
            .text()
            .contains("looks like message text; type DATA first and wait for 354"),
        "RcptGiven: {reply:?}"
    );
    let reply = c.expect(".", 500);
    assert!(reply.text().contains("lone dot"), "{reply:?}");
    // Nothing changed: the transaction is still open and DATA works.
    c.expect("DATA", 354);
}

// ---------------------------------------------------------------------------------------------
// State-aware HELP
// ---------------------------------------------------------------------------------------------

/// The verbs HELP lists as commands to type now (the indented lines).
fn listed(reply: &common::Reply) -> Vec<String> {
    reply
        .lines
        .iter()
        // `  VERB syntax -> State`; the summary under it is indented further.
        .filter(|l| !l.starts_with("2.0.0     "))
        .filter_map(|l| l.strip_prefix("2.0.0   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn help_lists_what_is_legal_in_each_state() {
    let server = common::start(&[]);
    let mut c = server.connect();
    let cases: &[(&str, &str, &[&str], &[&str])] = &[
        (
            "",
            "Connected",
            &["HELO", "EHLO", "QUIT"],
            &["MAIL", "RCPT", "DATA"],
        ),
        (
            "HELO client.example",
            "Greeted",
            &["MAIL", "RSET", "QUIT"],
            &["RCPT", "DATA"],
        ),
        (
            "MAIL FROM:<mary@client.example>",
            "MailGiven",
            &["RCPT", "RSET"],
            &["MAIL", "DATA"],
        ),
        (
            "RCPT TO:<alice@localhost>",
            "RcptGiven",
            &["RCPT", "DATA", "RSET"],
            &["MAIL"],
        ),
    ];
    for (command, state, present, absent) in cases {
        if !command.is_empty() {
            c.expect(command, 250);
        }
        let help = c.expect("HELP", 214);
        assert!(help.text().contains(&format!("state {state}")), "{help:?}");
        let verbs = listed(&help);
        for verb in *present {
            assert!(
                verbs.iter().any(|v| v == verb),
                "{state}: {verb} missing in {verbs:?}"
            );
        }
        for verb in *absent {
            assert!(
                !verbs.iter().any(|v| v == verb),
                "{state}: {verb} listed in {verbs:?}"
            );
        }
    }
    // In Data, HELP is message text: it lands in the message, and no 214 comes.
    c.expect("DATA", 354);
    c.send(b"HELP\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert!(server.mbox_text("alice").contains("\nHELP\n"));
}

/// The reply as the terminal shows it: `214-2.0.0 text` per line.
fn wire_lines(reply: &common::Reply) -> Vec<String> {
    let last = reply.lines.len() - 1;
    reply
        .lines
        .iter()
        .enumerate()
        .map(|(i, text)| format!("{}{}{text}", reply.code, if i == last { ' ' } else { '-' }))
        .collect()
}

#[test]
fn help_fits_80_columns_in_every_state_and_for_every_verb() {
    let server = common::start(&[]);
    let mut c = server.connect();
    let mut replies = vec![c.expect("HELP", 214)];
    for command in [
        "EHLO client.example",
        "MAIL FROM:<mary@client.example>",
        "RCPT TO:<alice@localhost>",
    ] {
        c.expect(command, 250);
        replies.push(c.expect("HELP", 214));
    }
    for verb in smtplab::smtp::command::VERBS {
        replies.push(c.expect(&format!("HELP {}", verb.name), 214));
    }
    let wide: Vec<String> = replies
        .iter()
        .flat_map(wire_lines)
        .filter(|line| line.chars().count() > 80)
        .collect();
    assert!(
        wide.is_empty(),
        "HELP lines over 80 columns:\n{}",
        wide.join("\n")
    );
}

#[test]
fn help_for_a_verb_gives_syntax_section_and_example() {
    let server = common::start(&[]);
    let mut c = server.connect();
    let help = c.expect("HELP RCPT", 214).text();
    assert!(help.contains("Syntax:  RCPT TO:<recipient>"), "{help}");
    assert!(
        help.contains("Example: RCPT TO:<alice@localhost>"),
        "{help}"
    );
    assert!(help.contains("RFC 5321 §4.1.1.3"), "{help}");
    assert!(!help.contains("History:"), "{help}");
}

#[test]
fn help_tells_the_history_of_obsolete_and_disabled_verbs() {
    let server = common::start(&[]);
    let mut c = server.connect();
    for (verb, words) in [
        ("TURN", "Appendix F.1"),
        ("SEND", "Appendix F.6"),
        ("SOML", "terminal"),
        ("VRFY", "RFC 5321 §7.3"),
        ("EXPN", "252"),
    ] {
        let help = c.expect(&format!("HELP {verb}"), 214).text();
        let history = help
            .split_once("History:")
            .map(|(_, story)| story.replace('\n', " "))
            .unwrap_or_else(|| panic!("HELP {verb}: {help}"));
        assert!(history.contains(words), "HELP {verb}: {history}");
    }
}

// ---------------------------------------------------------------------------------------------
// --explain
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_ends_replies_with_the_section_and_the_next_command() {
    let server = common::start(&["--explain"]);
    let mut c = server.connect();
    assert!(
        c.greeting
            .text()
            .ends_with("[RFC 5321 §3.1; next: HELO or EHLO]"),
        "{:?}",
        c.greeting
    );
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(
        ehlo.lines[0].ends_with("[RFC 5321 §4.1.1.1; next: MAIL FROM]"),
        "{ehlo:?}"
    );
    assert!(
        ehlo.lines[1..].iter().all(|l| !l.contains('[')),
        "keyword lines stay clean: {ehlo:?}"
    );
    let mail = c.expect("MAIL FROM:<mary@client.example>", 250);
    assert_eq!(mail.status(), "2.1.0");
    assert!(
        mail.text().ends_with("[RFC 5321 §4.1.1.2; next: RCPT TO]"),
        "{mail:?}"
    );
    let refused = c.expect("RCPT TO:<nobody@localhost>", 550);
    assert!(refused.text().ends_with("next: RCPT TO]"), "{refused:?}");
    c.expect("RCPT TO:<alice@localhost>", 250);
    let data = c.expect("DATA", 354);
    assert!(data.text().contains("next: the message"), "{data:?}");
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    let done = c.reply();
    assert_eq!(done.code, 250);
    assert!(done
        .text()
        .ends_with("[RFC 5321 §4.1.1.4; next: MAIL FROM]"));
    // A 334 challenge is base64 and gets no note.
    let challenge = c.expect("AUTH LOGIN", 334);
    assert_eq!(challenge.text(), "VXNlcm5hbWU6");
}

#[test]
fn explain_does_not_break_python_smtplib() {
    if !on_path("python3") {
        return;
    }
    let server = common::start(&["--explain"]);
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=10)\n\
         s.ehlo('client.example')\n\
         assert s.has_extn('size'), s.esmtp_features\n\
         s.sendmail('mary@client.example', ['alice@localhost'], 'Subject: explained\\r\\n\\r\\nStill works.\\r\\n')\n\
         s.quit()\n",
        port = server.addr().port()
    );
    let mut child = Killed(
        Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3"),
    );
    let mut status = None;
    wait_until("python3 to finish", || {
        status = child.0.try_wait().expect("wait");
        status.is_some()
    });
    let mut errors = String::new();
    if let Some(stderr) = child.0.stderr.as_mut() {
        let _ = stderr.read_to_string(&mut errors);
    }
    assert!(status.is_some_and(|s| s.success()), "{errors}");
    assert!(server
        .mbox_text("alice")
        .contains("Subject: explained\n\nStill works.\n"));
}

// ---------------------------------------------------------------------------------------------
// --fault rules
// ---------------------------------------------------------------------------------------------

#[test]
fn fault_third_rcpt_gets_452_and_the_others_stay() {
    let server = common::start(&["--fault", "rcpt:3=452"]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("RCPT TO:<bob@localhost>", 250);
    let reply = c.expect("RCPT TO:<students@localhost>", 452);
    assert_eq!(reply.status(), "4.5.3");
    assert_eq!(reply.text(), "4.5.3 Too many recipients (scripted fault)");
    c.expect("RCPT TO:<postmaster@localhost>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(server.message_count("bob"), 1);
}

#[test]
fn fault_first_data_gets_451_and_the_transaction_stays_open() {
    let server = common::start(&["--fault", "data:1=451"]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    let reply = c.expect("DATA", 451);
    assert!(reply.text().contains("(scripted fault)"), "{reply:?}");
    c.expect("DATA", 354);
    c.send(b"Subject: x\r\n\r\nsecond try\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(server.message_count("alice"), 1);
}

#[test]
fn fault_mail_from_a_given_sender_gets_550() {
    let server = common::start(&["--fault", "mail:from=spam@x.example=550"]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    let reply = c.expect("MAIL FROM:<Spam@X.example>", 550);
    assert_eq!(reply.status(), "5.7.1");
    c.expect("MAIL FROM:<ham@x.example>", 250);
}

#[test]
fn fault_rcpt_to_a_given_recipient() {
    let server = common::start(&["--fault", "rcpt:to=bob@localhost=450"]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("RCPT TO:<bob@localhost>", 450);
}

#[test]
fn fault_end_of_data_gets_554_and_nothing_is_stored() {
    let server = common::start(&["--fault", "eod:1=554"]);
    let mut c = server.connect();
    c.open_data("mary@client.example", &["alice@localhost"]);
    c.send(b"Subject: first\r\n\r\nrefused\r\n.\r\n");
    let reply = c.reply();
    assert_eq!((reply.code, reply.status().as_str()), (554, "5.6.0"));
    assert_eq!(server.message_count("alice"), 0);
    // The count is per session: the second message goes through.
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: second\r\n\r\nstored\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    assert_eq!(server.message_count("alice"), 1);
    // A new session counts from 1 again.
    let mut d = server.connect();
    d.open_data("mary@client.example", &["alice@localhost"]);
    d.send(b"Subject: third\r\n\r\nrefused\r\n.\r\n");
    assert_eq!(d.reply().code, 554);
}

/// The last BDAT chunk is an end of data too (RFC 3030 §2).
#[test]
fn fault_end_of_data_applies_to_the_last_bdat_chunk() {
    let server = common::start(&["--fault", "eod:1=554"]);
    let mut c = server.connect();
    c.expect("EHLO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.send(b"BDAT 4 LAST\r\nhi\r\n");
    assert_eq!(c.reply().code, 554);
    assert_eq!(server.message_count("alice"), 0);
    c.expect("MAIL FROM:<mary@client.example>", 250);
}

#[test]
fn fault_close_after_the_first_data_drops_the_connection() {
    let server = common::start(&["--fault", "data:1=close"]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.send(b"DATA\r\n");
    assert!(c.is_closed());
}

#[test]
fn fault_greeting_close_disconnects_without_a_word() {
    let server = common::start(&["--fault", "greeting=close"]);
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert_eq!(
        stream.read(&mut buf).expect("read"),
        0,
        "no greeting, just EOF"
    );
}

#[test]
fn fault_greeting_421_then_close() {
    let server = common::start(&["--fault", "greeting=421"]);
    let mut c = server.connect();
    assert_eq!(c.greeting.code, 421);
    assert!(c.greeting.text().contains("(scripted fault)"));
    assert!(c.is_closed());
}

#[test]
fn fault_greeting_delay_holds_back_the_220() {
    let server = common::start(&["--fault", "greeting=delay:3"]);
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let early = stream.read(&mut buf);
    assert!(early.is_err(), "the greeting came at once: {early:?}");
    // The pause is a sleep on this session's thread: other sessions go on meanwhile.
    let other = server.connect();
    assert_eq!(other.greeting.code, 220);
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let n = stream.read(&mut buf).expect("the greeting after the delay");
    assert!(buf[..n].starts_with(b"220 "), "{:?}", &buf[..n]);
}

#[test]
fn a_bad_fault_rule_is_one_sentence_and_exit_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .args(["--listen", "127.0.0.1:0", "--fault", "rcpt:x=452"])
        .stdin(Stdio::null())
        .output()
        .expect("run smtplab");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("smtplab: --fault rcpt:x=452: "),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// --trace: the real binary's console
// ---------------------------------------------------------------------------------------------

/// The seed article's session, as the teacher's console shows it.
#[test]
fn trace_shows_the_seed_session_line_by_line() {
    let server = Binary::start(&["--trace"]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 250);
    c.expect("RCPT TO:<nosuchuser@localhost>", 550);
    c.expect("DATA", 354);
    c.send(b"From: mary@client.example\r\nTo: alice@localhost\r\nSubject: Hello\r\n\r\nHi Alice!\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    c.expect("QUIT", 221);
    server.stdout.wait_for("[S1] -- disconnect");
    // The message id ends in a part that differs from run to run (relay/queue.rs message_id).
    let lines: Vec<String> = server
        .trace_lines()
        .iter()
        .map(|line| match line.split_once("message S1-1-") {
            Some((head, tail)) => format!(
                "{head}message S1-1-{{id}} {}",
                tail.split_once(' ').map_or("", |t| t.1)
            ),
            None => line.to_string(),
        })
        .collect();
    println!("{}", lines.join("\n"));
    let expected = [
        "[S1] S: 220 smtplab.test ESMTP smtplab ready; type HELO <your-name> to start, or HELP",
        "[S1] C: HELO client.example",
        "[S1]    Connected → Greeted  (RFC 5321 §4.1.1.1)",
        "[S1] S: 250 smtplab.test greets client.example",
        "[S1] C: MAIL FROM:<mary@client.example>",
        "[S1]    Greeted → MailGiven  (RFC 5321 §4.1.1.2)",
        "[S1] S: 250 2.1.0 Sender <mary@client.example> OK; next: RCPT TO:<recipient>",
        "[S1] C: RCPT TO:<alice@localhost>",
        "[S1]    MailGiven → RcptGiven  (RFC 5321 §4.1.1.3)",
        "[S1] S: 250 2.1.5 Recipient <alice@localhost> OK; next: another RCPT TO, or DATA",
        "[S1] C: RCPT TO:<nosuchuser@localhost>",
        "[S1]    RcptGiven (unchanged)  (RFC 5321 §4.1.1.3)",
        "[S1] S: 550 5.1.1 No such user here: nosuchuser@localhost",
        "[S1] C: DATA",
        "[S1]    RcptGiven → Data  (RFC 5321 §4.1.1.4)",
        "[S1] S: 354 End data with <CR><LF>.<CR><LF> (a line with only a dot)",
        "[S1] C: From: mary@client.example",
        "[S1] C: To: alice@localhost",
        "[S1] C: Subject: Hello",
        "[S1] C:",
        "[S1] C: Hi Alice!",
        "[S1] C: .",
        "[S1]    Data → Greeted  (RFC 5321 §4.1.1.4)",
        "[S1] S: 250 2.0.0 OK: message S1-1-{id} delivered",
        "[S1] C: QUIT",
        "[S1]    Greeted → Closed  (RFC 5321 §4.1.1.10)",
        "[S1] S: 221 2.0.0 smtplab.test closing connection, goodbye",
        "[S1] -- disconnect (closed by the session, state Closed)",
    ];
    assert!(
        lines[0].starts_with("[S1] -- connect from 127.0.0.1:")
            && lines[0].ends_with("(Relay listener)"),
        "{}",
        lines[0]
    );
    assert_eq!(&lines[1..], &expected[..]);
    assert!(
        !server.stdout.text().contains('\x1b'),
        "no colours when stdout is a pipe"
    );
    assert!(server.mail.path().join("alice").exists());
}

/// Two sessions at once: every console line is whole and says whose it is.
#[test]
fn trace_lines_of_several_sessions_never_tear() {
    let server = Binary::start(&["--trace"]);
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    for round in 0..20 {
        for c in &mut clients {
            c.send(format!("NOOP round {round}\r\n").as_bytes());
        }
        for c in &mut clients {
            assert_eq!(c.reply().code, 250);
        }
    }
    for c in &mut clients {
        c.expect("QUIT", 221);
    }
    wait_until("three disconnects", || {
        server.stdout.text().matches("-- disconnect").count() == 3
    });
    let lines = server.trace_lines();
    for id in ["[S1] ", "[S2] ", "[S3] "] {
        let noops = lines
            .iter()
            .filter(|l| l.starts_with(id) && l.contains("C: NOOP round"))
            .count();
        assert_eq!(noops, 20, "{id}");
    }
    // The banner comes first; every line after it belongs to a session.
    for line in server
        .stdout
        .text()
        .lines()
        .skip_while(|l| !l.starts_with("[S"))
    {
        let well_formed = line.starts_with("[S")
            && (line.contains("] C: ")
                || line.contains("] S: ")
                || line.contains("]    ")
                || line.contains("] -- "));
        assert!(well_formed, "torn or stray line: {line:?}");
    }
}

/// A student who forgot the lone dot: the console says so after a pause (half of --timeout
/// here, so the test is quick), once, and the session goes on.
#[test]
fn trace_hints_at_the_lone_dot_when_data_goes_quiet() {
    let server = Binary::start(&["--trace", "--timeout", "4"]);
    let mut c = server.connect();
    c.open_data("mary@client.example", &["alice@localhost"]);
    c.send(b"Subject: where is the dot\r\n\r\nI am done, am I not?\r\n");
    server
        .stdout
        .wait_for("[S1] -- still in DATA: end the message with a line holding only a dot");
    c.send(b".\r\n");
    assert_eq!(c.reply().code, 250);
    c.expect("QUIT", 221);
    server.stdout.wait_for("[S1] -- disconnect");
    assert_eq!(server.stdout.text().matches("still in DATA").count(), 1);
}

/// Faults show on the console: at connect (the rules) and where one fires.
#[test]
fn trace_shows_scripted_faults() {
    let server = Binary::start(&[
        "--trace",
        "--fault",
        "rcpt:1=452",
        "--fault",
        "greeting=delay:0",
    ]);
    let mut c = server.connect();
    c.expect("HELO client.example", 250);
    c.expect("MAIL FROM:<mary@client.example>", 250);
    c.expect("RCPT TO:<alice@localhost>", 452);
    c.expect("QUIT", 221);
    server.stdout.wait_for("[S1] -- disconnect");
    let text = server.stdout.text();
    assert!(
        text.contains("; scripted faults: rcpt:1=452, greeting=delay:0"),
        "{text}"
    );
    assert!(
        text.contains("[S1] -- scripted fault greeting=delay:0"),
        "{text}"
    );
    assert!(
        text.contains(
            "[S1]    MailGiven (unchanged)  (RFC 5321 §4.1.1.3)  scripted fault rcpt:1=452"
        ),
        "{text}"
    );
    assert!(text.contains("[S1] S: 452 4.5.3 Too many recipients (scripted fault)"));
}

/// AUTH data never reaches the projector, and a stray backspace is shown as an escape, in the
/// notation of the transcripts.
#[test]
fn trace_masks_credentials_and_names_control_keys() {
    let server = Binary::start(&["--trace"]);
    let mut c = server.connect();
    c.expect("EHLO client.example", 250);
    c.expect("AUTH PLAIN AGFsaWNlAHBhc3N3b3Jk", 235);
    c.expect("HEL\x08LO x", 500);
    c.expect("QUIT", 221);
    server.stdout.wait_for("[S1] -- disconnect");
    let text = server.stdout.text();
    assert!(!text.contains("AGFsaWNl"), "{text}");
    assert!(text.contains("[S1] C: AUTH PLAIN {secret}"), "{text}");
    assert!(text.contains("[S1] C: HEL{x08}LO x"), "{text}");
}

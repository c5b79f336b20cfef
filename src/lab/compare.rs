//! Compare: lines up a student's recorded session with a reference transcript and explains,
//! in words, what the student did differently.
//!
//! Interface:
//! - `compare(mine, reference)` returns `Finding`s; each one prints as a plain sentence.
//! - `meaning(code)` explains a reply code (RFC 5321 §4.2.1 classes, §4.2.3 common codes).
//! - `compare_main(args)`: `smtplab compare MINE REFERENCE`; exit 0 when both sessions sent the
//!   same commands in the same order and got the same reply codes, 1 otherwise, 2 on an error.
//!
//! Only commands and reply codes are compared: reply texts, host names and message text differ
//! from server to server and from day to day, and do not change what happened.
//!
//! Standards: RFC 5321 §4.1.4, RFC 5321 §4.2.1, RFC 5321 §4.2.3

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;

use crate::lab::transcript::{align, is_last_reply_line, Line, Pair, Transcript};
use crate::visible::sanitize;

/// The server's first reply, before any command; it is compared like a command's reply.
const GREETING: &str = "greeting";
/// The line with a single dot that ends the message text (RFC 5321 §4.1.1.4).
const END_OF_DATA: &str = ".";
/// A client line answering a 334 challenge (RFC 4954 §4).
const AUTH_RESPONSE: &str = "AUTH response";

/// One command of a session and the code of the reply it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `EHLO`, `MAIL FROM`, `RCPT TO`, `DATA`, `.`, ...
    pub verb: String,
    pub line_no: usize,
    /// `None` when the session ended before the reply.
    pub reply: Option<u16>,
}

/// One difference between the two sessions, worth telling the student about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The reference sends `verb` (at `reference_line`); the student never did.
    Missing { verb: String, reference_line: usize },
    /// The student sent `verb`, which the reference does not.
    Extra { verb: String, your_line: usize },
    /// The student sent `first` before `then`; the reference sends them the other way round.
    OutOfOrder {
        first: String,
        then: String,
        your_line: usize,
        reference_line: usize,
    },
    /// The student said `yours` where the reference says `reference` (HELO for EHLO).
    Instead {
        yours: String,
        reference: String,
        your_line: usize,
        reference_line: usize,
    },
    /// The same command got a different reply code.
    DifferentReply {
        verb: String,
        your_line: usize,
        reference_line: usize,
        yours: Option<u16>,
        reference: Option<u16>,
    },
}

/// What a session is doing with the client's next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expecting {
    Command,
    /// After `354`: message text up to the lone dot.
    MessageText,
    /// After `334`: one SASL response.
    AuthResponse,
}

/// The commands of a session, each with the code of its reply. Replies are given to commands in
/// the order the commands were sent, which also holds for pipelined commands (RFC 2920 §3.1).
pub fn commands(transcript: &Transcript) -> Vec<Command> {
    let mut commands: Vec<Command> = Vec::new();
    let mut waiting = VecDeque::new();
    let mut expecting = Expecting::Command;
    for entry in &transcript.entries {
        let verb = match &entry.line {
            Line::Client(client) => client_verb(&client.lossy_text(), &mut expecting),
            Line::Server(_) if commands.is_empty() => Some(GREETING.to_string()),
            Line::Server(_) | Line::Tls => None,
        };
        if let Some(verb) = verb {
            waiting.push_back(commands.len());
            commands.push(Command {
                verb,
                line_no: entry.line_no,
                reply: None,
            });
        }
        let Line::Server(pattern) = &entry.line else {
            continue;
        };
        if !is_last_reply_line(pattern.source()) {
            continue;
        }
        if let Some(command) = waiting
            .pop_front()
            .and_then(|index| commands.get_mut(index))
        {
            command.reply = pattern.reply_code();
            expecting = match (command.verb.as_str(), command.reply) {
                ("DATA", Some(354)) => Expecting::MessageText,
                (_, Some(334)) => Expecting::AuthResponse,
                _ => expecting,
            };
        }
    }
    commands
}

/// The verb of a client line, or `None` for a line of message text.
fn client_verb(text: &str, expecting: &mut Expecting) -> Option<String> {
    match *expecting {
        Expecting::MessageText if text == END_OF_DATA => {
            *expecting = Expecting::Command;
            Some(END_OF_DATA.to_string())
        }
        Expecting::MessageText => None,
        Expecting::AuthResponse => {
            *expecting = Expecting::Command;
            Some(AUTH_RESPONSE.to_string())
        }
        Expecting::Command => Some(verb_of(text)),
    }
}

/// `mail from:<a@b>` gives `MAIL FROM`; `ehlo x` gives `EHLO`.
fn verb_of(text: &str) -> String {
    let upper = text.trim_start().to_ascii_uppercase();
    let words: Vec<&str> = upper.split([' ', ':']).filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        ["MAIL", "FROM", ..] => "MAIL FROM".to_string(),
        ["RCPT", "TO", ..] => "RCPT TO".to_string(),
        [verb, ..] => verb.to_string(),
        [] => "(an empty line)".to_string(),
    }
}

/// Lines up the two sessions' commands and lists what differs.
pub fn compare(mine: &Transcript, reference: &Transcript) -> Vec<Finding> {
    let (mine, reference) = (commands(mine), commands(reference));
    let pairs = align(mine.len(), reference.len(), |i, j| {
        same_step(&mine[i].verb, &reference[j].verb)
    });
    let mut unmatched_mine: Vec<usize> = pairs
        .iter()
        .filter_map(|pair| match pair {
            Pair::OnlyLeft(i) => Some(*i),
            _ => None,
        })
        .collect();
    let mut findings = Vec::new();
    for pair in &pairs {
        match *pair {
            Pair::Both(i, j) => {
                findings.extend(other_greeting(&mine[i], &reference[j]));
                findings.extend(different_reply(&mine[i], &reference[j]));
            }
            Pair::OnlyRight(j) => {
                let verb = &reference[j].verb;
                match unmatched_mine.iter().position(|&i| mine[i].verb == *verb) {
                    Some(at) => {
                        let i = unmatched_mine.remove(at);
                        findings.push(out_of_order(&mine, i, &reference, j, &pairs));
                        findings.extend(different_reply(&mine[i], &reference[j]));
                    }
                    None if follows_from_refused_data(verb, &mine) => {}
                    None => findings.push(Finding::Missing {
                        verb: verb.clone(),
                        reference_line: reference[j].line_no,
                    }),
                }
            }
            Pair::OnlyLeft(_) => {}
        }
    }
    findings.extend(unmatched_mine.into_iter().map(|i| Finding::Extra {
        verb: mine[i].verb.clone(),
        your_line: mine[i].line_no,
    }));
    findings
}

/// HELO and EHLO are the same step of a session (RFC 5321 §4.1.1.1), said two ways.
fn same_step(mine: &str, reference: &str) -> bool {
    let hello = |verb: &str| verb == "HELO" || verb == "EHLO";
    mine == reference || (hello(mine) && hello(reference))
}

/// When the server refused DATA, the student could not send message text or its final dot;
/// that is said once, at DATA, rather than a second time here.
fn follows_from_refused_data(verb: &str, mine: &[Command]) -> bool {
    let data_accepted = mine
        .iter()
        .any(|command| command.verb == "DATA" && command.reply == Some(354));
    verb == END_OF_DATA && !data_accepted
}

fn other_greeting(mine: &Command, reference: &Command) -> Option<Finding> {
    (mine.verb != reference.verb).then(|| Finding::Instead {
        yours: mine.verb.clone(),
        reference: reference.verb.clone(),
        your_line: mine.line_no,
        reference_line: reference.line_no,
    })
}

fn different_reply(mine: &Command, reference: &Command) -> Option<Finding> {
    (mine.reply != reference.reply).then(|| Finding::DifferentReply {
        verb: mine.verb.clone(),
        your_line: mine.line_no,
        reference_line: reference.line_no,
        yours: mine.reply,
        reference: reference.reply,
    })
}

/// The student sent `mine[moved]` where the reference sends it as `reference[j]`. Names a
/// command it was swapped with: one the student sent before it that the reference sends after
/// it, or one sent after it that the reference sends before it.
fn out_of_order(
    mine: &[Command],
    moved: usize,
    reference: &[Command],
    j: usize,
    pairs: &[Pair],
) -> Finding {
    // Where the reference has the student's command `k`, when both have it.
    let in_reference = |k: usize| {
        pairs.iter().find_map(|pair| match *pair {
            Pair::Both(i, r) if i == k => Some(r),
            _ => None,
        })
    };
    let sent_too_early = (0..moved).find(|&k| in_reference(k).is_some_and(|r| r > j));
    let sent_too_late = (moved + 1..mine.len()).find(|&k| in_reference(k).is_some_and(|r| r < j));
    // With a longest common subsequence one of the two searches always succeeds: a command
    // left over on both sides that crossed no matched command could have been matched too.
    let (first, then) = match (sent_too_early, sent_too_late) {
        (Some(k), _) => (k, Some(moved)),
        (None, Some(k)) => (moved, Some(k)),
        (None, None) => (moved, None),
    };
    Finding::OutOfOrder {
        first: mine[first].verb.clone(),
        then: then.map_or_else(
            || "the commands around it".to_string(),
            |k| mine[k].verb.clone(),
        ),
        your_line: mine[first].line_no,
        reference_line: reference[j].line_no,
    }
}

// ---------------------------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------------------------

/// Common reply codes in words (RFC 5321 §4.2.2, §4.2.3; 235, 334, 530 and 535 from RFC 4954).
const REPLY_CODES: &[(u16, &str)] = &[
    (220, "the service is ready"),
    (221, "the server is closing the connection"),
    (235, "authentication succeeded"),
    (250, "the requested action was completed"),
    (
        251,
        "the user is not local, and the server will forward the mail",
    ),
    (
        252,
        "the server cannot verify the user but will accept the message",
    ),
    (334, "the server waits for the next step of authentication"),
    (
        354,
        "go ahead: send the message text, ending with a line holding a single \".\"",
    ),
    (
        421,
        "the service is not available and the server is closing the connection",
    ),
    (
        450,
        "the mailbox is unavailable for now (busy or blocked); try again later",
    ),
    (451, "the server hit a local error; try again later"),
    (
        452,
        "the server is short of storage or got too many recipients; try again later",
    ),
    (
        500,
        "a syntax error: the server did not recognise the command",
    ),
    (501, "a syntax error in the arguments"),
    (502, "the command is not implemented"),
    (
        503,
        "a bad sequence of commands: this command is not allowed at this point",
    ),
    (504, "a command parameter is not implemented"),
    (530, "authentication is required first"),
    (535, "the user name or password was rejected"),
    (
        550,
        "the mailbox is unavailable (no such user, or refused by policy)",
    ),
    (
        551,
        "the user is not local; the reply says where to send instead",
    ),
    (552, "the message is too big for the server's storage limit"),
    (553, "the mailbox name is not allowed (its syntax is wrong)"),
    (
        554,
        "the transaction failed (in a greeting: no SMTP service here)",
    ),
    (
        555,
        "a MAIL FROM or RCPT TO parameter is not recognised or not implemented",
    ),
];

/// A reply code in words: its own meaning when it is a common one, else its class (§4.2.1).
pub fn meaning(code: u16) -> String {
    if let Some((_, words)) = REPLY_CODES.iter().find(|(known, _)| *known == code) {
        return words.to_string();
    }
    let class = match code / 100 {
        2 => "success: the action was completed",
        3 => "so far so good: the server waits for more",
        4 => "a temporary failure: the same command may work later",
        5 => "a permanent failure: repeating the same command will not help",
        _ => "not a valid reply code",
    };
    format!("{class} (RFC 5321 §4.2.1)")
}

/// A short tip for a reply a student often gets.
fn hint(verb: &str, code: u16) -> Option<&'static str> {
    match (verb, code) {
        ("MAIL FROM" | "RCPT TO", 501) => {
            Some("check the angle brackets: MAIL FROM:<you@example.org>")
        }
        ("RCPT TO", 550) => Some("check the spelling of the recipient's address"),
        ("DATA", 503 | 554) => Some("the server needs at least one accepted RCPT TO before DATA"),
        (_, 503) => Some("check the order of your commands (RFC 5321 §4.1.4)"),
        (_, 500) => Some("check the spelling of the command"),
        (_, 530) => Some("log in with AUTH first"),
        _ => None,
    }
}

/// Why a command the student left out matters.
fn why_needed(verb: &str) -> &'static str {
    match verb {
        "EHLO" | "HELO" => "a client introduces itself first (RFC 5321 §4.1.1.1), and many servers answer MAIL FROM with 503 until it does.",
        "MAIL FROM" => "MAIL FROM starts a mail transaction (RFC 5321 §4.1.1.2); without it RCPT TO and DATA get 503.",
        "RCPT TO" => "without a recipient the server refuses DATA with 503/554 (RFC 5321 §4.1.1.3).",
        "DATA" => "DATA is how the message itself is sent (RFC 5321 §4.1.1.4); without it nothing is delivered.",
        END_OF_DATA => "a line with a single \".\" ends the message (RFC 5321 §4.1.1.4); without it the server waits for more text.",
        "QUIT" => "QUIT ends the session politely (RFC 5321 §4.1.1.10); without it the server only sees the connection drop.",
        "AUTH" => "the server may refuse your mail with 530 until you log in (RFC 4954 §4).",
        "STARTTLS" => "without STARTTLS everything, passwords too, crosses the network in the clear (RFC 3207 §4).",
        _ => "",
    }
}

/// What changes when a student greets with one verb where the reference uses the other.
fn why_instead(yours: &str) -> &'static str {
    match yours {
        "HELO" => {
            "after HELO the server lists no extensions, so SIZE, STARTTLS, AUTH and the rest \
                   stay unused (RFC 5321 §4.1.1.1)."
        }
        _ => "EHLO works too, and its reply lists the server's extensions (RFC 5321 §4.1.1.1).",
    }
}

/// How a command is named in a sentence.
fn name(verb: &str) -> String {
    match verb {
        END_OF_DATA => "the end of the message (\".\")".to_string(),
        GREETING => "the greeting".to_string(),
        AUTH_RESPONSE => "the AUTH response".to_string(),
        verb => verb.to_string(),
    }
}

fn code_text(code: Option<u16>) -> String {
    code.map_or_else(|| "no reply".to_string(), |code| code.to_string())
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Finding::Missing { verb, reference_line } if verb == GREETING => {
                write!(f, "Your transcript has no server greeting (reference line {reference_line}).")
            }
            Finding::Missing { verb, reference_line } => write!(
                f,
                "Your session never sent {} (reference line {reference_line}): {}",
                name(verb),
                why_needed(verb)
            ),
            Finding::Instead { yours, reference, your_line, reference_line } => write!(
                f,
                "You sent {yours} (your line {your_line}) where the reference sends {reference} \
                 (reference line {reference_line}): {}",
                why_instead(yours)
            ),
            Finding::Extra { verb, your_line } => write!(
                f,
                "You sent {} (your line {your_line}), which the reference does not send.",
                name(verb)
            ),
            Finding::OutOfOrder { first, then, your_line, reference_line } => write!(
                f,
                "You sent {} before {} (your line {your_line}); the reference has them the other way \
                 round (reference line {reference_line}), in the order RFC 5321 §4.1.4 asks for.",
                name(first),
                name(then)
            ),
            Finding::DifferentReply { verb, your_line, reference_line, yours, reference } => {
                write!(
                    f,
                    "At {} (your line {your_line}, reference line {reference_line}) the reference got {} but you got {}",
                    name(verb),
                    code_text(*reference),
                    code_text(*yours)
                )?;
                match yours {
                    None => write!(f, ": the session ended before the server answered."),
                    Some(code) => {
                        write!(f, ": {code} means {}", meaning(*code))?;
                        match hint(verb, *code) {
                            Some(tip) => write!(f, " — {tip}."),
                            None => write!(f, "."),
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The `compare` subcommand
// ---------------------------------------------------------------------------------------------

/// `smtplab compare MINE REFERENCE`; `args` are the arguments after `compare`.
pub fn compare_main(args: &[String]) -> i32 {
    let [mine, reference] = args else {
        eprintln!("Usage: smtplab compare MINE REFERENCE");
        return 2;
    };
    // File names and findings hold what a student wrote: escaped before they reach a terminal.
    let load = |file: &String| {
        Transcript::load(Path::new(file))
            .map_err(|e| eprintln!("{}", sanitize(&format!("{file}: {e}"))))
    };
    let (Ok(mine_transcript), Ok(reference_transcript)) = (load(mine), load(reference)) else {
        return 2;
    };
    let findings = compare(&mine_transcript, &reference_transcript);
    if findings.is_empty() {
        println!(
            "{}",
            sanitize(&format!(
            "{mine} matches {reference}: the same commands in the same order, the same reply codes."
        ))
        );
        return 0;
    }
    println!(
        "{}",
        sanitize(&format!("{mine} compared with {reference}:"))
    );
    for (number, finding) in findings.iter().enumerate() {
        println!("{}", sanitize(&format!("{}. {finding}", number + 1)));
    }
    1
}

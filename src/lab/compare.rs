//! Compare: lines up a student's recorded session with a reference transcript and explains,
//! in words, what the student did differently.
//!
//! Interface:
//! - `compare(mine, reference)` returns `Finding`s; each one prints as a plain sentence.
//! - `meaning(code)` explains a reply code (RFC 5321 §4.2.1 classes, §4.2.3 common codes).
//! - `compare_main(args)`: `smtplab compare MINE REFERENCE`; exit 0 when both sessions sent the
//!   same commands in the same order (HELO and EHLO alike) and got the same reply codes, 1
//!   otherwise, 2 on an error.
//!
//! Every finding names the reply the student's server gave, what it means and the RFC section,
//! and the findings come in the order of the student's lines, each said once.
//!
//! Only commands and reply codes are compared: reply texts, host names and message text differ
//! from server to server and from day to day, and do not change what happened.
//! A POP3 or IMAP session (`# protocol:`) is not compared: the command says to replay it.
//!
//! Standards: RFC 5321 §4.1.4, §4.2.1, §4.2.3

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;

use crate::lab::transcript::{align, is_last_reply_line, Line, Pair, Protocol, Transcript};
use crate::visible::sanitize;

/// The server's first reply, before any command; it is compared like a command's reply.
const GREETING: &str = "greeting";
/// The line with a single dot that ends the message text (RFC 5321 §4.1.1.4).
const END_OF_DATA: &str = ".";
/// A client line answering a 334 challenge (RFC 4954 §4).
const AUTH_RESPONSE: &str = "AUTH response";
/// Lines typed as a message after DATA was refused: the server reads each one as a command.
const TEXT_WITHOUT_DATA: &str = "message text";
/// Verbs that end message text typed after a refused DATA: the student has noticed.
const COMMAND_VERBS: [&str; 14] = [
    "HELO",
    "EHLO",
    "MAIL FROM",
    "RCPT TO",
    "DATA",
    "RSET",
    "NOOP",
    "QUIT",
    "VRFY",
    "EXPN",
    "HELP",
    "AUTH",
    "STARTTLS",
    "BDAT",
];

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
    /// The reference sends `verb` (at `reference_lines`, one per time); the student never did.
    Missing {
        verb: String,
        reference_lines: Vec<usize>,
    },
    /// The student sent `verb`, which the reference does not send at that point, and got `reply`.
    Extra {
        verb: String,
        your_line: usize,
        /// The last of several such lines in a row (message text typed after a refused DATA).
        through: usize,
        reply: Option<u16>,
        /// The command the reference sends just before `verb`, when it sends `verb` at all.
        reference_after: Option<String>,
        /// The student's next command was the same one again (a retry after a refusal).
        retried: bool,
    },
    /// The student sent `first` before `then`; the reference sends them the other way round.
    OutOfOrder {
        first: String,
        then: String,
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
    /// After DATA got no `354`: a student who goes on typing the message.
    RefusedText,
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
                ("DATA", Some(_)) => Expecting::RefusedText,
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
        Expecting::RefusedText => {
            let verb = verb_of(text);
            if COMMAND_VERBS.contains(&verb.as_str()) {
                *expecting = Expecting::Command;
                return Some(verb);
            }
            if text == END_OF_DATA {
                *expecting = Expecting::Command;
            }
            Some(TEXT_WITHOUT_DATA.to_string())
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

// ANCHOR: compare
/// Lines up the two sessions' commands and lists what differs, in the order of the student's
/// lines. A command refused for its syntax or its place (500, 501, 503, 504, 555) and sent again
/// at once is a retry: it is told as what the server said, and the retry is lined up instead.
pub fn compare(mine: &Transcript, reference: &Transcript) -> Vec<Finding> {
    let (all_mine, reference) = (commands(mine), commands(reference));
    let (mut retries, mut mine) = (Vec::new(), Vec::new());
    for (i, command) in all_mine.iter().enumerate() {
        if is_retried(command, all_mine.get(i + 1)) {
            retries.push(command);
        } else {
            mine.push(command);
        }
    }
    let pairs = align(mine.len(), reference.len(), |i, j| {
        same_step(mine[i], &reference[j])
    });
    let mut unmatched_mine: Vec<usize> = pairs
        .iter()
        .filter_map(|pair| match pair {
            Pair::OnlyLeft(i) => Some(*i),
            _ => None,
        })
        .collect();
    // Each finding with the student's line it goes at; a missing command goes where it was
    // due, after `anchor`, the student's line of the last command both sessions share.
    let mut placed: Vec<(usize, Finding)> = retries
        .iter()
        .map(|command| (command.line_no, extra(command, &reference, true)))
        .collect();
    let mut anchor = 0;
    for pair in &pairs {
        match *pair {
            Pair::Both(i, j) => {
                anchor = mine[i].line_no;
                placed.extend(different_reply(mine[i], &reference[j]).map(|f| (anchor, f)));
            }
            Pair::OnlyRight(j) => {
                let verb = &reference[j].verb;
                let candidate = unmatched_mine
                    .iter()
                    .position(|&i| same_step(mine[i], &reference[j]));
                match candidate {
                    Some(at) => {
                        let i = unmatched_mine.remove(at);
                        let moved = out_of_order(&mine, i, &reference, j, &pairs);
                        let line = moved.your_line();
                        placed.push((line, moved));
                        placed.extend(different_reply(mine[i], &reference[j]).map(|f| (line, f)));
                    }
                    None if follows_from_refused_data(verb, &mine) => {}
                    // A command the student sent and had refused is told once, at the refusal.
                    None if refused_in_place(verb, &all_mine, anchor) => {}
                    None => placed.push((
                        anchor,
                        Finding::Missing {
                            verb: verb.clone(),
                            reference_lines: vec![reference[j].line_no],
                        },
                    )),
                }
            }
            Pair::OnlyLeft(_) => {}
        }
    }
    placed.extend(
        unmatched_mine
            .into_iter()
            .map(|i| (mine[i].line_no, extra(mine[i], &reference, false))),
    );
    placed.sort_by_key(|(line, _)| *line);
    merge_repeats(placed.into_iter().map(|(_, finding)| finding))
}
// ANCHOR_END: compare

/// A command refused for how or when it was typed, and sent again as the very next command.
fn is_retried(command: &Command, next: Option<&Command>) -> bool {
    matches!(command.reply, Some(500 | 501 | 503 | 504 | 555))
        && next.is_some_and(|next| next.verb == command.verb)
}

/// One finding for each thing that happened: the same command missing twice in a row (two
/// recipients) is one finding with two reference lines, and a finding said twice is said once.
fn merge_repeats(findings: impl Iterator<Item = Finding>) -> Vec<Finding> {
    let mut merged: Vec<Finding> = Vec::new();
    for finding in findings {
        if let Some(last) = merged.last_mut() {
            if absorb(last, &finding) {
                continue;
            }
        }
        if !merged.contains(&finding) {
            merged.push(finding);
        }
    }
    merged
}

/// Fold `next` into `last` when both tell the same thing: the same command missing again, or
/// more lines of message text after a refused DATA.
fn absorb(last: &mut Finding, next: &Finding) -> bool {
    match (last, next) {
        (
            Finding::Missing {
                verb,
                reference_lines,
            },
            Finding::Missing {
                verb: next_verb,
                reference_lines: more,
            },
        ) if verb == next_verb => {
            reference_lines.extend(more);
            true
        }
        (
            Finding::Extra {
                verb,
                through,
                reply,
                ..
            },
            Finding::Extra {
                verb: next_verb,
                your_line,
                reply: next_reply,
                ..
            },
        ) if verb == next_verb && reply == next_reply && verb == TEXT_WITHOUT_DATA => {
            *through = *your_line;
            true
        }
        _ => false,
    }
}

/// A command of the student's that the reference does not send there.
fn extra(command: &Command, reference: &[Command], retried: bool) -> Finding {
    let reference_after = reference
        .iter()
        .position(|r| r.verb == command.verb)
        .map(|at| {
            at.checked_sub(1)
                .map_or_else(|| name(GREETING), |k| name(&reference[k].verb))
        });
    Finding::Extra {
        verb: command.verb.clone(),
        your_line: command.line_no,
        through: command.line_no,
        reply: command.reply,
        reference_after,
        retried,
    }
}

/// Two commands are the same step of a session when they have the same verb, HELO and EHLO
/// counting as one (RFC 5321 §4.1.1.1, two ways to say hello), unless one was refused as out of
/// sequence (503) and the other was not: a RCPT TO refused before MAIL FROM is not the RCPT TO
/// of the transaction, the state machine did not move for it (RFC 5321 §4.1.4).
fn same_step(mine: &Command, reference: &Command) -> bool {
    let hello = |verb: &str| verb == "HELO" || verb == "EHLO";
    let same_verb = mine.verb == reference.verb || (hello(&mine.verb) && hello(&reference.verb));
    let out_of_sequence = |command: &Command| command.reply == Some(503);
    same_verb && out_of_sequence(mine) == out_of_sequence(reference)
}

/// Did the student send `verb` where it was due (after line `due_after`) and get a refusal
/// (4xx or 5xx)? Then the refusal says it all: "never sent" would be a second finding. Sent too
/// early (RCPT TO before MAIL FROM) it is missing still where it was due.
fn refused_in_place(verb: &str, mine: &[Command], due_after: usize) -> bool {
    mine.iter().any(|command| {
        command.verb == verb
            && command.line_no > due_after
            && command.reply.is_some_and(|code| code >= 400)
    })
}

/// When the server refused DATA, the student could not send message text or its final dot;
/// that is said once, at DATA, rather than a second time here.
fn follows_from_refused_data(verb: &str, mine: &[&Command]) -> bool {
    let data_accepted = mine
        .iter()
        .any(|command| command.verb == "DATA" && command.reply == Some(354));
    verb == END_OF_DATA && !data_accepted
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
    mine: &[&Command],
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
    (503, "a bad sequence of commands"),
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

/// Why the server gave this reply to this command, with the RFC section that says so.
fn why(verb: &str, code: u16) -> (&'static str, &'static str) {
    match (verb, code) {
        ("RCPT TO", 503) => (
            "a recipient belongs to a mail transaction, and only MAIL FROM opens one",
            "RFC 5321 §4.1.1.3, §4.1.4",
        ),
        ("DATA", 503 | 554) => (
            "the message needs at least one accepted RCPT TO before DATA",
            "RFC 5321 §4.1.1.4",
        ),
        ("MAIL FROM", 503) => (
            "MAIL FROM comes after HELO or EHLO, and not inside another transaction",
            "RFC 5321 §4.1.1.2, §4.1.4",
        ),
        (TEXT_WITHOUT_DATA, _) => (
            "DATA was refused, so the server read each line of the message as a command",
            "RFC 5321 §4.1.1.4",
        ),
        (_, 503) => ("", "RFC 5321 §4.1.4"),
        ("MAIL FROM" | "RCPT TO", 501) => (
            "the address goes in angle brackets, with no space after the colon: MAIL FROM:<you@example.org>",
            "RFC 5321 §4.1.2",
        ),
        (_, 501) => ("the arguments do not follow the command's syntax", "RFC 5321 §4.1.2"),
        (_, 500) => ("check the spelling of the command", "RFC 5321 §4.2.4"),
        ("RCPT TO", 550) => (
            "there is no such mailbox here: check the spelling of the address",
            "RFC 5321 §4.2.3",
        ),
        (_, 530) => ("the server wants AUTH first", "RFC 4954 §6"),
        (_, 535) => ("the user name or password is wrong", "RFC 4954 §6"),
        (_, code) if REPLY_CODES.iter().any(|(known, _)| *known == code) => {
            ("", "RFC 5321 §4.2.3")
        }
        _ => ("", "RFC 5321 §4.2.1"),
    }
}

/// `503, a bad sequence of commands: a recipient belongs to ... (RFC 5321 §4.1.4)`.
fn reply_words(verb: &str, code: u16) -> String {
    let (reason, section) = why(verb, code);
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    format!("{code}, {}{reason} ({section})", meaning(code))
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

impl Finding {
    /// The student's line the finding is about (0 for a command the student never sent).
    pub fn your_line(&self) -> usize {
        match self {
            Finding::Missing { .. } => 0,
            Finding::Extra { your_line, .. }
            | Finding::OutOfOrder { your_line, .. }
            | Finding::DifferentReply { your_line, .. } => *your_line,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Finding::Missing { verb, reference_lines } if verb == GREETING => write!(
                f,
                "Your transcript has no server greeting (reference line {}).",
                lines_text(reference_lines)
            ),
            Finding::Missing { verb, reference_lines } => write!(
                f,
                "Your session never sent {} (reference {} {}): {}",
                name(verb),
                if reference_lines.len() == 1 { "line" } else { "lines" },
                lines_text(reference_lines),
                why_needed(verb)
            ),
            Finding::Extra { verb, your_line, through, reply, reference_after, retried } => {
                if through > your_line {
                    write!(f, "You sent {} (your lines {your_line}–{through})", name(verb))?;
                } else {
                    write!(f, "You sent {} (your line {your_line})", name(verb))?;
                }
                match reply {
                    Some(code) => write!(f, " and the server answered {}.", reply_words(verb, *code))?,
                    None => write!(f, " and the session ended before the server answered.")?,
                }
                if verb == TEXT_WITHOUT_DATA {
                    write!(f, " Fix what DATA was refused for, then send DATA and wait for 354.")
                } else if *retried {
                    write!(f, " You sent it again at once, as a client should after a refusal.")
                } else if let Some(after) = reference_after {
                    write!(f, " The reference sends {} only after {after}.", name(verb))
                } else {
                    write!(f, " The reference does not send it.")
                }
            }
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
                    "At {} (your line {your_line}, reference line {reference_line}) the reference got {} but you got ",
                    name(verb),
                    code_text(*reference),
                )?;
                match yours {
                    None => write!(f, "no reply: the session ended before the server answered."),
                    Some(code) => write!(f, "{}.", reply_words(verb, *code)),
                }
            }
        }
    }
}

fn lines_text(lines: &[usize]) -> String {
    let lines: Vec<String> = lines.iter().map(usize::to_string).collect();
    lines.join(", ")
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
    // The findings speak of SMTP verbs and reply codes; a POP3 or IMAP session is checked by
    // replaying it instead, which compares each response's status.
    for (file, transcript) in [(mine, &mine_transcript), (reference, &reference_transcript)] {
        let protocol = transcript.header.protocol;
        if protocol != Protocol::Smtp {
            eprintln!(
                "{}",
                sanitize(&format!(
                    "{file} is a {} session; compare lines up SMTP sessions. Replay it instead: \
                     smtplab replay {file} --server HOST:PORT --codes-only",
                    protocol.name()
                ))
            );
            return 2;
        }
    }
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

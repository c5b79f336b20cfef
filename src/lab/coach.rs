//! The classroom layer around the SMTP session: coaching, `--explain` and `--fault`. The session
//! (`smtp/session.rs`) is the protocol alone; everything a teacher switches on happens here,
//! before a line reaches `Session::step` or after its replies come back.
//!
//! Interface:
//! - `Coach::new(session, config)` wraps one session; `Coach` derefs to the `Session` for what
//!   the connection asks without stepping (the state, the id, chunk pieces, TLS).
//! - `greeting`, `command(line)`, `refuse_line(reply)`, `end_of_data(content)` and
//!   `chunk(kept, size)` each take one step and return the session's `Step`, its replies coached
//!   and explained; `fired()` is the `--fault` rule that answered that step, for `--trace`.
//! - Coaching changes the text of a reply, never its code: a program sees what it would see
//!   from any server.
//!
//! Standards: RFC 5321 §4.1.4, §4.2, §4.1.2, §3.8

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::config::Config;
use crate::lab::fault::{self, Point};
use crate::lab::trace;
use crate::smtp::body::Body;
use crate::smtp::command::{self, Command};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Input, Session, State, StateName, Step, Trigger};

/// One session with the classroom tools around it.
pub struct Coach {
    session: Session,
    config: Arc<Config>,
    /// `--fault`: how often each point was reached in this session.
    faults: fault::Counter,
    /// The rule that answered the last step, if one did.
    fired: Option<String>,
}

impl Deref for Coach {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

impl DerefMut for Coach {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

impl Coach {
    pub fn new(session: Session, config: Arc<Config>) -> Coach {
        Coach {
            session,
            config,
            faults: fault::Counter::default(),
            fired: None,
        }
    }

    /// The `--fault` rule that answered the last step instead of the server, for `--trace`.
    pub fn fired(&self) -> Option<&str> {
        self.fired.as_deref()
    }

    /// The 220 greeting; with `--explain` it gets its note too: clients read only its code.
    pub fn greeting(&self) -> Reply {
        let greeting = self.session.greeting();
        if self.config.explain {
            return trace::explain(greeting, "RFC 5321 §3.1", StateName::Connected, false);
        }
        greeting
    }

    // ANCHOR: command
    /// One line from the client: a `--fault` rule may answer before the session does; a line
    /// that is no command is coached; a SASL response is never explained (it is a secret).
    pub fn command(&mut self, line: &[u8]) -> Step {
        let input = self.session.input(line);
        let ehlo = matches!(&input, Input::Command(Command::Ehlo(_)));
        let input = match input {
            Input::Command(command) => self.scripted_fault(command),
            Input::Invalid { reply, rfc } => Input::Invalid {
                reply: coach_parse_error(self.session.state().name(), line, reply),
                rfc,
            },
            sasl => return self.step(sasl),
        };
        let mut step = self.step(input);
        coach_space_after_colon(line, &mut step.replies);
        self.explained(step, ehlo)
    }
    // ANCHOR_END: command

    /// A line the connection refused before parsing (too long, bare CR): it counts as an error.
    pub fn refuse_line(&mut self, reply: Reply) -> Step {
        let rfc = "RFC 5321 §4.5.3.1.4";
        let step = self.step(Input::Invalid { reply, rfc });
        self.explained(step, false)
    }

    /// The end of the message data; a `--fault eod` rule answers instead, and nothing is stored.
    pub fn end_of_data(&mut self, content: Result<Body, Reply>) -> Step {
        let refusal = (self.session.state().name() == StateName::Data)
            .then(|| self.fault_at(Point::EndOfData, None, Trigger::EndOfData))
            .flatten();
        let step = self.step(refusal.unwrap_or(Input::EndOfData(content)));
        self.explained(step, false)
    }

    /// A BDAT chunk has been read (`kept` are octets not yet handed over as pieces). After the
    /// LAST chunk, a `--fault eod` rule answers instead of the delivery.
    pub fn chunk(&mut self, kept: Vec<u8>, size: u64) -> Step {
        self.session.chunk_piece(&kept);
        let last = matches!(self.session.state(), State::Chunking { last: true, .. });
        let refusal = last
            .then(|| self.fault_at(Point::EndOfData, None, Trigger::LastChunk))
            .flatten();
        let step = self.step(refusal.unwrap_or(Input::Chunk(size)));
        self.explained(step, false)
    }

    /// Step the session. `fired` keeps the rule only for the step that rule answered.
    fn step(&mut self, input: Input) -> Step {
        if !matches!(input, Input::Refusal { .. }) {
            self.fired = None;
        }
        self.session.step(input)
    }

    // ANCHOR: scripted_fault
    /// `--fault`: a rule for this command answers instead of the server, before the command is
    /// handled, so the state does not change, as with any refusal (RFC 5321 §4.1.4).
    fn scripted_fault(&mut self, command: Command) -> Input {
        let verb = command.verb();
        let address = match &command {
            Command::Mail { path, .. } => Some(path.to_string()),
            Command::Rcpt { path, .. } => Some(path.to_string()),
            _ => None,
        };
        let on = Trigger::Command(verb);
        self.fault_at(Point::Command(verb), address.as_deref(), on)
            .unwrap_or(Input::Command(command))
    }

    /// Count one arrival at `point`; if a rule fires, the session is told to answer with its
    /// reply, or to close without one.
    fn fault_at(&mut self, point: Point, address: Option<&str>, on: Trigger) -> Option<Input> {
        let rule = self.faults.check(&self.config.faults, point, address)?;
        self.fired = Some(rule.text.clone());
        Some(Input::Refusal {
            on,
            reply: rule.reply(),
        })
    }
    // ANCHOR_END: scripted_fault

    /// `--explain`: every reply of the step ends with its RFC section and the next command.
    fn explained(&self, mut step: Step, ehlo: bool) -> Step {
        if self.config.explain {
            step.replies = step
                .replies
                .into_iter()
                .map(|reply| trace::explain(reply, step.rfc, step.to, ehlo))
                .collect();
        }
        step
    }
}

// ANCHOR: coach_parse_error
/// A line that is not a command but looks like message text (`Subject: hi`, or the lone
/// dot) was meant for DATA: the code stays 500, the text says what to do instead.
fn coach_parse_error(state: StateName, line: &[u8], reply: Reply) -> Reply {
    let lone_dot = line == b".";
    if !lone_dot && !command::looks_like_header(line) {
        return reply;
    }
    let what = if lone_dot {
        "A lone dot ends a message only after DATA and its 354 reply"
    } else {
        "This looks like message text"
    };
    let todo = match state {
        StateName::RcptGiven => "type DATA first and wait for 354",
        StateName::MailGiven => "add RCPT TO:<recipient>, then type DATA and wait for 354",
        StateName::Greeted => "send MAIL FROM and RCPT TO, then type DATA and wait for 354",
        StateName::Connected => {
            "say HELO first, then MAIL FROM, RCPT TO and DATA, and wait for 354"
        }
        _ => return reply,
    };
    reply.text(format!("{what}; {todo}"))
}
// ANCHOR_END: coach_parse_error

/// DEVIATION (see `command::keyword_colon`): `MAIL FROM: <x>` is accepted, and the reply says
/// that the grammar has no space there, so a student learns the rule without being stopped.
fn coach_space_after_colon(line: &[u8], replies: &mut [Reply]) {
    if !command::space_after_colon(line) {
        return;
    }
    if let Some(reply) = replies.first_mut().filter(|r| r.code == 250) {
        let text = format!(
            "{} (accepted, but RFC 5321 §4.1.2 has no space after the colon)",
            reply.text
        );
        *reply = reply.clone().text(text);
    }
}

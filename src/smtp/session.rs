//! The SMTP session: one `enum State`, one transition table, and `Session::step`, the one place
//! where the state changes.
//!
//! Interface:
//! - `TRANSITIONS`, the table of legal moves (from, trigger, to, RFC section). `step` refuses
//!   every command the table does not list with 503, and `smtplab states` draws the same table
//!   (`label` names each trigger in a picture).
//! - `Session::input(line)` says what a line is (a command, a SASL response, or a refusal);
//!   `Session::step(input)` hands the state and the input to a handler, which takes what it
//!   needs (the envelope, the chunks so far) by value and returns the next state and the
//!   replies; `step` keeps the new state and returns a `Step`: the replies, the move, and
//!   whether to read a command next, read message data, read a chunk, start TLS, or close.
//!   A debug assertion checks every move against the table.
//! - The envelope a transaction gathers, and the `Deliver` hook that takes the message at the
//!   end of DATA, are in `envelope.rs`.
//!
//! No sockets, no files, no classroom tools here: the session is tested line by line without a
//! network, and `lab/coach.rs` adds coaching, `--explain` and `--fault` around `step`.
//!
//! Standards: RFC 5321 §3.3, §4.1.1, §4.1.4, §4.3.2, §3.5, §7.8, §3.8

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::machine;
use crate::smtp::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::smtp::auth::{self, Credentials, Exchange, Sasl};
use crate::smtp::auth_budget::{shut_out_text, Verdict};
use crate::smtp::body::Body;
use crate::smtp::command::{self, Command, Param, Verb, VERBS};
use crate::smtp::data::ChunkReader;
use crate::smtp::envelope::{Client, Deliver, Envelope, Message, Recipient, Route};
use crate::smtp::extensions::{self, BodyType, Limits, Offer};
use crate::smtp::reply::Reply;

// ANCHOR: state
/// Where a session is. Variants carry the data of their phase, so no flag stands in for a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Connected and greeted with 220; waiting for HELO or EHLO.
    Connected,
    /// The client said HELO/EHLO; no transaction is open.
    Greeted,
    /// MAIL FROM was accepted.
    MailGiven { envelope: Envelope },
    /// At least one RCPT TO was accepted.
    RcptGiven { envelope: Envelope },
    /// 354 was sent; the connection is reading the message.
    Data { envelope: Envelope },
    /// BDAT chunks are arriving (RFC 3030): `octets` so far, `last` once BDAT ... LAST came.
    Chunking {
        envelope: Envelope,
        content: ChunkReader,
        octets: u64,
        last: bool,
    },
    /// AUTH sent 334 and waits for the client's SASL response (RFC 4954 §4).
    Authenticating { exchange: Exchange },
    /// QUIT, or the server closed the session.
    Closed,
}
// ANCHOR_END: state

/// The name of a state, without its data: what the table and the diagram use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateName {
    Connected,
    Greeted,
    MailGiven,
    RcptGiven,
    Data,
    Chunking,
    Authenticating,
    Closed,
}

/// What moves a session: a command, or the end of the message data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Command(Verb),
    EndOfData,
    /// The chunk of `BDAT ... LAST` has arrived.
    LastChunk,
    /// The client's answer to a 334 challenge.
    SaslResponse,
}

/// One legal move of an SMTP session (see `src/machine.rs`).
pub type Transition = machine::Transition<StateName, Trigger>;

const fn row(from: StateName, verb: Verb, to: StateName, rfc: &'static str) -> Transition {
    Transition {
        from,
        on: Trigger::Command(verb),
        to,
        rfc,
    }
}

use StateName::{Authenticating, Chunking, Closed, Connected, Data, Greeted, MailGiven, RcptGiven};

// ANCHOR: transitions
/// Every legal move of an SMTP server session. Anything else gets 503 (RFC 5321 §4.1.4).
#[rustfmt::skip]
pub const TRANSITIONS: &[Transition] = &[
    row(Connected, Verb::Ehlo, Greeted,   "RFC 5321 §4.1.1.1"),
    row(Connected, Verb::Helo, Greeted,   "RFC 5321 §4.1.1.1"),
    row(Greeted,   Verb::Ehlo, Greeted,   "RFC 5321 §4.1.4"),
    row(Greeted,   Verb::Helo, Greeted,   "RFC 5321 §4.1.4"),
    row(Greeted,   Verb::Mail, MailGiven, "RFC 5321 §4.1.1.2"),
    row(MailGiven, Verb::Rcpt, RcptGiven, "RFC 5321 §4.1.1.3"),
    row(RcptGiven, Verb::Rcpt, RcptGiven, "RFC 5321 §4.1.1.3"),
    row(RcptGiven, Verb::Data, Data,      "RFC 5321 §4.1.1.4"),
    Transition { from: Data, on: Trigger::EndOfData, to: Greeted, rfc: "RFC 5321 §4.1.1.4" },
    row(RcptGiven, Verb::Bdat, Chunking,  "RFC 3030 §2"),
    row(Chunking,  Verb::Bdat, Chunking,  "RFC 3030 §2"),
    Transition { from: Chunking, on: Trigger::LastChunk, to: Greeted, rfc: "RFC 3030 §2" },
    // STARTTLS resets the session to its initial state (RFC 3207 §4.2): EHLO again.
    row(Greeted,   Verb::Starttls, Connected, "RFC 3207 §4.2"),
    row(Greeted,   Verb::Auth, Authenticating, "RFC 4954 §4"),
    Transition { from: Authenticating, on: Trigger::SaslResponse, to: Greeted, rfc: "RFC 4954 §4" },
    // A new HELO/EHLO or RSET drops the transaction "exactly as if a RSET command had been issued".
    row(MailGiven, Verb::Ehlo, Greeted,   "RFC 5321 §4.1.4"),
    row(MailGiven, Verb::Helo, Greeted,   "RFC 5321 §4.1.4"),
    row(RcptGiven, Verb::Ehlo, Greeted,   "RFC 5321 §4.1.4"),
    row(RcptGiven, Verb::Helo, Greeted,   "RFC 5321 §4.1.4"),
    row(Chunking,  Verb::Ehlo, Greeted,   "RFC 5321 §4.1.4"),
    row(Chunking,  Verb::Helo, Greeted,   "RFC 5321 §4.1.4"),
    row(Connected, Verb::Rset, Connected, "RFC 5321 §4.1.1.5"),
    row(Chunking,  Verb::Rset, Greeted,   "RFC 3030 §4"),
    row(Greeted,   Verb::Rset, Greeted,   "RFC 5321 §4.1.1.5"),
    row(MailGiven, Verb::Rset, Greeted,   "RFC 5321 §4.1.1.5"),
    row(RcptGiven, Verb::Rset, Greeted,   "RFC 5321 §4.1.1.5"),
    // "NOOP, HELP, EXPN, VRFY, and RSET ... SHOULD be processed normally" in any state (§4.1.4).
    row(Connected, Verb::Noop, Connected, "RFC 5321 §4.1.1.9"),
    row(Greeted,   Verb::Noop, Greeted,   "RFC 5321 §4.1.1.9"),
    row(MailGiven, Verb::Noop, MailGiven, "RFC 5321 §4.1.1.9"),
    row(RcptGiven, Verb::Noop, RcptGiven, "RFC 5321 §4.1.1.9"),
    row(Chunking,  Verb::Noop, Chunking,  "RFC 5321 §4.1.1.9"),
    row(Connected, Verb::Help, Connected, "RFC 5321 §4.1.1.8"),
    row(Greeted,   Verb::Help, Greeted,   "RFC 5321 §4.1.1.8"),
    row(MailGiven, Verb::Help, MailGiven, "RFC 5321 §4.1.1.8"),
    row(RcptGiven, Verb::Help, RcptGiven, "RFC 5321 §4.1.1.8"),
    row(Connected, Verb::Vrfy, Connected, "RFC 5321 §4.1.1.6"),
    row(Greeted,   Verb::Vrfy, Greeted,   "RFC 5321 §4.1.1.6"),
    row(MailGiven, Verb::Vrfy, MailGiven, "RFC 5321 §4.1.1.6"),
    row(RcptGiven, Verb::Vrfy, RcptGiven, "RFC 5321 §4.1.1.6"),
    row(Connected, Verb::Expn, Connected, "RFC 5321 §4.1.1.7"),
    row(Greeted,   Verb::Expn, Greeted,   "RFC 5321 §4.1.1.7"),
    row(MailGiven, Verb::Expn, MailGiven, "RFC 5321 §4.1.1.7"),
    row(RcptGiven, Verb::Expn, RcptGiven, "RFC 5321 §4.1.1.7"),
    row(Connected, Verb::Quit, Closed,    "RFC 5321 §4.1.1.10"),
    row(Greeted,   Verb::Quit, Closed,    "RFC 5321 §4.1.1.10"),
    row(MailGiven, Verb::Quit, Closed,    "RFC 5321 §4.1.1.10"),
    row(RcptGiven, Verb::Quit, Closed,    "RFC 5321 §4.1.1.10"),
    row(Chunking,  Verb::Quit, Closed,    "RFC 5321 §4.1.1.10"),
    // ETRN starts the queue for a domain; not inside a transaction (RFC 1985 §5).
    row(Greeted,   Verb::Etrn, Greeted,   "RFC 1985 §5"),
];
// ANCHOR_END: transitions

/// How each trigger of the SMTP table is labelled in a picture.
pub fn label(on: &Trigger) -> String {
    match on {
        Trigger::Command(verb) => verb.name().to_string(),
        Trigger::EndOfData => "end of data".to_string(),
        Trigger::LastChunk => "last chunk".to_string(),
        Trigger::SaslResponse => "SASL response".to_string(),
    }
}

/// The legal move for `verb` in state `from`, if there is one.
pub fn transition(from: StateName, verb: Verb) -> Option<&'static Transition> {
    machine::find(TRANSITIONS, from, Trigger::Command(verb))
}

/// The role of the listener a client came in on (RFC 6409 §3, RFC 8314 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Port 25: mail for local domains from anyone; relaying only for AUTH or `--relay-from`.
    Relay,
    /// Port 587 (`--submission`): a user's own mail client; AUTH before MAIL.
    Submission,
    /// Port 465 (`--smtps`): submission inside TLS from the first byte.
    ImplicitTls,
}

impl Role {
    /// The listener's name in the banner and on the web view.
    pub fn name(self) -> &'static str {
        match self {
            Role::Relay => "SMTP",
            Role::Submission => "submission",
            Role::ImplicitTls => "SMTPS",
        }
    }
}

/// What the listener offers this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub role: Role,
    /// TLS is configured (so STARTTLS can be offered while the connection is in the clear).
    pub tls_available: bool,
}

/// What the connection should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    ReadCommand,
    ReadData,
    /// Read exactly this many octets (a BDAT chunk), then step with `Input::Chunk`.
    ReadChunk(u64),
    /// Send the replies, drop any unread input, and run the TLS handshake.
    StartTls,
    Close,
}

/// What the session is given to take one step.
#[derive(Debug)]
pub enum Input {
    /// A command line, parsed.
    Command(Command),
    /// A line that is no command: the parser's refusal, or the connection's (too long, bare
    /// CR). The state stays; the reply counts as an error.
    Invalid { reply: Reply, rfc: &'static str },
    /// The client's answer to a 334 challenge (RFC 4954 §4).
    SaslResponse(Vec<u8>),
    /// The message after DATA, or the reply that says why it was not taken (too big, bad bytes).
    EndOfData(Result<Body, Reply>),
    /// A BDAT chunk of this many octets has been read (its octets went to `chunk_piece`).
    Chunk(u64),
    /// Another part of the server answers `on` before the session handles it: with `reply`,
    /// or by closing without one (`None`). Refusing the end of a message ends its transaction.
    Refusal { on: Trigger, reply: Option<Reply> },
}

/// The outcome of one step: the replies, what to do next, and the move it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub replies: Vec<Reply>,
    pub next: Next,
    pub from: StateName,
    pub to: StateName,
    /// The RFC section of the command or transition, for `--trace` and `--explain`.
    pub rfc: &'static str,
}

/// What a handler decides: the state to move to, the replies, and what the connection does
/// next. Only `Session::step` turns it into the session's state.
struct Outcome {
    state: State,
    replies: Vec<Reply>,
    next: Next,
}

impl Outcome {
    /// One reply, then read the next command.
    fn reply(state: State, reply: Reply) -> Outcome {
        Outcome {
            state,
            replies: vec![reply],
            next: Next::ReadCommand,
        }
    }

    /// No reply yet: read a BDAT chunk first, the reply comes after it.
    fn read_chunk(state: State, size: u64) -> Outcome {
        Outcome {
            state,
            replies: Vec::new(),
            next: Next::ReadChunk(size),
        }
    }

    /// These replies, then end the session.
    fn close(replies: Vec<Reply>) -> Outcome {
        Outcome {
            state: State::Closed,
            replies,
            next: Next::Close,
        }
    }

    fn then(self, next: Next) -> Outcome {
        Outcome { next, ..self }
    }
}

/// One client's session.
pub struct Session {
    state: State,
    client: Client,
    endpoint: Endpoint,
    config: Arc<Config>,
    deliver: Arc<dyn Deliver>,
    errors: u32,
    auth_failures: u32,
    id: String,
    messages: u32,
}

/// RFC 4954 §4 leaves the number of tries to the server; three, then 421, stops password guessing.
pub const MAX_AUTH_FAILURES: u32 = 3;

impl State {
    pub fn name(&self) -> StateName {
        match self {
            State::Connected => Connected,
            State::Greeted => Greeted,
            State::MailGiven { .. } => MailGiven,
            State::RcptGiven { .. } => RcptGiven,
            State::Data { .. } => Data,
            State::Chunking { .. } => Chunking,
            State::Authenticating { .. } => Authenticating,
            State::Closed => Closed,
        }
    }
}

impl Input {
    /// The RFC section behind this input, for `--trace` and `--explain`.
    fn rfc(&self) -> &'static str {
        match self {
            Input::Command(command) => command.verb().info().rfc,
            Input::Invalid { rfc, .. } => rfc,
            Input::SaslResponse(_) => trigger_rfc(Trigger::SaslResponse),
            Input::EndOfData(_) => trigger_rfc(Trigger::EndOfData),
            Input::Chunk(_) => trigger_rfc(Trigger::LastChunk),
            Input::Refusal { on, .. } => trigger_rfc(*on),
        }
    }

    /// The table's trigger for this input in state `from` (`None`: the state must stay).
    fn trigger(&self, from: &State) -> Option<Trigger> {
        match self {
            Input::Command(command) => Some(Trigger::Command(command.verb())),
            Input::Invalid { .. } => None,
            Input::SaslResponse(_) => Some(Trigger::SaslResponse),
            Input::EndOfData(_) => Some(Trigger::EndOfData),
            Input::Chunk(_) if matches!(from, State::Chunking { last: true, .. }) => {
                Some(Trigger::LastChunk)
            }
            Input::Chunk(_) => Some(Trigger::Command(Verb::Bdat)),
            Input::Refusal { on, .. } => Some(*on),
        }
    }
}

fn trigger_rfc(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Command(verb) => verb.info().rfc,
        Trigger::EndOfData => "RFC 5321 §4.1.1.4",
        Trigger::LastChunk => "RFC 3030 §2",
        Trigger::SaslResponse => "RFC 4954 §4",
    }
}

/// Is `from → to` a move the table lists for `trigger`? Staying is always allowed (a refusal
/// changes nothing, RFC 5321 §4.1.4), and so is the server ending the session (§3.8).
fn listed(from: StateName, trigger: Option<Trigger>, to: StateName, next: Next) -> bool {
    let closing = to == Closed && next == Next::Close;
    closing || machine::allows(TRANSITIONS, from, trigger, to)
}

impl Session {
    pub fn new(
        config: Arc<Config>,
        deliver: Arc<dyn Deliver>,
        endpoint: Endpoint,
        (peer, local): (SocketAddr, SocketAddr),
        id: String,
    ) -> Session {
        let tls = endpoint.role == Role::ImplicitTls;
        Session {
            state: State::Connected,
            client: Client {
                peer,
                local,
                helo: None,
                esmtp: false,
                tls,
                user: None,
            },
            endpoint,
            config,
            deliver,
            errors: 0,
            auth_failures: 0,
            id,
            messages: 0,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// RFC 5321 §4.2: "220 <domain> Service ready", with a hint for a student at a telnet prompt.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", "").text(format!(
            "{} ESMTP smtplab ready; type HELO <your-name> to start, or HELP",
            self.config.hostname
        ))
    }

    /// What a line from the client is: a SASL response while AUTH waits for one, otherwise a
    /// command, or the parser's refusal (RFC 5321 §4.2.4). Reading changes nothing.
    pub fn input(&self, line: &[u8]) -> Input {
        if let State::Authenticating { .. } = self.state {
            return Input::SaslResponse(line.to_vec());
        }
        match command::parse(line) {
            Ok(command) => Input::Command(command),
            Err(reply) => Input::Invalid {
                reply,
                rfc: "RFC 5321 §4.2.4",
            },
        }
    }

    // ANCHOR: step
    /// The one place where the state changes: hand the current state and the input to a
    /// handler, count the errors, check the move against the table, keep the new state.
    pub fn step(&mut self, input: Input) -> Step {
        let from = self.state.name();
        let rfc = input.rfc();
        let trigger = input.trigger(&self.state);
        // The handler owns the state while it runs; `Closed` only fills the gap until then.
        let state = std::mem::replace(&mut self.state, State::Closed);
        let outcome = match input {
            Input::Command(command) => self.command(state, command),
            Input::Invalid { reply, .. } => Outcome::reply(state, reply),
            Input::SaslResponse(line) => self.sasl_response(state, &line),
            Input::EndOfData(content) => self.end_of_data(state, content),
            Input::Chunk(size) => self.chunk(state, size),
            Input::Refusal { on, reply } => refusal(state, on, reply),
        };
        let Outcome {
            state,
            replies,
            next,
        } = self.count_errors(outcome);
        let to = state.name();
        debug_assert!(
            listed(from, trigger, to, next),
            "{from:?} → {to:?} on {trigger:?} is not in TRANSITIONS"
        );
        self.state = state;
        Step {
            replies,
            next,
            from,
            to,
            rfc,
        }
    }
    // ANCHOR_END: step

    /// Count errors; at the limit add 421 and close (RFC 5321 §7.8, as Postfix's hard error limit).
    fn count_errors(&mut self, outcome: Outcome) -> Outcome {
        self.errors += outcome.replies.iter().filter(|r| r.is_error()).count() as u32;
        if self.errors < self.config.max_errors || outcome.next == Next::Close {
            return outcome;
        }
        let mut replies = outcome.replies;
        replies.push(Reply::TOO_MANY_ERRORS_421);
        Outcome::close(replies)
    }

    // ANCHOR: dispatch
    /// The table decides whether a command is legal here; one handler per verb does the work,
    /// given what it needs of the state (the envelope, the chunks so far) by value.
    fn command(&mut self, state: State, command: Command) -> Outcome {
        let verb = command.verb();
        if verb.is_obsolete() {
            return Outcome::reply(state, obsolete(verb));
        }
        if transition(state.name(), verb).is_none() {
            // A refused BDAT is still followed by its chunk: read and drop it, then answer
            // (in `chunk`), or the chunk's bytes would be taken for commands.
            if let Command::Bdat { size, .. } = command {
                return Outcome::read_chunk(state, size);
            }
            let reply = out_of_order(&state, verb);
            return Outcome::reply(state, reply);
        }
        match (state, command) {
            (_, Command::Helo(name)) => self.helo(name, false),
            (_, Command::Ehlo(name)) => self.helo(name, true),
            (state, Command::Mail { path, params }) => self.mail(state, path, &params),
            (
                State::MailGiven { envelope } | State::RcptGiven { envelope },
                Command::Rcpt { path, params },
            ) => self.rcpt(envelope, path, &params),
            (State::RcptGiven { envelope }, Command::Data) => data(envelope),
            (State::RcptGiven { envelope }, Command::Bdat { size, last }) => {
                let content = ChunkReader::new(
                    envelope.options.body == BodyType::BinaryMime,
                    &self.config.mail_dir,
                );
                chunking(envelope, content, 0, last, size)
            }
            (
                State::Chunking {
                    envelope,
                    content,
                    octets,
                    ..
                },
                Command::Bdat { size, last },
            ) => chunking(envelope, content, octets, last, size),
            (state, Command::Rset) => rset(state),
            (state, Command::Vrfy(name)) => Outcome::reply(state, self.vrfy(&name)),
            (state, Command::Expn(name)) => Outcome::reply(state, self.expn(&name)),
            (state, Command::Help(topic)) => {
                let reply = help(state.name(), topic.as_deref());
                Outcome::reply(state, reply)
            }
            (state, Command::Noop) => Outcome::reply(state, Reply::OK_250),
            (_, Command::Quit) => self.quit(),
            (state, Command::Starttls) => self.starttls(state),
            (state, Command::Etrn(node)) => Outcome::reply(state, self.etrn(&node)),
            (state, Command::Auth { mechanism, initial }) => {
                let outcome = self.auth(state, &mechanism, initial.as_deref());
                self.after_auth(outcome)
            }
            // The table let the verb through, but not in this state: refuse it all the same.
            (state, command) => {
                let reply = out_of_order(&state, command.verb());
                Outcome::reply(state, reply)
            }
        }
    }
    // ANCHOR_END: dispatch

    /// HELO and EHLO (RFC 5321 §4.1.1.1): a fresh session identity and no open transaction.
    fn helo(&mut self, name: String, esmtp: bool) -> Outcome {
        let hello = format!("{} greets {name}", self.config.hostname);
        self.client.helo = Some(name);
        self.client.esmtp = esmtp;
        if !esmtp {
            return Outcome::reply(State::Greeted, Reply::new(250, "", "").text(hello));
        }
        let offer = Offer {
            starttls: self.endpoint.tls_available && !self.client.tls,
            auth: self.offers_auth(),
            etrn: self.may_relay(),
        };
        let reply = extensions::ehlo_keywords(self.limits(), offer)
            .into_iter()
            .fold(Reply::new(250, "", "").text(hello), Reply::line);
        Outcome::reply(State::Greeted, reply)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_size: self.config.max_size,
        }
    }

    /// MAIL FROM (RFC 5321 §4.1.1.2): open a transaction.
    fn mail(&self, state: State, sender: ReversePath, params: &[Param]) -> Outcome {
        match self.open_transaction(sender, params) {
            Ok(envelope) => {
                let text = format!("Sender {} OK; next: RCPT TO:<recipient>", envelope.sender);
                Outcome::reply(
                    State::MailGiven { envelope },
                    Reply::SENDER_OK_250.text(text),
                )
            }
            Err(reply) => Outcome::reply(state, reply),
        }
    }

    /// The envelope MAIL FROM opens, or why it cannot be opened.
    fn open_transaction(&self, sender: ReversePath, params: &[Param]) -> Result<Envelope, Reply> {
        // RFC 6409 §4.3: the submission port takes mail only from users who logged in.
        if self.endpoint.role != Role::Relay && self.client.user.is_none() {
            return Err(Reply::new(
                530,
                "5.7.0",
                "Authentication required: AUTH first (this is the submission port)",
            ));
        }
        let options = extensions::mail_options(params, self.limits())?;
        if let ReversePath::Mailbox(mailbox) = &sender {
            if !options.smtputf8 && !is_ascii(mailbox) {
                return Err(Reply::NEEDS_SMTPUTF8_553);
            }
        }
        Ok(Envelope {
            sender,
            options,
            recipients: Vec::new(),
            refused_recipients: 0,
        })
    }

    /// RCPT TO (RFC 5321 §4.1.1.3): add one recipient, if it is ours.
    fn rcpt(&self, mut envelope: Envelope, path: ForwardPath, params: &[Param]) -> Outcome {
        let smtputf8 = envelope.options.smtputf8;
        // RFC 1870 §6.4: a recipient whose mailbox cannot take the declared size is refused
        // alone; the others in the transaction are unaffected.
        let declared = envelope.options.declared_size.unwrap_or(0);
        let checked = extensions::rcpt_options(params).and_then(|options| {
            let route = self.route(&path, smtputf8)?;
            self.deliver.room_for(&route, declared)?;
            Ok((route, options))
        });
        let reply = match checked {
            // RFC 5321 §4.5.3.1.10: over an implementation limit, answer 452 and keep the others.
            Ok(_) if envelope.recipients.len() >= self.config.max_recipients => {
                Reply::TOO_MANY_RECIPIENTS_452
            }
            Ok((route, options)) => {
                let text = format!("Recipient {path} OK; next: another RCPT TO, or DATA");
                envelope.recipients.push(Recipient {
                    path,
                    route,
                    options,
                });
                Reply::RECIPIENT_OK_250.text(text)
            }
            Err(reply) => {
                envelope.refused_recipients += 1;
                reply
            }
        };
        Outcome::reply(transaction_state(envelope), reply)
    }

    // ANCHOR: route
    /// Where does a forward path go? A local user or list, or (only for a client allowed to
    /// relay) another domain. Everything else is refused: no open relay (RFC 5321 §7.1).
    fn route(&self, path: &ForwardPath, smtputf8: bool) -> Result<Route, Reply> {
        let directory = &self.config.directory;
        let mailbox = match path {
            // RFC 5321 §4.5.1: <postmaster> without a domain must always work.
            ForwardPath::Postmaster => {
                return directory
                    .mailboxes("postmaster")
                    .map(Route::Local)
                    .ok_or(Reply::NO_SUCH_USER_550)
            }
            ForwardPath::Mailbox(mailbox) => mailbox,
        };
        if !smtputf8 && !is_ascii(mailbox) {
            return Err(Reply::NEEDS_SMTPUTF8_553);
        }
        if !self.is_local(&mailbox.domain) {
            return self.relay_route(mailbox);
        }
        // The local part is looked up in the table, never used as a file name as it is: a
        // `%`, `!` or quoted `@` inside it finds no user, so it is never routed elsewhere.
        let unknown = match mailbox.domain {
            // Relayed, mail for a literal naming this server would come straight back.
            Domain::Literal(_) => Reply::new(550, "5.4.6", "").text(format!(
                "No such user here, and mail for {mailbox} would loop back to this host"
            )),
            Domain::Name(_) => {
                Reply::NO_SUCH_USER_550.text(format!("No such user here: {mailbox}"))
            }
        };
        directory
            .mailboxes(&mailbox.local_part_unquoted())
            .map(Route::Local)
            .ok_or(unknown)
    }
    // ANCHOR_END: route

    // ANCHOR: relay_route
    /// RFC 5321 §3.6.2, §7.9: relaying is decided by who the client is, never by MAIL FROM.
    fn relay_route(&self, mailbox: &Mailbox) -> Result<Route, Reply> {
        if self.may_relay() {
            return Ok(Route::Relay(mailbox.clone()));
        }
        Err(Reply::RELAY_DENIED_550.text(format!(
            "Relaying denied: {} is not a domain of this server",
            mailbox.domain
        )))
    }
    // ANCHOR_END: relay_route

    /// A client that logged in, or one inside `--relay-from`.
    fn may_relay(&self) -> bool {
        let peer = self.client.peer.ip();
        self.client.user.is_some() || self.config.relay_from.iter().any(|net| net.contains(peer))
    }

    // ANCHOR: etrn
    /// ETRN (RFC 1985): only a client that may relay may start the queue; anyone else could
    /// make the server hammer a domain's hosts. The delivery hook starts the queue.
    fn etrn(&self, node: &str) -> Reply {
        if !self.may_relay() {
            return Reply::new(459, "4.7.1", "").text(format!(
                "Node {node} not allowed: only a client that may relay may start the queue"
            ));
        }
        self.deliver.etrn(node)
    }
    // ANCHOR_END: etrn

    /// A local domain by name, or an address literal naming this server: the address the
    /// client connected to, or any other form of it (`[0.0.0.0]`, `[IPv6:::ffff:...]`).
    fn is_local(&self, domain: &Domain) -> bool {
        match domain {
            Domain::Literal(ip) => {
                *ip == self.client.local.ip() || self.config.names_this_host(*ip)
            }
            Domain::Name(_) => self.config.directory.is_local_domain(domain),
        }
    }

    // ANCHOR: end_of_data
    /// The end of the message: deliver it through the hook; the transaction is over whatever
    /// the answer.
    fn end_of_data(&mut self, state: State, content: Result<Body, Reply>) -> Outcome {
        let State::Data { envelope } = state else {
            return Outcome::reply(state, Reply::BAD_SEQUENCE_503);
        };
        let reply = match content {
            Ok(content) => self.deliver_message(envelope, content),
            Err(reply) => reply,
        };
        Outcome::reply(State::Greeted, reply)
    }
    // ANCHOR_END: end_of_data

    fn deliver_message(&mut self, envelope: Envelope, content: Body) -> Reply {
        self.messages += 1;
        let id = crate::smtp::envelope::message_id(&self.id, self.messages);
        let message = Message {
            id: id.clone(),
            client: self.client.clone(),
            envelope,
            content,
        };
        match self.deliver.deliver(&message) {
            Ok(()) => {
                Reply::OK_250.text(format!("OK: message {id} {}", outcome(&message.envelope)))
            }
            Err(reply) => reply,
        }
    }

    /// How many more octets of chunk data are worth keeping (the rest only counts to the limit).
    pub fn chunk_room(&self) -> usize {
        let max = usize::try_from(self.config.max_size).unwrap_or(usize::MAX);
        match &self.state {
            State::Chunking { octets, .. } => {
                max.saturating_sub(usize::try_from(*octets).unwrap_or(usize::MAX))
            }
            _ => 0,
        }
    }

    /// Some octets of the chunk being read: the connection hands a large chunk over in pieces,
    /// so it is never in memory whole. They join the content; the state stays `Chunking`.
    pub fn chunk_piece(&mut self, octets: &[u8]) {
        if let State::Chunking { content, .. } = &mut self.state {
            content.push(octets);
        }
    }

    // ANCHOR: chunk
    /// One BDAT chunk of `size` octets has been read (its octets went to `chunk_piece`).
    /// 250 for each chunk, and after the LAST one the delivery's answer (RFC 3030 §2).
    fn chunk(&mut self, state: State, size: u64) -> Outcome {
        let State::Chunking {
            envelope,
            content,
            octets,
            last,
        } = state
        else {
            let reply = out_of_order(&state, Verb::Bdat);
            return Outcome::reply(state, reply);
        };
        let octets = octets.saturating_add(size);
        if last {
            let reply = self.last_chunk(envelope, content, octets);
            return Outcome::reply(State::Greeted, reply);
        }
        let reply = Reply::OK_250.text(format!("{size} octets received, {octets} in all"));
        let state = State::Chunking {
            envelope,
            content,
            octets,
            last,
        };
        Outcome::reply(state, reply)
    }

    /// The whole message is in: check its size and bytes, then deliver it like DATA's.
    fn last_chunk(&mut self, envelope: Envelope, content: ChunkReader, octets: u64) -> Reply {
        if octets > self.config.max_size {
            return Reply::TOO_BIG_552.text(format!(
                "Message size exceeds fixed limit of {} octets; nothing was stored",
                self.config.max_size
            ));
        }
        match content.finish() {
            Ok(message) => self.deliver_message(envelope, message),
            Err(reply) => reply,
        }
    }
    // ANCHOR_END: chunk

    /// STARTTLS (RFC 3207 §4): 220, then the handshake; all that was known is forgotten.
    fn starttls(&mut self, state: State) -> Outcome {
        if self.client.tls {
            return Outcome::reply(state, Reply::BAD_SEQUENCE_503.text("TLS is already active"));
        }
        if !self.endpoint.tls_available {
            let reply = Reply::NOT_IMPLEMENTED_502
                .text("STARTTLS is not configured (start the server with --tls-self-signed)");
            return Outcome::reply(state, reply);
        }
        self.forget_identity();
        Outcome::reply(
            State::Connected,
            Reply::new(220, "2.0.0", "Ready to start TLS"),
        )
        .then(Next::StartTls)
    }

    /// After the handshake (RFC 3207 §4.2): "the SMTP protocol is reset to the initial state".
    /// STARTTLS already moved the session to `Connected`; what the client said is forgotten.
    pub fn tls_started(&mut self) {
        debug_assert_eq!(
            self.state.name(),
            Connected,
            "TLS starts only from Connected"
        );
        self.forget_identity();
        self.client.tls = true;
    }

    fn forget_identity(&mut self) {
        self.client.helo = None;
        self.client.esmtp = false;
        self.client.user = None;
    }

    /// AUTH is offered inside TLS, and in the clear only to a client on this machine, so a
    /// class can see that PLAIN is only base64 without sending a password over a network.
    fn offers_auth(&self) -> bool {
        let from = &self.config.plaintext_auth_from;
        auth::plaintext_allowed(self.client.peer.ip(), self.client.tls, from)
    }

    // ANCHOR: auth
    /// AUTH (RFC 4954 §4): start a SASL exchange.
    fn auth(&mut self, state: State, mechanism: &str, initial: Option<&str>) -> Outcome {
        if self.client.user.is_some() {
            let reply = Reply::BAD_SEQUENCE_503
                .text("Already authenticated (RFC 4954 §4: AUTH once per session)");
            return Outcome::reply(state, reply);
        }
        if !self.offers_auth() {
            let why = format!("{} (RFC 4954 §6)", auth::PLAINTEXT_REFUSED);
            return Outcome::reply(state, Reply::new(538, "5.7.11", "").text(why));
        }
        if let Verdict::ShutOut(left) = self.config.auth_budget.check(self.client.peer.ip()) {
            let reply =
                Reply::new(421, "4.7.0", "").text(shut_out_text(self.client.peer.ip(), left));
            return Outcome::close(vec![reply]);
        }
        let challenge = auth::challenge(&self.config.hostname);
        self.sasl_step(auth::begin(mechanism, initial, challenge))
    }

    fn sasl_response(&mut self, state: State, line: &[u8]) -> Outcome {
        let State::Authenticating { exchange } = state else {
            return Outcome::reply(state, Reply::BAD_SEQUENCE_503);
        };
        let text = String::from_utf8_lossy(line).trim().to_string();
        let outcome = self.sasl_step(auth::respond(exchange, &text));
        self.after_auth(outcome)
    }

    /// One step: send a challenge (334), or check the credentials (235 or 535).
    fn sasl_step(&mut self, step: Result<Sasl, Reply>) -> Outcome {
        match step {
            Ok(Sasl::Continue(exchange, challenge)) => Outcome::reply(
                State::Authenticating { exchange },
                Reply::new(334, "", "").text(challenge),
            ),
            Ok(Sasl::Check(credentials)) => {
                Outcome::reply(State::Greeted, self.check(&credentials))
            }
            Err(reply) => Outcome::reply(State::Greeted, reply),
        }
    }

    fn check(&mut self, credentials: &Credentials) -> Reply {
        match credentials.verify(&self.config.directory.users) {
            Some(user) => {
                log::info!("[{}] {} authenticated as {user}", self.id, self.client.peer);
                self.config.auth_budget.succeeded(self.client.peer.ip());
                self.client.user = Some(user);
                Reply::new(235, "2.7.0", "Authentication successful")
            }
            None => {
                // The log names the client and the user it tried, never the password.
                log::warn!(
                    "[{}] {} failed to authenticate as {:?}",
                    self.id,
                    self.client.peer,
                    credentials.user()
                );
                self.auth_failures += 1;
                match self.config.auth_budget.failed(self.client.peer.ip()) {
                    // One thread per client: the wait slows this client only.
                    Verdict::Wait(wait) => std::thread::sleep(wait),
                    Verdict::ShutOut(_) => self.auth_failures = MAX_AUTH_FAILURES,
                }
                Reply::new(535, "5.7.8", "Authentication credentials invalid")
            }
        }
    }
    // ANCHOR_END: auth

    /// After three failed attempts the session ends with 421.
    fn after_auth(&self, outcome: Outcome) -> Outcome {
        if self.auth_failures < MAX_AUTH_FAILURES {
            return outcome;
        }
        let mut replies = outcome.replies;
        replies.push(Reply::new(
            421,
            "4.7.0",
            "Too many failed authentication attempts, closing connection",
        ));
        Outcome::close(replies)
    }

    /// QUIT (RFC 5321 §4.1.1.10): 221, then the server closes.
    fn quit(&self) -> Outcome {
        let text = format!("{} closing connection, goodbye", self.config.hostname);
        Outcome::close(vec![Reply::CLOSING_221.text(text)])
    }

    /// VRFY (RFC 5321 §4.1.1.6, §3.5.3): does this user exist?
    fn vrfy(&self, argument: &str) -> Reply {
        let name = local_name(argument);
        let directory = &self.config.directory;
        match directory.mailboxes(&name) {
            Some(_) if directory.is_list(&name) => Reply::new(250, "2.1.5", "").text(format!(
                "{name} is a mailing list; EXPN {name} shows its members"
            )),
            Some(_) => Reply::new(250, "2.1.5", "")
                .text(format!("{name} <{name}@{}>", self.primary_domain())),
            None => Reply::NO_SUCH_USER_550.text(format!("No such user here: {name}")),
        }
    }

    /// EXPN (RFC 5321 §4.1.1.7, §3.5.2): the members of a list, one per reply line.
    fn expn(&self, argument: &str) -> Reply {
        let name = local_name(argument);
        let directory = &self.config.directory;
        let Some(members) = directory
            .mailboxes(&name)
            .filter(|_| directory.is_list(&name))
        else {
            return Reply::NO_SUCH_USER_550.text(format!("No mailing list called {name} here"));
        };
        let domain = self.primary_domain();
        let mut lines = members.iter().map(|m| format!("{m} <{m}@{domain}>"));
        let first = lines.next().unwrap_or_default();
        lines.fold(Reply::new(250, "2.1.5", "").text(first), Reply::line)
    }

    fn primary_domain(&self) -> &str {
        self.config
            .directory
            .domains
            .first()
            .map_or("localhost", String::as_str)
    }
}

/// DATA (RFC 5321 §4.1.1.4): 354, then the connection reads the message.
fn data(envelope: Envelope) -> Outcome {
    // RFC 3030 §3: a BINARYMIME body cannot be sent with DATA.
    if envelope.options.body == BodyType::BinaryMime {
        let reply =
            Reply::BAD_SEQUENCE_503.text("BODY=BINARYMIME needs BDAT, not DATA (RFC 3030 §3)");
        return Outcome::reply(State::RcptGiven { envelope }, reply);
    }
    Outcome::reply(State::Data { envelope }, Reply::START_MAIL_354).then(Next::ReadData)
}

/// BDAT (RFC 3030 §2): the connection reads the chunk, then steps with `Input::Chunk`.
fn chunking(
    envelope: Envelope,
    content: ChunkReader,
    octets: u64,
    last: bool,
    size: u64,
) -> Outcome {
    let state = State::Chunking {
        envelope,
        content,
        octets,
        last,
    };
    Outcome::read_chunk(state, size)
}

/// RSET (RFC 5321 §4.1.1.5): drop the transaction, keep the client's identity.
fn rset(state: State) -> Outcome {
    let state = match state {
        State::Connected => State::Connected,
        _ => State::Greeted,
    };
    Outcome::reply(state, Reply::OK_250.text("Reset OK"))
}

/// An answer from outside the protocol (`Input::Refusal`). A 421 closes, as that code promises
/// (RFC 5321 §3.8), and so does no reply at all; a refused message ends its transaction.
fn refusal(state: State, on: Trigger, reply: Option<Reply>) -> Outcome {
    let reply = match reply {
        Some(reply) if reply.code != 421 => reply,
        closing => return Outcome::close(closing.into_iter().collect()),
    };
    let state = match on {
        Trigger::EndOfData | Trigger::LastChunk => State::Greeted,
        Trigger::Command(_) | Trigger::SaslResponse => state,
    };
    Outcome::reply(state, reply)
}

/// HELP (RFC 5321 §4.1.1.8): what can be typed now, or how to use one verb.
fn help(state: StateName, topic: Option<&str>) -> Reply {
    match topic {
        None => help_for_state(state),
        Some(word) => match Verb::from_name(word) {
            Some(verb) => help_for_verb(verb),
            None => {
                Reply::new(504, "5.5.4", "").text(format!("No help for {word}; try HELP alone"))
            }
        },
    }
}

/// HELP text lines are at most this long, so `214-2.0.0 ` and the text fit an 80-column
/// terminal without wrapping.
const HELP_WIDTH: usize = 80 - "214-2.0.0 ".len();

/// Each command the state allows on a line of its own with the state it leads to, and what it
/// does indented below it.
fn help_for_state(state: StateName) -> Reply {
    let header = format!("You are in state {state:?}. Commands you can type now:");
    let lines = VERBS.iter().filter_map(|row| {
        let to = transition(state, row.verb)?.to;
        let mut lines = vec![format!("  {} -> {to:?}", row.syntax)];
        lines.extend(help_lines(row.summary, "      "));
        Some(lines)
    });
    lines
        .flatten()
        .fold(Reply::HELP_214.text(header), Reply::line)
        .line("HELP <command> explains one command.")
}

/// `text` cut at spaces into lines of at most `HELP_WIDTH`, each starting with `indent`.
fn help_lines(text: &str, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = indent.to_string();
    for word in text.split(' ') {
        if line.len() > indent.len() && line.len() + 1 + word.len() > HELP_WIDTH {
            lines.push(std::mem::replace(&mut line, indent.to_string()));
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

/// 503 with a text that says what to send first (RFC 5321 §4.1.4); 554 for DATA when every
/// recipient was refused (RFC 5321 §3.3: "no valid recipients").
fn out_of_order(state: &State, verb: Verb) -> Reply {
    if let (Verb::Data, State::MailGiven { envelope }) = (verb, state) {
        if envelope.refused_recipients > 0 {
            return Reply::NO_VALID_RECIPIENTS_554.text(
                "No valid recipients: every RCPT TO was refused, so there is no one to deliver to",
            );
        }
    }
    let hint = match (state.name(), verb) {
        (Connected, _) => "Send HELO or EHLO first: say who you are",
        (Greeted, Verb::Rcpt) => "Send MAIL FROM:<sender> first: RCPT comes after MAIL",
        (Greeted, Verb::Data) => {
            "Send MAIL FROM and RCPT TO first: DATA needs a sender and a recipient"
        }
        (MailGiven, Verb::Data) => {
            "Send RCPT TO:<recipient> first: DATA needs at least one recipient"
        }
        (Chunking, _) => "A BDAT transfer is open: send the next BDAT chunk, or RSET",
        (MailGiven | RcptGiven, Verb::Mail) => {
            "Nested MAIL: a transaction is already open; finish it or RSET"
        }
        _ => "Bad sequence of commands; HELP shows what you can type now",
    };
    Reply::BAD_SEQUENCE_503.text(hint)
}

/// What 250 after the message means for these recipients: in a mailbox, or in the queue.
fn outcome(envelope: &Envelope) -> &'static str {
    let relayed = envelope
        .recipients
        .iter()
        .filter(|r| matches!(r.route, Route::Relay(_)))
        .count();
    match relayed {
        0 => "delivered",
        n if n == envelope.recipients.len() => "queued for relaying",
        _ => "delivered here and queued for the other domains",
    }
}

/// An open transaction is in MailGiven until its first recipient is accepted.
fn transaction_state(envelope: Envelope) -> State {
    if envelope.recipients.is_empty() {
        State::MailGiven { envelope }
    } else {
        State::RcptGiven { envelope }
    }
}

/// RFC 5321 Appendix F: the verbs that were retired, and why.
fn obsolete(verb: Verb) -> Reply {
    let why = match verb {
        Verb::Turn => "TURN is obsolete (RFC 5321 Appendix F.1): anyone could take the mail of another host; ETRN and ATRN replaced it",
        _ => "SEND, SOML and SAML are obsolete (RFC 5321 Appendix F.6): delivery to a user's terminal is gone from SMTP",
    };
    Reply::NOT_IMPLEMENTED_502.text(why)
}

fn help_for_verb(verb: Verb) -> Reply {
    let info = verb.info();
    let mut summary = help_lines(&format!("{}: {}", info.name, info.summary), "").into_iter();
    let first = summary.next().unwrap_or_default();
    let help = summary
        .fold(Reply::HELP_214.text(first), Reply::line)
        .line(format!("Syntax:  {}", info.syntax))
        .line(format!("Example: {}", info.example))
        .line(format!("Defined in {}", info.rfc));
    match history(verb) {
        Some(why) => help_lines(&format!("History: {why}"), "")
            .into_iter()
            .fold(help, Reply::line),
        None => help,
    }
}

// ANCHOR: history
/// Why a verb is gone, or often switched off: the story behind the 502 or 252 a student meets.
fn history(verb: Verb) -> Option<&'static str> {
    Some(match verb {
        Verb::Send | Verb::Soml | Verb::Saml => {
            "in 1982 SMTP could also write to a user's terminal (SEND), or try the terminal \
             first (SOML), or do both (SAML); nobody sits at a mail host's terminal any more, \
             so RFC 5321 Appendix F.6 retired them and servers answer 502"
        }
        Verb::Turn => {
            "TURN let the client become the server and take the mail queued for it, with no \
             proof of who it was, so anyone could collect another host's mail; RFC 5321 \
             Appendix F.1 retired it (ETRN and ATRN replaced it) and servers answer 502"
        }
        Verb::Etrn => {
            "ETRN is the safe successor of TURN: the client only asks the server to try its \
             queue for a domain now, over the server's own connections (RFC 1985); smtplab \
             takes it from clients that may relay"
        }
        Verb::Vrfy | Verb::Expn => {
            "spammers harvest addresses by asking VRFY and EXPN, so most public servers answer \
             252 (cannot verify, but will try to deliver) or 502 (RFC 5321 §7.3); smtplab \
             answers them so a class can see how they work"
        }
        _ => return None,
    })
}
// ANCHOR_END: history

/// `alice`, `<alice@localhost>` or `alice@localhost` → `alice` (VRFY/EXPN arguments).
fn local_name(argument: &str) -> String {
    let bare = argument
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    bare.split('@').next().unwrap_or(bare).to_string()
}

fn is_ascii(mailbox: &Mailbox) -> bool {
    mailbox.local_part.is_ascii() && mailbox.domain.to_string().is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A delivery hook that remembers what it was given.
    #[derive(Default)]
    struct Remember(Mutex<Vec<Message>>);

    impl Deliver for Remember {
        fn deliver(&self, message: &Message) -> Result<(), Reply> {
            self.0
                .lock()
                .map_err(|_| Reply::LOCAL_ERROR_451)?
                .push(message.clone());
            Ok(())
        }

        /// An empty queue: ETRN has nothing to start.
        fn etrn(&self, node: &str) -> Reply {
            Reply::new(251, "2.0.0", "").text(format!("OK, no messages waiting for node {node}"))
        }
    }

    /// The three ways the connection steps a session, as the tests drive them.
    impl Session {
        fn line(&mut self, line: &[u8]) -> Step {
            let input = self.input(line);
            self.step(input)
        }

        fn finish_data(&mut self, content: Result<Body, Reply>) -> Step {
            self.step(Input::EndOfData(content))
        }

        fn read_chunk(&mut self, kept: Vec<u8>, size: u64) -> Step {
            self.chunk_piece(&kept);
            self.step(Input::Chunk(size))
        }
    }

    fn session() -> Session {
        let mut config = Config::default();
        config.hostname = "smtplab.test".into();
        config.directory = crate::config::Directory::demo("smtplab.test");
        let addr: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        Session::new(
            Arc::new(config),
            Arc::new(Remember::default()),
            ENDPOINT,
            (addr, addr),
            "S1".into(),
        )
    }

    const ENDPOINT: Endpoint = Endpoint {
        role: Role::Relay,
        tls_available: true,
    };

    /// Drive a session into `state` with commands that are legal on the way.
    fn session_in(state: StateName) -> Session {
        let mut s = session();
        let path: &[&str] = match state {
            Connected => &[],
            Greeted => &["EHLO c.example"],
            MailGiven => &["EHLO c.example", "MAIL FROM:<m@c.example>"],
            Authenticating => &["EHLO c.example", "AUTH PLAIN"],
            RcptGiven | Data | Chunking => &[
                "EHLO c.example",
                "MAIL FROM:<m@c.example>",
                "RCPT TO:<alice@localhost>",
            ],
            Closed => &["QUIT"],
        };
        for line in path {
            assert!(s.line(line.as_bytes()).replies[0].is_positive(), "{line}");
        }
        if state == Data {
            assert_eq!(s.line(b"DATA").next, Next::ReadData);
        }
        if state == Chunking {
            assert_eq!(s.line(b"BDAT 3").next, Next::ReadChunk(3));
            assert_eq!(s.read_chunk(b"abc".to_vec(), 3).replies[0].code, 250);
        }
        assert_eq!(s.state().name(), state);
        s
    }

    /// A command line that should succeed for `verb`.
    fn sample(verb: Verb) -> &'static str {
        match verb {
            Verb::Helo => "HELO c.example",
            Verb::Ehlo => "EHLO c.example",
            Verb::Mail => "MAIL FROM:<m@c.example>",
            Verb::Rcpt => "RCPT TO:<bob@localhost>",
            Verb::Data => "DATA",
            Verb::Rset => "RSET",
            Verb::Vrfy => "VRFY alice",
            Verb::Expn => "EXPN students",
            Verb::Help => "HELP",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Send => "SEND FROM:<m@c.example>",
            Verb::Soml => "SOML FROM:<m@c.example>",
            Verb::Saml => "SAML FROM:<m@c.example>",
            Verb::Turn => "TURN",
            Verb::Starttls => "STARTTLS",
            Verb::Auth => "AUTH PLAIN",
            Verb::Bdat => "BDAT 3",
            Verb::Etrn => "ETRN two.test",
        }
    }

    // ANCHOR: every_row
    /// Every row of the table: a sample command in the `from` state succeeds and lands in `to`.
    #[test]
    fn every_transition_row_holds() {
        for t in TRANSITIONS {
            let mut s = session_in(t.from);
            let step = match t.on {
                Trigger::Command(Verb::Bdat) => {
                    let command = s.line(b"BDAT 3");
                    assert_eq!(command.next, Next::ReadChunk(3));
                    Step {
                        from: command.from,
                        ..s.read_chunk(b"abc".to_vec(), 3)
                    }
                }
                Trigger::Command(Verb::Etrn) => {
                    s.client.user = Some("alice".into()); // ETRN wants a client that may relay
                    s.line(sample(Verb::Etrn).as_bytes())
                }
                Trigger::Command(verb) => s.line(sample(verb).as_bytes()),
                Trigger::EndOfData => s.finish_data(Ok(Body::from(&b"Subject: x\n\nhi\n"[..]))),
                Trigger::LastChunk => {
                    s.line(b"BDAT 4 LAST");
                    s.read_chunk(b"hi\r\n".to_vec(), 4)
                }
                Trigger::SaslResponse => {
                    s.line(auth::base64_encode(b"\0alice\0password").as_bytes())
                }
            };
            assert!(step.replies[0].is_positive(), "{t:?}: {:?}", step.replies);
            assert_eq!((step.from, step.to), (t.from, t.to), "{t:?}");
            assert_eq!(s.state().name(), t.to, "{t:?}");
        }
    }
    // ANCHOR_END: every_row

    /// Every (state, verb) pair the table does not list is refused, and the state stays.
    #[test]
    fn everything_else_is_refused_and_changes_nothing() {
        for from in [Connected, Greeted, MailGiven, RcptGiven, Chunking] {
            for row in VERBS {
                if transition(from, row.verb).is_some() {
                    continue;
                }
                let mut s = session_in(from);
                let before = s.state().clone();
                let mut step = s.line(sample(row.verb).as_bytes());
                if let Next::ReadChunk(size) = step.next {
                    step = s.read_chunk(b"abc".to_vec(), size);
                }
                let code = step.replies[0].code;
                let expected = if row.verb.is_obsolete() { 502 } else { 503 };
                assert_eq!(code, expected, "{} in {from:?}", row.name);
                assert_eq!(s.state(), &before, "{} in {from:?}", row.name);
            }
        }
    }

    #[test]
    fn refused_arguments_leave_the_state() {
        let mut s = session_in(Greeted);
        assert_eq!(s.line(b"MAIL FROM:<bad syntax").replies[0].code, 501);
        assert_eq!(s.state().name(), Greeted);
        let mut s = session_in(MailGiven);
        assert_eq!(s.line(b"RCPT TO:<nobody@localhost>").replies[0].code, 550);
        assert_eq!(s.state().name(), MailGiven);
        assert_eq!(
            s.line(b"DATA").replies[0].code,
            554,
            "all recipients refused"
        );
    }

    #[test]
    fn end_of_data_hands_the_envelope_to_the_hook() {
        let hook = Arc::new(Remember::default());
        let mut config = Config::default();
        config.directory = crate::config::Directory::demo("smtplab.test");
        let addr: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let mut s = Session::new(
            Arc::new(config),
            hook.clone(),
            ENDPOINT,
            (addr, addr),
            "S9".into(),
        );
        for line in [
            "HELO c",
            "MAIL FROM:<m@c.example>",
            "RCPT TO:<students@localhost>",
            "DATA",
        ] {
            s.line(line.as_bytes());
        }
        let step = s.finish_data(Ok(Body::from(&b"hi\n"[..])));
        assert_eq!(step.replies[0].code, 250);
        let delivered = hook.0.lock().unwrap();
        assert!(delivered[0].id.starts_with("S9-1-"), "{}", delivered[0].id);
        assert_eq!(
            delivered[0].envelope.recipients[0].route,
            Route::Local(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(delivered[0].content.to_vec().unwrap(), b"hi\n");
    }

    /// A hook whose alice has room for `room` more octets; everyone else has room for any.
    struct AliceHasRoomFor(u64, Remember);

    impl Deliver for AliceHasRoomFor {
        fn deliver(&self, message: &Message) -> Result<(), Reply> {
            self.1.deliver(message)
        }

        fn room_for(&self, route: &Route, declared: u64) -> Result<(), Reply> {
            let alice = matches!(route, Route::Local(users) if users.iter().any(|u| u == "alice"));
            if alice && declared >= self.0 {
                return Err(Reply::new(452, "4.2.2", "Mailbox of alice is full"));
            }
            Ok(())
        }
    }

    #[test]
    fn a_full_mailbox_refuses_its_recipient_only() {
        let hook = Arc::new(AliceHasRoomFor(1000, Remember::default()));
        let mut config = Config::default();
        config.directory = crate::config::Directory::demo("smtplab.test");
        let addr: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let mut s = Session::new(
            Arc::new(config),
            hook.clone(),
            ENDPOINT,
            (addr, addr),
            "S".into(),
        );
        let mut reply = |line: &str| s.line(line.as_bytes()).replies[0].clone();
        reply("EHLO c.example");
        // The declared size (RFC 1870) is what the hook is asked about.
        reply("MAIL FROM:<m@c.example> SIZE=999");
        assert_eq!(reply("RCPT TO:<alice@localhost>").code, 250);
        reply("RSET");
        reply("MAIL FROM:<m@c.example> SIZE=1000");
        let refused = reply("RCPT TO:<alice@localhost>");
        assert_eq!((refused.code, refused.status), (452, "4.2.2"));
        assert_eq!(
            reply("RCPT TO:<students@localhost>").code,
            452,
            "alice is in it"
        );
        assert_eq!(reply("RCPT TO:<bob@localhost>").code, 250);
        assert_eq!(reply("DATA").code, 354);
        let step = s.finish_data(Ok(Body::from(&b"hi\n"[..])));
        assert_eq!(step.replies[0].code, 250);
        let delivered = hook.1 .0.lock().unwrap();
        let recipients: Vec<&Route> = delivered[0]
            .envelope
            .recipients
            .iter()
            .map(|r| &r.route)
            .collect();
        assert_eq!(recipients, [&Route::Local(vec!["bob".into()])]);
    }

    #[test]
    fn a_refused_message_is_not_delivered() {
        let mut s = session_in(Data);
        let step = s.finish_data(Err(Reply::TOO_BIG_552));
        assert_eq!(step.replies[0].code, 552);
        assert_eq!(
            s.state().name(),
            Greeted,
            "the transaction is over either way"
        );
    }

    #[test]
    fn the_error_limit_closes_the_session() {
        let mut s = session();
        for _ in 0..DEFAULT_ERRORS_FOR_TEST - 1 {
            assert_eq!(s.line(b"BOGUS").next, Next::ReadCommand);
        }
        let last = s.line(b"BOGUS");
        assert_eq!(last.replies.last().map(|r| r.code), Some(421));
        assert_eq!(last.next, Next::Close);
    }

    const DEFAULT_ERRORS_FOR_TEST: u32 = crate::config::DEFAULT_MAX_ERRORS;

    #[test]
    fn help_lists_what_is_legal_now() {
        let mut s = session_in(MailGiven);
        let help = s.line(b"HELP").replies[0].text.to_string();
        assert!(help.contains("RCPT TO:<recipient>"), "{help}");
        assert!(
            !help.contains("DATA  "),
            "DATA is not legal before RCPT: {help}"
        );
        let mut s = session();
        let help = s.line(b"HELP MAIL").replies[0].text.to_string();
        assert!(help.contains("RFC 5321 §4.1.1.2"), "{help}");
        assert!(s.line(b"HELP TURN").replies[0].text.contains("obsolete"));
    }

    #[test]
    fn relaying_depends_on_the_client_not_the_sender() {
        let mut s = session_in(Greeted);
        s.line(b"MAIL FROM:<alice@localhost>");
        let reply = &s.line(b"RCPT TO:<victim@relay.example>").replies[0];
        assert_eq!((reply.code, reply.status), (550, "5.7.1"));
    }

    /// The debug assertion in `step`: the table's `to`, staying, or the server closing.
    #[test]
    fn only_listed_moves_pass_the_check() {
        let mail = Some(Trigger::Command(Verb::Mail));
        assert!(listed(Greeted, mail, MailGiven, Next::ReadCommand));
        assert!(listed(Greeted, mail, Greeted, Next::ReadCommand));
        assert!(listed(Greeted, mail, Closed, Next::Close));
        assert!(!listed(Greeted, mail, RcptGiven, Next::ReadCommand));
        assert!(!listed(Greeted, None, MailGiven, Next::ReadCommand));
        assert!(!listed(Greeted, mail, Closed, Next::ReadCommand));
    }
}

//! The SMTP session: one `enum State`, one transition table, one `step` per command line.
//!
//! Interface:
//! - `TRANSITIONS`, the table of legal moves (from, trigger, to, RFC section). `step` refuses
//!   every command the table does not list with 503, and `smtplab states` draws the same table.
//! - `Session::command(line)` takes one command line and returns a `Step`: the replies, and
//!   whether to read a command next, read message data, or close.
//! - `Session::end_of_data(result)` hands the message to the `Deliver` hook and answers it.
//! - `Envelope` is what MAIL, RCPT and DATA gather; RSET, HELO/EHLO and the end of DATA drop it.
//! - `--fault` rules answer before a command is handled (`scripted_fault`); `--explain` notes
//!   are added to every reply of a step (`trace::explain`).
//!
//! No sockets and no files here: the session is tested line by line without a network.
//!
//! Standards: RFC 5321 §3.3, RFC 5321 §4.1.1, RFC 5321 §4.1.4, RFC 5321 §4.3.2, RFC 5321 §3.5, RFC 5321 §7.8

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth_budget::{shut_out_text, Verdict};
use crate::config::Config;
use crate::lab::fault::{self, Point};
use crate::lab::trace;
use crate::machine;
use crate::smtp::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::smtp::auth::{self, Credentials, Exchange, Sasl};
use crate::smtp::body::Body;
use crate::smtp::command::{self, Command, Param, Verb, VERBS};
use crate::smtp::data::ChunkReader;
use crate::smtp::extensions::{self, BodyType, Limits, MailOptions, Offer, RcptOptions};
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
];
// ANCHOR_END: transitions

/// The legal move for `verb` in state `from`, if there is one.
pub fn transition(from: StateName, verb: Verb) -> Option<&'static Transition> {
    machine::find(TRANSITIONS, from, Trigger::Command(verb))
}

/// Where a recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Local mailboxes (a user, or the members of a list).
    Local(Vec<String>),
    /// Another domain: the message is queued and relayed to its MX (RFC 5321 §5.1).
    Relay(Mailbox),
}

/// One recipient as the client gave it, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub path: ForwardPath,
    pub route: Route,
    /// The RCPT parameters: NOTIFY and ORCPT of RFC 3461 §4.1, §4.2.
    pub options: RcptOptions,
}

/// What one mail transaction has gathered (RFC 5321 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub sender: ReversePath,
    pub options: MailOptions,
    pub recipients: Vec<Recipient>,
    /// RCPTs refused so far: DATA then says "no valid recipients" (554) rather than 503.
    pub refused_recipients: usize,
}

/// Who the client is: this outlives transactions, and a new HELO/EHLO replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The name given in HELO/EHLO.
    pub helo: Option<String>,
    /// True after EHLO (the Received header then says ESMTP).
    pub esmtp: bool,
    /// True once the connection runs inside TLS (STARTTLS or implicit TLS).
    pub tls: bool,
    /// The user who authenticated with AUTH, if any.
    pub user: Option<String>,
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

/// What the listener offers this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub role: Role,
    /// TLS is configured (so STARTTLS can be offered while the connection is in the clear).
    pub tls_available: bool,
}

/// A message ready for delivery: handed to the `Deliver` hook at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub client: Client,
    pub envelope: Envelope,
    /// Lines ending in `\n`, dot-stuffing undone; a large message is in a spill file.
    pub content: Body,
}

/// The delivery hook: the session decides what to say, the hook decides where mail goes.
pub trait Deliver: Send + Sync {
    /// Store the message durably; an `Err` reply (4xx/5xx) means nothing was stored.
    fn deliver(&self, message: &Message) -> Result<(), Reply>;
}

/// What the connection should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    ReadCommand,
    ReadData,
    /// Read exactly this many octets (a BDAT chunk), then call `Session::chunk`.
    ReadChunk(u64),
    /// Send the replies, drop any unread input, and run the TLS handshake.
    StartTls,
    Close,
}

/// The outcome of one command line (or of the end of data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub replies: Vec<Reply>,
    pub next: Next,
    pub from: StateName,
    pub to: StateName,
    /// The RFC section of the command or transition, for `--trace`.
    pub rfc: &'static str,
    /// The `--fault` rule that answered instead of the server, for `--trace`.
    pub fault: Option<String>,
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
    /// `--fault`: how often each point was reached in this session.
    faults: fault::Counter,
    /// The rule that fired during the current step, until `finish` puts it in the `Step`.
    fired: Option<String>,
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
            faults: fault::Counter::default(),
            fired: None,
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
    /// With `--explain` it gets its note too: clients read only the code of the greeting.
    pub fn greeting(&self) -> Reply {
        let greeting = Reply::new(220, "", "").text(format!(
            "{} ESMTP smtplab ready; type HELO <your-name> to start, or HELP",
            self.config.hostname
        ));
        if self.config.explain {
            return trace::explain(greeting, "RFC 5321 §3.1", Connected, false);
        }
        greeting
    }

    // ANCHOR: command
    /// Take one command line (without its line end) and return what to answer and do next.
    pub fn command(&mut self, line: &[u8]) -> Step {
        let from = self.state.name();
        if let State::Authenticating { .. } = self.state {
            let mut replies = self.sasl_response(line);
            let next = self.after_auth(&mut replies);
            return self.finish(from, replies, next, "RFC 4954 §4");
        }
        let mut ehlo = false;
        let (replies, next, rfc) = match command::parse(line) {
            Ok(command) => {
                let verb = command.verb();
                ehlo = verb == Verb::Ehlo;
                let (mut replies, next) = match self.scripted_fault(&command) {
                    Some(fault) => fault,
                    None => self.dispatch(command),
                };
                coach_space_after_colon(line, &mut replies);
                (replies, next, verb.info().rfc)
            }
            Err(reply) => (
                vec![self.coach_parse_error(line, reply)],
                Next::ReadCommand,
                "RFC 5321 §4.2.4",
            ),
        };
        let step = self.finish(from, replies, next, rfc);
        self.explained(step, ehlo)
    }
    // ANCHOR_END: command

    // ANCHOR: scripted_fault
    /// `--fault`: a rule for this command answers instead of the server, before the command is
    /// handled, so the state does not change, as with any refusal (RFC 5321 §4.1.4).
    fn scripted_fault(&mut self, command: &Command) -> Option<(Vec<Reply>, Next)> {
        let address = match command {
            Command::Mail { path, .. } => Some(path.to_string()),
            Command::Rcpt { path, .. } => Some(path.to_string()),
            _ => None,
        };
        self.fault_at(Point::Command(command.verb()), address.as_deref())
    }

    /// Count one arrival at `point`; if a rule fires, its reply (or a silent close). A 421
    /// closes the connection, as that code promises (RFC 5321 §3.8).
    fn fault_at(&mut self, point: Point, address: Option<&str>) -> Option<(Vec<Reply>, Next)> {
        let rule = self
            .faults
            .check(&self.config.faults, point, address)?
            .clone();
        self.fired = Some(rule.text.clone());
        match rule.reply() {
            Some(reply) if reply.code == 421 => {
                self.state = State::Closed;
                Some((vec![reply], Next::Close))
            }
            Some(reply) => Some((vec![reply], Next::ReadCommand)),
            None => {
                self.state = State::Closed;
                Some((Vec::new(), Next::Close))
            }
        }
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

    // ANCHOR: coach_parse_error
    /// A line that is not a command but looks like message text (`Subject: hi`, or the lone
    /// dot) was meant for DATA: the code stays 500, the text says what to do instead.
    fn coach_parse_error(&self, line: &[u8], reply: Reply) -> Reply {
        let lone_dot = line == b".";
        if !lone_dot && !command::looks_like_header(line) {
            return reply;
        }
        let what = if lone_dot {
            "A lone dot ends a message only after DATA and its 354 reply"
        } else {
            "This looks like message text"
        };
        let todo = match self.state.name() {
            RcptGiven => "type DATA first and wait for 354",
            MailGiven => "add RCPT TO:<recipient>, then type DATA and wait for 354",
            Greeted => "send MAIL FROM and RCPT TO, then type DATA and wait for 354",
            Connected => "say HELO first, then MAIL FROM, RCPT TO and DATA, and wait for 354",
            _ => return reply,
        };
        reply.text(format!("{what}; {todo}"))
    }
    // ANCHOR_END: coach_parse_error

    /// A line the connection refused before parsing (too long, bare CR): it counts as an error.
    pub fn refuse_line(&mut self, reply: Reply) -> Step {
        let from = self.state.name();
        let step = self.finish(from, vec![reply], Next::ReadCommand, "RFC 5321 §4.5.3.1.4");
        self.explained(step, false)
    }

    /// Count errors; at the limit add 421 and close (RFC 5321 §7.8, as Postfix's hard error limit).
    fn finish(
        &mut self,
        from: StateName,
        replies: Vec<Reply>,
        next: Next,
        rfc: &'static str,
    ) -> Step {
        let mut replies = replies;
        let mut next = next;
        self.errors += replies.iter().filter(|r| r.is_error()).count() as u32;
        if self.errors >= self.config.max_errors && next != Next::Close {
            replies.push(Reply::TOO_MANY_ERRORS_421);
            next = Next::Close;
            self.state = State::Closed;
        }
        Step {
            replies,
            next,
            from,
            to: self.state.name(),
            rfc,
            fault: self.fired.take(),
        }
    }

    // ANCHOR: dispatch
    /// The table decides whether a command is legal here; one method per verb does the work.
    fn dispatch(&mut self, command: Command) -> (Vec<Reply>, Next) {
        let verb = command.verb();
        if verb.is_obsolete() {
            return (vec![obsolete(verb)], Next::ReadCommand);
        }
        if transition(self.state.name(), verb).is_none() {
            // A refused BDAT is still followed by its chunk: read and drop it, then answer
            // (in `chunk`), or the chunk's bytes would be taken for commands.
            if let Command::Bdat { size, .. } = command {
                return (Vec::new(), Next::ReadChunk(size));
            }
            return (vec![self.out_of_order(verb)], Next::ReadCommand);
        }
        let reply = match command {
            Command::Helo(name) => self.helo(name, false),
            Command::Ehlo(name) => self.helo(name, true),
            Command::Mail { path, params } => self.mail(path, &params),
            Command::Rcpt { path, params } => self.rcpt(path, &params),
            Command::Data => return self.data(),
            Command::Rset => self.rset(),
            Command::Vrfy(name) => self.vrfy(&name),
            Command::Expn(name) => self.expn(&name),
            Command::Help(topic) => self.help(topic.as_deref()),
            Command::Noop => Reply::OK_250,
            Command::Quit => return self.quit(),
            Command::Starttls => return self.starttls(),
            Command::Auth { mechanism, initial } => {
                let mut replies = vec![self.auth(&mechanism, initial.as_deref())];
                let next = self.after_auth(&mut replies);
                return (replies, next);
            }
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::Obsolete(verb) => obsolete(verb),
        };
        (vec![reply], Next::ReadCommand)
    }
    // ANCHOR_END: dispatch

    /// HELO and EHLO (RFC 5321 §4.1.1.1): a fresh session identity and no open transaction.
    fn helo(&mut self, name: String, esmtp: bool) -> Reply {
        let hello = format!("{} greets {name}", self.config.hostname);
        self.client.helo = Some(name);
        self.client.esmtp = esmtp;
        self.state = State::Greeted;
        if !esmtp {
            return Reply::new(250, "", "").text(hello);
        }
        let offer = Offer {
            starttls: self.endpoint.tls_available && !self.client.tls,
            auth: self.offers_auth(),
        };
        extensions::ehlo_keywords(self.limits(), offer)
            .into_iter()
            .fold(Reply::new(250, "", "").text(hello), Reply::line)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_size: self.config.max_size,
        }
    }

    /// MAIL FROM (RFC 5321 §4.1.1.2): open a transaction.
    fn mail(&mut self, sender: ReversePath, params: &[Param]) -> Reply {
        // RFC 6409 §4.3: the submission port takes mail only from users who logged in.
        if self.endpoint.role != Role::Relay && self.client.user.is_none() {
            return Reply::new(
                530,
                "5.7.0",
                "Authentication required: AUTH first (this is the submission port)",
            );
        }
        let options = match extensions::mail_options(params, self.limits()) {
            Ok(options) => options,
            Err(reply) => return reply,
        };
        if let ReversePath::Mailbox(mailbox) = &sender {
            if !options.smtputf8 && !is_ascii(mailbox) {
                return Reply::NEEDS_SMTPUTF8_553;
            }
        }
        let text = format!("Sender {sender} OK; next: RCPT TO:<recipient>");
        self.state = State::MailGiven {
            envelope: Envelope {
                sender,
                options,
                recipients: Vec::new(),
                refused_recipients: 0,
            },
        };
        Reply::SENDER_OK_250.text(text)
    }

    /// RCPT TO (RFC 5321 §4.1.1.3): add one recipient, if it is ours.
    fn rcpt(&mut self, path: ForwardPath, params: &[Param]) -> Reply {
        let mut envelope = match std::mem::replace(&mut self.state, State::Closed) {
            State::MailGiven { envelope } | State::RcptGiven { envelope } => envelope,
            other => {
                self.state = other;
                return Reply::BAD_SEQUENCE_503;
            }
        };
        let smtputf8 = envelope.options.smtputf8;
        let checked = extensions::rcpt_options(params)
            .and_then(|options| Ok((self.route(&path, smtputf8)?, options)));
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
        self.state = transaction_state(envelope);
        reply
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
        directory
            .mailboxes(&mailbox.local_part_unquoted())
            .map(Route::Local)
            .ok_or_else(|| Reply::NO_SUCH_USER_550.text(format!("No such user here: {mailbox}")))
    }
    // ANCHOR_END: route

    // ANCHOR: relay_route
    /// RFC 5321 §3.6.2, §7.9: relaying is decided by who the client is, never by MAIL FROM.
    fn relay_route(&self, mailbox: &Mailbox) -> Result<Route, Reply> {
        let peer = self.client.peer.ip();
        let trusted_network = self.config.relay_from.iter().any(|net| net.contains(peer));
        if self.client.user.is_some() || trusted_network {
            return Ok(Route::Relay(mailbox.clone()));
        }
        Err(Reply::RELAY_DENIED_550.text(format!(
            "Relaying denied: {} is not a domain of this server",
            mailbox.domain
        )))
    }
    // ANCHOR_END: relay_route

    /// A local domain by name, or an address literal naming the address the client connected to.
    fn is_local(&self, domain: &Domain) -> bool {
        match domain {
            Domain::Literal(ip) => *ip == self.client.local.ip(),
            Domain::Name(_) => self.config.directory.is_local_domain(domain),
        }
    }

    /// DATA (RFC 5321 §4.1.1.4): 354, then the connection reads the message.
    fn data(&mut self) -> (Vec<Reply>, Next) {
        match std::mem::replace(&mut self.state, State::Closed) {
            // RFC 3030 §3: a BINARYMIME body cannot be sent with DATA.
            State::RcptGiven { envelope } if envelope.options.body == BodyType::BinaryMime => {
                self.state = State::RcptGiven { envelope };
                let reply = Reply::BAD_SEQUENCE_503
                    .text("BODY=BINARYMIME needs BDAT, not DATA (RFC 3030 §3)");
                (vec![reply], Next::ReadCommand)
            }
            State::RcptGiven { envelope } => {
                self.state = State::Data { envelope };
                (vec![Reply::START_MAIL_354], Next::ReadData)
            }
            other => {
                self.state = other;
                (vec![Reply::BAD_SEQUENCE_503], Next::ReadCommand)
            }
        }
    }

    // ANCHOR: end_of_data
    /// The end of the message: deliver it through the hook, then drop the transaction.
    pub fn end_of_data(&mut self, content: Result<Body, Reply>) -> Step {
        let from = self.state.name();
        let State::Data { envelope } = std::mem::replace(&mut self.state, State::Greeted) else {
            let reply = Reply::BAD_SEQUENCE_503;
            return self.finish(from, vec![reply], Next::ReadCommand, "RFC 5321 §4.1.1.4");
        };
        // The transaction is over whatever the answer; a scripted fault stores nothing.
        let (replies, next) = match self.fault_at(Point::EndOfData, None) {
            Some(fault) => fault,
            None => match content {
                Err(reply) => (vec![reply], Next::ReadCommand),
                Ok(content) => (
                    vec![self.deliver_message(envelope, content)],
                    Next::ReadCommand,
                ),
            },
        };
        let step = self.finish(from, replies, next, "RFC 5321 §4.1.1.4");
        self.explained(step, false)
    }
    // ANCHOR_END: end_of_data

    fn deliver_message(&mut self, envelope: Envelope, content: Body) -> Reply {
        self.messages += 1;
        let id = format!("{}.{}", self.id, self.messages);
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

    /// BDAT (RFC 3030 §2): the connection reads the chunk, then calls `chunk`.
    fn bdat(&mut self, size: u64, last: bool) -> (Vec<Reply>, Next) {
        self.state = match std::mem::replace(&mut self.state, State::Closed) {
            State::RcptGiven { envelope } => State::Chunking {
                content: ChunkReader::new(
                    envelope.options.body == BodyType::BinaryMime,
                    &self.config.mail_dir,
                ),
                envelope,
                octets: 0,
                last,
            },
            State::Chunking {
                envelope,
                content,
                octets,
                ..
            } => State::Chunking {
                envelope,
                content,
                octets,
                last,
            },
            other => other,
        };
        (Vec::new(), Next::ReadChunk(size))
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
    /// so it is never in memory whole.
    pub fn chunk_piece(&mut self, octets: &[u8]) {
        if let State::Chunking { content, .. } = &mut self.state {
            content.push(octets);
        }
    }

    // ANCHOR: chunk
    /// One BDAT chunk has been read: `kept` of its `size` octets (after any `chunk_piece`s).
    /// 250 for each chunk, and after the LAST one the delivery's answer (RFC 3030 §2).
    pub fn chunk(&mut self, kept: Vec<u8>, size: u64) -> Step {
        self.chunk_piece(&kept);
        let from = self.state.name();
        if matches!(self.state, State::Chunking { last: true, .. }) {
            if let Some((replies, next)) = self.fault_at(Point::EndOfData, None) {
                if next != Next::Close {
                    self.state = State::Greeted;
                }
                let step = self.finish(from, replies, next, "RFC 3030 §2");
                return self.explained(step, false);
            }
        }
        let reply = match std::mem::replace(&mut self.state, State::Greeted) {
            State::Chunking {
                envelope,
                content,
                octets,
                last,
            } => {
                let octets = octets.saturating_add(size);
                if !last {
                    self.state = State::Chunking {
                        envelope,
                        content,
                        octets,
                        last,
                    };
                    Reply::OK_250.text(format!("{size} octets received, {octets} in all"))
                } else {
                    self.last_chunk(envelope, content, octets)
                }
            }
            other => {
                self.state = other;
                self.out_of_order(Verb::Bdat)
            }
        };
        let step = self.finish(from, vec![reply], Next::ReadCommand, "RFC 3030 §2");
        self.explained(step, false)
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
    fn starttls(&mut self) -> (Vec<Reply>, Next) {
        if self.client.tls {
            return (
                vec![Reply::BAD_SEQUENCE_503.text("TLS is already active")],
                Next::ReadCommand,
            );
        }
        if !self.endpoint.tls_available {
            return (
                vec![Reply::NOT_IMPLEMENTED_502
                    .text("STARTTLS is not configured (start the server with --tls-self-signed)")],
                Next::ReadCommand,
            );
        }
        self.reset_identity();
        (
            vec![Reply::new(220, "2.0.0", "Ready to start TLS")],
            Next::StartTls,
        )
    }

    /// After the handshake (RFC 3207 §4.2): "the SMTP protocol is reset to the initial state".
    pub fn tls_started(&mut self) {
        self.reset_identity();
        self.client.tls = true;
    }

    fn reset_identity(&mut self) {
        self.state = State::Connected;
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
    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Reply {
        if self.client.user.is_some() {
            return Reply::BAD_SEQUENCE_503
                .text("Already authenticated (RFC 4954 §4: AUTH once per session)");
        }
        if !self.offers_auth() {
            let why = format!("{} (RFC 4954 §6)", auth::PLAINTEXT_REFUSED);
            return Reply::new(538, "5.7.11", "").text(why);
        }
        if let Verdict::ShutOut(left) = self.config.auth_budget.check(self.client.peer.ip()) {
            self.auth_failures = MAX_AUTH_FAILURES;
            return Reply::new(421, "4.7.0", "").text(shut_out_text(self.client.peer.ip(), left));
        }
        let challenge = auth::challenge(&self.config.hostname);
        self.sasl_step(auth::begin(mechanism, initial, challenge))
    }

    fn sasl_response(&mut self, line: &[u8]) -> Vec<Reply> {
        let State::Authenticating { exchange } = std::mem::replace(&mut self.state, State::Greeted)
        else {
            return vec![Reply::BAD_SEQUENCE_503];
        };
        let text = String::from_utf8_lossy(line).trim().to_string();
        vec![self.sasl_step(auth::respond(exchange, &text))]
    }

    /// One step: send a challenge (334), or check the credentials (235 or 535).
    fn sasl_step(&mut self, step: Result<Sasl, Reply>) -> Reply {
        self.state = State::Greeted;
        match step {
            Ok(Sasl::Continue(exchange, challenge)) => {
                self.state = State::Authenticating { exchange };
                Reply::new(334, "", "").text(challenge)
            }
            Ok(Sasl::Check(credentials)) => self.check(&credentials),
            Err(reply) => reply,
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
    fn after_auth(&mut self, replies: &mut Vec<Reply>) -> Next {
        if self.auth_failures < MAX_AUTH_FAILURES {
            return Next::ReadCommand;
        }
        self.state = State::Closed;
        if replies.last().is_none_or(|reply| reply.code != 421) {
            replies.push(Reply::new(
                421,
                "4.7.0",
                "Too many failed authentication attempts, closing connection",
            ));
        }
        Next::Close
    }

    /// RSET (RFC 5321 §4.1.1.5): drop the transaction, keep the client's identity.
    fn rset(&mut self) -> Reply {
        if self.state.name() != Connected {
            self.state = State::Greeted;
        }
        Reply::OK_250.text("Reset OK")
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

    /// HELP (RFC 5321 §4.1.1.8): what can be typed now, or how to use one verb.
    fn help(&self, topic: Option<&str>) -> Reply {
        match topic {
            None => self.help_for_state(),
            Some(word) => match Verb::from_name(word) {
                Some(verb) => help_for_verb(verb),
                None => {
                    Reply::new(504, "5.5.4", "").text(format!("No help for {word}; try HELP alone"))
                }
            },
        }
    }

    fn help_for_state(&self) -> Reply {
        let state = self.state.name();
        let header = format!("You are in state {state:?}. Commands you can type now:");
        let lines = VERBS.iter().filter_map(|row| {
            transition(state, row.verb)
                .map(|t| format!("  {:<40} {} -> {:?}", row.syntax, row.summary, t.to))
        });
        lines
            .fold(Reply::HELP_214.text(header), Reply::line)
            .line("HELP <command> explains one command.")
    }

    /// QUIT (RFC 5321 §4.1.1.10): 221, then the server closes.
    fn quit(&mut self) -> (Vec<Reply>, Next) {
        self.state = State::Closed;
        let text = format!("{} closing connection, goodbye", self.config.hostname);
        (vec![Reply::CLOSING_221.text(text)], Next::Close)
    }

    /// 503 with a text that says what to send first (RFC 5321 §4.1.4); 554 for DATA when every
    /// recipient was refused (RFC 5321 §3.3: "no valid recipients").
    fn out_of_order(&self, verb: Verb) -> Reply {
        let state = self.state.name();
        if let (Verb::Data, State::MailGiven { envelope }) = (verb, &self.state) {
            if envelope.refused_recipients > 0 {
                return Reply::NO_VALID_RECIPIENTS_554
                    .text("No valid recipients: every RCPT TO was refused, so there is no one to deliver to");
            }
        }
        let hint = match (state, verb) {
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
    let help = Reply::HELP_214
        .text(format!("{}: {}", info.name, info.summary))
        .line(format!("Syntax:  {}", info.syntax))
        .line(format!("Example: {}", info.example))
        .line(format!("Defined in {}", info.rfc));
    match history(verb) {
        Some(why) => help.line(format!("History: {why}")),
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
        Verb::Vrfy | Verb::Expn => {
            "spammers harvest addresses by asking VRFY and EXPN, so most public servers answer \
             252 (cannot verify, but will try to deliver) or 502 (RFC 5321 §7.3); smtplab \
             answers them so a class can see how they work"
        }
        _ => return None,
    })
}
// ANCHOR_END: history

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
            assert!(
                s.command(line.as_bytes()).replies[0].is_positive(),
                "{line}"
            );
        }
        if state == Data {
            assert_eq!(s.command(b"DATA").next, Next::ReadData);
        }
        if state == Chunking {
            assert_eq!(s.command(b"BDAT 3").next, Next::ReadChunk(3));
            assert_eq!(s.chunk(b"abc".to_vec(), 3).replies[0].code, 250);
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
                    let command = s.command(b"BDAT 3");
                    assert_eq!(command.next, Next::ReadChunk(3));
                    Step {
                        from: command.from,
                        ..s.chunk(b"abc".to_vec(), 3)
                    }
                }
                Trigger::Command(verb) => s.command(sample(verb).as_bytes()),
                Trigger::EndOfData => s.end_of_data(Ok(Body::from(&b"Subject: x\n\nhi\n"[..]))),
                Trigger::LastChunk => {
                    s.command(b"BDAT 4 LAST");
                    s.chunk(b"hi\r\n".to_vec(), 4)
                }
                Trigger::SaslResponse => {
                    s.command(auth::base64_encode(b"\0alice\0password").as_bytes())
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
                let mut step = s.command(sample(row.verb).as_bytes());
                if let Next::ReadChunk(size) = step.next {
                    step = s.chunk(b"abc".to_vec(), size);
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
        assert_eq!(s.command(b"MAIL FROM:<bad syntax").replies[0].code, 501);
        assert_eq!(s.state().name(), Greeted);
        let mut s = session_in(MailGiven);
        assert_eq!(
            s.command(b"RCPT TO:<nobody@localhost>").replies[0].code,
            550
        );
        assert_eq!(s.state().name(), MailGiven);
        assert_eq!(
            s.command(b"DATA").replies[0].code,
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
            s.command(line.as_bytes());
        }
        let step = s.end_of_data(Ok(Body::from(&b"hi\n"[..])));
        assert_eq!(step.replies[0].code, 250);
        let delivered = hook.0.lock().unwrap();
        assert_eq!(delivered[0].id, "S9.1");
        assert_eq!(
            delivered[0].envelope.recipients[0].route,
            Route::Local(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(delivered[0].content.to_vec().unwrap(), b"hi\n");
    }

    #[test]
    fn a_refused_message_is_not_delivered() {
        let mut s = session_in(Data);
        let step = s.end_of_data(Err(Reply::TOO_BIG_552));
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
            assert_eq!(s.command(b"BOGUS").next, Next::ReadCommand);
        }
        let last = s.command(b"BOGUS");
        assert_eq!(last.replies.last().map(|r| r.code), Some(421));
        assert_eq!(last.next, Next::Close);
    }

    const DEFAULT_ERRORS_FOR_TEST: u32 = crate::config::DEFAULT_MAX_ERRORS;

    #[test]
    fn help_lists_what_is_legal_now() {
        let mut s = session_in(MailGiven);
        let help = s.command(b"HELP").replies[0].text.to_string();
        assert!(help.contains("RCPT TO:<recipient>"), "{help}");
        assert!(
            !help.contains("DATA  "),
            "DATA is not legal before RCPT: {help}"
        );
        let mut s = session();
        let help = s.command(b"HELP MAIL").replies[0].text.to_string();
        assert!(help.contains("RFC 5321 §4.1.1.2"), "{help}");
        assert!(s.command(b"HELP TURN").replies[0].text.contains("obsolete"));
    }

    #[test]
    fn relaying_depends_on_the_client_not_the_sender() {
        let mut s = session_in(Greeted);
        s.command(b"MAIL FROM:<alice@localhost>");
        let reply = &s.command(b"RCPT TO:<victim@relay.example>").replies[0];
        assert_eq!((reply.code, reply.status), (550, "5.7.1"));
    }
}

//! The SMTP session: one `enum State`, one transition table, one `step` per command line.
//!
//! Interface:
//! - `TRANSITIONS`, the table of legal moves (from, trigger, to, RFC section). `step` refuses
//!   every command the table does not list with 503, and `smtplab states` draws the same table.
//! - `Session::command(line)` takes one command line and returns a `Step`: the replies, and
//!   whether to read a command next, read message data, or close.
//! - `Session::end_of_data(result)` hands the message to the `Deliver` hook and answers it.
//! - `Envelope` is what MAIL, RCPT and DATA gather; RSET, HELO/EHLO and the end of DATA drop it.
//!
//! No sockets and no files here: the session is tested line by line without a network.
//!
//! Standards: RFC 5321 §3.3, RFC 5321 §4.1.1, RFC 5321 §4.1.4, RFC 5321 §4.3.2, RFC 5321 §3.5, RFC 5321 §7.8

use std::net::SocketAddr;
use std::sync::Arc;

use crate::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::command::{self, Command, Param, Verb, VERBS};
use crate::config::Config;
use crate::extensions::{self, Limits, MailOptions};
use crate::reply::Reply;

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
    Closed,
}

/// What moves a session: a command, or the end of the message data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Command(Verb),
    EndOfData,
}

/// One legal move. A refused command (4xx/5xx) leaves the state as it was (RFC 5321 §4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: StateName,
    pub on: Trigger,
    pub to: StateName,
    pub rfc: &'static str,
}

const fn row(from: StateName, verb: Verb, to: StateName, rfc: &'static str) -> Transition {
    Transition {
        from,
        on: Trigger::Command(verb),
        to,
        rfc,
    }
}

use StateName::{Closed, Connected, Data, Greeted, MailGiven, RcptGiven};

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
    // A new HELO/EHLO or RSET drops the transaction "exactly as if a RSET command had been issued".
    row(MailGiven, Verb::Ehlo, Greeted,   "RFC 5321 §4.1.4"),
    row(MailGiven, Verb::Helo, Greeted,   "RFC 5321 §4.1.4"),
    row(RcptGiven, Verb::Ehlo, Greeted,   "RFC 5321 §4.1.4"),
    row(RcptGiven, Verb::Helo, Greeted,   "RFC 5321 §4.1.4"),
    row(Connected, Verb::Rset, Connected, "RFC 5321 §4.1.1.5"),
    row(Greeted,   Verb::Rset, Greeted,   "RFC 5321 §4.1.1.5"),
    row(MailGiven, Verb::Rset, Greeted,   "RFC 5321 §4.1.1.5"),
    row(RcptGiven, Verb::Rset, Greeted,   "RFC 5321 §4.1.1.5"),
    // "NOOP, HELP, EXPN, VRFY, and RSET ... SHOULD be processed normally" in any state (§4.1.4).
    row(Connected, Verb::Noop, Connected, "RFC 5321 §4.1.1.9"),
    row(Greeted,   Verb::Noop, Greeted,   "RFC 5321 §4.1.1.9"),
    row(MailGiven, Verb::Noop, MailGiven, "RFC 5321 §4.1.1.9"),
    row(RcptGiven, Verb::Noop, RcptGiven, "RFC 5321 §4.1.1.9"),
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
];
// ANCHOR_END: transitions

/// The legal move for `verb` in state `from`, if there is one.
pub fn transition(from: StateName, verb: Verb) -> Option<&'static Transition> {
    TRANSITIONS
        .iter()
        .find(|t| t.from == from && t.on == Trigger::Command(verb))
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
}

/// A message ready for delivery: handed to the `Deliver` hook at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub client: Client,
    pub envelope: Envelope,
    /// Lines ending in `\n`, dot-stuffing undone.
    pub content: Vec<u8>,
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
}

/// One client's session.
pub struct Session {
    state: State,
    client: Client,
    config: Arc<Config>,
    deliver: Arc<dyn Deliver>,
    errors: u32,
    id: String,
    messages: u32,
}

impl State {
    pub fn name(&self) -> StateName {
        match self {
            State::Connected => Connected,
            State::Greeted => Greeted,
            State::MailGiven { .. } => MailGiven,
            State::RcptGiven { .. } => RcptGiven,
            State::Data { .. } => Data,
            State::Closed => Closed,
        }
    }
}

impl Session {
    pub fn new(
        config: Arc<Config>,
        deliver: Arc<dyn Deliver>,
        peer: SocketAddr,
        local: SocketAddr,
        id: String,
    ) -> Session {
        Session {
            state: State::Connected,
            client: Client {
                peer,
                local,
                helo: None,
                esmtp: false,
            },
            config,
            deliver,
            errors: 0,
            id,
            messages: 0,
        }
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

    // ANCHOR: command
    /// Take one command line (without its line end) and return what to answer and do next.
    pub fn command(&mut self, line: &[u8]) -> Step {
        let from = self.state.name();
        let (replies, next, rfc) = match command::parse(line) {
            Ok(command) => {
                let rfc = command.verb().info().rfc;
                let (replies, next) = self.dispatch(command);
                (replies, next, rfc)
            }
            Err(reply) => (vec![reply], Next::ReadCommand, "RFC 5321 §4.2.4"),
        };
        self.finish(from, replies, next, rfc)
    }
    // ANCHOR_END: command

    /// A line the connection refused before parsing (too long, bare CR): it counts as an error.
    pub fn refuse_line(&mut self, reply: Reply) -> Step {
        let from = self.state.name();
        self.finish(from, vec![reply], Next::ReadCommand, "RFC 5321 §4.5.3.1.4")
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
        let limits = self.limits();
        extensions::ehlo_keywords(limits)
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
        let options = match extensions::mail_options(params, self.limits()) {
            Ok(options) => options,
            Err(reply) => return reply,
        };
        if let ReversePath::Mailbox(mailbox) = &sender {
            if !is_ascii(mailbox) {
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
        let checked = extensions::rcpt_options(params).and_then(|()| self.route(&path));
        let mut envelope = match std::mem::replace(&mut self.state, State::Closed) {
            State::MailGiven { envelope } | State::RcptGiven { envelope } => envelope,
            other => {
                self.state = other;
                return Reply::BAD_SEQUENCE_503;
            }
        };
        let reply = match checked {
            // RFC 5321 §4.5.3.1.10: over an implementation limit, answer 452 and keep the others.
            Ok(_) if envelope.recipients.len() >= self.config.max_recipients => {
                Reply::TOO_MANY_RECIPIENTS_452
            }
            Ok(route) => {
                let text = format!("Recipient {path} OK; next: another RCPT TO, or DATA");
                envelope.recipients.push(Recipient { path, route });
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
    fn route(&self, path: &ForwardPath) -> Result<Route, Reply> {
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
        if !is_ascii(mailbox) {
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

    /// RFC 5321 §3.6.2, §7.9: relaying is decided by who the client is, never by MAIL FROM.
    fn relay_route(&self, mailbox: &Mailbox) -> Result<Route, Reply> {
        if self
            .config
            .relay_from
            .iter()
            .any(|net| net.contains(self.client.peer.ip()))
        {
            return Ok(Route::Relay(mailbox.clone()));
        }
        Err(Reply::RELAY_DENIED_550.text(format!(
            "Relaying denied: {} is not a domain of this server",
            mailbox.domain
        )))
    }

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
    pub fn end_of_data(&mut self, content: Result<Vec<u8>, Reply>) -> Step {
        let from = self.state.name();
        let State::Data { envelope } = std::mem::replace(&mut self.state, State::Greeted) else {
            let reply = Reply::BAD_SEQUENCE_503;
            return self.finish(from, vec![reply], Next::ReadCommand, "RFC 5321 §4.1.1.4");
        };
        let reply = match content {
            Err(reply) => reply,
            Ok(content) => self.deliver_message(envelope, content),
        };
        self.finish(from, vec![reply], Next::ReadCommand, "RFC 5321 §4.1.1.4")
    }
    // ANCHOR_END: end_of_data

    fn deliver_message(&mut self, envelope: Envelope, content: Vec<u8>) -> Reply {
        self.messages += 1;
        let id = format!("{}.{}", self.id, self.messages);
        let message = Message {
            id: id.clone(),
            client: self.client.clone(),
            envelope,
            content,
        };
        match self.deliver.deliver(&message) {
            Ok(()) => Reply::OK_250.text(format!("OK: message {id} delivered")),
            Err(reply) => reply,
        }
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
            (MailGiven | RcptGiven, Verb::Mail) => {
                "Nested MAIL: a transaction is already open; finish it or RSET"
            }
            _ => "Bad sequence of commands; HELP shows what you can type now",
        };
        Reply::BAD_SEQUENCE_503.text(hint)
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
        _ => "SEND, SOML and SAML are obsolete (RFC 5321 Appendix F.3): delivery to a user's terminal is gone from SMTP",
    };
    Reply::NOT_IMPLEMENTED_502.text(why)
}

fn help_for_verb(verb: Verb) -> Reply {
    let info = verb.info();
    Reply::HELP_214
        .text(format!("{}: {}", info.name, info.summary))
        .line(format!("Syntax:  {}", info.syntax))
        .line(format!("Example: {}", info.example))
        .line(format!("Defined in {}", info.rfc))
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
            addr,
            addr,
            "S1".into(),
        )
    }

    /// Drive a session into `state` with commands that are legal on the way.
    fn session_in(state: StateName) -> Session {
        let mut s = session();
        let path: &[&str] = match state {
            Connected => &[],
            Greeted => &["EHLO c.example"],
            MailGiven => &["EHLO c.example", "MAIL FROM:<m@c.example>"],
            RcptGiven | Data => &[
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
        }
    }

    // ANCHOR: every_row
    /// Every row of the table: a sample command in the `from` state succeeds and lands in `to`.
    #[test]
    fn every_transition_row_holds() {
        for t in TRANSITIONS {
            let mut s = session_in(t.from);
            let step = match t.on {
                Trigger::Command(verb) => s.command(sample(verb).as_bytes()),
                Trigger::EndOfData => s.end_of_data(Ok(b"Subject: x\n\nhi\n".to_vec())),
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
        for from in [Connected, Greeted, MailGiven, RcptGiven] {
            for row in VERBS {
                if transition(from, row.verb).is_some() {
                    continue;
                }
                let mut s = session_in(from);
                let before = s.state().clone();
                let step = s.command(sample(row.verb).as_bytes());
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
        let mut s = Session::new(Arc::new(config), hook.clone(), addr, addr, "S9".into());
        for line in [
            "HELO c",
            "MAIL FROM:<m@c.example>",
            "RCPT TO:<students@localhost>",
            "DATA",
        ] {
            s.command(line.as_bytes());
        }
        let step = s.end_of_data(Ok(b"hi\n".to_vec()));
        assert_eq!(step.replies[0].code, 250);
        let delivered = hook.0.lock().unwrap();
        assert_eq!(delivered[0].id, "S9.1");
        assert_eq!(
            delivered[0].envelope.recipients[0].route,
            Route::Local(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(delivered[0].content, b"hi\n");
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

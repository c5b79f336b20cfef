//! The IMAP session: one `enum State`, one transition table, and `Session::step`, the one place
//! where the state changes.
//!
//! Interface:
//! - `IMAP_TRANSITIONS`, the legal moves (Not Authenticated → Authenticated → Selected →
//!   Logout, RFC 9051 §3, with the SASL exchange and IDLE as states of their own); a command
//!   the table does not list gets a tagged `BAD`, and `mermaid()` draws the same table.
//! - `Session::step(input)` hands the state and the input (a parsed command, a refused one, a
//!   SASL line, the end of IDLE, or a look for new mail) to a handler, which returns the next
//!   state; `step` keeps it, checks the move against the table (a debug assertion), counts the
//!   errors and returns a `Step`: the responses, and whether to go on, start TLS, or close.
//!   `command`, `refuse_line`, `sasl`, `idle_line` and `poll` are the connection's ways in.
//! - `Mailboxes`/`Mailbox`, the hook that locks, reads and rewrites a mailbox; the session
//!   itself touches no file and no socket.
//!
//! What the server keeps for a client, unlike POP3: the flags of each message, which survive
//! the session; UIDs that stay the same from session to session; and the selected mailbox, of
//! which the client is told every change (`EXISTS`, `EXPUNGE`, `FETCH (FLAGS ..)`) at the moments
//! RFC 9051 §7.5.1 allows: NOOP, CHECK, IDLE and EXPUNGE.
//!
//! Standards: RFC 9051 §3, §5.2, §5.3, §6.1.1, §6.1.2, §6.1.3, §6.2.1, §6.2.2, §6.2.3, §6.3.1, §6.3.2, §6.3.3, §6.3.9, §6.3.10, §6.3.11, §6.3.13, §6.4.1, §6.4.2, §6.4.3, §6.4.4, §6.4.5, §6.4.6, §6.4.9, §7.1, §7.2.2, §7.3.5, §7.4.1, §7.5.1, RFC 2595 §3.1

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::imap::command::{
    parse, Command, FetchItem, Flags, Refused, Response, SearchKey, SequenceSet, Status, StoreMode,
    Tagged, Verb, STAR,
};
use crate::imap::message::{fetch_data, matches, Message};
use crate::machine;
use crate::smtp::auth::{self, Credentials, Exchange, Sasl};
use crate::smtp::auth_budget::{shut_out_text, Verdict};

/// Failed logins before the server says BYE (as POP3).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// The states of RFC 9051 §3, by name, with the two waits inside them that read lines other
/// than commands: the SASL response, and the `DONE` that ends IDLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateName {
    NotAuthenticated,
    Authenticating,
    Authenticated,
    Selected,
    Idling,
    Logout,
}

/// What moves a session: a command, the client's SASL response, or `DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Command(Verb),
    SaslResponse,
    Done,
}

/// One legal move; a command answered `NO` or `BAD` leaves the state as it was.
pub type Transition = machine::Transition<StateName, Trigger>;

const fn row(from: StateName, verb: Verb, to: StateName, rfc: &'static str) -> Transition {
    Transition {
        from,
        on: Trigger::Command(verb),
        to,
        rfc,
    }
}

use StateName::{Authenticated, Authenticating, Idling, Logout, NotAuthenticated, Selected};

// ANCHOR: transitions
/// Every legal move of an IMAP server session (RFC 9051 §3). Anything else gets `BAD`.
#[rustfmt::skip]
pub const IMAP_TRANSITIONS: &[Transition] = &[
    row(NotAuthenticated, Verb::Capability,   NotAuthenticated, "RFC 9051 §6.1.1"),
    row(NotAuthenticated, Verb::Noop,         NotAuthenticated, "RFC 9051 §6.1.2"),
    row(NotAuthenticated, Verb::StartTls,     NotAuthenticated, "RFC 9051 §6.2.1"),
    row(NotAuthenticated, Verb::Login,        Authenticated,    "RFC 9051 §6.2.3"),
    // With an initial response the exchange is over at once; without, the server asks `+`.
    row(NotAuthenticated, Verb::Authenticate, Authenticated,    "RFC 9051 §6.2.2"),
    row(NotAuthenticated, Verb::Authenticate, Authenticating,   "RFC 9051 §6.2.2"),
    Transition { from: Authenticating, on: Trigger::SaslResponse, to: Authenticated,    rfc: "RFC 9051 §6.2.2" },
    Transition { from: Authenticating, on: Trigger::SaslResponse, to: NotAuthenticated, rfc: "RFC 9051 §6.2.2" },
    row(NotAuthenticated, Verb::Logout,       Logout,           "RFC 9051 §6.1.3"),
    row(Authenticated,    Verb::Capability,   Authenticated,    "RFC 9051 §6.1.1"),
    row(Authenticated,    Verb::Noop,         Authenticated,    "RFC 9051 §6.1.2"),
    row(Authenticated,    Verb::Enable,       Authenticated,    "RFC 9051 §6.3.1"),
    row(Authenticated,    Verb::Namespace,    Authenticated,    "RFC 9051 §6.3.10"),
    row(Authenticated,    Verb::List,         Authenticated,    "RFC 9051 §6.3.9"),
    row(Authenticated,    Verb::Lsub,         Authenticated,    "RFC 9051 §6.3.9"),
    row(Authenticated,    Verb::Status,       Authenticated,    "RFC 9051 §6.3.11"),
    row(Authenticated,    Verb::Select,       Selected,         "RFC 9051 §6.3.2"),
    row(Authenticated,    Verb::Examine,      Selected,         "RFC 9051 §6.3.3"),
    row(Authenticated,    Verb::Logout,       Logout,           "RFC 9051 §6.1.3"),
    row(Selected,         Verb::Capability,   Selected,         "RFC 9051 §6.1.1"),
    row(Selected,         Verb::Noop,         Selected,         "RFC 9051 §6.1.2"),
    row(Selected,         Verb::Enable,       Selected,         "RFC 9051 §6.3.1"),
    row(Selected,         Verb::Namespace,    Selected,         "RFC 9051 §6.3.10"),
    row(Selected,         Verb::List,         Selected,         "RFC 9051 §6.3.9"),
    row(Selected,         Verb::Lsub,         Selected,         "RFC 9051 §6.3.9"),
    row(Selected,         Verb::Status,       Selected,         "RFC 9051 §6.3.11"),
    row(Selected,         Verb::Check,        Selected,         "RFC 9051 §6.4.1"),
    row(Selected,         Verb::Fetch,        Selected,         "RFC 9051 §6.4.5"),
    row(Selected,         Verb::Store,        Selected,         "RFC 9051 §6.4.6"),
    row(Selected,         Verb::Search,       Selected,         "RFC 9051 §6.4.4"),
    row(Selected,         Verb::Uid,          Selected,         "RFC 9051 §6.4.9"),
    row(Selected,         Verb::Expunge,      Selected,         "RFC 9051 §6.4.3"),
    row(Selected,         Verb::Select,       Selected,         "RFC 9051 §6.3.2"),
    row(Selected,         Verb::Examine,      Selected,         "RFC 9051 §6.3.3"),
    // A SELECT that fails leaves no mailbox selected (RFC 9051 §6.3.2).
    row(Selected,         Verb::Select,       Authenticated,    "RFC 9051 §6.3.2"),
    row(Selected,         Verb::Examine,      Authenticated,    "RFC 9051 §6.3.3"),
    row(Selected,         Verb::Close,        Authenticated,    "RFC 9051 §6.4.1"),
    row(Selected,         Verb::Unselect,     Authenticated,    "RFC 9051 §6.4.2"),
    row(Selected,         Verb::Idle,         Idling,           "RFC 9051 §6.3.13"),
    Transition { from: Idling, on: Trigger::Done, to: Selected, rfc: "RFC 9051 §6.3.13" },
    row(Selected,         Verb::Logout,       Logout,           "RFC 9051 §6.1.3"),
];
// ANCHOR_END: transitions

/// Is `verb` allowed in state `from` at all?
pub fn allowed(from: StateName, verb: Verb) -> bool {
    machine::find(IMAP_TRANSITIONS, from, Trigger::Command(verb)).is_some()
}

/// Is `from → to` a move the table lists for `trigger`? Staying is always allowed (`NO` and
/// `BAD` change nothing), and so is the server closing the connection with `BYE`.
fn listed(from: StateName, trigger: Option<Trigger>, to: StateName) -> bool {
    from == to
        || to == Logout
        || IMAP_TRANSITIONS
            .iter()
            .any(|t| t.from == from && Some(t.on) == trigger && t.to == to)
}

/// Mermaid `stateDiagram-v2` text of `IMAP_TRANSITIONS` (`smtplab states --imap`).
pub fn mermaid() -> String {
    machine::mermaid(
        IMAP_TRANSITIONS,
        (NotAuthenticated, "* OK greeting", Logout),
        |on| match on {
            Trigger::Command(verb) => verb.name().to_string(),
            Trigger::SaslResponse => "SASL response".to_string(),
            Trigger::Done => "DONE".to_string(),
        },
    )
}

// ANCHOR: mailboxes
/// A mailbox as it is in the file now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub validity: u32,
    pub next_uid: u32,
    pub messages: Vec<Message>,
}

/// Why a mailbox could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Another session (IMAP or POP3) has it: `NO [INUSE]`.
    InUse,
    Failed(String),
}

/// Where mailboxes live. The session decides what to answer; the hook does the file work.
pub trait Mailboxes: Send + Sync {
    /// Lock `user`'s mailbox for this session, as POP3 locks a maildrop.
    fn open(&self, user: &str) -> Result<Box<dyn Mailbox>, OpenError>;
    /// A look at a mailbox this session has not selected (STATUS).
    fn status(&self, user: &str) -> Result<Snapshot, String>;
}

/// A selected mailbox; dropping it releases the lock.
pub trait Mailbox: Send {
    /// Read the mailbox as it is now.
    fn snapshot(&mut self) -> Result<Snapshot, String>;
    /// Has the file changed since the last `snapshot` or `write`? (Cheap: a look at its size
    /// and time, no read.)
    fn changed(&self) -> bool;
    /// Set the flags of these UIDs and remove those UIDs, under the delivery locks; returns
    /// the mailbox as it is afterwards, mail delivered meanwhile included.
    fn write(&mut self, flags: &[(u32, Flags)], expunge: &[u32]) -> Result<Snapshot, String>;
}
// ANCHOR_END: mailboxes

/// The selected mailbox as this client has been told it is.
pub struct Open {
    mailbox: Box<dyn Mailbox>,
    messages: Vec<Message>,
    validity: u32,
    next_uid: u32,
    read_only: bool,
    /// What the file held at the last write, not yet told to the client.
    unseen_changes: Option<Snapshot>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("messages", &self.messages.len())
            .field("read_only", &self.read_only)
            .finish()
    }
}

// ANCHOR: state
/// Where a session is (RFC 9051 §3). The selected mailbox, and with it the lock, lives only
/// in the states that use it, so leaving them releases the lock.
#[derive(Debug)]
pub enum State {
    NotAuthenticated,
    /// `AUTHENTICATE PLAIN` was answered `+`: the next line is the SASL response.
    Authenticating {
        tag: String,
    },
    Authenticated {
        user: String,
    },
    Selected {
        user: String,
        open: Open,
    },
    /// IDLE (RFC 9051 §6.3.13): new mail is reported as it arrives, until `DONE`.
    Idling {
        tag: String,
        user: String,
        open: Open,
    },
    Logout,
}
// ANCHOR_END: state

impl State {
    pub fn name(&self) -> StateName {
        match self {
            State::NotAuthenticated => NotAuthenticated,
            State::Authenticating { .. } => Authenticating,
            State::Authenticated { .. } => Authenticated,
            State::Selected { .. } => Selected,
            State::Idling { .. } => Idling,
            State::Logout => Logout,
        }
    }
}

/// What the connection should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next line: a command, a SASL response or `DONE`, as the state says.
    Read,
    /// Send the responses, drop unread input, run the TLS handshake, then `tls_started`.
    StartTls,
    Close,
}

/// The outcome of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub responses: Vec<Response>,
    pub next: Next,
    /// Wait this long before sending (after a failed login).
    pub pause: Duration,
    pub from: StateName,
    pub to: StateName,
    pub rfc: &'static str,
}

/// TLS for this session: can STARTTLS be offered, and is the connection inside TLS already?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tls {
    pub available: bool,
    pub active: bool,
}

/// What the session is given to take one step.
#[derive(Debug)]
pub enum Input {
    Command(Tagged),
    /// A command the parser or the connection refused: its `BAD`.
    Invalid(Response),
    /// The line after `+` in AUTHENTICATE.
    SaslResponse(String),
    /// A line during IDLE: `DONE` ends it.
    IdleLine(Vec<u8>),
    /// During IDLE: is there news to report?
    Poll,
}

impl Input {
    fn rfc(&self) -> &'static str {
        match self {
            Input::Command(tagged) => tagged.command.verb().info().rfc,
            Input::Invalid(_) => "RFC 9051 §7.1.3",
            Input::SaslResponse(_) => "RFC 9051 §6.2.2",
            Input::IdleLine(_) | Input::Poll => "RFC 9051 §6.3.13",
        }
    }

    fn trigger(&self) -> Option<Trigger> {
        match self {
            Input::Command(tagged) => Some(Trigger::Command(tagged.command.verb())),
            Input::SaslResponse(_) => Some(Trigger::SaslResponse),
            Input::IdleLine(_) => Some(Trigger::Done),
            Input::Invalid(_) | Input::Poll => None,
        }
    }
}

/// What a handler decides; only `Session::step` turns it into the session's state.
struct Outcome {
    state: State,
    responses: Vec<Response>,
    next: Next,
    pause: Duration,
}

impl Outcome {
    fn new(state: State, responses: Vec<Response>) -> Outcome {
        Outcome {
            state,
            responses,
            next: Next::Read,
            pause: Duration::ZERO,
        }
    }

    fn then(self, next: Next) -> Outcome {
        Outcome { next, ..self }
    }
}

/// One client's IMAP session.
pub struct Session {
    state: State,
    config: Arc<Config>,
    mailboxes: Arc<dyn Mailboxes>,
    errors: u32,
    auth_failures: u32,
    tls: Tls,
    peer: IpAddr,
}

/// The mailbox name of the user's mbox; the only one there is.
pub const INBOX: &str = "INBOX";

fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case(INBOX)
}

impl Session {
    pub fn new(config: Arc<Config>, mailboxes: Arc<dyn Mailboxes>, tls: Tls) -> Session {
        Session {
            state: State::NotAuthenticated,
            config,
            mailboxes,
            errors: 0,
            auth_failures: 0,
            tls,
            peer: IpAddr::from(Ipv6Addr::LOCALHOST),
        }
    }

    /// The client's address (a new session assumes this machine).
    pub fn with_peer(mut self, peer: IpAddr) -> Session {
        self.peer = peer;
        self
    }

    pub fn tls_started(&mut self) {
        self.tls.active = true;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    // ANCHOR: plaintext
    /// LOGIN and AUTHENTICATE PLAIN carry the password as it is typed: only inside TLS, or
    /// from the networks allowed to (`--plaintext-auth-from`, by default this machine): the
    /// rule of SMTP AUTH and POP3 PASS.
    fn plaintext_allowed(&self) -> bool {
        auth::plaintext_allowed(self.peer, self.tls.active, &self.config.plaintext_auth_from)
    }
    // ANCHOR_END: plaintext

    /// The capability list (RFC 9051 §7.2.2), as it is for this client now.
    /// Before login it also says how to log in: STARTTLS, and AUTH=PLAIN or LOGINDISABLED.
    fn capabilities(&self, before_login: bool) -> String {
        let mut caps = vec![
            "IMAP4rev1",
            "IMAP4rev2",
            "LITERAL+",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "SASL-IR",
        ];
        if before_login {
            if self.tls.available && !self.tls.active {
                caps.push("STARTTLS");
            }
            if self.plaintext_allowed() {
                caps.push("AUTH=PLAIN");
            } else {
                caps.push("LOGINDISABLED");
            }
        }
        caps.join(" ")
    }

    /// RFC 9051 §7.1.1: the greeting is an untagged OK, here with the capabilities.
    pub fn greeting(&self) -> Response {
        Response::untagged(format!(
            "OK [CAPABILITY {}] {} IMAP4rev2 smtplab ready; try: a1 LOGIN name password",
            self.capabilities(true),
            self.config.hostname
        ))
    }

    /// One command (its line and literals, without the final line end).
    pub fn command(&mut self, bytes: &[u8]) -> Step {
        let input = match parse(bytes) {
            Ok(tagged) => Input::Command(tagged),
            Err(refused) => Input::Invalid(refused.response()),
        };
        self.step(input)
    }

    /// A command the connection refused before parsing (too long, a literal too large).
    pub fn refuse_line(&mut self, refused: Refused) -> Step {
        self.step(Input::Invalid(refused.response()))
    }

    pub fn sasl(&mut self, line: &[u8]) -> Step {
        self.step(Input::SaslResponse(
            String::from_utf8_lossy(line).trim().to_string(),
        ))
    }

    pub fn idle_line(&mut self, line: &[u8]) -> Step {
        self.step(Input::IdleLine(line.to_vec()))
    }

    pub fn poll(&mut self) -> Step {
        self.step(Input::Poll)
    }

    // ANCHOR: step
    /// The one place where the state changes: hand the current state and the input to a
    /// handler, count the errors, check the move against the table, keep the new state.
    pub fn step(&mut self, input: Input) -> Step {
        let from = self.state.name();
        let (rfc, trigger) = (input.rfc(), input.trigger());
        // The handler owns the state while it runs; `Logout` only fills the gap until then.
        let state = std::mem::replace(&mut self.state, State::Logout);
        let outcome = match input {
            Input::Command(tagged) => self.dispatch(state, tagged),
            Input::Invalid(response) => Outcome::new(state, vec![response]),
            Input::SaslResponse(line) => self.sasl_response(state, &line),
            Input::IdleLine(line) => idle_line(state, &line),
            Input::Poll => poll(state),
        };
        let outcome = self.count_errors(outcome);
        let to = outcome.state.name();
        debug_assert!(
            listed(from, trigger, to),
            "{from:?} → {to:?} on {trigger:?} is not in IMAP_TRANSITIONS"
        );
        self.state = outcome.state;
        Step {
            responses: outcome.responses,
            next: outcome.next,
            pause: outcome.pause,
            from,
            to,
            rfc,
        }
    }
    // ANCHOR_END: step

    /// The error budget: after `max_errors` BAD responses, BYE (as SMTP and POP3 close).
    fn count_errors(&mut self, outcome: Outcome) -> Outcome {
        self.errors += outcome.responses.iter().filter(|r| r.is_bad()).count() as u32;
        if self.errors < self.config.max_errors || outcome.next != Next::Read {
            return outcome;
        }
        let mut responses = outcome.responses;
        responses.push(Response::untagged(
            "BYE Too many errors; closing the connection",
        ));
        Outcome::new(State::Logout, responses).then(Next::Close)
    }

    // ANCHOR: dispatch
    /// The table decides whether a command is legal here; a handler per command does the work.
    fn dispatch(&mut self, state: State, tagged: Tagged) -> Outcome {
        let Tagged { tag, command } = tagged;
        let verb = command.verb();
        if !allowed(state.name(), verb) {
            let text = format!(
                "{} is not allowed in the {:?} state",
                verb.name(),
                state.name()
            );
            return Outcome::new(state, vec![Response::tagged(&tag, Status::Bad, text)]);
        }
        let ok = |text: &str| Response::tagged(&tag, Status::Ok, text);
        match (state, command) {
            (_, Command::Logout) => {
                let bye = format!("BYE {} IMAP smtplab signing off", self.config.hostname);
                let responses = vec![Response::untagged(bye), ok("LOGOUT completed")];
                Outcome::new(State::Logout, responses).then(Next::Close)
            }
            (state, Command::Capability) => {
                let before_login = state.name() == NotAuthenticated;
                let caps = format!("CAPABILITY {}", self.capabilities(before_login));
                let caps = Response::untagged(caps);
                Outcome::new(state, vec![caps, ok("CAPABILITY completed")])
            }
            (state, Command::Noop | Command::Check) => {
                let (state, mut responses) = sync(state);
                responses.push(ok(&format!("{} completed", verb.name())));
                Outcome::new(state, responses)
            }
            (state, Command::StartTls) => self.starttls(state, &tag),
            (_, Command::Login { user, password }) => {
                self.login(&tag, Credentials::Password { user, password })
            }
            (_, Command::Authenticate { mechanism, initial }) => {
                self.authenticate(&tag, &mechanism, initial)
            }
            (state, Command::Enable(_)) => {
                // Nothing is enabled: IMAP4rev1 answers stay as they are (RFC 9051 §6.3.1).
                Outcome::new(
                    state,
                    vec![Response::untagged("ENABLED"), ok("ENABLE completed")],
                )
            }
            (state, Command::Namespace) => {
                let data = Response::untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                Outcome::new(state, vec![data, ok("NAMESPACE completed")])
            }
            (
                state,
                Command::List {
                    reference,
                    pattern,
                    lsub,
                },
            ) => {
                let responses = list(&tag, &reference, &pattern, lsub);
                Outcome::new(state, responses)
            }
            (state, Command::Status { mailbox, items }) => {
                self.status(state, &tag, &mailbox, &items)
            }
            (State::Authenticated { user }, Command::Select(name) | Command::Examine(name)) => {
                self.select(&tag, user, &name, verb == Verb::Examine)
            }
            (State::Selected { user, open }, Command::Select(name) | Command::Examine(name)) => {
                // The mailbox selected is closed first, without expunging (RFC 9051 §6.3.2),
                // and its lock released, so it can be selected again.
                drop(open);
                self.select(&tag, user, &name, verb == Verb::Examine)
            }
            (State::Selected { user, open }, command) => selected(&tag, user, open, command),
            (state, _) => {
                let no = Response::tagged(&tag, Status::Bad, "Not possible in this state");
                Outcome::new(state, vec![no])
            }
        }
    }
    // ANCHOR_END: dispatch

    /// STARTTLS (RFC 9051 §6.2.1): OK, then the handshake; the client asks CAPABILITY again.
    fn starttls(&self, state: State, tag: &str) -> Outcome {
        let (status, text) = if self.tls.active {
            (Status::Bad, "TLS is already active")
        } else if !self.tls.available {
            (Status::No, "STARTTLS is not configured on this server")
        } else {
            let ok = Response::tagged(tag, Status::Ok, "Begin TLS negotiation now");
            return Outcome::new(state, vec![ok]).then(Next::StartTls);
        };
        Outcome::new(state, vec![Response::tagged(tag, status, text)])
    }

    /// AUTHENTICATE PLAIN: with an initial response (SASL-IR) at once, else after `+`.
    fn authenticate(&mut self, tag: &str, mechanism: &str, initial: Option<String>) -> Outcome {
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            let no = Response::tagged(tag, Status::No, "Only AUTHENTICATE PLAIN is offered");
            return Outcome::new(State::NotAuthenticated, vec![no]);
        }
        if !self.plaintext_allowed() {
            return Outcome::new(State::NotAuthenticated, vec![privacy_required(tag)]);
        }
        match initial {
            // RFC 9051 §6.2.2: "=" is an initial response of zero length.
            Some(response) => self.sasl_check(tag, &response),
            None => {
                let state = State::Authenticating {
                    tag: tag.to_string(),
                };
                Outcome::new(state, vec![Response::Continue(String::new())])
            }
        }
    }

    fn sasl_response(&mut self, state: State, line: &str) -> Outcome {
        let State::Authenticating { tag } = state else {
            return Outcome::new(state, Vec::new());
        };
        if line == "*" {
            let bad = Response::tagged(&tag, Status::Bad, "Authentication cancelled");
            return Outcome::new(State::NotAuthenticated, vec![bad]);
        }
        self.sasl_check(&tag, line)
    }

    fn sasl_check(&mut self, tag: &str, response: &str) -> Outcome {
        let response = if response == "=" { "" } else { response };
        match auth::respond(Exchange::Plain, response) {
            Ok(Sasl::Check(credentials)) => self.login(tag, credentials),
            _ => {
                let bad = Response::tagged(tag, Status::Bad, "Cannot decode the PLAIN response");
                Outcome::new(State::NotAuthenticated, vec![bad])
            }
        }
    }

    // ANCHOR: login
    /// LOGIN, or the end of AUTHENTICATE: check the password, the same answer and pause for a
    /// wrong password and an unknown user, BYE after `MAX_AUTH_FAILURES`.
    fn login(&mut self, tag: &str, credentials: Credentials) -> Outcome {
        if !self.plaintext_allowed() {
            return Outcome::new(State::NotAuthenticated, vec![privacy_required(tag)]);
        }
        // The per-address budget that SMTP AUTH and POP3 PASS share.
        if let Verdict::ShutOut(left) = self.config.auth_budget.check(self.peer) {
            return shut_out(tag, self.peer, left, Duration::ZERO);
        }
        if let Some(user) = credentials.verify(&self.config.directory.users) {
            self.config.auth_budget.succeeded(self.peer);
            let state = State::Authenticated { user };
            let text = format!("[CAPABILITY {}] Logged in", self.capabilities(false));
            return Outcome::new(state, vec![Response::tagged(tag, Status::Ok, text)]);
        }
        self.auth_failures += 1;
        let mut pause = self.config.pop3_auth_delay;
        match self.config.auth_budget.failed(self.peer) {
            Verdict::Wait(wait) => pause += wait,
            Verdict::ShutOut(left) => return shut_out(tag, self.peer, left, pause),
        }
        let text = "[AUTHENTICATIONFAILED] Wrong user name or password";
        let mut outcome = Outcome::new(
            State::NotAuthenticated,
            vec![Response::tagged(tag, Status::No, text)],
        );
        outcome.pause = pause;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            let bye = Response::untagged("BYE Too many tries, goodbye");
            outcome.responses.push(bye);
            outcome.state = State::Logout;
            outcome.next = Next::Close;
        }
        outcome
    }
    // ANCHOR_END: login

    /// SELECT or EXAMINE INBOX: lock it (as POP3 does), read it, tell the client what it holds.
    fn select(&mut self, tag: &str, user: String, name: &str, read_only: bool) -> Outcome {
        if !is_inbox(name) {
            let no = Response::tagged(tag, Status::No, "[NONEXISTENT] Only INBOX is here");
            return Outcome::new(State::Authenticated { user }, vec![no]);
        }
        let mut mailbox = match self.mailboxes.open(&user) {
            Ok(mailbox) => mailbox,
            Err(OpenError::InUse) => {
                let text = "[INUSE] The mailbox is open in another session (IMAP or POP3)";
                let no = Response::tagged(tag, Status::No, text);
                return Outcome::new(State::Authenticated { user }, vec![no]);
            }
            Err(OpenError::Failed(_)) => return cannot_read(tag, user),
        };
        let Ok(snapshot) = mailbox.snapshot() else {
            return cannot_read(tag, user);
        };
        let open = Open {
            mailbox,
            validity: snapshot.validity,
            next_uid: snapshot.next_uid,
            messages: snapshot.messages,
            read_only,
            unseen_changes: None,
        };
        let mut responses = selected_responses(&open);
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        responses.push(Response::tagged(
            tag,
            Status::Ok,
            format!("[{code}] {verb} completed"),
        ));
        Outcome::new(State::Selected { user, open }, responses)
    }

    /// STATUS (RFC 9051 §6.3.11): counts of INBOX without selecting it.
    fn status(&mut self, state: State, tag: &str, name: &str, items: &[String]) -> Outcome {
        if !is_inbox(name) {
            let no = Response::tagged(tag, Status::No, "[NONEXISTENT] Only INBOX is here");
            return Outcome::new(state, vec![no]);
        }
        let snapshot = match &state {
            State::Selected { open, .. } => Ok(Snapshot {
                validity: open.validity,
                next_uid: open.next_uid,
                messages: open.messages.clone(),
            }),
            State::Authenticated { user } => self.mailboxes.status(user),
            _ => Err("not logged in".to_string()),
        };
        let Ok(snapshot) = snapshot else {
            let no = Response::tagged(tag, Status::No, "Cannot read the mailbox now");
            return Outcome::new(state, vec![no]);
        };
        let mut values = Vec::new();
        for item in items {
            let count = |flag: Flags, set: bool| {
                snapshot
                    .messages
                    .iter()
                    .filter(|m| m.flags.contains(flag) == set)
                    .count()
            };
            let value = match item.as_str() {
                "MESSAGES" => snapshot.messages.len(),
                "UIDNEXT" => snapshot.next_uid as usize,
                "UIDVALIDITY" => snapshot.validity as usize,
                "UNSEEN" => count(Flags::SEEN, false),
                "DELETED" => count(Flags::DELETED, true),
                "RECENT" => 0,
                "SIZE" => snapshot.messages.iter().map(|m| m.wire.len()).sum(),
                other => {
                    let text = format!("{other:?} is not a STATUS item here");
                    let bad = Response::tagged(tag, Status::Bad, text);
                    return Outcome::new(state, vec![bad]);
                }
            };
            values.push(format!("{item} {value}"));
        }
        let data = Response::untagged(format!("STATUS INBOX ({})", values.join(" ")));
        let ok = Response::tagged(tag, Status::Ok, "STATUS completed");
        Outcome::new(state, vec![data, ok])
    }
}

fn privacy_required(tag: &str) -> Response {
    let text = format!("[PRIVACYREQUIRED] {}", auth::PLAINTEXT_REFUSED);
    Response::tagged(tag, Status::No, text)
}

/// Too many failed logins from this address: NO, BYE, and the connection closes.
fn shut_out(tag: &str, peer: IpAddr, left: Duration, pause: Duration) -> Outcome {
    let text = format!("[UNAVAILABLE] {}", shut_out_text(peer, left));
    let responses = vec![
        Response::tagged(tag, Status::No, text),
        Response::untagged("BYE Too many failed logins"),
    ];
    let mut outcome = Outcome::new(State::Logout, responses).then(Next::Close);
    outcome.pause = pause;
    outcome
}

fn cannot_read(tag: &str, user: String) -> Outcome {
    let no = Response::tagged(tag, Status::No, "[UNAVAILABLE] Cannot read the mailbox now");
    Outcome::new(State::Authenticated { user }, vec![no])
}

const FLAG_LIST: &str = "\\Seen \\Answered \\Flagged \\Deleted \\Draft";

/// The untagged responses SELECT and EXAMINE give (RFC 9051 §6.3.2), with RECENT for
/// IMAP4rev1 clients.
fn selected_responses(open: &Open) -> Vec<Response> {
    let permanent = if open.read_only { "" } else { FLAG_LIST };
    let mut responses = vec![
        Response::untagged(format!("{} EXISTS", open.messages.len())),
        Response::untagged("0 RECENT"),
        Response::untagged(format!("FLAGS ({FLAG_LIST})")),
        Response::untagged(format!(
            "OK [PERMANENTFLAGS ({permanent})] Flags are kept in the mbox"
        )),
        Response::untagged(format!("OK [UIDVALIDITY {}] UIDs valid", open.validity)),
        Response::untagged(format!("OK [UIDNEXT {}] Predicted next UID", open.next_uid)),
    ];
    if let Some(n) = open
        .messages
        .iter()
        .position(|m| !m.flags.contains(Flags::SEEN))
    {
        responses.push(Response::untagged(format!(
            "OK [UNSEEN {}] First unseen message",
            n + 1
        )));
    }
    responses
}

/// LIST and LSUB: INBOX if the pattern matches it; `LIST "" ""` asks for the hierarchy
/// delimiter (RFC 9051 §6.3.9).
fn list(tag: &str, reference: &str, pattern: &str, lsub: bool) -> Vec<Response> {
    let verb = if lsub { "LSUB" } else { "LIST" };
    let mut responses = Vec::new();
    if pattern.is_empty() {
        responses.push(Response::untagged(format!(
            "{verb} (\\Noselect) \"/\" \"\""
        )));
    } else if wildcard_match(&format!("{reference}{pattern}"), INBOX) {
        responses.push(Response::untagged(format!("{verb} () \"/\" INBOX")));
    }
    responses.push(Response::tagged(
        tag,
        Status::Ok,
        format!("{verb} completed"),
    ));
    responses
}

/// `*` matches anything, `%` anything but the delimiter; INBOX in any case.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*' | b'%', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((c, rest)) => n
                .split_first()
                .is_some_and(|(d, n)| c.eq_ignore_ascii_case(d) && go(rest, n)),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

// ANCHOR: selected
/// The commands of the Selected state.
fn selected(tag: &str, user: String, mut open: Open, command: Command) -> Outcome {
    let result = match command {
        Command::Fetch { set, items, uid } => fetch(&mut open, tag, &set, &items, uid),
        Command::Store {
            set,
            mode,
            silent,
            flags,
            uid,
        } => store(&mut open, tag, &set, (mode, flags), (silent, uid)),
        Command::Search { keys, uid } => Ok(search(&open, tag, &keys, uid)),
        Command::Expunge(uids) => expunge(&mut open, tag, uids.as_ref()),
        Command::Close => {
            // CLOSE removes \Deleted messages silently (RFC 9051 §6.4.1); UNSELECT does not.
            if !open.read_only {
                let deleted = deleted_uids(&open, None);
                if !deleted.is_empty() && open.mailbox.write(&[], &deleted).is_err() {
                    let no = Response::tagged(tag, Status::No, "Cannot expunge now");
                    return Outcome::new(State::Selected { user, open }, vec![no]);
                }
            }
            let ok = Response::tagged(tag, Status::Ok, "CLOSE completed");
            return Outcome::new(State::Authenticated { user }, vec![ok]);
        }
        Command::Unselect => {
            let ok = Response::tagged(tag, Status::Ok, "UNSELECT completed");
            return Outcome::new(State::Authenticated { user }, vec![ok]);
        }
        Command::Idle => {
            let (state, mut responses) = sync(State::Selected { user, open });
            responses.push(Response::Continue("idling; send DONE to stop".into()));
            let State::Selected { user, open } = state else {
                return Outcome::new(state, responses);
            };
            let tag = tag.to_string();
            return Outcome::new(State::Idling { tag, user, open }, responses);
        }
        _ => Err(Response::tagged(
            tag,
            Status::Bad,
            "Not a Selected-state command",
        )),
    };
    let responses = result.unwrap_or_else(|error| vec![error]);
    Outcome::new(State::Selected { user, open }, responses)
}
// ANCHOR_END: selected

/// The positions (0-based) of the messages a set names. A message number beyond the mailbox
/// is a BAD; a UID that is not there is simply not matched (RFC 9051 §6.4.9).
fn resolve(open: &Open, tag: &str, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, Response> {
    let count = open.messages.len() as u32;
    if uid {
        let last = open.messages.last().map_or(0, |m| m.uid);
        return Ok(open
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                set.contains(m.uid, last)
                    || (m.uid == last && set.0.iter().any(|r| r.0 == STAR || r.1 == STAR))
            })
            .map(|(i, _)| i)
            .collect());
    }
    let too_high = set
        .0
        .iter()
        .flat_map(|r| [r.0, r.1])
        .find(|&n| n != STAR && n > count);
    if let Some(n) = too_high {
        let text = format!("No message {n}; the mailbox has {count}");
        return Err(Response::tagged(tag, Status::Bad, text));
    }
    if count == 0 {
        return Err(Response::tagged(tag, Status::Bad, "The mailbox is empty"));
    }
    Ok((1..=count)
        .filter(|&n| set.contains(n, count))
        .map(|n| n as usize - 1)
        .collect())
}

fn fetch_response(n: usize, data: Vec<u8>) -> Response {
    Response::untagged([format!("{} FETCH ", n + 1).into_bytes(), data].concat())
}

// ANCHOR: fetch
/// FETCH: BODY[...] without .PEEK marks the message `\Seen` (not in EXAMINE), and the new
/// flags are sent with it (RFC 9051 §6.4.5).
fn fetch(
    open: &mut Open,
    tag: &str,
    set: &SequenceSet,
    items: &[FetchItem],
    uid: bool,
) -> Result<Vec<Response>, Response> {
    let positions = resolve(open, tag, set, uid)?;
    let sets_seen = !open.read_only
        && items
            .iter()
            .any(|i| matches!(i, FetchItem::Body { peek: false, .. }));
    if sets_seen {
        let changes: Vec<(u32, Flags)> = positions
            .iter()
            .map(|&i| &open.messages[i])
            .filter(|m| !m.flags.contains(Flags::SEEN))
            .map(|m| (m.uid, m.flags.union(Flags::SEEN)))
            .collect();
        write_flags(open, tag, &changes)?;
    }
    let mut items = items.to_vec();
    if sets_seen && !items.contains(&FetchItem::Flags) {
        items.push(FetchItem::Flags);
    }
    let mut responses: Vec<Response> = positions
        .into_iter()
        .map(|i| fetch_response(i, fetch_data(&open.messages[i], &items)))
        .collect();
    responses.push(Response::tagged(tag, Status::Ok, "FETCH completed"));
    Ok(responses)
}
// ANCHOR_END: fetch

/// Write new flags to the mailbox and, once written, into the session's view.
fn write_flags(open: &mut Open, tag: &str, changes: &[(u32, Flags)]) -> Result<(), Response> {
    if changes.is_empty() {
        return Ok(());
    }
    let snapshot = open
        .mailbox
        .write(changes, &[])
        .map_err(|_| Response::tagged(tag, Status::No, "Cannot write the flags now"))?;
    for message in &mut open.messages {
        if let Some((_, flags)) = changes.iter().find(|(uid, _)| *uid == message.uid) {
            message.flags = *flags;
        }
    }
    open.unseen_changes = Some(snapshot);
    Ok(())
}

// ANCHOR: store
/// STORE: set, add or remove flags, written to the mbox at once; the new flags are sent back
/// unless `.SILENT` (RFC 9051 §6.4.6).
fn store(
    open: &mut Open,
    tag: &str,
    set: &SequenceSet,
    (mode, flags): (StoreMode, Flags),
    (silent, uid): (bool, bool),
) -> Result<Vec<Response>, Response> {
    if open.read_only {
        let text = "[READ-ONLY] The mailbox was opened with EXAMINE";
        return Err(Response::tagged(tag, Status::No, text));
    }
    let positions = resolve(open, tag, set, uid)?;
    let changes: Vec<(u32, Flags)> = positions
        .iter()
        .map(|&i| &open.messages[i])
        .map(|m| {
            let new = match mode {
                StoreMode::Replace => flags,
                StoreMode::Add => m.flags.union(flags),
                StoreMode::Remove => m.flags.without(flags),
            };
            (m.uid, new)
        })
        .filter(|(uid, new)| {
            open.messages
                .iter()
                .any(|m| m.uid == *uid && m.flags != *new)
        })
        .collect();
    write_flags(open, tag, &changes)?;
    let mut responses = Vec::new();
    if !silent {
        let items = if uid {
            vec![FetchItem::Uid, FetchItem::Flags]
        } else {
            vec![FetchItem::Flags]
        };
        for i in positions {
            responses.push(fetch_response(i, fetch_data(&open.messages[i], &items)));
        }
    }
    responses.push(Response::tagged(tag, Status::Ok, "STORE completed"));
    Ok(responses)
}
// ANCHOR_END: store

/// SEARCH: `* SEARCH` with message numbers, or UIDs for UID SEARCH (RFC 9051 §6.4.4).
fn search(open: &Open, tag: &str, keys: &[SearchKey], uid: bool) -> Vec<Response> {
    let largest = (
        open.messages.len() as u32,
        open.messages.last().map_or(0, |m| m.uid),
    );
    let found: Vec<String> = open
        .messages
        .iter()
        .enumerate()
        .filter(|(i, m)| keys.iter().all(|k| matches(m, k, *i as u32 + 1, largest)))
        .map(|(i, m)| if uid { m.uid } else { i as u32 + 1 }.to_string())
        .collect();
    let data = if found.is_empty() {
        "SEARCH".to_string()
    } else {
        format!("SEARCH {}", found.join(" "))
    };
    vec![
        Response::untagged(data),
        Response::tagged(tag, Status::Ok, "SEARCH completed"),
    ]
}

fn deleted_uids(open: &Open, within: Option<&SequenceSet>) -> Vec<u32> {
    let last = open.messages.last().map_or(0, |m| m.uid);
    open.messages
        .iter()
        .filter(|m| m.flags.contains(Flags::DELETED))
        .filter(|m| within.is_none_or(|set| set.contains(m.uid, last)))
        .map(|m| m.uid)
        .collect()
}

// ANCHOR: expunge
/// EXPUNGE (or UID EXPUNGE, only within the UIDs given): remove the `\Deleted` messages from
/// the mbox, then `* n EXPUNGE` for each, highest number first so no number shifts under the
/// client (RFC 9051 §7.5.1).
fn expunge(
    open: &mut Open,
    tag: &str,
    within: Option<&SequenceSet>,
) -> Result<Vec<Response>, Response> {
    if open.read_only {
        let text = "[READ-ONLY] The mailbox was opened with EXAMINE";
        return Err(Response::tagged(tag, Status::No, text));
    }
    let doomed = deleted_uids(open, within);
    let mut responses = Vec::new();
    if !doomed.is_empty() {
        let snapshot = open
            .mailbox
            .write(&[], &doomed)
            .map_err(|_| Response::tagged(tag, Status::No, "Cannot expunge now"))?;
        for i in (0..open.messages.len()).rev() {
            if doomed.contains(&open.messages[i].uid) {
                open.messages.remove(i);
                responses.push(Response::untagged(format!("{} EXPUNGE", i + 1)));
            }
        }
        open.unseen_changes = Some(snapshot);
    }
    responses.extend(tell_changes(open));
    responses.push(Response::tagged(tag, Status::Ok, "EXPUNGE completed"));
    Ok(responses)
}
// ANCHOR_END: expunge

// ANCHOR: sync
/// Tell the client what changed in the file since it was last told: messages gone (mutt, or
/// a rewrite), flags changed elsewhere, and new mail (RFC 9051 §5.2, §7.4.1).
fn tell_changes(open: &mut Open) -> Vec<Response> {
    let snapshot = match open.unseen_changes.take() {
        Some(snapshot) => snapshot,
        None if open.mailbox.changed() => match open.mailbox.snapshot() {
            Ok(snapshot) => snapshot,
            Err(_) => return Vec::new(),
        },
        None => return Vec::new(),
    };
    let mut responses = Vec::new();
    if snapshot.validity != open.validity {
        // Every UID changed: the old messages are gone, the mailbox is new.
        responses.push(Response::untagged(format!(
            "OK [UIDVALIDITY {}] UIDs renumbered",
            snapshot.validity
        )));
        open.messages.clear();
        open.validity = snapshot.validity;
    }
    for i in (0..open.messages.len()).rev() {
        let uid = open.messages[i].uid;
        if !snapshot.messages.iter().any(|m| m.uid == uid) {
            open.messages.remove(i);
            responses.push(Response::untagged(format!("{} EXPUNGE", i + 1)));
        }
    }
    for (i, message) in open.messages.iter_mut().enumerate() {
        let now = snapshot.messages.iter().find(|m| m.uid == message.uid);
        if let Some(now) = now.filter(|now| now.flags != message.flags) {
            message.flags = now.flags;
            let data = fetch_data(message, &[FetchItem::Flags]);
            responses.push(fetch_response(i, data));
        }
    }
    let last = open.messages.last().map_or(0, |m| m.uid);
    let before = open.messages.len();
    open.messages
        .extend(snapshot.messages.into_iter().filter(|m| m.uid > last));
    if open.messages.len() != before || !responses.is_empty() {
        responses.push(Response::untagged(format!(
            "{} EXISTS",
            open.messages.len()
        )));
    }
    open.next_uid = snapshot.next_uid;
    responses
}

/// NOOP, CHECK and IDLE report changes in the Selected state; elsewhere there is nothing.
fn sync(state: State) -> (State, Vec<Response>) {
    match state {
        State::Selected { user, mut open } => {
            let responses = tell_changes(&mut open);
            (State::Selected { user, open }, responses)
        }
        state => (state, Vec::new()),
    }
}
// ANCHOR_END: sync

/// During IDLE: report new mail as it comes.
fn poll(state: State) -> Outcome {
    match state {
        State::Idling {
            tag,
            user,
            mut open,
        } => {
            let responses = tell_changes(&mut open);
            Outcome::new(State::Idling { tag, user, open }, responses)
        }
        state => Outcome::new(state, Vec::new()),
    }
}

/// The line that ends IDLE: `DONE` (any case) completes the command; anything else is a BAD.
fn idle_line(state: State, line: &[u8]) -> Outcome {
    let State::Idling { tag, user, open } = state else {
        return Outcome::new(state, Vec::new());
    };
    let response = if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
        Response::tagged(&tag, Status::Ok, "IDLE terminated")
    } else {
        Response::tagged(&tag, Status::Bad, "IDLE ends with DONE")
    };
    Outcome::new(State::Selected { user, open }, vec![response])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::command::VERBS;
    use std::sync::Mutex;

    /// A mailbox in memory: its messages, whether a session has it, and every write.
    #[derive(Default)]
    struct Memory {
        messages: Mutex<Vec<Message>>,
        in_use: Mutex<bool>,
        changed: Mutex<bool>,
    }

    struct Held(Arc<Memory>);

    impl Drop for Held {
        fn drop(&mut self) {
            *self.0.in_use.lock().unwrap() = false;
        }
    }

    fn snapshot(memory: &Memory) -> Snapshot {
        let messages = memory.messages.lock().unwrap().clone();
        let next_uid = messages.last().map_or(1, |m| m.uid + 1);
        Snapshot {
            validity: 42,
            next_uid,
            messages,
        }
    }

    impl Mailboxes for Arc<Memory> {
        fn open(&self, _user: &str) -> Result<Box<dyn Mailbox>, OpenError> {
            let mut in_use = self.in_use.lock().unwrap();
            if *in_use {
                return Err(OpenError::InUse);
            }
            *in_use = true;
            Ok(Box::new(Held(self.clone())))
        }

        fn status(&self, _user: &str) -> Result<Snapshot, String> {
            Ok(snapshot(self))
        }
    }

    impl Mailbox for Held {
        fn snapshot(&mut self) -> Result<Snapshot, String> {
            *self.0.changed.lock().unwrap() = false;
            Ok(snapshot(&self.0))
        }

        fn changed(&self) -> bool {
            *self.0.changed.lock().unwrap()
        }

        fn write(&mut self, flags: &[(u32, Flags)], expunge: &[u32]) -> Result<Snapshot, String> {
            let mut messages = self.0.messages.lock().unwrap();
            messages.retain(|m| !expunge.contains(&m.uid));
            for m in messages.iter_mut() {
                if let Some((_, f)) = flags.iter().find(|(uid, _)| *uid == m.uid) {
                    m.flags = *f;
                }
            }
            drop(messages);
            Ok(snapshot(&self.0))
        }
    }

    fn message(uid: u32, subject: &str) -> Message {
        let text = format!("From: bob@example.org\nSubject: {subject}\n\nHello {uid}\n");
        Message::new(
            uid,
            Flags::default(),
            text.as_bytes(),
            "03-Dec-2026 09:28:47 +0000".into(),
        )
    }

    fn memory() -> Arc<Memory> {
        let memory = Arc::new(Memory::default());
        *memory.messages.lock().unwrap() =
            vec![message(1, "one"), message(2, "two"), message(5, "five")];
        memory
    }

    fn config() -> Arc<Config> {
        Arc::new(Config {
            hostname: "imap.test".into(),
            pop3_auth_delay: Duration::from_millis(7),
            ..Config::default()
        })
    }

    fn session(memory: &Arc<Memory>) -> Session {
        let tls = Tls {
            available: true,
            active: false,
        };
        Session::new(config(), Arc::new(memory.clone()), tls)
    }

    fn run(s: &mut Session, line: &str) -> Step {
        s.command(line.as_bytes())
    }

    /// Every response of a step as text, joined.
    fn text(step: &Step) -> String {
        step.responses
            .iter()
            .map(|r| String::from_utf8_lossy(&r.to_wire()).into_owned())
            .collect()
    }

    fn session_in(memory: &Arc<Memory>, state: StateName) -> Session {
        let mut s = session(memory);
        match state {
            NotAuthenticated | Logout => {}
            Authenticating => {
                run(&mut s, "a AUTHENTICATE PLAIN");
            }
            Authenticated | Selected | Idling => {
                assert!(text(&run(&mut s, "a LOGIN alice password")).contains("a OK"));
                if state != Authenticated {
                    assert!(text(&run(&mut s, "b SELECT INBOX")).contains("b OK"));
                }
                if state == Idling {
                    run(&mut s, "c IDLE");
                }
            }
        }
        assert_eq!(s.state().name(), state);
        s
    }

    fn plain(user: &str, password: &str) -> String {
        auth::base64_encode(format!("\0{user}\0{password}").as_bytes())
    }

    #[test]
    fn every_row_of_the_table_moves_as_it_says() {
        for t in IMAP_TRANSITIONS {
            let memory = memory();
            let mut s = session_in(&memory, t.from);
            let fail = matches!(t.to, NotAuthenticated | Authenticated) && t.from != t.to;
            let step = match (t.on, t.to) {
                (Trigger::Command(Verb::Authenticate), Authenticated) => run(
                    &mut s,
                    &format!("t AUTHENTICATE PLAIN {}", plain("alice", "password")),
                ),
                (Trigger::Command(Verb::Authenticate), _) => run(&mut s, "t AUTHENTICATE PLAIN"),
                (Trigger::SaslResponse, NotAuthenticated) => s.sasl(b"*"),
                (Trigger::SaslResponse, _) => s.sasl(plain("alice", "password").as_bytes()),
                (Trigger::Done, _) => s.idle_line(b"DONE"),
                (Trigger::Command(verb @ (Verb::Select | Verb::Examine)), Authenticated) => {
                    run(&mut s, &format!("t {} Nowhere", verb.name()))
                }
                (Trigger::Command(verb), _) => run(&mut s, sample(verb)),
            };
            assert_eq!(
                (step.from, step.to),
                (t.from, t.to),
                "{t:?}: {}",
                text(&step)
            );
            let failed_on_purpose = fail
                && matches!(
                    t.on,
                    Trigger::SaslResponse | Trigger::Command(Verb::Select | Verb::Examine)
                );
            assert!(
                failed_on_purpose || !step.responses.iter().any(|r| r.is_bad()),
                "{t:?}: {}",
                text(&step)
            );
        }
    }

    fn sample(verb: Verb) -> &'static str {
        match verb {
            Verb::Capability => "t CAPABILITY",
            Verb::Noop => "t NOOP",
            Verb::Logout => "t LOGOUT",
            Verb::StartTls => "t STARTTLS",
            Verb::Authenticate => "t AUTHENTICATE PLAIN",
            Verb::Login => "t LOGIN alice password",
            Verb::Enable => "t ENABLE IMAP4rev2",
            Verb::Select => "t SELECT INBOX",
            Verb::Examine => "t EXAMINE INBOX",
            Verb::Namespace => "t NAMESPACE",
            Verb::List => "t LIST \"\" *",
            Verb::Lsub => "t LSUB \"\" *",
            Verb::Status => "t STATUS INBOX (MESSAGES)",
            Verb::Idle => "t IDLE",
            Verb::Check => "t CHECK",
            Verb::Close => "t CLOSE",
            Verb::Unselect => "t UNSELECT",
            Verb::Expunge => "t EXPUNGE",
            Verb::Search => "t SEARCH ALL",
            Verb::Fetch => "t FETCH 1 FLAGS",
            Verb::Store => "t STORE 1 +FLAGS \\Seen",
            Verb::Uid => "t UID FETCH 1 FLAGS",
        }
    }

    #[test]
    fn every_command_the_table_does_not_list_is_refused_and_changes_nothing() {
        for state in [NotAuthenticated, Authenticated, Selected] {
            for info in VERBS {
                if allowed(state, info.verb) {
                    continue;
                }
                let memory = memory();
                let mut s = session_in(&memory, state);
                let step = run(&mut s, sample(info.verb));
                assert!(step.responses[0].is_bad(), "{state:?} {}", info.name);
                assert_eq!(step.to, state, "{state:?} {}", info.name);
            }
            assert!(IMAP_TRANSITIONS
                .iter()
                .all(|t| t.rfc.starts_with("RFC 9051 §")));
        }
    }

    #[test]
    fn select_fetch_store_expunge() {
        let memory = memory();
        let mut s = session_in(&memory, Authenticated);
        let select = text(&run(&mut s, "a SELECT inbox"));
        for want in [
            "* 3 EXISTS",
            "[UIDVALIDITY 42]",
            "[UIDNEXT 6]",
            "[UNSEEN 1]",
            "a OK [READ-WRITE]",
        ] {
            assert!(select.contains(want), "{want}: {select}");
        }
        let fetch = text(&run(
            &mut s,
            "b UID FETCH 5 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
        ));
        assert!(fetch.starts_with("* 3 FETCH (UID 5 FLAGS () BODY[HEADER.FIELDS (SUBJECT)] {17}\r\nSubject: five\r\n\r\n)\r\n"), "{fetch}");
        let fetch = text(&run(&mut s, "c FETCH 2 BODY[TEXT]"));
        assert!(
            fetch.contains("FLAGS (\\Seen)"),
            "a FETCH without PEEK sets \\Seen: {fetch}"
        );
        assert_eq!(memory.messages.lock().unwrap()[1].flags, Flags::SEEN);
        let store = text(&run(&mut s, "d STORE 1,3 +FLAGS (\\Deleted)"));
        assert!(
            store.contains("* 1 FETCH (FLAGS (\\Deleted))") && store.contains("* 3 FETCH"),
            "{store}"
        );
        let silent = text(&run(&mut s, "e STORE 2 -FLAGS.SILENT \\Seen"));
        assert_eq!(silent, "e OK STORE completed\r\n");
        let search = text(&run(&mut s, "f UID SEARCH DELETED"));
        assert!(search.starts_with("* SEARCH 1 5\r\n"), "{search}");
        let expunge = text(&run(&mut s, "g EXPUNGE"));
        assert!(
            expunge.starts_with("* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n"),
            "{expunge}"
        );
        let uids: Vec<u32> = memory
            .messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect();
        assert_eq!(uids, [2]);
        assert!(text(&run(&mut s, "h FETCH 2 FLAGS")).starts_with("h BAD"));
    }

    #[test]
    fn examine_is_read_only() {
        let memory = memory();
        let mut s = session_in(&memory, Authenticated);
        assert!(text(&run(&mut s, "a EXAMINE INBOX")).contains("[READ-ONLY]"));
        run(&mut s, "b FETCH 1 BODY[]");
        assert_eq!(memory.messages.lock().unwrap()[0].flags, Flags::default());
        assert!(text(&run(&mut s, "c STORE 1 +FLAGS \\Seen")).starts_with("c NO [READ-ONLY]"));
        assert!(text(&run(&mut s, "d EXPUNGE")).starts_with("d NO"));
    }

    #[test]
    fn new_mail_is_reported_in_noop_and_idle() {
        let memory = memory();
        let mut s = session_in(&memory, Idling);
        assert!(s.poll().responses.is_empty());
        memory.messages.lock().unwrap().push(message(9, "nine"));
        *memory.changed.lock().unwrap() = true;
        assert_eq!(text(&s.poll()), "* 4 EXISTS\r\n");
        assert!(s.poll().responses.is_empty(), "told once");
        assert_eq!(text(&s.idle_line(b"done")), "c OK IDLE terminated\r\n");
        memory.messages.lock().unwrap().remove(0);
        *memory.changed.lock().unwrap() = true;
        assert_eq!(
            text(&run(&mut s, "d NOOP")),
            "* 1 EXPUNGE\r\n* 3 EXISTS\r\nd OK NOOP completed\r\n"
        );
    }

    #[test]
    fn a_second_session_gets_inuse_until_the_first_unselects() {
        let memory = memory();
        let mut first = session_in(&memory, Selected);
        let mut second = session_in(&memory, Authenticated);
        assert!(text(&run(&mut second, "x SELECT INBOX")).starts_with("x NO [INUSE]"));
        run(&mut first, "y UNSELECT");
        assert!(text(&run(&mut second, "x SELECT INBOX")).contains("x OK"));
    }

    #[test]
    fn logins_plain_policy_and_failures() {
        let memory = memory();
        let mut s = session(&memory).with_peer("192.0.2.1".parse().unwrap());
        assert!(text(&run(&mut s, "a CAPABILITY")).contains("LOGINDISABLED"));
        let step = run(&mut s, "b LOGIN alice password");
        assert!(text(&step).starts_with("b NO [PRIVACYREQUIRED]"));
        s.tls_started();
        let caps = text(&run(&mut s, "c CAPABILITY"));
        assert!(
            caps.contains("AUTH=PLAIN") && !caps.contains("STARTTLS"),
            "{caps}"
        );
        let wrong = run(&mut s, "d LOGIN alice passwort");
        let unknown = run(&mut s, "e LOGIN nobody password");
        let untagged = |step: &Step| text(step).split_once(' ').map(|(_, t)| t.to_string());
        assert_eq!(untagged(&wrong), untagged(&unknown));
        assert_eq!(wrong.pause, Duration::from_millis(7));
        let last = run(&mut s, "f LOGIN alice x");
        assert_eq!((last.next, last.to), (Next::Close, Logout));
        assert!(text(&last).contains("* BYE"));
    }

    #[test]
    fn authenticate_plain_with_and_without_initial_response() {
        let memory = memory();
        let mut s = session(&memory);
        let step = run(&mut s, "a AUTHENTICATE PLAIN");
        assert_eq!(text(&step), "+ \r\n");
        let step = s.sasl(b"not base64!");
        assert!(text(&step).starts_with("a BAD"));
        run(&mut s, "b AUTHENTICATE PLAIN");
        let step = s.sasl(plain("alice", "password").as_bytes());
        assert!(text(&step).starts_with("b OK"), "{}", text(&step));
        assert_eq!(step.to, Authenticated);
        let mut s = session(&memory);
        assert!(text(&run(&mut s, "c AUTHENTICATE CRAM-MD5")).starts_with("c NO"));
    }

    #[test]
    fn too_many_errors_say_bye() {
        let memory = memory();
        let mut s = session_in(&memory, Selected);
        let mut last = run(&mut s, "a BOGUS");
        for _ in 1..config().max_errors {
            last = run(&mut s, "a BOGUS");
        }
        assert_eq!((last.next, last.to), (Next::Close, Logout));
        assert!(text(&last).contains("* BYE Too many errors"));
        assert!(!*memory.in_use.lock().unwrap(), "the lock is released");
    }

    #[test]
    fn list_status_and_the_diagram() {
        let memory = memory();
        let mut s = session_in(&memory, Authenticated);
        assert!(text(&run(&mut s, "a LIST \"\" \"\""))
            .starts_with("* LIST (\\Noselect) \"/\" \"\"\r\n"));
        assert!(text(&run(&mut s, "b LIST \"\" %")).starts_with("* LIST () \"/\" INBOX\r\n"));
        assert_eq!(
            text(&run(&mut s, "c LIST \"\" Sent")),
            "c OK LIST completed\r\n"
        );
        let status = text(&run(
            &mut s,
            "d STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY)",
        ));
        assert!(
            status.starts_with("* STATUS INBOX (MESSAGES 3 UNSEEN 3 UIDNEXT 6 UIDVALIDITY 42)\r\n"),
            "{status}"
        );
        let diagram = mermaid();
        assert!(diagram.contains("NotAuthenticated --> Authenticated: LOGIN, AUTHENTICATE"));
        assert!(diagram.contains("Selected --> Idling: IDLE"));
        assert!(diagram.contains("Idling --> Selected: DONE"));
    }
}

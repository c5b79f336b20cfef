//! The POP3 session: one `enum State`, one transition table, and `Session::step`, the one place
//! where the state changes.
//!
//! Interface:
//! - `POP3_TRANSITIONS`, the legal moves (AUTHORIZATION → TRANSACTION → UPDATE, RFC 1939 §3);
//!   a command the table does not list gets `-ERR`, and `mermaid()` draws the same table.
//! - `Session::step(input)` hands the state and the input (a command parsed by `command.rs`, a
//!   refused line, or the UPDATE work) to a handler, which takes what it needs (the name USER
//!   gave, the maildrop) by value and returns the next state; `step` keeps it, checks the move
//!   against the table (a debug assertion), and returns a `Step`: the responses, and whether
//!   to read the next command, enter UPDATE, start TLS, or close. `command(line)`,
//!   `refuse_line` and `update` are the connection's three ways to call it.
//! - `Maildrops`, the hook that locks and reads a maildrop at login and removes the deleted
//!   messages in UPDATE; the session itself touches no file and no socket.
//! - `unique_ids` (UIDL) and `to_crlf` (the size of a message) are the rules clients rely on.
//! - RETR and TOP answer with a `Retrieval`; the connection then calls `send_message`, which
//!   has the hook stream the message through a `Wire` (CRLF, TOP's cut, byte-stuffing), so a
//!   message is never in memory whole.
//!
//! The size rule (RFC 1939 §11): a message is sent with every line ending in CRLF, and its size
//! in STAT, LIST and RETR is the number of octets of exactly that CRLF form, before
//! byte-stuffing and without the terminating `.` line. So LIST n equals the bytes a client has
//! after it removes the stuffing and the termination from RETR n.
//!
//! Standards: RFC 1939 §3, §4, §5, §6, §7, §11, RFC 2449 §5, §6.6, §8.1.2, RFC 2595 §4

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::machine;
use crate::pop3::command::{parse, Command, Response, Retrieval, Verb};
use crate::smtp::auth;
use crate::smtp::auth_budget::{shut_out_text, Verdict};

/// Failed logins before the server closes the connection (RFC 1939 §4 lets it close after any).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// The longest unique-id: "one to 70 characters" (RFC 1939 §7, UIDL).
pub const MAX_UID_LEN: usize = 70;

/// The states of RFC 1939 §3, by name: what the table and the diagram use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateName {
    Authorization,
    Transaction,
    Update,
    Closed,
}

/// What moves a session: a command, or the end of the UPDATE work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Command(Verb),
    /// UPDATE has removed the deleted messages (or failed to); the session ends.
    Updated,
}

/// One legal move of a POP3 session; a command answered `-ERR` leaves the state as it was.
pub type Transition = machine::Transition<StateName, Trigger>;

const fn row(from: StateName, verb: Verb, to: StateName, rfc: &'static str) -> Transition {
    Transition {
        from,
        on: Trigger::Command(verb),
        to,
        rfc,
    }
}

use StateName::{Authorization, Closed, Transaction, Update};

// ANCHOR: transitions
/// Every legal move of a POP3 server session (RFC 1939 §3). Anything else gets `-ERR`.
#[rustfmt::skip]
pub const POP3_TRANSITIONS: &[Transition] = &[
    row(Authorization, Verb::User, Authorization, "RFC 1939 §7"),
    // Only with the right password and the maildrop lock; otherwise -ERR and no move (§4).
    row(Authorization, Verb::Pass, Transaction,   "RFC 1939 §7"),
    row(Authorization, Verb::Capa, Authorization, "RFC 2449 §5"),
    // STLS only before login (RFC 2595 §4); after the handshake the session is still here.
    row(Authorization, Verb::Stls, Authorization, "RFC 2595 §4"),
    // QUIT before login: no UPDATE, nothing to remove.
    row(Authorization, Verb::Quit, Closed,        "RFC 1939 §4"),
    row(Transaction,   Verb::Stat, Transaction,   "RFC 1939 §5"),
    row(Transaction,   Verb::List, Transaction,   "RFC 1939 §5"),
    row(Transaction,   Verb::Retr, Transaction,   "RFC 1939 §5"),
    row(Transaction,   Verb::Dele, Transaction,   "RFC 1939 §5"),
    row(Transaction,   Verb::Noop, Transaction,   "RFC 1939 §5"),
    row(Transaction,   Verb::Rset, Transaction,   "RFC 1939 §5"),
    row(Transaction,   Verb::Top,  Transaction,   "RFC 1939 §7"),
    row(Transaction,   Verb::Uidl, Transaction,   "RFC 1939 §7"),
    row(Transaction,   Verb::Capa, Transaction,   "RFC 2449 §5"),
    // Only QUIT commits the deletions; a dropped connection never reaches UPDATE (§6).
    row(Transaction,   Verb::Quit, Update,        "RFC 1939 §6"),
    Transition { from: Update, on: Trigger::Updated, to: Closed, rfc: "RFC 1939 §6" },
];
// ANCHOR_END: transitions

/// The legal move for `verb` in state `from`, if there is one.
pub fn transition(from: StateName, verb: Verb) -> Option<&'static Transition> {
    machine::find(POP3_TRANSITIONS, from, Trigger::Command(verb))
}

/// Mermaid `stateDiagram-v2` text of `POP3_TRANSITIONS` (`smtplab states --pop3`).
pub fn mermaid() -> String {
    machine::mermaid(
        POP3_TRANSITIONS,
        (Authorization, "+OK greeting", Closed),
        label,
    )
}

/// How each trigger of the POP3 table is labelled in a picture.
pub fn label(on: &Trigger) -> String {
    match on {
        Trigger::Command(verb) => verb.name().to_string(),
        Trigger::Updated => "deletions committed".to_string(),
    }
}

/// One message of a maildrop as the hook hands it over: what LIST and UIDL show. Its content
/// stays where it is until RETR or TOP asks (`MessageSource`), so a session's memory does not
/// grow with the maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its unique-id (see `unique_ids`).
    pub uid: String,
    /// Its size on the wire, CRLF line ends (`to_crlf`): what STAT and LIST count.
    pub size: usize,
}

/// Where RETR and TOP read a message from. Held for as long as the session may use the
/// maildrop, with the exclusive-access lock; dropping it lets the next session in.
pub trait MessageSource: Send {
    /// Is message `index` (from 0) still the one indexed at login? Read through once, in
    /// bounded memory, before `+OK` is sent.
    fn verify(&self, index: usize) -> io::Result<()>;
    /// Stream message `index` into `wire` (`Wire`), mbox quoting undone. Fails if the
    /// message changed since `verify`: the caller then ends the connection before `.`, so the
    /// client never takes what it got for the message.
    fn send(&self, index: usize, wire: &mut Wire<&mut dyn Write>) -> io::Result<()>;
}

/// A maildrop opened at login: its messages and their source (RFC 1939 §4).
pub struct Opened {
    pub messages: Vec<StoredMessage>,
    pub source: Box<dyn MessageSource>,
}

/// Why a maildrop could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Another session holds it (answered `-ERR [IN-USE]`, RFC 2449 §8.1.2).
    InUse,
    /// Anything else: logged by the hook, answered with a plain `-ERR`.
    Failed(String),
}

// ANCHOR: maildrops
/// Where maildrops live. The session decides what to answer; the hook does the file work.
pub trait Maildrops: Send + Sync {
    /// Lock `user`'s maildrop for this session and read it (RFC 1939 §4).
    fn open(&self, user: &str) -> Result<Opened, OpenError>;
    /// UPDATE: remove the messages with these unique-ids for good, keeping everything else,
    /// including mail that arrived during the session. Returns how many were removed.
    fn commit(&self, user: &str, deleted: &[String]) -> Result<usize, String>;
}
// ANCHOR_END: maildrops

// ANCHOR: uidl
/// 64-bit FNV-1a (Fowler–Noll–Vo): a few lines, no crate, and the same on every machine.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_more(FNV1A64_START, bytes)
}

/// FNV-1a's starting value (the "offset basis").
pub const FNV1A64_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Go on hashing: `fnv1a64_more(fnv1a64(a), b) == fnv1a64(ab)`, for a message read in pieces.
pub fn fnv1a64_more(hash: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The unique-ids of a maildrop's messages, in order, from each message's bytes as stored
/// (the mbox `From ` line with its delivery time, and the quoted content).
///
/// Derived from content, not from a counter, so an id needs no database and stays the same in
/// every session for as long as the message is in the file (RFC 1939 §7: "the unique-id of a
/// message ... must persist across sessions"). Two byte-identical messages would share a hash,
/// so the second gets `-2`, the third `-3`: ids stay unique within the maildrop, and UPDATE,
/// which deletes by id, still deletes the right number of copies.
pub fn unique_ids<'a>(raw_messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
    ids_of_hashes(raw_messages.into_iter().map(fnv1a64))
}

/// `unique_ids` from each message's `fnv1a64` hash, for a maildrop read one message at a time.
pub fn ids_of_hashes(each_hash: impl IntoIterator<Item = u64>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut hashes: Vec<u64> = Vec::new();
    for hash in each_hash {
        let copies = hashes.iter().filter(|&&h| h == hash).count();
        hashes.push(hash);
        ids.push(match copies {
            0 => format!("{hash:016x}"),
            n => format!("{hash:016x}-{}", n + 1),
        });
    }
    ids
}
// ANCHOR_END: uidl

/// The message as it goes on the wire: every `\n` not already after a `\r` becomes CRLF, and a
/// last line without an end gets one (RFC 1939 §11). Its length is the message's size.
pub fn to_crlf(content: &[u8]) -> Vec<u8> {
    Wire::whole(content, None)
}

/// The header, the empty line, and the first `lines` lines of the body (TOP, RFC 1939 §7).
pub fn top(wire: &[u8], lines: usize) -> Vec<u8> {
    Wire::whole(wire, Some(lines))
}

// ANCHOR: wire
/// A message's content, fed in pieces of lines, written out in its wire form as it comes:
/// CRLF line ends (RFC 1939 §11); for TOP only the header, the empty line and `lines` body
/// lines (RFC 1939 §7); byte-stuffed and ended with `.` CRLF when `stuffed` (RFC 1939 §3). A
/// piece starts a line when the one before ended one, so a line may come in several pieces.
pub struct Wire<W: Write> {
    out: W,
    stuffed: bool,
    /// TOP's number of body lines; `None` for the whole message.
    lines: Option<usize>,
    /// Body lines begun so far; `None` while still in the header.
    body_lines: Option<usize>,
    at_line_start: bool,
    /// The last octet fed: a `\n` after a `\r` in the piece before is already CRLF.
    last: u8,
    /// TOP has all the lines it wants.
    done: bool,
}

impl<W: Write> Wire<W> {
    pub fn new(out: W, lines: Option<usize>, stuffed: bool) -> Wire<W> {
        Wire {
            out,
            stuffed,
            lines,
            body_lines: None,
            at_line_start: true,
            last: 0,
            done: false,
        }
    }

    /// Write the wire form of a piece of content; `false` once TOP needs no more.
    pub fn piece(&mut self, piece: &[u8]) -> io::Result<bool> {
        for segment in piece.split_inclusive(|&byte| byte == b'\n') {
            if self.at_line_start && self.line_begins(segment) {
                self.done = true;
                return Ok(false);
            }
            if self.at_line_start && self.stuffed && segment.starts_with(b".") {
                self.out.write_all(b".")?;
            }
            let before_end = match segment {
                [.., before, b'\n'] => *before,
                _ => self.last,
            };
            match segment.strip_suffix(b"\n") {
                Some(line) if before_end != b'\r' => {
                    self.out.write_all(line)?;
                    self.out.write_all(b"\r\n")?;
                }
                _ => self.out.write_all(segment)?,
            }
            self.last = segment.last().copied().unwrap_or(self.last);
            self.at_line_start = segment.ends_with(b"\n");
        }
        Ok(true)
    }

    /// TOP's count, at the start of each line: `true` when this line is one too many.
    fn line_begins(&mut self, line: &[u8]) -> bool {
        match self.body_lines {
            Some(n) if Some(n) == self.lines => return true,
            Some(n) => self.body_lines = Some(n + 1),
            None if line == b"\n" || line == b"\r\n" => self.body_lines = Some(0),
            None => {}
        }
        false
    }

    /// End the last line if it has no end, and the response if stuffed; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.at_line_start && !self.done {
            self.out.write_all(b"\r\n")?;
        }
        if self.stuffed {
            self.out.write_all(b".\r\n")?;
        }
        Ok(self.out)
    }
}

impl Wire<Vec<u8>> {
    /// The wire form of a whole content in memory, not stuffed.
    fn whole(content: &[u8], lines: Option<usize>) -> Vec<u8> {
        let mut wire = Wire::new(Vec::with_capacity(content.len() + 2), lines, false);
        // Writing to a Vec cannot fail.
        let _ = wire.piece(content);
        wire.finish().unwrap_or_default()
    }
}
// ANCHOR_END: wire

/// One message during a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: String,
    /// The length of the CRLF form RETR sends: the size in STAT and LIST.
    pub size: usize,
    /// Marked by DELE: hidden from every command, removed only in UPDATE; RSET unmarks.
    pub deleted: bool,
}

/// The maildrop of a logged-in session.
pub struct Maildrop {
    pub user: String,
    pub messages: Vec<Message>,
    source: Box<dyn MessageSource>,
}

impl fmt::Debug for Maildrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maildrop")
            .field("user", &self.user)
            .field("messages", &self.messages.len())
            .finish()
    }
}

// ANCHOR: state
/// Where a session is (RFC 1939 §3). The maildrop, and with it the lock, lives only in the
/// states that may use it, so leaving them releases the lock.
#[derive(Debug)]
pub enum State {
    /// Greeted; waiting for USER and PASS. `user` is the name USER gave.
    Authorization { user: Option<String> },
    /// Logged in, maildrop locked: messages may be read and marked as deleted.
    Transaction { maildrop: Maildrop },
    /// QUIT was given in TRANSACTION: the marked messages are being removed.
    Update { maildrop: Maildrop },
    /// QUIT, too many errors, or the end of UPDATE.
    Closed,
}
// ANCHOR_END: state

impl State {
    pub fn name(&self) -> StateName {
        match self {
            State::Authorization { .. } => Authorization,
            State::Transaction { .. } => Transaction,
            State::Update { .. } => Update,
            State::Closed => Closed,
        }
    }
}

/// What the connection should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    ReadCommand,
    /// Send the responses, then call `Session::update` (the session is in UPDATE).
    Update,
    /// Send the responses, drop unread input, run the TLS handshake, then `tls_started`.
    StartTls,
    Close,
}

/// The outcome of one command line (or of UPDATE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub responses: Vec<Response>,
    pub next: Next,
    /// Wait this long before sending (after a failed login), to slow down password guessing.
    pub pause: Duration,
    pub from: StateName,
    pub to: StateName,
    pub rfc: &'static str,
}

/// One client's POP3 session.
pub struct Session {
    state: State,
    config: Arc<Config>,
    maildrops: Arc<dyn Maildrops>,
    errors: u32,
    auth_failures: u32,
    tls: Tls,
    /// The client's address: it decides whether USER/PASS may be used without TLS, and whose
    /// password-failure budget a wrong password spends.
    peer: IpAddr,
}

/// TLS for this session: can STLS be offered, and is the connection inside TLS already?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tls {
    pub available: bool,
    pub active: bool,
}

/// What the session is given to take one step.
#[derive(Debug)]
pub enum Input {
    /// A command line, parsed.
    Command(Command),
    /// A line that is no command: the parser's `-ERR`, or the connection's (too long). The
    /// state stays; the response counts as an error.
    Invalid {
        response: Response,
        rfc: &'static str,
    },
    /// The responses to QUIT are sent: do the UPDATE work (RFC 1939 §6).
    Update,
}

/// What a handler decides: the state to move to, the responses, what the connection does
/// next, and how long to wait first. Only `Session::step` turns it into the session's state.
struct Outcome {
    state: State,
    responses: Vec<Response>,
    next: Next,
    pause: Duration,
}

impl Outcome {
    /// One response, then read the next command.
    fn respond(state: State, response: Response) -> Outcome {
        Outcome {
            state,
            responses: vec![response],
            next: Next::ReadCommand,
            pause: Duration::ZERO,
        }
    }

    fn then(self, next: Next) -> Outcome {
        Outcome { next, ..self }
    }
}

impl Input {
    /// The RFC section behind this input, for `--trace`.
    fn rfc(&self) -> &'static str {
        match self {
            Input::Command(command) => command.verb().info().rfc,
            Input::Invalid { rfc, .. } => rfc,
            Input::Update => "RFC 1939 §6",
        }
    }

    /// The table's trigger for this input (`None`: the state must stay).
    fn trigger(&self) -> Option<Trigger> {
        match self {
            Input::Command(command) => Some(Trigger::Command(command.verb())),
            Input::Invalid { .. } => None,
            Input::Update => Some(Trigger::Updated),
        }
    }
}

/// Is `from → to` a move the table lists for `trigger`? Staying is always allowed (`-ERR`
/// changes nothing), and so is the server closing the connection (RFC 1939 §3, §4).
fn listed(from: StateName, trigger: Option<Trigger>, to: StateName, next: Next) -> bool {
    let closing = to == Closed && next == Next::Close;
    closing || machine::allows(POP3_TRANSITIONS, from, trigger, to)
}

impl Session {
    /// Where this session reports for `--web` (off without it).
    pub fn live(&self) -> &crate::lab::live::Board {
        &self.config.live
    }

    /// How long the client may take to send a command (`--pop3-autologout`).
    pub fn autologout(&self) -> Duration {
        self.config.pop3_autologout
    }

    pub fn new(config: Arc<Config>, maildrops: Arc<dyn Maildrops>, tls: Tls) -> Session {
        Session {
            state: State::Authorization { user: None },
            config,
            maildrops,
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

    /// USER/PASS send the password as it is typed: only inside TLS or from allowed networks.
    fn plaintext_allowed(&self) -> bool {
        auth::plaintext_allowed(self.peer, self.tls.active, &self.config.plaintext_auth_from)
    }

    /// After the STLS handshake (RFC 2595 §4): still in AUTHORIZATION, now inside TLS. STLS
    /// already forgot a USER given in the clear, like everything said before the handshake.
    pub fn tls_started(&mut self) {
        self.tls.active = true;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// RFC 1939 §4: "a one line greeting. This can be any positive response."
    pub fn greeting(&self) -> Response {
        Response::ok(format!(
            "{} POP3 smtplab ready; type USER name, then PASS password",
            self.config.hostname
        ))
    }

    /// Take one command line (without its line end) and return what to answer and do next.
    pub fn command(&mut self, line: &[u8]) -> Step {
        let input = match parse(line) {
            Ok(command) => Input::Command(command),
            Err(response) => Input::Invalid {
                response,
                rfc: "RFC 1939 §3",
            },
        };
        self.step(input)
    }

    /// A line the connection refused before parsing (too long): it counts as an error.
    pub fn refuse_line(&mut self, response: Response) -> Step {
        let rfc = "RFC 2449 §4";
        self.step(Input::Invalid { response, rfc })
    }

    /// Stream the message a RETR or TOP response names into `out`: its wire form, stuffed,
    /// then `.` CRLF. An error means the response is unfinished: the connection must close.
    pub fn send_message(&self, retrieval: Retrieval, out: &mut dyn Write) -> io::Result<()> {
        let State::Transaction { maildrop } = &self.state else {
            return Err(io::Error::other("no maildrop is open"));
        };
        let mut wire = Wire::new(out, retrieval.lines, true);
        maildrop.source.send(retrieval.index, &mut wire)?;
        wire.finish().map(drop)
    }

    /// The UPDATE state, after the connection has sent what QUIT asked for.
    pub fn update(&mut self) -> Step {
        self.step(Input::Update)
    }

    // ANCHOR: step
    /// The one place where the state changes: hand the current state and the input to a
    /// handler, count the errors, check the move against the table, keep the new state.
    pub fn step(&mut self, input: Input) -> Step {
        let from = self.state.name();
        let (rfc, trigger) = (input.rfc(), input.trigger());
        // The handler owns the state while it runs; `Closed` only fills the gap until then.
        let state = std::mem::replace(&mut self.state, State::Closed);
        let outcome = match input {
            Input::Command(command) => self.dispatch(state, command),
            Input::Invalid { response, .. } => Outcome::respond(state, response),
            Input::Update => self.commit(state),
        };
        let outcome = self.count_errors(outcome);
        let to = outcome.state.name();
        debug_assert!(
            listed(from, trigger, to, outcome.next),
            "{from:?} → {to:?} on {trigger:?} is not in POP3_TRANSITIONS"
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

    /// Count errors; at the limit say so and close, as the SMTP session does. Closing drops a
    /// maildrop, and its lock, without UPDATE.
    fn count_errors(&mut self, outcome: Outcome) -> Outcome {
        self.errors += outcome.responses.iter().filter(|r| !r.ok).count() as u32;
        if self.errors < self.config.max_errors || outcome.next != Next::ReadCommand {
            return outcome;
        }
        let mut responses = outcome.responses;
        responses.push(Response::err("Too many errors; closing the connection"));
        Outcome {
            state: State::Closed,
            responses,
            next: Next::Close,
            pause: outcome.pause,
        }
    }

    // ANCHOR: dispatch
    /// The table decides whether a command is legal here; one handler per verb does the work,
    /// given what it needs of the state (the name USER gave, the maildrop) by value.
    fn dispatch(&mut self, state: State, command: Command) -> Outcome {
        let verb = command.verb();
        if transition(state.name(), verb).is_none() {
            let text = format!(
                "{} is not allowed in the {:?} state",
                verb.name(),
                state.name()
            );
            return Outcome::respond(state, Response::err(text));
        }
        match (state, command) {
            (State::Transaction { maildrop }, Command::Quit) => Outcome {
                state: State::Update { maildrop },
                // No response yet: UPDATE gives it once the deletions are done.
                responses: Vec::new(),
                next: Next::Update,
                pause: Duration::ZERO,
            },
            (_, Command::Quit) => {
                let text = format!("{} POP3 smtplab signing off", self.config.hostname);
                Outcome::respond(State::Closed, Response::ok(text)).then(Next::Close)
            }
            (state, Command::User(_) | Command::Pass(_)) if !self.plaintext_allowed() => {
                Outcome::respond(state, plaintext_refused())
            }
            (State::Authorization { user }, Command::Pass(password)) => self.pass(user, &password),
            (_, Command::User(name)) => user(name),
            (state, Command::Capa) => {
                Outcome::respond(state, capa(self.tls, self.plaintext_allowed()))
            }
            (state, Command::Stls) => self.stls(state),
            (State::Transaction { mut maildrop }, command) => {
                let response = maildrop.command(command);
                Outcome::respond(State::Transaction { maildrop }, response)
            }
            (state, _) => Outcome::respond(state, Response::err("Not logged in")),
        }
    }
    // ANCHOR_END: dispatch

    /// STLS (RFC 2595 §4): `+OK`, then the handshake. A USER given in the clear is forgotten.
    fn stls(&self, state: State) -> Outcome {
        if self.tls.active {
            return Outcome::respond(state, Response::err("TLS is already active"));
        }
        if !self.tls.available {
            let response = Response::err("STLS is not configured on this server");
            return Outcome::respond(state, response);
        }
        let state = State::Authorization { user: None };
        Outcome::respond(state, Response::ok("Begin TLS negotiation")).then(Next::StartTls)
    }

    // ANCHOR: pass
    /// PASS (RFC 1939 §7): check the password, then lock and read the maildrop (§4). A new
    /// USER is needed after every PASS, right or wrong.
    fn pass(&mut self, user: Option<String>, password: &str) -> Outcome {
        let waiting = State::Authorization { user: None };
        let Some(name) = user else {
            let text = "USER first: USER name, then PASS password";
            return Outcome::respond(waiting, Response::err(text));
        };
        if let Verdict::ShutOut(left) = self.config.auth_budget.check(self.peer) {
            let text = format!("[AUTH] {}", shut_out_text(self.peer, left));
            return Outcome::respond(State::Closed, Response::err(text)).then(Next::Close);
        }
        let user = name.to_lowercase();
        if !self.password_matches(&user, password) {
            return self.login_failed();
        }
        self.config.auth_budget.succeeded(self.peer);
        match self.maildrops.open(&user) {
            Ok(opened) => {
                let maildrop = Maildrop::new(user, opened);
                let response = Response::ok(format!(
                    "{}'s maildrop has {}",
                    maildrop.user,
                    maildrop.summary()
                ));
                Outcome::respond(State::Transaction { maildrop }, response)
            }
            Err(OpenError::InUse) => {
                // Said in words, since curl shows a bare [IN-USE] as "Access denied".
                let text = "[IN-USE] this mailbox is open in another POP3 or IMAP session \
                            (a mail client left open?); QUIT that one, then log in again";
                Outcome::respond(waiting, Response::err(text))
            }
            Err(OpenError::Failed(_)) => {
                let text = "Cannot open the maildrop now; try again later";
                Outcome::respond(waiting, Response::err(text))
            }
        }
    }
    // ANCHOR_END: pass

    /// The same answer and the same pause for an unknown user and a wrong password.
    fn login_failed(&mut self) -> Outcome {
        self.auth_failures += 1;
        let mut pause = self.config.pop3_auth_delay;
        match self.config.auth_budget.failed(self.peer) {
            Verdict::Wait(wait) => pause += wait,
            Verdict::ShutOut(left) => {
                let text = format!("[AUTH] {}", shut_out_text(self.peer, left));
                let shut = Outcome::respond(State::Closed, Response::err(text));
                return Outcome {
                    pause,
                    ..shut.then(Next::Close)
                };
            }
        }
        let (state, next, text) = if self.auth_failures >= MAX_AUTH_FAILURES {
            let text = "Wrong user name or password; too many tries, goodbye";
            (State::Closed, Next::Close, text)
        } else {
            let text = "Wrong user name or password; USER name, then PASS password";
            let state = State::Authorization { user: None };
            (state, Next::ReadCommand, text)
        };
        Outcome {
            pause,
            ..Outcome::respond(state, Response::err(text)).then(next)
        }
    }

    /// Compare every byte whatever the first difference, so the time taken says nothing about
    /// how much of a guess was right.
    fn password_matches(&self, user: &str, password: &str) -> bool {
        let Some(expected) = self.config.directory.users.get(user) else {
            return false;
        };
        let (a, b) = (expected.as_bytes(), password.as_bytes());
        let differences = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        a.len() == b.len() && differences == 0
    }

    // ANCHOR: update
    /// The UPDATE state (RFC 1939 §6): remove the messages marked as deleted, answer, close.
    /// The maildrop lock is released when the maildrop is dropped here.
    fn commit(&self, state: State) -> Outcome {
        let State::Update { maildrop } = state else {
            let response = Response::err("Not in the UPDATE state");
            return Outcome::respond(State::Closed, response).then(Next::Close);
        };
        let deleted = maildrop.deleted_uids();
        let result = if deleted.is_empty() {
            Ok(0)
        } else {
            self.maildrops.commit(&maildrop.user, &deleted)
        };
        let host = &self.config.hostname;
        let response = match result {
            Ok(removed) => Response::ok(format!(
                "{host} POP3 smtplab signing off ({} deleted)",
                counted(removed, "message")
            )),
            // RFC 1939 §6: "If there is an error, ... -ERR": some deletions did not happen.
            Err(_) => {
                Response::err("Some deleted messages could not be removed; they are still there")
            }
        };
        drop(maildrop);
        Outcome::respond(State::Closed, response).then(Next::Close)
    }
    // ANCHOR_END: update
}

/// USER (RFC 1939 §7). Always `+OK`: "Servers that answer -ERR to the USER command are
/// giving potential attackers clues about which names are valid" (RFC 1939 §13).
fn user(name: String) -> Outcome {
    let text = format!("Hello {name}; now PASS your-password");
    Outcome::respond(
        State::Authorization { user: Some(name) },
        Response::ok(text),
    )
}

/// `-ERR [AUTH]`, the response code for a refused login: the same sentence SMTP gives with its 538.
fn plaintext_refused() -> Response {
    Response::err(format!("[AUTH] {}", auth::PLAINTEXT_REFUSED))
}

/// "1 message", "2 messages": the console is read by people.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// CAPA (RFC 2449 §5): what this server offers, one capability per line.
fn capa(tls: Tls, plaintext_allowed: bool) -> Response {
    let mut capabilities = vec![
        "TOP",        // RFC 2449 §6.1
        "UIDL",       // RFC 2449 §6.8
        "RESP-CODES", // RFC 2449 §6.4
        // The connection answers in order and flushes only when no input is waiting (§6.6).
        "PIPELINING",
        "IMPLEMENTATION smtplab", // RFC 2449 §6.9
    ];
    if plaintext_allowed {
        capabilities.insert(0, "USER"); // RFC 2449 §6.2: only where USER/PASS may be used
    }
    if tls.available && !tls.active {
        capabilities.push("STLS"); // RFC 2595 §4
    }
    let body: String = capabilities.iter().map(|c| format!("{c}\r\n")).collect();
    Response::multi("Capability list follows", body.into_bytes())
}

impl Maildrop {
    fn new(user: String, opened: Opened) -> Maildrop {
        let messages = opened
            .messages
            .into_iter()
            .map(|m| Message {
                uid: m.uid,
                size: m.size,
                deleted: false,
            })
            .collect();
        Maildrop {
            user,
            messages,
            source: opened.source,
        }
    }

    /// The TRANSACTION commands (RFC 1939 §5, §7).
    fn command(&mut self, command: Command) -> Response {
        let result = match command {
            Command::Stat => Ok(self.stat()),
            Command::List(None) => Ok(self.list()),
            Command::List(Some(n)) => self.get(n).map(|m| Response::ok(format!("{n} {}", m.size))),
            Command::Retr(n) => self
                .retrieval(n, None)
                .map(|(size, r)| Response::streamed(format!("{size} octets"), r)),
            Command::Top { msg, lines } => self
                .retrieval(msg, Some(lines))
                .map(|(_, r)| Response::streamed("Top of message follows", r)),
            Command::Dele(n) => self.dele(n),
            Command::Uidl(None) => Ok(self.uidl()),
            Command::Uidl(Some(n)) => self.get(n).map(|m| Response::ok(format!("{n} {}", m.uid))),
            Command::Noop => Ok(Response::ok("")),
            Command::Rset => Ok(self.rset()),
            _ => Err(Response::err("Not a TRANSACTION command")),
        };
        result.unwrap_or_else(|response| response)
    }

    /// Message `n` (1-based), if it exists and is not marked as deleted (RFC 1939 §5).
    fn get(&self, n: usize) -> Result<&Message, Response> {
        let message = n
            .checked_sub(1)
            .and_then(|i| self.messages.get(i))
            .ok_or_else(|| {
                Response::err(format!(
                    "No such message; there are {}",
                    self.messages.len()
                ))
            })?;
        if message.deleted {
            return Err(Response::err(format!("Message {n} already deleted")));
        }
        Ok(message)
    }

    /// Message `n` for RETR or TOP, checked against the maildrop now; the connection streams
    /// it after the status line (`Session::send_message`). Returns its size too.
    fn retrieval(&self, n: usize, lines: Option<usize>) -> Result<(usize, Retrieval), Response> {
        let size = self.get(n)?.size;
        self.source.verify(n - 1).map_err(|error| {
            log::warn!("POP3 {}: cannot read message {n}: {error}", self.user);
            Response::err(format!(
                "Message {n} cannot be read now (another program may have changed the maildrop)"
            ))
        })?;
        Ok((
            size,
            Retrieval {
                index: n - 1,
                lines,
            },
        ))
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        (1..).zip(&self.messages).filter(|(_, m)| !m.deleted)
    }

    /// "n messages (m octets)", counting only messages not marked as deleted.
    fn summary(&self) -> String {
        let (count, octets) = self.totals();
        format!("{} ({octets} octets)", counted(count, "message"))
    }

    fn totals(&self) -> (usize, usize) {
        self.live().fold((0, 0), |(count, octets), (_, m)| {
            (count + 1, octets + m.size)
        })
    }

    /// STAT: exactly "+OK count octets" (RFC 1939 §5: clients parse this "drop listing").
    fn stat(&self) -> Response {
        let (count, octets) = self.totals();
        Response::ok(format!("{count} {octets}"))
    }

    fn list(&self) -> Response {
        let body: String = self
            .live()
            .map(|(n, m)| format!("{n} {}\r\n", m.size))
            .collect();
        Response::multi(self.summary(), body.into_bytes())
    }

    fn uidl(&self) -> Response {
        let body: String = self
            .live()
            .map(|(n, m)| format!("{n} {}\r\n", m.uid))
            .collect();
        Response::multi("Unique-id listing follows", body.into_bytes())
    }

    /// DELE only marks (RFC 1939 §5): the message is removed in UPDATE, if the client QUITs.
    fn dele(&mut self, n: usize) -> Result<Response, Response> {
        self.get(n)?;
        self.messages[n - 1].deleted = true;
        Ok(Response::ok(format!(
            "Message {n} deleted (for good at QUIT)"
        )))
    }

    fn rset(&mut self) -> Response {
        for message in &mut self.messages {
            message.deleted = false;
        }
        Response::ok(format!("Maildrop has {}", self.summary()))
    }

    fn deleted_uids(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.deleted)
            .map(|m| m.uid.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::command::VERBS;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Maildrops in memory: a fixed mailbox for every user, the set of users logged in, and
    /// every commit made.
    #[derive(Default)]
    struct Memory {
        in_use: Arc<Mutex<HashSet<String>>>,
        commits: Mutex<Vec<(String, Vec<String>)>>,
    }

    /// The lock of a session; dropping it logs the user out.
    struct Held(Arc<Mutex<HashSet<String>>>, String);

    impl MessageSource for Held {
        fn verify(&self, _index: usize) -> io::Result<()> {
            Ok(())
        }

        fn send(&self, index: usize, wire: &mut Wire<&mut dyn Write>) -> io::Result<()> {
            // In two pieces, cutting a line, as a long line comes from the file.
            let (head, tail) = [FIRST, SECOND][index].split_at(15);
            wire.piece(head)?;
            wire.piece(tail).map(drop)
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.lock().unwrap().remove(&self.1);
        }
    }

    const FIRST: &[u8] = b"Subject: one\n\n.\n..x\nFrom me\nbody\n";
    const SECOND: &[u8] = b"Subject: two\nX: y\n\nline 1\nline 2\nline 3\n";

    impl Maildrops for Memory {
        fn open(&self, user: &str) -> Result<Opened, OpenError> {
            if !self.in_use.lock().unwrap().insert(user.to_string()) {
                return Err(OpenError::InUse);
            }
            let contents = [FIRST, SECOND];
            let uids = unique_ids(contents);
            Ok(Opened {
                messages: uids
                    .into_iter()
                    .zip(contents)
                    .map(|(uid, c)| StoredMessage {
                        uid,
                        size: to_crlf(c).len(),
                    })
                    .collect(),
                source: Box::new(Held(self.in_use.clone(), user.to_string())),
            })
        }

        fn commit(&self, user: &str, deleted: &[String]) -> Result<usize, String> {
            let mut commits = self.commits.lock().unwrap();
            commits.push((user.to_string(), deleted.to_vec()));
            Ok(deleted.len())
        }
    }

    fn config() -> Arc<Config> {
        Arc::new(Config {
            hostname: "pop.test".into(),
            pop3_auth_delay: Duration::from_millis(7),
            ..Config::default()
        })
    }

    fn session(memory: &Arc<Memory>) -> Session {
        Session::new(
            config(),
            memory.clone(),
            Tls {
                available: true,
                active: false,
            },
        )
    }

    fn run(session: &mut Session, line: &str) -> Step {
        session.command(line.as_bytes())
    }

    /// A session already in `state`: Authorization, Transaction or Update.
    fn session_in(memory: &Arc<Memory>, state: StateName) -> Session {
        let mut s = session(memory);
        if state != Authorization {
            run(&mut s, "USER alice");
            assert!(run(&mut s, "PASS password").responses[0].ok);
        }
        if state == Update {
            assert_eq!(run(&mut s, "QUIT").next, Next::Update);
        }
        assert_eq!(s.state().name(), state);
        s
    }

    /// A command that takes each row's move (for PASS: after USER, with the right password).
    fn sample(verb: Verb) -> &'static str {
        match verb {
            Verb::User => "USER alice",
            Verb::Pass => "PASS password",
            Verb::Quit => "QUIT",
            Verb::Stat => "STAT",
            Verb::List => "LIST",
            Verb::Retr => "RETR 1",
            Verb::Dele => "DELE 1",
            Verb::Noop => "NOOP",
            Verb::Rset => "RSET",
            Verb::Top => "TOP 1 0",
            Verb::Uidl => "UIDL",
            Verb::Capa => "CAPA",
            Verb::Stls => "STLS",
        }
    }

    #[test]
    fn every_row_of_the_table_moves_as_it_says() {
        for t in POP3_TRANSITIONS {
            let memory = Arc::new(Memory::default());
            let mut s = session_in(&memory, t.from);
            let step = match t.on {
                Trigger::Command(Verb::Pass) => {
                    run(&mut s, "USER alice");
                    run(&mut s, "PASS password")
                }
                Trigger::Command(verb) => run(&mut s, sample(verb)),
                Trigger::Updated => s.update(),
            };
            assert_eq!(step.from, t.from, "{t:?}");
            assert_eq!(step.to, t.to, "{t:?}");
            assert!(step.responses.iter().all(|r| r.ok), "{t:?}: {step:?}");
            assert!(t.rfc.starts_with("RFC "), "{t:?}");
        }
    }

    #[test]
    fn every_command_the_table_does_not_list_is_refused_and_changes_nothing() {
        for state in [Authorization, Transaction, Update] {
            for info in VERBS {
                if transition(state, info.verb).is_some() {
                    continue;
                }
                let memory = Arc::new(Memory::default());
                let mut s = session_in(&memory, state);
                let step = run(&mut s, sample(info.verb));
                assert!(!step.responses[0].ok, "{state:?} {}", info.name);
                assert_eq!(step.to, state, "{state:?} {}", info.name);
                assert_eq!(step.next, Next::ReadCommand);
            }
        }
    }

    #[test]
    fn every_verb_has_its_facts_and_its_row() {
        let all = [
            Verb::User,
            Verb::Pass,
            Verb::Quit,
            Verb::Stat,
            Verb::List,
            Verb::Retr,
            Verb::Dele,
            Verb::Noop,
            Verb::Rset,
            Verb::Top,
            Verb::Uidl,
            Verb::Capa,
            Verb::Stls,
        ];
        assert_eq!(VERBS.len(), all.len());
        for verb in all {
            assert_eq!(verb.info().verb, verb);
            assert!(POP3_TRANSITIONS
                .iter()
                .any(|t| t.on == Trigger::Command(verb)));
            assert_eq!(parse(sample(verb).as_bytes()).map(|c| c.verb()), Ok(verb));
        }
    }

    #[test]
    fn the_size_is_the_crlf_form_before_stuffing() {
        assert_eq!(to_crlf(b"a\nb\n"), b"a\r\nb\r\n");
        assert_eq!(to_crlf(b"a\r\nb"), b"a\r\nb\r\n");
        assert_eq!(to_crlf(b""), b"");
        let memory = Arc::new(Memory::default());
        let mut s = session_in(&memory, Transaction);
        let list = run(&mut s, "LIST 1").responses[0].text.clone();
        let retr = run(&mut s, "RETR 1").responses[0].clone();
        let body = to_crlf(FIRST);
        assert_eq!(list, format!("1 {}", body.len()));
        assert_eq!(retr.text, format!("{} octets", body.len()));
        // On the wire the stuffing adds octets that the size does not count.
        let wire = sent(&s, &retr);
        let unstuffed = [
            b"+OK " as &[u8],
            retr.text.as_bytes(),
            b"\r\nSubject: one\r\n\r\n..\r\n...x\r\nFrom me\r\nbody\r\n.\r\n",
        ]
        .concat();
        assert_eq!(wire, unstuffed);
        assert!(wire.windows(6).any(|w| w == b"\r\n..\r\n"));
        assert!(wire.windows(6).any(|w| w == b"\n...x\r"));
        let stat = run(&mut s, "STAT").responses[0].text.clone();
        let total = to_crlf(FIRST).len() + to_crlf(SECOND).len();
        assert_eq!(stat, format!("2 {total}"));
    }

    /// What the connection writes for a response: the status line, then a streamed message.
    fn sent(s: &Session, response: &Response) -> Vec<u8> {
        let mut wire = response.to_wire();
        if let Some(retrieval) = response.stream {
            s.send_message(retrieval, &mut wire).unwrap();
        }
        wire
    }

    #[test]
    fn top_streams_the_header_and_n_body_lines() {
        let memory = Arc::new(Memory::default());
        let mut s = session_in(&memory, Transaction);
        let top = run(&mut s, "TOP 2 1").responses[0].clone();
        let expected = b"+OK Top of message follows\r\nSubject: two\r\nX: y\r\n\r\nline 1\r\n.\r\n";
        assert_eq!(sent(&s, &top), expected);
    }

    #[test]
    fn top_sends_the_header_and_n_body_lines() {
        let wire = to_crlf(SECOND);
        assert_eq!(top(&wire, 0), b"Subject: two\r\nX: y\r\n\r\n");
        assert_eq!(
            top(&wire, 2),
            b"Subject: two\r\nX: y\r\n\r\nline 1\r\nline 2\r\n"
        );
        assert_eq!(top(&wire, 99), wire);
        assert_eq!(top(b"no body\r\n", 3), b"no body\r\n");
    }

    #[test]
    fn unique_ids_are_fnv1a_hex_and_unique_within_a_maildrop() {
        // Published FNV-1a/64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let ids = unique_ids([&b"x"[..], b"y", b"x", b"x"]);
        assert_eq!(ids[0], format!("{:016x}", fnv1a64(b"x")));
        assert_eq!(ids[2], format!("{}-2", ids[0]));
        assert_eq!(ids[3], format!("{}-3", ids[0]));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 4);
        assert_eq!(unique_ids([&b"x"[..]]), unique_ids([&b"x"[..]]), "stable");
        for id in ids {
            assert!(id.len() <= MAX_UID_LEN && id.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }

    #[test]
    fn dele_marks_rset_unmarks_and_only_quit_commits() {
        let memory = Arc::new(Memory::default());
        let mut s = session_in(&memory, Transaction);
        assert!(run(&mut s, "DELE 1").responses[0].ok);
        for hidden in ["RETR 1", "DELE 1", "LIST 1", "UIDL 1", "TOP 1 0"] {
            assert!(!run(&mut s, hidden).responses[0].ok, "{hidden}");
        }
        assert!(!run(&mut s, "RETR 3").responses[0].ok);
        assert!(!run(&mut s, "RETR 0").responses[0].ok);
        assert_eq!(
            run(&mut s, "STAT").responses[0].text,
            format!("1 {}", to_crlf(SECOND).len())
        );
        assert!(run(&mut s, "RSET").responses[0].ok);
        assert!(run(&mut s, "RETR 1").responses[0].ok);
        run(&mut s, "DELE 2");
        let uid2 = unique_ids([FIRST, SECOND]).remove(1);
        assert_eq!(run(&mut s, "QUIT").next, Next::Update);
        assert!(
            memory.commits.lock().unwrap().is_empty(),
            "not before UPDATE"
        );
        let step = s.update();
        assert_eq!((step.next, step.to), (Next::Close, Closed));
        assert_eq!(
            *memory.commits.lock().unwrap(),
            [("alice".to_string(), vec![uid2])]
        );
        assert!(
            memory.in_use.lock().unwrap().is_empty(),
            "the lock is released"
        );
    }

    #[test]
    fn a_session_dropped_in_transaction_commits_nothing_and_releases_the_lock() {
        let memory = Arc::new(Memory::default());
        let mut s = session_in(&memory, Transaction);
        run(&mut s, "DELE 1");
        drop(s);
        assert!(memory.commits.lock().unwrap().is_empty());
        assert!(memory.in_use.lock().unwrap().is_empty());
    }

    #[test]
    fn a_second_login_gets_in_use_and_may_try_again_later() {
        let memory = Arc::new(Memory::default());
        let first = session_in(&memory, Transaction);
        let mut second = session(&memory);
        run(&mut second, "USER Alice");
        let step = run(&mut second, "PASS password");
        assert!(step.responses[0].text.starts_with("[IN-USE]"), "{step:?}");
        assert_eq!(step.to, Authorization);
        drop(first);
        run(&mut second, "USER alice");
        assert_eq!(run(&mut second, "PASS password").to, Transaction);
    }

    #[test]
    fn wrong_passwords_and_unknown_users_look_the_same_and_end_the_session() {
        let memory = Arc::new(Memory::default());
        let mut s = session(&memory);
        assert!(
            !run(&mut s, "PASS password").responses[0].ok,
            "PASS needs USER"
        );
        run(&mut s, "USER alice");
        let wrong = run(&mut s, "PASS passwort");
        run(&mut s, "USER nobody");
        let unknown = run(&mut s, "PASS password");
        assert_eq!(wrong.responses, unknown.responses);
        assert!(!wrong.responses[0].ok);
        assert_eq!(wrong.pause, Duration::from_millis(7));
        assert_eq!(wrong.to, Authorization);
        run(&mut s, "USER alice");
        let last = run(&mut s, "PASS password1");
        assert_eq!((last.next, last.to), (Next::Close, Closed));
        assert!(memory.in_use.lock().unwrap().is_empty());
    }

    #[test]
    fn capa_lists_what_is_implemented() {
        let memory = Arc::new(Memory::default());
        let mut s = session(&memory);
        let capa = run(&mut s, "CAPA").responses[0].clone();
        let body = String::from_utf8(capa.body.unwrap()).unwrap();
        for capability in ["USER", "TOP", "UIDL", "RESP-CODES", "PIPELINING"] {
            assert!(body.lines().any(|l| l == capability), "{capability}");
        }
        assert!(
            body.lines().any(|l| l == "STLS"),
            "TLS is available and not active"
        );
        s.tls_started();
        let capa = run(&mut s, "CAPA").responses[0].clone();
        let body = String::from_utf8(capa.body.unwrap()).unwrap();
        assert!(!body.contains("STLS"), "not offered inside TLS");
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let memory = Arc::new(Memory::default());
        let mut s = session_in(&memory, Transaction);
        let mut last = run(&mut s, "BOGUS");
        for _ in 1..config().max_errors {
            last = run(&mut s, "BOGUS");
        }
        assert_eq!((last.next, last.to), (Next::Close, Closed));
        assert!(memory.commits.lock().unwrap().is_empty());
    }

    #[test]
    fn the_diagram_is_drawn_from_the_table() {
        let text = mermaid();
        assert!(text.contains("Authorization --> Transaction: PASS"));
        assert!(text.contains("Transaction --> Update: QUIT"));
        assert!(text.contains("Update --> Closed: deletions committed"));
        assert!(text.contains("Authorization --> Closed: QUIT"));
    }
}

//! The live board: every session reports here (opened, a line in or out, a state move, closed),
//! and each browser of `--web` reads what changed since it last looked.
//!
//! Interface:
//! - `Board` is off by default (`Config::live`); `Board::on(true)` when `--web` is given. A board
//!   that is off costs a session nothing: `open` returns `None`.
//! - `Board::open(opened)` registers a session and returns its `Watch`; the SMTP console
//!   (`lab/trace.rs`) and the POP3 loop report through it. Dropping the last clone of a
//!   `Watch` marks the session closed.
//! - `Board::snapshot()` is every session with its recent lines, as JSON, and the number of the
//!   last event in it; `Board::since(seq)` is the events after that, or `None` when a browser
//!   fell so far behind that it needs a new snapshot; `Board::wait(seq, timeout)` blocks until
//!   there is something new.
//!
//! Everything here is data for the page's script, which shows it with `textContent`: the text
//! of a line is the student's bytes made readable (`visible::escape`, as on the console),
//! escaped only as JSON.
//!
//! Standards: RFC 5321 §4.1.4, RFC 1939 §3

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::lab::json;
use crate::smtp::auth::Masked;
use crate::visible;

/// Lines kept per session: a screen's worth; older lines scroll away.
const LINES_KEPT: usize = 200;
/// Closed sessions kept on the page, newest first, so a student who just quit still sees theirs.
const CLOSED_KEPT: usize = 8;
/// Events kept for browsers catching up; one further behind gets a new snapshot.
const EVENTS_KEPT: usize = 1000;

/// The sessions of a server, shared by every session thread and every browser.
#[derive(Clone, Default)]
pub struct Board(Option<Arc<Shared>>);

impl fmt::Debug for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Board(on)"
        } else {
            "Board(off)"
        })
    }
}

/// What a session says about itself when it opens.
#[derive(Debug, Clone)]
pub struct Opening {
    /// `S3` or `P2`: the id of the logs and the console.
    pub id: String,
    pub peer: SocketAddr,
    /// `SMTP`, `submission`, `SMTPS`, `POP3` or `POP3S`.
    pub role: &'static str,
    /// Which diagram it moves on: `smtp` or `pop3`.
    pub machine: &'static str,
    /// The state it starts in.
    pub state: String,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Lines of a message are shown (the web view is on loopback, or `--web-show-mail`).
    shows_mail: bool,
}

#[derive(Default)]
struct State {
    /// The number of the last event.
    seq: u64,
    sessions: Vec<Session>,
    /// `(seq, JSON)` of recent events, oldest first.
    events: VecDeque<(u64, String)>,
}

struct Session {
    opened: Opening,
    state: String,
    /// The last move, as JSON (`null` before the first).
    last_move: String,
    closed: bool,
    /// Recent lines, as JSON objects.
    lines: VecDeque<String>,
}

/// One session's reporter. Clones share it; when the last one goes, the session is closed.
#[derive(Clone)]
pub struct Watch(Arc<Reporter>);

struct Reporter {
    board: Arc<Shared>,
    id: String,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let id = self.id.clone();
        let event = json::object(&[("kind", "close"), ("id", &id)]);
        publish(&self.board, &id, Change::Close, event);
    }
}

impl Board {
    /// A board that records (`--web`); `shows_mail` lets the lines of a message through.
    pub fn on(shows_mail: bool) -> Board {
        Board(Some(Arc::new(Shared {
            shows_mail,
            ..Shared::default()
        })))
    }

    /// Mail may be shown: the lines of a message, and a message raw on the page.
    pub fn shows_mail(&self) -> bool {
        self.0.as_ref().is_some_and(|board| board.shows_mail)
    }

    /// Register a session; `None` when the board is off.
    pub fn open(&self, opened: Opening) -> Option<Watch> {
        let board = self.0.clone()?;
        let event = open_event(&opened);
        let id = opened.id.clone();
        {
            let mut state = crate::lock(&board.state);
            state.sessions.push(Session {
                state: opened.state.clone(),
                opened,
                last_move: "null".to_string(),
                closed: false,
                lines: VecDeque::new(),
            });
        }
        publish(&board, &id, Change::Opening, event);
        Some(Watch(Arc::new(Reporter { board, id })))
    }

    /// `(seq, JSON)`: every session kept, with its lines, as of event `seq`.
    pub fn snapshot(&self) -> (u64, String) {
        let Some(board) = &self.0 else {
            return (0, json::snapshot(0, &[]));
        };
        let state = crate::lock(&board.state);
        let sessions: Vec<String> = state.sessions.iter().map(Session::to_json).collect();
        (state.seq, json::snapshot(state.seq, &sessions))
    }

    /// The events after `seq`, with the number of the last; `None` when some were dropped.
    pub fn since(&self, seq: u64) -> Option<(u64, Vec<String>)> {
        let board = self.0.as_ref()?;
        let state = crate::lock(&board.state);
        let oldest = state.events.front().map_or(state.seq + 1, |(n, _)| *n);
        if seq + 1 < oldest {
            return None;
        }
        let events = state
            .events
            .iter()
            .filter(|(n, _)| *n > seq)
            .map(|(_, e)| e.clone())
            .collect();
        Some((state.seq, events))
    }

    /// Block until an event after `seq` exists, or `timeout` passes.
    pub fn wait(&self, seq: u64, timeout: Duration) {
        let Some(board) = &self.0 else {
            std::thread::sleep(timeout);
            return;
        };
        let state = crate::lock(&board.state);
        let _ = board
            .changed
            .wait_timeout_while(state, timeout, |s| s.seq <= seq);
    }
}

impl Watch {
    /// `C:` a line from the client, its secret already masked (`{secret}` in its place).
    pub fn command(&self, line: Masked) {
        self.line("C", &line.to_string());
    }

    /// `C:` a line from the client with no secret in it.
    pub fn client(&self, bytes: &[u8]) {
        self.command(Masked::new(bytes, None));
    }

    /// A line of a message after DATA: shown only where the board shows mail.
    pub fn data(&self, bytes: &[u8]) {
        if self.0.board.shows_mail {
            self.client(bytes);
        }
    }

    /// `S:` each line of a reply as written on the wire.
    pub fn server(&self, wire: &str) {
        for line in wire.lines() {
            self.line("S", &visible::sanitize(line));
        }
    }

    /// `--` what happens to the connection itself (TLS, disconnect, a hint).
    pub fn event(&self, text: &str) {
        self.line("--", text);
    }

    /// A step of the session: `from → to` by the row of `rfc` (or a refusal, `from == to`).
    pub fn moved(&self, from: &str, to: &str, rfc: &str) {
        let id = &self.0.id;
        let event = json::object(&[
            ("kind", "move"),
            ("id", id),
            ("from", from),
            ("to", to),
            ("rfc", rfc),
        ]);
        publish(&self.0.board, id, Change::Moved(to), event);
    }

    fn line(&self, dir: &str, text: &str) {
        let id = &self.0.id;
        let event = json::object(&[("kind", "line"), ("id", id), ("dir", dir), ("text", text)]);
        publish(&self.0.board, id, Change::Line, event);
    }
}

impl Session {
    fn to_json(&self) -> String {
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        let o = &self.opened;
        json::session(
            &[
                ("id", &o.id),
                ("peer", &o.peer.to_string()),
                ("role", o.role),
                ("machine", o.machine),
                ("state", &self.state),
            ],
            self.closed,
            &self.last_move,
            &lines,
        )
    }
}

fn open_event(o: &Opening) -> String {
    json::object(&[
        ("kind", "open"),
        ("id", &o.id),
        ("peer", &o.peer.to_string()),
        ("role", o.role),
        ("machine", o.machine),
        ("state", &o.state),
    ])
}

/// What an event changes in its session's summary.
enum Change<'a> {
    Opening,
    Line,
    Moved(&'a str),
    Close,
}

/// Apply one event to the session it is about, keep it for browsers, and wake them.
fn publish(board: &Shared, id: &str, change: Change, event: String) {
    let mut state = crate::lock(&board.state);
    if let Some(session) = state.sessions.iter_mut().find(|s| s.opened.id == id) {
        session.apply(&change, &event);
    }
    if let Change::Close = change {
        forget_old_closed(&mut state.sessions);
    }
    state.seq += 1;
    let seq = state.seq;
    state.events.push_back((seq, event));
    if state.events.len() > EVENTS_KEPT {
        state.events.pop_front();
    }
    drop(state);
    board.changed.notify_all();
}

impl Session {
    /// What an event changes in the session's summary.
    fn apply(&mut self, change: &Change, event: &str) {
        match change {
            Change::Opening => {}
            Change::Close => self.closed = true,
            Change::Line => self.keep_line(event),
            Change::Moved(to) => {
                self.state = to.to_string();
                self.last_move = event.to_string();
                self.keep_line(event);
            }
        }
    }

    fn keep_line(&mut self, event: &str) {
        self.lines.push_back(event.to_string());
        if self.lines.len() > LINES_KEPT {
            self.lines.pop_front();
        }
    }
}

/// Keep every open session and the newest `CLOSED_KEPT` closed ones.
fn forget_old_closed(sessions: &mut Vec<Session>) {
    let closed = sessions.iter().filter(|s| s.closed).count();
    let mut extra = closed.saturating_sub(CLOSED_KEPT);
    sessions.retain(|s| {
        let forget = s.closed && extra > 0;
        if forget {
            extra -= 1;
        }
        !forget
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(id: &str) -> Opening {
        Opening {
            id: id.to_string(),
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            role: "SMTP",
            machine: "smtp",
            state: "Connected".to_string(),
        }
    }

    #[test]
    fn an_off_board_costs_nothing() {
        let board = Board::default();
        assert!(board.open(opened("S1")).is_none());
        assert_eq!(board.since(0), None);
    }

    #[test]
    fn moves_lines_and_close_reach_the_snapshot_and_the_events() {
        let board = Board::on(true);
        let watch = board.open(opened("S1")).expect("on");
        watch.client(b"NOOP <script>\x08");
        watch.data(b"a line of a message");
        watch.moved("Connected", "Connected", "RFC 5321 §4.1.1.9");
        let (seq, snapshot) = board.snapshot();
        assert_eq!(seq, 4);
        assert!(
            snapshot.contains(r#""text":"NOOP \u003cscript\u003e{x08}""#),
            "{snapshot}"
        );
        watch.moved("Connected", "Greeted", "RFC 5321 §4.1.1.1");
        let (last, events) = board.since(seq).expect("kept");
        assert_eq!((last, events.len()), (5, 1));
        assert!(board.snapshot().1.contains(r#""state":"Greeted""#));
        drop(watch);
        assert!(board.snapshot().1.contains(r#""closed":true"#));
    }

    #[test]
    fn message_lines_stay_hidden_unless_mail_may_be_shown() {
        let board = Board::on(false);
        let watch = board.open(opened("S1")).expect("on");
        watch.data(b"Subject: private");
        assert!(!board.snapshot().1.contains("private"));
    }

    #[test]
    fn only_the_newest_closed_sessions_stay() {
        let board = Board::on(true);
        for n in 0..CLOSED_KEPT + 3 {
            drop(board.open(opened(&format!("S{n}"))));
        }
        let open = board.open(opened("S99"));
        let snapshot = board.snapshot().1;
        assert!(!snapshot.contains(r#""id":"S0""#) && snapshot.contains(r#""id":"S3""#));
        assert!(snapshot.contains(r#""id":"S99""#) && open.is_some());
    }

    #[test]
    fn a_browser_far_behind_is_told_to_start_again() {
        let board = Board::on(true);
        let watch = board.open(opened("S1")).expect("on");
        for _ in 0..EVENTS_KEPT + 5 {
            watch.event("tick");
        }
        assert_eq!(board.since(1), None);
        assert!(board.since(board.snapshot().0).is_some());
    }
}

//! The recorder: `--transcripts DIR` writes each live SMTP session as a transcript, so a
//! student can replay it against any smtplab and compare it with a reference.
//!
//! Interface:
//! - `Recorder::start(config, peer, number, id)` prepares `DIR/<YYYYMMDD-HHMMSS>-<number>-<ip>-
//!   <port>.txt` (UTC; six-digit number), so `ls` lists sessions in the order they began.
//! - `client_line(masked, ending)` records a client line, its secret already masked by the
//!   connection (`auth::Masked`); `server_reply(text)` records a reply; `tls_started()` the
//!   switch to TLS.
//! - `REPLAY_MARKER`: the line `smtplab replay` sends first, so a replay is not recorded.
//!
//! What the server said that changes from run to run is written as a placeholder: its host
//! name as `{host}`, a message id of the session as `{id}`, a date as `{date}`. A recording
//! therefore replays against a freshly started server, whatever its name.
//!
//! A recording is private and bounded: files are 0600 in a directory created 0700 (they hold
//! whole messages and the names of users), and one session writes at most `--max-size` plus
//! `MARGIN` bytes; the transcript then ends with a note that it was cut there.
//!
//! Standards: RFC 5321 Appendix D, §4.2, RFC 4954 §4

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::Config;
use crate::datetime;
use crate::lab::transcript::{
    escape_line, reply_code, trailing_blanks_escaped, ClientLine, LineEnding, TLS_MARKER,
};
use crate::net::line::Ending;
use crate::smtp::auth::Masked;

/// The first line `smtplab replay` sends (a NOOP, which any server answers with 250 and
/// ignores, RFC 5321 §4.1.1.9): the recorder then drops the session, unless the replay was
/// asked to be recorded (`smtplab replay --record`).
pub const REPLAY_MARKER: &str = "NOOP smtplab-replay";

/// Room for the commands and replies around the messages of a session, beyond `--max-size`.
pub const MARGIN: u64 = 64 * 1024;

/// Writes one session to its own transcript file while it happens.
///
/// Until the client's first line the recorder only holds what it would write: a session that
/// is a replay, or that never says anything, leaves no file. After that every line is written
/// with one `write` on an unbuffered file, so a teacher can `tail -f` it. Recording must never
/// end a session: on the first I/O error the recorder logs one warning and stops recording.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    state: Recording,
    /// Bytes this session may still write.
    room: u64,
    names: Volatile,
}

#[derive(Debug)]
enum Recording {
    /// Before the client's first line: the text to write once the file exists.
    Waiting(String),
    Writing(File),
    /// Stopped: a replay, the size cap, or an error.
    Stopped,
}

/// What the server says that changes from run to run.
#[derive(Debug, Clone)]
struct Volatile {
    host: String,
    /// `S3`: message ids of the session are `S3-1-<process>`, `S3-2-<process>`, ...
    session: String,
}

impl Recorder {
    /// Prepares the recording of session `number` (`id`, such as `S3`) from `peer`.
    pub fn start(config: &Config, peer: SocketAddr, number: u64, id: &str) -> io::Result<Recorder> {
        let dir = config
            .transcripts
            .as_deref()
            .ok_or_else(|| io::Error::other("no --transcripts directory"))?;
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Recorder {
            path: dir.join(file_name(SystemTime::now(), number, peer)),
            state: Recording::Waiting(format!(
                "# title: Session {id} from {peer}\n# recorded: {peer}\n"
            )),
            room: config.max_size.saturating_add(MARGIN),
            names: Volatile {
                host: config.hostname.clone(),
                session: id.to_string(),
            },
        })
    }

    /// Where the transcript is (or will be) written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one client line, with its secret already masked; a fragment of a long line or
    /// the last bytes before a close have no ending (`None`). The first line creates the file,
    /// unless it is the replay marker.
    pub fn client_line(&mut self, masked: Masked, ending: Option<Ending>) {
        if let Recording::Waiting(pending) = &mut self.state {
            if masked.shown == REPLAY_MARKER.as_bytes() {
                self.state = Recording::Stopped;
                return;
            }
            let pending = std::mem::take(pending);
            self.state = match self.open() {
                Ok(file) => Recording::Writing(file),
                Err(error) => self.failed(&error),
            };
            self.write_now(&pending);
        }
        let line = ClientLine {
            bytes: masked.shown.to_vec(),
            secret: masked.secret,
            ending: match ending {
                Some(Ending::CrLf) => LineEnding::CrLf,
                Some(Ending::Lf) => LineEnding::Lf,
                None => LineEnding::None,
            },
        };
        self.write(&format!("{line}\n"));
    }

    /// Records a reply as sent: one or more lines, each ending in CRLF; one `S:` line each.
    pub fn server_reply(&mut self, text: &str) {
        let written: String = text
            .lines()
            .map(|line| match self.names.pattern(line) {
                pattern if pattern.is_empty() => "S:\n".to_string(),
                pattern => format!("S: {pattern}\n"),
            })
            .collect();
        self.write(&written);
    }

    /// Records that the session switched to TLS (after `220` to STARTTLS).
    pub fn tls_started(&mut self) {
        self.write(&format!("{TLS_MARKER}\n"));
    }

    /// Writes `text` (or holds it until the file exists) within the session's room; past the
    /// room, a note ends the transcript and recording stops.
    fn write(&mut self, text: &str) {
        let length = text.len() as u64;
        let cut = length > self.room;
        let text = if cut {
            "# note: the transcript was cut here: a recording keeps at most --max-size plus \
             64 KiB; the session went on\n"
        } else {
            self.room -= length;
            text
        };
        match &mut self.state {
            Recording::Waiting(pending) => pending.push_str(text),
            Recording::Writing(_) => self.write_now(text),
            Recording::Stopped => {}
        }
        if cut {
            self.state = Recording::Stopped;
        }
    }

    fn write_now(&mut self, text: &str) {
        let Recording::Writing(file) = &mut self.state else {
            return;
        };
        if let Err(error) = file.write_all(text.as_bytes()) {
            self.state = self.failed(&error);
        }
    }

    fn open(&self) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
    }

    fn failed(&self, error: &io::Error) -> Recording {
        log::warn!(
            "transcript {}: {error}; recording stopped",
            self.path.display()
        );
        Recording::Stopped
    }
}

/// `20261127-050652-000003-127.0.0.1-40112.txt`: time, then the session number, so names sort
/// in the order sessions began, also within one second.
fn file_name(now: SystemTime, number: u64, peer: SocketAddr) -> String {
    // `:` in an IPv6 address is not allowed in file names everywhere.
    let ip = peer.ip().to_string().replace(':', "_");
    format!(
        "{}-{number:06}-{ip}-{}.txt",
        datetime::sortable(now),
        peer.port()
    )
}

// ANCHOR: placeholders
impl Volatile {
    /// A reply line as an `S:` pattern: literal text, escaped, with `{host}`, `{id}` and
    /// `{date}` where the server said its name, a message id of this session, or a date.
    fn pattern(&self, line: &str) -> String {
        // `250-` is not part of a word: the name after it may be the host's.
        let code_length = if reply_code(line).is_some() { 4 } else { 0 };
        let (code, mut rest) = line.split_at(code_length.min(line.len()));
        let mut out = escape_line(code.as_bytes(), false);
        while !rest.is_empty() {
            if let Some(after) = date_prefix(rest) {
                out.push_str("{date}");
                rest = after;
                continue;
            }
            let word_end = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
            let (word, after) = if word_end == 0 {
                rest.split_at(rest.chars().next().map_or(1, char::len_utf8))
            } else {
                rest.split_at(word_end)
            };
            let after_at = out.ends_with('@');
            match self.placeholder(word, after_at) {
                Some(name) => out.push_str(name),
                None => out.push_str(&escape_line(word.as_bytes(), false)),
            }
            rest = after;
        }
        trailing_blanks_escaped(out)
    }

    fn placeholder(&self, word: &str, after_at: bool) -> Option<&'static str> {
        if word.eq_ignore_ascii_case(&self.host) && !after_at {
            return Some("{host}");
        }
        crate::smtp::envelope::is_message_id(&self.session, word).then_some("{id}")
    }
}

/// A host name, message id or address literal is a run of these.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
}

/// The shape of the dates the server writes (`datetime::rfc5322`): `A` a letter, `9` a digit.
const DATE_SHAPE: &str = "Aaa, 99 Aaa 9999 99:99:99 +9999";

/// If `text` starts with a date the server wrote, the text after it.
fn date_prefix(text: &str) -> Option<&str> {
    let head = text.get(..DATE_SHAPE.len())?;
    let fits = head
        .bytes()
        .zip(DATE_SHAPE.bytes())
        .all(|(c, shape)| match shape {
            b'A' | b'a' => c.is_ascii_alphabetic(),
            b'9' => c.is_ascii_digit(),
            _ => c == shape,
        });
    fits.then(|| &text[DATE_SHAPE.len()..])
}
// ANCHOR_END: placeholders

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::transcript::Pattern;

    fn names() -> Volatile {
        Volatile {
            host: "mx.teach.test".into(),
            session: "S12".into(),
        }
    }

    #[test]
    fn placeholders_where_the_server_said_them() {
        let cases = [
            ("220 mx.teach.test ESMTP ready", "220 {host} ESMTP ready"),
            ("250-mx.teach.test greets c", "250-{host} greets c"),
            ("250", "250"),
            (
                "250 2.0.0 OK: message S12-3-tpgqqn009md delivered",
                "250 2.0.0 OK: message {id} delivered",
            ),
            (
                "250 2.1.5 <alice@mx.teach.test> OK",
                "250 2.1.5 <alice@mx.teach.test> OK",
            ),
            ("250 S120.3 S12.x", "250 S120.3 S12.x"),
            (
                "220 mx.teach.test ESMTP; Fri, 27 Nov 2026 05:06:52 +0000 {ok}  ",
                "220 {host} ESMTP; {date} {{ok}{x20}{x20}",
            ),
            ("500 a\u{85}b", "500 a{xC2}{x85}b"),
        ];
        for (said, written) in cases {
            assert_eq!(names().pattern(said), written, "{said}");
            let pattern = Pattern::parse(written).unwrap();
            assert!(pattern.matches(said), "{written} must match {said}");
        }
        let other = Pattern::parse(&names().pattern("220 mx.teach.test ESMTP")).unwrap();
        assert!(other.matches("220 other.example ESMTP"));
    }

    #[test]
    fn names_sort_in_session_order() {
        let peer: SocketAddr = "[::1]:4000".parse().unwrap();
        let now = SystemTime::UNIX_EPOCH;
        let ninth = file_name(now, 9, peer);
        let tenth = file_name(now, 10, peer);
        assert_eq!(ninth, "19700101-000000-000009-__1-4000.txt");
        assert!(ninth < tenth);
    }
}

//! IMAP commands in, responses out: the verb table, a parser written from the ABNF, and the
//! tagged, untagged and continuation responses. No state here: `session.rs` decides what a
//! command means now.
//!
//! Interface:
//! - `VERBS`, every command this server knows, with its syntax and RFC section.
//! - `parse(command)` turns one whole command (its line, and any literals it carried, inline as
//!   `{n}` CRLF and the n octets) into a `Tagged` command, or the `BAD` that says what is wrong.
//! - `literal_at_end(line)` says whether a line announces a literal (`{n}` or `{n+}`): the
//!   connection then reads n more octets before the command goes on.
//! - `SequenceSet`, `Flags`, `FetchItem`, `Section`, `SearchKey`: what the arguments mean.
//! - `Response`, one response as it goes on the wire; `quoted`/`nstring` write strings.
//!
//! The limits a hostile client meets here: a literal is at most `MAX_LITERAL` octets, a command
//! carries at most `MAX_LITERALS` of them, a sequence set has at most `MAX_SET_RANGES` ranges,
//! and nesting (search keys, lists) stops at `MAX_DEPTH`.
//!
//! Standards: RFC 9051 §2.2.1, §4, §4.1.1, §4.3, §6.3.13, §6.4.4, §6.4.5, §6.4.5.1, §6.4.6, §6.4.9, §7.1, §7.6, §9

use std::fmt;

/// The longest literal accepted (`{n}`): there is no APPEND here, so literals only carry
/// strings (a password, a search text), and 64 KiB is generous.
pub const MAX_LITERAL: usize = 64 * 1024;
/// Literals in one command.
pub const MAX_LITERALS: usize = 16;
/// A command line (without its literals). RFC 9051 §4 asks clients to stay near 8000 octets.
pub const MAX_LINE: usize = 8 * 1024;
/// Ranges in one sequence set.
pub const MAX_SET_RANGES: usize = 1000;
/// Nesting of parentheses, NOT and OR in one command.
pub const MAX_DEPTH: usize = 16;

// ANCHOR: verbs
/// Every IMAP command this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Capability,
    Noop,
    Logout,
    StartTls,
    Authenticate,
    Login,
    Enable,
    Select,
    Examine,
    Namespace,
    List,
    Lsub,
    Status,
    Idle,
    Check,
    Close,
    Unselect,
    Expunge,
    Search,
    Fetch,
    Store,
    Uid,
}

/// A verb's facts: its name on the wire, its syntax (the hint in a `BAD`), its RFC section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerbInfo {
    pub verb: Verb,
    pub name: &'static str,
    pub syntax: &'static str,
    pub rfc: &'static str,
}

const fn verb(verb: Verb, name: &'static str, syntax: &'static str, rfc: &'static str) -> VerbInfo {
    VerbInfo {
        verb,
        name,
        syntax,
        rfc,
    }
}

#[rustfmt::skip]
pub const VERBS: &[VerbInfo] = &[
    verb(Verb::Capability,   "CAPABILITY",   "tag CAPABILITY",                      "RFC 9051 §6.1.1"),
    verb(Verb::Noop,         "NOOP",         "tag NOOP",                            "RFC 9051 §6.1.2"),
    verb(Verb::Logout,       "LOGOUT",       "tag LOGOUT",                          "RFC 9051 §6.1.3"),
    verb(Verb::StartTls,     "STARTTLS",     "tag STARTTLS",                        "RFC 9051 §6.2.1"),
    verb(Verb::Authenticate, "AUTHENTICATE", "tag AUTHENTICATE PLAIN [response]",   "RFC 9051 §6.2.2"),
    verb(Verb::Login,        "LOGIN",        "tag LOGIN user password",             "RFC 9051 §6.2.3"),
    verb(Verb::Enable,       "ENABLE",       "tag ENABLE capability...",            "RFC 9051 §6.3.1"),
    verb(Verb::Select,       "SELECT",       "tag SELECT INBOX",                    "RFC 9051 §6.3.2"),
    verb(Verb::Examine,      "EXAMINE",      "tag EXAMINE INBOX",                   "RFC 9051 §6.3.3"),
    verb(Verb::Namespace,    "NAMESPACE",    "tag NAMESPACE",                       "RFC 9051 §6.3.10"),
    verb(Verb::List,         "LIST",         "tag LIST \"\" *",                     "RFC 9051 §6.3.9"),
    verb(Verb::Lsub,         "LSUB",         "tag LSUB \"\" *",                     "RFC 9051 §6.3.9"),
    verb(Verb::Status,       "STATUS",       "tag STATUS INBOX (MESSAGES UIDNEXT)", "RFC 9051 §6.3.11"),
    verb(Verb::Idle,         "IDLE",         "tag IDLE, later DONE",                "RFC 9051 §6.3.13"),
    verb(Verb::Check,        "CHECK",        "tag CHECK",                           "RFC 9051 §6.4.1"),
    verb(Verb::Close,        "CLOSE",        "tag CLOSE",                           "RFC 9051 §6.4.1"),
    verb(Verb::Unselect,     "UNSELECT",     "tag UNSELECT",                        "RFC 9051 §6.4.2"),
    verb(Verb::Expunge,      "EXPUNGE",      "tag EXPUNGE",                         "RFC 9051 §6.4.3"),
    verb(Verb::Search,       "SEARCH",       "tag SEARCH UNSEEN",                   "RFC 9051 §6.4.4"),
    verb(Verb::Fetch,        "FETCH",        "tag FETCH 1:* (FLAGS UID)",           "RFC 9051 §6.4.5"),
    verb(Verb::Store,        "STORE",        "tag STORE 1 +FLAGS (\\Seen)",         "RFC 9051 §6.4.6"),
    verb(Verb::Uid,          "UID",          "tag UID FETCH|STORE|SEARCH|EXPUNGE ...", "RFC 9051 §6.4.9"),
];
// ANCHOR_END: verbs

impl Verb {
    pub fn info(self) -> &'static VerbInfo {
        VERBS
            .iter()
            .find(|info| info.verb == self)
            .unwrap_or(&VERBS[0])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }
}

/// One message flag this server stores (RFC 9051 §2.3.2), as a bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u8);

impl Flags {
    pub const SEEN: Flags = Flags(1);
    pub const ANSWERED: Flags = Flags(2);
    pub const FLAGGED: Flags = Flags(4);
    pub const DELETED: Flags = Flags(8);
    pub const DRAFT: Flags = Flags(16);
    /// Each flag with its name on the wire.
    pub const NAMES: [(Flags, &'static str); 5] = [
        (Flags::SEEN, "\\Seen"),
        (Flags::ANSWERED, "\\Answered"),
        (Flags::FLAGGED, "\\Flagged"),
        (Flags::DELETED, "\\Deleted"),
        (Flags::DRAFT, "\\Draft"),
    ];

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// `\Seen \Deleted`, as inside a flag list.
    pub fn names(self) -> String {
        Flags::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn from_name(name: &str) -> Option<Flags> {
        Flags::NAMES
            .iter()
            .find(|(_, known)| known.eq_ignore_ascii_case(name))
            .map(|(flag, _)| *flag)
    }
}

/// One range of a sequence set; `u32::MAX` stands for `*` (the largest number in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range(pub u32, pub u32);

/// `sequence-set` (RFC 9051 §4.1.1, §9): ranges, kept as typed and never expanded, so
/// `1:4294967295` costs no more than `1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<Range>);

/// `*` in a sequence set.
pub const STAR: u32 = u32::MAX;

impl SequenceSet {
    /// Does the set hold `n`, where `largest` is what `*` means now? "3:*" with 2 messages
    /// is "2:3" (RFC 9051 §9: the order of a range's ends does not matter).
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        self.0.iter().any(|&Range(a, b)| {
            let (a, b) = (star(a, largest), star(b, largest));
            (a.min(b)..=a.max(b)).contains(&n)
        })
    }
}

fn star(n: u32, largest: u32) -> u32 {
    if n == STAR {
        largest
    } else {
        n
    }
}

/// `section-spec` of `BODY[...]` (RFC 9051 §6.4.5.1) for a message seen as one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    /// `BODY[]`: the whole message.
    Full,
    Header,
    /// `HEADER.FIELDS (a b)`, or with `not` `HEADER.FIELDS.NOT (a b)`.
    HeaderFields {
        fields: Vec<String>,
        not: bool,
    },
    Text,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::Full => Ok(()),
            Section::Header => write!(f, "HEADER"),
            Section::HeaderFields { fields, not } => {
                let not = if *not { ".NOT" } else { "" };
                write!(f, "HEADER.FIELDS{not} ({})", fields.join(" "))
            }
            Section::Text => write!(f, "TEXT"),
        }
    }
}

/// One `fetch-att` (RFC 9051 §6.4.5); the macros ALL, FAST and FULL are expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    Flags,
    Uid,
    InternalDate,
    Rfc822Size,
    Envelope,
    /// `BODY[section]<origin.count>`; `peek` leaves `\Seen` alone. RFC822 is `BODY[]`,
    /// RFC822.HEADER is `BODY.PEEK[HEADER]`, RFC822.TEXT is `BODY[TEXT]`.
    Body {
        section: Section,
        partial: Option<(u32, u32)>,
        peek: bool,
        /// The name to answer with, when the client used an RFC822 form.
        legacy: Option<&'static str>,
    },
}

/// How STORE changes flags (RFC 9051 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// One `search-key` (RFC 9051 §6.4.4); a list of keys means all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    /// Has (or with `false`, lacks) these flags: SEEN, UNSEEN, DELETED, ...
    Flag(Flags, bool),
    /// A header field contains the text: FROM, TO, CC, BCC, SUBJECT, HEADER name text.
    Header(String, String),
    Body(String),
    Text(String),
    Larger(u32),
    Smaller(u32),
    Uid(SequenceSet),
    Sequence(SequenceSet),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
}

/// A parsed command. Strings are as the client sent them (quoting and literals undone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capability,
    Noop,
    Logout,
    StartTls,
    Authenticate {
        mechanism: String,
        initial: Option<String>,
    },
    Login {
        user: String,
        password: String,
    },
    Enable(Vec<String>),
    Select(String),
    Examine(String),
    Namespace,
    List {
        reference: String,
        pattern: String,
        lsub: bool,
    },
    Status {
        mailbox: String,
        items: Vec<String>,
    },
    Idle,
    Check,
    Close,
    Unselect,
    /// EXPUNGE, or UID EXPUNGE with the UIDs it may remove (RFC 9051 §6.4.9).
    Expunge(Option<SequenceSet>),
    Search {
        keys: Vec<SearchKey>,
        uid: bool,
    },
    Fetch {
        set: SequenceSet,
        items: Vec<FetchItem>,
        uid: bool,
    },
    Store {
        set: SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: Flags,
        uid: bool,
    },
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Capability => Verb::Capability,
            Command::Noop => Verb::Noop,
            Command::Logout => Verb::Logout,
            Command::StartTls => Verb::StartTls,
            Command::Authenticate { .. } => Verb::Authenticate,
            Command::Login { .. } => Verb::Login,
            Command::Enable(_) => Verb::Enable,
            Command::Select(_) => Verb::Select,
            Command::Examine(_) => Verb::Examine,
            Command::Namespace => Verb::Namespace,
            Command::List { lsub: false, .. } => Verb::List,
            Command::List { lsub: true, .. } => Verb::Lsub,
            Command::Status { .. } => Verb::Status,
            Command::Idle => Verb::Idle,
            Command::Check => Verb::Check,
            Command::Close => Verb::Close,
            Command::Unselect => Verb::Unselect,
            Command::Expunge(Some(_))
            | Command::Search { uid: true, .. }
            | Command::Fetch { uid: true, .. }
            | Command::Store { uid: true, .. } => Verb::Uid,
            Command::Expunge(None) => Verb::Expunge,
            Command::Search { .. } => Verb::Search,
            Command::Fetch { .. } => Verb::Fetch,
            Command::Store { .. } => Verb::Store,
        }
    }
}

/// A command with the tag the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub tag: String,
    pub command: Command,
}

/// A command the parser refuses: the tag if one could be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub tag: Option<String>,
    pub text: String,
}

impl Refused {
    /// The `BAD` that answers it: tagged when the tag was readable, else untagged.
    pub fn response(&self) -> Response {
        match &self.tag {
            Some(tag) => Response::tagged(tag, Status::Bad, &self.text),
            None => Response::untagged(format!("BAD {}", self.text)),
        }
    }
}

// ANCHOR: literal_at_end
/// Does this line end by announcing a literal? `{n}` asks the server for a `+` before the n
/// octets (a synchronizing literal); `{n+}` (LITERAL+, RFC 7888) sends them at once. Returns
/// `(n, synchronizing)`; a number too large to read is `usize::MAX`, which no limit allows.
pub fn literal_at_end(line: &[u8]) -> Option<(usize, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let number = &inner[open + 1..];
    let (digits, sync) = match number.strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (number, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    Some((n, sync))
}
// ANCHOR_END: literal_at_end

// ANCHOR: parse
/// `command = tag SP (command-any / command-auth / command-nonauth / command-select) CRLF`
/// (RFC 9051 §9), without the final CRLF. Keywords are case-insensitive; a tag is any run of
/// `ASTRING-CHAR` except `+`.
pub fn parse(input: &[u8]) -> Result<Tagged, Refused> {
    let mut cursor = Cursor::new(input);
    let tag = cursor.tag().map_err(|text| Refused { tag: None, text })?;
    let refused = |text: String| Refused {
        tag: Some(tag.clone()),
        text,
    };
    // A lone word may be a command typed without a tag: no tag to answer with.
    cursor.space().map_err(|_| Refused {
        tag: None,
        text: "Every command starts with a tag and a space, such as a1 NOOP".into(),
    })?;
    let keyword = cursor.atom().map_err(refused)?.to_ascii_uppercase();
    let Some(info) = VERBS.iter().find(|v| v.name == keyword) else {
        return Err(refused(format!(
            "Unknown command {keyword:?}; try CAPABILITY, LOGIN, SELECT INBOX, FETCH, LOGOUT"
        )));
    };
    let command = cursor
        .command(info.verb)
        .and_then(|command| cursor.end().map(|()| command))
        .map_err(|why| refused(format!("{why}; syntax: {}", info.syntax)))?;
    Ok(Tagged { tag, command })
}
// ANCHOR_END: parse

/// What went wrong while reading an argument.
type Parsed<T> = Result<T, String>;

/// A position in one command's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: usize,
}

/// `ATOM-CHAR`: any CHAR except `atom-specials` (RFC 9051 §9).
fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b)
}

/// `ASTRING-CHAR = ATOM-CHAR / resp-specials`.
fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor {
            bytes,
            at: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Parsed<()> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at octet {}",
                byte as char,
                self.at + 1
            ))
        }
    }

    fn space(&mut self) -> Parsed<()> {
        self.expect(b' ')
    }

    fn end(&self) -> Parsed<()> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(format!("unexpected text at octet {}", self.at + 1))
        }
    }

    fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
        &self.bytes[start..self.at]
    }

    fn tag(&mut self) -> Parsed<String> {
        let tag = self.take_while(|b| is_astring_char(b) && b != b'+');
        if tag.is_empty() {
            return Err("Every command starts with a tag, such as a1 NOOP".into());
        }
        Ok(String::from_utf8_lossy(tag).into_owned())
    }

    fn atom(&mut self) -> Parsed<String> {
        let atom = self.take_while(is_atom_char);
        if atom.is_empty() {
            return Err(format!("expected a word at octet {}", self.at + 1));
        }
        Ok(String::from_utf8_lossy(atom).into_owned())
    }

    /// An atom compared case-insensitively with `word`, without moving if it is another.
    fn keyword(&mut self, word: &str) -> bool {
        let end = self.at + word.len();
        let matches = self
            .bytes
            .get(self.at..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
            && !self.bytes.get(end).copied().is_some_and(is_atom_char);
        if matches {
            self.at = end;
        }
        matches
    }

    fn number(&mut self) -> Parsed<u32> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u32>().ok())
            .ok_or_else(|| format!("expected a number at octet {}", self.at + 1))
    }

    fn nz_number(&mut self) -> Parsed<u32> {
        match self.number()? {
            0 => Err("0 is not a message number (they start at 1)".into()),
            n => Ok(n),
        }
    }

    /// `quoted = DQUOTE *QUOTED-CHAR DQUOTE`, with `\"` and `\\` (RFC 9051 §4.3).
    fn quoted(&mut self) -> Parsed<Vec<u8>> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b @ (b'"' | b'\\')) => out.push(b),
                        _ => return Err("in a quoted string, \\ escapes only \\ and \"".into()),
                    }
                }
                Some(b'\r' | b'\n') | None => return Err("a quoted string is not closed".into()),
                Some(b) => out.push(b),
            }
            self.at += 1;
        }
    }

    /// `literal = "{" number64 ["+"] "}" CRLF *CHAR8` (RFC 9051 §4.3); the connection has
    /// already read the octets into the command.
    fn literal(&mut self) -> Parsed<Vec<u8>> {
        self.expect(b'{')?;
        let n = self.number()? as usize;
        self.eat(b'+');
        self.expect(b'}')?;
        self.eat(b'\r');
        self.expect(b'\n')?;
        let data = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or("the literal is shorter than announced")?;
        self.at += n;
        Ok(data.to_vec())
    }

    /// `string = quoted / literal`.
    fn string(&mut self) -> Parsed<String> {
        let bytes = match self.peek() {
            Some(b'"') => self.quoted()?,
            Some(b'{') => self.literal()?,
            _ => return Err(format!("expected a string at octet {}", self.at + 1)),
        };
        String::from_utf8(bytes).map_err(|_| "strings must be UTF-8".into())
    }

    /// `astring = 1*ASTRING-CHAR / string`.
    fn astring(&mut self) -> Parsed<String> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let word = self.take_while(is_astring_char);
                if word.is_empty() {
                    return Err(format!(
                        "expected a word or a string at octet {}",
                        self.at + 1
                    ));
                }
                Ok(String::from_utf8_lossy(word).into_owned())
            }
        }
    }

    /// `list-mailbox = 1*list-char / string`: as astring, with `%` and `*` allowed.
    fn list_mailbox(&mut self) -> Parsed<String> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let word = self.take_while(|b| is_astring_char(b) || b == b'%' || b == b'*');
                if word.is_empty() {
                    return Err("expected a mailbox pattern".into());
                }
                Ok(String::from_utf8_lossy(word).into_owned())
            }
        }
    }

    fn seq_number(&mut self) -> Parsed<u32> {
        if self.eat(b'*') {
            Ok(STAR)
        } else {
            self.nz_number()
        }
    }

    /// `sequence-set = (seq-number / seq-range) ["," sequence-set]`, at most `MAX_SET_RANGES`.
    fn sequence_set(&mut self) -> Parsed<SequenceSet> {
        let mut ranges = Vec::new();
        loop {
            let first = self.seq_number()?;
            let last = if self.eat(b':') {
                self.seq_number()?
            } else {
                first
            };
            ranges.push(Range(first, last));
            if ranges.len() > MAX_SET_RANGES {
                return Err(format!(
                    "a sequence set has at most {MAX_SET_RANGES} ranges"
                ));
            }
            if !self.eat(b',') {
                return Ok(SequenceSet(ranges));
            }
        }
    }

    fn nest(&mut self) -> Parsed<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested more than {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    /// `flag-list = "(" [flag *(SP flag)] ")"`, or one flag without parentheses (as
    /// `store-att-flags` allows). Only the five system flags this server stores.
    fn flags(&mut self) -> Parsed<Flags> {
        let parenthesised = self.eat(b'(');
        let mut flags = Flags::default();
        while !(self.at_end() || parenthesised && self.peek() == Some(b')')) {
            let start = self.at;
            self.eat(b'\\');
            self.take_while(is_atom_char);
            let name = String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned();
            let flag = Flags::from_name(&name).ok_or_else(|| {
                format!("{name:?} is not a flag kept here (\\Seen \\Answered \\Flagged \\Deleted \\Draft)")
            })?;
            flags = flags.union(flag);
            if !self.eat(b' ') {
                break;
            }
        }
        if parenthesised {
            self.expect(b')')?;
        }
        Ok(flags)
    }

    fn command(&mut self, verb: Verb) -> Parsed<Command> {
        let command = match verb {
            Verb::Capability => Command::Capability,
            Verb::Noop => Command::Noop,
            Verb::Logout => Command::Logout,
            Verb::StartTls => Command::StartTls,
            Verb::Namespace => Command::Namespace,
            Verb::Idle => Command::Idle,
            Verb::Check => Command::Check,
            Verb::Close => Command::Close,
            Verb::Unselect => Command::Unselect,
            Verb::Expunge => Command::Expunge(None),
            Verb::Authenticate => {
                self.space()?;
                let mechanism = self.atom()?;
                let initial = if self.eat(b' ') {
                    Some(String::from_utf8_lossy(self.take_while(|b| b != b' ')).into_owned())
                } else {
                    None
                };
                Command::Authenticate { mechanism, initial }
            }
            Verb::Login => {
                self.space()?;
                let user = self.astring()?;
                self.space()?;
                let password = self.astring()?;
                Command::Login { user, password }
            }
            Verb::Enable => {
                let mut names = Vec::new();
                while self.eat(b' ') {
                    names.push(self.atom()?);
                }
                if names.is_empty() {
                    return Err("ENABLE needs a capability".into());
                }
                Command::Enable(names)
            }
            Verb::Select | Verb::Examine => {
                self.space()?;
                let mailbox = self.astring()?;
                if verb == Verb::Select {
                    Command::Select(mailbox)
                } else {
                    Command::Examine(mailbox)
                }
            }
            Verb::List | Verb::Lsub => {
                self.space()?;
                let reference = self.astring()?;
                self.space()?;
                let pattern = self.list_mailbox()?;
                let lsub = verb == Verb::Lsub;
                Command::List {
                    reference,
                    pattern,
                    lsub,
                }
            }
            Verb::Status => {
                self.space()?;
                let mailbox = self.astring()?;
                self.space()?;
                self.expect(b'(')?;
                let mut items = vec![self.atom()?.to_ascii_uppercase()];
                while self.eat(b' ') {
                    items.push(self.atom()?.to_ascii_uppercase());
                }
                self.expect(b')')?;
                Command::Status { mailbox, items }
            }
            Verb::Search => self.search(false)?,
            Verb::Fetch => self.fetch(false)?,
            Verb::Store => self.store(false)?,
            Verb::Uid => self.uid()?,
        };
        Ok(command)
    }

    /// `uid = "UID" SP (copy / move / fetch / search / store / uid-expunge)` (RFC 9051 §6.4.9).
    fn uid(&mut self) -> Parsed<Command> {
        self.space()?;
        if self.keyword("FETCH") {
            self.fetch(true)
        } else if self.keyword("STORE") {
            self.store(true)
        } else if self.keyword("SEARCH") {
            self.search(true)
        } else if self.keyword("EXPUNGE") {
            self.space()?;
            Ok(Command::Expunge(Some(self.sequence_set()?)))
        } else {
            Err("UID goes with FETCH, STORE, SEARCH or EXPUNGE".into())
        }
    }

    /// `fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    /// "(" fetch-att *(SP fetch-att) ")")`.
    fn fetch(&mut self, uid: bool) -> Parsed<Command> {
        self.space()?;
        let set = self.sequence_set()?;
        self.space()?;
        let mut items = Vec::new();
        if self.eat(b'(') {
            loop {
                items.extend(self.fetch_att()?);
                if !self.eat(b' ') {
                    break;
                }
            }
            self.expect(b')')?;
        } else {
            items.extend(self.fetch_att()?);
        }
        if uid && !items.contains(&FetchItem::Uid) {
            // RFC 9051 §6.4.9: UID FETCH always answers with the UID.
            items.insert(0, FetchItem::Uid);
        }
        Ok(Command::Fetch { set, items, uid })
    }

    /// One `fetch-att`, or a macro's items.
    fn fetch_att(&mut self) -> Parsed<Vec<FetchItem>> {
        use FetchItem::*;
        let fast = vec![Flags, InternalDate, Rfc822Size];
        let body = |section, peek, legacy| Body {
            section,
            partial: None,
            peek,
            legacy,
        };
        let name = self
            .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
            .to_ascii_uppercase();
        let items = match name.as_slice() {
            b"ALL" => [fast, vec![Envelope]].concat(),
            b"FAST" => fast,
            b"FULL" => [fast, vec![Envelope]].concat(),
            b"FLAGS" => vec![Flags],
            b"UID" => vec![Uid],
            b"INTERNALDATE" => vec![InternalDate],
            b"RFC822.SIZE" => vec![Rfc822Size],
            b"ENVELOPE" => vec![Envelope],
            b"RFC822" => vec![body(Section::Full, false, Some("RFC822"))],
            b"RFC822.HEADER" => vec![body(Section::Header, true, Some("RFC822.HEADER"))],
            b"RFC822.TEXT" => vec![body(Section::Text, false, Some("RFC822.TEXT"))],
            b"BODY" | b"BODY.PEEK" | b"BINARY" | b"BINARY.PEEK" if self.peek() == Some(b'[') => {
                let peek = name.ends_with(b".PEEK");
                let section = self.section()?;
                let partial = self.partial()?;
                vec![Body {
                    section,
                    partial,
                    peek,
                    legacy: None,
                }]
            }
            _ => {
                let name = String::from_utf8_lossy(&name).into_owned();
                return Err(format!(
                    "{name:?} is not a FETCH item here (FLAGS UID INTERNALDATE RFC822.SIZE ENVELOPE BODY[...] BODY.PEEK[...])"
                ));
            }
        };
        Ok(items)
    }

    /// `section = "[" [section-spec] "]"`; part numbers other than `1` are refused (each
    /// message is served as a single part).
    fn section(&mut self) -> Parsed<Section> {
        self.expect(b'[')?;
        if self.eat(b']') {
            return Ok(Section::Full);
        }
        let section = if self.keyword("HEADER.FIELDS.NOT") {
            self.header_fields(true)?
        } else if self.keyword("HEADER.FIELDS") {
            self.header_fields(false)?
        } else if self.keyword("HEADER") {
            Section::Header
        } else if self.keyword("TEXT") || self.keyword("1") {
            Section::Text
        } else {
            return Err("a section is [], [HEADER], [HEADER.FIELDS (...)] or [TEXT]".into());
        };
        self.expect(b']')?;
        Ok(section)
    }

    fn header_fields(&mut self, not: bool) -> Parsed<Section> {
        self.space()?;
        self.expect(b'(')?;
        let mut fields = vec![self.astring()?.to_ascii_uppercase()];
        while self.eat(b' ') {
            fields.push(self.astring()?.to_ascii_uppercase());
        }
        self.expect(b')')?;
        Ok(Section::HeaderFields { fields, not })
    }

    /// `partial = "<" number64 "." nz-number64 ">"`.
    fn partial(&mut self) -> Parsed<Option<(u32, u32)>> {
        if !self.eat(b'<') {
            return Ok(None);
        }
        let origin = self.number()?;
        self.expect(b'.')?;
        let count = self.nz_number()?;
        self.expect(b'>')?;
        Ok(Some((origin, count)))
    }

    /// `store = "STORE" SP sequence-set SP store-att-flags`,
    /// `store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))`.
    fn store(&mut self, uid: bool) -> Parsed<Command> {
        self.space()?;
        let set = self.sequence_set()?;
        self.space()?;
        let mode = if self.eat(b'+') {
            StoreMode::Add
        } else if self.eat(b'-') {
            StoreMode::Remove
        } else {
            StoreMode::Replace
        };
        let silent = if self.keyword("FLAGS.SILENT") {
            true
        } else if self.keyword("FLAGS") {
            false
        } else {
            return Err("STORE changes FLAGS, +FLAGS or -FLAGS (with .SILENT)".into());
        };
        self.space()?;
        let flags = self.flags()?;
        Ok(Command::Store {
            set,
            mode,
            silent,
            flags,
            uid,
        })
    }

    /// `search = "SEARCH" [search-return-opts] SP search-program`; `CHARSET` may name
    /// US-ASCII or UTF-8.
    fn search(&mut self, uid: bool) -> Parsed<Command> {
        self.space()?;
        if self.keyword("CHARSET") {
            self.space()?;
            let charset = self.astring()?;
            if !["US-ASCII", "UTF-8"].contains(&charset.to_ascii_uppercase().as_str()) {
                return Err(format!("[BADCHARSET (US-ASCII UTF-8)] {charset:?}"));
            }
            self.space()?;
        }
        let mut keys = vec![self.search_key()?];
        while self.eat(b' ') {
            keys.push(self.search_key()?);
        }
        Ok(Command::Search { keys, uid })
    }

    fn search_key(&mut self) -> Parsed<SearchKey> {
        self.nest()?;
        let key = self.search_key_inner();
        self.depth -= 1;
        key
    }

    fn search_key_inner(&mut self) -> Parsed<SearchKey> {
        use SearchKey::*;
        if self.eat(b'(') {
            let mut keys = vec![self.search_key()?];
            while self.eat(b' ') {
                keys.push(self.search_key()?);
            }
            self.expect(b')')?;
            return Ok(And(keys));
        }
        if matches!(self.peek(), Some(b'0'..=b'9' | b'*')) {
            return Ok(Sequence(self.sequence_set()?));
        }
        let word = self.atom()?.to_ascii_uppercase();
        let flag = |flag, set| Ok(Flag(flag, set));
        match word.as_str() {
            "ALL" => Ok(All),
            "SEEN" => flag(Flags::SEEN, true),
            "UNSEEN" | "NEW" => flag(Flags::SEEN, false),
            "DELETED" => flag(Flags::DELETED, true),
            "UNDELETED" => flag(Flags::DELETED, false),
            "FLAGGED" => flag(Flags::FLAGGED, true),
            "UNFLAGGED" => flag(Flags::FLAGGED, false),
            "ANSWERED" => flag(Flags::ANSWERED, true),
            "UNANSWERED" => flag(Flags::ANSWERED, false),
            "DRAFT" => flag(Flags::DRAFT, true),
            "UNDRAFT" => flag(Flags::DRAFT, false),
            // No message is "recent" to a session here: none is new since the last one.
            "RECENT" => Ok(Not(Box::new(All))),
            "OLD" => Ok(All),
            "FROM" | "TO" | "CC" | "BCC" | "SUBJECT" => {
                self.space()?;
                Ok(Header(word, self.astring()?))
            }
            "HEADER" => {
                self.space()?;
                let field = self.astring()?.to_ascii_uppercase();
                self.space()?;
                Ok(Header(field, self.astring()?))
            }
            "BODY" => {
                self.space()?;
                Ok(Body(self.astring()?))
            }
            "TEXT" => {
                self.space()?;
                Ok(Text(self.astring()?))
            }
            "LARGER" | "SMALLER" => {
                self.space()?;
                let n = self.number()?;
                Ok(if word == "LARGER" {
                    Larger(n)
                } else {
                    Smaller(n)
                })
            }
            "UID" => {
                self.space()?;
                Ok(Uid(self.sequence_set()?))
            }
            "NOT" => {
                self.space()?;
                Ok(Not(Box::new(self.search_key()?)))
            }
            "OR" => {
                self.space()?;
                let a = self.search_key()?;
                self.space()?;
                Ok(Or(Box::new(a), Box::new(self.search_key()?)))
            }
            _ => Err(format!("{word:?} is not a search key here")),
        }
    }
}

// ANCHOR: response
/// How a command ended (RFC 9051 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
        }
    }
}

/// One response (RFC 9051 §2.2.2): untagged data (`* ...`), a continuation request (`+ ...`),
/// or the tagged status that ends a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `* ` and the data; the data may hold literals, so it is bytes.
    Untagged(Vec<u8>),
    /// `+ text`: go on (a literal, a SASL response, or IDLE).
    Continue(String),
    Tagged {
        tag: String,
        status: Status,
        text: String,
    },
}

impl Response {
    pub fn untagged(data: impl Into<Vec<u8>>) -> Response {
        Response::Untagged(data.into())
    }

    pub fn tagged(tag: &str, status: Status, text: impl Into<String>) -> Response {
        Response::Tagged {
            tag: tag.to_string(),
            status,
            text: text.into(),
        }
    }

    /// A BAD, tagged or not: what the error budget counts.
    pub fn is_bad(&self) -> bool {
        match self {
            Response::Tagged { status, .. } => *status == Status::Bad,
            Response::Untagged(data) => data.starts_with(b"BAD "),
            Response::Continue(_) => false,
        }
    }

    /// The bytes on the wire, ending in CRLF.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = match self {
            Response::Untagged(data) => [b"* ", data.as_slice()].concat(),
            Response::Continue(text) => format!("+ {text}").into_bytes(),
            Response::Tagged { tag, status, text } => {
                format!("{tag} {} {text}", status.name()).into_bytes()
            }
        };
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// For the log: the first line, literals not shown.
impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wire = self.to_wire();
        let first = wire.split(|&b| b == b'\n').next().unwrap_or_default();
        write!(f, "{}", String::from_utf8_lossy(first).trim_end())
    }
}
// ANCHOR_END: response

/// A string as IMAP data: quoted when it can be, a literal when it holds CR, LF, `"`, `\`
/// or octets outside ASCII (RFC 9051 §4.3).
pub fn nstring(value: Option<&[u8]>) -> Vec<u8> {
    let Some(value) = value else {
        return b"NIL".to_vec();
    };
    let plain = value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        return [b"\"", value, b"\""].concat();
    }
    literal(value)
}

/// `{n}` CRLF and the octets.
pub fn literal(value: &[u8]) -> Vec<u8> {
    [format!("{{{}}}\r\n", value.len()).as_bytes(), value].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(line: &str) -> Command {
        parse(line.as_bytes()).unwrap().command
    }

    #[test]
    fn tags_keywords_and_strings() {
        let t = parse(b"a1 login alice \"pass word\"").unwrap();
        assert_eq!(t.tag, "a1");
        assert_eq!(
            t.command,
            Command::Login {
                user: "alice".into(),
                password: "pass word".into()
            }
        );
        assert_eq!(
            command("x LOGIN {5}\r\nalice {3+}\r\na\"b"),
            Command::Login {
                user: "alice".into(),
                password: "a\"b".into()
            }
        );
        assert_eq!(
            command("x LOGIN \"a\\\\b\" \"\\\"\""),
            Command::Login {
                user: "a\\b".into(),
                password: "\"".into()
            }
        );
        assert_eq!(command("x select inbox"), Command::Select("inbox".into()));
        assert_eq!(
            command("x LIST \"\" *"),
            Command::List {
                reference: "".into(),
                pattern: "*".into(),
                lsub: false
            }
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_tag_when_there_is_one() {
        for (line, tag) in [
            ("", None),
            (" NOOP", None),
            ("+x NOOP", None),
            ("a1", None),
            ("NOOP", None),
            ("a1 BOGUS", Some("a1")),
            ("a1 NOOP extra", Some("a1")),
            ("a1 LOGIN alice", Some("a1")),
            ("a1 LOGIN alice \"open", Some("a1")),
            ("a1 LOGIN alice {10}\r\nshort", Some("a1")),
            ("a1 FETCH 0 FLAGS", Some("a1")),
            ("a1 FETCH 1 BODY[2]", Some("a1")),
            ("a1 FETCH 1 (FLAGS", Some("a1")),
            ("a1 FETCH 1 BODY[]<5>", Some("a1")),
            ("a1 STORE 1 +FLAGS (\\Bogus)", Some("a1")),
            ("a1 SEARCH CHARSET KOI8-R ALL", Some("a1")),
            ("a1 SEARCH FROM", Some("a1")),
            ("a1 UID COPY 1 x", Some("a1")),
            ("a1 FETCH 99999999999 FLAGS", Some("a1")),
        ] {
            let refused = parse(line.as_bytes()).unwrap_err();
            assert_eq!(refused.tag.as_deref(), tag, "{line:?}");
            assert!(refused.response().is_bad(), "{line:?}");
        }
    }

    #[test]
    fn sequence_sets_are_ranges_bounded_in_count() {
        let Command::Fetch { set, .. } = command("a FETCH 1,3:5,7:*,* FLAGS") else {
            panic!()
        };
        let held: Vec<u32> = (1..=9).filter(|&n| set.contains(n, 9)).collect();
        assert_eq!(held, [1, 3, 4, 5, 7, 8, 9]);
        let Command::Fetch { set, .. } = command("a FETCH 5:2 FLAGS") else {
            panic!()
        };
        assert!(set.contains(3, 9) && !set.contains(6, 9));
        let Command::Fetch { set, .. } = command("a FETCH 1:4294967295 FLAGS") else {
            panic!()
        };
        assert!(set.contains(7, 9));
        let many = vec!["1"; MAX_SET_RANGES + 1].join(",");
        assert!(parse(format!("a FETCH {many} FLAGS").as_bytes()).is_err());
        let enough = vec!["1"; MAX_SET_RANGES].join(",");
        assert!(parse(format!("a FETCH {enough} FLAGS").as_bytes()).is_ok());
    }

    #[test]
    fn fetch_items_and_macros() {
        let Command::Fetch { items, uid, .. } = command(
            "a UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From subject)] BODY[TEXT]<0.10> RFC822.SIZE)",
        ) else {
            panic!()
        };
        assert!(uid);
        assert_eq!(items[0], FetchItem::Uid, "UID FETCH always sends the UID");
        assert_eq!(
            items[2],
            FetchItem::Body {
                section: Section::HeaderFields {
                    fields: vec!["FROM".into(), "SUBJECT".into()],
                    not: false
                },
                partial: None,
                peek: true,
                legacy: None
            }
        );
        assert_eq!(
            items[3],
            FetchItem::Body {
                section: Section::Text,
                partial: Some((0, 10)),
                peek: false,
                legacy: None
            }
        );
        let Command::Fetch { items, .. } = command("a FETCH 1 ALL") else {
            panic!()
        };
        assert_eq!(items.len(), 4);
        assert_eq!(
            command("a uid fetch 1 body[]").verb(),
            Verb::Uid,
            "curl's form"
        );
    }

    #[test]
    fn store_and_search() {
        assert_eq!(
            command("a STORE 1:2 +FLAGS.SILENT (\\Deleted \\Seen)"),
            Command::Store {
                set: SequenceSet(vec![Range(1, 2)]),
                mode: StoreMode::Add,
                silent: true,
                flags: Flags::DELETED.union(Flags::SEEN),
                uid: false
            }
        );
        assert_eq!(
            command("a STORE 1 FLAGS \\Flagged"),
            Command::Store {
                set: SequenceSet(vec![Range(1, 1)]),
                mode: StoreMode::Replace,
                silent: false,
                flags: Flags::FLAGGED,
                uid: false
            }
        );
        let Command::Search { keys, .. } =
            command("a SEARCH CHARSET UTF-8 OR FROM alice (UNSEEN NOT DELETED) UID 2:* 1,3")
        else {
            panic!()
        };
        assert_eq!(keys.len(), 3);
        assert!(matches!(keys[0], SearchKey::Or(..)));
        let deep = format!("a SEARCH {}ALL", "NOT ".repeat(MAX_DEPTH + 1));
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn literals_are_announced_at_the_end_of_a_line() {
        assert_eq!(literal_at_end(b"a LOGIN {5}"), Some((5, true)));
        assert_eq!(literal_at_end(b"a LOGIN {5+}"), Some((5, false)));
        assert_eq!(literal_at_end(b"a LOGIN x"), None);
        assert_eq!(literal_at_end(b"a LOGIN {}"), None);
        assert_eq!(literal_at_end(b"a LOGIN {x}"), None);
        assert_eq!(
            literal_at_end(b"{99999999999999999999999}"),
            Some((usize::MAX, true))
        );
    }

    /// A small in-process fuzz: valid commands with bytes changed, cut or repeated never make
    /// the parser panic, and every refusal is a BAD (`fuzz/fuzz_targets/imap_parser.rs` runs
    /// the same check under libFuzzer).
    #[test]
    fn mutated_commands_never_panic() {
        let seeds: [&[u8]; 6] = [
            b"a LOGIN {5}\r\nalice \"pass\"",
            b"b UID FETCH 1:*,3 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM)]<0.5>)",
            b"c SEARCH CHARSET UTF-8 OR (FROM x NOT SEEN) UID 2:*",
            b"d STORE 1 +FLAGS.SILENT (\\Seen \\Deleted)",
            b"e STATUS INBOX (MESSAGES UIDNEXT)",
            b"f LIST \"\" *",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].to_vec();
            for _ in 0..=next() % 4 {
                let at = (next() as usize) % (bytes.len() + 1);
                match next() % 4 {
                    0 if at < bytes.len() => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, b"{}()[]<>\"\\ *:,.+-"[(next() % 17) as usize]),
                    _ => bytes.extend_from_within(..at),
                }
            }
            let _ = literal_at_end(&bytes);
            if let Err(refused) = parse(&bytes) {
                assert!(refused.response().is_bad(), "{bytes:?}");
            }
        }
    }

    #[test]
    fn responses_on_the_wire() {
        assert_eq!(
            Response::tagged("a1", Status::Ok, "done").to_wire(),
            b"a1 OK done\r\n"
        );
        assert_eq!(Response::untagged("3 EXISTS").to_wire(), b"* 3 EXISTS\r\n");
        assert_eq!(Response::Continue("go".into()).to_wire(), b"+ go\r\n");
        assert_eq!(nstring(None), b"NIL");
        assert_eq!(nstring(Some(b"a b")), b"\"a b\"");
        assert_eq!(nstring(Some(b"a\"b")), b"{3}\r\na\"b");
    }
}

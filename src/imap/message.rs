//! One message as IMAP sees it: its UID, flags and CRLF text, and what FETCH and SEARCH read
//! from it (sections, the ENVELOPE, header fields). Pure: no file, no socket.
//!
//! Interface:
//! - `Message`, a message of the selected mailbox; `Message::new(uid, flags, content, date)`.
//! - `fetch_data(message, items)` writes the data of one `* n FETCH (...)` response.
//! - `matches(message, key, seq, largest)` decides one SEARCH key.
//! - `header(wire)`, `field(header, name)`: the header block and one field's unfolded value.
//!
//! A message is served as one part: `BODY[]` is the whole message, `BODY[HEADER]` its header
//! block with the empty line, `BODY[TEXT]` what follows. Its size (`RFC822.SIZE`) is the octets
//! of the CRLF form, as POP3 counts them, so `BODY[]` has exactly that many.
//!
//! Standards: RFC 9051 §2.3.3, §2.3.4, §2.3.5, §6.4.4, §6.4.5, §6.4.5.1, §7.5.2, RFC 5322 §2.2.3

use crate::imap::command::{nstring, FetchItem, Flags, SearchKey, Section, STAR};
use crate::pop3::session::to_crlf;

/// A message of the selected mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: u32,
    pub flags: Flags,
    /// The message as sent to the client: CRLF line ends.
    pub wire: Vec<u8>,
    /// `INTERNALDATE`, as `"03-Dec-2026 09:28:47 +0000"`, from the mbox `From ` line.
    pub internal_date: String,
}

impl Message {
    pub fn new(uid: u32, flags: Flags, content: &[u8], internal_date: String) -> Message {
        Message {
            uid,
            flags,
            wire: to_crlf(content),
            internal_date,
        }
    }
}

/// The header block of a CRLF message, with the empty line that ends it (or the whole
/// message, if it has no body).
pub fn header(wire: &[u8]) -> &[u8] {
    let end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(wire.len(), |i| i + 4);
    let starts_empty = wire.starts_with(b"\r\n");
    if starts_empty {
        &wire[..2]
    } else {
        &wire[..end]
    }
}

/// The header's fields, each with its continuation lines: `(name, raw field with CRLFs)`.
fn fields(header: &[u8]) -> Vec<(String, &[u8])> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    let mut start = 0;
    let lines: Vec<&[u8]> = header.split_inclusive(|&b| b == b'\n').collect();
    let mut offset = 0;
    for (i, line) in lines.iter().enumerate() {
        let next_folds = lines
            .get(i + 1)
            .is_some_and(|l| l.starts_with(b" ") || l.starts_with(b"\t"));
        offset += line.len();
        if next_folds {
            continue;
        }
        let raw = &header[start..offset];
        let name_end = raw.iter().position(|&b| b == b':');
        if let Some(end) = name_end {
            let name = String::from_utf8_lossy(&raw[..end])
                .trim()
                .to_ascii_uppercase();
            out.push((name, raw));
        }
        start = offset;
    }
    out
}

/// The unfolded value of the first field named `name` (any case), if there is one.
pub fn field(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let name = name.to_ascii_uppercase();
    fields(header)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, raw)| {
            let colon = raw.iter().position(|&b| b == b':').unwrap_or(0);
            let value: Vec<u8> = raw[colon + 1..]
                .iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect();
            value.trim_ascii().to_vec()
        })
}

/// `HEADER.FIELDS (..)` or `.NOT`: the fields named (or all others), then the empty line.
fn header_fields(header: &[u8], wanted: &[String], not: bool) -> Vec<u8> {
    let mut out: Vec<u8> = fields(header)
        .into_iter()
        .filter(|(name, _)| wanted.contains(name) != not)
        .flat_map(|(_, raw)| raw.to_vec())
        .collect();
    out.extend_from_slice(b"\r\n");
    out
}

/// The octets of a section, before any partial.
fn section(wire: &[u8], section: &Section) -> Vec<u8> {
    let head = header(wire);
    match section {
        Section::Full => wire.to_vec(),
        Section::Header => head.to_vec(),
        Section::HeaderFields { fields, not } => header_fields(head, fields, *not),
        Section::Text => wire[head.len()..].to_vec(),
    }
}

// ANCHOR: fetch_data
/// The parenthesised data of one FETCH response for `message`: `(UID 3 FLAGS (\Seen) ...)`.
pub fn fetch_data(message: &Message, items: &[FetchItem]) -> Vec<u8> {
    let mut out = b"(".to_vec();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        match item {
            FetchItem::Uid => out.extend(format!("UID {}", message.uid).bytes()),
            FetchItem::Flags => out.extend(format!("FLAGS ({})", message.flags.names()).bytes()),
            FetchItem::InternalDate => {
                out.extend(format!("INTERNALDATE \"{}\"", message.internal_date).bytes())
            }
            FetchItem::Rfc822Size => {
                out.extend(format!("RFC822.SIZE {}", message.wire.len()).bytes())
            }
            FetchItem::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                out.extend(envelope(header(&message.wire)));
            }
            FetchItem::Body {
                section: which,
                partial,
                legacy,
                ..
            } => {
                let bytes = section(&message.wire, which);
                let (name, bytes) = match (legacy, partial) {
                    (Some(name), _) => (name.to_string(), bytes.as_slice()),
                    (None, Some((origin, count))) => {
                        let start = (*origin as usize).min(bytes.len());
                        let end = start.saturating_add(*count as usize).min(bytes.len());
                        (format!("BODY[{which}]<{origin}>"), &bytes[start..end])
                    }
                    (None, None) => (format!("BODY[{which}]"), bytes.as_slice()),
                };
                out.extend(name.bytes());
                out.push(b' ');
                out.extend(crate::imap::command::literal(bytes));
            }
        }
    }
    out.push(b')');
    out
}
// ANCHOR_END: fetch_data

/// `envelope = "(" env-date SP env-subject SP env-from SP env-sender SP env-reply-to SP
/// env-to SP env-cc SP env-bcc SP env-in-reply-to SP env-message-id ")"` (RFC 9051 §7.5.2).
/// Sender and Reply-To default to From, as the RFC asks.
pub fn envelope(header: &[u8]) -> Vec<u8> {
    let value = |name: &str| field(header, name);
    let from = value("From");
    let addresses = |name: &str| match value(name) {
        Some(v) => address_list(&v),
        None if name == "Sender" || name == "Reply-To" => {
            from.as_deref().map_or(b"NIL".to_vec(), address_list)
        }
        None => b"NIL".to_vec(),
    };
    let parts = [
        nstring(value("Date").as_deref()),
        nstring(value("Subject").as_deref()),
        addresses("From"),
        addresses("Sender"),
        addresses("Reply-To"),
        addresses("To"),
        addresses("Cc"),
        addresses("Bcc"),
        nstring(value("In-Reply-To").as_deref()),
        nstring(value("Message-ID").as_deref()),
    ];
    [b"(".to_vec(), parts.join(&b' '), b")".to_vec()].concat()
}

/// An address list as `((name NIL mailbox host) ...)`, split at commas outside quotes,
/// comments and angle brackets (RFC 5322 §3.4). Group syntax is flattened.
fn address_list(value: &[u8]) -> Vec<u8> {
    let mut items = Vec::new();
    let (mut quoted, mut depth, mut start) = (false, 0i32, 0);
    for (i, &b) in value.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' | b'(' if !quoted => depth += 1,
            b'>' | b')' if !quoted => depth -= 1,
            b',' | b';' if !quoted && depth <= 0 => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    let addresses: Vec<Vec<u8>> = items.into_iter().filter_map(address).collect::<Vec<_>>();
    if addresses.is_empty() {
        return b"NIL".to_vec();
    }
    [b"(".to_vec(), addresses.concat(), b")".to_vec()].concat()
}

/// One address: `Name <user@host>` or `user@host`.
fn address(text: &[u8]) -> Option<Vec<u8>> {
    let text = text.trim_ascii();
    let text = match text.iter().position(|&b| b == b':') {
        // "group: a@b" — the part after the group name.
        Some(colon)
            if !text.contains(&b'<') || text.iter().position(|&b| b == b'<') > Some(colon) =>
        {
            text[colon + 1..].trim_ascii()
        }
        _ => text,
    };
    if text.is_empty() {
        return None;
    }
    let (name, spec) = match (
        text.iter().position(|&b| b == b'<'),
        text.iter().rposition(|&b| b == b'>'),
    ) {
        (Some(open), Some(close)) if open < close => {
            let name = text[..open].trim_ascii();
            let name = name
                .strip_prefix(b"\"")
                .and_then(|n| n.strip_suffix(b"\""))
                .unwrap_or(name);
            let name = (!name.is_empty()).then_some(name);
            (name, &text[open + 1..close])
        }
        _ => (None, text),
    };
    let (mailbox, host) = match spec.iter().rposition(|&b| b == b'@') {
        Some(at) => (&spec[..at], Some(&spec[at + 1..])),
        None => (spec, None),
    };
    Some(
        [
            b"(".to_vec(),
            nstring(name),
            b" NIL ".to_vec(),
            nstring(Some(mailbox)),
            b" ".to_vec(),
            nstring(host),
            b")".to_vec(),
        ]
        .concat(),
    )
}

/// ASCII case-insensitive substring test (SEARCH, RFC 9051 §6.4.4).
fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

// ANCHOR: matches
/// Does message number `seq` match `key`? `largest` is the number of messages (what `*`
/// means), `largest_uid` the highest UID.
pub fn matches(message: &Message, key: &SearchKey, seq: u32, largest: (u32, u32)) -> bool {
    let (last_seq, last_uid) = largest;
    let head = header(&message.wire);
    match key {
        SearchKey::All => true,
        SearchKey::Flag(flag, set) => message.flags.contains(*flag) == *set,
        SearchKey::Header(name, text) => field(head, name).is_some_and(|v| contains(&v, text)),
        SearchKey::Body(text) => contains(&message.wire[head.len()..], text),
        SearchKey::Text(text) => contains(&message.wire, text),
        SearchKey::Larger(n) => message.wire.len() > *n as usize,
        SearchKey::Smaller(n) => message.wire.len() < *n as usize,
        SearchKey::Uid(set) => {
            // "UID n:*" with n above every UID still matches the last message (RFC 9051 §6.4.9).
            set.contains(message.uid, last_uid.max(1))
                || (message.uid == last_uid && set.0.iter().any(|r| r.0 == STAR || r.1 == STAR))
        }
        SearchKey::Sequence(set) => set.contains(seq, last_seq),
        SearchKey::Not(inner) => !matches(message, inner, seq, largest),
        SearchKey::Or(a, b) => {
            matches(message, a, seq, largest) || matches(message, b, seq, largest)
        }
        SearchKey::And(keys) => keys.iter().all(|k| matches(message, k, seq, largest)),
    }
}
// ANCHOR_END: matches

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"Return-Path: <bob@example.org>\nFrom: \"Bob B\" <bob@example.org>\nTo: alice@example.org,\n carol@example.org\nSubject: Hello there\n\nBody line\nsecond\n";

    fn message() -> Message {
        Message::new(7, Flags::SEEN, TEXT, "03-Dec-2026 09:28:47 +0000".into())
    }

    fn body(section: Section, partial: Option<(u32, u32)>) -> FetchItem {
        FetchItem::Body {
            section,
            partial,
            peek: true,
            legacy: None,
        }
    }

    #[test]
    fn sections_cut_the_crlf_message() {
        let m = message();
        assert_eq!(m.wire, to_crlf(TEXT));
        let head = header(&m.wire);
        assert!(head.ends_with(b"Hello there\r\n\r\n"));
        let data = fetch_data(&m, &[body(Section::Text, None)]);
        assert_eq!(data, b"(BODY[TEXT] {19}\r\nBody line\r\nsecond\r\n)");
        let data = fetch_data(&m, &[body(Section::Full, Some((0, 6)))]);
        assert_eq!(data, b"(BODY[]<0> {6}\r\nReturn)");
        let data = fetch_data(&m, &[body(Section::Full, Some((9999, 6)))]);
        assert_eq!(data, b"(BODY[]<9999> {0}\r\n)");
        let fields = Section::HeaderFields {
            fields: vec!["TO".into(), "SUBJECT".into()],
            not: false,
        };
        let data = fetch_data(&m, &[body(fields, None)]);
        let want = b"To: alice@example.org,\r\n carol@example.org\r\nSubject: Hello there\r\n\r\n";
        assert!(
            data.ends_with(&[&want[..], b")"].concat()),
            "{}",
            String::from_utf8_lossy(&data)
        );
    }

    #[test]
    fn flags_size_uid_and_envelope() {
        let m = message();
        let data = fetch_data(
            &m,
            &[
                FetchItem::Uid,
                FetchItem::Flags,
                FetchItem::Rfc822Size,
                FetchItem::InternalDate,
            ],
        );
        let want = format!(
            "(UID 7 FLAGS (\\Seen) RFC822.SIZE {} INTERNALDATE \"03-Dec-2026 09:28:47 +0000\")",
            m.wire.len()
        );
        assert_eq!(String::from_utf8(data).unwrap(), want);
        let env = String::from_utf8(envelope(header(&m.wire))).unwrap();
        assert_eq!(
            env,
            "(NIL \"Hello there\" ((\"Bob B\" NIL \"bob\" \"example.org\")) ((\"Bob B\" NIL \"bob\" \"example.org\")) ((\"Bob B\" NIL \"bob\" \"example.org\")) ((NIL NIL \"alice\" \"example.org\")(NIL NIL \"carol\" \"example.org\")) NIL NIL NIL NIL)"
        );
    }

    #[test]
    fn search_keys() {
        let m = message();
        let at = |key: SearchKey| matches(&m, &key, 2, (3, 9));
        assert!(at(SearchKey::Header("FROM".into(), "BOB".into())));
        assert!(at(SearchKey::Header("TO".into(), "carol".into())));
        assert!(!at(SearchKey::Header("CC".into(), "".into())));
        assert!(at(SearchKey::Body("second".into())));
        assert!(!at(SearchKey::Body("Hello".into())));
        assert!(at(SearchKey::Text("hello".into())));
        assert!(at(SearchKey::Flag(Flags::SEEN, true)));
        assert!(at(SearchKey::Flag(Flags::DELETED, false)));
        let set = |a, b| crate::imap::command::SequenceSet(vec![crate::imap::command::Range(a, b)]);
        assert!(at(SearchKey::Uid(set(5, 8))));
        assert!(!at(SearchKey::Uid(set(8, 9))));
        assert!(at(SearchKey::Sequence(set(2, STAR))));
        assert!(!at(SearchKey::Not(Box::new(SearchKey::All))));
    }
}

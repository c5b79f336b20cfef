//! Reports: the delivery status notification (DSN) that tells a sender which recipients failed,
//! or (when the sender asked with `NOTIFY=SUCCESS`) which were delivered or relayed.
//!
//! Interface:
//! - `report(hostname, entry, original, rcpts, action, now, spill_dir)` builds the report on
//!   some recipients of a queued message: a `multipart/report; report-type=delivery-status`
//!   message with a readable part, the `message/delivery-status` part, and the original message
//!   read from `original` (the queue's content file): its headers (`text/rfc822-headers`), or
//!   all of it (`message/rfc822`) for a failure when the sender asked `RET=FULL`. The report is
//!   a `Body` that spills into `spill_dir` when large; the original is copied in chunks.
//! - `queue_report(spool, message_id, sender, report)` queues a report for a sender elsewhere.
//! - `queue_delivered_report(spool, hostname, message)`: `Action: delivered` for the local
//!   recipients of a message that asked `NOTIFY=SUCCESS` (RFC 3461 §4.1).
//! - `status_of(reply)` finds the RFC 3463 status code in a reply line (`550 5.1.1 ...` -> `5.1.1`).
//!
//! The relay sends the report from the null reverse-path `<>`, and never reports on a message
//! that itself came from `<>`: two servers that bounce bounces at each other would loop forever
//! (RFC 5321 §4.5.5, RFC 5321 §6.1). Lines end in `\n` like every stored message; the relay
//! writes CRLF on the wire.
//!
//! Standards: RFC 3464 §2.1, §2.2, §2.2.1, §2.3, §2.3.1, §2.3.3, RFC 3461 §4.1, §4.3, §6.1, §6.2,
//!   §6.3, RFC 3463 §2, RFC 5321 §4.4, §4.5.5, §6.1

use std::fmt::Write as _;
use std::io::{self, Read};
use std::path::Path;
use std::time::SystemTime;

use crate::datetime;
use crate::datetime::system_time;
use crate::relay::queue::{Entry, Rcpt, Spool};
use crate::smtp::address::ReversePath;
use crate::smtp::body::{Body, READ_CHUNK};
use crate::smtp::envelope::{Message, Recipient, Route};
use crate::smtp::extensions::{orcpt_decoded, xtext_decode, Notify, Ret};

/// The subject line most mail systems use, so that filters and people recognise a bounce.
const SUBJECT: &str = "Undelivered Mail Returned to Sender";
/// The subject of a report without failures (Postfix uses the same words).
const SUBJECT_SUCCESS: &str = "Successful Mail Delivery Report";
/// At most this much of a delivered message's header section comes back in its report.
const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// RFC 3464 §2.3.3: what happened to the recipients a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The message could not be delivered.
    Failed,
    /// Handed to a next hop that cannot send DSNs itself: our last word on it.
    Relayed,
    /// Delivered to a local mailbox (RFC 3461 §4.1, `NOTIFY=SUCCESS`).
    Delivered,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Relayed => "relayed",
            Action::Delivered => "delivered",
        }
    }
}

/// The whole report on `rcpts` of `entry` (whose content is `original`), all with the same
/// `action`: the one writer of every report this server sends.
pub fn report(
    hostname: &str,
    entry: &Entry,
    original: impl Read,
    rcpts: &[Rcpt],
    action: Action,
    now: SystemTime,
    spill_dir: &Path,
) -> io::Result<Body> {
    let mut report = Body::new(spill_dir);
    write_report(&mut report, hostname, entry, original, rcpts, action, now)?;
    Ok(report)
}

// ANCHOR: queue_report
/// Queue a report for a sender in another domain: from `<>`, with `NOTIFY=NEVER`, so that a
/// report about it can never come back (RFC 3461 §6.1). The queue id.
pub fn queue_report(
    spool: &Spool,
    message_id: &str,
    sender: &str,
    report: &Body,
) -> io::Result<String> {
    let mut entry = Entry::new(
        &format!("{message_id}-report"),
        "<>".into(),
        vec![format!("<{sender}>")],
    );
    entry.recipients[0].notify = Some(Notify::NEVER);
    let prepared = spool.prepare(&entry, b"", report)?;
    let id = prepared.id().to_string();
    prepared.commit()?;
    Ok(id)
}
// ANCHOR_END: queue_report

// ANCHOR: delivered_report
/// RFC 3461 §4.1, §6.2: the local recipients of `message` that asked `NOTIFY=SUCCESS` get a
/// report with `Action: delivered`, queued to the sender like any report (the relay delivers
/// it here when the sender is local). Nothing for a message from `<>` (RFC 3461 §5.2).
pub fn queue_delivered_report(
    spool: &Spool,
    hostname: &str,
    message: &Message,
) -> io::Result<Option<String>> {
    let ReversePath::Mailbox(sender) = &message.envelope.sender else {
        return Ok(None);
    };
    let asked: Vec<&Recipient> = message
        .envelope
        .recipients
        .iter()
        .filter(|r| matches!(r.route, Route::Local(_)))
        .filter(|r| Notify::wants_success(r.options.notify))
        .collect();
    if asked.is_empty() {
        return Ok(None);
    }
    let paths = asked.iter().map(|r| r.path.to_string()).collect();
    let mut entry = Entry::new(&message.id, message.envelope.sender.to_string(), paths);
    entry.keep_mail_options(&message.envelope.options);
    for (rcpt, recipient) in entry.recipients.iter_mut().zip(&asked) {
        rcpt.orcpt = recipient.options.orcpt.clone();
        rcpt.remote.clear();
        rcpt.reply = "250 2.0.0 Delivered to a local mailbox".into();
    }
    // Only the header section comes back in a success report (RFC 3461 §4.3).
    let head = io::Cursor::new(message.content.head(MAX_RETURNED_HEADERS)?);
    let now = SystemTime::now();
    let rcpts = entry.recipients.clone();
    let body = report(
        hostname,
        &entry,
        head,
        &rcpts,
        Action::Delivered,
        now,
        spool.dir(),
    )?;
    queue_report(spool, &message.id, &sender.to_string(), &body).map(Some)
}
// ANCHOR_END: delivered_report

// ANCHOR: dsn
/// A report on `rcpts` of `entry`, all with the same `action`, appended to `report`.
fn write_report(
    report: &mut Body,
    hostname: &str,
    entry: &Entry,
    original: impl Read,
    rcpts: &[Rcpt],
    action: Action,
    now: SystemTime,
) -> io::Result<()> {
    let boundary = format!("=_smtplab-dsn-{}", entry.id);
    let subject = match action {
        Action::Failed => SUBJECT,
        Action::Relayed | Action::Delivered => SUBJECT_SUCCESS,
    };
    let mut m = String::new();
    // RFC 5321 §4.4: the report starts here, so its trace line has no FROM clause.
    let _ = writeln!(
        m,
        "Received: by {hostname} (smtplab) id {}-{};\n\t{}",
        entry.id,
        action.name(),
        datetime::rfc5322(now)
    );
    // RFC 3464 §2.1 via RFC 6522: the report is the second part of a multipart/report.
    let _ = writeln!(m, "From: Mail Delivery System <MAILER-DAEMON@{hostname}>");
    let _ = writeln!(m, "To: {}", entry.sender);
    let _ = writeln!(m, "Subject: {subject}");
    let _ = writeln!(m, "Date: {}", datetime::rfc5322(now));
    let _ = writeln!(m, "Message-ID: <{}.{}@{hostname}>", entry.id, action.name());
    let _ = writeln!(m, "Auto-Submitted: auto-replied");
    let _ = writeln!(m, "MIME-Version: 1.0");
    let _ = writeln!(
        m,
        "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\""
    );
    m.push('\n');
    m.push_str("This is a MIME-encapsulated message: a delivery status notification.\n\n");
    let _ = writeln!(m, "--{boundary}");
    readable_part(&mut m, hostname, rcpts, action);
    let _ = writeln!(m, "--{boundary}");
    status_part(&mut m, hostname, entry, rcpts, action, now);
    let _ = writeln!(m, "--{boundary}");
    report.push(m.as_bytes())?;
    returned_part(report, entry, original, action)?;
    report.push(format!("\n--{boundary}--\n").as_bytes())
}
// ANCHOR_END: dsn

// ANCHOR: returned_part
/// The third part: the whole message for a failure with `RET=FULL`, else only its headers
/// (RFC 3461 §4.3: a report without failures returns only the headers).
fn returned_part(
    report: &mut Body,
    entry: &Entry,
    original: impl Read,
    action: Action,
) -> io::Result<()> {
    let full = matches!((action, entry.ret), (Action::Failed, Some(Ret::Full)));
    let (kind, what) = match full {
        true => ("message/rfc822", "The undelivered message"),
        false => ("text/rfc822-headers", "Headers of the message"),
    };
    report.push(format!("Content-Type: {kind}\nContent-Description: {what}\n\n").as_bytes())?;
    copy_original(original, report, !full)
}
// ANCHOR_END: returned_part

// ANCHOR: copy_original
/// Copy the original message into the report chunk by chunk; with `headers_only`, stop at the
/// empty line that ends the header section (the last header's `\n` is kept, the empty line is
/// not). The end of the headers may straddle two chunks, so the last octet of one is kept.
fn copy_original(mut original: impl Read, report: &mut Body, headers_only: bool) -> io::Result<()> {
    let mut buffer = vec![0; READ_CHUNK];
    let mut previous = 0u8;
    loop {
        let n = match original.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let chunk = &buffer[..n];
        if headers_only {
            if let Some(end) = header_end(previous, chunk) {
                return report.push(&chunk[..end]);
            }
        }
        report.push(chunk)?;
        previous = chunk[n - 1];
    }
}
// ANCHOR_END: copy_original

/// The part a person reads first.
fn readable_part(m: &mut String, hostname: &str, rcpts: &[Rcpt], action: Action) {
    m.push_str("Content-Type: text/plain; charset=us-ascii\n");
    m.push_str("Content-Description: Notification\n\n");
    let _ = writeln!(m, "This is the mail system at {hostname}.\n");
    match action {
        Action::Failed => {
            m.push_str("Your message could not be delivered to the recipients below.\n");
            m.push_str("This is a permanent error; your message or its headers are attached.\n\n");
        }
        Action::Relayed => {
            m.push_str("Your message was relayed to the recipients below, as you asked.\n");
            m.push_str("The next mail server does not report deliveries, so this is the\n");
            m.push_str("last notice you will get about them.\n\n");
        }
        Action::Delivered => {
            m.push_str("Your message was delivered to the recipients below, as you asked.\n\n");
        }
    }
    for rcpt in rcpts {
        let who = if rcpt.remote.is_empty() {
            String::new()
        } else {
            format!(" host {} said:", rcpt.remote)
        };
        let _ = writeln!(m, "{}:{who} {}", rcpt.path, ascii(&rcpt.reply));
    }
    m.push('\n');
}

// ANCHOR: status_part
/// `message/delivery-status`: per-message fields, an empty line, then one block per recipient.
fn status_part(
    m: &mut String,
    hostname: &str,
    entry: &Entry,
    rcpts: &[Rcpt],
    action: Action,
    now: SystemTime,
) {
    m.push_str("Content-Type: message/delivery-status\n");
    m.push_str("Content-Description: Delivery report\n\n");
    // RFC 3461 §6.3 (a): ENVID comes back decoded, and only if the sender gave one.
    if let Some(envid) = entry.envid.as_deref().and_then(xtext_decode) {
        let _ = writeln!(m, "Original-Envelope-Id: {envid}");
    }
    // RFC 3464 §2.2: Reporting-MTA is required; Arrival-Date says when we accepted it.
    let _ = writeln!(m, "Reporting-MTA: dns; {hostname}");
    let _ = writeln!(m, "X-Smtplab-Queue-ID: {}", entry.id);
    let _ = writeln!(
        m,
        "Arrival-Date: {}",
        datetime::rfc5322(system_time(entry.created))
    );
    for rcpt in rcpts {
        m.push('\n');
        // RFC 3461 §6.3 (d): Original-Recipient only when the RCPT had ORCPT.
        if let Some((kind, address)) = rcpt.orcpt.as_deref().and_then(orcpt_decoded) {
            let _ = writeln!(m, "Original-Recipient: {kind}; {}", ascii(&address));
        }
        // RFC 3464 §2.3: Final-Recipient, Action and Status are required in every block.
        let address = rcpt.path.trim_start_matches('<').trim_end_matches('>');
        let _ = writeln!(m, "Final-Recipient: rfc822; {}", ascii(address));
        let _ = writeln!(m, "Action: {}", action.name());
        let status = match action {
            Action::Failed => status_of(&rcpt.reply),
            Action::Relayed | Action::Delivered => "2.0.0".to_string(),
        };
        let _ = writeln!(m, "Status: {status}");
        if !rcpt.remote.is_empty() {
            // The reply came from the next hop: RFC 3464 §2.3.5 and §2.3.6, type "smtp".
            let _ = writeln!(m, "Remote-MTA: dns; {}", ascii(&rcpt.remote));
            let _ = writeln!(m, "Diagnostic-Code: smtp; {}", ascii(&rcpt.reply));
        } else {
            // Our own diagnosis (DNS, expiry): an "X-" type (RFC 3464 §2.1.2).
            let _ = writeln!(m, "Diagnostic-Code: X-Smtplab; {}", ascii(&rcpt.reply));
        }
        let _ = writeln!(m, "Last-Attempt-Date: {}", datetime::rfc5322(now));
    }
    m.push('\n');
}
// ANCHOR_END: status_part

/// The RFC 3463 status in a reply: `550 5.1.1 No such user` -> `5.1.1`; without one, the class
/// of the reply code (`550 Nope` -> `5.0.0`); a bare status (`4.4.7 expired`) is taken as it is.
fn status_of(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let first = words.next().unwrap_or("");
    if is_status(first) {
        return first.to_string();
    }
    let class = match first.as_bytes() {
        [c @ (b'2' | b'4' | b'5'), _, _] => *c as char,
        _ => '5',
    };
    match words.next() {
        Some(second) if is_status(second) && second.starts_with(class) => second.to_string(),
        _ => format!("{class}.0.0"),
    }
}

/// `status-code = class "." subject "." detail` (RFC 3463 §2): digits, two dots.
fn is_status(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Where the header section ends in `chunk`: the index of the second `\n` of the first
/// `\n\n`, counting `previous` (the last octet before `chunk`) as the octet before index 0.
fn header_end(previous: u8, chunk: &[u8]) -> Option<usize> {
    (0..chunk.len()).find(|&i| {
        let before = if i == 0 { previous } else { chunk[i - 1] };
        before == b'\n' && chunk[i] == b'\n'
    })
}

/// DSN fields are ASCII (RFC 3464 §2.1.1); anything else in a remote reply becomes `?`.
fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::queue::RcptState;

    const ORIGINAL: &[u8] = b"Subject: hello\n\nsecret body\n";

    fn text(report: io::Result<Body>) -> String {
        String::from_utf8(report.unwrap().to_vec().unwrap()).unwrap()
    }

    fn spill() -> std::path::PathBuf {
        std::env::temp_dir()
    }

    #[test]
    fn status_codes_are_found_or_derived() {
        assert_eq!(status_of("550 5.1.1 No such user"), "5.1.1");
        assert_eq!(status_of("550 No such user"), "5.0.0");
        assert_eq!(
            status_of("554 4.4.7 mismatch"),
            "5.0.0",
            "the class must agree"
        );
        assert_eq!(status_of("4.4.7 Delivery time expired"), "4.4.7");
        assert_eq!(status_of("garbage"), "5.0.0");
    }

    #[test]
    fn the_report_has_the_three_parts_and_the_required_fields() {
        let entry = Entry::new(
            "S1.1",
            "<alice@one.test>".into(),
            vec!["<bob@two.test>".into()],
        );
        let original = &b"Subject: hello\nFrom: alice@one.test\n\nsecret body\n"[..];
        let failed = Rcpt {
            path: "<bob@two.test>".into(),
            state: RcptState::Failed,
            remote: "mx.two.test".into(),
            reply: "550 5.1.1 No such user \u{e9}".into(),
            notify: None,
            orcpt: None,
            tls: false,
        };
        let now = SystemTime::now();
        let text = text(report(
            "one.test",
            &entry,
            original,
            &[failed],
            Action::Failed,
            now,
            &spill(),
        ));
        assert!(text.starts_with(&format!(
            "Received: by one.test (smtplab) id {}-failed;",
            entry.id
        )));
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Content-Type: message/delivery-status\n"));
        assert!(text.contains("Reporting-MTA: dns; one.test\n"));
        assert!(text.contains("Final-Recipient: rfc822; bob@two.test\n"));
        assert!(text.contains("Action: failed\nStatus: 5.1.1\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user ?\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\n"));
        assert!(text.contains("Subject: hello\n"));
        assert!(!text.contains("secret body"), "only the headers come back");
        assert!(text.ends_with(&format!("--=_smtplab-dsn-{}--\n", entry.id)));
    }

    fn entry_with_dsn_parameters(ret: Option<Ret>) -> Entry {
        let mut entry = Entry::new(
            "S1.1",
            "<alice@one.test>".into(),
            vec!["<bob@two.test>".into()],
        );
        entry.ret = ret;
        entry.envid = Some("QQ+2B314159".into());
        entry.recipients[0].orcpt = Some("rfc822;Bob+40Two.test".into());
        entry.recipients[0].remote = "mx.two.test".into();
        entry.recipients[0].reply = "250 2.0.0 queued".into();
        entry
    }

    #[test]
    fn ret_full_returns_the_whole_message_and_envid_orcpt_come_back_decoded() {
        let entry = entry_with_dsn_parameters(Some(Ret::Full));
        let now = SystemTime::now();
        let rcpts = &entry.recipients;
        let text = text(report(
            "one.test",
            &entry,
            ORIGINAL,
            rcpts,
            Action::Failed,
            now,
            &spill(),
        ));
        assert!(text.contains("Content-Type: message/rfc822\n"), "{text}");
        assert!(text.contains("\nsecret body\n"), "{text}");
        assert!(
            text.contains("Original-Envelope-Id: QQ+314159\nReporting-MTA:"),
            "{text}"
        );
        assert!(
            text.contains(
                "Original-Recipient: rfc822; Bob@Two.test\nFinal-Recipient: rfc822; bob@two.test\n"
            ),
            "{text}"
        );
        let hdrs = entry_with_dsn_parameters(Some(Ret::Hdrs));
        let rcpts = &hdrs.recipients;
        let text = self::text(report(
            "h",
            &hdrs,
            ORIGINAL,
            rcpts,
            Action::Failed,
            now,
            &spill(),
        ));
        assert!(text.contains("Content-Type: text/rfc822-headers\n") && !text.contains("secret"));
    }

    #[test]
    fn a_relayed_report_says_relayed_and_returns_only_headers() {
        let entry = entry_with_dsn_parameters(Some(Ret::Full));
        let now = SystemTime::now();
        let rcpts = &entry.recipients;
        let text = text(report(
            "one.test",
            &entry,
            ORIGINAL,
            rcpts,
            Action::Relayed,
            now,
            &spill(),
        ));
        assert!(
            text.contains("Subject: Successful Mail Delivery Report\n"),
            "{text}"
        );
        assert!(text.contains("Action: relayed\nStatus: 2.0.0\n"), "{text}");
        assert!(
            text.contains("Content-Type: text/rfc822-headers\n"),
            "{text}"
        );
        assert!(!text.contains("secret body"), "RFC 3461 §4.3: headers only");
        let mut plain = entry.clone();
        plain.envid = None;
        plain.recipients[0].orcpt = None;
        let rcpts = &plain.recipients;
        let text = self::text(report(
            "h",
            &plain,
            ORIGINAL,
            rcpts,
            Action::Failed,
            now,
            &spill(),
        ));
        assert!(!text.contains("Original-Envelope-Id") && !text.contains("Original-Recipient"));
    }

    #[test]
    fn the_headers_end_is_found_across_chunk_boundaries() {
        /// Gives its bytes `size` at a time, as a file read in small chunks would.
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(buffer.len());
                buffer[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for original in [
            &b"A: 1\nB: 2\n\nbody\n\nmore\n"[..],
            b"\n\nx",
            b"no end",
            b"",
        ] {
            let expected = match original.windows(2).position(|w| w == b"\n\n") {
                Some(end) => &original[..end + 1],
                None => original,
            };
            for size in 1..=original.len().max(1) {
                let mut report = Body::in_memory(Vec::new());
                copy_original(Trickle(original, size), &mut report, true).unwrap();
                assert_eq!(report.to_vec().unwrap(), expected, "{original:?} by {size}");
                let mut full = Body::in_memory(Vec::new());
                copy_original(Trickle(original, size), &mut full, false).unwrap();
                assert_eq!(full.to_vec().unwrap(), original);
            }
        }
    }
}

//! The envelope: what one mail transaction gathers (RFC 5321 §3.3), who the client is, and the
//! message handed on at the end of DATA. The state machine (`session.rs`) fills it in; local
//! delivery (`store/`) and relaying (`relay/`) read it, without knowing the protocol machine.
//!
//! Interface:
//! - `Envelope`: the sender, the MAIL parameters and the `Recipient`s, each with its `Route`.
//! - `Client`: who is connected (HELO name, TLS, AUTH user); it outlives transactions.
//! - `Message`: an envelope, a client and the content, ready for delivery.
//! - `Deliver`: the hook that stores a `Message`, or says why it cannot (a 4xx/5xx reply), and
//!   starts the queue for ETRN, and at RCPT time says whether a recipient's mailboxes have room
//!   (`room_for`).
//! - `message_id(session, n)`: the id a message gets at the end of DATA; `is_message_id` knows one.
//!
//! Standards: RFC 5321 §3.3, §5.1, RFC 3461 §4.1, §4.2

use std::net::SocketAddr;

use crate::datetime::unix_now;
use crate::smtp::address::{ForwardPath, Mailbox, ReversePath};
use crate::smtp::body::Body;
use crate::smtp::extensions::{MailOptions, RcptOptions};
use crate::smtp::reply::Reply;

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

    /// RCPT time: can every mailbox of `route` still take a message of `declared` octets
    /// (RFC 1870 `SIZE=`, 0 when not declared)? An `Err` reply refuses this recipient only.
    /// The default takes everything: a hook without mailboxes has nothing to fill.
    fn room_for(&self, _route: &Route, _declared: u64) -> Result<(), Reply> {
        Ok(())
    }

    /// ETRN (RFC 1985): start the queue for `node` now. Without a queue there is nothing to
    /// start; the session has already checked that the client may relay.
    fn etrn(&self, node: &str) -> Reply {
        etrn_unavailable(node)
    }
}

/// RFC 1985 §5's 458: the queue for `node` cannot be started.
pub fn etrn_unavailable(node: &str) -> Reply {
    Reply::new(458, "4.3.0", "").text(format!("Unable to queue messages for node {node}"))
}

// ANCHOR: message_id
/// The id of the `n`-th message of session `session` (`S1`): `S1-1-tz4k1q0001f`. The last part
/// is this process's start time and process id in base 36, so an id is never given twice,
/// across restarts or by two servers on one machine. Letters, digits and `-` only: an RFC 5321
/// `Atom`, as the `id` clause of a `Received:` line wants (§4.4), where `S1.1` was not.
pub fn message_id(session: &str, n: u32) -> String {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let instance = INSTANCE.get_or_init(|| {
        // Five base-36 digits hold every Linux process id (at most 2^22), so the two parts
        // cannot run into each other.
        let pid = base36(u64::from(std::process::id()));
        format!("{}{pid:0>5}", base36(unix_now()))
    });
    format!("{session}-{n}-{instance}")
}
// ANCHOR_END: message_id

/// Is `word` the id of a message of session `session`, as `message_id` makes them? (The
/// transcript recorder writes it as `{id}`, so a recording replays against any server.)
pub fn is_message_id(session: &str, word: &str) -> bool {
    let parts = word
        .strip_prefix(session)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.split_once('-'));
    parts.is_some_and(|(n, instance)| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && !instance.is_empty()
            && instance.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_atoms_that_carry_the_process() {
        let id = message_id("S1", 2);
        assert!(id.starts_with("S1-2-") && id.len() > 10, "{id}");
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "{id}"
        );
        assert_eq!(message_id("S1", 2), id, "one process, one instance part");
        assert!(is_message_id("S1", &id));
        assert!(
            !is_message_id("S11", &id)
                && !is_message_id("S1", "S1-2")
                && !is_message_id("S1", "S1.2")
        );
        assert_ne!(message_id("S1", 3), id);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 - 1), "zz");
    }
}

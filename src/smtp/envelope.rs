//! The envelope: what one mail transaction gathers (RFC 5321 §3.3), who the client is, and the
//! message handed on at the end of DATA. The state machine (`session.rs`) fills it in; local
//! delivery (`store/`) and relaying (`relay/`) read it, without knowing the protocol machine.
//!
//! Interface:
//! - `Envelope`: the sender, the MAIL parameters and the `Recipient`s, each with its `Route`.
//! - `Client`: who is connected (HELO name, TLS, AUTH user); it outlives transactions.
//! - `Message`: an envelope, a client and the content, ready for delivery.
//! - `Deliver`: the hook that stores a `Message`, or says why it cannot (a 4xx/5xx reply), and
//!   at RCPT time says whether a recipient's mailboxes have room (`room_for`).
//!
//! Standards: RFC 5321 §3.3, RFC 5321 §5.1, RFC 3461 §4.1, RFC 3461 §4.2

use std::net::SocketAddr;

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
}

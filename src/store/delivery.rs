//! Delivery: the `Deliver` hook that turns an accepted message into mbox appends.
//!
//! Interface:
//! - `LocalDelivery::deliver(message)` prepends `Return-Path:` and `Received:` for each recipient
//!   and appends the message to every local mailbox at once, all or nothing; recipients in
//!   other domains (`Route::Relay`) are written to the outbound queue in the same all-or-nothing
//!   step (queue file synced, mboxes written, then the queue file committed), with the DSN
//!   parameters of the envelope (RET, ENVID, NOTIFY, ORCPT).
//! - `LocalDelivery::room_for(route, declared)` refuses at RCPT time a local recipient whose
//!   mailbox is full, or too full for the size declared in MAIL FROM (RFC 1870 §6.4).
//! - `received_header(..)` builds the trace line of RFC 5321 §4.4.
//!
//! Memory: local mailboxes and the queue's content file are both written from the message's
//! `Body` as a stream, so no copy of a large message is ever held in memory whole.
//!
//! Standards: RFC 5321 §4.4, §6.1, §4.2.5, RFC 1870 §6.4, RFC 3463 §3.3, §3.4, RFC 3848 §3,
//!   RFC 6531 §3.7.3, RFC 3461 §5.2.1

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use log::{info, warn};

use crate::datetime;
use crate::relay::queue::{self, Prepared, Spool};
use crate::smtp::address::ReversePath;
use crate::smtp::envelope::{Client, Deliver, Message, Recipient, Route};
use crate::smtp::reply::Reply;
use crate::store::mbox::{Delivery, DeliveryError, MailDir};

/// Delivers to mbox files under the mail directory.
pub struct LocalDelivery {
    pub mail_dir: MailDir,
    pub hostname: String,
    /// The outbound queue for recipients in other domains; `None` refuses them with 451.
    pub spool: Option<Arc<Spool>>,
    /// The domains delivered here: ETRN for one of them has no queue to start.
    pub local_domains: Vec<String>,
}

impl Deliver for LocalDelivery {
    // ANCHOR: deliver
    /// RFC 5321 §6.1: 250 means the message is safe, so the reply waits for every fsync.
    fn deliver(&self, message: &Message) -> Result<(), Reply> {
        // Step 1: the copy for other domains, synced under a temporary name (not yet queued).
        let queued = self.prepare_relay(message)?;
        // Step 2: the local mailboxes. If this fails, dropping `queued` removes its file.
        let deliveries = self.deliveries(message);
        if !deliveries.is_empty() {
            self.deliver_local(message, &deliveries)?;
        }
        // Step 3: commit the queue file; the relay thread wakes and picks it up.
        if let Some(prepared) = queued {
            let id = prepared.id().to_string();
            prepared.commit().map_err(|error| {
                warn!("{}: cannot commit queue file {id}: {error}", message.id);
                Reply::LOCAL_ERROR_451
            })?;
            info!("{}: queued as {id} for relaying", message.id);
        }
        if !deliveries.is_empty() {
            self.report_delivered(message);
        }
        Ok(())
    }
    // ANCHOR_END: deliver

    /// ETRN: the queue's side is `relay::worker::etrn`.
    fn etrn(&self, node: &str) -> Reply {
        match &self.spool {
            Some(spool) => crate::relay::worker::etrn(spool, &self.local_domains, node),
            None => crate::smtp::envelope::etrn_unavailable(node),
        }
    }

    // ANCHOR: room_for
    /// RCPT time (RFC 1870 §6.4): a mailbox already full, or too full for the declared size,
    /// refuses this recipient with 452 4.2.2, so the other recipients still get the message.
    fn room_for(&self, route: &Route, declared: u64) -> Result<(), Reply> {
        let Route::Local(users) = route else {
            return Ok(());
        };
        for user in users {
            // Only a full mailbox is refused here; any other trouble is met at the end of DATA.
            if let Err(DeliveryError::Full { user, limit }) = self.mail_dir.room_for(user, declared)
            {
                return Err(Reply::new(452, "4.2.2", "").text(format!(
                    "Mailbox of {user} has no room for this message (limit {limit} bytes); try again later, after its owner has deleted mail"
                )));
            }
        }
        Ok(())
    }
    // ANCHOR_END: room_for
}

impl LocalDelivery {
    /// Append to the local mailboxes, all or nothing.
    fn deliver_local(&self, message: &Message, deliveries: &[Delivery]) -> Result<(), Reply> {
        let sender = match &message.envelope.sender {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(mailbox) => mailbox.to_string(),
        };
        match self
            .mail_dir
            .deliver_body(&sender, deliveries, &message.content)
        {
            Ok(()) => {
                let users: Vec<&str> = deliveries.iter().map(|d| d.user.as_str()).collect();
                info!(
                    "{}: delivered from {} to {}",
                    message.id,
                    message.envelope.sender,
                    users.join(", ")
                );
                Ok(())
            }
            Err(error) => {
                warn!("{}: delivery failed, nothing stored: {error}", message.id);
                Err(failure_reply(&error))
            }
        }
    }

    /// RFC 3461 §4.1: `NOTIFY=SUCCESS` on a local recipient queues an `Action: delivered`
    /// report. The message is stored already, so a failure here is logged, not refused.
    fn report_delivered(&self, message: &Message) {
        let Some(spool) = &self.spool else { return };
        match crate::relay::bounce::queue_delivered_report(spool, &self.hostname, message) {
            Ok(Some(id)) => info!("{}: the delivery report is queued as {id}.", message.id),
            Ok(None) => {}
            Err(error) => warn!("{}: the delivery report was lost: {error}.", message.id),
        }
    }

    // ANCHOR: prepare_relay
    /// The queue entry for the recipients in other domains, written and synced but not yet
    /// committed; `None` when every recipient is local.
    fn prepare_relay(&self, message: &Message) -> Result<Option<Prepared<'_>>, Reply> {
        let relayed: Vec<&Recipient> = message
            .envelope
            .recipients
            .iter()
            .filter(|r| matches!(r.route, Route::Relay(_)))
            .collect();
        if relayed.is_empty() {
            return Ok(None);
        }
        let Some(spool) = &self.spool else {
            // DEVIATION: without a spool, foreign mail is refused with a temporary error that
            // says why, so the sending client keeps it and tries again later.
            return Err(Reply::new(
                451,
                "4.3.2",
                "Relaying to other domains is not configured here; try again later",
            ));
        };
        let mut paths: Vec<String> = Vec::new();
        let mut unique: Vec<&Recipient> = Vec::new();
        for recipient in &relayed {
            let path = recipient.path.to_string();
            if !paths.contains(&path) {
                paths.push(path); // one copy per address, however often it was given
                unique.push(recipient);
            }
        }
        // RFC 5321 §4.4: a relay adds its own Received line before passing the message on.
        let received = relay_received_header(message, &self.hostname, &relayed);
        let mut entry = queue::Entry::new(&message.id, message.envelope.sender.to_string(), paths);
        keep_dsn_parameters(&mut entry, message, &unique);
        // The content file is the Received line, then the body streamed chunk by chunk.
        let prepared = spool.prepare(&entry, received.as_bytes(), &message.content);
        prepared.map(Some).map_err(|error| {
            warn!(
                "{}: cannot write to the queue, nothing stored: {error}",
                message.id
            );
            match error.kind() {
                io::ErrorKind::StorageFull => Reply::new(
                    452,
                    "4.3.1",
                    "Insufficient system storage; nothing was stored",
                ),
                _ => Reply::LOCAL_ERROR_451,
            }
        })
    }
    // ANCHOR_END: prepare_relay

    /// One delivery per distinct mailbox, with the trace headers of the first recipient that
    /// reached it (a user listed twice, directly and through a list, gets one copy).
    fn deliveries(&self, message: &Message) -> Vec<Delivery> {
        let mut deliveries: Vec<Delivery> = Vec::new();
        let now = SystemTime::now();
        for recipient in &message.envelope.recipients {
            let Route::Local(users) = &recipient.route else {
                continue;
            };
            for user in users {
                if deliveries.iter().any(|d| &d.user == user) {
                    continue;
                }
                let trace_headers = format!(
                    "Return-Path: {}\n{}",
                    message.envelope.sender,
                    received_header(
                        &message.client,
                        message.envelope.options.smtputf8,
                        &self.hostname,
                        &message.id,
                        Some(recipient),
                        now
                    )
                );
                deliveries.push(Delivery {
                    user: user.clone(),
                    trace_headers,
                });
            }
        }
        deliveries
    }
}

// ANCHOR: received_header
/// `Received: from <helo> ([<peer address>]) by <host> (smtplab) with ESMTP id <id> for <rcpt>; <date>`
/// (RFC 5321 §4.4: the FROM clause names the HELO argument and the TCP peer's address).
fn received_header(
    client: &Client,
    smtputf8: bool,
    hostname: &str,
    id: &str,
    recipient: Option<&Recipient>,
    now: SystemTime,
) -> String {
    let Some(helo) = client.helo.as_deref() else {
        // A message made here (a report) carries its own `Received: by` line (relay/bounce.rs).
        return String::new();
    };
    let protocol = protocol(client, smtputf8);
    let for_clause = recipient
        .map(|r| format!("\n\tfor {}", r.path))
        .unwrap_or_default();
    format!(
        "Received: from {helo} ([{}])\n\tby {hostname} (smtplab) with {protocol} id {id}{for_clause}; {}\n",
        client.peer.ip(),
        datetime::rfc5322(now)
    )
}
// ANCHOR_END: received_header

/// The WITH clause: SMTP or ESMTP, then S for TLS and A for AUTH (RFC 3848 §3), or UTF8SMTP
/// with the same letters for a message sent with SMTPUTF8 (RFC 6531 §3.7.3).
fn protocol(client: &Client, smtputf8: bool) -> String {
    let base = match (smtputf8, client.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let tls = if client.tls { "S" } else { "" };
    let auth = if client.user.is_some() { "A" } else { "" };
    format!("{base}{tls}{auth}")
}

/// The `Received:` line of a relayed message. Its `for` clause names the recipient only when
/// there is one: with several, naming one would show the others (a Bcc, say) who got it.
fn relay_received_header(message: &Message, hostname: &str, relayed: &[&Recipient]) -> String {
    let only = match relayed {
        [only] => Some(*only),
        _ => None,
    };
    let smtputf8 = message.envelope.options.smtputf8;
    received_header(
        &message.client,
        smtputf8,
        hostname,
        &message.id,
        only,
        SystemTime::now(),
    )
}

/// RFC 3461 §5.2.1: the DSN parameters travel with the queued copy, so the relay can honour
/// them and pass them on.
fn keep_dsn_parameters(entry: &mut queue::Entry, message: &Message, recipients: &[&Recipient]) {
    entry.keep_mail_options(&message.envelope.options);
    for (rcpt, recipient) in entry.recipients.iter_mut().zip(recipients) {
        rcpt.notify = recipient.options.notify;
        rcpt.orcpt = recipient.options.orcpt.clone();
    }
}

/// A failed delivery is temporary: the client keeps the message and tries again (RFC 5321 §4.2.5).
fn failure_reply(error: &DeliveryError) -> Reply {
    match error {
        DeliveryError::Io(_, e) if e.kind() == io::ErrorKind::StorageFull => Reply::new(
            452,
            "4.3.1",
            "Insufficient system storage; nothing was stored",
        ),
        DeliveryError::Io(_, e) if e.kind() == io::ErrorKind::FileTooLarge => {
            Reply::new(452, "4.2.2", "Mailbox full; nothing was stored")
        }
        // RFC 3463 §3.3: X.2.2 "mailbox full" is a persistent transient failure; 452 lets the
        // sender keep the message and try again after the owner has read (and deleted) mail.
        DeliveryError::Full { user, limit } => Reply::new(452, "4.2.2", "").text(format!(
            "Mailbox of {user} is full (limit {limit} bytes); nothing was stored, try again later"
        )),
        _ => Reply::LOCAL_ERROR_451,
    }
}

//! What the live view shows of the stored mail: each mailbox's message count and size, each
//! queued message's recipients with their state, and one message raw.
//!
//! Interface:
//! - `json(config, spool)` is `{"kind":"store","mailboxes":[..],"queue":[..]}`: every user of
//!   the directory and every mbox file in the mail directory, then every queue entry.
//! - `message(config, "alice/2")` is the second message of alice's mbox as delivered (trace
//!   headers included), or `None`.
//!
//! Standards: RFC 5321 §4.4, §4.5.4.1

use std::collections::BTreeSet;

use crate::config::Config;
use crate::datetime::unix_now;
use crate::lab::json;
use crate::relay::queue::{Entry, RcptState, Spool};
use crate::store::mbox::{self, MailDir};

/// Every mailbox name to show: the directory's users, and any mbox file found.
fn users(config: &Config) -> BTreeSet<String> {
    let mut users: BTreeSet<String> = config.directory.users.keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(&config.mail_dir) {
        for entry in entries.flatten() {
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if let (true, Ok(name)) = (is_file, entry.file_name().into_string()) {
                if mbox::is_safe_mailbox_name(&name) {
                    users.insert(name);
                }
            }
        }
    }
    users
}

/// `{"user":..,"count":..,"size":..}` of one mailbox (an absent mbox is empty).
fn mailbox(mail_dir: &MailDir, user: &str) -> String {
    let bytes = mail_dir
        .path_for(user)
        .and_then(|path| std::fs::read(path).ok())
        .unwrap_or_default();
    let count = mbox::split_mboxrd(&bytes).messages.len();
    json::object(&[
        ("user", user),
        ("count", &count.to_string()),
        ("size", &bytes.len().to_string()),
    ])
}

/// One queue entry: its recipients with state and last reply, and when it is tried next.
fn queued(entry: &Entry, now: u64) -> String {
    let recipients: Vec<String> = entry
        .recipients
        .iter()
        .map(|rcpt| {
            let state = match rcpt.state {
                RcptState::Pending => "pending",
                RcptState::Delivered => "delivered",
                RcptState::Failed => "failed",
            };
            json::object(&[
                ("path", &rcpt.path),
                ("state", state),
                ("reply", &rcpt.reply),
            ])
        })
        .collect();
    let next = match entry.next_attempt.checked_sub(now) {
        Some(wait) if wait > 0 => format!("in {wait}s"),
        _ => "due now".to_string(),
    };
    let head = json::object(&[
        ("id", &entry.id),
        ("sender", &entry.sender),
        ("attempts", &entry.attempts.to_string()),
        ("next", &next),
    ]);
    format!(
        "{},\"recipients\":{}}}",
        head.trim_end_matches('}'),
        json::array(&recipients)
    )
}

/// The mailboxes and the queue, for the page.
pub fn json(config: &Config, spool: &Spool) -> String {
    let mail_dir = MailDir::new(config.mail_dir.clone());
    let mailboxes: Vec<String> = users(config)
        .iter()
        .map(|user| mailbox(&mail_dir, user))
        .collect();
    let now = unix_now();
    let queue: Vec<String> = spool
        .load_all()
        .iter()
        .flatten()
        .map(|entry| queued(entry, now))
        .collect();
    format!(
        "{{\"kind\":\"store\",\"mailboxes\":{},\"queue\":{}}}",
        json::array(&mailboxes),
        json::array(&queue)
    )
}

/// `USER/N`: the Nth message (from 1) of USER's mbox, as delivered.
pub fn message(config: &Config, which: &str) -> Option<Vec<u8>> {
    let (user, number) = which.split_once('/')?;
    let index = number.parse::<usize>().ok()?.checked_sub(1)?;
    let path = MailDir::new(config.mail_dir.clone()).path_for(user)?;
    let bytes = std::fs::read(path).ok()?;
    mbox::parse_mboxrd(&bytes)
        .into_iter()
        .nth(index)
        .map(|m| m.content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_entry_lists_each_recipient() {
        let mut entry = Entry::new("m1", "<a@one.test>".into(), vec!["<b@two.test>".into()]);
        entry.recipients[0].reply = "451 4.4.1 <try later>".into();
        entry.next_attempt = 100;
        let json = queued(&entry, 40);
        assert!(json.contains(r#""next":"in 60s""#), "{json}");
        assert!(json.contains(r#""state":"pending","reply":"451 4.4.1 \u003ctry later\u003e""#));
        assert!(json.ends_with("}]}"), "{json}");
    }
}

//! The queue worker: takes messages from the spool and hands them to the next hop (through
//! `client.rs`), retries what failed for now, and reports what failed for good.
//!
//! Interface:
//! - `start(config, spool, deliver, listen)` starts the dispatcher and `--relay-workers`
//!   delivery threads; the `RelayHandle` it returns stops them all when dropped (it also cuts
//!   the conversations in progress).
//! - `etrn(spool, local_domains, argument)` makes the queued mail for a domain due now and says
//!   so (ETRN, RFC 1985); the delivery hook calls it for the session.
//!
//! The dispatcher looks at the spool when woken or once a second and gives every due message
//! to an idle worker, but never more than `PER_DESTINATION` at a time for one next-hop domain:
//! a slow or tarpitting host then holds two workers at most, and only until the transaction's
//! deadline (`--relay-deadline`); mail for other domains goes on through the other workers.
//!
//! One attempt at one queued message (`Delivery::attempt`): group the pending recipients by
//! domain; deliver a local domain's share here, else find the hosts (`dns::route`, or
//! `--smart-host`) and talk to them in order (`Delivery::try_target`), until one has answered
//! for the message; then record each recipient's fate in the spool file, report what failed,
//! and schedule the next attempt for the rest.
//!
//! DSN (RFC 3461): when the next hop lists `DSN` after EHLO, RET and ENVID go on MAIL FROM and
//! NOTIFY and ORCPT on each RCPT TO, as the client gave them, and the next hop reports from
//! then on. When it does not, this server keeps that duty: a recipient with `NOTIFY=SUCCESS`
//! gets a "relayed" report, and a failure is reported only if NOTIFY asks for it (or is absent).
//! A report that cannot reach its recipient goes to the local postmaster, never nowhere.
//!
//! Standards: RFC 3461 §5.2.1, §5.2.2, §6.1, RFC 5321 §3.3, §4.2.1, §4.5.4.1, §4.5.5, §5.1,
//!   RFC 1985 §5

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};

use crate::config::Config;
use crate::datetime::unix_now;
use crate::lock;
use crate::relay::bounce;
use crate::relay::client::{self, NotTaken, RemoteReply, SmtpClient, TlsPolicy};
use crate::relay::dns::{self, Me, Resolver, Rng, RouteError};
use crate::relay::queue::{Entry, Rcpt, RcptState, Schedule, Spool};
use crate::smtp::address::{self, Domain, ForwardPath, Mailbox, ReversePath};
use crate::smtp::body::{Body, READ_CHUNK};
use crate::smtp::envelope::{Client, Deliver, Envelope, Message, Recipient, Route};
use crate::smtp::extensions::{MailOptions, Notify, RcptOptions};
use crate::smtp::reply::Reply;

/// How often the relay looks at the spool when nobody wakes it: due retries start at most
/// this late. A new message wakes it at once.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `--relay-workers`: delivery threads.
pub const DEFAULT_WORKERS: usize = 4;
/// Concurrent conversations with one next-hop domain (Postfix's
/// `default_destination_concurrency_limit` starts low the same way).
const PER_DESTINATION: usize = 2;
/// `--relay-deadline`: the longest one conversation may take, greeting to QUIT. The RFC's
/// per-reply timeouts (§4.5.3.2) alone let a host that trickles its replies hold on for hours.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Stops the relay's threads when dropped.
pub struct RelayHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.spool.wake();
        self.shared.work.notify_all();
        for stream in lock(&self.shared.conversations).iter().flatten() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What the dispatcher and the workers share.
struct Shared {
    config: Arc<Config>,
    spool: Arc<Spool>,
    deliver: Arc<dyn Deliver>,
    listen: Vec<SocketAddr>,
    schedule: Schedule,
    stop: AtomicBool,
    board: Mutex<Board>,
    /// Signalled when a job is posted (and on stop).
    work: Condvar,
    /// Each worker's conversation in progress, shut down on stop so no read waits for its
    /// timeout.
    conversations: Mutex<Vec<Option<TcpStream>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Which messages are being delivered, and how many conversations each destination has.
#[derive(Default)]
struct Board {
    jobs: VecDeque<Entry>,
    /// Queue ids given to a worker (waiting or running), with their destinations.
    in_flight: HashMap<String, Vec<String>>,
    per_destination: HashMap<String, usize>,
}

/// Start the dispatcher and the delivery threads. `listen` are the addresses this server is
/// bound to (an MX list that names one of them is cut there, RFC 5321 §5.1).
pub fn start(
    config: Arc<Config>,
    spool: Arc<Spool>,
    deliver: Arc<dyn Deliver>,
    listen: Vec<SocketAddr>,
) -> io::Result<RelayHandle> {
    let workers = config.relay_workers.max(1);
    let shared = Arc::new(Shared {
        schedule: Schedule {
            retry: config.retry.clone(),
            lifetime: config.queue_lifetime,
        },
        config,
        spool,
        deliver,
        listen,
        stop: AtomicBool::new(false),
        board: Mutex::new(Board::default()),
        work: Condvar::new(),
        conversations: Mutex::new((0..workers).map(|_| None).collect()),
    });
    let mut threads = Vec::with_capacity(workers + 1);
    for slot in 0..workers {
        let shared = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("relay-{slot}"))
            .spawn(move || work(&shared, slot))?;
        threads.push(thread);
    }
    let dispatcher = shared.clone();
    let thread = thread::Builder::new()
        .name("relay".into())
        .spawn(move || dispatch(&dispatcher))?;
    threads.push(thread);
    Ok(RelayHandle { shared, threads })
}

// ANCHOR: relay_loop
/// Look at the spool, hand out what is due, sleep until woken or the poll interval passes.
fn dispatch(shared: &Shared) {
    info!(
        "The relay watches {} with {} delivery threads.",
        shared.spool.dir().display(),
        shared.config.relay_workers
    );
    let mut reported = HashSet::new();
    while !shared.stopping() {
        let seen = shared.spool.generation();
        for loaded in shared.spool.load_all() {
            match loaded {
                Ok(entry) if is_due(&entry) => hand_out(shared, entry),
                Ok(_) => {}
                // Logged once per file, not once per pass.
                Err(error) if reported.insert(error.clone()) => {
                    warn!("The relay skips a spool file it cannot read: {error}.");
                }
                Err(_) => {}
            }
        }
        shared.spool.wait(seen, POLL_INTERVAL);
    }
    info!("The relay has stopped.");
}
// ANCHOR_END: relay_loop

// ANCHOR: hand_out
/// Give a due message to a worker, unless it is being delivered already, every worker is
/// busy, or one of its destinations has `PER_DESTINATION` conversations open. What waits is
/// looked at again when a worker finishes (it wakes the spool).
fn hand_out(shared: &Shared, entry: Entry) {
    let destinations: Vec<String> = destinations(&shared.config, &entry).into_keys().collect();
    let mut board = lock(&shared.board);
    let full = |d: &String| board.per_destination.get(d).copied().unwrap_or(0) >= PER_DESTINATION;
    if board.in_flight.contains_key(&entry.id)
        || board.in_flight.len() >= shared.config.relay_workers.max(1)
        || destinations.iter().any(full)
    {
        return;
    }
    for destination in &destinations {
        *board
            .per_destination
            .entry(destination.clone())
            .or_default() += 1;
    }
    board.in_flight.insert(entry.id.clone(), destinations);
    board.jobs.push_back(entry);
    shared.work.notify_one();
}
// ANCHOR_END: hand_out

/// One delivery thread: take a job, deliver it, give its destinations back.
fn work(shared: &Shared, slot: usize) {
    let mut delivery = Delivery {
        shared,
        slot,
        resolver: None,
        rng: Rng::from_clock(),
    };
    while let Some(handed) = next_job(shared) {
        let id = handed.id.clone();
        // The dispatcher may have read the file before the last attempt on this message saved
        // it: read it again now that this worker alone holds it, and go on only if still due.
        match shared.spool.load(&id) {
            Ok(entry) if is_due(&entry) => {
                lock(&FLUSHED).remove(&id);
                delivery.attempt(entry);
            }
            Ok(_) | Err(_) => {} // tried meanwhile, or done and removed
        }
        let mut board = lock(&shared.board);
        for destination in board.in_flight.remove(&id).unwrap_or_default() {
            if let Some(count) = board.per_destination.get_mut(&destination) {
                *count = count.saturating_sub(1);
            }
        }
        drop(board);
        shared.spool.wake(); // what waited for this destination may go now
    }
}

/// Wait for a job; `None` once the relay stops.
fn next_job(shared: &Shared) -> Option<Entry> {
    let mut board = lock(&shared.board);
    loop {
        if shared.stopping() {
            return None;
        }
        if let Some(entry) = board.jobs.pop_front() {
            return Some(entry);
        }
        board = shared
            .work
            .wait_timeout(board, POLL_INTERVAL)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

// ANCHOR: etrn
/// `ETRN domain`, `ETRN @domain` (the domain and its subdomains) or `ETRN #queue` (here, the
/// queue of one domain): start a delivery attempt now for the mail queued for it, and say so
/// with RFC 1985 §5's codes. The session checks first that the client may relay at all.
pub fn etrn(spool: &Spool, local_domains: &[String], argument: &str) -> Reply {
    let (node, subdomains) = match argument.as_bytes().first() {
        Some(b'@') => (&argument[1..], true),
        Some(b'#') => (&argument[1..], false),
        _ => (argument, false),
    };
    let Some(node) = domain_name_of(node) else {
        return Reply::new(
            501,
            "5.5.4",
            "Syntax: ETRN domain, ETRN @domain or ETRN #queue",
        );
    };
    if local_domains
        .iter()
        .any(|own| own.eq_ignore_ascii_case(&node))
    {
        let text = format!("Node {node} not allowed: its mail is delivered here, not queued");
        return Reply::new(459, "4.7.1", "").text(text);
    }
    let wanted =
        |domain: &str| domain == node || (subdomains && domain.ends_with(&format!(".{node}")));
    match flush(spool, wanted) {
        Ok(0) => {
            Reply::new(251, "2.0.0", "").text(format!("OK, no messages waiting for node {node}"))
        }
        Ok(n) => Reply::new(253, "2.0.0", "")
            .text(format!("OK, {n} pending messages for node {node} started")),
        Err(error) => {
            warn!("ETRN for {node} could not update the queue: {error}.");
            crate::smtp::envelope::etrn_unavailable(&node)
        }
    }
}
// ANCHOR_END: etrn

/// A domain name or address literal as ETRN names it, lower case; `None` if it is neither. The
/// address parser checks the syntax, so ETRN accepts exactly what RCPT TO would.
fn domain_name_of(node: &str) -> Option<String> {
    match address::forward_path(&format!("<postmaster@{node}>"), false) {
        Ok((ForwardPath::Mailbox(mailbox), "")) => Some(domain_name(&mailbox)),
        _ => None,
    }
}

/// Queue ids that ETRN made due now. Kept in memory, not written into the state files: a
/// worker may be saving one of those files at this very moment, and two writers would lose
/// one's changes. A worker takes its id out of the set when it starts on the message.
static FLUSHED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Make every queued message with a pending recipient in a `wanted` domain due now, and wake
/// the relay. How many messages were made due.
fn flush(spool: &Spool, wanted: impl Fn(&str) -> bool) -> io::Result<usize> {
    // No spool directory yet means nothing queued; one that cannot be read is a failure.
    if let Err(error) = std::fs::read_dir(spool.dir()) {
        if error.kind() != io::ErrorKind::NotFound {
            return Err(error);
        }
    }
    let mut count = 0;
    for entry in spool.load_all().into_iter().flatten() {
        let waits = entry.recipients.iter().any(|r| {
            r.state == RcptState::Pending && domain_of(&r.path).is_some_and(|d| wanted(&d))
        });
        if waits {
            lock(&FLUSHED).insert(entry.id);
            count += 1;
        }
    }
    spool.wake();
    Ok(count)
}

/// Is this message due: its time has come, or ETRN asked for it?
fn is_due(entry: &Entry) -> bool {
    entry.next_attempt <= unix_now() || lock(&FLUSHED).contains(&entry.id)
}

/// Pending recipients by destination: their domain each, or all together for a smart host.
/// An unparseable path gets the destination "", which bounces.
fn destinations(config: &Config, entry: &Entry) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, rcpt) in entry.recipients.iter().enumerate() {
        if rcpt.state != RcptState::Pending {
            continue;
        }
        let domain = domain_of(&rcpt.path);
        let key = match (&config.smart_host, domain) {
            (_, Some(domain)) if is_local(config, &domain) => domain,
            (Some(host), _) => host.clone(),
            (None, Some(domain)) => domain,
            (None, None) => String::new(),
        };
        groups.entry(key).or_default().push(i);
    }
    groups
}

/// Is this (lower-case) domain one this host delivers to itself?
fn is_local(config: &Config, domain: &str) -> bool {
    config
        .directory
        .domains
        .iter()
        .any(|own| own.eq_ignore_ascii_case(domain))
}

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Delivered,
    Deferred,
    Bounced,
}

/// One recipient's fate, the host that decided it and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    fate: Fate,
    remote: String,
    reply: String,
    /// The next hop speaks DSN and took over reporting (RFC 3461 §5.2.1).
    dsn: bool,
    /// The conversation was inside TLS.
    tls: bool,
}

impl Outcome {
    /// An outcome decided here, before or without any next hop.
    fn local(fate: Fate, reply: impl Into<String>) -> Outcome {
        Outcome {
            fate,
            remote: String::new(),
            reply: reply.into(),
            dsn: false,
            tls: false,
        }
    }

    /// RFC 5321 §4.2.1: the first digit decides. 2 done, 4 later, 5 never.
    fn from_reply(remote: &str, reply: &RemoteReply, dsn: bool, tls: bool) -> Outcome {
        let fate = match reply.code / 100 {
            2 => Fate::Delivered,
            5 => Fate::Bounced,
            _ => Fate::Deferred,
        };
        Outcome {
            fate,
            remote: remote.to_string(),
            reply: reply.one_line(),
            dsn,
            tls,
        }
    }

    /// `<bob@two.test> was delivered to mx.two.test over TLS: 250 2.0.0 OK.`, for the log.
    fn sentence(&self, path: &str) -> String {
        let what = match self.fate {
            Fate::Delivered => "was delivered",
            Fate::Deferred => "is deferred",
            Fate::Bounced => "bounced",
        };
        let mut text = format!("{path} {what}");
        if !self.remote.is_empty() {
            let by = if self.fate == Fate::Delivered {
                " to"
            } else {
                ", says"
            };
            text.push_str(&format!("{by} {}", self.remote));
        }
        if self.tls {
            text.push_str(" over TLS");
        }
        format!("{text}: {}.", self.reply.trim_end_matches('.'))
    }
}

/// One address to connect to, with the name it was found under.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    addr: SocketAddr,
}

/// One worker's state.
struct Delivery<'a> {
    shared: &'a Shared,
    slot: usize,
    /// Made on first use (see `resolver`).
    resolver: Option<Resolver>,
    rng: Rng,
}

impl Delivery<'_> {
    fn config(&self) -> &Config {
        &self.shared.config
    }

    // ANCHOR: attempt
    /// One delivery attempt for one message: every pending recipient, grouped by destination.
    fn attempt(&mut self, mut entry: Entry) {
        entry.attempts += 1;
        let tag = format!("Q{}", entry.id);
        let pending: Vec<usize> = (0..entry.recipients.len())
            .filter(|&i| entry.recipients[i].state == RcptState::Pending)
            .collect();
        let mut relayed = Vec::new();
        for (destination, group) in destinations(self.config(), &entry) {
            let rcpts: Vec<Rcpt> = group.iter().map(|&i| entry.recipients[i].clone()).collect();
            let outcomes = self.deliver_group(&tag, &entry, &destination, &rcpts);
            for (&i, outcome) in group.iter().zip(outcomes) {
                let rcpt = &mut entry.recipients[i];
                info!("[{tag}] {}", outcome.sentence(&rcpt.path));
                let notice = needs_relayed_notice(rcpt, &outcome);
                record(rcpt, outcome);
                if notice {
                    relayed.push(rcpt.clone());
                }
            }
        }
        let now = unix_now();
        if self.shared.schedule.expired(&entry, now) {
            self.expire(&mut entry);
        }
        // RFC 3461 §5.2.2 (c), (d), (f): a failure is reported unless NOTIFY left FAILURE out.
        // A report that failed (sender <>, NOTIFY=NEVER) is still told to the postmaster.
        let is_report = entry.sender == "<>";
        let failed: Vec<Rcpt> = pending
            .iter()
            .map(|&i| entry.recipients[i].clone())
            .filter(|r| r.state == RcptState::Failed)
            .filter(|r| is_report || Notify::wants_failure(r.notify))
            .collect();
        if !failed.is_empty() {
            self.report(&tag, &entry, &failed, bounce::Action::Failed);
        }
        if !relayed.is_empty() {
            self.report(&tag, &entry, &relayed, bounce::Action::Relayed);
        }
        self.finish(&tag, entry, now);
    }
    // ANCHOR_END: attempt

    /// RFC 5321 §4.5.4.1: give up after the queue lifetime; the sender is told (status 4.4.7).
    fn expire(&self, entry: &mut Entry) {
        let days = self.shared.schedule.lifetime.as_secs() as f64 / 86_400.0;
        for rcpt in &mut entry.recipients {
            if rcpt.state == RcptState::Pending {
                rcpt.state = RcptState::Failed;
                rcpt.reply = format!(
                    "4.4.7 Delivery time expired after {days:.2} days in the queue; last error: {}",
                    rcpt.reply
                );
                rcpt.remote.clear();
            }
        }
    }

    /// Remove the entry when nothing is pending, else save it with its next attempt time.
    fn finish(&self, tag: &str, mut entry: Entry, now: u64) {
        let spool = &self.shared.spool;
        if entry.is_done() {
            match spool.remove(&entry.id) {
                Ok(()) => info!("[{tag}] Every recipient is done; the message leaves the queue."),
                Err(error) => {
                    warn!("[{tag}] The message cannot be removed from the queue: {error}.")
                }
            }
            return;
        }
        let delay = self.shared.schedule.delay_after(entry.attempts);
        entry.next_attempt = now + delay.as_secs().max(1);
        info!(
            "[{tag}] The message stays in the queue; the next attempt is in {}s.",
            delay.as_secs()
        );
        if let Err(error) = spool.save(&entry) {
            // The old file stays: at worst a recipient is tried once more than needed.
            warn!("[{tag}] The queue file cannot be updated: {error}.");
        }
    }

    /// Deliver to one destination: here, or to its hosts in order; one outcome per recipient.
    fn deliver_group(
        &mut self,
        tag: &str,
        entry: &Entry,
        destination: &str,
        rcpts: &[Rcpt],
    ) -> Vec<Outcome> {
        if is_local(self.config(), destination) {
            return rcpts.iter().map(|r| self.deliver_here(entry, r)).collect();
        }
        let all = |outcome: Outcome| vec![outcome; rcpts.len()];
        let targets = match self.targets(tag, destination) {
            Ok(targets) => targets,
            Err(RouteError::Permanent { code, status, text }) => {
                return all(Outcome::local(
                    Fate::Bounced,
                    format!("{code} {status} {text}"),
                ))
            }
            Err(RouteError::Temporary { text }) => {
                return all(Outcome::local(Fate::Deferred, format!("451 4.4.3 {text}")))
            }
        };
        let mut last = Outcome::local(Fate::Deferred, "451 4.4.1 No mail host could be reached");
        for target in targets.iter().take(dns::MAX_ADDRESSES) {
            if self.shared.stopping() {
                break;
            }
            match self.try_target(tag, target, entry, rcpts) {
                Ok(outcomes) => return outcomes,
                Err(reply) => {
                    info!(
                        "[{tag}] {} [{}] did not take the message ({reply}); the next host is tried.",
                        target.host, target.addr
                    );
                    last = Outcome {
                        remote: target.host.clone(),
                        ..Outcome::local(Fate::Deferred, reply)
                    };
                }
            }
        }
        all(last)
    }

    /// A queued message for a local domain (a report, or mail flushed back here): delivered
    /// through the same `Deliver` hook as mail that arrives over SMTP.
    fn deliver_here(&self, entry: &Entry, rcpt: &Rcpt) -> Outcome {
        let Ok((ForwardPath::Mailbox(mailbox), _)) = address::forward_path(&rcpt.path, true) else {
            return Outcome::local(
                Fate::Bounced,
                "553 5.1.3 Bad recipient address in the queue",
            );
        };
        let Some(users) = self.local_mailboxes(&mailbox, entry.sender == "<>") else {
            return Outcome::local(Fate::Bounced, "550 5.1.1 No such user here");
        };
        let sender = match address::reverse_path(&entry.sender, true) {
            Ok((path, _)) => path,
            Err(_) => ReversePath::Null,
        };
        let content = match self.read_content(&entry.id) {
            Ok(content) => content,
            Err(error) => {
                let reply = format!("451 4.3.0 Cannot read the queued message: {error}");
                return Outcome::local(Fate::Deferred, reply);
            }
        };
        match self.deliver_local(&entry.message_id, sender, mailbox, users, content) {
            Ok(()) => Outcome::local(Fate::Delivered, "250 2.0.0 Delivered to a local mailbox"),
            Err(reply) => Outcome::from_reply("", &reply, false, false),
        }
    }

    /// The mailboxes of a local address; when it has none and `report` is true (the mail is
    /// a report), the postmaster's, so that no report is ever lost (RFC 5321 §4.5.1, §6.1).
    fn local_mailboxes(&self, mailbox: &Mailbox, report: bool) -> Option<Vec<String>> {
        let directory = &self.config().directory;
        let own = directory.mailboxes(&mailbox.local_part_unquoted());
        match own {
            None if report => {
                warn!("<{mailbox}> has no mailbox here, so a report for it goes to postmaster.");
                directory.mailboxes("postmaster")
            }
            own => own,
        }
    }

    /// The content file as a `Body` (it spills to disk when large, like a message coming in).
    fn read_content(&self, id: &str) -> io::Result<Body> {
        use std::io::Read;
        let mut file = self.shared.spool.open_content(id)?;
        let mut body = Body::new(self.shared.spool.dir());
        let mut chunk = vec![0; READ_CHUNK];
        loop {
            match file.read(&mut chunk) {
                Ok(0) => return Ok(body),
                Ok(n) => body.push(&chunk[..n])?,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Deliver `content` to local `users` through the `Deliver` hook. The client is this
    /// host itself, without a HELO: the content carries its own trace line (`bounce.rs`).
    fn deliver_local(
        &self,
        id: &str,
        sender: ReversePath,
        mailbox: Mailbox,
        users: Vec<String>,
        content: Body,
    ) -> Result<(), RemoteReply> {
        let own = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
        let message = Message {
            id: id.to_string(),
            client: Client {
                peer: own,
                local: own,
                helo: None,
                esmtp: true,
                tls: false,
                user: None,
            },
            envelope: Envelope {
                sender,
                options: MailOptions::default(),
                recipients: vec![Recipient {
                    path: ForwardPath::Mailbox(mailbox),
                    route: Route::Local(users),
                    options: RcptOptions::default(),
                }],
                refused_recipients: 0,
            },
            content,
        };
        self.shared.deliver.deliver(&message).map_err(|reply| {
            let text = reply.to_string();
            let code = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(451);
            RemoteReply::local(code, text.get(4..).unwrap_or("").trim_end())
        })
    }

    /// The addresses to try for a destination: the smart host, an address literal, or MX hosts.
    fn targets(&mut self, tag: &str, destination: &str) -> Result<Vec<Target>, RouteError> {
        if self.config().smart_host.as_deref() == Some(destination) {
            return self.smart_host_targets(destination);
        }
        let port = self.config().mx_port;
        let shared = self.shared;
        let me = Me {
            hostname: &shared.config.hostname,
            listen: &shared.listen,
            mx_port: port,
        };
        if let Some(ip) = literal_ip(destination) {
            if me.reached_at(ip) {
                return Err(RouteError::Permanent {
                    code: 554,
                    status: "5.4.6",
                    text: format!("Mail for {destination} would loop back to this host"),
                });
            }
            return Ok(vec![Target {
                host: destination.to_string(),
                addr: SocketAddr::new(ip, port),
            }]);
        }
        if destination.is_empty() {
            return Err(RouteError::Permanent {
                code: 553,
                status: "5.1.3",
                text: "Bad recipient address in the queue file".into(),
            });
        }
        let mut trace = Vec::new();
        let resolver = resolver(&mut self.resolver, shared.config.dns)?;
        let route = dns::route(resolver, destination, &me, &mut self.rng, &mut trace);
        for step in &trace {
            debug!("[{tag}] dns: {step}");
        }
        Ok(route?
            .hops
            .into_iter()
            .flat_map(|hop| {
                hop.addrs.into_iter().map(move |ip| Target {
                    host: hop.host.clone(),
                    addr: SocketAddr::new(ip, port),
                })
            })
            .collect())
    }

    /// `--smart-host HOST:PORT`: an address as it is, or a name looked up (A and AAAA).
    fn smart_host_targets(&mut self, smart_host: &str) -> Result<Vec<Target>, RouteError> {
        if let Ok(addr) = smart_host.parse::<SocketAddr>() {
            return Ok(vec![Target {
                host: smart_host.to_string(),
                addr,
            }]);
        }
        let (host, port) = smart_host
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| RouteError::Permanent {
                code: 554,
                status: "5.3.5",
                text: format!("--smart-host {smart_host} is not HOST:PORT"),
            })?;
        let mut trace = Vec::new();
        let resolver = resolver(&mut self.resolver, self.shared.config.dns)?;
        let addrs = dns::addresses_of(resolver, &host, &mut trace)
            .map_err(|text| RouteError::Temporary { text })?;
        if addrs.is_empty() {
            return Err(RouteError::Temporary {
                text: format!("smart host {host} has no address"),
            });
        }
        Ok(addrs
            .into_iter()
            .map(|ip| Target {
                host: host.clone(),
                addr: SocketAddr::new(ip, port),
            })
            .collect())
    }

    /// One SMTP conversation, and with `--relay-tls may` a second one in the clear when the
    /// TLS handshake failed (the first connection is unusable after it). `Err(reply)`: this
    /// host did not take the message; try the next.
    fn try_target(
        &self,
        tag: &str,
        target: &Target,
        entry: &Entry,
        rcpts: &[Rcpt],
    ) -> Result<Vec<Outcome>, String> {
        let policy = self.config().relay_tls;
        let result = match self.converse(tag, target, entry, rcpts, policy) {
            Err(NotTaken::TlsFailed(why)) if policy == TlsPolicy::May => {
                info!(
                    "[{tag}] TLS with {} failed ({why}); trying again in the clear.",
                    target.host
                );
                self.converse(tag, target, entry, rcpts, TlsPolicy::None)
            }
            other => other,
        };
        let answer = result.map_err(|not_taken| match not_taken {
            NotTaken::Unavailable(why) => why,
            NotTaken::TlsFailed(why) => format!("454 4.7.0 TLS failed: {why}"),
        })?;
        Ok(answer
            .replies
            .iter()
            .map(|reply| Outcome::from_reply(&target.host, reply, answer.dsn, answer.tls))
            .collect())
    }

    /// Connect (from this host's own address), then `SmtpClient::send_message`.
    fn converse(
        &self,
        tag: &str,
        target: &Target,
        entry: &Entry,
        rcpts: &[Rcpt],
        policy: TlsPolicy,
    ) -> Result<client::Answer, NotTaken> {
        let unavailable = |e: io::Error| {
            let (host, addr) = (&target.host, target.addr);
            NotTaken::Unavailable(format!("451 4.4.1 Cannot connect to {host} [{addr}]: {e}"))
        };
        let stream =
            client::connect_from(self.source_address(), target.addr).map_err(unavailable)?;
        self.register(stream.try_clone().ok());
        if self.shared.stopping() {
            // The handle may have looked for conversations to cut just before this one began.
            self.register(None);
            return Err(NotTaken::Unavailable(
                "451 4.3.2 The relay is stopping".into(),
            ));
        }
        let deadline = Instant::now() + self.config().relay_deadline;
        let content = self.shared.spool.content_path(&entry.id);
        let hostname = &self.config().hostname;
        let result = SmtpClient::new(stream, tag, deadline)
            .map_err(unavailable)
            .and_then(|mut c| {
                c.send_message(hostname, &target.host, policy, entry, &content, rcpts)
            });
        self.register(None);
        result
    }

    /// Note this worker's conversation, so that stopping the relay can cut it.
    fn register(&self, stream: Option<TcpStream>) {
        if let Some(slot) = lock(&self.shared.conversations).get_mut(self.slot) {
            *slot = stream;
        }
    }

    // ANCHOR: source_address
    /// The address to connect from: the host's first listen address, when it is a specific
    /// one (`--listen 127.0.0.2:25`), so that the next hop sees the address this host is known
    /// by; otherwise the system chooses.
    fn source_address(&self) -> Option<IpAddr> {
        self.shared
            .listen
            .iter()
            .map(SocketAddr::ip)
            .find(|ip| !ip.is_unspecified())
    }
    // ANCHOR_END: source_address

    // ANCHOR: report
    /// Tell the sender about `rcpts` in a DSN from `<>` (RFC 3461 §6.1). A report about a
    /// message that is itself a report is never sent back into the network, where two
    /// servers could bounce bounces forever (RFC 5321 §4.5.5): it goes to the local postmaster.
    fn report(&self, tag: &str, entry: &Entry, rcpts: &[Rcpt], action: bounce::Action) {
        let sender = match address::reverse_path(&entry.sender, true) {
            Ok((ReversePath::Mailbox(sender), _)) => Some(sender),
            _ => None,
        };
        if sender.is_none() && action != bounce::Action::Failed {
            return; // RFC 3461 §5.2: never a success report for a message from <>
        }
        let config = self.config();
        let now = SystemTime::now();
        let spool = &self.shared.spool;
        let report = spool.open_content(&entry.id).and_then(|original| {
            bounce::report(
                &config.hostname,
                entry,
                original,
                rcpts,
                action,
                now,
                spool.dir(),
            )
        });
        let report = match report {
            Ok(report) => report,
            Err(error) => {
                warn!(
                    "[{tag}] The report to {} cannot be built, so it is lost: {error}.",
                    entry.sender
                );
                return;
            }
        };
        let result = match sender {
            Some(sender) if is_local(config, &domain_name(&sender)) => {
                let users = self.local_mailboxes(&sender, true).unwrap_or_default();
                let id = format!("{}-report", entry.id);
                self.deliver_local(&id, ReversePath::Null, sender, users, report)
                    .map_err(|reply| reply.one_line())
            }
            Some(sender) => {
                bounce::queue_report(spool, &entry.message_id, &sender.to_string(), &report)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => self.to_postmaster(entry, report),
        };
        match result {
            Ok(()) => info!(
                "[{tag}] The {} report was sent to {}.",
                action.name(),
                entry.sender
            ),
            Err(error) => warn!("[{tag}] The report to {} was lost: {error}.", entry.sender),
        }
    }
    // ANCHOR_END: report

    /// A failed report (sender `<>`): the report about it goes to the local postmaster, as
    /// Postfix's "double bounce" does.
    fn to_postmaster(&self, entry: &Entry, report: Body) -> Result<(), String> {
        let hostname = &self.config().hostname;
        let postmaster = format!("<postmaster@{hostname}>");
        let Ok((ForwardPath::Mailbox(mailbox), _)) = address::forward_path(&postmaster, true)
        else {
            return Err(format!("{postmaster} is not an address"));
        };
        let users = self.local_mailboxes(&mailbox, true).unwrap_or_default();
        let id = format!("{}-report", entry.id);
        self.deliver_local(&id, ReversePath::Null, mailbox, users, report)
            .map_err(|reply| reply.one_line())
    }
}

/// The relay's resolver, made on first use: a server that never relays never reads the DNS
/// configuration. A failure to make one is temporary (the configuration may be fixed).
fn resolver(
    slot: &mut Option<Resolver>,
    nameserver: Option<SocketAddr>,
) -> Result<&Resolver, RouteError> {
    if slot.is_none() {
        *slot = Some(Resolver::new(nameserver).map_err(|text| RouteError::Temporary { text })?);
    }
    slot.as_ref().ok_or_else(|| RouteError::Temporary {
        text: "no resolver".into(),
    })
}

/// Store an outcome in the recipient's line of the spool file.
fn record(rcpt: &mut Rcpt, outcome: Outcome) {
    rcpt.state = match outcome.fate {
        Fate::Delivered => RcptState::Delivered,
        Fate::Deferred => RcptState::Pending,
        Fate::Bounced => RcptState::Failed,
    };
    rcpt.remote = outcome.remote;
    rcpt.reply = outcome.reply;
    rcpt.tls = outcome.tls;
}

/// Does this recipient get a "relayed" report? Only for NOTIFY=SUCCESS, and only when the
/// next hop did not take the parameters over (RFC 3461 §5.2.1, §5.2.2 (b), (e)). A recipient
/// delivered here counts as a next hop that reports.
fn needs_relayed_notice(rcpt: &Rcpt, outcome: &Outcome) -> bool {
    outcome.fate == Fate::Delivered
        && !outcome.dsn
        && !outcome.remote.is_empty()
        && Notify::wants_success(rcpt.notify)
}

/// The domain of `<local@domain>`, lower case (domains are not case sensitive, RFC 5321 §2.4).
fn domain_of(path: &str) -> Option<String> {
    match address::forward_path(path, true) {
        Ok((ForwardPath::Mailbox(mailbox), _)) => Some(domain_name(&mailbox)),
        _ => None,
    }
}

fn domain_name(mailbox: &Mailbox) -> String {
    match &mailbox.domain {
        Domain::Name(name) => name.to_ascii_lowercase(),
        literal @ Domain::Literal(_) => literal.to_string(),
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`: deliver to that address, no DNS (RFC 5321 §4.1.3).
fn literal_ip(destination: &str) -> Option<IpAddr> {
    let inner = destination.strip_prefix('[')?.strip_suffix(']')?;
    inner.strip_prefix("IPv6:").unwrap_or(inner).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_first_digit() {
        let r = |code| RemoteReply::local(code, "x");
        let fate = |code| Outcome::from_reply("h", &r(code), false, false).fate;
        assert_eq!(fate(250), Fate::Delivered);
        assert_eq!(fate(451), Fate::Deferred);
        assert_eq!(fate(550), Fate::Bounced);
        assert_eq!(domain_of("<Bob@Two.TEST>").as_deref(), Some("two.test"));
        assert_eq!(literal_ip("[IPv6:::1]"), Some("::1".parse().unwrap()));
        let sentence = Outcome {
            tls: true,
            ..Outcome::from_reply("mx.two.test", &r(250), false, false)
        }
        .sentence("<bob@two.test>");
        assert_eq!(
            sentence,
            "<bob@two.test> was delivered to mx.two.test over TLS: 250 x."
        );
    }
}

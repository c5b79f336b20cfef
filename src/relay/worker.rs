//! The relay: a thread that takes messages from the spool and hands them to the next hop over
//! SMTP, retries what failed for now, and bounces what failed for good.
//!
//! Interface:
//! - `start(config, spool, deliver, listen)` starts the relay thread; the `RelayHandle` it
//!   returns stops the thread when dropped (it also cuts a conversation in progress).
//! - `wire_data(content)` turns stored `\n` lines into the DATA stream: CRLF, dot-stuffed, `.`;
//!   `WireEncoder` does the same a chunk at a time, so the relay sends a queued message from
//!   its content file without ever holding it whole in memory.
//! - `read_reply(reader)` reads one SMTP reply, multi-line replies included, with limits.
//!
//! One attempt at one queued message (`Relay::attempt`): group the pending recipients by domain;
//! for each domain find the hosts (`dns::route`, or `--smart-host`) and talk to them in order
//! (`Relay::try_target`), until one has answered for the message; then record each recipient's
//! fate in the spool file, bounce what failed, and schedule the next attempt for the rest.
//!
//! DSN (RFC 3461): when the next hop lists `DSN` after EHLO, RET and ENVID go on MAIL FROM and
//! NOTIFY and ORCPT on each RCPT TO, as the client gave them, and the next hop reports from
//! then on. When it does not, this server keeps that duty: a recipient with `NOTIFY=SUCCESS`
//! gets a "relayed" report, and a failure is reported only if NOTIFY asks for it (or is absent).
//!
//! The client states at every step what it expects (`cmd(OK, "MAIL FROM", ...)`), as Go's
//! net/smtp does. Before MAIL FROM a failure means "this host cannot take mail now": the next
//! host is tried. From MAIL FROM on, the host has answered for the message: 2xx is done, 4xx is
//! tried again later, 5xx is bounced (RFC 5321 §4.2.1).
//!
//! Standards: RFC 3461 §5.2.1, RFC 3461 §5.2.2, RFC 3461 §6.1, RFC 5321 §3.3, RFC 5321 §4.2, RFC 5321 §4.2.1, RFC 5321 §4.5.2, RFC 5321 §4.5.3.1.5, RFC 5321 §4.5.3.2, RFC 5321 §4.5.4.1, RFC 5321 §5.1, RFC 5321 §2.3.8

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use log::{debug, info, warn};

use crate::config::Config;
use crate::relay::bounce;
use crate::relay::dns::{self, Me, Resolver, Rng, RouteError};
use crate::relay::queue::{unix_now, Entry, Rcpt, RcptState, Schedule, Spool};
use crate::smtp::address::{self, Domain, ForwardPath, ReversePath};
use crate::smtp::body::{Body, READ_CHUNK};
use crate::smtp::envelope::{Client, Deliver, Envelope, Message, Recipient, Route};
use crate::smtp::extensions::{MailOptions, Notify, RcptOptions};

/// How often the relay looks at the spool when nobody wakes it: due retries start at most
/// this late. A new message wakes it at once.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

// RFC 5321 §4.5.3.2: how long a client waits for each reply before giving up on the host.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(5 * 60); // §4.5.3.2.1
pub const MAIL_TIMEOUT: Duration = Duration::from_secs(5 * 60); // §4.5.3.2.2
pub const RCPT_TIMEOUT: Duration = Duration::from_secs(5 * 60); // §4.5.3.2.3
pub const DATA_TIMEOUT: Duration = Duration::from_secs(2 * 60); // §4.5.3.2.4
pub const DATA_BLOCK_TIMEOUT: Duration = Duration::from_secs(3 * 60); // §4.5.3.2.5
pub const DATA_END_TIMEOUT: Duration = Duration::from_secs(10 * 60); // §4.5.3.2.6
/// Not in the RFC: a host that does not accept the TCP connection within this is skipped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF. Longer lines are cut
/// (not refused: the code is what matters), but a host cannot make us read without end.
pub const MAX_REPLY_LINE: usize = 512;
/// A reply line longer than this many octets ends the conversation.
const MAX_REPLY_LINE_READ: usize = 16 * MAX_REPLY_LINE;
/// More lines than this in one reply ends the conversation (EHLO answers have a dozen).
pub const MAX_REPLY_LINES: usize = 100;
/// Addresses tried per domain and attempt (Postfix `smtp_mx_address_limit`; RFC 5321 §5.1
/// asks for at least two).
pub const MAX_ADDRESSES: usize = 5;

/// The codes a step accepts: "250" for most, "250 or 251" for RCPT (251: "will forward").
const OK: &[u16] = &[250];
const RCPT_OK: &[u16] = &[250, 251];

/// Stops the relay thread when dropped.
pub struct RelayHandle {
    stop: Arc<AtomicBool>,
    spool: Arc<Spool>,
    /// The conversation in progress, shut down on stop so no read waits for its timeout.
    current: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.spool.wake();
        if let Some(stream) = lock(&self.current).as_ref() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Start the relay thread. `listen` are the addresses this server is bound to (an MX list that
/// names one of them is cut there, RFC 5321 §5.1).
pub fn start(
    config: Arc<Config>,
    spool: Arc<Spool>,
    deliver: Arc<dyn Deliver>,
    listen: Vec<SocketAddr>,
) -> io::Result<RelayHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let current = Arc::new(Mutex::new(None));
    let mut relay = Relay {
        schedule: Schedule {
            retry: config.retry.clone(),
            lifetime: config.queue_lifetime,
        },
        config,
        spool: spool.clone(),
        deliver,
        listen,
        resolver: None,
        rng: Rng::from_clock(),
        stop: stop.clone(),
        current: current.clone(),
        reported: HashSet::new(),
    };
    let thread = thread::Builder::new()
        .name("relay".into())
        .spawn(move || relay.run())?;
    Ok(RelayHandle {
        stop,
        spool,
        current,
        thread: Some(thread),
    })
}

/// The relay thread's state.
struct Relay {
    config: Arc<Config>,
    spool: Arc<Spool>,
    deliver: Arc<dyn Deliver>,
    listen: Vec<SocketAddr>,
    schedule: Schedule,
    /// Made on first use (see `resolver`).
    resolver: Option<Resolver>,
    rng: Rng,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<TcpStream>>>,
    /// Unreadable spool files already logged (once each, not once per pass).
    reported: HashSet<String>,
}

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// `dsn`: the next hop speaks DSN and took over reporting (RFC 3461 §5.2.1).
    Delivered {
        remote: String,
        reply: String,
        dsn: bool,
    },
    Retry {
        remote: String,
        reply: String,
    },
    Bounce {
        remote: String,
        reply: String,
    },
}

impl Outcome {
    /// `delivered (mx.two.test said 250 2.0.0 OK)`, for the log.
    fn describe(&self) -> String {
        let (what, remote, reply) = match self {
            Outcome::Delivered { remote, reply, .. } => ("delivered", remote, reply),
            Outcome::Retry { remote, reply } => ("deferred", remote, reply),
            Outcome::Bounce { remote, reply } => ("bounced", remote, reply),
        };
        if remote.is_empty() {
            format!("{what} ({reply})")
        } else {
            format!("{what} ({remote} said {reply})")
        }
    }
}

/// One address to connect to, with the name it was found under.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    addr: SocketAddr,
}

impl Relay {
    // ANCHOR: relay_loop
    /// Look at the spool, try what is due, sleep until woken or the poll interval passes.
    fn run(&mut self) {
        info!("relay: watching {}", self.spool.dir().display());
        while !self.stopping() {
            let seen = self.spool.generation();
            self.pass();
            if self.stopping() {
                break;
            }
            self.spool.wait(seen, POLL_INTERVAL);
        }
        info!("relay: stopped");
    }
    // ANCHOR_END: relay_loop

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// One look at the spool: every entry whose time has come gets an attempt.
    fn pass(&mut self) {
        for loaded in self.spool.load_all() {
            if self.stopping() {
                return;
            }
            match loaded {
                Ok(entry) if entry.next_attempt <= unix_now() => self.attempt(entry),
                Ok(_) => {}
                Err(error) => {
                    if self.reported.insert(error.clone()) {
                        warn!("relay: skipping a spool file: {error}");
                    }
                }
            }
        }
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
        for (destination, group) in self.group_by_destination(&entry, &pending) {
            let rcpts: Vec<Rcpt> = group.iter().map(|&i| entry.recipients[i].clone()).collect();
            let outcomes = self.deliver_group(&tag, &entry, &destination, &rcpts);
            for (&i, outcome) in group.iter().zip(outcomes) {
                info!(
                    "[{tag}] {}: {}",
                    entry.recipients[i].path,
                    outcome.describe()
                );
                let notice = needs_relayed_notice(&entry.recipients[i], &outcome);
                record(&mut entry.recipients[i], outcome);
                if notice {
                    relayed.push(entry.recipients[i].clone());
                }
            }
        }
        let now = unix_now();
        if self.schedule.expired(&entry, now) {
            self.expire(&mut entry);
        }
        // RFC 3461 §5.2.2 (c), (d), (f): a failure is reported unless NOTIFY left FAILURE out.
        let failed: Vec<Rcpt> = pending
            .iter()
            .map(|&i| entry.recipients[i].clone())
            .filter(|r| r.state == RcptState::Failed && Notify::wants_failure(r.notify))
            .collect();
        if !failed.is_empty() {
            self.bounce(&tag, &entry, &failed);
        }
        if !relayed.is_empty() {
            self.report_relayed(&tag, &entry, &relayed);
        }
        self.finish(&tag, entry, now);
    }
    // ANCHOR_END: attempt

    /// RFC 5321 §4.5.4.1: give up after the queue lifetime; the sender is told (status 4.4.7).
    fn expire(&self, entry: &mut Entry) {
        let days = self.schedule.lifetime.as_secs() as f64 / 86_400.0;
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
        if entry.is_done() {
            match self.spool.remove(&entry.id) {
                Ok(()) => info!("[{tag}] done, removed from the queue"),
                Err(error) => warn!("[{tag}] cannot remove from the queue: {error}"),
            }
            return;
        }
        let delay = self.schedule.delay_after(entry.attempts);
        entry.next_attempt = now + delay.as_secs().max(1);
        info!("[{tag}] deferred, next attempt in {}s", delay.as_secs());
        if let Err(error) = self.spool.save(&entry) {
            // The old file stays: at worst a recipient is tried once more than needed.
            warn!("[{tag}] cannot update the queue file: {error}");
        }
    }

    /// Recipients by destination: one domain each, or all together for a smart host.
    fn group_by_destination(
        &self,
        entry: &Entry,
        pending: &[usize],
    ) -> BTreeMap<String, Vec<usize>> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in pending {
            let key = match (
                &self.config.smart_host,
                domain_of(&entry.recipients[i].path),
            ) {
                (Some(host), _) => host.clone(),
                (None, Some(domain)) => domain,
                (None, None) => String::new(), // unparseable: deliver_group bounces it
            };
            groups.entry(key).or_default().push(i);
        }
        groups
    }

    /// Deliver to one destination: find the hosts, try them in order, one outcome per recipient.
    fn deliver_group(
        &mut self,
        tag: &str,
        entry: &Entry,
        destination: &str,
        rcpts: &[Rcpt],
    ) -> Vec<Outcome> {
        let all = |outcome: Outcome| vec![outcome; rcpts.len()];
        let targets = match self.targets(tag, destination) {
            Ok(targets) => targets,
            Err(RouteError::Permanent { code, status, text }) => {
                return all(Outcome::Bounce {
                    remote: String::new(),
                    reply: format!("{code} {status} {text}"),
                })
            }
            Err(RouteError::Temporary { text }) => {
                return all(Outcome::Retry {
                    remote: String::new(),
                    reply: format!("451 4.4.3 {text}"),
                })
            }
        };
        let mut last = Outcome::Retry {
            remote: String::new(),
            reply: "451 4.4.1 No mail host could be reached".into(),
        };
        for target in targets.iter().take(MAX_ADDRESSES) {
            if self.stopping() {
                break;
            }
            match self.try_target(tag, target, entry, rcpts) {
                Ok(outcomes) => return outcomes,
                Err(reply) => {
                    info!(
                        "[{tag}] {} [{}]: {reply}; trying the next host",
                        target.host, target.addr
                    );
                    last = Outcome::Retry {
                        remote: target.host.clone(),
                        reply,
                    };
                }
            }
        }
        all(last)
    }

    /// The addresses to try for a destination: the smart host, an address literal, or MX hosts.
    fn targets(&mut self, tag: &str, destination: &str) -> Result<Vec<Target>, RouteError> {
        if self.config.smart_host.as_deref() == Some(destination) {
            return self.smart_host_targets(destination);
        }
        if let Some(ip) = literal_ip(destination) {
            return Ok(vec![Target {
                host: destination.to_string(),
                addr: SocketAddr::new(ip, self.config.mx_port),
            }]);
        }
        if destination.is_empty() {
            return Err(RouteError::Permanent {
                code: 553,
                status: "5.1.3",
                text: "Bad recipient address in the queue file".into(),
            });
        }
        let me = Me {
            hostname: &self.config.hostname,
            listen: &self.listen,
            mx_port: self.config.mx_port,
        };
        let mut trace = Vec::new();
        let resolver = resolver(&mut self.resolver, self.config.dns)?;
        let route = dns::route(resolver, destination, &me, &mut self.rng, &mut trace);
        for step in &trace {
            debug!("[{tag}] dns: {step}");
        }
        let port = self.config.mx_port;
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
        let resolver = resolver(&mut self.resolver, self.config.dns)?;
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

    /// One SMTP conversation. `Err(reply)`: this host did not take the message; try the next.
    fn try_target(
        &self,
        tag: &str,
        target: &Target,
        entry: &Entry,
        rcpts: &[Rcpt],
    ) -> Result<Vec<Outcome>, String> {
        let stream = TcpStream::connect_timeout(&target.addr, CONNECT_TIMEOUT).map_err(|e| {
            format!(
                "451 4.4.1 Cannot connect to {} [{}]: {e}",
                target.host, target.addr
            )
        })?;
        if let Ok(clone) = stream.try_clone() {
            *lock(&self.current) = Some(clone);
        }
        if self.stopping() {
            // The handle may have looked for a conversation to cut just before this one began.
            *lock(&self.current) = None;
            return Err("451 4.3.2 The relay is stopping".into());
        }
        let mut client = SmtpClient::new(stream, tag).map_err(|e| format!("451 4.4.2 {e}"))?;
        let content = self.spool.content_path(&entry.id);
        let result = client.send_message(&self.config.hostname, entry, &content, rcpts);
        *lock(&self.current) = None;
        let remote = target.host.clone();
        result.map(|(replies, dsn)| {
            replies
                .into_iter()
                .map(|reply| outcome(remote.clone(), reply, dsn))
                .collect()
        })
    }

    // ANCHOR: bounce
    /// Tell the sender which recipients failed: a DSN from `<>` (RFC 3461 §6.1). Never for a
    /// message that is itself a bounce, or two servers could bounce bounces forever.
    fn bounce(&self, tag: &str, entry: &Entry, failed: &[Rcpt]) {
        let Ok((ReversePath::Mailbox(sender), _)) = address::reverse_path(&entry.sender, true)
        else {
            warn!("[{tag}] undeliverable bounce (sender <>), not bounced again: {failed:?}");
            return;
        };
        let now = SystemTime::now();
        let report = self.spool.open_content(&entry.id).and_then(|original| {
            bounce::dsn(
                &self.config.hostname,
                entry,
                original,
                failed,
                now,
                self.spool.dir(),
            )
        });
        self.send_report(tag, entry, &sender, report);
    }
    // ANCHOR_END: bounce

    /// RFC 3461 §5.2.2 (b): the next hop took the message for recipients that asked
    /// `NOTIFY=SUCCESS` but cannot report on it, so this server says "relayed" now.
    fn report_relayed(&self, tag: &str, entry: &Entry, relayed: &[Rcpt]) {
        let Ok((ReversePath::Mailbox(sender), _)) = address::reverse_path(&entry.sender, true)
        else {
            return; // RFC 3461 §5.2: never a DSN for a message from <>
        };
        let now = SystemTime::now();
        let report = self.spool.open_content(&entry.id).and_then(|original| {
            let hostname = &self.config.hostname;
            bounce::relayed_dsn(hostname, entry, original, relayed, now, self.spool.dir())
        });
        self.send_report(tag, entry, &sender, report);
    }

    /// Deliver a report to the sender: locally, or through the queue from `<>`.
    fn send_report(
        &self,
        tag: &str,
        entry: &Entry,
        sender: &address::Mailbox,
        report: io::Result<Body>,
    ) {
        let report = match report {
            Ok(report) => report,
            Err(error) => {
                warn!("[{tag}] report to <{sender}> lost: cannot build it: {error}");
                return;
            }
        };
        let directory = &self.config.directory;
        let result = if directory.is_local_domain(&sender.domain) {
            match directory.mailboxes(&sender.local_part_unquoted()) {
                Some(users) => self.bounce_locally(entry, sender.clone(), users, report),
                None => Err(format!("local sender {sender} has no mailbox")),
            }
        } else {
            self.bounce_by_queue(entry, &sender.to_string(), report)
        };
        match result {
            Ok(()) => info!("[{tag}] report sent to <{sender}>"),
            Err(error) => warn!("[{tag}] report to <{sender}> lost: {error}"),
        }
    }

    /// A local sender: the report goes through the same `Deliver` hook as any local mail.
    fn bounce_locally(
        &self,
        entry: &Entry,
        sender: address::Mailbox,
        users: Vec<String>,
        report: Body,
    ) -> Result<(), String> {
        let own = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let message = Message {
            id: format!("{}.dsn", entry.id),
            client: Client {
                peer: own,
                local: own,
                helo: Some(self.config.hostname.clone()),
                esmtp: true,
                tls: false,
                user: None,
            },
            envelope: Envelope {
                sender: ReversePath::Null,
                options: MailOptions::default(),
                recipients: vec![Recipient {
                    path: ForwardPath::Mailbox(sender),
                    route: Route::Local(users),
                    options: RcptOptions::default(),
                }],
                refused_recipients: 0,
            },
            content: report,
        };
        self.deliver
            .deliver(&message)
            .map_err(|reply| reply.to_string())
    }

    /// A foreign sender: the report is queued like any other message, from `<>`.
    fn bounce_by_queue(&self, entry: &Entry, sender: &str, report: Body) -> Result<(), String> {
        let mut dsn = Entry::new(
            &format!("{}.dsn", entry.message_id),
            "<>".into(),
            vec![format!("<{sender}>")],
        );
        // RFC 3461 §6.1: a report is sent without RET, and NOTIFY, if given, must be NEVER.
        dsn.recipients[0].notify = Some(Notify::NEVER);
        self.spool
            .prepare(&dsn, b"", &report)
            .and_then(|prepared| prepared.commit())
            .map_err(|e| e.to_string())
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
    let (state, remote, reply) = match outcome {
        Outcome::Delivered { remote, reply, .. } => (RcptState::Delivered, remote, reply),
        Outcome::Retry { remote, reply } => (RcptState::Pending, remote, reply),
        Outcome::Bounce { remote, reply } => (RcptState::Failed, remote, reply),
    };
    rcpt.state = state;
    rcpt.remote = remote;
    rcpt.reply = reply;
}

/// Does this recipient get a "relayed" report? Only for NOTIFY=SUCCESS, and only when the
/// next hop did not take the parameters over (RFC 3461 §5.2.1, §5.2.2 (b), (e)).
fn needs_relayed_notice(rcpt: &Rcpt, outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Delivered { dsn: false, .. }) && Notify::wants_success(rcpt.notify)
}

/// RFC 5321 §4.2.1: the first digit decides. 2 done, 4 later, 5 never.
fn outcome(remote: String, reply: RemoteReply, dsn: bool) -> Outcome {
    let reply_text = reply.one_line();
    match reply.code / 100 {
        2 => Outcome::Delivered {
            remote,
            reply: reply_text,
            dsn,
        },
        5 => Outcome::Bounce {
            remote,
            reply: reply_text,
        },
        _ => Outcome::Retry {
            remote,
            reply: reply_text,
        },
    }
}

// ANCHOR: dsn_parameters
/// ` RET=HDRS ENVID=QQ314159` for MAIL FROM: exactly what the client gave, only to a host
/// that lists DSN (RFC 3461 §5.2.1 (a), (b)).
fn mail_parameters(entry: &Entry, dsn: bool) -> String {
    let mut params = String::new();
    if dsn {
        if let Some(ret) = entry.ret {
            params.push_str(&format!(" RET={}", ret.keyword()));
        }
        if let Some(envid) = &entry.envid {
            params.push_str(&format!(" ENVID={envid}"));
        }
    }
    params
}

/// ` NOTIFY=SUCCESS ORCPT=rfc822;bob@two.test` for RCPT TO (RFC 3461 §5.2.1 (c), (d)).
fn rcpt_parameters(rcpt: &Rcpt, dsn: bool) -> String {
    let mut params = String::new();
    if dsn {
        if let Some(notify) = rcpt.notify {
            params.push_str(&format!(" NOTIFY={notify}"));
        }
        if let Some(orcpt) = &rcpt.orcpt {
            params.push_str(&format!(" ORCPT={orcpt}"));
        }
    }
    params
}
// ANCHOR_END: dsn_parameters

/// The domain of `<local@domain>`, lower case (domains are not case sensitive, RFC 5321 §2.4).
fn domain_of(path: &str) -> Option<String> {
    match address::forward_path(path, true) {
        Ok((ForwardPath::Mailbox(mailbox), _)) => Some(match &mailbox.domain {
            Domain::Name(name) => name.to_ascii_lowercase(),
            literal @ Domain::Literal(_) => literal.to_string(),
        }),
        _ => None,
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`: deliver to that address, no DNS (RFC 5321 §4.1.3).
fn literal_ip(destination: &str) -> Option<IpAddr> {
    let inner = destination.strip_prefix('[')?.strip_suffix(']')?;
    inner.strip_prefix("IPv6:").unwrap_or(inner).parse().ok()
}

// ANCHOR: wire_data
/// The DATA stream for stored content: every line ends in CRLF, a line that starts with "."
/// gets a second one (RFC 5321 §4.5.2), and the stream ends with "." on a line of its own.
/// The whole content in one piece; the relay uses `WireEncoder` to do the same chunk by chunk.
pub fn wire_data(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + 5);
    let mut encoder = WireEncoder::new();
    encoder.encode(content, &mut out);
    encoder.finish(&mut out);
    out
}

/// Stored content to the DATA stream, a chunk at a time. A line may straddle two chunks, so
/// the encoder remembers where it stands: at the start of a line, or holding back a CR.
///
/// The order matters (security case 1.12): line ends are made canonical first, so a stray CR
/// becomes a space and never reaches the next hop; only then is each line dot-stuffed. Stuffing
/// first could leave a "." after a line break that did not exist yet when we looked.
#[derive(Debug, Clone)]
pub struct WireEncoder {
    /// The next octet starts a line (a "." there is stuffed).
    line_start: bool,
    /// A CR was seen and not written: dropped if the line ends next (`\r\n` in the store is
    /// one line end), a space otherwise.
    held_cr: bool,
}

impl Default for WireEncoder {
    fn default() -> WireEncoder {
        WireEncoder::new()
    }
}

impl WireEncoder {
    pub fn new() -> WireEncoder {
        WireEncoder {
            line_start: true,
            held_cr: false,
        }
    }

    /// Append the wire form of `chunk` (the next octets of the content) to `out`.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if b == b'\n' {
                self.held_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                continue;
            }
            if self.held_cr {
                // RFC 5321 §2.3.8: no bare CR may be sent; it becomes a space.
                out.push(b' ');
                self.held_cr = false;
            }
            if self.line_start && b == b'.' {
                out.push(b'.');
            }
            self.line_start = false;
            match b {
                b'\r' => self.held_cr = true,
                _ => out.push(b),
            }
        }
    }

    /// End the stream: close a last line without its line end, then "." on a line of its own.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}
// ANCHOR_END: wire_data

/// One reply from the next hop: its code and the text of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl RemoteReply {
    /// `550 5.1.1 No such user`, a multi-line reply joined with spaces (for logs and the spool).
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
            .trim_end()
            .to_string()
    }

    /// Does an EHLO reply list this keyword (`STARTTLS`, `SIZE 1000`)?
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

// ANCHOR: read_reply
/// `Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF`
/// (RFC 5321 §4.2): lines with "-" after the code go on, the line with " " (or nothing) ends.
/// Every line must carry the same code; too many or too long lines end the conversation.
pub fn read_reply(reader: &mut impl BufRead) -> io::Result<RemoteReply> {
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let line = read_capped_line(reader)?;
        let bad =
            |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{why}: {line:?}"));
        let digits = line
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let this_code: u16 = digits
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad("no reply code"))?;
        if !(200..600).contains(&this_code) || code.is_some_and(|c| c != this_code) {
            return Err(bad("unexpected reply code"));
        }
        code = Some(this_code);
        let separator = line.as_bytes().get(3).copied();
        if !matches!(separator, None | Some(b' ') | Some(b'-')) {
            return Err(bad("no space or hyphen after the code"));
        }
        lines.push(line.get(4..).unwrap_or("").to_string());
        if separator != Some(b'-') {
            return Ok(RemoteReply {
                code: this_code,
                lines,
            });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(bad("too many reply lines"));
        }
    }
}
// ANCHOR_END: read_reply

/// One line without its CRLF (or bare LF), cut at `MAX_REPLY_LINE` octets.
fn read_capped_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let mut total = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let (chunk, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => (&buffer[..=end], true),
            None => (buffer, false),
        };
        let keep = MAX_REPLY_LINE.saturating_sub(line.len()).min(chunk.len());
        line.extend_from_slice(&chunk[..keep]);
        let used = chunk.len();
        total += used;
        reader.consume(used);
        if done {
            break;
        }
        if total > MAX_REPLY_LINE_READ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Why a step did not get the reply it expected.
enum StepError {
    /// The host answered, with another code.
    Refused {
        step: &'static str,
        reply: RemoteReply,
    },
    /// The connection broke, timed out, or the reply made no sense.
    Broken {
        step: &'static str,
        error: io::Error,
    },
}

/// The client side of one SMTP conversation.
struct SmtpClient {
    reader: BufReader<TcpStream>,
    tag: String,
}

impl SmtpClient {
    fn new(stream: TcpStream, tag: &str) -> io::Result<SmtpClient> {
        stream.set_write_timeout(Some(DATA_BLOCK_TIMEOUT))?;
        Ok(SmtpClient {
            reader: BufReader::new(stream),
            tag: tag.to_string(),
        })
    }

    fn read(&mut self, step: &'static str, timeout: Duration) -> Result<RemoteReply, StepError> {
        let broken = |error| StepError::Broken { step, error };
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(broken)?;
        let reply = read_reply(&mut self.reader).map_err(broken)?;
        for (n, line) in reply.lines.iter().enumerate() {
            let sep = if n + 1 < reply.lines.len() { '-' } else { ' ' };
            debug!("[{}] S: {}{sep}{line}", self.tag, reply.code);
        }
        Ok(reply)
    }

    fn write(&mut self, step: &'static str, bytes: &[u8]) -> Result<(), StepError> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|error| StepError::Broken { step, error })
    }

    // ANCHOR: cmd
    /// Send one command and read its reply; `Ok` only if the code is one the step expects.
    fn cmd(
        &mut self,
        expect: &[u16],
        step: &'static str,
        line: &str,
        timeout: Duration,
    ) -> Result<RemoteReply, StepError> {
        debug!("[{}] C: {line}", self.tag);
        self.write(step, format!("{line}\r\n").as_bytes())?;
        let reply = self.read(step, timeout)?;
        if expect.contains(&reply.code) {
            Ok(reply)
        } else {
            Err(StepError::Refused { step, reply })
        }
    }
    // ANCHOR_END: cmd

    /// Greeting and EHLO (HELO if EHLO is refused): is this host ready to take mail?
    fn hello(&mut self, hostname: &str) -> Result<RemoteReply, StepError> {
        let greeting = self.read("greeting", GREETING_TIMEOUT)?;
        if greeting.code != 220 {
            return Err(StepError::Refused {
                step: "greeting",
                reply: greeting,
            });
        }
        match self.cmd(OK, "EHLO", &format!("EHLO {hostname}"), MAIL_TIMEOUT) {
            // RFC 5321 §3.2: a server that does not know EHLO answers 500/502; then HELO.
            Err(StepError::Refused { reply, .. }) if reply.code >= 500 => {
                self.cmd(OK, "HELO", &format!("HELO {hostname}"), MAIL_TIMEOUT)
            }
            other => other,
        }
    }

    // ANCHOR: send_message
    /// One message to one host: a reply per recipient and whether the host took the DSN
    /// parameters, or `Err` if the host never got as far as MAIL FROM (then the next host may
    /// take it).
    fn send_message(
        &mut self,
        hostname: &str,
        entry: &Entry,
        content: &Path,
        rcpts: &[Rcpt],
    ) -> Result<(Vec<RemoteReply>, bool), String> {
        let ehlo = self.hello(hostname).map_err(|e| self.diagnose(e))?;
        if ehlo.has_keyword("STARTTLS") {
            // SEAM: opportunistic STARTTLS (RFC 3207) goes here, once tls.rs exists: send
            // STARTTLS, expect 220, wrap the stream in TLS, and say EHLO again.
            debug!(
                "[{}] the next hop offers STARTTLS; sending in plain text for now",
                self.tag
            );
        }
        // RFC 3461 §5.2.1, §5.2.2 (a): the DSN parameters go on only to a host that lists DSN.
        let dsn = ehlo.has_keyword("DSN");
        let mail = format!("MAIL FROM:{}{}", entry.sender, mail_parameters(entry, dsn));
        let replies = match self.cmd(OK, "MAIL FROM", &mail, MAIL_TIMEOUT) {
            Ok(_) => self.recipients_and_data(content, rcpts, dsn),
            Err(error) => vec![self.as_reply(error); rcpts.len()],
        };
        let _ = self.cmd(&[221], "QUIT", "QUIT", MAIL_TIMEOUT);
        Ok((replies, dsn))
    }
    // ANCHOR_END: send_message

    /// RCPT for every recipient, then DATA if any was accepted; one reply per recipient.
    fn recipients_and_data(
        &mut self,
        content: &Path,
        rcpts: &[Rcpt],
        dsn: bool,
    ) -> Vec<RemoteReply> {
        let mut replies = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            let line = format!("RCPT TO:{}{}", rcpt.path, rcpt_parameters(rcpt, dsn));
            let reply = match self.cmd(RCPT_OK, "RCPT TO", &line, RCPT_TIMEOUT) {
                Ok(reply) => reply,
                Err(error) => self.as_reply(error),
            };
            replies.push(reply);
        }
        let accepted: Vec<usize> = (0..replies.len())
            .filter(|&i| replies[i].code / 100 == 2)
            .collect();
        if accepted.is_empty() {
            return replies;
        }
        // The message's fate now decides every accepted recipient's (RFC 5321 §3.3).
        let verdict = self.data(content);
        for i in accepted {
            replies[i] = verdict.clone();
        }
        replies
    }

    /// DATA, 354, the content, and the reply to the final dot.
    fn data(&mut self, content: &Path) -> RemoteReply {
        let file = match File::open(content) {
            Ok(file) => file,
            Err(error) => {
                warn!("[{}] cannot open {}: {error}", self.tag, content.display());
                return RemoteReply {
                    code: 451,
                    lines: vec![format!("4.3.0 Cannot read the queued message: {error}")],
                };
            }
        };
        let result = self
            .cmd(&[354], "DATA", "DATA", DATA_TIMEOUT)
            .and_then(|_| self.send_content(file))
            .and_then(|()| self.read("end of data", DATA_END_TIMEOUT));
        match result {
            Ok(reply) => reply,
            Err(error) => self.as_reply(error),
        }
    }

    // ANCHOR: send_content
    /// The content file on the wire, `READ_CHUNK` octets at a time, then the final dot. If the
    /// file cannot be read half way, the connection is cut: without the final dot the next
    /// hop throws the partial message away (RFC 5321 §4.1.1.4), and it is tried again later.
    fn send_content(&mut self, mut file: File) -> Result<(), StepError> {
        let mut encoder = WireEncoder::new();
        let mut chunk = vec![0; READ_CHUNK];
        let mut wire = Vec::with_capacity(READ_CHUNK + READ_CHUNK / 2);
        let mut sent = 0;
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
                    let step = "reading the queued message";
                    return Err(StepError::Broken { step, error });
                }
            };
            wire.clear();
            encoder.encode(&chunk[..n], &mut wire);
            self.write("message content", &wire)?;
            sent += wire.len();
        }
        wire.clear();
        encoder.finish(&mut wire);
        self.write("message content", &wire)?;
        let octets = sent + wire.len();
        debug!(
            "[{}] C: <message, {octets} octets, ending with .>",
            self.tag
        );
        Ok(())
    }
    // ANCHOR_END: send_content

    /// A failed step as a reply: the host's own reply, or a 451 we make up for a broken line.
    fn as_reply(&self, error: StepError) -> RemoteReply {
        match error {
            StepError::Refused { reply, .. } => reply,
            StepError::Broken { step, error } => RemoteReply {
                code: 451,
                lines: vec![format!("4.4.2 Connection failed during {step}: {error}")],
            },
        }
    }

    /// Why a host could not take mail at all: one line for the log and the spool.
    fn diagnose(&self, error: StepError) -> String {
        match error {
            StepError::Refused { step, reply } => {
                format!("{} (expected 2xx to {step})", reply.one_line())
            }
            StepError::Broken { step, error } => {
                format!("451 4.4.2 Connection failed during {step}: {error}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> io::Result<RemoteReply> {
        read_reply(&mut text.as_bytes())
    }

    #[test]
    fn replies_single_and_multi_line() {
        let one = reply("250 2.0.0 OK\r\n").unwrap();
        assert_eq!((one.code, one.one_line().as_str()), (250, "250 2.0.0 OK"));
        let ehlo = reply("250-mx.two.test\r\n250-SIZE 1000\r\n250 STARTTLS\r\n").unwrap();
        assert_eq!(ehlo.lines.len(), 3);
        assert!(ehlo.has_keyword("starttls") && ehlo.has_keyword("SIZE"));
        assert_eq!(
            reply("354\n").unwrap().code,
            354,
            "bare LF and no text are fine"
        );
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        for bad in [
            "",
            "25",
            "abc hello\r\n",
            "250-first\r\n251 second\r\n",
            "250x\r\n",
            "999 what\r\n",
            "250-unterminated",
        ] {
            assert!(reply(bad).is_err(), "{bad:?}");
        }
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1) + "250 end\r\n";
        assert!(reply(&many).is_err());
        let long = format!("250 {}\r\n", "y".repeat(MAX_REPLY_LINE * 4));
        assert_eq!(
            reply(&long).unwrap().lines[0].len(),
            MAX_REPLY_LINE - 4,
            "cut, not refused"
        );
        let endless = format!("250 {}", "y".repeat(MAX_REPLY_LINE_READ + 10));
        assert!(reply(&endless).is_err());
    }

    #[test]
    fn wire_data_is_crlf_then_dot_stuffed() {
        assert_eq!(wire_data(b"a\n.b\n..\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(wire_data(b""), b".\r\n");
        assert_eq!(wire_data(b"no end"), b"no end\r\n.\r\n");
        // A stray CR never reaches the wire alone, and a "." after it is not a line start.
        let wire = wire_data(b"x\r.\rMAIL FROM:<a@b>\n.\n");
        assert_eq!(wire, b"x . MAIL FROM:<a@b>\r\n..\r\n.\r\n");
        for (i, &b) in wire.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(wire.get(i + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                assert_eq!(wire[i - 1], b'\r');
            }
        }
    }

    /// The line-by-line form of `wire_data` (split, strip CR, stuff, join): the reference the
    /// streaming encoder must agree with.
    fn wire_data_by_lines(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let body = content.strip_suffix(b"\n").unwrap_or(content);
        if !content.is_empty() {
            for line in body.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.first() == Some(&b'.') {
                    out.push(b'.');
                }
                out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn streaming_in_random_chunks_equals_the_one_piece_result() {
        // A small linear congruential generator: reproducible, no dependency.
        let mut seed: u64 = 0x5eed_1234;
        let mut next = |bound: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % bound
        };
        let alphabet = b"..\r\n\nab";
        for _ in 0..500 {
            let len = next(200);
            let content: Vec<u8> = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
            let mut encoder = WireEncoder::new();
            let mut streamed = Vec::new();
            let mut rest = &content[..];
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(1 + next(rest.len()));
                encoder.encode(piece, &mut streamed);
                rest = tail;
            }
            encoder.finish(&mut streamed);
            assert_eq!(streamed, wire_data(&content), "{content:?}");
            assert_eq!(streamed, wire_data_by_lines(&content), "{content:?}");
        }
    }

    #[test]
    fn outcomes_follow_the_first_digit() {
        let r = |code| RemoteReply {
            code,
            lines: vec!["x".into()],
        };
        assert!(matches!(
            outcome("h".into(), r(250), false),
            Outcome::Delivered { .. }
        ));
        assert!(matches!(
            outcome("h".into(), r(451), false),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            outcome("h".into(), r(550), false),
            Outcome::Bounce { .. }
        ));
        assert_eq!(domain_of("<Bob@Two.TEST>").as_deref(), Some("two.test"));
        assert_eq!(literal_ip("[IPv6:::1]"), Some("::1".parse().unwrap()));
    }
}

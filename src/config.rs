//! Configuration: the command-line options, the users and aliases files, and their defaults.
//!
//! Interface:
//! - `Config::from_args(args)` parses the options of design §3 with `getopts`; `Config::default()`
//!   is the first-minute setup (127.0.0.1:2525, demo users alice and bob, list students, ./mail).
//! - `Directory` answers "who is local?": local domains, users, aliases, postmaster.
//!
//! Standards: RFC 5321 §4.5.1, §4.5.3.2.7, §2.4

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::smtp::auth_budget::{Budget as AuthBudget, Policy as AuthPolicy};

use crate::smtp::address::Domain;

/// RFC 5321 §4.5.3.2.7: the server should wait at least 5 minutes for the next command.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// Postfix's `smtpd_hard_error_limit`: after this many errors the session ends with 421.
pub const DEFAULT_MAX_ERRORS: u32 = 20;
const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;

/// Largest an mbox may grow through a delivery: 50 MiB, Postfix's `mailbox_size_limit`.
const DEFAULT_MAILBOX_SIZE_LIMIT: u64 = 50 * 1024 * 1024;
const DEFAULT_MAX_CONNECTIONS: usize = 100;
/// One address (one student's script) may hold this many connections at once.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 32;
/// The longest `--timeout`: a day. Deadlines are `Instant`s; a timeout near `u64::MAX`
/// seconds would overflow them.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// The shortest `--timeout`: a millisecond. Less rounds to a zero `Duration`, which no socket
/// accepts as a timeout, so every session would end before its greeting.
const MIN_TIMEOUT_SECS: f64 = 0.001;
/// The longest `--retry` wait and `--queue-lifetime`: a year, far beyond any real queue.
const MAX_QUEUE_DURATION: Duration = Duration::from_secs(365 * 86_400);
pub const DEMO_PASSWORD: &str = "password";
/// Pause before a POP3 `-ERR` for a wrong password, to slow down password guessing.
const DEFAULT_POP3_AUTH_DELAY: Duration = Duration::from_secs(1);
/// A mail host listens on "the SMTP port (specified by IANA as port 25)" (RFC 5321 §4.5.4.2).
const DEFAULT_MX_PORT: u16 = 25;

/// `--lab`: every listener of the lab at once, on ports that echo the real ones (25, 587, 465,
/// 110, 995), so a student never restarts the server during a class.
pub const LAB_PORTS: LabPorts = LabPorts {
    smtp: 2525,
    submission: 2587,
    smtps: 2465,
    pop3: 2110,
    pop3s: 2995,
    imap: 2143,
    imaps: 2993,
    web: 8025,
};
/// `--lab` records every session here unless `--transcripts` says otherwise.
const LAB_TRANSCRIPTS: &str = "transcripts-mine";

/// The ports `--lab` opens when no option moves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabPorts {
    pub smtp: u16,
    pub submission: u16,
    pub smtps: u16,
    pub pop3: u16,
    pub pop3s: u16,
    pub imap: u16,
    pub imaps: u16,
    /// The live view: always on loopback, since it is the teacher's screen (lesson 18).
    pub web: u16,
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// `--submission`: the port-587 role, AUTH before MAIL (RFC 6409).
    pub submission: Vec<SocketAddr>,
    /// `--smtps`: submission inside TLS from the first byte (RFC 8314).
    pub smtps: Vec<SocketAddr>,
    /// `--tls-cert` and `--tls-key`, or `--tls-self-signed`.
    pub tls: Option<TlsSource>,
    pub hostname: String,
    pub mail_dir: PathBuf,
    pub directory: Directory,
    pub max_size: u64,
    /// `--mailbox-size-limit`: no delivery makes an mbox longer (0: no limit).
    pub mailbox_size_limit: u64,
    pub max_connections: usize,
    /// `--max-connections-per-ip`: the share of one client address.
    pub max_connections_per_ip: usize,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub idle_timeout: Duration,
    pub transcripts: Option<PathBuf>,
    /// Networks whose clients may relay to other domains without AUTH (`--relay-from`).
    pub relay_from: Vec<Cidr>,
    /// True while the built-in demo users are active (a warning is printed off loopback).
    pub demo_users: bool,
    pub verbose: bool,
    /// POP3 listeners (`--pop3`); none by default.
    pub pop3: Vec<SocketAddr>,
    /// POP3 inside TLS from the first byte (`--pop3s`, RFC 8314).
    pub pop3s: Vec<SocketAddr>,
    /// A POP3 session silent this long is closed (`--pop3-autologout`, RFC 1939 §3).
    pub pop3_autologout: Duration,
    /// Pause before answering a failed POP3 login.
    pub pop3_auth_delay: Duration,
    /// IMAP listeners (`--imap`); none by default.
    pub imap: Vec<SocketAddr>,
    /// IMAP inside TLS from the first byte (`--imaps`, RFC 8314).
    pub imaps: Vec<SocketAddr>,
    /// Nameserver for MX lookups (`--dns IP:PORT`); `None` asks the system's resolvers.
    pub dns: Option<SocketAddr>,
    /// Port of the next hop's SMTP server (`--mx-port`, 25 on the Internet).
    pub mx_port: u16,
    /// The outbound queue (`--spool`).
    pub spool_dir: PathBuf,
    /// Waits between delivery attempts (`--retry 1m,5m,30m,2h`); the last one repeats.
    pub retry: Vec<Duration>,
    /// Bounce what is still undelivered after this long (`--queue-lifetime`).
    pub queue_lifetime: Duration,
    /// Send all foreign mail to this `HOST:PORT` instead of looking up MX (`--smart-host`).
    pub smart_host: Option<String>,
    /// When the relay uses STARTTLS towards the next hop (`--relay-tls`).
    pub relay_tls: crate::relay::client::TlsPolicy,
    /// Delivery threads (`--relay-workers`).
    pub relay_workers: usize,
    /// The longest one conversation with a next hop may take (`--relay-deadline`).
    pub relay_deadline: Duration,
    /// `--trace`: print every line in and out, with state transitions, on stdout.
    pub trace: bool,
    /// `--explain`: end reply texts with the RFC section and the next expected command.
    pub explain: bool,
    /// `--fault RULE`: scripted refusals for client-writing labs.
    pub faults: Vec<crate::lab::fault::Rule>,
    /// `--web ADDR`: the live view in a browser.
    pub web: Option<SocketAddr>,
    /// `--web-show-mail`: raw messages on the web view even off loopback.
    pub web_show_mail: bool,
    /// Where every session reports for the web view; on only with `--web`. It lives here
    /// because every session already holds the configuration.
    pub live: crate::lab::live::Board,
    /// Networks that may send passwords without TLS (`--plaintext-auth-from`,
    /// `--allow-plaintext-auth`); by default this machine only.
    pub plaintext_auth_from: Vec<Cidr>,
    /// The password-failure budget per client address, shared by SMTP AUTH and POP3. It is
    /// state, not an option, but it lives as long as the configuration and is shared the same way.
    pub auth_budget: Arc<AuthBudget>,
}

/// This machine: the loopback networks, the only ones allowed passwords in the clear by default.
fn loopback_networks() -> Vec<Cidr> {
    vec![
        Cidr {
            network: IpAddr::from([127, 0, 0, 0]),
            prefix: 8,
        },
        Cidr {
            network: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A PEM certificate and a PEM PKCS#8 key.
    Files { cert: String, key: String },
    /// A throwaway certificate made at start for the host name.
    SelfSigned,
}

/// Local domains, users and lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub domains: Vec<String>,
    /// User name (lower case) to password.
    pub users: BTreeMap<String, String>,
    /// List name (lower case) to its members (user names).
    pub aliases: BTreeMap<String, Vec<String>>,
}

impl Directory {
    /// The built-in demo: users alice and bob, the list students, postmaster is alice.
    pub fn demo(hostname: &str) -> Directory {
        let users = ["alice", "bob"].map(|u| (u.to_string(), DEMO_PASSWORD.to_string()));
        let mut directory = Directory {
            domains: default_domains(hostname),
            users: users.into_iter().collect(),
            aliases: BTreeMap::new(),
        };
        directory
            .aliases
            .insert("students".into(), vec!["alice".into(), "bob".into()]);
        directory.ensure_postmaster();
        directory
    }

    /// RFC 5321 §4.5.1: every local domain must take mail for postmaster. Unless a file names
    /// one, postmaster is an alias of the first user.
    fn ensure_postmaster(&mut self) {
        if self.users.contains_key("postmaster") || self.aliases.contains_key("postmaster") {
            return;
        }
        if let Some(first) = self.users.keys().next().cloned() {
            self.aliases.insert("postmaster".into(), vec![first]);
        }
    }

    /// Is mail for this domain delivered here? (Domain names are not case sensitive, RFC 5321 §2.4.)
    pub fn is_local_domain(&self, domain: &Domain) -> bool {
        self.domains.iter().any(|own| domain.is(own))
    }

    /// The mailboxes a local name delivers to: a user, or the members of a list. Local parts
    /// are matched without regard to case, a choice RFC 5321 §2.4 leaves to the host.
    pub fn mailboxes(&self, name: &str) -> Option<Vec<String>> {
        let name = name.to_lowercase();
        if self.users.contains_key(&name) {
            return Some(vec![name]);
        }
        self.aliases.get(&name).cloned()
    }

    pub fn is_list(&self, name: &str) -> bool {
        self.aliases.contains_key(&name.to_lowercase())
    }
}

fn default_domains(hostname: &str) -> Vec<String> {
    let mut domains = vec!["localhost".to_string()];
    if !hostname.eq_ignore_ascii_case("localhost") {
        domains.push(hostname.to_string());
    }
    domains
}

/// The machine's name, for the greeting and Received headers.
fn system_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Default for Config {
    fn default() -> Config {
        let hostname = system_hostname();
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            submission: Vec::new(),
            smtps: Vec::new(),
            tls: None,
            directory: Directory::demo(&hostname),
            hostname,
            mail_dir: PathBuf::from("mail"),
            max_size: DEFAULT_MAX_SIZE,
            mailbox_size_limit: DEFAULT_MAILBOX_SIZE_LIMIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_errors: DEFAULT_MAX_ERRORS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            transcripts: None,
            relay_from: Vec::new(),
            demo_users: true,
            verbose: false,
            pop3: Vec::new(),
            pop3s: Vec::new(),
            pop3_auth_delay: DEFAULT_POP3_AUTH_DELAY,
            imap: Vec::new(),
            imaps: Vec::new(),
            pop3_autologout: crate::pop3::server::AUTOLOGOUT,
            dns: None,
            mx_port: DEFAULT_MX_PORT,
            spool_dir: PathBuf::from("spool"),
            retry: crate::relay::queue::Schedule::default().retry,
            queue_lifetime: crate::relay::queue::DEFAULT_QUEUE_LIFETIME,
            smart_host: None,
            relay_tls: crate::relay::client::TlsPolicy::default(),
            relay_workers: crate::relay::worker::DEFAULT_WORKERS,
            relay_deadline: crate::relay::worker::DEFAULT_DEADLINE,
            trace: false,
            explain: false,
            faults: Vec::new(),
            web: None,
            web_show_mail: false,
            live: crate::lab::live::Board::default(),
            plaintext_auth_from: loopback_networks(),
            auth_budget: Arc::new(AuthBudget::new(AuthPolicy::default())),
        }
    }
}

/// How an option takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    One,
    Many,
}

use Takes::{Many, Nothing, One};

/// The options of `smtplab [OPTIONS]` (design §3), in the order `--help` shows them.
#[rustfmt::skip]
const OPTIONS: &[(&str, &str, Takes, &str, &str)] = &[
    ("",  "lab",             Nothing, "",          "every listener, STARTTLS, transcripts (see below)"),
    ("l", "listen",          Many,    "ADDR",      "SMTP listener, port-25 role (default 127.0.0.1:2525)"),
    ("s", "submission",      Many,    "ADDR",      "submission listener: AUTH before MAIL (RFC 6409)"),
    ("",  "smtps",           Many,    "ADDR",      "submission inside TLS from the first byte (RFC 8314)"),
    ("",  "pop3",            Many,    "ADDR",      "POP3 listener for the same mailboxes"),
    ("",  "pop3s",           Many,    "ADDR",      "POP3 inside TLS from the first byte"),
    ("",  "imap",            Many,    "ADDR",      "IMAP listener for the same mailboxes"),
    ("",  "imaps",           Many,    "ADDR",      "IMAP inside TLS from the first byte"),
    ("",  "pop3-autologout", One,     "SECS",      "close a silent POP3 session (default 600, RFC 1939 §3)"),
    ("n", "hostname",        One,     "NAME",      "name in the greeting, EHLO and Received"),
    ("d", "domain",          Many,    "DOMAIN",    "domain delivered here (default localhost + hostname)"),
    ("m", "mail-dir",        One,     "DIR",       "mbox files live at DIR/<user> (default ./mail)"),
    ("u", "users",           One,     "FILE",      "user:password lines (default: demo users alice, bob)"),
    ("a", "aliases",         One,     "FILE",      "'list: user, user' lines (default: students)"),
    ("",  "tls-cert",        One,     "FILE",      "PEM certificate; enables STARTTLS (with --tls-key)"),
    ("",  "tls-key",         One,     "FILE",      "PEM PKCS#8 private key"),
    ("",  "tls-self-signed", Nothing, "",          "make a throwaway certificate at start"),
    ("",  "max-size",        One,     "BYTES",     "SIZE limit (default 10485760)"),
    ("",  "mailbox-size-limit", One,  "BYTES",     "largest an mbox may grow, 0 for none (default 52428800)"),
    ("",  "max-connections", One,     "N",         "SMTP, POP3 and IMAP clients beyond N are turned away (default 100)"),
    ("",  "max-connections-per-ip", One, "N",      "the same, per client address (default 32)"),
    ("",  "max-recipients",  One,     "N",         "recipients per message (default 100)"),
    ("",  "max-errors",      One,     "N",         "errors before 421 and close (default 20)"),
    ("",  "timeout",         One,     "SECS",      "wait this long for a command (default 300)"),
    ("",  "relay-from",      Many,    "CIDR",      "network that may relay without AUTH"),
    ("",  "smart-host",      One,     "HOST:PORT", "send all foreign mail there, no MX lookup"),
    ("",  "dns",             One,     "IP:PORT",   "nameserver for MX lookups (default: system)"),
    ("",  "mx-port",         One,     "PORT",      "port of the next hop (default 25)"),
    ("",  "spool",           One,     "DIR",       "outbound queue (default ./spool)"),
    ("",  "retry",           One,     "LIST",      "waits between attempts, e.g. 1m,5m,30m,2h"),
    ("",  "queue-lifetime",  One,     "DUR",       "bounce after this long (default 5d)"),
    ("",  "relay-tls",       One,     "LEVEL",     "STARTTLS to the next hop: none, may, encrypt (default may)"),
    ("",  "relay-workers",   One,     "N",         "delivery threads (default 4)"),
    ("",  "relay-deadline",  One,     "DUR",       "longest conversation with a next hop (default 15m)"),
    ("",  "plaintext-auth-from", Many, "CIDR",     "may log in without TLS (default: this machine)"),
    ("",  "allow-plaintext-auth", Nothing, "",     "any address may log in without TLS (a LAN lab)"),
    ("",  "auth-budget",     One,     "N",         "failed logins per address before a lockout (10)"),
    ("",  "auth-delay",      One,     "SECS",      "first wait after 3 failed logins; doubles (1)"),
    ("",  "transcripts",     One,     "DIR",       "record every session as a transcript"),
    ("",  "trace",           Nothing, "",          "print every C:/S: line with its state transition"),
    ("",  "explain",         Nothing, "",          "end replies with the RFC section and next command"),
    ("",  "fault",           Many,    "RULE",      "scripted reply, e.g. rcpt:3=452 (repeatable)"),
    ("",  "web",             One,     "ADDR",      "live view in a browser, e.g. 127.0.0.1:8025"),
    ("",  "web-show-mail",   Nothing, "",          "open raw messages on the web view off loopback too"),
    ("v", "verbose",         Nothing, "",          "log every command (or set RUST_LOG)"),
    ("h", "help",            Nothing, "",          "print this help"),
    ("V", "version",         Nothing, "",          "print the version"),
];

pub fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    for &(short, long, takes, hint, help) in OPTIONS {
        match takes {
            Nothing => o.optflag(short, long, help),
            One => o.optopt(short, long, help, hint),
            Many => o.optmulti(short, long, help, hint),
        };
    }
    o
}

impl Config {
    /// Does this address literal name this server (`[127.0.0.2]`, `[0.0.0.0]`,
    /// `[IPv6:::ffff:127.0.0.2]`, ...)? Mail to it is delivered here or refused at RCPT: relayed,
    /// it would come straight back (RFC 5321 §5.1 says the same of an MX list that names us).
    pub fn names_this_host(&self, ip: IpAddr) -> bool {
        let me = crate::relay::dns::Me {
            hostname: &self.hostname,
            listen: &self.listen,
            mx_port: self.mx_port,
        };
        me.reached_at(ip)
    }
}

impl Config {
    /// Build the configuration from parsed options; an error is one plain sentence.
    pub fn from_matches(m: &getopts::Matches) -> Result<Config, String> {
        let mut config = Config::default();
        if let Some(name) = m.opt_str("hostname") {
            config.hostname = name;
            config.directory.domains = default_domains(&config.hostname);
        }
        if m.opt_present("listen") {
            config.listen = m
                .opt_strs("listen")
                .iter()
                .map(|a| parse_addr(a))
                .collect::<Result<_, _>>()?;
        }
        config.submission = addresses(m, "submission")?;
        config.smtps = addresses(m, "smtps")?;
        config.tls = tls_source(m)?;
        if m.opt_present("lab") && config.tls.is_none() {
            config.tls = Some(TlsSource::SelfSigned);
        }
        if !config.smtps.is_empty() && config.tls.is_none() {
            return Err("--smtps needs --tls-cert and --tls-key, or --tls-self-signed.".into());
        }
        if m.opt_present("domain") {
            config.directory.domains = m.opt_strs("domain");
        }
        if let Some(dir) = m.opt_str("mail-dir") {
            config.mail_dir = PathBuf::from(dir);
        }
        if let Some(file) = m.opt_str("users") {
            config.directory.users = read_users(&file)?;
            config.directory.aliases.clear();
            config.demo_users = false;
        }
        if let Some(file) = m.opt_str("aliases") {
            config.directory.aliases = read_aliases(&file)?;
        }
        config.directory.ensure_postmaster();
        config.read_limits(m)?;
        config.transcripts = m.opt_str("transcripts").map(PathBuf::from);
        config.relay_from = m
            .opt_strs("relay-from")
            .iter()
            .map(|c| Cidr::parse(c))
            .collect::<Result<_, _>>()?;
        config.read_auth_options(m)?;
        config.verbose = m.opt_present("verbose");
        config.pop3s = addresses(m, "pop3s")?;
        config.imap = addresses(m, "imap")?;
        config.imaps = addresses(m, "imaps")?;
        config.pop3 = m
            .opt_strs("pop3")
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<_, _>>()?;
        config.read_relay_options(m)?;
        if m.opt_present("lab") {
            config.open_the_lab(LAB_PORTS);
        }
        config.trace = m.opt_present("trace");
        config.explain = m.opt_present("explain");
        config.faults = m
            .opt_strs("fault")
            .iter()
            .map(|rule| crate::lab::fault::Rule::parse(rule))
            .collect::<Result<_, _>>()?;
        config.read_web_options(m)?;
        Ok(config)
    }

    /// `--web ADDR` (or a web address set before) turns the live board on; `--web-show-mail`
    /// shows mail on it off loopback too.
    fn read_web_options(&mut self, m: &getopts::Matches) -> Result<(), String> {
        self.web_show_mail = m.opt_present("web-show-mail");
        if let Some(addr) = m.opt_str("web") {
            self.web = Some(parse_addr(&addr).map_err(|e| format!("--web: {e}"))?);
        }
        if let Some(addr) = self.web {
            let shows_mail = self.web_show_mail || addr.ip().is_loopback();
            self.live = crate::lab::live::Board::on(shows_mail);
        }
        Ok(())
    }
}

impl Config {
    /// `--lab`: every listener an option did not give is opened on the lab's port, at the
    /// address of the first `--listen` (so `--listen 0.0.0.0:2525` serves a room on all five),
    /// and sessions are recorded in ./transcripts-mine unless `--transcripts` names a place.
    fn open_the_lab(&mut self, ports: LabPorts) {
        let ip = self
            .listen
            .first()
            .map_or(IpAddr::from([127, 0, 0, 1]), SocketAddr::ip);
        for (listeners, port) in [
            (&mut self.submission, ports.submission),
            (&mut self.smtps, ports.smtps),
            (&mut self.pop3, ports.pop3),
            (&mut self.pop3s, ports.pop3s),
            (&mut self.imap, ports.imap),
            (&mut self.imaps, ports.imaps),
        ] {
            if listeners.is_empty() {
                listeners.push(SocketAddr::new(ip, port));
            }
        }
        if self.transcripts.is_none() {
            self.transcripts = Some(PathBuf::from(LAB_TRANSCRIPTS));
        }
        // `--web` read later still moves it.
        self.web = Some(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), ports.web));
    }

    // ANCHOR: read_limits
    /// The numeric limits. Each is checked here, at start, so a bad value is one sentence and
    /// exit status 2, never a panic in a session thread later.
    fn read_limits(&mut self, m: &getopts::Matches) -> Result<(), String> {
        self.max_size = number(m, "max-size", self.max_size)?;
        self.mailbox_size_limit = number(m, "mailbox-size-limit", self.mailbox_size_limit)?;
        self.max_connections = positive(m, "max-connections", self.max_connections)?;
        self.max_connections_per_ip =
            positive(m, "max-connections-per-ip", self.max_connections_per_ip)?;
        self.max_recipients = positive(m, "max-recipients", self.max_recipients)?;
        self.max_errors = positive(m, "max-errors", self.max_errors)?;
        self.idle_timeout = seconds(m, "timeout", self.idle_timeout)?;
        self.pop3_autologout = seconds(m, "pop3-autologout", self.pop3_autologout)?;
        Ok(())
    }
    // ANCHOR_END: read_limits

    /// Who may log in without TLS, and the password-failure budget.
    fn read_auth_options(&mut self, m: &getopts::Matches) -> Result<(), String> {
        if m.opt_present("plaintext-auth-from") {
            self.plaintext_auth_from = m
                .opt_strs("plaintext-auth-from")
                .iter()
                .map(|c| {
                    Cidr::parse(c).map_err(|_| {
                        format!(
                            "--plaintext-auth-from needs a network like 192.168.1.0/24, not '{c}'."
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if m.opt_present("allow-plaintext-auth") {
            self.plaintext_auth_from.extend([
                Cidr {
                    network: IpAddr::from([0, 0, 0, 0]),
                    prefix: 0,
                },
                Cidr {
                    network: IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
                    prefix: 0,
                },
            ]);
        }
        let defaults = AuthPolicy::default();
        let failures = number(m, "auth-budget", defaults.failures)?;
        let delay = number(m, "auth-delay", defaults.first_wait.as_secs_f64())?;
        let first_wait = Duration::try_from_secs_f64(delay)
            .ok()
            .filter(|wait| *wait <= Duration::from_secs(60))
            .ok_or("--auth-delay needs a number of seconds from 0 to 60.")?;
        if failures == 0 {
            return Err("--auth-budget needs at least 1 failed login.".into());
        }
        self.auth_budget = Arc::new(AuthBudget::new(AuthPolicy {
            failures,
            first_wait,
            ..defaults
        }));
        Ok(())
    }

    /// The networks beyond this machine from which passwords may arrive in the clear: the
    /// start-up banner warns about each.
    pub fn plaintext_networks_beyond_loopback(&self) -> Vec<Cidr> {
        let loopback = loopback_networks();
        self.plaintext_auth_from
            .iter()
            .filter(|net| {
                !loopback
                    .iter()
                    .any(|lo| lo.prefix <= net.prefix && lo.contains(net.network))
            })
            .copied()
            .collect()
    }
}

impl Config {
    /// The options of the outbound queue and relay (`queue.rs`, `relay.rs`, `dns.rs`).
    fn read_relay_options(&mut self, m: &getopts::Matches) -> Result<(), String> {
        if let Some(addr) = m.opt_str("dns") {
            self.dns = Some(parse_addr(&addr).map_err(|e| format!("--dns: {e}"))?);
        }
        self.mx_port = positive(m, "mx-port", self.mx_port)?;
        if let Some(dir) = m.opt_str("spool") {
            self.spool_dir = PathBuf::from(dir);
        }
        if let Some(list) = m.opt_str("retry") {
            self.retry = crate::relay::queue::parse_retry(&list)?;
            queue_duration(
                "retry",
                self.retry.iter().copied().max().unwrap_or_default(),
            )?;
        }
        if let Some(text) = m.opt_str("queue-lifetime") {
            self.queue_lifetime = crate::relay::queue::parse_duration(&text)
                .map_err(|e| format!("--queue-lifetime: {e}"))?;
            queue_duration("queue-lifetime", self.queue_lifetime)?;
        }
        if let Some(host) = m.opt_str("smart-host") {
            if !host.contains(':') {
                return Err(format!("--smart-host needs HOST:PORT, not '{host}'."));
            }
            self.smart_host = Some(host);
        }
        if let Some(level) = m.opt_str("relay-tls") {
            self.relay_tls = crate::relay::client::TlsPolicy::parse(&level)?;
        }
        self.relay_workers = number(m, "relay-workers", self.relay_workers)?.max(1);
        if let Some(text) = m.opt_str("relay-deadline") {
            self.relay_deadline = crate::relay::queue::parse_duration(&text)
                .map_err(|e| format!("--relay-deadline: {e}"))?;
        }
        Ok(())
    }
}

/// A network such as `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u32,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("--relay-from needs a network like 127.0.0.0/8, not '{text}'.");
        let (ip, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = ip.parse().map_err(|_| bad())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            bits
        } else {
            prefix.parse().map_err(|_| bad())?
        };
        if prefix > bits {
            return Err(bad());
        }
        Ok(Cidr { network, prefix })
    }

    // ANCHOR: cidr_contains
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(net.into(), ip.into(), self.prefix, 128)
            }
            _ => false,
        }
    }
    // ANCHOR_END: cidr_contains
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn same_prefix(a: u128, b: u128, prefix: u32, bits: u32) -> bool {
    let shift = bits - prefix;
    shift >= 128 || (a >> shift) == (b >> shift)
}

fn addresses(m: &getopts::Matches, name: &str) -> Result<Vec<SocketAddr>, String> {
    m.opt_strs(name).iter().map(|a| parse_addr(a)).collect()
}

fn tls_source(m: &getopts::Matches) -> Result<Option<TlsSource>, String> {
    match (
        m.opt_str("tls-cert"),
        m.opt_str("tls-key"),
        m.opt_present("tls-self-signed"),
    ) {
        (Some(cert), Some(key), false) => Ok(Some(TlsSource::Files { cert, key })),
        (None, None, true) => Ok(Some(TlsSource::SelfSigned)),
        (None, None, false) => Ok(None),
        _ => Err("Use --tls-cert with --tls-key, or --tls-self-signed alone.".into()),
    }
}

pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not an address like 127.0.0.1:2525 or [::1]:2525."))
}

fn number<T: std::str::FromStr>(m: &getopts::Matches, name: &str, default: T) -> Result<T, String> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("--{name} needs a number, not '{text}'.")),
    }
}

/// A timeout in seconds, from `MIN_TIMEOUT_SECS` to `MAX_TIMEOUT_SECS`.
fn seconds(m: &getopts::Matches, name: &str, default: Duration) -> Result<Duration, String> {
    let seconds = number(m, name, default.as_secs_f64())?;
    if !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&seconds) {
        return Err(format!(
            "--{name} needs a number of seconds from {MIN_TIMEOUT_SECS} to {MAX_TIMEOUT_SECS} (a day), not '{seconds}'."
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A count that must be at least 1: `--max-connections 0` would refuse every client.
fn positive<T>(m: &getopts::Matches, name: &str, default: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    let value = number(m, name, default)?;
    if value < T::from(1) {
        return Err(format!("--{name} needs a whole number of at least 1."));
    }
    Ok(value)
}

/// `--retry` and `--queue-lifetime` stay below `MAX_QUEUE_DURATION`, so times computed from
/// them cannot overflow.
fn queue_duration(name: &str, duration: Duration) -> Result<(), String> {
    if duration > MAX_QUEUE_DURATION {
        return Err(format!("--{name} allows at most 365d."));
    }
    Ok(())
}

/// `user:password` per line; `#` starts a comment.
fn read_users(file: &str) -> Result<BTreeMap<String, String>, String> {
    let text =
        fs::read_to_string(file).map_err(|e| format!("Cannot read users file {file}: {e}."))?;
    content_lines(&text)
        .map(|line| match line.split_once(':') {
            Some((user, password)) if !user.trim().is_empty() => {
                Ok((user.trim().to_lowercase(), password.to_string()))
            }
            _ => Err(format!(
                "Users file {file}: '{line}' is not 'user:password'."
            )),
        })
        .collect()
}

/// `list: user, user` per line; `#` starts a comment.
fn read_aliases(file: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let text =
        fs::read_to_string(file).map_err(|e| format!("Cannot read aliases file {file}: {e}."))?;
    content_lines(&text)
        .map(|line| match line.split_once(':') {
            Some((list, members)) if !list.trim().is_empty() => Ok((
                list.trim().to_lowercase(),
                members
                    .split(',')
                    .map(|m| m.trim().to_lowercase())
                    .filter(|m| !m.is_empty())
                    .collect(),
            )),
            _ => Err(format!(
                "Aliases file {file}: '{line}' is not 'list: user, user'."
            )),
        })
        .collect()
}

fn content_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_shows_on_the_web_view_only_on_loopback_unless_asked() {
        let shows = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let matches = options().parse(&args).expect("parse");
            Config::from_matches(&matches)
                .expect("config")
                .live
                .shows_mail()
        };
        assert!(shows(&["--web", "127.0.0.1:8025"]));
        assert!(shows(&["--web", "[::1]:8025"]));
        assert!(!shows(&["--web", "0.0.0.0:8025"]));
        assert!(shows(&["--web", "0.0.0.0:8025", "--web-show-mail"]));
        assert!(!shows(&[]), "no --web, no board");
    }

    #[test]
    fn defaults_make_the_first_minute_work() {
        let config = Config::default();
        assert_eq!(config.listen[0].to_string(), "127.0.0.1:2525");
        assert!(
            config.idle_timeout >= Duration::from_secs(300),
            "RFC 5321 §4.5.3.2.7"
        );
        assert_eq!(
            config.directory.mailboxes("students"),
            Some(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(
            config.directory.mailboxes("POSTMASTER"),
            Some(vec!["alice".into()])
        );
        assert_eq!(
            config.directory.mailboxes("Alice"),
            Some(vec!["alice".into()])
        );
        assert!(config
            .directory
            .is_local_domain(&Domain::Name("LOCALHOST".into())));
    }

    #[test]
    fn lab_opens_every_listener_and_each_can_still_move() {
        let parse = |args: &[&str]| Config::from_matches(&options().parse(args).unwrap()).unwrap();
        let lab = parse(&["--lab"]);
        let ports =
            |addrs: &[SocketAddr]| addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>();
        assert_eq!(ports(&lab.listen), ["127.0.0.1:2525"]);
        assert_eq!(ports(&lab.submission), ["127.0.0.1:2587"]);
        assert_eq!(ports(&lab.smtps), ["127.0.0.1:2465"]);
        assert_eq!(ports(&lab.pop3), ["127.0.0.1:2110"]);
        assert_eq!(ports(&lab.pop3s), ["127.0.0.1:2995"]);
        assert_eq!(ports(&lab.imap), ["127.0.0.1:2143"]);
        assert_eq!(ports(&lab.imaps), ["127.0.0.1:2993"]);
        assert_eq!(
            lab.web.map(|a| a.to_string()),
            Some("127.0.0.1:8025".into())
        );
        assert_eq!(lab.tls, Some(TlsSource::SelfSigned));
        assert_eq!(lab.transcripts, Some(PathBuf::from("transcripts-mine")));
        assert!(lab.demo_users);

        let room = parse(&[
            "--lab",
            "--listen",
            "0.0.0.0:2525",
            "--pop3",
            "0.0.0.0:3110",
        ]);
        assert_eq!(ports(&room.submission), ["0.0.0.0:2587"]);
        assert_eq!(ports(&room.pop3), ["0.0.0.0:3110"]);
        assert_eq!(ports(&room.pop3s), ["0.0.0.0:2995"]);
        assert_eq!(ports(&room.imap), ["0.0.0.0:2143"]);
        // The live view is the teacher's own screen: loopback even when the room is served.
        assert_eq!(
            room.web.map(|a| a.to_string()),
            Some("127.0.0.1:8025".into())
        );
        let recorded = parse(&["--lab", "--transcripts", "elsewhere"]);
        assert_eq!(recorded.transcripts, Some(PathBuf::from("elsewhere")));
        assert!(
            parse(&[]).submission.is_empty(),
            "without --lab nothing more opens"
        );
    }

    #[test]
    fn options_override_defaults() {
        let args = [
            "--listen",
            "127.0.0.2:2600",
            "-n",
            "teach.test",
            "-d",
            "teach.test",
            "--max-size",
            "1000",
        ];
        let m = options().parse(args).unwrap();
        let config = Config::from_matches(&m).unwrap();
        assert_eq!(config.listen[0].to_string(), "127.0.0.2:2600");
        assert_eq!(config.directory.domains, vec!["teach.test".to_string()]);
        assert_eq!(config.max_size, 1000);
        let cidr = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(cidr.contains("127.9.9.9".parse().unwrap()));
        assert!(!cidr.contains("128.0.0.1".parse().unwrap()));
        assert!(!cidr.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("192.0.2.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        let bad = options().parse(["--max-size", "lots"]).unwrap();
        assert!(Config::from_matches(&bad)
            .unwrap_err()
            .contains("--max-size"));
    }
}

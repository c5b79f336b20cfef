//! MX lookup: which hosts take mail for a domain, and in which order to try them.
//!
//! Interface:
//! - `Resolver::new(nameserver)` asks the system's nameservers, or the one `--dns IP:PORT` names;
//!   it implements `Dns`, whose `mx` and `addresses` are plain blocking calls.
//! - `route(dns, domain, me, rng, trace)` gives the hosts to try (`Route`), best first, or why
//!   there are none (`RouteError`, permanent or temporary), and writes each step to `trace`.
//! - `addresses_of(dns, host, trace)`: a host's A and AAAA addresses.
//! - `Rng::seeded(seed)` / `Rng::from_clock()` is the random source for equal preferences.
//! - `mx_main(args)` is `smtplab mx DOMAIN [--dns ADDR]`, the lookup printed step by step.
//!
//! Why a tokio runtime hides in here: the DNS library (hickory-resolver, the project once called
//! trust-dns) is asynchronous only since 0.25. The older lines that still had a blocking API
//! (trust-dns-resolver 0.23, hickory-resolver 0.24) carry security advisories that were never
//! fixed on those lines. So `Resolver` owns a small current-thread runtime and wraps every query in
//! `block_on`: the caller sees ordinary blocking functions, and the rest of smtplab stays the
//! synchronous std code the lessons are about. Nothing async leaves this file.
//!
//! Two traps on the way (both handled in `route`): a domain that does not exist (NXDOMAIN, a
//! permanent error) is not the same as a domain that exists but has no MX records (then the
//! domain's own A/AAAA records are an implicit MX); and a host has IPv4 *and* IPv6 addresses, so
//! both A and AAAA must be asked for.
//!
//! Standards: RFC 5321 §5.1, §4.5.4.1, RFC 7505 §3, §4.1, RFC 3463 §3.2

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::visible::sanitize;

/// How long one DNS query may take before it counts as a temporary failure. A relay must queue
/// and retry on a temporary error (RFC 5321 §5.1), so a short wait loses nothing.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of each query (the first one included) before giving up.
const DNS_ATTEMPTS: usize = 2;

/// One MX record: `two.test. MX 10 mx.two.test.`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    /// Lower is preferred (RFC 5321 §5.1).
    pub preference: u16,
    /// The host name, without the final dot; `.` is the root, the "null MX" of RFC 7505.
    pub exchange: String,
}

impl Mx {
    /// RFC 7505 §3: an MX whose exchange is the root `.` says "this domain takes no mail".
    fn is_null(&self) -> bool {
        self.exchange == "."
    }
}

/// What one DNS query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Records(Vec<T>),
    /// The name exists, but has no records of this type (NOERROR, empty answer).
    NoRecords,
    /// The name does not exist at all (NXDOMAIN): a permanent answer.
    NoSuchDomain,
}

/// A query that got no answer: a timeout, SERVFAIL, a network error. Try again later.
type TemporaryError = String;

/// The two address families a host may have; both are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

/// The DNS questions a relay asks. `Resolver` asks a real nameserver; unit tests use a table.
pub trait Dns {
    fn mx(&self, domain: &str) -> Result<Answer<Mx>, TemporaryError>;
    fn addresses(&self, host: &str, family: Family) -> Result<Answer<IpAddr>, TemporaryError>;
}

/// One host to try, with its addresses in the order the resolver gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

/// The hosts to try for a domain, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub hops: Vec<Hop>,
}

/// Why no host can be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Bounce: the reply code, the RFC 3463 status and the reason.
    Permanent {
        code: u16,
        status: &'static str,
        text: String,
    },
    /// Keep the message and try again later.
    Temporary { text: String },
}

/// How this server knows itself, to cut an MX list that points back at it (RFC 5321 §5.1).
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub hostname: &'a str,
    /// The addresses the server listens on.
    pub listen: &'a [SocketAddr],
    /// The port a hop is reached on (`--mx-port`).
    pub mx_port: u16,
}

impl Me<'_> {
    fn is_me(&self, host: &str, addrs: &[IpAddr]) -> bool {
        host.eq_ignore_ascii_case(self.hostname) || addrs.iter().any(|&ip| self.reached_at(ip))
    }

    // ANCHOR: reached_at
    /// Would a connection to `ip` on the next hop's port reach this server? Every form counts:
    /// the address it listens on, `0.0.0.0` (which connects to this machine), an IPv4-mapped
    /// IPv6 address (`::ffff:127.0.0.1`), and, for a server listening on every address, any
    /// address of this machine.
    pub fn reached_at(&self, ip: IpAddr) -> bool {
        let target = reached_address(ip);
        self.listen.iter().any(|own| {
            let own_ip = own.ip().to_canonical();
            own.port() == self.mx_port
                && (own_ip == target || (own_ip.is_unspecified() && is_local_address(target)))
        })
    }
    // ANCHOR_END: reached_at
}

/// The address a connection to `ip` really goes to: `0.0.0.0` and `::` mean this machine
/// (Linux connects them to the loopback address), and `::ffff:a.b.c.d` is `a.b.c.d`.
fn reached_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// Is `ip` an address of this machine? A socket can be bound only to a local address, so
/// binding a throwaway UDP socket to it answers without reading the interface list.
fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

// ANCHOR: rng
/// A small random source (SplitMix64): enough to spread load over equal MX preferences, and
/// seedable, so a test can fix the order.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from the clock: every relay run shuffles differently.
    pub fn from_clock() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(nanos ^ u64::from(std::process::id()) << 32)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
// ANCHOR_END: rng

// ANCHOR: route
/// Addresses tried per domain and attempt (Postfix `smtp_mx_address_limit`; RFC 5321 §5.1
/// asks for at least two): hosts after the first this many addresses are not even looked up.
pub const MAX_ADDRESSES: usize = 5;

/// RFC 5321 §5.1, step by step: MX records (or the implicit MX), sorted by preference and
/// shuffled among equals, each host's A and AAAA addresses, and the list cut where it names us.
pub fn route(
    dns: &dyn Dns,
    domain: &str,
    me: &Me,
    rng: &mut Rng,
    trace: &mut Vec<String>,
) -> Result<Route, RouteError> {
    let records = mx_records(dns, domain, trace)?;
    let ordered = order_by_preference(records, rng);
    trace.push(format!(
        "order (preference, equal preferences shuffled): {}",
        ordered
            .iter()
            .map(|mx| format!("{} {}", mx.preference, mx.exchange))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut hops = Vec::new();
    let mut temporary = None;
    let mut found = 0;
    for mx in &ordered {
        if found >= MAX_ADDRESSES {
            trace.push(format!(
                "{MAX_ADDRESSES} addresses found: {} and later hosts are not looked up",
                mx.exchange
            ));
            break;
        }
        match addresses_of(dns, &mx.exchange, trace) {
            Ok(addrs) => {
                found += addrs.len();
                hops.push(Hop {
                    host: mx.exchange.clone(),
                    preference: mx.preference,
                    addrs,
                });
            }
            Err(error) => temporary = Some(error),
        }
    }
    let hops = cut_at_self(hops, me, trace)?;
    let usable: Vec<Hop> = hops.into_iter().filter(|h| !h.addrs.is_empty()).collect();
    if usable.is_empty() {
        return Err(match temporary {
            Some(text) => RouteError::Temporary { text },
            // "If MX records are present, but none of them are usable, or the implicit MX is
            // unusable, this situation MUST be reported as an error." (RFC 5321 §5.1)
            None => RouteError::Permanent {
                code: 550,
                status: "5.4.4",
                text: format!("No address found for any mail host of {domain}"),
            },
        });
    }
    for hop in &usable {
        trace.push(format!(
            "would try {} at {}",
            hop.host,
            join_ips(&hop.addrs)
        ));
    }
    Ok(Route { hops: usable })
}
// ANCHOR_END: route

/// The MX records of `domain`, the implicit MX if it has none, or why there are none to use.
fn mx_records(dns: &dyn Dns, domain: &str, trace: &mut Vec<String>) -> Result<Vec<Mx>, RouteError> {
    trace.push(format!("MX query for {domain}"));
    match dns.mx(domain) {
        Err(error) => {
            trace.push(format!("  temporary failure: {error}"));
            Err(RouteError::Temporary {
                text: format!("MX lookup for {domain} failed: {error}"),
            })
        }
        Ok(Answer::NoSuchDomain) => {
            trace.push("  NXDOMAIN: the domain does not exist (permanent)".into());
            Err(RouteError::Permanent {
                code: 550,
                status: "5.1.2",
                text: format!("Domain {domain} does not exist (DNS NXDOMAIN)"),
            })
        }
        Ok(Answer::NoRecords) => {
            trace.push(format!(
                "  no MX records, but the domain exists: {domain} itself is the implicit MX, preference 0"
            ));
            Ok(vec![Mx {
                preference: 0,
                exchange: domain.to_string(),
            }])
        }
        Ok(Answer::Records(records)) => {
            for mx in &records {
                trace.push(format!("  {domain} MX {} {}", mx.preference, mx.exchange));
            }
            without_null_mx(domain, records, trace)
        }
    }
}

/// RFC 7505 §3: a single MX `0 .` means the domain accepts no mail; §4.1: bounce at once,
/// 556 5.1.10, without trying the domain's A/AAAA records.
/// A root exchange beside real MX records is a broken zone; the real records are used.
fn without_null_mx(
    domain: &str,
    records: Vec<Mx>,
    trace: &mut Vec<String>,
) -> Result<Vec<Mx>, RouteError> {
    let real: Vec<Mx> = records.into_iter().filter(|mx| !mx.is_null()).collect();
    if real.is_empty() {
        trace.push("  null MX (RFC 7505): this domain accepts no mail (permanent)".into());
        return Err(RouteError::Permanent {
            code: 556,
            status: "5.1.10",
            text: format!("Domain {domain} accepts no mail (null MX, RFC 7505)"),
        });
    }
    Ok(real)
}

// ANCHOR: order
/// Sort by preference, lowest first; shuffle each run of equal preferences, because "the
/// sender-SMTP MUST randomize them to spread the load" (RFC 5321 §5.1).
fn order_by_preference(mut records: Vec<Mx>, rng: &mut Rng) -> Vec<Mx> {
    records.sort_by_key(|mx| mx.preference);
    let mut start = 0;
    while start < records.len() {
        let preference = records[start].preference;
        let end = start
            + records[start..]
                .iter()
                .take_while(|mx| mx.preference == preference)
                .count();
        shuffle(&mut records[start..end], rng);
        start = end;
    }
    records
}
// ANCHOR_END: order

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// A and AAAA records of one host (an MX host, a smart host). An empty list means the host has no address (skip it);
/// an error means a query failed for now.
pub fn addresses_of(
    dns: &dyn Dns,
    host: &str,
    trace: &mut Vec<String>,
) -> Result<Vec<IpAddr>, TemporaryError> {
    let mut addrs = Vec::new();
    for (family, name) in [(Family::V4, "A"), (Family::V6, "AAAA")] {
        match dns.addresses(host, family) {
            Ok(Answer::Records(found)) => {
                trace.push(format!("  {host} {name} {}", join_ips(&found)));
                addrs.extend(found);
            }
            Ok(Answer::NoRecords) => trace.push(format!("  {host} {name}: none")),
            Ok(Answer::NoSuchDomain) => trace.push(format!("  {host} {name}: no such host")),
            Err(error) => {
                trace.push(format!("  {host} {name}: temporary failure: {error}"));
                return Err(format!("address lookup for {host} failed: {error}"));
            }
        }
    }
    Ok(addrs)
}

/// RFC 5321 §5.1: "If a matching record is found, all records at that preference level and
/// higher-numbered ones MUST be discarded ... If there are no records left at that point, it is
/// an error condition, and the message MUST be returned as undeliverable."
fn cut_at_self(hops: Vec<Hop>, me: &Me, trace: &mut Vec<String>) -> Result<Vec<Hop>, RouteError> {
    let Some(own) = hops.iter().find(|h| me.is_me(&h.host, &h.addrs)) else {
        return Ok(hops);
    };
    let cut = own.preference;
    trace.push(format!(
        "{} is this server: dropping preference {cut} and higher",
        own.host
    ));
    let kept: Vec<Hop> = hops.into_iter().filter(|h| h.preference < cut).collect();
    if kept.is_empty() {
        return Err(RouteError::Permanent {
            code: 554,
            status: "5.4.6",
            text: "Mail loops back to this server (it is the best MX)".into(),
        });
    }
    Ok(kept)
}

fn join_ips(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ANCHOR: resolver
/// A real resolver behind blocking calls: a hickory `TokioResolver` and the small
/// current-thread runtime it runs on. Create one per thread that looks things up.
pub struct Resolver {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
}

impl Resolver {
    /// The system's nameservers (`/etc/resolv.conf`), or only `nameserver` if given (`--dns`).
    pub fn new(nameserver: Option<SocketAddr>) -> Result<Resolver, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("Cannot start the DNS runtime: {e}."))?;
        let mut builder = match nameserver {
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("Cannot read the system's DNS configuration: {e}."))?,
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![server]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
        };
        let options = builder.options_mut();
        options.timeout = DNS_TIMEOUT;
        options.attempts = DNS_ATTEMPTS;
        if nameserver.is_some() {
            // A chosen nameserver (a lab's) is the only truth: /etc/hosts is not asked.
            options.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = {
            let _inside = runtime.enter();
            builder
                .build()
                .map_err(|e| format!("Cannot set up the DNS resolver: {e}."))?
        };
        Ok(Resolver { runtime, resolver })
    }

    /// One query, waited for. The name gets a final dot: a relay must not try search domains
    /// (RFC 5321 §5.1: "intermediate (relay) SMTP servers MUST NOT make them").
    fn query(&self, name: &str, kind: RecordType) -> Result<Answer<RData>, TemporaryError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.runtime.block_on(self.resolver.lookup(fqdn, kind)) {
            Ok(lookup) => {
                let found: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == kind)
                    .map(|r| r.data.clone())
                    .collect();
                Ok(if found.is_empty() {
                    Answer::NoRecords
                } else {
                    Answer::Records(found)
                })
            }
            Err(error) if error.is_nx_domain() => Ok(Answer::NoSuchDomain),
            Err(error) if error.is_no_records_found() => Ok(Answer::NoRecords),
            // A timeout, SERVFAIL, REFUSED, a network error: none of them is an answer.
            Err(error) => Err(error.to_string()),
        }
    }
}
// ANCHOR_END: resolver

impl Dns for Resolver {
    fn mx(&self, domain: &str) -> Result<Answer<Mx>, TemporaryError> {
        Ok(map_answer(self.query(domain, RecordType::MX)?, |data| {
            let RData::MX(mx) = data else { return None };
            let name = mx.exchange.to_ascii();
            let exchange = match name.trim_end_matches('.') {
                "" => ".".to_string(),
                host => host.to_string(),
            };
            Some(Mx {
                preference: mx.preference,
                exchange,
            })
        }))
    }

    fn addresses(&self, host: &str, family: Family) -> Result<Answer<IpAddr>, TemporaryError> {
        let kind = match family {
            Family::V4 => RecordType::A,
            Family::V6 => RecordType::AAAA,
        };
        Ok(map_answer(self.query(host, kind)?, |data| match data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        }))
    }
}

fn map_answer<T>(answer: Answer<RData>, f: impl Fn(RData) -> Option<T>) -> Answer<T> {
    match answer {
        Answer::Records(data) => {
            let mapped: Vec<T> = data.into_iter().filter_map(f).collect();
            if mapped.is_empty() {
                Answer::NoRecords
            } else {
                Answer::Records(mapped)
            }
        }
        Answer::NoRecords => Answer::NoRecords,
        Answer::NoSuchDomain => Answer::NoSuchDomain,
    }
}

const MX_USAGE: &str = "Usage: smtplab mx DOMAIN [--dns IP:PORT] [--hostname NAME]

Shows how a relay finds the mail hosts of DOMAIN: the MX records, their order, the implicit MX
when there are none, the addresses of each host, and the hosts it would try (RFC 5321 §5.1).";

/// `smtplab mx DOMAIN [--dns ADDR]`: the relay's lookup, printed step by step.
pub fn mx_main(args: &[String]) -> i32 {
    let mut options = getopts::Options::new();
    options.optopt("", "dns", "nameserver to ask (ip:port)", "ADDR");
    options.optopt(
        "n",
        "hostname",
        "this server's name (cut from the list)",
        "NAME",
    );
    options.optflag("h", "help", "print this help");
    let matches = match options.parse(args) {
        Ok(m) => m,
        Err(error) => {
            eprintln!("smtplab mx: {error}.\n{}", options.usage(MX_USAGE));
            return 2;
        }
    };
    if matches.opt_present("help") || matches.free.len() != 1 {
        print!("{}", options.usage(MX_USAGE));
        return if matches.opt_present("help") { 0 } else { 2 };
    }
    let nameserver = match matches.opt_str("dns").map(|a| a.parse::<SocketAddr>()) {
        None => None,
        Some(Ok(addr)) => Some(addr),
        Some(Err(_)) => {
            eprintln!("smtplab mx: --dns needs an address like 127.0.0.1:5353.");
            return 2;
        }
    };
    let resolver = match Resolver::new(nameserver) {
        Ok(resolver) => resolver,
        Err(error) => {
            eprintln!("smtplab mx: {error}");
            return 1;
        }
    };
    let hostname = matches.opt_str("hostname").unwrap_or_default();
    let me = Me {
        hostname: &hostname,
        listen: &[],
        mx_port: 25,
    };
    let mut trace = Vec::new();
    let result = route(
        &resolver,
        &matches.free[0],
        &me,
        &mut Rng::from_clock(),
        &mut trace,
    );
    for (n, step) in trace.iter().enumerate() {
        println!("{}", sanitize(&format!("{:>2}. {step}", n + 1)));
    }
    match result {
        Ok(route) => {
            let hosts: Vec<&str> = route.hops.iter().map(|h| h.host.as_str()).collect();
            println!(
                "{}",
                sanitize(&format!("=> try in this order: {}", hosts.join(", ")))
            );
            0
        }
        Err(RouteError::Permanent { code, status, text }) => {
            let said =
                format!("=> permanent failure, the sender gets a bounce: {code} {status} {text}");
            println!("{}", sanitize(&said));
            1
        }
        Err(RouteError::Temporary { text }) => {
            let said = format!("=> temporary failure, the message stays queued: {text}");
            println!("{}", sanitize(&said));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A zone in a table: (name, type) to an answer; unknown names are NXDOMAIN.
    #[derive(Default)]
    struct Table {
        mx: HashMap<String, Result<Answer<Mx>, TemporaryError>>,
        a: HashMap<String, Vec<IpAddr>>,
    }

    impl Table {
        fn mx(mut self, domain: &str, records: &[(u16, &str)]) -> Table {
            let records = records
                .iter()
                .map(|(preference, exchange)| Mx {
                    preference: *preference,
                    exchange: exchange.to_string(),
                })
                .collect();
            self.mx.insert(domain.into(), Ok(Answer::Records(records)));
            self
        }
        fn a(mut self, host: &str, ip: &str) -> Table {
            self.a
                .entry(host.into())
                .or_default()
                .push(ip.parse().unwrap());
            if !self.mx.contains_key(host) {
                self.mx.insert(host.into(), Ok(Answer::NoRecords));
            }
            self
        }
    }

    impl Dns for Table {
        fn mx(&self, domain: &str) -> Result<Answer<Mx>, TemporaryError> {
            self.mx
                .get(domain)
                .cloned()
                .unwrap_or(Ok(Answer::NoSuchDomain))
        }
        fn addresses(&self, host: &str, family: Family) -> Result<Answer<IpAddr>, TemporaryError> {
            let Some(all) = self.a.get(host) else {
                return Ok(Answer::NoSuchDomain);
            };
            let found: Vec<IpAddr> = all
                .iter()
                .filter(|ip| ip.is_ipv4() == (family == Family::V4))
                .copied()
                .collect();
            Ok(if found.is_empty() {
                Answer::NoRecords
            } else {
                Answer::Records(found)
            })
        }
    }

    const NOBODY: Me = Me {
        hostname: "relay.test",
        listen: &[],
        mx_port: 25,
    };

    fn hosts(result: Result<Route, RouteError>) -> Vec<String> {
        result.unwrap().hops.into_iter().map(|h| h.host).collect()
    }

    #[test]
    fn mx_hosts_are_tried_by_preference_and_shuffled_among_equals() {
        let dns = Table::default()
            .mx(
                "d.test",
                &[(20, "c.d.test"), (10, "a.d.test"), (10, "b.d.test")],
            )
            .a("a.d.test", "192.0.2.1")
            .a("b.d.test", "192.0.2.2")
            .a("c.d.test", "192.0.2.3");
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let mut trace = Vec::new();
            let order = hosts(route(
                &dns,
                "d.test",
                &NOBODY,
                &mut Rng::seeded(seed),
                &mut trace,
            ));
            assert_eq!(order[2], "c.d.test", "preference 20 always comes last");
            seen.insert(order[0].clone());
            // The same seed gives the same order: a test can rely on it.
            let again = hosts(route(
                &dns,
                "d.test",
                &NOBODY,
                &mut Rng::seeded(seed),
                &mut trace,
            ));
            assert_eq!(order, again);
        }
        assert_eq!(
            seen.len(),
            2,
            "both preference-10 hosts come first for some seed"
        );
    }

    #[test]
    fn no_mx_means_the_domain_is_its_own_mx_but_nxdomain_is_permanent() {
        let dns = Table::default().a("plain.test", "192.0.2.9");
        let mut trace = Vec::new();
        let route1 = route(&dns, "plain.test", &NOBODY, &mut Rng::seeded(1), &mut trace).unwrap();
        assert_eq!(route1.hops[0].host, "plain.test");
        assert_eq!(
            route1.hops[0].addrs,
            vec!["192.0.2.9".parse::<IpAddr>().unwrap()]
        );
        assert!(trace.iter().any(|s| s.contains("implicit MX")), "{trace:?}");
        let missing = route(
            &dns,
            "nowhere.test",
            &NOBODY,
            &mut Rng::seeded(1),
            &mut trace,
        );
        assert!(matches!(
            missing,
            Err(RouteError::Permanent {
                status: "5.1.2",
                ..
            })
        ));
    }

    #[test]
    fn null_mx_bounces_and_temporary_errors_stay_temporary() {
        let mut dns = Table::default().mx("null.test", &[(0, ".")]);
        dns.mx.insert("flaky.test".into(), Err("SERVFAIL".into()));
        let mut trace = Vec::new();
        let null = route(&dns, "null.test", &NOBODY, &mut Rng::seeded(1), &mut trace);
        assert!(matches!(
            null,
            Err(RouteError::Permanent {
                code: 556,
                status: "5.1.10",
                ..
            })
        ));
        let flaky = route(&dns, "flaky.test", &NOBODY, &mut Rng::seeded(1), &mut trace);
        assert!(matches!(flaky, Err(RouteError::Temporary { .. })));
    }

    #[test]
    fn both_address_families_are_used_and_hosts_without_address_are_skipped() {
        let dns = Table::default()
            .mx("d.test", &[(10, "gone.d.test"), (20, "dual.d.test")])
            .a("dual.d.test", "192.0.2.5")
            .a("dual.d.test", "2001:db8::5");
        let mut trace = Vec::new();
        let found = route(&dns, "d.test", &NOBODY, &mut Rng::seeded(1), &mut trace).unwrap();
        assert_eq!(found.hops.len(), 1);
        assert_eq!(found.hops[0].addrs.len(), 2, "A and AAAA");
        let only_gone = Table::default().mx("d.test", &[(10, "gone.d.test")]);
        let error = route(
            &only_gone,
            "d.test",
            &NOBODY,
            &mut Rng::seeded(1),
            &mut trace,
        );
        assert!(matches!(
            error,
            Err(RouteError::Permanent {
                status: "5.4.4",
                ..
            })
        ));
    }

    #[test]
    fn every_form_of_this_servers_address_is_recognised() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let specific = [SocketAddr::from(([127, 0, 0, 2], 25))];
        let me = Me {
            hostname: "one.test",
            listen: &specific,
            mx_port: 25,
        };
        assert!(me.reached_at(ip("127.0.0.2")));
        assert!(me.reached_at(ip("::ffff:127.0.0.2")));
        assert!(
            !me.reached_at(ip("127.0.0.3")),
            "another server on this machine"
        );
        assert!(
            !me.reached_at(ip("0.0.0.0")),
            "0.0.0.0 reaches 127.0.0.1, not 127.0.0.2"
        );
        let other_port = Me {
            mx_port: 2525,
            ..me
        };
        assert!(!other_port.reached_at(ip("127.0.0.2")));
        let everywhere = [SocketAddr::from(([0, 0, 0, 0], 25))];
        let me = Me {
            listen: &everywhere,
            ..me
        };
        for form in ["0.0.0.0", "127.0.0.1", "127.0.0.9", "::ffff:127.0.0.1"] {
            assert!(me.reached_at(ip(form)), "{form}");
        }
        assert!(
            !me.reached_at(ip("192.0.2.1")),
            "TEST-NET-1 is nobody's interface"
        );
    }

    #[test]
    fn the_list_is_cut_where_it_names_this_server() {
        let dns = Table::default()
            .mx(
                "d.test",
                &[
                    (10, "backup.d.test"),
                    (5, "primary.d.test"),
                    (10, "relay.test"),
                ],
            )
            .a("primary.d.test", "192.0.2.1")
            .a("backup.d.test", "192.0.2.2")
            .a("relay.test", "192.0.2.3");
        let mut trace = Vec::new();
        let order = hosts(route(
            &dns,
            "d.test",
            &NOBODY,
            &mut Rng::seeded(3),
            &mut trace,
        ));
        assert_eq!(
            order,
            vec!["primary.d.test"],
            "preference 10 and up is dropped"
        );
        // Known by address: the best MX listens where we do, so the mail would loop.
        let listen = ["192.0.2.1:25".parse().unwrap()];
        let me = Me {
            hostname: "other.test",
            listen: &listen,
            mx_port: 25,
        };
        let looped = route(&dns, "d.test", &me, &mut Rng::seeded(3), &mut trace);
        assert!(matches!(
            looped,
            Err(RouteError::Permanent {
                status: "5.4.6",
                ..
            })
        ));
    }
}

//! A small real DNS server for tests: it answers UDP queries on 127.0.0.1 from a zone built in
//! code (MX, A, AAAA), through the lab nameserver of `src/lab/dns_server.rs` (NXDOMAIN for
//! unknown names, an empty NOERROR answer with an SOA for a known name without records of the
//! asked type), plus SERVFAIL for names marked so, which no zone file can say.
//!
//! It speaks the wire format through `hickory-proto`'s message types, so the resolver in
//! `src/relay/dns.rs` is tested end to end over a socket, not through a stub inside the resolver.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use smtplab::lab::dns_server::{self, serve_udp};

/// The server checks its stop flag this often.
const POLL: Duration = Duration::from_millis(50);
/// TTL of every answer: short, so a cached answer never outlives a test.
const TTL: u32 = 1;

/// Records as master-file lines, every name absolute.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    lines: Vec<String>,
    servfail: Vec<String>,
}

/// `name` with its final dot, as a master file writes an absolute name (`.` is the root).
fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// `domain MX preference exchange` (exchange "." is the null MX of RFC 7505).
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Zone {
        let exchange = if exchange == "." {
            ".".to_string()
        } else {
            absolute(exchange)
        };
        self.lines.push(format!(
            "{} IN MX {preference} {exchange}",
            absolute(domain)
        ));
        self
    }

    pub fn a(mut self, host: &str, ip: Ipv4Addr) -> Zone {
        self.lines.push(format!("{} IN A {ip}", absolute(host)));
        self
    }

    pub fn aaaa(mut self, host: &str, ip: Ipv6Addr) -> Zone {
        self.lines.push(format!("{} IN AAAA {ip}", absolute(host)));
        self
    }

    /// Every query for this name fails with SERVFAIL (a temporary error).
    pub fn servfail(mut self, host: &str) -> Zone {
        self.servfail.push(absolute(host).to_lowercase());
        self
    }

    /// The lab nameserver's zone: every name below the root.
    fn master(&self) -> dns_server::Zone {
        let text = format!("$ORIGIN .\n$TTL {TTL}\n{}\n", self.lines.join("\n"));
        dns_server::Zone::parse(&text).expect("a zone the tests wrote")
    }
}

/// A running DNS server; dropping it stops the thread.
pub struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Bind 127.0.0.1:0 (UDP) and answer from `zone`.
    pub fn start(zone: Zone) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        socket.set_read_timeout(Some(POLL)).expect("timeout");
        let addr = socket.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (master, servfail) = (zone.master(), zone.servfail);
        let thread = thread::spawn(move || {
            serve_udp(&socket, &flag, |query| {
                let asked = query
                    .queries
                    .first()
                    .map(|q| q.name.to_ascii().to_lowercase());
                match asked {
                    Some(name) if servfail.contains(&name) => server_failure(query),
                    _ => dns_server::respond(&master, query),
                }
            })
        });
        DnsServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn server_failure(query: &Message) -> Message {
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.response_code = ResponseCode::ServFail;
    response.add_queries(query.queries.iter().cloned());
    response
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! A small real DNS server for tests and labs: it answers UDP queries on 127.0.0.1 from a zone
//! table (MX, A, AAAA), with NXDOMAIN for unknown names, an empty NOERROR answer (plus SOA) for
//! a known name without records of the asked type, and SERVFAIL for names marked so.
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
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The server checks its stop flag this often.
const POLL: Duration = Duration::from_millis(50);
/// TTL of every answer: short, so a cached answer never outlives a test.
const TTL: u32 = 1;

/// Records by owner name (lower case, no final dot).
#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: Vec<(String, RData)>,
    servfail: Vec<String>,
}

fn name(text: &str) -> Name {
    if text == "." {
        return Name::root();
    }
    Name::from_ascii(format!("{}.", text.trim_end_matches('.'))).expect("a valid name")
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// `domain MX preference exchange` (exchange "." is the null MX of RFC 7505).
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Zone {
        let data = RData::MX(MX::new(preference, name(exchange)));
        self.records.push((domain.to_lowercase(), data));
        self
    }

    pub fn a(mut self, host: &str, ip: Ipv4Addr) -> Zone {
        self.records.push((host.to_lowercase(), RData::A(A(ip))));
        self
    }

    pub fn aaaa(mut self, host: &str, ip: Ipv6Addr) -> Zone {
        self.records
            .push((host.to_lowercase(), RData::AAAA(AAAA(ip))));
        self
    }

    /// Every query for this name fails with SERVFAIL (a temporary error).
    pub fn servfail(mut self, host: &str) -> Zone {
        self.servfail.push(host.to_lowercase());
        self
    }

    /// The answer to one question: the response code and the records.
    fn answer(&self, owner: &str, kind: RecordType) -> (ResponseCode, Vec<RData>) {
        if self.servfail.iter().any(|n| n == owner) {
            return (ResponseCode::ServFail, Vec::new());
        }
        let mut known = false;
        let mut found = Vec::new();
        for (record_owner, data) in &self.records {
            if record_owner == owner {
                known = true;
                if data.record_type() == kind {
                    found.push(data.clone());
                }
            }
        }
        let code = if known {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        (code, found)
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
        let thread = thread::spawn(move || serve(&socket, &zone, &flag));
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

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, zone: &Zone, stop: &AtomicBool) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buffer) else {
            continue; // the read timeout: look at the stop flag again
        };
        let Ok(query) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        if let Some(bytes) = respond(zone, &query) {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

/// The response message to one query, encoded.
fn respond(zone: &Zone, query: &Message) -> Option<Vec<u8>> {
    let question = query.queries.first()?.clone();
    let owner = question
        .name
        .to_ascii()
        .trim_end_matches('.')
        .to_lowercase();
    let (code, found) = zone.answer(&owner, question.query_type);
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.response_code = code;
    response.add_query(question.clone());
    for data in found.iter() {
        response.add_answer(Record::from_rdata(question.name.clone(), TTL, data.clone()));
    }
    if found.is_empty() && code != ResponseCode::ServFail {
        // A negative answer carries the zone's SOA (RFC 2308), so it can be told from a referral.
        let soa = SOA::new(name("ns.test"), name("hostmaster.test"), 1, 60, 60, 60, TTL);
        response.add_authority(Record::from_rdata(name("test"), TTL, RData::SOA(soa)));
    }
    response.to_vec().ok()
}

//! `smtplab dns --zone FILE --listen ADDR`: a lab nameserver. It serves the A, AAAA and MX
//! records of one zone, read from an RFC 1035 §5 master file, so the relay lab needs nothing
//! but the smtplab binary: no dnsmasq, no root, no other program.
//!
//! Interface:
//! - `Zone::parse(text)` reads a master file (`$ORIGIN`, `$TTL`, `IN A`, `IN AAAA`, `IN MX`,
//!   the null MX `0 .`); `Zone::answer(name, type)` is the authoritative answer to one question.
//! - `respond(zone, query)` builds the response message; `NameServer::bind(addr, zone)` listens
//!   on UDP and TCP at one address, and `spawn()`/`run()` serve it; `serve_udp` is its UDP loop.
//! - `dns_main(args)` is the command.
//!
//! What it teaches: every query is printed on the console beside the SMTP trace, so a student
//! sees the relay ask "MX one.test?" and then "A mx.one.test?" before it connects. It is
//! authoritative and nothing more: it never recurses (RA is 0), a name outside its zone gets
//! REFUSED, and an answer too big for a UDP datagram is cut with TC set, so the resolver asks
//! again over TCP (RFC 1035 §4.2.1, §4.2.2).
//!
//! Standards: RFC 1035 §5.1, §4.1.1, §4.2.1, §4.2.2, RFC 2308 §3, RFC 7505 §3

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;

/// RFC 1035 §4.2.1: a UDP message is at most 512 bytes unless EDNS says the client takes more.
const UDP_LIMIT: usize = 512;
/// The UDP thread looks at its stop flag this often.
const POLL: Duration = Duration::from_millis(100);
/// A TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TTL of the made-up SOA when the zone file has none: short, so a lab change shows at once.
const DEFAULT_NEGATIVE_TTL: u32 = 60;

/// One zone: its origin, its records, and the SOA that negative answers carry.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    records: BTreeMap<RrKey, RecordSet>,
    soa: Record,
}

/// The authoritative answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA of a negative answer (RFC 2308 §3), so it is not taken for a referral.
    authority: Vec<Record>,
}

impl Zone {
    /// Read a master file. Relative names need a `$ORIGIN` line; `$INCLUDE` is not followed.
    pub fn parse(text: &str) -> Result<Zone, String> {
        let (origin, records) = Parser::new(text, None, None)
            .parse()
            .map_err(|e| format!("the zone file does not parse: {e}"))?;
        let soa = records
            .values()
            .find(|set| set.record_type() == RecordType::SOA)
            .and_then(|set| set.records_without_rrsigs().next().cloned())
            .unwrap_or_else(|| made_up_soa(&origin));
        Ok(Zone {
            origin,
            records,
            soa,
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// RFC 1035 §4.3.2, for an authoritative server without delegations: the records of that
    /// name and type; NXDOMAIN for a name the zone does not hold; REFUSED outside the zone.
    pub fn answer(&self, name: &Name, kind: RecordType) -> Answer {
        if !self.origin.zone_of(name) {
            return Answer::bare(ResponseCode::Refused);
        }
        let owner = LowerName::from(name);
        let answers: Vec<Record> = self
            .records
            .get(&RrKey::new(owner.clone(), kind))
            .map(|set| set.records_without_rrsigs().cloned().collect())
            .unwrap_or_default();
        if !answers.is_empty() {
            return Answer {
                code: ResponseCode::NoError,
                answers,
                authority: Vec::new(),
            };
        }
        let known = self.records.keys().any(|key| *key.name() == owner);
        Answer {
            code: if known {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            },
            answers: Vec::new(),
            authority: vec![self.soa.clone()],
        }
    }
}

impl Answer {
    fn bare(code: ResponseCode) -> Answer {
        Answer {
            code,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }
}

/// A zone file without an SOA still gets one for its negative answers.
fn made_up_soa(origin: &Name) -> Record {
    let under = |label: &str| {
        Name::from_ascii(label)
            .and_then(|l| l.append_domain(origin))
            .unwrap_or_else(|_| origin.clone())
    };
    let soa = SOA::new(
        under("ns"),
        under("hostmaster"),
        1,
        3600,
        600,
        86400,
        DEFAULT_NEGATIVE_TTL,
    );
    Record::from_rdata(origin.clone(), DEFAULT_NEGATIVE_TTL, RData::SOA(soa))
}

// ANCHOR: dns_respond
/// The response to one query: authoritative (AA), never recursive (RA clear).
pub fn respond(zone: &Zone, query: &Message) -> Message {
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = false;
    response.add_queries(query.queries.iter().cloned());
    let answer = match (query.metadata.op_code, query.queries.as_slice()) {
        (OpCode::Query, [question]) => zone.answer(&question.name, question.query_type),
        (OpCode::Query, _) => Answer::bare(ResponseCode::FormErr),
        _ => Answer::bare(ResponseCode::NotImp),
    };
    response.metadata.response_code = answer.code;
    response.add_answers(answer.answers);
    response.add_authorities(answer.authority);
    response
}
// ANCHOR_END: dns_respond

/// The bytes to send over UDP: the whole response if it fits, else only the header and
/// question with TC set, which tells the resolver to ask again over TCP.
fn udp_bytes(response: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.truncate().to_vec().ok()
}

/// One console line per query: who asked what, over which transport, and the answer.
fn console_line(peer: SocketAddr, transport: &str, query: &Message, response: &Message) -> String {
    let asked = query.queries.first().map_or_else(
        || "(no question)".to_string(),
        |q| format!("{} {}", q.query_type, q.name),
    );
    let records: Vec<String> = response
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    let truncated = if response.metadata.truncation {
        " (truncated: ask over TCP)"
    } else {
        ""
    };
    format!(
        "dns {peer} {transport} {asked} -> {}{}{truncated}",
        status(response.metadata.response_code),
        if records.is_empty() {
            String::new()
        } else {
            format!(": {}", records.join(", "))
        }
    )
}

/// The status as `dig` shows it (`status: NXDOMAIN`), so the console and dig read alike.
fn status(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => other.to_string(),
    }
}

/// A bound nameserver: a UDP socket and a TCP listener on the same address.
pub struct NameServer {
    udp: UdpSocket,
    tcp: TcpListener,
    zone: Arc<Zone>,
}

/// Serving nameserver threads; dropping the handle stops them.
pub struct NameServerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NameServer {
    /// Bind UDP first (port 0 picks one), then TCP on the same port.
    pub fn bind(addr: SocketAddr, zone: Zone) -> Result<NameServer, String> {
        let udp = UdpSocket::bind(addr).map_err(|e| format!("cannot bind UDP {addr}: {e}."))?;
        let bound = udp.local_addr().map_err(|e| format!("UDP address: {e}."))?;
        let tcp = TcpListener::bind(bound).map_err(|e| format!("cannot bind TCP {bound}: {e}."))?;
        udp.set_read_timeout(Some(POLL))
            .map_err(|e| format!("UDP timeout: {e}."))?;
        Ok(NameServer {
            udp,
            tcp,
            zone: Arc::new(zone),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serve UDP and TCP on background threads.
    pub fn spawn(self) -> NameServerHandle {
        let addr = self.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let (zone, flag) = (self.zone.clone(), stop.clone());
        let udp = self.udp;
        let udp_thread = thread::spawn(move || serve_udp(&udp, &flag, |q| respond(&zone, q)));
        let (zone, flag) = (self.zone, stop.clone());
        let tcp = self.tcp;
        let tcp_thread = thread::spawn(move || serve_tcp(&tcp, &zone, &flag));
        NameServerHandle {
            addr,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// Serve until the process ends.
    pub fn run(self) {
        let mut handle = self.spawn();
        for thread in handle.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl NameServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NameServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the TCP accept, which would otherwise wait for the next client.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, POLL);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Answer UDP queries on `socket` with `respond` until `stop` is set (the socket's read timeout
/// sets how often it looks), each with its console line. Answers too big for the client's
/// datagram size are truncated. The lab's zone and the tests' scripted nameserver share it.
pub fn serve_udp(socket: &UdpSocket, stop: &AtomicBool, respond: impl Fn(&Message) -> Message) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buffer) else {
            continue; // the read timeout: look at the stop flag again
        };
        // A datagram that is not a DNS message has no id to answer to: it is dropped.
        let Ok(query) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        let response = respond(&query);
        let limit = usize::from(query.max_payload()).max(UDP_LIMIT);
        if let Some(bytes) = udp_bytes(&response, limit) {
            let sent = Message::from_vec(&bytes).unwrap_or(response);
            println!("{}", console_line(peer, "udp", &query, &sent));
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, zone: &Arc<Zone>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let zone = zone.clone();
        thread::spawn(move || serve_tcp_client(stream, &zone));
    }
}

/// RFC 1035 §4.2.2: over TCP each message is preceded by its length in two bytes.
fn serve_tcp_client(mut stream: TcpStream, zone: &Zone) {
    let _ = stream.set_read_timeout(Some(TCP_IDLE));
    let Ok(peer) = stream.peer_addr() else { return };
    loop {
        let mut length = [0u8; 2];
        if stream.read_exact(&mut length).is_err() {
            return;
        }
        let mut buffer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        if stream.read_exact(&mut buffer).is_err() {
            return;
        }
        let Ok(query) = Message::from_vec(&buffer) else {
            return;
        };
        let response = respond(zone, &query);
        println!("{}", console_line(peer, "tcp", &query, &response));
        let Some(bytes) = response
            .to_vec()
            .ok()
            .filter(|b| b.len() <= usize::from(u16::MAX))
        else {
            return;
        };
        let framed = [&(bytes.len() as u16).to_be_bytes()[..], &bytes].concat();
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

const USAGE: &str = "usage: smtplab dns --zone FILE --listen ADDR (for example 127.0.0.1:5354)";

/// `smtplab dns --zone FILE --listen ADDR`.
pub fn dns_main(args: &[String]) -> i32 {
    let mut options = getopts::Options::new();
    options.optopt("", "zone", "RFC 1035 master file", "FILE");
    options.optopt("", "listen", "UDP and TCP address", "ADDR");
    let started = options
        .parse(args)
        .map_err(|e| e.to_string())
        .and_then(|m| match (m.opt_str("zone"), m.opt_str("listen")) {
            (Some(zone), Some(listen)) => Ok((zone, listen)),
            _ => Err("--zone and --listen are both needed".to_string()),
        })
        .and_then(|(file, listen)| {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read the zone file {file}: {e}"))?;
            let zone = Zone::parse(&text).map_err(|e| format!("{file}: {e}"))?;
            let addr = crate::config::parse_addr(&listen)?;
            Ok((file, NameServer::bind(addr, zone)?))
        });
    match started {
        Ok((file, server)) => {
            println!(
                "smtplab dns serving {} from {file} on {} (UDP and TCP); recursion refused",
                server.zone.origin(),
                server.local_addr()
            );
            server.run();
            0
        }
        Err(why) => {
            eprintln!("smtplab dns: {why}. {USAGE}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    const LAB_ZONE: &str = "\
$ORIGIN test.
$TTL 60
one          IN MX 10 mx.one
mx.one       IN A     127.0.0.2
             IN AAAA  ::1
nomail       IN MX 0 .
";

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn a_master_file_answers_mx_a_aaaa_and_the_null_mx() {
        let zone = Zone::parse(LAB_ZONE).unwrap();
        let mx = zone.answer(&name("ONE.test."), RecordType::MX);
        assert_eq!(mx.code, ResponseCode::NoError);
        assert_eq!(mx.answers[0].data.to_string(), "10 mx.one.test.");
        assert_eq!(mx.answers[0].ttl, 60);
        let a = zone.answer(&name("mx.one.test."), RecordType::A);
        assert_eq!(a.answers[0].data.to_string(), "127.0.0.2");
        let aaaa = zone.answer(&name("mx.one.test."), RecordType::AAAA);
        assert_eq!(aaaa.answers[0].data.to_string(), "::1");
        let null = zone.answer(&name("nomail.test."), RecordType::MX);
        assert_eq!(null.answers[0].data.to_string(), "0 .");
    }

    #[test]
    fn negative_answers_carry_the_soa_and_other_zones_are_refused() {
        let zone = Zone::parse(LAB_ZONE).unwrap();
        let empty = zone.answer(&name("one.test."), RecordType::A);
        assert_eq!(
            (empty.code, empty.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(empty.authority[0].record_type(), RecordType::SOA);
        let missing = zone.answer(&name("two.test."), RecordType::MX);
        assert_eq!(missing.code, ResponseCode::NXDomain);
        let outside = zone.answer(&name("example.com."), RecordType::MX);
        assert_eq!(outside, Answer::bare(ResponseCode::Refused));
    }

    #[test]
    fn responses_are_authoritative_and_never_recursive() {
        let zone = Zone::parse(LAB_ZONE).unwrap();
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name("one.test."), RecordType::MX));
        let response = respond(&zone, &query);
        assert_eq!(response.metadata.id, 7);
        assert!(response.metadata.authoritative);
        assert!(!response.metadata.recursion_available);
        assert_eq!(response.answers.len(), 1);
    }

    #[test]
    fn a_big_answer_is_truncated_for_udp() {
        let mut text = String::from("$ORIGIN test.\n$TTL 60\n");
        for n in 0..40 {
            text.push_str(&format!(
                "big IN MX {n} a-rather-long-mail-exchanger-name-{n}.test.\n"
            ));
        }
        let zone = Zone::parse(&text).unwrap();
        let mut query = Message::new(1, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(name("big.test."), RecordType::MX));
        let response = respond(&zone, &query);
        let sent = Message::from_vec(&udp_bytes(&response, UDP_LIMIT).unwrap()).unwrap();
        assert!(sent.metadata.truncation);
        assert!(sent.answers.is_empty());
    }

    #[test]
    fn a_broken_zone_file_is_one_sentence() {
        let why = Zone::parse("one IN MX ten mx\n").unwrap_err();
        assert!(why.starts_with("the zone file does not parse"), "{why}");
    }
}

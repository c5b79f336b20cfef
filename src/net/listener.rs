//! The welcome socket, shared by SMTP and POP3: bind, accept, count, and give every client a
//! thread of its own.
//!
//! Interface:
//! - `bind(addr)` listens with a backlog of `BACKLOG` (an error is one plain sentence) and
//!   returns the `Bound` socket with its real address. `Listener::bind(addr, implicit_tls)`
//!   is the same for POP3 and IMAP, which also remember whether TLS comes first.
//! - `Admission::new(limits)` holds the connection counts of one server: all its clients
//!   (`--max-connections`) and the clients of each address (`--max-connections-per-ip`).
//! - `Welcome::spawn(listener, admission, service)` accepts on a background thread; dropping
//!   the `Welcome` stops it. A `Service` (SMTP, POP3, the web view) says how to serve a
//!   client and how to turn one away.
//! - `say_and_close(stream, text)` writes a last line to a client that is turned away.
//! - `canonical(addr)` turns an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) into IPv4.
//!
//! `for stream in listener.incoming()` is the classic server loop: the listening socket only
//! welcomes; each accepted connection is a new socket served by a new thread. The caps keep one
//! script (or one student) from taking every thread: the client over a cap hears why, and is
//! closed.
//!
//! Standards: RFC 5321 §3.1, §3.8, RFC 1939 §3

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{info, warn};
use socket2::{Domain, Socket, Type};

/// The length of the queue of connections the kernel completes before `accept` takes them.
/// `std` asks for 128: a burst of a few hundred connects overflows it, the kernel falls back
/// to SYN cookies, and a client whose last ACK is lost waits for a 220 that never comes. The
/// kernel caps this at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Stack of each session thread: sessions keep their buffers on the heap, so a small stack is
/// plenty, and a thousand idle clients cost little memory.
const SESSION_STACK_SIZE: usize = 256 * 1024;

/// The caps of one server, from `--max-connections` and `--max-connections-per-ip`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub total: usize,
    pub per_ip: usize,
}

/// Why a client is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place is taken (`--max-connections`).
    Full,
    /// This client's address holds its share already (`--max-connections-per-ip`).
    TooManyFromAddress,
}

impl Refusal {
    /// Why, in words, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "every place is taken (--max-connections)",
            Refusal::TooManyFromAddress => {
                "its address holds its share already (--max-connections-per-ip)"
            }
        }
    }
}

/// What a welcome socket hands its clients to: SMTP or POP3.
pub trait Service: Send + Sync + 'static {
    /// Number the client and prepare its session: the thread's name and what the thread runs.
    fn session(&self, stream: TcpStream) -> (String, Box<dyn FnOnce() + Send>);
    /// Tell a client why it is turned away (the stream is closed afterwards).
    fn refuse(&self, stream: TcpStream, why: Refusal);
}

/// A listening socket and the address it really has (port 0 becomes a real port).
pub struct Bound {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

// ANCHOR: bind
/// Listen on `addr` with a long backlog. `std::net::TcpListener::bind` cannot choose the
/// backlog, so the socket is made with `socket2`. `[::]` also accepts IPv4 clients.
pub fn bind(addr: SocketAddr) -> Result<Bound, String> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| format!("Cannot listen on {addr}: {e}."))?;
    // As std does: a restarted server may bind while old connections are in TIME_WAIT.
    let _ = socket.set_reuse_address(true);
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        let _ = socket.set_only_v6(false);
    }
    socket
        .bind(&addr.into())
        .and_then(|()| socket.listen(BACKLOG))
        .map_err(|e| bind_error(addr, &e))?;
    let listener: TcpListener = socket.into();
    let addr = listener
        .local_addr()
        .map_err(|e| format!("Cannot listen on {addr}: {e}."))?;
    Ok(Bound { listener, addr })
}
// ANCHOR_END: bind

/// A bound POP3 or IMAP welcome socket, not yet accepting: the socket, and whether its
/// clients speak TLS from the first byte.
pub struct Listener {
    pub bound: Bound,
    /// `--pop3s`, `--imaps`: TLS from the first byte (RFC 8314 §3.3).
    pub implicit_tls: bool,
}

impl Listener {
    pub fn bind(addr: SocketAddr, implicit_tls: bool) -> Result<Listener, String> {
        Ok(Listener {
            bound: bind(addr)?,
            implicit_tls,
        })
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.addr
    }
}

fn bind_error(addr: SocketAddr, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("Cannot listen on {addr}: another program already uses that port.")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("Cannot listen on {addr}: ports below 1024 need root; try a port like 2525.")
        }
        _ => format!("Cannot listen on {addr}: {error}."),
    }
}

/// An IPv4 client of a `[::]` listener appears as `::ffff:a.b.c.d`; every policy (relaying,
/// AUTH on loopback, the per-address cap) must see `a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The connection counts of one server, shared by all its welcome sockets.
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    // ANCHOR: admit
    /// Take a place for a client from `ip`, or say why there is none.
    fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut counts = crate::lock(&self.counts);
        if counts.total >= self.limits.total {
            return Err(Refusal::Full);
        }
        let mine = counts.per_ip.entry(ip).or_insert(0);
        if *mine >= self.limits.per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *mine += 1;
        counts.total += 1;
        Ok(())
    }
    // ANCHOR_END: admit

    fn release(&self, ip: IpAddr) {
        let mut counts = crate::lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_ip.get_mut(&ip) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }
}

/// One place in the counts; dropping it (also while a thread unwinds) frees it.
struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    /// The sessions of this welcome socket only (for `Welcome::active_sessions`).
    active: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.admission.release(self.ip);
    }
}

/// A welcome socket accepting on its own thread; dropping it stops the thread.
pub struct Welcome {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl Welcome {
    pub fn spawn(bound: Bound, admission: Arc<Admission>, service: Arc<dyn Service>) -> Welcome {
        let Bound { listener, addr } = bound;
        let stopping = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let door = Door {
            admission,
            active: active.clone(),
            service,
        };
        let acceptor = {
            let stopping = stopping.clone();
            thread::spawn(move || accept_loop(&listener, &stopping, &door))
        };
        Welcome {
            addr,
            stopping,
            active,
            acceptor: Some(acceptor),
        }
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sessions of this welcome socket running now.
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Accept until the process ends.
    pub fn join(mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for Welcome {
    /// Stop accepting: set the flag, then wake the blocked `accept` with a connection.
    fn drop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        let _ = acceptor.join();
    }
}

/// RFC 5321 §3.8 lets a server close with 421 when it cannot serve (POP3 says `-ERR`): tell
/// the client why, without letting a client that does not read hold the welcome socket.
pub fn say_and_close(mut stream: TcpStream, text: &[u8]) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(text);
}

/// Where to connect to wake a listener: `0.0.0.0` and `[::]` are reached on loopback.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// What one welcome socket lets clients in to: the server's counts, its own, and its service.
struct Door {
    admission: Arc<Admission>,
    active: Arc<AtomicUsize>,
    service: Arc<dyn Service>,
}

// ANCHOR: accept_loop
/// The welcome socket's loop: accept, then let the new socket in through the door.
fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, door: &Door) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let peer = stream.and_then(|s| s.peer_addr().map(|peer| (s, peer)));
        match peer {
            Ok((stream, peer)) => {
                no_delay(&stream);
                door.admit(stream, canonical(peer).ip())
            }
            Err(error) => {
                // Out of file descriptors, for example: wait a moment rather than spin.
                warn!("accept failed: {error}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Send each reply at once. With Nagle's algorithm on, a reply written while the previous
/// one is unacknowledged waits for the client's ACK, which the client delays ~40 ms hoping to
/// piggyback it on data: a client that pipelines MAIL, RCPT, DATA and the body stalled that
/// long per message. Replies are whole lines written together, so no tiny segments result.
fn no_delay(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        warn!("cannot set TCP_NODELAY: {error}");
    }
}

impl Door {
    /// Count the client in and start its thread, or turn it away when a cap is reached.
    fn admit(&self, stream: TcpStream, ip: IpAddr) {
        if let Err(why) = self.admission.admit(ip) {
            info!("refused a client from {ip}: {}", why.reason());
            self.service.refuse(stream, why);
            return;
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot {
            admission: self.admission.clone(),
            ip,
            active: self.active.clone(),
        };
        let (name, session) = self.service.session(stream);
        let spawned = thread::Builder::new()
            .name(name)
            .stack_size(SESSION_STACK_SIZE)
            .spawn(move || {
                let _slot = slot;
                session();
            });
        if let Err(error) = spawned {
            warn!("cannot start a session thread: {error}");
        }
    }
}
// ANCHOR_END: accept_loop

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_address_cap_leaves_other_addresses_alone() {
        let admission = Admission::new(Limits {
            total: 3,
            per_ip: 2,
        });
        let (one, two): (IpAddr, IpAddr) =
            ("127.0.0.1".parse().unwrap(), "127.0.0.9".parse().unwrap());
        assert_eq!(admission.admit(one), Ok(()));
        assert_eq!(admission.admit(one), Ok(()));
        assert_eq!(admission.admit(one), Err(Refusal::TooManyFromAddress));
        assert_eq!(admission.admit(two), Ok(()));
        assert_eq!(admission.admit(two), Err(Refusal::Full));
        admission.release(one);
        assert_eq!(admission.admit(two), Ok(()));
    }

    /// A service that reports whether each socket it is handed has TCP_NODELAY on.
    struct ReportNoDelay(Mutex<std::sync::mpsc::Sender<bool>>);

    impl Service for ReportNoDelay {
        fn session(&self, stream: TcpStream) -> (String, Box<dyn FnOnce() + Send>) {
            let nodelay = stream.nodelay().unwrap_or(false);
            let sender = crate::lock(&self.0);
            let _ = sender.send(nodelay);
            ("test".into(), Box::new(|| ()))
        }

        fn refuse(&self, _stream: TcpStream, _why: Refusal) {}
    }

    #[test]
    fn every_accepted_socket_sends_without_delay() {
        let bound = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = bound.addr;
        let (sender, receiver) = std::sync::mpsc::channel();
        let limits = Limits {
            total: 4,
            per_ip: 4,
        };
        let service = Arc::new(ReportNoDelay(Mutex::new(sender)));
        let _welcome = Welcome::spawn(bound, Admission::new(limits), service);
        let _client = TcpStream::connect(addr).unwrap();
        let nodelay = receiver.recv_timeout(Duration::from_secs(10));
        assert_eq!(nodelay, Ok(true), "TCP_NODELAY on the accepted socket");
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:25".parse().unwrap();
        assert_eq!(canonical(mapped).to_string(), "127.0.0.1:25");
        let v6: SocketAddr = "[::1]:25".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}

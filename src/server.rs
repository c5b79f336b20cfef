//! The welcome socket: bind, accept, and give every client its own thread.
//!
//! Interface:
//! - `Server::bind(config)` binds every `--listen` address (an error is one plain sentence).
//! - `Server::run()` accepts forever; `Server::spawn()` accepts on background threads and
//!   returns a handle that stops them (tests use this). Both also start the relay thread
//!   (`relay.rs`), which the handle stops too.
//!
//! `for stream in listener.incoming()` is the classic server loop: the listening socket only
//! welcomes; each accepted connection is a new socket served by a new thread. `--max-connections`
//! caps the threads: the client over the cap hears 421 and is closed.
//!
//! Standards: RFC 5321 §3.1, RFC 5321 §4.5.3.2, RFC 5321 §3.8

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{info, warn};

use native_tls::TlsAcceptor;

use crate::config::{Config, TlsSource};
use crate::net::tls;
use crate::pop3::server::{Pop3Handle, Pop3Listener};
use crate::relay::queue::Spool;
use crate::relay::worker::{self, RelayHandle};
use crate::smtp::connection::{self, Context};
use crate::smtp::reply::Reply;
use crate::smtp::session::Role;
use crate::store::delivery::LocalDelivery;
use crate::store::intent::Verdict;
use crate::store::mbox::{MailDir, Recovered};

/// Stack of each session thread: sessions keep their buffers on the heap, so a small stack is
/// plenty, and a thousand idle clients cost little memory.
const SESSION_STACK_SIZE: usize = 256 * 1024;

/// The bound listeners and what their sessions share.
pub struct Server {
    listeners: Vec<(TcpListener, Role)>,
    shared: Arc<Shared>,
    /// `--pop3` listeners; they serve the same mail directory.
    pop3: Vec<Pop3Listener>,
    spool: Arc<Spool>,
}

struct Shared {
    context: Context,
    active: AtomicUsize,
    sessions: AtomicU64,
    stopping: AtomicBool,
}

/// Stops background acceptors when dropped.
pub struct ServerHandle {
    addrs: Vec<(SocketAddr, Role)>,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
    /// Dropped after `acceptors` are stopped; each stops its own POP3 acceptor.
    pop3: Vec<Pop3Handle>,
    /// Dropped after the acceptors stop, which stops the relay thread.
    _relay: Option<RelayHandle>,
}

/// One place in the connection count; dropping it (also while a thread unwinds) frees it.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// Bind every listen address, create the mail directory, and deliver locally.
    pub fn bind(config: Config) -> Result<Server, String> {
        // Every listener first: an instance that cannot start (the port is taken, often by
        // another smtplab on the same mail directory) must leave the mail and spool untouched.
        let tls = tls_acceptor(&config)?;
        let mut listeners = Vec::new();
        for (addrs, role) in [
            (&config.listen, Role::Relay),
            (&config.submission, Role::Submission),
            (&config.smtps, Role::ImplicitTls),
        ] {
            for addr in addrs {
                listeners.push((bind_one(*addr)?, role));
            }
        }
        let plain_pop3 = config
            .pop3
            .iter()
            .map(|addr| Pop3Listener::bind(*addr, false));
        let implicit_pop3 = config
            .pop3s
            .iter()
            .map(|addr| Pop3Listener::bind(*addr, true));
        let pop3 = plain_pop3
            .chain(implicit_pop3)
            .collect::<Result<Vec<_>, _>>()?;
        if !config.pop3s.is_empty() && tls.is_none() {
            return Err("--pop3s needs --tls-cert and --tls-key, or --tls-self-signed.".into());
        }
        // Only now: the mail directory and the spool.
        std::fs::create_dir_all(&config.mail_dir).map_err(|e| {
            format!(
                "Cannot create the mail directory {}: {e}.",
                config.mail_dir.display()
            )
        })?;
        let mail_dir = MailDir::new(config.mail_dir.clone());
        recover(&mail_dir)?;
        let mail_dir = match config.mailbox_size_limit {
            0 => mail_dir,
            limit => mail_dir.with_size_limit(limit),
        };
        let spool = Arc::new(Spool::new(config.spool_dir.clone()));
        spool.remove_stale_temp_files();
        let deliver = Arc::new(LocalDelivery {
            mail_dir,
            hostname: config.hostname.clone(),
            spool: Some(spool.clone()),
        });
        let context = Context {
            config: Arc::new(config),
            deliver,
            tls,
        };
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                context,
                active: AtomicUsize::new(0),
                sessions: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
            }),
            pop3,
            spool,
        })
    }

    /// The addresses actually bound (port 0 becomes a real port), with their roles.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, Role)> {
        self.listeners
            .iter()
            .filter_map(|(l, role)| l.local_addr().ok().map(|a| (a, *role)))
            .collect()
    }

    /// Every bound listener with the name of its role, for the start-up banner.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let smtp = self.local_addrs().into_iter().map(|(addr, role)| {
            let name = match role {
                Role::Relay => "SMTP",
                Role::Submission => "submission",
                Role::ImplicitTls => "SMTPS",
            };
            (name, addr)
        });
        let pop3 = self.pop3.iter().map(|l| {
            (
                if l.implicit_tls { "POP3S" } else { "POP3" },
                l.local_addr(),
            )
        });
        smtp.chain(pop3).collect()
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.shared.context.config
    }

    /// Accept on every listener until the process ends.
    pub fn run(self) {
        for acceptor in self.spawn().acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }

    /// Accept on background threads; the handle stops them.
    pub fn spawn(self) -> ServerHandle {
        let addrs = self.local_addrs();
        let acceptors = self
            .listeners
            .into_iter()
            .map(|(listener, role)| {
                let shared = self.shared.clone();
                thread::spawn(move || accept_loop(&listener, role, &shared))
            })
            .collect();
        let config = self.shared.context.config.clone();
        let pop3 = self
            .pop3
            .into_iter()
            .map(|listener| listener.spawn(config.clone(), self.shared.context.tls.clone()))
            .collect();
        let context = &self.shared.context;
        let relay = worker::start(
            context.config.clone(),
            self.spool,
            context.deliver.clone(),
            addrs.iter().map(|(addr, _)| *addr).collect(),
        )
        .map_err(|error| warn!("cannot start the relay thread: {error}"))
        .ok();
        ServerHandle {
            addrs,
            shared: self.shared,
            acceptors,
            pop3,
            _relay: relay,
        }
    }
}

/// Cut off what a killed delivery of ours left half-written, and only that (RFC 5321 §6.1:
/// nothing acknowledged may be lost); say in one line per mbox what was found.
fn recover(mail_dir: &MailDir) -> Result<(), String> {
    let found = mail_dir.recover().map_err(|e| {
        format!(
            "Cannot check the mail directory {}: {e}.",
            mail_dir.root().display()
        )
    })?;
    for Recovered { user, verdict } in found {
        match verdict {
            Verdict::Cut { start, bytes } => warn!(
                "removed {bytes} bytes of an unfinished delivery from the mbox of {user} \
                 (from offset {start}; smtplab wrote them and never acknowledged them)"
            ),
            Verdict::Leave(why) => warn!(
                "left the mbox of {user} as it is after an unfinished delivery, because {why}"
            ),
        }
    }
    Ok(())
}

/// The TLS acceptor, when a certificate was given or a throwaway one was asked for.
fn tls_acceptor(config: &Config) -> Result<Option<Arc<TlsAcceptor>>, String> {
    let acceptor = match &config.tls {
        None => return Ok(None),
        Some(TlsSource::Files { cert, key }) => tls::acceptor_from_files(cert, key)?,
        Some(TlsSource::SelfSigned) => {
            let (cert, key) = tls::self_signed(&config.hostname)?;
            tls::acceptor_from_pem(&cert, &key)?
        }
    };
    Ok(Some(Arc::new(acceptor)))
}

pub(crate) fn bind_one(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("Cannot listen on {addr}: another program already uses that port.")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("Cannot listen on {addr}: ports below 1024 need root; try a port like 2525.")
        }
        _ => format!("Cannot listen on {addr}: {e}."),
    })
}

// ANCHOR: accept_loop
/// The welcome socket's loop: accept, then hand the new socket to a thread of its own.
fn accept_loop(listener: &TcpListener, role: Role, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => admit(stream, role, shared),
            Err(error) => {
                // Out of file descriptors, for example: wait a moment rather than spin.
                warn!("accept failed: {error}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Count the client in, or turn it away with 421 when the server is full.
fn admit(stream: TcpStream, role: Role, shared: &Arc<Shared>) {
    let max = shared.context.config.max_connections;
    if shared.active.fetch_add(1, Ordering::SeqCst) >= max {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        refuse(stream);
        return;
    }
    let slot = Slot(shared.clone());
    let number = shared.sessions.fetch_add(1, Ordering::SeqCst) + 1;
    let context = shared.context.clone();
    let spawned = thread::Builder::new()
        .name(format!("smtp-S{number}"))
        .stack_size(SESSION_STACK_SIZE)
        .spawn(move || {
            let _slot = slot;
            connection::serve(stream, context, number, role);
        });
    if let Err(error) = spawned {
        warn!("cannot start a session thread: {error}");
    }
}
// ANCHOR_END: accept_loop

/// RFC 5321 §3.8 lets a server close with 421 when it cannot serve; tell the client why.
fn refuse(mut stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!("refused {peer}: too many connections");
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(Reply::TOO_MANY_CONNECTIONS_421.to_string().as_bytes());
}

impl ServerHandle {
    /// The first address (the first `--listen`).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].0
    }

    /// The first address of a role's listener (`--submission`, `--smtps`), if there is one.
    pub fn addr_of(&self, role: Role) -> Option<SocketAddr> {
        self.addrs.iter().find(|(_, r)| *r == role).map(|(a, _)| *a)
    }

    /// Sessions running now.
    pub fn active_sessions(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> &Config {
        &self.shared.context.config
    }

    /// The first `--pop3` address actually bound, if any.
    pub fn pop3_addr(&self) -> Option<SocketAddr> {
        self.pop3
            .iter()
            .find(|h| !h.is_implicit_tls())
            .map(Pop3Handle::addr)
    }

    /// The first `--pop3s` address actually bound, if any.
    pub fn pop3s_addr(&self) -> Option<SocketAddr> {
        self.pop3
            .iter()
            .find(|h| h.is_implicit_tls())
            .map(Pop3Handle::addr)
    }

    /// POP3 sessions running now.
    pub fn pop3_sessions(&self) -> usize {
        self.pop3.iter().map(Pop3Handle::active_sessions).sum()
    }
}

impl Drop for ServerHandle {
    /// Stop accepting: set the flag, then wake each blocked `accept` with a connection.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for (addr, _) in &self.addrs {
            let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }
}

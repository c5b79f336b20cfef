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

use crate::config::Config;
use crate::connection::{self, Context};
use crate::delivery::LocalDelivery;
use crate::mbox::MailDir;
use crate::queue::Spool;
use crate::relay::{self, RelayHandle};
use crate::reply::Reply;

/// Stack of each session thread: sessions keep their buffers on the heap, so a small stack is
/// plenty, and a thousand idle clients cost little memory.
const SESSION_STACK_SIZE: usize = 256 * 1024;

/// The bound listeners and what their sessions share.
pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
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
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
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
        std::fs::create_dir_all(&config.mail_dir).map_err(|e| {
            format!(
                "Cannot create the mail directory {}: {e}.",
                config.mail_dir.display()
            )
        })?;
        let spool = Arc::new(Spool::new(config.spool_dir.clone()));
        spool.remove_stale_temp_files();
        let deliver = Arc::new(LocalDelivery {
            mail_dir: MailDir::new(config.mail_dir.clone()),
            hostname: config.hostname.clone(),
            spool: Some(spool.clone()),
        });
        let listeners = config
            .listen
            .iter()
            .map(|addr| bind_one(*addr))
            .collect::<Result<Vec<_>, _>>()?;
        let context = Context {
            config: Arc::new(config),
            deliver,
        };
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                context,
                active: AtomicUsize::new(0),
                sessions: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
            }),
            spool,
        })
    }

    /// The addresses actually bound (port 0 becomes a real port).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
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
            .map(|listener| {
                let shared = self.shared.clone();
                thread::spawn(move || accept_loop(&listener, &shared))
            })
            .collect();
        let context = &self.shared.context;
        let relay = relay::start(
            context.config.clone(),
            self.spool,
            context.deliver.clone(),
            addrs.clone(),
        )
        .map_err(|error| warn!("cannot start the relay thread: {error}"))
        .ok();
        ServerHandle {
            addrs,
            shared: self.shared,
            acceptors,
            _relay: relay,
        }
    }
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, String> {
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
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => admit(stream, shared),
            Err(error) => {
                // Out of file descriptors, for example: wait a moment rather than spin.
                warn!("accept failed: {error}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Count the client in, or turn it away with 421 when the server is full.
fn admit(stream: TcpStream, shared: &Arc<Shared>) {
    let max = shared.context.config.max_connections;
    if shared.active.fetch_add(1, Ordering::SeqCst) >= max {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        refuse(stream);
        return;
    }
    let slot = Slot(shared.clone());
    let number = shared.sessions.fetch_add(1, Ordering::SeqCst) + 1;
    let id = format!("S{number}");
    let context = shared.context.clone();
    let spawned = thread::Builder::new()
        .name(format!("smtp-{id}"))
        .stack_size(SESSION_STACK_SIZE)
        .spawn(move || {
            let _slot = slot;
            connection::serve(stream, context, id);
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
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Sessions running now.
    pub fn active_sessions(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> &Config {
        &self.shared.context.config
    }
}

impl Drop for ServerHandle {
    /// Stop accepting: set the flag, then wake each blocked `accept` with a connection.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for addr in &self.addrs {
            let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }
}

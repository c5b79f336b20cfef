//! The whole server: the listeners of every role, the mail directory, TLS, and the relay.
//!
//! Interface:
//! - `Server::bind(config)` binds every `--listen`, `--submission`, `--smtps`, `--pop3`,
//!   `--pop3s`, `--imap`, `--imaps` and `--web` address (an error is one plain sentence).
//! - `Server::run()` accepts forever; `Server::spawn()` accepts on background threads and
//!   returns a handle that stops them (tests use this). Both also start the relay thread
//!   (`relay/worker.rs`), which the handle stops too.
//!
//! Every listener is a welcome socket of `net/listener.rs`, and all of them share one
//! `Admission`: `--max-connections` and `--max-connections-per-ip` count SMTP and POP3 clients
//! and `--web` browsers together. SMTP's part is `Smtp`, the service that starts `connection::serve`.
//!
//! Standards: RFC 5321 §3.1, §4.5.3.2, §3.8

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::warn;

use crate::config::{Config, TlsSource};
use crate::connection::{self, Context};
use crate::imap;
use crate::net::listener::{self, Admission, Bound, Limits, Listener, Refusal, Service, Welcome};
use crate::net::tls::{self, Acceptor};
use crate::pop3;
use crate::relay::queue::Spool;
use crate::relay::worker::{self, RelayHandle};
use crate::smtp::reply::Reply;
use crate::smtp::session::Role;
use crate::store::delivery::LocalDelivery;
use crate::store::intent::Verdict;
use crate::store::mbox::{MailDir, Recovered};
use crate::web::server::{WebHandle, WebListener};

/// The bound listeners and what their sessions share.
pub struct Server {
    listeners: Vec<(Bound, Role)>,
    context: Context,
    /// The connection caps, shared by SMTP and POP3.
    admission: Arc<Admission>,
    /// `--pop3` listeners; they serve the same mail directory.
    pop3: Vec<Listener>,
    /// `--imap` and `--imaps` listeners, over the same mail directory.
    imap: Vec<Listener>,
    spool: Arc<Spool>,
    /// `--web`: the live view's welcome socket.
    web: Option<WebListener>,
}

/// Stops the welcome sockets when dropped, then the relay thread.
pub struct ServerHandle {
    smtp: Vec<(Welcome, Role)>,
    /// Each stops its own acceptor; `true` for `--pop3s`.
    pop3: Vec<(Welcome, bool)>,
    /// The same for `--imap` (`false`) and `--imaps` (`true`).
    imap: Vec<(Welcome, bool)>,
    config: Arc<Config>,
    /// Dropped after the welcome sockets stop, which stops the relay thread.
    _relay: Option<RelayHandle>,
    web: Option<WebHandle>,
}

/// SMTP as a welcome socket's service: one listener's role, session numbers shared by all.
struct Smtp {
    context: Context,
    role: Role,
    sessions: Arc<AtomicU64>,
}

impl Service for Smtp {
    fn session(&self, stream: TcpStream) -> (String, Box<dyn FnOnce() + Send>) {
        let number = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        let (context, role) = (self.context.clone(), self.role);
        let serve = move || connection::serve(stream, context, number, role);
        (format!("smtp-S{number}"), Box::new(serve))
    }

    fn refuse(&self, stream: TcpStream, why: Refusal) {
        let reply = match why {
            Refusal::Full => Reply::TOO_MANY_CONNECTIONS_421,
            Refusal::TooManyFromAddress => Reply::TOO_MANY_FROM_ADDRESS_421,
        };
        listener::say_and_close(stream, reply.to_string().as_bytes());
    }
}

impl Server {
    /// Bind every listen address, create the mail directory, and deliver locally.
    pub fn bind(mut config: Config) -> Result<Server, String> {
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
                listeners.push((listener::bind(*addr)?, role));
            }
        }
        let plain_pop3 = config.pop3.iter().map(|addr| Listener::bind(*addr, false));
        let implicit_pop3 = config.pop3s.iter().map(|addr| Listener::bind(*addr, true));
        let pop3 = plain_pop3
            .chain(implicit_pop3)
            .collect::<Result<Vec<_>, _>>()?;
        if !config.pop3s.is_empty() && tls.is_none() {
            return Err("--pop3s needs --tls-cert and --tls-key, or --tls-self-signed.".into());
        }
        let imap = imap_listeners(&config)?;
        if !config.imaps.is_empty() && tls.is_none() {
            return Err("--imaps needs --tls-cert and --tls-key, or --tls-self-signed.".into());
        }
        // The addresses really bound (a port 0 became a real port): the relay compares next
        // hops with them to find mail that would loop back here (relay/dns.rs `Me`).
        config.listen = listeners
            .iter()
            .filter(|(_, role)| *role == Role::Relay)
            .map(|(bound, _)| bound.addr)
            .collect();
        let web = config.web.map(WebListener::bind).transpose()?;
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
            local_domains: config.directory.domains.clone(),
        });
        let admission = Admission::new(Limits {
            total: config.max_connections,
            per_ip: config.max_connections_per_ip,
        });
        let context = Context {
            config: Arc::new(config),
            deliver,
            tls,
        };
        Ok(Server {
            listeners,
            context,
            admission,
            pop3,
            imap,
            spool,
            web,
        })
    }

    /// The addresses actually bound (port 0 becomes a real port), with their roles.
    fn local_addrs(&self) -> Vec<(SocketAddr, Role)> {
        self.listeners
            .iter()
            .map(|(bound, role)| (bound.addr, *role))
            .collect()
    }

    /// Every bound listener with the name of its role, for the start-up banner.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let smtp = self
            .local_addrs()
            .into_iter()
            .map(|(addr, role)| (role.name(), addr));
        let pop3 = self.pop3.iter().map(|l| {
            (
                if l.implicit_tls { "POP3S" } else { "POP3" },
                l.local_addr(),
            )
        });
        let imap = self.imap.iter().map(|l| {
            (
                if l.implicit_tls { "IMAPS" } else { "IMAP" },
                l.local_addr(),
            )
        });
        let web = self.web.iter().map(|l| ("web", l.local_addr()));
        smtp.chain(pop3).chain(imap).chain(web).collect()
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.context.config
    }

    /// Accept on every listener until the process ends.
    pub fn run(self) {
        let handle = self.spawn();
        for (welcome, _) in handle.smtp {
            welcome.join();
        }
    }

    /// Accept on background threads; the handle stops them.
    pub fn spawn(self) -> ServerHandle {
        let addrs: Vec<SocketAddr> = self.local_addrs().into_iter().map(|(a, _)| a).collect();
        let sessions = Arc::new(AtomicU64::new(0));
        let smtp = self
            .listeners
            .into_iter()
            .map(|(listener, role)| {
                let service = Arc::new(Smtp {
                    context: self.context.clone(),
                    role,
                    sessions: sessions.clone(),
                });
                (
                    Welcome::spawn(listener, self.admission.clone(), service),
                    role,
                )
            })
            .collect();
        let context = &self.context;
        let pop3 = self
            .pop3
            .into_iter()
            .map(|listener| {
                let implicit = listener.implicit_tls;
                let welcome = pop3::server::spawn(
                    listener,
                    context.config.clone(),
                    context.tls.clone(),
                    self.admission.clone(),
                );
                (welcome, implicit)
            })
            .collect();
        let imap = self
            .imap
            .into_iter()
            .map(|listener| {
                let implicit = listener.implicit_tls;
                let welcome = imap::server::spawn(
                    listener,
                    context.config.clone(),
                    context.tls.clone(),
                    self.admission.clone(),
                );
                (welcome, implicit)
            })
            .collect();
        let web = self.web.map(|listener| {
            listener.spawn(
                context.config.clone(),
                self.spool.clone(),
                self.admission.clone(),
            )
        });
        let relay = worker::start(
            context.config.clone(),
            self.spool,
            context.deliver.clone(),
            addrs,
        )
        .map_err(|error| warn!("cannot start the relay thread: {error}"))
        .ok();
        ServerHandle {
            smtp,
            pop3,
            imap,
            config: context.config.clone(),
            _relay: relay,
            web,
        }
    }
}

/// The `--imap` and `--imaps` listeners, bound.
fn imap_listeners(config: &Config) -> Result<Vec<Listener>, String> {
    let plain = config.imap.iter().map(|addr| (addr, false));
    let implicit = config.imaps.iter().map(|addr| (addr, true));
    plain
        .chain(implicit)
        .map(|(addr, tls)| Listener::bind(*addr, tls))
        .collect()
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
fn tls_acceptor(config: &Config) -> Result<Option<Arc<Acceptor>>, String> {
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

impl ServerHandle {
    /// The first address (the first `--listen`).
    pub fn addr(&self) -> SocketAddr {
        self.smtp[0].0.addr()
    }

    /// The first address of a role's listener (`--submission`, `--smtps`), if there is one.
    pub fn addr_of(&self, role: Role) -> Option<SocketAddr> {
        self.smtp
            .iter()
            .find(|(_, r)| *r == role)
            .map(|(welcome, _)| welcome.addr())
    }

    /// SMTP sessions running now.
    pub fn active_sessions(&self) -> usize {
        self.smtp.iter().map(|(w, _)| w.active_sessions()).sum()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The first `--pop3` address actually bound, if any.
    pub fn pop3_addr(&self) -> Option<SocketAddr> {
        self.pop3_of(false)
    }

    /// The first `--pop3s` address actually bound, if any.
    pub fn pop3s_addr(&self) -> Option<SocketAddr> {
        self.pop3_of(true)
    }

    fn pop3_of(&self, implicit_tls: bool) -> Option<SocketAddr> {
        self.pop3
            .iter()
            .find(|(_, implicit)| *implicit == implicit_tls)
            .map(|(welcome, _)| welcome.addr())
    }

    /// The first `--imap` (`false`) or `--imaps` (`true`) address actually bound, if any.
    pub fn imap_addr(&self, implicit_tls: bool) -> Option<SocketAddr> {
        self.imap
            .iter()
            .find(|(_, implicit)| *implicit == implicit_tls)
            .map(|(welcome, _)| welcome.addr())
    }

    /// IMAP sessions running now.
    pub fn imap_sessions(&self) -> usize {
        self.imap.iter().map(|(w, _)| w.active_sessions()).sum()
    }

    /// The `--web` address actually bound, if any.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(WebHandle::addr)
    }

    /// POP3 sessions running now.
    pub fn pop3_sessions(&self) -> usize {
        self.pop3.iter().map(|(w, _)| w.active_sessions()).sum()
    }
}

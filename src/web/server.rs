//! The `--web` listener: another welcome socket with a thread per client, serving the live view
//! of the sessions, the mailboxes and the queue.
//!
//! Interface:
//! - `WebListener::bind(addr)` binds (an error is one plain sentence); `spawn(config, spool,
//!   admission)` accepts on a background thread (`net/listener.rs`, as SMTP and POP3 do) and
//!   returns a `WebHandle` that stops it when dropped.
//! - Paths: `/` (the page, with both diagrams drawn in), `/app.js`, `/app.css`, `/events`
//!   (the live updates, `text/event-stream`), `/mail/USER/N` (one message, raw: only when the
//!   listener is on loopback, or with `--web-show-mail`). Everything else is 404.
//!
//! Each client costs one thread, and every thread ends: a request head must arrive within
//! `http::REQUEST_DEADLINE`, every write gives up after `WRITE_TIMEOUT`, and an event stream
//! closes after `STREAM_LIFETIME` (the browser opens a new one by itself). Browsers share the
//! caps of SMTP and POP3 clients (`--max-connections`, `--max-connections-per-ip`): the one
//! over a cap hears 503.
//!
//! Standards: RFC 9112 §9.3, §9.6, RFC 9110 §15

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::info;

use crate::config::Config;
use crate::net::listener::{self, Admission, Bound, Service, Welcome};
use crate::relay::queue::Spool;
use crate::web::http::{self, Method, Refusal, Request, Response};
use crate::web::store;
use crate::web::svg;

/// A browser that stops reading is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// An event stream ends after this long; `retry` makes the browser reconnect at once.
const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// A comment line this often keeps proxies from closing a quiet stream, and finds browsers
/// that went away.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often the mailboxes and the queue are looked at for changes.
const STORE_POLL: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// A bound web welcome socket, not yet accepting.
pub struct WebListener {
    bound: Bound,
}

/// Stops the acceptor when dropped (and tells event streams to end); browser threads end on
/// their own deadlines.
pub struct WebHandle {
    welcome: Welcome,
    shared: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    spool: Arc<Spool>,
    /// The page with both diagrams in it, made once.
    page: String,
    /// Raw messages may be shown (loopback, or `--web-show-mail`).
    show_mail: bool,
    /// The last look at the mailboxes and queue, shared by every browser.
    store: Mutex<Option<(Instant, String)>>,
    stopping: AtomicBool,
}

/// The web as a welcome socket's service, beside SMTP and POP3.
struct Web(Arc<Shared>);

impl Service for Web {
    fn session(&self, stream: TcpStream) -> (String, Box<dyn FnOnce() + Send>) {
        let shared = self.0.clone();
        ("web".to_string(), Box::new(move || serve(stream, &shared)))
    }

    fn refuse(&self, stream: TcpStream, _why: listener::Refusal) {
        refuse(stream);
    }
}

impl WebListener {
    pub fn bind(addr: SocketAddr) -> Result<WebListener, String> {
        Ok(WebListener {
            bound: listener::bind(addr)?,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.bound.addr
    }

    /// Accept on a background thread; browsers count against the server's connection caps.
    pub fn spawn(
        self,
        config: Arc<Config>,
        spool: Arc<Spool>,
        admission: Arc<Admission>,
    ) -> WebHandle {
        let addr = self.bound.addr;
        let shared = Arc::new(Shared {
            show_mail: config.live.shows_mail(),
            config,
            spool,
            page: page(),
            store: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        let welcome = Welcome::spawn(self.bound, admission, Arc::new(Web(shared.clone())));
        info!("web view on http://{addr}/");
        WebHandle { welcome, shared }
    }
}

impl WebHandle {
    pub fn addr(&self) -> SocketAddr {
        self.welcome.addr()
    }
}

impl Drop for WebHandle {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }
}

/// The page, with the SMTP and POP3 diagrams drawn in from their tables.
fn page() -> String {
    use crate::pop3::session as pop3;
    use crate::smtp::session as smtp;
    let smtp = svg::diagram(
        smtp::TRANSITIONS,
        smtp::StateName::Connected,
        "smtp",
        crate::smtp::session::label,
    );
    let pop3 = svg::diagram(
        pop3::POP3_TRANSITIONS,
        pop3::StateName::Authorization,
        "pop3",
        pop3::label,
    );
    PAGE.replace("<!--smtp-diagram-->", &smtp)
        .replace("<!--pop3-diagram-->", &pop3)
}

/// 503 to a browser over a cap, from the accepting thread, so without waiting for it: drop
/// what it has sent so far (closing on unread input would reset the connection), answer.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.set_nonblocking(false);
    let response = Response::status(503);
    let mut bytes = response.head(Some(response.body.len())).into_bytes();
    bytes.extend_from_slice(&response.body);
    listener::say_and_close(stream, &bytes);
}

// ANCHOR: serve
/// One browser: one request, one response, close (keep-alive off, RFC 9112 §9.3).
fn serve(mut stream: TcpStream, shared: &Shared) {
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let deadline = Instant::now() + http::REQUEST_DEADLINE;
    let request = http::read_head(&mut stream, deadline).and_then(|head| http::parse(&head));
    match request {
        Ok(request) => {
            let _ = answer(&mut stream, &request, shared);
        }
        Err(Refusal::Status(status)) => {
            let _ = Response::status(status).write(&mut stream, Method::Get);
            http::linger_close(&mut stream);
        }
        Err(Refusal::Gone) => {}
    }
}
// ANCHOR_END: serve

fn answer(stream: &mut TcpStream, request: &Request, shared: &Shared) -> io::Result<()> {
    let response = match request.path.as_str() {
        "/" => Response::new(200, "text/html; charset=utf-8", shared.page.as_str()),
        "/app.js" => Response::new(200, "text/javascript; charset=utf-8", SCRIPT),
        "/app.css" => Response::new(200, "text/css; charset=utf-8", STYLE),
        "/events" => return events(stream, request.method, shared),
        path => match path.strip_prefix("/mail/") {
            Some(rest) => raw_message(rest, shared),
            None => Response::status(404),
        },
    };
    response.write(stream, request.method)
}

/// `/mail/alice/2`: the second message of alice's mbox as stored, trace headers and all.
fn raw_message(rest: &str, shared: &Shared) -> Response {
    if !shared.show_mail {
        return Response::new(
            403,
            "text/plain; charset=utf-8",
            "Mail is shown only when --web listens on loopback, or with --web-show-mail.\n",
        );
    }
    match store::message(&shared.config, rest) {
        Some(content) => Response {
            policy: http::NOTHING_POLICY,
            ..Response::new(200, "text/plain; charset=utf-8", content)
        },
        None => Response::status(404),
    }
}

// ANCHOR: events
/// `text/event-stream`: a snapshot of every session, then each change as it happens, and the
/// mailboxes and queue whenever they change. Each message is a `data:` line and an empty line.
fn events(stream: &mut TcpStream, method: Method, shared: &Shared) -> io::Result<()> {
    let head = Response::new(200, "text/event-stream; charset=utf-8", "");
    stream.write_all(head.head(None).as_bytes())?;
    if method == Method::Head {
        return stream.flush();
    }
    let board = &shared.config.live;
    let (mut seq, snapshot) = board.snapshot();
    stream.write_all(b"retry: 1000\n\n")?;
    send(stream, &snapshot)?;
    let mut store_sent = String::new();
    let (started, mut last_write) = (Instant::now(), Instant::now());
    while started.elapsed() < STREAM_LIFETIME && !shared.stopping.load(Ordering::SeqCst) {
        let store = store_json(shared);
        if store != store_sent {
            send(stream, &store)?;
            store_sent = store;
            last_write = Instant::now();
        }
        board.wait(seq, STORE_POLL);
        match board.since(seq) {
            Some((last, events)) if !events.is_empty() => {
                for event in events {
                    send(stream, &event)?;
                }
                seq = last;
                last_write = Instant::now();
            }
            Some(_) => {}
            None => {
                let (now, snapshot) = board.snapshot();
                send(stream, &snapshot)?;
                seq = now;
            }
        }
        if last_write.elapsed() >= KEEPALIVE {
            stream.write_all(b": still here\n\n")?;
            stream.flush()?;
            last_write = Instant::now();
        }
    }
    Ok(())
}
// ANCHOR_END: events

/// One event: a JSON object never holds a raw newline, so it is always one `data:` line.
fn send(stream: &mut TcpStream, json: &str) -> io::Result<()> {
    stream.write_all(format!("data: {json}\n\n").as_bytes())?;
    stream.flush()
}

/// The mailboxes and queue as JSON, looked at no more than once per `STORE_POLL` however many
/// browsers watch.
fn store_json(shared: &Shared) -> String {
    let mut cached = crate::lock(&shared.store);
    if let Some((at, json)) = cached.as_ref() {
        if at.elapsed() < STORE_POLL {
            return json.clone();
        }
    }
    let json = store::json(&shared.config, &shared.spool);
    *cached = Some((Instant::now(), json.clone()));
    json
}

//! The load generator: many SMTP clients at once against any server, in the spirit of Postfix's
//! `smtp-source`, reporting throughput and latency.
//!
//! Interface:
//! - `bench_main(args)` runs `smtplab bench ...`, prints the report and returns the exit code.
//! - `Options::parse(args)` reads the command line; `run(&options)` runs the chosen mode and
//!   returns a `Report` whose `Display` is the printed report.
//! - Three modes: send mail (the default: `--sessions` threads, each sending its share of
//!   `--messages` back to back over one connection), `--connect-only` (connections per second:
//!   connect, greeting, QUIT), and `--idle N` (hold N connections open after the greeting and
//!   read the server's memory from `/proc/PID/status` before and after, with `--pid`).
//!
//! Every read has a timeout (`--timeout`), so a stuck server ends the run with an error instead
//! of hanging it. One thread per session, plain blocking sockets: the same model as the server.
//!
//! Standards: RFC 5321 §3.3, §4.1.1.4, §4.5.2, §4.2

use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use crate::relay::client;

/// How long any one read or write may take before the run counts the session as failed.
const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// RFC 5322 §2.1.1 asks for lines of at most 78 characters; the filler uses 76 plus CRLF.
const FILLER_LINE: usize = 76;

const USAGE: &str =
    "Usage: smtplab bench --server ADDR [--sessions N] [--messages M] [--size BYTES]
                    [--recipients R] [--to ADDR]... [--from ADDR] [--timeout SECS]
       smtplab bench --server ADDR --connect-only [--sessions N] [--messages M]
       smtplab bench --server ADDR --idle N [--pid PID]

Sends M messages of BYTES octets over N parallel sessions (one connection each, transactions
back to back with no RSET) and prints messages/s and the latency of each transaction, from
MAIL to the 250 after the final dot. --connect-only opens M connections instead (connect,
greeting, QUIT). --idle opens N connections, waits for each greeting, and reports the server's
memory per connection (VmRSS of PID, Linux).";

/// What to run, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub server: SocketAddr,
    pub sessions: usize,
    pub messages: usize,
    pub size: usize,
    pub recipients: usize,
    /// Recipients, used in turn for the `recipients` RCPT commands of each message.
    pub to: Vec<String>,
    pub from: String,
    pub timeout: Duration,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Send,
    ConnectOnly,
    /// Hold this many connections; read the memory of this process (if given).
    Idle {
        connections: usize,
        pid: Option<u32>,
    },
}

fn option_parser() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt("", "server", "SMTP server to load", "ADDR");
    o.optopt("", "sessions", "parallel sessions (default 10)", "N");
    o.optopt("", "messages", "messages in all (default 1000)", "M");
    o.optopt("", "size", "octets per message (default 2048)", "BYTES");
    o.optopt(
        "",
        "recipients",
        "RCPT commands per message (default 1)",
        "R",
    );
    o.optmulti("", "to", "recipient (default alice@localhost)", "ADDR");
    o.optopt("", "from", "sender (default bench@client.example)", "ADDR");
    o.optopt(
        "",
        "timeout",
        "seconds any read may take (default 30)",
        "SECS",
    );
    o.optflag("", "connect-only", "measure connections per second");
    o.optopt("", "idle", "hold N connections after the greeting", "N");
    o.optopt("", "pid", "server process whose VmRSS to read", "PID");
    o.optflag("h", "help", "print this help");
    o
}

impl Options {
    /// Parse `smtplab bench` arguments; `Ok(None)` means help was asked for.
    pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
        let m = option_parser().parse(args).map_err(|e| e.to_string())?;
        if m.opt_present("help") {
            return Ok(None);
        }
        let server = m.opt_str("server").ok_or("--server ADDR is required")?;
        let server = resolve(&server)?;
        let mode = match m.opt_str("idle") {
            Some(n) => Mode::Idle {
                connections: parse_number("idle", &n)?,
                pid: m
                    .opt_str("pid")
                    .map(|p| parse_number("pid", &p))
                    .transpose()?,
            },
            None if m.opt_present("connect-only") => Mode::ConnectOnly,
            None => Mode::Send,
        };
        let mut to = m.opt_strs("to");
        if to.is_empty() {
            to.push("alice@localhost".into());
        }
        let options = Options {
            server,
            sessions: number_or(&m, "sessions", 10)?,
            messages: number_or(&m, "messages", 1000)?,
            size: number_or(&m, "size", 2048)?,
            recipients: number_or(&m, "recipients", 1)?,
            to,
            from: m
                .opt_str("from")
                .unwrap_or_else(|| "bench@client.example".into()),
            timeout: Duration::from_secs(number_or(&m, "timeout", DEFAULT_TIMEOUT_SECS)?),
            mode,
        };
        if options.sessions == 0 || options.recipients == 0 {
            return Err("--sessions and --recipients must be at least 1".into());
        }
        Ok(Some(options))
    }
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text} has no address"))
}

fn parse_number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("--{name} wants a number, not {text:?}"))
}

fn number_or<T: std::str::FromStr>(
    m: &getopts::Matches,
    name: &str,
    default: T,
) -> Result<T, String> {
    m.opt_str(name)
        .map_or(Ok(default), |text| parse_number(name, &text))
}

/// `smtplab bench ...`: 0 when every session succeeded, 1 when some failed, 2 on bad options.
pub fn bench_main(args: &[String]) -> i32 {
    let options = match Options::parse(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{}", option_parser().usage(USAGE));
            return 0;
        }
        Err(error) => {
            eprintln!("smtplab bench: {error}. Try smtplab bench --help.");
            return 2;
        }
    };
    let report = run(&options);
    print!("{report}");
    i32::from(!report.errors.is_empty())
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// What a run measured. Latencies are sorted.
#[derive(Debug, Default)]
pub struct Report {
    pub description: String,
    /// Transactions (or connections) that completed.
    pub done: usize,
    pub elapsed: Duration,
    /// Per transaction: MAIL to the 250 after the dot (or connect to 221 with `--connect-only`).
    latencies: Vec<Duration>,
    /// Per connection: TCP connect to the 220 greeting.
    pub connects: Vec<Duration>,
    /// Idle mode: connections that got 220, and VmRSS in KiB before and after (when known).
    pub greeted: usize,
    rss_kib: Option<(u64, u64)>,
    /// One line per failed session.
    pub errors: Vec<String>,
}

impl Report {
    fn per_second(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// The `q`-quantile of sorted values (nearest rank), zero if there are none.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "{}", self.description)?;
        if let Some((before, after)) = self.rss_kib {
            let per = (after as f64 - before as f64) / self.greeted.max(1) as f64;
            writeln!(f, "  greeted      {} connections got 220", self.greeted)?;
            writeln!(f, "  server RSS   {before} KiB before, {after} KiB after")?;
            writeln!(f, "  memory       {per:.1} KiB per idle connection")?;
        } else if self.greeted > 0 {
            writeln!(f, "  greeted      {} connections got 220", self.greeted)?;
        }
        if !self.latencies.is_empty() {
            writeln!(
                f,
                "  completed    {} in {:.2} s",
                self.done,
                self.elapsed.as_secs_f64()
            )?;
            writeln!(f, "  rate         {:.1} per second", self.per_second())?;
            writeln!(
                f,
                "  latency      p50 {}  p99 {}  max {}",
                millis(percentile(&self.latencies, 0.50)),
                millis(percentile(&self.latencies, 0.99)),
                millis(percentile(&self.latencies, 1.0))
            )?;
        }
        if !self.connects.is_empty() {
            writeln!(
                f,
                "  connect      p50 {}  p99 {}  (TCP connect to the 220 greeting)",
                millis(percentile(&self.connects, 0.50)),
                millis(percentile(&self.connects, 0.99))
            )?;
        }
        writeln!(f, "  errors       {}", self.errors.len())?;
        for error in self.errors.iter().take(10) {
            writeln!(f, "    {error}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// Run the mode the options chose.
pub fn run(options: &Options) -> Report {
    match options.mode {
        Mode::Send => run_sessions(options, send_session, describe_send(options)),
        Mode::ConnectOnly => run_sessions(
            options,
            connect_session,
            format!(
                "smtplab bench: {} connections over {} sessions to {} (connect, 220, QUIT, 221)",
                options.messages, options.sessions, options.server
            ),
        ),
        Mode::Idle { connections, pid } => run_idle(options, connections, pid),
    }
}

fn describe_send(options: &Options) -> String {
    format!(
        "smtplab bench: {} messages of {} octets, {} recipient(s) each, over {} sessions to {}\n  \
         (latency: MAIL to the 250 after the dot)",
        options.messages, options.size, options.recipients, options.sessions, options.server
    )
}

/// What one session thread measured.
#[derive(Default)]
struct SessionResult {
    latencies: Vec<Duration>,
    connects: Vec<Duration>,
    error: Option<String>,
}

type SessionFn = fn(&Options, usize, usize, &mut SessionResult) -> io::Result<()>;

/// One thread per session; session `i` does its share of `options.messages`.
fn run_sessions(options: &Options, session: SessionFn, description: String) -> Report {
    let started = Instant::now();
    let results: Vec<SessionResult> = thread::scope(|scope| {
        let threads: Vec<_> = (0..options.sessions)
            .map(|index| {
                let share = share_of(options.messages, options.sessions, index);
                scope.spawn(move || {
                    let mut result = SessionResult::default();
                    if let Err(error) = session(options, index, share, &mut result) {
                        result.error = Some(format!("session {index}: {error}"));
                    }
                    result
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let mut report = Report {
        description,
        elapsed: started.elapsed(),
        ..Report::default()
    };
    for result in results {
        report.latencies.extend(result.latencies);
        report.connects.extend(result.connects);
        report.errors.extend(result.error);
    }
    report.done = report.latencies.len();
    report.latencies.sort();
    report.connects.sort();
    report
}

/// Session `index` of `sessions` sends this many of `total` (the first ones take the remainder).
fn share_of(total: usize, sessions: usize, index: usize) -> usize {
    total / sessions + usize::from(index < total % sessions)
}

// ANCHOR: send_session
/// One connection, `count` transactions back to back: MAIL, RCPT..., DATA, content, dot.
fn send_session(
    options: &Options,
    index: usize,
    count: usize,
    result: &mut SessionResult,
) -> io::Result<()> {
    let mut client = Client::connect(options, result)?;
    client.command("EHLO bench.client.example", 250)?;
    for n in 0..count {
        let started = Instant::now();
        client.command(&format!("MAIL FROM:<{}>", options.from), 250)?;
        for r in 0..options.recipients {
            let to = &options.to[r % options.to.len()];
            client.command(&format!("RCPT TO:<{to}>"), 250)?;
        }
        client.command("DATA", 354)?;
        client.send(&message(index, n, options.size))?;
        client.expect(250, "the end of data")?;
        result.latencies.push(started.elapsed());
    }
    client.command("QUIT", 221)
}
// ANCHOR_END: send_session

/// `count` connections one after another: connect, greeting, QUIT, 221.
fn connect_session(
    options: &Options,
    _index: usize,
    count: usize,
    result: &mut SessionResult,
) -> io::Result<()> {
    for _ in 0..count {
        let started = Instant::now();
        let mut client = Client::connect(options, result)?;
        client.command("QUIT", 221)?;
        result.latencies.push(started.elapsed());
    }
    Ok(())
}

/// One message of exactly `size` octets (or just its headers, if `size` is smaller) with a
/// unique `X-Bench-Id` so a reader can count duplicates and losses, then the end-of-data line.
/// Body lines are `FILLER_LINE` characters; none starts with a dot or `From `, so no
/// transparency is needed (RFC 5321 §4.5.2).
fn message(session: usize, n: usize, size: usize) -> Vec<u8> {
    let mut out =
        format!("Subject: smtplab bench\r\nX-Bench-Id: {session}.{n}\r\n\r\n").into_bytes();
    while out.len() + 3 <= size {
        let room = size - out.len() - 2;
        out.resize(out.len() + room.min(FILLER_LINE), b'x');
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Hold `connections` connections open after their greetings and read the server's memory.
fn run_idle(options: &Options, connections: usize, pid: Option<u32>) -> Report {
    let before = pid.and_then(vm_rss_kib);
    let started = Instant::now();
    let mut report = Report {
        description: format!(
            "smtplab bench: {connections} idle connections to {} (held after the 220 greeting)",
            options.server
        ),
        ..Report::default()
    };
    let mut held = Vec::with_capacity(connections);
    for index in 0..connections {
        let mut result = SessionResult::default();
        match Client::connect(options, &mut result) {
            Ok(client) => held.push(client),
            Err(error) => report.errors.push(format!("connection {index}: {error}")),
        }
        report.connects.extend(result.connects);
    }
    report.greeted = held.len();
    let after = pid.and_then(vm_rss_kib);
    report.rss_kib = before.zip(after);
    report.elapsed = started.elapsed();
    report.connects.sort();
    drop(held);
    report
}

/// The resident set size of process `pid` in KiB, from the `VmRSS:` line of `/proc/PID/status`.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// One SMTP connection that states what it expects at every step.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connect and read the 220 greeting, recording how long that took.
    fn connect(options: &Options, result: &mut SessionResult) -> io::Result<Client> {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&options.server, options.timeout)?;
        stream.set_read_timeout(Some(options.timeout))?;
        stream.set_write_timeout(Some(options.timeout))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            reader: BufReader::new(stream),
        };
        client.expect(220, "the greeting")?;
        result.connects.push(started.elapsed());
        Ok(client)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Send one command line and expect this reply code.
    fn command(&mut self, line: &str, code: u16) -> io::Result<()> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.expect(code, line)
    }

    /// Read one reply (all its lines) and fail unless its code is `code`.
    fn expect(&mut self, code: u16, after: &str) -> io::Result<()> {
        client::expect(&mut self.reader, &[code], after).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, sessions) in [(20_000, 20), (10, 3), (2, 5), (0, 4)] {
            let sum: usize = (0..sessions).map(|i| share_of(total, sessions, i)).sum();
            assert_eq!(sum, total, "{total} over {sessions}");
        }
        assert_eq!(share_of(10, 3, 0), 4);
        assert_eq!(share_of(10, 3, 2), 3);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn options_parse_with_defaults_and_modes() {
        let o = Options::parse(&args(
            "--server 127.0.0.1:2525 --sessions 20 --messages 20000",
        ))
        .ok()
        .flatten();
        let o = o.as_ref();
        assert_eq!(
            o.map(|o| (o.sessions, o.messages, o.size)),
            Some((20, 20000, 2048))
        );
        assert_eq!(
            o.map(|o| o.to.clone()),
            Some(vec!["alice@localhost".to_string()])
        );
        assert_eq!(o.map(|o| o.mode), Some(Mode::Send));
        let idle = Options::parse(&args("--server 127.0.0.1:1 --idle 5 --pid 7"))
            .ok()
            .flatten()
            .map(|o| o.mode);
        assert_eq!(
            idle,
            Some(Mode::Idle {
                connections: 5,
                pid: Some(7)
            })
        );
        assert!(Options::parse(&args("--sessions 2")).is_err());
        assert!(Options::parse(&args("--server 127.0.0.1:1 --size lots")).is_err());
    }

    #[test]
    fn messages_have_the_asked_size_and_need_no_dot_stuffing() {
        let body = message(3, 7, 2048);
        assert_eq!(body.len(), 2048 + ".\r\n".len());
        for size in [0, 10, 44, 45, 46, 47, 200] {
            let small = message(0, 0, size);
            assert!(small.ends_with(b"\r\n.\r\n"), "{size}");
        }
        assert!(body.starts_with(b"Subject: smtplab bench\r\nX-Bench-Id: 3.7\r\n"));
        assert!(body.ends_with(b"\r\n.\r\n"));
        let inner = &body[..body.len() - 3];
        assert!(!inner.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));
    }

    #[test]
    fn own_memory_is_readable() {
        assert!(vm_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}

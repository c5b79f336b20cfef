//! The little HTTP/1.1 the live view needs: read one request head within limits, answer with
//! one response, close. GET and HEAD only, no bodies in, no keep-alive.
//!
//! Interface:
//! - `read_head(stream, deadline)` reads up to the empty line that ends a request head, or
//!   refuses: a request line over `MAX_REQUEST_LINE` is 414, a head over `MAX_HEAD` 431, a
//!   client too slow to finish it 408. `parse(head)` checks it: 400 for a malformed line or a
//!   missing `Host` in HTTP/1.1, 505 for another version, 405 for a method other than GET and
//!   HEAD, 431 for too many fields.
//! - `Response` is a status, a type and a body; `write` sends it with `Connection: close` and,
//!   for pages, `Content-Security-Policy: default-src 'self'`; HEAD gets the head alone.
//! - `linger_close(stream)` closes so the client reads a refusal before the socket goes.
//!
//! Like SMTP, HTTP is lines of text over TCP; unlike SMTP, it is one question and one answer,
//! and the server never speaks first.
//!
//! Standards: RFC 9112 §2.1, §3, §3.2, §5.1, §9.3, §9.6, RFC 9110 §9.1, §9.3.1, §9.3.2, §15,
//!   RFC 6585 §5

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// The longest request line read (RFC 9112 §3: a server that receives a longer target
/// answers 414). The page's own paths are a few dozen octets.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The longest request head, request line and fields together (431 beyond).
const MAX_HEAD: usize = 16 * 1024;
/// The most header fields in one request (431 beyond).
const MAX_FIELDS: usize = 64;
/// A client has this long to send its whole request head (408 after).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a refused client's extra bytes are read and dropped before the close.
const LINGER: Duration = Duration::from_millis(500);

/// The methods served (RFC 9110 §9.3.1, §9.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// A request the server will answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without the query.
    pub path: String,
}

/// Why a request gets no page: its status, or a client that left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Status(u16),
    Gone,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The Content-Security-Policy: `default-src 'self'` for the page, `'none'` for raw mail.
    pub policy: &'static str,
}

/// The page's own policy: scripts, styles and data only from this server, nothing inline.
const PAGE_POLICY: &str = "default-src 'self'";
/// Raw mail is text and may load nothing at all.
pub const NOTHING_POLICY: &str = "default-src 'none'";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            policy: PAGE_POLICY,
        }
    }

    /// A refusal, with the reason phrase as a plain-text body a student can read in telnet.
    pub fn status(status: u16) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            format!("{status} {}\n", reason(status)),
        )
    }

    /// The head, with the header fields every response carries.
    pub fn head(&self, length: Option<usize>) -> String {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type
        );
        if let Some(length) = length {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        if self.status == 405 {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str(&format!(
            "Content-Security-Policy: {}\r\nX-Content-Type-Options: nosniff\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.policy
        ));
        head
    }

    /// Send it; after HEAD only the head (RFC 9110 §9.3.2).
    pub fn write(&self, stream: &mut impl Write, method: Method) -> io::Result<()> {
        stream.write_all(self.head(Some(self.body.len())).as_bytes())?;
        if method == Method::Get {
            stream.write_all(&self.body)?;
        }
        stream.flush()
    }
}

/// The reason phrase of each status this server sends (RFC 9110 §15).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

// ANCHOR: read_head
/// Read a request head: everything up to the first empty line, within the limits.
pub fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Refusal> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    loop {
        let end = head_end(&head);
        let line_end = head.iter().position(|&b| b == b'\n');
        if line_end.map_or(head.len(), |end| end + 1) > MAX_REQUEST_LINE {
            return Err(Refusal::Status(414));
        }
        if end.unwrap_or(head.len()) > MAX_HEAD {
            return Err(Refusal::Status(431));
        }
        if let Some(end) = end {
            head.truncate(end);
            return Ok(head);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(Refusal::Status(408));
        }
        match stream.read(&mut buffer) {
            Ok(0) => return Err(Refusal::Gone),
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Refusal::Status(408))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Refusal::Gone),
        }
    }
}
// ANCHOR_END: read_head

/// Where the head ends: after `CRLF CRLF`, or `LF LF` from a hand-typed request.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    crlf.into_iter().chain(lf).min()
}

// ANCHOR: parse
/// Check a request head: the request line (RFC 9112 §3), the fields (§5.1), `Host` (§3.2).
pub fn parse(head: &[u8]) -> Result<Request, Refusal> {
    let bad = Refusal::Status(400);
    let text = std::str::from_utf8(head).map_err(|_| bad)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(bad)?;
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(bad);
    };
    let needs_host = match *version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err(Refusal::Status(505)),
        _ => return Err(bad),
    };
    if !target.starts_with('/') {
        return Err(bad);
    }
    let fields: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
    if fields.len() > MAX_FIELDS {
        return Err(Refusal::Status(431));
    }
    let mut hosts = 0;
    for field in fields {
        let (name, _) = field.split_once(':').ok_or(bad)?;
        // No whitespace between a field name and its colon (RFC 9112 §5.1).
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(bad);
        }
        hosts += usize::from(name.eq_ignore_ascii_case("host"));
    }
    if hosts > 1 || (needs_host && hosts == 0) {
        return Err(bad);
    }
    let method = match *method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        m if !m.is_empty() && m.bytes().all(is_token) => return Err(Refusal::Status(405)),
        _ => return Err(bad),
    };
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Request { method, path })
}
// ANCHOR_END: parse

/// A `tchar` of RFC 9110 §5.6.2: the characters of a method or a field name.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Close so that the client reads what was written: stop sending, then read and drop what it
/// is still sending for a moment. Closing with unread input would make the kernel reset the
/// connection, and the client could lose the answer (RFC 9112 §9.6).
pub fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while let Some(left) = until
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> Result<Request, Refusal> {
        parse(head.as_bytes())
    }

    #[test]
    fn a_hand_typed_get_is_served() {
        assert_eq!(
            status("GET /events?x=1 HTTP/1.1\nHost: 127.0.0.1\n\n"),
            Ok(Request {
                method: Method::Get,
                path: "/events".into()
            })
        );
        assert_eq!(
            status("HEAD / HTTP/1.0\r\n\r\n").map(|r| r.method),
            Ok(Method::Head)
        );
    }

    #[test]
    fn each_fault_has_its_status() {
        let s = Refusal::Status;
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), Err(s(400)), "no Host");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(s(400))
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), Err(s(400)));
        assert_eq!(status("POST / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(s(405)));
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), Err(s(505)));
        assert_eq!(status("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(s(400)));
        assert_eq!(
            status("GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(s(400))
        );
        assert_eq!(status("HELO x\r\n\r\n"), Err(s(400)));
        let many = "X: y\r\n".repeat(MAX_FIELDS + 1);
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Err(s(431))
        );
    }

    #[test]
    fn the_head_closes_and_sets_the_policy() {
        let head = Response::status(405).head(Some(3));
        assert!(
            head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{head}"
        );
        for field in [
            "Allow: GET, HEAD\r\n",
            "Content-Length: 3\r\n",
            "Connection: close\r\n",
            "Content-Security-Policy: default-src 'self'\r\n",
        ] {
            assert!(head.contains(field), "{field}");
        }
        let mut out = Vec::new();
        let page = Response::new(200, "text/plain", "body");
        page.write(&mut out, Method::Head).expect("write");
        assert!(out.ends_with(b"\r\n\r\n"), "HEAD sends no body");
    }
}

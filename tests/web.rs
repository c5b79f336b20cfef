//! `--web` over real sockets: the page, its policy, the event stream, and the right status for
//! each malformed request; idle browsers cost one thread each, and others are still served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{connect_with_timeouts, free_addr, start, start_binary, wait_until, TestServer};

fn web_server(extra: &[&str]) -> (TestServer, SocketAddr) {
    let mut options = vec!["--web", "127.0.0.1:0"];
    options.extend_from_slice(extra);
    let server = start(&options);
    let web = server.handle.web_addr().expect("web listener");
    (server, web)
}

/// Send `request` and read the whole response (the server closes after one).
fn exchange(web: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect_with_timeouts(web);
    stream.write_all(request).expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[test]
fn a_hand_typed_get_gets_the_page_with_its_policy() {
    let (_server, web) = web_server(&[]);
    let page = exchange(web, b"GET / HTTP/1.1\nHost: 127.0.0.1\n\n");
    assert_eq!(status_line(&page), "HTTP/1.1 200 OK");
    assert!(page.contains("Content-Security-Policy: default-src 'self'\r\n"));
    assert!(page.contains("Connection: close\r\n"));
    assert!(
        page.contains("id=\"smtp-RcptGiven\""),
        "the diagram is drawn in"
    );
    assert!(
        !page.contains("<script>") && !page.contains("<style"),
        "nothing inline"
    );
    let head = exchange(web, b"HEAD /app.js HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
    assert!(head.contains("Content-Type: text/javascript"));
    let missing = exchange(web, b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_line(&missing), "HTTP/1.1 404 Not Found");
}

#[test]
fn malformed_requests_get_their_status() {
    let (_server, web) = web_server(&[]);
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(10 * 1024));
    let cases: [(&[u8], &str); 5] = [
        (long.as_bytes(), "HTTP/1.1 414 URI Too Long"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            "HTTP/1.1 405 Method Not Allowed",
        ),
        (b"EHLO student\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            b"GET / HTTP/3\r\nHost: a\r\n\r\n",
            "HTTP/1.1 505 HTTP Version Not Supported",
        ),
    ];
    for (request, expected) in cases {
        let response = exchange(web, request);
        assert_eq!(status_line(&response), expected);
        assert!(response.contains("Connection: close\r\n"));
    }
    let post = exchange(web, b"POST / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(post.contains("Allow: GET, HEAD\r\n"));
    let fat = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-Filler: 0123456789012345678901234567890123456789\r\n".repeat(400)
    );
    let response = exchange(web, fat.as_bytes());
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

#[test]
fn a_message_opens_raw_with_its_trace_headers() {
    let (server, web) = web_server(&[]);
    let mut client = server.connect();
    client.send_mail(
        "a@example.com",
        &["alice@localhost"],
        "Subject: <b>hi</b>\r\n\r\nHello.\r\n",
    );
    let raw = exchange(web, b"GET /mail/alice/1 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_line(&raw), "HTTP/1.1 200 OK");
    assert!(raw.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    assert!(raw.contains("Content-Security-Policy: default-src 'none'\r\n"));
    assert!(
        raw.contains("\r\n\r\nReturn-Path: <a@example.com>\n"),
        "{raw}"
    );
    assert!(raw.contains("Received: from client.example") && raw.contains("Subject: <b>hi</b>"));
    for missing in [
        "/mail/alice/2",
        "/mail/alice/0",
        "/mail/../x/1",
        "/mail/alice",
    ] {
        let request = format!("GET {missing} HTTP/1.1\r\nHost: a\r\n\r\n");
        let response = exchange(web, request.as_bytes());
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 404 Not Found",
            "{missing}"
        );
    }
}

/// Read the event stream from its start until it holds every one of `wanted`.
fn stream_until(web: SocketAddr, wanted: &[&str]) -> String {
    let mut stream = connect_with_timeouts(web);
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + common::READ_TIMEOUT;
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if wanted.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "not all of {wanted:?} in:\n{text}"
        );
        let n = stream.read(&mut buffer).expect("read the stream");
        assert!(n > 0, "stream closed early:\n{text}");
        seen.extend_from_slice(&buffer[..n]);
    }
}

#[test]
fn the_event_stream_starts_with_every_session() {
    let (server, web) = web_server(&[]);
    let mut client = server.connect();
    client.expect("EHLO student.test", 250);
    client.expect("AUTH PLAIN AGFsaWNlAHBhc3N3b3Jk", 235);
    client.expect("MAIL FROM:<a@example.com>", 250);
    let text = stream_until(web, &[r#""state":"MailGiven""#, r#""kind":"store""#]);
    assert!(text.contains(r#""text":"AUTH PLAIN {secret}""#), "{text}");
    assert!(
        !text.contains("AGFsaWNl"),
        "the credentials never reach the page"
    );
    assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream"));
    assert!(text.contains(r#""user":"alice","count":"0""#), "{text}");
}

#[test]
fn pop3_sessions_show_with_their_state_and_no_password() {
    let (server, web) = web_server(&["--pop3", "127.0.0.1:0"]);
    let pop3 = server.handle.pop3_addr().expect("pop3");
    let mut stream = connect_with_timeouts(pop3);
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    for command in ["", "USER alice\r\n", "PASS password\r\n"] {
        stream.write_all(command.as_bytes()).expect("send");
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        assert!(line.starts_with("+OK"), "{line}");
    }
    let text = stream_until(web, &[r#""role":"POP3""#, r#""to":"Transaction""#]);
    assert!(text.contains(r#""machine":"pop3""#));
    assert!(
        text.contains(r#""dir":"C","text":"PASS {secret}""#),
        "{text}"
    );
    assert!(!text.contains(r#""text":"PASS password""#), "{text}");
}

#[test]
fn browsers_over_the_cap_hear_503() {
    let (_server, web) = web_server(&["--max-connections", "3"]);
    let idle: Vec<TcpStream> = (0..3).map(|_| connect_with_timeouts(web)).collect();
    // The browser over the cap is answered before it asks, so it only reads.
    let refused = exchange(web, b"");
    assert_eq!(status_line(&refused), "HTTP/1.1 503 Service Unavailable");
    drop(idle);
    wait_until("the page to be served again", || {
        status_line(&exchange(web, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")) == "HTTP/1.1 200 OK"
    });
}

/// The threads of a process (Linux: `Threads:` in `/proc/PID/status`).
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads line")
}

#[test]
fn idle_browsers_cost_one_bounded_thread_each_and_others_are_still_served() {
    const IDLE: usize = 200;
    const PER_ADDRESS: usize = 32;
    let (listen, web) = (free_addr(), free_addr());
    let dir = common::TempDir::new("web-idle");
    let options: Vec<String> = [
        "--web",
        &web.to_string(),
        "--max-connections",
        "300",
        "--max-connections-per-ip",
        &PER_ADDRESS.to_string(),
        "--mail-dir",
        &dir.path().join("mail").display().to_string(),
        "--spool",
        &dir.path().join("spool").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let server = start_binary(listen, &options);
    let pid = server.0.id();
    wait_until("the web listener", || TcpStream::connect(web).is_ok());
    let before = threads(pid);
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect_with_timeouts(web)).collect();
    // Browsers share the caps of SMTP and POP3 clients: one address gets its share, the rest
    // hear 503 at once.
    let mut last = idle.last().expect("one").try_clone().expect("clone");
    let mut refused = String::new();
    let _ = last.read_to_string(&mut refused);
    assert_eq!(status_line(&refused), "HTTP/1.1 503 Service Unavailable");
    let held = threads(pid);
    assert!(
        held <= before + PER_ADDRESS + 2,
        "{held} threads for {IDLE} idle browsers"
    );
    let mut other = common::connect_from("127.0.0.2", web).expect("connect from 127.0.0.2");
    other
        .set_read_timeout(Some(common::READ_TIMEOUT))
        .expect("timeout");
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut page = String::new();
    let _ = other.read_to_string(&mut page);
    assert_eq!(
        status_line(&page),
        "HTTP/1.1 200 OK",
        "others are still served"
    );
    // An admitted idle browser hears 408 when the request deadline passes; its thread ends.
    let mut first = idle.into_iter().next().expect("one");
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut response = String::new();
    let _ = first.read_to_string(&mut response);
    assert_eq!(status_line(&response), "HTTP/1.1 408 Request Timeout");
    wait_until("the idle threads to end", || threads(pid) < before + 5);
    println!(
        "web idle: {before} threads before, {held} with {IDLE} idle browsers \
         ({PER_ADDRESS} admitted), 408 after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

//! The `smtplab` command: run the server, or one of the teaching tools.
//!
//! Standards: none

use std::net::SocketAddr;
use std::process::ExitCode;

use smtplab::config::{self, Config};
use smtplab::server::Server;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // POP3 and IMAP report to the live board in lab/, so lab/ does not draw them: main does.
        Some("states") if args.get(1).is_some_and(|a| a == "--pop3") => {
            print!("{}", smtplab::pop3::session::mermaid());
            ExitCode::SUCCESS
        }
        Some("states") if args.get(1).is_some_and(|a| a == "--imap") => {
            print!("{}", smtplab::imap::session::mermaid());
            ExitCode::SUCCESS
        }
        Some("states") => exit(smtplab::lab::diagram::states_main(&args[1..])),
        Some("replay") => exit(smtplab::lab::replay::replay_main(&args[1..])),
        Some("compare") => exit(smtplab::lab::compare::compare_main(&args[1..])),
        Some("mx") => exit(smtplab::relay::dns::mx_main(&args[1..])),
        Some("dns") => exit(smtplab::lab::dns_server::dns_main(&args[1..])),
        Some("queue") => exit(smtplab::relay::queue::queue_main(&args[1..])),
        Some("bench") => exit(smtplab::lab::bench::bench_main(&args[1..])),
        Some("roster") => exit(smtplab::lab::roster::roster_main(&args[1..])),
        _ => run_server(&args),
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run_server(args: &[String]) -> ExitCode {
    let options = config::options();
    let matches = match options.parse(args) {
        Ok(m) => m,
        Err(error) => return fail(&format!("{error}. Try smtplab --help.")),
    };
    if matches.opt_present("help") {
        print!("{}", options.usage(USAGE));
        return ExitCode::SUCCESS;
    }
    if matches.opt_present("version") {
        println!("smtplab {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_matches(&matches) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    init_logging(config.verbose, config.trace);
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(error) => return fail(&error),
    };
    println!("{}", banner(server.config(), &server.listeners()));
    server.run();
    ExitCode::SUCCESS
}

const USAGE: &str = "Usage: smtplab [OPTIONS]
       smtplab states [--dot|--mermaid|--pop3|--imap]
       smtplab replay FILE... --server HOST:PORT [--codes-only]
       smtplab compare MINE REFERENCE
       smtplab mx DOMAIN [--dns ADDR]
       smtplab dns --zone FILE --listen ADDR
       smtplab queue [--spool DIR]
       smtplab bench --server HOST:PORT --sessions N --messages M --size BYTES
       smtplab roster N [--prefix student] [--out class]

A teaching SMTP server. With no options it listens on 127.0.0.1:2525, delivers
to the demo mailboxes alice and bob (and the list students) in ./mail, and
relays nothing. With --lab it also opens submission on 2587, SMTPS on 2465,
POP3 on 2110, POP3S on 2995, IMAP on 2143 and IMAPS on 2993, offers STARTTLS
with a throwaway certificate, and records every session in ./transcripts-mine;
--submission, --pop3 and the others still move a port.";

/// The log goes to stderr. With `--trace` the console on stdout already shows every line, so
/// the log keeps quiet below WARN (unless `-v` or RUST_LOG asks): nothing is shown twice.
fn init_logging(verbose: bool, trace: bool) {
    let default = match (verbose, trace) {
        (true, _) => "debug",
        (false, true) => "warn",
        (false, false) => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}

/// What a student sees first: every listener with what it is for, and what to type.
fn banner(config: &Config, listeners: &[(&str, SocketAddr)]) -> String {
    let mut text = format!("smtplab listening as {}:", config.hostname);
    for (role, addr) in listeners {
        text.push_str(&format!(
            "\n  {role:<11} {addr:<22} {}",
            purpose(role, config)
        ));
    }
    text.push_str(&format!(
        "\nMail goes to {}/<user>",
        config.mail_dir.display()
    ));
    if let Some(dir) = &config.transcripts {
        text.push_str(&format!("; sessions are recorded in {}/", dir.display()));
    }
    if config.demo_users {
        text.push_str(
            "\nDemo users: alice, bob (password \"password\"); list: students = alice, bob",
        );
        if listeners.iter().any(|(_, addr)| !addr.ip().is_loopback()) {
            text.push_str("\nWARNING: demo users with known passwords on a non-loopback address!");
        }
    }
    let clear: Vec<String> = config
        .plaintext_networks_beyond_loopback()
        .iter()
        .map(|net| net.to_string())
        .collect();
    if !clear.is_empty() {
        text.push_str(&format!(
            "\nWARNING: passwords accepted without TLS from {}: anyone on that network can read them.",
            clear.join(", ")
        ));
    }
    if let Some((_, first)) = listeners.first() {
        text.push_str(&format!("\nTry: telnet {} {}", first.ip(), first.port()));
    }
    text
}

/// One line on what a listener is for, in the words of the lessons.
fn purpose(role: &str, config: &Config) -> &'static str {
    let tls = config.tls.is_some();
    match role {
        "SMTP" if tls => "telnet; STARTTLS offered",
        "SMTP" => "telnet",
        "submission" if tls => "STARTTLS, then AUTH, then MAIL",
        "submission" => "AUTH, then MAIL",
        "SMTPS" => "TLS from the first byte: openssl s_client",
        "POP3" => "read the mail back: USER, PASS, LIST, RETR",
        "POP3S" => "POP3 inside TLS from the first byte",
        "IMAP" => "the mail kept on the server: LOGIN, SELECT, FETCH",
        "IMAPS" => "IMAP inside TLS from the first byte",
        "web" => "the live view: open this address in a browser",
        _ => "",
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("smtplab: {message}");
    ExitCode::from(2)
}

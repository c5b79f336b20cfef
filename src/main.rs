//! The `smtplab` command: run the server, or one of the teaching tools.
//!
//! Standards: RFC 5321 §4.5.3.2.7

use std::net::SocketAddr;
use std::process::ExitCode;

use smtplab::config::{self, Config};
use smtplab::server::Server;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("states") => exit(smtplab::lab::diagram::states_main(&args[1..])),
        Some("replay") => exit(smtplab::lab::replay::replay_main(&args[1..])),
        Some("compare") => exit(smtplab::lab::compare::compare_main(&args[1..])),
        Some("mx") => exit(smtplab::relay::dns::mx_main(&args[1..])),
        Some("queue") => exit(smtplab::relay::queue::queue_main(&args[1..])),
        Some("bench") => exit(smtplab::lab::bench::bench_main(&args[1..])),
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
    init_logging(config.verbose);
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
       smtplab queue [--spool DIR]
       smtplab bench --server HOST:PORT --sessions N --messages M --size BYTES

A teaching SMTP server. With no options it listens on 127.0.0.1:2525, delivers to the demo
mailboxes alice and bob (and the list students) in ./mail, and relays nothing.";

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}

/// What a student sees first: where to connect and what to type.
fn banner(config: &Config, listeners: &[(&str, SocketAddr)]) -> String {
    let shown: Vec<String> = listeners
        .iter()
        .map(|(role, addr)| format!("{addr} ({role})"))
        .collect();
    let mut text = format!(
        "smtplab listening on {} as {}",
        shown.join(", "),
        config.hostname
    );
    text.push_str(&format!(
        "\nMail goes to {}/<user>",
        config.mail_dir.display()
    ));
    if config.demo_users {
        text.push_str(
            "\nDemo users: alice, bob (password \"password\"); list: students = alice, bob",
        );
        if listeners.iter().any(|(_, addr)| !addr.ip().is_loopback()) {
            text.push_str("\nWARNING: demo users with known passwords on a non-loopback address!");
        }
    }
    if let Some((_, first)) = listeners.first() {
        text.push_str(&format!("\nTry: telnet {} {}", first.ip(), first.port()));
    }
    text
}

fn fail(message: &str) -> ExitCode {
    eprintln!("smtplab: {message}");
    ExitCode::from(2)
}

//! Addresses: the paths of MAIL FROM and RCPT TO, parsed by hand after the RFC grammar.
//!
//! Interface:
//! - `reverse_path(arg, smtputf8)` parses `Reverse-path` (MAIL FROM) and returns the rest of the line.
//! - `forward_path(arg, smtputf8)` parses `Forward-path` (RCPT TO) and returns the rest of the line.
//! - `Mailbox`, `Domain`, `ReversePath`, `ForwardPath` are the parsed values.
//!
//! Standards: RFC 5321 §4.1.2, RFC 5321 §4.1.3, RFC 5321 §4.5.3.1, RFC 5321 §4.5.1, RFC 6531 §3.3

use std::fmt;
use std::net::IpAddr;

/// `Domain = sub-domain *("." sub-domain)` or an `address-literal` such as `[192.0.2.1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// A domain name as written (compare with `Domain::is`; names are not case sensitive).
    Name(String),
    /// An IPv4 or IPv6 address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
    Literal(IpAddr),
}

/// `Mailbox = Local-part "@" ( Domain / address-literal )`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part exactly as written on the wire (quotes kept).
    pub local_part: String,
    pub domain: Domain,
}

/// `Reverse-path = Path / "<>"`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

/// `Forward-path = Path`, plus the special `<Postmaster>` without a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Mailbox),
}

/// Why a path was refused; `session.rs` turns each into a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// `MAIL FROM: alice@x`: the path must be in angle brackets.
    MissingBrackets,
    /// The path does not fit the grammar; the text names the rule.
    Syntax(&'static str),
    /// RFC 5321 §4.5.3.1.1-3: local part 64, domain 255, path 256 octets.
    TooLong(&'static str),
    /// UTF-8 in an address without the SMTPUTF8 parameter (RFC 6531 §3.3).
    NeedsSmtpUtf8,
}

impl Domain {
    /// Does this domain name `name` (case-insensitively)?
    pub fn is(&self, name: &str) -> bool {
        matches!(self, Domain::Name(own) if own.eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Literal(IpAddr::V4(ip)) => write!(f, "[{ip}]"),
            Domain::Literal(IpAddr::V6(ip)) => write!(f, "[IPv6:{ip}]"),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(mailbox) => write!(f, "<{mailbox}>"),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<postmaster>"),
            ForwardPath::Mailbox(mailbox) => write!(f, "<{mailbox}>"),
        }
    }
}

/// `Reverse-path = Path / "<>"`. `arg` is what follows `MAIL FROM:`; returns the rest of the line
/// (the ESMTP parameters, leading spaces removed).
pub fn reverse_path(arg: &str, smtputf8: bool) -> Result<(ReversePath, &str), AddressError> {
    let (inner, rest) = bracketed(arg)?;
    if inner.is_empty() {
        return Ok((ReversePath::Null, rest));
    }
    Ok((ReversePath::Mailbox(mailbox(inner, smtputf8)?), rest))
}

/// `Forward-path = Path`; also `<Postmaster>` (RFC 5321 §4.1.1.3).
pub fn forward_path(arg: &str, smtputf8: bool) -> Result<(ForwardPath, &str), AddressError> {
    let (inner, rest) = bracketed(arg)?;
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((ForwardPath::Postmaster, rest));
    }
    Ok((ForwardPath::Mailbox(mailbox(inner, smtputf8)?), rest))
}

fn bracketed(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start();
    let Some(body) = arg.strip_prefix('<') else {
        return Err(AddressError::MissingBrackets);
    };
    let Some(end) = body.find('>') else {
        return Err(AddressError::Syntax("a path ends with '>'"));
    };
    Ok((&body[..end], body[end + 1..].trim_start()))
}

fn mailbox(text: &str, smtputf8: bool) -> Result<Mailbox, AddressError> {
    if !smtputf8 && !text.is_ascii() {
        return Err(AddressError::NeedsSmtpUtf8);
    }
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err(AddressError::Syntax("Mailbox = Local-part \"@\" Domain"));
    };
    Ok(Mailbox {
        local_part: local.to_string(),
        domain: Domain::Name(domain.to_string()),
    })
}

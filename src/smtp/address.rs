//! Addresses: the paths of MAIL FROM and RCPT TO, parsed by hand after the RFC grammar.
//!
//! Interface:
//! - `reverse_path(arg, smtputf8)` parses `Reverse-path` (MAIL FROM) and returns the rest of the line.
//! - `forward_path(arg, smtputf8)` parses `Forward-path` (RCPT TO) and returns the rest of the line.
//! - `Mailbox`, `Domain`, `ReversePath`, `ForwardPath` are the parsed values.
//!   `Mailbox::local_part_unquoted` gives the local part without its quoting (for lookups);
//!   `Domain::is` compares a name without regard to case; `Domain::name` gives the name, if any.
//! - `AddressError` says why a path was refused.
//!
//! Each parser function is named after the ABNF rule it reads, and its `///` line quotes that rule.
//!
//! Standards: RFC 5321 §4.1.2, §4.1.3, §4.5.3.1, §4.5.1, RFC 6531 §3.3

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// RFC 5321 §4.5.3.1: a server "MUST be able to receive objects of at least these sizes", and a
// client "MUST be prepared for a server to reject" larger ones. smtplab accepts exactly these.
// Note that they do not all fit together: a 255-octet domain plus "<", "@", a local part and ">"
// is longer than 256 octets, so in a whole path the path limit is the one that bites first.
const MAX_LOCAL_PART: usize = 64; // RFC 5321 §4.5.3.1.1
const MAX_DOMAIN: usize = 255; // RFC 5321 §4.5.3.1.2
const MAX_PATH: usize = 256; // RFC 5321 §4.5.3.1.3

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

    /// The domain name as written, or `None` for an address literal.
    pub fn name(&self) -> Option<&str> {
        match self {
            Domain::Name(name) => Some(name),
            Domain::Literal(_) => None,
        }
    }
}

impl Mailbox {
    /// The local part with its quoting removed: `"Joe\,Smith"` gives `Joe,Smith`.
    ///
    /// RFC 5321 §4.1.2: "all quoted forms MUST be treated as equivalent", so a mailbox lookup
    /// compares this form. It may contain characters a Dot-string cannot (`@`, `..`, spaces), so
    /// a caller that builds a file name from it must check it against its own table first.
    pub fn local_part_unquoted(&self) -> String {
        let quoted = self
            .local_part
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'));
        let Some(inner) = quoted else {
            return self.local_part.clone(); // a Dot-string has no quoting to remove
        };
        let mut unquoted = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            // quoted-pairSMTP: the backslash says "take the next character literally".
            let literal = if c == '\\' { chars.next() } else { Some(c) };
            unquoted.extend(literal);
        }
        unquoted
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
    let arg = skip_spaces(arg);
    // `<>`, the null reverse-path: bounces and other notifications are sent from it (§4.5.5).
    if let Some(rest) = arg.strip_prefix("<>") {
        return Ok((ReversePath::Null, skip_spaces(rest)));
    }
    let (mailbox, rest) = path(arg, smtputf8)?;
    Ok((ReversePath::Mailbox(mailbox), rest))
}

/// `Forward-path = Path`; also `<Postmaster>` (RFC 5321 §4.1.1.3).
pub fn forward_path(arg: &str, smtputf8: bool) -> Result<(ForwardPath, &str), AddressError> {
    let arg = skip_spaces(arg);
    if let Some(rest) = postmaster(arg) {
        return Ok((ForwardPath::Postmaster, skip_spaces(rest)));
    }
    let (mailbox, rest) = path(arg, smtputf8)?;
    Ok((ForwardPath::Mailbox(mailbox), rest))
}

// ANCHOR: helo_name
/// `ehlo = "EHLO" SP ( Domain / address-literal )` (RFC 5321 §4.1.1.1): the whole argument
/// must be one of the two, in ASCII. It goes into the `Received:` header as written, so nothing
/// else may pass: no space, no comment, no `([ip])` or `by` clause, no control or format
/// character.
pub fn helo_name(text: &str) -> Result<Domain, AddressError> {
    let mut parser = Parser::new(text, false);
    let name = if text.starts_with('[') {
        parser.address_literal()?
    } else {
        parser.domain()?
    };
    if !parser.rest().is_empty() {
        return Err(AddressError::Syntax("nothing may follow the name"));
    }
    Ok(name)
}
// ANCHOR_END: helo_name

/// DEVIATION: RFC 5321 §4.1.1.2 has no space after `MAIL FROM:`, but many clients send one and
/// Postfix accepts it, so leading spaces are skipped. Only spaces: a tab or CR is still refused.
fn skip_spaces(text: &str) -> &str {
    text.trim_start_matches(' ')
}

/// `rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path ) ...`
///
/// The `"<Postmaster>"` branch (RFC 5321 §4.1.1.3): the one path without a domain. The reserved
/// mailbox is "a case-insensitive local name" (§4.5.1). Returns the text after it.
fn postmaster(arg: &str) -> Option<&str> {
    const POSTMASTER: &str = "<postmaster>";
    let (head, rest) = arg.split_at_checked(POSTMASTER.len())?;
    head.eq_ignore_ascii_case(POSTMASTER).then_some(rest)
}

// ANCHOR: path
/// `Path = "<" [ A-d-l ":" ] Mailbox ">"`
fn path(arg: &str, smtputf8: bool) -> Result<(Mailbox, &str), AddressError> {
    let mut parser = Parser::new(arg, smtputf8);
    if !parser.eat('<') {
        return Err(AddressError::MissingBrackets);
    }
    if parser.peek() == Some('@') {
        // A source route "MUST BE accepted ... and SHOULD be ignored" (§4.1.2): read, then dropped.
        parser.a_d_l()?;
        parser.expect(':', "Path = \"<\" [ A-d-l \":\" ] Mailbox \">\"")?;
    }
    let mailbox = parser.mailbox()?;
    parser.path_end()?;
    if parser.pos > MAX_PATH {
        return Err(AddressError::TooLong("path"));
    }
    Ok((mailbox, skip_spaces(parser.rest())))
}
// ANCHOR_END: path

/// Reads a path from left to right. `pos` only moves forward, one whole character at a time, so
/// every slice it takes falls on a UTF-8 character boundary and no input can make it panic.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// Did the client give the SMTPUTF8 parameter? Only then is UTF-8 allowed (RFC 6531 §3.3).
    smtputf8: bool,
}

/// The character-level tools: look, take, and explain a refusal.
impl<'a> Parser<'a> {
    fn new(text: &'a str, smtputf8: bool) -> Self {
        Parser {
            text,
            pos: 0,
            smtputf8,
        }
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    /// The text read since position `start`.
    fn since(&self, start: usize) -> &'a str {
        self.text.get(start..self.pos).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Takes the next character if it belongs to `class`.
    fn eat_if(&mut self, class: impl Fn(char) -> bool) -> bool {
        match self.peek() {
            Some(c) if class(c) => {
                self.pos += c.len_utf8();
                true
            }
            _ => false,
        }
    }

    fn eat(&mut self, wanted: char) -> bool {
        self.eat_if(|c| c == wanted)
    }

    /// Takes characters while they belong to `class`; returns what it took.
    fn eat_while(&mut self, class: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.eat_if(&class) {}
        self.since(start)
    }

    fn expect(&mut self, wanted: char, rule: &'static str) -> Result<(), AddressError> {
        if self.eat(wanted) {
            Ok(())
        } else {
            Err(self.refuse(rule))
        }
    }

    /// The error for the character that does not fit `rule`. Two cases get their own answer,
    /// because the client can fix them: UTF-8 without SMTPUTF8, and control characters.
    fn refuse(&self, rule: &'static str) -> AddressError {
        match self.peek() {
            // RFC 6531 §3.3 extends the grammar to UTF-8 only when SMTPUTF8 was given.
            Some(c) if !c.is_ascii() && !self.smtputf8 => AddressError::NeedsSmtpUtf8,
            // RFC 5321 §4.1.2: control characters "MUST NOT be used in MAIL or RCPT commands".
            Some(c) if c.is_control() => {
                AddressError::Syntax("control characters are not allowed in an address")
            }
            _ => AddressError::Syntax(rule),
        }
    }
}

/// The grammar of RFC 5321 §4.1.2 and §4.1.3, one function per rule.
impl Parser<'_> {
    /// `A-d-l = At-domain *( "," At-domain )`
    fn a_d_l(&mut self) -> Result<(), AddressError> {
        self.at_domain()?;
        while self.eat(',') {
            self.at_domain()?;
        }
        Ok(())
    }

    /// `At-domain = "@" Domain`
    fn at_domain(&mut self) -> Result<(), AddressError> {
        self.expect('@', "At-domain = \"@\" Domain")?;
        self.domain().map(drop) // the route is ignored, so its domains are not kept
    }

    /// The `">"` that ends `Path`. A second `@` is the commonest reason it is missing.
    fn path_end(&mut self) -> Result<(), AddressError> {
        if self.eat('>') {
            return Ok(());
        }
        match self.peek() {
            // user@elsewhere@domain is a sender-specified route that Mailbox has no room for;
            // Postfix calls it "sender-specified routing" and will not relay it either.
            Some('@') => Err(AddressError::Syntax(
                "a mailbox has one \"@\" outside quotes",
            )),
            _ => Err(self.refuse("Path = \"<\" [ A-d-l \":\" ] Mailbox \">\"")),
        }
    }

    /// `Mailbox = Local-part "@" ( Domain / address-literal )`
    fn mailbox(&mut self) -> Result<Mailbox, AddressError> {
        let local_part = self.local_part()?.to_string();
        if !self.eat('@') {
            return Err(match self.peek() {
                Some('>') => AddressError::Syntax("a mailbox needs a domain: local@domain"),
                _ => self.refuse("Mailbox = Local-part \"@\" ( Domain / address-literal )"),
            });
        }
        let domain = if self.peek() == Some('[') {
            self.address_literal()?
        } else {
            self.domain()?
        };
        Ok(Mailbox { local_part, domain })
    }

    /// `Local-part = Dot-string / Quoted-string`
    fn local_part(&mut self) -> Result<&str, AddressError> {
        let start = self.pos;
        if self.peek() == Some('"') {
            self.quoted_string()?;
        } else {
            self.dot_string()?;
        }
        let local_part = self.since(start);
        if local_part.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong("local part"));
        }
        Ok(local_part)
    }

    /// `Dot-string = Atom *("."  Atom)`
    fn dot_string(&mut self) -> Result<(), AddressError> {
        self.atom()?;
        while self.eat('.') {
            self.atom()?; // so no leading, trailing or doubled dot: `../x` is refused here
        }
        Ok(())
    }

    /// `Atom = 1*atext`
    fn atom(&mut self) -> Result<(), AddressError> {
        let smtputf8 = self.smtputf8;
        if self.eat_while(|c| is_atext(c, smtputf8)).is_empty() {
            return Err(self.refuse("Atom = 1*atext"));
        }
        Ok(())
    }

    /// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`
    fn quoted_string(&mut self) -> Result<(), AddressError> {
        self.expect('"', "Quoted-string = DQUOTE *QcontentSMTP DQUOTE")?;
        while !self.eat('"') {
            self.qcontent_smtp()?; // each turn takes a character or fails, so the loop ends
        }
        Ok(())
    }

    /// `QcontentSMTP = qtextSMTP / quoted-pairSMTP`
    fn qcontent_smtp(&mut self) -> Result<(), AddressError> {
        if self.peek() == Some('\\') {
            return self.quoted_pair_smtp();
        }
        let smtputf8 = self.smtputf8;
        if self.eat_if(|c| is_qtext_smtp(c, smtputf8)) {
            Ok(())
        } else {
            Err(self.refuse("QcontentSMTP = qtextSMTP / quoted-pairSMTP"))
        }
    }

    /// `quoted-pairSMTP = %d92 %d32-126`
    fn quoted_pair_smtp(&mut self) -> Result<(), AddressError> {
        const RULE: &str = "quoted-pairSMTP = %d92 %d32-126";
        self.expect('\\', RULE)?;
        // Not even a backslash can smuggle in a control character: %d32-126 excludes them all.
        if self.eat_if(|c| matches!(c, ' '..='~')) {
            Ok(())
        } else {
            Err(self.refuse(RULE))
        }
    }

    /// `Domain = sub-domain *("." sub-domain)`
    fn domain(&mut self) -> Result<Domain, AddressError> {
        let start = self.pos;
        self.sub_domain()?;
        while self.eat('.') {
            self.sub_domain()?; // so no empty label and no trailing dot
        }
        let name = self.since(start);
        if name.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong("domain"));
        }
        if last_label_is_numeric(name) {
            // Postfix `resolve_numeric_domain = no`: user@192.0.2.1 is an IP address without
            // its brackets, not a name; RFC 5321 §4.1.3 spells it [192.0.2.1].
            return Err(AddressError::Syntax(
                "an IP address needs brackets: user@[192.0.2.1]",
            ));
        }
        Ok(Domain::Name(name.to_string()))
    }

    /// `sub-domain = Let-dig [Ldh-str]`
    fn sub_domain(&mut self) -> Result<(), AddressError> {
        let smtputf8 = self.smtputf8;
        if !self.eat_if(|c| is_let_dig(c, smtputf8)) {
            return Err(self.refuse("sub-domain = Let-dig [Ldh-str]"));
        }
        self.ldh_str()
    }

    /// `Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig`
    ///
    /// Optional after the first Let-dig; read greedily, then its last character must not be "-".
    fn ldh_str(&mut self) -> Result<(), AddressError> {
        let smtputf8 = self.smtputf8;
        let ldh = self.eat_while(|c| is_let_dig(c, smtputf8) || c == '-');
        if ldh.ends_with('-') {
            return Err(AddressError::Syntax("a domain label cannot end with \"-\""));
        }
        Ok(())
    }

    /// `address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
    ///                          General-address-literal ) "]"`
    fn address_literal(&mut self) -> Result<Domain, AddressError> {
        const RULE: &str =
            "address-literal = \"[\" ( IPv4-address-literal / IPv6-address-literal ) \"]\"";
        self.expect('[', RULE)?;
        let content = self.eat_while(is_dcontent);
        self.expect(']', RULE)?;
        let ip = match strip_ipv6_tag(content) {
            Some(ipv6) => ipv6_address_literal(ipv6).map(IpAddr::V6),
            // `General-address-literal = Standardized-tag ":" 1*dcontent`: no tag other than
            // IPv6 has been standardized, so nothing can be delivered to one.
            None if content.contains(':') => {
                return Err(AddressError::Syntax(
                    "General-address-literal: only IPv4 and IPv6 literals are known",
                ));
            }
            None => ipv4_address_literal(content).map(IpAddr::V4),
        };
        ip.map(Domain::Literal).ok_or(AddressError::Syntax(RULE))
    }
}

/// `IPv4-address-literal = Snum 3("."  Snum)`
fn ipv4_address_literal(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut snums = text.split('.');
    for octet in &mut octets {
        *octet = snum(snums.next()?)?;
    }
    if snums.next().is_some() {
        return None; // a fifth number
    }
    Some(Ipv4Addr::from(octets))
}

/// `Snum = 1*3DIGIT` ; "representing a decimal integer value in the range 0 through 255"
fn snum(text: &str) -> Option<u8> {
    let digits = (1..=3).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return None; // `u8::from_str` alone would also take "+1"
    }
    text.parse().ok() // and refuses 256 to 999
}

/// `IPv6-address-literal = "IPv6:" IPv6-addr`: strips the tag (ABNF strings ignore case,
/// RFC 5234 §2.3) and returns the `IPv6-addr`.
fn strip_ipv6_tag(content: &str) -> Option<&str> {
    const TAG: &str = "IPv6:";
    let (tag, ipv6) = content.split_at_checked(TAG.len())?;
    tag.eq_ignore_ascii_case(TAG).then_some(ipv6)
}

/// `IPv6-addr = IPv6-full / IPv6-comp / IPv6v4-full / IPv6v4-comp`
///
/// These four forms are the text forms of RFC 4291 §2.2, which is what `Ipv6Addr` parses; writing
/// them out by hand would teach nothing new about SMTP.
///
/// DEVIATION: std also takes a "::" that stands for a single zero group, where IPv6-comp wants
/// at least two. It names the same address, so nothing is misrouted.
fn ipv6_address_literal(text: &str) -> Option<Ipv6Addr> {
    text.parse().ok()
}

/// `atext` (RFC 5322 §3.2.3): letters, digits and ``!#$%&'*+-/=?^_`{|}~``.
/// RFC 6531 §3.3: `atext =/ UTF8-non-ascii`.
fn is_atext(c: char, smtputf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_non_ascii(c, smtputf8)
}

/// `qtextSMTP = %d32-33 / %d35-91 / %d93-126` (ASCII graphics and space, but not `"` or `\`).
/// RFC 6531 §3.3: `qtextSMTP =/ UTF8-non-ascii`.
fn is_qtext_smtp(c: char, smtputf8: bool) -> bool {
    matches!(c, ' '..='!' | '#'..='[' | ']'..='~') || is_utf8_non_ascii(c, smtputf8)
}

/// `Let-dig = ALPHA / DIGIT`. RFC 6531 §3.3: `sub-domain =/ U-label`.
///
/// DEVIATION: any UTF-8 letter is taken in a label; checking that a label is a valid IDNA U-label
/// (RFC 5890) needs Unicode tables, and a bad one simply fails later in DNS.
fn is_let_dig(c: char, smtputf8: bool) -> bool {
    c.is_ascii_alphanumeric() || is_utf8_non_ascii(c, smtputf8)
}

/// `UTF8-non-ascii` (RFC 6532 §3.1), allowed only after SMTPUTF8. The C1 control characters
/// (U+0080 to U+009F) are refused too: they are controls in any encoding.
fn is_utf8_non_ascii(c: char, smtputf8: bool) -> bool {
    smtputf8 && !c.is_ascii() && !c.is_control()
}

/// `dcontent = %d33-90 / %d94-126` (printable ASCII except `[`, `\`, `]`).
fn is_dcontent(c: char) -> bool {
    matches!(c, '!'..='Z' | '^'..='~')
}

/// Is the last label all digits, as in `192.0.2.1`? Then the "domain" is a number, not a name.
fn last_label_is_numeric(name: &str) -> bool {
    name.rsplit('.')
        .next()
        .is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressError::{MissingBrackets, NeedsSmtpUtf8, Syntax, TooLong};

    const CONTROL: AddressError = Syntax("control characters are not allowed in an address");
    const NO_DOMAIN: AddressError = Syntax("a mailbox needs a domain: local@domain");

    /// `RCPT TO:` + `arg`, without SMTPUTF8, ignoring the rest of the line.
    fn rcpt(arg: &str) -> Result<ForwardPath, AddressError> {
        forward_path(arg, false).map(|(path, _)| path)
    }

    fn rcpt_mailbox(arg: &str) -> Mailbox {
        match rcpt(arg) {
            Ok(ForwardPath::Mailbox(mailbox)) => mailbox,
            other => panic!("{arg:?} should be a mailbox, got {other:?}"),
        }
    }

    fn rcpt_error(arg: &str) -> AddressError {
        match rcpt(arg) {
            Err(error) => error,
            Ok(path) => panic!("{arg:?} should be refused, got {path:?}"),
        }
    }

    fn is_syntax(error: &AddressError) -> bool {
        matches!(error, Syntax(_))
    }

    fn name(name: &str) -> Domain {
        Domain::Name(name.to_string())
    }

    /// A domain name of exactly `len` octets: labels of nine letters, never ending in a dot.
    fn domain_of_len(len: usize) -> String {
        let dot = |i: usize| i % 10 == 9 && i + 1 != len;
        (0..len).map(|i| if dot(i) { '.' } else { 'a' }).collect()
    }

    // --- Reverse-path, Forward-path, and the rest of the line ---

    #[test]
    fn null_reverse_path() {
        assert_eq!(reverse_path("<>", false), Ok((ReversePath::Null, "")));
        assert_eq!(
            reverse_path("  <>  SIZE=10", false),
            Ok((ReversePath::Null, "SIZE=10"))
        );
    }

    #[test]
    fn null_forward_path_is_refused() {
        assert!(is_syntax(&rcpt_error("<>")));
    }

    #[test]
    fn rest_of_line_is_the_parameters() {
        let (path, rest) = reverse_path("<a@b> SIZE=10", false).unwrap();
        assert_eq!(path.to_string(), "<a@b>");
        assert_eq!(rest, "SIZE=10");
        let (_, rest) = forward_path("<a@b>   NOTIFY=NEVER ORCPT=x", false).unwrap();
        assert_eq!(rest, "NOTIFY=NEVER ORCPT=x");
    }

    #[test]
    fn leading_spaces_are_skipped() {
        assert_eq!(rcpt_mailbox("   <a@b>").to_string(), "a@b");
    }

    #[test]
    fn missing_brackets() {
        for arg in [
            "alice@teach.test",
            "",
            "   ",
            " alice@teach.test>",
            "\t<a@b>",
            "(<a@b>)",
        ] {
            assert_eq!(rcpt(arg), Err(MissingBrackets), "{arg:?}");
            assert_eq!(reverse_path(arg, false), Err(MissingBrackets), "{arg:?}");
        }
    }

    #[test]
    fn missing_closing_bracket() {
        for arg in ["<a@b", "<a@b.c", "<", "<a@[1.2.3.4]", "<a@b c>"] {
            assert!(is_syntax(&rcpt_error(arg)), "{arg:?}");
        }
    }

    // --- Postmaster (RFC 5321 §4.5.1) ---

    #[test]
    fn postmaster_without_domain_in_any_case() {
        for arg in [
            "<postmaster>",
            "<Postmaster>",
            "<POSTMASTER>",
            " <pOsTmAsTeR>",
        ] {
            assert_eq!(
                forward_path(arg, false),
                Ok((ForwardPath::Postmaster, "")),
                "{arg:?}"
            );
        }
        assert_eq!(
            forward_path("<Postmaster> X=1", false),
            Ok((ForwardPath::Postmaster, "X=1"))
        );
    }

    #[test]
    fn postmaster_with_domain_is_a_mailbox() {
        let mailbox = rcpt_mailbox("<POSTMASTER@teach.test>");
        assert_eq!(mailbox.local_part, "POSTMASTER");
        assert!(mailbox.domain.is("teach.test"));
    }

    #[test]
    fn postmaster_without_domain_is_not_a_sender() {
        assert_eq!(reverse_path("<postmaster>", false), Err(NO_DOMAIN));
    }

    // --- Source routes (A-d-l) ---

    #[test]
    fn source_route_is_accepted_and_ignored() {
        let mailbox = rcpt_mailbox("<@a.example,@b.example:user@d.example>");
        assert_eq!(mailbox.to_string(), "user@d.example");
        let (path, _) = reverse_path("<@a.example:user@d.example>", false).unwrap();
        assert_eq!(path.to_string(), "<user@d.example>");
    }

    #[test]
    fn bad_source_routes() {
        for arg in [
            "<@:user@d.example>",
            "<@a.example user@d.example>",
            "<@a.example,user@d.example>",
            "<@a.example,:user@d.example>",
            "<@a.example:>",
            "<@a.example>",
            "<@[192.0.2.1]:user@d.example>", // At-domain = "@" Domain: no literal
        ] {
            assert!(is_syntax(&rcpt_error(arg)), "{arg:?}");
        }
    }

    // --- Local-part ---

    #[test]
    fn dot_string_takes_every_atext() {
        let local = "a1!#$%&'*+-/=?^_`{|}~.Z9";
        assert_eq!(
            rcpt_mailbox(&format!("<{local}@teach.test>")).local_part,
            local
        );
    }

    #[test]
    fn dot_string_refusals() {
        for local in [
            ".a", "a.", "a..b", "a b", "(a)", "a,b", "a:b", "a;b", "a[b", "a\\b", "a\"b",
        ] {
            let arg = format!("<{local}@teach.test>");
            assert!(is_syntax(&rcpt_error(&arg)), "{arg:?}");
        }
    }

    #[test]
    fn quoted_string_is_kept_as_written() {
        let mailbox = rcpt_mailbox(r#"<"Joe\,Smith"@teach.test>"#);
        assert_eq!(mailbox.local_part, r#""Joe\,Smith""#);
        assert_eq!(mailbox.local_part_unquoted(), "Joe,Smith");
    }

    #[test]
    fn quoted_string_forms() {
        let cases = [
            (r#""a b""#, "a b"),
            (r#""""#, ""),
            (r#""a\"b""#, "a\"b"),
            (r#""a\\b""#, "a\\b"),
            (r#""<a@b>:,;""#, "<a@b>:,;"),
            (r#""\ ""#, " "),
            ("alice", "alice"),
        ];
        for (local, unquoted) in cases {
            let mailbox = rcpt_mailbox(&format!("<{local}@teach.test>"));
            assert_eq!(mailbox.local_part, local);
            assert_eq!(mailbox.local_part_unquoted(), unquoted, "{local:?}");
        }
    }

    #[test]
    fn quoted_string_refusals() {
        for arg in [
            r#"<"abc@teach.test>"#,
            r#"<"a"b@teach.test>"#,
            r#"<a"b"@teach.test>"#,
            r#"<"a\"@teach.test>"#,
            "<\"a\\",
        ] {
            assert!(is_syntax(&rcpt_error(arg)), "{arg:?}");
        }
    }

    #[test]
    fn control_characters_are_refused_everywhere() {
        for control in ['\0', '\r', '\n', '\t', '\x01', '\x1b', '\x7f'] {
            for arg in [
                format!("<a{control}b@teach.test>"),
                format!("<\"a{control}b\"@teach.test>"),
                format!("<\"a\\{control}b\"@teach.test>"),
                format!("<ab@tea{control}ch.test>"),
                format!("<ab@[1.2.3.4{control}]>"),
                format!("<@a{control}:ab@teach.test>"),
            ] {
                assert_eq!(rcpt(&arg), Err(CONTROL), "{arg:?}");
                assert_eq!(forward_path(&arg, true), Err(CONTROL), "{arg:?}");
            }
        }
    }

    // --- Domain ---

    #[test]
    fn domain_name_keeps_its_case_and_compares_without() {
        let mailbox = rcpt_mailbox("<Alice@Teach.TEST>");
        assert_eq!(mailbox.local_part, "Alice"); // "MUST BE treated as case sensitive" (§2.4)
        assert_eq!(mailbox.domain, name("Teach.TEST"));
        assert_eq!(mailbox.domain.name(), Some("Teach.TEST"));
        assert!(mailbox.domain.is("teach.test"));
        assert!(!mailbox.domain.is("teach.test."));
        assert!(!mailbox.domain.is("relay.example"));
    }

    #[test]
    fn a_literal_is_no_name() {
        let literal = Domain::Literal(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(!literal.is("127.0.0.1"));
        assert!(!literal.is("[127.0.0.1]"));
    }

    #[test]
    fn local_part_unquoted_copes_with_any_field_value() {
        // `local_part` is a public field, so it may hold text this parser would never produce.
        for (local_part, unquoted) in [("\"", "\""), ("\"a\\\"", "a"), ("a\\b", "a\\b")] {
            let mailbox = Mailbox {
                local_part: local_part.to_string(),
                domain: name("x"),
            };
            assert_eq!(mailbox.local_part_unquoted(), unquoted, "{local_part:?}");
        }
    }

    #[test]
    fn helo_names() {
        for good in [
            "client.example",
            "x",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "my-pc.local",
        ] {
            assert!(helo_name(good).is_ok(), "{good}");
        }
        let forged = "evil.example ([10.9.8.7])\u{85}X-Injected: 1\u{2028} by trusted.example";
        for bad in [
            forged,
            "evil.example\u{2028}",
            "evil.example\u{202e}",
            "a b",
            "192.0.2.1",
            "[10.9.8.7]x",
            "bob's laptop",
            "gr\u{fc}\u{df}e.example",
        ] {
            assert!(helo_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domain_names_accepted() {
        for domain in [
            "localhost",
            "a-b.c",
            "a--b.c",
            "3com.com",
            "123.example",
            "x.y.z.w",
            "A9",
        ] {
            assert_eq!(rcpt_mailbox(&format!("<a@{domain}>")).domain, name(domain));
        }
    }

    #[test]
    fn domain_names_refused() {
        for domain in [
            "", "-a.b", "a-.b", "a.-b", "a..b", ".a", "a.b.", "a_b.c", "a b", "a,b", "a@b",
        ] {
            let arg = format!("<a@{domain}>");
            assert!(is_syntax(&rcpt_error(&arg)), "{arg:?}");
        }
    }

    #[test]
    fn numeric_domain_needs_brackets() {
        for domain in ["192.0.2.1", "123", "example.123", "1.2.3.4.5"] {
            let error = rcpt_error(&format!("<a@{domain}>"));
            assert_eq!(
                error,
                Syntax("an IP address needs brackets: user@[192.0.2.1]")
            );
        }
    }

    // --- address-literal (RFC 5321 §4.1.3) ---

    #[test]
    fn address_literals_accepted() {
        let cases = [
            ("[192.0.2.1]", "192.0.2.1"),
            ("[0.0.0.0]", "0.0.0.0"),
            ("[255.255.255.255]", "255.255.255.255"),
            ("[001.02.3.4]", "1.2.3.4"), // Snum = 1*3DIGIT allows leading zeros
            ("[IPv6:2001:db8::1]", "2001:db8::1"),
            ("[ipv6:::1]", "::1"),
            ("[IPV6:2001:db8:0:0:0:0:0:1]", "2001:db8::1"),
            ("[IPv6:::ffff:192.0.2.1]", "::ffff:192.0.2.1"),
        ];
        for (literal, ip) in cases {
            let expected = Domain::Literal(ip.parse().unwrap());
            assert_eq!(
                rcpt_mailbox(&format!("<a@{literal}>")).domain,
                expected,
                "{literal}"
            );
            assert_eq!(expected.name(), None);
        }
    }

    #[test]
    fn address_literals_refused() {
        for literal in [
            "[]",
            "[256.0.0.1]",
            "[1.2.3]",
            "[1.2.3.4.5]",
            "[1234.1.1.1]",
            "[+1.2.3.4]",
            "[1.2.3.4 ]",
            "[1..2.3]",
            "[IPv6:1.2.3.4]",
            "[IPv6:2001:db8::g]",
            "[IPv6:1:2:3:4:5:6:7:8:9]",
            "[IPv4:1.2.3.4]",
            "[x-tag:anything]",
            "[1.2.3.4",
            "[[1.2.3.4]]",
            "[1.2.3.4]x",
        ] {
            let arg = format!("<a@{literal}>");
            assert!(is_syntax(&rcpt_error(&arg)), "{arg:?}");
        }
    }

    #[test]
    fn general_address_literal_is_refused() {
        let error = rcpt_error("<a@[x-tag:anything]>");
        assert_eq!(
            error,
            Syntax("General-address-literal: only IPv4 and IPv6 literals are known")
        );
    }

    // --- Open-relay address tricks (security-cases §3.B) ---

    #[test]
    fn case_3_06_quoted_address_without_domain() {
        assert_eq!(rcpt_error(r#"<"victim@relay.example">"#), NO_DOMAIN);
    }

    #[test]
    fn case_3_08_percent_hack_is_a_plain_local_part() {
        let mailbox = rcpt_mailbox("<victim%relay.example@teach.test>");
        assert_eq!(mailbox.local_part, "victim%relay.example");
        assert!(mailbox.domain.is("teach.test"));
    }

    #[test]
    fn case_3_09_unqualified_percent_hack() {
        assert_eq!(rcpt_error("<victim%relay.example>"), NO_DOMAIN);
        assert_eq!(rcpt_error(r#"<"victim%relay.example">"#), NO_DOMAIN);
    }

    #[test]
    fn case_3_10_two_at_signs() {
        let error = rcpt_error("<victim@relay.example@teach.test>");
        assert_eq!(error, Syntax("a mailbox has one \"@\" outside quotes"));
        assert!(is_syntax(&rcpt_error("<a@@teach.test>")));
        assert!(is_syntax(&rcpt_error("<@teach.test>")));
    }

    #[test]
    fn case_3_11_quoted_at_stays_in_the_local_part() {
        let mailbox = rcpt_mailbox(r#"<"victim@relay.example"@teach.test>"#);
        assert_eq!(mailbox.local_part_unquoted(), "victim@relay.example");
        assert!(mailbox.domain.is("teach.test"));
    }

    #[test]
    fn case_3_12_route_is_ignored_for_the_final_mailbox() {
        let mailbox = rcpt_mailbox("<@teach.test:victim@relay.example>");
        assert_eq!(mailbox.local_part, "victim");
        assert!(mailbox.domain.is("relay.example"));
        // 3.13, the positive control: a foreign route to a local mailbox ends at the local one.
        let mailbox = rcpt_mailbox("<@relay.example:alice@teach.test>");
        assert!(mailbox.domain.is("teach.test"));
    }

    #[test]
    fn case_3_14_unqualified_bang_path() {
        assert_eq!(rcpt_error("<relay.example!victim>"), NO_DOMAIN);
    }

    #[test]
    fn case_3_15_bang_path_is_a_plain_local_part() {
        let mailbox = rcpt_mailbox("<relay.example!victim@teach.test>");
        assert_eq!(mailbox.local_part, "relay.example!victim");
        assert!(mailbox.domain.is("teach.test"));
    }

    #[test]
    fn case_3_17_foreign_literal_is_parsed() {
        let mailbox = rcpt_mailbox("<victim@[192.0.2.1]>");
        assert_eq!(
            mailbox.domain,
            Domain::Literal(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
    }

    #[test]
    fn case_3_19_ip_without_brackets() {
        assert!(is_syntax(&rcpt_error("<victim@192.0.2.1>")));
    }

    #[test]
    fn case_3_22_unqualified_recipient() {
        assert_eq!(rcpt_error("<alice>"), NO_DOMAIN);
        assert_eq!(reverse_path("<spamtest>", false), Err(NO_DOMAIN));
    }

    #[test]
    fn case_3_23_trailing_dot() {
        assert!(is_syntax(&rcpt_error("<victim@relay.example.>")));
    }

    #[test]
    fn case_3_24_nul_in_local_part() {
        assert_eq!(rcpt_error("<a\0b@teach.test>"), CONTROL);
    }

    #[test]
    fn case_3_25_path_traversal_forms() {
        // The grammar alone stops a leading dot; the mailbox lookup must stop the rest.
        assert!(is_syntax(&rcpt_error("<../../x@teach.test>")));
        assert_eq!(rcpt_mailbox("<a/b@teach.test>").local_part, "a/b");
        assert_eq!(rcpt(r#"<"..">@teach.test"#), Err(NO_DOMAIN));
        let mailbox = rcpt_mailbox(r#"<"../../x"@teach.test>"#);
        assert_eq!(mailbox.local_part_unquoted(), "../../x");
    }

    // --- Limits (RFC 5321 §4.5.3.1; security-cases 4.03) ---

    #[test]
    fn local_part_of_64_octets_is_accepted_65_is_not() {
        let local = "a".repeat(64);
        assert_eq!(
            rcpt_mailbox(&format!("<{local}@teach.test>")).local_part,
            local
        );
        let arg = format!("<{}@teach.test>", "a".repeat(65));
        assert_eq!(rcpt_error(&arg), TooLong("local part"));
        let quoted = format!("<\"{}\"@teach.test>", "a".repeat(63)); // 65 with its quotes
        assert_eq!(rcpt_error(&quoted), TooLong("local part"));
    }

    #[test]
    fn local_part_limit_counts_octets_not_characters() {
        let local = "é".repeat(32); // 64 octets
        let (path, _) = forward_path(&format!("<{local}@teach.test>"), true).unwrap();
        assert_eq!(path.to_string(), format!("<{local}@teach.test>"));
        let arg = format!("<{local}a@teach.test>");
        assert_eq!(forward_path(&arg, true), Err(TooLong("local part")));
    }

    #[test]
    fn domain_of_255_octets_is_accepted_256_is_not() {
        let at_limit = domain_of_len(255);
        let mut parser = Parser::new(&at_limit, false);
        assert_eq!(parser.domain(), Ok(name(&at_limit)));
        let over = domain_of_len(256);
        assert_eq!(Parser::new(&over, false).domain(), Err(TooLong("domain")));
    }

    #[test]
    fn domain_limits_in_a_whole_path() {
        // A 255-octet domain fits the domain limit but no 256-octet path can hold it.
        let arg = format!("<a@{}>", domain_of_len(255));
        assert_eq!(rcpt_error(&arg), TooLong("path"));
        let arg = format!("<a@{}>", domain_of_len(256));
        assert_eq!(rcpt_error(&arg), TooLong("domain"));
    }

    #[test]
    fn path_of_256_octets_is_accepted_257_is_not() {
        let local = "a".repeat(64);
        let at_limit = format!("<{local}@{}>", domain_of_len(189));
        assert_eq!(at_limit.len(), 256);
        assert!(rcpt(&at_limit).is_ok());
        assert!(reverse_path(&format!("{at_limit} SIZE=1"), false).is_ok());
        let over = format!("<{local}@{}>", domain_of_len(190));
        assert_eq!(over.len(), 257);
        assert_eq!(rcpt_error(&over), TooLong("path"));
    }

    #[test]
    fn path_limit_counts_the_source_route() {
        let route = format!("@{}:", domain_of_len(200));
        let arg = format!("<{route}{}@teach.test>", "a".repeat(50));
        assert_eq!(rcpt_error(&arg), TooLong("path"));
    }

    // --- SMTPUTF8 (RFC 6531 §3.3) ---

    #[test]
    fn utf8_addresses_parse_with_smtputf8() {
        for address in [
            "δοκιμή@παράδειγμα.δοκιμή",
            "测试@测试.测试",
            "\"José Ñ\"@ex.com",
            "a@bü.de",
        ] {
            let arg = format!("<{address}> X");
            let (path, rest) = forward_path(&arg, true).unwrap();
            assert_eq!(path.to_string(), format!("<{address}>"));
            assert_eq!(rest, "X");
        }
    }

    #[test]
    fn utf8_needs_smtputf8() {
        for address in [
            "δοκιμή@παράδειγμα.δοκιμή",
            "测试@测试.测试",
            "a\u{e9}@ex.com",
            "\"José\"@ex.com",
            "a@bü.de",
            "a@ex.cöm",
            "a@[1.2.3.4\u{e9}]",
            "@ü.de:a@ex.com",
        ] {
            let arg = format!("<{address}>");
            assert_eq!(forward_path(&arg, false), Err(NeedsSmtpUtf8), "{arg:?}");
            assert_eq!(reverse_path(&arg, false), Err(NeedsSmtpUtf8), "{arg:?}");
        }
    }

    #[test]
    fn utf8_is_not_taken_where_the_grammar_has_no_room_for_it() {
        for arg in [
            "<\"a\\é\"@ex.com>",
            "<a@[1.2.3.é]>",
            "<a@ex.com\u{85}>",
            "<a\u{9f}@ex.com>",
        ] {
            assert!(is_syntax(&forward_path(arg, true).unwrap_err()), "{arg:?}");
        }
    }

    // --- Display ---

    #[test]
    fn display_writes_the_paths_back() {
        for arg in [
            "<a@b.c>",
            "<\"a b\"@b.c>",
            "<a@[192.0.2.1]>",
            "<a@[IPv6:2001:db8::1]>",
        ] {
            assert_eq!(rcpt_mailbox(arg).to_string(), arg.trim_matches(['<', '>']));
        }
        assert_eq!(ForwardPath::Postmaster.to_string(), "<postmaster>");
        assert_eq!(ReversePath::Null.to_string(), "<>");
    }

    // --- Randomized: no input makes the parser panic or pass a control character ---

    /// xorshift64 (Marsaglia 2003): a tiny, fixed-seed generator so the test is repeatable.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        "<",
        ">",
        "@",
        ".",
        ":",
        ",",
        "\"",
        "\\",
        " ",
        "a",
        "b",
        "z",
        "0",
        "1",
        "9",
        "[",
        "]",
        "%",
        "!",
        "-",
        "IPv6:",
        "::",
        "postmaster",
        "é",
        "δ",
        "测",
        "\u{85}",
        "\0",
        "\r",
        "\n",
        "\t",
        "\x7f",
        "<a@b.c>",
        "@x.y",
    ];

    /// Pieces that often fit a local part or a domain, to draw from more often.
    const WORDY: &[&str] = &[
        "a", "b", "z", "0", "9", "-", ".", "é", "测", "%", "!", "\"", "xyz",
    ];

    fn random_pieces(rng: &mut XorShift, most: usize, wordy: bool) -> String {
        let mut text = String::new();
        for _ in 0..rng.below(most) {
            let pieces = if wordy && rng.below(8) != 0 {
                WORDY
            } else {
                PIECES
            };
            text.push_str(pieces[rng.below(pieces.len())]);
        }
        text
    }

    /// Pure noise, noise after "<", or mostly wordy noise shaped like `<local@domain>rest`, so
    /// that many inputs get past the first rules and exercise the deeper ones.
    fn random_arg(rng: &mut XorShift) -> String {
        match rng.below(3) {
            0 => random_pieces(rng, 24, false),
            1 => format!("<{}", random_pieces(rng, 24, false)),
            _ => format!(
                "<{}@{}>{}",
                random_pieces(rng, 6, true),
                random_pieces(rng, 6, true),
                random_pieces(rng, 4, false)
            ),
        }
    }

    fn check_mailbox(arg: &str, mailbox: &Mailbox, smtputf8: bool) {
        for bad in ['\0', '\r', '\n'] {
            assert!(!mailbox.local_part.contains(bad), "{arg:?}");
            assert!(!mailbox.local_part_unquoted().contains(bad), "{arg:?}");
        }
        // What Display writes parses back to the same mailbox (the route is gone, literals normalized).
        let written = format!("<{mailbox}>");
        let again = forward_path(&written, smtputf8);
        assert_eq!(
            again,
            Ok((ForwardPath::Mailbox(mailbox.clone()), "")),
            "{arg:?}"
        );
    }

    #[test]
    fn random_inputs_never_panic_nor_let_control_characters_through() {
        let mut rng = XorShift(0x5EED_CAFE_F00D_D00D);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let arg = random_arg(&mut rng);
            for smtputf8 in [false, true] {
                if let Ok((ReversePath::Mailbox(mailbox), rest)) = reverse_path(&arg, smtputf8) {
                    assert!(arg.ends_with(rest), "{arg:?}");
                    check_mailbox(&arg, &mailbox, smtputf8);
                    parsed += 1;
                }
                if let Ok((ForwardPath::Mailbox(mailbox), _)) = forward_path(&arg, smtputf8) {
                    check_mailbox(&arg, &mailbox, smtputf8);
                }
            }
        }
        assert!(
            parsed > 1000,
            "only {parsed} inputs parsed: the generator needs tuning"
        );
    }
}

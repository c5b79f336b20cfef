//! ESMTP extensions: the EHLO keyword list and the parameters of MAIL FROM.
//!
//! Interface:
//! - `ehlo_keywords(limits)` lists what EHLO advertises, one keyword per reply line.
//! - `mail_options(params, limits)` checks the parameters of MAIL FROM (SIZE, BODY, and the
//!   DSN parameters RET and ENVID) and returns `MailOptions`, or the reply that refuses them
//!   (552, 555, 501).
//! - `rcpt_options(params)` checks the parameters of RCPT TO (the DSN parameters NOTIFY and
//!   ORCPT) and returns `RcptOptions`, or the reply that refuses them (555, 501).
//! - `Ret`, `Notify`: the DSN choices; `xtext_decode` reads the encoding of ENVID and ORCPT.
//!
//! ENVID and ORCPT are kept as the client wrote them (xtext), because a relay must pass them on
//! unchanged (RFC 3461 §5.2.1); they are decoded only for the report itself (RFC 3461 §6.3).
//!
//! Standards: RFC 5321 §4.1.1.1, RFC 1870 §3, §6, RFC 6152 §2, RFC 2920 §3, RFC 2034 §2,
//!   RFC 6531 §3.4, RFC 3030 §3, RFC 4954 §5, RFC 3461 §4, §4.1, §4.2, §4.3, §4.4, §4.5, §5.1

use crate::smtp::command::Param;
use crate::smtp::reply::Reply;

/// What this session may offer beyond the fixed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offer {
    /// RFC 3207: TLS is configured and not yet active.
    pub starttls: bool,
    /// RFC 4954: AUTH is offered (over TLS, or to a loopback client).
    pub auth: bool,
    /// RFC 1985: ETRN is offered (to a client that may relay).
    pub etrn: bool,
}

/// The limits a client learns from EHLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RFC 1870: the largest message accepted, in octets.
    pub max_size: u64,
}

/// `BODY=` of RFC 6152: whether the content may contain 8-bit bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    /// RFC 3030 §3: any octets; only BDAT can carry it.
    BinaryMime,
}

/// What the MAIL FROM parameters asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailOptions {
    /// RFC 1870 `SIZE=`: the size the client declared, if it did.
    pub declared_size: Option<u64>,
    pub body: BodyType,
    /// RFC 6531 §3.4: UTF-8 is allowed in addresses and headers.
    pub smtputf8: bool,
    /// RFC 3461 §4.3 `RET=`: what a failure report returns of the message.
    pub ret: Option<Ret>,
    /// RFC 3461 §4.4 `ENVID=`: the sender's name for this transaction, still in xtext.
    pub envid: Option<String>,
}

/// `RET=FULL` or `RET=HDRS` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message comes back in a failure report.
    Full,
    /// Only its header section.
    Hdrs,
}

impl Ret {
    /// The keyword as it goes on the wire and into the queue file.
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }

    /// `FULL` or `HDRS`, in any case.
    pub fn parse(value: &str) -> Option<Ret> {
        match value.to_ascii_uppercase().as_str() {
            "FULL" => Some(Ret::Full),
            "HDRS" => Some(Ret::Hdrs),
            _ => None,
        }
    }
}

/// `NOTIFY=` (RFC 3461 §4.1): when the sender wants a report for this recipient.
/// `NEVER` is all three false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// `notify-esmtp-value = "NEVER" / 1#notify-list-element`, any case; NEVER stands alone.
    pub fn parse(value: &str) -> Option<Notify> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::NEVER);
        }
        let mut notify = Notify::NEVER;
        for element in value.split(',') {
            let flag = match element.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut notify.success,
                "FAILURE" => &mut notify.failure,
                "DELAY" => &mut notify.delay,
                _ => return None, // includes NEVER in a list, and an empty element
            };
            *flag = true;
        }
        Some(notify)
    }

    /// Does the sender want to hear about a failure? Without NOTIFY, yes (RFC 3461 §4.1:
    /// no parameter may be taken as NOTIFY=FAILURE).
    pub fn wants_failure(notify: Option<Notify>) -> bool {
        notify.is_none_or(|n| n.failure)
    }

    /// Does the sender want to hear about a success? Only if NOTIFY said SUCCESS.
    pub fn wants_success(notify: Option<Notify>) -> bool {
        notify.is_some_and(|n| n.success)
    }
}

impl std::fmt::Display for Notify {
    /// `NEVER`, or the list in the RFC's order: `SUCCESS,FAILURE,DELAY`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        if set.is_empty() {
            f.write_str("NEVER")
        } else {
            f.write_str(&set.join(","))
        }
    }
}

/// What the RCPT TO parameters asked for (RFC 3461 §4.1, §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptOptions {
    /// `NOTIFY=`; `None` when the client did not say (then failures are reported).
    pub notify: Option<Notify>,
    /// `ORCPT=addr-type;xtext`, exactly as the client wrote it.
    pub orcpt: Option<String>,
}

/// RFC 3461 §4.4: "The ENVID parameter MAY be up to 100 characters in length."
const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: "The entire ORCPT parameter MAY be up to 500 characters in length."
const MAX_ORCPT: usize = 500;

// ANCHOR: ehlo_keywords
/// The keywords after the first line of the EHLO reply (RFC 5321 §4.1.1.1).
pub fn ehlo_keywords(limits: Limits, offer: Offer) -> Vec<String> {
    let mut keywords = vec![
        format!("SIZE {}", limits.max_size), // RFC 1870
        "8BITMIME".to_string(),              // RFC 6152
        "PIPELINING".to_string(),            // RFC 2920
        "ENHANCEDSTATUSCODES".to_string(),   // RFC 2034
        "SMTPUTF8".to_string(),              // RFC 6531
        "CHUNKING".to_string(),              // RFC 3030
        "BINARYMIME".to_string(),            // RFC 3030
        "DSN".to_string(),                   // RFC 3461
    ];
    if offer.starttls {
        keywords.push("STARTTLS".to_string()); // RFC 3207
    }
    if offer.auth {
        keywords.push(format!("AUTH {}", crate::smtp::auth::MECHANISMS)); // RFC 4954
    }
    if offer.etrn {
        keywords.push("ETRN".to_string()); // RFC 1985
    }
    keywords.push("HELP".to_string()); // RFC 5321 §4.1.1.8
    keywords
}
// ANCHOR_END: ehlo_keywords

/// Check the parameters of MAIL FROM. An unknown keyword gets 555 (RFC 5321 §4.1.1.11).
pub fn mail_options(params: &[Param], limits: Limits) -> Result<MailOptions, Reply> {
    let mut options = MailOptions::default();
    for param in params {
        match (param.keyword.as_str(), param.value.as_deref()) {
            ("SIZE", Some(value)) => options.declared_size = Some(size(value, limits)?),
            ("BODY", Some(value)) => options.body = body(value)?,
            ("SMTPUTF8", None) => options.smtputf8 = true,
            // RFC 4954 §5: AUTH= is accepted whether or not this client authenticated; a
            // server that does not trust the client's claim simply ignores it.
            ("AUTH", Some(_)) => {}
            ("RET", value) => once(&mut options.ret, "RET", ret(value)?)?,
            ("ENVID", value) => once(&mut options.envid, "ENVID", envid(value)?)?,
            _ => return Err(unknown_parameter(param)),
        }
    }
    Ok(options)
}

// ANCHOR: rcpt_options
/// Check the parameters of RCPT TO: NOTIFY and ORCPT (RFC 3461 §4.1, §4.2), each at most once
/// (§4.5); any other keyword is unknown (RFC 5321 §4.1.1.11).
pub fn rcpt_options(params: &[Param]) -> Result<RcptOptions, Reply> {
    let mut options = RcptOptions::default();
    for param in params {
        match (param.keyword.as_str(), param.value.as_deref()) {
            ("NOTIFY", value) => once(&mut options.notify, "NOTIFY", notify(value)?)?,
            ("ORCPT", value) => once(&mut options.orcpt, "ORCPT", orcpt(value)?)?,
            _ => return Err(unknown_parameter(param)),
        }
    }
    Ok(options)
}
// ANCHOR_END: rcpt_options

/// RFC 3461 §4.5: RET, ENVID, NOTIFY and ORCPT may each appear once; a second one gets 501.
fn once<T>(slot: &mut Option<T>, keyword: &str, value: T) -> Result<(), Reply> {
    if slot.is_some() {
        return Err(dsn_syntax(format!("{keyword} given twice (RFC 3461 §4.5)")));
    }
    *slot = Some(value);
    Ok(())
}

/// RFC 3461 §5.1: a DSN parameter with a bad value gets 501, never 555 (it is known).
fn dsn_syntax(text: String) -> Reply {
    Reply::SYNTAX_501.text(text)
}

/// `RET=FULL` or `RET=HDRS`.
fn ret(value: Option<&str>) -> Result<Ret, Reply> {
    value
        .and_then(Ret::parse)
        .ok_or_else(|| dsn_syntax("RET must be FULL or HDRS: RET=HDRS".into()))
}

/// `ENVID=xtext`, at most `MAX_ENVID` characters, printable ASCII once decoded.
fn envid(value: Option<&str>) -> Result<String, Reply> {
    let usage = "ENVID needs an xtext value of at most 100 characters: ENVID=QQ314159";
    let value = value.filter(|v| !v.is_empty() && v.len() <= MAX_ENVID);
    match value.map(|v| (v, xtext_decode(v))) {
        Some((raw, Some(_))) => Ok(raw.to_string()),
        _ => Err(dsn_syntax(usage.into())),
    }
}

/// `NOTIFY=NEVER` or a list of SUCCESS, FAILURE, DELAY.
fn notify(value: Option<&str>) -> Result<Notify, Reply> {
    value.and_then(Notify::parse).ok_or_else(|| {
        dsn_syntax("NOTIFY must be NEVER, or a list of SUCCESS,FAILURE,DELAY".into())
    })
}

/// `orcpt-parameter = "ORCPT=" original-recipient-address`, with
/// `original-recipient-address = addr-type ";" xtext` and `addr-type = atom`.
fn orcpt(value: Option<&str>) -> Result<String, Reply> {
    let usage = "ORCPT needs addr-type;xtext: ORCPT=rfc822;bob@example.org";
    let value = value.ok_or_else(|| dsn_syntax(usage.into()))?;
    let (addr_type, address) = value
        .split_once(';')
        .ok_or_else(|| dsn_syntax(usage.into()))?;
    let atom = !addr_type.is_empty()
        && addr_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b));
    let decoded = xtext_decode(address).filter(|a| !a.is_empty());
    if !atom || decoded.is_none() || "ORCPT=".len() + value.len() > MAX_ORCPT {
        return Err(dsn_syntax(usage.into()));
    }
    Ok(value.to_string())
}

// ANCHOR: xtext
/// `xtext = *( xchar / hexchar )` (RFC 3461 §4): `xchar` is "!" to "~" except "+" and "=",
/// `hexchar` is "+" and two upper-case hex digits. The decoded text must be printable ASCII
/// (graphic characters and white space, §4.2, §4.4); `None` for anything else.
pub fn xtext_decode(xtext: &str) -> Option<String> {
    let bytes = xtext.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let decoded = match c {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let upper = hex
                    .iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h));
                if !upper {
                    return None;
                }
                i += 2;
                u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?
            }
            b'!'..=b'~' if c != b'=' => c,
            _ => return None,
        };
        if !(decoded.is_ascii_graphic() || decoded == b' ' || decoded == b'\t') {
            return None;
        }
        out.push(decoded as char);
        i += 1;
    }
    Some(out)
}
// ANCHOR_END: xtext

/// The address in an ORCPT value, decoded: `rfc822;bob+40two.test` -> (`rfc822`, `bob@two.test`).
pub fn orcpt_decoded(orcpt: &str) -> Option<(String, String)> {
    let (addr_type, xtext) = orcpt.split_once(';')?;
    Some((addr_type.to_string(), xtext_decode(xtext)?))
}

/// RFC 1870 §6: a declared size over the limit is refused at once with 552.
fn size(value: &str, limits: Limits) -> Result<u64, Reply> {
    let declared: u64 = value
        .parse()
        .map_err(|_| Reply::SYNTAX_501.text("SIZE needs a number of octets: SIZE=12345"))?;
    if declared > limits.max_size {
        return Err(Reply::TOO_BIG_552.text(format!(
            "Message size exceeds fixed limit of {} octets (RFC 1870)",
            limits.max_size
        )));
    }
    Ok(declared)
}

/// RFC 6152 §2: `BODY=7BIT` or `BODY=8BITMIME`.
fn body(value: &str) -> Result<BodyType, Reply> {
    match value.to_ascii_uppercase().as_str() {
        "7BIT" => Ok(BodyType::SevenBit),
        "8BITMIME" => Ok(BodyType::EightBitMime),
        "BINARYMIME" => Ok(BodyType::BinaryMime),
        _ => Err(Reply::SYNTAX_501.text("BODY must be 7BIT, 8BITMIME or BINARYMIME")),
    }
}

fn unknown_parameter(param: &Param) -> Reply {
    Reply::UNKNOWN_PARAMETER_555.text(format!(
        "Parameter {} not recognized (EHLO lists the extensions this server supports)",
        param.keyword
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_size: 1000 };

    fn param(keyword: &str, value: Option<&str>) -> Param {
        Param {
            keyword: keyword.into(),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn size_within_and_over_the_limit() {
        let ok = mail_options(&[param("SIZE", Some("1000"))], LIMITS);
        assert_eq!(ok.map(|o| o.declared_size), Ok(Some(1000)));
        let over = mail_options(&[param("SIZE", Some("1001"))], LIMITS).unwrap_err();
        assert_eq!((over.code, over.status), (552, "5.3.4"));
        assert_eq!(
            mail_options(&[param("SIZE", Some("x"))], LIMITS)
                .unwrap_err()
                .code,
            501
        );
    }

    #[test]
    fn body_types() {
        let eight = mail_options(&[param("BODY", Some("8bitmime"))], LIMITS);
        assert_eq!(eight.map(|o| o.body), Ok(BodyType::EightBitMime));
        let binary = mail_options(&[param("BODY", Some("BINARYMIME"))], LIMITS);
        assert_eq!(binary.map(|o| o.body), Ok(BodyType::BinaryMime));
        assert_eq!(
            mail_options(&[param("BODY", Some("9BIT"))], LIMITS)
                .unwrap_err()
                .code,
            501
        );
        let utf8 = mail_options(
            &[param("SMTPUTF8", None), param("AUTH", Some("<>"))],
            LIMITS,
        );
        assert_eq!(utf8.map(|o| o.smtputf8), Ok(true));
    }

    #[test]
    fn unknown_parameters_get_555() {
        let reply = mail_options(&[param("FOO", Some("1"))], LIMITS).unwrap_err();
        assert_eq!((reply.code, reply.status), (555, "5.5.4"));
        assert_eq!(
            rcpt_options(&[param("FOO", Some("NEVER"))])
                .unwrap_err()
                .code,
            555
        );
        assert_eq!(
            mail_options(&[param("SIZE", None)], LIMITS)
                .unwrap_err()
                .code,
            555
        );
    }

    #[test]
    fn advertises_the_core_extensions() {
        let keywords = ehlo_keywords(LIMITS, Offer::default());
        for expected in [
            "SIZE 1000",
            "8BITMIME",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "HELP",
        ] {
            assert!(keywords.iter().any(|k| k == expected), "{expected}");
        }
    }

    #[test]
    fn dsn_mail_parameters() {
        let options = mail_options(
            &[
                param("RET", Some("hdrs")),
                param("ENVID", Some("QQ+2B314159")),
            ],
            LIMITS,
        )
        .unwrap();
        assert_eq!(options.ret, Some(Ret::Hdrs));
        assert_eq!(
            options.envid.as_deref(),
            Some("QQ+2B314159"),
            "kept as xtext"
        );
        for bad in [
            vec![param("RET", Some("ALL"))],
            vec![param("RET", None)],
            vec![param("RET", Some("FULL")), param("RET", Some("FULL"))],
            vec![param("ENVID", Some("a+2b"))],
            vec![param("ENVID", Some("a+0A"))],
            vec![param("ENVID", Some(""))],
            vec![param("ENVID", Some(&"x".repeat(MAX_ENVID + 1)))],
            vec![param("ENVID", Some("a")), param("ENVID", Some("b"))],
        ] {
            let reply = mail_options(&bad, LIMITS).unwrap_err();
            assert_eq!((reply.code, reply.status), (501, "5.5.4"), "{bad:?}");
        }
    }

    #[test]
    fn dsn_rcpt_parameters() {
        let options = rcpt_options(&[
            param("NOTIFY", Some("success,Delay")),
            param("ORCPT", Some("rfc822;Bob+40two.test")),
        ])
        .unwrap();
        assert_eq!(
            options.notify.map(|n| n.to_string()).as_deref(),
            Some("SUCCESS,DELAY")
        );
        assert_eq!(options.orcpt.as_deref(), Some("rfc822;Bob+40two.test"));
        assert_eq!(
            orcpt_decoded("rfc822;Bob+40two.test"),
            Some(("rfc822".into(), "Bob@two.test".into()))
        );
        assert_eq!(Notify::parse("never"), Some(Notify::NEVER));
        assert!(Notify::wants_failure(None) && !Notify::wants_success(None));
        assert!(!Notify::wants_failure(Some(Notify::NEVER)));
        for bad in [
            vec![param("NOTIFY", Some("NEVER,SUCCESS"))],
            vec![param("NOTIFY", Some("SUCCESS,"))],
            vec![param("NOTIFY", Some("ALWAYS"))],
            vec![param("NOTIFY", None)],
            vec![
                param("NOTIFY", Some("NEVER")),
                param("NOTIFY", Some("NEVER")),
            ],
            vec![param("ORCPT", Some("bob@two.test"))],
            vec![param("ORCPT", Some(";bob@two.test"))],
            vec![param("ORCPT", Some("rfc822;"))],
            vec![param("ORCPT", Some("rfc822;a+4"))],
        ] {
            let reply = rcpt_options(&bad).unwrap_err();
            assert_eq!((reply.code, reply.status), (501, "5.5.4"), "{bad:?}");
        }
    }

    #[test]
    fn xtext_decoding() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_decode("+20").as_deref(), Some(" "));
        assert_eq!(xtext_decode("").as_deref(), Some(""));
        for bad in ["a=b", "+2b", "+2", "+", "caf\u{e9}", "+7F", "a b"] {
            assert_eq!(xtext_decode(bad), None, "{bad:?}");
        }
    }
}

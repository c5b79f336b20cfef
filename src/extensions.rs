//! ESMTP extensions: the EHLO keyword list and the parameters of MAIL FROM.
//!
//! Interface:
//! - `ehlo_keywords(limits)` lists what EHLO advertises, one keyword per reply line.
//! - `mail_options(params, limits)` checks the parameters of MAIL FROM (SIZE, BODY) and returns
//!   `MailOptions`, or the reply that refuses them (552, 555, 501).
//! - `rcpt_options(params)` refuses every RCPT parameter: none is advertised yet.
//!
//! Standards: RFC 5321 §4.1.1.1, RFC 1870 §3, RFC 1870 §6, RFC 6152 §2, RFC 2920 §3, RFC 2034 §2, RFC 6531 §3.4, RFC 3030 §3, RFC 4954 §5

use crate::command::Param;
use crate::reply::Reply;

/// What this session may offer beyond the fixed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offer {
    /// RFC 3207: TLS is configured and not yet active.
    pub starttls: bool,
    /// RFC 4954: AUTH is offered (over TLS, or to a loopback client).
    pub auth: bool,
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
}

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
    ];
    if offer.starttls {
        keywords.push("STARTTLS".to_string()); // RFC 3207
    }
    if offer.auth {
        keywords.push(format!("AUTH {}", crate::auth::MECHANISMS)); // RFC 4954
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
            _ => return Err(unknown_parameter(param)),
        }
    }
    Ok(options)
}

/// No RCPT parameter is advertised, so every one is unknown (RFC 5321 §4.1.1.11).
pub fn rcpt_options(params: &[Param]) -> Result<(), Reply> {
    match params.first() {
        Some(param) => Err(unknown_parameter(param)),
        None => Ok(()),
    }
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
            rcpt_options(&[param("NOTIFY", Some("NEVER"))])
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
            "HELP",
        ] {
            assert!(keywords.iter().any(|k| k == expected), "{expected}");
        }
    }
}

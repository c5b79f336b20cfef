//! ESMTP extensions: the EHLO keyword list and the parameters of MAIL FROM.
//!
//! Interface:
//! - `ehlo_keywords(limits)` lists what EHLO advertises, one keyword per reply line.
//! - `mail_options(params, limits)` checks the parameters of MAIL FROM (SIZE, BODY) and returns
//!   `MailOptions`, or the reply that refuses them (552, 555, 501).
//! - `rcpt_options(params)` refuses every RCPT parameter: none is advertised yet.
//!
//! Standards: RFC 5321 §4.1.1.1, RFC 1870 §3, RFC 1870 §6, RFC 6152 §2, RFC 2920 §3, RFC 2034 §2

use crate::command::Param;
use crate::reply::Reply;

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
}

/// What the MAIL FROM parameters asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailOptions {
    /// RFC 1870 `SIZE=`: the size the client declared, if it did.
    pub declared_size: Option<u64>,
    pub body: BodyType,
}

// ANCHOR: ehlo_keywords
/// The keywords after the first line of the EHLO reply (RFC 5321 §4.1.1.1).
pub fn ehlo_keywords(limits: Limits) -> Vec<String> {
    vec![
        format!("SIZE {}", limits.max_size), // RFC 1870
        "8BITMIME".to_string(),              // RFC 6152
        "PIPELINING".to_string(),            // RFC 2920
        "ENHANCEDSTATUSCODES".to_string(),   // RFC 2034
        "HELP".to_string(),                  // RFC 5321 §4.1.1.8
    ]
}
// ANCHOR_END: ehlo_keywords

/// Check the parameters of MAIL FROM. An unknown keyword gets 555 (RFC 5321 §4.1.1.11).
pub fn mail_options(params: &[Param], limits: Limits) -> Result<MailOptions, Reply> {
    let mut options = MailOptions::default();
    for param in params {
        match (param.keyword.as_str(), param.value.as_deref()) {
            ("SIZE", Some(value)) => options.declared_size = Some(size(value, limits)?),
            ("BODY", Some(value)) => options.body = body(value)?,
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
        _ => Err(Reply::SYNTAX_501.text("BODY must be 7BIT or 8BITMIME (RFC 6152)")),
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
        assert_eq!(
            mail_options(&[param("BODY", Some("BINARYMIME"))], LIMITS)
                .unwrap_err()
                .code,
            501
        );
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
        let keywords = ehlo_keywords(LIMITS);
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

//! AUTH: the SASL mechanisms PLAIN, LOGIN and CRAM-MD5, without sockets.
//!
//! Interface:
//! - `begin(mechanism, initial_response, challenge)` starts an exchange: either a challenge
//!   to send with 334, or credentials to check at once.
//! - `respond(exchange, line)` takes the client's next line (base64) and goes one step on.
//! - `Credentials::verify(users)` names the user when the password (or digest) is right.
//! - `base64_encode` / `base64_decode`: written out here, because the lesson is that PLAIN is
//!   only base64 — anyone who sees the bytes can read the password, hence TLS first.
//! - `plaintext_allowed(peer, tls, from)`: may this client send a password here (RFC 4954 §4)?
//! - `smtp_secret(line, sasl_response)` / `secret_after(line, words)`: where the secret in a
//!   command line starts, found from its words as the parser reads them, so every place that
//!   shows or stores a line (log, console, transcript) masks the same bytes; `Masked` writes it.
//!
//! Standards: RFC 4954 §4, §6, RFC 4616 §2, RFC 2195 §2

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::config::Cidr;
use crate::smtp::command::Verb;
use crate::smtp::reply::Reply;

/// The mechanisms EHLO advertises, in order of preference.
pub const MECHANISMS: &str = "PLAIN LOGIN CRAM-MD5";

/// An exchange waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// `AUTH PLAIN` without an initial response: waiting for it.
    Plain,
    /// `AUTH LOGIN`: waiting for the user name, then for the password.
    LoginUser,
    LoginPassword {
        user: String,
    },
    /// `AUTH CRAM-MD5`: waiting for "user digest" computed over this challenge.
    CramMd5 {
        challenge: String,
    },
}

/// What the user claims, to be checked against the users table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Password {
        user: String,
        password: String,
    },
    Digest {
        user: String,
        challenge: String,
        digest: String,
    },
}

/// One step of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sasl {
    /// Send `334 <challenge>` and wait for the next line.
    Continue(Exchange, String),
    /// The exchange is complete: check these.
    Check(Credentials),
}

// ANCHOR: begin
/// `AUTH mechanism [initial-response]` (RFC 4954 §4).
pub fn begin(mechanism: &str, initial: Option<&str>, challenge: String) -> Result<Sasl, Reply> {
    match (mechanism.to_ascii_uppercase().as_str(), initial) {
        ("PLAIN", None) => Ok(Sasl::Continue(Exchange::Plain, String::new())),
        ("PLAIN", Some(response)) => plain(response),
        ("LOGIN", None) => Ok(Sasl::Continue(
            Exchange::LoginUser,
            base64_encode(b"Username:"),
        )),
        ("LOGIN", Some(user)) => login_user(user),
        ("CRAM-MD5", None) => {
            let encoded = base64_encode(challenge.as_bytes());
            Ok(Sasl::Continue(Exchange::CramMd5 { challenge }, encoded))
        }
        ("CRAM-MD5", Some(_)) => Err(Reply::SYNTAX_501.text("CRAM-MD5 has no initial response")),
        _ => Err(Reply::new(504, "5.5.4", "").text(format!(
            "Unrecognized authentication type; this server knows {MECHANISMS}"
        ))),
    }
}
// ANCHOR_END: begin

/// The client's next line in an exchange. `*` cancels (RFC 4954 §4).
pub fn respond(exchange: Exchange, line: &str) -> Result<Sasl, Reply> {
    if line == "*" {
        return Err(Reply::new(501, "5.5.2", "Authentication cancelled"));
    }
    match exchange {
        Exchange::Plain => plain(line),
        Exchange::LoginUser => login_user(line),
        Exchange::LoginPassword { user } => {
            let password = decode_text(line)?;
            Ok(Sasl::Check(Credentials::Password { user, password }))
        }
        Exchange::CramMd5 { challenge } => {
            let text = decode_text(line)?;
            let Some((user, digest)) = text.rsplit_once(' ') else {
                return Err(bad_base64().text("CRAM-MD5 answer is \"user hex-digest\""));
            };
            Ok(Sasl::Check(Credentials::Digest {
                user: user.to_string(),
                challenge,
                digest: digest.to_ascii_lowercase(),
            }))
        }
    }
}

/// RFC 4616 §2: `message = [authzid] NUL authcid NUL passwd`; "=" is an empty response.
fn plain(response: &str) -> Result<Sasl, Reply> {
    let bytes = if response == "=" {
        Vec::new()
    } else {
        base64_decode(response).ok_or_else(bad_base64)?
    };
    let parts: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
    let [authzid, user, password] = parts.as_slice() else {
        return Err(bad_base64().text("PLAIN needs authzid NUL user NUL password, in base64"));
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad_base64());
    let (authzid, user) = (text(authzid)?, text(user)?);
    // RFC 4616 §2: the server must not let the authcid act as another identity unless that
    // is authorised; here no user may act for another, so the authzid is empty or the user.
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(&user) {
        return Err(Reply::new(535, "5.7.8", "").text(
            "Authentication credentials invalid: a user may log in only as itself \
             (leave the authorization identity empty, RFC 4616 §2)",
        ));
    }
    Ok(Sasl::Check(Credentials::Password {
        user,
        password: text(password)?,
    }))
}

fn login_user(line: &str) -> Result<Sasl, Reply> {
    let user = decode_text(line)?;
    Ok(Sasl::Continue(
        Exchange::LoginPassword { user },
        base64_encode(b"Password:"),
    ))
}

fn decode_text(line: &str) -> Result<String, Reply> {
    base64_decode(line)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad_base64)
}

fn bad_base64() -> Reply {
    Reply::new(501, "5.5.2", "Cannot decode the response: it is not base64")
}

impl Credentials {
    // ANCHOR: verify
    /// The user name (lower case) when the credentials are right.
    pub fn verify(&self, users: &BTreeMap<String, String>) -> Option<String> {
        let (user, good) = match self {
            Credentials::Password { user, password } => {
                let user = user.to_lowercase();
                let good = users
                    .get(&user)
                    .is_some_and(|known| same(known.as_bytes(), password.as_bytes()));
                (user, good)
            }
            Credentials::Digest {
                user,
                challenge,
                digest,
            } => {
                let user = user.to_lowercase();
                let expected = users
                    .get(&user)
                    .and_then(|known| cram_md5_digest(known, challenge));
                (
                    user,
                    expected.is_some_and(|e| same(e.as_bytes(), digest.as_bytes())),
                )
            }
        };
        good.then_some(user)
    }
    // ANCHOR_END: verify

    pub fn user(&self) -> &str {
        match self {
            Credentials::Password { user, .. } | Credentials::Digest { user, .. } => user,
        }
    }
}

/// Compare secrets in constant time, so timing does not leak how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// RFC 2195 §2: the digest is HMAC-MD5 of the challenge, keyed with the password, in hex.
pub fn cram_md5_digest(password: &str, challenge: &str) -> Option<String> {
    use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
    let key = PKey::hmac(password.as_bytes()).ok()?;
    let mut signer = Signer::new(MessageDigest::md5(), &key).ok()?;
    signer.update(challenge.as_bytes()).ok()?;
    let mac = signer.sign_to_vec().ok()?;
    Some(mac.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh CRAM-MD5 challenge: `<random.time@host>` (RFC 2195 §2 uses a msg-id form).
pub fn challenge(hostname: &str) -> String {
    let mut random = [0u8; 8];
    let _ = openssl::rand::rand_bytes(&mut random);
    let number = u64::from_le_bytes(random);
    let seconds = crate::datetime::unix_now();
    format!("<{number}.{seconds}@{hostname}>")
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// ANCHOR: base64
/// Base64 (RFC 4648 §4): every 3 bytes become 4 letters of a 64-letter alphabet.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
// ANCHOR_END: base64

/// Decode base64; None when the text is not valid base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = bits << 6 | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count & 0xff) as u8);
        }
    }
    // Leftover bits must be padding zeros, and 1 leftover letter is never valid.
    (count < 6 && bits & ((1 << count) - 1) == 0).then_some(out)
}

// ANCHOR: plaintext_allowed
/// May this client send a password that is readable on the wire (PLAIN, LOGIN, POP3 PASS)?
/// Inside TLS always; in the clear only from the networks in `from` (by default this machine,
/// so a class can see that PLAIN is only base64 without a password crossing a network).
pub fn plaintext_allowed(peer: IpAddr, tls: bool, from: &[Cidr]) -> bool {
    tls || from.iter().any(|network| network.contains(peer))
}
// ANCHOR_END: plaintext_allowed

/// Why a password is refused in the clear: one sentence, for SMTP and POP3 alike.
pub const PLAINTEXT_REFUSED: &str =
    "Passwords are not taken in the clear from your address: start TLS first (STARTTLS, or STLS in POP3)";

// ANCHOR: secret
/// Where the secret of an SMTP command line starts, if it has one: the whole of a SASL
/// response (the line after 334), or what follows `AUTH <mechanism>`, however it is spaced.
pub fn smtp_secret(line: &[u8], sasl_response: bool) -> Option<usize> {
    if sasl_response {
        return Some(0);
    }
    let verb = words(line).next().map(|(start, end)| &line[start..end])?;
    let is_auth = std::str::from_utf8(verb)
        .ok()
        .and_then(Verb::from_name)
        .is_some_and(|verb| verb == Verb::Auth);
    is_auth.then(|| secret_after(line, 2)).flatten()
}

/// Where the text after the first `words` words of a line starts, if any text follows. Words
/// are split at spaces and tabs, as the parsers split them.
pub fn secret_after(line: &[u8], count: usize) -> Option<usize> {
    let end = match count {
        0 => 0,
        n => words(line).nth(n - 1).map(|(_, end)| end)?,
    };
    words(&line[end..]).next().map(|(start, _)| end + start)
}

/// The (start, end) of each word of a line.
fn words(line: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at + line[at..].iter().position(|b| !blank(b))?;
        let end = start
            + line[start..]
                .iter()
                .position(blank)
                .unwrap_or(line.len() - start);
        at = end;
        Some((start, end))
    })
}

/// A line as it may be shown or stored: the bytes before the secret, and whether one followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masked<'a> {
    pub shown: &'a [u8],
    pub secret: bool,
}

impl Masked<'_> {
    pub fn new(line: &[u8], secret_start: Option<usize>) -> Masked<'_> {
        match secret_start {
            Some(start) => Masked {
                shown: &line[..start.min(line.len())],
                secret: true,
            },
            None => Masked {
                shown: line,
                secret: false,
            },
        }
    }
}

/// For a log line: the shown part (lossy UTF-8, hidden characters escaped), then `{secret}`.
impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let secret = if self.secret { "{secret}" } else { "" };
        write!(f, "{}{secret}", crate::visible::escape(self.shown))
    }
}
// ANCHOR_END: secret

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> BTreeMap<String, String> {
        [("alice".to_string(), "password".to_string())]
            .into_iter()
            .collect()
    }

    #[test]
    fn base64_round_trips() {
        for text in ["", "a", "ab", "abc", "abcd", "\0alice\0password"] {
            assert_eq!(
                base64_decode(&base64_encode(text.as_bytes())),
                Some(text.as_bytes().to_vec())
            );
        }
        assert_eq!(base64_encode(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(base64_decode("not base64!"), None);
        assert_eq!(base64_decode("QQ"), Some(b"A".to_vec()));
    }

    #[test]
    fn plain_good_and_bad() {
        let good = base64_encode(b"\0alice\0password");
        let Ok(Sasl::Check(creds)) = begin("plain", Some(&good), String::new()) else {
            panic!()
        };
        assert_eq!(creds.verify(&users()), Some("alice".into()));
        let bad = base64_encode(b"\0alice\0guess");
        let Ok(Sasl::Check(creds)) = begin("PLAIN", Some(&bad), String::new()) else {
            panic!()
        };
        assert_eq!(creds.verify(&users()), None);
        assert_eq!(
            begin("PLAIN", Some("%%%"), String::new()).unwrap_err().code,
            501
        );
        assert_eq!(
            begin("PLAIN", Some(&base64_encode(b"no nuls")), String::new())
                .unwrap_err()
                .code,
            501
        );
    }

    #[test]
    fn login_asks_twice() {
        let Ok(Sasl::Continue(step, prompt)) = begin("LOGIN", None, String::new()) else {
            panic!()
        };
        assert_eq!(prompt, "VXNlcm5hbWU6");
        let Ok(Sasl::Continue(step, prompt)) = respond(step, &base64_encode(b"alice")) else {
            panic!()
        };
        assert_eq!(prompt, "UGFzc3dvcmQ6");
        let Ok(Sasl::Check(creds)) = respond(step, &base64_encode(b"password")) else {
            panic!()
        };
        assert_eq!(creds.verify(&users()), Some("alice".into()));
    }

    #[test]
    fn cram_md5_matches_rfc_2195_example() {
        // RFC 2195 §2: user tim, password tanstaaftanstaaf.
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            cram_md5_digest("tanstaaftanstaaf", challenge).as_deref(),
            Some("b913a602c7eda7a495b4e6e7334d3890")
        );
        let Ok(Sasl::Continue(step, _)) = begin("CRAM-MD5", None, challenge.into()) else {
            panic!()
        };
        let users: BTreeMap<_, _> = [("tim".to_string(), "tanstaaftanstaaf".to_string())]
            .into_iter()
            .collect();
        let answer = base64_encode(b"tim b913a602c7eda7a495b4e6e7334d3890");
        let Ok(Sasl::Check(creds)) = respond(step, &answer) else {
            panic!()
        };
        assert_eq!(creds.verify(&users), Some("tim".into()));
    }

    #[test]
    fn plain_refuses_another_authzid() {
        let other = base64_encode(b"bob\0alice\0password");
        let error = begin("PLAIN", Some(&other), String::new()).unwrap_err();
        assert_eq!((error.code, error.status), (535, "5.7.8"));
        for same in [&b"alice\0alice\0password"[..], b"ALICE\0alice\0password"] {
            let Ok(Sasl::Check(creds)) = begin("PLAIN", Some(&base64_encode(same)), String::new())
            else {
                panic!()
            };
            assert_eq!(creds.verify(&users()), Some("alice".into()));
        }
    }

    #[test]
    fn plaintext_only_inside_tls_or_from_the_allowed_networks() {
        let here = [
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        let lan: IpAddr = "192.168.1.20".parse().unwrap();
        assert!(plaintext_allowed(
            "127.0.0.9".parse().unwrap(),
            false,
            &here
        ));
        assert!(plaintext_allowed("::1".parse().unwrap(), false, &here));
        assert!(!plaintext_allowed(lan, false, &here));
        assert!(plaintext_allowed(lan, true, &here));
        let class = [Cidr::parse("192.168.1.0/24").unwrap()];
        assert!(plaintext_allowed(lan, false, &class));
    }

    #[test]
    fn secrets_are_found_from_the_words_however_spaced() {
        let cases: [(&[u8], Option<&[u8]>); 8] = [
            (b"AUTH PLAIN AGFsaWNl", Some(b"AUTH PLAIN ")),
            (b"AUTH  PLAIN AGFsaWNl", Some(b"AUTH  PLAIN ")),
            (b"AUTH PLAIN\tAGFsaWNl", Some(b"AUTH PLAIN\t")),
            (b"auth\tlogin  dXNlcg== extra", Some(b"auth\tlogin  ")),
            (b"AUTH PLAIN", None),
            (b"AUTH PLAIN   ", None),
            (b"MAIL FROM:<a@b> AUTH=<>", None),
            (b"AUTHX PLAIN abc", None),
        ];
        for (line, shown) in cases {
            let masked = Masked::new(line, smtp_secret(line, false));
            assert_eq!(masked.secret, shown.is_some(), "{line:?}");
            assert_eq!(masked.shown, shown.unwrap_or(line), "{line:?}");
        }
        assert_eq!(smtp_secret(b"cGFzcw==", true), Some(0));
        assert_eq!(secret_after(b"PASS  hunter2", 1), Some(6));
        assert_eq!(secret_after(b"PASS", 1), None);
        let shown = Masked::new(b"AUTH PLAIN\tx", Some(11));
        assert_eq!(shown.to_string(), "AUTH PLAIN{TAB}{secret}");
    }

    #[test]
    fn cancel_and_unknown_mechanism() {
        assert_eq!(respond(Exchange::LoginUser, "*").unwrap_err().code, 501);
        assert_eq!(begin("GSSAPI", None, String::new()).unwrap_err().code, 504);
    }
}

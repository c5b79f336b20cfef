//! AUTH: the SASL mechanisms PLAIN, LOGIN and CRAM-MD5, without sockets.
//!
//! Interface:
//! - `begin(mechanism, initial_response, challenge)` starts an exchange: either a challenge
//!   to send with 334, or credentials to check at once.
//! - `respond(exchange, line)` takes the client's next line (base64) and goes one step on.
//! - `Credentials::verify(users)` names the user when the password (or digest) is right.
//! - `base64_encode` / `base64_decode`: written out here, because the lesson is that PLAIN is
//!   only base64 — anyone who sees the bytes can read the password, hence TLS first.
//!
//! Standards: RFC 4954 §4, RFC 4954 §6, RFC 4616 §2, RFC 2195 §2

use std::collections::BTreeMap;

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
    let [_authzid, user, password] = parts.as_slice() else {
        return Err(bad_base64().text("PLAIN needs authzid NUL user NUL password, in base64"));
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad_base64());
    Ok(Sasl::Check(Credentials::Password {
        user: text(user)?,
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
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
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
    fn cancel_and_unknown_mechanism() {
        assert_eq!(respond(Exchange::LoginUser, "*").unwrap_err().code, 501);
        assert_eq!(begin("GSSAPI", None, String::new()).unwrap_err().code, 504);
    }
}

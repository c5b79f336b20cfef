//! TLS: the certificate, the acceptor, and the stream a connection reads and writes.
//!
//! Interface:
//! - `Stream` is a TCP connection in the clear or inside TLS; both read with a deadline.
//! - `Stream::start_tls(acceptor)` runs the server side of the handshake (STARTTLS or
//!   implicit TLS); a failed handshake ends only that connection.
//! - `acceptor_from_files(cert, key)` loads a PEM certificate and PKCS#8 key;
//!   `self_signed(host)` makes a throwaway pair for `--tls-self-signed` (and for tests).
//!
//! native-tls uses the system's TLS library (OpenSSL on Linux). The `openssl` crate, already
//! under native-tls, makes the throwaway certificate, so a teacher needs no extra command.
//!
//! Standards: RFC 3207 §4, RFC 3207 §4.2, RFC 8314 §3.3

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use native_tls::{Identity, TlsAcceptor, TlsStream};

use crate::net::line::TimedRead;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// One client connection, in the clear or inside TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (for timeouts and addresses).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    // ANCHOR: start_tls
    /// The server side of the handshake. On failure the connection is over: there is no way
    /// back to the clear on the same socket (security case 2.08).
    pub fn start_tls(self, acceptor: &TlsAcceptor) -> Result<Stream, String> {
        let Stream::Plain(tcp) = self else {
            return Err("TLS is already active".to_string());
        };
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        acceptor
            .accept(tcp)
            .map(|tls| Stream::Tls(Box::new(tls)))
            .map_err(|e| format!("TLS handshake failed: {e}"))
    }
    // ANCHOR_END: start_tls
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl TimedRead for Stream {
    fn read_before(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.tcp().set_read_timeout(Some(left))?;
        self.read(buf)
    }
}

/// Load `--tls-cert` (PEM) and `--tls-key` (PEM, PKCS#8).
pub fn acceptor_from_files(cert: &str, key: &str) -> Result<TlsAcceptor, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("Cannot read the certificate {cert}: {e}."))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("Cannot read the key {key}: {e}."))?;
    acceptor_from_pem(&cert_pem, &key_pem)
}

pub fn acceptor_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, String> {
    let identity = Identity::from_pkcs8(cert_pem, key_pem).map_err(|e| {
        format!("The certificate or key is not usable (PEM certificate, PKCS#8 key): {e}.")
    })?;
    TlsAcceptor::new(identity).map_err(|e| format!("Cannot set up TLS: {e}."))
}

// ANCHOR: self_signed
/// A throwaway certificate for `host` (and 127.0.0.1), valid for 30 days, with a P-256 key:
/// enough for a classroom, never for a real server (no one can verify it).
pub fn self_signed(host: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    make_self_signed(host).map_err(|e| format!("Cannot make a self-signed certificate: {e}."))
}
// ANCHOR_END: self_signed

fn make_self_signed(host: &str) -> Result<(Vec<u8>, Vec<u8>), openssl::error::ErrorStack> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", host)?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(30)?);
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    let san = SubjectAlternativeName::new()
        .dns(host)
        .ip("127.0.0.1")
        .build(&builder.x509v3_context(None, None))?;
    builder.append_extension(san)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok((builder.build().to_pem()?, key.private_key_to_pem_pkcs8()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_makes_an_acceptor() {
        let (cert, key) = self_signed("smtplab.test").unwrap();
        assert!(String::from_utf8_lossy(&cert).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(String::from_utf8_lossy(&key).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(acceptor_from_pem(&cert, &key).is_ok());
        assert!(acceptor_from_pem(b"junk", &key).is_err());
    }
}

//! TLS: the certificate, the acceptor, and the stream a connection reads and writes.
//!
//! Interface:
//! - `Stream` is a TCP connection in the clear or inside TLS; both read with a deadline.
//! - `Stream::start_tls(acceptor, deadline)` runs the server side of the handshake (STARTTLS
//!   or implicit TLS); it must finish by `deadline`, and a failure ends only that connection.
//!   `upgrade(stream, acceptor, idle)` does it in place, for STARTTLS, STLS and IMAP's
//!   STARTTLS, with the deadline of `handshake_deadline(idle)`.
//! - `Acceptor` is OpenSSL's, with Mozilla's "intermediate" settings: TLS 1.2 and TLS 1.3.
//! - `acceptor_from_files(cert, key)` loads a PEM certificate (and chain) and a PEM key;
//!   `self_signed(host)` makes a throwaway pair for `--tls-self-signed` (and for tests).
//!
//! Why `openssl` here, when native-tls would hide the library: native-tls 0.2's acceptor
//! uses an OpenSSL preset without TLS 1.3, and offers no way to change it. The client side
//! (tests, a connector for outbound mail) can stay on native-tls, whose defaults are right.
//!
//! Deadlines hold inside TLS: OpenSSL reads the socket as often as it likes for one record, so
//! a timeout per `read` would restart at every trickled byte. `Deadlined` gives every read the
//! time left until one deadline, set for the whole command, message or handshake.
//!
//! Standards: RFC 3207 §4, §4.2, RFC 8314 §3.3

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslStream};
use openssl::x509::X509;

use crate::net::line::TimedRead;

/// The server side of TLS: a certificate, a key and the protocol settings.
pub type Acceptor = SslAcceptor;

/// The longest a client may take to finish the TLS handshake, from its first byte to its last.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// When a handshake starting now must be over: `HANDSHAKE_TIMEOUT`, or the server's idle
/// timeout (`--timeout`) when that is shorter.
pub fn handshake_deadline(idle: Duration) -> Instant {
    Instant::now() + HANDSHAKE_TIMEOUT.min(idle)
}

/// One client connection, in the clear or inside TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<Deadlined>>),
}

// ANCHOR: deadlined
/// The socket under TLS, with the deadline of what is being read now: each read of the socket
/// waits only for the time left, so a record trickled byte by byte cannot stretch a deadline.
#[derive(Debug)]
pub struct Deadlined {
    tcp: TcpStream,
    deadline: Instant,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read_before(buf, self.deadline)
    }
}
// ANCHOR_END: deadlined

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl Stream {
    /// The TCP socket underneath (for timeouts and addresses).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.get_ref().tcp,
        }
    }

    // ANCHOR: start_tls
    /// The server side of the handshake, finished by `deadline` however slowly the client
    /// sends. On failure the connection is over: there is no way back to the clear on the
    /// same socket (security case 2.08).
    pub fn start_tls(self, acceptor: &Acceptor, deadline: Instant) -> Result<Stream, String> {
        let Stream::Plain(tcp) = self else {
            return Err("TLS is already active".to_string());
        };
        acceptor
            .accept(Deadlined { tcp, deadline })
            .map(|tls| Stream::Tls(Box::new(tls)))
            .map_err(|e| format!("TLS handshake failed: {e}"))
    }
    // ANCHOR_END: start_tls
}

/// Run the server side of the handshake on the connection held in `stream`, with the acceptor
/// the server has (if any) and the whole handshake bounded by `handshake_deadline(idle)`.
/// On success `stream` holds the TLS stream; on failure it is empty: the connection is over.
pub fn upgrade(
    stream: &mut Option<Stream>,
    acceptor: Option<&Acceptor>,
    idle: Duration,
) -> io::Result<()> {
    let acceptor = acceptor.ok_or_else(|| io::Error::other("TLS is not configured"))?;
    let plain = stream.take().ok_or_else(|| io::Error::other("no stream"))?;
    let tls = plain
        .start_tls(acceptor, handshake_deadline(idle))
        .map_err(io::Error::other)?;
    *stream = Some(tls);
    Ok(())
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
        match self {
            Stream::Plain(tcp) => tcp.read_before(buf, deadline),
            Stream::Tls(tls) => {
                tls.get_mut().deadline = deadline;
                tls.read(buf)
            }
        }
    }
}

/// Load `--tls-cert` (PEM, the certificate then its chain) and `--tls-key` (PEM).
pub fn acceptor_from_files(cert: &str, key: &str) -> Result<Acceptor, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("Cannot read the certificate {cert}: {e}."))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("Cannot read the key {key}: {e}."))?;
    acceptor_from_pem(&cert_pem, &key_pem)
}

// ANCHOR: acceptor
/// An acceptor for TLS 1.2 and 1.3 with Mozilla's "intermediate" ciphers (version 5).
pub fn acceptor_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Acceptor, String> {
    let unusable =
        |e: openssl::error::ErrorStack| format!("The certificate or key is not usable (PEM): {e}.");
    let mut chain = X509::stack_from_pem(cert_pem)
        .map_err(unusable)?
        .into_iter();
    let cert = chain
        .next()
        .ok_or("The certificate file holds no PEM certificate.")?;
    let key = PKey::private_key_from_pem(key_pem).map_err(unusable)?;
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| format!("Cannot set up TLS: {e}."))?;
    builder.set_certificate(&cert).map_err(unusable)?;
    for extra in chain {
        builder.add_extra_chain_cert(extra).map_err(unusable)?;
    }
    builder.set_private_key(&key).map_err(unusable)?;
    builder.check_private_key().map_err(|_| {
        "The key does not belong to the certificate (check --tls-cert and --tls-key).".to_string()
    })?;
    Ok(builder.build())
}
// ANCHOR_END: acceptor

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
    use std::net::TcpListener;

    /// OpenSSL reads the socket again and again for one record; a byte every 50 ms keeps each
    /// read short, yet the reads as a whole end at the deadline (POP3 and SMTP alike).
    #[test]
    fn reads_under_tls_end_at_one_deadline_however_the_bytes_trickle() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let trickler = std::thread::spawn(move || {
            let mut client = TcpStream::connect(addr).unwrap();
            for _ in 0..40 {
                if client.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (tcp, _) = listener.accept().unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut socket = Deadlined { tcp, deadline };
        let (mut got, mut buf) = (0, [0u8; 64]);
        let ended = loop {
            match socket.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) if got + n >= 40 => break None,
                Ok(n) => got += n,
                Err(e) => break Some(e.kind()),
            }
        };
        drop(socket);
        let _ = trickler.join();
        assert!(
            matches!(
                ended,
                Some(io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
            ),
            "{ended:?} after {got} octets"
        );
    }

    #[test]
    fn a_self_signed_pair_makes_an_acceptor() {
        let (cert, key) = self_signed("smtplab.test").unwrap();
        assert!(String::from_utf8_lossy(&cert).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(String::from_utf8_lossy(&key).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(acceptor_from_pem(&cert, &key).is_ok());
        assert!(acceptor_from_pem(b"junk", &key).is_err());
    }
}
